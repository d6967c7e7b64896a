//! Several siprec nodes behind one SBC's SRS group share what they run through Redis (issue 11,
//! `docs/cluster.md`): each node heartbeats a record with a TTL and publishes its active
//! sessions, so any node can list the whole cluster and send a per-call request to the node
//! that owns the call.
//!
//! Keys, under `CLUSTER_KEY_PREFIX` (`p`, default `siprec`):
//! - `p:nodes`: sorted set, member a node id, score the Unix ms of its last heartbeat (only
//!   for clearing out long-dead members: liveness is the record's own expiry, so clocks need
//!   not agree);
//! - `p:node:<id>`: the node's [`NodeRecord`] (JSON), expiring after the TTL;
//! - `p:node:<id>:sessions`: hash call-id → [`SessionRecord`] (JSON), expiring after the TTL.
//!
//! A node that stops heartbeating (killed, partitioned) leaves the registry, with its sessions,
//! one TTL after its last heartbeat; a node that stops cleanly removes itself at once.
//!
//! Refuses: letting Redis touch a call. Redis being down or slow only degrades `/health` and
//! makes cluster-scoped requests answer 503; every Redis call here is bounded in time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::Snapshot;
use crate::config::ClusterConfig;

pub mod forward;

/// How often a node publishes its record and its sessions.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Every Redis round trip gives up after this; the caller reports Redis as unavailable.
const REDIS_DEADLINE: Duration = Duration::from_secs(2);
/// A full re-publish of the session hash every this many heartbeats (between them only what
/// changed is sent); it also repairs a Redis that restarted empty.
const FULL_EVERY: u32 = 30;

/// One node, as the others see it. Fields default when missing, so nodes of different
/// versions read each other's records during a rolling upgrade.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct NodeRecord {
    pub node: String,
    /// Where this node's HTTP API answers (`CLUSTER_ADVERTISE_URL`).
    pub api_url: String,
    pub version: String,
    pub started_ms: u64,
    pub heartbeat_ms: u64,
    pub draining: bool,
    pub stats: NodeStats,
}

/// The figures `/api/sessions/stats` shows, per node; summed for `?scope=cluster`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct NodeStats {
    pub active_calls: u64,
    pub paused_calls: u64,
    pub total_calls: u64,
    pub rejected_calls: u64,
    pub ports_in_use: u64,
    pub ports_capacity: u64,
}

impl NodeStats {
    pub fn from_snapshot(snap: &Snapshot) -> NodeStats {
        let m = &snap.metrics;
        NodeStats {
            active_calls: m.active_calls,
            paused_calls: snap.paused_calls as u64,
            total_calls: m.calls.calls_total,
            rejected_calls: m.calls.calls_rejected_capacity
                + m.calls.calls_rejected_ports
                + m.calls.calls_rejected_sdp
                + m.calls.calls_rejected_not_siprec,
            ports_in_use: snap.ports_in_use as u64,
            ports_capacity: snap.ports_capacity as u64,
        }
    }

    pub fn add(&mut self, other: &NodeStats) {
        self.active_calls += other.active_calls;
        self.paused_calls += other.paused_calls;
        self.total_calls += other.total_calls;
        self.rejected_calls += other.rejected_calls;
        self.ports_in_use += other.ports_in_use;
        self.ports_capacity += other.ports_capacity;
    }
}

/// One active session as published: what identifies it and where it runs, without the
/// per-second packet counters (so the hash changes only when a call does).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct SessionRecord {
    pub call_id: String,
    pub node: String,
    pub session_id: String,
    pub state: serde_json::Value,
    pub created_at: String,
    pub participants: Vec<String>,
    pub recording_path: String,
    pub siprec: bool,
    pub streams: usize,
}

/// The session records of a snapshot, as (call-id, JSON) pairs in call-id order.
pub fn session_records(node: &str, snap: &Snapshot) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = snap
        .sessions
        .iter()
        .map(|c| {
            let record = SessionRecord {
                call_id: c.call_id.clone(),
                node: node.to_owned(),
                session_id: c.session_id.clone(),
                state: serde_json::to_value(c.state).unwrap_or_default(),
                created_at: c.created_at.clone(),
                participants: c.participants.clone(),
                recording_path: c.recording_path.clone(),
                siprec: c.siprec,
                streams: c.streams.len(),
            };
            let json = serde_json::to_string(&record).unwrap_or_default();
            (c.call_id.clone(), json)
        })
        .collect();
    out.sort();
    out
}

