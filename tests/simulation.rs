//! Deterministic simulation of the media core (issue 10): one stream's RTP through a seeded
//! network (loss, duplication, reordering, jitter, an SSRC change, a BYE racing the last
//! packets) into the receiver (`RtpReceiver`) and the recorder's timeline (`StreamTimeline`),
//! on a simulated clock with the recorder's commit cadence and delay. Checkers, per seed:
//! the recording ends at exactly the call's length; every packet that arrived is in the
//! recording at the place its timestamp gives it, or is counted as dropped (duplicate, too
//! old, late, after the end). A failing seed is printed; `SIM_SEED=N` replays one seed,
//! `SIM_SEEDS=N` runs more.

use siprec::media::rtp::{write_packet, PayloadKind, RtpReceiver, StreamParams};
use siprec::media::{g711, MediaFrame, StreamKey};
use siprec::sink::recorder::timeline::{position_at, StreamTimeline};

const MS: u64 = 1_000_000;
const RATE: u32 = 8000;
/// The recorder's commit delay and interval (`sink::recorder`).
const COMMIT_DELAY: u64 = 300 * MS;
const COMMIT_EVERY: u64 = 100 * MS;
const START: u64 = 1_000 * MS;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One packet as sent: its epoch (SSRC), RTP fields and the audio it carries.
struct Sent {
    epoch: usize,
    seq: u16,
    ts: u32,
    ssrc: u32,
    audio: Vec<i16>,
}

fn params() -> StreamParams {
    let mut payload_types = [None; 128];
    payload_types[0] = Some(PayloadKind::Pcmu);
    let key = StreamKey {
        session: 1,
        stream: 0,
    };
    StreamParams::plain(key, payload_types, RATE)
}

