//! Three siprec nodes sharing a real Redis (issue 11): the cluster-wide session view, per-call
//! requests routed to the owning node, a killed node leaving the registry, and a Redis outage
//! mid-call that degrades /health and nothing else.

mod common;

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use siprec::sink::recorder::read_wav;

/// The test's own Redis (it is stopped and restarted mid-call), on a port no other test uses.
const REDIS_PORT: u16 = 19190;
const KEY: &str = "cluster-test-key";

struct Redis(Child);

impl Redis {
    fn start() -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &REDIS_PORT.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (installed by .ci/deps.sh)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", REDIS_PORT)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis(child)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One call on `server`: its SRC, RTP socket and the port the server answered.
struct Call {
    src: Src,
    rtp: UdpSocket,
    port: u16,
    seq: u16,
}

fn call(server: &Server, call_id: &str) -> Call {
    let rtp = UdpSocket::bind(("127.0.0.1", 0)).unwrap();
    let mut src = Src::new(0, server.ports.sip, call_id);
    let port = src.record_one(rtp.local_addr().unwrap().port());
    Call {
        src,
        rtp,
        port,
        seq: 0,
    }
}

impl Call {
    /// Sends `audio` as paced 20 ms PCMU packets, continuing the sequence.
    fn talk(&mut self, audio: &[i16]) {
        send_pcmu(&self.rtp, self.port, audio, self.seq, 0xC1A5);
        self.seq = self.seq.wrapping_add(audio.len().div_ceil(160) as u16);
    }
}

fn get_json(port: u16, path: &str) -> (u16, Value) {
    let (status, body) = http(port, "GET", path, &[], "");
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, v)
}

