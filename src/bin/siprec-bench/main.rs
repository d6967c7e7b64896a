//! `siprec-bench`: the load bench capacity teams run before buying hardware.
//!
//! Drives a running (or spawned) `siprec` over real SIP and RTP on loopback: N concurrent
//! SIPREC calls (INVITE with SDP + RFC 7865 metadata, ACK, BYE), two G.711 streams per call,
//! paced by one sender thread with `sendmmsg` and 1 ms slots (no thread per call). Measures
//! call setup, server CPU per packet from /proc/<pid>/stat over the steady state, server RSS
//! per call, packets the server received and recorded (from session.json), and — in the same
//! run — a floor: a bare recvmmsg receiver fed the same streams, so the server's cost is
//! printed as a ratio to it. The sender reports its own lateness so a slow sender is never
//! mistaken for a slow server.
//!
//! `--backend io_uring,epoll,af_xdp` runs the same load against each backend in turn and
//! prints their costs side by side; `af_xdp` (or `--veth`) puts the server in a network
//! namespace behind a veth pair, so the traffic crosses an interface the XDP program sits on.
//! Besides the server's own CPU (in total and per thread kind: `rx` is the receive workers,
//! the part a backend changes), the JSON has the box's softirq time per packet (where the
//! kernel's receive path runs; tick-sampled, so noisy on a VM) and the bench's own CPU.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use siprec::media::g711;
use siprec::media::rtp::write_packet;
use siprec::sip::{self, Message, Method, Request};
use siprec::srtp::{self, MasterKey, Options, SrtpParams, Suite};

/// The key every `--srtp` stream offers (a bench, not a secret; SSRCs differ per stream).
const BENCH_KEY: [u8; 30] = [
    0x3b, 0x04, 0x80, 0x3d, 0xe5, 0x1e, 0xe7, 0xc9, 0x64, 0x23, 0xab, 0x5b, 0x78, 0xd2, 0x0e, 0xc6,
    0x75, 0xad, 0x49, 0x8a, 0xfe, 0xeb, 0xb6, 0x96, 0x0b, 0x3a, 0xab, 0xe6, 0x11, 0x42,
];

