//! Paired sans-IO tests of the session manager: SIP requests in (as the transaction layer
//! delivers them), responses and data-plane/recorder commands out. No sockets, no clock.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use super::*;
use crate::sip::{Method, Transport};

const MS: u64 = 1_000_000;

fn config() -> SessionConfig {
    SessionConfig {
        max_concurrent_calls: 2,
        require_siprec: false,
        rtp_timeout_ns: 30_000 * MS,
        max_duration_ns: 0,
        recording_root: PathBuf::from("/rec"),
        combine_legs: true,
        recording_format: crate::sink::recorder::AudioFormat::Wav,
        recording_encrypted: false,
        advertised_ip: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
        fallback_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        sip_port: 5060,
        sip_tls_port: 5061,
        seed: 42,
        key_source: |b| b.iter_mut().enumerate().for_each(|(i, x)| *x = i as u8),
        require_srtp: false,
        max_calls_per_source: 0,
        transcribe: None,
        keywords: Vec::new(),
    }
}

fn peer() -> Peer {
    Peer {
        transport: Transport::Udp,
        addr: SocketAddr::from(([198, 51, 100, 7], 5060)),
        conn: Some(0),
    }
}

fn now(ms: u64) -> Now {
    Now {
        mono_ns: 1_000 * MS + ms * MS,
        unix_ms: 1_762_863_004_493 + ms,
    }
}

/// A transaction key for request number `n` (keys are opaque; tests mint them through a
/// real transaction layer so they stay valid whatever their representation).
struct Keys {
    layer: crate::sip::TransactionLayer,
    n: u32,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            layer: crate::sip::TransactionLayer::new(Default::default()),
            n: 0,
        }
    }

    /// Runs `req` through a transaction layer to obtain the event the manager would see.
    fn event(&mut self, mut req: Request) -> TsxEvent {
        self.n += 1;
        req.headers.set(
            "Via",
            format!("SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKt{}", self.n),
        );
        self.layer.handle_message(
            std::time::Instant::now(),
            peer(),
            crate::sip::Message::Request(req),
        );
        while let Some(out) = self.layer.poll_output() {
            if let crate::sip::Output::Event(e) = out {
                return e;
            }
        }
        panic!("transaction layer delivered no event");
    }
}

fn invite(
    call_id: &str,
    cseq: u32,
    to_tag: Option<&str>,
    body: &str,
    content_type: &str,
) -> Request {
    let mut r = Request::new(Method::Invite, "sip:srs@192.0.2.1:5060");
    r.headers
        .push("Via", "SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bKx");
    r.headers.push("From", "<sip:src@198.51.100.7>;tag=srctag");
    let to = match to_tag {
        Some(t) => format!("<sip:srs@192.0.2.1>;tag={t}"),
        None => "<sip:srs@192.0.2.1>".to_owned(),
    };
    r.headers.push("To", to);
    r.headers.push("Call-ID", call_id);
    r.headers.push("CSeq", format!("{cseq} INVITE"));
    r.headers
        .push("Contact", "<sip:src@198.51.100.7:5060>;+sip.src");
    r.headers.push("Require", "siprec");
    r.headers.push("Content-Type", content_type);
    r.body = body.as_bytes().to_vec().into();
    r
}

fn sdp(direction: &str, port: u16) -> String {
    format!(
        "v=0\r\no=SRC 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n\
m=audio {port} RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=label:1\r\na={direction}\r\n\
m=audio {} RTP/AVP 8\r\na=label:2\r\na={direction}\r\n",
        port + 2
    )
}

/// The SRC's BYE for its dialog `call_id` (our tag `tag`).
fn bye_request(call_id: &str, tag: &str, cseq: u32) -> Request {
    let mut bye = Request::new(Method::Bye, "sip:siprec@192.0.2.1:5060");
    bye.headers
        .push("From", "<sip:src@198.51.100.7>;tag=srctag");
    bye.headers
        .push("To", format!("<sip:srs@192.0.2.1>;tag={tag}"));
    bye.headers.push("Call-ID", call_id);
    bye.headers.push("CSeq", format!("{cseq} BYE"));
    bye
}

