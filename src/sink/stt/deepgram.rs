//! The `deepgram` provider: Deepgram's live transcription WebSocket (`/v1/listen`). Each
//! utterance is streamed as linear16 16 kHz frames of 100 ms, then `{"type":"CloseStream"}`;
//! the `Results` messages marked `is_final` make the text. One connection per utterance from
//! the worker thread that owns the engine, blocking (tungstenite over a `TcpStream`, OpenSSL
//! for wss://), with every read and write under the request timeout.
//!
//! Failures (connection refused or closed, handshake refused, timeouts, malformed messages)
//! are retried with backoff for finals, never for partials, then reported as the utterance's
//! error. A handshake refused with 401/403 is not retried.

use std::io::{Read, Write};
use std::time::Duration;

use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, Message};

use super::engine::{to_pcm16, with_retries, Engine, EngineError, Recognized};
use super::openai::{endpoint_for, tcp_connect, Endpoint};

#[derive(Debug, Clone)]
pub struct DeepgramConfig {
    /// e.g. `wss://api.deepgram.com/v1/listen`.
    pub url: String,
    pub api_key: Option<String>,
    pub model: String,
    pub timeout: Duration,
    pub language: String,
}

pub struct DeepgramEngine {
    config: DeepgramConfig,
    endpoint: Endpoint,
    tls: Option<openssl::ssl::SslConnector>,
}

/// Bytes per audio frame sent: 100 ms of 16 kHz 16-bit mono.
const FRAME_BYTES: usize = 3200;

/// Why one attempt failed, and whether another may succeed.
struct Failure {
    message: String,
    retry: bool,
}

impl DeepgramEngine {
    pub fn new(config: DeepgramConfig) -> Result<DeepgramEngine, EngineError> {
        let (endpoint, tls) = endpoint_for(&config.url)?;
        Ok(DeepgramEngine {
            config,
            endpoint,
            tls,
        })
    }

    fn attempt(&self, pcm: &[u8], language: &str) -> Result<Recognized, Failure> {
        let e = &self.endpoint;
        let mut query = format!(
            "encoding=linear16&sample_rate=16000&channels=1&punctuate=true&interim_results=false\
             &model={}",
            self.config.model
        );
        if language != "auto" {
            query.push_str(&format!("&language={language}"));
        }
        let scheme = if e.tls { "wss" } else { "ws" };
        let url = format!("{scheme}://{}:{}{}?{query}", e.host, e.port, e.path);
        let mut request = url.into_client_request().map_err(|err| Failure {
            message: format!("bad URL: {err}"),
            retry: false,
        })?;
        if let Some(key) = &self.config.api_key {
            let value = format!("Token {key}").parse().map_err(|_| Failure {
                message: "the API key is not a valid header value".into(),
                retry: false,
            })?;
            request.headers_mut().insert("Authorization", value);
        }
        let io = |err: std::io::Error| Failure {
            message: err.to_string(),
            retry: true,
        };
        let tcp = tcp_connect(e, self.config.timeout).map_err(io)?;
        match &self.tls {
            None => session(tcp, request, pcm),
            Some(connector) => {
                let tls = connector.connect(&e.host, tcp).map_err(|err| Failure {
                    message: format!("TLS: {err}"),
                    retry: true,
                })?;
                session(tls, request, pcm)
            }
        }
    }
}

/// Streams `pcm` over one WebSocket and collects the final results.
fn session<S: Read + Write>(
    stream: S,
    request: tungstenite::handshake::client::Request,
    pcm: &[u8],
) -> Result<Recognized, Failure> {
    let (mut ws, _) = tungstenite::client(request, stream).map_err(|err| {
        let refused = matches!(&err, tungstenite::HandshakeError::Failure(
            tungstenite::Error::Http(r)) if matches!(r.status().as_u16(), 401 | 403));
        Failure {
            message: format!("handshake: {err}"),
            retry: !refused,
        }
    })?;
    let ws_err = |err: tungstenite::Error| Failure {
        message: err.to_string(),
        retry: true,
    };
    for frame in pcm.chunks(FRAME_BYTES) {
        ws.send(Message::Binary(frame.to_vec().into()))
            .map_err(ws_err)?;
    }
    ws.send(Message::Text(r#"{"type":"CloseStream"}"#.into()))
        .map_err(ws_err)?;
    let (mut texts, mut confidences) = (Vec::new(), Vec::new());
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => {
                let v: serde_json::Value =
                    serde_json::from_str(t.as_str()).map_err(|_| Failure {
                        message: "a message that is not JSON".into(),
                        retry: true,
                    })?;
                if v["type"] != "Results" || v["is_final"] != true {
                    continue;
                }
                let best = &v["channel"]["alternatives"][0];
                let text = best["transcript"].as_str().unwrap_or("").trim();
                if !text.is_empty() {
                    texts.push(text.to_owned());
                    confidences.push(best["confidence"].as_f64().unwrap_or(0.0));
                }
            }
            Ok(Message::Close(_))
            | Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                break
            }
            Ok(_) => {}
            Err(err) => return Err(ws_err(err)),
        }
    }
    let confidence = match confidences.len() {
        0 => 0.0,
        n => (confidences.iter().sum::<f64>() / n as f64) as f32,
    };
    Ok(Recognized {
        text: texts.join(" "),
        confidence,
    })
}

impl Engine for DeepgramEngine {
    fn transcribe(
        &mut self,
        audio: &[f32],
        partial: bool,
        language: Option<&str>,
    ) -> Result<Recognized, EngineError> {
        let pcm: Vec<u8> = audio
            .iter()
            .flat_map(|&s| to_pcm16(s).to_le_bytes())
            .collect();
        let language = language.unwrap_or(&self.config.language).to_owned();
        with_retries("deepgram", partial, || {
            self.attempt(&pcm, &language)
                .map_err(|f| (f.message, f.retry))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing listening: retried, then an error naming the provider; never a hang.
    #[test]
    fn unreachable_server_is_an_error() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let mut engine = DeepgramEngine::new(DeepgramConfig {
            url: format!("ws://127.0.0.1:{port}/v1/listen"),
            api_key: Some("k".into()),
            model: "nova-2".into(),
            timeout: Duration::from_secs(2),
            language: "en".into(),
        })
        .unwrap();
        let e = engine.transcribe(&[0.0; 1600], true, None).unwrap_err();
        assert!(e.to_string().contains("deepgram provider: "), "{e}");
    }
}
