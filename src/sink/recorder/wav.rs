//! Crash-safe canonical WAV writer (RIFF/WAVE, PCM, 16-bit little-endian) and a strict reader.
//!
//! The file is valid at every instant: the 44-byte header is written first with a data size of
//! zero, samples are appended, and `patch_header` rewrites the two size fields (offsets 4 and 40)
//! only after the bytes they describe were handed to the kernel. A SIGKILL therefore leaves a
//! header that describes a prefix of what is on disk; for power loss, fsync before patching
//! (`checkpoint(true)`).
//!
//! Refuses: to overwrite an existing file (a recording is never clobbered), to describe bytes
//! that did not reach the kernel (a failed write truncates back to the last complete write), to
//! grow past the 4 GiB a RIFF header can express, and to read anything but 16-bit PCM.

use std::path::{Path, PathBuf};

use super::appendfile::AppendFile;
use super::encrypt::Sealer;
use super::RecorderError;

/// What a finished WAV file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WavInfo {
    pub path: PathBuf,
    pub channels: u16,
    pub sample_rate: u32,
    /// Sample frames in the data chunk (one sample per channel each).
    pub frames: u64,
    /// The key the file is encrypted with (`encrypt.rs`), if it is.
    pub key_id: Option<String>,
}

/// Appends interleaved 16-bit PCM to a new WAV file, keeping its header valid for what is on
/// disk. Buffered: call `patch_header` (or `checkpoint`) periodically, `finish` at the end.
/// Dropping it without `finish` still flushes and patches, best effort.
pub struct WavWriter {
    file: AppendFile,
    channels: u16,
    sample_rate: u32,
    /// Data bytes the header currently describes.
    data_bytes_in_header: u64,
    /// Set by `finish`, so that `Drop` does nothing more.
    finished: bool,
}

impl WavWriter {
    /// Creates `path` (which must not exist) and writes a header describing zero samples.
    pub fn create(
        path: &Path,
        channels: u16,
        sample_rate: u32,
    ) -> Result<WavWriter, RecorderError> {
        WavWriter::create_sealed(path, channels, sample_rate, None)
    }