fn simulate(seed: u64) -> Result<String, String> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let packets = 150 + rng.below(300) as usize;
    let (loss, dup, reorder) = (rng.below(6), rng.below(4), rng.below(8));
    let jitter = rng.below(40) * MS;
    let ssrc_change = rng
        .chance(50)
        .then(|| 20 + rng.below(packets as u64 - 40) as usize);
    // The BYE comes 0–60 ms after the last packet was sent: the last ones may race it.
    let end_ns = START + 20 * MS * packets as u64 + rng.below(60) * MS;

    // What the SRC sends, and when each copy arrives.
    let mut sent = Vec::new();
    let (mut epoch, mut ssrc, mut seq, mut ts) = (0, 0x1000 + seed as u32, rng.next() as u16, 0u32);
    let mut arrivals: Vec<(u64, usize)> = Vec::new();
    let mut lost = 0;
    for i in 0..packets {
        if ssrc_change == Some(i) {
            epoch += 1;
            ssrc = ssrc.wrapping_add(7);
            seq = rng.next() as u16;
            ts = rng.next() as u32;
        }
        let audio: Vec<i16> = (0..160)
            .map(|_| g711::ulaw_to_linear(rng.next() as u8))
            .collect();
        let at = START + 20 * MS * i as u64 + 20 * MS + rng.below(jitter.max(1));
        sent.push(Sent {
            epoch,
            seq,
            ts,
            ssrc,
            audio,
        });
        if rng.chance(loss) {
            lost += 1;
        } else {
            let late = if rng.chance(reorder) {
                (20 + rng.below(60)) * MS
            } else {
                0
            };
            arrivals.push((at + late, i));
            if rng.chance(dup) {
                arrivals.push((at + late + rng.below(30) * MS, i));
            }
        }
        seq = seq.wrapping_add(1);
        ts = ts.wrapping_add(160);
    }
    arrivals.sort();

    // The receiver and the timeline on the simulated clock, committing as the recorder does.
    let mut rx = RtpReceiver::new(params());
    let capacity = StreamTimeline::capacity_for(RATE, 300);
    let mut timeline = StreamTimeline::new(START, RATE, capacity);
    let mut recording: Vec<i16> = Vec::new();
    let mut frame = MediaFrame::empty();
    let mut next_commit = START + COMMIT_EVERY;
    let mut after_end = 0u64;
    let end_pos = position_at(end_ns, START, RATE) as u64;
    let commit = |timeline: &mut StreamTimeline, now: u64, recording: &mut Vec<i16>| {
        let target = now.saturating_sub(COMMIT_DELAY).min(end_ns);
        let upto = position_at(target, START, RATE).max(0) as u64;
        timeline.commit(upto, |s| recording.extend_from_slice(s));
    };
    for &(at, i) in &arrivals {
        while next_commit <= at && next_commit <= end_ns + COMMIT_DELAY {
            commit(&mut timeline, next_commit, &mut recording);
            next_commit += COMMIT_EVERY;
        }
        if at > end_ns {
            after_end += 1; // the stream is closed at the BYE: later packets go nowhere
            continue;
        }
        let p = &sent[i];
        let payload: Vec<u8> = p.audio.iter().map(|&s| g711::linear_to_ulaw(s)).collect();
        let mut bytes = Vec::new();
        write_packet(0, p.seq, p.ts, p.ssrc, &payload, &mut bytes);
        if rx.handle_packet(at, &bytes, &mut frame).is_ok() {
            loop {
                let pcm = &frame.samples[..usize::from(frame.len)];
                timeline.handle_frame(frame.arrival_ns, frame.ext_ts, frame.ssrc_epoch, pcm);
                if !rx.next_frame(&mut frame) {
                    break;
                }
            }
        }
    }
    // The BYE: everything is committed exactly to the end.
    commit(&mut timeline, end_ns + COMMIT_DELAY, &mut recording);

    // Checker 1: a complete recording of exactly the call's length.
    if recording.len() as u64 != end_pos {
        return Err(format!(
            "recording has {} samples, the call {end_pos}",
            recording.len()
        ));
    }
    // Checker 2: every packet that arrived (once) is where its timestamp puts it, relative to
    // its epoch's first packet in the recording, or is counted as dropped.
    let received: std::collections::BTreeSet<usize> = arrivals
        .iter()
        .filter(|(at, _)| *at <= end_ns)
        .map(|&(_, i)| i)
        .collect();
    let mut missing = 0u64;
    for e in 0..=epoch {
        let of_epoch: Vec<usize> = received
            .iter()
            .copied()
            .filter(|&i| sent[i].epoch == e)
            .collect();
        let Some(anchor) = of_epoch
            .iter()
            .find_map(|&i| find(&recording, &sent[i].audio).map(|at| (i, at)))
        else {
            missing += of_epoch.len() as u64;
            continue;
        };
        for &i in &of_epoch {
            let offset = sent[i].ts.wrapping_sub(sent[anchor.0].ts) as i32 as i64;
            let at = anchor.1 as i64 + offset;
            // A packet reaching past the BYE is recorded up to it (the file ends there).
            let end = (at + 160).min(recording.len() as i64);
            let found = at >= 0
                && (at >= end
                    || recording[at as usize..end as usize]
                        == sent[i].audio[..(end - at) as usize]);
            if !found {
                missing += 1;
                if std::env::var("SIM_SEED").is_ok() {
                    explain(&sent, &arrivals, &recording, i, at);
                }
            }
        }
    }
    let stats = rx.stats();
    let t = timeline.stats();
    // A new SSRC takes over after a short run of its packets (counted as foreign until then).
    let counted = stats.too_old
        + stats.foreign_ssrc
        + stats.malformed
        + (t.samples_late_dropped + t.samples_early_dropped).div_ceil(160);
    if missing > counted {
        return Err(format!(
            "{missing} received packets not in the recording, only {counted} counted as dropped \
             (too_old {}, foreign SSRC {}, late samples {}, early samples {})",
            stats.too_old, stats.foreign_ssrc, t.samples_late_dropped, t.samples_early_dropped
        ));
    }
    Ok(format!(
        "{packets} packets, {lost} lost, {} arrivals, {after_end} after the end, {missing} \
         dropped and counted",
        arrivals.len()
    ))
}

