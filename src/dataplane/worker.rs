//! One receive worker: epoll readiness + recvmmsg batches over the sockets it owns.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::media::rtp::{RtpReceiver, RtpStats};
use crate::media::{MediaFrame, StreamKey};
use crate::ring;

use super::{mono_now_ns, Command, Report, StreamSockets};

/// Largest datagram we accept; longer ones are truncated by the kernel and counted malformed.
const DATAGRAM_MAX: usize = 2048;
/// Readiness events reaped per epoll_wait.
const EVENTS_MAX: usize = 256;
/// recvmmsg calls per ready socket per iteration, so one busy socket can't starve others.
const BATCHES_PER_SOCKET_MAX: usize = 4;
/// Longest sleep in epoll_wait: bounds command latency and heartbeat staleness.
const WAIT_MS: i32 = 10;
/// Stats publication period.
const REPORT_INTERVAL_NS: u64 = 1_000_000_000;

/// Worker-wide counters, written by the worker with Relaxed stores once per iteration and
/// summed by the control plane when it scrapes (no cross-core traffic per packet).
#[derive(Debug, Default)]
pub struct WorkerCounters {
    packets: AtomicU64,
    bytes: AtomicU64,
    rtcp_packets: AtomicU64,
    unknown_socket: AtomicU64,
    ring_full: AtomicU64,
    streams: AtomicU64,
}

#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct CounterSnapshot {
    pub packets: u64,
    pub bytes: u64,
    pub rtcp_packets: u64,
    pub unknown_socket: u64,
    pub ring_full: u64,
    pub streams: u64,
}

impl CounterSnapshot {
    pub fn add(&mut self, o: &CounterSnapshot) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.rtcp_packets += o.rtcp_packets;
        self.unknown_socket += o.unknown_socket;
        self.ring_full += o.ring_full;
        self.streams += o.streams;
    }
}

impl WorkerCounters {
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            rtcp_packets: self.rtcp_packets.load(Ordering::Relaxed),
            unknown_socket: self.unknown_socket.load(Ordering::Relaxed),
            ring_full: self.ring_full.load(Ordering::Relaxed),
            streams: self.streams.load(Ordering::Relaxed),
        }
    }
}

struct Stream {
    receiver: RtpReceiver,
    sockets: StreamSockets,
}

/// Plain per-worker totals, published to the shared atomics once per iteration.
#[derive(Default)]
struct Local {
    packets: u64,
    bytes: u64,
    rtcp_packets: u64,
    unknown_socket: u64,
    ring_full: u64,
}

pub(super) struct Worker {
    index: usize,
    batch: usize,
    epoll: RawFd,
    ring: ring::Producer<MediaFrame>,
    commands: crossbeam_channel::Receiver<Command>,
    reports: crossbeam_channel::Sender<Report>,
    heartbeat_ns: Arc<AtomicU64>,
    counters: Arc<WorkerCounters>,
    /// Slot table; the epoll token is `slot << 1 | is_rtcp`.
    streams: Vec<Option<Stream>>,
    free_slots: Vec<usize>,
    by_key: HashMap<StreamKey, usize>,
    local: Local,
    /// Receive buffers and headers for recvmmsg, allocated once.
    buffers: Vec<[u8; DATAGRAM_MAX]>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    frame: Box<MediaFrame>,
    last_report_ns: u64,
}

// SAFETY: the raw pointers inside `iovecs`/`headers` point into `buffers`/`iovecs`, which the
// Worker owns and moves with it; they are only dereferenced by the kernel during recvmmsg
// calls made on the worker's own thread.
unsafe impl Send for Worker {}

