//! `/ws/transcriptions` and `/ws/analytics` over real WebSocket clients (tokio-tungstenite):
//! call events with and without a `call_id` filter, token auth with API_KEY, a malformed
//! client frame, a plain HTTP GET, 200 concurrent clients, JWT bearer tokens and protected
//! read-only routes, and slow clients (drop_oldest and disconnect).

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

type Client =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(port: u16, path: &str) -> Client {
    let url = format!("ws://127.0.0.1:{port}{path}");
    let (ws, resp) = tokio_tungstenite::connect_async(url)
        .await
        .expect("ws connect");
    assert_eq!(resp.status(), 101);
    ws
}

/// The next JSON text message (pings skipped), or None on close/timeout.
async fn next_json(ws: &mut Client, timeout: Duration) -> Option<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next()).await.ok()??;
        match m {
            Ok(Message::Text(t)) => return serde_json::from_str(t.as_str()).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// Types of the messages until `until` (included) or the timeout.
async fn types_until(ws: &mut Client, until: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(v) = next_json(ws, Duration::from_secs(5)).await {
        let t = v["type"].as_str().unwrap_or("").to_owned();
        out.push(t.clone());
        if t == until {
            break;
        }
    }
    out
}

fn call(ports: &TestPorts, call_id: &str) {
    let mut src = Src::new(ports.src_sip, ports.sip, call_id);
    let (ct, body) = siprec_body(1, "sendonly", ports.src_rtp);
    assert_eq!(src.invite(&ct, &body).status, 200);
    src.ack();
    assert_eq!(src.bye().status, 200);
}

/// Filters, feeds, many clients: every client gets `connected`, then exactly the events of
/// the calls it asked for, in order.
#[test]
fn events_reach_every_client_with_filters() {
    let rt = runtime();
    let server = Server::start(32, &[("HTTP_RATE_LIMIT", "0")]);
    let ports = TestPorts::new(32);
    rt.block_on(async {
        let mut all = connect(ports.http, "/ws/transcriptions").await;
        let mut mine = connect(
            ports.http,
            "/ws/analytics?call_id=ws-2@127.0.0.1&session_id=me",
        )
        .await;
        let hello = next_json(&mut mine, Duration::from_secs(5)).await.unwrap();
        assert_eq!(hello["type"], "connected");
        assert_eq!(hello["feed"], "analytics");
        assert_eq!(hello["session_id"], "me");
        assert_eq!(
            next_json(&mut all, Duration::from_secs(5)).await.unwrap()["type"],
            "connected"
        );
        let mut crowd = Vec::new();
        for _ in 0..200 {
            let mut c = connect(ports.http, "/ws/transcriptions").await;
            assert_eq!(
                next_json(&mut c, Duration::from_secs(5)).await.unwrap()["type"],
                "connected"
            );
            crowd.push(c);
        }
        let p = TestPorts::new(32);
        tokio::task::spawn_blocking(move || {
            call(&p, "ws-1@127.0.0.1");
            call(&p, "ws-2@127.0.0.1");
        })
        .await
        .unwrap();
        let seen = types_until(&mut all, "call_ended").await;
        assert_eq!(
            seen,
            ["call_started", "call_ended"],
            "first call, unfiltered"
        );
        let next = next_json(&mut all, Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            (next["type"].as_str(), next["call_id"].as_str()),
            (Some("call_started"), Some("ws-2@127.0.0.1"))
        );
        let filtered = next_json(&mut mine, Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            filtered["call_id"], "ws-2@127.0.0.1",
            "the filter skips ws-1"
        );
        assert_eq!(filtered["type"], "call_started");
        for c in crowd.iter_mut() {
            let v = next_json(c, Duration::from_secs(5)).await.unwrap();
            assert_eq!(
                (v["type"].as_str(), v["call_id"].as_str()),
                (Some("call_started"), Some("ws-1@127.0.0.1"))
            );
        }
        let (_, health) = http_get(ports.http, "/health").unwrap();
        let h: serde_json::Value = serde_json::from_str(&health).unwrap();
        assert_eq!(h["checks"]["websocket"]["status"], "healthy", "{h}");
        assert!(h["checks"]["websocket"]["message"]
            .as_str()
            .unwrap()
            .starts_with("202 of"));
        let (_, metrics) = http_get(ports.http, "/metrics").unwrap();
        assert!(
            metrics.contains("siprec_websocket_clients 202"),
            "{metrics}"
        );
        // A client-level ping is answered.
        mine.send(Message::Text(r#"{"type":"ping"}"#.into()))
            .await
            .unwrap();
        let mut got_pong = false;
        while let Some(v) = next_json(&mut mine, Duration::from_secs(5)).await {
            if v["type"] == "pong" {
                got_pong = true;
                break;
            }
        }
        assert!(got_pong);
    });
    drop(server);
}

/// API_KEY set: no token → error message and close 1008; the right token (query or Bearer)
/// is served. A malformed client frame gets an error and close 1007. A plain GET gets 426.
#[test]
fn auth_malformed_frames_and_plain_http() {
    let rt = runtime();
    let _server = Server::start(33, &[("API_KEY", "sekret")]);
    let ports = TestPorts::new(33);
    rt.block_on(async {
        let mut anon = connect(ports.http, "/ws/transcriptions").await;
        let err = next_json(&mut anon, Duration::from_secs(5)).await.unwrap();
        assert_eq!(err["type"], "error");
        assert!(err["message"].as_str().unwrap().contains("token"));
        let close = tokio::time::timeout(Duration::from_secs(5), anon.next())
            .await
            .unwrap();
        match close {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1008),
            other => panic!("expected close 1008, got {other:?}"),
        }

        let mut ok = connect(ports.http, "/ws/transcriptions?token=sekret").await;
        assert_eq!(
            next_json(&mut ok, Duration::from_secs(5)).await.unwrap()["type"],
            "connected"
        );
        ok.send(Message::Text("not json".into())).await.unwrap();
        let err = next_json(&mut ok, Duration::from_secs(5)).await.unwrap();
        assert_eq!(err["type"], "error");
        match tokio::time::timeout(Duration::from_secs(5), ok.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1007),
            other => panic!("expected close 1007, got {other:?}"),
        }

        let url = format!("ws://127.0.0.1:{}/ws/analytics", ports.http);
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)
                .unwrap();
        req.headers_mut()
            .insert("Authorization", "Bearer sekret".parse().unwrap());
        let (mut bearer, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(
            next_json(&mut bearer, Duration::from_secs(5))
                .await
                .unwrap()["type"],
            "connected"
        );
    });
    let (status, body) = http_get(ports.http, "/ws/transcriptions").unwrap();
    assert_eq!(status, 426, "{body}");
    assert!(body.contains("websocket_required"));
}

/// Talk analytics from the recorded audio: leg 1 talks 0–1 s, leg 2 1.2–2.2 s, then quiet.
/// `/ws/analytics` gets speaker changes (leg 1, then leg 2) and a final snapshot whose talk
/// times, dead air and talk ratio match; session.json keeps the same figures.
#[test]
fn talk_analytics_from_audio() {
    let rt = runtime();
    let server = Server::start(34, &[("HTTP_RATE_LIMIT", "0")]);
    let ports = TestPorts::new(34);
    rt.block_on(async {
        let mut ws = connect(ports.http, "/ws/analytics?call_id=talk@127.0.0.1").await;
        assert_eq!(
            next_json(&mut ws, Duration::from_secs(5)).await.unwrap()["type"],
            "connected"
        );
        let p = TestPorts::new(34);
        tokio::task::spawn_blocking(move || {
            let mut src = Src::new(p.src_sip, p.sip, "talk@127.0.0.1");
            let (ct, body) = siprec_body(2, "sendonly", p.src_rtp);
            let ok = src.invite(&ct, &body);
            assert_eq!(ok.status, 200);
            src.ack();
            let rtp_ports = answer_ports(&String::from_utf8_lossy(&ok.body));
            let sock = std::net::UdpSocket::bind(("127.0.0.1", p.src_rtp)).unwrap();
            let a = source_audio(1, 8000);
            let b = source_audio(2, 8000);
            let mut plan = audio_packets(rtp_ports[0], 0x1111, 1, 0, Duration::ZERO, &a);
            plan.extend(audio_packets(
                rtp_ports[1],
                0x2222,
                1,
                0,
                Duration::from_millis(1200),
                &b,
            ));
            plan.sort_by_key(|s| s.at);
            let t0 = std::time::Instant::now();
            play(&sock, plan, t0);
            std::thread::sleep(Duration::from_millis(3000).saturating_sub(t0.elapsed()));
            assert_eq!(src.bye().status, 200);
        })
        .await
        .unwrap();
        let mut speakers = Vec::new();
        let snapshot = loop {
            let v = next_json(&mut ws, Duration::from_secs(10))
                .await
                .expect("final snapshot");
            match v["type"].as_str() {
                Some("speaker_change") => speakers.push(v["data"]["stream"].as_u64()),
                Some("snapshot") if v["data"]["final"] == true => break v,
                _ => {}
            }
        };
        assert_eq!(
            speakers.iter().flatten().copied().collect::<Vec<_>>(),
            [0, 1],
            "{speakers:?}"
        );
        let d = &snapshot["data"];
        let talk = |i: usize| d["talk_time"][i]["seconds"].as_f64().unwrap();
        // 1 s of audio each, plus the 0.2 s hangover after the last word.
        assert!((1.0..=1.4).contains(&talk(0)), "{d}");
        assert!((1.0..=1.4).contains(&talk(1)), "{d}");
        let ratio = d["agent_metrics"]["talk_ratio"].as_f64().unwrap();
        assert!((0.4..=0.6).contains(&ratio), "{d}");
        let dead = d["agent_metrics"]["dead_air_seconds"].as_f64().unwrap();
        assert!(
            (0.4..=1.2).contains(&dead),
            "quiet after 2.4 s until the BYE: {d}"
        );
        assert_eq!(
            d["talk_time"][0]["participants"][0],
            "sip:alice@example.com"
        );
    });
    let sessions = wait_sessions(&server.recordings(), 1, Duration::from_secs(10));
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sessions[0].join("session.json")).unwrap()).unwrap();
    assert_eq!(meta["analytics"]["final"], true, "{meta}");
}

