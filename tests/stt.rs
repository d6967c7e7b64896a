//! Live transcription end to end with the embedded engine (whisper.cpp, the base model that
//! `.ci/model.sh` installs): a SIPREC call whose two legs carry synthetic English speech
//! (flite, band-limited to 8 kHz by sox, then G.711 µ-law) is transcribed while it runs.
//! A WebSocket client receives partial and final transcripts named after the speaker in the
//! SIPREC metadata, and transcript.json / transcript.vtt land beside the recording.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use siprec::session::analytics::words;
use tokio_tungstenite::tungstenite::Message;

const ALICE: &str = "Thank you for calling the billing department. How can I help you today?";
const BOB: &str = "I would like a refund for the order I placed last week.";
/// Bob also dictates a phone number, which PII redaction (STT_REDACT_PII) must take out.
const BOB_PHONE: &str = " Call me back at five five five, eight six seven, five three zero nine.";

fn model() -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/ggml-base-q8_0.bin");
    assert!(
        path.is_file(),
        "{} missing: run ./.ci/model.sh (./.ci/test does)",
        path.display()
    );
    path
}

/// `text` spoken by flite's `voice`, as 8 kHz mono PCM (sox resamples with a proper filter).
/// (espeak-ng's diphones are too robotic at 8 kHz: Whisper base mishears them even fed
/// directly, which would test the synthesizer rather than the pipeline.)
fn speech(text: &str, voice: &str, dir: &Path) -> Vec<i16> {
    let wide = dir.join(format!("{voice}-wide.wav"));
    let narrow = dir.join(format!("{voice}-8k.wav"));
    let ok = std::process::Command::new("flite")
        .args(["-voice", voice, "-t", text, "-o"])
        .arg(&wide)
        .status()
        .expect("flite (installed by .ci/deps.sh)")
        .success();
    assert!(ok, "flite failed");
    let ok = std::process::Command::new("sox")
        .arg(&wide)
        .args(["-r", "8000", "-c", "1", "-b", "16"])
        .arg(&narrow)
        .status()
        .expect("sox")
        .success();
    assert!(ok, "sox failed");
    let (channels, rate, pcm) = siprec::sink::recorder::read_wav(&narrow).unwrap();
    assert_eq!((channels, rate), (1, 8000));
    pcm
}

/// How many of `expected`'s content words (longer than 3 letters) `heard` contains.
fn content_hits(expected: &str, heard: &str) -> (usize, usize) {
    let heard = words(heard);
    let want: Vec<String> = words(expected)
        .into_iter()
        .filter(|w| w.len() > 3)
        .collect();
    let hits = want.iter().filter(|w| heard.contains(w)).count();
    (hits, want.len())
}

