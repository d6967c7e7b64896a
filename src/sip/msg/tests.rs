//! Parser and printer tests: RFC 4475-style tolerance, limits, and a mutation run that must
//! never panic.

use super::*;

const INVITE: &str = "INVITE sip:srs@192.0.2.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK776asdhds\r\n\
Via: SIP/2.0/TCP 198.51.100.9;branch=z9hG4bKprev\r\n\
Max-Forwards: 70\r\n\
To: <sip:srs@192.0.2.1>\r\n\
From: \"Alice \\\"A\\\" Smith\" <sip:alice@example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:src@198.51.100.7>;+sip.src\r\n\
Require: siprec\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\r\nv=0\n";

/// A normal INVITE: typed views of every header we use.
#[test]
fn parse_invite() {
    let Message::Request(r) = parse_datagram(INVITE.as_bytes()).unwrap() else {
        panic!()
    };
    assert_eq!(r.method, Method::Invite);
    assert_eq!(r.uri, "sip:srs@192.0.2.1:5060");
    assert_eq!(r.call_id(), Some("a84b4c76e66710@pc33.example.com"));
    assert_eq!(
        r.cseq(),
        Some(CSeq {
            seq: 314159,
            method: Method::Invite
        })
    );
    let from = r.from().unwrap();
    assert_eq!(from.display.as_deref(), Some("Alice \"A\" Smith"));
    assert_eq!(from.tag(), Some("1928301774"));
    assert_eq!(r.top_via().unwrap().branch(), Some("z9hG4bK776asdhds"));
    assert_eq!(r.headers.get_all("Via").len(), 2);
    assert!(r.headers.has_token("Require", "SIPREC"));
    assert_eq!(&r.body[..], b"v=0\n");
}

/// Compact forms, LF-only lines, folded lines, comma-joined Via, leading CRLFs, spaces around
/// colons and slashes, IPv6 references.
#[test]
fn tolerant_forms() {
    let msg = "\r\n\r\nINVITE sip:srs@[2001:db8::1]:5060 SIP/2.0\n\
v: SIP / 2.0 / UDP [2001:db8::9]:5070;branch=z9hG4bKa, SIP/2.0/UDP 192.0.2.4;branch=z9hG4bKb\n\
f: <sip:a@example.com>;tag=x\n\
t   :   <sip:b@example.com>\n\
i: folded-call@example.com\n\
CSeq: 1 INVITE\n\
Subject: I know you're there,\n   pick up the phone\n\t and talk to me!\n\
l: 0\n\n";
    let Message::Request(r) = parse_datagram(msg.as_bytes()).unwrap() else {
        panic!()
    };
    assert_eq!(
        r.headers.get("Subject"),
        Some("I know you're there, pick up the phone and talk to me!")
    );
    let via = r.top_via().unwrap();
    assert_eq!(
        (via.host.as_str(), via.port, via.transport.as_str()),
        ("2001:db8::9", Some(5070), "UDP")
    );
    assert_eq!(r.headers.get_all("v").len(), 2);
    assert_eq!(SipUri::parse(&r.uri).unwrap().host, "2001:db8::1");
    assert_eq!(r.call_id(), Some("folded-call@example.com"));
}

/// Responses parse (reason phrase optional); encode writes CRLF and a correct length.
#[test]
fn response_roundtrip() {
    let text = "SIP/2.0 200\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 99\r\n\r\n";
    assert!(matches!(
        parse_datagram(text.as_bytes()),
        Err(ParseError::Truncated)
    ));
    let ok = text.replace("Content-Length: 99", "Content-Length: 0");
    let Message::Response(mut r) = parse_datagram(ok.as_bytes()).unwrap() else {
        panic!()
    };
    assert_eq!(r.status, 200);
    assert_eq!(r.to_tag().as_deref(), Some("2"));
    r.body = Bytes::from_static(b"hello");
    let mut out = Vec::new();
    r.encode(&mut out);
    let s = String::from_utf8(out).unwrap();
    assert!(s.starts_with("SIP/2.0 200 OK\r\n"));
    assert!(s.ends_with("Content-Length: 5\r\n\r\nhello"));
}