/// Signs `claims` as an RS256 JWT with the `openssl` command-line tool: an implementation
/// independent of the server's verifier.
fn rs256_token(key: &std::path::Path, claims: &serde_json::Value) -> String {
    use siprec::api::auth::b64url_encode;
    let input = format!(
        "{}.{}",
        b64url_encode(br#"{"alg":"RS256","typ":"JWT"}"#),
        b64url_encode(claims.to_string().as_bytes())
    );
    let mut child = std::process::Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("openssl");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    format!("{input}.{}", b64url_encode(&out.stdout))
}

/// JWT (RS256, key from `openssl genrsa`) and API keys from `API_KEYS` on HTTP and WebSocket;
/// `AUTH_PROTECT_READS` closes read-only routes but not the probes; expired, foreign-issuer
/// and tampered tokens get 403 with the reason, no credential 401.
#[test]
fn jwt_tokens_and_protected_reads() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let public = dir.path().join("public.pem");
    let ok = std::process::Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    let ok = std::process::Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&public)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    let rt = runtime();
    let _server = Server::start(
        45,
        &[
            ("API_KEYS", "ops-key, dash-key"),
            ("AUTH_JWT_PUBLIC_KEY_FILE", public.to_str().unwrap()),
            ("AUTH_JWT_ISSUER", "idp.example"),
            ("AUTH_PROTECT_READS", "true"),
        ],
    );
    let ports = TestPorts::new(45);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let good = rs256_token(&key, &json!({"iss": "idp.example", "exp": now + 600}));
    let expired = rs256_token(&key, &json!({"iss": "idp.example", "exp": now - 600}));
    let foreign = rs256_token(&key, &json!({"iss": "evil.example", "exp": now + 600}));
    let tampered = {
        let (head, sig) = good.rsplit_once('.').unwrap();
        let (h, _) = head.split_once('.').unwrap();
        let claims = json!({"iss": "idp.example", "exp": now + 600, "admin": true});
        let payload = siprec::api::auth::b64url_encode(claims.to_string().as_bytes());
        format!("{h}.{payload}.{sig}")
    };

    for probe in ["/health/live", "/health/ready", "/health"] {
        let (status, body) = http(ports.http, "GET", probe, &[], "");
        assert!(status == 200 || status == 503, "{probe}: {status} {body}");
    }
    let (status, body) = http(ports.http, "GET", "/api/sessions", &[], "");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("\"code\":\"unauthorized\""), "{body}");
    let bearer = format!("Bearer {good}");
    let (status, body) = http(
        ports.http,
        "GET",
        "/api/sessions",
        &[("Authorization", &bearer)],
        "",
    );
    assert_eq!(status, 200, "{body}");
    let (status, _) = http(
        ports.http,
        "GET",
        "/status",
        &[("X-API-Key", "dash-key")],
        "",
    );
    assert_eq!(status, 200);
    let (status, _) = http(ports.http, "GET", "/metrics?api_key=ops-key", &[], "");
    assert_eq!(status, 200);
    for (token, why) in [
        (&expired, "expired"),
        (&foreign, "issuer"),
        (&tampered, "signature"),
    ] {
        let h = format!("Bearer {token}");
        let (status, body) = http(
            ports.http,
            "GET",
            "/api/sessions",
            &[("Authorization", &h)],
            "",
        );
        assert_eq!(status, 403, "{why}: {body}");
        assert!(body.contains(why), "{why}: {body}");
    }
    let (status, body) = http(
        ports.http,
        "POST",
        "/api/sessions/pause-all",
        &[("Authorization", &bearer)],
        "",
    );
    assert_eq!(status, 200, "{body}");

    rt.block_on(async {
        let path = format!("/ws/transcriptions?token={good}");
        let mut ws = connect(ports.http, &path).await;
        let hello = next_json(&mut ws, Duration::from_secs(5)).await.unwrap();
        assert_eq!(hello["type"], "connected");
        let path = format!("/ws/analytics?token={expired}");
        let mut ws = connect(ports.http, &path).await;
        let err = next_json(&mut ws, Duration::from_secs(5)).await.unwrap();
        assert_eq!(err["type"], "error");
        assert_eq!(err["message"], "token expired");
    });
}

