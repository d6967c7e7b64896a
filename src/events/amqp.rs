//! Publishing call events to RabbitMQ (lapin on the control plane's tokio runtime).
//!
//! At least once and in order: every event goes into one bounded FIFO; events are published
//! from its front with publisher confirms and leave it only when the broker acks them. When
//! the connection fails, whatever is unconfirmed is published again, in order, on the next
//! connection (consumers drop duplicates by event id). While the broker is unreachable the
//! FIFO keeps filling; beyond `buffer_max` the oldest events are dropped and counted, and a
//! `gap` event says how many. Recording never waits for any of this.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::publisher_confirm::{Confirmation, PublisherConfirm};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::broadcast;

use super::{Event, EventKind};
use crate::config::AmqpConfig;
use crate::proto::rfc3339_ms;

/// Messages published but not yet confirmed, at most.
const WINDOW: usize = 256;
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// What /health and /metrics show of the publisher.
#[derive(Debug, Default)]
pub struct AmqpStatus {
    pub connected: AtomicBool,
    /// Events acknowledged by the broker.
    pub confirmed: AtomicU64,
    /// Events dropped: the buffer overflowed, or this consumer lagged behind the bus.
    pub dropped: AtomicU64,
    /// Connections made (the first one included).
    pub connects: AtomicU64,
    /// Events waiting to be published or confirmed.
    pub buffered: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl AmqpStatus {
    fn set_error(&self, e: String) {
        self.connected.store(false, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(e);
        }
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}

/// One event as published: routing key, JSON body, and its kind for filters.
struct Outgoing {
    routing_key: String,
    body: Vec<u8>,
}

/// The publisher's buffer and filters.
struct Publisher {
    config: AmqpConfig,
    status: Arc<AmqpStatus>,
    queue: VecDeque<Outgoing>,
    /// Events dropped since the last gap event was queued.
    unreported: u64,
    /// How many events at the queue's front are published and awaiting their confirm: an
    /// overflow drops the oldest event after them.
    pinned: usize,
}

impl Publisher {
    fn wanted(&self, kind: EventKind) -> bool {
        match kind {
            EventKind::Gap => true,
            EventKind::SpeakerChange => self.config.publish_speaker_changes,
            EventKind::Snapshot => self.config.publish_analytics,
            EventKind::PartialTranscript => self.config.publish_partial_transcripts,
            EventKind::FinalTranscript => self.config.publish_final_transcripts,
            EventKind::KeywordDetected => self.config.publish_keyword_detections,
            EventKind::SentimentAlert => self.config.publish_sentiment_updates,
            k => k.is_lifecycle() && self.config.publish_call_events,
        }
    }

    fn push(&mut self, event: &Event) {
        if !self.wanted(event.kind) {
            return;
        }
        if self.queue.len() >= self.config.buffer_max {
            if self.queue.remove(self.pinned).is_none() {
                // Everything is in flight: the new event is the one that can't be kept.
                self.lost(1);
                return;
            }
            self.lost(1);
        }
        self.queue.push_back(Outgoing {
            routing_key: event.routing_key(),
            body: event.to_json(),
        });
        self.status
            .buffered
            .store(self.queue.len() as u64, Ordering::Relaxed);
    }

    fn lost(&mut self, n: u64) {
        self.unreported += n;
        self.status.dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// Queues a `gap` event for events lost since the last one (at the back: consumers see
    /// it where the loss became known).
    fn report_gap(&mut self, unix_ms: u64) {
        if self.unreported == 0 {
            return;
        }
        let data = serde_json::json!({ "lost": self.unreported });
        let mut gap = Event::new(EventKind::Gap, "", "", rfc3339_ms(unix_ms), data);
        gap.id = format!("gap-{unix_ms}-{}", self.unreported);
        self.unreported = 0;
        self.push(&gap);
    }

    /// Takes whatever the bus has for us without waiting; false once the bus is closed.
    fn drain(&mut self, rx: &mut broadcast::Receiver<Arc<Event>>) -> bool {
        loop {
            match rx.try_recv() {
                Ok(e) => self.push(&e),
                Err(broadcast::error::TryRecvError::Empty) => return true,
                Err(broadcast::error::TryRecvError::Lagged(n)) => self.lost(n),
                Err(broadcast::error::TryRecvError::Closed) => return false,
            }
        }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Runs until the bus closes (shutdown). Never returns an error: failures are retried with
/// backoff and shown in `status`.
pub async fn run(
    config: AmqpConfig,
    mut rx: broadcast::Receiver<Arc<Event>>,
    status: Arc<AmqpStatus>,
) {
    let mut p = Publisher {
        config,
        status,
        queue: VecDeque::new(),
        unreported: 0,
        pinned: 0,
    };
    let mut backoff = BACKOFF_MIN;
    loop {
        if !p.drain(&mut rx) {
            return;
        }
        let props = ConnectionProperties::default()
            .with_executor(tokio_executor_trait::Tokio::current())
            .with_reactor(tokio_reactor_trait::Tokio);
        // amqps:// goes over OpenSSL, checking the broker's certificate against the system's
        // roots or AMQP_TLS_CA_FILE.
        let tls = lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain: p.config.tls_ca_pem.clone(),
        };
        let conn = tokio::time::timeout(
            Duration::from_secs(5),
            Connection::connect_with_config(&p.config.url, props, tls),
        )
        .await;
        let error = match conn {
            Ok(Ok(conn)) => {
                p.status.connects.fetch_add(1, Ordering::Relaxed);
                backoff = BACKOFF_MIN;
                let e = session(&conn, &mut p, &mut rx).await;
                p.pinned = 0;
                let _ = conn.close(0, "").await;
                match e {
                    Ok(()) => return, // The bus closed: shutdown.
                    Err(e) => e,
                }
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connect timed out".to_owned(),
        };
        tracing::warn!(error = %error, retry_in = ?backoff, "AMQP publisher disconnected");
        p.status.set_error(error);
        // Keep collecting events while we wait.
        let deadline = tokio::time::Instant::now() + backoff;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                e = rx.recv() => match e {
                    Ok(e) => p.push(&e),
                    Err(broadcast::error::RecvError::Lagged(n)) => p.lost(n),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
        p.report_gap(unix_ms());
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection's life: declare, then publish the queue's front with confirms. Ok when the
/// bus closed, Err(message) when the connection or channel failed.
async fn session(
    conn: &Connection,
    p: &mut Publisher,
    rx: &mut broadcast::Receiver<Arc<Event>>,
) -> Result<(), String> {
    let ch = conn.create_channel().await.map_err(|e| e.to_string())?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        &p.config.exchange,
        ExchangeKind::Topic,
        durable,
        FieldTable::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    p.status.connected.store(true, Ordering::Relaxed);
    tracing::info!(exchange = %p.config.exchange, "AMQP publisher connected");
    // Confirms of the first `inflight.len()` queue entries, in order.
    let mut inflight: VecDeque<PublisherConfirm> = VecDeque::new();
    let mut health = tokio::time::interval(Duration::from_secs(1));
    loop {
        p.report_gap(unix_ms());
        while inflight.len() < WINDOW && inflight.len() < p.queue.len() {
            let m = &p.queue[inflight.len()];
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into());
            let confirm = ch
                .basic_publish(
                    &p.config.exchange,
                    &m.routing_key,
                    BasicPublishOptions::default(),
                    &m.body,
                    props,
                )
                .await
                .map_err(|e| e.to_string())?;
            inflight.push_back(confirm);
            p.pinned = inflight.len();
        }
        tokio::select! {
            biased;
            c = async {
                match inflight.front_mut() {
                    Some(c) => c.await,
                    None => std::future::pending().await,
                }
            } => {
                match c.map_err(|e| e.to_string())? {
                    Confirmation::Ack(_) | Confirmation::NotRequested => {
                        inflight.pop_front();
                        p.queue.pop_front();
                        p.pinned = inflight.len();
                        p.status.confirmed.fetch_add(1, Ordering::Relaxed);
                        p.status.buffered.store(p.queue.len() as u64, Ordering::Relaxed);
                    }
                    // The broker refused it: start over on a new connection.
                    Confirmation::Nack(_) => return Err("broker nacked a message".to_owned()),
                }
            }
            e = rx.recv() => match e {
                Ok(e) => p.push(&e),
                Err(broadcast::error::RecvError::Lagged(n)) => p.lost(n),
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            _ = health.tick() => {
                if !conn.status().connected() {
                    return Err("connection lost".to_owned());
                }
            }
        }
    }
}
