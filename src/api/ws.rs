//! `/ws/transcriptions` and `/ws/analytics`: call events to WebSocket clients (hyper upgrade,
//! tokio-tungstenite framing). Each client reads the event bus on its own task with its own
//! lag: a slow client loses its oldest events and gets a `gap` message, or is disconnected,
//! per `WS_SLOW_CLIENT`; nobody else waits for it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::events::{Event, EventKind};

/// Largest client frame or message accepted; clients only send small control JSON.
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;
const PING_EVERY: Duration = Duration::from_secs(30);
/// A client that answered no ping for this long is gone.
const PONG_TIMEOUT: Duration = Duration::from_secs(75);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    Transcriptions,
    Analytics,
}

impl Feed {
    fn name(self) -> &'static str {
        match self {
            Feed::Transcriptions => "transcriptions",
            Feed::Analytics => "analytics",
        }
    }

    /// Call lifecycle and speaker changes go to both feeds; analytics snapshots to
    /// `/ws/analytics`; transcripts to `/ws/transcriptions`.
    fn wants(self, kind: EventKind) -> bool {
        match kind {
            EventKind::Snapshot => self == Feed::Analytics,
            EventKind::PartialTranscript | EventKind::FinalTranscript => {
                self == Feed::Transcriptions
            }
            EventKind::KeywordDetected | EventKind::SentimentAlert => self == Feed::Analytics,
            EventKind::SpeakerChange => true,
            k => k.is_lifecycle(),
        }
    }
}

/// What a slow client gets (`WS_SLOW_CLIENT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SlowClient {
    /// Lose the oldest events and get a `gap` message saying how many.
    DropOldest,
    /// Be disconnected (close code 1008).
    Disconnect,
}

/// The shared pieces a client task needs.
#[derive(Clone)]
pub struct WsHub {
    pub events: broadcast::Sender<Arc<Event>>,
    pub clients: Arc<AtomicUsize>,
    pub max_clients: usize,
    pub slow_client: SlowClient,
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| super::percent_decode(v))
    })
}

/// Answers the upgrade request: 101 and a client task, or 426 when it isn't a WebSocket
/// handshake. Refusals after the handshake (auth, too many clients) are an `error` message
/// and a close frame, as the reference server does.
pub fn upgrade(
    hub: Option<WsHub>,
    auth: Arc<super::auth::Auth>,
    feed: Feed,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let headers = req.headers();
    let has = |name: &str, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .unwrap_or("")
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case(token))
        })
    };
    let key = headers
        .get("sec-websocket-key")
        .and_then(|k| k.to_str().ok())
        .map(str::to_owned);
    let version_ok = headers
        .get("sec-websocket-version")
        .is_some_and(|v| v == "13");
    let (Some(key), true, true, true) = (
        key,
        has("upgrade", "websocket"),
        has("connection", "upgrade"),
        version_ok,
    ) else {
        let mut resp = super::error(
            StatusCode::UPGRADE_REQUIRED,
            "websocket_required",
            "this endpoint speaks WebSocket (RFC 6455, version 13)",
        );
        resp.headers_mut().insert(
            "Sec-WebSocket-Version",
            hyper::header::HeaderValue::from_static("13"),
        );
        return resp;
    };
    let query = req.uri().query().unwrap_or("").to_owned();
    let call_id = query_param(&query, "call_id").filter(|c| !c.is_empty());
    let session_id = query_param(&query, "session_id")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            let mut b = [0u8; 8];
            let _ = getrandom::fill(&mut b);
            format!("ws-{:016x}", u64::from_le_bytes(b))
        });
    let (api_key, bearer) = super::credentials(headers, &query);
    // Browsers cannot set headers on a WebSocket: `?token=` carries a JWT or an API key.
    let credential = match (&api_key, &bearer) {
        (Some(k), _) => super::auth::Credential::ApiKey(k),
        (None, Some(t)) => super::auth::Credential::Bearer(t),
        (None, None) => super::auth::Credential::None,
    };
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let refusal: Option<(CloseCode, String)> = match (auth.check(credential, now_s), &hub) {
        (_, None) => Some((CloseCode::Again, "event bus not running".into())),
        (Err(super::auth::Denied::Missing), _) => Some((CloseCode::Policy, "missing token".into())),
        (Err(super::auth::Denied::Invalid(why)), _) => Some((CloseCode::Policy, why)),
        (Ok(()), Some(_)) => None,
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade failed");
                return;
            }
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_CLIENT_MESSAGE))
            .max_frame_size(Some(MAX_CLIENT_MESSAGE));
        let io = hyper_util::rt::TokioIo::new(upgraded);
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        if let Some((code, message)) = refusal {
            refuse(ws, code, &message).await;
            return;
        }
        let Some(hub) = hub else {
            return;
        };
        if hub.clients.fetch_add(1, Ordering::SeqCst) >= hub.max_clients {
            hub.clients.fetch_sub(1, Ordering::SeqCst);
            refuse(ws, CloseCode::Again, "too many WebSocket clients").await;
            return;
        }
        let clients = hub.clients.clone();
        client(ws, hub, feed, call_id, session_id).await;
        clients.fetch_sub(1, Ordering::SeqCst);
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("Upgrade", "websocket")
        .header("Connection", "Upgrade")
        .header("Sec-WebSocket-Accept", accept)
        .header("Server", super::SERVER)
        .body(Full::new(Bytes::new()))
        .unwrap_or_default()
}

