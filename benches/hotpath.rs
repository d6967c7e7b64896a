//! Criterion benches of the per-packet path without the kernel: RTP header parse, the
//! per-stream receive (SSRC, sequence, timestamp, G.711 decode into a frame), the SPSC ring
//! hand-off, timeline placement and commit, and WAV appends. `baseline/copy_frame` (copying
//! one 2 KiB frame) is measured in the same run so results can be read as ratios to it. The
//! `decode_20ms` group decodes one 20 ms frame per codec (PCMU as its baseline); `encode_1s`
//! writes one second of a leg in each recording format (WAV as its baseline).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use siprec::media::g711;
use siprec::media::rtp::{parse_header, write_packet, PayloadKind, RtpReceiver, StreamParams};
use siprec::media::{MediaFrame, StreamKey};
use siprec::sink::recorder::{AudioFormat, AudioWriter, Keyring, StreamTimeline, WavWriter};

fn packet(seq: u16, ts: u32) -> Vec<u8> {
    let payload: Vec<u8> = (0..160)
        .map(|i| g711::linear_to_ulaw((i * 97) as i16))
        .collect();
    let mut out = Vec::new();
    write_packet(0, seq, ts, 0x1234_5678, &payload, &mut out);
    out
}

fn params() -> StreamParams {
    let mut payload_types = [None; 128];
    payload_types[0] = Some(PayloadKind::Pcmu);
    payload_types[101] = Some(PayloadKind::TelephoneEvent);
    let key = StreamKey {
        session: 1,
        stream: 0,
    };
    StreamParams::plain(key, payload_types, 8000)
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("packet");
    g.throughput(Throughput::Elements(1));

    let frame = MediaFrame::empty();
    g.bench_function("baseline/copy_frame", |b| {
        b.iter(|| black_box(*black_box(&frame)))
    });

    let p = packet(1, 0);
    g.bench_function("rtp/parse_header", |b| {
        b.iter(|| parse_header(black_box(&p)))
    });

    let mut out = [0i16; 160];
    g.bench_function("g711/decode_ulaw_160", |b| {
        b.iter(|| g711::decode_ulaw(black_box(&p[12..]), &mut out))
    });

    // The receive path of one stream: every packet new, in order.
    let packets: Vec<Vec<u8>> = (0..4096u32).map(|i| packet(i as u16, i * 160)).collect();
    g.bench_function("rtp/receive_and_decode", |b| {
        let mut rx = RtpReceiver::new(params());
        let mut frame = MediaFrame::empty();
        let mut i = 0usize;
        let mut now = 1_000_000_000u64;
        b.iter(|| {
            // Restart the stream when the packet list wraps, so every packet is in order.
            if i.is_multiple_of(packets.len()) {
                rx = RtpReceiver::new(params());
            }
            now += 20_000_000;
            let r = rx.handle_packet(now, &packets[i % packets.len()], &mut frame);
            i += 1;
            black_box(r)
        })
    });

    // Worker → recorder hand-off through the SPSC ring, in one thread: a 20 ms G.711 frame
    // written into its slot in place (header and 160 samples), read in place.
    let mut g711_frame = MediaFrame::empty();
    g711_frame.len = 160;
    let (mut tx, mut rxr) = siprec::ring::channel_filled(1024, MediaFrame::empty());
    g.bench_function("ring/push_pop_with", |b| {
        b.iter(|| {
            tx.push_in_place(|slot| slot.copy_from(black_box(&g711_frame)));
            rxr.pop_with(|f| black_box(f.len))
        })
    });

    // Timeline placement of 20 ms frames and a commit every 5 frames (100 ms).
    let pcm = [100i16; 160];
    g.bench_function("timeline/place_and_commit", |b| {
        let cap = StreamTimeline::capacity_for(8000, 300);
        let mut t = StreamTimeline::new(0, 8000, cap);
        let mut k = 0u64;
        let mut sink = 0usize;
        b.iter(|| {
            k += 1;
            t.handle_frame(k * 20_000_000, 160 * k, 0, &pcm);
            if k.is_multiple_of(5) {
                t.commit((k.saturating_sub(15)) * 160, |s| sink += s.len());
            }
            black_box(sink)
        })
    });

    let dir = tempfile::tempdir().unwrap();
    let mut w = WavWriter::create(&dir.path().join("bench.wav"), 1, 8000).unwrap();
    let mut n = 0u64;
    g.bench_function("wav/append_160", |b| {
        b.iter(|| {
            n += 1;
            // Keep the file small: rewind to a fresh writer every ~10 MB.
            if n.is_multiple_of(30_000) {
                w = WavWriter::create(&dir.path().join(format!("b{n}.wav")), 1, 8000).unwrap();
            }
            w.write_interleaved(black_box(&pcm)).unwrap()
        })
    });
    g.finish();

    // Decoding one 20 ms frame per codec, each with its per-stream state; PCMU is the
    // baseline the others are read against.
    let mut g = c.benchmark_group("decode_20ms");
    g.throughput(Throughput::Elements(1));
    let mut out = [0i16; siprec::media::FRAME_SAMPLES_MAX];
    let ulaw: Vec<u8> = (0..160)
        .map(|i| g711::linear_to_ulaw((i * 97) as i16))
        .collect();
    g.bench_function("pcmu", |b| {
        b.iter(|| g711::decode_ulaw(black_box(&ulaw), &mut out[..160]))
    });
    g.bench_function("pcma", |b| {
        b.iter(|| g711::decode_alaw(black_box(&ulaw), &mut out[..160]))
    });
    // Codec payloads: any bytes are a valid G.722 stream; G.729 frames of varied bits.
    let g722: Vec<u8> = (0..160u32).map(|i| (i * 37 % 251) as u8).collect();
    let mut d722 = siprec::media::g722::G722Decoder::new();
    g.bench_function("g722", |b| {
        b.iter(|| d722.decode(black_box(&g722), &mut out[..320]))
    });
    let g729: Vec<u8> = (0..20u32).map(|i| (i * 53 % 256) as u8).collect();
    let mut d729 = siprec::ffi::bcg729::G729Decoder::new().unwrap();
    let mut frame80 = [0i16; 80];
    g.bench_function("g729", |b| {
        b.iter(|| {
            d729.decode(black_box(&g729[..10]), &mut frame80);
            d729.decode(black_box(&g729[10..]), &mut frame80);
        })
    });
    // Opus 20 ms voice packets from libopus's encoder (24 kbit/s VoIP, like SBCs send).
    let mut enc =
        opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
    enc.set_bitrate(opus::Bitrate::Bits(24_000)).unwrap();
    let voice: Vec<i16> = (0..960 * 50)
        .map(|i| ((i as f64 * 0.0523).sin() * 6000.0 + (i as f64 * 0.31).sin() * 2000.0) as i16)
        .collect();
    let opus_packets: Vec<Vec<u8>> = voice
        .chunks(960)
        .map(|f| enc.encode_vec(f, 4000).unwrap())
        .collect();
    let mut dopus = siprec::media::opus::OpusState::new().unwrap();
    let mut ts = 0u64;
    g.bench_function("opus", |b| {
        b.iter(|| {
            let p = &opus_packets[(ts / 960) as usize % opus_packets.len()];
            dopus.decode(black_box(p), ts);
            ts += 960;
            black_box(dopus.take(&mut out))
        })
    });
    g.finish();

    // One second of one 8 kHz leg into each recording format, as the recorder writes it: 50
    // appends of 20 ms, then the per-second checkpoint. WAV is the baseline.
    let mut g = c.benchmark_group("encode_1s");
    g.throughput(Throughput::Elements(1));
    let speech = voice_8k();
    let keys = Keyring::parse(&format!("bench {}", "5a".repeat(32))).unwrap();
    let variants = [
        ("wav", AudioFormat::Wav, None),
        ("flac", AudioFormat::Flac, None),
        ("opus", AudioFormat::Opus, None),
        ("wav_encrypted", AudioFormat::Wav, Some(&keys)),
    ];
    for (name, format, keyring) in variants {
        let new = |n: u64| {
            let stem = format!("{name}-{n}");
            AudioWriter::create(dir.path(), &stem, 1, 8000, format, 32_000, keyring).unwrap()
        };
        let mut w = new(0);
        let mut n = 0u64;
        g.bench_function(name, |b| {
            b.iter(|| {
                n += 1;
                // A fresh file every ~10 minutes of audio keeps the disk use small.
                if n.is_multiple_of(600) {
                    std::mem::replace(&mut w, new(n)).finish(false).unwrap();
                }
                for frame in speech.chunks(160) {
                    w.write_interleaved(black_box(frame)).unwrap();
                }
                w.checkpoint(false).unwrap();
            })
        });
    }
    g.finish();
}

/// One second of speech-like 8 kHz audio: two tones under a syllable-rate envelope, a pause.
fn voice_8k() -> Vec<i16> {
    (0..8000)
        .map(|i| {
            let t = f64::from(i) / 8000.0;
            let env = (std::f64::consts::PI * 4.0 * t).sin().abs() * f64::from(u8::from(i < 6400));
            let v = (2.0 * std::f64::consts::PI * 220.0 * t).sin() * 0.6
                + (2.0 * std::f64::consts::PI * 1300.0 * t).sin() * 0.25;
            (v * env * 10_000.0) as i16
        })
        .collect()
}

criterion_group!(hotpath, benches);
criterion_main!(hotpath);
