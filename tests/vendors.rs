//! Every vendor profile of tests/golden against the real server on 127.0.0.1: the vendor's
//! INVITE (addresses rewritten to loopback), paced RTP with known audio on every accepted
//! m-line in the answered codec, BYE; each leg's WAV must hold exactly the decoded audio and
//! mixed.wav must carry one channel per leg.

mod common;

use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use siprec::media::g711;
use siprec::media::rtp::write_packet;
use siprec::sink::recorder::read_wav;
use siprec::sip::{self, Message};

const PROFILES: &[&str] = &[
    "cisco-cube",
    "avaya-sbce",
    "oracle-sbc",
    "broadworks",
    "metaswitch",
    "cisco-nbr",
    "mixed-single",
    "freeswitch",
];

#[test]
fn every_vendor_profile_records_every_leg() {
    let server = Server::start(3, &[]);
    let ports = TestPorts::new(3);
    let rtp = UdpSocket::bind(("127.0.0.1", ports.src_rtp)).unwrap();
    for (n, profile) in PROFILES.iter().enumerate() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(profile);
        let Ok(Message::Request(mut invite)) =
            sip::parse_datagram(&std::fs::read(path.join("invite.sip")).unwrap())
        else {
            panic!("{profile}: golden INVITE does not parse");
        };
        let call_id = format!("vendor-{profile}-{n}");
        let mut src = Src::new(ports.src_sip, ports.sip, &call_id);
        // Loopback instead of the documentation addresses, our socket as Via and Contact.
        invite.uri = format!("sip:srs@127.0.0.1:{}", ports.sip);
        invite.headers.set(
            "Via",
            format!(
                "SIP/2.0/UDP 127.0.0.1:{};branch=z9hG4bKv{n};rport",
                ports.src_sip
            ),
        );
        invite.headers.set("Call-ID", call_id.clone());
        invite.headers.set(
            "Contact",
            format!("<sip:src@127.0.0.1:{}>;+sip.src", ports.src_sip),
        );
        src.from_tag = invite
            .from()
            .and_then(|f| f.tag().map(str::to_owned))
            .unwrap();
        src.cseq = invite.cseq().unwrap().seq;
        let ok = src.transact(&invite);
        assert_eq!(ok.status, 200, "{profile}");
        src.ack();
        let answer = String::from_utf8_lossy(&ok.body).to_string();
        let legs: Vec<(u16, u8)> = answer
            .lines()
            .filter_map(|l| l.strip_prefix("m=audio "))
            .map(|l| {
                let mut f = l.split(' ');
                let port: u16 = f.next().unwrap().parse().unwrap();
                let pt: u8 = f.nth(1).unwrap().parse().unwrap();
                (port, pt)
            })
            .filter(|(port, _)| *port != 0)
            .collect();
        assert!(!legs.is_empty(), "{profile}: {answer}");

        // One second of distinct audio per leg, encoded as answered.
        let t0 = Instant::now();
        let mut schedule = Vec::new();
        let mut expected = Vec::new();
        for (i, &(port, pt)) in legs.iter().enumerate() {
            let pcm = source_audio(10 + i as u32, 8000);
            let encode: fn(i16) -> u8 = if pt == 8 {
                g711::linear_to_alaw
            } else {
                g711::linear_to_ulaw
            };
            let decode: fn(u8) -> i16 = if pt == 8 {
                g711::alaw_to_linear
            } else {
                g711::ulaw_to_linear
            };
            expected.push(pcm.iter().map(|&s| decode(encode(s))).collect::<Vec<i16>>());
            for (k, chunk) in pcm.chunks(160).enumerate() {
                let payload: Vec<u8> = chunk.iter().map(|&s| encode(s)).collect();
                let mut bytes = Vec::new();
                write_packet(
                    pt,
                    k as u16,
                    160 * k as u32,
                    0xABC0 + i as u32,
                    &payload,
                    &mut bytes,
                );
                schedule.push(Scheduled {
                    at: Duration::from_millis(20 * k as u64),
                    port,
                    bytes,
                });
            }
        }
        play(&rtp, schedule, t0);
        std::thread::sleep(Duration::from_millis(100));
        src.call_id = call_id.clone();
        assert_eq!(src.bye().status, 200, "{profile}");

        let sessions = wait_sessions(&server.recordings(), n + 1, Duration::from_secs(10));
        let dir = sessions
            .iter()
            .find(|d| {
                d.to_string_lossy()
                    .contains(&format!("vendor-{profile}-{n}"))
            })
            .unwrap_or_else(|| panic!("{profile}: no session dir; log:\n{}", server.log_text()));
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("session.json")).unwrap()).unwrap();
        let streams = meta["streams"].as_array().unwrap();
        let (_, _, mixed) = read_wav(&dir.join("mixed.wav")).unwrap();
        for (i, want) in expected.iter().enumerate() {
            let file = streams[i]["file"].as_str().unwrap();
            let (channels, rate, leg) = read_wav(&dir.join(file)).unwrap();
            assert_eq!((channels, rate), (1, 8000), "{profile} {file}");
            let at = find(&leg, &want[..800])
                .unwrap_or_else(|| panic!("{profile} {file}: audio not found"));
            assert_eq!(
                &leg[at..at + want.len()],
                &want[..],
                "{profile} {file}: exact audio"
            );
            assert_eq!(
                channel(&mixed, legs.len(), i),
                leg,
                "{profile}: mixed channel {i}"
            );
        }
    }
}