/// Redis key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_owned(),
        }
    }
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
    pub fn node(&self, id: &str) -> String {
        format!("{}:node:{id}", self.prefix)
    }
    pub fn sessions(&self, id: &str) -> String {
        format!("{}:node:{id}:sessions", self.prefix)
    }
}

/// What to send to this node's session hash at a heartbeat.
#[derive(Debug, Default, PartialEq)]
pub struct Delta {
    /// Replace the whole hash (after an error, at start, and every [`FULL_EVERY`]).
    pub full: bool,
    pub set: Vec<(String, String)>,
    pub del: Vec<String>,
}

/// Tracks what this node last published, to send only changes (sans-IO).
#[derive(Debug, Default)]
pub struct Publisher {
    published: HashMap<String, String>,
    /// Heartbeats since the last full publish; `None` forces one.
    since_full: Option<u32>,
}

impl Publisher {
    /// The delta from what was published to `now`; call [`Publisher::confirm`] once Redis
    /// took it, or [`Publisher::failed`] if it did not.
    pub fn delta(&self, now: &[(String, String)]) -> Delta {
        match self.since_full {
            Some(n) if n < FULL_EVERY => {
                let set = now
                    .iter()
                    .filter(|(id, json)| self.published.get(id) != Some(json))
                    .cloned()
                    .collect();
                let live: std::collections::HashSet<&String> =
                    now.iter().map(|(id, _)| id).collect();
                let mut del: Vec<String> = self
                    .published
                    .keys()
                    .filter(|id| !live.contains(id))
                    .cloned()
                    .collect();
                del.sort();
                Delta {
                    full: false,
                    set,
                    del,
                }
            }
            _ => Delta {
                full: true,
                set: now.to_vec(),
                del: Vec::new(),
            },
        }
    }

    pub fn confirm(&mut self, now: Vec<(String, String)>, delta: &Delta) {
        self.published = now.into_iter().collect();
        self.since_full = Some(if delta.full {
            1
        } else {
            self.since_full.unwrap_or(0) + 1
        });
    }

    pub fn failed(&mut self) {
        self.since_full = None;
    }
}

/// Redis's state as `/health` and `/metrics` show it.
#[derive(Debug, Default)]
pub struct ClusterStatus {
    pub connected: AtomicBool,
    pub heartbeats: AtomicU64,
    pub failures: AtomicU64,
    /// Requests for calls owned by another node, forwarded there.
    pub forwarded: AtomicU64,
    pub nodes_seen: AtomicU64,
    last_error: crate::proto::LastError,
}

impl ClusterStatus {
    pub fn last_error(&self) -> Option<String> {
        self.last_error.get()
    }
    fn set_error(&self, e: Option<String>) {
        self.last_error.set(e);
    }
}

/// This node's handle on the cluster registry.
pub struct Cluster {
    pub node_id: String,
    pub api_url: String,
    keys: Keys,
    ttl: Duration,
    conn: redis::aio::ConnectionManager,
    pub status: ClusterStatus,
    started_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("bad record in Redis: {0}")]
    Decode(String),
}

