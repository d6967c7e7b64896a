//! Small filesystem helpers for the recorder: atomic file replacement and path-safe names.
//!
//! Refuses: to build a path component from network input without `sanitize_component`, and to
//! leave a half-written file under the final name (`write_atomic` renames only after fsync).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::RecorderError;

/// Writes `bytes` to `path` so that readers see either the old file or the complete new one:
/// temp file in the same directory, write, fsync, rename over `path`, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RecorderError> {
    let name = path.file_name().ok_or_else(|| {
        let source = std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name");
        RecorderError::io("write_atomic", path, source)
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let unique = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}.{unique}", std::process::id()));
    let tmp = dir.join(tmp_name);

    let result = write_temp_then_rename(&tmp, path, &dir, bytes);
    if result.is_err() {
        // Best effort: a stray temp file is harmless, but don't leave it if we can help it.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Maps `s` to a single safe path component: only `[A-Za-z0-9._-]` survive (others become `_`),
/// no leading `.`, never empty, at most 100 characters. Labels and Call-IDs come from the
/// network, so this is what stands between a SIP peer and `../../etc/passwd`.
pub fn sanitize_component(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(COMPONENT_CHARS_MAX)
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with('.') {
        out.replace_range(0..1, "_");
    }
    if out.is_empty() {
        out.push('_');
    }
    out
}

fn write_temp_then_rename(
    tmp: &Path,
    path: &Path,
    dir: &Path,
    bytes: &[u8],
) -> Result<(), RecorderError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(|e| RecorderError::io("create", tmp, e))?;
    file.write_all(bytes)
        .map_err(|e| RecorderError::io("write", tmp, e))?;
    file.sync_all()
        .map_err(|e| RecorderError::io("fsync", tmp, e))?;
    drop(file);
    fs::rename(tmp, path).map_err(|e| RecorderError::io("rename", path, e))?;
    sync_dir(dir)
}

/// Fsyncs a directory so that entries created or renamed in it survive a power loss.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), RecorderError> {
    let handle = File::open(dir).map_err(|e| RecorderError::io("open", dir, e))?;
    handle
        .sync_all()
        .map_err(|e| RecorderError::io("fsync", dir, e))
}

/// Longest component `sanitize_component` returns, in characters (all ASCII, so also bytes).
const COMPONENT_CHARS_MAX: usize = 100;

/// Makes temp names unique within the process when several threads write atomically at once.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

#[cfg(test)]
mod tests {
    use super::*;

    /// Hostile and degenerate inputs map to one harmless, non-empty component.
    #[test]
    fn sanitize_defends_against_traversal() {
        assert_eq!(sanitize_component("../../etc/passwd"), "_._.._etc_passwd");
        assert_eq!(sanitize_component(""), "_");
        assert_eq!(sanitize_component("."), "_");
        assert_eq!(sanitize_component(".."), "_.");
        assert_eq!(sanitize_component("a/b"), "a_b");
        assert_eq!(sanitize_component("caller-1_x.wav"), "caller-1_x.wav");
        assert_eq!(sanitize_component("héllo wörld"), "h_llo_w_rld");
        assert_eq!(sanitize_component("a\0b\\c"), "a_b_c");
        let long = "x".repeat(500);
        assert_eq!(sanitize_component(&long).len(), 100);
        let long_unicode = "é".repeat(500);
        assert_eq!(sanitize_component(&long_unicode), "_".repeat(100));
        for s in ["../../etc/passwd", "", ".", "a/b", "日本語", "/", ".hidden"] {
            let out = sanitize_component(s);
            assert!(
                !out.is_empty() && !out.starts_with('.') && !out.contains('/'),
                "{s:?}"
            );
        }
    }

    /// The file holds exactly the new bytes, and no temp file is left behind.
    #[test]
    fn write_atomic_replaces_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta.json");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let entries = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(entries, 1);
    }

    /// A missing directory is an error naming the path, not a panic.
    #[test]
    fn write_atomic_reports_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("meta.json");
        let err = write_atomic(&path, b"x").unwrap_err();
        assert!(
            matches!(err, RecorderError::Io { op: "create", .. }),
            "{err}"
        );
    }
}