    /// `create`, encrypted at rest when `sealer` is given.
    pub fn create_sealed(
        path: &Path,
        channels: u16,
        sample_rate: u32,
        sealer: Option<Sealer>,
    ) -> Result<WavWriter, RecorderError> {
        assert!(channels > 0, "a WAV file needs at least one channel");
        let file = AppendFile::create(path, &header_bytes(channels, sample_rate, 0), sealer)?;
        Ok(WavWriter {
            file,
            channels,
            sample_rate,
            data_bytes_in_header: 0,
            finished: false,
        })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    pub fn channels(&self) -> u16 {
        self.channels
    }

    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Sample frames accepted so far (on disk or buffered).
    pub fn frames(&self) -> u64 {
        (self.file.len() - HEADER_BYTES) / self.block_align()
    }

    /// Appends interleaved samples (`channels` per frame; a partial trailing frame is a bug of
    /// the caller). Buffered; writes to the file when the buffer fills.
    pub fn write_interleaved(&mut self, samples: &[i16]) -> Result<(), RecorderError> {
        self.file.check()?;
        debug_assert_eq!(
            samples.len() % self.channels as usize,
            0,
            "partial sample frame"
        );
        let total = self.file.len() - HEADER_BYTES + 2 * samples.len() as u64;
        if total > DATA_BYTES_MAX {
            return Err(RecorderError::WavTooLarge {
                path: self.path().to_path_buf(),
            });
        }
        // Whole sample frames per chunk, so that the file only ever ends on a frame.
        let per_chunk = CHUNK_SAMPLES - CHUNK_SAMPLES % usize::from(self.channels);
        for chunk in samples.chunks(per_chunk) {
            let buffer = match self.file.room_for(2 * chunk.len()) {
                Ok(b) => b,
                Err(e) => {
                    // Keep the header consistent with what a failed write left on disk.
                    let _ = self.write_sizes();
                    return Err(e);
                }
            };
            // Resize then fill in place: the loop vectorizes (a push per byte does not).
            let start = buffer.len();
            buffer.resize(start + 2 * chunk.len(), 0);
            for (dst, s) in buffer[start..].chunks_exact_mut(2).zip(chunk) {
                dst.copy_from_slice(&s.to_le_bytes());
            }
        }
        Ok(())
    }

    /// Flushes the buffer and rewrites the RIFF and data sizes so that the header describes
    /// exactly the data on disk.
    pub fn patch_header(&mut self) -> Result<(), RecorderError> {
        self.checkpoint(false)
    }

    /// Flushes the buffer, optionally fdatasyncs the data, then patches the header. With `sync`
    /// the header never describes data that a power loss could take away (it reaches the disk
    /// with the next sync).
    pub fn checkpoint(&mut self, sync: bool) -> Result<(), RecorderError> {
        if !self.file.failed() {
            if let Err(e) = self.file.flush() {
                let _ = self.write_sizes();
                return Err(e);
            }
        }
        if sync {
            self.sync()?;
        }
        self.write_sizes()
    }

    /// Fdatasyncs what was written to the file so far (not the buffer; patch first).
    pub fn sync(&mut self) -> Result<(), RecorderError> {
        self.file.sync()
    }

    /// Flushes, patches the header and closes the file. Does not fsync: call `sync` after
    /// `patch_header` first when the policy asks for it.
    pub fn finish(mut self) -> Result<WavInfo, RecorderError> {
        self.finished = true;
        self.checkpoint(false)?;
        self.file.seal_end()?;
        Ok(WavInfo {
            path: self.path().to_path_buf(),
            channels: self.channels,
            sample_rate: self.sample_rate,
            frames: self.data_bytes_in_header / self.block_align(),
            key_id: self.file.key_id().map(str::to_owned),
        })
    }

    fn block_align(&self) -> u64 {
        2 * u64::from(self.channels)
    }

    fn write_sizes(&mut self) -> Result<(), RecorderError> {
        let data = self.file.on_disk() - HEADER_BYTES;
        if data == self.data_bytes_in_header {
            return Ok(());
        }
        // `write_interleaved` keeps `data` within DATA_BYTES_MAX, so both sizes fit in u32.
        let riff = u32::try_from(data + 36).expect("bounded by DATA_BYTES_MAX");
        let data32 = u32::try_from(data).expect("bounded by DATA_BYTES_MAX");
        // Data size first: if the RIFF size write fails, readers that trust the data chunk
        // still see a size that is on disk.
        self.file.patch(40, &data32.to_le_bytes())?;
        self.file.patch(4, &riff.to_le_bytes())?;
        self.data_bytes_in_header = data;
        Ok(())
    }
}

impl Drop for WavWriter {
    fn drop(&mut self) {
        if !self.finished {
            // Best effort on an early exit: keep the header valid for what is on disk.
            let _ = self.checkpoint(false);
        }
    }
}

impl std::fmt::Debug for WavWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WavWriter")
            .field("path", &self.path())
            .field("channels", &self.channels)
            .field("sample_rate", &self.sample_rate)
            .field("frames", &self.frames())
            .field("failed", &self.file.failed())
            .finish()
    }
}

/// Reads a 16-bit PCM WAV file: `(channels, sample_rate, interleaved samples)`. Strict: a data
/// chunk that claims more bytes than the file holds is an error, not a silent truncation.
pub fn read_wav(path: &Path) -> Result<(u16, u32, Vec<i16>), RecorderError> {
    let bytes = std::fs::read(path).map_err(|e| RecorderError::io("read", path, e))?;
    let invalid = |reason| RecorderError::InvalidAudio {
        path: path.to_path_buf(),
        reason,
    };
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(invalid("missing RIFF/WAVE signature"));
    }
    let mut format: Option<(u16, u32)> = None;
    let mut at = 12usize;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let size = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
        let body = at + 8;
        let end = body
            .checked_add(size)
            .ok_or_else(|| invalid("chunk size overflows"))?;
        if end > bytes.len() {
            return Err(invalid("chunk extends past end of file"));
        }
        match id {
            b"fmt " => {
                if size < 16 {
                    return Err(invalid("fmt chunk too short"));
                }
                let u16_at = |o: usize| u16::from_le_bytes([bytes[body + o], bytes[body + o + 1]]);
                let tag = u16_at(0);
                let channels = u16_at(2);
                let rate = u32::from_le_bytes(bytes[body + 4..body + 8].try_into().expect("4"));
                let bits = u16_at(14);
                if tag != 1 || bits != 16 {
                    return Err(invalid("not 16-bit PCM"));
                }
                if channels == 0 {
                    return Err(invalid("zero channels"));
                }
                format = Some((channels, rate));
            }
            b"data" => {
                let (channels, rate) = format.ok_or_else(|| invalid("data before fmt"))?;
                if !size.is_multiple_of(2 * channels as usize) {
                    return Err(invalid("data size is not a whole number of frames"));
                }
                let samples = bytes[body..end]
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
                    .collect();
                return Ok((channels, rate, samples));
            }
            _ => {}
        }
        // RIFF chunks are padded to an even size.
        at = end + (size & 1);
    }
    Err(invalid("no data chunk"))
}