fn drain(m: &mut SessionManager) -> Vec<Action> {
    std::iter::from_fn(|| m.poll_action()).collect()
}

fn response_of(actions: &[Action]) -> &Response {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Respond { response, .. } => Some(response),
            _ => None,
        })
        .expect("a response")
}

/// A plain-SDP INVITE is answered 200 with two recvonly m-lines, two streams opened with the
/// right PT maps, and the recording started with both legs in the mix.
#[test]
fn invite_answer_opens_streams_and_starts_recording() {
    let mut m = SessionManager::new(config());
    let mut pool = ports::PortPool::new(10000, 10099, 0);
    let mut keys = Keys::new();
    let ev = keys.event(invite(
        "c1",
        1,
        None,
        &sdp("sendonly", 4000),
        "application/sdp",
    ));
    m.handle_tsx_event(now(0), &mut pool, ev);
    let actions = drain(&mut m);
    let resp = response_of(&actions);
    assert_eq!(resp.status, 200);
    let body = String::from_utf8_lossy(&resp.body);
    assert!(body.contains("m=audio 10000 RTP/AVP 0 101"), "{body}");
    assert!(body.contains("m=audio 10002 RTP/AVP 8"), "{body}");
    assert_eq!(body.matches("a=recvonly").count(), 2);
    assert!(resp.headers.get("Contact").unwrap().contains("+sip.srs"));
    assert!(resp.headers.has_token("Require", "siprec"));
    assert!(resp.to_tag().is_some());
    let opened: Vec<_> = actions
        .iter()
        .filter_map(|a| match a {
            Action::OpenStream { port, params } => Some((*port, params.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(opened.len(), 2);
    assert_eq!(
        opened[0].1.payload_types[0],
        Some(crate::media::rtp::PayloadKind::Pcmu)
    );
    assert_eq!(
        opened[0].1.payload_types[101],
        Some(crate::media::rtp::PayloadKind::TelephoneEvent)
    );
    assert_eq!(
        opened[1].1.payload_types[8],
        Some(crate::media::rtp::PayloadKind::Pcma)
    );
    let start = actions.iter().find_map(|a| match a {
        Action::Recorder(RecorderCommand::StartSession { dir, streams, .. }) => {
            Some((dir, streams))
        }
        _ => None,
    });
    let (dir, streams) = start.expect("recording started");
    assert!(dir.starts_with("/rec/2025-11-11/"), "{dir:?}");
    assert_eq!(
        streams
            .iter()
            .map(|s| s.file_stem.as_str())
            .collect::<Vec<_>>(),
        ["1", "2"]
    );
    assert!(streams.iter().all(|s| s.in_mixed && s.sample_rate == 8000));
    assert_eq!(m.active_calls(), 1);
}

/// Hold by re-INVITE (a=inactive) keeps ports and answers inactive; BYE closes streams,
/// releases ports and stops the recorder at the BYE instant; session.json follows the
/// recorder's report and the call is forgotten.
#[test]
fn reinvite_hold_then_bye() {
    let mut m = SessionManager::new(config());
    let mut pool = ports::PortPool::new(10000, 10099, 0);
    let mut keys = Keys::new();
    m.handle_tsx_event(
        now(0),
        &mut pool,
        keys.event(invite(
            "c2",
            1,
            None,
            &sdp("sendonly", 4000),
            "application/sdp",
        )),
    );
    let tag = response_of(&drain(&mut m)).to_tag().unwrap();
    let hold = invite(
        "c2",
        2,
        Some(&tag),
        &sdp("inactive", 4000),
        "application/sdp",
    );
    m.handle_tsx_event(now(1000), &mut pool, keys.event(hold));
    let actions = drain(&mut m);
    let resp = response_of(&actions);
    assert_eq!(resp.status, 200);
    let body = String::from_utf8_lossy(&resp.body);
    assert_eq!(body.matches("a=inactive").count(), 2, "{body}");
    assert!(body.contains("m=audio 10000 "));
    let updates = actions
        .iter()
        .filter(|a| matches!(a, Action::UpdateStream { params, .. } if params.held))
        .count();
    assert_eq!(updates, 2);
    // RTP timeout does not apply while every stream is held.
    m.handle_tick(now(60_000), &mut pool);
    assert!(drain(&mut m).is_empty());

    let bye = bye_request("c2", &tag, 3);
    m.handle_tsx_event(now(61_000), &mut pool, keys.event(bye));
    let actions = drain(&mut m);
    assert_eq!(response_of(&actions).status, 200);
    assert_eq!(
        actions
            .iter()
            .filter(|a| matches!(a, Action::CloseStream { .. }))
            .count(),
        2
    );
    let stop = actions.iter().find_map(|a| match a {
        Action::Recorder(RecorderCommand::StopSession { end_ns, .. }) => Some(*end_ns),
        _ => None,
    });
    assert_eq!(stop, Some(now(61_000).mono_ns));
    assert_eq!(pool.in_use(), 0);
    m.handle_recorder_event(
        now(61_400),
        &mut pool,
        RecorderEvent::SessionClosed {
            session: 1,
            files: vec![],
            streams: vec![],
            error: None,
        },
    );
    let actions = drain(&mut m);
    let json = actions.iter().find_map(|a| match a {
        Action::WriteFile { path, bytes } => Some((path.clone(), bytes.clone())),
        _ => None,
    });
    let (path, bytes) = json.expect("session.json written");
    assert!(path.ends_with("session.json"));
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["call_id"], "c2");
    assert_eq!(v["end_reason"], "bye");
    assert_eq!(v["duration_s"], 61.0);
    assert!(m.is_idle());
}

/// At MAX_CONCURRENT_CALLS, and when the port pool is exhausted, INVITEs get 503 with
/// Retry-After; an offer with nothing we can record gets 488; a non-dialog BYE gets 481.
#[test]
fn rejections() {
    let mut m = SessionManager::new(config());
    let mut pool = ports::PortPool::new(10000, 10099, 0);
    let mut keys = Keys::new();
    for id in ["a", "b"] {
        m.handle_tsx_event(
            now(0),
            &mut pool,
            keys.event(invite(
                id,
                1,
                None,
                &sdp("sendonly", 4000),
                "application/sdp",
            )),
        );
        assert_eq!(response_of(&drain(&mut m)).status, 200);
    }
    m.handle_tsx_event(
        now(0),
        &mut pool,
        keys.event(invite(
            "c",
            1,
            None,
            &sdp("sendonly", 4000),
            "application/sdp",
        )),
    );
    let actions = drain(&mut m);
    assert_eq!(response_of(&actions).status, 503);
    assert!(response_of(&actions).headers.get("Retry-After").is_some());

    let mut m = SessionManager::new(config());
    let mut tiny = ports::PortPool::new(10000, 10001, 0);
    m.handle_tsx_event(
        now(0),
        &mut tiny,
        keys.event(invite(
            "d",
            1,
            None,
            &sdp("sendonly", 4000),
            "application/sdp",
        )),
    );
    assert_eq!(response_of(&drain(&mut m)).status, 503);
    assert_eq!(tiny.in_use(), 0, "partial allocation released");

    let video = "v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=video 4000 RTP/AVP 96\r\n";
    m.handle_tsx_event(
        now(0),
        &mut pool,
        keys.event(invite("e", 1, None, video, "application/sdp")),
    );
    assert_eq!(response_of(&drain(&mut m)).status, 488);

    let mut bye = Request::new(Method::Bye, "sip:siprec@192.0.2.1:5060");
    bye.headers.push("From", "<sip:src@198.51.100.7>;tag=x");
    bye.headers.push("To", "<sip:srs@192.0.2.1>;tag=y");
    bye.headers.push("Call-ID", "unknown");
    bye.headers.push("CSeq", "1 BYE");
    m.handle_tsx_event(now(0), &mut pool, keys.event(bye));
    assert_eq!(response_of(&drain(&mut m)).status, 481);
}

/// No RTP on any live stream for RTP_TIMEOUT: we send BYE (dialog headers swapped, our tag in
/// From) and stop the recording.
#[test]
fn rtp_timeout_sends_bye() {
    let mut m = SessionManager::new(config());
    let mut pool = ports::PortPool::new(10000, 10099, 0);
    let mut keys = Keys::new();
    m.handle_tsx_event(
        now(0),
        &mut pool,
        keys.event(invite(
            "t",
            1,
            None,
            &sdp("sendonly", 4000),
            "application/sdp",
        )),
    );
    let tag = response_of(&drain(&mut m)).to_tag().unwrap();
    m.handle_tick(now(29_000), &mut pool);
    assert!(drain(&mut m).is_empty());
    m.handle_tick(now(30_000), &mut pool);
    let actions = drain(&mut m);
    let bye = actions
        .iter()
        .find_map(|a| match a {
            Action::SendRequest { request, .. } => Some(request),
            _ => None,
        })
        .expect("BYE sent");
    assert_eq!(bye.method, Method::Bye);
    assert_eq!(bye.uri, "sip:src@198.51.100.7:5060");
    assert_eq!(bye.from().unwrap().tag(), Some(tag.as_str()));
    assert_eq!(bye.to().unwrap().tag(), Some("srctag"));
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Recorder(RecorderCommand::StopSession { .. }))));
    assert_eq!(m.counters().calls_rtp_timeout, 1);
}