/// A WebSocket client whose socket receives into a 4 KiB buffer: once it stops reading, the
/// server's writes to it stall after a few KiB.
async fn connect_small_window(port: u16, path: &str) -> Client {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    socket.connect(&addr.into()).unwrap();
    socket.set_nonblocking(true).unwrap();
    let stream = tokio::net::TcpStream::from_std(socket.into()).unwrap();
    let url = format!("ws://127.0.0.1:{port}{path}");
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (ws, resp) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    assert_eq!(resp.status(), 101);
    ws
}

/// Every message until the socket ends or `until` arrives or 10 s pass.
async fn read_all(ws: &mut Client, until: &str) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    while let Some(v) = next_json(ws, Duration::from_secs(10)).await {
        let done = v["type"] == until;
        out.push(v);
        if done {
            break;
        }
    }
    out
}

fn metric(port: u16, name: &str) -> u64 {
    let (_, text) = http(port, "GET", "/metrics", &[], "");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Re-INVITEs (hold, resume: two events each) until `name` counts something; returns how
/// many were sent. Bounded.
fn churn_until(ports: &TestPorts, src: &mut Src, name: &str) -> usize {
    for n in 1..=1500 {
        let dir = if n % 2 == 1 { "inactive" } else { "sendonly" };
        let (ct, body) = siprec_body(2, dir, ports.src_rtp);
        assert_eq!(src.invite(&ct, &body).status, 200);
        src.ack();
        if n % 10 == 0 && metric(ports.http, name) > 0 {
            return n;
        }
    }
    panic!("{name} stayed 0 after 1500 re-INVITEs");
}

/// A client that stops reading: with `drop_oldest` it later gets a `gap` message, and what it
/// saw plus what it lost is exactly what a reading client got; with `disconnect` it is cut
/// off. Either way the reading client misses nothing and the server never waits for the slow
/// one (WS_CLIENT_QUEUE=8).
#[test]
fn slow_client_loses_oldest_or_is_disconnected() {
    let rt = runtime();
    for mode in ["drop_oldest", "disconnect"] {
        let server = Server::start(
            47,
            &[
                ("WS_CLIENT_QUEUE", "8"),
                ("WS_SLOW_CLIENT", mode),
                ("HTTP_RATE_LIMIT", "0"),
            ],
        );
        let ports = TestPorts::new(47);
        rt.block_on(async {
            let mut fast = connect(ports.http, "/ws/transcriptions").await;
            let mut slow = connect_small_window(ports.http, "/ws/transcriptions").await;
            assert_eq!(read_all(&mut slow, "connected").await.len(), 1);
            assert_eq!(read_all(&mut fast, "connected").await.len(), 1);
            let fast_reader = tokio::spawn(async move { read_all(&mut fast, "call_ended").await });
            let p = TestPorts::new(47);
            let counter = match mode {
                "drop_oldest" => "siprec_websocket_events_dropped_total",
                _ => "siprec_websocket_slow_disconnects_total",
            };
            let reinvites = tokio::task::spawn_blocking(move || {
                let mut src = Src::new(p.src_sip, p.sip, "slow@127.0.0.1");
                let (ct, body) = siprec_body(2, "sendonly", p.src_rtp);
                assert_eq!(src.invite(&ct, &body).status, 200);
                src.ack();
                let n = churn_until(&p, &mut src, counter);
                assert_eq!(src.bye().status, 200);
                n
            })
            .await
            .unwrap();
            let got = fast_reader.await.unwrap();
            let kinds =
                |v: &[serde_json::Value], k: &str| v.iter().filter(|m| m["type"] == k).count();
            assert_eq!(kinds(&got, "gap"), 0, "the reading client lost nothing");
            assert_eq!(kinds(&got, "hold") + kinds(&got, "resume"), 2 * reinvites);
            assert_eq!(got.last().unwrap()["type"], "call_ended");

            let seen = read_all(&mut slow, "call_ended").await;
            if mode == "drop_oldest" {
                let lost: u64 = seen
                    .iter()
                    .filter(|m| m["type"] == "gap")
                    .map(|m| m["data"]["lost"].as_u64().unwrap())
                    .sum();
                assert!(lost > 0);
                let events = seen.iter().filter(|m| m["type"] != "gap").count() as u64;
                assert_eq!(events + lost, got.len() as u64, "seen + lost = everything");
                assert_eq!(seen.last().unwrap()["type"], "call_ended");
                let counted = metric(ports.http, "siprec_websocket_events_dropped_total");
                assert_eq!(counted, lost);
            } else {
                assert!(seen.len() < got.len(), "cut off before the end");
                assert!(seen.iter().all(|m| m["type"] != "call_ended"));
            }
        });
        drop(server);
    }
}
