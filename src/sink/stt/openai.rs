//! The `openai` provider: OpenAI's `POST /v1/audio/transcriptions` (multipart/form-data), which
//! self-hosted Whisper servers (faster-whisper-server, LocalAI, vLLM…) speak too. One request
//! per utterance, sent as a 16 kHz mono WAV from the STT worker thread that owns the engine
//! (blocking I/O there is fine: the worker has nothing else to do meanwhile).
//!
//! Failures — connection refused, timeouts, 429 and 5xx, a body that is not the expected JSON —
//! are retried with backoff (finals three times; partials not at all, a newer one follows),
//! then reported as the utterance's error: counted, logged, never a panic or a stalled call.
//! A 4xx other than 429 (bad key, bad request) is not retried.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use super::engine::{to_pcm16, with_retries, Engine, EngineError, Recognized, ENGINE_RATE};

#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// Base URL up to and including the version, e.g. `https://api.openai.com/v1`.
    pub url: String,
    pub api_key: Option<String>,
    pub model: String,
    pub timeout: Duration,
    /// Whisper language code sent with each request ("auto" sends none).
    pub language: String,
}

/// Where requests go, parsed once.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// The URL's path, without a trailing slash ("" for none).
    pub path: String,
}

/// An http(s):// or ws(s):// URL.
pub(super) fn parse_url(url: &str) -> Result<Endpoint, String> {
    let schemes = [
        ("https://", true),
        ("wss://", true),
        ("http://", false),
        ("ws://", false),
    ];
    let Some((tls, rest)) = schemes
        .iter()
        .find_map(|(s, tls)| url.strip_prefix(s).map(|r| (*tls, r)))
    else {
        return Err(format!("{url:?} is not an http(s):// or ws(s):// URL"));
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h, p.parse().map_err(|_| format!("bad port in {url:?}"))?)
        }
        _ => (authority, if tls { 443 } else { 80 }),
    };
    if host.is_empty() {
        return Err(format!("no host in {url:?}"));
    }
    let path = path.trim_end_matches('/');
    Ok(Endpoint {
        tls,
        host: host.trim_matches(['[', ']']).to_owned(),
        port,
        path: if path.is_empty() {
            String::new()
        } else {
            format!("/{path}")
        },
    })
}

/// A TCP connection to `e` with `timeout` on every read and write.
pub(super) fn tcp_connect(e: &Endpoint, timeout: Duration) -> std::io::Result<TcpStream> {
    let addr = (e.host.as_str(), e.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{} does not resolve", e.host)))?;
    let tcp = TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(5)))?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    Ok(tcp)
}

/// `url` parsed, with a TLS client context (system roots, hostnames checked at connect)
/// when it is https:// or wss://.
pub(super) fn endpoint_for(
    url: &str,
) -> Result<(Endpoint, Option<openssl::ssl::SslConnector>), EngineError> {
    let endpoint = parse_url(url).map_err(EngineError::Failed)?;
    let tls = match endpoint.tls {
        false => None,
        true => Some(
            openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls_client())
                .map_err(|e| EngineError::Failed(format!("TLS: {e}")))?
                .build(),
        ),
    };
    Ok((endpoint, tls))
}

pub struct OpenAiEngine {
    config: OpenAiConfig,
    endpoint: Endpoint,
    tls: Option<openssl::ssl::SslConnector>,
}

impl OpenAiEngine {
    pub fn new(config: OpenAiConfig) -> Result<OpenAiEngine, EngineError> {
        let (endpoint, tls) = endpoint_for(&config.url)?;
        Ok(OpenAiEngine {
            config,
            endpoint,
            tls,
        })
    }