/// With require_siprec, a plain INVITE (no Require: siprec, no +sip.src) gets 403; by default
/// it is recorded.
#[test]
fn require_siprec_policy() {
    let mut plain = invite("p", 1, None, &sdp("sendonly", 4000), "application/sdp");
    plain.headers.remove("Require");
    plain.headers.set("Contact", "<sip:pbx@198.51.100.7>");
    let mut keys = Keys::new();
    let mut pool = ports::PortPool::new(10000, 10099, 0);
    let mut strict = SessionManager::new(SessionConfig {
        require_siprec: true,
        ..config()
    });
    strict.handle_tsx_event(now(0), &mut pool, keys.event(plain.clone()));
    assert_eq!(response_of(&drain(&mut strict)).status, 403);
    let mut default = SessionManager::new(config());
    default.handle_tsx_event(now(0), &mut pool, keys.event(plain));
    assert_eq!(response_of(&drain(&mut default)).status, 200);
}

/// The duration cap ends a call with BYE even while RTP flows.
#[test]
fn max_duration_cap() {
    let cap = SessionConfig {
        max_duration_ns: 10_000 * MS,
        ..config()
    };
    let mut m = SessionManager::new(cap);
    let mut pool = ports::PortPool::new(10000, 10099, 0);
    let mut keys = Keys::new();
    let ev = keys.event(invite(
        "cap",
        1,
        None,
        &sdp("sendonly", 4000),
        "application/sdp",
    ));
    m.handle_tsx_event(now(0), &mut pool, ev);
    drain(&mut m);
    let live = crate::media::rtp::RtpStats {
        last_rx_ns: now(9_999).mono_ns,
        ..Default::default()
    };
    m.handle_stream_stats(
        StreamKey {
            session: 1,
            stream: 0,
        },
        live,
    );
    m.handle_tick(now(9_999), &mut pool);
    assert!(drain(&mut m).is_empty());
    m.handle_stream_stats(
        StreamKey {
            session: 1,
            stream: 0,
        },
        RtpStats {
            last_rx_ns: now(10_000).mono_ns,
            ..live
        },
    );
    m.handle_tick(now(10_000), &mut pool);
    let actions = drain(&mut m);
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::SendRequest { .. })));
    assert_eq!(m.counters().calls_duration_cap, 1);
}

