//! `/ws/transcriptions` and `/ws/analytics`: call events to WebSocket clients (hyper upgrade,
//! tokio-tungstenite framing). Each client has a task that drains the event bus into the
//! client's own queue (`WS_CLIENT_QUEUE` events) and a writer task that owns the socket, so a
//! client that stops reading stalls only its writer. When its queue is full a slow client
//! loses its oldest events and then gets a `gap` message saying how many, or is disconnected,
//! per `WS_SLOW_CLIENT`; nobody else waits for it. A client stalled past the pong timeout is
//! dropped.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    /// Events queued for one client at most (`WS_CLIENT_QUEUE`).
    pub queue_max: usize,
    pub counters: Arc<WsCounters>,
}

/// Slow-client counters, read at scrape time.
#[derive(Debug, Default)]
pub struct WsCounters {
    /// Events lost by slow clients (`drop_oldest`).
    pub events_dropped: AtomicU64,
    /// Clients disconnected for being slow (`disconnect`) or answering no ping.
    pub slow_disconnects: AtomicU64,
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
    let call_id = super::query_param(&query, "call_id").filter(|c| !c.is_empty());
    let session_id = super::query_param(&query, "session_id")
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            let mut b = [0u8; 8];
            let _ = getrandom::fill(&mut b);
            format!("ws-{:016x}", u64::from_le_bytes(b))
        });
    // Browsers cannot set headers on a WebSocket: `?token=` carries a JWT or an API key.
    let checked = super::check_request(&auth, headers, &query);
    let refusal: Option<(CloseCode, String)> = match (checked, &hub) {
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

/// What the client loop hands the writer task.
enum Out {
    Frame(Message),
    /// Send what tungstenite queued by itself (the pong to a client's ping).
    Flush,
}

/// Owns the socket's sending half: a client that doesn't read blocks only this task.
async fn write_frames(
    mut tx: futures_util::stream::SplitSink<Ws, Message>,
    mut frames: tokio::sync::mpsc::Receiver<Out>,
) {
    while let Some(out) = frames.recv().await {
        let sent = match out {
            Out::Frame(m) => tx.send(m).await,
            Out::Flush => tx.flush().await,
        };
        if sent.is_err() {
            return;
        }
    }
    let _ = tx.close().await;
}

async fn client(ws: Ws, hub: WsHub, feed: Feed, call_id: Option<String>, session_id: String) {
    let (tx, mut rx) = ws.split();
    let mut events = hub.events.subscribe();
    let (out, frames) = tokio::sync::mpsc::channel::<Out>(1);
    let writer = tokio::spawn(write_frames(tx, frames));
    let stop_writer = writer.abort_handle();
    let text = |v: serde_json::Value| Out::Frame(Message::Text(v.to_string().into()));
    let mut queue: VecDeque<Out> = VecDeque::new();
    queue.push_back(text(json!({
        "type": "connected",
        "feed": feed.name(),
        "session_id": session_id,
        "call_id": call_id,
    })));
    // Events lost since the last `gap` message went out.
    let mut lost: u64 = 0;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut last_pong = Instant::now();
    let counters = hub.counters.clone();
    // (close code, reason, whether an `error` message goes first)
    let end: Option<(CloseCode, String, bool)> = loop {
        tokio::select! {
            permit = out.reserve(), if lost > 0 || !queue.is_empty() => {
                let Ok(permit) = permit else {
                    break None; // The writer ended: the socket failed.
                };
                if lost > 0 {
                    permit.send(text(json!({"type": "gap", "data": {"lost": lost}})));
                    lost = 0;
                } else if let Some(next) = queue.pop_front() {
                    permit.send(next);
                }
            }
            e = events.recv() => {
                let behind = match e {
                    Ok(event) => {
                        let wanted = feed.wants(event.kind)
                            && call_id.as_deref().is_none_or(|c| c == event.call_id);
                        if !wanted {
                            continue;
                        }
                        let json = String::from_utf8(event.to_json()).unwrap_or_default();
                        queue.push_back(Out::Frame(Message::Text(json.into())));
                        queue.len().saturating_sub(hub.queue_max) as u64
                    }
                    // The bus outran even this loop (it holds 4096 events): as slow.
                    Err(broadcast::error::RecvError::Lagged(n)) => n,
                    Err(broadcast::error::RecvError::Closed) => {
                        break Some((CloseCode::Away, "server shutting down".into(), false));
                    }
                };
                if behind == 0 {
                    continue;
                }
                match hub.slow_client {
                    SlowClient::DropOldest => {
                        let excess = queue.len().saturating_sub(hub.queue_max);
                        // Pings and pongs queued at the front stay; events go oldest first.
                        let mut dropped = 0;
                        queue.retain(|m| {
                            let event = matches!(m, Out::Frame(Message::Text(_)));
                            let drop = event && dropped < excess;
                            dropped += usize::from(drop);
                            !drop
                        });
                        let n = behind.max(dropped as u64);
                        lost += n;
                        counters.events_dropped.fetch_add(n, Ordering::Relaxed);
                    }
                    SlowClient::Disconnect => {
                        counters.slow_disconnects.fetch_add(1, Ordering::Relaxed);
                        let msg = format!("client too slow: {} events behind", queue.len());
                        break Some((CloseCode::Policy, msg, true));
                    }
                }
            }
            m = rx.next() => match m {
                None => break None,
                Some(Err(e)) => break Some((CloseCode::Protocol, format!("bad frame: {e}"), true)),
                Some(Ok(Message::Pong(_))) => last_pong = Instant::now(),
                Some(Ok(Message::Ping(_))) => queue.push_front(Out::Flush),
                Some(Ok(Message::Close(_))) => break None,
                Some(Ok(Message::Text(t))) => {
                    let v: Option<serde_json::Value> = serde_json::from_str(t.as_str()).ok();
                    match v.as_ref().and_then(|v| v["type"].as_str()) {
                        Some("ping") => queue.push_back(text(json!({"type": "pong"}))),
                        _ => {
                            let msg = "malformed client message: expected {\"type\":\"ping\"}";
                            break Some((CloseCode::Invalid, msg.into(), true));
                        }
                    }
                }
                Some(Ok(_)) => {
                    let msg = "binary frames are not accepted";
                    break Some((CloseCode::Unsupported, msg.into(), true));
                }
            },
            _ = ping.tick() => {
                if last_pong.elapsed() > PONG_TIMEOUT {
                    // Also where a client that stopped reading ends: its pings never left.
                    counters.slow_disconnects.fetch_add(1, Ordering::Relaxed);
                    break Some((CloseCode::Away, "no pong".into(), false));
                }
                queue.push_front(Out::Frame(Message::Ping(Bytes::new())));
            }
        }
    };
    // The goodbye gets 2 s to leave; a writer stuck on a full socket is then aborted.
    let goodbye = async move {
        if let Some((code, reason, error)) = end {
            if error {
                let _ = out.send(Out::Frame(error_message(&reason))).await;
            }
            let _ = out.send(Out::Frame(close_frame(code, &reason))).await;
        }
        drop(out);
        let _ = writer.await;
    };
    if tokio::time::timeout(Duration::from_secs(2), goodbye)
        .await
        .is_err()
    {
        stop_writer.abort();
    }
}
