//! A hostile corpus against the running server (issue 10): over 500 SIP messages in the
//! spirit of RFC 4475 (bad versions, missing or contradictory headers, escapes, oversize
//! headers and header counts, Content-Length lies, non-UTF-8, entity bombs and deep XML,
//! 1,000 m-lines, port 0 everywhere, invalid crypto lines, truncations at every offset),
//! then TCP peers that lie about Content-Length, stall half-way or just sit idle by the
//! hundred, and garbage on the media ports. Every UDP message gets a response or a counted
//! drop, none sets up a call, and afterwards the server is alive, ready, within a memory
//! bound, and records a normal call exactly while the stalled and idle connections are open.

mod common;

use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::*;
use siprec::sip::{self, Message};

/// An INVITE with `headers` (one per line, no Content-Length: it is computed unless
/// `content_length` overrides it) and `body`.
fn invite(i: usize, extra: &str, body: &str, content_length: Option<&str>) -> Vec<u8> {
    let cl = content_length.map_or_else(|| body.len().to_string(), str::to_owned);
    format!(
        "INVITE sip:srs@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK-torture-{i};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:src@127.0.0.1>;tag=t{i}\r\nTo: <sip:srs@127.0.0.1>\r\n\
         Call-ID: torture-{i}@127.0.0.1\r\nCSeq: 1 INVITE\r\n{extra}\
         Content-Length: {cl}\r\n\r\n{body}"
    )
    .into_bytes()
}

/// The Via branch prefix of the metadata-bomb messages.
const XML_BRANCH: &str = "z9hG4bK-xml-";

fn sdp_with(media: &str) -> String {
    format!("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n{media}")
}

