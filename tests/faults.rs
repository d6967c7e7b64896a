//! Faults under load (issue 10): twice the configured capacity offered at once, and SIGKILL
//! in the middle of many concurrent calls followed by a restart.

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::*;
use siprec::media::g711;
use siprec::media::rtp::write_packet;
use siprec::sink::recorder::read_wav;
use siprec::sip::Response;

/// One call placed by the test: its SIP client and its own RTP source (the SDP's address).
struct Leg {
    src: Src,
    rtp: UdpSocket,
    port: u16,
    audio: Vec<i16>,
}

/// INVITEs `n` calls from ephemeral ports; returns the answered ones and the statuses.
fn offer(server: &Server, n: usize, tag: &str) -> (Vec<Leg>, Vec<Response>) {
    let mut legs = Vec::new();
    let mut answers = Vec::new();
    for i in 0..n {
        let rtp = UdpSocket::bind(("127.0.0.1", 0)).unwrap();
        let rtp_port = rtp.local_addr().unwrap().port();
        let mut src = Src::new(0, server.ports.sip, &format!("{tag}-{i}@127.0.0.1"));
        let (ct, body) = siprec_body(1, "sendonly", rtp_port);
        let resp = src.invite(&ct, &body);
        if resp.status == 200 {
            src.ack();
            let port = answer_ports(&String::from_utf8_lossy(&resp.body))[0];
            let audio = source_audio(40 + i as u32, 8000 * 3);
            legs.push(Leg {
                src,
                rtp,
                port,
                audio,
            });
        }
        answers.push(resp);
    }
    (legs, answers)
}

