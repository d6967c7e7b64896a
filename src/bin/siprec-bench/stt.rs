//! `siprec-bench stt`: how well and how fast the server transcribes live.
//!
//! Sentences (one per line of `--sentences`) are spoken by flite, band-limited to 8 kHz by sox
//! and passed through G.711 µ-law. Then, in one run:
//! - direct: the embedded engine transcribes each sentence's audio itself (same model, same
//!   threads, same resampler) — the baseline;
//! - pipeline: a spawned server records `--calls` concurrent SIPREC calls in which the two
//!   legs take turns saying the sentences, and a WebSocket client collects the final
//!   transcripts. Each sentence is matched to the finals of its leg that overlap it in call
//!   time.
//!
//! Reported: word error rate of both and their ratio, latency from the end of each sentence's
//! audio leaving the sender to its final transcript arriving, the engine's real-time factor
//! and what it implies in calls transcribed per core.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use siprec::media::g711;
use siprec::media::rtp::write_packet;
use siprec::session::analytics::words;
use siprec::sink::stt::engine::{self, Engine, WhisperModel};
use siprec::sip::{self, Message, Method};

use super::{in_dialog, invite, Call};

const RATE: usize = 8000;

#[derive(clap::Args, Debug)]
pub struct SttArgs {
    /// The siprec binary to start on private ports.
    #[arg(long)]
    spawn: PathBuf,
    /// The ggml Whisper model (installed by ./.ci/model.sh).
    #[arg(long, default_value = "models/ggml-base-q8_0.bin")]
    model: PathBuf,
    /// Reference sentences, one per line.
    #[arg(long, default_value = "perf/stt-sentences.txt")]
    sentences: PathBuf,
    /// Concurrent calls in the pipeline run; the sentences are shared out between them.
    #[arg(long, default_value_t = 4)]
    calls: usize,
    /// Threads per utterance (STT_THREADS), the same in the direct run.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// STT workers (STT_WORKERS).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Silence between two turns of a call, ms.
    #[arg(long, default_value_t = 1500)]
    gap_ms: usize,
    #[arg(long, default_value_t = 36060)]
    sip_port: u16,
    #[arg(long, default_value_t = 38180)]
    http_port: u16,
    #[arg(long, default_value = "36100:36999")]
    rtp_range: String,
    /// Skip the direct run (pipeline figures only).
    #[arg(long)]
    no_direct: bool,
    /// Write the JSON results here (default perf/results/stt-<unix>.json).
    #[arg(long)]
    json: Option<PathBuf>,
}

struct Sentence {
    text: String,
    /// 8 kHz, after the µ-law round trip: exactly what the server decodes.
    pcm: Vec<i16>,
}

/// Where a sentence was said in the pipeline run.
struct Said {
    sentence: usize,
    call: usize,
    stream: u64,
    /// Call time (from the call's answer) of its first and last sample, s.
    start_s: f64,
    end_s: f64,
    /// When its last packet left the sender.
    ended: Instant,
}

struct Heard {
    call_id: String,
    stream: u64,
    start_s: f64,
    end_s: f64,
    text: String,
    at: Instant,
}

