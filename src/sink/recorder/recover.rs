//! Recordings a crash left behind, found and finished at the next start.
//!
//! A recording session's directory gets session.json only when its call ends. At start-up
//! (before any call is taken) every `RECORDING_DIR/<day>/<session>/` without one is an
//! interrupted recording: its WAV headers are repaired to describe every whole sample frame on
//! disk (the last header patch may be up to a second old; a torn frame at the end is cut
//! off), FLAC and Ogg Opus files are read as they are (both decode up to their last whole
//! frame or page), and session.json is written from the `session.partial.json` copy made when
//! the call started, marked `"interrupted": true` with `"end_reason": "interrupted"` and the
//! files as found.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{fsutil, read_audio, RecordedFile, RecorderError};
use crate::proto::pii::{self, Pii};
use crate::session::PARTIAL_SESSION_FILE as PARTIAL;

/// `siprec_recordings_recovered_total`: interrupted recordings finished at start-up.
pub static RECOVERED: std::sync::LazyLock<prometheus::IntCounter> =
    std::sync::LazyLock::new(|| {
        let opts = prometheus::Opts::new(
            "recordings_recovered_total",
            "Recordings a crash left unfinished, repaired and given session.json at start-up",
        )
        .namespace("siprec");
        prometheus::IntCounter::with_opts(opts)
            .unwrap_or_else(|e| unreachable!("static counter options are valid: {e}"))
    });

/// One interrupted recording, finished.
#[derive(Debug)]
pub struct Recovered {
    pub dir: PathBuf,
    pub files: Vec<RecordedFile>,
    /// WAV files whose header was rewritten.
    pub repaired: usize,
}

/// Finds and finishes every interrupted recording under `root`. Errors on one session are
/// logged and leave it as it was; the others go on.
pub fn recover(root: &Path, now_rfc3339: &str) -> Vec<Recovered> {
    let mut out = Vec::new();
    let Ok(days) = std::fs::read_dir(root) else {
        return out;
    };
    for day in days.flatten() {
        let name = day.file_name();
        if name.to_string_lossy().starts_with('.') || !day.path().is_dir() {
            continue; // .stt-jobs, the AMQP spool, …
        }
        let Ok(sessions) = std::fs::read_dir(day.path()) else {
            continue;
        };
        for session in sessions.flatten() {
            finish_into(&session.path(), now_rfc3339, &mut out);
        }
    }
    out
}

/// Finishes the recordings in `dirs` that have no session.json: those a process left when it
/// handed over and exited (src/takeover). Others' live recordings in the same root are not
/// touched.
pub fn recover_dirs(dirs: &[PathBuf], now_rfc3339: &str) -> Vec<Recovered> {
    let mut out = Vec::new();
    for dir in dirs {
        finish_into(dir, now_rfc3339, &mut out);
    }
    out
}

/// Finishes `dir` if it is a session directory without session.json; errors are logged and
/// leave it as it was.
fn finish_into(dir: &Path, now_rfc3339: &str, out: &mut Vec<Recovered>) {
    if !dir.is_dir() || dir.join("session.json").exists() {
        return;
    }
    match recover_session(dir, now_rfc3339) {
        Ok(Some(r)) => out.push(r),
        Ok(None) => {}
        Err(e) => {
            let e = pii::redact_in(&e.to_string(), &dir.display().to_string());
            tracing::error!(dir = %Pii(dir.display()), error = %e,
                "interrupted recording left as found")
        }
    }
}

fn recover_session(dir: &Path, now: &str) -> Result<Option<Recovered>, RecorderError> {
    let mut audio: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| RecorderError::io("read_dir", dir, e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            let hidden = p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            !hidden && matches!(ext, "wav" | "flac" | "opus" | "enc")
        })
        .collect();
    audio.sort();
    let partial_path = dir.join(PARTIAL);
    if audio.is_empty() && !partial_path.exists() {
        return Ok(None); // not a recording (GDPR leftovers, transcripts only, …)
    }
    let mut doc: serde_json::Value = std::fs::read(&partial_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| serde_json::json!({ "version": 1 }));
    let mut files = Vec::new();
    let mut repaired = 0;
    for path in &audio {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let key_id = (ext == "enc")
            .then(|| super::encrypt::key_id_of(path))
            .flatten();
        let info = if ext == "enc" {
            // Encrypted files are whole records up to the crash; `siprecctl decrypt` reads
            // them, and their length is only known decrypted.
            (0, 0, 0)
        } else if ext == "wav" {
            let (info, changed) = repair_wav(path)?;
            repaired += usize::from(changed);
            info
        } else {
            let (channels, sample_rate, samples) = read_audio(path)?;
            let frames = (samples.len() / usize::from(channels.max(1))) as u64;
            (channels, sample_rate, frames)
        };
        files.push(RecordedFile {
            path: path.clone(),
            stream: stream_of(&doc, path),
            channels: info.0,
            sample_rate: info.1,
            frames: info.2,
            key_id,
        });
    }
    if let Some(obj) = doc.as_object_mut() {
        obj.insert("interrupted".into(), true.into());
        obj.insert("end_reason".into(), "interrupted".into());
        obj.insert("recovered_at".into(), now.into());
        obj.insert(
            "files".into(),
            serde_json::to_value(&files).unwrap_or_default(),
        );
        obj.insert(
            "error".into(),
            "the server stopped without finishing this recording (crash, kill or power loss); \
             the files hold what reached the disk"
                .into(),
        );
    }
    let mut bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    bytes.push(b'\n');
    fsutil::write_atomic(&dir.join("session.json"), &bytes)?;
    let _ = std::fs::remove_file(&partial_path);
    RECOVERED.inc();
    Ok(Some(Recovered {
        dir: dir.to_path_buf(),
        files,
        repaired,
    }))
}

