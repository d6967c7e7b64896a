//! Speech engines behind one trait, and the resampling every engine's input goes through.
//!
//! `embedded` is whisper.cpp (through whisper-rs) with a ggml model on local disk: one model
//! loaded once and shared, one decoding state per STT worker thread (reused across jobs).

use std::path::Path;
use std::sync::Arc;

use rubato::{FftFixedIn, Resampler};

/// The rate every engine is fed at.
pub const ENGINE_RATE: u32 = 16_000;

/// What an engine heard in one piece of audio.
#[derive(Debug, Clone, PartialEq)]
pub struct Recognized {
    pub text: String,
    /// Mean token probability, 0..1.
    pub confidence: f32,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("speech model {path} not found: run ./.ci/model.sh to install it")]
    ModelMissing { path: String },
    #[error("cannot load speech model {path}: {message}")]
    ModelLoad { path: String, message: String },
    #[error("speech engine failed: {0}")]
    Failed(String),
}

/// An engine sample as 16-bit PCM (what the cloud providers are sent).
pub fn to_pcm16(s: f32) -> i16 {
    (s * 32768.0).round().clamp(-32768.0, 32767.0) as i16
}

/// Runs `attempt` until it succeeds: three times for finals with 0.5 s then 1 s between,
/// once for partials (a newer one follows). `attempt` says whether its failure is worth
/// another try (a refused key is not). The last failure names `provider`.
pub fn with_retries(
    provider: &str,
    partial: bool,
    mut attempt: impl FnMut() -> Result<Recognized, (String, bool)>,
) -> Result<Recognized, EngineError> {
    let attempts = if partial { 1 } else { 3 };
    let mut last = String::new();
    for n in 0..attempts {
        if n > 0 {
            std::thread::sleep(std::time::Duration::from_millis(250 << n));
        }
        match attempt() {
            Ok(r) => return Ok(r),
            Err((message, retry)) => {
                last = message;
                if !retry {
                    break;
                }
            }
        }
    }
    Err(EngineError::Failed(format!("{provider} provider: {last}")))
}

/// One speech engine instance, owned by one worker thread.
pub trait Engine: Send {
    /// Transcribes `audio` (mono f32 at `ENGINE_RATE`, one utterance). `partial` asks for the
    /// cheapest decode (no temperature fallback): it will be superseded anyway. `language`
    /// overrides the configured one (STT jobs).
    fn transcribe(
        &mut self,
        audio: &[f32],
        partial: bool,
        language: Option<&str>,
    ) -> Result<Recognized, EngineError>;
}

/// A loaded whisper.cpp model, shared by the worker threads.
pub struct WhisperModel {
    context: whisper_rs::WhisperContext,
    language: String,
    threads: usize,
}

impl WhisperModel {
    /// Loads a ggml model file. `threads` is per decode (whisper.cpp's n_threads).
    pub fn load(
        path: &Path,
        language: &str,
        threads: usize,
    ) -> Result<Arc<WhisperModel>, EngineError> {
        if !path.is_file() {
            return Err(EngineError::ModelMissing {
                path: path.display().to_string(),
            });
        }
        static HOOKS: std::sync::Once = std::sync::Once::new();
        // whisper.cpp logs through tracing (target whisper_rs) instead of raw stderr.
        HOOKS.call_once(whisper_rs::install_logging_hooks);
        let params = whisper_rs::WhisperContextParameters::default();
        let context = whisper_rs::WhisperContext::new_with_params(path, params).map_err(|e| {
            EngineError::ModelLoad {
                path: path.display().to_string(),
                message: e.to_string(),
            }
        })?;
        Ok(Arc::new(WhisperModel {
            context,
            language: language.to_owned(),
            threads: threads.max(1),
        }))
    }

    /// A decoding state for one worker thread.
    pub fn engine(self: &Arc<Self>) -> Result<WhisperEngine, EngineError> {
        let state = self
            .context
            .create_state()
            .map_err(|e| EngineError::Failed(e.to_string()))?;
        Ok(WhisperEngine {
            model: self.clone(),
            state,
        })
    }
}

pub struct WhisperEngine {
    model: Arc<WhisperModel>,
    state: whisper_rs::WhisperState,
}

/// whisper.cpp's encoder frames per second of audio (1500 per 30 s window).
const AUDIO_CTX_PER_S: usize = 50;

