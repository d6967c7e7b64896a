//! The portable backend: epoll readiness + recvmmsg batches. Used where io_uring is missing
//! or refused, or when `dataplane.backend = "epoll"`.

use std::os::fd::{AsRawFd, RawFd};

use super::worker::{Backend, Core, Stream, DATAGRAM_MAX, WAIT_MS};
use super::{mono_now_ns, socket_addr_from_raw, NameBuf, SOCKADDR_BYTES};

/// Readiness events reaped per epoll_wait.
const EVENTS_MAX: usize = 256;
/// recvmmsg calls per ready socket per iteration, so one busy socket can't starve others.
const BATCHES_PER_SOCKET_MAX: usize = 4;
/// The token of a descriptor that only wakes the loop (`watch`).
const WAKE_TOKEN: u64 = u64::MAX;

pub(super) struct Epoll {
    epoll: RawFd,
    batch: usize,
    events: Vec<libc::epoll_event>,
    /// Receive buffers and headers for recvmmsg, allocated once and never moved (boxed).
    buffers: Box<[[u8; DATAGRAM_MAX]]>,
    /// Pointed to by `headers`; kept alive (never read directly).
    _iovecs: Box<[libc::iovec]>,
    /// Source addresses of the datagrams, one per buffer (pointed to by `headers`).
    names: Box<[NameBuf]>,
    headers: Box<[libc::mmsghdr]>,
}

impl Epoll {
    pub(super) fn new(batch: usize) -> std::io::Result<Epoll> {
        // SAFETY: plain syscall; the result is checked.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let batch = batch.max(1);
        let mut buffers = vec![[0u8; DATAGRAM_MAX]; batch].into_boxed_slice();
        let mut iovecs: Box<[libc::iovec]> = buffers
            .iter_mut()
            .map(|b| libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: DATAGRAM_MAX,
            })
            .collect();
        let mut names = vec![NameBuf([0; SOCKADDR_BYTES]); batch].into_boxed_slice();
        let headers = iovecs
            .iter_mut()
            .zip(names.iter_mut())
            .map(|(iov, name)| {
                // SAFETY: mmsghdr is plain old data; all-zero is a valid value.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_name = name.0.as_mut_ptr().cast();
                h.msg_hdr.msg_namelen = SOCKADDR_BYTES as u32;
                h
            })
            .collect();
        Ok(Epoll {
            epoll,
            batch,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_MAX],
            buffers,
            _iovecs: iovecs,
            names,
            headers,
        })
    }

    /// Also wakes `poll` when `fd` is readable, without reading it (an AF_XDP socket: its
    /// owner drains the ring after `poll`).
    pub(super) fn watch(&self, fd: RawFd) -> std::io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, WAKE_TOKEN)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64) -> std::io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: fd is a live socket owned by a stream of this worker; ev is valid.
        if unsafe { libc::epoll_ctl(self.epoll, op, fd, &mut ev) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    /// Receives up to BATCHES_PER_SOCKET_MAX batches from one ready socket.
    fn drain_socket(&mut self, core: &mut Core, now: u64, slot: usize, rtcp: bool) {
        let Some(fd) = core.stream_fd(slot, rtcp) else {
            core.local.unknown_socket += 1;
            return;
        };
        for _ in 0..BATCHES_PER_SOCKET_MAX {
            for h in self.headers.iter_mut() {
                h.msg_len = 0;
                h.msg_hdr.msg_flags = 0;
                h.msg_hdr.msg_namelen = SOCKADDR_BYTES as u32;
            }
            // SAFETY: headers[i] points at iovecs[i] which points at buffers[i]; all are boxed
            // slices owned by self that never move, and alive for the call; the kernel writes
            // at most DATAGRAM_MAX bytes per buffer.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    self.headers.as_mut_ptr(),
                    self.batch as libc::c_uint,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                )
            };
            if n <= 0 {
                if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock
                {
                    core.local.receive_errors += 1;
                }
                return; // Drained (EAGAIN) or an error; epoll tells us again.
            }
            let n = n as usize;
            for i in 0..n {
                let len = (self.headers[i].msg_len as usize).min(DATAGRAM_MAX);
                let name_len = (self.headers[i].msg_hdr.msg_namelen as usize).min(SOCKADDR_BYTES);
                let source = socket_addr_from_raw(&self.names[i].0[..name_len]);
                core.handle(now, slot, 0, rtcp, source, &mut self.buffers[i][..len]);
            }
            if n < self.batch {
                return;
            }
        }
    }
}

// SAFETY: the raw pointers inside `iovecs`/`headers` point into boxed slices owned by this
// value (`buffers`, `names`, `iovecs`); they move with it and are only used by recvmmsg calls
// on the owning thread.
unsafe impl Send for Epoll {}

impl Backend for Epoll {
    fn add(&mut self, slot: usize, stream: &Stream) -> std::io::Result<()> {
        self.ctl(
            libc::EPOLL_CTL_ADD,
            stream.sockets.rtp.as_raw_fd(),
            (slot as u64) << 1,
        )?;
        if let Some(rtcp) = &stream.sockets.rtcp {
            self.ctl(
                libc::EPOLL_CTL_ADD,
                rtcp.as_raw_fd(),
                (slot as u64) << 1 | 1,
            )?;
        }
        Ok(())
    }

    fn remove(&mut self, _slot: usize, _stream: &Stream) {
        // Closing the sockets removes them from the epoll set.
    }

    fn poll(&mut self, core: &mut Core) {
        // SAFETY: `events` has EVENTS_MAX entries; the kernel writes at most that many.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll,
                self.events.as_mut_ptr(),
                EVENTS_MAX as i32,
                WAIT_MS as i32,
            )
        };
        // Read the clock once per batch of readiness events.
        let now = mono_now_ns();
        for i in 0..n.max(0) as usize {
            let token = self.events[i].u64;
            if token == WAKE_TOKEN {
                continue;
            }
            self.drain_socket(core, now, (token >> 1) as usize, token & 1 == 1);
        }
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: we own the epoll fd and close it once.
        unsafe { libc::close(self.epoll) };
    }
}
