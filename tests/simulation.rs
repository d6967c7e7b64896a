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

fn find(hay: &[i16], needle: &[i16]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn media_core_under_a_seeded_network() {
    let seeds: Vec<u64> = match std::env::var("SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SIM_SEED is a number")],
        Err(_) => {
            let n = std::env::var("SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(300);
            (1..=n).collect()
        }
    };
    for seed in seeds {
        match simulate(seed) {
            Ok(summary) if std::env::var("SIM_SEED").is_ok() => eprintln!("seed {seed}: {summary}"),
            Ok(_) => {}
            Err(e) => {
                panic!("seed {seed}: {e}\nreplay: SIM_SEED={seed} cargo test --test simulation")
            }
        }
    }
}
