//! Takeover: a new process takes the SIP and HTTP listening sockets of a running one, so an
//! upgrade has no gap in which calls are refused and cuts no running recording.
//!
//! The running process (the predecessor) listens on a Unix socket (`TAKEOVER_SOCKET`). A new
//! process started with `--takeover` (SIGUSR2 makes the predecessor start one; an operator can
//! too) connects and gets a [`Hello`] with the listening sockets attached (SCM_RIGHTS). It
//! starts on them and says [`Frame::Ready`]; the predecessor then stops reading them, sends
//! the Call-IDs of its running calls ([`Frame::Calls`]), hands systemd the main PID, and
//! drains: its calls go on, on their own RTP sockets, until they end or the drain deadline.
//!
//! The successor reads SIP only once it has the Calls frame, so each message is read by one
//! process, which forwards what belongs to the other ([`Frame::Forward`]): the successor what
//! carries one of the predecessor's Call-IDs (BYE, re-INVITE, the answers to its own BYEs),
//! the predecessor what its TCP/TLS connections carry for anything else (OPTIONS, new calls).
//! Answers leave from the socket or connection the message came in on: UDP directly (the
//! socket is shared), TCP/TLS back over the link ([`Frame::Transmit`]).
//!
//! This file is the wire format, sans-IO; `fds` passes the sockets, `link` runs the socket.

pub mod fds;
pub mod link;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sip::{Peer, Transport};

/// Longest frame either side accepts: a SIP message is at most 64 KiB; a Call-ID list of tens
/// of thousands of calls is a few MiB.
pub const MAX_FRAME: usize = 16 << 20;

/// Most sockets one Hello carries: a SIP port is two (UDP and TCP), plus TLS and HTTP.
pub const MAX_FDS: usize = 64;

/// What a handed-over socket is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ListenerKind {
    SipUdp,
    SipTcp,
    SipTls,
    Http,
}

/// One handed-over socket: the n-th listener goes with the n-th descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    pub kind: ListenerKind,
    pub addr: SocketAddr,
}

/// The predecessor's first frame, carrying its listening sockets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub pid: u32,
    pub version: String,
    pub listeners: Vec<Listener>,
}

