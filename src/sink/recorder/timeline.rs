//! Places one stream's decoded frames on its recording session's timeline, sans-IO.
//!
//! A `StreamTimeline` owns a positional ring of samples covering `[committed, committed +
//! capacity)`, where a position counts samples at the stream's rate since the recording
//! session's `start_ns`. Frames land at a position derived from their RTP timestamp relative to
//! an *anchor* taken from the arrival time of the first frame of each SSRC epoch; `commit` hands
//! out everything before a position, with zeros wherever nothing arrived, so late start, hold,
//! loss and RTP gaps become silence of exactly the right length.
//!
//! Refuses: to read a clock or touch a file (time and samples are inputs, committed samples go to
//! a callback), to allocate per frame (the ring is allocated once), to place samples before the
//! committed position (counted as late), and to trust a timestamp that disagrees with arrival
//! time by more than one second (re-anchored and counted as a resync).

/// Counters of one stream's placement, for `StreamRecordStats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimelineStats {
    pub frames_received: u64,
    /// Samples that arrived for positions already committed.
    pub samples_late_dropped: u64,
    /// Samples beyond the end of the ring even after re-anchoring (the commit lagged).
    pub samples_early_dropped: u64,
    /// Re-anchors forced by a timestamp jump or by a frame beyond the ring's end.
    pub resyncs: u64,
}

/// One stream's positional buffer. Drive it with `handle_frame` as frames arrive and `commit`
/// as the session's wall clock advances (the recorder commits up to `now - commit_delay`).
pub struct StreamTimeline {
    start_ns: u64,
    sample_rate: u32,
    /// Ring of samples; position `p` lives at `p % ring.len()` while it is uncommitted.
    /// Every slot outside the placed samples is zero.
    ring: Box<[i16]>,
    /// First position not yet handed out by `commit`.
    committed: i64,
    anchor: Option<Anchor>,
    /// End of the furthest frame placed, any SSRC: a new SSRC never starts before it.
    placed_end: i64,
    /// Where the current SSRC began: none of its frames (reordered ones with earlier
    /// timestamps included) is written before it, over the previous SSRC's audio.
    epoch_floor: i64,
    stats: TimelineStats,
}

impl StreamTimeline {
    /// A timeline for a stream at `sample_rate`, whose position 0 is `start_ns`, able to hold
    /// `capacity` uncommitted samples. Allocates the ring once, here.
    pub fn new(start_ns: u64, sample_rate: u32, capacity: usize) -> StreamTimeline {
        assert!(sample_rate > 0, "sample rate must be positive");
        assert!(capacity > 0, "timeline capacity must be positive");
        StreamTimeline {
            start_ns,
            sample_rate,
            ring: vec![0i16; capacity].into_boxed_slice(),
            committed: 0,
            anchor: None,
            placed_end: 0,
            epoch_floor: 0,
            stats: TimelineStats::default(),
        }
    }

    /// Capacity for a commit delay: the delay plus 2 s of slack for a slow recorder iteration.
    pub fn capacity_for(sample_rate: u32, commit_delay_ms: u32) -> usize {
        let ms = u64::from(commit_delay_ms) + SLACK_MS;
        (ms * u64::from(sample_rate)).div_ceil(1000) as usize
    }

    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// The monotonic instant where the furthest audio placed so far ends.
    pub fn placed_end_ns(&self) -> u64 {
        let ns =
            i128::from(self.placed_end) * i128::from(NANOS_PER_SEC) / i128::from(self.sample_rate);
        self.start_ns.saturating_add(ns.max(0) as u64)
    }

    /// First position not yet committed: the number of samples handed out so far.
    pub fn committed(&self) -> u64 {
        self.committed as u64
    }

    pub fn stats(&self) -> TimelineStats {
        self.stats
    }

