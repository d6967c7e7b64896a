//! Prometheus exposition (`/metrics`) and its JSON twin (`/metrics/simple`), built at scrape
//! time from the snapshot the control plane publishes: data-plane counters are per-worker
//! values summed when read, never shared per packet.

use std::collections::BTreeMap;

use prometheus::{Encoder, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use serde::Serialize;

use crate::dataplane::CounterSnapshot;
use crate::media::rtp::RtpStats;
use crate::session::SessionCounters;

/// SIP messages seen by the control plane.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SipCounters {
    /// Requests received, by method.
    pub requests: BTreeMap<String, u64>,
    /// Responses sent, by status code.
    pub responses: BTreeMap<u16, u64>,
    /// Datagrams or stream messages that did not parse (answered 4xx/5xx when possible).
    pub parse_errors: u64,
    /// Messages from sources outside SIP_ALLOWED_NETWORKS (answered 403 or dropped).
    pub acl_denied: u64,
    /// Messages dropped from sources blocked for flooding (SIP_FLOOD_LIMIT).
    pub flood_dropped: u64,
    /// SIP over TLS connections whose handshake failed (bad or missing client certificate
    /// under mutual TLS, protocol mismatch, timeout).
    pub tls_handshake_failures: u64,
}

/// Recorder totals at the time of the snapshot.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RecorderTotals {
    pub frames_popped: u64,
    pub frames_unknown_dropped: u64,
    pub frames_malformed_dropped: u64,
    pub sessions_closed: u64,
    pub sessions_failed: u64,
}

/// Everything `/metrics` reports, as plain numbers (also the `/metrics/simple` body).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MetricsSnapshot {
    pub active_calls: u64,
    pub sip: SipCounters,
    pub calls: SessionCounters,
    pub rtp: RtpStats,
    pub dataplane: CounterSnapshot,
    pub recorder: RecorderTotals,
    pub ports_in_use: u64,
    pub ports_capacity: u64,
    pub disk_free_bytes: u64,
    pub backend: String,
    pub workers: u64,
    /// The AMQP publisher's state, when it runs.
    pub amqp: Option<AmqpTotals>,
    /// The cluster registry's state, when `REDIS_URL` is set (scrape time).
    pub cluster: Option<ClusterTotals>,
    /// The object-storage uploader's counters, when `S3_ENDPOINT` is set (scrape time).
    pub upload: Option<UploadTotals>,
    /// WebSocket clients connected to `/ws/*` (filled at scrape time by the API).
    pub ws_clients: u64,
    /// Events lost by slow WebSocket clients, and clients dropped as slow (scrape time).
    pub ws_events_dropped: u64,
    pub ws_slow_disconnects: u64,
    /// What `/health/ready` would answer, and workers whose loop turned recently (scrape
    /// time), for alerting.
    pub ready: bool,
    pub workers_alive: u64,
    pub stt: SttTotals,
}

