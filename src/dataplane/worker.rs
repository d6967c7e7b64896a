//! One receive worker: the backend-independent core (streams, commands, reports, counters) and
//! the loop that drives a [`Backend`] (epoll + recvmmsg, or io_uring).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::media::rtp::{RtpReceiver, RtpStats, StreamParams};
use crate::media::{MediaFrame, StreamKey};
use crate::ring;
use crate::srtp;

use super::{mono_now_ns, Command, Report, StreamSockets};

/// Largest datagram we accept; longer ones are truncated and counted malformed.
pub(super) const DATAGRAM_MAX: usize = 2048;
/// Longest sleep waiting for packets: bounds command latency and heartbeat staleness.
pub(super) const WAIT_MS: u32 = 10;
/// Packets in one poll beyond which the worker is behind and does not coalesce.
const COALESCE_BACKLOG: u64 = 512;
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
    rearms: AtomicU64,
    no_buffers: AtomicU64,
    receive_errors: AtomicU64,
    xdp_kernel_drops: AtomicU64,
    srtp_drops: AtomicU64,
    srtp_lane_packets: AtomicU64,
    stt_ring_full: AtomicU64,
}

#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct CounterSnapshot {
    pub packets: u64,
    pub bytes: u64,
    pub rtcp_packets: u64,
    pub unknown_socket: u64,
    pub ring_full: u64,
    pub streams: u64,
    /// io_uring: multishot receives submitted again (ended, or out of provided buffers).
    pub rearms: u64,
    /// io_uring: completions that found the provided-buffer ring empty (ENOBUFS).
    pub no_buffers: u64,
    pub receive_errors: u64,
    /// AF_XDP: frames the kernel dropped before our socket (RX ring full, no fill buffer).
    pub xdp_kernel_drops: u64,
    /// SRTP/SRTCP packets that failed authentication, replay or parsing (per stream too).
    pub srtp_drops: u64,
    /// SRTP packets unprotected in lane groups (HMACs of several streams interleaved).
    pub srtp_lane_packets: u64,
    /// Frames the STT ring had no room for (transcription lost them; recording did not).
    pub stt_ring_full: u64,
}

impl CounterSnapshot {
    pub fn add(&mut self, o: &CounterSnapshot) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.rtcp_packets += o.rtcp_packets;
        self.unknown_socket += o.unknown_socket;
        self.ring_full += o.ring_full;
        self.streams += o.streams;
        self.rearms += o.rearms;
        self.no_buffers += o.no_buffers;
        self.receive_errors += o.receive_errors;
        self.xdp_kernel_drops += o.xdp_kernel_drops;
        self.srtp_drops += o.srtp_drops;
        self.srtp_lane_packets += o.srtp_lane_packets;
        self.stt_ring_full += o.stt_ring_full;
    }
}

impl WorkerCounters {
    pub fn snapshot(&self) -> CounterSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CounterSnapshot {
            packets: l(&self.packets),
            bytes: l(&self.bytes),
            rtcp_packets: l(&self.rtcp_packets),
            unknown_socket: l(&self.unknown_socket),
            ring_full: l(&self.ring_full),
            streams: l(&self.streams),
            rearms: l(&self.rearms),
            no_buffers: l(&self.no_buffers),
            receive_errors: l(&self.receive_errors),
            xdp_kernel_drops: l(&self.xdp_kernel_drops),
            srtp_drops: l(&self.srtp_drops),
            srtp_lane_packets: l(&self.srtp_lane_packets),
            stt_ring_full: l(&self.stt_ring_full),
        }
    }
}

pub(super) struct Stream {
    receiver: RtpReceiver,
    /// RTP/SAVP streams: decrypts before `receiver` sees a packet.
    srtp: Option<srtp::Receiver>,
    pub(super) sockets: StreamSockets,
    /// Distinguishes this stream from earlier occupants of its slot, so completions of a
    /// closed stream's receives are never attributed to a new one (io_uring).
    pub(super) generation: u32,
}

/// Per-worker totals as plain integers, published to the shared atomics once per iteration.
#[derive(Default)]
pub(super) struct Local {
    pub packets: u64,
    pub bytes: u64,
    pub rtcp_packets: u64,
    pub unknown_socket: u64,
    pub ring_full: u64,
    pub rearms: u64,
    pub no_buffers: u64,
    pub receive_errors: u64,
    pub xdp_kernel_drops: u64,
    pub srtp_drops: u64,
    pub srtp_lane_packets: u64,
    pub stt_ring_full: u64,
}

