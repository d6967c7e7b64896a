//! Cuts one stream's committed audio into utterances for the speech engine: samples in, cuts
//! out. No I/O, no clock: positions are sample counts on the call's timeline.
//!
//! Whisper-class engines transcribe whole windows, not 20 ms frames, so a stream is cut where
//! its talker pauses: voice activity in 20 ms windows (`media::activity::VoiceActivity`, the
//! same detector as the talk-time analytics), an utterance opens on the first active window
//! (with a little audio before it, so a soft first consonant is not clipped) and closes after
//! `end_silence_ms` without speech or at `max_utterance_ms`. While it is open, a partial cut
//! of everything so far is offered every `partial_interval_ms` of new audio.

use crate::media::activity::{VoiceActivity, HANGOVER_WINDOWS, WINDOW_MS};

/// Audio kept before the first active window of an utterance.
const PREROLL_MS: u32 = 200;
/// Silence kept after the last active window when an utterance closes.
const TAIL_MS: u32 = 100;

fn ms_to_windows(ms: u32) -> u32 {
    (ms as u64).div_ceil(WINDOW_MS) as u32
}

#[derive(Debug, Clone, Copy)]
pub struct SegmenterConfig {
    pub sample_rate: u32,
    /// Offer a partial cut after this much new audio; 0 = finals only.
    pub partial_interval_ms: u32,
    /// Silence that ends an utterance (the detector's 200 ms hangover included).
    pub end_silence_ms: u32,
    /// Longest utterance: cut (final) and go on in a new one. Whisper's window is 30 s.
    pub max_utterance_ms: u32,
    /// Utterances with less speech than this are dropped as clicks or noise bursts.
    pub min_speech_ms: u32,
}

impl Default for SegmenterConfig {
    fn default() -> Self {
        SegmenterConfig {
            sample_rate: 8000,
            partial_interval_ms: 1000,
            end_silence_ms: 600,
            max_utterance_ms: 20_000,
            min_speech_ms: 200,
        }
    }
}

/// A piece of one utterance for the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct Cut {
    /// Number of the utterance in its stream, from 0.
    pub utterance: u32,
    pub is_final: bool,
    /// Position of `pcm[0]` on the call's timeline, in samples.
    pub start: u64,
    pub pcm: Vec<i16>,
}

/// What the segmenter threw away, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmenterStats {
    pub utterances: u64,
    /// Utterances with less than `min_speech_ms` of speech.
    pub too_short: u64,
    /// Utterances cut at `max_utterance_ms`.
    pub forced_cuts: u64,
}

struct Open {
    start: u64,
    pcm: Vec<i16>,
    active_windows: u32,
    silent_run: u32,
    /// `pcm.len()` at the last partial.
    offered: usize,
}

pub struct Segmenter {
    config: SegmenterConfig,
    vad: VoiceActivity,
    window: usize,
    /// Samples of the window being filled.
    pending: Vec<i16>,
    /// Position of `pending[0]`.
    pos: u64,
    /// The last `PREROLL_MS` of audio while no utterance is open.
    preroll: Vec<i16>,
    open: Option<Open>,
    next_utterance: u32,
    stats: SegmenterStats,
}

impl Segmenter {
    pub fn new(config: SegmenterConfig) -> Segmenter {
        let window = (config.sample_rate as u64 * WINDOW_MS / 1000).max(1) as usize;
        Segmenter {
            config,
            vad: VoiceActivity::new(config.sample_rate),
            window,
            pending: Vec::with_capacity(window),
            pos: 0,
            preroll: Vec::new(),
            open: None,
            next_utterance: 0,
            stats: SegmenterStats::default(),
        }
    }

    pub fn sample_rate(&self) -> u32 {
        self.config.sample_rate
    }

    pub fn stats(&self) -> SegmenterStats {
        self.stats
    }

    /// True while an utterance is open.
    pub fn speaking(&self) -> bool {
        self.open.is_some()
    }