pub fn run(args: SttArgs) -> Result<(), String> {
    let texts: Vec<String> = std::fs::read_to_string(&args.sentences)
        .map_err(|e| format!("{}: {e}", args.sentences.display()))?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if texts.is_empty() {
        return Err("no sentences".into());
    }
    let dir = std::env::temp_dir().join(format!("siprec-stt-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    eprintln!("synthesizing {} sentences with flite", texts.len());
    let sentences = texts
        .iter()
        .enumerate()
        .map(|(i, t)| synthesize(t, if i % 2 == 0 { "awb" } else { "rms" }, &dir, i))
        .collect::<Result<Vec<_>, _>>()?;
    let audio_s: f64 = sentences
        .iter()
        .map(|s| s.pcm.len() as f64 / RATE as f64)
        .sum();

    let direct = if args.no_direct {
        None
    } else {
        Some(direct_run(&args, &sentences)?)
    };
    let pipeline = pipeline_run(&args, &sentences, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let pipeline = pipeline?;

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut out = json!({
        "bench": "stt",
        "unix": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        "machine_cores": cores,
        "model": args.model.display().to_string(),
        "sentences": sentences.len(),
        "speech_seconds": round3(audio_s),
        "threads": args.threads,
        "workers": args.workers,
        "calls": args.calls,
        "pipeline": pipeline,
    });
    if let Some(d) = direct {
        let ratio = pipeline["wer"].as_f64().unwrap_or(0.0) / d["wer"].as_f64().unwrap_or(0.0);
        out["direct"] = d;
        out["wer_ratio_pipeline_to_direct"] = if ratio.is_finite() {
            json!(round3(ratio))
        } else {
            Value::Null
        };
    }
    let text = serde_json::to_string_pretty(&out).map_err(|e| e.to_string())?;
    println!("{text}");
    let path = args.json.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "perf/results/stt-{}.json",
            out["unix"].as_u64().unwrap_or(0)
        ))
    });
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(&path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    eprintln!("results in {}", path.display());
    Ok(())
}

fn synthesize(text: &str, voice: &str, dir: &Path, i: usize) -> Result<Sentence, String> {
    let wide = dir.join(format!("{i}-wide.wav"));
    let narrow = dir.join(format!("{i}-8k.wav"));
    let flite = Command::new("flite")
        .args(["-voice", voice, "-t", text, "-o"])
        .arg(&wide)
        .status()
        .map_err(|e| format!("flite: {e} (apt-get install flite)"))?;
    let sox = Command::new("sox")
        .arg(&wide)
        .args(["-r", "8000", "-c", "1", "-b", "16"])
        .arg(&narrow)
        .status()
        .map_err(|e| format!("sox: {e}"))?;
    if !flite.success() || !sox.success() {
        return Err(format!("cannot synthesize {text:?}"));
    }
    let (_, _, pcm) = siprec::sink::recorder::read_wav(&narrow).map_err(|e| e.to_string())?;
    let pcm = pcm
        .iter()
        .map(|&s| g711::ulaw_to_linear(g711::linear_to_ulaw(s)))
        .collect();
    Ok(Sentence {
        text: text.to_owned(),
        pcm,
    })
}

fn direct_run(args: &SttArgs, sentences: &[Sentence]) -> Result<Value, String> {
    eprintln!("direct: the engine on each sentence");
    let model = WhisperModel::load(&args.model, "en", args.threads).map_err(|e| e.to_string())?;
    let mut engine = model.engine().map_err(|e| e.to_string())?;
    let (mut edits, mut words, mut busy, mut audio) = (0, 0, 0.0, 0.0);
    let mut heard = Vec::new();
    for s in sentences {
        let started = Instant::now();
        let samples = engine::to_engine_rate(&s.pcm, RATE as u32).map_err(|e| e.to_string())?;
        let r = engine
            .transcribe(&samples, false, None)
            .map_err(|e| e.to_string())?;
        busy += started.elapsed().as_secs_f64();
        audio += s.pcm.len() as f64 / RATE as f64;
        let (e, n) = word_errors(&s.text, &r.text);
        edits += e;
        words += n;
        heard.push(r.text);
    }
    Ok(json!({
        "wer": round3(edits as f64 / words.max(1) as f64),
        "word_errors": edits,
        "words": words,
        "engine_seconds": round3(busy),
        "rtf": round3(busy / audio),
        "heard": heard,
    }))
}

