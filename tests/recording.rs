//! End to end over real sockets on 127.0.0.1: a Rust SRC sets up a SIPREC call with the built
//! server, sends paced G.711 RTP with known audio on every m-line (late start, DTMF, hold with
//! re-INVITE, SSRC change on resume), hangs up, and the WAVs are checked sample by sample.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;
use siprec::sink::recorder::read_wav;

const MS: u64 = 1;

fn d(ms: u64) -> Duration {
    Duration::from_millis(ms * MS)
}

/// Two legs, aligned to the call's wall clock: leg 1 talks from the start with a 200 ms DTMF
/// burst, leg 2 starts 500 ms late; both are held for 1 s by re-INVITE (a=inactive) and resume
/// (leg 1 with the same SSRC and a timestamp jump, leg 2 with a new SSRC). Every file lasts as
/// long as the call, holds the source audio exactly, and is silent where nothing was sent.
#[test]
fn two_legs_late_start_dtmf_hold_resume() {
    let mut server = Server::start(0, &[]);
    let ports = TestPorts::new(0);
    let mut src = Src::new(ports.src_sip, ports.sip, "e2e-two-legs@127.0.0.1");
    let (ct, body) = siprec_body(2, "sendonly", ports.src_rtp);
    let ok = src.invite(&ct, &body);
    let t0 = Instant::now();
    assert_eq!(ok.status, 200, "{ok:?}");
    let answer = String::from_utf8_lossy(&ok.body).to_string();
    assert!(answer.contains("a=recvonly"), "{answer}");
    assert!(ok
        .headers
        .get("Contact")
        .unwrap_or_default()
        .contains("+sip.srs"));
    let rtp_ports = answer_ports(&answer);
    assert_eq!(rtp_ports.len(), 2);
    assert!(
        rtp_ports
            .iter()
            .all(|&p| p >= ports.rtp_min && p <= ports.rtp_max),
        "{rtp_ports:?}"
    );
    src.ack();

    let rtp = UdpSocket::bind(("127.0.0.1", ports.src_rtp)).unwrap();
    let a = source_audio(1, 8000 * 4);
    let b = source_audio(2, 8000 * 4);
    // Phase 1 (0–2 s): leg 1 audio except 800–1000 ms (DTMF digit 5); leg 2 from 500 ms.
    let mut phase1 = Vec::new();
    phase1.extend(audio_packets(
        rtp_ports[0],
        0x1111,
        100,
        5000,
        d(0),
        &a[..6400],
    ));
    phase1.extend(dtmf_packets(
        rtp_ports[0],
        0x1111,
        140,
        5000 + 6400,
        d(800),
        5,
        10,
    ));
    phase1.extend(audio_packets(
        rtp_ports[0],
        0x1111,
        152,
        5000 + 8000,
        d(1000),
        &a[8000..16000],
    ));
    phase1.extend(audio_packets(
        rtp_ports[1],
        0x2222,
        7,
        90_000,
        d(500),
        &b[4000..16000],
    ));
    // One RTCP sender report on leg 1's RTCP port (RTP port + 1).
    let mut sr = Vec::new();
    siprec::media::rtcp::write_sender_report(0x1111, 5000 + 6400, 40, 6400, &mut sr);
    phase1.push(Scheduled {
        at: d(850),
        port: rtp_ports[0] + 1,
        bytes: sr,
    });
    play(&rtp, phase1, t0);

    // Hold: re-INVITE with both m-lines inactive; 1 s without RTP.
    let (ct, hold) = siprec_body(2, "inactive", ports.src_rtp);
    let mut r = src.request(siprec::sip::Method::Invite);
    r.headers.push("Content-Type", ct.as_str());
    r.body = hold.into_bytes().into();
    let resp = src.transact(&r);
    assert_eq!(resp.status, 200);
    assert!(String::from_utf8_lossy(&resp.body).contains("a=inactive"));
    assert_eq!(
        answer_ports(&String::from_utf8_lossy(&resp.body)),
        rtp_ports,
        "ports kept on hold"
    );
    src.ack();
    std::thread::sleep((t0 + d(3000)).saturating_duration_since(Instant::now()));

    // Resume at 3 s: leg 1 same SSRC, timestamp advanced by wall clock; leg 2 new SSRC.
    let (ct, resume) = siprec_body(2, "sendonly", ports.src_rtp);
    let mut r = src.request(siprec::sip::Method::Invite);
    r.headers.push("Content-Type", ct.as_str());
    r.body = resume.into_bytes().into();
    assert_eq!(src.transact(&r).status, 200);
    src.ack();
    let mut phase2 = Vec::new();
    phase2.extend(audio_packets(
        rtp_ports[0],
        0x1111,
        202,
        5000 + 24000,
        d(3000),
        &a[24000..32000],
    ));
    phase2.extend(audio_packets(
        rtp_ports[1],
        0x3333,
        60000,
        777,
        d(3000),
        &b[24000..32000],
    ));
    play(&rtp, phase2, t0);
    std::thread::sleep((t0 + d(4050)).saturating_duration_since(Instant::now()));
    let bye = src.bye();
    let elapsed = t0.elapsed();
    assert_eq!(bye.status, 200);

    let sessions = wait_sessions(&server.recordings(), 1, Duration::from_secs(10));
    assert_eq!(
        sessions.len(),
        1,
        "session.json not written; log:\n{}",
        server.log_text()
    );
    let dir = &sessions[0];
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("session.json")).unwrap()).unwrap();
    assert_eq!(meta["call_id"], "e2e-two-legs@127.0.0.1");
    assert_eq!(meta["end_reason"], "bye");
    let duration_s = meta["duration_s"].as_f64().unwrap();
    let aors: Vec<&str> = meta["participants"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["aor"].as_str())
        .collect();
    assert_eq!(aors, ["sip:alice@example.com", "sip:bob@example.com"]);
    assert_eq!(meta["streams"][0]["label"], "1");
    assert_eq!(meta["streams"][0]["codec"], "PCMU");
    assert_eq!(meta["streams"][1]["ssrc"], "00003333");
    assert!(
        meta["streams"][0]["rtp"]["telephone_events"]
            .as_u64()
            .unwrap()
            >= 10
    );
    // The digit itself: "5" on leg 1 at ~0.8 s, 10 × 20 ms long (its E packet says 1600).
    let dtmf = meta["dtmf"].as_array().unwrap();
    assert_eq!(dtmf.len(), 1, "{dtmf:?}");
    assert_eq!(dtmf[0]["digit"], "5");
    assert_eq!(dtmf[0]["stream"], 0);
    assert_eq!(dtmf[0]["duration_ms"], 200);
    let at = dtmf[0]["at_s"].as_f64().unwrap();
    assert!((0.75..1.0).contains(&at), "{at}");
    let rtp0 = &meta["streams"][0]["rtp"];
    assert_eq!(rtp0["rtcp_sender_reports"], 1, "{rtp0}");
    assert_eq!(rtp0["rtcp_sender_packet_count"], 40, "{rtp0}");
    assert!(rtp0["jitter_us"].is_u64(), "{rtp0}");

    let expected_frames = (duration_s * 8000.0).round() as i64;
    let wall = elapsed.as_secs_f64();
    assert!(
        (duration_s - wall).abs() < 0.25,
        "server duration {duration_s} vs client {wall}"
    );

    let (ch1, rate1, leg1) = read_wav(&dir.join("1.wav")).unwrap();
    let (_, _, leg2) = read_wav(&dir.join("2.wav")).unwrap();
    let (chm, ratem, mixed) = read_wav(&dir.join("mixed.wav")).unwrap();
    assert_eq!((ch1, rate1, chm, ratem), (1, 8000, 2, 8000));
    for (name, frames) in [
        ("1", leg1.len()),
        ("2", leg2.len()),
        ("mixed", mixed.len() / 2),
    ] {
        // ±20 ms of the call's duration.
        assert!(
            (frames as i64 - expected_frames).abs() <= 160,
            "{name}: {frames} vs {expected_frames}"
        );
    }
    assert_eq!(channel(&mixed, 2, 0), leg1, "mixed channel 0 == leg 1");
    assert_eq!(channel(&mixed, 2, 1), leg2, "mixed channel 1 == leg 2");

    // Leg 1: three talk spurts at exact timestamp offsets of each other (one SSRC epoch).
    let ra = ulaw_roundtrip(&a);
    let p0 = find(&leg1, &ra[..6400]).expect("leg 1 first spurt recorded exactly");
    assert!(p0 <= 800, "leg 1 starts within 100 ms of the call: {p0}");
    assert_eq!(
        &leg1[p0 + 8000..p0 + 16000],
        &ra[8000..16000],
        "after the DTMF, exact"
    );
    let p2 = find(&leg1, &ra[24000..24160]);
    let stats = (&meta["streams"][0]["rtp"], &meta["recorder"]);
    assert_eq!(
        p2,
        Some(p0 + 24000),
        "after the hold at the ts offset (p0 {p0}) {stats:?}"
    );
    assert_eq!(
        &leg1[p0 + 24000..p0 + 32000],
        &ra[24000..32000],
        "after the hold, exact"
    );
    assert!(
        leg1[p0 + 6400..p0 + 8000].iter().all(|&s| s == 0),
        "DTMF gap is silence"
    );
    assert!(
        leg1[p0 + 16000..p0 + 24000].iter().all(|&s| s == 0),
        "hold is silence"
    );
    assert!(leg1[..p0].iter().all(|&s| s == 0));

    // Leg 2: late start, then a new SSRC placed by its arrival time.
    let rb = ulaw_roundtrip(&b);
    let q0 = find(&leg2, &rb[4000..16000]).expect("leg 2 first spurt exact");
    assert!(leg2[..q0].iter().all(|&s| s == 0), "late start is silence");
    assert!(
        (q0 as i64 - p0 as i64 - 4000).abs() <= 400,
        "leg 2 starts 500 ms after leg 1: {q0} vs {p0}"
    );
    let q1 = find(&leg2, &rb[24000..32000]).expect("leg 2 after resume exact");
    assert!(
        (q1 as i64 - q0 as i64 - 20000).abs() <= 480,
        "resume at 3 s: {q1} vs {q0}"
    );
    assert!(
        leg2[q0 + 12000..q1].iter().all(|&s| s == 0),
        "hold is silence"
    );

    assert_eq!(server.stop(), Some(0), "clean exit on SIGTERM");
}