impl Worker {
    pub(super) fn new(
        index: usize,
        batch: usize,
        ring: ring::Producer<MediaFrame>,
        commands: crossbeam_channel::Receiver<Command>,
        reports: crossbeam_channel::Sender<Report>,
        heartbeat_ns: Arc<AtomicU64>,
        counters: Arc<WorkerCounters>,
    ) -> std::io::Result<Worker> {
        // SAFETY: plain syscall; the result is checked.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let batch = batch.max(1);
        let buffers = vec![[0u8; DATAGRAM_MAX]; batch];
        let mut w = Worker {
            index,
            batch,
            epoll,
            ring,
            commands,
            reports,
            heartbeat_ns,
            counters,
            streams: Vec::new(),
            free_slots: Vec::new(),
            by_key: HashMap::new(),
            local: Local::default(),
            buffers,
            iovecs: Vec::with_capacity(batch),
            headers: Vec::with_capacity(batch),
            frame: Box::new(MediaFrame::empty()),
            last_report_ns: 0,
        };
        w.setup_headers();
        Ok(w)
    }

    fn setup_headers(&mut self) {
        self.iovecs.clear();
        self.headers.clear();
        for buf in self.buffers.iter_mut() {
            self.iovecs.push(libc::iovec {
                iov_base: buf.as_mut_ptr() as *mut libc::c_void,
                iov_len: DATAGRAM_MAX,
            });
        }
        for i in 0..self.batch {
            // SAFETY: mmsghdr is plain old data; all-zero is a valid value.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = &mut self.iovecs[i] as *mut libc::iovec;
            h.msg_hdr.msg_iovlen = 1;
            self.headers.push(h);
        }
    }

