//! Operator policies on the signalling: SIP source ACL (`SIP_ALLOWED_NETWORKS`, 403 or
//! silence) and SRTP-only recording (`SRTP_REQUIRED`).

mod common;

use std::time::Duration;

use common::*;
use siprec::sip::{self, Message};

/// Polls /metrics until it contains `line` (the snapshot is refreshed every tick).
fn metrics_show(http: u16, line: &str) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        if let Ok((_, m)) = http_get(http, "/metrics") {
            if m.contains(line) {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// The source (127.0.0.1) is outside the allowed networks: an INVITE gets 403 and nothing is
/// recorded; with `SIP_ACL_ACTION=drop` it gets no answer at all. Both are counted.
#[test]
fn acl_rejects_or_drops_unknown_sources() {
    let server = Server::start(
        35,
        &[("SIP_ALLOWED_NETWORKS", "192.0.2.0/24, 2001:db8::/32")],
    );
    let ports = TestPorts::new(35);
    let mut src = Src::new(ports.src_sip, ports.sip, "acl-1@127.0.0.1");
    let (ct, body) = siprec_body(1, "sendonly", ports.src_rtp);
    let resp = src.invite(&ct, &body);
    assert_eq!(resp.status, 403);
    assert!(metrics_show(
        ports.http,
        "siprec_sip_messages_dropped_total{reason=\"acl\"} 1"
    ));
    let (_, sessions) = http_get(ports.http, "/api/sessions").unwrap();
    assert!(sessions.contains("\"count\":0"), "{sessions}");
    drop(server);

    let _server = Server::start(
        38,
        &[
            ("SIP_ALLOWED_NETWORKS", "192.0.2.0/24"),
            ("SIP_ACL_ACTION", "drop"),
        ],
    );
    let ports = TestPorts::new(38);
    let mut src = Src::new(ports.src_sip, ports.sip, "acl-2@127.0.0.1");
    let r = src.request(sip::Method::Options);
    src.send(&r);
    let mut buf = vec![0u8; 65536];
    let deadline = std::time::Instant::now() + Duration::from_millis(1500);
    while std::time::Instant::now() < deadline {
        if let Ok((n, _)) = src.sock.recv_from(&mut buf) {
            let m = sip::parse_datagram(&buf[..n]);
            panic!(
                "dropped source got an answer: {:?}",
                m.map(|m| match m {
                    Message::Response(r) => r.status,
                    Message::Request(_) => 0,
                })
            );
        }
    }
    assert!(metrics_show(
        ports.http,
        "siprec_sip_messages_dropped_total{reason=\"acl\"} 1"
    ));
}

/// A source inside the allowed networks is served as usual; when it floods (more than
/// SIP_FLOOD_LIMIT messages in a second) it is blocked, unanswered, for SIP_FLOOD_BLOCK
/// seconds, counted, and served again afterwards.
#[test]
fn acl_allows_listed_sources_and_floods_are_blocked() {
    let _server = Server::start(
        37,
        &[
            ("SIP_ALLOWED_NETWORKS", "10.0.0.0/8,127.0.0.0/8"),
            ("SIP_FLOOD_LIMIT", "30"),
            ("SIP_FLOOD_BLOCK", "2"),
        ],
    );
    let ports = TestPorts::new(37);
    let mut src = Src::new(ports.src_sip, ports.sip, "acl-3@127.0.0.1");
    let (ct, body) = siprec_body(1, "sendonly", ports.src_rtp);
    assert_eq!(src.invite(&ct, &body).status, 200);
    src.ack();
    assert_eq!(src.bye().status, 200);

    for _ in 0..60 {
        let r = src.request(sip::Method::Options);
        src.send(&r);
    }
    let mut answered = 0;
    let mut buf = vec![0u8; 65536];
    let deadline = std::time::Instant::now() + Duration::from_millis(800);
    while std::time::Instant::now() < deadline {
        if let Ok((n, _)) = src.sock.recv_from(&mut buf) {
            if matches!(sip::parse_datagram(&buf[..n]), Ok(Message::Response(_))) {
                answered += 1;
            }
        }
    }
    assert!(
        answered < 40,
        "a flood is cut off: {answered} of 60 answered"
    );
    assert!(answered >= 20, "up to the limit is served: {answered}");
    assert!(metrics_show(
        ports.http,
        "siprec_sip_messages_dropped_total{reason=\"flood\"}"
    ));
    std::thread::sleep(Duration::from_millis(2300));
    let r = src.request(sip::Method::Options);
    assert_eq!(src.transact(&r).status, 200, "served again after the block");
}

/// SRTP_REQUIRED: a plain RTP offer gets 488; an RTP/SAVP offer is recorded, and in a mixed
/// offer only the SRTP m-line gets a port.
#[test]
fn srtp_required_refuses_plain_rtp() {
    let _server = Server::start(36, &[("SRTP_REQUIRED", "true")]);
    let ports = TestPorts::new(36);
    let mut src = Src::new(ports.src_sip, ports.sip, "plain@127.0.0.1");
    let (ct, body) = siprec_body(1, "sendonly", ports.src_rtp);
    assert_eq!(src.invite(&ct, &body).status, 488);
    drop(src);

    let key = siprec::srtp::sdes::base64_encode(&[7u8; 30]);
    let (ct, body) = siprec_body(2, "sendonly", ports.src_rtp);
    let body = body
        .replacen("RTP/AVP 0 101", "RTP/SAVP 0 101", 1)
        .replacen(
            "a=label:1\r\n",
            &format!("a=label:1\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}\r\n"),
            1,
        );
    let mut src = Src::new(ports.src_sip, ports.sip, "savp@127.0.0.1");
    let resp = src.invite(&ct, &body);
    assert_eq!(resp.status, 200);
    let answer = String::from_utf8_lossy(&resp.body).to_string();
    let p = answer_ports(&answer);
    assert!(
        p[0] != 0 && p[1] == 0,
        "SRTP line recorded, plain one refused: {answer}"
    );
    src.ack();
    assert_eq!(src.bye().status, 200);
}

/// No personal data in the log at info level (issue 10): Call-IDs (which carry a number and
/// an address here), participants' AoRs and recording paths show as salted hashes, also in
/// the warning about unusable metadata, which names the call. With `LOG_PII=true` the same
/// warning shows the Call-ID: the check below would see a leak.
#[test]
fn no_personal_data_in_logs() {
    let secrets = [
        "5551234567",
        "5559876543",
        "198.51.100",
        "alice@example.com",
        "bob@",
    ];
    let call = |server: &Server, call_id: &str, broken_metadata: bool| {
        let ports = &server.ports;
        let mut src = Src::new(ports.src_sip, ports.sip, call_id);
        let (ct, body) = siprec_body(1, "sendonly", ports.src_rtp);
        let body = if broken_metadata {
            body.replace("</recording>", "<participant")
        } else {
            body
        };
        let ok = src.invite(&ct, &body);
        assert_eq!(ok.status, 200);
        src.ack();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(src.bye().status, 200);
    };
    let server = Server::start(55, &[]);
    call(&server, "pii-5551234567@198.51.100.7", false);
    call(&server, "pii-5559876543@198.51.100.8", true);
    wait_sessions(&server.recordings(), 2, Duration::from_secs(10));
    let log = server.log_text();
    assert!(log.contains("unusable recording metadata"), "{log}");
    assert!(
        log.contains("‹pii:"),
        "the warning names the call by its hash:\n{log}"
    );
    for secret in secrets {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
    drop(server);

    let server = Server::start(55, &[("LOG_PII", "true")]);
    call(&server, "pii-5559876543@198.51.100.8", true);
    wait_sessions(&server.recordings(), 1, Duration::from_secs(10));
    let log = server.log_text();
    assert!(
        log.contains("pii-5559876543@198.51.100.8"),
        "LOG_PII=true shows it:\n{log}"
    );
}