/// Limits: > 64 KiB → 413; > 100 headers → 513; missing Call-ID → 400 with a recoverable
/// error response only when Via/From/To/Call-ID/CSeq are there.
#[test]
fn limits_and_error_responses() {
    let big = format!("{}{}", INVITE, "x".repeat(MAX_MESSAGE_BYTES));
    assert_eq!(parse_datagram(big.as_bytes()).unwrap_err().status(), 413);
    let many = INVITE.replacen("Max-Forwards: 70\r\n", &"X-Pad: 1\r\n".repeat(120), 1);
    let err = parse_datagram(many.as_bytes()).unwrap_err();
    assert_eq!(err.status(), 513);
    let resp = error_response(many.as_bytes(), &err).unwrap();
    assert_eq!(resp.status, 513);
    assert_eq!(resp.call_id(), Some("a84b4c76e66710@pc33.example.com"));
    let no_callid = INVITE.replace("Call-ID: a84b4c76e66710@pc33.example.com\r\n", "");
    assert!(matches!(
        parse_datagram(no_callid.as_bytes()),
        Err(ParseError::MissingHeader("Call-ID"))
    ));
    assert!(error_response(no_callid.as_bytes(), &ParseError::MissingHeader("Call-ID")).is_none());
    assert!(error_response(b"SIP/2.0 200 OK\r\n\r\n", &ParseError::BadStartLine).is_none());
}

/// TCP framing: pipelined messages, split at every byte boundary, keep-alives between.
#[test]
fn stream_framing() {
    let two = format!("\r\n\r\n{INVITE}{INVITE}");
    for split in 0..two.len() {
        let mut f = StreamFramer::new();
        let mut got = 0;
        f.push(&two.as_bytes()[..split]);
        while let Some(m) = f.next_message() {
            m.unwrap();
            got += 1;
        }
        f.push(&two.as_bytes()[split..]);
        while let Some(m) = f.next_message() {
            m.unwrap();
            got += 1;
        }
        assert_eq!(got, 2, "split at {split}");
    }
    let mut f = StreamFramer::new();
    f.push(INVITE.replace("Content-Length: 4\r\n", "").as_bytes());
    assert!(matches!(
        f.next_message(),
        Some(Err(ParseError::MissingHeader("Content-Length")))
    ));
    assert!(
        f.next_message().is_none(),
        "a failed stream yields nothing more"
    );
}

/// Mutated INVITEs (byte flips, truncations, insertions of CR/LF/colons/quotes) never panic;
/// whatever parses re-encodes into something that parses to the same method, Call-ID, CSeq.
#[test]
fn mutations_never_panic() {
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let base = INVITE.as_bytes();
    let specials = b"\r\n:;,\"<>[] \t\x00\xff";
    for _ in 0..20_000 {
        let mut m = base.to_vec();
        for _ in 0..(next() % 6 + 1) {
            let i = (next() as usize) % (m.len() + 1);
            match next() % 4 {
                0 if i < m.len() => m[i] = next() as u8,
                1 if i < m.len() => m[i] = specials[(next() as usize) % specials.len()],
                2 => m.insert(i, specials[(next() as usize) % specials.len()]),
                _ => m.truncate(i.max(1)),
            }
        }
        if let Ok(msg) = parse_datagram(&m) {
            let mut out = Vec::new();
            msg.encode(&mut out);
            let again = parse_datagram(&out).expect("re-encoded message parses");
            match (msg, again) {
                (Message::Request(a), Message::Request(b)) => {
                    assert_eq!(a.method, b.method);
                    assert_eq!(a.call_id(), b.call_id());
                    assert_eq!(a.cseq(), b.cseq());
                }
                (Message::Response(a), Message::Response(b)) => assert_eq!(a.status, b.status),
                _ => panic!("kind changed"),
            }
        } else if let Err(e) = parse_datagram(&m) {
            let _ = error_response(&m, &e);
        }
        let mut f = StreamFramer::new();
        f.push(&m);
        while let Some(Ok(_)) = f.next_message() {}
    }
}