impl Engine for WhisperEngine {
    fn transcribe(
        &mut self,
        audio: &[f32],
        partial: bool,
        language: Option<&str>,
    ) -> Result<Recognized, EngineError> {
        use whisper_rs::{FullParams, SamplingStrategy};
        let mut params = FullParams::new(SamplingStrategy::Greedy { best_of: 1 });
        params.set_n_threads(self.model.threads as i32);
        params.set_language(Some(language.unwrap_or(&self.model.language)));
        params.set_translate(false);
        params.set_no_context(true);
        params.set_single_segment(true);
        params.set_no_timestamps(true);
        params.set_suppress_blank(true);
        params.set_print_special(false);
        params.set_print_progress(false);
        params.set_print_realtime(false);
        params.set_print_timestamps(false);
        // The encoder's cost grows with its window, and Whisper pads every input to 30 s: an
        // utterance of a few seconds encodes only the frames it covers (plus a margin).
        let seconds = audio.len().div_ceil(ENGINE_RATE as usize);
        let ctx = ((seconds + 1) * AUDIO_CTX_PER_S).clamp(256, 1500);
        params.set_audio_ctx(ctx as i32);
        // Greedy decoding at temperature 0 sometimes loops on a phrase until the text context
        // is full; speech holds well under 8 tokens a second, so a loop is cut early (and, for
        // finals, the temperature fallback then decodes again).
        params.set_max_tokens((16 + 8 * seconds) as i32);
        if partial {
            params.set_temperature_inc(0.0);
        }
        self.state
            .full(params, audio)
            .map_err(|e| EngineError::Failed(e.to_string()))?;
        let mut text = String::new();
        let (mut sum, mut n) = (0.0f32, 0u32);
        for segment in self.state.as_iter() {
            if let Ok(s) = segment.to_str_lossy() {
                text.push_str(&s);
            }
            for t in 0..segment.n_tokens() {
                let Some(token) = segment.get_token(t) else {
                    continue;
                };
                // Special tokens ([_BEG_], <|en|>…) are not words.
                let special = token
                    .to_str_lossy()
                    .is_ok_and(|s| s.starts_with("[_") || s.starts_with("<|"));
                if !special {
                    sum += token.token_probability();
                    n += 1;
                }
            }
        }
        Ok(Recognized {
            text: text.trim().to_owned(),
            confidence: if n > 0 { sum / n as f32 } else { 0.0 },
        })
    }
}

/// Converts one utterance of 16-bit PCM at `rate` to f32 at `ENGINE_RATE` with a band-limited
/// (FFT) resampler: never by repeating or linearly interpolating samples, which costs a
/// speech engine accuracy on narrowband audio.
pub fn to_engine_rate(pcm: &[i16], rate: u32) -> Result<Vec<f32>, EngineError> {
    let input: Vec<f32> = pcm.iter().map(|&s| f32::from(s) / 32768.0).collect();
    if rate == ENGINE_RATE || input.is_empty() {
        return Ok(input);
    }
    let err = |e: &dyn std::fmt::Display| EngineError::Failed(format!("resampler: {e}"));
    let mut resampler = FftFixedIn::<f32>::new(rate as usize, ENGINE_RATE as usize, 1024, 1, 1)
        .map_err(|e| err(&e))?;
    let want = (input.len() as u64 * ENGINE_RATE as u64 / rate as u64) as usize;
    let delay = resampler.output_delay();
    let mut out = Vec::with_capacity(want + delay + 2048);
    let mut buffer = resampler.output_buffer_allocate(true);
    let mut pos = 0;
    // Feed the input, then zeros until the delayed tail is out.
    while out.len() < want + delay {
        let need = resampler.input_frames_next();
        let end = (pos + need).min(input.len());
        let (_, written) = if pos < input.len() {
            resampler.process_partial_into_buffer(Some(&[&input[pos..end]]), &mut buffer, None)
        } else {
            resampler.process_partial_into_buffer(None::<&[&[f32]]>, &mut buffer, None)
        }
        .map_err(|e| err(&e))?;
        pos = end;
        out.extend_from_slice(&buffer[0][..written]);
    }
    out.drain(..delay);
    out.truncate(want);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 8 kHz → 16 kHz keeps length (×2), timing (no delay) and a 1 kHz tone's level, and puts
    /// no energy at the 7 kHz image a sample-repeating upsampler would leave.
    #[test]
    fn upsample_is_aligned_and_band_limited() {
        let n = 8000;
        let pcm: Vec<i16> = (0..n)
            .map(|i| {
                ((i as f64 * 2.0 * std::f64::consts::PI * 1000.0 / 8000.0).sin() * 10000.0) as i16
            })
            .collect();
        let out = to_engine_rate(&pcm, 8000).unwrap();
        assert_eq!(out.len(), 2 * n);
        // Correlate with the ideal 16 kHz tone away from the edges.
        let ideal = |i: usize| {
            (i as f64 * 2.0 * std::f64::consts::PI * 1000.0 / 16000.0).sin() * 10000.0 / 32768.0
        };
        let mid = 4000..12000;
        let err: f64 = mid
            .clone()
            .map(|i| (out[i] as f64 - ideal(i)).powi(2))
            .sum::<f64>()
            / mid.len() as f64;
        let power: f64 = mid.clone().map(|i| ideal(i).powi(2)).sum::<f64>() / mid.len() as f64;
        assert!(err < power * 1e-3, "error {err} vs power {power}");
    }

    #[test]
    fn engine_rate_passes_through() {
        let pcm = [0i16, 16384, -16384];
        assert_eq!(to_engine_rate(&pcm, 16000).unwrap(), vec![0.0, 0.5, -0.5]);
    }

    #[test]
    fn missing_model_says_how_to_install() {
        let e = WhisperModel::load(Path::new("/nonexistent/ggml-base.bin"), "en", 1)
            .err()
            .unwrap();
        assert!(e.to_string().contains(".ci/model.sh"), "{e}");
    }
}