type Ws = WebSocketStream<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

fn close_frame(code: CloseCode, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.to_owned().into(),
    }))
}

fn error_message(message: &str) -> Message {
    Message::Text(
        json!({"type": "error", "message": message})
            .to_string()
            .into(),
    )
}

/// `{"type":"error"}` then a close frame.
async fn refuse(mut ws: Ws, code: CloseCode, message: &str) {
    let _ = ws.send(error_message(message)).await;
    let _ = ws.send(close_frame(code, message)).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
}

async fn client(ws: Ws, hub: WsHub, feed: Feed, call_id: Option<String>, session_id: String) {
    let (mut tx, mut rx) = ws.split();
    let mut events = hub.events.subscribe();
    let hello = json!({
        "type": "connected",
        "feed": feed.name(),
        "session_id": session_id,
        "call_id": call_id,
    });
    if tx
        .send(Message::Text(hello.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut last_pong = Instant::now();
    let end: Option<(CloseCode, String)> = loop {
        tokio::select! {
            e = events.recv() => match e {
                Ok(event) => {
                    let wanted = feed.wants(event.kind)
                        && call_id.as_deref().is_none_or(|c| c == event.call_id);
                    if wanted {
                        let text = String::from_utf8(event.to_json()).unwrap_or_default();
                        if tx.send(Message::Text(text.into())).await.is_err() {
                            break None;
                        }
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => match hub.slow_client {
                    SlowClient::DropOldest => {
                        let gap = json!({"type": "gap", "data": {"lost": n}});
                        if tx.send(Message::Text(gap.to_string().into())).await.is_err() {
                            break None;
                        }
                    }
                    SlowClient::Disconnect => {
                        let msg = format!("client too slow: {n} events behind");
                        let _ = tx.send(error_message(&msg)).await;
                        break Some((CloseCode::Policy, msg));
                    }
                },
                Err(broadcast::error::RecvError::Closed) => {
                    break Some((CloseCode::Away, "server shutting down".into()));
                }
            },
            m = rx.next() => match m {
                None => break None,
                Some(Err(e)) => {
                    let msg = format!("bad frame: {e}");
                    let _ = tx.send(error_message(&msg)).await;
                    break Some((CloseCode::Protocol, msg));
                }
                Some(Ok(Message::Pong(_))) => last_pong = Instant::now(),
                // tungstenite queued the pong; sending it now keeps the client happy.
                Some(Ok(Message::Ping(_))) => {
                    if tx.flush().await.is_err() {
                        break None;
                    }
                }
                Some(Ok(Message::Close(_))) => break None,
                Some(Ok(Message::Text(t))) => {
                    let v: Option<serde_json::Value> = serde_json::from_str(t.as_str()).ok();
                    match v.as_ref().and_then(|v| v["type"].as_str()) {
                        Some("ping") => {
                            let pong = json!({"type": "pong"}).to_string();
                            if tx.send(Message::Text(pong.into())).await.is_err() {
                                break None;
                            }
                        }
                        _ => {
                            let msg = "malformed client message: expected {\"type\":\"ping\"}";
                            let _ = tx.send(error_message(msg)).await;
                            break Some((CloseCode::Invalid, msg.into()));
                        }
                    }
                }
                Some(Ok(_)) => {
                    let msg = "binary frames are not accepted";
                    let _ = tx.send(error_message(msg)).await;
                    break Some((CloseCode::Unsupported, msg.into()));
                }
            },
            _ = ping.tick() => {
                if last_pong.elapsed() > PONG_TIMEOUT {
                    break Some((CloseCode::Away, "no pong".into()));
                }
                if tx.send(Message::Ping(Bytes::new())).await.is_err() {
                    break None;
                }
            }
        }
    };
    if let Some((code, reason)) = end {
        let _ = tx.send(close_frame(code, &reason)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), tx.close()).await;
}
