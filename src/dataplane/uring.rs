//! The io_uring backend: per worker one ring (SINGLE_ISSUER + DEFER_TASKRUN where the kernel
//! has them, else COOP_TASKRUN), sockets registered as fixed files, one multishot `recvmsg` per
//! socket drawing from a provided-buffer ring, completions reaped in bounded batches with the
//! clock read once per batch. A multishot receive that ends (ENOBUFS, or the kernel ending it)
//! is re-armed and counted.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::{BufRingEntry, Fixed, RecvMsgOut, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, IoUring};

use super::mono_now_ns;
use super::worker::{Backend, Core, Lane, Stream, WAIT_MS};

/// Provided buffers per worker (a power of two, ≤ 32768). Memory: entries × BUF_BYTES.
const BUF_ENTRIES: u16 = 4096;
/// Bytes per provided buffer: the 16-byte recvmsg header, the source address and the largest
/// datagram we take.
const BUF_BYTES: usize = 16 + super::SOCKADDR_BYTES + 2048;
/// Buffer group id of the provided-buffer ring.
const BGID: u16 = 7;
/// Submission queue entries; completions are sized 8× (many datagrams per multishot).
const SQ_ENTRIES: u32 = 512;
/// Completions handled per reap, so one loop turn has bounded work.
const CQE_BATCH: usize = 1024;
/// Fixed-file table size: two sockets (RTP, RTCP) per stream slot, capped by RLIMIT_NOFILE
/// (the kernel refuses a larger table).
const FIXED_FILES_MAX: u32 = 32768;
/// user_data of cancellations, whose completions carry nothing to do.
const CANCEL_TAG: u64 = u64::MAX;

// The kernel requires a power-of-two buffer ring of at most 32,768 entries; buffer ids are u16.
const _: () = assert!(BUF_ENTRIES.is_power_of_two() && BUF_ENTRIES <= 32768);
// A buffer holds the 16-byte recvmsg header and the largest datagram a worker accepts.
const _: () = assert!(BUF_BYTES >= 16 + super::SOCKADDR_BYTES + super::worker::DATAGRAM_MAX);

/// Bytes of provided buffers per io_uring worker (for the start-up memory budget).
pub const PROVIDED_BUFFER_BYTES: usize = BUF_ENTRIES as usize * BUF_BYTES;

/// Which setup flags the kernel accepted, for the start-up log.
#[derive(Debug, Clone, Copy)]
pub(super) enum Taskrun {
    Defer,
    Coop,
    Plain,
    /// A kernel thread polls the submission queue (`DATAPLANE_SQPOLL`).
    SqPoll,
}

/// How long the SQPOLL thread spins without work before it sleeps (then the next submit
/// wakes it).
const SQPOLL_IDLE_MS: u32 = 100;

/// SRTP datagrams of different streams handled together (their HMACs interleaved).
const LANES: usize = 4;

/// A received datagram waiting for its lane group; its buffer is not recycled yet.
struct Held {
    bid: u16,
    range: std::ops::Range<usize>,
    slot: usize,
    source: Option<std::net::SocketAddr>,
}

pub(super) struct Uring {
    /// Datagrams waiting for a lane group: at most `LANES`, distinct slots.
    lanes: Vec<Held>,
    ring: IoUring,
    taskrun: Taskrun,
    /// `BUF_ENTRIES` ring entries in page-aligned anonymous memory, shared with the kernel.
    bufring: *mut BufRingEntry,
    bufring_bytes: usize,
    /// The provided buffers themselves, `BUF_ENTRIES × BUF_BYTES`.
    buffers: Box<[u8]>,
    /// Our copy of the buffer ring's tail (published with a Release store per batch).
    tail: u16,
    /// The msghdr template of every multishot recvmsg (source address, no control data); boxed so
    /// its address stays valid for the kernel while receives are armed.
    msghdr: Box<libc::msghdr>,
    /// user_data of receives to submit again after this batch (reused, never reallocated).
    rearm: Vec<u64>,
    fixed_files: u32,
}

// SAFETY: `bufring` points to memory owned by this value (unmapped in Drop) and is only used
// by the worker thread that owns it.
unsafe impl Send for Uring {}