/// For a replayed seed: where packet `i` and its neighbours arrived and landed.
fn explain(sent: &[Sent], arrivals: &[(u64, usize)], recording: &[i16], i: usize, at: i64) {
    eprintln!("packet {i} (epoch {}) is not at {at}:", sent[i].epoch);
    let first = i.saturating_sub(3);
    for (k, packet) in sent.iter().enumerate().skip(first).take(7) {
        let arrived: Vec<u64> = arrivals
            .iter()
            .filter(|(_, j)| *j == k)
            .map(|(a, _)| (a - START) / MS)
            .collect();
        let found = find(recording, &packet.audio);
        let epoch = packet.epoch;
        eprintln!(
            "  packet {k} epoch {epoch}: sent {} ms, arrived {arrived:?} ms, at {found:?}",
            20 * k
        );
    }
}

/// Runs `simulate` on seeds 1..=`default` (`SIM_SEEDS=N` for more), or on `SIM_SEED` alone
/// with its summary printed; a failing seed panics with the command that replays it.
fn run_seeds(default: u64, test: &str, simulate: fn(u64) -> Result<String, String>) {
    let seeds: Vec<u64> = match std::env::var("SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SIM_SEED is a number")],
        Err(_) => {
            let n = std::env::var("SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(default);
            (1..=n).collect()
        }
    };
    for seed in seeds {
        match simulate(seed) {
            Ok(summary) if std::env::var("SIM_SEED").is_ok() => eprintln!("seed {seed}: {summary}"),
            Ok(_) => {}
            Err(e) => panic!(
                "seed {seed}: {e}\nreplay: SIM_SEED={seed} cargo test --test simulation {test}"
            ),
        }
    }
}

#[test]
fn media_core_under_a_seeded_network() {
    run_seeds(300, "media_core", simulate);
}

// --- The whole core -------------------------------------------------------------------------
//
// SIP, sessions, media and the recorder on one simulated clock, 1 ms per step: several calls
// from SRCs at their own addresses through a seeded network (SIP and RTP lost, duplicated,
// delayed), each answered by the transaction layer and the session manager; the media of each
// stream through the receiver into a small SPSC ring (a full ring is a counted drop, as in the
// data plane) and a second ring for live transcription that is never drained (an STT stall);
// the recorder stepped with `step(now)` and stalled at random for up to 1.5 s (a slow disk),
// writing real files. Checkers, per seed: every call ends with session.json and valid WAV
// files whose header describes every byte; every RTP packet that reached an open stream is in
// its file where its timestamp puts it, or is counted as dropped (receiver, ring, timeline).

mod common;

use common::find;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use siprec::session::{ports::PortPool, Action, Now, SessionConfig, SessionManager};
use siprec::sink::recorder::{self, read_wav, FsyncPolicy, RecorderConfig, RecorderEvent};
use siprec::sip::{self, Message, Method, Output, Peer, Request, TransactionLayer, Transport};

const MONO_BASE: u64 = 10_000_000_000;
const SRS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 5060);

/// What travels the simulated network.
#[derive(Clone)]
enum Datagram {
    /// SIP to the SRS from call `call`'s SRC, or back.
    Sip {
        to_srs: bool,
        call: usize,
        bytes: Vec<u8>,
    },
    /// RTP packet `packet` of stream `stream` of call `call`, to the SRS port `port`.
    Rtp {
        call: usize,
        stream: usize,
        packet: usize,
        port: u16,
        bytes: Vec<u8>,
    },
}

/// The network: datagrams ordered by arrival time (then by sending order).
struct Net {
    queue: BTreeMap<(u64, u64), Datagram>,
    sent: u64,
    loss: u64,
    dup: u64,
    jitter: u64,
}

impl Net {
    fn send(&mut self, rng: &mut Rng, now: u64, datagram: Datagram) {
        if rng.chance(self.loss) {
            return;
        }
        let copies = if rng.chance(self.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let at = now + MS + rng.below(self.jitter.max(1));
            self.sent += 1;
            let copy = datagram.clone();
            self.queue.insert((at, self.sent), copy);
        }
    }
}