    /// One POST; the status and body of the answer.
    fn post(&self, content_type: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
        let e = &self.endpoint;
        let tcp = tcp_connect(e, self.config.timeout)?;
        let mut head = format!(
            "POST {}/audio/transcriptions HTTP/1.1\r\nHost: {}\r\nUser-Agent: siprec/{}\r\n\
             Accept: application/json\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             Connection: close\r\n",
            e.path,
            e.host,
            env!("CARGO_PKG_VERSION"),
            body.len()
        );
        if let Some(key) = &self.config.api_key {
            head.push_str(&format!("Authorization: Bearer {key}\r\n"));
        }
        head.push_str("\r\n");
        let mut raw = Vec::new();
        match &self.tls {
            None => {
                let mut s = tcp;
                s.write_all(head.as_bytes())?;
                s.write_all(body)?;
                s.take(RESPONSE_MAX).read_to_end(&mut raw)?;
            }
            Some(connector) => {
                let mut s = connector
                    .connect(&e.host, tcp)
                    .map_err(|err| std::io::Error::other(format!("TLS: {err}")))?;
                s.write_all(head.as_bytes())?;
                s.write_all(body)?;
                // A server closing without close_notify is common; what arrived counts.
                let _ = s.take(RESPONSE_MAX).read_to_end(&mut raw);
            }
        }
        parse_response(&raw)
    }
}

/// Largest answer read (a transcript of 30 s is a few KiB).
const RESPONSE_MAX: u64 = 4 << 20;

fn parse_response(raw: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let bad = |m: &str| std::io::Error::other(format!("bad HTTP response: {m}"));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no header end"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("header not UTF-8"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let body = &raw[split + 4..];
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("chunk size"))?;
        let size_text = std::str::from_utf8(&rest[..line_end]).map_err(|_| bad("chunk size"))?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad("chunk size"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok((status, out));
        }
        let chunk = rest.get(..size).ok_or_else(|| bad("short chunk"))?;
        out.extend_from_slice(chunk);
        rest = rest.get(size + 2..).ok_or_else(|| bad("short chunk"))?;
    }
}

/// 16-bit mono WAV of `audio` (f32 at `ENGINE_RATE`).
fn wav_bytes(audio: &[f32]) -> Vec<u8> {
    let data_len = (audio.len() * 2) as u32;
    let mut w = Vec::with_capacity(44 + audio.len() * 2);
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + data_len).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes());
    w.extend_from_slice(&ENGINE_RATE.to_le_bytes());
    w.extend_from_slice(&(ENGINE_RATE * 2).to_le_bytes());
    w.extend_from_slice(&2u16.to_le_bytes());
    w.extend_from_slice(&16u16.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&data_len.to_le_bytes());
    for &s in audio {
        w.extend_from_slice(&to_pcm16(s).to_le_bytes());
    }
    w
}

/// The multipart/form-data body: text fields, then the audio file.
fn multipart(boundary: &str, fields: &[(&str, &str)], wav: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(wav.len() + 512);
    for (name, value) in fields {
        b.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    b.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
             filename=\"audio.wav\"\r\nContent-Type: audio/wav\r\n\r\n"
        )
        .as_bytes(),
    );
    b.extend_from_slice(wav);
    b.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    b
}

/// Text and confidence (mean segment probability) of a `verbose_json` or `json` answer.
fn recognized(body: &[u8]) -> Option<Recognized> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let text = v["text"].as_str()?.trim().to_owned();
    let probs: Vec<f64> = v["segments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["avg_logprob"].as_f64())
        .map(f64::exp)
        .collect();
    let confidence = match probs.len() {
        0 => 0.0,
        n => (probs.iter().sum::<f64>() / n as f64) as f32,
    };
    Some(Recognized { text, confidence })
}