/// Live transcription's state and counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SttTotals {
    /// `STT_PROVIDER` ("none" when off).
    pub provider: String,
    pub running: bool,
    /// Why a configured provider is not running (e.g. the model is missing).
    pub error: Option<String>,
    pub workers: u64,
    pub workers_busy: u64,
    /// Finals waiting for a worker, and the most that may wait (`STT_QUEUE_MAX`).
    pub queue_depth: u64,
    pub queue_max: u64,
    /// Recording sessions whose transcript files are not written yet.
    pub sessions_pending: u64,
    pub frames: u64,
    pub frames_unknown: u64,
    pub partials_queued: u64,
    pub partials_dropped: u64,
    pub finals_queued: u64,
    pub finals_dropped: u64,
    pub transcripts_partial: u64,
    pub transcripts_final: u64,
    pub failures: u64,
    pub utterances_too_short: u64,
    /// Audio transcribed and engine time spent on it: busy / audio is the real-time factor.
    pub audio_seconds: f64,
    pub busy_seconds: f64,
    /// Engine time on finals only.
    pub busy_final_seconds: f64,
    /// PII redactions by kind (card, national_id, phone, custom).
    pub redactions: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct UploadTotals {
    pub sessions: u64,
    pub files: u64,
    pub bytes: u64,
    pub parts: u64,
    pub failures: u64,
    pub resumed: u64,
    pub local_deleted: u64,
    pub remote_erased: u64,
    pub pending: u64,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct ClusterTotals {
    pub redis_connected: bool,
    pub heartbeats: u64,
    pub failures: u64,
    pub forwarded: u64,
    pub nodes: u64,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct AmqpTotals {
    pub connected: bool,
    pub confirmed: u64,
    pub dropped: u64,
    pub buffered: u64,
    pub connects: u64,
}

/// The registry and its collectors. Counters follow the snapshot: each scrape adds the
/// difference since the last one, so they stay monotonic.
pub struct Metrics {
    registry: Registry,
    sip_requests: IntCounterVec,
    sip_responses: IntCounterVec,
    sip_parse_errors: IntCounterVec,
    calls: IntCounterVec,
    metadata_errors: IntCounterVec,
    rtp_packets: IntCounterVec,
    rtp_bytes: IntCounterVec,
    rtp_dropped: IntCounterVec,
    rtp_events: IntCounterVec,
    recorder: IntCounterVec,
    dataplane: IntCounterVec,
    srtp_auth_failures: IntCounterVec,
    srtp_replays: IntCounterVec,
    amqp_events: IntCounterVec,
    amqp_connected: IntGauge,
    cluster_events: IntCounterVec,
    cluster_connected: IntGauge,
    cluster_nodes: IntGauge,
    upload_events: IntCounterVec,
    upload_bytes: IntCounterVec,
    upload_pending: IntGauge,
    ws_clients: IntGauge,
    ws_events_dropped: IntCounterVec,
    ws_slow_disconnects: IntCounterVec,
    /// Counted by the HTTP server itself as handshakes fail.
    pub tls_handshake_failures: prometheus::IntCounter,
    amqp_buffered: IntGauge,
    stt_utterances: IntCounterVec,
    stt_transcripts: IntCounterVec,
    stt_failures: IntCounterVec,
    stt_seconds: prometheus::CounterVec,
    stt_queue: IntGaugeVec,
    stt_redactions: IntCounterVec,
    active_calls: IntGauge,
    ports: IntGaugeVec,
    disk_free: IntGauge,
    backend: IntGaugeVec,
    workers: IntGauge,
    workers_alive: IntGauge,
    ready: IntGauge,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help).namespace("siprec"), labels)
        .expect("metric names and labels are static and valid");
    registry
        .register(Box::new(c.clone()))
        .expect("each metric is registered once");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::with_opts(Opts::new(name, help).namespace("siprec"))
        .expect("metric names are static and valid");
    registry
        .register(Box::new(g.clone()))
        .expect("each metric is registered once");
    g
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help).namespace("siprec"), labels)
        .expect("metric names and labels are static and valid");
    registry
        .register(Box::new(g.clone()))
        .expect("each metric is registered once");
    g
}

