//! The takeover socket: the predecessor's listener, the successor's handshake, and the link
//! that carries frames between them afterwards.

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use super::fds::{recv_with_fds, send_with_fds};
use super::{Frame, FrameReader, Hello, Listener, ListenerKind, MAX_SOCKET_PATH};

/// Frames queued each way before the sender sees the link as full.
const QUEUE: usize = 4096;

/// One end of an established link. `rx` ends (None) when the other process is gone.
pub struct Link {
    pub tx: mpsc::Sender<Frame>,
    pub rx: mpsc::Receiver<Frame>,
}

/// Runs the link over `stream`; `reader` holds bytes already read from it.
pub fn spawn(stream: UnixStream, reader: FrameReader) -> Link {
    let (mut read, mut write) = stream.into_split();
    let (in_tx, in_rx) = mpsc::channel(QUEUE);
    let (out_tx, mut out_rx) = mpsc::channel::<Frame>(QUEUE);
    tokio::spawn(async move {
        let mut reader = reader;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            loop {
                match reader.next_frame() {
                    Ok(Some(frame)) => {
                        if in_tx.send(frame).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "takeover link: bad frame; closing it");
                        return;
                    }
                }
            }
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => reader.push(&buf[..n]),
            }
        }
    });
    tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some(frame) = out_rx.recv().await {
            out.clear();
            frame.encode(&mut out);
            if write.write_all(&out).await.is_err() {
                return;
            }
        }
    });
    Link {
        tx: out_tx,
        rx: in_rx,
    }
}

/// Listens for a successor at `path`, mode 0600. A socket file nobody listens on is left
/// from a crash and is replaced; one that is listened on belongs to a running server, and is
/// replaced only when `replace` (we are that server's successor).
pub fn listen(path: &Path, replace: bool) -> io::Result<TakeoverSocket> {
    let path = std::path::absolute(path)?;
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("longer than {MAX_SOCKET_PATH} bytes"),
        ));
    }
    if path.exists() {
        if !replace && is_listening(&path) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another siprec listens on it",
            ));
        }
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    let ino = std::fs::metadata(&path)?.ino();
    Ok(TakeoverSocket {
        listener,
        path,
        ino,
    })
}

/// The takeover listener and the socket file it made.
#[derive(Debug)]
pub struct TakeoverSocket {
    pub listener: UnixListener,
    path: std::path::PathBuf,
    ino: u64,
}

impl TakeoverSocket {
    /// Whether the path still names our socket (a successor replaces it with its own).
    pub fn is_ours(&self) -> bool {
        std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.ino)
    }

    /// Removes the socket file, unless it is another process's now.
    pub fn remove(&self) {
        if self.is_ours() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether a process listens on the Unix socket `path` (absolute). Read from /proc/net/unix
/// rather than by connecting: a connection would be taken for a successor.
fn is_listening(path: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/unix") else {
        return std::os::unix::net::UnixStream::connect(path).is_ok();
    };
    let path = path.as_os_str().as_encoded_bytes();
    // "Num RefCount Protocol Flags Type St Inode Path"; flag 0x10000 is __SO_ACCEPTCON.
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let listening = fields
            .get(3)
            .and_then(|f| u32::from_str_radix(f, 16).ok())
            .is_some_and(|flags| flags & 0x10000 != 0);
        listening && fields.get(7).is_some_and(|p| p.as_bytes() == path)
    })
}

