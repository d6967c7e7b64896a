//! Fuzz targets: every parser and state machine that network input reaches, with the
//! invariants each must keep, not only "no panic". `fuzz/` drives them with libFuzzer
//! (`cargo +nightly fuzz run <target>`, `fuzz/run.sh` for long runs); `tests/fuzz_smoke.rs`
//! runs them on stable over the golden corpus and deterministic mutations of it, in the test
//! suite. A violated invariant panics with what broke.

use std::time::{Duration, Instant};

use crate::media::rtp::{parse_header, PayloadKind, RtpReceiver, StreamParams};
use crate::media::{MediaFrame, StreamKey, FRAME_SAMPLES_MAX};
use crate::sip::{self, Peer, StreamFramer, TransactionLayer, Transport, TsxConfig};
use crate::srtp::{MasterKey, Options, Receiver, Sender, SrtpParams, Suite};

/// One fuzz target: panics when an invariant breaks.
pub type Target = fn(&[u8]);

/// The targets by name, for the harnesses.
pub const TARGETS: &[(&str, Target)] = &[
    ("sip_message", sip_message),
    ("sip_stream", sip_stream),
    ("sip_transactions", sip_transactions),
    ("sdp", sdp),
    ("metadata", metadata),
    ("multipart", multipart),
    ("rtp", rtp),
    ("rtcp", rtcp),
    ("srtp", srtp),
];

/// A SIP datagram: what parses re-encodes to text that parses to the same encoding.
pub fn sip_message(data: &[u8]) {
    let Ok(msg) = sip::parse_datagram(data) else {
        return;
    };
    let mut once = Vec::new();
    msg.encode(&mut once);
    let again = sip::parse_datagram(&once)
        .unwrap_or_else(|e| panic!("our own encoding does not parse: {e}"));
    let mut twice = Vec::new();
    again.encode(&mut twice);
    assert!(once == twice, "encoding is not stable");
}

/// A SIP byte stream (TCP/TLS): cut anywhere, the framer yields the same messages as whole.
pub fn sip_stream(data: &[u8]) {
    let whole = frame_all(&[data]);
    let cut = data.len() / 3;
    let parts = frame_all(&[&data[..cut], &data[cut..]]);
    assert!(
        whole == parts,
        "framing depends on where the stream was cut"
    );
}

fn frame_all(chunks: &[&[u8]]) -> Vec<Result<Vec<u8>, ()>> {
    let mut f = StreamFramer::new();
    let mut out = Vec::new();
    for chunk in chunks {
        f.push(chunk);
        while let Some(r) = f.next_message() {
            let failed = r.is_err();
            out.push(
                r.map(|m| {
                    let mut b = Vec::new();
                    m.encode(&mut b);
                    b
                })
                .map_err(|_| ()),
            );
            if failed {
                return out; // the connection closes at a framing error
            }
        }
    }
    out
}

/// Messages (separated by a NUL) into the transaction layer with time moving on: every input
/// yields a bounded amount of output, and all timers run out.
pub fn sip_transactions(data: &[u8]) {
    let mut layer = TransactionLayer::new(TsxConfig::default());
    let t0 = Instant::now();
    let peer = Peer {
        transport: Transport::Udp,
        addr: "192.0.2.1:5060".parse().expect("literal address"),
        conn: Some(0),
    };
    let mut outputs = 0usize;
    for (i, part) in data.split(|&b| b == 0).take(64).enumerate() {
        let now = t0 + Duration::from_millis(10 * i as u64);
        if let Ok(msg) = sip::parse_datagram(part) {
            layer.handle_message(now, peer, msg);
        }
        layer.handle_timeout(now);
        let mut n = 0;
        while layer.poll_output().is_some() {
            n += 1;
            assert!(n <= 64, "one message made more than 64 outputs");
        }
        outputs += n;
    }
    // Every transaction ends within a minute of its last message (Timers B/F/H/J/K ≤ 64×T1).
    for s in [1, 5, 40, 120] {
        layer.handle_timeout(t0 + Duration::from_secs(s));
        while layer.poll_output().is_some() {
            outputs += 1;
        }
    }
    let _ = outputs;
}

/// An SDP offer: what parses gets an answer that parses back with one m-line per offered one.
pub fn sdp(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(offer) = crate::sdp::parse(&text) else {
        return;
    };
    for require_srtp in [false, true] {
        let policy = crate::sdp::AnswerPolicy { require_srtp };
        let Ok(plan) = crate::sdp::plan_answer(&offer, policy) else {
            continue;
        };
        assert_eq!(plan.len(), offer.media.len(), "one plan entry per m-line");
        let params = crate::sdp::AnswerParams {
            local_addr: "192.0.2.9".parse().expect("literal address"),
            session_id: 1,
            session_version: 1,
            ports: plan
                .iter()
                .map(|p| p.accept.as_ref().map(|_| 10_000))
                .collect(),
            crypto: vec![None; plan.len()],
        };
        let answer = crate::sdp::render_answer(&offer, &plan, &params);
        let parsed = crate::sdp::parse(&answer)
            .unwrap_or_else(|e| panic!("our answer does not parse ({e}):\n{answer}"));
        assert_eq!(
            parsed.media.len(),
            offer.media.len(),
            "answer m-lines != offer's"
        );
    }
}