    /// Places one frame. `arrival_ns` is the monotonic receive time, `ext_ts` the wrap-free RTP
    /// timestamp of its first sample (in samples), `ssrc_epoch` changes when the SSRC changes.
    pub fn handle_frame(&mut self, arrival_ns: u64, ext_ts: u64, ssrc_epoch: u32, pcm: &[i16]) {
        self.stats.frames_received += 1;
        if pcm.is_empty() {
            return;
        }
        let len = pcm.len() as i64;
        // Where the frame would start if it had been sent the instant before it arrived.
        let arrival_pos = position_at(arrival_ns, self.start_ns, self.sample_rate) - len;
        let mut anchor = match self.anchor {
            Some(a) if a.epoch == ssrc_epoch => a,
            // A new SSRC (transfer, re-INVITE): placed by arrival, but never over the audio
            // of the one before it, which jitter would otherwise let it overwrite
            // (tests/simulation.rs found it).
            Some(_) => {
                self.epoch_floor = arrival_pos.max(self.placed_end);
                self.reanchor(self.epoch_floor, ext_ts, ssrc_epoch)
            }
            None => self.reanchor(arrival_pos, ext_ts, ssrc_epoch),
        };
        let mut pos = anchor.position_of(ext_ts);
        let mut reanchored = false;
        if (pos - arrival_pos).abs() > i64::from(self.sample_rate) {
            // The timestamp jumped (hold without timestamp advance, sender clock reset).
            anchor = self.reanchor(arrival_pos, ext_ts, ssrc_epoch);
            pos = anchor.position_of(ext_ts);
            reanchored = true;
            self.stats.resyncs += 1;
        }
        let ring_end = self.committed + self.ring.len() as i64;
        if pos + len > ring_end && !reanchored {
            anchor = self.reanchor(arrival_pos, ext_ts, ssrc_epoch);
            pos = anchor.position_of(ext_ts);
            self.stats.resyncs += 1;
        }
        self.place(pos, pcm);
    }

    /// Hands out `[committed, upto)` to `sink` in order, in one or more slices, with zeros where
    /// nothing arrived, and advances. Does nothing if `upto` is not ahead. Never allocates.
    pub fn commit(&mut self, upto: u64, mut sink: impl FnMut(&[i16])) {
        let upto = upto as i64;
        if upto <= self.committed {
            return;
        }
        let cap = self.ring.len();
        let total = (upto - self.committed) as u64;
        let from_ring = total.min(cap as u64) as usize;
        let start = self.committed.rem_euclid(cap as i64) as usize;
        let first = from_ring.min(cap - start);
        sink(&self.ring[start..start + first]);
        self.ring[start..start + first].fill(0);
        let second = from_ring - first;
        if second > 0 {
            sink(&self.ring[..second]);
            self.ring[..second].fill(0);
        }
        let mut zeros_left = total - from_ring as u64;
        while zeros_left > 0 {
            let n = zeros_left.min(ZEROS.len() as u64) as usize;
            sink(&ZEROS[..n]);
            zeros_left -= n as u64;
        }
        self.committed = upto;
    }

    fn reanchor(&mut self, arrival_pos: i64, ext_ts: u64, epoch: u32) -> Anchor {
        let anchor = Anchor {
            epoch,
            pos: arrival_pos.max(0),
            ts: ext_ts,
        };
        self.anchor = Some(anchor);
        anchor
    }

    fn place(&mut self, pos: i64, pcm: &[i16]) {
        let len = pcm.len() as i64;
        let ring_end = self.committed + self.ring.len() as i64;
        let from = pos.max(self.committed).max(self.epoch_floor).min(pos + len);
        let to = (pos + len).min(ring_end).max(from);
        self.stats.samples_late_dropped += (from - pos) as u64;
        self.stats.samples_early_dropped += (pos + len - to) as u64;
        if from == to {
            return;
        }
        self.placed_end = self.placed_end.max(to);
        let src = &pcm[(from - pos) as usize..(to - pos) as usize];
        let cap = self.ring.len();
        let start = from.rem_euclid(cap as i64) as usize;
        let first = src.len().min(cap - start);
        self.ring[start..start + first].copy_from_slice(&src[..first]);
        self.ring[..src.len() - first].copy_from_slice(&src[first..]);
    }
}

