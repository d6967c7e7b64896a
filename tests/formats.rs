//! Recording formats other than WAV (`RECORDING_FORMAT=flac|opus`): our files against the
//! reference tools (`flac` from xiph.org, `opusdec`/`opusinfo` from opus-tools), the reference
//! tools' files against our readers, and both formats end to end through a real call.

mod common;

use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use siprec::sink::recorder::{read_audio, read_flac, read_ogg_opus, AudioFormat, AudioWriter};

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (run .ci/deps.sh)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn le_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

fn from_le(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

/// The reference decoder's samples of a FLAC file (`flac -d` to raw little-endian).
fn flac_decode(file: &Path) -> Vec<i16> {
    let raw = file.with_extension("raw");
    run(Command::new("flac")
        .args([
            "-d",
            "-s",
            "-f",
            "--force-raw-format",
            "--endian=little",
            "--sign=signed",
        ])
        .arg("-o")
        .arg(&raw)
        .arg(file));
    from_le(&std::fs::read(&raw).unwrap())
}

/// Stereo test audio: two distinct signals interleaved, with a stretch of silence.
fn stereo(frames: usize) -> Vec<i16> {
    let a = source_audio(1, frames);
    let b = source_audio(2, frames);
    a.iter()
        .zip(&b)
        .enumerate()
        .flat_map(|(i, (x, y))| {
            if (8000..12000).contains(&i) {
                [0, 0]
            } else {
                [*x, *y]
            }
        })
        .collect()
}

fn write(dir: &Path, stem: &str, format: AudioFormat, channels: u16, rate: u32, pcm: &[i16]) {
    let mut w = AudioWriter::create(dir, stem, channels, rate, format, 32_000, None).unwrap();
    for (i, chunk) in pcm.chunks(160 * usize::from(channels)).enumerate() {
        w.write_interleaved(chunk).unwrap();
        if i % 50 == 49 {
            w.checkpoint(false).unwrap(); // each second, as the recorder does
        }
    }
    w.finish(true).unwrap();
}

/// Signal to noise ratio of `got` against `want`, in dB (for lossy Opus).
fn snr(want: &[i16], got: &[i16]) -> f64 {
    let signal: f64 = want.iter().map(|&s| f64::from(s).powi(2)).sum();
    let noise: f64 = want
        .iter()
        .zip(got)
        .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
        .sum();
    10.0 * (signal / noise.max(1.0)).log10()
}

/// Our FLAC passes `flac -t` (frame CRCs and the MD5 of the audio) and `flac -d` decodes it
/// sample for sample, also when cut off by a crash; the reference encoder's files (LPC
/// subframes, mid/side stereo, at its fastest and best settings) decode exactly with ours.
#[test]
fn flac_interoperates_with_the_reference_codec() {
    let dir = tempfile::tempdir().unwrap();
    let pcm = stereo(24_000);
    write(dir.path(), "ours", AudioFormat::Flac, 2, 8000, &pcm);
    let ours = dir.path().join("ours.flac");
    run(Command::new("flac").args(["-t", "-s"]).arg(&ours));
    assert!(flac_decode(&ours) == pcm, "flac -d differs");
    assert!(std::fs::metadata(&ours).unwrap().len() < 2 * pcm.len() as u64 * 7 / 10);

    // A crash: no STREAMINFO length, no MD5, frames up to the last checkpoint.
    let cut = dir.path().join("cut.flac");
    let mut w =
        AudioWriter::create(dir.path(), "cut", 1, 16_000, AudioFormat::Flac, 0, None).unwrap();
    let mono = source_audio(3, 20_000);
    w.write_interleaved(&mono[..16_000]).unwrap();
    w.checkpoint(true).unwrap();
    w.write_interleaved(&mono[16_000..]).unwrap();
    std::mem::forget(w); // SIGKILL: no Drop, no finish
    assert!(flac_decode(&cut) == mono[..16_000]);
    assert!(read_flac(&cut).unwrap().2 == mono[..16_000]);

    // The reference encoder's output read by ours.
    let input = dir.path().join("ref.raw");
    std::fs::write(&input, le_bytes(&pcm)).unwrap();
    for level in ["-0", "-8"] {
        let encoded = dir.path().join(format!("ref{level}.flac"));
        run(Command::new("flac")
            .args([
                level,
                "-s",
                "--force-raw-format",
                "--endian=little",
                "--sign=signed",
            ])
            .args(["--channels=2", "--bps=16", "--sample-rate=8000", "-o"])
            .arg(&encoded)
            .arg(&input));
        let (channels, rate, back) = read_audio(&encoded).unwrap();
        assert_eq!((channels, rate), (2, 8000));
        assert!(
            back == pcm,
            "reference encoder at {level}: decoded differently"
        );
    }
}

/// Our Ogg Opus is accepted by `opusinfo` and decoded by `opusdec` to exactly the recorded
/// length (pre-skip and end trimming right) and the same audio; `opusenc`'s files decode
/// with ours.
#[test]
fn opus_interoperates_with_opus_tools() {
    let dir = tempfile::tempdir().unwrap();

    for (channels, rate, pcm) in [
        (2u16, 8000u32, stereo(24_000)),
        (1, 16_000, source_audio(4, 32_000)),
    ] {
        let stem = format!("ours{channels}");
        write(dir.path(), &stem, AudioFormat::Opus, channels, rate, &pcm);
        let ours = dir.path().join(format!("{stem}.opus"));
        run(Command::new("opusinfo").arg(&ours));
        let raw = dir.path().join(format!("{stem}.raw"));
        run(Command::new("opusdec")
            .args(["--quiet", "--no-dither", "--rate", &rate.to_string()])
            .arg(&ours)
            .arg(&raw));
        let theirs = from_le(&std::fs::read(&raw).unwrap());
        assert_eq!(theirs.len(), pcm.len(), "opusdec's length, {channels} ch");
        // Opus is perceptual: it keeps the loudness contour, not the waveform (SILK's
        // waveform SNR is a few dB). A misaligned or garbled decode loses the contour.
        let similar = |got: &[i16]| envelope_correlation(&pcm, got, usize::from(channels), rate);
        let theirs_r = similar(&theirs);
        assert!(
            theirs_r > 0.95,
            "opusdec: envelope correlation {theirs_r:.3}"
        );
        let (c, r, back) = read_ogg_opus(&ours).unwrap();
        assert_eq!((c, r, back.len()), (channels, rate, pcm.len()));
        // Opus decoders need not be bit-exact (RFC 6716 §6; Debian's libopus and the one
        // linked here differ), but ours must be as close to the source.
        let ours_r = similar(&back);
        assert!(ours_r > 0.95, "ours: envelope correlation {ours_r:.3}");
        // The measure tells: the same audio 0.3 s late does not pass.
        let late = [
            &back[back.len() - 3 * rate as usize / 10 * usize::from(channels)..],
            &back[..],
        ]
        .concat();
        let late_r = similar(&late[..back.len()]);
        assert!(
            late_r < 0.9,
            "a shifted decode: envelope correlation {late_r:.3}"
        );
    }

    let wav = dir.path().join("in.wav");
    let pcm = source_audio(5, 16_000);
    let mut w = siprec::sink::recorder::WavWriter::create(&wav, 1, 8000).unwrap();
    w.write_interleaved(&pcm).unwrap();
    w.finish().unwrap();
    let encoded = dir.path().join("theirs.opus");
    run(Command::new("opusenc")
        .args(["--quiet", "--bitrate", "32"])
        .arg(&wav)
        .arg(&encoded));
    let (channels, rate, back) = read_audio(&encoded).unwrap();
    assert_eq!((channels, rate), (1, 8000));
    assert_eq!(
        back.len(),
        pcm.len(),
        "opusenc's file decodes to its input length"
    );
    let r = envelope_correlation(&pcm, &back, 1, 8000);
    assert!(r > 0.95, "opusenc's file: envelope correlation {r:.3}");
}

/// Sends `pcm` (µ-law, 20 ms packets) on stream 1 of a two-stream SIPREC call and half of it
/// on stream 2, then hangs up, or (without `hang_up`) returns the answer's RTP ports.
fn call(server: &Server, call_id: &str, pcm: &[i16], hang_up: bool) -> Option<Vec<u16>> {
    let ports = &server.ports;
    let mut src = Src::new(ports.src_sip, ports.sip, call_id);
    let (ct, body) = siprec_body(2, "sendonly", ports.src_rtp);
    let ok = src.invite(&ct, &body);
    assert_eq!(ok.status, 200);
    src.ack();
    let answer = String::from_utf8_lossy(&ok.body).to_string();
    let rtp = answer_ports(&answer);
    let sock = UdpSocket::bind(("127.0.0.1", ports.src_rtp)).unwrap();
    let mut schedule = audio_packets(rtp[0], 0x1111, 1, 0, Duration::ZERO, pcm);
    let other: Vec<i16> = pcm.iter().map(|s| s / 2).collect();
    schedule.extend(audio_packets(rtp[1], 0x2222, 1, 0, Duration::ZERO, &other));
    play(&sock, schedule, Instant::now());
    if hang_up {
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(src.bye().status, 200);
        None
    } else {
        Some(rtp)
    }
}

/// Pearson correlation of the 10 ms RMS contours of two interleaved signals (each channel's
/// contour in turn): 1 when the loudness moves identically, near 0 when unrelated.
fn envelope_correlation(a: &[i16], b: &[i16], channels: usize, rate: u32) -> f64 {
    let window = rate as usize / 100;
    let contour = |x: &[i16]| -> Vec<f64> {
        (0..channels)
            .flat_map(|c| {
                let ch = channel(x, channels, c);
                ch.chunks(window)
                    .map(|w| {
                        (w.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / w.len() as f64)
                            .sqrt()
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let (x, y) = (contour(a), contour(b));
    let n = x.len().min(y.len()) as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let cov: f64 = x.iter().zip(&y).map(|(p, q)| (p - mx) * (q - my)).sum();
    let vx: f64 = x.iter().map(|p| (p - mx).powi(2)).sum();
    let vy: f64 = y.iter().map(|q| (q - my).powi(2)).sum();
    cov / (vx * vy).sqrt().max(f64::MIN_POSITIVE)
}

/// `want`'s place in `got` (lags up to 4000 samples, by SNR) and the envelope correlation of
/// the two there.
fn aligned_similarity(got: &[i16], want: &[i16]) -> f64 {
    let lags = 0..4000.min(got.len().saturating_sub(want.len()) + 1);
    let best = lags
        .max_by(|&a, &b| {
            let at = |lag: usize| snr(want, &got[lag..lag + want.len()]);
            at(a).total_cmp(&at(b))
        })
        .expect("got is as long as want");
    envelope_correlation(want, &got[best..best + want.len()], 1, 8000)
}

/// A real call recorded as FLAC: per-leg and mixed files are `.flac`, hold the G.711 audio
/// sample for sample, pass `flac -t`, and session.json names them. A server killed mid-call
/// leaves FLAC files that decode. Then the same call recorded as Opus in Ogg, then encrypted
/// at rest.
#[test]
fn flac_opus_and_encrypted_recordings_end_to_end() {
    let pcm = source_audio(7, 16_000); // 2 s
    let want = ulaw_roundtrip(&pcm);
    let half: Vec<i16> = ulaw_roundtrip(&pcm.iter().map(|s| s / 2).collect::<Vec<_>>());

    let mut server = Server::start(52, &[("RECORDING_FORMAT", "flac")]);
    call(&server, "flac@127.0.0.1", &pcm, true);
    let sessions = wait_sessions(&server.recordings(), 1, Duration::from_secs(10));
    let session = &sessions[0];
    let leg = read_audio(&session.join("1.flac")).unwrap();
    assert_eq!((leg.0, leg.1), (1, 8000));
    assert!(find(&leg.2, &want).is_some(), "leg 1 sample for sample");
    let (channels, _, mixed) = read_audio(&session.join("mixed.flac")).unwrap();
    assert_eq!(channels, 2);
    assert!(
        find(&channel(&mixed, 2, 1), &half).is_some(),
        "mixed channel 2"
    );
    for file in ["1.flac", "2.flac", "mixed.flac"] {
        run(Command::new("flac")
            .args(["-t", "-s"])
            .arg(session.join(file)));
    }
    assert!(!session.join("1.wav").exists());
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(session.join("session.json")).unwrap()).unwrap();
    assert_eq!(meta["streams"][0]["file"], "1.flac");
    assert_eq!(meta["streams"][1]["file"], "2.flac");
    let files = meta["files"].to_string();
    assert!(files.contains("mixed.flac"), "{files}");

    // SIGKILL mid-call: what was checkpointed (each second) decodes.
    let rtp = call(&server, "flac-kill@127.0.0.1", &pcm[..12_000], false).unwrap();
    assert_eq!(rtp.len(), 2);
    std::thread::sleep(Duration::from_millis(1500));
    server.signal(9);
    server.wait_exit(Duration::from_secs(5));
    let dirs: Vec<_> = std::fs::read_dir(server.recordings())
        .unwrap()
        .flatten()
        .filter_map(|day| std::fs::read_dir(day.path()).ok())
        .flat_map(|sessions| sessions.flatten().map(|e| e.path()))
        .collect();
    let killed = dirs
        .iter()
        .find(|p| p.join("1.flac").exists() && !p.join("session.json").exists())
        .unwrap_or_else(|| panic!("the killed call's directory among {dirs:?}"));
    let leg = read_flac(&killed.join("1.flac")).unwrap().2;
    assert!(leg.len() >= 8000, "at least 1 s survived: {}", leg.len());
    assert!(
        find(&leg, &want[..6000]).is_some(),
        "what survived is the call's audio"
    );
    run(Command::new("flac")
        .args(["-t", "-s"])
        .arg(killed.join("1.flac")));
    drop(server);

    let server = Server::start(52, &[("RECORDING_FORMAT", "opus")]);
    call(&server, "opus@127.0.0.1", &pcm, true);
    let sessions = wait_sessions(&server.recordings(), 1, Duration::from_secs(10));
    let session = &sessions[0];
    let (channels, rate, leg) = read_audio(&session.join("1.opus")).unwrap();
    assert_eq!((channels, rate), (1, 8000));
    let r = aligned_similarity(&leg, &want);
    assert!(
        r > 0.95,
        "leg 1 is the call's audio: envelope correlation {r:.3}"
    );
    let (channels, _, mixed) = read_audio(&session.join("mixed.opus")).unwrap();
    assert_eq!(channels, 2);
    assert_eq!(mixed.len() / 2, leg.len(), "legs and mix have one length");
    run(Command::new("opusinfo").arg(session.join("mixed.opus")));
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(session.join("session.json")).unwrap()).unwrap();
    assert_eq!(meta["streams"][0]["file"], "1.opus");
    let wav_size = 2 * leg.len() as u64;
    let size = std::fs::metadata(session.join("1.opus")).unwrap().len();
    assert!(
        size * 3 < wav_size,
        "Opus is smaller: {size} B vs {wav_size} B of WAV"
    );
    drop(server);

    // Encrypted at rest: the key file's first key (k2) seals every file; nothing readable is
    // on disk; `siprecctl decrypt` gives back the exact WAV; an altered file is refused.
    let keys = tempfile::NamedTempFile::new().unwrap();
    let k2 = "a1".repeat(32);
    let k1 = "b2".repeat(32);
    std::fs::write(keys.path(), format!("k2 {k2}\nk1 {k1}\n")).unwrap();
    let key_file = keys.path().display().to_string();
    let server = Server::start(52, &[("RECORDING_ENCRYPTION_KEY_FILE", &key_file)]);
    call(&server, "sealed@127.0.0.1", &pcm, true);
    let sessions = wait_sessions(&server.recordings(), 1, Duration::from_secs(10));
    let session = &sessions[0];
    for file in ["1.wav.enc", "2.wav.enc", "mixed.wav.enc"] {
        let bytes = std::fs::read(session.join(file)).unwrap();
        assert!(bytes.starts_with(b"SIPRECE1"), "{file}");
        assert!(
            !bytes.windows(4).any(|w| w == b"RIFF" || w == b"data"),
            "{file} is sealed"
        );
    }
    assert!(!session.join("1.wav").exists());
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(session.join("session.json")).unwrap()).unwrap();
    assert_eq!(meta["streams"][0]["file"], "1.wav.enc");
    assert_eq!(meta["files"][0]["key_id"], "k2");
    assert!(
        !meta.to_string().contains(&k2),
        "session.json names the key, never holds it"
    );
    let siprecctl = env!("CARGO_BIN_EXE_siprecctl");
    let out = run(Command::new(siprecctl)
        .args(["decrypt", "--key-file", &key_file])
        .arg(session.join("1.wav.enc")));
    assert!(String::from_utf8_lossy(&out.stdout).contains("key k2, complete"));
    let (_, _, leg) = siprec::sink::recorder::read_wav(&session.join("1.wav")).unwrap();
    assert!(
        find(&leg, &want).is_some(),
        "decrypted: the call's audio sample for sample"
    );
    let mut altered = std::fs::read(session.join("2.wav.enc")).unwrap();
    let at = altered.len() / 2;
    altered[at] ^= 0x01;
    let bad = session.join("bad.wav.enc");
    std::fs::write(&bad, altered).unwrap();
    let refused = Command::new(siprecctl)
        .args(["decrypt", "--key-file", &key_file])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("authentication failed"));
}