/// One SRC and its call, seen from the SRC.
struct Call {
    addr: SocketAddr,
    call_id: String,
    streams: usize,
    start: u64,
    /// When the SRC sends BYE; media stops 0–60 ms later (it races the BYE).
    bye_at: u64,
    media_stop: u64,
    invite: Request,
    /// Next INVITE/BYE retransmission (Timer A/E) and its interval.
    retransmit: Option<(u64, u64)>,
    to_tag: Option<String>,
    answer_ports: Vec<u16>,
    media_from: Option<u64>,
    bye: Option<Request>,
    bye_answered: bool,
    /// Per stream: packets sent (SSRC epoch, timestamp, audio).
    sent: Vec<Vec<(usize, u32, Vec<i16>)>>,
    /// Per stream: packet indices that reached an open stream at the SRS.
    delivered: Vec<BTreeSet<usize>>,
    ssrc: Vec<(usize, u32, u16, u32)>,
}

impl Call {
    fn request(&self, method: Method, cseq: u32, branch: &str) -> Request {
        let mut r = Request::new(method.clone(), format!("sip:srs@{SRS}"));
        r.headers.push(
            "Via",
            format!("SIP/2.0/UDP {};branch=z9hG4bK{branch}", self.addr),
        );
        r.headers.push("Max-Forwards", "70");
        r.headers.push("From", "<sip:src@198.51.100.1>;tag=src");
        let to = match &self.to_tag {
            Some(t) => format!("<sip:srs@192.0.2.1>;tag={t}"),
            None => "<sip:srs@192.0.2.1>".to_owned(),
        };
        r.headers.push("To", to);
        r.headers.push("Call-ID", self.call_id.clone());
        r.headers
            .push("CSeq", format!("{cseq} {}", method.as_str()));
        r.headers
            .push("Contact", format!("<sip:src@{}>;+sip.src", self.addr));
        r
    }
}

fn encode(request: &Request) -> Vec<u8> {
    let mut out = Vec::new();
    request.encode(&mut out);
    out
}

/// The data plane's part: a receiver per open port, frames into the rings.
struct SimStream {
    rx: RtpReceiver,
    call: usize,
    stream: usize,
}

struct SimPorts(PortPool);

impl siprec::session::MediaPorts for SimPorts {
    fn allocate(&mut self, now_ns: u64) -> Option<u16> {
        self.0.allocate(now_ns)
    }
    fn release(&mut self, port: u16, now_ns: u64) {
        self.0.release(port, now_ns)
    }
    fn in_use(&self) -> usize {
        self.0.in_use()
    }
}