fn pipeline_run(args: &SttArgs, sentences: &[Sentence], dir: &Path) -> Result<Value, String> {
    eprintln!(
        "pipeline: {} concurrent calls through the server",
        args.calls
    );
    let (rtp_min, rtp_max) = args
        .rtp_range
        .split_once(':')
        .ok_or("--rtp-range must be FIRST:LAST")?;
    let model = std::fs::canonicalize(&args.model)
        .map_err(|e| format!("{}: {e} (run ./.ci/model.sh)", args.model.display()))?;
    let mut child = Command::new(&args.spawn)
        .env("SIP_HOST", "127.0.0.1")
        .env("HTTP_HOST", "127.0.0.1")
        .env("PORTS", args.sip_port.to_string())
        .env("HTTP_PORT", args.http_port.to_string())
        .env("RTP_PORT_MIN", rtp_min)
        .env("RTP_PORT_MAX", rtp_max)
        .env("RECORDING_DIR", dir.join("rec"))
        .env("DATAPLANE_WORKERS", "1")
        .env("HTTP_RATE_LIMIT", "0")
        .env("STT_PROVIDER", "embedded")
        .env("STT_MODEL", &model)
        .env("STT_THREADS", args.threads.to_string())
        .env("STT_WORKERS", args.workers.to_string())
        .env("STT_QUEUE_MAX", "100000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", args.spawn.display()))?;
    let result = pipeline_calls(args, sentences);
    let _ = child.kill();
    let _ = child.wait();
    result
}

