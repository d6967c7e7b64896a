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

/// G.722 (static PT 9, `G722/8000` under RFC 3551's clock-rate quirk): the answer keeps it
/// and telephone-event/8000, the leg is recorded at 16 kHz, and it is exactly what spandsp's
/// decoder (an independent implementation, tests/tools/g722_ref.py) makes of the same
/// spandsp-encoded stream. Then an Opus call on the same server (`opus_call`).
#[test]
fn wideband_g722_and_opus_are_recorded_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    // 1.5 s of 16 kHz audio.
    let a = source_audio(5, 12_000);
    let b = source_audio(6, 12_000);
    let pcm: Vec<i16> = a
        .iter()
        .zip(&b)
        .flat_map(|(x, y)| [*x / 2, *y / 2])
        .collect();
    let (coded, reference) = reference(dir.path(), "g722_ref.py", "g722", &pcm, &[]);
    assert_eq!((coded.len(), reference.len()), (12_000, 24_000));

    let server = Server::start(50, &[]);
    let ports = TestPorts::new(50);
    let mut src = Src::new(ports.src_sip, ports.sip, "g722@127.0.0.1");
    let (ct, body) = siprec_body(1, "sendonly", ports.src_rtp);
    let body = body.replace(
        "RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n",
        "RTP/AVP 9 0 101\r\na=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\n",
    );
    let ok = src.invite(&ct, &body);
    assert_eq!(ok.status, 200);
    let answer = String::from_utf8_lossy(&ok.body).to_string();
    assert!(answer.contains("a=rtpmap:9 G722/8000\r\n"), "{answer}");
    assert!(answer.contains("telephone-event/8000\r\n"), "{answer}");
    src.ack();
    let port = answer_ports(&answer)[0];
    let sock = UdpSocket::bind(("127.0.0.1", ports.src_rtp)).unwrap();
    let t0 = Instant::now();
    // 20 ms packets: 160 bytes, 320 samples, but 160 RTP timestamp units. The network swaps
    // a pair, reverses a run of three and delivers one packet three slots late.
    let chunks: Vec<&[u8]> = coded.chunks(160).collect();
    let order = send_order(chunks.len(), &[(10, 11), (30, 32), (60, 63)]);
    for (slot, &i) in order.iter().enumerate() {
        let mut packet = Vec::new();
        write_packet(
            9,
            100 + i as u16,
            5000 + 160 * i as u32,
            0x722,
            chunks[i],
            &mut packet,
        );
        let due = t0 + Duration::from_millis(20 * slot as u64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        sock.send_to(&packet, ("127.0.0.1", port)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(src.bye().status, 200);
    let sessions = wait_sessions(&server.recordings(), 1, Duration::from_secs(10));
    let (channels, rate, leg) = read_wav(&sessions[0].join("1.wav")).unwrap();
    assert_eq!((channels, rate), (1, 16_000));
    let at = find(&leg, &reference[..4000]).expect("spandsp's decoding, sample for sample");
    assert_eq!(
        &leg[at..at + reference.len()],
        &reference[..],
        "the whole stream"
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sessions[0].join("session.json")).unwrap()).unwrap();
    assert_eq!(meta["streams"][0]["codec"], "G722");
    assert_eq!(meta["streams"][0]["clock_rate"], 8000);
    assert_eq!(meta["streams"][0]["sample_rate"], 16000);
    // Decoded in sequence order: each reordered run (2, 3 and 4 packets) went through the
    // hold, the late packet that completes it included.
    assert_eq!(meta["streams"][0]["rtp"]["held_for_order"], 9);
    assert_eq!(meta["streams"][0]["rtp"]["too_late_for_decoder"], 0);
    drop((src, sock));
    opus_call(&server, &ports, dir.path());
}

/// Opus (`opus/48000/2`, in-band FEC) on the same server: recorded mono at 48 kHz exactly as
/// libopus decodes the stream when packet 20 never arrives and packet 21's FEC rebuilds it
/// (tests/tools/opus_ref.py makes the same calls).
fn opus_call(server: &Server, ports: &TestPorts, dir: &std::path::Path) {
    let pcm: Vec<i16> = source_audio(9, 48_000).iter().map(|s| s / 2).collect();
    let (stream, reference) = reference(dir, "opus_ref.py", "opus", &pcm, &["20"]);
    let mut packets = Vec::new();
    let mut rest = &stream[..];
    while rest.len() >= 2 {
        let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        packets.push(rest[2..2 + n].to_vec());
        rest = &rest[2 + n..];
    }
    assert_eq!((packets.len(), reference.len()), (50, 48_000));

    let mut src = Src::new(ports.src_sip, ports.sip, "opus@127.0.0.1");
    let (ct, body) = siprec_body(1, "sendonly", ports.src_rtp);
    let body = body.replace(
        "RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n",
        "RTP/AVP 111 101\r\na=rtpmap:111 opus/48000/2\r\na=fmtp:111 useinbandfec=1\r\n",
    );
    let ok = src.invite(&ct, &body);
    assert_eq!(ok.status, 200);
    let answer = String::from_utf8_lossy(&ok.body).to_string();
    assert!(answer.contains("a=rtpmap:111 opus/48000/2\r\n"), "{answer}");
    src.ack();
    let port = answer_ports(&answer)[0];
    let sock = UdpSocket::bind(("127.0.0.1", ports.src_rtp)).unwrap();
    let t0 = Instant::now();
    // Reordered too: a swapped pair and a packet two slots late.
    let order = send_order(packets.len(), &[(30, 31), (40, 42)]);
    for (slot, &i) in order.iter().enumerate() {
        let p = &packets[i];
        let due = t0 + Duration::from_millis(20 * slot as u64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        if i == 20 {
            continue; // Lost on the way.
        }
        let mut packet = Vec::new();
        write_packet(
            111,
            40 + i as u16,
            2000 + 960 * i as u32,
            0x0905,
            p,
            &mut packet,
        );
        sock.send_to(&packet, ("127.0.0.1", port)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(src.bye().status, 200);
    let sessions = wait_sessions(&server.recordings(), 2, Duration::from_secs(10));
    let dir = sessions
        .iter()
        .find(|d| {
            std::fs::read_to_string(d.join("session.json")).is_ok_and(|j| j.contains("opus@"))
        })
        .unwrap();
    let (channels, rate, leg) = read_wav(&dir.join("1.wav")).unwrap();
    assert_eq!((channels, rate), (1, 48_000));
    let at = find(&leg, &reference[..4800]).expect("libopus's decoding, sample for sample");
    assert_eq!(
        &leg[at..at + reference.len()],
        &reference[..],
        "the whole call, FEC included"
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("session.json")).unwrap()).unwrap();
    assert_eq!(meta["streams"][0]["codec"], "opus");
    assert_eq!(meta["streams"][0]["rtp"]["lost"], 1);
    assert_eq!(meta["streams"][0]["rtp"]["concealed_samples"], 960);
}

/// G.729 (static PT 18, 20 ms = two 10-byte frames per packet): recorded at 8 kHz exactly as
/// bcg729's own decoder (tests/tools/g729_ref.py) decodes the bcg729-encoded stream; a trailing
/// Annex B SID frame and a mid-call switch to PCMU (same rate) are followed.
#[test]
fn g729_is_recorded_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let pcm: Vec<i16> = source_audio(7, 8_000).iter().map(|s| s / 2).collect();
    let (coded, reference) = reference(dir.path(), "g729_ref.py", "g729", &pcm, &[]);
    assert_eq!((coded.len(), reference.len()), (1000, 8000));

    let server = Server::start(51, &[]);
    let ports = TestPorts::new(51);
    let mut src = Src::new(ports.src_sip, ports.sip, "g729@127.0.0.1");
    let (ct, body) = siprec_body(1, "sendonly", ports.src_rtp);
    let body = body.replace(
        "RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n",
        "RTP/AVP 18 0 101\r\na=rtpmap:18 G729/8000\r\na=fmtp:18 annexb=yes\r\n\
         a=rtpmap:0 PCMU/8000\r\n",
    );
    let ok = src.invite(&ct, &body);
    assert_eq!(ok.status, 200);
    let answer = String::from_utf8_lossy(&ok.body).to_string();
    assert!(answer.contains("a=rtpmap:18 G729/8000\r\n"), "{answer}");
    src.ack();
    let port = answer_ports(&answer)[0];
    let sock = UdpSocket::bind(("127.0.0.1", ports.src_rtp)).unwrap();
    let t0 = Instant::now();
    let chunks: Vec<&[u8]> = coded.chunks(20).collect();
    let packets = chunks.len();
    // A swapped pair and a run of three reversed on the way.
    let order = send_order(packets, &[(5, 6), (20, 22)]);
    for (slot, &i) in order.iter().enumerate() {
        let mut payload = chunks[i].to_vec();
        if i == packets - 1 {
            payload.extend_from_slice(&[0x2a, 0x80]); // An Annex B SID frame ends the talk.
        }
        let mut packet = Vec::new();
        write_packet(
            18,
            300 + i as u16,
            9000 + 160 * i as u32,
            0x729,
            &payload,
            &mut packet,
        );
        let due = t0 + Duration::from_millis(20 * slot as u64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        sock.send_to(&packet, ("127.0.0.1", port)).unwrap();
    }
    // Then PCMU on the same stream (PT switch, same 8 kHz): decoded too.
    let tail = ulaw_roundtrip(&source_audio(8, 800));
    let ulaw: Vec<u8> = source_audio(8, 800)
        .iter()
        .map(|&s| siprec::media::g711::linear_to_ulaw(s))
        .collect();
    let mut packet = Vec::new();
    let i = packets + 1;
    write_packet(
        0,
        300 + i as u16,
        9000 + 160 * i as u32,
        0x729,
        &ulaw[..160],
        &mut packet,
    );
    std::thread::sleep(Duration::from_millis(20));
    sock.send_to(&packet, ("127.0.0.1", port)).unwrap();
    // The next PCMU packet is lost; the one after arrives: the gap is concealed.
    let i = packets + 3;
    packet.clear();
    write_packet(
        0,
        300 + i as u16,
        9000 + 160 * i as u32,
        0x729,
        &ulaw[320..480],
        &mut packet,
    );
    std::thread::sleep(Duration::from_millis(40));
    sock.send_to(&packet, ("127.0.0.1", port)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(src.bye().status, 200);
    let sessions = wait_sessions(&server.recordings(), 1, Duration::from_secs(10));
    let (channels, rate, leg) = read_wav(&sessions[0].join("1.wav")).unwrap();
    assert_eq!((channels, rate), (1, 8_000));
    // G.711 concealment: the last packet heard, repeated and fading over 60 ms.
    let concealed: Vec<i16> = (0..160)
        .map(|k| (f32::from(tail[k]) * (1.0 - k as f32 / 480.0)) as i16)
        .collect();
    let p = find(&leg, &tail[..160]).expect("the PCMU packet after the switch");
    assert_eq!(
        &leg[p + 160..p + 320],
        &concealed[..],
        "the lost packet, concealed"
    );
    assert_eq!(
        &leg[p + 320..p + 480],
        &tail[320..480],
        "then the next packet"
    );
    let at = find(&leg, &reference[..800]).expect("bcg729's decoding, sample for sample");
    assert_eq!(
        &leg[at..at + reference.len()],
        &reference[..],
        "the whole stream"
    );
    assert!(
        find(&leg, &tail[..160]).is_some(),
        "the PCMU packet after the switch"
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sessions[0].join("session.json")).unwrap()).unwrap();
    assert_eq!(meta["streams"][0]["codec"], "G729");
    assert_eq!(meta["streams"][0]["rtp"]["concealed_samples"], 160);
}

/// Runs the reference codec tool `tests/tools/{tool}` in `dir` on `pcm` (written as
/// `{stem}.raw`, little-endian): the encoding it wrote and its own decoding of it.
fn reference(
    dir: &std::path::Path,
    tool: &str,
    stem: &str,
    pcm: &[i16],
    extra: &[&str],
) -> (Vec<u8>, Vec<i16>) {
    let raw: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    let (input, coded, decoded) = (
        format!("{stem}.raw"),
        format!("{stem}.coded"),
        format!("{stem}.decoded"),
    );
    std::fs::write(dir.join(&input), raw).unwrap();
    let path = format!("{}/tests/tools/{tool}", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("python3")
        .arg(path)
        .args([&input, &coded, &decoded])
        .args(extra)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let reference = std::fs::read(dir.join(&decoded))
        .unwrap()
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    (std::fs::read(dir.join(&coded)).unwrap(), reference)
}

/// Packet indices in sending order, with each (a, b) pair of slots swapped, as a network that
/// reorders delivers them.
fn send_order(n: usize, swaps: &[(usize, usize)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for &(a, b) in swaps {
        order.swap(a, b);
    }
    order
}

/// A one-stream SIPREC call (`siprec_body` with the `offer` replacements): plays what
/// `packets` schedules for the answered RTP port, then hangs up.
fn play_call(
    ports: &TestPorts,
    call_id: &str,
    offer: &[(&str, &str)],
    packets: impl FnOnce(u16) -> Vec<Scheduled>,
) {
    let mut src = Src::new(ports.src_sip, ports.sip, call_id);
    let (ct, mut body) = siprec_body(1, "sendonly", ports.src_rtp);
    for (from, to) in offer {
        body = body.replace(from, to);
    }
    let ok = src.invite(&ct, &body);
    assert_eq!(ok.status, 200);
    src.ack();
    let port = answer_ports(&String::from_utf8_lossy(&ok.body))[0];
    let sock = UdpSocket::bind(("127.0.0.1", ports.src_rtp)).unwrap();
    play(&sock, packets(port), Instant::now());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(src.bye().status, 200);
}

/// Packets of `payloads` (RTP `pt`, timestamps counting `units_per_byte` per payload byte
/// from `ts0`, sequence from `seq0`) scheduled by their timestamp at `rate` units per second.
fn schedule_by_ts(
    port: u16,
    pt: u8,
    (seq0, ts0): (u16, u32),
    rate: u32,
    payloads: &[(u32, bool, Vec<u8>)],
) -> Vec<Scheduled> {
    payloads
        .iter()
        .enumerate()
        .map(|(i, (ts, marker, payload))| {
            let mut bytes = Vec::new();
            let pt = if payload.len() == 1 { 13 } else { pt }; // one byte: RFC 3389 CN
            write_packet(pt, seq0 + i as u16, ts0 + ts, 0xC0DE, payload, &mut bytes);
            if *marker {
                bytes[1] |= 0x80;
            }
            let at = Duration::from_micros(u64::from(*ts) * 1_000_000 / u64::from(rate));
            Scheduled { at, port, bytes }
        })
        .collect()
}

/// ptime changing mid-call (10, 30, 60, 20 ms on PCMU; 20, 40, 10 ms on G.722) and RFC 3389
/// comfort noise: the recording stays sample-aligned. The PCMU leg is the source exactly,
/// with silence of exactly the CN period's length (not concealment: no sequence gap); the
/// G.722 leg is spandsp's decoding of the whole stream, sample for sample.
#[test]
fn ptime_changes_and_comfort_noise_keep_recordings_aligned() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(53, &[]);
    let ports = TestPorts::new(53);

    // PCMU: 13,760 samples in four ptimes, 0.5 s of CN, then 0.5 s of talk after a marker.
    let pcm = source_audio(12, 13_760);
    let after = source_audio(13, 4000);
    let mut payloads = Vec::new();
    let mut at = 0usize;
    for (ptime_samples, until) in [(80, 4000), (240, 8800), (480, 12_160), (160, 13_760)] {
        while at < until {
            let chunk = &pcm[at..at + ptime_samples];
            let ulaw = chunk
                .iter()
                .map(|&s| siprec::media::g711::linear_to_ulaw(s));
            payloads.push((at as u32, false, ulaw.collect::<Vec<u8>>()));
            at += ptime_samples;
        }
    }
    for k in 0..5 {
        payloads.push((13_760 + 800 * k, false, vec![0x40])); // CN every 100 ms
    }
    for (k, chunk) in after.chunks(160).enumerate() {
        let ulaw = chunk
            .iter()
            .map(|&s| siprec::media::g711::linear_to_ulaw(s));
        payloads.push((17_760 + 160 * k as u32, k == 0, ulaw.collect()));
    }
    play_call(&ports, "ptime@127.0.0.1", &[], |port| {
        schedule_by_ts(port, 0, (7, 1000), 8000, &payloads)
    });
    let sessions = wait_sessions(&server.recordings(), 1, Duration::from_secs(10));
    let (_, _, leg) = read_wav(&sessions[0].join("1.wav")).unwrap();
    let want = ulaw_roundtrip(&pcm);
    let p = find(&leg, &want[..800]).expect("the first packets");
    assert_eq!(&leg[p..p + want.len()], &want[..], "every ptime, in place");
    let silence = &leg[p + 13_760..p + 17_760];
    assert!(
        silence.iter().all(|&s| s == 0),
        "CN: silence, not concealment"
    );
    assert_eq!(
        &leg[p + 17_760..p + 21_760],
        &ulaw_roundtrip(&after)[..],
        "talk after CN, exactly where its timestamps put it"
    );
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sessions[0].join("session.json")).unwrap()).unwrap();
    assert_eq!(meta["streams"][0]["rtp"]["comfort_noise"], 5);
    assert_eq!(meta["streams"][0]["rtp"]["concealed_samples"], 0);
    assert_eq!(meta["streams"][0]["rtp"]["lost"], 0);

    // G.722: 1.5 s at 16 kHz in 20, 40 and 10 ms packets (160, 320, 80 bytes).
    let a = source_audio(14, 12_000);
    let b = source_audio(15, 12_000);
    let wide: Vec<i16> = a
        .iter()
        .zip(&b)
        .flat_map(|(x, y)| [*x / 2, *y / 2])
        .collect();
    let (coded, reference) = reference(dir.path(), "g722_ref.py", "g722", &wide, &[]);
    let mut payloads = Vec::new();
    let mut at = 0usize;
    for (bytes, until) in [(160, 4000), (320, 7840), (80, 12_000)] {
        while at < until {
            payloads.push((at as u32, false, coded[at..at + bytes].to_vec()));
            at += bytes;
        }
    }
    let g722 = (
        "RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n",
        "RTP/AVP 9 101\r\na=rtpmap:9 G722/8000\r\n",
    );
    // The G.722 RTP clock is 8000 Hz: one unit per byte.
    play_call(&ports, "ptime722@127.0.0.1", &[g722], |port| {
        schedule_by_ts(port, 9, (300, 7), 8000, &payloads)
    });
    let sessions = wait_sessions(&server.recordings(), 2, Duration::from_secs(10));
    let dir = sessions
        .iter()
        .find(|d| {
            std::fs::read_to_string(d.join("session.json")).is_ok_and(|j| j.contains("ptime722@"))
        })
        .unwrap();
    let (_, rate, leg) = read_wav(&dir.join("1.wav")).unwrap();
    assert_eq!(rate, 16_000);
    let p = find(&leg, &reference[..4000]).expect("spandsp's decoding");
    assert_eq!(&leg[p..p + reference.len()], &reference[..], "every ptime");
}
