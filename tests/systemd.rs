//! The systemd unit passes `systemd-analyze verify`, and the server speaks the notify protocol
//! systemd's Type=notify and WatchdogSec rely on: READY=1 once up, WATCHDOG=1 while its
//! workers run, STOPPING=1 when SIGTERM starts the drain.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn unit_file_verifies() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("systemd-analyze missing: run ./.ci/deps.sh");
    }
    // Point ExecStart at the built binary so verify can check it is executable.
    let dir = tempfile::tempdir().unwrap();
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/siprec.service"
    ))
    .unwrap()
    .replace("/usr/bin/siprec", env!("CARGO_BIN_EXE_siprec"));
    let path = dir.path().join("siprec.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Lines about other units on this machine are not ours to judge.
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("siprec.service"))
        .collect();
    assert!(ours.is_empty(), "systemd-analyze verify:\n{text}");
}

#[test]
fn sd_notify_ready_watchdog_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let server = Server::start(
        25,
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "30000000"),
        ],
    );
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !(seen.contains("READY=1") && seen.contains("WATCHDOG=1")) {
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            seen.push('\n');
        }
    }
    assert!(seen.contains("READY=1"), "{seen}");
    assert!(seen.contains("WATCHDOG=1"), "{seen}");
    assert!(seen.contains("STATUS=recording; backend "), "{seen}");
    server.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !seen.contains("STOPPING=1") {
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    assert!(seen.contains("STOPPING=1"), "{seen}");
}

/// The shipped Prometheus rules pass `promtool check rules` and their unit tests
/// (docs/prometheus/alerts_test.yml), and the Grafana dashboard is a dashboard. That both only
/// query exported metrics is checked in src/api/metrics.rs.
#[test]
fn alert_rules_and_dashboard() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/prometheus");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap_or_else(|e| panic!("promtool missing ({e}): run ./.ci/deps.sh"));
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/grafana/siprec.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 15);
    for p in panels {
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty() && targets.iter().all(|t| t["expr"].is_string()));
    }
}
