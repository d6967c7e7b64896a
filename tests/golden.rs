//! Golden tests: vendor-shaped INVITEs (tests/golden/<profile>/invite.sip, written from the
//! vendors' public SIPREC documentation patterns with RFC 5737 addresses) go through the real
//! parser, transaction layer and session manager; the SDP answer must equal
//! expected-answer.sdp and the metadata model must name the expected participants. Then a
//! hold re-INVITE and a partial-metadata UPDATE, and a mutation run that must never panic.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Instant;

use siprec::session::ports::PortPool;
use siprec::session::{Action, Now, SessionConfig, SessionManager};
use siprec::sink::recorder::{RecorderCommand, RecorderEvent};
use siprec::sip::{self, Message, Output, Peer, Request, Response, TransactionLayer, Transport};

const PROFILES: &[&str] = &[
    "cisco-cube",
    "avaya-sbce",
    "oracle-sbc",
    "broadworks",
    "metaswitch",
    "cisco-nbr",
    "mixed-single",
    "freeswitch",
    "cisco-cube-srtp",
    "oracle-sbc-srtp",
];

fn dir(profile: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(profile)
}

fn config() -> SessionConfig {
    SessionConfig {
        max_concurrent_calls: 100,
        require_siprec: false,
        rtp_timeout_ns: 30_000_000_000,
        max_duration_ns: 0,
        recording_root: PathBuf::from("/rec"),
        combine_legs: true,
        recording_format: siprec::sink::recorder::AudioFormat::Wav,
        recording_encrypted: false,
        advertised_ip: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
        fallback_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        sip_port: 5060,
        sip_tls_port: 5061,
        seed: 7,
        key_source: |b| b.iter_mut().enumerate().for_each(|(i, x)| *x = i as u8),
        require_srtp: false,
        max_calls_per_source: 0,
        transcribe: None,
        keywords: Vec::new(),
    }
}

fn now(ms: u64) -> Now {
    Now {
        mono_ns: 5_000_000_000 + ms * 1_000_000,
        unix_ms: 1_795_256_101_000 + ms,
    }
}

/// Drives one message through a transaction layer into the manager; returns its actions.
struct Harness {
    tsx: TransactionLayer,
    sessions: SessionManager,
    ports: PortPool,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            tsx: TransactionLayer::new(Default::default()),
            sessions: SessionManager::new(config()),
            ports: PortPool::new(10000, 10999, 0),
        }
    }

    fn feed(&mut self, at: Now, message: Message) -> Vec<Action> {
        let peer = Peer {
            transport: Transport::Udp,
            addr: SocketAddr::from(([198, 51, 100, 10], 5060)),
            conn: Some(0),
        };
        self.tsx.handle_message(Instant::now(), peer, message);
        let mut actions = Vec::new();
        while let Some(out) = self.tsx.poll_output() {
            if let Output::Event(e) = out {
                self.sessions.handle_tsx_event(at, &mut self.ports, e);
            }
        }
        while let Some(a) = self.sessions.poll_action() {
            actions.push(a);
        }
        actions
    }
}

fn response(actions: &[Action]) -> &Response {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Respond { response, .. } => Some(response),
            _ => None,
        })
        .expect("a response")
}

