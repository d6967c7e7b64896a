//! Call events on AMQP against the RabbitMQ running on 127.0.0.1:5672 (guest/guest): a
//! consumer bound to the exchange gets every event of a scripted call, in order; then the
//! broker connection is cut mid-call through a TCP proxy and restored, and nothing is lost;
//! amqps:// through a TLS-terminating proxy checks the broker certificate.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::amqp::{collect, consumer, BROKER};
use common::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn hold_body(src_rtp: u16, direction: &str) -> (String, String) {
    siprec_body(2, direction, src_rtp)
}

/// Types of `events` with duplicates (same id, at-least-once) removed.
fn types(events: &[(String, serde_json::Value)]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    events
        .iter()
        .filter(|(_, v)| seen.insert(v["id"].as_str().unwrap_or("").to_owned()))
        .map(|(_, v)| v["type"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// A call with hold and resume: every lifecycle event arrives once, in order, with the
/// routing key `siprec.<event>.<call-id>`, a versioned schema and increasing ids.
#[test]
fn call_events_arrive_in_order() {
    let rt = runtime();
    let exchange = format!("siprec-test-{}-a", std::process::id());
    let (_conn, ch, queue) = rt.block_on(consumer(&exchange));
    let server = Server::start(
        30,
        &[
            ("ENABLE_REALTIME_AMQP", "true"),
            ("AMQP_EXCHANGE", exchange.as_str()),
        ],
    );
    let ports = TestPorts::new(30);
    let mut src = Src::new(ports.src_sip, ports.sip, "events-1@127.0.0.1");
    let (ct, body) = hold_body(ports.src_rtp, "sendonly");
    assert_eq!(src.invite(&ct, &body).status, 200);
    src.ack();
    let (ct, body) = hold_body(ports.src_rtp, "inactive");
    assert_eq!(src.invite(&ct, &body).status, 200);
    src.ack();
    let (ct, body) = hold_body(ports.src_rtp, "sendonly");
    assert_eq!(src.invite(&ct, &body).status, 200);
    src.ack();
    assert_eq!(src.bye().status, 200);
    let events = rt.block_on(collect(&ch, &queue, "call_ended", Duration::from_secs(10)));
    assert_eq!(
        types(&events),
        [
            "call_started",
            "hold",
            "hold",
            "resume",
            "resume",
            "call_ended"
        ],
        "{}",
        server.log_text()
    );
    let mut last = 0;
    for (key, v) in &events {
        assert_eq!(v["v"], 1);
        assert_eq!(v["call_id"], "events-1@127.0.0.1");
        assert_eq!(
            *key,
            format!("siprec.{}.events-1@127.0.0.1", v["type"].as_str().unwrap())
        );
        let seq = v["seq"].as_u64().unwrap();
        assert!(seq > last, "ids increase");
        last = seq;
    }
    let started = &events[0].1["data"];
    assert_eq!(started["streams"].as_array().unwrap().len(), 2);
    assert_eq!(started["participants"][0]["aor"], "sip:alice@example.com");
    assert_eq!(events[1].1["data"]["stream"], 0);
    assert_eq!(events.last().unwrap().1["data"]["reason"], "bye");
    let (_, health) = http_get(ports.http, "/health").unwrap();
    let h: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(h["checks"]["amqp"]["status"], "healthy", "{h}");
    let (_, metrics) = http_get(ports.http, "/metrics").unwrap();
    assert!(metrics.contains("siprec_amqp_connected 1"), "{metrics}");
}

/// A TCP proxy to the broker that can cut every connection and refuse new ones.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (c2, conns2) = (cut.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if c2.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(upstream) = TcpStream::connect(BROKER) else {
                    continue;
                };
                let mut list = conns2.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(upstream.try_clone().unwrap());
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                    (upstream, client),
                ] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, cut, conns }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// The broker connection is cut mid-call (through the proxy) while the call goes on hold
