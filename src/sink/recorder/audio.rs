//! The recording formats behind one writer: WAV (the default), FLAC or Opus in Ogg, chosen in
//! config (`RECORDING_FORMAT`). All three are crash-safe the same way: whole units on disk,
//! each second's checkpoint makes everything before it readable.

use std::path::{Path, PathBuf};

use super::encrypt::{Keyring, Sealer};
use super::flac::{self, FlacWriter};
use super::oggopus::{self, OggOpusWriter};
use super::wav::{read_wav, WavInfo, WavWriter};
use super::RecorderError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AudioFormat {
    /// RIFF/WAVE, 16-bit PCM: what every tool reads.
    #[default]
    Wav,
    /// Lossless: two thirds of WAV for continuous speech, far less for silence.
    Flac,
    /// Lossy Opus in Ogg at `opus_bitrate` per channel: a quarter of 8 kHz WAV at 32 kbit/s.
    #[serde(alias = "ogg")]
    Opus,
}

impl AudioFormat {
    pub fn parse(s: &str) -> Option<AudioFormat> {
        match s.to_ascii_lowercase().as_str() {
            "wav" => Some(AudioFormat::Wav),
            "flac" => Some(AudioFormat::Flac),
            "opus" | "ogg" => Some(AudioFormat::Opus),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            AudioFormat::Wav => "wav",
            AudioFormat::Flac => "flac",
            AudioFormat::Opus => "opus",
        }
    }

    /// The file extension, which is also the name.
    pub fn extension(self) -> &'static str {
        self.name()
    }

    /// The format a stream of `channels` at `rate` is written in: this one if it can hold it,
    /// else WAV (FLAC stops at 8 channels; Opus here at 2, and takes 8/12/16/24/48 kHz only).
    pub fn for_stream(self, channels: u16, rate: u32) -> AudioFormat {
        let fits = match self {
            AudioFormat::Wav => true,
            AudioFormat::Flac => channels <= flac::MAX_CHANNELS,
            AudioFormat::Opus => channels <= 2 && oggopus::RATES.contains(&rate),
        };
        if fits {
            self
        } else {
            AudioFormat::Wav
        }
    }
}

/// One recording file in one of the formats.
#[derive(Debug)]
pub enum AudioWriter {
    Wav(WavWriter),
    Flac(FlacWriter),
    Opus(OggOpusWriter),
}

impl AudioWriter {
    /// Creates `<dir>/<stem>.<ext>` (which must not exist) in `format`, or in WAV when the
    /// format cannot hold the stream (`AudioFormat::for_stream`); encrypted at rest under the
    /// keyring's active key when one is given (`<stem>.<ext>.enc`).
    pub fn create(
        dir: &Path,
        stem: &str,
        channels: u16,
        sample_rate: u32,
        format: AudioFormat,
        opus_bitrate: u32,
        keyring: Option<&Keyring>,
    ) -> Result<AudioWriter, RecorderError> {
        let format = format.for_stream(channels, sample_rate);
        let path = path_for(dir, stem, format, keyring.is_some());
        let sealer = match keyring {
            Some(k) => Some(
                Sealer::new(k)
                    .map_err(|e| RecorderError::io("encrypt", &path, std::io::Error::other(e)))?,
            ),
            None => None,
        };
        Ok(match format {
            AudioFormat::Wav => AudioWriter::Wav(WavWriter::create_sealed(
                &path,
                channels,
                sample_rate,
                sealer,
            )?),
            AudioFormat::Flac => {
                AudioWriter::Flac(FlacWriter::create(&path, channels, sample_rate, sealer)?)
            }
            AudioFormat::Opus => AudioWriter::Opus(OggOpusWriter::create(
                &path,
                channels,
                sample_rate,
                opus_bitrate,
                sealer,
            )?),
        })
    }

    pub fn path(&self) -> &Path {
        match self {
            AudioWriter::Wav(w) => w.path(),
            AudioWriter::Flac(w) => w.path(),
            AudioWriter::Opus(w) => w.path(),
        }
    }

    pub fn write_interleaved(&mut self, samples: &[i16]) -> Result<(), RecorderError> {
        match self {
            AudioWriter::Wav(w) => w.write_interleaved(samples),
            AudioWriter::Flac(w) => w.write_interleaved(samples),
            AudioWriter::Opus(w) => w.write_interleaved(samples),
        }
    }

    /// Makes everything written so far readable from the file (see each format), optionally
    /// durable.
    pub fn checkpoint(&mut self, sync: bool) -> Result<(), RecorderError> {
        match self {
            AudioWriter::Wav(w) => w.checkpoint(sync),
            AudioWriter::Flac(w) => w.checkpoint(sync),
            AudioWriter::Opus(w) => w.checkpoint(sync),
        }
    }

    /// Completes and closes the file; with `sync` the data and then the header (WAV sizes,
    /// FLAC STREAMINFO) are durable, in that order.
    pub fn finish(self, sync: bool) -> Result<WavInfo, RecorderError> {
        match self {
            AudioWriter::Wav(mut w) => {
                // Sync the data, patch the header, then sync again so the header is durable too.
                w.checkpoint(sync)?;
                if sync {
                    w.sync()?;
                }
                w.finish()
            }
            AudioWriter::Flac(w) => w.finish(sync),
            AudioWriter::Opus(w) => w.finish(sync),
        }
    }
}

/// `<dir>/<stem>.<ext>`, `.enc` after it when encrypted.
pub fn path_for(dir: &Path, stem: &str, format: AudioFormat, encrypted: bool) -> PathBuf {
    dir.join(file_name(stem, format, encrypted))
}

/// `<stem>.<ext>`, `.enc` after it when encrypted: the one naming rule of recording files
/// (the session layer predicts names with it too).
pub fn file_name(stem: &str, format: AudioFormat, encrypted: bool) -> String {
    let enc = if encrypted { ".enc" } else { "" };
    format!("{stem}.{}{enc}", format.extension())
}

/// Reads a recording in any of the formats, told apart by their first bytes: `(channels,
/// sample_rate, interleaved samples)`. Opus decodes at its original rate.
pub fn read_audio(path: &Path) -> Result<(u16, u32, Vec<i16>), RecorderError> {
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .map_err(|e| RecorderError::io("read", path, e));
    match (&magic, read) {
        (b"fLaC", Ok(())) => flac::read_flac(path),
        (b"OggS", Ok(())) => oggopus::read_ogg_opus(path),
        (b"SIPR", Ok(())) => Err(RecorderError::InvalidAudio {
            path: path.to_path_buf(),
            reason: "encrypted at rest: decrypt it first (siprecctl decrypt)",
        }),
        _ => read_wav(path),
    }
}