impl Cluster {
    /// A handle that connects lazily (a Redis that is down at start-up only degrades /health).
    pub fn new(config: &ClusterConfig, redis_url: &str) -> Result<Arc<Cluster>, ClusterError> {
        let client = redis::Client::open(redis_url)?;
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, manager)?;
        Ok(Arc::new(Cluster {
            node_id: config.node_id.clone(),
            api_url: config.advertise_url.clone(),
            keys: Keys::new(&config.key_prefix),
            ttl: Duration::from_secs(u64::from(config.ttl_s)),
            conn,
            status: ClusterStatus::default(),
            started_ms: unix_ms(),
        }))
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, ClusterError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(REDIS_DEADLINE, pipe.query_async(&mut conn)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(ClusterError::Timeout(REDIS_DEADLINE)),
        }
    }

    /// Publishes this node's record and its session delta, refreshing both TTLs; returns how
    /// many sessions the hash holds afterwards (a mismatch means Redis lost data: publish
    /// everything next time).
    pub async fn heartbeat(&self, snap: &Snapshot, delta: &Delta) -> Result<usize, ClusterError> {
        let now = unix_ms();
        let record = NodeRecord {
            node: self.node_id.clone(),
            api_url: self.api_url.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_ms: self.started_ms,
            heartbeat_ms: now,
            draining: snap.draining,
            stats: NodeStats::from_snapshot(snap),
        };
        let ttl_ms = self.ttl.as_millis() as u64;
        let json =
            serde_json::to_string(&record).map_err(|e| ClusterError::Decode(e.to_string()))?;
        let sessions = self.keys.sessions(&self.node_id);
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("SET")
            .arg(self.keys.node(&self.node_id))
            .arg(json)
            .arg("PX")
            .arg(ttl_ms)
            .ignore();
        pipe.cmd("ZADD")
            .arg(self.keys.nodes())
            .arg(now)
            .arg(&self.node_id)
            .ignore();
        // Members of nodes gone for ten TTLs (their own keys expired long ago).
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(self.keys.nodes())
            .arg("-inf")
            .arg(now.saturating_sub(10 * ttl_ms))
            .ignore();
        if delta.full {
            pipe.cmd("DEL").arg(&sessions).ignore();
        } else if !delta.del.is_empty() {
            pipe.cmd("HDEL").arg(&sessions).arg(&delta.del).ignore();
        }
        if !delta.set.is_empty() {
            pipe.cmd("HSET").arg(&sessions).arg(&delta.set).ignore();
        }
        pipe.cmd("PEXPIRE").arg(&sessions).arg(ttl_ms).ignore();
        pipe.cmd("HLEN").arg(&sessions);
        let (len,): (usize,) = self.query(&pipe).await?;
        Ok(len)
    }

    /// Removes this node from the registry (clean stop).
    pub async fn leave(&self) -> Result<(), ClusterError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("ZREM")
            .arg(self.keys.nodes())
            .arg(&self.node_id)
            .ignore();
        pipe.cmd("DEL")
            .arg(self.keys.node(&self.node_id))
            .arg(self.keys.sessions(&self.node_id))
            .ignore();
        self.query::<()>(&pipe).await
    }

    /// The live nodes (this one included), in node-id order: those whose record has not
    /// expired. A record that does not decode is skipped with a warning.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, ClusterError> {
        let mut pipe = redis::pipe();
        pipe.cmd("ZRANGE").arg(self.keys.nodes()).arg(0).arg(-1);
        let (ids,): (Vec<String>,) = self.query(&pipe).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        pipe.cmd("MGET")
            .arg(ids.iter().map(|id| self.keys.node(id)).collect::<Vec<_>>());
        let (records,): (Vec<Option<String>>,) = self.query(&pipe).await?;
        let mut out = Vec::new();
        for json in records.into_iter().flatten() {
            match serde_json::from_str::<NodeRecord>(&json) {
                Ok(record) => out.push(record),
                Err(e) => tracing::warn!(error = %e, "cluster: unreadable node record skipped"),
            }
        }
        out.sort_by(|a, b| a.node.cmp(&b.node));
        self.status.nodes_seen.store(out.len() as u64, Relaxed);
        Ok(out)
    }

    /// The published sessions of `nodes`, in (node, call-id) order.
    pub async fn sessions(&self, nodes: &[NodeRecord]) -> Result<Vec<SessionRecord>, ClusterError> {
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for n in nodes {
            pipe.cmd("HVALS").arg(self.keys.sessions(&n.node));
        }
        let lists: Vec<Vec<String>> = self.query(&pipe).await?;
        let mut out = Vec::new();
        for json in lists.into_iter().flatten() {
            match serde_json::from_str::<SessionRecord>(&json) {
                Ok(record) => out.push(record),
                Err(e) => tracing::warn!(error = %e, "cluster: unreadable session record skipped"),
            }
        }
        out.sort_by(|a, b| (&a.node, &a.call_id).cmp(&(&b.node, &b.call_id)));
        Ok(out)
    }

    /// The live node that runs `call_id`, if any.
    pub async fn owner(&self, call_id: &str) -> Result<Option<NodeRecord>, ClusterError> {
        let nodes = self.nodes().await?;
        if nodes.is_empty() {
            return Ok(None);
        }
        let mut pipe = redis::pipe();
        for n in &nodes {
            pipe.cmd("HEXISTS")
                .arg(self.keys.sessions(&n.node))
                .arg(call_id);
        }
        let found: Vec<bool> = self.query(&pipe).await?;
        Ok(nodes
            .into_iter()
            .zip(found)
            .find(|(_, f)| *f)
            .map(|(n, _)| n))
    }

    fn record_result<T>(&self, result: &Result<T, ClusterError>) {
        match result {
            Ok(_) => {
                self.status.heartbeats.fetch_add(1, Relaxed);
                if !self.status.connected.swap(true, Relaxed) {
                    tracing::info!(node = %self.node_id, "cluster: registered in Redis");
                }
                self.status.set_error(None);
            }
            Err(e) => {
                self.status.failures.fetch_add(1, Relaxed);
                if self.status.connected.swap(false, Relaxed) || self.status.last_error().is_none()
                {
                    tracing::warn!(error = %e, "cluster: Redis unavailable; recording goes on");
                }
                self.status.set_error(Some(e.to_string()));
            }
        }
    }
}