/// What a backend must do with sockets as streams come and go.
pub(super) trait Backend {
    /// Starts receiving on `stream`'s sockets; `slot` and `generation` identify it.
    fn add(&mut self, slot: usize, stream: &Stream) -> std::io::Result<()>;
    /// Stops receiving on `stream`'s sockets (they are closed right after).
    fn remove(&mut self, slot: usize, stream: &Stream);
    /// Waits up to WAIT_MS for datagrams and hands each to `core.handle`.
    fn poll(&mut self, core: &mut Core);
}

/// A datagram of a lane group (`Core::handle_lanes`).
pub(super) struct Lane<'a> {
    pub slot: usize,
    pub source: Option<std::net::SocketAddr>,
    pub packet: &'a mut [u8],
}

/// The plain RTP or RTCP of one stream after SRTP: RTCP figures, or receive, decode and hand
/// the frame to the recorder's ring (a full ring is a counted drop).
#[allow(clippy::too_many_arguments)]
fn deliver(
    stream: &mut Stream,
    reports: &crossbeam_channel::Sender<Report>,
    out: &mut Outputs,
    frame: &mut MediaFrame,
    local: &mut Local,
    now: u64,
    rtcp: bool,
    source: Option<std::net::SocketAddr>,
    packet: &[u8],
) {
    if rtcp {
        local.rtcp_packets += 1;
        stream.receiver.handle_rtcp(packet);
        return;
    }
    match stream
        .receiver
        .handle_packet_from(now, source, packet, frame)
    {
        Ok(()) => loop {
            // The frame is copied into the ring slot (no allocation), its valid part only.
            if !out.recorder.push_in_place(|slot| slot.copy_from(frame)) {
                stream.receiver.count_ring_full();
                local.ring_full += 1;
            }
            if let Some(stt) = out
                .stt
                .as_mut()
                .filter(|_| stream.receiver.params().transcribe)
            {
                if !stt.push_in_place(|slot| slot.copy_from(frame)) {
                    local.stt_ring_full += 1;
                }
            }
            // A packet that decoded to more than one frame (long Opus packets, filled gaps).
            if !stream.receiver.next_frame(frame) {
                break;
            }
        },
        Err(crate::media::rtp::Drop::TelephoneEvent) => {
            while let Some(digit) = stream.receiver.take_digit() {
                let key = stream.receiver.params().key;
                // A full report channel loses the digit's event, never audio.
                let _ = reports.try_send(Report::Dtmf { key, digit });
            }
        }
        Err(_) => {}
    }
}

/// Where a worker's decoded frames go: the recorder always, STT when it runs.
pub struct Outputs {
    pub recorder: ring::Producer<MediaFrame>,
    /// Frames of streams marked `transcribe`; a full ring loses them for STT only.
    pub stt: Option<ring::Producer<MediaFrame>>,
}

/// Everything a worker owns that doesn't depend on how datagrams arrive.
pub(super) struct Core {
    pub index: usize,
    out: Outputs,
    commands: crossbeam_channel::Receiver<Command>,
    reports: crossbeam_channel::Sender<Report>,
    heartbeat_ns: Arc<AtomicU64>,
    counters: Arc<WorkerCounters>,
    pub streams: Vec<Option<Stream>>,
    free_slots: Vec<usize>,
    by_key: HashMap<StreamKey, usize>,
    pub local: Local,
    frame: Box<MediaFrame>,
    last_report_ns: u64,
    next_generation: u32,
    coalesce: std::time::Duration,
}

impl Core {
    pub(super) fn new(
        index: usize,
        out: Outputs,
        commands: crossbeam_channel::Receiver<Command>,
        reports: crossbeam_channel::Sender<Report>,
        heartbeat_ns: Arc<AtomicU64>,
        counters: Arc<WorkerCounters>,
        coalesce: std::time::Duration,
    ) -> Core {
        Core {
            index,
            out,
            commands,
            reports,
            heartbeat_ns,
            counters,
            streams: Vec::new(),
            free_slots: Vec::new(),
            by_key: HashMap::new(),
            local: Local::default(),
            frame: Box::new(MediaFrame::empty()),
            last_report_ns: 0,
            next_generation: 1,
            coalesce,
        }
    }