fn user_data(generation: u32, slot: usize, rtcp: bool) -> u64 {
    (u64::from(generation) << 32) | ((slot as u64) << 1) | u64::from(rtcp)
}

fn decode(user_data: u64) -> (u32, usize, bool) {
    (
        (user_data >> 32) as u32,
        ((user_data & 0xFFFF_FFFF) >> 1) as usize,
        user_data & 1 == 1,
    )
}

impl Uring {
    /// Builds the ring on the calling thread (SINGLE_ISSUER ties it to its creator). With
    /// `sqpoll` a kernel thread polls the submission queue; where the kernel refuses it
    /// (unprivileged, old kernel) the ring is built without and a warning says so.
    pub(super) fn new(sqpoll: bool) -> std::io::Result<Uring> {
        let cq = SQ_ENTRIES * 8;
        let polled = sqpoll
            .then(|| {
                IoUring::builder()
                    .setup_sqpoll(SQPOLL_IDLE_MS)
                    .setup_cqsize(cq)
                    .build(SQ_ENTRIES)
                    .map_err(|e| tracing::warn!(error = %e, "SQPOLL refused; without it"))
                    .ok()
            })
            .flatten();
        let (ring, taskrun) = match polled {
            Some(r) => (r, Taskrun::SqPoll),
            None => Self::build_plain(cq)?,
        };
        Self::finish(ring, taskrun)
    }

    /// The ring without SQPOLL: DEFER_TASKRUN, else COOP_TASKRUN, else plain.
    fn build_plain(cq: u32) -> std::io::Result<(IoUring, Taskrun)> {
        Ok(
            match IoUring::builder()
                .setup_single_issuer()
                .setup_defer_taskrun()
                .setup_cqsize(cq)
                .build(SQ_ENTRIES)
            {
                Ok(r) => (r, Taskrun::Defer),
                Err(_) => match IoUring::builder()
                    .setup_coop_taskrun()
                    .setup_cqsize(cq)
                    .build(SQ_ENTRIES)
                {
                    Ok(r) => (r, Taskrun::Coop),
                    Err(_) => (
                        IoUring::builder().setup_cqsize(cq).build(SQ_ENTRIES)?,
                        Taskrun::Plain,
                    ),
                },
            },
        )
    }