/// The recorder fails a running call (disk error): we send BYE, release its ports and write
/// session.json with the error at once.
#[test]
fn recording_failure_ends_call() {
    let mut m = SessionManager::new(config());
    let mut pool = ports::PortPool::new(10000, 10099, 0);
    let mut keys = Keys::new();
    let ev = keys.event(invite(
        "f",
        1,
        None,
        &sdp("sendonly", 4000),
        "application/sdp",
    ));
    m.handle_tsx_event(now(0), &mut pool, ev);
    drain(&mut m);
    let error = "write /rec/x/1.wav: No space left on device".to_owned();
    m.handle_recorder_event(
        now(500),
        &mut pool,
        RecorderEvent::SessionFailed { session: 1, error },
    );
    let actions = drain(&mut m);
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::SendRequest { .. })),
        "BYE sent"
    );
    let json = actions.iter().find_map(|a| match a {
        Action::WriteFile { bytes, .. } => Some(bytes.clone()),
        _ => None,
    });
    let v: serde_json::Value = serde_json::from_slice(&json.expect("session.json")).unwrap();
    assert_eq!(v["end_reason"], "recording_failed");
    assert!(v["error"].as_str().unwrap().contains("No space left"));
    assert_eq!(pool.in_use(), 0);
    assert!(m.is_idle());
}

