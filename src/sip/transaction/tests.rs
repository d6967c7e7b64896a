//! Paired sans-IO transaction tests: a fake `Instant` base plus durations, no sleeping.

use std::time::{Duration, Instant};

use super::*;
use crate::sip::msg::parse_datagram;

fn udp() -> Peer {
    Peer {
        transport: Transport::Udp,
        addr: "198.51.100.7:5062".parse().unwrap(),
        conn: Some(0),
    }
}

fn request(method: &str, branch: &str, cseq: u32, to_tag: Option<&str>) -> Message {
    let to = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
    let text = format!(
        "{method} sip:srs@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch={branch};rport\r\n\
From: <sip:src@198.51.100.7>;tag=ft\r\nTo: <sip:srs@192.0.2.1>{to}\r\nCall-ID: call-1\r\n\
CSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
    );
    parse_datagram(text.as_bytes()).unwrap()
}

fn drain(l: &mut TransactionLayer) -> (Vec<Transmit>, Vec<TsxEvent>) {
    let (mut tx, mut ev) = (Vec::new(), Vec::new());
    while let Some(o) = l.poll_output() {
        match o {
            Output::Transmit(t) => tx.push(t),
            Output::Event(e) => ev.push(e),
        }
    }
    (tx, ev)
}

fn status_of(t: &Transmit) -> u16 {
    match parse_datagram(&t.payload).unwrap() {
        Message::Response(r) => r.status,
        Message::Request(_) => 0,
    }
}

fn invite_key(ev: &[TsxEvent]) -> (TsxKey, Request) {
    match &ev[0] {
        TsxEvent::Request { key, request, .. } => (*key, request.clone()),
        e => panic!("{e:?}"),
    }
}

/// INVITE → 100 Trying at once (to the rport source); 200 retransmitted at T1, 2T1, 4T1 and
/// then every T2 until the ACK, which is delivered once; a retransmitted INVITE gets the 200.
#[test]
fn invite_2xx_retransmission_until_ack() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TsxConfig::default());
    l.handle_message(t0, udp(), request("INVITE", "z9hG4bK1", 1, None));
    let (tx, ev) = drain(&mut l);
    assert_eq!(status_of(&tx[0]), 100);
    assert_eq!(
        tx[0].peer.addr,
        udp().addr,
        "rport: answer to the source port"
    );
    let (key, req) = invite_key(&ev);
    assert!(req.headers.get("Via").unwrap().contains("rport=5062"));
    let mut ok = Response::from_request(&req, 200, "OK");
    ok.set_to_tag("srs");
    l.respond(t0, key, ok);
    assert_eq!(status_of(&drain(&mut l).0[0]), 200);
    let mut sent_at = Vec::new();
    let mut now = t0;
    for _ in 0..100 {
        now += Duration::from_millis(100);
        l.handle_timeout(now);
        if !drain(&mut l).0.is_empty() {
            sent_at.push((now - t0).as_millis());
        }
        if now - t0 >= Duration::from_millis(9_000) {
            break;
        }
    }
    assert_eq!(sent_at, [500, 1500, 3500, 7500]);
    l.handle_message(now, udp(), request("INVITE", "z9hG4bK1", 1, None));
    assert_eq!(
        status_of(&drain(&mut l).0[0]),
        200,
        "retransmitted INVITE answered again"
    );
    l.handle_message(now, udp(), request("ACK", "z9hG4bK2", 1, Some("srs")));
    let (_, ev) = drain(&mut l);
    assert!(matches!(ev[..], [TsxEvent::Ack { .. }]));
    l.handle_message(now, udp(), request("ACK", "z9hG4bK3", 1, Some("srs")));
    assert!(drain(&mut l).1.is_empty(), "duplicate ACK absorbed");
    l.handle_timeout(now + Duration::from_secs(10));
    assert!(drain(&mut l).0.is_empty(), "no retransmission after ACK");
}

/// Without an ACK, the 2xx is abandoned at 64×T1 with AckTimeout.
#[test]
fn ack_timeout() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TsxConfig::default());
    l.handle_message(t0, udp(), request("INVITE", "z9hG4bK1", 1, None));
    let (key, req) = invite_key(&drain(&mut l).1);
    l.respond(t0, key, Response::from_request(&req, 200, "OK"));
    l.handle_timeout(t0 + Duration::from_millis(31_900));
    assert!(drain(&mut l).1.is_empty());
    l.handle_timeout(t0 + Duration::from_secs(32));
    let (_, ev) = drain(&mut l);
    assert!(matches!(&ev[..], [TsxEvent::AckTimeout { call_id, .. }] if call_id == "call-1"));
    assert!(l.is_empty());
}