fn bench_srtp() -> SrtpParams {
    SrtpParams {
        key: MasterKey::new(Suite::AesCm128HmacSha1_80, &BENCH_KEY, None)
            .unwrap_or_else(|| unreachable!("30 bytes is AES_CM_128's key and salt")),
        options: Options::default(),
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "siprec-bench",
    version,
    about = "Load bench for siprec over real SIP and RTP"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Mode>,
    #[command(flatten)]
    run: RunArgs,
}

mod stt;

#[derive(Subcommand, Debug)]
enum Mode {
    /// Live transcription: word error rate through the whole server vs the engine fed the
    /// same audio directly, latency from end of speech to final transcript, real-time factor.
    Stt(stt::SttArgs),
    /// (internal) The floor receiver: bind STREAMS sockets from BASE_PORT (step 2) and count
    /// datagrams with epoll + recvmmsg, doing nothing else. Prints the count on stdin close.
    Floor {
        #[arg(long, default_value = "127.0.0.1")]
        address: std::net::IpAddr,
        #[arg(long)]
        base_port: u16,
        #[arg(long)]
        streams: usize,
    },
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Concurrent calls (two RTP streams each).
    #[arg(long, default_value_t = 200)]
    calls: usize,
    /// Steady-state measurement window, seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Call setup rate, calls per second.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Packetization time, ms.
    #[arg(long, default_value_t = 20)]
    ptime: u32,
    /// pcmu or pcma.
    #[arg(long, default_value = "pcmu")]
    codec: String,
    /// SIP address of a running server (ignored with --spawn).
    #[arg(long, default_value = "127.0.0.1:5060")]
    target: SocketAddr,
    /// PID of the running server, for CPU and RSS (ignored with --spawn).
    #[arg(long)]
    server_pid: Option<i32>,
    /// Start this siprec binary on private ports and a temporary recording directory.
    #[arg(long)]
    spawn: Option<PathBuf>,
    /// With --spawn: the server's SIP port, HTTP port and RTP range (first:last).
    #[arg(long, default_value_t = 35060)]
    spawn_sip_port: u16,
    #[arg(long, default_value_t = 38080)]
    spawn_http_port: u16,
    #[arg(long, default_value = "10000:29999")]
    spawn_rtp_range: String,
    /// Data-plane backend for --spawn (auto, io_uring, epoll, af_xdp); a comma-separated
    /// list runs the same load against each in turn and prints their costs side by side.
    /// af_xdp implies --veth.
    #[arg(long, default_value = "auto")]
    backend: String,
    /// With --spawn: run the server in a network namespace behind a veth pair (needs root),
    /// so the traffic crosses an interface rather than loopback.
    #[arg(long)]
    veth: bool,
    /// Skip the floor receiver.
    #[arg(long)]
    no_floor: bool,
    /// Offer RTP/SAVP (AES_CM_128_HMAC_SHA1_80, SDES) and send every packet as SRTP.
    #[arg(long)]
    srtp: bool,
    /// Write the JSON results here (default perf/results/bench-<unix>.json).
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() {
    let cli = Cli::parse();
    match cli.command {
        Some(Mode::Floor {
            address,
            base_port,
            streams,
        }) => {
            floor(address, base_port, streams);
            return;
        }
        Some(Mode::Stt(args)) => {
            if let Err(e) = stt::run(args) {
                eprintln!("siprec-bench stt: {e}");
                std::process::exit(1);
            }
            return;
        }
        None => {}
    }
    if let Err(e) = run(cli.run) {
        eprintln!("siprec-bench: {e}");
        std::process::exit(1);
    }
}

/// One RTP stream the sender paces.
#[derive(Clone, Copy)]
struct TxStream {
    dest: SocketAddr,
    ssrc: u32,
    pt: u8,
    seq: u16,
    ts: u32,
    slot: u32,
}

#[derive(Default)]
struct Shared {
    sent: AtomicU64,
    late_max_us: AtomicU64,
    late_sum_us: AtomicU64,
    ticks: AtomicU64,
    stop: AtomicBool,
}

/// Paces every stream at `ptime` with 1 ms slots and sendmmsg batches.
fn sender(
    socket: UdpSocket,
    streams: crossbeam_channel::Receiver<Vec<TxStream>>,
    ptime: u32,
    codec_pcma: bool,
    srtp: Option<SrtpParams>,
    shared: Arc<Shared>,
) {
    use std::os::fd::AsRawFd;
    let tone: Vec<i16> = (0..8000)
        .map(|i| ((i as f64 * 2.0 * std::f64::consts::PI * 400.0 / 8000.0).sin() * 8000.0) as i16)
        .collect();
    let frames: Vec<Vec<u8>> = tone
        .chunks(160)
        .map(|c| {
            c.iter()
                .map(|&s| {
                    if codec_pcma {
                        g711::linear_to_alaw(s)
                    } else {
                        g711::linear_to_ulaw(s)
                    }
                })
                .collect()
        })
        .collect();
    let mut all: Vec<TxStream> = Vec::new();
    let mut protect: Vec<Option<srtp::Sender>> = Vec::new();
    let mut slots: Vec<Vec<usize>> = vec![Vec::new(); ptime as usize];
    const BATCH: usize = 64;
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(256)).collect();
    let mut addrs: Vec<libc::sockaddr_in> = vec![unsafe_zeroed_sockaddr(); BATCH];
    let start = Instant::now();
    let mut tick: u64 = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        while let Ok(new) = streams.try_recv() {
            for mut s in new {
                s.slot = (all.len() as u32 * 7) % ptime;
                slots[s.slot as usize].push(all.len());
                all.push(s);
                protect.push(srtp.as_ref().map(srtp::Sender::new));
            }
        }
        let due = start + Duration::from_millis(tick);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else {
            let late = (now - due).as_micros() as u64;
            shared.late_sum_us.fetch_add(late, Ordering::Relaxed);
            shared.late_max_us.fetch_max(late, Ordering::Relaxed);
        }
        shared.ticks.fetch_add(1, Ordering::Relaxed);
        let slot = (tick % u64::from(ptime)) as usize;
        let frame = &frames[(tick / u64::from(ptime)) as usize % frames.len()];
        let mut n = 0;
        for &i in &slots[slot] {
            let s = &mut all[i];
            write_packet(s.pt, s.seq, s.ts, s.ssrc, frame, &mut bufs[n]);
            if let Some(p) = protect[i].as_mut() {
                let len = bufs[n].len();
                bufs[n].resize(len + p.rtp_overhead(), 0);
                let out = p.protect_rtp(&mut bufs[n], len).unwrap_or(len);
                bufs[n].truncate(out);
            }
            s.seq = s.seq.wrapping_add(1);
            s.ts = s.ts.wrapping_add(8 * ptime);
            addrs[n] = to_sockaddr(s.dest);
            n += 1;
            if n == BATCH {
                send_batch(socket.as_raw_fd(), &bufs, &mut addrs, n, &shared);
                n = 0;
            }
        }
        if n > 0 {
            send_batch(socket.as_raw_fd(), &bufs, &mut addrs, n, &shared);
        }
        tick += 1;
    }
}

fn unsafe_zeroed_sockaddr() -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all-zero is valid.
    unsafe { std::mem::zeroed() }
}

fn to_sockaddr(addr: SocketAddr) -> libc::sockaddr_in {
    let mut sa = unsafe_zeroed_sockaddr();
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = addr.port().to_be();
    if let SocketAddr::V4(v4) = addr {
        sa.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
    }
    sa
}

