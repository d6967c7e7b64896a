//! The byte layer under every recording format: a new file that only grows, written in
//! buffered appends at known offsets, with in-place patches of what is already on disk.
//!
//! One rule keeps every format crash-safe: bytes reach the file only in whole units the format
//! can end on (a WAV sample frame, a FLAC frame, an Ogg page), and a failed write truncates the
//! file back to the last complete one, so that a disk-full tail is never half a unit.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::encrypt::Sealer;
use super::RecorderError;

/// Write buffer per file: 16 KiB is 1 s of 8 kHz mono WAV. The checkpoint flushes every second
/// anyway, so a larger buffer never fills and only costs memory per file (3 files per call).
const BUFFER_BYTES: usize = 16 * 1024;

/// How long the recorder's file operations take (`siprec_recorder_io_seconds{op}`): `write`
/// (a buffer of up to 16 KiB to the page cache), `sync` (fdatasync) and `header` (the size
/// patch). Process-wide; registered into the API's Prometheus registry at start-up.
pub struct IoLatency {
    pub vec: prometheus::HistogramVec,
    write: prometheus::Histogram,
    sync: prometheus::Histogram,
    header: prometheus::Histogram,
}

pub static IO_LATENCY: std::sync::LazyLock<IoLatency> = std::sync::LazyLock::new(|| {
    // 10 µs … 1 s: page-cache writes sit at the low end, fdatasync on a loaded disk high.
    let buckets = vec![
        0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
    ];
    let opts = prometheus::HistogramOpts::new(
        "recorder_io_seconds",
        "Recorder file operations: write (buffer to page cache), sync (fdatasync), header",
    )
    .namespace("siprec")
    .buckets(buckets);
    let vec = prometheus::HistogramVec::new(opts, &["op"])
        .unwrap_or_else(|e| unreachable!("static histogram options are valid: {e}"));
    IoLatency {
        write: vec.with_label_values(&["write"]),
        sync: vec.with_label_values(&["sync"]),
        header: vec.with_label_values(&["header"]),
        vec,
    }
});

pub(super) struct AppendFile {
    file: File,
    path: PathBuf,
    /// Bytes not yet written; past `BUFFER_BYTES` only when one unit is larger.
    buffer: Vec<u8>,
    /// Bytes of the recording in the file, all complete units (plaintext when encrypted).
    on_disk: u64,
    /// Set after a failed write: the file refuses more data.
    failed: bool,
    /// Encryption at rest (`encrypt.rs`): every flush and patch becomes a sealed record.
    sealer: Option<Sealer>,
    /// Bytes in the file (records and header when encrypted; `on_disk` otherwise).
    file_len: u64,
    /// One sealed record on its way to the file. Empty unless encrypting.
    sealed: Vec<u8>,
}