/// CANCEL before the final: 200 to the CANCEL and Cancelled; the 487 is retransmitted until
/// its ACK, which is absorbed. CANCEL for nothing: 481.
#[test]
fn cancel() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TsxConfig::default());
    l.handle_message(t0, udp(), request("INVITE", "z9hG4bK1", 1, None));
    let (key, req) = invite_key(&drain(&mut l).1);
    l.handle_message(t0, udp(), request("CANCEL", "z9hG4bK1", 1, None));
    let (tx, ev) = drain(&mut l);
    assert_eq!(status_of(&tx[0]), 200);
    assert!(matches!(ev[..], [TsxEvent::Cancelled { invite }] if invite == key));
    l.respond(
        t0,
        key,
        Response::from_request(&req, 487, "Request Terminated"),
    );
    assert_eq!(status_of(&drain(&mut l).0[0]), 487);
    l.handle_timeout(t0 + Duration::from_millis(500));
    assert_eq!(status_of(&drain(&mut l).0[0]), 487, "Timer G");
    l.handle_message(t0, udp(), request("ACK", "z9hG4bK1", 1, None));
    assert!(drain(&mut l).1.is_empty(), "ACK for non-2xx absorbed");
    l.handle_message(t0, udp(), request("CANCEL", "z9hG4bKnone", 9, None));
    assert_eq!(status_of(&drain(&mut l).0[0]), 481);
}

/// A retransmitted BYE replays the final without a second event; Timer J ends it.
#[test]
fn non_invite_server() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TsxConfig::default());
    l.handle_message(t0, udp(), request("BYE", "z9hG4bKb", 2, Some("srs")));
    let (key, req) = invite_key(&drain(&mut l).1);
    l.respond(t0, key, Response::from_request(&req, 200, "OK"));
    drain(&mut l);
    l.handle_message(t0, udp(), request("BYE", "z9hG4bKb", 2, Some("srs")));
    let (tx, ev) = drain(&mut l);
    assert_eq!(status_of(&tx[0]), 200);
    assert!(ev.is_empty());
    l.handle_timeout(t0 + Duration::from_secs(32));
    assert!(l.is_empty());
}

/// Our BYE: Timer E retransmissions, a final response delivered once, Timer F otherwise.
#[test]
fn client_bye() {
    let t0 = Instant::now();
    let mut l = TransactionLayer::new(TsxConfig::default());
    let Message::Request(bye) = request("BYE", "z9hG4bKours", 5, Some("x")) else {
        panic!()
    };
    let key = l.send_request(t0, udp(), bye.clone());
    assert_eq!(drain(&mut l).0.len(), 1);
    l.handle_timeout(t0 + Duration::from_millis(500));
    assert_eq!(drain(&mut l).0.len(), 1, "Timer E");
    let resp = Response::from_request(&bye, 200, "OK");
    l.handle_message(t0, udp(), Message::Response(resp.clone()));
    assert!(matches!(drain(&mut l).1[..], [TsxEvent::Response { key: k, .. }] if k == key));
    l.handle_message(t0, udp(), Message::Response(resp));
    assert!(drain(&mut l).1.is_empty(), "retransmitted final absorbed");

    let key2 = l.send_request(t0, udp(), {
        let Message::Request(r) = request("BYE", "z9hG4bKlost", 6, Some("x")) else {
            panic!()
        };
        r
    });
    drain(&mut l);
    l.handle_timeout(t0 + Duration::from_secs(32));
    let (_, ev) = drain(&mut l);
    assert!(ev
        .iter()
        .any(|e| matches!(e, TsxEvent::ClientTimeout { key } if *key == key2)));
}

/// Over TCP nothing is retransmitted; at max_transactions new requests get 503.
#[test]
fn tcp_and_overload() {
    let t0 = Instant::now();
    let tcp = Peer {
        transport: Transport::Tcp,
        conn: Some(7),
        ..udp()
    };
    let mut l = TransactionLayer::new(TsxConfig {
        max_transactions: 1,
        ..TsxConfig::default()
    });
    l.handle_message(t0, tcp, request("INVITE", "z9hG4bK1", 1, None));
    let (tx, ev) = drain(&mut l);
    assert_eq!(tx[0].peer, tcp);
    let (key, req) = invite_key(&ev);
    l.respond(t0, key, Response::from_request(&req, 200, "OK"));
    drain(&mut l);
    l.handle_timeout(t0 + Duration::from_secs(2));
    assert!(drain(&mut l).0.is_empty());
    l.handle_message(t0, udp(), request("OPTIONS", "z9hG4bK9", 1, None));
    let (tx, ev) = drain(&mut l);
    assert_eq!(status_of(&tx[0]), 503);
    assert!(ev.is_empty());
    assert_eq!(l.overload_rejections(), 1);
}
