//! The data plane: per-core receive loops. THE ONLY module that touches io_uring, epoll and
//! recvmmsg.
//!
//! Core model (glommio's thread-per-core, sharded by port): each worker thread is pinned to one
//! core and owns the sockets of the streams whose local port maps to it (`port / 2 % workers`).
//! A stream's state ([`RtpReceiver`]) lives on exactly that worker: no locks, no shared
//! atomics and no allocation on the per-packet path. Decoded frames leave through the worker's
//! own SPSC ring to the recorder (and, for transcribed streams, a second one to STT); a full
//! ring drops and counts, never blocks.
//!
//! Each iteration (TigerBeetle's io loop): apply control commands, wait for datagrams (at
//! most 10 ms), read the clock once, handle a bounded batch — io_uring multishot recvmsg
//! completions from a provided-buffer ring (`uring`), or epoll readiness drained with
//! `recvmmsg` (`epoll`), chosen at start-up. Once a second the worker publishes per-stream
//! counters to the control plane (summed there; never per packet).
//!
//! Refuses: parsing SIP/SDP, touching files, reading global configuration.

mod epoll;
mod uring;
mod worker;
pub mod xdp;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};

use crate::media::rtp::{RtpStats, StreamParams};
use crate::media::{MediaFrame, StreamKey};

pub use uring::raise_nofile_limit;
pub use worker::{CounterSnapshot, Outputs, WorkerCounters};

/// `CLOCK_MONOTONIC` in nanoseconds: the one clock the data plane, the recorder and the
/// control plane share, so their timelines agree (the recorder's `SystemMonotonicClock` too).
pub fn mono_now_ns() -> u64 {
    use crate::sink::recorder::MonotonicClock;
    crate::sink::recorder::SystemMonotonicClock.now_ns()
}

/// A bound RTP socket and its RTCP companion (port + 1), handed to a worker with the stream.
#[derive(Debug)]
pub struct StreamSockets {
    pub rtp: UdpSocket,
    pub rtcp: Option<UdpSocket>,
}

/// Which receive backend to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendChoice {
    /// io_uring when the kernel allows it, else epoll (with one log line saying why).
    Auto,
    /// io_uring or refuse to start.
    IoUring,
    /// epoll + recvmmsg.
    Epoll,
    /// AF_XDP sockets on `DATAPLANE_XDP_INTERFACE`'s queues fed by an XDP program, beside
    /// epoll for RTCP and what the program leaves to the kernel. Never chosen by `Auto`.
    AfXdp,
}

/// Sizes and placement of the workers.
#[derive(Debug, Clone)]
pub struct DataplaneSettings {
    pub backend: BackendChoice,
    /// Number of receive workers (≥ 1).
    pub workers: usize,
    /// Datagrams per recvmmsg call.
    pub batch_size: usize,
    /// CPU to pin each worker to; `None` leaves placement to the kernel.
    pub cores: Vec<Option<usize>>,
    /// io_uring: a kernel thread polls each worker's submission queue (`DATAPLANE_SQPOLL`).
    pub sqpoll: bool,
    /// Sleep after a poll that handled packets, so the next takes a batch (0 = none).
    pub coalesce: std::time::Duration,
    /// AF_XDP: where and what to take off the NIC (with `BackendChoice::AfXdp`).
    pub xdp: Option<xdp::XdpSettings>,
}

/// Commands from the control plane to one worker.
#[derive(Debug)]
pub enum Command {
    Open {
        params: StreamParams,
        sockets: StreamSockets,
    },
    Update {
        params: StreamParams,
    },
    Close {
        key: StreamKey,
    },
    Shutdown,
}

/// Reports from workers to the control plane.
#[derive(Debug)]
pub enum Report {
    /// Sent about once a second: every stream the worker owns, with its counters.
    Stats {
        worker: usize,
        streams: Vec<(StreamKey, RtpStats)>,
    },
    /// A closed stream's final counters (boxed: a close is rare, the enum stays small).
    Closed {
        key: StreamKey,
        stats: Box<RtpStats>,
    },
    /// A DTMF digit (RFC 4733) completed on a stream; sent when its end packet arrives.
    Dtmf {
        key: StreamKey,
        digit: crate::media::rtp::Dtmf,
    },
}

/// The control plane's handle on the running workers.
pub struct Dataplane {
    workers: Vec<WorkerHandle>,
    reports: crossbeam_channel::Receiver<Report>,
    backend_name: &'static str,
    /// AF_XDP's program, map and link: detached when dropped (after the workers stopped).
    _xdp: Option<xdp::Attached>,
}

