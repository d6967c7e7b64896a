//! Bad input over real sockets while a call records: thousands of mutated and random SIP
//! datagrams, junk on a TCP connection, and garbage, foreign-SSRC and malformed packets on the
//! call's RTP and RTCP ports. The server must stay up, count what it dropped, and the call's
//! recording must hold the source audio exactly.

mod common;

use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::*;
use siprec::sink::recorder::read_wav;

#[test]
fn hostile_input_does_not_touch_a_running_recording() {
    let server = Server::start(22, &[]);
    let ports = TestPorts::new(22);
    let mut src = Src::new(ports.src_sip, ports.sip, "victim@127.0.0.1");
    let port = src.record_one(ports.src_rtp);

    // Attackers run while the real stream plays.
    let sip_port = ports.sip;
    let attacker = std::thread::spawn(move || {
        let mut rng = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let (_, invite) = siprec_body(2, "sendonly", 4000);
        let base = format!(
            "INVITE sip:srs@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKx\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: evil\r\nCSeq: 1 INVITE\r\n\
Content-Type: multipart/mixed;boundary=BOUNDARY\r\nContent-Length: {}\r\n\r\n{invite}",
            invite.len()
        )
        .into_bytes();
        for i in 0..4000u64 {
            let mut m = base.clone();
            for _ in 0..(next() % 6 + 1) {
                let at = (next() as usize) % m.len();
                m[at] = next() as u8;
            }
            if i % 7 == 0 {
                m.truncate((next() as usize) % m.len());
            }
            let _ = sock.send_to(&m, ("127.0.0.1", sip_port));
            // Garbage on the media ports too: random bytes, an RTP header with a foreign SSRC,
            // and RTCP-looking junk on port + 1.
            let junk: Vec<u8> = (0..(next() % 200)).map(|_| next() as u8).collect();
            let _ = sock.send_to(&junk, ("127.0.0.1", port));
            let mut foreign = vec![0x80, 0, 0, 1, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef];
            foreign.extend(std::iter::repeat_n(0xff, 160));
            let _ = sock.send_to(&foreign, ("127.0.0.1", port));
            let _ = sock.send_to(&junk, ("127.0.0.1", port + 1));
            if i % 200 == 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        // A TCP peer that sends junk and a 70 KiB header block.
        if let Ok(mut tcp) = TcpStream::connect(("127.0.0.1", sip_port)) {
            let _ = tcp.write_all(b"GARBAGE\r\n\r\n");
            let _ = tcp.write_all(&vec![b'X'; 70_000]);
        }
    });

    let rtp = UdpSocket::bind(("127.0.0.1", ports.src_rtp)).unwrap();
    let a = source_audio(4, 8000 * 2);
    play(
        &rtp,
        audio_packets(port, 0x4444, 1, 0, Duration::ZERO, &a),
        Instant::now(),
    );
    attacker.join().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(src.bye().status, 200, "SIP still answers");
    let (status, _) = http_get(ports.http, "/health/live").unwrap();
    assert_eq!(status, 200, "server alive; log:\n{}", server.log_text());

    let dir = &wait_sessions(&server.recordings(), 1, Duration::from_secs(10))[0];
    let (_, _, leg) = read_wav(&dir.join("1.wav")).unwrap();
    let ra = ulaw_roundtrip(&a);
    // Exact despite the attack. On a loaded machine the flood can cost real packets (the
    // socket overflows while the worker waits for a core): each is then concealed, and
    // counted as lost, or is silence (too late for the recorder); never other audio.
    let (silent, concealed) =
        exact_or_missing(&leg, &ra).unwrap_or_else(|e| panic!("the recording: {e}"));
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("session.json")).unwrap()).unwrap();
    let rtp_stats = &meta["streams"][0]["rtp"];
    assert!(
        concealed as u64 <= rtp_stats["lost"].as_u64().unwrap(),
        "{concealed} packets are other audio, more than were lost: {rtp_stats}"
    );
    if silent + concealed > 0 {
        eprintln!("{silent} packets late, {concealed} lost and concealed; the rest exact");
    }
    assert!(rtp_stats["malformed"].as_u64().unwrap() > 0, "{rtp_stats}");
    assert!(
        rtp_stats["foreign_ssrc"].as_u64().unwrap() > 0,
        "{rtp_stats}"
    );
    assert_eq!(rtp_stats["ssrc"], 0x4444);
    let (_, metrics) = http_get(ports.http, "/metrics").unwrap();
    let dropped = metrics
        .lines()
        .find(|l| l.starts_with("siprec_sip_messages_dropped_total{reason=\"unparsable\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(dropped > 100, "mutated SIP counted: {dropped}");
}