    /// Feeds the next committed samples (contiguous with the previous ones); cuts go to `out`.
    pub fn feed(&mut self, mut samples: &[i16], out: &mut Vec<Cut>) {
        while !samples.is_empty() {
            let take = (self.window - self.pending.len()).min(samples.len());
            self.pending.extend_from_slice(&samples[..take]);
            samples = &samples[take..];
            if self.pending.len() == self.window {
                let mut active = false;
                self.vad.feed(&self.pending, |a| active = a);
                let window = std::mem::take(&mut self.pending);
                self.handle_window(&window, active, out);
                self.pos += window.len() as u64;
                self.pending = window;
                self.pending.clear();
            }
        }
    }

    /// Closes the open utterance (end of the call or of the stream); a final cut if it holds
    /// enough speech.
    pub fn flush(&mut self, out: &mut Vec<Cut>) {
        if let Some(mut open) = self.open.take() {
            open.pcm.extend_from_slice(&self.pending);
            self.close(open, out);
        }
        self.pos += self.pending.len() as u64;
        self.pending.clear();
        self.preroll.clear();
    }

    fn handle_window(&mut self, window: &[i16], active: bool, out: &mut Vec<Cut>) {
        let Some(open) = self.open.as_mut() else {
            if active {
                let mut pcm = std::mem::take(&mut self.preroll);
                let start = self.pos - pcm.len() as u64;
                pcm.extend_from_slice(window);
                self.open = Some(Open {
                    start,
                    pcm,
                    active_windows: 1,
                    silent_run: 0,
                    offered: 0,
                });
            } else {
                let keep = (self.config.sample_rate * PREROLL_MS / 1000) as usize;
                self.preroll.extend_from_slice(window);
                if self.preroll.len() > keep {
                    let excess = self.preroll.len() - keep;
                    self.preroll.drain(..excess);
                }
            }
            return;
        };
        open.pcm.extend_from_slice(window);
        if active {
            open.active_windows += 1;
            open.silent_run = 0;
        } else {
            open.silent_run += 1;
        }
        let end_windows = ms_to_windows(self.config.end_silence_ms).max(1);
        let max_samples =
            (self.config.sample_rate as u64 * self.config.max_utterance_ms as u64 / 1000) as usize;
        let partial_samples = (self.config.sample_rate as u64
            * self.config.partial_interval_ms as u64
            / 1000) as usize;
        if open.silent_run >= end_windows {
            let mut open = self.open.take().expect("checked above");
            // Keep a short tail of the silence; the rest is not the utterance's.
            let tail_windows = ms_to_windows(TAIL_MS);
            let drop_windows = open.silent_run.saturating_sub(tail_windows) as usize;
            let keep = open.pcm.len().saturating_sub(drop_windows * self.window);
            open.pcm.truncate(keep);
            self.close(open, out);
        } else if open.pcm.len() >= max_samples {
            let open = self.open.take().expect("checked above");
            self.stats.forced_cuts += 1;
            self.close(open, out);
            // The talker goes on: the next utterance starts right after this one, no preroll.
            self.open = Some(Open {
                start: self.pos + window.len() as u64,
                pcm: Vec::new(),
                active_windows: 0,
                silent_run: 0,
                offered: 0,
            });
        } else if partial_samples > 0 && open.pcm.len() - open.offered >= partial_samples {
            open.offered = open.pcm.len();
            out.push(Cut {
                utterance: self.next_utterance,
                is_final: false,
                start: open.start,
                pcm: open.pcm.clone(),
            });
        }
    }