/// The stream index session.partial.json gives the file, if any (`None` for the mix).
fn stream_of(doc: &serde_json::Value, path: &Path) -> Option<u32> {
    let name = path.file_name()?.to_str()?;
    doc.get("streams")?
        .as_array()?
        .iter()
        .find(|s| s.get("file").and_then(|f| f.as_str()) == Some(name))
        .and_then(|s| s.get("index")?.as_u64())
        .and_then(|i| u32::try_from(i).ok())
}

/// Makes a canonical WAV header (ours: 44 bytes, PCM) describe every whole sample frame in
/// the file and cuts a torn frame off the end. Returns (channels, rate, frames) and whether
/// anything changed. A file that is not one of our WAVs is an error and left alone.
fn repair_wav(path: &Path) -> Result<((u16, u32, u64), bool), RecorderError> {
    let invalid = |reason| RecorderError::InvalidAudio {
        path: path.to_path_buf(),
        reason,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| RecorderError::io("open", path, e))?;
    let mut h = [0u8; 44];
    file.read_exact_at(&mut h, 0)
        .map_err(|_| invalid("shorter than a WAV header"))?;
    let u16_at = |o: usize| u16::from_le_bytes([h[o], h[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().expect("4 bytes"));
    if &h[0..4] != b"RIFF" || &h[8..16] != b"WAVEfmt " || &h[36..40] != b"data" {
        return Err(invalid("not a canonical WAV header"));
    }
    let (channels, rate, bits) = (u16_at(22), u32_at(24), u16_at(34));
    if u16_at(20) != 1 || bits != 16 || channels == 0 {
        return Err(invalid("not 16-bit PCM"));
    }
    let len = file
        .metadata()
        .map_err(|e| RecorderError::io("stat", path, e))?
        .len();
    let block = 2 * u64::from(channels);
    let max = u64::from(u32::MAX) - 36;
    let data = ((len.saturating_sub(44)).min(max) / block) * block;
    let frames = data / block;
    let changed = u64::from(u32_at(40)) != data || len != 44 + data;
    if changed {
        file.set_len(44 + data)
            .map_err(|e| RecorderError::io("truncate", path, e))?;
        let data32 = data as u32;
        file.write_all_at(&data32.to_le_bytes(), 40)
            .and_then(|()| file.write_all_at(&(data32 + 36).to_le_bytes(), 4))
            .and_then(|()| file.sync_data())
            .map_err(|e| RecorderError::io("repair header", path, e))?;
    }
    Ok(((channels, rate, frames), changed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::recorder::{read_wav, WavWriter};

    /// A killed recording (header a second behind, a torn frame at the end) is repaired,
    /// gets session.json from its partial copy, and is found only once.
    #[test]
    fn finishes_an_interrupted_recording() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("2026-11-29/call_1");
        std::fs::create_dir_all(&dir).unwrap();
        let mut w = WavWriter::create(&dir.join("1.wav"), 1, 8000).unwrap();
        w.write_interleaved(&[7; 8000]).unwrap();
        w.patch_header().unwrap();
        w.write_interleaved(&[9; 4000]).unwrap();
        w.checkpoint(false).unwrap();
        std::mem::forget(w);
        // The header describes 12,000 samples; a later write reached the disk without its patch.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.join("1.wav"))
            .unwrap();
        std::io::Write::write_all(&mut f, &[5u8; 2 * 1000 + 1]).unwrap();
        let partial = serde_json::json!({
            "call_id": "abc", "streams": [{"index": 0, "file": "1.wav"}], "end": null
        });
        std::fs::write(dir.join(PARTIAL), partial.to_string()).unwrap();
        // Not recordings: a finished one, a hidden directory.
        std::fs::create_dir_all(root.path().join("2026-11-29/done")).unwrap();
        std::fs::write(root.path().join("2026-11-29/done/session.json"), "{}").unwrap();
        std::fs::create_dir_all(root.path().join(".stt-jobs/x")).unwrap();

        let found = recover(root.path(), "2026-11-30T00:00:00.000Z");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].repaired, 1);
        assert_eq!(found[0].files[0].frames, 13_000);
        assert_eq!(found[0].files[0].stream, Some(0));
        let (_, _, samples) = read_wav(&dir.join("1.wav")).unwrap();
        assert_eq!(
            samples.len(),
            13_000,
            "every whole frame, the torn byte cut off"
        );
        assert!(samples[..8000].iter().all(|&s| s == 7));
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("session.json")).unwrap()).unwrap();
        assert_eq!(doc["interrupted"], true);
        assert_eq!(doc["end_reason"], "interrupted");
        assert_eq!(doc["call_id"], "abc");
        assert!(!dir.join(PARTIAL).exists());
        assert!(recover(root.path(), "later").is_empty(), "finished once");
    }

    /// A foreign file with a .wav name is reported, not rewritten.
    #[test]
    fn leaves_foreign_files_alone() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("d/s");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("x.wav"), b"not a wav").unwrap();
        assert!(recover(root.path(), "now").is_empty());
        assert_eq!(std::fs::read(dir.join("x.wav")).unwrap(), b"not a wav");
        assert!(!dir.join("session.json").exists());
    }
}
