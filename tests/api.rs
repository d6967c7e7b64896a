//! The session API against the running binary during real SIPREC calls: pause/resume writes
//! silence of exactly the paused span while the file stays aligned, DELETE ends a recording
//! with our BYE, and mutating routes need the API key (401 without, 403 wrong).

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;
use siprec::sink::recorder::read_wav;

/// Pause recording at 1 s, resume at 2 s, while the SRC sends 3 s of audio: the leg's WAV
/// holds the audio before and after, exactly, and silence in between, of the paused length.
#[test]
fn pause_resume_writes_silence_of_the_paused_span() {
    paused_span(15, false);
}

/// The same with `auto_resume_after: 1` instead of a resume request: the server resumes by
/// itself a second after the pause, and the file is aligned the same way. Bad values are 400.
#[test]
fn auto_resume_writes_silence_of_the_paused_span() {
    paused_span(25, true);
}

fn paused_span(slot: u16, auto: bool) {
    let server = Server::start(slot, &[]);
    let ports = TestPorts::new(slot);
    let mut src = Src::new(ports.src_sip, ports.sip, "pause@127.0.0.1");
    let port = src.record_one(ports.src_rtp);
    let rtp = UdpSocket::bind(("127.0.0.1", ports.src_rtp)).unwrap();
    let a = source_audio(9, 8000 * 3);
    let t0 = Instant::now();
    let packets = audio_packets(port, 0x9999, 1, 0, Duration::ZERO, &a);
    let (first, rest): (Vec<_>, Vec<_>) = packets
        .into_iter()
        .partition(|p| p.at < Duration::from_millis(1000));
    play(&rtp, first, t0);
    let path = "/api/sessions/pause%40127.0.0.1/pause";
    let request = match auto {
        false => r#"{"pause_recording": true, "pause_transcription": false}"#,
        true => {
            r#"{"pause_recording": true, "pause_transcription": false, "auto_resume_after": 1}"#
        }
    };
    if auto {
        for bad in [
            r#"{"auto_resume_at": "2020-01-01T00:00:00Z"}"#,
            r#"{"auto_resume_at": "tomorrow"}"#,
            r#"{"auto_resume_after": -1}"#,
            r#"{"auto_resume_after": 1e9}"#,
        ] {
            let (status, body) = http(ports.http, "POST", path, &[], bad);
            assert_eq!(status, 400, "{bad}: {body}");
        }
    }
    let (status, body) = http(ports.http, "POST", path, &[], request);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (v["is_paused"].clone(), v["recording_paused"].clone()),
        (true.into(), true.into())
    );
    assert_eq!(v["transcription_paused"], false);
    assert_eq!(v["session_id"], "pause@127.0.0.1");
    assert_eq!(v["auto_resume_at"].is_string(), auto, "{v}");
    let (second, third): (Vec<_>, Vec<_>) = rest
        .into_iter()
        .partition(|p| p.at < Duration::from_millis(2000));
    play(&rtp, second, t0);
    let (status, body) = http(
        ports.http,
        "GET",
        "/api/sessions/pause%40127.0.0.1/pause-status",
        &[],
        "",
    );
    assert_eq!(status, 200);
    assert!(body.contains("\"is_paused\":true"), "{body}");
    if !auto {
        let (status, body) = http(
            ports.http,
            "POST",
            "/api/sessions/pause%40127.0.0.1/resume",
            &[],
            "",
        );
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"is_paused\":false"), "{body}");
    }
    play(&rtp, third, t0);
    let (_, body) = http(
        ports.http,
        "GET",
        "/api/sessions/pause%40127.0.0.1/pause-status",
        &[],
        "",
    );
    assert!(
        body.contains("\"is_paused\":false"),
        "resumed by the end: {body}"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(src.bye().status, 200);

    let dir = &wait_sessions(&server.recordings(), 1, Duration::from_secs(10))[0];
    let (_, _, leg) = read_wav(&dir.join("1.wav")).unwrap();
    let ra = ulaw_roundtrip(&a);
    let p0 = find(&leg, &ra[..800]).expect("audio before the pause");
    // The pause took effect between packets: find where recorded audio stops and restarts.
    let stop = (p0..leg.len())
        .find(|&i| leg[i..i + 160].iter().all(|&s| s == 0))
        .unwrap();
    let paused_from = stop - p0;
    assert_eq!(
        &leg[p0..stop],
        &ra[..paused_from],
        "before the pause, exact"
    );
    let restart = (stop..leg.len()).find(|&i| leg[i] != 0).unwrap();
    let resumed_at = restart - p0;
    assert_eq!(
        &leg[restart..restart + 4000],
        &ra[resumed_at..resumed_at + 4000],
        "after, exact and aligned"
    );
    let paused_ms = (resumed_at - paused_from) / 8;
    assert!(
        (800..=1300).contains(&paused_ms),
        "paused span {paused_ms} ms (asked ~1000)"
    );
    assert_eq!(paused_from % 160, 0, "whole packets are dropped");
}