fn pipeline_calls(args: &SttArgs, sentences: &[Sentence]) -> Result<Value, String> {
    let http = SocketAddr::from(([127, 0, 0, 1], args.http_port));
    let target = SocketAddr::from(([127, 0, 0, 1], args.sip_port));
    let ready_by = Instant::now() + Duration::from_secs(20);
    while http_get(http, "/health/ready").map(|(c, _)| c) != Some(200) {
        if Instant::now() > ready_by {
            return Err("the server did not get ready".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let heard: Arc<Mutex<Vec<Heard>>> = Arc::default();
    let collector = {
        let (stop, heard) = (stop.clone(), heard.clone());
        std::thread::spawn(move || collect(http, stop, heard))
    };

    // Calls up, one after the other.
    let sip_sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    sip_sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    let local = sip_sock.local_addr().map_err(|e| e.to_string())?;
    let mut calls = Vec::new();
    let mut media = Vec::new();
    let mut answered_at = Vec::new();
    for c in 0..args.calls {
        let call_id = format!("stt-bench-{c}@127.0.0.1");
        let _ = sip_sock.send_to(&invite(&call_id, local, target, 0, c, false), target);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = vec![0u8; 65536];
        let answer = loop {
            if Instant::now() > deadline {
                return Err(format!("no answer to {call_id}"));
            }
            let Ok(n) = sip_sock.recv(&mut buf) else {
                continue;
            };
            if let Ok(Message::Response(r)) = sip::parse_datagram(&buf[..n]) {
                if r.status == 200 && r.call_id() == Some(call_id.as_str()) {
                    break r;
                }
            }
        };
        answered_at.push(Instant::now());
        let call = Call {
            call_id,
            to_tag: answer.to_tag(),
            sent_at: Instant::now(),
            answered: true,
            failed: false,
        };
        let _ = sip_sock.send_to(&in_dialog(Method::Ack, &call, c, local, target), target);
        let body = String::from_utf8_lossy(&answer.body).to_string();
        let ports: Vec<u16> = body
            .lines()
            .filter_map(|l| l.strip_prefix("m=audio "))
            .filter_map(|l| l.split(' ').next()?.parse().ok())
            .collect();
        if ports.len() != 2 || ports.contains(&0) {
            return Err(format!("unexpected answer for call {c}: {body}"));
        }
        media.push(ports);
        calls.push(call);
    }

    // The conversation: call c says sentences c, c+N, …; its legs take turns.
    let origin = Instant::now() + Duration::from_millis(300);
    let gap = args.gap_ms * RATE / 1000;
    let mut said = Vec::new();
    let mut schedule: Vec<(Duration, SocketAddr, Vec<u8>)> = Vec::new();
    for c in 0..args.calls {
        let stagger = Duration::from_millis(137 * c as u64);
        let call_start = origin + stagger;
        let offset_s = (call_start - answered_at[c]).as_secs_f64();
        let mut legs = [Vec::new(), Vec::new()];
        let mut cursor = RATE / 2;
        for (turn, i) in (c..sentences.len()).step_by(args.calls).enumerate() {
            let leg = turn % 2;
            let pcm = &sentences[i].pcm;
            for l in &mut legs {
                l.resize(cursor, 0);
            }
            legs[leg].extend_from_slice(pcm);
            said.push(Said {
                sentence: i,
                call: c,
                stream: leg as u64,
                start_s: offset_s + cursor as f64 / RATE as f64,
                end_s: offset_s + (cursor + pcm.len()) as f64 / RATE as f64,
                ended: call_start + samples(cursor + pcm.len()),
            });
            cursor += pcm.len() + gap;
        }
        for l in &mut legs {
            l.resize(cursor, 0);
        }
        for (leg, pcm) in legs.iter().enumerate() {
            let dest = SocketAddr::from(([127, 0, 0, 1], media[c][leg]));
            let ssrc = 0x5354_0000 + (c * 2 + leg) as u32;
            for (k, chunk) in pcm.chunks(160).enumerate() {
                let payload: Vec<u8> = chunk.iter().map(|&s| g711::linear_to_ulaw(s)).collect();
                let mut bytes = Vec::with_capacity(172);
                write_packet(0, k as u16, (k * 160) as u32, ssrc, &payload, &mut bytes);
                let at = stagger + samples(k * 160 + chunk.len());
                schedule.push((at, dest, bytes));
            }
        }
    }
    schedule.sort_by_key(|s| s.0);
    let rtp = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let total = schedule.last().map_or(Duration::ZERO, |s| s.0);
    eprintln!("playing {:.0} s of conversation", total.as_secs_f64());
    for (at, dest, bytes) in &schedule {
        let due = origin + *at;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let _ = rtp.send_to(bytes, dest);
    }
    let played = Instant::now();
    for (c, call) in calls.iter().enumerate() {
        let _ = sip_sock.send_to(&in_dialog(Method::Bye, call, c, local, target), target);
    }

    // Wait for the backlog: every sentence heard, or nothing new for 10 s.
    let deadline = played + Duration::from_secs(300);
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let h = heard.lock().map_err(|_| "collector panicked")?;
        let quiet =
            h.last().map_or(played, |x| x.at.max(played)).elapsed() > Duration::from_secs(10);
        let all = said.iter().all(|s| !matching(&h, &calls, s).is_empty());
        if all || quiet || Instant::now() > deadline {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = collector.join();
    let metrics = http_get(http, "/metrics/simple")
        .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
        .unwrap_or(Value::Null);

    let h = heard.lock().map_err(|_| "collector panicked")?;
    let (mut edits, mut words, mut matched) = (0, 0, 0);
    let mut latencies = Vec::new();
    let mut per_sentence = Vec::new();
    for s in &said {
        let parts = matching(&h, &calls, s);
        let text = parts
            .iter()
            .map(|p| p.text.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let (e, n) = word_errors(&sentences[s.sentence].text, &text);
        edits += e;
        words += n;
        if let Some(last) = parts.iter().map(|p| p.at).max() {
            matched += 1;
            latencies.push(last.saturating_duration_since(s.ended).as_secs_f64());
        }
        per_sentence.push(json!({"sentence": s.sentence, "call": s.call, "heard": text}));
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| -> Value {
        match latencies.len() {
            0 => Value::Null,
            n => json!(round3(latencies[((n - 1) as f64 * p).round() as usize])),
        }
    };
    let stt = &metrics["stt"];
    let busy = stt["busy_seconds"].as_f64().unwrap_or(0.0);
    let busy_final = stt["busy_final_seconds"].as_f64().unwrap_or(0.0);
    let audio = stt["audio_seconds"].as_f64().unwrap_or(0.0);
    let call_seconds = total.as_secs_f64() * args.calls as f64;
    let speech: f64 = said.iter().map(|s| s.end_s - s.start_s).sum();
    // What must keep up is the finals (partials are dropped first under load): engine CPU
    // per second of call = finals' engine time × threads per utterance (an upper bound).
    let cpu_per_call_s = busy_final * args.threads as f64 / call_seconds.max(1e-9);
    let per_core = match cpu_per_call_s > 0.0 {
        true => json!(round3(1.0 / cpu_per_call_s)),
        false => Value::Null,
    };
    Ok(json!({
        "wer": round3(edits as f64 / words.max(1) as f64),
        "word_errors": edits,
        "words": words,
        "sentences_matched": matched,
        "latency_s": {"p50": pct(0.5), "p95": pct(0.95), "max": pct(1.0)},
        "latencies_s": latencies.iter().map(|&l| round3(l)).collect::<Vec<_>>(),
        "engine_rtf": if audio > 0.0 { json!(round3(busy / audio)) } else { Value::Null },
        "engine_busy_seconds": round3(busy),
        "engine_busy_final_seconds": round3(busy_final),
        "speech_fraction_of_call": round3(speech / call_seconds.max(1e-9)),
        "engine_audio_seconds": round3(audio),
        "call_seconds": round3(call_seconds),
        "calls_per_core": per_core,
        "partials": stt["transcripts_partial"],
        "partials_dropped": stt["partials_dropped"],
        "finals_dropped": stt["finals_dropped"],
        "heard": per_sentence,
    }))
}

/// The finals of `s`'s leg that overlap it in call time (half a second of slack).
fn matching<'a>(heard: &'a [Heard], calls: &[Call], s: &Said) -> Vec<&'a Heard> {
    let call_id = &calls[s.call].call_id;
    let mut v: Vec<&Heard> = heard
        .iter()
        .filter(|h| &h.call_id == call_id && h.stream == s.stream)
        .filter(|h| h.start_s < s.end_s + 0.5 && h.end_s > s.start_s - 0.5)
        .collect();
    v.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
    v
}

/// Reads `/ws/transcriptions` until `stop`, keeping final transcripts with their arrival.
fn collect(http: SocketAddr, stop: Arc<AtomicBool>, heard: Arc<Mutex<Vec<Heard>>>) {
    use tokio_tungstenite::tungstenite::{client, Message as Ws};
    let Ok(stream) = TcpStream::connect(http) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let url = format!("ws://{http}/ws/transcriptions");
    let Ok((mut ws, _)) = client(url.as_str(), stream) else {
        eprintln!("stt bench: WebSocket handshake failed");
        return;
    };
    while !stop.load(Ordering::Relaxed) {
        let text = match ws.read() {
            Ok(Ws::Text(t)) => t.to_string(),
            Ok(Ws::Close(_)) => return,
            Ok(_) => continue,
            Err(tokio_tungstenite::tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if v["type"] != "final_transcript" {
            continue;
        }
        let d = &v["data"];
        let h = Heard {
            call_id: v["call_id"].as_str().unwrap_or("").to_owned(),
            stream: d["stream"].as_u64().unwrap_or(u64::MAX),
            start_s: d["start_s"].as_f64().unwrap_or(0.0),
            end_s: d["end_s"].as_f64().unwrap_or(0.0),
            text: d["text"].as_str().unwrap_or("").to_owned(),
            at: Instant::now(),
        };
        if let Ok(mut all) = heard.lock() {
            all.push(h);
        }
    }
}

fn samples(n: usize) -> Duration {
    Duration::from_micros(n as u64 * 1_000_000 / RATE as u64)
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Word-level edit distance between reference and hypothesis, and the reference's length.
fn word_errors(reference: &str, hypothesis: &str) -> (usize, usize) {
    let r = words(reference);
    let h = words(hypothesis);
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut cur = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            let sub = prev[j] + usize::from(rw != hw);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    (prev[h.len()], r.len())
}

/// A blocking HTTP/1.1 GET on 127.0.0.1: status and body.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.split(' ').nth(1)?.parse().ok()?;
    let body = raw.split_once("\r\n\r\n")?.1.to_owned();
    Some((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_error_rate() {
        assert_eq!(word_errors("Thank you, sir.", "thank you sir"), (0, 3));
        assert_eq!(word_errors("a b c d", "a x c"), (2, 4));
        assert_eq!(word_errors("a b", ""), (2, 2));
    }
}