/// OPTIONS answers 200 with Allow/Supported, and the HTTP API lists a running call with the
/// reference shape, with `Server: siprec/<version>` and the JSON error envelope on 404.
#[test]
fn options_and_api_sessions() {
    let _server = Server::start(1, &[]);
    let ports = TestPorts::new(1);
    let mut src = Src::new(ports.src_sip, ports.sip, "api-call@127.0.0.1");
    let options = src.request(siprec::sip::Method::Options);
    let resp = src.transact(&options);
    assert_eq!(resp.status, 200);
    assert!(resp
        .headers
        .get("Allow")
        .unwrap_or_default()
        .contains("INVITE"));
    assert!(resp.headers.has_token("Supported", "siprec"));

    let (ct, body) = siprec_body(2, "sendonly", ports.src_rtp);
    assert_eq!(src.invite(&ct, &body).status, 200);
    src.ack();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut listed = serde_json::Value::Null;
    while Instant::now() < deadline {
        let (status, body) = http_get(ports.http, "/api/sessions").unwrap();
        assert_eq!(status, 200);
        listed = serde_json::from_str(&body).unwrap();
        if listed["count"] == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(listed["count"], 1, "{listed}");
    let s = &listed["sessions"][0];
    assert_eq!(s["call_id"], "api-call@127.0.0.1");
    assert!(s["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(s["participants"][0], "sip:alice@example.com");
    assert!(s["recording_path"].as_str().unwrap().ends_with("mixed.wav"));

    let (status, body) = http_get(ports.http, "/api/sessions?id=api-call%40127.0.0.1").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("api-call@127.0.0.1"));
    let (status, body) = http_get(ports.http, "/api/sessions?id=nope").unwrap();
    assert_eq!(status, 404);
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["code"], "not_found");
    assert_eq!(err["error"]["status"], 404);

    // The backend the suite asked for is the one running (auto may pick either).
    let (status, ready) = http_get(ports.http, "/health/ready").unwrap();
    assert_eq!(status, 200, "{ready}");
    match std::env::var("DATAPLANE_BACKEND").as_deref() {
        Ok("epoll") => assert!(ready.contains("backend epoll"), "{ready}"),
        Ok("io_uring") => assert!(ready.contains("backend io_uring"), "{ready}"),
        _ => assert!(ready.contains("backend "), "{ready}"),
    }

    let mut s = std::net::TcpStream::connect(("127.0.0.1", ports.http)).unwrap();
    use std::io::{Read, Write};
    write!(s, "GET /health/live HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(
        text.contains(&format!("server: siprec/{}", env!("CARGO_PKG_VERSION")))
            || text.contains(&format!("Server: siprec/{}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert_eq!(src.bye().status, 200);
}

/// No RTP at all for RTP_TIMEOUT: the server ends the call with a BYE of its own and the
/// files still last as long as the call.
#[test]
fn rtp_timeout_sends_bye() {
    let server = Server::start(2, &[("RTP_TIMEOUT", "2")]);
    let ports = TestPorts::new(2);
    let mut src = Src::new(ports.src_sip, ports.sip, "timeout@127.0.0.1");
    let (ct, body) = siprec_body(1, "sendonly", ports.src_rtp);
    assert_eq!(src.invite(&ct, &body).status, 200);
    src.ack();
    let bye = src
        .wait_request(Duration::from_secs(8))
        .expect("server sends BYE");
    assert_eq!(bye.method, siprec::sip::Method::Bye);
    assert_eq!(bye.call_id(), Some("timeout@127.0.0.1"));
    assert_eq!(
        bye.from().and_then(|f| f.tag().map(str::to_owned)),
        src.to_tag
    );
    src.answer_server_request(&bye);
    let sessions = wait_sessions(&server.recordings(), 1, Duration::from_secs(10));
    assert_eq!(sessions.len(), 1);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sessions[0].join("session.json")).unwrap()).unwrap();
    assert_eq!(meta["end_reason"], "rtp_timeout");
    let (_, _, leg) = read_wav(&sessions[0].join("1.wav")).unwrap();
    let expected = (meta["duration_s"].as_f64().unwrap() * 8000.0).round() as i64;
    assert!((leg.len() as i64 - expected).abs() <= 160);
    assert!(leg.iter().all(|&s| s == 0));
}

/// SIGKILL in the middle of a call: the WAVs on disk are valid, their headers describe only
/// what is on disk, and they hold the audio up to at most ~1.3 s before the kill (header patch
/// interval plus commit delay), sample for sample.
#[test]
fn sigkill_leaves_playable_files() {
    let mut server = Server::start(11, &[]);
    let ports = TestPorts::new(11);
    let mut src = Src::new(ports.src_sip, ports.sip, "sigkill@127.0.0.1");
    let port = src.record_one(ports.src_rtp);
    let rtp = UdpSocket::bind(("127.0.0.1", ports.src_rtp)).unwrap();
    let a = source_audio(3, 8000 * 3);
    let t0 = Instant::now();
    play(&rtp, audio_packets(port, 0x5151, 1, 0, d(0), &a), t0);
    let mut child = server.child.take().unwrap();
    child.kill().unwrap(); // SIGKILL: no chance to finish anything.
    child.wait().unwrap();

    // The recording day (RECORDING_DIR also holds the hidden STT job queue, .stt-jobs).
    let day = std::fs::read_dir(server.recordings())
        .unwrap()
        .flatten()
        .find(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .unwrap()
        .path();
    let dir = std::fs::read_dir(day)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(!dir.join("session.json").exists(), "killed before the end");
    let bytes = std::fs::read(dir.join("1.wav")).unwrap();
    let data = u32::from_le_bytes(bytes[40..44].try_into().unwrap()) as usize;
    let riff = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
    assert!(
        data + 44 <= bytes.len(),
        "header claims more than is on disk"
    );
    assert_eq!(riff, data + 36);
    let (_, rate, leg) = read_wav(&dir.join("1.wav")).unwrap();
    assert_eq!(rate, 8000);
    assert!(
        leg.len() >= 8000 * 17 / 10,
        "at most ~1.3 s lost of 3 s: {} samples",
        leg.len()
    );
    let ra = ulaw_roundtrip(&a);
    let p = find(&leg, &ra[..800]).expect("audio present");
    let n = leg.len() - p;
    assert_eq!(&leg[p..], &ra[..n], "what is there is exact");
    assert!(
        dir.join("session.partial.json").exists(),
        "the call's copy for recovery"
    );

    // The next start finishes it: the header covers every whole frame on disk, session.json
    // comes from the partial copy, marked interrupted.
    let on_disk = (std::fs::metadata(dir.join("1.wav")).unwrap().len() - 44) / 2;
    let recordings = server.recordings().display().to_string();
    let again = Server::start(11, &[("RECORDING_DIR", recordings.as_str())]);
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("session.json")).unwrap()).unwrap();
    assert_eq!(meta["interrupted"], true);
    assert_eq!(meta["end_reason"], "interrupted");
    assert_eq!(meta["call_id"], "sigkill@127.0.0.1");
    assert_eq!(meta["streams"][0]["file"], "1.wav");
    assert_eq!(meta["files"][0]["frames"].as_u64(), Some(on_disk));
    assert!(!dir.join("session.partial.json").exists());
    let (_, _, repaired) = read_wav(&dir.join("1.wav")).unwrap();
    assert_eq!(repaired.len() as u64, on_disk);
    assert!(repaired.len() >= leg.len());
    let n = repaired.len() - p;
    assert_eq!(&repaired[p..], &ra[..n], "the repaired file is exact too");
    let (_, metrics) = http_get(again.ports.http, "/metrics").unwrap();
    assert!(
        metrics.contains("siprec_recordings_recovered_total 1"),
        "{metrics}"
    );
}

/// During and after a real call with RTP: /metrics counts the INVITE, the 200s, the RTP packets
/// and the accepted call (Prometheus text, siprec_ prefix); /metrics/simple says the same in
/// JSON; /health aggregates its checks with the system block; /status names version and
/// backend.
#[test]
fn metrics_health_status() {
    let _server = Server::start(14, &[]);
    let ports = TestPorts::new(14);
    let mut src = Src::new(ports.src_sip, ports.sip, "metrics@127.0.0.1");
    let port = src.record_one(ports.src_rtp);
    let rtp = UdpSocket::bind(("127.0.0.1", ports.src_rtp)).unwrap();
    let a = source_audio(5, 8000);
    play(
        &rtp,
        audio_packets(port, 0x7777, 1, 0, d(0), &a),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_millis(1300)); // Per-stream counters arrive each second.

    let (status, text) = http_get(ports.http, "/metrics").unwrap();
    assert_eq!(status, 200);
    let value = |line_start: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{line_start} missing in:\n{text}"))
    };
    assert_eq!(value("siprec_sip_requests_total{method=\"INVITE\"}"), 1);
    assert!(value("siprec_sip_responses_total{code=\"200\"}") >= 1);
    assert_eq!(value("siprec_calls_total{outcome=\"accepted\"}"), 1);
    assert_eq!(value("siprec_active_calls"), 1);
    assert_eq!(value("siprec_rtp_packets_received_total{kind=\"rtp\"}"), 50);
    assert_eq!(
        value("siprec_rtp_packets_received_total{kind=\"audio\"}"),
        50
    );
    assert_eq!(value("siprec_rtp_stream_events_total{event=\"lost\"}"), 0);
    assert!(text.contains("# TYPE siprec_rtp_packets_received_total counter"));
    // The recorder's header patches (every second) are timed in the I/O histogram.
    assert!(text.contains("# TYPE siprec_recorder_io_seconds histogram"));
    assert!(
        value("siprec_recorder_io_seconds_count{op=\"header\"}") >= 1,
        "{text}"
    );

    let (status, simple) = http_get(ports.http, "/metrics/simple").unwrap();
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&simple).unwrap();
    assert_eq!(v["active_calls"], 1);
    assert_eq!(v["rtp"]["audio_packets"], 50);

    let (status, health) = http_get(ports.http, "/health").unwrap();
    assert_eq!(status, 200, "{health}");
    let h: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(h["status"], "healthy", "{h}");
    for check in ["sip", "rtp_ports", "recording_storage", "dataplane"] {
        assert_eq!(h["checks"][check]["status"], "healthy", "{check}: {h}");
    }
    assert_eq!(h["system"]["active_calls"], 1);
    assert!(h["system"]["cpu_count"].as_u64().unwrap() >= 1);

    let (status, st) = http_get(ports.http, "/status").unwrap();
    assert_eq!(status, 200);
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"));
    assert!(["io_uring", "epoll"].contains(&st["dataplane"]["backend"].as_str().unwrap()));
    assert_eq!(src.bye().status, 200);
}