struct WorkerHandle {
    commands: crossbeam_channel::Sender<Command>,
    heartbeat_ns: Arc<AtomicU64>,
    counters: Arc<WorkerCounters>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Dataplane {
    /// Starts one worker per `Outputs`. Worker `i` pushes into `outputs[i]`. Resolves the
    /// backend first: `Auto` probes io_uring and falls back to epoll with one log line.
    pub fn start(settings: DataplaneSettings, outputs: Vec<Outputs>) -> std::io::Result<Dataplane> {
        assert_eq!(
            outputs.len(),
            settings.workers,
            "one set of rings per worker"
        );
        // AF_XDP: the program is loaded and attached once; each worker binds a socket to its
        // queue and enters it in the map.
        let xdp = match (settings.backend, &settings.xdp) {
            (BackendChoice::AfXdp, Some(x)) => Some(xdp::Attached::new(x, settings.workers)?),
            (BackendChoice::AfXdp, None) => {
                return Err(std::io::Error::other("af_xdp needs an interface"))
            }
            _ => None,
        };
        let use_uring = match settings.backend {
            BackendChoice::Epoll | BackendChoice::AfXdp => false,
            BackendChoice::IoUring => {
                uring::probe().map_err(|e| {
                    std::io::Error::other(format!("io_uring required but unavailable: {e}"))
                })?;
                true
            }
            BackendChoice::Auto => match uring::probe() {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "io_uring unavailable, using epoll; to enable it check sysctl \
                         kernel.io_uring_disabled=0, the container's seccomp profile and a \
                         kernel ≥ 6.0"
                    );
                    false
                }
            },
        };
        let (report_tx, reports) = crossbeam_channel::bounded(1024);
        let mut workers = Vec::with_capacity(settings.workers);
        let mut backend_name = if use_uring { "io_uring" } else { "epoll" };
        for (index, out) in outputs.into_iter().enumerate() {
            let (commands, command_rx) = crossbeam_channel::unbounded();
            let heartbeat_ns = Arc::new(AtomicU64::new(mono_now_ns()));
            let counters = Arc::new(WorkerCounters::default());
            let core_id = settings.cores.get(index).copied().flatten();
            let core = worker::Core::new(
                index,
                out,
                command_rx,
                report_tx.clone(),
                heartbeat_ns.clone(),
                counters.clone(),
                settings.coalesce,
            );
            let batch = settings.batch_size;
            let sqpoll = settings.sqpoll;
            let xsk = xdp.as_ref().map(|x| x.worker(index as u32));
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let thread = std::thread::Builder::new()
                .name(format!("rx-{index}"))
                .spawn(move || {
                    let kind = match (xsk, use_uring) {
                        (Some(x), _) => Kind::AfXdp(x),
                        (None, true) => Kind::Uring(sqpoll),
                        (None, false) => Kind::Epoll,
                    };
                    run_worker(index, core_id, kind, batch, core, ready_tx)
                })?;
            match ready_rx.recv() {
                Ok(Ok(name)) => backend_name = name,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(std::io::Error::other("data-plane worker died at start")),
            }
            workers.push(WorkerHandle {
                commands,
                heartbeat_ns,
                counters,
                thread: Some(thread),
            });
        }
        Ok(Dataplane {
            workers,
            reports,
            backend_name,
            _xdp: xdp,
        })
    }

    /// The receive backend the workers run: "io_uring", "epoll" or "af_xdp".
    pub fn backend(&self) -> &'static str {
        self.backend_name
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// The worker that owns `port`: RTP/RTCP pairs stay together.
    pub fn worker_for_port(&self, port: u16) -> usize {
        (port as usize / 2) % self.workers.len()
    }

    /// Hands a stream and its bound sockets to the worker owning `local_port`.
    pub fn open(&self, local_port: u16, params: StreamParams, sockets: StreamSockets) {
        self.send(local_port, Command::Open { params, sockets });
    }

    pub fn update(&self, local_port: u16, params: StreamParams) {
        self.send(local_port, Command::Update { params });
    }

    pub fn close(&self, local_port: u16, key: StreamKey) {
        self.send(local_port, Command::Close { key });
    }

    fn send(&self, port: u16, command: Command) {
        let w = &self.workers[self.worker_for_port(port)];
        if w.commands.send(command).is_err() {
            tracing::error!(port, "data-plane worker is gone; command lost");
        }
    }

    /// Reports waiting from the workers (non-blocking).
    pub fn try_report(&self) -> Option<Report> {
        self.reports.try_recv().ok()
    }

    /// Nanoseconds since each worker last completed a loop iteration (liveness).
    pub fn heartbeat_ages_ns(&self, now_ns: u64) -> Vec<u64> {
        self.workers
            .iter()
            .map(|w| now_ns.saturating_sub(w.heartbeat_ns.load(Ordering::Relaxed)))
            .collect()
    }

    /// Totals over every worker's counters (summed at read time).
    pub fn totals(&self) -> worker::CounterSnapshot {
        let mut total = worker::CounterSnapshot::default();
        for w in &self.workers {
            total.add(&w.counters.snapshot());
        }
        total
    }

    /// Stops every worker and waits for them.
    pub fn shutdown(&mut self) {
        for w in &self.workers {
            let _ = w.commands.send(Command::Shutdown);
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Bytes the kernel writes for a source address (`sockaddr_storage`).
pub(crate) const SOCKADDR_BYTES: usize = 128;

/// A source address buffer as the kernel fills it (aligned like `sockaddr_storage`).
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub(crate) struct NameBuf(pub [u8; SOCKADDR_BYTES]);

/// Decodes a `sockaddr_in`/`sockaddr_in6` from the bytes the kernel wrote; `None` for other
/// families or short buffers. Reads bytes only: no pointer casts.
pub(crate) fn socket_addr_from_raw(bytes: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([*bytes.first()?, *bytes.get(1)?]);
    let port = u16::from_be_bytes([*bytes.get(2)?, *bytes.get(3)?]);
    match i32::from(family) {
        libc::AF_INET => {
            let ip: [u8; 4] = bytes.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::new(IpAddr::from(ip), port))
        }
        libc::AF_INET6 => {
            let ip: [u8; 16] = bytes.get(8..24)?.try_into().ok()?;
            Some(SocketAddr::new(IpAddr::from(ip), port))
        }
        _ => None,
    }
}

/// The backend a worker builds.
enum Kind {
    /// io_uring, with SQPOLL or not.
    Uring(bool),
    Epoll,
    AfXdp(xdp::WorkerXdp),
}

/// A worker thread's body: pin, build the backend on this thread (io_uring's SINGLE_ISSUER
/// ties a ring to its creator), report which one runs, then loop until Shutdown.
fn run_worker(
    index: usize,
    core_id: Option<usize>,
    kind: Kind,
    batch: usize,
    core: worker::Core,
    ready: std::sync::mpsc::Sender<std::io::Result<&'static str>>,
) {
    if let Some(id) = core_id {
        if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
            tracing::warn!(worker = index, core = id, "could not pin worker");
        }
    }
    if let Kind::AfXdp(x) = kind {
        // No fallback: AF_XDP was asked for by name.
        match xdp::backend::XdpBackend::new(batch, &x) {
            Ok(mut b) => {
                tracing::info!(
                    worker = index,
                    zerocopy = b.zerocopy(),
                    "AF_XDP worker ready"
                );
                let _ = ready.send(Ok("af_xdp"));
                core.run(&mut b);
            }
            Err(e) => {
                let _ = ready.send(Err(e));
            }
        }
        return;
    }
    if let Kind::Uring(sqpoll) = kind {
        match uring::Uring::new(sqpoll) {
            Ok(mut u) => {
                tracing::info!(worker = index, taskrun = ?u.taskrun(), "io_uring worker ready");
                let _ = ready.send(Ok("io_uring"));
                return core.run(&mut u);
            }
            Err(e) => tracing::warn!(worker = index, error = %e, "io_uring setup failed; epoll"),
        }
    }
    match epoll::Epoll::new(batch) {
        Ok(mut e) => {
            let _ = ready.send(Ok("epoll"));
            core.run(&mut e);
        }
        Err(e) => {
            let _ = ready.send(Err(e));
        }
    }
}

