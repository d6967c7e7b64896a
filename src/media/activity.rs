//! Who is talking, from the recorded audio: per-stream voice activity in 20 ms windows and the
//! call-level figures contact centers ask for (talk time per leg, dead air, overtalk, speaker
//! changes). Runs on the committed timeline, so every stream's windows line up on the call's
//! clock. No I/O, no clock, no allocation per window.

use std::collections::VecDeque;

/// Analysis window.
pub const WINDOW_MS: u64 = 20;
/// Mean square above which a window is speech: −45 dBFS RMS (≈ 184 of 32768). Gaps, holds
/// and comfort noise are recorded as digital silence, far below it.
const SPEECH_MEAN_SQUARE: u64 = 184 * 184;
/// Windows a talker stays "active" after the last loud one: bridges the gaps between words.
pub const HANGOVER_WINDOWS: u32 = 10;
/// Windows one talker must hold the floor alone before it counts as a speaker change.
const SPEAKER_HOLD_WINDOWS: u32 = 15;

/// Voice activity of one stream.
#[derive(Debug, Clone)]
pub struct VoiceActivity {
    window: usize,
    sum: u64,
    n: usize,
    hang: u32,
}

impl VoiceActivity {
    pub fn new(sample_rate: u32) -> VoiceActivity {
        VoiceActivity {
            window: (sample_rate as u64 * WINDOW_MS / 1000).max(1) as usize,
            sum: 0,
            n: 0,
            hang: 0,
        }
    }

    /// Feeds committed samples; `on_window(active)` for every completed window.
    pub fn feed(&mut self, samples: &[i16], mut on_window: impl FnMut(bool)) {
        for &s in samples {
            self.sum += (i32::from(s) * i32::from(s)) as u64;
            self.n += 1;
            if self.n == self.window {
                let loud = self.sum / self.window as u64 > SPEECH_MEAN_SQUARE;
                let active = if loud {
                    self.hang = HANGOVER_WINDOWS;
                    true
                } else if self.hang > 0 {
                    self.hang -= 1;
                    true
                } else {
                    false
                };
                on_window(active);
                self.sum = 0;
                self.n = 0;
            }
        }
    }
}

/// Totals of a call so far, in windows of `WINDOW_MS`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ActivityTotals {
    /// Windows analysed (the call's length so far).
    pub windows: u64,
    /// Per stream (by stream index): windows it was talking.
    pub talk: Vec<(u32, u64)>,
    /// Windows nobody talked.
    pub dead_air: u64,
    /// Windows two or more talked.
    pub overtalk: u64,
}

/// A change of the one talker holding the floor (`None`: the floor went quiet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpeakerChange {
    /// Window at which the new speaker started (call time = window × WINDOW_MS).
    pub window: u64,
    pub stream: Option<u32>,
}

struct Leg {
    index: u32,
    meter: VoiceActivity,
    pending: VecDeque<bool>,
    talk: u64,
    /// Windows to ignore: a stream added mid-call delivers the call's past as silence, and
    /// those windows were already counted.
    skip: u64,
}

/// Voice activity of every stream of one call, aggregated window by window once every
/// stream has reached it.
pub struct CallActivity {
    legs: Vec<Leg>,
    totals: ActivityTotals,
    floor: Option<u32>,
    candidate: Option<(Option<u32>, u64, u32)>,
    changes: Vec<SpeakerChange>,
}

impl Default for CallActivity {
    fn default() -> Self {
        CallActivity::new()
    }
}

impl CallActivity {
    pub fn new() -> CallActivity {
        CallActivity {
            legs: Vec::new(),
            totals: ActivityTotals::default(),
            floor: None,
            candidate: None,
            changes: Vec::new(),
        }
    }

    /// A stream joins; it is expected to deliver windows from the call's start (silence for
    /// the time before it existed, as its timeline does).
    pub fn add_stream(&mut self, index: u32, sample_rate: u32) {
        if self.legs.iter().any(|l| l.index == index) {
            return;
        }
        self.legs.push(Leg {
            index,
            meter: VoiceActivity::new(sample_rate),
            pending: VecDeque::new(),
            talk: 0,
            skip: self.totals.windows,
        });
    }

    /// Committed samples of stream `index`.
    pub fn feed(&mut self, index: u32, samples: &[i16]) {
        if let Some(leg) = self.legs.iter_mut().find(|l| l.index == index) {
            let (pending, skip) = (&mut leg.pending, &mut leg.skip);
            leg.meter.feed(samples, |a| match *skip {
                0 => pending.push_back(a),
                _ => *skip -= 1,
            });
        }
        self.settle();
    }

