//! SIPp (a real, independent SIP implementation) plays the SRC against the built server on
//! 127.0.0.1: every scenario of tests/sipp/ must complete with exit code 0, and call scenarios
//! must leave recordings behind. The README's setup script installs SIPp.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{wait_sessions, Server};

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sipp")
        .join(format!("{name}.xml"))
}

/// Runs one SIPp scenario against `server`; returns (exit code, stdout, screen dump).
fn sipp(server: &Server, name: &str, local_port: u16, extra: &[&str]) -> (i32, String, String) {
    let available = Command::new("sipp")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        available.is_ok(),
        "sipp not found: run ./.ci/deps.sh (the README's setup) first"
    );
    let screen = server
        .dir
        .path()
        .join(format!("{name}-{local_port}.screen"));
    let errors = server
        .dir
        .path()
        .join(format!("{name}-{local_port}.errors"));
    let mut child = Command::new("sipp")
        .arg("-sf")
        .arg(scenario(name))
        .args([
            "-timeout",
            "30s",
            "-timeout_error",
            "-trace_err",
            "-trace_screen",
            "-nostdin",
        ])
        .arg("-error_file")
        .arg(&errors)
        .arg("-screen_file")
        .arg(&screen)
        .args([
            "-p",
            &local_port.to_string(),
            "-mp",
            &(local_port + 300).to_string(),
        ])
        .args(extra)
        .arg(format!("127.0.0.1:{}", server.ports.sip))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sipp");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        use std::io::Read;
        let _ = s.read_to_string(&mut out);
    }
    let screen_text = std::fs::read_to_string(&screen).unwrap_or_default();
    let code = status.code().unwrap_or(-1);
    if code != 0 {
        eprintln!(
            "sipp {name} exited {code}\n--- screen ---\n{screen_text}\n--- errors ---\n{}\n--- server log ---\n{}",
            std::fs::read_to_string(&errors).unwrap_or_default(),
            server.log_text()
        );
    }
    (code, out, screen_text)
}

fn single(name: &str, n: u16) -> Server {
    let server = Server::start(n, &[]);
    let (code, _, _) = sipp(&server, name, 29000 + 10 * n, &["-m", "1", "-l", "1"]);
    assert_eq!(code, 0, "sipp {name} failed");
    server
}

/// A SIPREC INVITE, 2 s, BYE: per-leg and mixed WAVs with valid 8 kHz headers.
#[test]
fn sipp_basic_call_is_recorded() {
    let server = single("uac_basic", 4);
    let sessions = wait_sessions(&server.recordings(), 1, Duration::from_secs(10));
    assert_eq!(sessions.len(), 1, "{}", server.log_text());
    for file in ["1.wav", "2.wav", "mixed.wav"] {
        let bytes = std::fs::read(sessions[0].join(file)).unwrap();
        assert_eq!(&bytes[..4], b"RIFF", "{file}");
        assert_eq!(&bytes[8..12], b"WAVE", "{file}");
        assert_eq!(
            u32::from_le_bytes(bytes[24..28].try_into().unwrap()),
            8000,
            "{file}"
        );
        let data = u32::from_le_bytes(bytes[40..44].try_into().unwrap()) as usize;
        assert_eq!(
            data + 44,
            bytes.len(),
            "{file}: header describes the whole file"
        );
    }
}

/// Hold (a=inactive) and resume by re-INVITE; the answers are checked inside the scenario.
#[test]
fn sipp_hold_resume() {
    let server = single("uac_hold_resume", 5);
    assert_eq!(
        wait_sessions(&server.recordings(), 1, Duration::from_secs(10)).len(),
        1
    );
}

/// UPDATE with partial metadata: the joining participant is in session.json's history.
#[test]
fn sipp_update_metadata() {
    let server = single("uac_update", 6);
    let sessions = wait_sessions(&server.recordings(), 1, Duration::from_secs(10));
    let json = std::fs::read_to_string(sessions[0].join("session.json")).unwrap();
    assert!(json.contains("sip:carol@example.com"), "{json}");
    assert!(json.contains("ParticipantJoined"), "{json}");
}

/// OPTIONS gets 200 with Allow and Supported: siprec; a late CANCEL gets 200 and the call
/// goes on to a normal BYE.
#[test]
fn sipp_options_and_cancel() {
    let server = Server::start(7, &[]);
    let (code, _, _) = sipp(&server, "uac_options", 29070, &["-m", "1"]);
    assert_eq!(code, 0);
    let (code, _, _) = sipp(&server, "uac_cancel", 29072, &["-m", "1"]);
    assert_eq!(code, 0);
    assert_eq!(
        wait_sessions(&server.recordings(), 1, Duration::from_secs(10)).len(),
        1
    );
}