    fn finish(ring: IoUring, taskrun: Taskrun) -> std::io::Result<Uring> {
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(opcode::RecvMsgMulti::CODE) {
            return Err(std::io::Error::other("kernel lacks IORING_OP_RECVMSG"));
        }
        let fixed_files = FIXED_FILES_MAX
            .min(nofile_limit().saturating_sub(64))
            .max(2);
        ring.submitter().register_files_sparse(fixed_files)?;

        let bufring_bytes = usize::from(BUF_ENTRIES) * std::mem::size_of::<BufRingEntry>();
        // SAFETY: anonymous private mapping; the result is checked. mmap memory is page
        // aligned, as IORING_REGISTER_PBUF_RING requires.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bufring_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let mut u = Uring {
            ring,
            taskrun,
            bufring: ptr.cast(),
            bufring_bytes,
            buffers: vec![0u8; usize::from(BUF_ENTRIES) * BUF_BYTES].into_boxed_slice(),
            tail: 0,
            msghdr: Box::new({
                // SAFETY: msghdr is plain old data; all-zero means no name and no control data.
                let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
                // Ask for the source address (the buffer reserves room for it).
                m.msg_namelen = super::SOCKADDR_BYTES as u32;
                m
            }),
            rearm: Vec::with_capacity(CQE_BATCH),
            lanes: Vec::with_capacity(LANES),
            fixed_files,
        };
        // SAFETY: the ring memory is valid, page aligned and lives as long as `u` (unmapped in
        // Drop, after the ring itself is gone: fields drop after Drop::drop runs).
        unsafe {
            u.ring.submitter().register_buf_ring_with_flags(
                u.bufring as u64,
                BUF_ENTRIES,
                BGID,
                0,
            )?;
        }
        for bid in 0..BUF_ENTRIES {
            u.recycle(bid);
        }
        u.publish_tail();
        Ok(u)
    }

    pub(super) fn taskrun(&self) -> Taskrun {
        self.taskrun
    }

    /// Puts buffer `bid` back at the ring's tail (visible to the kernel at `publish_tail`).
    fn recycle(&mut self, bid: u16) {
        let index = usize::from(self.tail & (BUF_ENTRIES - 1));
        let addr = self.buffers.as_ptr() as u64 + u64::from(bid) * BUF_BYTES as u64;
        // SAFETY: index < BUF_ENTRIES, inside the mapping; the kernel only reads entries
        // between its head and the published tail, and this one is past the tail.
        let entry = unsafe { &mut *self.bufring.add(index) };
        entry.set_addr(addr);
        entry.set_len(BUF_BYTES as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Handles the held datagrams (four, two or one at a time) and recycles their buffers.
    fn flush_lanes(&mut self, core: &mut Core, now: u64) {
        if self.lanes.is_empty() {
            return;
        }
        let held = std::mem::take(&mut self.lanes);
        let base = self.buffers.as_mut_ptr();
        let lane = |h: &Held| {
            // SAFETY: every held range lies inside `buffers` (taken from a parsed completion
            // of buffer `bid`, within its BUF_BYTES) and held buffers have distinct ids, so
            // the slices don't overlap; the kernel doesn't write them until `recycle`.
            let packet =
                unsafe { std::slice::from_raw_parts_mut(base.add(h.range.start), h.range.len()) };
            Lane {
                slot: h.slot,
                source: h.source,
                packet,
            }
        };
        let mut rest = &held[..];
        while !rest.is_empty() {
            match rest {
                [a, b, c, d, ..] => {
                    core.handle_lanes(now, [lane(a), lane(b), lane(c), lane(d)]);
                    rest = &rest[4..];
                }
                [a, b, ..] => {
                    core.handle_lanes(now, [lane(a), lane(b)]);
                    rest = &rest[2..];
                }
                [a] => {
                    let l = lane(a);
                    core.handle(now, l.slot, 0, false, l.source, l.packet);
                    rest = &[];
                }
                [] => {}
            }
        }
        for h in &held {
            self.recycle(h.bid);
        }
        self.lanes = held;
        self.lanes.clear();
    }

    fn publish_tail(&self) {
        // SAFETY: the tail field overlays entry 0's reserved field (the kernel ABI); it is a
        // u16 at a 2-aligned address inside the mapping. Release: the entries written above
        // become visible to the kernel before the new tail.
        let tail = unsafe { &*(BufRingEntry::tail(self.bufring) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
    }

    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: the entry's pointers (msghdr) outlive the request: boxed in self.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            // Submission queue full: hand what is queued to the kernel and retry.
            if self.ring.submit().is_err() {
                return;
            }
        }
    }

    fn arm(&mut self, user_data: u64) {
        let (_, slot, rtcp) = decode(user_data);
        let fixed = Fixed((slot as u32) * 2 + u32::from(rtcp));
        let entry = opcode::RecvMsgMulti::new(fixed, &*self.msghdr, BGID)
            .build()
            .user_data(user_data);
        self.push(entry);
    }
}

impl Backend for Uring {
    fn add(&mut self, slot: usize, stream: &Stream) -> std::io::Result<()> {
        let base = (slot as u32) * 2;
        if base + 1 >= self.fixed_files {
            return Err(std::io::Error::other(
                "fixed-file table full on this worker",
            ));
        }
        let rtcp_fd = stream
            .sockets
            .rtcp
            .as_ref()
            .map(|s| s.as_raw_fd())
            .unwrap_or(-1);
        let fds = [stream.sockets.rtp.as_raw_fd(), rtcp_fd];
        self.ring.submitter().register_files_update(base, &fds)?;
        self.arm(user_data(stream.generation, slot, false));
        if rtcp_fd >= 0 {
            self.arm(user_data(stream.generation, slot, true));
        }
        Ok(())
    }

    fn remove(&mut self, slot: usize, stream: &Stream) {
        for rtcp in [false, true] {
            let target = user_data(stream.generation, slot, rtcp);
            self.push(
                opcode::AsyncCancel::new(target)
                    .build()
                    .user_data(CANCEL_TAG),
            );
        }
        // Drop the table's references so closing our descriptors really closes the sockets.
        let _ = self
            .ring
            .submitter()
            .register_files_update((slot as u32) * 2, &[-1, -1]);
    }

    fn poll(&mut self, core: &mut Core) {
        let ts = Timespec::new().nsec(WAIT_MS * 1_000_000);
        let args = SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY)
                ) => {}
            Err(_) => core.local.receive_errors += 1,
        }
        // Read the clock once per batch of completions.
        let now = mono_now_ns();
        let mut handled = 0;
        loop {
            let Some(cqe) = self.ring.completion().next() else {
                break;
            };
            handled += 1;
            let ud = cqe.user_data();
            if ud == CANCEL_TAG {
                continue;
            }
            let (generation, slot, rtcp) = decode(ud);
            let res = cqe.result();
            let flags = cqe.flags();
            let mut continue_held = false;
            if let Some(bid) = cqueue::buffer_select(flags) {
                if res >= 0 {
                    let start = usize::from(bid) * BUF_BYTES;
                    let buf = &self.buffers[start..start + (res as usize).min(BUF_BYTES)];
                    match RecvMsgOut::parse(buf, &self.msghdr) {
                        Ok(out) => {
                            let source = super::socket_addr_from_raw(out.name_data());
                            // SRTP decrypts in place: re-borrow the payload mutably. The
                            // buffer is ours until `recycle` hands it back to the kernel.
                            let payload = out.payload_data();
                            let off = payload.as_ptr() as usize - buf.as_ptr() as usize;
                            let range = start + off..start + off + payload.len();
                            if core.lane_eligible(slot, generation, rtcp, payload) {
                                // Held (not recycled) until its lane group is handled.
                                if self.lanes.iter().any(|l| l.slot == slot) {
                                    self.flush_lanes(core, now);
                                }
                                self.lanes.push(Held {
                                    bid,
                                    range,
                                    slot,
                                    source,
                                });
                                if self.lanes.len() == LANES {
                                    self.flush_lanes(core, now);
                                }
                                continue_held = true;
                            } else {
                                let packet = &mut self.buffers[range];
                                core.handle(now, slot, generation, rtcp, source, packet)
                            }
                        }
                        Err(()) => core.local.receive_errors += 1,
                    }
                }
                if !continue_held {
                    self.recycle(bid);
                }
            }
            if res < 0 {
                match -res {
                    libc::ENOBUFS => core.local.no_buffers += 1,
                    libc::ECANCELED => continue, // The stream was closed.
                    _ => core.local.receive_errors += 1,
                }
            }
            let live = core
                .streams
                .get(slot)
                .and_then(|s| s.as_ref())
                .is_some_and(|s| s.generation == generation);
            if !cqueue::more(flags) && live {
                self.rearm.push(ud);
            }
            if handled >= CQE_BATCH {
                break;
            }
        }
        self.flush_lanes(core, now);
        self.publish_tail();
        let rearm = std::mem::take(&mut self.rearm);
        for &ud in &rearm {
            core.local.rearms += 1;
            self.arm(ud);
        }
        self.rearm = rearm;
        self.rearm.clear();
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        let _ = self.ring.submitter().unregister_buf_ring(BGID);
        // SAFETY: the mapping was created in `new` with this size and is no longer registered.
        unsafe { libc::munmap(self.bufring.cast(), self.bufring_bytes) };
    }
}

/// The soft RLIMIT_NOFILE (main raises it to the hard limit at start-up).
fn nofile_limit() -> u32 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscall filling a valid struct; the result is checked.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_cur.min(u64::from(u32::MAX)) as u32
}

/// Raises the soft RLIMIT_NOFILE to the hard limit: each stream holds two sockets (and two
/// fixed-file slots with io_uring), so the default 1024 caps a box at a few hundred streams.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a valid struct; results checked.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
    }
    lim.rlim_cur
}

/// Whether io_uring with multishot recvmsg and provided-buffer rings works here; the error
/// says why not (for the one start-up log line).
pub(super) fn probe() -> std::io::Result<Taskrun> {
    Uring::new(false).map(|u| u.taskrun())
}