fn send_batch(
    fd: i32,
    bufs: &[Vec<u8>],
    addrs: &mut [libc::sockaddr_in],
    n: usize,
    shared: &Shared,
) {
    let mut iovs: Vec<libc::iovec> = bufs[..n]
        .iter()
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = (0..n)
        .map(|i| {
            // SAFETY: mmsghdr is plain old data; all-zero is valid.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_name = (&mut addrs[i] as *mut libc::sockaddr_in).cast();
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            m.msg_hdr.msg_iov = &mut iovs[i];
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let mut off = 0;
    while off < n {
        // SAFETY: msgs[off..n] point at iovs/addrs/bufs alive for the call.
        let r = unsafe { libc::sendmmsg(fd, msgs[off..].as_mut_ptr(), (n - off) as u32, 0) };
        if r <= 0 {
            break;
        }
        off += r as usize;
    }
    shared.sent.fetch_add(off as u64, Ordering::Relaxed);
}

/// A call the bench placed.
struct Call {
    call_id: String,
    to_tag: Option<String>,
    sent_at: Instant,
    answered: bool,
    failed: bool,
}

fn invite(
    call_id: &str,
    local: SocketAddr,
    target: SocketAddr,
    pt: u8,
    n: usize,
    srtp: bool,
) -> Vec<u8> {
    let codec = if pt == 8 { "PCMA" } else { "PCMU" };
    let (proto, crypto) = match srtp {
        false => ("RTP/AVP", String::new()),
        true => (
            "RTP/SAVP",
            format!(
                "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{}\r\n",
                srtp::sdes::base64_encode(&BENCH_KEY)
            ),
        ),
    };
    let ip = local.ip();
    let sdp = format!(
        "v=0\r\no=bench {n} 1 IN IP4 {ip}\r\ns=bench\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
m=audio 9 {proto} {pt}\r\na=rtpmap:{pt} {codec}/8000\r\n{crypto}a=label:1\r\na=sendonly\r\n\
m=audio 11 {proto} {pt}\r\na=rtpmap:{pt} {codec}/8000\r\n{crypto}a=label:2\r\na=sendonly\r\n"
    );
    let xml = "<?xml version=\"1.0\"?>\r\n<recording xmlns='urn:ietf:params:xml:ns:recording:1'>\
<datamode>complete</datamode><session session_id=\"YmVuY2g=\"/>\
<participant participant_id=\"YQ==\"><nameID aor=\"sip:a@bench\"/><send>czE=</send></participant>\
<participant participant_id=\"Yg==\"><nameID aor=\"sip:b@bench\"/><send>czI=</send></participant>\
<stream stream_id=\"czE=\" session_id=\"YmVuY2g=\"><label>1</label></stream>\
<stream stream_id=\"czI=\" session_id=\"YmVuY2g=\"><label>2</label></stream></recording>\r\n";
    let body = format!(
        "--b\r\nContent-Type: application/sdp\r\n\r\n{sdp}\r\n--b\r\n\
Content-Type: application/rs-metadata+xml\r\n\
Content-Disposition: recording-session\r\n\r\n{xml}\r\n--b--\r\n"
    );
    let mut r = Request::new(Method::Invite, format!("sip:srs@{target}"));
    r.headers.push(
        "Via",
        format!("SIP/2.0/UDP {local};branch=z9hG4bK-bench-i{n};rport"),
    );
    r.headers.push("Max-Forwards", "70");
    r.headers
        .push("From", format!("<sip:bench@{local}>;tag=bench{n}"));
    r.headers.push("To", format!("<sip:srs@{target}>"));
    r.headers.push("Call-ID", call_id);
    r.headers.push("CSeq", "1 INVITE");
    r.headers
        .push("Contact", format!("<sip:bench@{local}>;+sip.src"));
    r.headers.push("Require", "siprec");
    r.headers.push("Content-Type", "multipart/mixed;boundary=b");
    r.body = body.into_bytes().into();
    let mut out = Vec::new();
    r.encode(&mut out);
    out
}

fn in_dialog(
    method: Method,
    call: &Call,
    n: usize,
    local: SocketAddr,
    target: SocketAddr,
) -> Vec<u8> {
    let seq = if method == Method::Ack { 1 } else { 2 };
    let mut r = Request::new(method.clone(), format!("sip:srs@{target}"));
    let branch = format!("z9hG4bK-bench-{}{n}", method.as_str().to_ascii_lowercase());
    r.headers
        .push("Via", format!("SIP/2.0/UDP {local};branch={branch};rport"));
    r.headers.push("Max-Forwards", "70");
    r.headers
        .push("From", format!("<sip:bench@{local}>;tag=bench{n}"));
    let tag = call.to_tag.clone().unwrap_or_default();
    r.headers
        .push("To", format!("<sip:srs@{target}>;tag={tag}"));
    r.headers.push("Call-ID", call.call_id.clone());
    r.headers.push("CSeq", format!("{seq} {}", method.as_str()));
    let mut out = Vec::new();
    r.encode(&mut out);
    out
}

/// (utime + stime) of `pid` in nanoseconds, and its RSS in KiB.
fn proc_usage(pid: i32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let cpu_ns = stat_cpu_ns(&stat)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some((cpu_ns, rss))
}

/// utime + stime, in ns, from a `/proc/<pid>/stat` or `/proc/<pid>/task/<tid>/stat` line.
fn stat_cpu_ns(stat: &str) -> Option<u64> {
    let after = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks_to_ns(ticks))
}

/// Clock ticks (`_SC_CLK_TCK`, as /proc counts CPU time) in nanoseconds.
fn ticks_to_ns(ticks: u64) -> u64 {
    // SAFETY: sysconf is a plain query.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1_000_000_000 / hz
}

struct Spawned {
    child: Child,
    dir: PathBuf,
}

impl Drop for Spawned {
    fn drop(&mut self) {
        // SAFETY: plain syscall on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What one backend's run measured.
struct Run {
    backend: String,
    answered: usize,
    streams: usize,
    latencies: Vec<f64>,
    window_s: f64,
    packets: u64,
    total_sent: u64,
    received: Option<u64>,
    lost: Option<u64>,
    /// Packets the server received but could not hand to its recorder (ring full).
    ring_full: Option<u64>,
    srtp_drops: Option<u64>,
    late_avg_us: u64,
    late_max_us: u64,
    server_ns: Option<f64>,
    /// The server's CPU per packet by thread kind (rx, recorder, …).
    threads_ns: Vec<(String, f64)>,
    softirq_ns: Option<f64>,
    sender_ns: Option<f64>,
    rss_per_call_kib: Option<f64>,
}

fn run(args: RunArgs) -> Result<(), String> {
    let backends: Vec<String> = args
        .backend
        .split(',')
        .map(|b| b.trim().to_owned())
        .filter(|b| !b.is_empty())
        .collect();
    if backends.is_empty() {
        return Err("--backend names no backend".into());
    }
    let veth = args.veth || backends.iter().any(|b| b == "af_xdp");
    if (veth || backends.len() > 1) && args.spawn.is_none() {
        return Err("several backends, af_xdp and --veth need --spawn".into());
    }
    let _ = siprec::dataplane::raise_nofile_limit();
    let net = if veth { Some(Net::new()?) } else { None };
    let mut runs = Vec::new();
    for backend in &backends {
        runs.push(run_one(&args, backend, net.as_ref())?);
    }

    // The floor: a bare receiver fed the same number of streams at the same rate, on the
    // same path. A spawned server is gone by now, so the floor can take its RTP range.
    let pt = payload_type(&args.codec);
    let streams = runs.iter().map(|r| r.streams).max().unwrap_or(0);
    let floor_base = if args.spawn.is_some() { 10000 } else { 40000 };
    let window = Duration::from_secs(args.duration.max(1));
    let floor = if args.no_floor || streams == 0 {
        None
    } else {
        floor_run(
            floor_base,
            streams,
            args.ptime,
            pt,
            args.srtp,
            window,
            net.as_ref(),
        )?
    };
    drop(net);

    let network = if veth { "veth" } else { "loopback" };
    let results: Vec<serde_json::Value> = runs
        .iter()
        .map(|r| run_json(&args, r, floor, network))
        .collect();
    let result = if results.len() == 1 {
        results[0].clone()
    } else {
        // Each backend's cost as a ratio to the first one's, measured in the same run.
        let base = runs[0].server_ns;
        let comparison: Vec<serde_json::Value> = runs
            .iter()
            .map(|r| {
                json!({
                    "backend": r.backend,
                    "server_cpu_ns_per_packet": r.server_ns,
                    "rx_ns_per_packet": rx_ns(r),
                    "softirq_ns_per_packet": r.softirq_ns,
                    "ratio_to_first": match (r.server_ns, base) {
                        (Some(s), Some(b)) if b > 0.0 => Some(s / b),
                        _ => None,
                    },
                    "packets_lost_reported_by_server": r.lost,
                    "packets_dropped_ring_full": r.ring_full,
                })
            })
            .collect();
        json!({ "network": network, "runs": results, "comparison": comparison })
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&result).unwrap_or_default()
    );
    if runs.len() > 1 {
        eprintln!(
            "\n{:<10} {:>10} {:>7} {:>8} {:>10} {:>10} {:>8} {:>10}",
            "backend", "server_ns", "ratio", "rx_ns", "rx_ratio", "sender_ns", "lost", "ring_full"
        );
        let base_rx = rx_ns(&runs[0]).unwrap_or(0.0);
        let base = runs[0].server_ns.unwrap_or(0.0);
        let show = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
        for r in &runs {
            let ratio = r
                .server_ns
                .filter(|_| base > 0.0)
                .map_or("-".to_owned(), |s| format!("{:.2}", s / base));
            let rx = rx_ns(r);
            let rx_ratio = rx
                .filter(|_| base_rx > 0.0)
                .map_or("-".to_owned(), |s| format!("{:.2}", s / base_rx));
            eprintln!(
                "{:<10} {:>10} {:>7} {:>8} {:>10} {:>10} {:>8} {:>10}",
                r.backend,
                show(r.server_ns),
                ratio,
                show(rx),
                rx_ratio,
                show(r.sender_ns),
                r.lost.map_or("-".to_owned(), |l| l.to_string()),
                r.ring_full.map_or("-".to_owned(), |l| l.to_string())
            );
        }
    }
    let path = args.json.clone().unwrap_or_else(|| {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        PathBuf::from(format!("perf/results/bench-{secs}.json"))
    });
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&result).unwrap_or_default(),
    )
    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    eprintln!("results written to {}", path.display());
    Ok(())
}

