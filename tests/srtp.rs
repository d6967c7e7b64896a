//! SRTP end to end against an independent implementation: libsrtp (through pylibsrtp, set up
//! by `.ci/deps.sh`) protects known audio, the server records it, the WAV must hold that
//! audio sample for sample. Signalling is SIPREC over real UDP with RTP/SAVP offers.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::*;
use siprec::media::g711;
use siprec::sink::recorder::read_wav;
use siprec::srtp::sdes::base64_encode;

fn python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(p.exists(), "{} missing: run .ci/deps.sh", p.display());
    p
}

fn sender() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/srtp_send.py")
}

fn key_len(suite: &str) -> usize {
    match suite {
        "AEAD_AES_128_GCM" => 28,
        "AEAD_AES_256_GCM" => 44,
        _ => 30,
    }
}

fn key(suite: &str, seed: u8) -> String {
    let material: Vec<u8> = (0..key_len(suite))
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed))
        .collect();
    base64_encode(&material)
}

/// A SIPREC offer with one RTP/SAVP m-line from `src_rtp` offering `lines` as crypto.
fn offer(src_rtp: u16, lines: &[String]) -> (String, String) {
    let (ct, body) = siprec_body(1, "sendonly", src_rtp);
    let crypto: String = lines.iter().map(|l| format!("a=crypto:{l}\r\n")).collect();
    let body = body
        .replace("RTP/AVP 0 101", "RTP/SAVP 0 101")
        .replace("a=label:1\r\n", &format!("a=label:1\r\n{crypto}"));
    (ct, body)
}

/// 8 kHz µ-law of `samples` of test audio, and what the recording must hold.
fn audio(dir: &Path, seed: u32, samples: usize) -> (PathBuf, Vec<i16>) {
    let pcm = source_audio(seed, samples);
    let ulaw: Vec<u8> = pcm.iter().map(|&s| g711::linear_to_ulaw(s)).collect();
    let path = dir.join(format!("audio-{seed}.ul"));
    std::fs::write(&path, ulaw).unwrap();
    (path, ulaw_roundtrip(&pcm))
}

fn send(args: &[&str]) -> Child {
    Command::new(python())
        .arg(sender())
        .args(args)
        .spawn()
        .expect("start pylibsrtp sender")
}

fn session_json(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("session.json")).unwrap()).unwrap()
}

/// Every suite pylibsrtp offers (AES-CM-128 _80 and _32, AES-GCM 128 and 256), each across
/// a sequence wrap and with an SRTCP sender report on port + 1: the WAV equals the source.
#[test]
fn libsrtp_sender_every_suite() {
    let server = Server::start(26, &[]);
    let ports = TestPorts::new(26);
    let suites = [
        "AES_CM_128_HMAC_SHA1_80",
        "AES_CM_128_HMAC_SHA1_32",
        "AEAD_AES_128_GCM",
        "AEAD_AES_256_GCM",
    ];
    for (i, suite) in suites.iter().enumerate() {
        let mut src = Src::new(ports.src_sip, ports.sip, &format!("srtp-{i}@127.0.0.1"));
        let k = key(suite, i as u8);
        // An unsupported suite first: the server must skip it for ours.
        let lines = [
            format!("1 F8_128_HMAC_SHA1_80 inline:{}", key("x", 0)),
            format!("2 {suite} inline:{k}|2^31"),
        ];
        let (ct, body) = offer(ports.src_rtp, &lines);
        let resp = src.invite(&ct, &body);
        assert_eq!(resp.status, 200, "{suite}");
        let answer = String::from_utf8_lossy(&resp.body).to_string();
        assert!(answer.contains(" RTP/SAVP "), "{answer}");
        let ours = answer
            .lines()
            .find_map(|l| l.strip_prefix(&format!("a=crypto:2 {suite} inline:")))
            .unwrap_or_else(|| panic!("answer keeps tag 2 and {suite}: {answer}"));
        assert_ne!(ours, k, "the answer carries our own key");
        src.ack();
        let port = answer_ports(&answer)[0];
        // 1.2 s in real time: the recording spans the call, so media can't run ahead of it.
        let (file, want) = audio(server.dir.path(), i as u32 + 1, 160 * 60);
        let to = format!("127.0.0.1:{port}");
        let from = ports.src_rtp.to_string();
        let status = send(&[
            "--to",
            &to,
            "--profile",
            suite,
            "--key",
            &k,
            "--audio",
            file.to_str().unwrap(),
            "--from-port",
            &from,
            "--seq",
            "65480",
            "--rtcp",
        ])
        .wait()
        .unwrap();
        assert!(status.success());
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(src.bye().status, 200);
        let sessions = wait_sessions(&server.recordings(), i + 1, Duration::from_secs(10));
        let dir = sessions
            .iter()
            .find(|d| d.to_string_lossy().contains(&format!("srtp-{i}")))
            .expect("session directory");
        let meta = session_json(dir);
        let stream = &meta["streams"][0];
        assert_eq!(stream["srtp"], *suite);
        let rtp = &stream["rtp"];
        assert_eq!(rtp["srtp_auth_failures"], 0, "{suite}: {rtp}");
        assert_eq!(rtp["srtp_replays"], 0, "{suite}: {rtp}");
        assert_eq!(rtp["audio_packets"], 60, "{suite}: {rtp}");
        assert!(
            rtp["rtcp_sender_reports"].as_u64().unwrap() >= 1,
            "{suite}: {rtp}"
        );
        let (_, _, leg) = read_wav(&dir.join("1.wav")).unwrap();
        let at = find(&leg, &want).unwrap_or_else(|| {
            let first = find(&leg, &want[..160]);
            let last = find(&leg, &want[want.len() - 160..]);
            let mid = find(&leg, &want[4800..4960]);
            panic!(
                "{suite}: source audio not found; leg {} samples, first packet at {first:?}, \
                    mid at {mid:?}, last at {last:?}",
                leg.len()
            )
        });
        // The first packet may wait on a loaded machine; what matters is that all of it is
        // there, in order. A start a second late would be a misplacement.
        assert!(at < 8000, "{suite}: audio starts at sample {at}");
    }
    let text = server.log_text();
    for suite in suites {
        assert!(!text.contains(&key(suite, 0)), "keys are never logged");
    }
}