    /// Aggregates every window all streams have reached.
    fn settle(&mut self) {
        if self.legs.is_empty() {
            return;
        }
        while self.legs.iter().all(|l| !l.pending.is_empty()) {
            let mut active = 0;
            let mut talker = None;
            for leg in &mut self.legs {
                if leg.pending.pop_front() == Some(true) {
                    leg.talk += 1;
                    active += 1;
                    talker = Some(leg.index);
                }
            }
            let window = self.totals.windows;
            self.totals.windows += 1;
            match active {
                0 => self.totals.dead_air += 1,
                1 => {}
                _ => self.totals.overtalk += 1,
            }
            // The floor: one talker alone, or quiet; overtalk doesn't move it.
            let holder = match active {
                0 => Some(None),
                1 => Some(talker),
                _ => None,
            };
            if let Some(holder) = holder {
                if holder == self.floor {
                    self.candidate = None;
                } else {
                    let (who, since, n) = match self.candidate {
                        Some((who, since, n)) if who == holder => (who, since, n + 1),
                        _ => (holder, window, 1),
                    };
                    if n >= SPEAKER_HOLD_WINDOWS {
                        self.floor = who;
                        self.changes.push(SpeakerChange {
                            window: since,
                            stream: who,
                        });
                        self.candidate = None;
                    } else {
                        self.candidate = Some((who, since, n));
                    }
                }
            }
        }
    }

    pub fn totals(&self) -> ActivityTotals {
        let mut t = self.totals.clone();
        t.talk = self.legs.iter().map(|l| (l.index, l.talk)).collect();
        t
    }

    /// Speaker changes since the last call.
    pub fn take_changes(&mut self) -> Vec<SpeakerChange> {
        std::mem::take(&mut self.changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(ms: u64) -> Vec<i16> {
        (0..ms * 8)
            .map(|i| ((i as f64 * 0.3).sin() * 8000.0) as i16)
            .collect()
    }

    fn quiet(ms: u64) -> Vec<i16> {
        vec![0; (ms * 8) as usize]
    }

    /// Two legs taking turns with a pause and some overtalk: talk time, dead air, overtalk
    /// and the speaker changes come out at the window level (hangover included).
    #[test]
    fn turns_overtalk_and_dead_air() {
        let mut c = CallActivity::new();
        c.add_stream(0, 8000);
        c.add_stream(1, 8000);
        // 0–1 s: A talks; 1–2 s: nobody; 2–3 s: B; 3–3.5 s: both; 3.5–4 s: nobody.
        let a = [tone(1000), quiet(1000), quiet(1000), tone(500), quiet(500)].concat();
        let b = [quiet(1000), quiet(1000), tone(1000), tone(500), quiet(500)].concat();
        // Fed in uneven chunks, B ahead of A for a while: windows still line up.
        c.feed(1, &b[..13_000]);
        for chunk in a.chunks(777) {
            c.feed(0, chunk);
        }
        c.feed(1, &b[13_000..]);
        let t = c.totals();
        assert_eq!(t.windows, 200);
        // A: 50 windows + 10 hangover, then 25 + 10; B: 75 + 10.
        assert_eq!(t.talk, vec![(0, 95), (1, 85)]);
        // Overtalk: 25 windows both loud, then both legs' hangovers (10).
        assert_eq!(t.overtalk, 35);
        // Dead air: 1.2–2 s (40) and 3.7–4 s (15).
        assert_eq!(t.dead_air, 40 + 15);
        let changes = c.take_changes();
        let who: Vec<Option<u32>> = changes.iter().map(|c| c.stream).collect();
        assert_eq!(who, [Some(0), None, Some(1), None]);
        assert_eq!(changes[0].window, 0);
        assert_eq!(changes[2].window, 100);
    }

    /// Quiet streams and low noise never count as talk.
    #[test]
    fn silence_and_low_noise_are_not_talk() {
        let mut v = VoiceActivity::new(8000);
        let noise: Vec<i16> = (0..8000).map(|i| ((i * 7919) % 200) as i16 - 100).collect();
        let mut active = 0;
        v.feed(&noise, |a| active += usize::from(a));
        v.feed(&quiet(1000), |a| active += usize::from(a));
        assert_eq!(active, 0);
    }
}