/// and resumes, then restored: every event arrives, in order, none missing (duplicates of
/// unconfirmed events are allowed and carry the same id); /health said degraded meanwhile.
#[test]
fn broker_outage_loses_nothing() {
    let rt = runtime();
    let exchange = format!("siprec-test-{}-b", std::process::id());
    let (_conn, ch, queue) = rt.block_on(consumer(&exchange));
    let proxy = Proxy::start();
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    let server = Server::start(
        31,
        &[
            ("ENABLE_REALTIME_AMQP", "true"),
            ("AMQP_EXCHANGE", exchange.as_str()),
            ("AMQP_URL", url.as_str()),
        ],
    );
    let ports = TestPorts::new(31);
    let mut src = Src::new(ports.src_sip, ports.sip, "events-2@127.0.0.1");
    let (ct, body) = hold_body(ports.src_rtp, "sendonly");
    assert_eq!(src.invite(&ct, &body).status, 200);
    src.ack();
    let first = rt.block_on(collect(
        &ch,
        &queue,
        "call_started",
        Duration::from_secs(10),
    ));
    assert_eq!(types(&first), ["call_started"], "{}", server.log_text());

    proxy.cut();
    let (ct, body) = hold_body(ports.src_rtp, "inactive");
    assert_eq!(src.invite(&ct, &body).status, 200);
    src.ack();
    let (ct, body) = hold_body(ports.src_rtp, "sendonly");
    assert_eq!(src.invite(&ct, &body).status, 200);
    src.ack();
    // The publisher notices within its 1 s health tick.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut degraded = false;
    while Instant::now() < deadline && !degraded {
        let (_, health) = http_get(ports.http, "/health").unwrap();
        let h: serde_json::Value = serde_json::from_str(&health).unwrap();
        degraded = h["checks"]["amqp"]["status"] == "degraded";
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(degraded, "/health shows AMQP degraded during the outage");
    assert_eq!(src.bye().status, 200);
    std::thread::sleep(Duration::from_millis(500));
    proxy.restore();

    let rest = rt.block_on(collect(&ch, &queue, "call_ended", Duration::from_secs(20)));
    let mut all = first;
    all.extend(rest);
    assert_eq!(
        types(&all),
        [
            "call_started",
            "hold",
            "hold",
            "resume",
            "resume",
            "call_ended"
        ],
        "{}",
        server.log_text()
    );
    let (_, metrics) = http_get(ports.http, "/metrics").unwrap();
    assert!(
        metrics.contains("siprec_amqp_events_total{event=\"dropped\"} 0"),
        "{metrics}"
    );
}

/// Filters: with PUBLISH_CALL_EVENTS=false and PUBLISH_SPEAKER_CHANGES=false only the
/// analytics snapshots of a call are published.
#[test]
fn publish_filters_are_honoured() {
    let rt = runtime();
    let exchange = format!("siprec-test-{}-c", std::process::id());
    let (_conn, ch, queue) = rt.block_on(consumer(&exchange));
    let server = Server::start(
        40,
        &[
            ("ENABLE_REALTIME_AMQP", "true"),
            ("AMQP_EXCHANGE", exchange.as_str()),
            ("PUBLISH_CALL_EVENTS", "false"),
            ("PUBLISH_SPEAKER_CHANGES", "false"),
        ],
    );
    let ports = TestPorts::new(40);
    let mut src = Src::new(ports.src_sip, ports.sip, "events-3@127.0.0.1");
    let (ct, body) = hold_body(ports.src_rtp, "sendonly");
    assert_eq!(src.invite(&ct, &body).status, 200);
    src.ack();
    assert_eq!(src.bye().status, 200);
    let events = rt.block_on(collect(&ch, &queue, "snapshot", Duration::from_secs(10)));
    assert_eq!(types(&events), ["snapshot"], "{}", server.log_text());
    assert_eq!(events[0].1["data"]["final"], true);
    // Nothing else follows.
    let more = rt.block_on(collect(&ch, &queue, "-", Duration::from_millis(800)));
    assert!(more.is_empty(), "{more:?}");
}

/// A TLS-terminating proxy in front of the broker (self-signed certificate for 127.0.0.1 from
/// the `openssl` tool): the local RabbitMQ has no TLS listener, so this stands in for one.
/// Returns its port and the certificate's path.
fn tls_proxy(dir: &std::path::Path) -> (u16, std::path::PathBuf) {
    let (cert, key) = self_signed(dir, "broker");
    let mut b =
        openssl::ssl::SslAcceptor::mozilla_intermediate_v5(openssl::ssl::SslMethod::tls_server())
            .unwrap();
    b.set_certificate_chain_file(&cert).unwrap();
    b.set_private_key_file(&key, openssl::ssl::SslFiletype::PEM)
        .unwrap();
    let acceptor = Arc::new(b.build());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let acceptor = acceptor.clone();
            std::thread::spawn(move || {
                let Ok(mut tls) = acceptor.accept(client) else {
                    return; // An untrusting client hangs up mid-handshake.
                };
                let Ok(mut upstream) = TcpStream::connect(BROKER) else {
                    return;
                };
                // One thread pumps both ways: short read timeouts stand in for readiness.
                let tick = Some(Duration::from_millis(5));
                tls.get_ref().set_read_timeout(tick).unwrap();
                upstream.set_read_timeout(tick).unwrap();
                let mut buf = [0u8; 16384];
                while pump(&mut tls, &mut upstream, &mut buf)
                    && pump(&mut upstream, &mut tls, &mut buf)
                {}
            });
        }
    });
    (port, cert)
}