    /// Runs the worker loop until Shutdown.
    pub(super) fn run(mut self, backend: &mut dyn Backend) {
        loop {
            if !self.apply_commands(backend) {
                break;
            }
            let before = self.local.packets;
            backend.poll(&mut self);
            self.publish(mono_now_ns());
            // Interrupt moderation in user space: while packets flow, a short sleep lets the
            // next poll take them as a batch instead of waking once per packet or two (a
            // wake-up costs more than handling a packet). The kernel holds them meanwhile
            // (socket buffers, the provided-buffer ring, the AF_XDP ring). A poll that found
            // a backlog goes straight on.
            let handled = self.local.packets - before;
            if handled > 0 && handled < COALESCE_BACKLOG && !self.coalesce.is_zero() {
                std::thread::sleep(self.coalesce);
            }
        }
        // Close every stream so the backend releases what it registered.
        let keys: Vec<StreamKey> = self.by_key.keys().copied().collect();
        for key in keys {
            self.close(backend, key);
        }
        self.publish(mono_now_ns());
    }

    /// Applies pending commands; returns false on Shutdown.
    fn apply_commands(&mut self, backend: &mut dyn Backend) -> bool {
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::Open { params, sockets } => self.open(backend, params, sockets),
                Command::Update { params } => {
                    if let Some(&slot) = self.by_key.get(&params.key) {
                        if let Some(s) = self.streams[slot].as_mut() {
                            match (&params.srtp, s.srtp.as_mut()) {
                                (Some(p), Some(r)) => r.update(p),
                                (Some(p), None) => s.srtp = Some(srtp::Receiver::new(p)),
                                (None, _) => s.srtp = None,
                            }
                            s.receiver.update(params);
                        }
                    }
                }
                Command::Close { key } => self.close(backend, key),
                Command::Shutdown => return false,
            }
        }
        true
    }

    fn open(&mut self, backend: &mut dyn Backend, params: StreamParams, sockets: StreamSockets) {
        let key = params.key;
        if self.by_key.contains_key(&key) {
            self.close(backend, key);
        }
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.streams.push(None);
            self.streams.len() - 1
        });
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        let stream = Stream {
            srtp: params.srtp.as_ref().map(srtp::Receiver::new),
            receiver: RtpReceiver::new(params),
            sockets,
            generation,
        };
        if let Err(e) = backend.add(slot, &stream) {
            tracing::error!(worker = self.index, ?key, error = %e, "cannot receive on stream");
        }
        self.streams[slot] = Some(stream);
        self.by_key.insert(key, slot);
        self.counters
            .streams
            .store(self.by_key.len() as u64, Ordering::Relaxed);
    }

    fn close(&mut self, backend: &mut dyn Backend, key: StreamKey) {
        let Some(slot) = self.by_key.remove(&key) else {
            return;
        };
        if let Some(stream) = self.streams[slot].take() {
            backend.remove(slot, &stream);
            let stats = Box::new(*stream.receiver.stats());
            drop(stream); // Closes the sockets.
            let _ = self.reports.try_send(Report::Closed { key, stats });
        }
        self.free_slots.push(slot);
        self.counters
            .streams
            .store(self.by_key.len() as u64, Ordering::Relaxed);
    }

    /// The stream in `slot` if it is still the one of `generation` (0 = any).
    pub(super) fn stream_fd(&self, slot: usize, rtcp: bool) -> Option<RawFd> {
        let stream = self.streams.get(slot)?.as_ref()?;
        match rtcp {
            false => Some(stream.sockets.rtp.as_raw_fd()),
            true => stream.sockets.rtcp.as_ref().map(|s| s.as_raw_fd()),
        }
    }

    /// Handles one datagram of `slot` received at `now` (monotonic ns, read once per batch).
    pub(super) fn handle(
        &mut self,
        now: u64,
        slot: usize,
        generation: u32,
        rtcp: bool,
        source: Option<std::net::SocketAddr>,
        packet: &mut [u8],
    ) {
        self.local.packets += 1;
        self.local.bytes += packet.len() as u64;
        let Some(stream) = self.streams.get_mut(slot).and_then(|s| s.as_mut()) else {
            self.local.unknown_socket += 1;
            return;
        };
        if generation != 0 && stream.generation != generation {
            self.local.unknown_socket += 1;
            return;
        }
        let packet: &[u8] = match stream.srtp.as_mut() {
            None => packet,
            Some(srtp) => {
                // RTCP muxed on the RTP port is SRTCP: PT 192–223 (RFC 5761 §4).
                let srtcp = rtcp || packet.get(1).is_some_and(|pt| (192..=223).contains(pt));
                let r = match srtcp {
                    true => srtp.unprotect_rtcp(packet),
                    false => srtp.unprotect_rtp(packet),
                };
                match r {
                    Ok(n) => &packet[..n],
                    Err(e) => {
                        stream.receiver.count_srtp_drop(e);
                        self.local.srtp_drops += 1;
                        return;
                    }
                }
            }
        };
        deliver(
            stream,
            &self.reports,
            &mut self.out,
            &mut self.frame,
            &mut self.local,
            now,
            rtcp,
            source,
            packet,
        );
    }

    /// Whether a datagram can wait for a lane group (`handle_lanes`): RTP (not RTCP) of a live
    /// stream whose SRTP is AES-CM with a tag.
    pub(super) fn lane_eligible(
        &self,
        slot: usize,
        generation: u32,
        rtcp: bool,
        packet: &[u8],
    ) -> bool {
        if rtcp || packet.get(1).is_some_and(|pt| (192..=223).contains(pt)) {
            return false;
        }
        self.streams
            .get(slot)
            .and_then(|s| s.as_ref())
            .is_some_and(|s| {
                (generation == 0 || s.generation == generation)
                    && s.srtp.as_ref().is_some_and(srtp::Receiver::batches)
            })
    }

    /// Handles one datagram of each of `N` different eligible streams: their SRTP tags are
    /// computed together (`srtp::Receiver::unprotect_rtp_lanes`), then each goes on as in
    /// `handle`.
    pub(super) fn handle_lanes<const N: usize>(&mut self, now: u64, items: [Lane<'_>; N]) {
        let mut streams: [*mut Stream; N] = [std::ptr::null_mut(); N];
        let mut rx: [*mut srtp::Receiver; N] = [std::ptr::null_mut(); N];
        let mut valid = true;
        for k in 0..N {
            let slot = items[k].slot;
            let distinct = items[..k].iter().all(|o| o.slot != slot);
            match self.streams.get_mut(slot).and_then(|s| s.as_mut()) {
                Some(stream) if distinct => {
                    streams[k] = stream;
                    match stream.srtp.as_mut() {
                        Some(r) => rx[k] = r,
                        None => valid = false,
                    }
                }
                _ => valid = false,
            }
        }
        if !valid {
            for d in items {
                self.handle(now, d.slot, 0, false, d.source, d.packet);
            }
            return;
        }
        let mut items = items;
        for d in &items {
            self.local.packets += 1;
            self.local.bytes += d.packet.len() as u64;
        }
        self.local.srtp_lane_packets += N as u64;
        let results = {
            // SAFETY: the slots are distinct (checked above), so each pointer is a different
            // element of `self.streams`, and each receiver is a field of a different stream:
            // the `&mut`s don't alias. Nothing else touches `self.streams` while they live.
            let rx: [&mut srtp::Receiver; N] = rx.map(|p| unsafe { &mut *p });
            let packets = items.each_mut().map(|d| &mut *d.packet);
            srtp::Receiver::unprotect_rtp_lanes(rx, packets)
        };
        for (k, d) in items.into_iter().enumerate() {
            // SAFETY: as above; the receivers' borrows ended with the call, and one stream's
            // `&mut` lives at a time.
            let stream = unsafe { &mut *streams[k] };
            match results[k] {
                Ok(n) => deliver(
                    stream,
                    &self.reports,
                    &mut self.out,
                    &mut self.frame,
                    &mut self.local,
                    now,
                    false,
                    d.source,
                    &d.packet[..n],
                ),
                Err(e) => {
                    stream.receiver.count_srtp_drop(e);
                    self.local.srtp_drops += 1;
                }
            }
        }
    }

    fn publish(&mut self, now: u64) {
        self.heartbeat_ns.store(now, Ordering::Relaxed);
        let c = &self.counters;
        let l = &self.local;
        c.packets.store(l.packets, Ordering::Relaxed);
        c.bytes.store(l.bytes, Ordering::Relaxed);
        c.rtcp_packets.store(l.rtcp_packets, Ordering::Relaxed);
        c.unknown_socket.store(l.unknown_socket, Ordering::Relaxed);
        c.ring_full.store(l.ring_full, Ordering::Relaxed);
        c.rearms.store(l.rearms, Ordering::Relaxed);
        c.no_buffers.store(l.no_buffers, Ordering::Relaxed);
        c.receive_errors.store(l.receive_errors, Ordering::Relaxed);
        c.xdp_kernel_drops
            .store(l.xdp_kernel_drops, Ordering::Relaxed);
        c.srtp_drops.store(l.srtp_drops, Ordering::Relaxed);
        c.srtp_lane_packets
            .store(l.srtp_lane_packets, Ordering::Relaxed);
        c.stt_ring_full.store(l.stt_ring_full, Ordering::Relaxed);
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