/// SIGTERM drains: readiness goes 503, OPTIONS and new INVITEs get 503 (with Retry-After),
/// the running call goes on until the SRC's BYE, then the server exits 0 with the recording
/// closed normally.
#[test]
fn sigterm_drains_running_calls() {
    let mut server = Server::start(23, &[("DRAIN_TIMEOUT", "30")]);
    let ports = TestPorts::new(23);
    let mut src = Src::new(ports.src_sip, ports.sip, "drain@127.0.0.1");
    let (ct, body) = siprec_body(1, "sendonly", ports.src_rtp);
    let ok = src.invite(&ct, &body);
    assert_eq!(ok.status, 200);
    src.ack();
    server.signal(libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while http_get(ports.http, "/health/ready")
        .map(|r| r.0)
        .unwrap_or(0)
        != 503
    {
        assert!(Instant::now() < deadline, "readiness never went 503");
        std::thread::sleep(Duration::from_millis(50));
    }
    let options = src.request(siprec::sip::Method::Options);
    assert_eq!(src.transact(&options).status, 503, "OPTIONS while draining");
    let mut late = Src::new(ports.src_sip + 5, ports.sip, "late@127.0.0.1");
    let refused = late.invite(&ct, &body);
    assert_eq!(refused.status, 503);
    assert!(refused.headers.get("Retry-After").is_some());

    // The running call still records.
    let port = answer_ports(&String::from_utf8_lossy(&ok.body))[0];
    let rtp = UdpSocket::bind(("127.0.0.1", ports.src_rtp)).unwrap();
    let a = source_audio(6, 8000);
    play(
        &rtp,
        audio_packets(port, 0x6666, 1, 0, d(0), &a),
        Instant::now(),
    );
    assert_eq!(src.bye().status, 200);
    assert_eq!(
        server.wait_exit(Duration::from_secs(10)),
        Some(0),
        "exit 0 once drained"
    );
    let dir = &wait_sessions(&server.recordings(), 1, Duration::from_secs(1))[0];
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("session.json")).unwrap()).unwrap();
    assert_eq!(meta["end_reason"], "bye");
    let (_, _, leg) = read_wav(&dir.join("1.wav")).unwrap();
    assert!(
        find(&leg, &ulaw_roundtrip(&a)[..800]).is_some(),
        "audio after SIGTERM recorded"
    );
}