/// The receive workers' CPU per packet: the part a data-plane backend changes.
fn rx_ns(r: &Run) -> Option<f64> {
    r.threads_ns
        .iter()
        .find(|(kind, _)| kind == "rx")
        .map(|(_, ns)| *ns)
}

/// CPU time (ns) of `pid`'s threads summed by kind: the thread's name without a trailing
/// `-N` (`rx-0`, `rx-1` → `rx`).
fn thread_usage(pid: i32) -> std::collections::HashMap<String, u64> {
    let mut out = std::collections::HashMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some((name_end, _)), Some(ns)) =
            (stat.find('('), stat.rsplit_once(')'), stat_cpu_ns(&stat))
        else {
            continue;
        };
        let name = &name_end[open + 1..];
        let kind = match name.rsplit_once('-') {
            Some((head, n)) if n.chars().all(|c| c.is_ascii_digit()) => head,
            _ => name,
        };
        *out.entry(kind.to_owned()).or_insert(0) += ns;
    }
    out
}

fn payload_type(codec: &str) -> u8 {
    if codec.eq_ignore_ascii_case("pcma") {
        8
    } else {
        0
    }
}

fn run_json(args: &RunArgs, r: &Run, floor: Option<f64>, network: &str) -> serde_json::Value {
    let mut latencies = r.latencies.clone();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
    };
    let ratio = match (r.server_ns, floor) {
        (Some(s), Some(f)) if f > 0.0 => Some(s / f),
        _ => None,
    };
    json!({
        "calls": args.calls, "answered": r.answered, "failed": args.calls - r.answered,
        "streams": r.streams, "ptime_ms": args.ptime, "codec": args.codec,
        "backend": r.backend, "network": network,
        "srtp": args.srtp, "srtp_drops_reported_by_server": r.srtp_drops,
        "setup_latency_ms": {"p50": pct(0.5), "p99": pct(0.99)},
        "window_s": r.window_s, "packets_sent_in_window": r.packets,
        "packets_per_s": r.packets as f64 / r.window_s,
        "packets_sent_total": r.total_sent, "packets_received_by_server": r.received,
        "packets_lost_reported_by_server": r.lost,
        "packets_dropped_ring_full": r.ring_full,
        "sender_lateness_us": {"avg": r.late_avg_us, "max": r.late_max_us},
        "server_cpu_ns_per_packet": r.server_ns,
        "server_threads_cpu_ns_per_packet": r.threads_ns.iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect::<serde_json::Map<_, _>>(),
        "softirq_ns_per_packet": r.softirq_ns,
        "bench_cpu_ns_per_packet": r.sender_ns,
        "floor_cpu_ns_per_packet": floor,
        "server_to_floor_ratio": ratio,
        "derived_streams_per_core": r.server_ns.map(|ns| 1e9 / (50.0 * ns)),
        "server_rss_kib_per_call": r.rss_per_call_kib,
    })
}