    fn close(&mut self, open: Open, out: &mut Vec<Cut>) {
        // Active windows include the detector's hangover after the last loud one.
        let min_windows = ms_to_windows(self.config.min_speech_ms).max(1);
        if open.active_windows.saturating_sub(HANGOVER_WINDOWS) < min_windows {
            self.stats.too_short += 1;
            return;
        }
        self.stats.utterances += 1;
        out.push(Cut {
            utterance: self.next_utterance,
            is_final: true,
            start: open.start,
            pcm: open.pcm,
        });
        self.next_utterance += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 8000;
    /// Samples per 20 ms window at 8 kHz.
    const W: usize = 160;

    fn tone(windows: usize) -> Vec<i16> {
        (0..windows * W)
            .map(|i| ((i as f64 * 0.3).sin() * 8000.0) as i16)
            .collect()
    }

    fn silence(windows: usize) -> Vec<i16> {
        vec![0; windows * W]
    }

    fn run(config: SegmenterConfig, parts: &[Vec<i16>]) -> (Vec<Cut>, SegmenterStats) {
        let mut s = Segmenter::new(config);
        let mut out = Vec::new();
        for p in parts {
            // Odd chunk sizes: the windowing must not depend on how frames arrive.
            for chunk in p.chunks(97) {
                s.feed(chunk, &mut out);
            }
        }
        s.flush(&mut out);
        (out, s.stats())
    }

    fn finals_only() -> SegmenterConfig {
        SegmenterConfig {
            sample_rate: RATE,
            partial_interval_ms: 0,
            ..SegmenterConfig::default()
        }
    }

    /// Speech between silences: one final cut starting 200 ms before the speech, ending
    /// 100 ms after its hangover, positioned on the timeline.
    #[test]
    fn one_utterance_with_preroll_and_tail() {
        let (cuts, stats) = run(finals_only(), &[silence(50), tone(50), silence(100)]);
        assert_eq!(cuts.len(), 1);
        let c = &cuts[0];
        assert!(c.is_final);
        assert_eq!(c.utterance, 0);
        assert_eq!(c.start, (50 - 10) as u64 * W as u64);
        // preroll 10 + speech 50 + hangover 10 + tail 5 windows.
        assert_eq!(c.pcm.len(), (10 + 50 + 10 + 5) * W);
        assert_eq!(&c.pcm[10 * W..60 * W], &tone(50)[..]);
        assert_eq!(stats.utterances, 1);
    }

    /// A pause shorter than end_silence keeps one utterance; a longer one makes two.
    #[test]
    fn pauses_split_only_when_long() {
        let short = run(
            finals_only(),
            &[tone(30), silence(15), tone(30), silence(60)],
        )
        .0;
        assert_eq!(short.len(), 1);
        let long = run(
            finals_only(),
            &[tone(30), silence(60), tone(30), silence(60)],
        )
        .0;
        assert_eq!(long.len(), 2);
        assert_eq!((long[0].utterance, long[1].utterance), (0, 1));
        assert_eq!(long[1].start, (30 + 60 - 10) as u64 * W as u64);
    }

    /// Partials every second of new audio while the utterance is open, each holding
    /// everything so far, then the final.
    #[test]
    fn partials_every_interval() {
        let config = SegmenterConfig {
            sample_rate: RATE,
            partial_interval_ms: 1000,
            ..SegmenterConfig::default()
        };
        let (cuts, _) = run(config, &[tone(160), silence(60)]);
        let partials: Vec<&Cut> = cuts.iter().filter(|c| !c.is_final).collect();
        assert_eq!(partials.len(), 3, "3.2 s of speech: partials at 1, 2, 3 s");
        assert!(partials.windows(2).all(|p| p[1].pcm.len() > p[0].pcm.len()));
        assert!(partials.iter().all(|p| p.utterance == 0 && p.start == 0));
        assert!(cuts.last().unwrap().is_final);
    }

    /// A click shorter than min_speech is dropped and counted; no cut.
    #[test]
    fn clicks_are_dropped() {
        let (cuts, stats) = run(finals_only(), &[silence(20), tone(3), silence(60)]);
        assert!(cuts.is_empty());
        assert_eq!(stats.too_short, 1);
    }

    /// A monologue longer than max_utterance is cut into contiguous finals.
    #[test]
    fn long_speech_is_cut_at_the_limit() {
        let config = SegmenterConfig {
            max_utterance_ms: 2000,
            ..finals_only()
        };
        let (cuts, stats) = run(config, &[tone(250), silence(60)]);
        assert_eq!(stats.forced_cuts, 2);
        assert_eq!(cuts.len(), 3);
        assert_eq!(cuts[0].pcm.len(), 100 * W);
        assert_eq!(cuts[1].start, 100 * W as u64);
        assert_eq!(cuts[2].start, 200 * W as u64);
    }

    /// Flush closes an utterance still open when the call ends.
    #[test]
    fn flush_closes_the_open_utterance() {
        let mut s = Segmenter::new(finals_only());
        let mut out = Vec::new();
        s.feed(&tone(40), &mut out);
        assert!(out.is_empty() && s.speaking());
        s.flush(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].pcm.len(), 40 * W);
    }
}