fn post(port: u16, path: &str, key: Option<&str>) -> (u16, Value) {
    let headers: Vec<(&str, &str)> = key.map(|k| ("X-API-Key", k)).into_iter().collect();
    let (status, body) = http(port, "POST", path, &headers, "");
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Polls `path` on `port` until `done` holds for its JSON, for at most `secs`.
fn wait_json(port: u16, path: &str, secs: u64, done: impl Fn(u16, &Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (status, v) = get_json(port, path);
        if done(status, &v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{path} on {port}: still {status} {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn node_ids(v: &Value) -> Vec<String> {
    let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
    nodes
        .iter()
        .map(|n| n["node"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn paused(port: u16, call_id: &str) -> bool {
    let (status, v) = get_json(port, &format!("/api/sessions/{call_id}/pause-status"));
    assert_eq!(status, 200, "{v}");
    v["is_paused"]
        .as_bool()
        .unwrap_or_else(|| panic!("is_paused in {v}"))
}

#[test]
fn three_nodes_share_sessions_route_requests_and_survive_redis_loss() {
    let mut redis = Redis::start();
    let url = format!("redis://127.0.0.1:{REDIS_PORT}");
    let node = |slot: u16, id: &str| {
        Server::start(
            slot,
            &[
                ("REDIS_URL", url.as_str()),
                ("CLUSTER_NODE_ID", id),
                ("CLUSTER_TTL", "5"),
                ("API_KEY", KEY),
            ],
        )
    };
    let mut a = node(59, "node-a");
    let b = node(60, "node-b");
    let mut c = node(61, "node-c");
    let (ha, hb, hc) = (a.ports.http, b.ports.http, c.ports.http);

    let mut call_a = call(&a, "cl-a@127.0.0.1");
    let mut call_b = call(&b, "cl-b@127.0.0.1");
    let _call_c = call(&c, "cl-c@127.0.0.1");

    // Any node lists every node's sessions, each with its owner.
    let all = "/api/sessions?scope=cluster";
    let v = wait_json(hb, all, 10, |s, v| s == 200 && v["count"] == 3);
    assert_eq!(node_ids(&v), ["node-a", "node-b", "node-c"]);
    for s in v["sessions"].as_array().unwrap() {
        let owner = s["call_id"].as_str().unwrap()[3..4].to_owned();
        assert_eq!(s["node"], format!("node-{owner}"), "{s}");
        assert_eq!(s["participants"].as_array().map(Vec::len), Some(2), "{s}");
    }
    let (status, local) = get_json(hb, "/api/sessions");
    assert_eq!((status, local["count"].as_u64()), (200, Some(1)), "{local}");
    let (_, stats) = get_json(hc, "/api/sessions/stats?scope=cluster");
    assert_eq!(
        (stats["active_calls"].as_u64(), stats["nodes"].as_u64()),
        (Some(3), Some(3))
    );
    let (status, _) = get_json(ha, "/api/sessions?scope=galaxy");
    assert_eq!(status, 400);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_siprecctl"))
        .env_clear()
        .args([
            "--url",
            &format!("127.0.0.1:{ha}"),
            "sessions",
            "list",
            "--cluster",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let row = text.lines().find(|l| l.contains("cl-c@")).unwrap_or("");
    assert!(
        row.starts_with("node-c "),
        "siprecctl shows the owner:\n{text}"
    );

    // Pause and resume a's call through c and b; a's own view follows.
    assert!(!paused(ha, "cl-a@127.0.0.1"));
    let (status, v) = post(hc, "/api/sessions/cl-a@127.0.0.1/pause", Some(KEY));
    assert_eq!(status, 200, "{v}");
    assert!(paused(ha, "cl-a@127.0.0.1"), "paused on its owner");
    assert!(paused(hb, "cl-a@127.0.0.1"), "a read through another node");
    let (status, v) = post(hb, "/api/sessions/cl-a@127.0.0.1/resume", Some(KEY));
    assert_eq!(status, 200, "{v}");
    assert!(!paused(ha, "cl-a@127.0.0.1"));
    let (status, _) = post(hc, "/api/sessions/cl-a@127.0.0.1/pause", None);
    assert_eq!(status, 401, "credentials are checked before forwarding");
    let (status, _) = post(hc, "/api/sessions/nobody@127.0.0.1/pause", Some(KEY));
    assert_eq!(status, 404);

    // A node killed mid-call leaves the registry, with its session, after its TTL.
    c.signal(9);
    c.wait_exit(Duration::from_secs(5));
    let v = wait_json(ha, all, 15, |s, v| s == 200 && v["count"] == 2);
    assert_eq!(node_ids(&v), ["node-a", "node-b"]);

    // Redis lost mid-call: /health degrades, readiness and the recording do not.
    let first: Vec<i16> = source_audio(7, 8000);
    call_a.talk(&first);
    let _ = redis.0.kill();
    let _ = redis.0.wait();
    let second: Vec<i16> = source_audio(8, 12_000);
    call_a.talk(&second);
    let health = wait_json(ha, "/health", 10, |_, v| {
        v["checks"]["redis"]["status"] == "degraded"
    });
    assert_eq!(health["status"], "degraded", "{health}");
    let (status, _) = http(ha, "GET", "/health/ready", &[], "");
    assert_eq!(status, 200, "readiness does not depend on Redis");
    let (status, v) = get_json(ha, all);
    assert_eq!(
        (status, &v["error"]["code"]),
        (503, &Value::from("cluster_unavailable"))
    );

    // Redis back (empty): the nodes publish everything again.
    redis = Redis::start();
    let v = wait_json(hb, all, 10, |s, v| s == 200 && v["count"] == 2);
    assert_eq!(node_ids(&v), ["node-a", "node-b"]);
    let health = wait_json(ha, "/health", 10, |_, v| {
        v["checks"]["redis"]["status"] == "healthy"
    });
    assert_eq!(health["checks"]["redis"]["status"], "healthy");
    // A flush no heartbeat notices as an error: the session hash is rewritten anyway.
    let flushed = Command::new("redis-cli")
        .args(["-p", &REDIS_PORT.to_string(), "FLUSHALL"])
        .output()
        .unwrap();
    assert!(flushed.status.success());
    let v = wait_json(hb, all, 10, |s, v| s == 200 && v["count"] == 2);
    assert_eq!(node_ids(&v), ["node-a", "node-b"]);

    // The call recorded straight through the outage.
    assert_eq!(call_a.src.bye().status, 200);
    let sessions = wait_sessions(&a.recordings(), 1, Duration::from_secs(10));
    let dir = &sessions[0];
    let meta: Value =
        serde_json::from_slice(&std::fs::read(dir.join("session.json")).unwrap()).unwrap();
    assert_eq!(meta["streams"][0]["rtp"]["lost"], 0, "{meta}");
    let (_, _, leg) = read_wav(&dir.join("1.wav")).unwrap();
    let want: Vec<i16> = ulaw_roundtrip(&[first, second].concat());
    assert!(find(&leg, &want).is_some(), "every sample, in place");

    // GDPR erase asked of node a reaches the node that holds the recording.
    assert_eq!(call_b.src.bye().status, 200);
    let b_sessions = wait_sessions(&b.recordings(), 1, Duration::from_secs(10));
    let erase = |port: u16| {
        http(
            port,
            "POST",
            "/api/compliance/gdpr/erase",
            &[("X-API-Key", KEY), ("Content-Type", "application/json")],
            r#"{"call_id": "cl-b@127.0.0.1"}"#,
        )
    };
    let (status, body) = erase(ha);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["erased_recording_sessions"], 1, "{v}");
    assert_eq!(v["nodes"]["node-b"]["erased_recording_sessions"], 1, "{v}");
    assert_eq!(v["nodes"]["node-a"]["status"], "not_found", "{v}");
    assert!(!b_sessions[0].exists(), "erased on the node that held it");
    assert_eq!(erase(hb).0, 404, "nothing left anywhere");

    // A node that stops cleanly leaves at once (no TTL wait needed, but none asserted).
    a.stop();
    let v = wait_json(hb, all, 10, |s, v| {
        s == 200 && v["nodes"].as_array().map(Vec::len) == Some(1)
    });
    assert_eq!(node_ids(&v), ["node-b"]);
    drop(redis);
}