/// An 8 MiB receive buffer, past net.core.rmem_max when we may (root), else what it allows.
fn big_receive_buffer(socket: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 8 << 20;
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: a valid socket and a c_int option value of the stated length.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

/// Box-wide softirq time (every CPU), ns: where the kernel's receive path runs.
fn softirq_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?;
    // cpu user nice system idle iowait irq softirq ...
    let ticks: u64 = cpu.split_whitespace().nth(7)?.parse().ok()?;
    Some(ticks_to_ns(ticks))
}

/// A veth pair with the server's end in a network namespace of its own, so traffic crosses
/// a real (virtual) NIC that an XDP program can sit on; removed on drop.
struct Net {
    ns: String,
    host_if: String,
    server_if: String,
    host_ip: std::net::Ipv4Addr,
    server_ip: std::net::Ipv4Addr,
}

impl Net {
    fn new() -> Result<Net, String> {
        // SAFETY: plain syscall.
        if unsafe { libc::geteuid() } != 0 {
            return Err("a veth pair and a network namespace (af_xdp, --veth) need root".into());
        }
        let pid = std::process::id();
        let subnet = (1 + pid % 250) as u8;
        let net = Net {
            ns: format!("siprec-bench-{pid}"),
            host_if: format!("sbh{pid}"),
            server_if: format!("sbs{pid}"),
            host_ip: std::net::Ipv4Addr::new(10, 253, subnet, 1),
            server_ip: std::net::Ipv4Addr::new(10, 253, subnet, 2),
        };
        let (ns, host, server) = (&net.ns, &net.host_if, &net.server_if);
        let host_cidr = format!("{}/24", net.host_ip);
        let server_cidr = format!("{}/24", net.server_ip);
        for args in [
            vec!["netns", "add", ns],
            vec!["link", "add", host, "type", "veth", "peer", "name", server],
            vec!["link", "set", server, "netns", ns],
            vec!["addr", "add", &host_cidr, "dev", host],
            vec!["link", "set", host, "up"],
            vec!["-n", ns, "addr", "add", &server_cidr, "dev", server],
            vec!["-n", ns, "link", "set", server, "up"],
            vec!["-n", ns, "link", "set", "lo", "up"],
        ] {
            let ok = Command::new("ip")
                .args(&args)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(format!(
                    "ip {} failed (iproute2 installed?)",
                    args.join(" ")
                ));
            }
        }
        // A sender on this host leaves UDP checksums to the NIC and a veth never finishes
        // them; finished in software they look like a wire's, which AF_XDP verifies.
        let ok = Command::new("ethtool")
            .args(["-K", host, "tx", "off"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err(format!(
                "ethtool -K {host} tx off failed (ethtool installed?)"
            ));
        }
        Ok(net)
    }