fn events(actions: &[Action]) -> Vec<&crate::events::Event> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event(e) => Some(e),
            _ => None,
        })
        .collect()
}

/// Call events: started (with streams and parties), hold per stream, resume, ended with the
/// reason; numbered 1, 2, 3… in the order they are handed out, one instance prefix.
#[test]
fn call_events_in_order() {
    use crate::events::EventKind as K;
    let mut m = SessionManager::new(config());
    let mut pool = ports::PortPool::new(10000, 10099, 0);
    let mut keys = Keys::new();
    let body = sdp("sendonly", 4000);
    let first = invite("ev", 1, None, &body, "application/sdp");
    m.handle_tsx_event(now(0), &mut pool, keys.event(first));
    let actions = drain(&mut m);
    let tag = response_of(&actions).to_tag().unwrap();
    let started = events(&actions);
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].kind, K::CallStarted);
    assert_eq!(started[0].data["streams"].as_array().unwrap().len(), 2);
    assert_eq!(started[0].routing_key(), "siprec.call_started.ev");
    let mut all: Vec<crate::events::Event> = started.into_iter().cloned().collect();
    for (cseq, dir) in [(2, "inactive"), (3, "sendonly")] {
        let r = invite("ev", cseq, Some(&tag), &sdp(dir, 4000), "application/sdp");
        m.handle_tsx_event(now(1000 * cseq as u64), &mut pool, keys.event(r));
        all.extend(events(&drain(&mut m)).into_iter().cloned());
    }
    let bye = bye_request("ev", &tag, 4);
    m.handle_tsx_event(now(5000), &mut pool, keys.event(bye));
    all.extend(events(&drain(&mut m)).into_iter().cloned());
    let kinds: Vec<K> = all.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            K::CallStarted,
            K::Hold,
            K::Hold,
            K::Resume,
            K::Resume,
            K::CallEnded
        ]
    );
    let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    let prefix = all[0].id.split('-').next().unwrap().to_owned();
    assert!(all.iter().all(|e| e.id.starts_with(&prefix) && e.v == 1));
    assert_eq!(all[5].data["reason"], "bye");
    assert_eq!(all[5].data["duration_s"], 5.0);
}

/// SIP_MAX_CALLS_PER_SOURCE: a source at its limit gets 503 + Retry-After for one more call,
/// counted; a call ending frees its place.
#[test]
fn per_source_call_limit() {
    let mut m = SessionManager::new(SessionConfig {
        max_calls_per_source: 1,
        max_concurrent_calls: 10,
        ..config()
    });
    let mut pool = ports::PortPool::new(10000, 10099, 0);
    let mut keys = Keys::new();
    let body = sdp("sendonly", 4000);
    let first = invite("src-1", 1, None, &body, "application/sdp");
    m.handle_tsx_event(now(0), &mut pool, keys.event(first));
    let tag = response_of(&drain(&mut m)).to_tag().unwrap();
    let second = invite("src-2", 1, None, &body, "application/sdp");
    m.handle_tsx_event(now(10), &mut pool, keys.event(second));
    let resp = drain(&mut m);
    let resp = response_of(&resp);
    assert_eq!(resp.status, 503);
    assert!(resp.headers.get("Retry-After").is_some());
    assert_eq!(m.counters().calls_rejected_source_limit, 1);
    let bye = bye_request("src-1", &tag, 2);
    m.handle_tsx_event(now(20), &mut pool, keys.event(bye));
    drain(&mut m);
    let third = invite("src-3", 1, None, &body, "application/sdp");
    m.handle_tsx_event(now(30), &mut pool, keys.event(third));
    assert_eq!(response_of(&drain(&mut m)).status, 200);
}