/// DELETE /api/sessions/{id} sends our BYE and finishes the recording; unknown ids get the 404
/// envelope; with API_KEY set, mutating routes refuse without it (401) or with a wrong one (403).
#[test]
fn delete_ends_recording_and_api_key_guards_mutations() {
    let server = Server::start(16, &[("API_KEY", "s3cret")]);
    let ports = TestPorts::new(16);
    let mut src = Src::new(ports.src_sip, ports.sip, "delete@127.0.0.1");
    let (ct, body) = siprec_body(2, "sendonly", ports.src_rtp);
    assert_eq!(src.invite(&ct, &body).status, 200);
    src.ack();
    let path = "/api/sessions/delete%40127.0.0.1";
    let (status, body) = http(ports.http, "DELETE", path, &[], "");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("\"code\":\"unauthorized\""));
    let (status, _) = http(ports.http, "DELETE", path, &[("X-API-Key", "wrong")], "");
    assert_eq!(status, 403);
    let (status, _) = http(
        ports.http,
        "POST",
        "/api/sessions/pause-all?api_key=wrong",
        &[],
        "",
    );
    assert_eq!(status, 403);
    // Stats come from the snapshot the control plane publishes every 100 ms.
    let deadline = Instant::now() + Duration::from_secs(3);
    let body = loop {
        let (status, body) = http(ports.http, "GET", "/api/sessions/stats", &[], "");
        assert_eq!(status, 200, "read-only routes stay open");
        if body.contains("\"active_calls\":1") || Instant::now() > deadline {
            break body;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(body.contains("\"active_calls\":1"), "{body}");
    let (status, body) = http(
        ports.http,
        "POST",
        "/api/sessions/pause-all",
        &[("X-API-Key", "s3cret")],
        "",
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"count\":1"), "{body}");
    let (status, body) = http(ports.http, "GET", "/api/sessions/pause-status", &[], "");
    assert_eq!(status, 200);
    assert!(body.contains("\"recording_paused\":true"), "{body}");
    let (status, body) = http(
        ports.http,
        "POST",
        "/api/sessions/nope/pause",
        &[("X-API-Key", "s3cret")],
        "{\"pause_recording\": 7}",
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = http(
        ports.http,
        "DELETE",
        "/api/sessions/nope",
        &[("X-API-Key", "s3cret")],
        "",
    );
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("\"status\":404"));

    let (status, body) = http(ports.http, "DELETE", path, &[("X-API-Key", "s3cret")], "");
    assert_eq!(status, 200, "{body}");
    let bye = src
        .wait_request(Duration::from_secs(5))
        .expect("server sends BYE");
    assert_eq!(bye.method, siprec::sip::Method::Bye);
    src.answer_server_request(&bye);
    let sessions = wait_sessions(&server.recordings(), 1, Duration::from_secs(10));
    let json = std::fs::read_to_string(sessions[0].join("session.json")).unwrap();
    assert!(json.contains("\"end_reason\": \"api\""), "{json}");
}

