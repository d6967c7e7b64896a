//! Project lint (TigerBeetle's tidy.zig, glommio's linters.rs): sans-IO modules read no clock
//! and open no socket or file; every `unsafe` carries a `SAFETY:` comment; no FIXME; non-test
//! code stays within 100 columns.

use std::path::{Path, PathBuf};

const SANS_IO: &[&str] = &["proto", "sip", "sdp", "siprec", "session", "media", "srtp"];
const FORBIDDEN_IN_SANS_IO: &[&str] = &[
    "Instant::now",
    "SystemTime::now",
    "UdpSocket",
    "TcpStream",
    "TcpListener",
    "std::fs",
    "tokio::",
    "unsafe",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The lines of `path` that are not test code (files named tests.rs, and everything after a
/// `#[cfg(test)]` line, which this codebase keeps at the bottom of a file).
fn non_test_lines(path: &Path) -> Vec<(usize, String)> {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return Vec::new();
    }
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .enumerate()
        .take_while(|(_, l)| l.trim() != "#[cfg(test)]")
        .map(|(i, l)| (i + 1, l.to_owned()))
        .collect()
}

#[test]
fn tidy() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut problems = Vec::new();
    for file in &files {
        let rel = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .to_string();
        let module = rel
            .split('/')
            .next()
            .unwrap_or("")
            .trim_end_matches(".rs")
            .to_owned();
        let lines = non_test_lines(file);
        let all: Vec<String> = std::fs::read_to_string(file)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        for (n, line) in &lines {
            let code = line.split("//").next().unwrap_or("");
            if SANS_IO.contains(&module.as_str()) {
                for word in FORBIDDEN_IN_SANS_IO {
                    if code.contains(word) {
                        problems.push(format!("{rel}:{n}: `{word}` in sans-IO module {module}"));
                    }
                }
            }
            if line.chars().count() > 100 {
                problems.push(format!("{rel}:{n}: longer than 100 columns"));
            }
            if line.contains("FIXME") {
                problems.push(format!("{rel}:{n}: FIXME"));
            }
        }
        for (i, line) in all.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let is_unsafe = code.contains("unsafe {") || code.contains("unsafe impl");
            if is_unsafe {
                let from = i.saturating_sub(4);
                let documented = all[from..=i].iter().any(|l| l.contains("SAFETY:"));
                if !documented {
                    problems.push(format!("{rel}:{}: unsafe without a SAFETY: comment", i + 1));
                }
            }
        }
    }
    assert!(problems.is_empty(), "tidy found:\n{}", problems.join("\n"));
}
