//! The fuzz targets (`src/fuzz.rs`, driven by libFuzzer from `fuzz/`) run on stable in the
//! suite: each over the vendor golden corpus and a few thousand deterministic mutations of it.
//! A panic names the target and the input (hex) that broke its invariant.

use siprec::fuzz::{mutations, TARGETS};

fn goldens() -> Vec<Vec<u8>> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .filter_map(|d| std::fs::read(d.path().join("invite.sip")).ok())
        .collect();
    out.sort();
    out
}

/// Seeds for one target, from the golden INVITEs.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    let invites = goldens();
    let split = |invite: &[u8]| -> (String, Vec<u8>) {
        let text = String::from_utf8_lossy(invite).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let ct = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                matches!(k.trim().to_ascii_lowercase().as_str(), "content-type" | "c")
                    .then(|| v.trim().to_owned())
            })
            .unwrap_or_default();
        (ct, body.as_bytes().to_vec())
    };
    match target {
        "sip_message" | "sip_stream" => invites,
        "sip_transactions" => invites
            .iter()
            .map(|i| [i.as_slice(), b"\0", i.as_slice()].concat())
            .collect(),
        "multipart" => invites
            .iter()
            .map(|i| {
                let (ct, body) = split(i);
                [ct.as_bytes(), b"\n", &body].concat()
            })
            .collect(),
        "sdp" | "metadata" => invites
            .iter()
            .filter_map(|i| {
                let (ct, body) = split(i);
                let parts = siprec::siprec::body::split_body(Some(&ct), &body).ok()?;
                if target == "sdp" {
                    parts.sdp
                } else {
                    parts.metadata
                }
            })
            .map(String::into_bytes)
            .collect(),
        "rtp" => {
            let mut packets = Vec::new();
            for (pt, len) in [
                (0u8, 160usize),
                (9, 160),
                (18, 20),
                (111, 60),
                (101, 4),
                (96, 320),
            ] {
                let payload: Vec<u8> = (0..len).map(|i| (i * 37 + usize::from(pt)) as u8).collect();
                let mut p = Vec::new();
                siprec::media::rtp::write_packet(pt, 1, 160, 0xABC, &payload, &mut p);
                packets.push(p);
            }
            vec![packets.join(&0xFF)]
        }
        "rtcp" => vec![
            // SR with one report block, then an SDES.
            [
                &[0x81, 200, 0, 12][..],
                &[0; 48][..],
                &[0x81, 202, 0, 2, 0, 0, 0, 1, 1, 1, b'a', 0][..],
            ]
            .concat(),
        ],
        _ => vec![b"any payload".to_vec(), vec![0x80; 172]],
    }
}

#[test]
fn fuzz_targets_hold_their_invariants_on_mutated_goldens() {
    let mut runs = 0;
    for (name, target) in TARGETS {
        let seeds = seeds(name);
        assert!(!seeds.is_empty(), "{name}: no seeds");
        for (i, seed) in seeds.iter().enumerate() {
            let inputs = std::iter::once(seed.clone()).chain(mutations(
                seed,
                800,
                0x9E37_79B9 ^ (i as u64 + 1),
            ));
            for input in inputs {
                let result = std::panic::catch_unwind(|| target(&input));
                if let Err(e) = result {
                    let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
                    panic!("{name} broke on input {hex}: {e:?}");
                }
                runs += 1;
            }
        }
    }
    eprintln!("{runs} inputs");
    assert!(runs > 10_000);
}

/// Regression (libFuzzer, sip_message): a request at the header limit without Content-Length
/// parsed, but its re-encoding (which adds Content-Length) went over the limit.
#[test]
fn header_limit_leaves_room_for_content_length() {
    for extra in 97..=101 {
        let mut m =
            String::from("INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n");
        m.push_str("From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\n");
        for k in 0..extra - 5 {
            m.push_str(&format!("X-{k}: v\r\n"));
        }
        m.push_str("\r\n");
        siprec::fuzz::sip_message(m.as_bytes());
    }
}