/// Without an ACK the 200 OK is retransmitted (SIPp counts ≥ 2 retransmissions in 2.6 s).
#[test]
fn sipp_lost_ack_retransmits_200() {
    let server = Server::start(8, &[]);
    let (code, _, screen) = sipp(&server, "uac_lost_ack", 29080, &["-m", "1"]);
    assert_eq!(code, 0);
    let retrans = screen
        .lines()
        .find(|l| l.trim_start().starts_with("200 <"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("no 200 row in:\n{screen}"));
    assert!(retrans >= 2, "200 retransmitted {retrans} times:\n{screen}");
}

/// MAX_CONCURRENT_CALLS=1: while one call runs, a second INVITE gets 503 with Retry-After.
#[test]
fn sipp_503_at_capacity() {
    let server = Server::start(9, &[("MAX_CONCURRENT_CALLS", "1")]);
    std::thread::scope(|s| {
        let long = s.spawn(|| sipp(&server, "uac_long", 29090, &["-m", "1"]).0);
        // Wait until the long call is listed by the API before trying the second one.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok((200, body)) = common::http_get(server.ports.http, "/api/sessions") {
                if body.contains("\"count\":1") {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let (code, _, _) = sipp(&server, "uac_capacity", 29095, &["-m", "1"]);
        assert_eq!(code, 0, "second call must get 503 + Retry-After");
        assert_eq!(long.join().unwrap(), 0, "the running call is unaffected");
    });
}

/// 100 calls at 20 calls/s, up to 20 at once: no failed call, and every call recorded.
#[test]
fn sipp_load_100_calls() {
    let server = Server::start(10, &[]);
    let (code, out, screen) = sipp(
        &server,
        "uac_basic",
        29100,
        &["-m", "100", "-r", "20", "-l", "20"],
    );
    assert_eq!(code, 0, "{out}");
    let failed = screen
        .lines()
        .find(|l| l.contains("Failed call"))
        .and_then(|l| l.split('|').nth(2))
        .map(|v| v.trim().to_owned());
    assert_eq!(failed.as_deref(), Some("0"), "{screen}");
    let sessions = wait_sessions(&server.recordings(), 100, Duration::from_secs(20));
    assert_eq!(sessions.len(), 100);
}

/// The same SIPREC call over TCP (Content-Length framing, responses on the connection).
#[test]
fn sipp_basic_call_over_tcp() {
    let server = Server::start(12, &[]);
    let (code, _, _) = sipp(&server, "uac_basic", 29120, &["-m", "1", "-t", "t1"]);
    assert_eq!(code, 0, "sipp over TCP failed");
    let sessions = wait_sessions(&server.recordings(), 1, Duration::from_secs(10));
    assert_eq!(sessions.len(), 1, "{}", server.log_text());
    let json = std::fs::read_to_string(sessions[0].join("session.json")).unwrap();
    assert!(json.contains("\"end_reason\": \"bye\""), "{json}");
}

/// SRTP: SIPp offers RTP/SAVP with two SDES suites, checks the answer keeps the stronger one
/// (tag 2, _80) with a key of our own; libsrtp (pylibsrtp) sends 2 s of known audio from
/// SIPp's media port; the WAV equals it and session.json names the suite.
#[test]
fn sipp_srtp_call_recorded_from_libsrtp() {
    use siprec::media::g711;
    let n = 28;
    let server = Server::start(n, &[]);
    let local = 29000 + 10 * n;
    let media = local + 300 + 10; // SIPp binds [media_port] itself.
    let pcm = common::source_audio(11, 160 * 100);
    let ulaw: Vec<u8> = pcm.iter().map(|&s| g711::linear_to_ulaw(s)).collect();
    let file = server.dir.path().join("srtp.ul");
    std::fs::write(&file, ulaw).unwrap();
    let want = common::ulaw_roundtrip(&pcm);
    std::thread::scope(|s| {
        let call = s.spawn(|| sipp(&server, "uac_srtp", local, &["-m", "1"]).0);
        let deadline = Instant::now() + Duration::from_secs(10);
        let port = loop {
            assert!(Instant::now() < deadline, "the SRTP call never showed up");
            if let Ok((200, body)) = common::http_get(server.ports.http, "/api/sessions") {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                if let Some(p) = v["sessions"][0]["streams"][0]["local_port"].as_u64() {
                    assert_eq!(
                        v["sessions"][0]["streams"][0]["srtp"],
                        "AES_CM_128_HMAC_SHA1_80"
                    );
                    break p;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let python = root.join(".venv/bin/python");
        assert!(python.exists(), "run .ci/deps.sh: pylibsrtp is missing");
        let status = Command::new(python)
            .arg(root.join("tests/tools/srtp_send.py"))
            .args(["--to", &format!("127.0.0.1:{port}"), "--profile"])
            .args(["AES_CM_128_HMAC_SHA1_80", "--key"])
            .arg("BSI/XHmWs9DtCidEYX6buNXyDyxJZoOgvdr3FDFO")
            .arg("--audio")
            .arg(&file)
            .args(["--from-port", &media.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(call.join().unwrap(), 0, "sipp uac_srtp failed");
    });
    let sessions = wait_sessions(&server.recordings(), 1, Duration::from_secs(10));
    let dir = &sessions[0];
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("session.json")).unwrap()).unwrap();
    assert_eq!(meta["streams"][0]["srtp"], "AES_CM_128_HMAC_SHA1_80");
    assert_eq!(meta["streams"][0]["rtp"]["srtp_auth_failures"], 0);
    let (_, _, leg) = siprec::sink::recorder::read_wav(&dir.join("1.wav")).unwrap();
    assert!(
        common::find(&leg, &want).is_some(),
        "the libsrtp audio is in 1.wav"
    );
}