impl Engine for OpenAiEngine {
    fn transcribe(
        &mut self,
        audio: &[f32],
        partial: bool,
        language: Option<&str>,
    ) -> Result<Recognized, EngineError> {
        let boundary = "siprec-7d1f0c2a9b3e4f58";
        let language = language.unwrap_or(&self.config.language);
        let mut fields = vec![
            ("model", self.config.model.as_str()),
            ("response_format", "verbose_json"),
            ("temperature", "0"),
        ];
        if language != "auto" {
            fields.push(("language", language));
        }
        let body = multipart(boundary, &fields, &wav_bytes(audio));
        let content_type = format!("multipart/form-data; boundary={boundary}");
        with_retries("openai", partial, || {
            match self.post(&content_type, &body) {
                Ok((200, answer)) => recognized(&answer)
                    .ok_or_else(|| ("the answer is not transcription JSON".to_owned(), true)),
                Ok((status, answer)) => {
                    let detail =
                        String::from_utf8_lossy(&answer[..answer.len().min(200)]).into_owned();
                    // A 4xx other than 429 means the request itself is wrong: retrying won't help.
                    let retry = !(400..500).contains(&status) || status == 429;
                    Err((format!("HTTP {status}: {detail}"), retry))
                }
                Err(e) => Err((e.to_string(), true)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let e = parse_url("https://api.openai.com/v1").unwrap();
        assert_eq!(
            e,
            Endpoint {
                tls: true,
                host: "api.openai.com".into(),
                port: 443,
                path: "/v1".into()
            }
        );
        let e = parse_url("http://127.0.0.1:8000/v1/").unwrap();
        assert_eq!((e.tls, e.port, e.path.as_str()), (false, 8000, "/v1"));
        let e = parse_url("wss://api.deepgram.com/v1/listen").unwrap();
        assert_eq!((e.tls, e.port, e.path.as_str()), (true, 443, "/v1/listen"));
        assert_eq!(parse_url("http://h").unwrap().path, "");
        assert_eq!(parse_url("http://[::1]:9/v1").unwrap().host, "::1");
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("http://:80/v1").is_err());
    }

    #[test]
    fn responses() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"text\":\" hi \"}";
        let (status, body) = parse_response(raw).unwrap();
        assert_eq!(status, 200);
        assert_eq!(recognized(&body).unwrap().text, "hi");
        let pieces = [
            "{\"te",
            "xt\":\"x\",\"segments\":[{\"avg",
            "_logprob\":-0.1}]}",
        ];
        let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for p in pieces {
            chunked.extend_from_slice(format!("{:x}\r\n{p}\r\n", p.len()).as_bytes());
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let chunked = &chunked[..];
        let (_, body) = parse_response(chunked).unwrap();
        let r = recognized(&body).unwrap();
        assert_eq!(r.text, "x");
        assert!((r.confidence - (-0.1f32).exp()).abs() < 1e-6);
        assert!(parse_response(b"garbage").is_err());
        assert!(recognized(b"{\"error\":1}").is_none());
    }

    #[test]
    fn wav_and_multipart() {
        let wav = wav_bytes(&[0.0, 0.5, -1.0]);
        assert_eq!(&wav[..4], b"RIFF");
        assert_eq!(wav.len(), 44 + 6);
        assert_eq!(&wav[44..], &[0, 0, 0, 0x40, 0, 0x80]);
        let body = multipart("B", &[("model", "whisper-1")], b"WAV");
        let text = String::from_utf8(body).unwrap();
        assert!(text.starts_with(
            "--B\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n"
        ));
        assert!(text.ends_with("WAV\r\n--B--\r\n"));
    }

    /// A refused connection is retried, then reported with what went wrong.
    #[test]
    fn unreachable_server_is_an_error_not_a_hang() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let mut engine = OpenAiEngine::new(OpenAiConfig {
            url: format!("http://127.0.0.1:{port}/v1"),
            api_key: None,
            model: "whisper-1".into(),
            timeout: Duration::from_secs(2),
            language: "en".into(),
        })
        .unwrap();
        let e = engine.transcribe(&[0.0; 1600], true, None).unwrap_err();
        assert!(e.to_string().contains("openai provider"), "{e}");
    }
}
