//! Publishing call events to RabbitMQ (lapin on the control plane's tokio runtime).
//!
//! At least once and in order: every event goes into one bounded FIFO; events are published
//! from its front with publisher confirms and leave it only when the broker acks them. When
//! the connection fails, whatever is unconfirmed is published again, in order, on the next
//! connection (consumers drop duplicates by event id). While the broker is unreachable the
//! FIFO keeps filling; beyond `buffer_max` the oldest events are dropped and counted, and a
//! `gap` event says how many — or, with `AMQP_SPOOL_DIR`, later events go to the disk spool
//! (`spool.rs`) and come back in order as the FIFO empties. On shutdown the publisher gets
//! two seconds to flush, and what is still unconfirmed goes to the front of the spool for the
//! next run. Recording never waits for any of this.

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
    /// Events after the queue's, on disk (`AMQP_SPOOL_DIR`).
    spool: Option<super::spool::Spool>,
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
        if let Some(spool) = self.spool.as_mut() {
            // Behind whatever is spooled already, so order holds.
            if self.queue.len() >= self.config.buffer_max || !spool.is_empty() {
                if let Err(e) = spool.push(&event.routing_key(), &event.to_json()) {
                    tracing::warn!(error = %e, "AMQP spool write failed; event dropped");
                    self.lost(1);
                }
                self.spool_lost();
                self.update_buffered();
                return;
            }
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
        self.update_buffered();
    }

    fn update_buffered(&self) {
        let spooled = self.spool.as_ref().map_or(0, |s| s.len());
        self.status
            .buffered
            .store(self.queue.len() as u64 + spooled, Ordering::Relaxed);
    }

    /// Events the spool lost (torn lines, its size limit) become part of the next gap.
    fn spool_lost(&mut self) {
        if let Some(n) = self.spool.as_mut().map(|s| std::mem::take(&mut s.lost)) {
            if n > 0 {
                self.lost(n);
            }
        }
    }

    /// Moves spooled events into the memory queue once it has room for a batch.
    fn refill(&mut self) {
        let room = self.config.buffer_max.saturating_sub(self.queue.len());
        let Some(spool) = self.spool.as_mut() else {
            return;
        };
        if spool.is_empty() || room < self.config.buffer_max.div_ceil(2) {
            return;
        }
        match spool.pop(room) {
            Ok(records) => {
                for (routing_key, body) in records {
                    self.queue.push_back(Outgoing { routing_key, body });
                }
            }
            Err(e) => tracing::warn!(error = %e, "AMQP spool read failed"),
        }
        self.spool_lost();
        self.update_buffered();
    }

    /// Stopping: what is still unconfirmed goes to the front of the spool for the next run.
    fn save(&mut self) {
        let Some(spool) = self.spool.as_mut() else {
            return;
        };
        let records: Vec<super::spool::Record> = self
            .queue
            .drain(..)
            .map(|m| (m.routing_key, m.body))
            .collect();
        let n = records.len();
        match spool.push_front(&records).and_then(|()| spool.sync()) {
            Ok(()) => tracing::info!(events = n, spooled = spool.len(), "AMQP events spooled"),
            Err(e) => tracing::error!(error = %e, events = n, "AMQP spool write failed"),
        }
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

/// How long a stopping publisher keeps publishing before it spools the rest.
const STOP_FLUSH: Duration = Duration::from_secs(2);

/// Runs until `stop` turns true (or the bus closes). Never returns an error: failures are
/// retried with backoff and shown in `status`.
pub async fn run(
    config: AmqpConfig,
    mut rx: broadcast::Receiver<Arc<Event>>,
    status: Arc<AmqpStatus>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let spool = config.spool_dir.as_ref().and_then(|dir| {
        match super::spool::Spool::open(dir, config.spool_max_mb.saturating_mul(1 << 20)) {
            Ok(s) => {
                if !s.is_empty() {
                    tracing::info!(events = s.len(), dir = %dir.display(), "AMQP spool resumed");
                }
                Some(s)
            }
            Err(e) => {
                tracing::error!(error = %e, dir = %dir.display(), "AMQP spool unusable");
                None
            }
        }
    });
    let mut p = Publisher {
        config,
        status,
        queue: VecDeque::new(),
        unreported: 0,
        pinned: 0,
        spool,
    };
    p.refill();
    let mut backoff = BACKOFF_MIN;
    loop {
        if !p.drain(&mut rx) || *stop.borrow() {
            p.save();
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
                let e = session(&conn, &mut p, &mut rx, &mut stop).await;
                p.pinned = 0;
                let _ = conn.close(0, "").await;
                match e {
                    Ok(()) => {
                        p.save(); // Stopping: the unconfirmed rest waits on disk.
                        return;
                    }
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
                    Err(broadcast::error::RecvError::Closed) => {
                        p.save();
                        return;
                    }
                },
                _ = stop.changed() => {
                    p.save();
                    return;
                }
            }
        }
        p.report_gap(unix_ms());
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection's life: declare, then publish the queue's front with confirms. Ok when the
/// bus closed or a stop was asked (after up to STOP_FLUSH of publishing), Err(message) when the
/// connection or channel failed.
async fn session(
    conn: &Connection,
    p: &mut Publisher,
    rx: &mut broadcast::Receiver<Arc<Event>>,
    stop: &mut tokio::sync::watch::Receiver<bool>,
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
    let mut stopping: Option<tokio::time::Instant> = None;
    loop {
        p.report_gap(unix_ms());
        p.refill();
        if stopping.is_some() && p.queue.is_empty() {
            return Ok(());
        }
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
                        p.update_buffered();
                    }
                    // The broker refused it: start over on a new connection.
                    Confirmation::Nack(_) => return Err("broker nacked a message".to_owned()),
                }
            }
            e = rx.recv(), if stopping.is_none() => match e {
                Ok(e) => p.push(&e),
                Err(broadcast::error::RecvError::Lagged(n)) => p.lost(n),
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            _ = stop.changed(), if stopping.is_none() => {
                // Take what the bus still holds, then publish for a moment before spooling.
                p.drain(rx);
                stopping = Some(tokio::time::Instant::now() + STOP_FLUSH);
            }
            _ = tokio::time::sleep_until(stopping.unwrap_or_else(tokio::time::Instant::now)),
                if stopping.is_some() => return Ok(()),
            _ = health.tick() => {
                if let Some(spool) = p.spool.as_mut() {
                    // Spooled events reach the disk within a second.
                    let _ = spool.sync();
                }
                if !conn.status().connected() {
                    return Err("connection lost".to_owned());
                }
            }
        }
    }
}