/// RFC 7865 metadata: what parses is bounded and serializes.
pub fn metadata(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(m) = crate::siprec::metadata::parse(&text) else {
        return;
    };
    let total = m.participants.len() + m.streams.len() + m.sessions.len() + m.groups.len();
    assert!(total <= 10_000, "more elements than the parser allows");
    serde_json::to_string(&m).expect("metadata serializes");
}

/// A multipart INVITE body (the first line is the Content-Type): the parts found are pieces of
/// the body.
pub fn multipart(data: &[u8]) {
    let (ct, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (
            String::from_utf8_lossy(&data[..i]).into_owned(),
            &data[i + 1..],
        ),
        None => return,
    };
    let Ok(parts) = crate::siprec::body::split_body(Some(&ct), body) else {
        return;
    };
    let text = String::from_utf8_lossy(body);
    for part in [parts.sdp.as_deref(), parts.metadata.as_deref()]
        .into_iter()
        .flatten()
    {
        assert!(
            text.contains(part.trim()),
            "a part that is not in the body: {part:?}"
        );
    }
}

/// An RTP packet into a stream that knows every codec: the header's payload lies inside the
/// packet, frames stay within bounds, and a packet yields a bounded number of frames.
pub fn rtp(data: &[u8]) {
    if let Some(h) = parse_header(data) {
        assert!(h.payload_start <= h.payload_end && h.payload_end <= data.len());
    }
    let mut payload_types = [None; 128];
    for (pt, kind) in [
        (0, PayloadKind::Pcmu),
        (8, PayloadKind::Pcma),
        (9, PayloadKind::G722),
        (13, PayloadKind::ComfortNoise),
        (18, PayloadKind::G729),
        (96, PayloadKind::L16),
        (101, PayloadKind::TelephoneEvent),
        (111, PayloadKind::Opus),
    ] {
        payload_types[pt] = Some(kind);
    }
    let key = StreamKey {
        session: 1,
        stream: 0,
    };
    let params = StreamParams::plain(key, payload_types, 8000);
    let mut rx = RtpReceiver::new(params);
    let mut frame = MediaFrame::empty();
    // The input as a few packets (NUL NUL separates them), so state carries between them.
    for (i, packet) in data.split(|&b| b == 0xFF).take(16).enumerate() {
        if rx
            .handle_packet(1_000_000 * i as u64, packet, &mut frame)
            .is_ok()
        {
            let mut frames = 1;
            loop {
                assert!(
                    usize::from(frame.len) <= FRAME_SAMPLES_MAX,
                    "frame too long"
                );
                if !rx.next_frame(&mut frame) {
                    break;
                }
                frames += 1;
                assert!(frames <= 64, "one packet made more than 64 frames");
            }
        }
    }
}

/// RTCP (compound or not): parses without panicking.
pub fn rtcp(data: &[u8]) {
    let _ = crate::media::rtcp::parse(data);
}

/// SRTP with a known key: garbage never authenticates as anything longer than it is, and the
/// input as a payload survives protect → unprotect unchanged.
pub fn srtp(data: &[u8]) {
    for suite in [Suite::AesCm128HmacSha1_80, Suite::AeadAes128Gcm] {
        let material = vec![0x5a; suite.key_len() + suite.salt_len()];
        let key = MasterKey::new(suite, &material, None).expect("valid material");
        let params = SrtpParams {
            key,
            options: Options::default(),
        };
        let mut garbage = data.to_vec();
        if let Ok(n) = Receiver::new(&params).unprotect_rtp(&mut garbage) {
            assert!(n <= data.len());
        }
        let payload = &data[..data.len().min(1200)];
        let mut packet = Vec::new();
        crate::media::rtp::write_packet(0, 7, 160, 0x1234, payload, &mut packet);
        let len = packet.len();
        let mut sender = Sender::new(&params);
        packet.resize(len + 64, 0);
        let Some(out) = sender.protect_rtp(&mut packet, len) else {
            panic!("protect refused a valid RTP packet");
        };
        packet.truncate(out);
        let clear = Receiver::new(&params)
            .unprotect_rtp(&mut packet)
            .expect("our own SRTP authenticates");
        let mut expected = Vec::new();
        crate::media::rtp::write_packet(0, 7, 160, 0x1234, payload, &mut expected);
        assert!(
            packet[..clear] == expected[..],
            "round trip changed the packet"
        );
    }
}

/// Deterministic mutations of `seed` (bit flips, truncations, duplicated spans, inserted
/// special bytes), for the stable smoke run.
pub fn mutations(seed: &[u8], count: usize, mut state: u64) -> Vec<Vec<u8>> {
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let mut m = seed.to_vec();
        for _ in 0..1 + next() % 4 {
            if m.is_empty() {
                m.push(next() as u8);
                continue;
            }
            let at = (next() as usize) % m.len();
            match next() % 6 {
                0 => m[at] ^= 1 << (next() % 8),
                1 => m.truncate(at),
                2 => {
                    let end = (at + (next() as usize) % 64).min(m.len());
                    let span = m[at..end].to_vec();
                    m.splice(at..at, span);
                }
                3 => m.insert(
                    at,
                    [0, b'\r', b'\n', 0xFF, b':', b'<'][(next() % 6) as usize],
                ),
                4 => m[at] = b"0123456789"[(next() % 10) as usize],
                _ => {
                    let end = (at + (next() as usize) % 32).min(m.len());
                    m.drain(at..end);
                }
            }
        }
        out.push(m);
    }
    out
}
