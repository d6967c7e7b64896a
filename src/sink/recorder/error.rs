//! The recorder's error type. Every I/O failure names the operation and the path it hit.
//!
//! Refuses: opaque `io::Error`s without context, and stringly-typed errors.

use std::path::PathBuf;

/// An operating error of the recorder (disk full, permissions, a malformed WAV file read back).
///
/// The `Display` text is for operators and logs; match on the variant, not on the text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecorderError {
    /// A system call failed. `op` is the operation ("create", "write", "fsync", ...).
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file read back (`read_wav`, `read_flac`, `read_ogg_opus`) is not a valid 16-bit WAV,
    /// FLAC or Ogg Opus file.
    #[error("{}: not a readable recording: {reason}", path.display())]
    InvalidAudio { path: PathBuf, reason: &'static str },
    /// The WAV data chunk would exceed the 4 GiB the RIFF header can describe. The file is left
    /// valid for what it already holds.
    #[error("{}: WAV data would exceed the 4 GiB RIFF limit", path.display())]
    WavTooLarge { path: PathBuf },
    /// A previous write to this file failed; the writer refuses more data so that the file stays
    /// valid for what is on disk.
    #[error("{}: writer failed earlier and refuses further writes", path.display())]
    WriterFailed { path: PathBuf },
}

impl RecorderError {
    /// Wraps an `io::Error` with the operation and the path it concerns.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RecorderError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