/// A re-INVITE with a new key mid-call: libsrtp switches keys at packet 100 (a new session,
/// as an SBC does); packets under both keys are recorded, none dropped; a forged packet (the
/// old key after the switch) is counted as an authentication failure, never recorded.
#[test]
fn key_change_mid_call_and_forgery() {
    let server = Server::start(27, &[]);
    let ports = TestPorts::new(27);
    let suite = "AES_CM_128_HMAC_SHA1_80";
    let (k1, k2) = (key(suite, 1), key(suite, 2));
    let mut src = Src::new(ports.src_sip, ports.sip, "rekey@127.0.0.1");
    let (ct, body) = offer(ports.src_rtp, &[format!("1 {suite} inline:{k1}")]);
    let resp = src.invite(&ct, &body);
    assert_eq!(resp.status, 200);
    src.ack();
    let port = answer_ports(&String::from_utf8_lossy(&resp.body))[0];
    let (file, want) = audio(server.dir.path(), 7, 8000 * 4);
    let to = format!("127.0.0.1:{port}");
    let from = ports.src_rtp.to_string();
    // 200 packets at 20 ms: 4 s; the new key from packet 100 (2 s).
    let mut child = send(&[
        "--to",
        &to,
        "--profile",
        suite,
        "--key",
        &k1,
        "--audio",
        file.to_str().unwrap(),
        "--from-port",
        &from,
        "--rekey-at",
        "100",
        "--rekey-key",
        &k2,
    ]);
    std::thread::sleep(Duration::from_millis(1000));
    let (ct, body) = offer(ports.src_rtp, &[format!("1 {suite} inline:{k2}")]);
    assert_eq!(src.invite(&ct, &body).status, 200);
    src.ack();
    assert!(child.wait().unwrap().success());
    // A forgery under a key nobody agreed to, after the call's audio: dropped and counted.
    let (junk, _) = audio(server.dir.path(), 8, 160 * 3);
    let status = send(&[
        "--to",
        &to,
        "--profile",
        suite,
        "--key",
        &key(suite, 9),
        "--audio",
        junk.to_str().unwrap(),
        "--from-port",
        &from,
        "--seq",
        "1300",
        "--pace-ms",
        "0",
    ])
    .wait()
    .unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(1300));
    let (_, metrics) = http_get(ports.http, "/metrics").unwrap();
    assert!(
        metrics.contains("siprec_srtp_auth_failures_total 3"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("srtp"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(src.bye().status, 200);
    let sessions = wait_sessions(&server.recordings(), 1, Duration::from_secs(10));
    let meta = session_json(&sessions[0]);
    let rtp = &meta["streams"][0]["rtp"];
    assert_eq!(rtp["audio_packets"], 200, "{rtp}");
    assert_eq!(rtp["srtp_auth_failures"], 3, "{rtp}");
    let (_, _, leg) = read_wav(&sessions[0].join("1.wav")).unwrap();
    assert!(find(&leg, &want).is_some(), "audio across the key change");
}