impl std::fmt::Debug for StreamTimeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamTimeline")
            .field("sample_rate", &self.sample_rate)
            .field("capacity", &self.ring.len())
            .field("committed", &self.committed)
            .field("stats", &self.stats)
            .finish()
    }
}

/// The sample position of monotonic instant `ns` on a timeline starting at `start_ns`, rounded
/// to the nearest sample (halves up). Negative before the start.
pub fn position_at(ns: u64, start_ns: u64, sample_rate: u32) -> i64 {
    let delta = i128::from(ns) - i128::from(start_ns);
    let scaled = delta * i128::from(sample_rate) + i128::from(NANOS_PER_SEC / 2);
    scaled.div_euclid(i128::from(NANOS_PER_SEC)) as i64
}

/// Ties an RTP timestamp to a timeline position for one SSRC epoch.
#[derive(Debug, Clone, Copy)]
struct Anchor {
    epoch: u32,
    pos: i64,
    ts: u64,
}

impl Anchor {
    fn position_of(&self, ext_ts: u64) -> i64 {
        // Signed: after reordering `ext_ts` may be below the anchor's timestamp.
        self.pos + ext_ts.wrapping_sub(self.ts) as i64
    }
}

/// Slack beyond the commit delay that the ring holds, in ms (a slow recorder iteration).
const SLACK_MS: u64 = 2000;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Silence handed to `commit`'s sink for stretches longer than the ring.
static ZEROS: [i16; 4096] = [0; 4096];

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 8000;
    const MS: u64 = 1_000_000;
    const START: u64 = 1_000 * MS;

    fn frame(first: i64, len: usize) -> Vec<i16> {
        (0..len as i64).map(|i| value_at(first + i)).collect()
    }

    fn value_at(pos: i64) -> i16 {
        (pos % 30_000 + 1) as i16
    }

    fn timeline() -> StreamTimeline {
        StreamTimeline::new(START, RATE, StreamTimeline::capacity_for(RATE, 300))
    }

    fn commit_all(t: &mut StreamTimeline, upto: u64) -> Vec<i16> {
        let mut out = Vec::new();
        t.commit(upto, |s| out.extend_from_slice(s));
        out
    }

    /// Sends 20 ms frames of the value pattern; frame k arrives at the end of its 20 ms.
    fn send(t: &mut StreamTimeline, k: u64, ts0: u64) {
        let pos = (k * 160) as i64;
        t.handle_frame(
            START + (k + 1) * 20 * MS,
            ts0 + k * 160,
            0,
            &frame(pos, 160),
        );
    }

    /// In-order frames come out exactly as sent, anchored at position 0.
    #[test]
    fn in_order() {
        let mut t = timeline();
        for k in 0..50 {
            send(&mut t, k, 77);
        }
        assert_eq!(commit_all(&mut t, 8000), frame(0, 8000));
        assert_eq!(t.committed(), 8000);
        assert_eq!(t.stats().frames_received, 50);
    }

    /// Frames arriving out of order land at their timestamp's position.
    #[test]
    fn reordered() {
        let mut t = timeline();
        send(&mut t, 0, 5);
        for k in [2, 1, 4, 3, 5] {
            send(&mut t, k, 5);
        }
        assert_eq!(commit_all(&mut t, 960), frame(0, 960));
    }

    /// A reordered frame that arrives before the anchor frame is placed before it.
    #[test]
    fn reordered_before_anchor() {
        let mut t = timeline();
        send(&mut t, 3, 1000);
        send(&mut t, 2, 1000);
        let out = commit_all(&mut t, 640);
        assert_eq!(&out[320..], &frame(320, 320)[..]);
        assert!(out[..320].iter().all(|&s| s == 0));
    }

    /// A lost frame becomes silence of exactly its length.
    #[test]
    fn lost() {
        let mut t = timeline();
        for k in [0, 1, 3, 4] {
            send(&mut t, k, 0);
        }
        let out = commit_all(&mut t, 800);
        assert_eq!(&out[..320], &frame(0, 320)[..]);
        assert!(out[320..480].iter().all(|&s| s == 0));
        assert_eq!(&out[480..], &frame(480, 320)[..]);
    }

    /// A duplicate overwrites itself with identical content.
    #[test]
    fn duplicate() {
        let mut t = timeline();
        for k in [0, 1, 1, 2] {
            send(&mut t, k, 0);
        }
        assert_eq!(commit_all(&mut t, 480), frame(0, 480));
    }

    /// Samples for positions already committed are dropped and counted; a straddling frame
    /// keeps its uncommitted part.
    #[test]
    fn late_beyond_commit() {
        let mut t = timeline();
        send(&mut t, 0, 0);
        send(&mut t, 2, 0);
        let out = commit_all(&mut t, 400);
        assert_eq!(&out[..160], &frame(0, 160)[..]);
        send(&mut t, 1, 0); // Positions 160..320, all committed.
        t.handle_frame(START + 60 * MS, 320 - 100, 0, &frame(220, 200)); // 220..420.
        assert_eq!(t.stats().samples_late_dropped, 160 + 180);
        let rest = commit_all(&mut t, 480);
        assert_eq!(&rest[..20], &frame(400, 20)[..]);
        assert_eq!(&rest[20..], &frame(420, 60)[..]);
    }

    /// An SSRC change re-anchors on arrival time, even if the new timestamps are unrelated.
    #[test]
    fn ssrc_change_reanchors() {
        let mut t = timeline();
        for k in 0..10 {
            send(&mut t, k, 0);
        }
        // New SSRC from position 1600 with a random timestamp base, arriving at its end.
        for k in 0..10u64 {
            let pos = 1600 + (k * 160) as i64;
            let arrival = START + (pos as u64 + 160) * MS / 8;
            t.handle_frame(arrival, 9_000_000 + k * 160, 1, &frame(pos, 160));
        }
        assert_eq!(commit_all(&mut t, 3200), frame(0, 3200));
        assert_eq!(t.stats().resyncs, 0);
    }

    /// Timestamps that cross 2^32 are already wrap-free; placement is unaffected.
    #[test]
    fn timestamp_wrap() {
        let mut t = timeline();
        let ts0 = (1u64 << 32) - 480;
        for k in 0..10 {
            send(&mut t, k, ts0);
        }
        assert_eq!(commit_all(&mut t, 1600), frame(0, 1600));
    }

    /// A timestamp jump of more than 1 s (sender clock reset) re-anchors on arrival time.
    #[test]
    fn timestamp_jump_resyncs() {
        let mut t = timeline();
        for k in 0..5 {
            send(&mut t, k, 0);
        }
        // Frame 5 carries a timestamp 10 s ahead; it belongs at 800 by arrival.
        t.handle_frame(START + 120 * MS, 800 + 80_000, 0, &frame(800, 160));
        send(&mut t, 6, 80_000); // Continues from the new anchor.
        assert_eq!(commit_all(&mut t, 1120), frame(0, 1120));
        assert_eq!(t.stats().resyncs, 1);
    }

    /// A hold (no packets for 5 s, timestamps not advancing) is silence, then audio resumes at
    /// its arrival position.
    #[test]
    fn hold_without_timestamp_advance() {
        let mut t = timeline();
        for k in 0..5 {
            send(&mut t, k, 0);
        }
        let mut out = commit_all(&mut t, 4000);
        // Resumes at 5.8 s with the timestamp where it stopped (800). The recorder commits up
        // to `now - delay` before placing what it drained, as it does here.
        for k in 0..5u64 {
            let pos = 46_400 + k as i64 * 160;
            let arrival = START + (pos as u64 + 160) * MS / 8;
            out.extend(commit_all(&mut t, pos as u64 - 2400));
            t.handle_frame(arrival, 800 + k * 160, 0, &frame(pos, 160));
        }
        out.extend(commit_all(&mut t, 48_000));
        assert_eq!(out.len(), 48_000);
        assert_eq!(&out[..800], &frame(0, 800)[..]);
        assert!(out[800..46_400].iter().all(|&s| s == 0));
        assert_eq!(&out[46_400..47_200], &frame(46_400, 800)[..]);
        assert!(out[47_200..].iter().all(|&s| s == 0));
        assert_eq!(t.stats().resyncs, 1);
    }

    /// A late start is silence up to the first frame's arrival position.
    #[test]
    fn late_start() {
        let mut t = timeline();
        t.commit(8000, |_| {});
        t.handle_frame(START + 1_020 * MS, 42, 0, &frame(8000, 160));
        assert_eq!(commit_all(&mut t, 8160), frame(8000, 160));
    }

    /// Committing far past the ring's capacity yields the exact number of zeros.
    #[test]
    fn long_silence() {
        let mut t = timeline();
        let out = commit_all(&mut t, 1_000_000);
        assert_eq!(out.len(), 1_000_000);
        assert!(out.iter().all(|&s| s == 0));
        t.commit(10, |_| panic!("commit behind is a no-op"));
    }

    /// Five minutes of 20 ms frames with ±15 ms arrival jitter and commits every 20 ms at a
    /// 300 ms delay: exactly the right sample count and content, nothing late, no resync.
    #[test]
    fn five_minutes_with_jitter() {
        let mut t = timeline();
        let frames = 5 * 60 * 50u64;
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut jitter = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng % 31) as i64 - 15
        };
        // The first frame arrives on time; later ones jitter, so they may arrive reordered.
        let mut arrivals: Vec<(i64, u64)> = (0..frames)
            .map(|k| {
                let ideal = ((k + 1) * 20 * MS) as i64;
                let j = if k == 0 { 0 } else { jitter() * MS as i64 };
                (ideal + j, k)
            })
            .collect();
        arrivals.sort();
        let mut out = Vec::with_capacity(2_400_000);
        let mut next = 0usize;
        let end_ns = frames * 20 * MS;
        let mut now = 0u64;
        while now <= end_ns + 400 * MS {
            while next < arrivals.len() && arrivals[next].0 <= now as i64 {
                let k = arrivals[next].1;
                let pos = (k * 160) as i64;
                let arrival = START + arrivals[next].0 as u64;
                t.handle_frame(arrival, 1234 + k * 160, 0, &frame(pos, 160));
                next += 1;
            }
            let upto = position_at(START + now.saturating_sub(300 * MS), START, RATE);
            let upto = upto.min(position_at(START + end_ns, START, RATE));
            t.commit(upto as u64, |s| out.extend_from_slice(s));
            now += 20 * MS;
        }
        assert_eq!(out.len(), 2_400_000);
        assert!(out == frame(0, 2_400_000), "content differs");
        assert_eq!(t.stats().samples_late_dropped, 0);
        assert_eq!(t.stats().resyncs, 0);
    }

    /// A frame beyond the ring's end (the commit lagged behind a stall) re-anchors, and what
    /// still doesn't fit is dropped and counted instead of overwriting uncommitted samples.
    #[test]
    fn beyond_ring_end() {
        let mut t = StreamTimeline::new(START, RATE, 1000);
        send(&mut t, 0, 0);
        // Arrives 1 s later with a consistent timestamp: position 8000, ring ends at 1000.
        t.handle_frame(START + 1_020 * MS, 8000, 0, &frame(8000, 160));
        assert_eq!(t.stats().resyncs, 1);
        assert_eq!(t.stats().samples_early_dropped, 160);
        assert_eq!(commit_all(&mut t, 1000), {
            let mut v = frame(0, 160);
            v.resize(1000, 0);
            v
        });
    }

    /// Rounding of positions: halves round up, before the start is negative.
    #[test]
    fn positions() {
        assert_eq!(position_at(START, START, RATE), 0);
        assert_eq!(position_at(START + 62_500, START, RATE), 1); // Exactly half a sample.
        assert_eq!(position_at(START + 62_499, START, RATE), 0);
        assert_eq!(position_at(START - 20 * MS, START, RATE), -160);
    }
}