/// With DRAIN_TIMEOUT=1 a call still running after the drain window gets our BYE; the server
/// then closes the recording and exits 0.
#[test]
fn drain_timeout_ends_remaining_calls() {
    let mut server = Server::start(24, &[("DRAIN_TIMEOUT", "1")]);
    let ports = TestPorts::new(24);
    let mut src = Src::new(ports.src_sip, ports.sip, "drain-timeout@127.0.0.1");
    let (ct, body) = siprec_body(1, "sendonly", ports.src_rtp);
    assert_eq!(src.invite(&ct, &body).status, 200);
    src.ack();
    server.signal(libc::SIGTERM);
    let bye = src
        .wait_request(Duration::from_secs(6))
        .expect("BYE at the end of the drain");
    assert_eq!(bye.method, siprec::sip::Method::Bye);
    src.answer_server_request(&bye);
    assert_eq!(server.wait_exit(Duration::from_secs(15)), Some(0));
    let dir = &wait_sessions(&server.recordings(), 1, Duration::from_secs(1))[0];
    let json = std::fs::read_to_string(dir.join("session.json")).unwrap();
    assert!(json.contains("\"end_reason\": \"shutdown\""), "{json}");
}

/// An upgrade without a gap (docs/operations.md, Upgrading): SIGUSR2 starts a new process
/// that takes the listening sockets. The call running across the takeover is recorded whole
/// by the old process, and its BYE reaches it through the new one. A TCP connection the old
/// process holds keeps working: OPTIONS and a new call on it are passed to the new process
/// and answered through the old one. A UDP call placed after the takeover is the new
/// process's and runs past the old one's exit without being taken for interrupted. systemd
/// is told the new main PID; the old process exits 0 once its call has ended.
#[test]
fn sigusr2_hands_the_sockets_to_a_new_process() {
    let notify = Notify::new();
    let env = [
        ("DRAIN_TIMEOUT", "60"),
        ("NOTIFY_SOCKET", notify.path.as_str()),
    ];
    let mut old = Server::start(63, &env);
    let ports = TestPorts::new(63);
    let mut first = Src::new(ports.src_sip, ports.sip, "takeover-old@127.0.0.1");
    let port = first.record_one(ports.src_rtp);
    let audio = source_audio(63, 8000 * 4);
    let rtp = UdpSocket::bind(("127.0.0.1", ports.src_rtp)).unwrap();
    let sender = {
        let audio = audio.clone();
        std::thread::spawn(move || send_pcmu(&rtp, port, &audio, 1, 0x7a7a))
    };
    // An SBC's persistent TCP connection, to the old process.
    let mut tcp_src = Src::new(ports.src_sip + 7, ports.sip, "takeover-tcp@127.0.0.1");
    let mut tcp = TcpSip::connect(ports.sip);
    let options = tcp_src.request(siprec::sip::Method::Options);
    assert_eq!(tcp.transact(&options).status, 200);
    std::thread::sleep(Duration::from_millis(800));
    old.signal(libc::SIGUSR2);

    // The old process hands systemd the new main PID once the new one serves.
    let new = wait_mainpid(&notify.socket, &old);

    // HTTP and SIP are the new process's now: its session list lacks the old call...
    let (status, body) = http_get(ports.http, "/api/sessions").unwrap();
    assert_eq!(status, 200);
    assert!(!body.contains("takeover-old"), "{body}");
    // ...and has a call placed now, which outlives the old process.
    let mut second = Src::new(ports.src_sip + 5, ports.sip, "takeover-new@127.0.0.1");
    let port2 = second.record_one(ports.src_rtp + 5);
    let audio2 = source_audio(64, 8000 * 6);
    let rtp2 = UdpSocket::bind(("127.0.0.1", ports.src_rtp + 5)).unwrap();
    let sender2 = {
        let audio = audio2.clone();
        std::thread::spawn(move || send_pcmu(&rtp2, port2, &audio, 1, 0x7b7b))
    };
    // (The list is refreshed every 100 ms.)
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, body) = http_get(ports.http, "/api/sessions").unwrap();
        if body.contains("takeover-new") {
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The old process's TCP connection: not refused (it is draining), but passed on.
    let options = tcp_src.request(siprec::sip::Method::Options);
    assert_eq!(
        tcp.transact(&options).status,
        200,
        "OPTIONS after the takeover"
    );
    let (ct, body) = siprec_body(1, "sendonly", ports.src_rtp + 7);
    let mut invite = tcp_src.request(siprec::sip::Method::Invite);
    invite.headers.push("Require", "siprec");
    invite.headers.push("Content-Type", ct);
    invite.body = body.into_bytes().into();
    let ok = tcp.transact(&invite);
    assert_eq!(ok.status, 200, "INVITE on the old process's TCP connection");
    tcp_src.to_tag = ok.to_tag();
    tcp.send(&tcp_src.request(siprec::sip::Method::Ack));
    let port3 = answer_ports(&String::from_utf8_lossy(&ok.body))[0];
    let audio3 = source_audio(65, 8000);
    let rtp3 = UdpSocket::bind(("127.0.0.1", ports.src_rtp + 7)).unwrap();
    send_pcmu(&rtp3, port3, &audio3, 1, 0x7c7c);
    let bye = tcp_src.request(siprec::sip::Method::Bye);
    assert_eq!(tcp.transact(&bye).status, 200, "BYE on the TCP connection");

    // The old call's BYE goes to the new process, which forwards it to the old one.
    sender.join().unwrap();
    assert_eq!(
        first.bye().status,
        200,
        "BYE of the call of the old process"
    );
    assert_eq!(
        old.wait_exit(Duration::from_secs(20)),
        Some(0),
        "the old process exits 0 once its call ended; log:\n{}",
        old.log_text()
    );
    // The new process sees it gone (and finishes what it left unfinished: nothing).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !old
        .log_text()
        .contains("takeover: the old process has exited")
    {
        assert!(Instant::now() < deadline, "{}", old.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    sender2.join().unwrap();
    assert_eq!(second.bye().status, 200);

    let dirs = wait_sessions(&old.recordings(), 3, Duration::from_secs(10));
    let meta = |dir: &std::path::Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("session.json")).unwrap()).unwrap()
    };
    let by_call = |call: &str| {
        let dir = dirs.iter().find(|d| meta(d)["call_id"] == call);
        dir.unwrap_or_else(|| panic!("no recording of {call} in {dirs:?}"))
    };
    for (call, audio) in [
        ("takeover-old@127.0.0.1", &audio),
        ("takeover-new@127.0.0.1", &audio2),
        ("takeover-tcp@127.0.0.1", &audio3),
    ] {
        let dir = by_call(call);
        let meta = meta(dir);
        assert_eq!(meta["end_reason"], "bye", "{call}: {meta}");
        assert_ne!(meta["interrupted"], true, "{call}: {meta}");
        let (_, _, leg) = read_wav(&dir.join("1.wav")).unwrap();
        assert!(
            find(&leg, &ulaw_roundtrip(audio)).is_some(),
            "{call}: every sample recorded ({} samples sent, {} in the file)",
            audio.len(),
            leg.len()
        );
    }
    let log = old.log_text();
    assert!(!log.contains("interrupted recording finished"), "{log}");
    new.stop();
}