#[test]
fn live_transcripts_name_the_speaker_and_land_with_the_recording() {
    let model = model();
    let model = model.to_str().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // RabbitMQ gets the finals only (PUBLISH_PARTIAL_TRANSCRIPTS=false).
    let exchange = format!("siprec-test-{}-stt", std::process::id());
    let (_conn, ch, queue) = rt.block_on(common::amqp::consumer(&exchange));
    let server = Server::start(
        41,
        &[
            ("STT_PROVIDER", "embedded"),
            ("STT_MODEL", model),
            ("STT_PARTIAL_INTERVAL_MS", "1000"),
            ("ENABLE_REALTIME_AMQP", "true"),
            ("AMQP_EXCHANGE", &exchange),
            ("PUBLISH_PARTIAL_TRANSCRIPTS", "false"),
            ("STT_REDACT_PII", "true"),
            ("ANALYTICS_KEYWORDS", "refund, billing department"),
        ],
    );
    let ports = TestPorts::new(41);
    let alice = speech(ALICE, "awb", server.dir.path());
    let bob = speech(&format!("{BOB}{BOB_PHONE}"), "rms", server.dir.path());

    let url = format!(
        "ws://127.0.0.1:{}/ws/transcriptions?call_id=stt-1@127.0.0.1",
        ports.http
    );
    let mut ws = rt
        .block_on(tokio_tungstenite::connect_async(url))
        .expect("ws connect")
        .0;
    let url = format!(
        "ws://127.0.0.1:{}/ws/analytics?call_id=stt-1@127.0.0.1",
        ports.http
    );
    let mut analytics = rt
        .block_on(tokio_tungstenite::connect_async(url))
        .unwrap()
        .0;

    let mut src = Src::new(ports.src_sip, ports.sip, "stt-1@127.0.0.1");
    let (ct, body) = siprec_body(2, "sendonly", ports.src_rtp);
    // The call's timeline starts at the INVITE; the first packet lands at most `lead` later.
    let invited = Instant::now();
    let answer = src.invite(&ct, &body);
    assert_eq!(answer.status, 200);
    src.ack();
    let media = answer_ports(std::str::from_utf8(&answer.body).unwrap());
    assert_eq!(media.len(), 2);

    // Alice speaks from 0.5 s; Bob answers 2 s after she stops; both legs carry packets
    // (silence when not talking) for the whole call, as a real fork does.
    let rate = 8000usize;
    let bob_at = rate / 2 + alice.len() + 2 * rate;
    let total = bob_at + bob.len() + rate;
    let mut leg_a = vec![0i16; total];
    leg_a[rate / 2..rate / 2 + alice.len()].copy_from_slice(&alice);
    let mut leg_b = vec![0i16; total];
    leg_b[bob_at..bob_at + bob.len()].copy_from_slice(&bob);
    let mut schedule = audio_packets(media[0], 0x1111, 1, 0, Duration::ZERO, &leg_a);
    schedule.extend(audio_packets(
        media[1],
        0x2222,
        1,
        0,
        Duration::ZERO,
        &leg_b,
    ));
    let sock = std::net::UdpSocket::bind(("127.0.0.1", ports.src_rtp)).unwrap();
    let played = Instant::now();
    let lead = (played - invited).as_secs_f64();
    play(&sock, schedule, played);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(src.bye().status, 200);

    // Finals of both legs, on the WebSocket, within a minute (debug builds are slower).
    let mut finals: Vec<serde_json::Value> = Vec::new();
    let mut partials = 0;
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while finals.len() < 2 {
            let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, ws.next()).await else {
                break;
            };
            let Message::Text(t) = m else { continue };
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            match v["type"].as_str() {
                Some("final_transcript") => finals.push(v),
                Some("partial_transcript") => {
                    assert_eq!(v["data"]["is_final"], false);
                    partials += 1;
                }
                _ => {}
            }
        }
    });
    assert_eq!(
        finals.len(),
        2,
        "two final transcripts; log:\n{}",
        server.log_text()
    );
    finals.sort_by_key(|f| f["data"]["stream"].as_u64());
    for (f, (speaker, aor, said)) in finals.iter().zip([
        ("Alice", "sip:alice@example.com", ALICE),
        ("Bob", "sip:bob@example.com", BOB),
    ]) {
        let d = &f["data"];
        assert_eq!(f["call_id"], "stt-1@127.0.0.1");
        assert_eq!(d["is_final"], true);
        assert_eq!(d["speaker_label"], speaker);
        assert_eq!(d["participants"][0], aor);
        let text = d["text"].as_str().unwrap();
        let (hits, of) = content_hits(said, text);
        assert!(
            hits * 10 >= of * 8,
            "{speaker}: {hits}/{of} content words in {text:?}"
        );
        let confidence = d["confidence"].as_f64().unwrap();
        assert!(confidence > 0.3 && confidence <= 1.0, "{confidence}");
    }
    // Text analytics: Bob asked for a refund (a configured keyword); every final carries a
    // sentiment, and the analytics feed gets the keyword event.
    assert_eq!(finals[1]["data"]["keywords"][0], "refund", "{}", finals[1]);
    let label = finals[0]["data"]["sentiment"]["label"].as_str().unwrap();
    assert!(["positive", "neutral", "negative"].contains(&label));
    let keyword = rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let Ok(Some(Ok(Message::Text(t)))) =
                tokio::time::timeout_at(deadline, analytics.next()).await
            else {
                return None;
            };
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            if v["type"] == "keyword_detected" && v["data"]["keyword"] == "refund" {
                return Some(v);
            }
        }
    });
    let keyword = keyword.expect("keyword_detected (refund) on /ws/analytics");
    assert_eq!(
        (
            &keyword["data"]["keyword"],
            &keyword["data"]["speaker_label"]
        ),
        (&"refund".into(), &"Bob".into())
    );
    let bob_text = finals[1]["data"]["text"].as_str().unwrap();
    assert!(bob_text.contains("[REDACTED_PHONE]"), "{bob_text}");
    assert!(
        !bob_text.contains("867") && !bob_text.contains("5309"),
        "{bob_text}"
    );
    // Alice's utterance starts shortly before her speech at 0.5 s after the first packet
    // (200 ms of pre-roll), which came at most `lead` after the call began.
    let start = finals[0]["data"]["start_s"].as_f64().unwrap();
    assert!(
        (0.2..0.6 + lead).contains(&start),
        "Alice starts at {start} s; the first packet came within {lead:.3} s"
    );
    let start_b = finals[1]["data"]["start_s"].as_f64().unwrap();
    let expected_b = bob_at as f64 / rate as f64;
    assert!(
        (expected_b - 0.5..expected_b + 0.5 + lead).contains(&start_b),
        "Bob starts at {start_b} s, spoke at {expected_b} after the first packet, \
         which came within {lead:.3} s"
    );
    assert!(partials >= 1, "partial transcripts while speaking");
    let published = rt.block_on(common::amqp::collect(
        &ch,
        &queue,
        "none",
        Duration::from_secs(3),
    ));
    let mut ids = std::collections::HashSet::new();
    let kinds: Vec<(&str, &str)> = published
        .iter()
        .filter(|(_, v)| ids.insert(v["id"].as_str().unwrap_or("")))
        .map(|(key, v)| (v["type"].as_str().unwrap_or(""), key.as_str()))
        .filter(|(t, _)| t.ends_with("_transcript"))
        .collect();
    assert_eq!(
        kinds,
        [
            (
                "final_transcript",
                "siprec.final_transcript.stt-1@127.0.0.1"
            ),
            (
                "final_transcript",
                "siprec.final_transcript.stt-1@127.0.0.1"
            ),
        ],
        "AMQP: the finals, no partials"
    );

    // Metrics count what happened; /health says who transcribes.
    let (_, metrics) = http_get(ports.http, "/metrics").unwrap();
    assert!(
        metrics.contains("siprec_stt_transcripts_total{kind=\"final\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("siprec_stt_latency_seconds_count{kind=\"final\"} 2"));
    assert!(metrics.contains("siprec_stt_seconds_total{kind=\"audio\"}"));
    assert!(
        metrics.contains("siprec_stt_redactions_total{kind=\"phone\"}"),
        "{metrics}"
    );
    let (_, health) = http_get(ports.http, "/health").unwrap();
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["checks"]["stt"]["status"], "healthy", "{health}");

    // The files: transcript.json in call-time order, WebVTT cues with the speaker's voice.
    let dirs = wait_sessions(&server.recordings(), 1, Duration::from_secs(10));
    let json_path = dirs[0].join("transcript.json");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !json_path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).expect("transcript.json")).unwrap();
    let utterances = doc["utterances"].as_array().unwrap();
    assert_eq!(utterances.len(), 2);
    assert_eq!(utterances[0]["speaker"], "Alice");
    assert_eq!(utterances[1]["speaker"], "Bob");
    let vtt = std::fs::read_to_string(dirs[0].join("transcript.vtt")).unwrap();
    assert!(vtt.starts_with("WEBVTT\n"), "{vtt}");
    assert!(
        vtt.contains("<v Alice>") && vtt.contains("<v Bob>"),
        "{vtt}"
    );
    let session: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dirs[0].join("session.json")).unwrap()).unwrap();
    assert_eq!(session["transcripts"][0], "transcript.json");

    // The STT jobs API, through siprecctl: the recorded mixed.wav transcribed again, both
    // channels, in time order; a path outside the recordings is refused.
    let ctl = |args: &[&str]| -> (i32, serde_json::Value) {
        let url = format!("127.0.0.1:{}", ports.http);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_siprecctl"))
            .args(["--url", &url, "--json"])
            .args(args)
            .output()
            .unwrap();
        let v = serde_json::from_slice(&out.stdout).unwrap_or_default();
        (out.status.code().unwrap_or(-1), v)
    };
    let mixed = dirs[0].join("mixed.wav");
    let (code, submitted) = ctl(&["stt", "submit", mixed.to_str().unwrap(), "--priority", "3"]);
    assert_eq!(
        (code, &submitted["status"]),
        (0, &"queued".into()),
        "{submitted}"
    );
    let job_id = submitted["job_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(90);
    let job = loop {
        let (_, job) = ctl(&["stt", "job", &job_id]);
        if job["status"] == "completed" || job["status"] == "failed" || Instant::now() > deadline {
            break job;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(job["status"], "completed", "{job}");
    let utterances = job["result"]["utterances"].as_array().unwrap();
    assert_eq!(utterances.len(), 2, "{job}");
    assert_eq!(
        (&utterances[0]["channel"], &utterances[1]["channel"]),
        (&0.into(), &1.into())
    );
    let (hits, of) = content_hits(BOB, utterances[1]["text"].as_str().unwrap());
    assert!(
        hits * 10 >= of * 8,
        "job: {hits}/{of} of Bob's words in {job}"
    );
    let (code, refused) = ctl(&["stt", "submit", "/etc/passwd"]);
    assert_eq!(code, 1, "{refused}");
    assert!(refused["error"]["message"]
        .as_str()
        .unwrap()
        .contains("RECORDING_DIR"));
    let job_text = job["result"]["text"].as_str().unwrap();
    assert!(job_text.contains("[REDACTED_PHONE]"), "{job}");
    let (_, listed) = ctl(&["stt", "jobs", "--status", "completed"]);
    assert_eq!(listed["jobs"][0]["job_id"], job_id.as_str());
}

/// A missing model: the server says which command installs it, and still records.
#[test]
fn missing_model_is_reported_and_recording_goes_on() {
    let server = Server::start(
        42,
        &[
            ("STT_PROVIDER", "embedded"),
            ("STT_MODEL", "/nonexistent/ggml-base.bin"),
        ],
    );
    let ports = TestPorts::new(42);
    let log = server.log_text();
    assert!(log.contains(".ci/model.sh"), "{log}");
    let (code, health) = http_get(ports.http, "/health").unwrap();
    assert_eq!(code, 200, "degraded, not unhealthy: {health}");
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    let stt = &health["checks"]["stt"];
    assert_eq!(stt["status"], "degraded", "{health}");
    assert!(
        stt["message"].as_str().unwrap().contains(".ci/model.sh"),
        "{stt}"
    );
    let mut src = Src::new(ports.src_sip, ports.sip, "stt-2@127.0.0.1");
    let (ct, body) = siprec_body(1, "sendonly", ports.src_rtp);
    assert_eq!(src.invite(&ct, &body).status, 200);
    src.ack();
    assert_eq!(src.bye().status, 200);
    let dirs = wait_sessions(&server.recordings(), 1, Duration::from_secs(10));
    assert!(dirs[0].join("1.wav").exists());
    // No engine: STT jobs are refused with 503, and the queue still answers.
    let body = format!(r#"{{"audio_path":"{}"}}"#, dirs[0].join("1.wav").display());
    let (code, text) = http(ports.http, "POST", "/api/stt/submit", &[], &body);
    assert_eq!(code, 503, "{text}");
    assert!(text.contains(".ci/model.sh"), "{text}");
    assert_eq!(http_get(ports.http, "/api/stt/jobs").unwrap().0, 200);
}

/// A Whisper-backed stand-in for a cloud provider (tests/tools/*_whisper_server.py): started
/// on `port`, killed on drop.
struct ProviderServer(std::process::Child);

impl ProviderServer {
    fn start(script: &str, port: &str, extra: &[&str]) -> ProviderServer {
        let home = std::env::var("HOME").unwrap();
        let ct2 = std::env::var("SIPREC_MODEL_CACHE")
            .map(|c| format!("{c}/ct2"))
            .unwrap_or_else(|_| format!("{home}/.cache/siprec-model/ct2"));
        assert!(
            Path::new(&ct2).join("model.bin").is_file(),
            "{ct2}/model.bin missing: run ./.ci/model.sh as this user"
        );
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut child = std::process::Command::new(root.join(".venv/bin/python"))
            .arg(root.join("tests/tools").join(script))
            .args([port, &ct2])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the .venv from .ci/deps.sh with faster-whisper");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready", "{script} did not start");
        ProviderServer(child)
    }
}

impl Drop for ProviderServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One call whose single leg says ALICE through a server using `env`'s provider: the final
/// transcript event.
fn one_call_final(slot: u16, env: &[(&str, &str)], call_id: &str) -> serde_json::Value {
    let mut all = vec![("STT_PARTIAL_INTERVAL_MS", "0")];
    all.extend_from_slice(env);
    let server = Server::start(slot, &all);
    let ports = TestPorts::new(slot);
    let alice = speech(ALICE, "awb", server.dir.path());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = format!("ws://127.0.0.1:{}/ws/transcriptions", ports.http);
    let mut ws = rt
        .block_on(tokio_tungstenite::connect_async(url))
        .unwrap()
        .0;
    let mut src = Src::new(ports.src_sip, ports.sip, call_id);
    let (ct, body) = siprec_body(1, "sendonly", ports.src_rtp);
    let answer = src.invite(&ct, &body);
    assert_eq!(answer.status, 200);
    src.ack();
    let media = answer_ports(std::str::from_utf8(&answer.body).unwrap());
    let mut leg = vec![0i16; 4000];
    leg.extend_from_slice(&alice);
    leg.extend(std::iter::repeat_n(0, 8000));
    let schedule = audio_packets(media[0], 0x3333, 1, 0, Duration::ZERO, &leg);
    let sock = std::net::UdpSocket::bind(("127.0.0.1", ports.src_rtp)).unwrap();
    play(&sock, schedule, Instant::now());
    assert_eq!(src.bye().status, 200);
    let final_ = rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let Ok(Some(Ok(Message::Text(t)))) = tokio::time::timeout_at(deadline, ws.next()).await
            else {
                return None;
            };
            let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
            if v["type"] == "final_transcript" {
                return Some(v);
            }
        }
    });
    final_.unwrap_or_else(|| panic!("no final transcript; log:\n{}", server.log_text()))
}