/// Heartbeats until `stop` turns true, then leaves the registry.
pub async fn run(
    cluster: Arc<Cluster>,
    api: Arc<crate::api::ApiState>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut publisher = Publisher::default();
    let mut tick = tokio::time::interval(HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let snap = api.snapshot_now();
        let now = session_records(&cluster.node_id, &snap);
        let delta = publisher.delta(&now);
        let result = cluster.heartbeat(&snap, &delta).await;
        cluster.record_result(&result);
        match result {
            Ok(len) if len == now.len() => publisher.confirm(now, &delta),
            // Redis lost (part of) the hash (a flush, a failover): rewrite it next time.
            Ok(_) | Err(_) => publisher.failed(),
        }
    }
    if let Err(e) = cluster.leave().await {
        tracing::warn!(error = %e, "cluster: could not leave the registry; it expires by TTL");
    }
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, state: &str) -> (String, String) {
        (
            id.to_owned(),
            format!("{{\"call_id\":\"{id}\",\"state\":\"{state}\"}}"),
        )
    }

    /// First publish is full; then only changes travel; a failure forces the next one full;
    /// and every FULL_EVERY heartbeats the hash is rewritten whole.
    #[test]
    fn publisher_sends_changes_and_repairs() {
        let mut p = Publisher::default();
        let now = vec![rec("a", "active"), rec("b", "active")];
        let d = p.delta(&now);
        assert!(d.full);
        assert_eq!(d.set.len(), 2);
        p.confirm(now, &d);

        let now = vec![rec("a", "active"), rec("b", "paused"), rec("c", "active")];
        let d = p.delta(&now);
        assert_eq!(
            d,
            Delta {
                full: false,
                set: vec![rec("b", "paused"), rec("c", "active")],
                del: vec![],
            }
        );
        p.confirm(now, &d);

        let now = vec![rec("c", "active")];
        let d = p.delta(&now);
        assert_eq!((d.full, d.set.len()), (false, 0));
        assert_eq!(d.del, vec!["a".to_owned(), "b".to_owned()]);
        p.failed();
        let d = p.delta(&now);
        assert!(d.full, "after a failure the hash is rewritten");
        p.confirm(now.clone(), &d);

        for _ in 1..FULL_EVERY {
            let d = p.delta(&now);
            assert!(!d.full);
            assert!(d.set.is_empty() && d.del.is_empty());
            p.confirm(now.clone(), &d);
        }
        assert!(p.delta(&now).full, "periodic full publish");
    }

    #[test]
    fn stats_sum() {
        let mut a = NodeStats {
            active_calls: 2,
            paused_calls: 1,
            total_calls: 10,
            rejected_calls: 3,
            ports_in_use: 4,
            ports_capacity: 100,
        };
        a.add(&a.clone());
        assert_eq!(
            (a.active_calls, a.total_calls, a.ports_capacity),
            (4, 20, 200)
        );
    }
}