fn simulate_core(seed: u64) -> Result<String, String> {
    let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let root = dir.path().to_owned();
    let mut net = Net {
        queue: BTreeMap::new(),
        sent: 0,
        loss: rng.below(8),
        dup: rng.below(5),
        jitter: rng.below(40) * MS,
    };
    let ring_slots = 16 << rng.below(5);
    let stall_chance = rng.below(3); // percent of recorder turns that stall
    let mut sessions = SessionManager::new(SessionConfig {
        max_concurrent_calls: 100,
        require_siprec: false,
        rtp_timeout_ns: 30_000 * MS,
        max_duration_ns: 0,
        recording_root: root.clone(),
        combine_legs: rng.chance(50),
        recording_format: recorder::AudioFormat::Wav,
        recording_encrypted: false,
        advertised_ip: Some(SRS.ip()),
        fallback_ip: SRS.ip(),
        sip_port: 5060,
        sip_tls_port: 5061,
        seed,
        key_source: |b| b.iter_mut().enumerate().for_each(|(i, x)| *x = i as u8),
        require_srtp: false,
        max_calls_per_source: 0,
        transcribe: None,
        keywords: Vec::new(),
    });
    let mut tsx = TransactionLayer::new(Default::default());
    let mut ports = SimPorts(PortPool::new(20000, 20999, 0));
    // Filled rings written in place, as the data plane's are.
    let empty = siprec::media::MediaFrame::empty();
    let (mut ring, consumer) = siprec::ring::channel_filled(ring_slots, empty);
    let (mut stt_ring, _stalled_stt) = siprec::ring::channel_filled(64, empty);
    let (handle, mut rec) = recorder::stepped(
        RecorderConfig {
            combine_legs: false,
            commit_delay_ms: 300,
            header_patch_interval_ms: 1000,
            fsync: FsyncPolicy::Never,
            format: recorder::AudioFormat::Wav,
            opus_bitrate: 32000,
            encryption: None,
        },
        vec![consumer],
    );
    let origin = Instant::now();
    let instant = |t: u64| origin + Duration::from_nanos(t);
    let now_at = |t: u64| Now {
        mono_ns: MONO_BASE + t,
        unix_ms: 1_795_256_101_000 + t / MS,
    };

    let mut calls: Vec<Call> = (0..1 + rng.below(4) as usize)
        .map(|c| {
            let start = rng.below(1500) * MS;
            let bye_at = start + (800 + rng.below(2500)) * MS;
            let streams = 1 + rng.below(2) as usize;
            let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1 + c as u8)), 5060);
            let (ct, body) = common::siprec_body(streams, "sendonly", 40000);
            let mut call = Call {
                addr,
                call_id: format!("sim-{seed}-{c}"),
                streams,
                start,
                bye_at,
                media_stop: bye_at + rng.below(60) * MS,
                invite: Request::new(Method::Invite, ""),
                retransmit: None,
                to_tag: None,
                answer_ports: Vec::new(),
                media_from: None,
                bye: None,
                bye_answered: false,
                sent: vec![Vec::new(); streams],
                delivered: vec![BTreeSet::new(); streams],
                ssrc: (0..streams)
                    .map(|s| (0, 0x5000 + s as u32, rng.next() as u16, rng.next() as u32))
                    .collect(),
            };
            let mut invite = call.request(Method::Invite, 1, &format!("inv{seed}x{c}"));
            invite.headers.push("Require", "siprec");
            invite.headers.push("Content-Type", ct);
            invite.body = body.into_bytes().into();
            call.invite = invite;
            call
        })
        .collect();
    let by_addr: HashMap<SocketAddr, usize> =
        calls.iter().enumerate().map(|(i, c)| (c.addr, i)).collect();
    let end = calls.iter().map(|c| c.media_stop).max().unwrap_or(0) + 8_000 * MS;

    let mut open: HashMap<u16, SimStream> = HashMap::new();
    let mut counted: HashMap<(usize, usize), u64> = HashMap::new(); // receiver + ring drops
    let mut timeline_drops: HashMap<(u64, u32), u64> = HashMap::new(); // (session, index)
    let mut session_of: HashMap<u64, usize> = HashMap::new();
    let (mut ring_drops, mut stt_drops, mut stalls) = (0u64, 0u64, 0u64);
    let mut frame = MediaFrame::empty();
    let mut recorder_free_at = 0u64;
    let mut next_tick = 1_000 * MS;

    let mut t = 0u64;
    while t < end {
        let now = now_at(t);
        // The SRCs: INVITE, retransmissions, media, BYE.
        for (c, call) in calls.iter_mut().enumerate() {
            if t == call.start {
                net.send(
                    &mut rng,
                    t,
                    Datagram::Sip {
                        to_srs: true,
                        call: c,
                        bytes: encode(&call.invite),
                    },
                );
                call.retransmit = Some((t + 500 * MS, 500 * MS));
            }
            if let Some((at, every)) = call.retransmit {
                if t == at {
                    let request = call.bye.as_ref().unwrap_or(&call.invite);
                    net.send(
                        &mut rng,
                        t,
                        Datagram::Sip {
                            to_srs: true,
                            call: c,
                            bytes: encode(request),
                        },
                    );
                    let every = (every * 2).min(4_000 * MS);
                    call.retransmit = Some((t + every, every));
                }
            }
            if t >= call.bye_at && call.bye.is_none() && call.to_tag.is_some() {
                let bye = call.request(Method::Bye, 2, &format!("bye{seed}x{c}"));
                net.send(
                    &mut rng,
                    t,
                    Datagram::Sip {
                        to_srs: true,
                        call: c,
                        bytes: encode(&bye),
                    },
                );
                call.bye = Some(bye);
                call.retransmit = Some((t + 500 * MS, 500 * MS));
            }
            let Some(from) = call.media_from else {
                continue;
            };
            if t < from || t >= call.media_stop || !(t - from).is_multiple_of(20 * MS) {
                continue;
            }
            for s in 0..call.streams {
                let (epoch, ssrc, seq, ts) = &mut call.ssrc[s];
                if rng.chance(1) {
                    *epoch += 1;
                    *ssrc = ssrc.wrapping_add(11);
                    *seq = rng.next() as u16;
                    *ts = rng.next() as u32;
                }
                let audio: Vec<i16> = (0..160)
                    .map(|_| g711::ulaw_to_linear(rng.next() as u8))
                    .collect();
                let payload: Vec<u8> = audio.iter().map(|&x| g711::linear_to_ulaw(x)).collect();
                let mut bytes = Vec::new();
                write_packet(0, *seq, *ts, *ssrc, &payload, &mut bytes);
                let packet = call.sent[s].len();
                call.sent[s].push((*epoch, *ts, audio));
                *seq = seq.wrapping_add(1);
                *ts = ts.wrapping_add(160);
                let port = call.answer_ports[s];
                net.send(
                    &mut rng,
                    t,
                    Datagram::Rtp {
                        call: c,
                        stream: s,
                        packet,
                        port,
                        bytes,
                    },
                );
            }
        }

        // The network delivers what is due.
        while let Some(entry) = net.queue.first_entry() {
            if entry.key().0 > t {
                break;
            }
            match entry.remove() {
                Datagram::Sip {
                    to_srs: true,
                    call,
                    bytes,
                } => {
                    let peer = Peer {
                        transport: Transport::Udp,
                        addr: calls[call].addr,
                        conn: Some(0),
                    };
                    match sip::parse_datagram(&bytes) {
                        Ok(message) => tsx.handle_message(instant(t), peer, message),
                        Err(e) => return Err(format!("SRC sent unparsable SIP: {e}")),
                    }
                }
                Datagram::Sip {
                    to_srs: false,
                    call: c,
                    bytes,
                } => {
                    let call = &mut calls[c];
                    let Ok(Message::Response(response)) = sip::parse_datagram(&bytes) else {
                        continue; // the SRS asks nothing of the SRC here
                    };
                    let method = response.cseq().map(|c| c.method);
                    if method == Some(Method::Invite)
                        && response.status >= 100
                        && call.bye.is_none()
                    {
                        call.retransmit = None;
                    }
                    if method == Some(Method::Invite) && response.status == 200 {
                        // Every copy of the 200 gets an ACK (RFC 3261 §13.2.2.4).
                        call.to_tag = response.to_tag();
                        if call.answer_ports.is_empty() {
                            call.answer_ports =
                                common::answer_ports(&String::from_utf8_lossy(&response.body));
                            call.media_from = Some(t + 20 * MS);
                        }
                        let ack = call.request(Method::Ack, 1, &format!("ack{seed}x{c}"));
                        net.send(
                            &mut rng,
                            t,
                            Datagram::Sip {
                                to_srs: true,
                                call: c,
                                bytes: encode(&ack),
                            },
                        );
                    } else if method == Some(Method::Invite) && response.status >= 300 {
                        return Err(format!("call {c}: INVITE answered {}", response.status));
                    }
                    if method == Some(Method::Bye) && response.status >= 200 {
                        call.bye_answered = true;
                        call.retransmit = None;
                    }
                }
                Datagram::Rtp {
                    call,
                    stream,
                    packet,
                    port,
                    bytes,
                } => {
                    let Some(open) = open.get_mut(&port) else {
                        continue; // before the answer or after the BYE: no stream, as on a socket
                    };
                    if (open.call, open.stream) != (call, stream) {
                        return Err(format!("port {port} carries two streams"));
                    }
                    calls[call].delivered[stream].insert(packet);
                    if open
                        .rx
                        .handle_packet(MONO_BASE + t, &bytes, &mut frame)
                        .is_ok()
                    {
                        loop {
                            if !stt_ring.push_in_place(|slot| slot.copy_from(&frame)) {
                                stt_drops += 1;
                            }
                            if !ring.push_in_place(|slot| slot.copy_from(&frame)) {
                                ring_drops += 1;
                                *counted.entry((call, stream)).or_default() += 1;
                            }
                            if !open.rx.next_frame(&mut frame) {
                                break;
                            }
                        }
                    }
                }
            }
        }

        // The SRS: transactions, sessions, the recorder.
        if tsx.poll_timeout().is_some_and(|at| at <= instant(t)) {
            tsx.handle_timeout(instant(t));
        }
        if t >= next_tick {
            sessions.handle_tick(now, &mut ports);
            next_tick += 1_000 * MS;
        }
        if t >= recorder_free_at {
            rec.step(MONO_BASE + t);
            if rng.chance(stall_chance) {
                stalls += 1;
                recorder_free_at = t + (50 + rng.below(1450)) * MS;
            }
        }
        while let Ok(event) = handle.events.try_recv() {
            if let RecorderEvent::SessionClosed {
                session, streams, ..
            } = &event
            {
                for s in streams {
                    let dropped = s.samples_late_dropped + s.samples_early_dropped;
                    timeline_drops.insert((*session, s.index), dropped);
                }
            }
            sessions.handle_recorder_event(now, &mut ports, event);
        }
        loop {
            let mut progressed = false;
            while let Some(out) = tsx.poll_output() {
                progressed = true;
                match out {
                    Output::Transmit(tr) => {
                        let Some(&call) = by_addr.get(&tr.peer.addr) else {
                            return Err(format!("SIP to an unknown address {}", tr.peer.addr));
                        };
                        net.send(
                            &mut rng,
                            t,
                            Datagram::Sip {
                                to_srs: false,
                                call,
                                bytes: tr.payload.to_vec(),
                            },
                        );
                    }
                    Output::Event(e) => sessions.handle_tsx_event(now, &mut ports, e),
                }
            }
            while let Some(action) = sessions.poll_action() {
                progressed = true;
                match action {
                    Action::Respond { key, response } => tsx.respond(instant(t), key, response),
                    Action::SendRequest { peer, request } => {
                        tsx.send_request(instant(t), peer, request);
                    }
                    Action::OpenStream { port, params } => {
                        let key = params.key;
                        let call = calls.iter().position(|c| {
                            sessions
                                .summaries()
                                .iter()
                                .any(|s| s.session == key.session && s.call_id == c.call_id)
                        });
                        let Some(call) = call else {
                            return Err(format!("stream {key:?} of no known call"));
                        };
                        session_of.insert(key.session, call);
                        let stream = key.stream as usize;
                        open.insert(
                            port,
                            SimStream {
                                rx: RtpReceiver::new(params),
                                call,
                                stream,
                            },
                        );
                    }
                    Action::UpdateStream { port, params } => {
                        if let Some(s) = open.get_mut(&port) {
                            s.rx.update(params);
                        }
                    }
                    Action::CloseStream { port, key } => {
                        if let Some(s) = open.remove(&port) {
                            let stats = *s.rx.stats();
                            let n = stats.too_old + stats.foreign_ssrc + stats.malformed;
                            *counted.entry((s.call, s.stream)).or_default() += n;
                            sessions.handle_stream_stats(key, stats);
                        }
                    }
                    Action::Recorder(cmd) => {
                        let _ = handle.commands.send(cmd);
                    }
                    Action::WriteFile { path, bytes } => {
                        if let Some(parent) = path.parent() {
                            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
                        }
                        recorder::write_atomic(&path, &bytes).map_err(|e| e.to_string())?;
                    }
                    Action::DropPartialSession { dir } => {
                        let _ =
                            std::fs::remove_file(dir.join(siprec::session::PARTIAL_SESSION_FILE));
                    }
                    Action::Event(_) => {}
                }
            }
            if !progressed {
                break;
            }
        }
        t += MS;
    }
    rec.finish(MONO_BASE + t);

    // Checker 1: every call was answered, ended by its BYE, and left session.json and valid,
    // closed files.
    let mut found: HashMap<String, std::path::PathBuf> = HashMap::new();
    for date in std::fs::read_dir(&root)
        .map_err(|e| e.to_string())?
        .flatten()
    {
        for session in std::fs::read_dir(date.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let json = session.path().join("session.json");
            if let Ok(bytes) = std::fs::read(&json) {
                let meta: serde_json::Value =
                    serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
                found.insert(
                    meta["call_id"].as_str().unwrap_or("").to_owned(),
                    session.path(),
                );
            }
        }
    }
    let mut missing = 0u64;
    for (c, call) in calls.iter().enumerate() {
        if !call.bye_answered {
            return Err(format!("call {c}: BYE never answered"));
        }
        let Some(dir) = found.get(&call.call_id) else {
            return Err(format!("call {c}: no session.json"));
        };
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("session.json")).unwrap()).unwrap();
        if meta["end_reason"] != "bye" {
            return Err(format!("call {c}: ended {}", meta["end_reason"]));
        }
        let session = session_of
            .iter()
            .find(|(_, &v)| v == c)
            .map(|(&k, _)| k)
            .unwrap_or(0);
        for s in 0..call.streams {
            let path = dir.join(format!("{}.wav", s + 1));
            let (_, _, recording) = read_wav(&path).map_err(|e| format!("call {c}: {e}"))?;
            let len = std::fs::metadata(&path).map_err(|e| e.to_string())?.len();
            if len != 44 + 2 * recording.len() as u64 {
                return Err(format!(
                    "call {c} stream {s}: header says {} samples, file {len} bytes",
                    recording.len()
                ));
            }
            // Checker 2: each delivered packet where its timestamp puts it (relative to its
            // SSRC epoch's first packet found), or counted as dropped.
            let sent = &call.sent[s];
            let epochs: BTreeSet<usize> = call.delivered[s].iter().map(|&i| sent[i].0).collect();
            let mut lost_here = 0;
            for e in epochs {
                let of_epoch: Vec<usize> = call.delivered[s]
                    .iter()
                    .copied()
                    .filter(|&i| sent[i].0 == e)
                    .collect();
                let Some((anchor, at0)) = of_epoch
                    .iter()
                    .find_map(|&i| find(&recording, &sent[i].2).map(|at| (i, at)))
                else {
                    lost_here += of_epoch.len() as u64;
                    continue;
                };
                for &i in &of_epoch {
                    let at = at0 as i64 + sent[i].1.wrapping_sub(sent[anchor].1) as i32 as i64;
                    let end = (at + 160).min(recording.len() as i64);
                    let ok = at >= 0
                        && (at >= end
                            || recording[at as usize..end as usize]
                                == sent[i].2[..(end - at) as usize]);
                    if !ok {
                        lost_here += 1;
                    }
                }
            }
            let timeline = timeline_drops
                .get(&(session, s as u32))
                .copied()
                .unwrap_or(0);
            let counted_here = counted.get(&(c, s)).copied().unwrap_or(0) + timeline.div_ceil(160);
            if lost_here > counted_here {
                return Err(format!(
                    "call {c} stream {s}: {lost_here} delivered packets not in the file, only \
                     {counted_here} counted as dropped"
                ));
            }
            missing += lost_here;
        }
    }
    Ok(format!(
        "{} calls, ring {ring_slots} slots ({ring_drops} full), {stalls} recorder stalls, STT \
         ring full {stt_drops} times, {missing} packets dropped and counted",
        calls.len()
    ))
}

#[test]
fn whole_core_under_a_seeded_network() {
    run_seeds(40, "whole_core", simulate_core);
}