fn corpus() -> Vec<(&'static str, Vec<u8>)> {
    let mut c: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let sdp_ct = "Content-Type: application/sdp\r\n";
    let good_sdp = sdp_with("m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n");
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };
    // RFC 4475-style: each broken in one way.
    let raw = |i: usize, text: &str| text.replace("{i}", &i.to_string()).into_bytes();
    let torture = [
        "INVITE sip:srs@127.0.0.1 SIP/7.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{i};rport\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: v{i}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        "INVITE sip:srs@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{i};rport\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        "INVITE sip:srs@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{i};rport\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: c{i}\r\nContent-Length: 0\r\n\r\n",
        "INVITE sip:srs@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{i};rport\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: m{i}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        "INVITE sip:srs@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{i};rport\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: h{i}\r\nCSeq: 99999999999999999999999 INVITE\r\nContent-Length: 0\r\n\r\n",
        "INVITE sip:srs@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{i};rport\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: n{i}\r\nCSeq: 1 INVITE\r\nContent-Length: -5\r\n\r\n",
        "INVITE sip:srs@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{i};rport\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: d{i}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\nContent-Length: 40\r\n\r\n",
        "INVITE sip:srs@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{i};rport\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x{i}\r\nCSeq: 1 INVITE\r\nContent-Length: lots\r\n\r\n",
        "INVITE <sip:srs@127.0.0.1> SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{i};rport\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: b{i}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        "INVITE sip:srs@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{i};rport\r\nFrom: \"unterminated <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: q{i}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        "INVITE sip:srs@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{i};rport\r\nThis line has no colon\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: k{i}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        "INVITE sip:srs@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{i};rport\r\nMax-Forwards: 0\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: f{i}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        "FOO sip:srs@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{i};rport\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: o{i}\r\nCSeq: 1 FOO\r\nContent-Length: 0\r\n\r\n",
        "INVITE sip:%73rs@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{i};rport\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: e{i}\r\nCSeq: 1 INVITE\r\nRequire: no-such-extension\r\nContent-Length: 0\r\n\r\n",
        "INVITE sip:srs@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{i};rport\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: u{i}\r\nCSeq: 1 INVITE\r\nContent-Type: multipart/mixed\r\nContent-Length: 4\r\n\r\nabcd",
        "INVITE sip:srs@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{i};rport\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: l{i}\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: 900\r\n\r\nv=0\r\n",
        "ACK sip:srs@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{i};rport\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=nope\r\nCall-ID: a{i}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        "BYE sip:srs@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{i};rport\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=nope\r\nCall-ID: y{i}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
    ];
    for t in torture {
        let i = next();
        c.push(("torture", raw(i, t)));
    }
    // Non-UTF-8 in a header and NUL bytes.
    let i = next();
    let mut bad = invite(i, "", "", None);
    bad.splice(60..60, [0xff, 0xfe, 0x00, 0xc3]);
    c.push(("binary", bad));
    // Oversize: one 65,000-byte header; 150 header lines.
    let i = next();
    c.push((
        "oversize",
        invite(i, &format!("X-Big: {}\r\n", "a".repeat(65_000)), "", None),
    ));
    let i = next();
    let many: String = (0..150).map(|k| format!("X-H{k}: v\r\n")).collect();
    c.push(("oversize", invite(i, &many, "", None)));
    // Content-Length lies (UDP).
    let i = next();
    c.push(("content-length", invite(i, sdp_ct, &good_sdp, Some("5000"))));
    // Metadata bombs: entity expansion and deep nesting, as multipart INVITEs.
    let multipart = |i: usize, xml: &str| {
        let body = format!(
            "--B\r\nContent-Type: application/sdp\r\n\r\n{good_sdp}\r\n--B\r\n\
             Content-Type: application/rs-metadata+xml\r\n\r\n{xml}\r\n--B--\r\n"
        );
        let m = invite(
            i,
            "Content-Type: multipart/mixed;boundary=B\r\n",
            &body,
            None,
        );
        let text = String::from_utf8_lossy(&m).replace("z9hG4bK-torture-", XML_BRANCH);
        text.into_bytes()
    };
    let bomb = "<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY a \"aaaaaaaaaa\">\
        <!ENTITY b \"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\"><!ENTITY c \"&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;\">\
        ]><recording xmlns='urn:ietf:params:xml:ns:recording:1'><datamode>&c;</datamode></recording>";
    let i = next();
    c.push(("xml", multipart(i, bomb)));
    let deep = format!(
        "<recording xmlns='urn:ietf:params:xml:ns:recording:1'>{}{}</recording>",
        "<group>".repeat(1000),
        "</group>".repeat(1000)
    );
    let i = next();
    c.push(("xml", multipart(i, &deep)));
    let wide = format!(
        "<recording xmlns='urn:ietf:params:xml:ns:recording:1'>{}</recording>",
        "<participant participant_id=\"p\"/>".repeat(20_000)
    );
    let i = next();
    c.push(("xml", multipart(i, &wide[..wide.len().min(60_000)])));
    // SDP: 1,000 m-lines; port 0 everywhere; bad crypto lines.
    let thousand: String = (0..1000)
        .map(|k| format!("m=audio {} RTP/AVP 0\r\n", 4000 + 2 * k))
        .collect();
    let i = next();
    c.push(("sdp", invite(i, sdp_ct, &sdp_with(&thousand), None)));
    let zeros: String = (0..4).map(|_| "m=audio 0 RTP/AVP 0\r\n").collect();
    let i = next();
    c.push(("sdp", invite(i, sdp_ct, &sdp_with(&zeros), None)));
    for crypto in [
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:!!notbase64!!",
        "a=crypto:1 NO_SUCH_SUITE inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz",
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^999",
        "a=crypto:x AES_CM_128_HMAC_SHA1_80",
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:QUJD",
    ] {
        let media = format!("m=audio 4000 RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\n{crypto}\r\n");
        let i = next();
        c.push(("crypto", invite(i, sdp_ct, &sdp_with(&media), None)));
    }
    // A valid offer cut at every byte, and a SIPREC multipart offer at every 5th: never
    // complete, so never a call.
    let i = next();
    let whole = invite(i, sdp_ct, &good_sdp, None);
    for cut in 1..whole.len() - 1 {
        c.push(("truncated", whole[..cut].to_vec()));
    }
    let (ct, body) = siprec_body(2, "sendonly", 4000);
    let i = next();
    let whole = invite(
        i,
        &format!("Content-Type: {ct}\r\nRequire: siprec\r\n"),
        &body,
        None,
    );
    for cut in (1..whole.len() - 1).step_by(5) {
        c.push(("truncated", whole[..cut].to_vec()));
    }
    c
}