    /// `cmd` run inside the namespace (`ip netns exec` execs it: same pid).
    fn command(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for args in [
            vec!["link", "del", &self.host_if],
            vec!["netns", "del", &self.ns],
        ] {
            let _ = Command::new("ip")
                .args(&args)
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Waits for the spawned server's `/health/ready` to answer 200.
fn wait_ready(child: &mut Child, http: SocketAddr) -> Result<(), String> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = std::net::TcpStream::connect_timeout(&http, Duration::from_secs(1))
            .ok()
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
                write!(s, "GET /health/ready HTTP/1.0\r\nHost: bench\r\n\r\n").ok()?;
                let mut out = String::new();
                s.read_to_string(&mut out).ok()?;
                Some(out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200"))
            });
        if ready == Some(true) {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the server exited at start-up: {status}"));
        }
        if Instant::now() > deadline {
            return Err(format!("the server was not ready within 30 s ({http})"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn run_one(args: &RunArgs, backend: &str, net: Option<&Net>) -> Result<Run, String> {
    let pt = payload_type(&args.codec);
    let bind_ip: std::net::IpAddr = match net {
        Some(n) => n.host_ip.into(),
        None => [127, 0, 0, 1].into(),
    };
    let mut spawned = None;
    let (target, pid) = match &args.spawn {
        Some(bin) => {
            let dir =
                std::env::temp_dir().join(format!("siprec-bench-{}-{backend}", std::process::id()));
            let (rtp_min, rtp_max) = args
                .spawn_rtp_range
                .split_once(':')
                .ok_or("--spawn-rtp-range must be FIRST:LAST")?;
            let server_ip: std::net::IpAddr = match net {
                Some(n) => n.server_ip.into(),
                None => [127, 0, 0, 1].into(),
            };
            let mut command = match net {
                Some(n) => n.command(bin),
                None => Command::new(bin),
            };
            if let Some(n) = net {
                command.env("DATAPLANE_XDP_INTERFACE", &n.server_if);
            }
            let mut child = command
                .env("SIP_HOST", server_ip.to_string())
                .env("HTTP_HOST", server_ip.to_string())
                .env("PORTS", args.spawn_sip_port.to_string())
                .env("HTTP_PORT", args.spawn_http_port.to_string())
                .env("RTP_PORT_MIN", rtp_min)
                .env("RTP_PORT_MAX", rtp_max)
                .env("RECORDING_DIR", dir.join("rec"))
                .env("MAX_CONCURRENT_CALLS", "100000")
                .env("DATAPLANE_WORKERS", "1")
                .env("DATAPLANE_BACKEND", backend)
                // This bench measures the media path: speech recognition of its synthetic
                // audio would take the cores and count in the CPU per packet
                // (`siprec-bench stt` measures transcription).
                .env("STT_PROVIDER", "none")
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
            let pid = child.id() as i32;
            let ready = wait_ready(&mut child, SocketAddr::new(server_ip, args.spawn_http_port));
            spawned = Some(Spawned { child, dir });
            ready.map_err(|e| format!("{backend}: {e}"))?;
            eprintln!("{backend}: server {pid} ready on {server_ip}");
            (SocketAddr::new(server_ip, args.spawn_sip_port), Some(pid))
        }
        None => (args.target, args.server_pid),
    };
    let sip = UdpSocket::bind((bind_ip, 0)).map_err(|e| e.to_string())?;
    // Answers to a burst of INVITEs queue here while the sender has the cores.
    big_receive_buffer(&sip);
    sip.set_read_timeout(Some(Duration::from_millis(1)))
        .map_err(|e| e.to_string())?;
    let local = sip.local_addr().map_err(|e| e.to_string())?;
    let rtp = UdpSocket::bind((bind_ip, 0)).map_err(|e| e.to_string())?;
    let shared = Arc::new(Shared::default());
    let (stream_tx, stream_rx) = crossbeam_channel::unbounded();
    let sender_thread = {
        let shared = shared.clone();
        let ptime = args.ptime;
        let srtp = args.srtp.then(bench_srtp);
        std::thread::spawn(move || sender(rtp, stream_rx, ptime, pt == 8, srtp, shared))
    };
    let idle = pid.and_then(proc_usage);

    // Setup: INVITEs at --rate, answers collected as they come.
    let bar = ProgressBar::new(args.calls as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>8} [{bar:40}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix("setup");
    let mut calls: Vec<Call> = Vec::with_capacity(args.calls);
    let mut latencies: Vec<f64> = Vec::new();
    let t_setup = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1.0));
    let mut buf = vec![0u8; 65536];
    let deadline = |n: usize| t_setup + interval * n as u32 + Duration::from_secs(10);
    let mut ssrc = 0x1000_0000u32;
    while calls.len() < args.calls || calls.iter().any(|c| !c.answered && !c.failed) {
        let now = Instant::now();
        if calls.len() < args.calls && now >= t_setup + interval * calls.len() as u32 {
            let n = calls.len();
            let call_id = format!("bench-{}-{n}@127.0.0.1", std::process::id());
            let _ = sip.send_to(&invite(&call_id, local, target, pt, n, args.srtp), target);
            calls.push(Call {
                call_id,
                to_tag: None,
                sent_at: now,
                answered: false,
                failed: false,
            });
        }
        if let Ok((len, _)) = sip.recv_from(&mut buf) {
            if let Ok(Message::Response(r)) = sip::parse_datagram(&buf[..len]) {
                let idx = r
                    .call_id()
                    .and_then(|id| id.rsplit('-').next())
                    .and_then(|s| s.split('@').next())
                    .and_then(|s| s.parse::<usize>().ok());
                let is_invite = r.cseq().is_some_and(|c| c.method == Method::Invite);
                if let (Some(i), true) = (idx, is_invite) {
                    if let Some(call) = calls.get_mut(i).filter(|c| !c.answered && !c.failed) {
                        if r.status == 200 {
                            call.answered = true;
                            call.to_tag = r.to_tag();
                            latencies.push(call.sent_at.elapsed().as_secs_f64() * 1000.0);
                            let ack = in_dialog(Method::Ack, call, i, local, target);
                            let _ = sip.send_to(&ack, target);
                            let body = String::from_utf8_lossy(&r.body).to_string();
                            let ports: Vec<u16> = body
                                .lines()
                                .filter_map(|l| l.strip_prefix("m=audio "))
                                .filter_map(|l| l.split(' ').next()?.parse().ok())
                                .filter(|&p| p != 0)
                                .collect();
                            let streams = ports
                                .iter()
                                .map(|&p| {
                                    ssrc = ssrc.wrapping_add(1);
                                    TxStream {
                                        dest: SocketAddr::new(target.ip(), p),
                                        ssrc,
                                        pt,
                                        seq: 0,
                                        ts: 0,
                                        slot: 0,
                                    }
                                })
                                .collect();
                            let _ = stream_tx.send(streams);
                            bar.inc(1);
                        } else if r.status >= 300 {
                            call.failed = true;
                            bar.inc(1);
                        }
                    }
                }
            }
        }
        for (i, c) in calls.iter_mut().enumerate() {
            if !c.answered && !c.failed && Instant::now() > deadline(i) {
                c.failed = true;
                bar.inc(1);
            }
        }
    }
    bar.finish_with_message("calls set up");
    let answered = calls.iter().filter(|c| c.answered).count();
    let streams = answered * 2;

    // Steady state: warm up, then measure the server over the window.
    std::thread::sleep(Duration::from_secs(2));
    let window = Duration::from_secs(args.duration.max(1));
    let me = std::process::id() as i32;
    let threads0 = pid.map(thread_usage).unwrap_or_default();
    let (sent0, usage0, softirq0, self0, t0) = (
        shared.sent.load(Ordering::Relaxed),
        pid.and_then(proc_usage),
        softirq_ns(),
        proc_usage(me),
        Instant::now(),
    );
    shared.late_max_us.store(0, Ordering::Relaxed);
    shared.late_sum_us.store(0, Ordering::Relaxed);
    shared.ticks.store(0, Ordering::Relaxed);
    let bar = ProgressBar::new(window.as_secs());
    bar.set_style(
        ProgressStyle::with_template("{prefix:>8} [{bar:40}] {pos}/{len} s {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix("steady");
    for _ in 0..window.as_secs() {
        std::thread::sleep(Duration::from_secs(1));
        let pps = (shared.sent.load(Ordering::Relaxed) - sent0) as f64 / t0.elapsed().as_secs_f64();
        bar.set_message(format!("{pps:.0} packets/s sent"));
        bar.inc(1);
    }
    let (sent1, usage1, softirq1, self1, elapsed) = (
        shared.sent.load(Ordering::Relaxed),
        pid.and_then(proc_usage),
        softirq_ns(),
        proc_usage(me),
        t0.elapsed(),
    );
    let threads1 = pid.map(thread_usage).unwrap_or_default();
    bar.finish();
    let packets = sent1 - sent0;
    let ticks = shared.ticks.load(Ordering::Relaxed).max(1);
    let late_avg_us = shared.late_sum_us.load(Ordering::Relaxed) / ticks;
    let late_max_us = shared.late_max_us.load(Ordering::Relaxed);
    let per_packet = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) if packets > 0 => Some(b.saturating_sub(a) as f64 / packets as f64),
        _ => None,
    };
    let server_ns_per_packet = per_packet(usage0.map(|u| u.0), usage1.map(|u| u.0));
    let softirq_ns_per_packet = per_packet(softirq0, softirq1);
    let sender_ns_per_packet = per_packet(self0.map(|u| u.0), self1.map(|u| u.0));
    let mut threads_ns: Vec<(String, f64)> = threads1
        .iter()
        .filter_map(|(kind, &ns)| {
            let before = threads0.get(kind).copied().unwrap_or(0);
            Some((kind.clone(), per_packet(Some(before), Some(ns))?))
        })
        .filter(|(_, ns)| *ns >= 1.0)
        .collect();
    threads_ns.sort_by(|a, b| b.1.total_cmp(&a.1));
    let rss_per_call_kib = match (idle, usage1) {
        (Some((_, r0)), Some((_, r1))) if answered > 0 => {
            Some(r1.saturating_sub(r0) as f64 / answered as f64)
        }
        _ => None,
    };

    // Teardown: BYE every call, stop sending.
    for (i, c) in calls.iter().enumerate().filter(|(_, c)| c.answered) {
        let _ = sip.send_to(&in_dialog(Method::Bye, c, i, local, target), target);
        if i % 100 == 99 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    shared.stop.store(true, Ordering::Relaxed);
    let _ = sender_thread.join();
    let total_sent = shared.sent.load(Ordering::Relaxed);

    // What the server received and recorded, from session.json (spawned servers only).
    let mut received = None;
    let mut lost = None;
    let mut ring_full = None;
    let mut srtp_drops = None;
    if let Some(s) = &spawned {
        // session.json is written when a recording closes: wait for every call's (a loaded
        // recorder closes thousands of them over a few seconds).
        let session_files = || -> Vec<PathBuf> {
            let days = std::fs::read_dir(s.dir.join("rec")).into_iter().flatten();
            days.flatten()
                .flat_map(|day| {
                    std::fs::read_dir(day.path())
                        .into_iter()
                        .flatten()
                        .flatten()
                })
                .map(|session| session.path().join("session.json"))
                .filter(|path| path.exists())
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while session_files().len() < answered && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(250));
        }
        let (mut r, mut l, mut d, mut f) = (0u64, 0u64, 0u64, 0u64);
        let files = session_files();
        if files.len() < answered {
            eprintln!(
                "{backend}: {} of {answered} session.json files after 30 s",
                files.len()
            );
        }
        for path in files {
            let Ok(text) = std::fs::read_to_string(path) else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            for st in v["streams"].as_array().into_iter().flatten() {
                r += st["rtp"]["audio_packets"].as_u64().unwrap_or(0);
                l += st["rtp"]["lost"].as_u64().unwrap_or(0);
                f += st["rtp"]["ring_full"].as_u64().unwrap_or(0);
                for k in ["srtp_auth_failures", "srtp_replays", "srtp_malformed"] {
                    d += st["rtp"][k].as_u64().unwrap_or(0);
                }
            }
        }
        received = Some(r);
        lost = Some(l);
        ring_full = Some(f);
        srtp_drops = Some(d);
    }
    drop(spawned);
    Ok(Run {
        backend: backend.to_owned(),
        answered,
        streams,
        latencies,
        window_s: elapsed.as_secs_f64(),
        packets,
        total_sent,
        received,
        lost,
        ring_full,
        srtp_drops,
        late_avg_us,
        late_max_us,
        server_ns: server_ns_per_packet,
        threads_ns,
        softirq_ns: softirq_ns_per_packet,
        sender_ns: sender_ns_per_packet,
        rss_per_call_kib,
    })
}

/// Runs the floor receiver as a child process, feeds it `streams` streams for `window`, and
/// returns its CPU per packet.
fn floor_run(
    base: u16,
    streams: usize,
    ptime: u32,
    pt: u8,
    srtp: bool,
    window: Duration,
    net: Option<&Net>,
) -> Result<Option<f64>, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let (from, to): (std::net::IpAddr, std::net::IpAddr) = match net {
        Some(n) => (n.host_ip.into(), n.server_ip.into()),
        None => ([127, 0, 0, 1].into(), [127, 0, 0, 1].into()),
    };
    let mut command = match net {
        Some(n) => n.command(&exe),
        None => Command::new(exe),
    };
    let mut child = command
        .args([
            "floor",
            "--address",
            &to.to_string(),
            "--base-port",
            &base.to_string(),
            "--streams",
            &streams.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_millis(500));
    let pid = child.id() as i32;
    let rtp = UdpSocket::bind((from, 0)).map_err(|e| e.to_string())?;
    let shared = Arc::new(Shared::default());
    let (tx, rx) = crossbeam_channel::unbounded();
    let list = (0..streams)
        .map(|i| TxStream {
            dest: SocketAddr::new(to, base + 2 * i as u16),
            ssrc: i as u32,
            pt,
            seq: 0,
            ts: 0,
            slot: 0,
        })
        .collect();
    let _ = tx.send(list);
    let sender_thread = {
        let shared = shared.clone();
        let srtp = srtp.then(bench_srtp);
        std::thread::spawn(move || sender(rtp, rx, ptime, pt == 8, srtp, shared))
    };
    std::thread::sleep(Duration::from_secs(1));
    let (s0, u0) = (shared.sent.load(Ordering::Relaxed), proc_usage(pid));
    std::thread::sleep(window.min(Duration::from_secs(10)));
    let (s1, u1) = (shared.sent.load(Ordering::Relaxed), proc_usage(pid));
    shared.stop.store(true, Ordering::Relaxed);
    let _ = sender_thread.join();
    drop(child.stdin.take());
    let _ = child.wait();
    Ok(match (u0, u1) {
        (Some((c0, _)), Some((c1, _))) if s1 > s0 => Some((c1 - c0) as f64 / (s1 - s0) as f64),
        _ => None,
    })
}

/// The floor receiver: epoll + recvmmsg over `streams` sockets, counting, nothing else.
fn floor(address: std::net::IpAddr, base_port: u16, streams: usize) {
    use std::os::fd::AsRawFd;
    let _ = siprec::dataplane::raise_nofile_limit();
    let sockets: Vec<UdpSocket> = (0..streams)
        .filter_map(|i| {
            let s = UdpSocket::bind((address, base_port + 2 * i as u16)).ok()?;
            s.set_nonblocking(true).ok()?;
            Some(s)
        })
        .collect();
    // SAFETY: plain syscalls with checked results and valid buffers throughout.
    let epoll = unsafe { libc::epoll_create1(0) };
    for (i, s) in sockets.iter().enumerate() {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: the socket is alive; ev is valid.
        unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) };
    }
    let done = Arc::new(AtomicBool::new(false));
    {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut sink = String::new();
            let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut sink);
            done.store(true, Ordering::Relaxed);
        });
    }
    let mut bufs = vec![[0u8; 2048]; 32];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: 2048,
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: plain old data.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut count: u64 = 0;
    while !done.load(Ordering::Relaxed) {
        // SAFETY: events has 256 entries.
        let n = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), 256, 10) };
        for e in &events[..n.max(0) as usize] {
            let fd = sockets[e.u64 as usize].as_raw_fd();
            loop {
                // SAFETY: msgs point at iovs/bufs alive for the call.
                let r = unsafe {
                    libc::recvmmsg(
                        fd,
                        msgs.as_mut_ptr(),
                        32,
                        libc::MSG_DONTWAIT,
                        std::ptr::null_mut(),
                    )
                };
                if r <= 0 {
                    break;
                }
                count += r as u64;
            }
        }
    }
    println!("{count}");
}