/// The canonical 44-byte header for `data_bytes` of 16-bit PCM.
fn header_bytes(channels: u16, sample_rate: u32, data_bytes: u32) -> [u8; HEADER_BYTES as usize] {
    let block_align = channels * 2;
    let byte_rate = sample_rate * u32::from(block_align);
    let mut h = [0u8; HEADER_BYTES as usize];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&(36 + data_bytes).to_le_bytes());
    h[8..12].copy_from_slice(b"WAVE");
    h[12..16].copy_from_slice(b"fmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes()); // WAVE_FORMAT_PCM
    h[22..24].copy_from_slice(&channels.to_le_bytes());
    h[24..28].copy_from_slice(&sample_rate.to_le_bytes());
    h[28..32].copy_from_slice(&byte_rate.to_le_bytes());
    h[32..34].copy_from_slice(&block_align.to_le_bytes());
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_bytes.to_le_bytes());
    h
}

/// Size of the canonical header; the data chunk starts here.
const HEADER_BYTES: u64 = 44;

/// Largest data chunk we write: the RIFF size (data + 36) must fit in a u32.
const DATA_BYTES_MAX: u64 = u32::MAX as u64 - 36;

/// Samples converted per append: 8 KiB of bytes.
const CHUNK_SAMPLES: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples written (across buffer flushes) read back identically, with a 44-byte header.
    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wav");
        let samples: Vec<i16> = (0..100_000).map(|i| (i * 7) as i16).collect();
        let mut w = WavWriter::create(&path, 2, 8000).unwrap();
        w.write_interleaved(&samples[..10]).unwrap();
        w.write_interleaved(&samples[10..]).unwrap();
        let info = w.finish().unwrap();
        assert_eq!(info.frames, 50_000);
        assert_eq!((info.channels, info.sample_rate), (2, 8000));
        let (ch, rate, back) = read_wav(&path).unwrap();
        assert_eq!((ch, rate), (2, 8000));
        assert_eq!(back, samples);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 44 + 200_000);
    }

    /// Without any patch the file is a valid empty WAV; after a patch it describes exactly the
    /// flushed data, as a SIGKILL at that moment would leave it.
    #[test]
    fn header_valid_without_finish() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wav");
        let mut w = WavWriter::create(&path, 1, 16000).unwrap();
        assert_eq!(read_wav(&path).unwrap(), (1, 16000, vec![]));
        w.write_interleaved(&[1, 2, 3]).unwrap();
        assert_eq!(read_wav(&path).unwrap().2, Vec::<i16>::new());
        w.patch_header().unwrap();
        assert_eq!(read_wav(&path).unwrap().2, vec![1, 2, 3]);
        w.write_interleaved(&[4]).unwrap();
        w.checkpoint(true).unwrap();
        assert_eq!(read_wav(&path).unwrap().2, vec![1, 2, 3, 4]);
        std::mem::forget(w); // Simulates a SIGKILL: no Drop, no finish.
        assert_eq!(read_wav(&path).unwrap().2, vec![1, 2, 3, 4]);
    }

    /// An existing file is never overwritten.
    #[test]
    fn refuses_to_clobber() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wav");
        std::fs::write(&path, b"precious").unwrap();
        let err = WavWriter::create(&path, 1, 8000).unwrap_err();
        assert!(
            matches!(err, RecorderError::Io { op: "create", .. }),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }

    /// The reader rejects truncated or foreign files instead of returning garbage.
    #[test]
    fn reader_is_strict() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wav");
        let mut bytes = header_bytes(1, 8000, 10).to_vec();
        bytes.extend_from_slice(&[0; 4]);
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            read_wav(&path),
            Err(RecorderError::InvalidAudio { .. })
        ));
        std::fs::write(&path, b"not a wav file at all").unwrap();
        assert!(matches!(
            read_wav(&path),
            Err(RecorderError::InvalidAudio { .. })
        ));
    }
}