/// Raises `counter{labels}` to `value` (never lowers it).
fn follow(c: &IntCounterVec, labels: &[&str], value: u64) {
    let m = c.with_label_values(labels);
    let now = m.get();
    if value > now {
        m.inc_by(value - now);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        // The recorder's file-operation latencies are observed where they happen (a
        // process-wide histogram); every registry shows them.
        let io = crate::sink::recorder::IO_LATENCY.vec.clone();
        let _ = r.register(Box::new(io));
        let _ = r.register(Box::new(crate::sink::stt::LATENCY.clone()));
        let _ = r.register(Box::new(crate::sink::recorder::RECOVERED.clone()));
        let stt_seconds = prometheus::CounterVec::new(
            Opts::new(
                "stt_seconds_total",
                "Live transcription: audio transcribed and engine time spent (busy/audio = RTF)",
            )
            .namespace("siprec"),
            &["kind"],
        )
        .expect("metric names and labels are static and valid");
        let _ = r.register(Box::new(stt_seconds.clone()));
        Metrics {
            stt_utterances: counter(
                &r,
                "stt_utterances_total",
                "Utterances cut for transcription, by outcome (final/partial queued or dropped, \
                 too_short)",
                &["outcome"],
            ),
            stt_transcripts: counter(
                &r,
                "stt_transcripts_total",
                "Transcripts produced, by kind (partial, final)",
                &["kind"],
            ),
            stt_failures: counter(
                &r,
                "stt_errors_total",
                "Live transcription errors, by reason (engine, frames_unknown, ring_full)",
                &["reason"],
            ),
            stt_seconds,
            stt_redactions: counter(
                &r,
                "stt_redactions_total",
                "PII redacted from transcripts, by kind (card, national_id, phone, custom)",
                &["kind"],
            ),
            stt_queue: gauge_vec(
                &r,
                "stt_queue",
                "Live transcription load: finals waiting, workers busy, sessions pending",
                &["what"],
            ),
            sip_requests: counter(
                &r,
                "sip_requests_total",
                "SIP requests received",
                &["method"],
            ),
            sip_responses: counter(&r, "sip_responses_total", "SIP responses sent", &["code"]),
            sip_parse_errors: counter(
                &r,
                "sip_messages_dropped_total",
                "SIP messages dropped or refused: unparsable, from a source the ACL denies, or \
                 from a source blocked for flooding",
                &["reason"],
            ),
            calls: counter(
                &r,
                "calls_total",
                "Recording sessions by outcome",
                &["outcome"],
            ),
            metadata_errors: counter(
                &r,
                "metadata_errors_total",
                "RFC 7865 metadata bodies refused as unusable (the call is recorded without them)",
                &[],
            ),
            rtp_packets: counter(
                &r,
                "rtp_packets_received_total",
                "RTP datagrams received",
                &["kind"],
            ),
            rtp_bytes: counter(&r, "rtp_bytes_received_total", "RTP bytes received", &[]),
            rtp_dropped: counter(
                &r,
                "rtp_packets_dropped_total",
                "RTP datagrams not recorded, by reason",
                &["reason"],
            ),
            rtp_events: counter(
                &r,
                "rtp_stream_events_total",
                "RTP sequence events: lost, out_of_order, ssrc_change",
                &["event"],
            ),
            recorder: counter(
                &r,
                "recorder_events_total",
                "Recorder frames and sessions",
                &["event"],
            ),
            dataplane: counter(
                &r,
                "dataplane_events_total",
                "Data-plane receive events (io_uring re-arms, ENOBUFS, receive errors, \
                 SRTP packets unprotected in lane groups, frames AF_XDP dropped)",
                &["event"],
            ),
            srtp_auth_failures: counter(
                &r,
                "srtp_auth_failures_total",
                "SRTP/SRTCP packets dropped: authentication tag mismatch",
                &[],
            ),
            srtp_replays: counter(
                &r,
                "srtp_replays_total",
                "SRTP/SRTCP packets dropped: replayed or older than the replay window",
                &[],
            ),
            amqp_events: counter(
                &r,
                "amqp_events_total",
                "Call events on AMQP: confirmed by the broker, dropped (buffer overflow or lag), \
                 connects",
                &["event"],
            ),
            amqp_connected: gauge(
                &r,
                "amqp_connected",
                "1 while the AMQP publisher is connected",
            ),
            amqp_buffered: gauge(
                &r,
                "amqp_buffered_events",
                "Events waiting to be published or confirmed",
            ),
            cluster_events: counter(
                &r,
                "cluster_events_total",
                "Cluster registry: heartbeats Redis took, heartbeats that failed, API requests \
                 forwarded to the node owning the call",
                &["event"],
            ),
            cluster_connected: gauge(
                &r,
                "cluster_redis_connected",
                "1 while the last heartbeat reached Redis",
            ),
            cluster_nodes: gauge(
                &r,
                "cluster_nodes",
                "Live nodes in the registry at the last cluster query",
            ),
            upload_events: counter(
                &r,
                "upload_events_total",
                "Object storage: sessions and files stored and verified, parts sent, failed \
                 rounds, multipart uploads resumed, local files deleted after retention, remote \
                 objects erased (GDPR)",
                &["event"],
            ),
            upload_bytes: counter(
                &r,
                "upload_bytes_total",
                "Bytes stored in object storage and verified",
                &[],
            ),
            upload_pending: gauge(
                &r,
                "upload_pending_sessions",
                "Finished sessions waiting for upload at the last round",
            ),
            ws_clients: gauge(&r, "websocket_clients", "Clients connected to /ws/*"),
            ws_events_dropped: counter(
                &r,
                "websocket_events_dropped_total",
                "Events slow WebSocket clients lost (WS_SLOW_CLIENT=drop_oldest)",
                &[],
            ),
            ws_slow_disconnects: counter(
                &r,
                "websocket_slow_disconnects_total",
                "WebSocket clients disconnected as too slow or answering no ping",
                &[],
            ),
            tls_handshake_failures: {
                let help = "HTTPS connections whose TLS handshake failed or timed out";
                let opts = Opts::new("http_tls_handshake_failures_total", help);
                let c = prometheus::IntCounter::with_opts(opts.namespace("siprec"))
                    .expect("metric names are static and valid");
                r.register(Box::new(c.clone()))
                    .expect("each metric is registered once");
                c
            },
            active_calls: gauge(&r, "active_calls", "Recording sessions in progress"),
            ports: gauge_vec(&r, "rtp_ports", "RTP port pool", &["state"]),
            disk_free: gauge(
                &r,
                "recording_disk_free_bytes",
                "Free space under RECORDING_DIR",
            ),
            backend: gauge_vec(
                &r,
                "dataplane_backend",
                "Receive backend in use (1)",
                &["backend"],
            ),
            workers: gauge(&r, "dataplane_workers", "Receive worker threads"),
            workers_alive: gauge(
                &r,
                "dataplane_workers_alive",
                "Receive workers whose loop turned in the last 2 s",
            ),
            ready: gauge(
                &r,
                "ready",
                "1 when /health/ready answers 200 (not starting or draining, workers alive, disk \
                 above the minimum)",
            ),
            registry: r,
        }
    }

    /// Updates every collector from `s` and renders the text exposition format.
    pub fn render(&self, s: &MetricsSnapshot) -> String {
        for (method, n) in &s.sip.requests {
            follow(&self.sip_requests, &[method], *n);
        }
        for (code, n) in &s.sip.responses {
            follow(&self.sip_responses, &[&code.to_string()], *n);
        }
        follow(&self.sip_parse_errors, &["unparsable"], s.sip.parse_errors);
        follow(&self.sip_parse_errors, &["acl"], s.sip.acl_denied);
        follow(&self.sip_parse_errors, &["flood"], s.sip.flood_dropped);
        follow(
            &self.sip_parse_errors,
            &["tls_handshake"],
            s.sip.tls_handshake_failures,
        );
        let c = &s.calls;
        for (outcome, n) in [
            ("accepted", c.calls_total),
            ("rejected_capacity", c.calls_rejected_capacity),
            ("rejected_no_ports", c.calls_rejected_ports),
            ("rejected_sdp", c.calls_rejected_sdp),
            ("rejected_not_siprec", c.calls_rejected_not_siprec),
            ("rejected_source_limit", c.calls_rejected_source_limit),
            ("rejected_storage", c.calls_rejected_storage),
            ("cancelled", c.calls_cancelled),
            ("ended_rtp_timeout", c.calls_rtp_timeout),
            ("ended_duration_cap", c.calls_duration_cap),
            ("ended_ack_timeout", c.calls_ack_timeout),
            ("ended_recording_failed", c.calls_recording_failed),
        ] {
            follow(&self.calls, &[outcome], n);
        }
        follow(&self.metadata_errors, &[], c.metadata_errors);
        let r = &s.rtp;
        follow(
            &self.rtp_packets,
            &["rtp"],
            s.dataplane.packets.saturating_sub(s.dataplane.rtcp_packets),
        );
        follow(&self.rtp_packets, &["rtcp"], s.dataplane.rtcp_packets);
        follow(&self.rtp_packets, &["audio"], r.audio_packets);
        follow(&self.rtp_bytes, &[], s.dataplane.bytes);
        for (reason, n) in [
            ("ring_full", s.dataplane.ring_full),
            ("unknown_socket", s.dataplane.unknown_socket),
            ("malformed", r.malformed),
            ("duplicate", r.duplicates),
            ("too_old", r.too_old),
            ("unknown_payload_type", r.unknown_pt),
            ("foreign_ssrc", r.foreign_ssrc),
            ("telephone_event", r.telephone_events),
            ("comfort_noise", r.comfort_noise),
            ("srtp_auth_failure", r.srtp_auth_failures),
            ("srtp_replay", r.srtp_replays),
            ("srtp_malformed", r.srtp_malformed),
        ] {
            follow(&self.rtp_dropped, &[reason], n);
        }
        follow(&self.srtp_auth_failures, &[], r.srtp_auth_failures);
        follow(&self.srtp_replays, &[], r.srtp_replays);
        follow(&self.rtp_events, &["lost"], r.lost);
        follow(&self.rtp_events, &["out_of_order"], r.out_of_order);
        follow(&self.rtp_events, &["ssrc_change"], r.ssrc_changes);
        let rec = &s.recorder;
        follow(&self.recorder, &["frames"], rec.frames_popped);
        follow(
            &self.recorder,
            &["frames_unknown_dropped"],
            rec.frames_unknown_dropped,
        );
        follow(
            &self.recorder,
            &["frames_malformed_dropped"],
            rec.frames_malformed_dropped,
        );
        follow(&self.recorder, &["sessions_closed"], rec.sessions_closed);
        follow(&self.recorder, &["sessions_failed"], rec.sessions_failed);
        follow(&self.dataplane, &["rearm"], s.dataplane.rearms);
        follow(&self.dataplane, &["no_buffers"], s.dataplane.no_buffers);
        follow(
            &self.dataplane,
            &["receive_error"],
            s.dataplane.receive_errors,
        );
        follow(
            &self.dataplane,
            &["xdp_kernel_drop"],
            s.dataplane.xdp_kernel_drops,
        );
        follow(
            &self.dataplane,
            &["srtp_lane_packet"],
            s.dataplane.srtp_lane_packets,
        );
        if let Some(a) = &s.amqp {
            follow(&self.amqp_events, &["confirmed"], a.confirmed);
            follow(&self.amqp_events, &["dropped"], a.dropped);
            follow(&self.amqp_events, &["connect"], a.connects);
            self.amqp_connected.set(i64::from(a.connected));
            self.amqp_buffered
                .set(a.buffered.min(i64::MAX as u64) as i64);
        }
        if let Some(c) = &s.cluster {
            follow(&self.cluster_events, &["heartbeat"], c.heartbeats);
            follow(&self.cluster_events, &["failure"], c.failures);
            follow(&self.cluster_events, &["forwarded"], c.forwarded);
            self.cluster_connected.set(i64::from(c.redis_connected));
            self.cluster_nodes.set(c.nodes.min(i64::MAX as u64) as i64);
        }
        if let Some(u) = &s.upload {
            follow(&self.upload_events, &["session"], u.sessions);
            follow(&self.upload_events, &["file"], u.files);
            follow(&self.upload_events, &["part"], u.parts);
            follow(&self.upload_events, &["failure"], u.failures);
            follow(&self.upload_events, &["resumed"], u.resumed);
            follow(&self.upload_events, &["local_deleted"], u.local_deleted);
            follow(&self.upload_events, &["remote_erased"], u.remote_erased);
            follow(&self.upload_bytes, &[], u.bytes);
            self.upload_pending
                .set(u.pending.min(i64::MAX as u64) as i64);
        }
        self.ws_clients
            .set(s.ws_clients.min(i64::MAX as u64) as i64);
        follow(&self.ws_events_dropped, &[], s.ws_events_dropped);
        follow(&self.ws_slow_disconnects, &[], s.ws_slow_disconnects);
        let t = &s.stt;
        if t.running {
            follow(&self.stt_utterances, &["final_queued"], t.finals_queued);
            follow(&self.stt_utterances, &["final_dropped"], t.finals_dropped);
            follow(&self.stt_utterances, &["partial_queued"], t.partials_queued);
            follow(
                &self.stt_utterances,
                &["partial_dropped"],
                t.partials_dropped,
            );
            follow(&self.stt_utterances, &["too_short"], t.utterances_too_short);
            follow(&self.stt_transcripts, &["partial"], t.transcripts_partial);
            follow(&self.stt_transcripts, &["final"], t.transcripts_final);
            follow(&self.stt_failures, &["engine"], t.failures);
            follow(&self.stt_failures, &["frames_unknown"], t.frames_unknown);
            follow(
                &self.stt_failures,
                &["ring_full"],
                s.dataplane.stt_ring_full,
            );
            let seconds = [
                ("audio", t.audio_seconds),
                ("busy", t.busy_seconds),
                ("busy_final", t.busy_final_seconds),
            ];
            for (kind, value) in seconds {
                let c = self.stt_seconds.with_label_values(&[kind]);
                if value > c.get() {
                    c.inc_by(value - c.get());
                }
            }
            for (kind, n) in &t.redactions {
                follow(&self.stt_redactions, &[kind], *n);
            }
            let q = &self.stt_queue;
            q.with_label_values(&["finals_waiting"])
                .set(t.queue_depth as i64);
            q.with_label_values(&["workers_busy"])
                .set(t.workers_busy as i64);
            q.with_label_values(&["sessions_pending"])
                .set(t.sessions_pending as i64);
        }
        self.active_calls.set(s.active_calls as i64);
        self.ports
            .with_label_values(&["in_use"])
            .set(s.ports_in_use as i64);
        self.ports
            .with_label_values(&["capacity"])
            .set(s.ports_capacity as i64);
        self.disk_free
            .set(s.disk_free_bytes.min(i64::MAX as u64) as i64);
        self.backend.reset();
        if !s.backend.is_empty() {
            self.backend.with_label_values(&[&s.backend]).set(1);
        }
        self.workers.set(s.workers as i64);
        self.workers_alive.set(s.workers_alive as i64);
        self.ready.set(i64::from(s.ready));
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for valid families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counters follow the snapshot, never go down, and carry the siprec_ prefix.
    #[test]
    fn counters_follow_snapshot() {
        let m = Metrics::new();
        let mut s = MetricsSnapshot {
            backend: "epoll".into(),
            workers: 1,
            ..Default::default()
        };
        s.sip.requests.insert("INVITE".into(), 3);
        s.dataplane.packets = 100;
        s.rtp.lost = 2;
        s.rtp.srtp_auth_failures = 4;
        let text = m.render(&s);
        assert!(text.contains("siprec_srtp_auth_failures_total 4"), "{text}");
        assert!(text.contains("siprec_srtp_replays_total 0"), "{text}");
        assert!(
            text.contains("siprec_sip_requests_total{method=\"INVITE\"} 3"),
            "{text}"
        );
        assert!(text.contains("siprec_rtp_packets_received_total{kind=\"rtp\"} 100"));
        assert!(text.contains("siprec_rtp_stream_events_total{event=\"lost\"} 2"));
        assert!(text.contains("siprec_dataplane_backend{backend=\"epoll\"} 1"));
        s.rtp.lost = 1; // A late packet filled a hole: the counter must not go down.
        s.sip.requests.insert("INVITE".into(), 5);
        let text = m.render(&s);
        assert!(text.contains("siprec_rtp_stream_events_total{event=\"lost\"} 2"));
        assert!(text.contains("siprec_sip_requests_total{method=\"INVITE\"} 5"));
    }

    /// Every metric the shipped alert rules and Grafana dashboard query is one the server
    /// exports (histograms by their `_bucket`/`_sum`/`_count` series), so a renamed metric
    /// cannot silently blind an operator's alert.
    #[test]
    fn alerts_and_dashboard_query_exported_metrics() {
        let m = Metrics::new();
        let mut s = MetricsSnapshot {
            amqp: Some(AmqpTotals::default()),
            ..Default::default()
        };
        s.stt.running = true;
        s.sip.requests.insert("INVITE".into(), 1);
        s.sip.responses.insert(200, 1);
        crate::sink::stt::LATENCY
            .with_label_values(&["final"])
            .observe(1.0);
        let exported: std::collections::BTreeSet<String> = m
            .render(&s)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next().map(str::to_owned))
            .collect();
        let docs = [
            include_str!("../../docs/prometheus/alerts.yml"),
            include_str!("../../docs/grafana/siprec.json"),
        ];
        let mut checked = 0;
        for text in docs {
            let mut rest = text;
            while let Some(at) = rest.find("siprec_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                assert!(
                    exported.contains(&name),
                    "{name} is queried but not exported"
                );
                checked += 1;
            }
        }
        assert!(checked > 30, "only {checked} metric references found");
    }
}