/// Sends every leg's audio, 20 ms packets paced together, for `ms` milliseconds.
fn talk(legs: &[Leg], ms: u64) {
    let t0 = Instant::now();
    for slot in 0..(ms / 20) as usize {
        let due = t0 + Duration::from_millis(20 * slot as u64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        for (k, leg) in legs.iter().enumerate() {
            let Some(chunk) = leg.audio.chunks(160).nth(slot) else {
                continue;
            };
            let payload: Vec<u8> = chunk.iter().map(|&s| g711::linear_to_ulaw(s)).collect();
            let mut packet = Vec::new();
            let ssrc = 0xFA00 + k as u32;
            write_packet(
                0,
                slot as u16,
                160 * slot as u32,
                ssrc,
                &payload,
                &mut packet,
            );
            leg.rtp.send_to(&packet, ("127.0.0.1", leg.port)).unwrap();
        }
    }
}

/// `root/<day>/<session>/` directories.
fn session_dirs(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .filter(|d| !d.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|d| std::fs::read_dir(d.path()).ok())
        .flat_map(|s| s.flatten().map(|e| e.path()))
        .collect();
    out.sort();
    out
}

/// Twice MAX_CONCURRENT_CALLS offered at once: the excess gets 503 + Retry-After (counted),
/// and every admitted call is recorded sample for sample with no packet lost. Then SIGKILL
/// in the middle of the next batch of calls, at a moment that differs per run: after a
/// restart every recording is finished (session.json marked interrupted), its WAV playable
/// and exact, holding at least everything that was on disk at the kill.
#[test]
fn overload_then_sigkill_under_load() {
    let mut server = Server::start(57, &[("MAX_CONCURRENT_CALLS", "8")]);
    let (mut legs, answers) = offer(&server, 16, "load");
    let refused: Vec<&Response> = answers.iter().filter(|r| r.status == 503).collect();
    assert_eq!((legs.len(), refused.len()), (8, 8), "8 admitted, 8 refused");
    assert!(refused
        .iter()
        .all(|r| r.headers.get("Retry-After").is_some()));
    talk(&legs, 2000);
    std::thread::sleep(Duration::from_millis(400));
    for leg in &mut legs {
        assert_eq!(leg.src.bye().status, 200);
    }
    let sessions = wait_sessions(&server.recordings(), 8, Duration::from_secs(15));
    assert_eq!(sessions.len(), 8);
    for dir in &sessions {
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("session.json")).unwrap()).unwrap();
        assert_eq!(meta["streams"][0]["rtp"]["lost"], 0, "{}", dir.display());
        let i: usize = meta["call_id"].as_str().unwrap()["load-".len()..]
            .split('@')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let want = ulaw_roundtrip(&source_audio(40 + i as u32, 16_000));
        let (_, _, leg) = read_wav(&dir.join("1.wav")).unwrap();
        assert!(
            find(&leg, &want).is_some(),
            "call {i}: every packet, in place"
        );
    }
    drop(legs);

    // SIGKILL with 6 calls running, 1.6–2.4 s into their audio.
    let (legs, _) = offer(&server, 6, "kill");
    assert_eq!(legs.len(), 6);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let kill_after = 1600 + u64::from(nanos % 800);
    eprintln!("SIGKILL after {kill_after} ms of audio");
    talk(&legs, kill_after);
    // What is on disk just before the kill is what a restart must keep. The recorder checkpoints
    // each second; wait (a loaded machine may lag) until every call has a second on disk, so
    // the kill lands on real audio rather than on a recorder that has not caught up yet.
    let recordings = server.recordings();
    let on_disk = |dir: &std::path::Path| read_wav(&dir.join("1.wav")).map_or(0, |w| w.2.len());
    let deadline = Instant::now() + Duration::from_secs(20);
    let before: Vec<(std::path::PathBuf, usize)> = loop {
        let running: Vec<_> = session_dirs(&recordings)
            .into_iter()
            .filter(|d| !d.join("session.json").exists())
            .map(|d| {
                let n = on_disk(&d);
                (d, n)
            })
            .collect();
        if running.len() == 6 && running.iter().all(|(_, n)| *n >= 8000) {
            break running;
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint on disk: {running:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    server.signal(9);
    server.wait_exit(Duration::from_secs(5));
    let dirs: Vec<_> = session_dirs(&recordings)
        .into_iter()
        .filter(|d| !d.join("session.json").exists())
        .collect();
    assert_eq!(dirs.len(), 6, "six unfinished recordings");
    let root = recordings.display().to_string();
    let again = Server::start(57, &[("RECORDING_DIR", root.as_str())]);
    for (k, dir) in dirs.iter().enumerate() {
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("session.json")).unwrap()).unwrap();
        assert_eq!(meta["interrupted"], true, "{}", dir.display());
        let call_id = meta["call_id"].as_str().unwrap().to_owned();
        let i: usize = call_id["kill-".len()..]
            .split('@')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let sent = ulaw_roundtrip(&source_audio(40 + i as u32, 8 * kill_after as usize));
        let (_, _, leg) = read_wav(&dir.join("1.wav")).unwrap();
        let p = find(&leg, &sent[..800]).unwrap_or_else(|| panic!("call {k}: audio present"));
        let kept = leg.len() - p;
        let seen = before.iter().find(|(d, _)| d == dir).map_or(0, |b| b.1);
        assert!(
            leg.len() >= seen,
            "call {k}: {} samples after recovery, {seen} on disk before the kill",
            leg.len()
        );
        let n = kept.min(sent.len());
        // Every 20 ms packet is there exactly, or (sent late under load, past the recorder's
        // commit delay) is silence: never other audio, never shifted.
        let packets = n / 160;
        let mut silent = 0;
        for slot in 0..packets {
            let (a, b) = (slot * 160, slot * 160 + 160);
            if leg[p + a..p + b] == sent[a..b] {
                continue;
            }
            let differ: Vec<usize> = (a..b).filter(|&j| leg[p + j] != sent[j]).collect();
            assert!(
                leg[p + a..p + b].iter().all(|&x| x == 0),
                "call {k}: packet {slot} is neither the audio sent nor silence: {} of 160 \
                 samples differ, first at {:?}",
                differ.len(),
                differ.first()
            );
            silent += 1;
        }
        assert!(
            silent * 2 <= packets,
            "call {k}: {silent} of {packets} packets silent"
        );
        if silent > 0 {
            eprintln!("call {k}: {silent} of {packets} packets late (silence), the rest exact");
        }
    }
    drop(again);
}