/// Configuration over the API: GET shows the running values without the API key; validate
/// names a bad key; reload (API and SIGHUP) applies live limits (MAX_CONCURRENT_CALLS takes
/// effect on the next INVITE), reports keys that need a restart, and keeps the running
/// configuration when the file turns invalid.
#[test]
fn config_get_validate_reload() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("siprec.toml");
    std::fs::write(
        &file,
        "[sip]\nmax_concurrent_calls = 10\n[http]\napi_key = \"first\"\n",
    )
    .unwrap();
    let server = Server::start_with_args(
        19,
        &[],
        &[std::ffi::OsStr::new("--config"), file.as_os_str()],
    );
    let ports = TestPorts::new(19);
    let key = [("X-API-Key", "first")];

    let (status, body) = http(ports.http, "GET", "/api/config", &[], "");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["sip"]["max_concurrent_calls"], 10);
    assert!(
        !body.contains("first"),
        "the API key is never shown: {body}"
    );

    let (status, body) = http(
        ports.http,
        "POST",
        "/api/config/validate",
        &key,
        r#"{"media": {"rtp_port_min": 10001}}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("RTP_PORT_MIN") && body.contains("10001"),
        "{body}"
    );
    let (status, body) = http(
        ports.http,
        "POST",
        "/api/config/validate",
        &key,
        r#"{"http": {"port": 9090}}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"valid\":true"));

    // One call slot, a new key, bigger rings (need a restart) and a port in the file that
    // changes nothing: HTTP_PORT in the environment wins over the file.
    std::fs::write(
        &file,
        "[sip]\nmax_concurrent_calls = 1\n[http]\napi_key = \"second\"\nport = 9999\n[dataplane]\nring_slots = 8192\n",
    )
    .unwrap();
    let (status, body) = http(ports.http, "POST", "/api/config/reload", &key, "");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let applied: Vec<&str> = v["applied"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x.as_str())
        .collect();
    assert!(
        applied.contains(&"sip.max_concurrent_calls") && applied.contains(&"http.api_key"),
        "{v}"
    );
    assert_eq!(
        v["restart_required"],
        serde_json::json!(["dataplane.ring_slots"]),
        "{v}"
    );
    let (status, _) = http(ports.http, "POST", "/api/config/reload", &key, "");
    assert_eq!(status, 403, "the old key no longer works");

    let mut a = Src::new(ports.src_sip, ports.sip, "reload-a@127.0.0.1");
    let (ct, body) = siprec_body(1, "sendonly", ports.src_rtp);
    assert_eq!(a.invite(&ct, &body).status, 200);
    a.ack();
    let mut b = Src::new(ports.src_sip + 5, ports.sip, "reload-b@127.0.0.1");
    assert_eq!(
        b.invite(&ct, &body).status,
        503,
        "the reloaded limit applies"
    );

    // An invalid file: the reload fails and the running configuration stays.
    std::fs::write(&file, "[sip]\nmax_concurrent_calls = 0\n").unwrap();
    let (status, body) = http(
        ports.http,
        "POST",
        "/api/config/reload",
        &[("X-API-Key", "second")],
        "",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("MAX_CONCURRENT_CALLS"), "{body}");

    // SIGHUP reloads too.
    std::fs::write(
        &file,
        "[sip]\nmax_concurrent_calls = 5\n[http]\napi_key = \"second\"\n",
    )
    .unwrap();
    // SAFETY: plain syscall on our own child's pid.
    unsafe { libc::kill(server.pid(), libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = http(ports.http, "GET", "/api/config", &[], "");
        if body.contains("\"max_concurrent_calls\":5") {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP did not reload: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = http(ports.http, "GET", "/api/config/reload/status", &[], "");
    assert_eq!(status, 200);
    assert!(body.contains("\"result\":\"ok\""), "{body}");
    assert_eq!(a.bye().status, 200);
}

/// GDPR over the API with a real recorded call: erase refuses while the call runs (409);
/// after BYE, export writes a tar holding the call's files; erase removes the recordings and
/// the export from disk; a second erase is 404; the audit log names no Call-ID.
#[test]
fn gdpr_export_and_erase() {
    let server = Server::start(20, &[]);
    let ports = TestPorts::new(20);
    let mut src = Src::new(ports.src_sip, ports.sip, "gdpr@127.0.0.1");
    let (ct, body) = siprec_body(2, "sendonly", ports.src_rtp);
    assert_eq!(src.invite(&ct, &body).status, 200);
    src.ack();
    let req = r#"{"call_id": "gdpr@127.0.0.1"}"#;
    std::thread::sleep(Duration::from_millis(300));
    let (status, body) = http(ports.http, "POST", "/api/compliance/gdpr/erase", &[], req);
    assert_eq!(status, 409, "{body}");
    assert_eq!(src.bye().status, 200);
    let dirs = wait_sessions(&server.recordings(), 1, Duration::from_secs(10));
    let (status, body) = http(ports.http, "GET", "/api/compliance/status", &[], "");
    assert_eq!(status, 200);
    assert!(body.contains("\"gdpr\""), "{body}");

    let (status, body) = http(ports.http, "POST", "/api/compliance/gdpr/export", &[], req);
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let tar = std::path::PathBuf::from(v["export_path"].as_str().unwrap());
    assert!(tar.exists());
    assert_eq!(v["files"], 4, "1.wav, 2.wav, mixed.wav, session.json: {v}");
    let list = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&tar)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(
        list.contains("/mixed.wav") && list.contains("/session.json"),
        "{list}"
    );

    let (status, body) = http(ports.http, "DELETE", "/api/compliance/gdpr/erase", &[], req);
    assert_eq!(status, 200, "{body}");
    assert!(!dirs[0].exists(), "recordings gone");
    assert!(!tar.exists(), "export gone");
    let (status, _) = http(ports.http, "POST", "/api/compliance/gdpr/erase", &[], req);
    assert_eq!(status, 404);
    let audit = std::fs::read_to_string(server.recordings().join("audit.log")).unwrap();
    assert!(
        audit.contains("gdpr_erase") && !audit.contains("gdpr@127.0.0.1"),
        "{audit}"
    );
    let (status, _) = http(ports.http, "POST", "/api/compliance/gdpr/export", &[], "{}");
    assert_eq!(status, 400);
}

/// HTTP_RATE_LIMIT=5: a client gets its burst (10) and then 429 with the error envelope;
/// after a pause it is served again.
#[test]
fn per_client_rate_limit() {
    let server = Server::start(21, &[("HTTP_RATE_LIMIT", "5")]);
    let http_port = server.ports.http;
    std::thread::sleep(Duration::from_millis(2100)); // Refill after the readiness polling.
    let replies: Vec<(u16, String)> = (0..40)
        .map(|_| http(http_port, "GET", "/health/live", &[], ""))
        .collect();
    let ok = replies.iter().filter(|(c, _)| *c == 200).count();
    // The burst passes; a slow machine refills a few more tokens during the loop.
    assert!(
        (10..40).contains(&ok),
        "burst of 10 then refusals: {ok} passed"
    );
    let (_, body) = replies.iter().find(|(c, _)| *c == 429).expect("a 429");
    assert!(
        body.contains("\"code\":\"rate_limited\"") && body.contains("\"status\":429"),
        "{body}"
    );
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        http(http_port, "GET", "/health/live", &[], "").0,
        200,
        "refilled"
    );
}
