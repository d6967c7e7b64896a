//! `siprec-bench` against a server it spawns: a small run must set up every call, have the
//! server receive the streams with no loss, and write its JSON results; with `--srtp` every
//! packet is SRTP and must be decrypted (none dropped). Across a veth pair (root), the same
//! load runs against the epoll and AF_XDP backends in turn and is compared.

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
    serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap()
}

/// One backend's results: every call set up, every stream received with no loss.
fn check_run(v: &serde_json::Value) {
    assert_eq!(v["answered"], 20, "{v}");
    assert_eq!(v["streams"], 40);
    let sent = v["packets_sent_total"].as_u64().unwrap();
    let received = v["packets_received_by_server"].as_u64().unwrap();
    assert!(sent > 40 * 50 * 2, "at least 2 s of 40 streams sent: {v}");
    // Packets sent after the BYE are not counted by the server; everything before is.
    assert!(received * 10 >= sent * 8, "{v}");
    assert_eq!(v["packets_lost_reported_by_server"], 0, "{v}");
    assert_eq!(v["packets_dropped_ring_full"], 0, "{v}");
    assert!(v["server_cpu_ns_per_packet"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_small_run() {
    let v = small_run(["21130", "22013", "25600:25799"], &[]);
    check_run(&v);
    assert_eq!(v["srtp"], false);
    assert_eq!(v["network"], "loopback");
}

#[test]
fn bench_small_run_srtp() {
    let v = small_run(["21290", "22029", "28800:28999"], &["--srtp"]);
    check_run(&v);
    assert_eq!(v["srtp"], true);
    assert_eq!(v["srtp_drops_reported_by_server"], 0, "{v}");
}

#[test]
fn bench_compares_epoll_and_af_xdp_across_a_veth_pair() {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: a veth pair and AF_XDP need root");
        return;
    }
    // The server lives in a namespace of its own: its ports meet nobody else's.
    let v = small_run(
        ["5060", "8080", "20000:20399"],
        &["--backend", "epoll,af_xdp"],
    );
    assert_eq!(v["network"], "veth", "{v}");
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{v}");
    for (run, backend) in runs.iter().zip(["epoll", "af_xdp"]) {
        assert_eq!(run["backend"], backend);
        check_run(run);
    }
    let comparison = v["comparison"].as_array().unwrap();
    assert_eq!(comparison[0]["ratio_to_first"], 1.0, "{v}");
    assert!(
        comparison[1]["ratio_to_first"].as_f64().unwrap() > 0.0,
        "{v}"
    );
}
