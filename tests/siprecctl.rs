//! siprecctl against the running server during a real call: list, show, stats, pause/resume,
//! stop; exit codes tell success, client error and an unreachable server apart.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn ctl(http: u16, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_siprecctl"))
        .env_clear()
        .arg("--url")
        .arg(format!("127.0.0.1:{http}"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn siprecctl_drives_the_api() {
    let server = Server::start(17, &[("API_KEY", "k")]);
    let ports = TestPorts::new(17);
    let mut src = Src::new(ports.src_sip, ports.sip, "ctl@127.0.0.1");
    let (ct, body) = siprec_body(2, "sendonly", ports.src_rtp);
    assert_eq!(src.invite(&ct, &body).status, 200);
    src.ack();
    std::thread::sleep(Duration::from_millis(300)); // The API snapshot refreshes every 100 ms.

    let (code, out) = ctl(ports.http, &["sessions", "list"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ctl@127.0.0.1") && out.contains("sip:alice@example.com"),
        "{out}"
    );
    let (code, out) = ctl(ports.http, &["--json", "sessions", "show", "ctl@127.0.0.1"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"count\": 1"), "{out}");
    let (code, _) = ctl(ports.http, &["sessions", "show", "nope"]);
    assert_eq!(code, 1, "404 is a client error");
    let (code, out) = ctl(ports.http, &["health"]);
    assert_eq!(code, 0);
    assert!(out.contains("dataplane"), "{out}");
    let (code, _) = ctl(ports.http, &["pause", "ctl@127.0.0.1"]);
    assert_eq!(code, 1, "no API key: 401");
    let (code, out) = ctl(
        ports.http,
        &[
            "--api-key",
            "k",
            "--json",
            "pause",
            "ctl@127.0.0.1",
            "--recording",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("\"recording_paused\": true")
            && out.contains("\"transcription_paused\": false"),
        "{out}"
    );
    let (code, _) = ctl(ports.http, &["--api-key", "k", "resume", "--all"]);
    assert_eq!(code, 0);
    let (code, out) = ctl(
        ports.http,
        &["--api-key", "k", "sessions", "stop", "ctl@127.0.0.1"],
    );
    assert_eq!(code, 0, "{out}");
    let bye = src
        .wait_request(Duration::from_secs(5))
        .expect("BYE after stop");
    src.answer_server_request(&bye);
    assert_eq!(
        wait_sessions(&server.recordings(), 1, Duration::from_secs(10)).len(),
        1
    );
    let (code, out) = ctl(ports.http, &["--json", "config", "show"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("max_concurrent_calls") && !out.contains("\"k\""),
        "{out}"
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[media]\nrtp_port_min = 3\n").unwrap();
    let (code, out) = ctl(
        ports.http,
        &[
            "--api-key",
            "k",
            "config",
            "validate",
            bad.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("RTP_PORT_MIN"), "{out}");
    let (code, out) = ctl(
        ports.http,
        &["--api-key", "k", "gdpr", "export", "ctl@127.0.0.1"],
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("export_path"), "{out}");
    let (code, out) = ctl(
        ports.http,
        &["--api-key", "k", "gdpr", "erase", "ctl@127.0.0.1"],
    );
    assert_eq!(code, 0, "{out}");
    let (code, _) = ctl(
        ports.http,
        &["--api-key", "k", "gdpr", "erase", "ctl@127.0.0.1"],
    );
    assert_eq!(code, 1, "second erase: 404");
    let (code, _) = ctl(1, &["status"]);
    assert_eq!(code, 2, "unreachable server");

    // `events` follows one call's events live (the API key is its token).
    let follower = Command::new(env!("CARGO_BIN_EXE_siprecctl"))
        .env_clear()
        .args([
            "--url",
            &format!("127.0.0.1:{}", ports.http),
            "--api-key",
            "k",
        ])
        .args([
            "--json",
            "events",
            "--call-id",
            "ctl2@127.0.0.1",
            "--count",
            "2",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(src);
    let mut src = Src::new(ports.src_sip, ports.sip, "ctl2@127.0.0.1");
    let (ct, body) = siprec_body(1, "sendonly", ports.src_rtp);
    assert_eq!(src.invite(&ct, &body).status, 200);
    src.ack();
    assert_eq!(src.bye().status, 200);
    let out = follower.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let types: Vec<&str> = lines.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["call_started", "call_ended"]);
    let (code, out) = ctl(ports.http, &["events", "--count", "1"]);
    assert_eq!(code, 1, "no token: refused: {out}");
}

/// `curl -i` over HTTPS trusting `ca`: the status line and headers, or None when curl fails
/// (certificate not trusted, handshake refused).
fn curl(port: u16, ca: &std::path::Path, path: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10", "--cacert"])
        .arg(ca)
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// HTTPS on the API (HTTP_TLS_CERT_FILE/HTTP_TLS_KEY_FILE): curl and siprecctl (REST and the
/// WebSocket) verify the certificate, a plain-HTTP client is refused and counted, and a
/// certificate replaced on disk is served after SIGHUP without a restart.
#[test]
fn https_api_and_certificate_reload() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_a, key_a) = self_signed(dir.path(), "siprec-a");
    let (cert, key) = (dir.path().join("live.crt"), dir.path().join("live.key"));
    std::fs::copy(&cert_a, &cert).unwrap();
    std::fs::copy(&key_a, &key).unwrap();
    let server = Server::start(
        46,
        &[
            ("API_KEY", "k"),
            ("HTTP_TLS_CERT_FILE", cert.to_str().unwrap()),
            ("HTTP_TLS_KEY_FILE", key.to_str().unwrap()),
        ],
    );
    let port = TestPorts::new(46).http;
    let head = curl(port, &cert_a, "/status").expect("curl trusts certificate A");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("server: siprec/"),
        "{head}"
    );

    let url = format!("https://127.0.0.1:{port}");
    let ctl = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_siprecctl"))
            .env_clear()
            .args(["--url", &url])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap_or(-1), text)
    };
    let ca = cert_a.to_str().unwrap();
    let (code, text) = ctl(&["--cacert", ca, "--json", "status"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("\"version\""), "{text}");
    let (code, text) = ctl(&["--cacert", ca, "--api-key", "k", "pause", "--all"]);
    assert_eq!(code, 0, "{text}");
    let (code, text) = ctl(&["status"]);
    assert_eq!(code, 2, "an untrusted certificate is refused: {text}");
    assert!(text.contains("TLS"), "{text}");
    let (code, text) = ctl(&["--cacert", ca, "--api-key", "wrong", "events"]);
    assert_eq!(
        code, 1,
        "the WebSocket over TLS refuses a wrong key: {text}"
    );
    assert!(text.contains("invalid API key"), "{text}");

    // Plain HTTP on the HTTPS port: no answer, and the failed handshake is counted.
    assert!(!matches!(http_get(port, "/status"), Ok((200, _))));
    let metrics = curl(port, &cert_a, "/metrics").unwrap();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("siprec_http_tls_handshake_failures_total ") && !l.ends_with(" 0")
        ),
        "{metrics}"
    );

    // Renewal: a new certificate and key replace the files; SIGHUP serves them.
    let (cert_b, key_b) = self_signed(dir.path(), "siprec-b");
    assert!(curl(port, &cert_b, "/status").is_none(), "B not served yet");
    let tmp = dir.path().join("next.key");
    std::fs::copy(&key_b, &tmp).unwrap();
    std::fs::rename(&tmp, &key).unwrap();
    std::fs::copy(&cert_b, &tmp).unwrap();
    std::fs::rename(&tmp, &cert).unwrap();
    server.signal(libc::SIGHUP);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while curl(port, &cert_b, "/status").is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        curl(port, &cert_a, "/status").is_none(),
        "A no longer served"
    );
}

/// The completion scripts and man page generated at build time: bash parses its script and
/// every one of them knows every subcommand.
#[test]
fn completions_and_man_page() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_siprecctl"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let bash = run(&["completions", "bash"]);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("siprecctl.bash");
    std::fs::write(&script, &bash).unwrap();
    let check = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    let man = run(&["man"]);
    assert!(man.contains(".TH siprecctl 1"), "{man}");
    assert!(man.contains("Operator CLI"), "{man}");
    for text in [
        bash,
        run(&["completions", "zsh"]),
        run(&["completions", "fish"]),
        man,
    ] {
        for sub in [
            "status", "sessions", "pause", "resume", "config", "gdpr", "events", "stt",
        ] {
            assert!(text.contains(sub), "{sub} missing from:\n{text}");
        }
    }
    assert_eq!(
        Command::new(env!("CARGO_BIN_EXE_siprecctl"))
            .args(["completions", "powershell"])
            .status()
            .unwrap()
            .code(),
        Some(2),
        "clap refuses an unknown shell"
    );
}