    pub(super) fn run(&mut self) {
        // The buffers moved with `self` into this thread: point the headers at them again.
        self.setup_headers();
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_MAX];
        loop {
            if !self.apply_commands() {
                break;
            }
            // SAFETY: `events` has EVENTS_MAX entries; the kernel writes at most that many.
            let n = unsafe {
                libc::epoll_wait(self.epoll, events.as_mut_ptr(), EVENTS_MAX as i32, WAIT_MS)
            };
            // Read the clock once per batch of readiness events.
            let now = mono_now_ns();
            if n > 0 {
                for e in &events[..n as usize] {
                    let token = e.u64;
                    self.drain_socket(now, (token >> 1) as usize, token & 1 == 1);
                }
            }
            self.publish(now);
        }
        self.publish(mono_now_ns());
    }

    /// Applies pending commands; returns false on Shutdown.
    fn apply_commands(&mut self) -> bool {
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::Open { params, sockets } => self.open(params, sockets),
                Command::Update { params } => {
                    if let Some(&slot) = self.by_key.get(&params.key) {
                        if let Some(s) = self.streams[slot].as_mut() {
                            s.receiver.update(params);
                        }
                    }
                }
                Command::Close { key } => self.close(key),
                Command::Shutdown => return false,
            }
        }
        true
    }

    fn open(&mut self, params: crate::media::rtp::StreamParams, sockets: StreamSockets) {
        let key = params.key;
        if self.by_key.contains_key(&key) {
            self.close(key);
        }
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.streams.push(None);
            self.streams.len() - 1
        });
        let rtp_fd = sockets.rtp.as_raw_fd();
        let rtcp_fd = sockets.rtcp.as_ref().map(|s| s.as_raw_fd());
        let ok = self.epoll_add(rtp_fd, (slot as u64) << 1)
            && rtcp_fd.is_none_or(|fd| self.epoll_add(fd, (slot as u64) << 1 | 1));
        if !ok {
            tracing::error!(
                worker = self.index,
                ?key,
                "epoll_ctl failed; stream not received"
            );
        }
        self.streams[slot] = Some(Stream {
            receiver: RtpReceiver::new(params),
            sockets,
        });
        self.by_key.insert(key, slot);
        self.counters
            .streams
            .store(self.by_key.len() as u64, Ordering::Relaxed);
    }

    fn close(&mut self, key: StreamKey) {
        let Some(slot) = self.by_key.remove(&key) else {
            return;
        };
        if let Some(stream) = self.streams[slot].take() {
            // Closing the fds removes them from the epoll set.
            let stats = *stream.receiver.stats();
            drop(stream);
            let _ = self.reports.try_send(Report::Closed { key, stats });
        }
        self.free_slots.push(slot);
        self.counters
            .streams
            .store(self.by_key.len() as u64, Ordering::Relaxed);
    }

    fn epoll_add(&self, fd: RawFd, token: u64) -> bool {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: fd is a live socket owned by a stream of this worker; ev is valid.
        unsafe { libc::epoll_ctl(self.epoll, libc::EPOLL_CTL_ADD, fd, &mut ev) == 0 }
    }

    /// Receives up to BATCHES_PER_SOCKET_MAX batches from one ready socket.
    fn drain_socket(&mut self, now: u64, slot: usize, rtcp: bool) {
        for _ in 0..BATCHES_PER_SOCKET_MAX {
            let Some(stream) = self.streams.get(slot).and_then(|s| s.as_ref()) else {
                self.local.unknown_socket += 1;
                return;
            };
            let fd = match (rtcp, &stream.sockets.rtcp) {
                (false, _) => stream.sockets.rtp.as_raw_fd(),
                (true, Some(s)) => s.as_raw_fd(),
                (true, None) => return,
            };
            for h in self.headers.iter_mut() {
                h.msg_len = 0;
                h.msg_hdr.msg_flags = 0;
            }
            // SAFETY: headers[i] points at iovecs[i] which points at buffers[i], all owned by
            // self and alive for the call; the kernel writes at most DATAGRAM_MAX per buffer.
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
                return; // EAGAIN (drained) or an error on this socket; epoll tells us again.
            }
            let n = n as usize;
            for i in 0..n {
                let len = (self.headers[i].msg_len as usize).min(DATAGRAM_MAX);
                self.local.packets += 1;
                self.local.bytes += len as u64;
                if rtcp {
                    self.local.rtcp_packets += 1;
                    continue;
                }
                self.handle(now, slot, i, len);
            }
            if n < self.batch {
                return;
            }
        }
    }

    fn handle(&mut self, now: u64, slot: usize, buffer: usize, len: usize) {
        // drain_socket checked the slot is occupied.
        let Some(stream) = self.streams[slot].as_mut() else {
            return;
        };
        let packet = &self.buffers[buffer][..len];
        if stream
            .receiver
            .handle_packet(now, packet, &mut self.frame)
            .is_ok()
        {
            // We purposely copy the frame into the ring slot rather than box it: no allocation.
            if self.ring.push((*self.frame).clone()).is_err() {
                stream.receiver.count_ring_full();
                self.local.ring_full += 1;
            }
        }
    }

    fn publish(&mut self, now: u64) {
        self.heartbeat_ns.store(now, Ordering::Relaxed);
        let c = &self.counters;
        c.packets.store(self.local.packets, Ordering::Relaxed);
        c.bytes.store(self.local.bytes, Ordering::Relaxed);
        c.rtcp_packets
            .store(self.local.rtcp_packets, Ordering::Relaxed);
        c.unknown_socket
            .store(self.local.unknown_socket, Ordering::Relaxed);
        c.ring_full.store(self.local.ring_full, Ordering::Relaxed);
        if now.saturating_sub(self.last_report_ns) >= REPORT_INTERVAL_NS {
            self.last_report_ns = now;
            let streams = self
                .by_key
                .iter()
                .filter_map(|(k, &slot)| {
                    self.streams[slot]
                        .as_ref()
                        .map(|s| (*k, *s.receiver.stats()))
                })
                .collect::<Vec<(StreamKey, RtpStats)>>();
            // A full report channel means the control plane is behind; the next report
            // carries the same cumulative counters, so dropping one loses nothing.
            let _ = self.reports.try_send(Report::Stats {
                worker: self.index,
                streams,
            });
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // SAFETY: we own the epoll fd and close it once.
        unsafe { libc::close(self.epoll) };
    }
}