/// A SIP client over one TCP connection (the Via says TCP; framing by Content-Length).
struct TcpSip {
    stream: std::net::TcpStream,
    buf: Vec<u8>,
}

impl TcpSip {
    fn connect(port: u16) -> TcpSip {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        TcpSip {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, request: &siprec::sip::Request) {
        use std::io::Write;
        let mut request = request.clone();
        for h in request.headers.0.iter_mut().filter(|h| h.name == "Via") {
            h.value = h.value.replace("SIP/2.0/UDP", "SIP/2.0/TCP");
        }
        let mut out = Vec::new();
        request.encode(&mut out);
        self.stream.write_all(&out).unwrap();
    }

    /// Sends `request` and returns its final response (provisionals skipped).
    fn transact(&mut self, request: &siprec::sip::Request) -> siprec::sip::Response {
        self.send(request);
        loop {
            let response = self.read_response();
            if response.status >= 200 {
                return response;
            }
        }
    }

    fn read_response(&mut self) -> siprec::sip::Response {
        use std::io::Read;
        loop {
            if let Some(head) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let text = String::from_utf8_lossy(&self.buf[..head]).to_ascii_lowercase();
                let length = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                let total = head + 4 + length;
                if self.buf.len() >= total {
                    let message: Vec<u8> = self.buf.drain(..total).collect();
                    match siprec::sip::parse_datagram(&message) {
                        Ok(siprec::sip::Message::Response(r)) => return r,
                        other => panic!("not a response: {other:?}"),
                    }
                }
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).expect("a response in 5 s");
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// `--takeover` with no server running starts on its own sockets, and a socket file a crash
/// left behind does not stop the takeover listener.
#[test]
fn takeover_with_no_running_server_starts_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "a stale socket file");
    let env = [("TAKEOVER_SOCKET", path.to_str().unwrap())];
    let mut server = Server::start_with_args(64, &env, &["--takeover".as_ref()]);
    let ports = TestPorts::new(64);
    let mut src = Src::new(ports.src_sip, ports.sip, "takeover-alone@127.0.0.1");
    let port = src.record_one(ports.src_rtp);
    let rtp = UdpSocket::bind(("127.0.0.1", ports.src_rtp)).unwrap();
    send_pcmu(&rtp, port, &source_audio(65, 1600), 1, 0x7c7c);
    assert_eq!(src.bye().status, 200);
    // The takeover listener answers on the path.
    assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
    assert_eq!(server.stop(), Some(0));
    let log = server.log_text();
    assert!(log.contains("no running server answered"), "{log}");
    assert!(!log.contains("takeover socket unavailable"), "{log}");
    assert!(!path.exists(), "the socket file is removed at exit");
    wait_sessions(&server.recordings(), 1, Duration::from_secs(5));
}

/// `--takeover` while a server runs but does not hand over (here: busy with another
/// takeover) exits with an error, and neither binds nor "recovers" the running server's open
/// recordings. Then a real takeover whose old process is killed while it drains: the new
/// process finishes the recording it left (marked interrupted), once it has gone.
#[test]
fn a_refused_takeover_and_a_killed_old_process_lose_nothing() {
    let notify = Notify::new();
    let mut server = Server::start(65, &[("NOTIFY_SOCKET", notify.path.as_str())]);
    let ports = TestPorts::new(65);
    let mut src = Src::new(ports.src_sip, ports.sip, "takeover-busy@127.0.0.1");
    let port = src.record_one(ports.src_rtp);
    let rtp = UdpSocket::bind(("127.0.0.1", ports.src_rtp)).unwrap();
    send_pcmu(&rtp, port, &source_audio(66, 1600), 1, 0x7d7d);
    // Another "successor" holds the server's takeover socket and never says it is ready.
    let socket = server.recordings().join(".takeover.sock");
    let busy = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let mut refused = siprec_command(&ports, &server.recordings())
        .arg("--takeover")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = refused.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = refused.kill();
            panic!("--takeover against a busy server did not give up in 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut refused.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("did not hand over"), "{stderr}");
    assert!(
        !stderr.contains("interrupted recording finished"),
        "{stderr}"
    );
    drop(busy);
    // The running server's call goes on and ends normally.
    send_pcmu(&rtp, port, &source_audio(67, 800), 11, 0x7d7d);
    assert_eq!(src.bye().status, 200);
    let dir = &wait_sessions(&server.recordings(), 1, Duration::from_secs(5))[0];
    let meta = std::fs::read_to_string(dir.join("session.json")).unwrap();
    assert!(meta.contains("\"end_reason\": \"bye\""), "{meta}");
    assert!(!meta.contains("\"interrupted\": true"), "{meta}");

    // A real takeover; the old process is then killed while its call runs.
    let mut second = Src::new(ports.src_sip + 5, ports.sip, "takeover-killed@127.0.0.1");
    let port2 = second.record_one(ports.src_rtp + 5);
    let rtp2 = UdpSocket::bind(("127.0.0.1", ports.src_rtp + 5)).unwrap();
    send_pcmu(&rtp2, port2, &source_audio(68, 8000), 1, 0x7e7e);
    // (The listener may still be re-arming after the busy connection went.)
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log_text().contains("went away before it was ready") {
        assert!(Instant::now() < deadline, "{}", server.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    server.signal(libc::SIGUSR2);
    let new = wait_mainpid(&notify.socket, &server);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log_text().contains("reading SIP now") {
        assert!(Instant::now() < deadline, "{}", server.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    server.signal(libc::SIGKILL);
    assert_eq!(server.wait_exit(Duration::from_secs(10)), None, "killed");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !server
        .log_text()
        .contains("takeover: the old process has exited")
    {
        assert!(Instant::now() < deadline, "{}", server.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let dirs = wait_sessions(&server.recordings(), 2, Duration::from_secs(10));
    let killed = dirs
        .iter()
        .map(|d| std::fs::read_to_string(d.join("session.json")).unwrap())
        .find(|m| m.contains("takeover-killed"))
        .expect("the killed process's recording finished by the new one");
    assert!(killed.contains("\"interrupted\": true"), "{killed}");
    new.stop();
}

/// A stand-in for systemd's notify socket ($NOTIFY_SOCKET), read with a short timeout.
struct Notify {
    _dir: tempfile::TempDir,
    socket: std::os::unix::net::UnixDatagram,
    path: String,
}

impl Notify {
    fn new() -> Notify {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let path = path.to_str().unwrap().to_owned();
        Notify {
            _dir: dir,
            socket,
            path,
        }
    }
}

/// Waits for the MAINPID= a server sends when it hands over; the new process.
fn wait_mainpid(notify: &std::os::unix::net::UnixDatagram, old: &Server) -> Pid {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "no MAINPID= in 30 s; log:\n{}",
            old.log_text()
        );
        let mut buf = [0u8; 512];
        let Ok(n) = notify.recv(&mut buf) else {
            continue;
        };
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if let Some(pid) = text.lines().find_map(|l| l.strip_prefix("MAINPID=")) {
            let pid = pid.parse::<i32>().unwrap();
            assert_ne!(pid, old.pid());
            return Pid(pid);
        }
    }
}

/// A process this test did not start (the successor a server started): SIGTERM on drop.
struct Pid(i32);

impl Pid {
    /// SIGTERM, then wait until it has gone (it is not our child: watch /proc).
    fn stop(&self) {
        // SAFETY: plain syscall.
        unsafe { libc::kill(self.0, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0));
            // Gone, or a zombie waiting for a parent that does not reap.
            if stat.map_or(true, |s| s.contains(") Z ")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("process {} did not stop on SIGTERM", self.0);
    }
}

impl Drop for Pid {
    fn drop(&mut self) {
        // SAFETY: plain syscall.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// Unmounts a test tmpfs on drop (lazily: a dying server may still hold files).
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Bytes free under `path` (df).
fn avail_bytes(path: &std::path::Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().nth(1).unwrap().trim().parse().unwrap()
}

/// Disk full (RECORDING_DIR on a 4 MiB tmpfs; mounting needs root, so the test is skipped
/// with a message otherwise): the running recording ends with BYE and files that are valid and
/// exact up to the failure; readiness, OPTIONS and new INVITEs say 503; nothing crashes; when
/// space returns the server is ready again and records the next call.
#[test]
fn disk_full_ends_recordings_cleanly_and_refuses_calls() {
    let holder = tempfile::tempdir().unwrap();
    let mnt = holder.path().join("rec");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&mnt)
        .output();
    if !mounted.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED disk_full test: cannot mount a tmpfs (needs root): {mounted:?}");
        return;
    }
    let _tmpfs = Tmpfs(mnt.clone());
    let dir = mnt.display().to_string();
    let server = Server::start(
        54,
        &[("RECORDING_DIR", &dir), ("RECORDING_MIN_FREE_MB", "2")],
    );
    let ports = TestPorts::new(54);
    let mut src = Src::new(ports.src_sip, ports.sip, "diskfull@127.0.0.1");
    let port = src.record_one(ports.src_rtp);
    let rtp = UdpSocket::bind(("127.0.0.1", ports.src_rtp)).unwrap();
    let a = source_audio(21, 8000 * 4);
    let filler = mnt.join("filler");
    let bye = std::thread::scope(|s| {
        s.spawn(|| {
            play(
                &rtp,
                audio_packets(port, 0xD15C, 1, 0, d(0), &a),
                Instant::now(),
            )
        });
        std::thread::sleep(Duration::from_millis(1200));
        // Leave 8 KiB: the recorder's next writes fail with ENOSPC.
        let fill = avail_bytes(&mnt).saturating_sub(8192);
        std::fs::write(&filler, vec![0u8; fill as usize]).unwrap();
        src.wait_request(Duration::from_secs(8))
    });
    let bye = bye.expect("the server ends a call it can no longer record");
    assert_eq!(bye.method, siprec::sip::Method::Bye);
    src.answer_server_request(&bye);
    drop(src); // its SIP port serves the next calls

    // What was written is a valid recording, exact up to where the disk filled.
    let day = std::fs::read_dir(&mnt)
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.'))
        .unwrap()
        .path();
    let session = std::fs::read_dir(day)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let (_, _, leg) = read_wav(&session.join("1.wav")).unwrap();
    let ra = ulaw_roundtrip(&a);
    let p = find(&leg, &ra[..800]).expect("the audio before the disk filled");
    let n = leg.len() - p;
    assert!(n >= 4000, "at least 0.5 s recorded: {n}");
    assert_eq!(&leg[p..], &ra[..n], "exact up to the failure");
    read_wav(&session.join("mixed.wav")).expect("mixed.wav valid too");
    assert!(
        session.join("session.json").exists() || session.join("session.partial.json").exists(),
        "session.json, or its partial copy for recovery"
    );

    // Below RECORDING_MIN_FREE_MB: not ready, OPTIONS and INVITE 503 with Retry-After.
    let (status, _) = http_get(ports.http, "/health/ready").unwrap();
    assert_eq!(status, 503);
    std::thread::sleep(Duration::from_millis(1500)); // the control plane checks each second
    let mut second = Src::new(ports.src_sip, ports.sip, "diskfull-2@127.0.0.1");
    let (ct, body) = siprec_body(1, "sendonly", ports.src_rtp);
    let refused = second.invite(&ct, &body);
    assert_eq!(refused.status, 503);
    assert!(refused.headers.get("Retry-After").is_some());
    drop(second);
    // Counters reach /metrics with the next snapshot (each tick).
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (_, metrics) = http_get(ports.http, "/metrics").unwrap();
        if metrics.contains("siprec_calls_total{outcome=\"rejected_storage\"} 1") {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Space back: ready again, and the next call is recorded.
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while http_get(ports.http, "/health/ready").unwrap().0 != 200 {
        assert!(Instant::now() < deadline, "not ready after space returned");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    let mut third = Src::new(ports.src_sip, ports.sip, "diskfull-3@127.0.0.1");
    let ok = third.invite(&ct, &body);
    assert_eq!(ok.status, 200);
    third.ack();
    let port = answer_ports(&String::from_utf8_lossy(&ok.body))[0];
    let b = source_audio(22, 8000);
    play(
        &rtp,
        audio_packets(port, 0xD15D, 1, 0, d(0), &b),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(third.bye().status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let done = loop {
        let found = wait_sessions(&mnt, 1, Duration::from_secs(1));
        let third = found.into_iter().find(|d| {
            std::fs::read_to_string(d.join("session.json")).is_ok_and(|j| j.contains("diskfull-3@"))
        });
        if let Some(dir) = third {
            break dir;
        }
        assert!(
            Instant::now() < deadline,
            "the call after recovery has no session.json"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let (_, _, leg) = read_wav(&done.join("1.wav")).unwrap();
    assert!(find(&leg, &ulaw_roundtrip(&b)[..800]).is_some());
    drop(server);
}