/// The server's resident memory, KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn hostile_corpus_then_a_clean_call() {
    let server = Server::start(58, &[]);
    let ports = TestPorts::new(58);
    let corpus = corpus();
    assert!(corpus.len() >= 500, "{} messages", corpus.len());

    // UDP: every message, answers collected as they come.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_nonblocking(true).unwrap();
    // Final responses by (Call-ID, CSeq): 4xx to INVITEs are retransmitted until ACKed.
    let mut answered = std::collections::HashSet::new();
    let mut accepted = Vec::new();
    let mut buf = vec![0u8; 65_536];
    let mut drain = |sock: &UdpSocket,
                     answered: &mut std::collections::HashSet<String>,
                     accepted: &mut Vec<String>,
                     for_ms: u64| {
        let until = Instant::now() + Duration::from_millis(for_ms);
        while Instant::now() < until {
            let Ok((len, _)) = sock.recv_from(&mut buf) else {
                std::thread::yield_now();
                continue;
            };
            if let Ok(Message::Response(r)) = sip::parse_datagram(&buf[..len]) {
                if r.status >= 200 {
                    let via = r.headers.get("Via").unwrap_or_default();
                    let cseq = r.headers.get("CSeq").unwrap_or_default();
                    answered.insert(format!("{via} {cseq}"));
                }
                // Unusable metadata with a usable offer: recorded without the metadata
                // (counted below) rather than lost. Anything else must not set up a call.
                let text = String::from_utf8_lossy(&buf[..len]).into_owned();
                if (200..300).contains(&r.status) && !text.contains(XML_BRANCH) {
                    accepted.push(text);
                }
            }
        }
    };
    for (_, message) in &corpus {
        let _ = sock.send_to(message, ("127.0.0.1", ports.sip));
        drain(&sock, &mut answered, &mut accepted, 2);
    }
    drain(&sock, &mut answered, &mut accepted, 1500);
    let finals = answered.len();
    assert!(
        accepted.is_empty(),
        "a hostile message set up a call:\n{}",
        accepted[0]
    );

    // Each message was answered or counted as dropped (unparsable, or silently for a request
    // too broken to answer); an ACK is never answered (RFC 3261 §17.2.1), so it is not owed.
    let owed = corpus
        .iter()
        .filter(|(_, m)| !m.starts_with(b"ACK "))
        .count() as u64;
    let deadline = Instant::now() + Duration::from_secs(3);
    let dropped = loop {
        let (_, m) = http_get(ports.http, "/metrics").unwrap();
        let d = metric(
            &m,
            "siprec_sip_messages_dropped_total{reason=\"unparsable\"}",
        );
        if finals as u64 + d >= owed || Instant::now() > deadline {
            break d;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        finals as u64 + dropped >= owed,
        "{owed} messages owed an answer, {finals} answered, {dropped} counted as dropped"
    );

    eprintln!("{owed} messages owed an answer: {finals} answered, {dropped} dropped");
    let (_, m) = http_get(ports.http, "/metrics").unwrap();
    assert!(
        metric(&m, "siprec_metadata_errors_total") >= 2,
        "unusable metadata counted"
    );
    // TCP: a Content-Length lie, a peer stalled half-way, a 70 KiB header, 300 idle peers.
    let mut lie = TcpStream::connect(("127.0.0.1", ports.sip)).unwrap();
    let good = invite(
        9001,
        "Content-Type: application/sdp\r\n",
        "v=0\r\n",
        Some("5000"),
    );
    lie.write_all(&good).unwrap();
    let mut stalled = TcpStream::connect(("127.0.0.1", ports.sip)).unwrap();
    stalled.write_all(&good[..good.len() / 2]).unwrap();
    if let Ok(mut big) = TcpStream::connect(("127.0.0.1", ports.sip)) {
        let _ = big.write_all(b"INVITE sip:srs@127.0.0.1 SIP/2.0\r\nX-Big: ");
        let _ = big.write_all(&vec![b'x'; 70_000]);
    }
    let idle: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", ports.sip)).ok())
        .collect();
    assert!(idle.len() >= 250, "idle peers connected: {}", idle.len());

    // Still alive, ready and within bounds.
    assert_eq!(http_get(ports.http, "/health/live").unwrap().0, 200);
    assert_eq!(http_get(ports.http, "/health/ready").unwrap().0, 200);
    let rss = rss_kib(server.pid());
    assert!(rss < 512 * 1024, "RSS {rss} KiB after the corpus");

    // A normal call, with garbage on its media ports, records exactly while all that is open.
    let mut src = Src::new(ports.src_sip, ports.sip, "clean@127.0.0.1");
    let port = src.record_one(ports.src_rtp);
    let rtp = UdpSocket::bind(("127.0.0.1", ports.src_rtp)).unwrap();
    let junk = UdpSocket::bind("127.0.0.1:0").unwrap();
    for k in 0..500u32 {
        let garbage: Vec<u8> = (0..(k % 180)).map(|b| (b * 31 + k) as u8).collect();
        let _ = junk.send_to(&garbage, ("127.0.0.1", port));
        let _ = junk.send_to(&garbage, ("127.0.0.1", port + 1));
    }
    let audio = source_audio(51, 8000 * 2);
    play(
        &rtp,
        audio_packets(port, 0xC1EA, 1, 0, Duration::ZERO, &audio),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(src.bye().status, 200);
    let dir = wait_sessions(&server.recordings(), 1, Duration::from_secs(10))
        .into_iter()
        .find(|d| {
            std::fs::read_to_string(d.join("session.json")).is_ok_and(|j| j.contains("clean@"))
        })
        .expect("the clean call's session.json");
    let (_, _, leg) = siprec::sink::recorder::read_wav(&dir.join("1.wav")).unwrap();
    let want = ulaw_roundtrip(&audio);
    assert!(
        find(&leg, &want).is_some(),
        "the clean call is recorded exactly"
    );
    drop((idle, stalled, lie));
    assert_eq!(http_get(ports.http, "/health/live").unwrap().0, 200);
}
