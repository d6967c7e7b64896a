//! GDPR export and erase of one call's recordings (`/api/compliance/gdpr/*`). Blocking file
//! work: callers run it on a blocking thread, never on the control plane's.
//!
//! A call's files are the recording-session directories under `RECORDING_DIR/YYYY-MM-DD/`
//! whose session.json names the Call-ID. Export writes one ustar archive of them into
//! `RECORDING_DIR/exports/`; erase removes them, and the call's exports, and appends an audit
//! line that carries a hash of the Call-ID, never the Call-ID itself.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// The directory exports go to.
pub fn export_dir(recording_dir: &Path) -> PathBuf {
    recording_dir.join("exports")
}

/// Recording-session directories of `call_id` (those whose session.json names it).
pub fn call_dirs(recording_dir: &Path, call_id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(days) = std::fs::read_dir(recording_dir) else {
        return found;
    };
    for day in days.flatten() {
        let name = day.file_name().to_string_lossy().to_string();
        // Only YYYY-MM-DD directories hold recordings.
        let is_date = name.len() == 10 && name.as_bytes()[4] == b'-' && name.as_bytes()[7] == b'-';
        if !is_date || !day.path().is_dir() {
            continue;
        }
        let Ok(sessions) = std::fs::read_dir(day.path()) else {
            continue;
        };
        for session in sessions.flatten() {
            let Ok(text) = std::fs::read_to_string(session.path().join("session.json")) else {
                continue;
            };
            let doc: Value = serde_json::from_str(&text).unwrap_or_default();
            if doc["call_id"] == call_id {
                found.push(session.path());
            }
        }
    }
    found.sort();
    found
}

/// A stable, non-reversible reference to a Call-ID for the audit log (FNV-1a 64).
pub fn call_ref(call_id: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in call_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Writes `RECORDING_DIR/exports/<call-ref>-<unix_ms>.tar` with every file of the call;
/// `Ok(None)` when the call has no recordings.
pub fn export(recording_dir: &Path, call_id: &str, unix_ms: u64) -> std::io::Result<Option<Value>> {
    let dirs = call_dirs(recording_dir, call_id);
    if dirs.is_empty() {
        return Ok(None);
    }
    let out_dir = export_dir(recording_dir);
    std::fs::create_dir_all(&out_dir)?;
    let path = out_dir.join(format!("{}-{unix_ms}.tar", call_ref(call_id)));
    let tmp = path.with_extension("tar.tmp");
    let mut tar = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    let (mut files, mut bytes) = (0u64, 0u64);
    for dir in &dirs {
        let rel = dir
            .strip_prefix(recording_dir)
            .unwrap_or(dir)
            .to_string_lossy()
            .to_string();
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        entries.sort();
        for file in entries {
            let data = std::fs::read(&file)?;
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            write_tar_entry(&mut tar, &rel, &name, &data, unix_ms / 1000)?;
            files += 1;
            bytes += data.len() as u64;
        }
    }
    tar.write_all(&[0u8; 1024])?; // Two zero blocks end the archive.
    let file = tar.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(Some(json!({
        "call_id": call_id,
        "export_path": path.display().to_string(),
        "files": files,
        "bytes": bytes,
        "format": "tar",
    })))
}

/// Removes every recording of the call and its exports, and appends an audit line;
/// `Ok(None)` when there was nothing to erase.
pub fn erase(recording_dir: &Path, call_id: &str, unix_ms: u64) -> std::io::Result<Option<Value>> {
    let dirs = call_dirs(recording_dir, call_id);
    let reference = call_ref(call_id);
    let exports: Vec<PathBuf> = std::fs::read_dir(export_dir(recording_dir))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{reference}-")))
        })
        .collect();
    if dirs.is_empty() && exports.is_empty() {
        return Ok(None);
    }
    for dir in &dirs {
        std::fs::remove_dir_all(dir)?;
    }
    for file in &exports {
        std::fs::remove_file(file)?;
    }
    let line = json!({
        "at": crate::proto::rfc3339_ms(unix_ms),
        "action": "gdpr_erase",
        "call_ref": reference,
        "recording_sessions": dirs.len(),
        "exports": exports.len(),
    });
    let mut audit = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(recording_dir.join("audit.log"))?;
    writeln!(audit, "{line}")?;
    audit.sync_all()?;
    tracing::info!(call_ref = %reference, sessions = dirs.len(), "GDPR erase");
    Ok(Some(json!({
        "call_id": call_id,
        "erased_recording_sessions": dirs.len(),
        "erased_exports": exports.len(),
        "status": "erased",
    })))
}

/// One ustar entry (POSIX.1-1988): 512-byte header, data padded to 512. Long paths use the
/// 155-byte prefix field for the directory.
fn write_tar_entry(
    out: &mut impl Write,
    dir: &str,
    name: &str,
    data: &[u8],
    mtime: u64,
) -> std::io::Result<()> {
    let mut h = [0u8; 512];
    let full = format!("{dir}/{name}");
    let (prefix, short) = if full.len() <= 100 {
        ("", full.as_str())
    } else {
        (dir, name)
    };
    if short.len() > 100 || prefix.len() > 155 {
        return Err(std::io::Error::other(format!(
            "path too long for ustar: {full}"
        )));
    }
    h[..short.len()].copy_from_slice(short.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
    h[136..148].copy_from_slice(format!("{:011o}\0", mtime).as_bytes());
    h[148..156].copy_from_slice(b"        "); // Checksum counts as spaces while summing.
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    out.write_all(&h)?;
    out.write_all(data)?;
    let pad = (512 - data.len() % 512) % 512;
    out.write_all(&vec![0u8; pad])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Export finds the call's directory, the archive lists its files (checked with tar(1)
    /// when present), erase removes files and exports, and a second erase finds nothing.
    #[test]
    fn export_then_erase() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("2026-11-24").join("call-1_abcd");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("session.json"),
            r#"{"call_id":"call-1@example.com"}"#,
        )
        .unwrap();
        std::fs::write(dir.join("1.wav"), vec![7u8; 1000]).unwrap();
        let other = root.path().join("2026-11-24").join("other");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("session.json"), r#"{"call_id":"other"}"#).unwrap();

        let v = export(root.path(), "call-1@example.com", 1_000)
            .unwrap()
            .unwrap();
        assert_eq!(v["files"], 2);
        let tar_path = PathBuf::from(v["export_path"].as_str().unwrap());
        let bytes = std::fs::read(&tar_path).unwrap();
        assert_eq!(bytes.len() % 512, 0);
        if let Ok(out) = std::process::Command::new("tar")
            .arg("-tf")
            .arg(&tar_path)
            .output()
        {
            let list = String::from_utf8_lossy(&out.stdout);
            assert!(list.contains("2026-11-24/call-1_abcd/1.wav"), "{list}");
        }
        assert!(export(root.path(), "nobody", 1).unwrap().is_none());

        let v = erase(root.path(), "call-1@example.com", 2_000)
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                v["erased_recording_sessions"].clone(),
                v["erased_exports"].clone()
            ),
            (1.into(), 1.into())
        );
        assert!(!dir.exists() && !tar_path.exists() && other.exists());
        let audit = std::fs::read_to_string(root.path().join("audit.log")).unwrap();
        assert!(
            !audit.contains("call-1@example.com"),
            "no PII in the audit log: {audit}"
        );
        assert!(audit.contains(&call_ref("call-1@example.com")));
        assert!(erase(root.path(), "call-1@example.com", 3_000)
            .unwrap()
            .is_none());
    }
}
