//! Codecs beyond G.711 end to end: what the SRC sends is in the recording sample for sample.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;
use siprec::media::rtp::write_packet;
use siprec::sink::recorder::read_wav;

/// L16 at 16 kHz (dynamic PT 96 with telephone-event/16000): the answer keeps both, the
/// per-leg WAV is 16 kHz and holds the source exactly.
#[test]
fn l16_wideband_is_recorded_exactly() {
    let server = Server::start(39, &[]);
    let ports = TestPorts::new(39);
    let mut src = Src::new(ports.src_sip, ports.sip, "l16@127.0.0.1");
    let (ct, body) = siprec_body(1, "sendonly", ports.src_rtp);
    let body = body.replace(
        "RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n",
        "RTP/AVP 96 101\r\na=rtpmap:96 L16/16000\r\na=rtpmap:101 telephone-event/16000\r\n",
    );
    let ok = src.invite(&ct, &body);
    assert_eq!(ok.status, 200);
    let answer = String::from_utf8_lossy(&ok.body).to_string();
    assert!(answer.contains("a=rtpmap:96 L16/16000\r\n"), "{answer}");
    assert!(
        answer.contains("a=rtpmap:101 telephone-event/16000\r\n"),
        "{answer}"
    );
    src.ack();
    let port = answer_ports(&answer)[0];
    let sock = UdpSocket::bind(("127.0.0.1", ports.src_rtp)).unwrap();
    // 1.5 s of 16 kHz audio: two 8 kHz test signals interleaved make a distinct 16 kHz one.
    let a = source_audio(3, 12_000);
    let b = source_audio(4, 12_000);
    let pcm: Vec<i16> = a.iter().zip(&b).flat_map(|(x, y)| [*x, *y]).collect();
    let t0 = Instant::now();
    for (i, chunk) in pcm.chunks(320).enumerate() {
        let payload: Vec<u8> = chunk.iter().flat_map(|s| s.to_be_bytes()).collect();
        let mut packet = Vec::new();
        write_packet(
            96,
            7 + i as u16,
            1000 + 320 * i as u32,
            0xABCD,
            &payload,
            &mut packet,
        );
        let due = t0 + Duration::from_millis(20 * i as u64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        sock.send_to(&packet, ("127.0.0.1", port)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(src.bye().status, 200);
    let sessions = wait_sessions(&server.recordings(), 1, Duration::from_secs(10));
    let (channels, rate, leg) = read_wav(&sessions[0].join("1.wav")).unwrap();
    assert_eq!((channels, rate), (1, 16_000));
    assert!(
        find(&leg, &pcm).is_some(),
        "the 16 kHz source, sample for sample"
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sessions[0].join("session.json")).unwrap()).unwrap();
    assert_eq!(meta["streams"][0]["codec"], "L16");
    assert_eq!(meta["streams"][0]["clock_rate"], 16000);
}