impl AppendFile {
    /// Creates `path` (which must not exist: a recording is never clobbered) holding `head`,
    /// encrypted with `sealer` if given.
    pub(super) fn create(
        path: &Path,
        head: &[u8],
        mut sealer: Option<Sealer>,
    ) -> Result<AppendFile, RecorderError> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| RecorderError::io("create", path, e))?;
        let mut first = Vec::new();
        match &mut sealer {
            Some(s) => {
                first.extend_from_slice(s.header());
                s.data(0, head, &mut first);
            }
            None => first.extend_from_slice(head),
        }
        file.write_all_at(&first, 0)
            .map_err(|e| RecorderError::io("write", path, e))?;
        Ok(AppendFile {
            file,
            path: path.to_path_buf(),
            buffer: Vec::with_capacity(BUFFER_BYTES),
            on_disk: head.len() as u64,
            failed: false,
            sealer,
            file_len: first.len() as u64,
            sealed: Vec::new(),
        })
    }

    /// The id of the key the file is encrypted with, if it is.
    pub(super) fn key_id(&self) -> Option<&str> {
        self.sealer.as_ref().map(Sealer::key_id)
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn failed(&self) -> bool {
        self.failed
    }

    /// Bytes in the file.
    pub(super) fn on_disk(&self) -> u64 {
        self.on_disk
    }

    /// Bytes accepted: on disk and buffered.
    pub(super) fn len(&self) -> u64 {
        self.on_disk + self.buffer.len() as u64
    }

    /// The error every call returns after a failed write.
    pub(super) fn check(&self) -> Result<(), RecorderError> {
        if self.failed {
            return Err(RecorderError::WriterFailed {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    /// The buffer, to append one complete unit of up to `n` bytes to: flushed first if the
    /// unit would not fit in what is left of `BUFFER_BYTES`.
    pub(super) fn room_for(&mut self, n: usize) -> Result<&mut Vec<u8>, RecorderError> {
        self.check()?;
        if self.buffer.len() + n > BUFFER_BYTES {
            self.flush()?;
        }
        Ok(&mut self.buffer)
    }

    /// Writes the buffer to the file. On failure the file is cut back to its last complete
    /// write and refuses more data.
    pub(super) fn flush(&mut self) -> Result<(), RecorderError> {
        self.check()?;
        if self.buffer.is_empty() {
            return Ok(());
        }
        let offset = self.file_len;
        let len = self.buffer.len() as u64;
        let bytes = match &mut self.sealer {
            Some(s) => {
                self.sealed.clear();
                s.data(self.on_disk, &self.buffer, &mut self.sealed);
                &self.sealed
            }
            None => &self.buffer,
        };
        let written = timed(&IO_LATENCY.write, || self.file.write_all_at(bytes, offset));
        let written_len = bytes.len() as u64;
        self.buffer.clear();
        match written {
            Ok(()) => {
                self.on_disk += len;
                self.file_len += written_len;
                Ok(())
            }
            Err(source) => {
                self.failed = true;
                let _ = self.file.set_len(offset);
                Err(RecorderError::io("write", &self.path, source))
            }
        }
    }

    /// Marks an encrypted file complete (its end record); nothing for a plain file.
    pub(super) fn seal_end(&mut self) -> Result<(), RecorderError> {
        let Some(s) = &mut self.sealer else {
            return Ok(());
        };
        self.sealed.clear();
        s.end(self.on_disk, &mut self.sealed);
        self.append_sealed("seal")
    }

    fn append_sealed(&mut self, op: &'static str) -> Result<(), RecorderError> {
        let offset = self.file_len;
        match self.file.write_all_at(&self.sealed, offset) {
            Ok(()) => {
                self.file_len += self.sealed.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(offset);
                Err(RecorderError::io(op, &self.path, e))
            }
        }
    }

    /// Rewrites `bytes` at `offset`, inside what is on disk (a header field). Encrypted, the
    /// patch is a record of its own, applied when the file is decrypted.
    pub(super) fn patch(&mut self, offset: u64, bytes: &[u8]) -> Result<(), RecorderError> {
        debug_assert!(offset + bytes.len() as u64 <= self.on_disk);
        if let Some(s) = &mut self.sealer {
            self.sealed.clear();
            s.patch(offset, bytes, &mut self.sealed);
            return timed(&IO_LATENCY.header, || self.append_sealed("patch header"));
        }
        timed(&IO_LATENCY.header, || self.file.write_all_at(bytes, offset))
            .map_err(|e| RecorderError::io("patch header", &self.path, e))
    }

    /// Fdatasyncs what is on disk (not the buffer).
    pub(super) fn sync(&self) -> Result<(), RecorderError> {
        timed(&IO_LATENCY.sync, || self.file.sync_data())
            .map_err(|e| RecorderError::io("fdatasync", &self.path, e))
    }
}

fn timed<T>(h: &prometheus::Histogram, f: impl FnOnce() -> T) -> T {
    let start = std::time::Instant::now();
    let out = f();
    h.observe(start.elapsed().as_secs_f64());
    out
}