/// Recording disk below RECORDING_MIN_FREE_MB: new INVITEs get 503 + Retry-After (counted),
/// and they are taken again once space is back.
#[test]
fn low_storage_refuses_new_calls() {
    let mut m = SessionManager::new(config());
    let mut pool = ports::PortPool::new(10000, 10099, 0);
    let mut keys = Keys::new();
    let body = sdp("sendonly", 4000);
    m.set_storage_low(true);
    let first = invite("disk-1", 1, None, &body, "application/sdp");
    m.handle_tsx_event(now(0), &mut pool, keys.event(first));
    let resp = drain(&mut m);
    let resp = response_of(&resp);
    assert_eq!(resp.status, 503);
    assert!(resp.headers.get("Retry-After").is_some());
    assert_eq!(m.counters().calls_rejected_storage, 1);
    m.set_storage_low(false);
    let second = invite("disk-2", 1, None, &body, "application/sdp");
    m.handle_tsx_event(now(10), &mut pool, keys.event(second));
    assert_eq!(response_of(&drain(&mut m)).status, 200);
}

/// `auto_resume_at`: the pause shows when it ends, a re-INVITE keeps it, and the call
/// resumes by itself on the first tick at or after the deadline (streams unpaused, event
/// out); a later plain pause cancels the timer.
#[test]
fn pause_auto_resumes() {
    use crate::events::EventKind as K;
    let mut m = SessionManager::new(config());
    let mut pool = ports::PortPool::new(10000, 10099, 0);
    let mut keys = Keys::new();
    let first = invite("ar", 1, None, &sdp("sendonly", 4000), "application/sdp");
    m.handle_tsx_event(now(0), &mut pool, keys.event(first));
    let tag = response_of(&drain(&mut m)).to_tag().unwrap();
    let at = now(0).unix_ms + 2_000;
    let status = m.pause(now(0), "ar", (true, false), Some(at)).unwrap();
    assert_eq!(status.auto_resume_at, Some(crate::proto::rfc3339_ms(at)));
    let paused = |actions: &[Action]| -> Vec<bool> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::UpdateStream { params, .. } => Some(params.paused),
                _ => None,
            })
            .collect()
    };
    assert_eq!(paused(&drain(&mut m)), [true, true]);
    let r = invite(
        "ar",
        2,
        Some(&tag),
        &sdp("sendonly", 4000),
        "application/sdp",
    );
    m.handle_tsx_event(now(500), &mut pool, keys.event(r));
    drain(&mut m);
    m.resume_due(now(1_999));
    assert!(drain(&mut m).is_empty());
    assert!(m.pause_status(now(1_999), "ar").unwrap().recording_paused);
    m.resume_due(now(2_050));
    let actions = drain(&mut m);
    assert_eq!(paused(&actions), [false, false]);
    let kinds: Vec<K> = events(&actions).iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [K::RecordingResumed]);
    let status = m.pause_status(now(2_050), "ar").unwrap();
    assert!(!status.is_paused && status.auto_resume_at.is_none());

    m.pause(
        now(3_000),
        "ar",
        (true, true),
        Some(now(3_000).unix_ms + 1_000),
    );
    m.pause(now(3_100), "ar", (true, true), None);
    drain(&mut m);
    m.resume_due(now(10_000));
    assert!(drain(&mut m).is_empty(), "the second pause has no timer");
    assert!(m.pause_status(now(10_000), "ar").unwrap().is_paused);
}
