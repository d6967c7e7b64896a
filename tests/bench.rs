//! `siprec-bench` against a server it spawns: a small run must set up every call, have the
//! server receive the streams with no loss, and write its JSON results; with `--srtp` every
//! packet is SRTP and must be decrypted (none dropped).

use std::process::Command;

/// A 20-call, 2 s run on test slot ports; returns the JSON results.
fn small_run(ports: [&str; 3], extra: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_siprec-bench"))
        .args(["--spawn", env!("CARGO_BIN_EXE_siprec")])
        .args([
            "--calls",
            "20",
            "--rate",
            "50",
            "--duration",
            "2",
            "--no-floor",
        ])
        .args(["--spawn-sip-port", ports[0], "--spawn-http-port", ports[1]])
        .args(["--spawn-rtp-range", ports[2]])
        .args(extra)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["answered"], 20, "{v}");
    assert_eq!(v["streams"], 40);
    let sent = v["packets_sent_total"].as_u64().unwrap();
    let received = v["packets_received_by_server"].as_u64().unwrap();
    assert!(sent > 40 * 50 * 2, "at least 2 s of 40 streams sent: {v}");
    // Packets sent after the BYE are not counted by the server; everything before is.
    assert!(received * 10 >= sent * 8, "{v}");
    assert_eq!(v["packets_lost_reported_by_server"], 0, "{v}");
    assert!(v["server_cpu_ns_per_packet"].as_f64().unwrap() > 0.0);
    v
}

#[test]
fn bench_small_run() {
    let v = small_run(["21130", "22013", "25600:25799"], &[]);
    assert_eq!(v["srtp"], false);
}

#[test]
fn bench_small_run_srtp() {
    let v = small_run(["21290", "22029", "28800:28999"], &["--srtp"]);
    assert_eq!(v["srtp"], true);
    assert_eq!(v["srtp_drops_reported_by_server"], 0, "{v}");
}