/// Moves what `from` has (if anything within its read timeout) to `to`; false once either
/// side is closed or failed.
fn pump(from: &mut impl Read, to: &mut impl Write, buf: &mut [u8]) -> bool {
    match from.read(buf) {
        Ok(0) => false,
        Ok(n) => to.write_all(&buf[..n]).is_ok(),
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// `amqps://` with `AMQP_TLS_CA_FILE`: a call's events reach the consumer through TLS. Without
/// the CA the broker's certificate is refused: /health says amqp degraded with the TLS error
/// and recording goes on.
#[test]
fn amqps_checks_the_broker_certificate() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (port, ca) = tls_proxy(dir.path());
    let exchange = format!("siprec-test-{}-tls", std::process::id());
    let (_conn, ch, queue) = rt.block_on(consumer(&exchange));
    let url = format!("amqps://guest:guest@127.0.0.1:{port}/%2f");
    let ports = TestPorts::new(48);
    for trusted in [false, true] {
        let mut env = vec![
            ("ENABLE_REALTIME_AMQP", "true"),
            ("AMQP_URL", url.as_str()),
            ("AMQP_EXCHANGE", exchange.as_str()),
        ];
        if trusted {
            env.push(("AMQP_TLS_CA_FILE", ca.to_str().unwrap()));
        }
        let server = Server::start(48, &env);
        let call_id = format!("tls-{trusted}@127.0.0.1");
        let mut src = Src::new(ports.src_sip, ports.sip, &call_id);
        let (ct, body) = hold_body(ports.src_rtp, "sendonly");
        assert_eq!(src.invite(&ct, &body).status, 200);
        src.ack();
        assert_eq!(src.bye().status, 200);
        if trusted {
            let events = rt.block_on(collect(&ch, &queue, "call_ended", Duration::from_secs(15)));
            let t = types(&events);
            assert_eq!(t.first().map(String::as_str), Some("call_started"), "{t:?}");
            assert_eq!(t.last().map(String::as_str), Some("call_ended"), "{t:?}");
            assert!(events.iter().all(|(_, v)| v["call_id"] == call_id.as_str()));
        } else {
            let deadline = Instant::now() + Duration::from_secs(10);
            let health = loop {
                let (_, body) = http(ports.http, "GET", "/health", &[], "");
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                let amqp = v["checks"]["amqp"].clone();
                if amqp["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("certificate"))
                    || Instant::now() > deadline
                {
                    break amqp;
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            assert_eq!(health["status"], "degraded", "{health}");
            assert!(
                health["message"].as_str().unwrap().contains("certificate"),
                "{health}"
            );
            let sessions = wait_sessions(&server.recordings(), 1, Duration::from_secs(10));
            assert_eq!(sessions.len(), 1, "recording does not depend on the broker");
            let none = rt.block_on(collect(&ch, &queue, "-", Duration::from_millis(500)));
            assert!(none.is_empty(), "{none:?}");
        }
    }
}

/// AMQP_SPOOL_DIR: with the broker unreachable and a 4-event memory buffer, a call's events
/// overflow to disk; the server stops (SIGTERM) with them unpublished; a new server on the
/// same spool publishes every one of them, in order, once the broker is back — none lost, no
/// gap — and empties the spool.
#[test]
fn spool_keeps_events_across_outage_and_restart() {
    let rt = runtime();
    let exchange = format!("siprec-test-{}-spool", std::process::id());
    let (_conn, ch, queue) = rt.block_on(consumer(&exchange));
    let proxy = Proxy::start();
    proxy.cut();
    let spool = tempfile::tempdir().unwrap();
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    let env = [
        ("ENABLE_REALTIME_AMQP", "true"),
        ("AMQP_EXCHANGE", exchange.as_str()),
        ("AMQP_URL", url.as_str()),
        ("AMQP_BUFFER_MAX", "4"),
        ("AMQP_SPOOL_DIR", spool.path().to_str().unwrap()),
    ];
    let mut server = Server::start(49, &env);
    let ports = TestPorts::new(49);
    let mut src = Src::new(ports.src_sip, ports.sip, "spool@127.0.0.1");
    for dir in ["sendonly", "inactive", "sendonly", "inactive", "sendonly"] {
        let (ct, body) = hold_body(ports.src_rtp, dir);
        assert_eq!(src.invite(&ct, &body).status, 200);
        src.ack();
    }
    assert_eq!(src.bye().status, 200);
    std::thread::sleep(Duration::from_millis(300));
    server.signal(libc::SIGTERM);
    assert_eq!(server.wait_exit(Duration::from_secs(15)), Some(0));
    let spooled = std::fs::read_dir(spool.path()).unwrap().count();
    assert!(spooled > 0, "nothing on disk:\n{}", server.log_text());
    let none = rt.block_on(collect(&ch, &queue, "-", Duration::from_millis(300)));
    assert!(none.is_empty(), "{none:?}");

    proxy.restore();
    let server = Server::start(49, &env);
    let got = rt.block_on(collect(&ch, &queue, "call_ended", Duration::from_secs(20)));
    assert_eq!(
        types(&got),
        [
            "call_started",
            "hold",
            "hold",
            "resume",
            "resume",
            "hold",
            "hold",
            "resume",
            "resume",
            "call_ended"
        ],
        "{}",
        server.log_text()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_dir(spool.path()).unwrap().count() > 0 {
        assert!(Instant::now() < deadline, "spool not emptied");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, metrics) = http_get(ports.http, "/metrics").unwrap();
    assert!(
        metrics.contains("siprec_amqp_events_total{event=\"dropped\"} 0"),
        "{metrics}"
    );
}