fn assert_heard_alice(final_: &serde_json::Value, provider: &str) {
    let d = &final_["data"];
    assert_eq!(
        (&d["provider"], &d["speaker_label"]),
        (&provider.into(), &"Alice".into())
    );
    let text = d["text"].as_str().unwrap();
    let (hits, of) = content_hits(ALICE, text);
    assert!(hits * 10 >= of * 8, "{hits}/{of} content words in {text:?}");
    let confidence = d["confidence"].as_f64().unwrap();
    assert!(confidence > 0.3 && confidence <= 1.0, "{confidence}");
}

/// The `openai` provider against a real OpenAI-compatible server: faster-whisper on the same
/// Whisper base weights, which refuses the first request with 503 (the retry is exercised)
/// and checks the Bearer key.
#[test]
fn openai_provider_transcribes_through_a_real_server() {
    let _whisper = ProviderServer::start(
        "openai_whisper_server.py",
        "22143",
        &["--api-key", "sk-test", "--fail-first", "1"],
    );
    let env = [
        ("STT_PROVIDER", "openai"),
        ("STT_OPENAI_URL", "http://127.0.0.1:22143/v1"),
        ("STT_OPENAI_API_KEY", "sk-test"),
    ];
    assert_heard_alice(&one_call_final(43, &env, "stt-3@127.0.0.1"), "openai");
}

/// The `deepgram` provider against a real server speaking Deepgram's live protocol
/// (WebSocket /v1/listen, linear16 frames, CloseStream, Results) with faster-whisper on the
/// same weights, which checks the Token key and the audio format.
#[test]
fn deepgram_provider_transcribes_through_a_real_server() {
    let _whisper = ProviderServer::start(
        "deepgram_whisper_server.py",
        "22144",
        &["--api-key", "dg-test"],
    );
    let env = [
        ("STT_PROVIDER", "deepgram"),
        ("STT_DEEPGRAM_URL", "ws://127.0.0.1:22144/v1/listen"),
        ("STT_DEEPGRAM_API_KEY", "dg-test"),
    ];
    assert_heard_alice(&one_call_final(44, &env, "stt-4@127.0.0.1"), "deepgram");
}