/// A message on the link. On the wire: a little-endian u32 length, a kind byte, the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Predecessor → successor, once, with the sockets attached.
    Hello(Hello),
    /// Successor → predecessor: it serves on the sockets now.
    Ready { pid: u32 },
    /// Predecessor → successor, once it stopped reading the sockets: the Call-IDs of the
    /// calls it keeps, and their recording directories (to finish if it leaves them
    /// unfinished).
    Calls {
        calls: Vec<String>,
        dirs: Vec<String>,
    },
    /// Predecessor → successor: the AMQP spool (`AMQP_SPOOL_DIR`) is no longer written by the
    /// predecessor; the successor's publisher may open it.
    SpoolFree,
    /// Either way: a SIP message for the other process, as received from `peer` (by the
    /// successor for the predecessor's calls; by the predecessor, on its TCP/TLS connections,
    /// for anything else).
    Forward { peer: Peer, message: Vec<u8> },
    /// Either way: send `message` to `peer` on the TCP/TLS connection it came in on (an answer
    /// to a forwarded message). Answers over UDP leave the shared socket directly.
    Transmit { peer: Peer, message: Vec<u8> },
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame length {0} outside 1..={MAX_FRAME}")]
    Length(usize),
    #[error("unknown frame kind {0:#04x}")]
    Kind(u8),
    #[error("truncated {0} frame")]
    Truncated(&'static str),
    #[error("bad {0} frame: {1}")]
    Json(&'static str, String),
    #[error("bad peer address {0:?}")]
    Addr(String),
}

impl Frame {
    /// Appends the frame, length prefix included.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        match self {
            Frame::Hello(hello) => {
                out.push(b'H');
                // A struct of strings and numbers always serializes.
                out.extend_from_slice(&serde_json::to_vec(hello).unwrap_or_default());
            }
            Frame::SpoolFree => out.push(b'S'),
            Frame::Ready { pid } => {
                out.push(b'R');
                out.extend_from_slice(&pid.to_le_bytes());
            }
            Frame::Calls { calls, dirs } => {
                out.push(b'C');
                let body = CallsBody {
                    calls: calls.clone(),
                    dirs: dirs.clone(),
                };
                out.extend_from_slice(&serde_json::to_vec(&body).unwrap_or_default());
            }
            Frame::Forward { peer, message } | Frame::Transmit { peer, message } => {
                out.push(if matches!(self, Frame::Forward { .. }) {
                    b'F'
                } else {
                    b'T'
                });
                out.push(match peer.transport {
                    Transport::Udp => 0,
                    Transport::Tcp => 1,
                    Transport::Tls => 2,
                });
                match peer.conn {
                    Some(conn) => {
                        out.push(1);
                        out.extend_from_slice(&conn.to_le_bytes());
                    }
                    None => out.push(0),
                }
                let addr = peer.addr.to_string();
                out.push(addr.len() as u8); // "[v6%scope]:port" is under 64 bytes.
                out.extend_from_slice(addr.as_bytes());
                out.extend_from_slice(message);
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// Decodes one frame's kind byte and body (the length prefix already removed).
    pub fn decode(frame: &[u8]) -> Result<Frame, FrameError> {
        let (&kind, body) = frame.split_first().ok_or(FrameError::Length(0))?;
        match kind {
            b'H' => serde_json::from_slice(body)
                .map(Frame::Hello)
                .map_err(|e| FrameError::Json("hello", e.to_string())),
            b'R' => {
                let pid = body
                    .try_into()
                    .map_err(|_| FrameError::Truncated("ready"))?;
                Ok(Frame::Ready {
                    pid: u32::from_le_bytes(pid),
                })
            }
            b'S' => Ok(Frame::SpoolFree),
            b'C' => serde_json::from_slice(body)
                .map(|b: CallsBody| Frame::Calls {
                    calls: b.calls,
                    dirs: b.dirs,
                })
                .map_err(|e| FrameError::Json("calls", e.to_string())),
            b'F' | b'T' => {
                let (peer, message) = decode_peer(body)?;
                let message = message.to_vec();
                Ok(if kind == b'F' {
                    Frame::Forward { peer, message }
                } else {
                    Frame::Transmit { peer, message }
                })
            }
            other => Err(FrameError::Kind(other)),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct CallsBody {
    calls: Vec<String>,
    dirs: Vec<String>,
}

fn decode_peer(body: &[u8]) -> Result<(Peer, &[u8]), FrameError> {
    let truncated = FrameError::Truncated("message");
    let (&transport, rest) = body.split_first().ok_or(truncated.clone())?;
    let transport = match transport {
        0 => Transport::Udp,
        1 => Transport::Tcp,
        2 => Transport::Tls,
        _ => return Err(FrameError::Addr(format!("transport {transport}"))),
    };
    let (&has_conn, rest) = rest.split_first().ok_or(truncated.clone())?;
    let (conn, rest) = match has_conn {
        0 => (None, rest),
        _ => {
            let (conn, rest) = rest.split_at_checked(8).ok_or(truncated.clone())?;
            let conn: [u8; 8] = conn.try_into().map_err(|_| truncated.clone())?;
            (Some(u64::from_le_bytes(conn)), rest)
        }
    };
    let (&len, rest) = rest.split_first().ok_or(truncated.clone())?;
    let (addr, message) = rest.split_at_checked(len as usize).ok_or(truncated)?;
    let addr = String::from_utf8_lossy(addr);
    let addr = addr
        .parse()
        .map_err(|_| FrameError::Addr(addr.clone().into_owned()))?;
    Ok((
        Peer {
            transport,
            addr,
            conn,
        },
        message,
    ))
}

/// Cuts a byte stream into frames.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, if one has arrived. After an error the stream is unusable: the
    /// link is closed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let Some(prefix) = self.buf.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(*prefix) as usize;
        if len == 0 || len > MAX_FRAME {
            return Err(FrameError::Length(len));
        }
        let Some(frame) = self.buf.get(4..4 + len) else {
            return Ok(None);
        };
        let frame = Frame::decode(frame);
        self.buf.drain(..4 + len);
        frame.map(Some)
    }
}

/// Where the takeover socket goes when `TAKEOVER_SOCKET` is not set: systemd's runtime
/// directory of the unit (`RuntimeDirectory=siprec`), else beside the recordings.
pub fn default_socket_path(recording_dir: &Path, runtime_dir: Option<&Path>) -> PathBuf {
    match runtime_dir {
        Some(dir) => dir.join("takeover.sock"),
        None => recording_dir.join(".takeover.sock"),
    }
}

/// Longest path a Unix socket address holds (`sun_path` less its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(frame: Frame) {
        let mut out = Vec::new();
        frame.encode(&mut out);
        // Byte by byte: frames split anywhere come out whole.
        let mut reader = FrameReader::default();
        for (i, b) in out.iter().enumerate() {
            assert_eq!(reader.next_frame(), Ok(None), "frame early at byte {i}");
            reader.push(&[*b]);
        }
        assert_eq!(reader.next_frame(), Ok(Some(frame)));
        assert_eq!(reader.next_frame(), Ok(None));
    }

    #[test]
    fn frames_survive_the_wire() {
        roundtrip(Frame::Hello(Hello {
            pid: 4242,
            version: "1.2.3".into(),
            listeners: vec![
                Listener {
                    kind: ListenerKind::SipUdp,
                    addr: "0.0.0.0:5060".parse().unwrap(),
                },
                Listener {
                    kind: ListenerKind::Http,
                    addr: "[::1]:8080".parse().unwrap(),
                },
            ],
        }));
        roundtrip(Frame::Ready { pid: 7 });
        roundtrip(Frame::SpoolFree);
        roundtrip(Frame::Calls {
            calls: vec!["a@b".into(), "c".into()],
            dirs: vec!["/rec/2026-11-29/a_1".into()],
        });
        roundtrip(Frame::Calls {
            calls: vec![],
            dirs: vec![],
        });
        let bye = b"BYE sip:srs@10.0.0.1 SIP/2.0\r\nCall-ID: a@b\r\n\r\n".to_vec();
        roundtrip(Frame::Forward {
            peer: Peer {
                transport: Transport::Udp,
                addr: "192.0.2.7:5060".parse().unwrap(),
                conn: Some(0),
            },
            message: bye.clone(),
        });
        roundtrip(Frame::Transmit {
            peer: Peer {
                transport: Transport::Tls,
                addr: "[2001:db8::1]:5061".parse().unwrap(),
                conn: Some(1 << 32 | 9),
            },
            message: bye.clone(),
        });
        roundtrip(Frame::Forward {
            peer: Peer {
                transport: Transport::Tcp,
                addr: "192.0.2.7:5060".parse().unwrap(),
                conn: None,
            },
            message: bye,
        });
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let cases: &[(&[u8], FrameError)] = &[
            (&[0, 0, 0, 0], FrameError::Length(0)),
            (
                &[0xff, 0xff, 0xff, 0xff],
                FrameError::Length(u32::MAX as usize),
            ),
            (&[1, 0, 0, 0, b'Z'], FrameError::Kind(b'Z')),
            (&[3, 0, 0, 0, b'R', 1, 2], FrameError::Truncated("ready")),
            (&[2, 0, 0, 0, b'F', 0], FrameError::Truncated("message")),
            (
                &[4, 0, 0, 0, b'T', 0, 1, 0],
                FrameError::Truncated("message"),
            ),
            (
                &[6, 0, 0, 0, b'F', 0, 0, 2, b'x', b'y'],
                FrameError::Addr("xy".into()),
            ),
            (
                &[3, 0, 0, 0, b'F', 9, 0],
                FrameError::Addr("transport 9".into()),
            ),
        ];
        for (bytes, want) in cases {
            let mut reader = FrameReader::default();
            reader.push(bytes);
            assert_eq!(reader.next_frame().as_ref(), Err(want), "{bytes:?}");
        }
        let mut reader = FrameReader::default();
        reader.push(&[3, 0, 0, 0, b'H', b'{', b'}']);
        assert!(matches!(
            reader.next_frame(),
            Err(FrameError::Json("hello", _))
        ));
    }

    #[test]
    fn the_default_socket_is_in_the_runtime_directory_under_systemd() {
        let rec = Path::new("/var/lib/siprec/recordings");
        assert_eq!(
            default_socket_path(rec, Some(Path::new("/run/siprec"))),
            Path::new("/run/siprec/takeover.sock")
        );
        assert_eq!(
            default_socket_path(rec, None),
            Path::new("/var/lib/siprec/recordings/.takeover.sock")
        );
    }
}