/// Sends the Hello frame with the listening sockets attached.
pub async fn send_hello(stream: &mut UnixStream, hello: &Hello, fds: &[RawFd]) -> io::Result<()> {
    let mut bytes = Vec::new();
    Frame::Hello(hello.clone()).encode(&mut bytes);
    let sent = loop {
        stream.writable().await?;
        match stream.try_io(tokio::io::Interest::WRITABLE, || {
            send_with_fds(&*stream, &bytes, fds)
        }) {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    };
    stream.write_all(&bytes[sent..]).await
}

/// What a successor got from its predecessor.
pub struct Inherited {
    pub hello: Hello,
    fds: Vec<(Listener, Option<OwnedFd>)>,
    pub stream: std::os::unix::net::UnixStream,
    pub reader: FrameReader,
}

impl Inherited {
    /// The socket of this kind bound to `addr`, once.
    pub fn take(&mut self, kind: ListenerKind, addr: std::net::SocketAddr) -> Option<OwnedFd> {
        self.fds
            .iter_mut()
            .find(|(l, fd)| l.kind == kind && l.addr == addr && fd.is_some())
            .and_then(|(_, fd)| fd.take())
    }

    /// Sockets handed over that this configuration does not use (closed when dropped).
    pub fn unused(&self) -> Vec<Listener> {
        let left = self.fds.iter().filter(|(_, fd)| fd.is_some());
        left.map(|(l, _)| l.clone()).collect()
    }
}

/// Connects to a running server's takeover socket and receives its Hello and sockets,
/// within `timeout`. Blocking: it runs before the runtime starts.
pub fn connect(path: &Path, timeout: Duration) -> io::Result<Inherited> {
    let stream = std::os::unix::net::UnixStream::connect(path)?;
    let deadline = Instant::now() + timeout;
    let mut reader = FrameReader::default();
    let mut fds = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let hello = loop {
        match reader.next_frame() {
            Ok(Some(Frame::Hello(hello))) => break hello,
            Ok(Some(other)) => {
                let e = format!("expected a hello, got {other:?}");
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            Ok(None) => {}
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let (n, got) = recv_with_fds(&stream, &mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        fds.extend(got);
        reader.push(&buf[..n]);
    };
    if fds.len() != hello.listeners.len() {
        let e = format!(
            "{} sockets for {} listeners",
            fds.len(),
            hello.listeners.len()
        );
        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
    }
    stream.set_read_timeout(None)?;
    let fds = hello
        .listeners
        .iter()
        .cloned()
        .zip(fds.into_iter().map(Some));
    Ok(Inherited {
        fds: fds.collect(),
        hello,
        stream,
        reader,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole handshake on a real socket: listener, Hello with two sockets, the successor
    /// takes one and reports the other unused, then Ready goes back over the link.
    #[test]
    fn a_successor_receives_the_listeners_and_answers_ready() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sock");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (udp_addr, tcp_addr) = (udp.local_addr().unwrap(), tcp.local_addr().unwrap());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ours = rt.block_on(async { listen(&path, false) }).unwrap();
        assert!(ours.is_ours());
        // A live listener is not replaced by a second server...
        let again = rt.block_on(async { listen(&path, false) });
        assert_eq!(again.unwrap_err().kind(), io::ErrorKind::AddrInUse);

        let successor = {
            let path = path.clone();
            std::thread::spawn(move || connect(&path, Duration::from_secs(5)))
        };
        let hello = Hello {
            pid: 1,
            version: "t".into(),
            listeners: vec![
                Listener {
                    kind: ListenerKind::SipUdp,
                    addr: udp_addr,
                },
                Listener {
                    kind: ListenerKind::SipTcp,
                    addr: tcp_addr,
                },
            ],
        };
        use std::os::fd::AsRawFd;
        let fds = [udp.as_raw_fd(), tcp.as_raw_fd()];
        let mut link = rt.block_on(async {
            let (mut stream, _) = ours.listener.accept().await.unwrap();
            send_hello(&mut stream, &hello, &fds).await.unwrap();
            spawn(stream, FrameReader::default())
        });
        let mut got = successor.join().unwrap().unwrap();
        assert_eq!(got.hello, hello);
        let fd = got
            .take(ListenerKind::SipUdp, udp_addr)
            .expect("udp socket");
        assert!(
            got.take(ListenerKind::SipUdp, udp_addr).is_none(),
            "taken once"
        );
        let inherited = std::net::UdpSocket::from(fd);
        assert_eq!(inherited.local_addr().unwrap(), udp_addr);
        assert_eq!(got.unused(), vec![hello.listeners[1].clone()]);

        let frame = rt.block_on(async {
            got.stream.set_nonblocking(true).unwrap();
            let stream = UnixStream::from_std(got.stream).unwrap();
            let theirs = spawn(stream, got.reader);
            theirs.tx.send(Frame::Ready { pid: 2 }).await.unwrap();
            tokio::time::timeout(Duration::from_secs(5), link.rx.recv()).await
        });
        assert_eq!(frame.unwrap(), Some(Frame::Ready { pid: 2 }));
        // ...but the successor replaces it; the old one no longer removes the path at exit.
        let theirs = rt.block_on(async { listen(&path, true) }).unwrap();
        assert!(!ours.is_ours() && theirs.is_ours());
        ours.remove();
        assert!(path.exists());
        theirs.remove();
        assert!(!path.exists());
    }
}