fn normalize(answer: &str) -> String {
    answer
        .lines()
        .map(|l| match l.strip_prefix("o=siprec ") {
            Some(rest) => {
                let mut parts = rest.splitn(2, ' ');
                let _id = parts.next();
                format!("o=siprec SID {}", parts.next().unwrap_or(""))
            }
            None => l.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\r\n")
        + "\r\n"
}

fn load_invite(profile: &str) -> Request {
    let bytes = std::fs::read(dir(profile).join("invite.sip")).unwrap();
    match sip::parse_datagram(&bytes) {
        Ok(Message::Request(r)) => r,
        other => panic!("{profile}: {other:?}"),
    }
}

/// Every profile: answer SDP byte-for-byte as expected, streams named by label, participants
/// from the metadata (or From/To for plain SDP).
#[test]
fn vendor_invites_answer_as_expected() {
    for profile in PROFILES {
        let mut h = Harness::new();
        let actions = h.feed(now(0), Message::Request(load_invite(profile)));
        let resp = response(&actions);
        assert_eq!(resp.status, 200, "{profile}");
        assert_eq!(
            resp.headers.get("Content-Type"),
            Some("application/sdp"),
            "{profile}"
        );
        let expected = std::fs::read_to_string(dir(profile).join("expected-answer.sdp"))
            .unwrap()
            .replace("PORT0", "10000")
            .replace("PORT1", "10002");
        let answer = normalize(&String::from_utf8_lossy(&resp.body));
        assert_eq!(answer, expected, "{profile}");

        let spec: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir(profile).join("expected.json")).unwrap(),
        )
        .unwrap();
        let summaries = h.sessions.summaries();
        let participants: Vec<&str> = summaries[0]
            .participants
            .iter()
            .map(String::as_str)
            .collect();
        let want: Vec<&str> = spec["participants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(participants, want, "{profile}");
        let stems = actions.iter().find_map(|a| match a {
            Action::Recorder(RecorderCommand::StartSession { streams, .. }) => Some(
                streams
                    .iter()
                    .map(|s| s.file_stem.clone())
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        });
        let labels: Vec<String> = spec["labels"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, l)| match l.as_str() {
                Some("mixed") => "mixed-0".to_owned(),
                Some(l) => l.to_owned(),
                None => format!("stream{i}"),
            })
            .collect();
        assert_eq!(stems.unwrap(), labels, "{profile}");
        let opened = actions
            .iter()
            .filter(|a| matches!(a, Action::OpenStream { .. }))
            .count();
        assert_eq!(opened, labels.len(), "{profile}");
        // SRTP profiles: each stream is SRTP with the expected suite (plain ones: none).
        let suites: Vec<Option<&str>> = summaries[0].streams.iter().map(|s| s.srtp).collect();
        let want: Vec<Option<&str>> = match spec.get("srtp") {
            Some(v) => v.as_array().unwrap().iter().map(|s| s.as_str()).collect(),
            None => vec![None; suites.len()],
        };
        assert_eq!(suites, want, "{profile}");
    }
}

/// Every profile: a re-INVITE with the same offer on hold (a=inactive) answers a=inactive on
/// every m-line with the same ports; BYE ends it and session.json records the metadata.
#[test]
fn vendor_hold_reinvite_and_bye() {
    for profile in PROFILES {
        let mut h = Harness::new();
        let invite = load_invite(profile);
        let actions = h.feed(now(0), Message::Request(invite.clone()));
        let ok = response(&actions).clone();
        let tag = ok.to_tag().unwrap();
        let first_ports: Vec<String> = String::from_utf8_lossy(&ok.body)
            .lines()
            .filter(|l| l.starts_with("m="))
            .map(|l| l.split(' ').nth(1).unwrap().to_owned())
            .collect();

        let mut hold = invite.clone();
        let body = String::from_utf8_lossy(&invite.body).replace("a=sendonly", "a=inactive");
        let body = if body.contains("a=inactive") {
            body
        } else {
            body.replace("t=0 0\r\n", "t=0 0\r\na=inactive\r\n")
        };
        hold.body = body.into_bytes().into();
        hold.headers.set(
            "To",
            format!("{};tag={tag}", invite.headers.get("To").unwrap()),
        );
        hold.headers
            .set("CSeq", format!("{} INVITE", invite.cseq().unwrap().seq + 1));
        hold.headers
            .set("Via", "SIP/2.0/UDP 198.51.100.10:5060;branch=z9hG4bKhold1");
        let actions = h.feed(now(5_000), Message::Request(hold));
        let resp = response(&actions);
        assert_eq!(resp.status, 200, "{profile}");
        let answer = String::from_utf8_lossy(&resp.body).to_string();
        let ports: Vec<String> = answer
            .lines()
            .filter(|l| l.starts_with("m="))
            .map(|l| l.split(' ').nth(1).unwrap().to_owned())
            .collect();
        assert_eq!(ports, first_ports, "{profile}: ports kept across hold");
        assert_eq!(
            answer.matches("a=inactive").count(),
            ports.len(),
            "{profile}: {answer}"
        );

        let mut bye = Request::new(sip::Method::Bye, "sip:siprec@192.0.2.1:5060");
        bye.headers
            .push("Via", "SIP/2.0/UDP 198.51.100.10:5060;branch=z9hG4bKbye1");
        bye.headers
            .push("From", invite.headers.get("From").unwrap());
        bye.headers.push(
            "To",
            format!("{};tag={tag}", invite.headers.get("To").unwrap()),
        );
        bye.headers.push("Call-ID", invite.call_id().unwrap());
        bye.headers
            .push("CSeq", format!("{} BYE", invite.cseq().unwrap().seq + 2));
        let actions = h.feed(now(9_000), Message::Request(bye));
        assert_eq!(response(&actions).status, 200, "{profile}");
        h.sessions.handle_recorder_event(
            now(9_400),
            &mut h.ports,
            RecorderEvent::SessionClosed {
                session: 1,
                files: vec![],
                streams: vec![],
                error: None,
            },
        );
        let written: Vec<Action> = std::iter::from_fn(|| h.sessions.poll_action()).collect();
        let json = written.iter().find_map(|a| match a {
            Action::WriteFile { bytes, .. } => Some(bytes.clone()),
            _ => None,
        });
        let v: serde_json::Value = serde_json::from_slice(&json.expect("session.json")).unwrap();
        assert_eq!(v["call_id"], invite.call_id().unwrap(), "{profile}");
        assert_eq!(v["duration_s"], 9.0, "{profile}");
        assert!(h.sessions.is_idle());
    }
}

/// Cisco CUBE: an UPDATE with partial metadata (a consult-transfer target joins, the customer
/// leaves) lands in session.json's metadata history with the new participant.
#[test]
fn partial_metadata_update() {
    let mut h = Harness::new();
    let invite = load_invite("cisco-cube");
    let tag = response(&h.feed(now(0), Message::Request(invite.clone())))
        .to_tag()
        .unwrap();
    let xml = "<?xml version=\"1.0\"?>\r\n<recording xmlns='urn:ietf:params:xml:ns:recording:1'>\
<datamode>partial</datamode>\
<participant participant_id=\"TkVXLVBBUlRJQ0lQQU5U\"><nameID aor=\"sip:supervisor@198.51.100.20\"><name>Supervisor</name></nameID></participant>\
<participantsessionassoc participant_id=\"u2xcHlAiEeqBQsgM2xDbBQ==\" session_id=\"u2xcHlAiEeqBPsgM2xDbBQ==\">\
<disassociate-time>2026-11-24T10:16:00Z</disassociate-time></participantsessionassoc></recording>";
    let mut update = Request::new(sip::Method::Update, "sip:siprec@192.0.2.1:5060");
    update
        .headers
        .push("Via", "SIP/2.0/UDP 198.51.100.10:5060;branch=z9hG4bKupd1");
    update
        .headers
        .push("From", invite.headers.get("From").unwrap());
    update
        .headers
        .push("To", format!("<sip:siprec@192.0.2.1>;tag={tag}"));
    update.headers.push("Call-ID", invite.call_id().unwrap());
    update.headers.push("CSeq", "102 UPDATE");
    update
        .headers
        .push("Content-Type", "application/rs-metadata+xml");
    update
        .headers
        .push("Content-Disposition", "recording-session");
    update.body = xml.as_bytes().to_vec().into();
    let actions = h.feed(now(1_000), Message::Request(update));
    let resp = response(&actions);
    assert_eq!(resp.status, 200);
    assert!(resp.body.is_empty(), "no SDP offer, no answer");
    let participants = h.sessions.summaries()[0].participants.clone();
    assert!(
        participants.contains(&"sip:supervisor@198.51.100.20".to_owned()),
        "{participants:?}"
    );
}

/// Mutated vendor INVITEs never panic anywhere from the parser to the session manager.
#[test]
fn mutated_vendor_invites_never_panic() {
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let specials = b"\r\n:;,=\"<>/ -\x00\xff0";
    for profile in PROFILES {
        let base = std::fs::read(dir(profile).join("invite.sip")).unwrap();
        let mut h = Harness::new();
        for i in 0..1500u64 {
            let mut m = base.clone();
            for _ in 0..(next() % 8 + 1) {
                let at = (next() as usize) % (m.len() + 1);
                match next() % 5 {
                    0 if at < m.len() => m[at] = next() as u8,
                    1 if at < m.len() => m[at] = specials[(next() as usize) % specials.len()],
                    2 => m.insert(at, specials[(next() as usize) % specials.len()]),
                    3 if at < m.len() => {
                        m.remove(at);
                    }
                    _ => m.truncate(at.max(1)),
                }
            }
            if let Ok(Message::Request(mut r)) = sip::parse_datagram(&m) {
                // Unique transaction and dialog per iteration so every mutation is processed.
                r.headers.set(
                    "Via",
                    format!("SIP/2.0/UDP 198.51.100.10;branch=z9hG4bKm{i}"),
                );
                r.headers.set("Call-ID", format!("mut-{i}"));
                let _ = h.feed(now(i), Message::Request(r));
            }
        }
    }
}