/// Binds an RTP socket on `ip:port` and its RTCP companion on `port + 1`, non-blocking, with
/// a receive buffer sized for bursts. Fails if either port is taken (the caller tries another).
pub fn bind_stream_sockets(
    ip: IpAddr,
    port: u16,
    with_rtcp: bool,
) -> std::io::Result<StreamSockets> {
    let rtp = bind_udp(SocketAddr::new(ip, port))?;
    let rtcp = if with_rtcp {
        Some(bind_udp(SocketAddr::new(ip, port + 1))?)
    } else {
        None
    };
    Ok(StreamSockets { rtp, rtcp })
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // 256 KiB absorbs ~1.5 s of a G.711 stream if a worker stalls; the kernel caps it at
    // net.core.rmem_max (tuning/ raises that).
    let _ = socket.set_recv_buffer_size(256 * 1024);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The data plane's fixed memory, summed from its owners (STYLE.md §5), for the start-up log.
pub fn memory_budget_bytes(workers: usize, ring_slots: usize, backend: &str, stt: bool) -> usize {
    let mut per_worker = 0;
    // Frames in flight to the recorder (and to STT when it runs): rings allocated at start.
    let rings = if stt { 2 } else { 1 };
    per_worker += rings * ring_slots.next_power_of_two() * std::mem::size_of::<MediaFrame>();
    per_worker += match backend {
        // Provided buffers the kernel fills.
        "io_uring" => uring::PROVIDED_BUFFER_BYTES,
        // The UMEM, plus the epoll path's recvmmsg buffers for RTCP.
        "af_xdp" => xdp::UMEM_BYTES + 1024 * worker::DATAGRAM_MAX,
        // recvmmsg batch buffers (at most 1,024 datagrams per call).
        _ => 1024 * worker::DATAGRAM_MAX,
    };
    workers * per_worker
}

/// Worker count and placement for `requested` workers (0 = auto) on this machine: every core
/// but the control plane's (core 0) when there are ≥ 3, else one worker. With live
/// transcription (`stt`), auto takes a quarter of the cores after core 0 (rounded up; one
/// worker receives thousands of streams) and leaves the rest to speech, which needs them.
pub fn plan_workers(requested: usize, stt: bool) -> (usize, Vec<Option<usize>>) {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let n = match requested {
        0 => auto_workers(cores.len(), stt),
        n => n,
    };
    let placement = (0..n)
        .map(|i| {
            if cores.len() >= 2 {
                // Skip core 0 (control plane, SIP, HTTP); wrap if more workers than cores.
                Some(cores[1 + i % (cores.len() - 1)].id)
            } else {
                None
            }
        })
        .collect();
    (n, placement)
}

/// Data-plane workers `plan_workers` picks on `cores` cores.
fn auto_workers(cores: usize, stt: bool) -> usize {
    match cores {
        0..=2 => 1,
        _ if stt => (cores - 1).div_ceil(4),
        _ => cores - 1,
    }
}

/// Restricts the calling thread, and threads it starts afterwards, to `cores` (nothing when
/// empty). For threads beside the data plane, such as live transcription's, to keep them off
/// its cores.
pub fn pin_current_thread(cores: &[usize]) -> std::io::Result<()> {
    if cores.is_empty() {
        return Ok(());
    }
    // SAFETY: cpu_set_t is plain data, zeroed is a valid empty set; CPU_SET writes inside it
    // (indices are bounds-checked by the libc crate's implementation), and
    // sched_setaffinity(0, …) only reads it, for the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cores {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    match rc {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// The cores neither the control plane (core 0) nor a data-plane worker of `placement` is
/// pinned to: where live transcription runs. Empty when there are none (then it floats).
pub fn spare_cores(placement: &[Option<usize>]) -> Vec<usize> {
    core_affinity::get_core_ids()
        .unwrap_or_default()
        .iter()
        .map(|c| c.id)
        .skip(1)
        .filter(|id| !placement.contains(&Some(*id)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Auto sizing: every core but the control plane's; with live transcription a quarter of
    /// them (rounded up) so speech has the rest; one worker on small boxes.
    #[test]
    fn auto_worker_counts() {
        let table = [
            (1, 1, 1),
            (2, 1, 1),
            (3, 2, 1),
            (4, 3, 1),
            (8, 7, 2),
            (16, 15, 4),
        ];
        for (cores, plain, with_stt) in table {
            assert_eq!(auto_workers(cores, false), plain, "{cores} cores");
            assert_eq!(
                auto_workers(cores, true),
                with_stt,
                "{cores} cores with STT"
            );
        }
    }

    /// A pinned thread is allowed only its cores (read back from the kernel), and threads it
    /// starts inherit that.
    #[test]
    fn pinning_restricts_the_thread_and_its_children() {
        let allowed = || {
            std::fs::read_to_string("/proc/thread-self/status")
                .unwrap()
                .lines()
                .find_map(|l| {
                    l.strip_prefix("Cpus_allowed_list:")
                        .map(|v| v.trim().to_owned())
                })
                .unwrap()
        };
        let (mine, child) = std::thread::spawn(move || {
            pin_current_thread(&[0]).unwrap();
            let child = std::thread::spawn(allowed).join().unwrap();
            (allowed(), child)
        })
        .join()
        .unwrap();
        assert_eq!((mine.as_str(), child.as_str()), ("0", "0"));
        pin_current_thread(&[]).unwrap();
    }
}
