//! The HTTP API on hyper (control-plane thread): health, status, Prometheus metrics and session
//! listing, with the reference server's paths, JSON shapes and error envelopes
//! (`../shared/spec/api-reference.md`).
//!
//! Refuses: touching call state directly. The control plane publishes snapshots into
//! [`ApiState`]; handlers only read them, so a slow client never delays SIP or media.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::cluster::forward;
use crate::session::CallSummary;

pub mod auth;
pub mod gdpr;
pub mod metrics;
pub mod tls;
pub mod ws;

pub use metrics::{Metrics, MetricsSnapshot, RecorderTotals, SipCounters};

/// A request the API hands to the control plane (which owns the calls), with its reply.
#[derive(Debug)]
pub struct ApiRequest {
    pub op: ApiOp,
    /// `None` means "no such session" (404).
    pub reply: tokio::sync::oneshot::Sender<Option<Value>>,
}

#[derive(Debug, Clone)]
pub enum ApiOp {
    /// End a recording (we send BYE).
    End { call_id: String },
    /// Pause one call, or every active call when `call_id` is None.
    Pause {
        call_id: Option<String>,
        recording: bool,
        transcription: bool,
        /// Resume by itself at this Unix time (ms).
        auto_resume_at_ms: Option<u64>,
    },
    /// Resume one call, or every call.
    Resume { call_id: Option<String> },
    /// Pause state of one call, or of every call.
    PauseStatus { call_id: Option<String> },
    /// Re-read the configuration and apply what can change live.
    Reload,
}

/// Every route the server answers, as (method, OpenAPI path template). The router below and
/// `docs/openapi.yaml` must agree with this list (`tests/openapi.rs` checks both).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("GET", "/health/live"),
    ("GET", "/health/ready"),
    ("GET", "/status"),
    ("GET", "/metrics"),
    ("GET", "/metrics/simple"),
    ("GET", "/api/sessions"),
    ("GET", "/api/sessions/stats"),
    ("DELETE", "/api/sessions/{id}"),
    ("POST", "/api/sessions/{id}/pause"),
    ("POST", "/api/sessions/{id}/resume"),
    ("GET", "/api/sessions/{id}/pause-status"),
    ("POST", "/api/sessions/pause-all"),
    ("POST", "/api/sessions/resume-all"),
    ("GET", "/api/sessions/pause-status"),
    ("GET", "/api/config"),
    ("POST", "/api/config/validate"),
    ("POST", "/api/config/reload"),
    ("GET", "/api/config/reload/status"),
    ("GET", "/api/compliance/status"),
    ("POST", "/api/compliance/gdpr/export"),
    ("POST", "/api/compliance/gdpr/erase"),
    ("DELETE", "/api/compliance/gdpr/erase"),
    ("POST", "/api/stt/submit"),
    ("GET", "/api/stt/jobs"),
    ("GET", "/api/stt/jobs/{job_id}"),
    ("GET", "/api/stt/stats"),
    ("GET", "/api/stt/metrics"),
    ("POST", "/api/stt/queue/purge"),
    ("GET", "/ws/transcriptions"),
    ("GET", "/ws/analytics"),
];

/// Largest request body we read (JSON documents are small).
const BODY_MAX_BYTES: usize = 64 * 1024;

pub const SERVER: &str = concat!("siprec/", env!("CARGO_PKG_VERSION"));

/// What the control plane publishes for the API, refreshed on every change and every tick.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub sessions: Vec<CallSummary>,
    pub sip_bound: bool,
    pub draining: bool,
    /// Age of each data-plane worker's last loop iteration.
    pub worker_heartbeat_age_ms: Vec<u64>,
    pub ports_in_use: usize,
    pub ports_capacity: usize,
    /// The data plane's receive backend ("io_uring" or "epoll").
    pub backend: &'static str,
    /// Counters for /metrics and /metrics/simple.
    pub metrics: MetricsSnapshot,
    pub paused_calls: usize,
}

/// Shared between the control plane (writer) and the HTTP handlers (readers).
pub struct ApiState {
    pub snapshot: Mutex<Snapshot>,
    pub metrics: Metrics,
    /// To the control plane, for routes that change calls.
    pub commands: tokio::sync::mpsc::Sender<ApiRequest>,
    /// API keys and JWT checks (changes on reload).
    auth: std::sync::RwLock<Arc<auth::Auth>>,
    /// HTTPS when set (`HTTP_TLS_CERT_FILE`/`HTTP_TLS_KEY_FILE`); replaced on reload.
    tls: std::sync::RwLock<Option<Arc<openssl::ssl::SslAcceptor>>>,
    pub recording_dir: PathBuf,
    min_free_mb: std::sync::atomic::AtomicU64,
    /// The running configuration as JSON (secrets already left out by its serializer).
    config: Mutex<Value>,
    /// The last reload's report.
    reload_status: Mutex<Value>,
    /// Per-client token buckets (requests per second, burst twice that; 0 = off).
    rate: RateLimiter,
    pub started: std::time::Instant,
    /// The AMQP publisher's state when ENABLE_REALTIME_AMQP is on.
    pub amqp: std::sync::OnceLock<Arc<crate::events::amqp::AmqpStatus>>,
    /// The STT jobs queue behind `/api/stt/*`.
    pub stt_jobs: std::sync::OnceLock<Arc<crate::sink::stt::jobs::Jobs>>,
    /// The event bus and client limits behind `/ws/*`.
    ws: std::sync::OnceLock<ws::WsHub>,
    /// The cluster registry when `REDIS_URL` is set (`?scope=cluster`, forwarding).
    pub cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// The uploader's state when S3_ENDPOINT is set.
    pub upload: std::sync::OnceLock<Arc<crate::sink::upload::UploadStatus>>,
}

impl ApiState {
    pub fn new(
        recording_dir: PathBuf,
        min_free_mb: u64,
        auth: auth::Auth,
        commands: tokio::sync::mpsc::Sender<ApiRequest>,
    ) -> Arc<ApiState> {
        Arc::new(ApiState {
            snapshot: Mutex::new(Snapshot::default()),
            metrics: Metrics::new(),
            commands,
            auth: std::sync::RwLock::new(Arc::new(auth)),
            tls: std::sync::RwLock::new(None),
            recording_dir,
            min_free_mb: std::sync::atomic::AtomicU64::new(min_free_mb),
            config: Mutex::new(Value::Null),
            reload_status: Mutex::new(json!({"result": null})),
            rate: RateLimiter::new(100),
            started: std::time::Instant::now(),
            amqp: std::sync::OnceLock::new(),
            stt_jobs: std::sync::OnceLock::new(),
            ws: std::sync::OnceLock::new(),
            cluster: std::sync::OnceLock::new(),
            upload: std::sync::OnceLock::new(),
        })
    }

    /// Starts serving `/ws/*` from this event bus.
    pub fn set_ws(&self, hub: ws::WsHub) {
        let _ = self.ws.set(hub);
    }

    fn auth(&self) -> Arc<auth::Auth> {
        self.auth.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Requests per second per client address (0 disables the limit).
    pub fn set_rate_limit(&self, per_s: u32) {
        self.rate
            .per_s
            .store(per_s, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn set_config(&self, config: Value) {
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = config;
    }

    pub fn set_reload_status(&self, status: Value) {
        *self.reload_status.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }

    /// Serves new connections over TLS with this context (None: plain HTTP).
    pub fn set_tls(&self, tls: Option<openssl::ssl::SslAcceptor>) {
        *self.tls.write().unwrap_or_else(|e| e.into_inner()) = tls.map(Arc::new);
    }

    fn tls(&self) -> Option<Arc<openssl::ssl::SslAcceptor>> {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_auth(&self, auth: auth::Auth) {
        *self.auth.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(auth);
    }

    pub fn set_min_free_mb(&self, mb: u64) {
        self.min_free_mb
            .store(mb, std::sync::atomic::Ordering::Relaxed);
    }

    fn min_free_mb(&self) -> u64 {
        self.min_free_mb.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn publish(&self, snapshot: Snapshot) {
        // A poisoned lock means a handler panicked mid-read; the data is still a valid value.
        *self.snapshot.lock().unwrap_or_else(|e| e.into_inner()) = snapshot;
    }

    /// The latest published snapshot.
    pub fn snapshot_now(&self) -> Snapshot {
        self.read()
    }

    fn read(&self) -> Snapshot {
        self.snapshot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Token buckets per client address. Bounded: when it tracks too many addresses it forgets
/// the full (idle) ones.
struct RateLimiter {
    per_s: std::sync::atomic::AtomicU32,
    buckets: Mutex<std::collections::HashMap<std::net::IpAddr, (f64, std::time::Instant)>>,
}

/// Client addresses tracked at most.
const RATE_CLIENTS_MAX: usize = 10_000;

impl RateLimiter {
    fn new(per_s: u32) -> RateLimiter {
        RateLimiter {
            per_s: std::sync::atomic::AtomicU32::new(per_s),
            buckets: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// `None` when the request may go on, else the seconds to wait (for Retry-After).
    fn check(&self, ip: std::net::IpAddr, now: std::time::Instant) -> Option<u64> {
        let rate = f64::from(self.per_s.load(std::sync::atomic::Ordering::Relaxed));
        if rate == 0.0 {
            return None;
        }
        let burst = rate * 2.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= RATE_CLIENTS_MAX && !buckets.contains_key(&ip) {
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(ip).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            None
        } else {
            Some(((1.0 - *tokens) / rate).ceil().max(1.0) as u64)
        }
    }
}

/// (workers whose loop turned recently, all workers).
fn workers_alive(snap: &Snapshot) -> (usize, usize) {
    let ages = &snap.worker_heartbeat_age_ms;
    (
        ages.iter().filter(|&&a| a < WORKER_STALE_MS).count(),
        ages.len(),
    )
}

/// A worker whose loop hasn't turned for this long is considered stuck.
const WORKER_STALE_MS: u64 = 2_000;

/// Serves HTTP (or HTTPS, see [`ApiState::set_tls`]) on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<ApiState>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "http accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // Bounds the kernel memory a client that stops reading can pin (loopback autotuning
        // would give it megabytes), so a stalled WebSocket client is noticed after ~128 KiB.
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER_BYTES);
        let state = state.clone();
        tokio::spawn(async move {
            let Some(tls) = state.tls() else {
                return connection(stream, peer, state).await;
            };
            match tls_accept(&tls, stream).await {
                Ok(stream) => connection(stream, peer, state).await,
                Err(e) => {
                    state.metrics.tls_handshake_failures.inc();
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                }
            }
        });
    }
}

/// SO_SNDBUF of API connections (the kernel doubles it): with 1000 WebSocket clients at most
/// 128 MiB of unsent data.
const SEND_BUFFER_BYTES: usize = 64 * 1024;

/// A client that hasn't finished its TLS handshake in this time is dropped.
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn tls_accept(
    tls: &openssl::ssl::SslAcceptor,
    tcp: tokio::net::TcpStream,
) -> Result<tokio_openssl::SslStream<tokio::net::TcpStream>, String> {
    let ssl = openssl::ssl::Ssl::new(tls.context()).map_err(|e| e.to_string())?;
    let mut stream = tokio_openssl::SslStream::new(ssl, tcp).map_err(|e| e.to_string())?;
    let handshake = std::pin::Pin::new(&mut stream).accept();
    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(())) => Ok(stream),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("handshake timed out".into()),
    }
}

/// One HTTP/1.1 connection (keep-alive, upgrades for `/ws/*`), rate-limited per client.
async fn connection<IO>(io: IO, peer: SocketAddr, state: Arc<ApiState>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(io);
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move {
            if let Some(retry) = state.rate.check(peer.ip(), std::time::Instant::now()) {
                let mut resp = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many requests",
                );
                if let Ok(v) = hyper::header::HeaderValue::from_str(&retry.to_string()) {
                    resp.headers_mut().insert("Retry-After", v);
                }
                return Ok::<_, Infallible>(resp);
            }
            Ok::<_, Infallible>(route(&state, req).await)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(64 * 1024)
        .serve_connection(io, service)
        .with_upgrades();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(300), conn).await;
}

/// Binds the HTTP listener (separate so start-up can fail early with the address).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

async fn route(state: &ApiState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let method = req.method().clone();
    if path.starts_with("/api/sessions/") {
        return session_route(state, req, &path, &query).await;
    }
    if path.starts_with("/api/config") {
        return config_route(state, req, &path, &query).await;
    }
    if path.starts_with("/api/compliance") {
        return compliance_route(state, req, &path, &query).await;
    }
    if path.starts_with("/api/stt/") {
        return stt_route(state, req, &path, &query).await;
    }
    if method == Method::GET && (path == "/ws/transcriptions" || path == "/ws/analytics") {
        let feed = match path.as_str() {
            "/ws/analytics" => ws::Feed::Analytics,
            _ => ws::Feed::Transcriptions,
        };
        return ws::upgrade(state.ws.get().cloned(), state.auth(), feed, req);
    }
    // Probes stay open so a load balancer or systemd needs no credential.
    if state.auth().protect_reads && !path.starts_with("/health") {
        if let Err(resp) = authorize(state, &req, &query) {
            return resp;
        }
    }
    let (path, query, method) = (path.as_str(), query.as_str(), &method);
    let known = |p: &str| ROUTES.iter().any(|(_, route)| *route == p);
    match (method, path) {
        (&Method::GET, "/health") => health(state),
        (&Method::GET, "/status") => status(state),
        (&Method::GET, "/metrics") => prometheus_text(state),
        (&Method::GET, "/metrics/simple") => {
            let mut m = state.read().metrics;
            m.disk_free_bytes = free_mb(&state.recording_dir).unwrap_or(0) * 1024 * 1024;
            scrape_figures(state, &mut m);
            json_response(StatusCode::OK, serde_json::to_value(&m).unwrap_or_default())
        }
        (&Method::GET, "/health/live") => json_response(
            StatusCode::OK,
            json!({"status": "alive", "version": env!("CARGO_PKG_VERSION")}),
        ),
        (&Method::GET, "/health/ready") => ready(state),
        (&Method::GET, "/api/sessions") => match scope(query) {
            Ok(false) => sessions(state, query),
            Ok(true) => cluster_sessions(state, query).await,
            Err(resp) => resp,
        },
        (_, p) if known(p) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed",
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route for {path}"),
        ),
    }
}

fn ready(state: &ApiState) -> Response<Full<Bytes>> {
    let (ok, checks) = readiness(state);
    let body = json!({
        "status": if ok { "ready" } else { "not_ready" },
        "checks": checks,
        "uptime_s": state.started.elapsed().as_secs(),
    });
    json_response(
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        body,
    )
}

/// Whether the server takes calls, with the checks that say why (`/health/ready`,
/// `siprec_ready`).
fn readiness(state: &ApiState) -> (bool, serde_json::Map<String, Value>) {
    let snap = state.read();
    let mut checks = serde_json::Map::new();
    let mut ok = true;
    let mut check = |name: &str, healthy: bool, message: String| {
        ok &= healthy;
        let status = if healthy { "healthy" } else { "unhealthy" };
        checks.insert(
            name.to_owned(),
            json!({"status": status, "message": message}),
        );
    };
    check(
        "sip",
        snap.sip_bound,
        if snap.sip_bound {
            "SIP listeners bound".into()
        } else {
            "SIP not bound yet".into()
        },
    );
    check(
        "draining",
        !snap.draining,
        if snap.draining {
            "draining".into()
        } else {
            "accepting calls".into()
        },
    );
    let (alive, total) = workers_alive(&snap);
    check(
        "dataplane",
        alive > 0 && alive == total,
        format!("{alive}/{total} workers alive, backend {}", snap.backend),
    );
    let (writable, free_mb) = storage_status(&state.recording_dir);
    check(
        "recording_storage",
        writable && free_mb >= state.min_free_mb(),
        format!(
            "{} {}; {free_mb} MiB free (minimum {})",
            state.recording_dir.display(),
            if writable { "writable" } else { "not writable" },
            state.min_free_mb()
        ),
    );
    (ok, checks)
}

/// Routes under `/api/sessions/`: stats, pause/resume, pause status, DELETE (extension).
async fn session_route(
    state: &ApiState,
    req: Request<Incoming>,
    path: &str,
    query: &str,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let rest = path.trim_start_matches("/api/sessions/");
    let mutating = method == Method::POST || method == Method::DELETE;
    if mutating || state.auth().protect_reads {
        if let Err(resp) = authorize(state, &req, query) {
            return resp;
        }
    }
    let call_id = match (rest.split_once('/'), rest) {
        (Some((id, "pause" | "resume" | "pause-status")), _) => Some(percent_decode(id)),
        (None, "stats" | "pause-all" | "resume-all" | "pause-status") => None,
        (None, id) if method == Method::DELETE => Some(percent_decode(id)),
        _ => None,
    };
    let headers = req.headers().clone();
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    if let Some(id) = &call_id {
        let call = OwnedCall {
            call_id: id,
            method: &method,
            path,
            query,
            headers: &headers,
            body: &body,
        };
        if let Some(resp) = to_owner(state, call).await {
            return resp;
        }
    }
    let op = match (rest.split_once('/'), rest) {
        (None, "stats") if method == Method::GET => {
            match scope(query) {
                Ok(false) => {}
                Ok(true) => return cluster_stats(state).await,
                Err(resp) => return resp,
            }
            let snap = state.read();
            let m = &snap.metrics;
            return json_response(
                StatusCode::OK,
                json!({
                    "active_calls": m.active_calls,
                    "paused_calls": snap.paused_calls,
                    "total_calls": m.calls.calls_total,
                    "rejected_calls": m.calls.calls_rejected_capacity
                        + m.calls.calls_rejected_ports
                        + m.calls.calls_rejected_sdp
                        + m.calls.calls_rejected_not_siprec,
                    "streams_packets_received": m.rtp.audio_packets,
                    "ports_in_use": snap.ports_in_use,
                    "ports_capacity": snap.ports_capacity,
                    "backend": snap.backend,
                }),
            );
        }
        (None, "stats") => return method_not_allowed(),
        (None, "pause-all") if method == Method::POST => {
            let (recording, transcription, auto_resume_at_ms) = match pause_flags(&body) {
                Ok(f) => f,
                Err(resp) => return resp,
            };
            ApiOp::Pause {
                call_id: None,
                recording,
                transcription,
                auto_resume_at_ms,
            }
        }
        (None, "resume-all") if method == Method::POST => ApiOp::Resume { call_id: None },
        (None, "pause-status") if method == Method::GET => ApiOp::PauseStatus { call_id: None },
        (None, "pause-all" | "resume-all" | "pause-status") => return method_not_allowed(),
        (None, id) if method == Method::DELETE => ApiOp::End {
            call_id: percent_decode(id),
        },
        (None, _) => return method_not_allowed(),
        (Some((id, "pause")), _) if method == Method::POST => {
            let (recording, transcription, auto_resume_at_ms) = match pause_flags(&body) {
                Ok(f) => f,
                Err(resp) => return resp,
            };
            ApiOp::Pause {
                call_id: Some(percent_decode(id)),
                recording,
                transcription,
                auto_resume_at_ms,
            }
        }
        (Some((id, "resume")), _) if method == Method::POST => ApiOp::Resume {
            call_id: Some(percent_decode(id)),
        },
        (Some((id, "pause-status")), _) if method == Method::GET => ApiOp::PauseStatus {
            call_id: Some(percent_decode(id)),
        },
        (Some((_, "pause" | "resume" | "pause-status")), _) => return method_not_allowed(),
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no route for {path}"),
            )
        }
    };
    match ask(state, op).await {
        Ok(Some(value)) => json_response(StatusCode::OK, value),
        Ok(None) => error(StatusCode::NOT_FOUND, "not_found", "session not found"),
        Err(resp) => resp,
    }
}

/// Hands `op` to the control plane and waits (5 s at most) for its answer.
#[allow(clippy::result_large_err)]
async fn ask(state: &ApiState, op: ApiOp) -> Result<Option<Value>, Response<Full<Bytes>>> {
    let unavailable = |msg| error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", msg);
    let (reply, wait) = tokio::sync::oneshot::channel();
    if state.commands.send(ApiRequest { op, reply }).await.is_err() {
        return Err(unavailable("control plane stopped"));
    }
    match tokio::time::timeout(std::time::Duration::from_secs(5), wait).await {
        Ok(Ok(answer)) => Ok(answer),
        _ => Err(unavailable("control plane did not answer")),
    }
}

/// `/api/config`, `/api/config/validate`, `/api/config/reload`, `/api/config/reload/status`.
async fn config_route(
    state: &ApiState,
    req: Request<Incoming>,
    path: &str,
    query: &str,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    if method == Method::POST {
        if let Err(resp) = authorize(state, &req, query) {
            return resp;
        }
    }
    match (path, &method) {
        ("/api/config", &Method::GET) => {
            let config = state
                .config
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            json_response(StatusCode::OK, config)
        }
        ("/api/config/reload/status", &Method::GET) => {
            let status = state
                .reload_status
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            json_response(
                StatusCode::OK,
                json!({"enabled": true, "last_reload": status}),
            )
        }
        ("/api/config/validate", &Method::POST) => {
            let body = match read_body(req).await {
                Ok(body) => body,
                Err(resp) => return resp,
            };
            // The same document as the TOML file, in JSON; validated like a start-up.
            let file: crate::config::FileConfig = match serde_json::from_slice(&body) {
                Ok(f) => f,
                Err(e) => {
                    let msg = format!("not a configuration document: {e}");
                    return error(StatusCode::BAD_REQUEST, "invalid_config", &msg);
                }
            };
            match crate::config::Config::build(file, &[]) {
                Ok(config) => {
                    let config = serde_json::to_value(&config).unwrap_or_default();
                    json_response(StatusCode::OK, json!({"valid": true, "config": config}))
                }
                Err(e) => error(StatusCode::BAD_REQUEST, "invalid_config", &e.to_string()),
            }
        }
        ("/api/config/reload", &Method::POST) => match ask(state, ApiOp::Reload).await {
            Ok(Some(v)) if v["result"] == "ok" => json_response(StatusCode::OK, v),
            Ok(v) => {
                let v = v.unwrap_or_default();
                let msg = v["error"].as_str().unwrap_or("reload failed").to_owned();
                error(StatusCode::BAD_REQUEST, "invalid_config", &msg)
            }
            Err(resp) => resp,
        },
        (
            "/api/config"
            | "/api/config/reload/status"
            | "/api/config/validate"
            | "/api/config/reload",
            _,
        ) => method_not_allowed(),
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route for {path}"),
        ),
    }
}

/// `/api/compliance/status` and GDPR export/erase of one call's artifacts.
/// `/api/stt/*`: the STT jobs queue (`docs/stt.md`). Submitting and purging need the API key
/// like every mutating route.
async fn stt_route(
    state: &ApiState,
    req: Request<Incoming>,
    path: &str,
    query: &str,
) -> Response<Full<Bytes>> {
    use crate::sink::stt::jobs::{JobRequest, JobStatus, SubmitError};
    let method = req.method().clone();
    let Some(jobs) = state.stt_jobs.get().cloned() else {
        let msg = "the STT job queue is not available (see the server log)";
        return error(StatusCode::SERVICE_UNAVAILABLE, "stt_unavailable", msg);
    };
    let rest = path.trim_start_matches("/api/stt/");
    match (rest, &method) {
        ("submit", &Method::POST) => {
            if let Err(resp) = authorize(state, &req, query) {
                return resp;
            }
            let body = match read_body(req).await {
                Ok(body) => body,
                Err(resp) => return resp,
            };
            let request: JobRequest = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => {
                    let msg = format!("body must be a JSON job request: {e}");
                    return error(StatusCode::BAD_REQUEST, "invalid_request", &msg);
                }
            };
            let submitted = tokio::task::spawn_blocking(move || jobs.submit(request, unix_ms()));
            match submitted.await {
                Ok(Ok(job)) => json_response(
                    StatusCode::ACCEPTED,
                    json!({
                        "job_id": job.job_id,
                        "status": job.status,
                        "estimated_cost": job.estimated_cost,
                        "message": "Job submitted successfully",
                    }),
                ),
                Ok(Err(SubmitError::Invalid(m))) => {
                    error(StatusCode::BAD_REQUEST, "invalid_request", &m)
                }
                Ok(Err(e @ SubmitError::Unavailable(_))) => error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "stt_unavailable",
                    &e.to_string(),
                ),
                Err(_) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "job submission failed",
                ),
            }
        }
        ("jobs", &Method::GET) => {
            let param = |k: &str| {
                query
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(key, _)| *key == k)
                    .map(|(_, v)| v.to_owned())
            };
            let status = match param("status").as_deref() {
                None | Some("") | Some("all") => None,
                Some("queued") => Some(JobStatus::Queued),
                Some("running") => Some(JobStatus::Running),
                Some("completed") => Some(JobStatus::Completed),
                Some("failed") => Some(JobStatus::Failed),
                Some(other) => {
                    let msg =
                        format!("status {other:?}: one of queued, running, completed, failed, all");
                    return error(StatusCode::BAD_REQUEST, "invalid_request", &msg);
                }
            };
            let limit = match param("limit").map(|l| l.parse::<usize>()) {
                None => 100,
                Some(Ok(n)) if (1..=1000).contains(&n) => n,
                Some(_) => {
                    let msg = "limit must be 1 to 1000";
                    return error(StatusCode::BAD_REQUEST, "invalid_request", msg);
                }
            };
            let list = jobs.list(status, limit);
            json_response(StatusCode::OK, json!({"count": list.len(), "jobs": list}))
        }
        ("stats", &Method::GET) => {
            let mut stats = jobs.stats();
            let live = state.read().metrics.stt.clone();
            stats["workers"] = json!(live.workers);
            stats["workers_busy"] = json!(live.workers_busy);
            stats["worker_utilization"] = json!(match live.workers {
                0 => 0.0,
                w => live.workers_busy as f64 / w as f64,
            });
            stats["live_finals_waiting"] = json!(live.queue_depth);
            json_response(StatusCode::OK, stats)
        }
        ("metrics", &Method::GET) => {
            let live = state.read().metrics.stt.clone();
            let rtf = match live.audio_seconds > 0.0 {
                true => json!(live.busy_seconds / live.audio_seconds),
                false => Value::Null,
            };
            let latency = |kind: &str| {
                let h = crate::sink::stt::LATENCY.with_label_values(&[kind]);
                let n = h.get_sample_count();
                json!({
                    "count": n,
                    "mean_seconds": if n > 0 { h.get_sample_sum() / n as f64 } else { 0.0 },
                })
            };
            let stats = jobs.stats();
            json_response(
                StatusCode::OK,
                json!({
                    "providers": {
                        live.provider.clone(): {
                            "running": live.running,
                            "error": live.error,
                            "live": {
                                "transcripts_partial": live.transcripts_partial,
                                "transcripts_final": live.transcripts_final,
                                "partials_dropped": live.partials_dropped,
                                "finals_dropped": live.finals_dropped,
                                "failures": live.failures,
                                "latency_partial": latency("partial"),
                                "latency_final": latency("final"),
                            },
                            "audio_seconds": live.audio_seconds,
                            "processing_seconds": live.busy_seconds,
                            "real_time_factor": rtf,
                            "jobs": stats["since_start"],
                            "estimated_cost_total": 0.0,
                        }
                    }
                }),
            )
        }
        ("queue/purge", &Method::POST) => {
            if let Err(resp) = authorize(state, &req, query) {
                return resp;
            }
            let purged = tokio::task::spawn_blocking(move || jobs.purge())
                .await
                .unwrap_or(0);
            json_response(StatusCode::OK, json!({"purged": purged}))
        }
        ("submit" | "jobs" | "stats" | "metrics" | "queue/purge", _) => method_not_allowed(),
        (id, &Method::GET) if id.starts_with("jobs/") => {
            let id = &id["jobs/".len()..];
            match jobs.get(id) {
                Some(job) => json_response(StatusCode::OK, json!(job)),
                None => error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    &format!("no STT job {id}"),
                ),
            }
        }
        (id, _) if id.starts_with("jobs/") => method_not_allowed(),
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no route for {path}"),
        ),
    }
}

async fn compliance_route(
    state: &ApiState,
    req: Request<Incoming>,
    path: &str,
    query: &str,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    if path == "/api/compliance/status" {
        if method != Method::GET {
            return method_not_allowed();
        }
        let export_dir = gdpr::export_dir(&state.recording_dir);
        let pii = {
            let config = state.config.lock().unwrap_or_else(|e| e.into_inner());
            config["stt"]["redact_pii"].as_bool().unwrap_or(false)
        };
        return json_response(
            StatusCode::OK,
            json!({
                "gdpr": {"enabled": true, "export_dir": export_dir.display().to_string()},
                "encryption_at_rest": false,
                "srtp": true,
                "sip_tls": false,
                "pii_redaction": pii,
            }),
        );
    }
    let erase = match (path, &method) {
        ("/api/compliance/gdpr/export", &Method::POST) => false,
        ("/api/compliance/gdpr/erase", &Method::POST | &Method::DELETE) => true,
        ("/api/compliance/gdpr/export" | "/api/compliance/gdpr/erase", _) => {
            return method_not_allowed()
        }
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no route for {path}"),
            )
        }
    };
    if let Err(resp) = authorize(state, &req, query) {
        return resp;
    }
    let headers = req.headers().clone();
    let body = match read_body(req).await {
        Ok(body) => body,
        Err(resp) => return resp,
    };
    let local = gdpr_here(state, erase, &body).await;
    // A bad request, or a call still recorded here, is answered before asking anyone else.
    if matches!(
        local.status(),
        StatusCode::BAD_REQUEST | StatusCode::CONFLICT
    ) {
        return local;
    }
    match state.cluster.get() {
        Some(cluster) if !headers.contains_key(crate::cluster::forward::FORWARDED_HEADER) => {
            let request = OwnedCall {
                call_id: "",
                method: &method,
                path,
                query,
                headers: &headers,
                body: &body,
            };
            gdpr_everywhere(cluster, request, local).await
        }
        _ => local,
    }
}

/// A GDPR export or erase of what this node holds.
async fn gdpr_here(state: &ApiState, erase: bool, body: &Bytes) -> Response<Full<Bytes>> {
    let call_id = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["call_id"].as_str().map(str::to_owned))
        .filter(|c| !c.is_empty());
    let Some(call_id) = call_id else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "body must be {\"call_id\": \"…\"}",
        );
    };
    if erase && state.read().sessions.iter().any(|s| s.call_id == call_id) {
        let msg = "the call is still being recorded; end it first";
        return error(StatusCode::CONFLICT, "call_active", msg);
    }
    // File work runs on a blocking thread: the control plane's thread must keep serving SIP.
    let dir = state.recording_dir.clone();
    let id = call_id.clone();
    let now = unix_ms();
    let jobs = state.stt_jobs.get().cloned();
    let uploading = state.upload.get().is_some();
    let result = tokio::task::spawn_blocking(move || {
        if erase {
            // Remote copies are queued for the uploader before the local files (which name
            // them) go; it deletes them, retrying until the store confirms.
            let remote = if uploading {
                let dirs = gdpr::call_dirs(&dir, &id);
                let reference = gdpr::call_ref(&id);
                crate::sink::upload::queue_erase(&dir, &dirs, &reference)?
            } else {
                0
            };
            let mut erased = gdpr::erase(&dir, &id, now);
            if let Ok(Some(v)) = &mut erased {
                v["remote_objects_queued"] = json!(remote);
            }
            // STT jobs of the call hold its transcripts: they go too.
            if let (Ok(Some(_)), Some(jobs)) = (&erased, jobs) {
                jobs.forget_call(&id);
            }
            erased
        } else {
            gdpr::export(&dir, &id, now)
        }
    })
    .await;
    match result {
        Ok(Ok(Some(v))) => json_response(StatusCode::OK, v),
        Ok(Ok(None)) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no recordings for that call",
        ),
        Ok(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "io_error",
            &e.to_string(),
        ),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "GDPR task failed",
        ),
    }
}

/// Checks what a request carries against `policy` at the current time: its API key
/// (`X-API-Key`, `?api_key=`), else its bearer token (`Authorization: Bearer`, `?token=`).
/// HTTP routes and the WebSocket upgrade both come through here.
pub(crate) fn check_request(
    policy: &auth::Auth,
    headers: &hyper::HeaderMap,
    query: &str,
) -> Result<(), auth::Denied> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let key = header("x-api-key")
        .map(str::to_owned)
        .or_else(|| query_param(query, "api_key"));
    let bearer = header("authorization")
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        })
        .or_else(|| query_param(query, "token"));
    let credential = match (&key, &bearer) {
        (Some(k), _) => auth::Credential::ApiKey(k),
        (None, Some(t)) => auth::Credential::Bearer(t),
        (None, None) => auth::Credential::None,
    };
    policy.check(credential, unix_ms() / 1000)
}

/// Checks the request's credential against the running policy (`auth.rs`): 401 with
/// `WWW-Authenticate` when it carries none, 403 when it is wrong.
#[allow(clippy::result_large_err)]
fn authorize(
    state: &ApiState,
    req: &Request<Incoming>,
    query: &str,
) -> Result<(), Response<Full<Bytes>>> {
    let policy = state.auth();
    if !policy.enabled() {
        return Ok(());
    }
    match check_request(&policy, req.headers(), query) {
        Ok(()) => Ok(()),
        Err(auth::Denied::Missing) => {
            let msg = "X-API-Key or Authorization: Bearer required";
            let mut resp = error(StatusCode::UNAUTHORIZED, "unauthorized", msg);
            resp.headers_mut().insert(
                "WWW-Authenticate",
                hyper::header::HeaderValue::from_static("Bearer realm=\"siprec\""),
            );
            Err(resp)
        }
        Err(auth::Denied::Invalid(why)) => Err(error(StatusCode::FORBIDDEN, "forbidden", &why)),
    }
}

/// The request body, at most `BODY_MAX_BYTES`; else the 413 envelope to answer with.
async fn read_body(req: Request<Incoming>) -> Result<Bytes, Response<Full<Bytes>>> {
    use http_body_util::BodyExt;
    let limited = http_body_util::Limited::new(req.into_body(), BODY_MAX_BYTES);
    limited.collect().await.map(|b| b.to_bytes()).map_err(|_| {
        let msg = "request body too large or unreadable";
        error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", msg)
    })
}

/// `{"pause_recording": bool, "pause_transcription": bool}` (both default to true), and
/// optionally `"auto_resume_at": "<RFC 3339>"` or `"auto_resume_after": <seconds>` (extension),
/// at most [`AUTO_RESUME_MAX_S`] ahead.
#[allow(clippy::result_large_err)]
fn pause_flags(bytes: &Bytes) -> Result<(bool, bool, Option<u64>), Response<Full<Bytes>>> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok((true, true, None));
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            &format!("invalid JSON body: {e}"),
        )
    })?;
    let flag = |name: &str| match v.get(name) {
        None | Some(Value::Null) => Ok(true),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            &format!("{name} must be a boolean"),
        )),
    };
    let bad = |msg: &str| error(StatusCode::BAD_REQUEST, "invalid_field", msg);
    let now = unix_ms();
    let resume_at = match (v.get("auto_resume_at"), v.get("auto_resume_after")) {
        (None | Some(Value::Null), None | Some(Value::Null)) => None,
        (Some(Value::String(t)), None | Some(Value::Null)) => Some(
            crate::proto::parse_rfc3339_ms(t)
                .ok_or_else(|| bad("auto_resume_at must be an RFC 3339 time"))?,
        ),
        (None | Some(Value::Null), Some(Value::Number(n))) => {
            let s = n.as_f64().filter(|s| *s > 0.0 && s.is_finite());
            let s = s.ok_or_else(|| bad("auto_resume_after must be seconds > 0"))?;
            Some(now.saturating_add((s.min(1e9) * 1000.0) as u64))
        }
        (Some(_), Some(_)) => return Err(bad("give auto_resume_at or auto_resume_after")),
        _ => {
            return Err(bad(
                "auto_resume_at must be a string, auto_resume_after a number",
            ))
        }
    };
    if let Some(at) = resume_at {
        if at <= now || at - now > AUTO_RESUME_MAX_S * 1000 {
            let msg = format!("auto resume must be in the future, within {AUTO_RESUME_MAX_S} s");
            return Err(bad(&msg));
        }
    }
    Ok((
        flag("pause_recording")?,
        flag("pause_transcription")?,
        resume_at,
    ))
}

/// The furthest an automatic resume may be scheduled (a day: longer is a unit mistake).
const AUTO_RESUME_MAX_S: u64 = 86_400;

/// Figures known only at scrape time (readiness, live workers, the WebSocket client tasks'
/// counters), into a snapshot being served.
fn scrape_figures(state: &ApiState, m: &mut MetricsSnapshot) {
    use std::sync::atomic::Ordering::Relaxed;
    m.ready = readiness(state).0;
    m.workers_alive = workers_alive(&state.read()).0 as u64;
    m.ws_clients = ws_clients(state);
    if let Some(c) = state.cluster.get() {
        m.cluster = Some(metrics::ClusterTotals {
            redis_connected: c.status.connected.load(Relaxed),
            heartbeats: c.status.heartbeats.load(Relaxed),
            failures: c.status.failures.load(Relaxed),
            forwarded: c.status.forwarded.load(Relaxed),
            nodes: c.status.nodes_seen.load(Relaxed),
        });
    }
    if let Some(u) = state.upload.get() {
        m.upload = Some(metrics::UploadTotals {
            sessions: u.sessions.load(Relaxed),
            files: u.files.load(Relaxed),
            bytes: u.bytes.load(Relaxed),
            parts: u.parts.load(Relaxed),
            failures: u.failures.load(Relaxed),
            resumed: u.resumed.load(Relaxed),
            local_deleted: u.local_deleted.load(Relaxed),
            remote_erased: u.remote_erased.load(Relaxed),
            pending: u.pending.load(Relaxed),
        });
    }
    if let Some(hub) = state.ws.get() {
        m.ws_events_dropped = hub.counters.events_dropped.load(Relaxed);
        m.ws_slow_disconnects = hub.counters.slow_disconnects.load(Relaxed);
    }
}

fn ws_clients(state: &ApiState) -> u64 {
    state.ws.get().map_or(0, |h| {
        h.clients.load(std::sync::atomic::Ordering::Relaxed) as u64
    })
}

fn prometheus_text(state: &ApiState) -> Response<Full<Bytes>> {
    let mut m = state.read().metrics;
    m.disk_free_bytes = free_mb(&state.recording_dir).unwrap_or(0) * 1024 * 1024;
    scrape_figures(state, &mut m);
    let text = state.metrics.render(&m);
    Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "text/plain; version=0.0.4")
        .header("Server", SERVER)
        .body(Full::new(Bytes::from(text)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// The aggregated report: each subsystem healthy, degraded or unhealthy with a message; the
/// worst decides the overall status (503 only when something is unhealthy).
fn health(state: &ApiState) -> Response<Full<Bytes>> {
    let snap = state.read();
    let mut checks = serde_json::Map::new();
    let mut worst = 0u8;
    let mut check = |name: &str, level: u8, message: String| {
        worst = worst.max(level);
        let status = ["healthy", "degraded", "unhealthy"][level as usize];
        checks.insert(
            name.to_owned(),
            json!({"status": status, "message": message}),
        );
    };
    check(
        "sip",
        if snap.sip_bound { 0 } else { 2 },
        if snap.sip_bound {
            "SIP service is running".into()
        } else {
            "SIP not bound".into()
        },
    );
    let (used, cap) = (snap.ports_in_use, snap.ports_capacity.max(1));
    let port_level = if used >= cap {
        2
    } else if used * 10 >= cap * 9 {
        1
    } else {
        0
    };
    check(
        "rtp_ports",
        port_level,
        format!("{used} of {cap} RTP port pairs in use"),
    );
    let (writable, free) = storage_status(&state.recording_dir);
    let storage_level = if !writable || free < state.min_free_mb() {
        2
    } else if free < state.min_free_mb() * 4 {
        1
    } else {
        0
    };
    check(
        "recording_storage",
        storage_level,
        format!(
            "{free} MiB free under {} (minimum {})",
            state.recording_dir.display(),
            state.min_free_mb()
        ),
    );
    let (alive, total) = workers_alive(&snap);
    check(
        "dataplane",
        if alive == total && total > 0 {
            0
        } else if alive > 0 {
            1
        } else {
            2
        },
        format!("{alive}/{total} workers alive, backend {}", snap.backend),
    );
    match state.ws.get() {
        None => check("websocket", 1, "WebSocket hub not running".into()),
        Some(h) => {
            let n = h.clients.load(std::sync::atomic::Ordering::Relaxed);
            let level = if n >= h.max_clients { 1 } else { 0 };
            check(
                "websocket",
                level,
                format!("{n} of {} clients", h.max_clients),
            );
        }
    }
    match state.amqp.get() {
        None => check("amqp", 0, "AMQP publishing disabled".into()),
        Some(a) => {
            use std::sync::atomic::Ordering::Relaxed;
            let buffered = a.buffered.load(Relaxed);
            if a.connected.load(Relaxed) {
                check(
                    "amqp",
                    0,
                    format!("AMQP connected, {buffered} events in flight"),
                );
            } else {
                let why = a.last_error().unwrap_or_else(|| "connecting".into());
                let msg = format!("AMQP disconnected ({why}), {buffered} events buffered");
                check("amqp", 1, msg);
            }
        }
    }
    match state.cluster.get() {
        None => check("redis", 0, "cluster off (REDIS_URL unset)".into()),
        Some(c) => {
            use std::sync::atomic::Ordering::Relaxed;
            if c.status.connected.load(Relaxed) {
                let msg = format!("Redis connected; registered as node {}", c.node_id);
                check("redis", 0, msg);
            } else {
                let why = c.status.last_error().unwrap_or_else(|| "connecting".into());
                let msg = format!("Redis unavailable ({why}); recording goes on, cluster view off");
                check("redis", 1, msg);
            }
        }
    }
    match state.upload.get() {
        None => check("object_storage", 0, "upload off (S3_ENDPOINT unset)".into()),
        Some(u) => {
            use std::sync::atomic::Ordering::Relaxed;
            let pending = u.pending.load(Relaxed);
            match u.last_error() {
                None => {
                    let msg = format!("uploading; {pending} sessions waiting");
                    check("object_storage", 0, msg);
                }
                Some(e) => {
                    let msg = format!("upload failing ({e}); {pending} sessions waiting, kept");
                    check("object_storage", 1, msg);
                }
            }
        }
    }
    let stt = &snap.metrics.stt;
    match (&stt.error, stt.running) {
        (Some(e), _) => check("stt", 1, format!("live transcription unavailable: {e}")),
        (None, false) => check("stt", 0, "live transcription off".into()),
        (None, true) => {
            let full = stt.queue_depth * 10 >= stt.queue_max.max(1) * 9;
            let msg = format!(
                "{} ({} workers): {} of {} utterances waiting",
                stt.provider, stt.workers, stt.queue_depth, stt.queue_max
            );
            check("stt", u8::from(full), msg);
        }
    }
    let status = ["healthy", "degraded", "unhealthy"][worst as usize];
    let uptime = state.started.elapsed().as_secs();
    let body = json!({
        "status": status,
        "timestamp": crate::proto::rfc3339_ms(unix_ms()),
        "uptime": format!("{}h{}m{}s", uptime / 3600, uptime / 60 % 60, uptime % 60),
        "version": env!("CARGO_PKG_VERSION"),
        "checks": checks,
        "system": {
            "memory_mb": process_rss_kib() / 1024,
            "cpu_count": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "active_calls": snap.metrics.active_calls,
            "ports_in_use": snap.ports_in_use,
        },
    });
    let code = if worst == 2 {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    json_response(code, body)
}

fn status(state: &ApiState) -> Response<Full<Bytes>> {
    let snap = state.read();
    let uptime = state.started.elapsed().as_secs();
    let threads = std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0);
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0);
    json_response(
        StatusCode::OK,
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "git_hash": env!("SIPREC_GIT_HASH"),
            "build_date": env!("SIPREC_BUILD_DATE"),
            "uptime_s": uptime,
            "uptime": format!("{}h{}m{}s", uptime / 3600, uptime / 60 % 60, uptime % 60),
            "dataplane": {"backend": snap.backend, "workers": snap.worker_heartbeat_age_ms.len()},
            "active_calls": snap.metrics.active_calls,
            "process": {
                "pid": std::process::id(),
                "memory_mb": process_rss_kib() / 1024,
                "threads": threads,
                "open_fds": fds,
            },
        }),
    )
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// This process's resident set, in KiB.
fn process_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn sessions(state: &ApiState, query: &str) -> Response<Full<Bytes>> {
    let snap = state.read();
    let id = query_param(query, "id");
    let list: Vec<&CallSummary> = match &id {
        Some(id) => snap.sessions.iter().filter(|s| &s.call_id == id).collect(),
        None => snap.sessions.iter().collect(),
    };
    if let (Some(id), true) = (&id, list.is_empty()) {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("session {id} not found"),
        );
    }
    json_response(
        StatusCode::OK,
        json!({"count": list.len(), "sessions": list}),
    )
}

/// `?scope=node` (the default) or `?scope=cluster`: whether the request asks for the cluster.
#[allow(clippy::result_large_err)]
fn scope(query: &str) -> Result<bool, Response<Full<Bytes>>> {
    match query_param(query, "scope").as_deref() {
        None | Some("node") => Ok(false),
        Some("cluster") => Ok(true),
        Some(other) => Err(error(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            &format!("scope must be node or cluster, not {other}"),
        )),
    }
}

fn cluster_down(e: crate::cluster::ClusterError) -> Response<Full<Bytes>> {
    let msg = format!("cluster view unavailable: {e}");
    error(StatusCode::SERVICE_UNAVAILABLE, "cluster_unavailable", &msg)
}

/// The registry and its live nodes, or the error answer (400 without a cluster, 503 when
/// Redis does not answer).
#[allow(clippy::result_large_err)]
async fn live_nodes(
    state: &ApiState,
) -> Result<(&crate::cluster::Cluster, Vec<crate::cluster::NodeRecord>), Response<Full<Bytes>>> {
    let Some(cluster) = state.cluster.get() else {
        let msg = "scope=cluster needs the cluster registry (REDIS_URL)";
        return Err(error(StatusCode::BAD_REQUEST, "cluster_disabled", msg));
    };
    let nodes = cluster.nodes().await.map_err(cluster_down)?;
    Ok((cluster, nodes))
}

/// `GET /api/sessions?scope=cluster`: every live node's active sessions, from the registry.
async fn cluster_sessions(state: &ApiState, query: &str) -> Response<Full<Bytes>> {
    let (cluster, nodes) = match live_nodes(state).await {
        Ok(found) => found,
        Err(resp) => return resp,
    };
    let mut list = match cluster.sessions(&nodes).await {
        Ok(s) => s,
        Err(e) => return cluster_down(e),
    };
    if let Some(id) = query_param(query, "id") {
        list.retain(|s| s.call_id == id);
        if list.is_empty() {
            let msg = format!("session {id} not found in the cluster");
            return error(StatusCode::NOT_FOUND, "not_found", &msg);
        }
    }
    let nodes: Vec<Value> = nodes
        .iter()
        .map(|n| {
            json!({
                "node": n.node,
                "api_url": n.api_url,
                "version": n.version,
                "draining": n.draining,
                "heartbeat_ms": n.heartbeat_ms,
                "active_calls": n.stats.active_calls,
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        json!({"scope": "cluster", "count": list.len(), "sessions": list, "nodes": nodes}),
    )
}

/// `GET /api/sessions/stats?scope=cluster`: the figures summed over live nodes, and per node.
async fn cluster_stats(state: &ApiState) -> Response<Full<Bytes>> {
    let nodes = match live_nodes(state).await {
        Ok((_, nodes)) => nodes,
        Err(resp) => return resp,
    };
    let mut total = crate::cluster::NodeStats::default();
    for n in &nodes {
        total.add(&n.stats);
    }
    let per_node: Vec<Value> = nodes
        .iter()
        .map(|n| {
            let mut v = serde_json::to_value(&n.stats).unwrap_or_default();
            v["node"] = json!(n.node);
            v["draining"] = json!(n.draining);
            v
        })
        .collect();
    let mut body = serde_json::to_value(&total).unwrap_or_default();
    body["scope"] = json!("cluster");
    body["nodes"] = json!(nodes.len());
    body["per_node"] = json!(per_node);
    json_response(StatusCode::OK, body)
}

/// A remote GDPR export writes a tar of every file of the call: more than a pause takes.
const GDPR_FORWARD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);
/// Pause, resume, pause status, DELETE on the owner.
const CALL_FORWARD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// Another node claiming this node's own API URL: asking it would ask ourselves.
fn misadvertised(url: &str) -> String {
    format!("advertises this node's own API URL {url}; set CLUSTER_ADVERTISE_URL on each node")
}

/// Fields of GDPR answers that add up over nodes.
const GDPR_SUMS: &[&str] = &[
    "erased_recording_sessions",
    "erased_exports",
    "remote_objects_queued",
    "files",
    "bytes",
];

/// One node's answer (status and JSON body), or why it could not be asked.
type NodeAnswer = Result<(StatusCode, Value), String>;

/// A GDPR request runs on every live node (a call's recordings may be on several, after a
/// failover): this node's answer merged with the others'. 200 when any node held recordings
/// (`status` "incomplete" and `unreachable_nodes` if some node did not answer), 404 when none
/// did, 502 when none did but some could not be asked.
async fn gdpr_everywhere(
    cluster: &crate::cluster::Cluster,
    request: OwnedCall<'_>,
    local: Response<Full<Bytes>>,
) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt;
    let status = local.status();
    let bytes = local.into_body().collect().await.map(|b| b.to_bytes());
    let mine: Value = bytes
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut answers: Vec<(String, NodeAnswer)> =
        vec![(cluster.node_id.clone(), Ok((status, mine)))];
    match cluster.nodes().await {
        Ok(nodes) => {
            let others = nodes.into_iter().filter(|n| n.node != cluster.node_id);
            let request = &request;
            let asks = others.map(|n| async move {
                if n.api_url == cluster.api_url {
                    return (n.node, Err(misadvertised(&n.api_url)));
                }
                let out = outgoing(request, &cluster.node_id);
                let sent = forward::send(&n.api_url, out, GDPR_FORWARD_DEADLINE).await;
                let answer = sent.map(|a| {
                    let v = serde_json::from_slice(&a.body).unwrap_or_default();
                    (a.status, v)
                });
                (n.node, answer)
            });
            answers.extend(futures_util::future::join_all(asks).await);
        }
        Err(e) => answers.push(("(registry)".into(), Err(e.to_string()))),
    }
    let mut merged = serde_json::Map::new();
    let mut per_node = serde_json::Map::new();
    let mut unreachable = Vec::new();
    let mut held = false;
    for (node, answer) in answers {
        match answer {
            Ok((code, v)) if code == StatusCode::OK => {
                held = true;
                for (k, field) in v.as_object().into_iter().flatten() {
                    if GDPR_SUMS.contains(&k.as_str()) {
                        let sum = merged.get(k).and_then(Value::as_u64).unwrap_or(0)
                            + field.as_u64().unwrap_or(0);
                        merged.insert(k.clone(), json!(sum));
                    } else {
                        merged.entry(k.clone()).or_insert_with(|| field.clone());
                    }
                }
                per_node.insert(node, v);
            }
            Ok((code, _)) if code == StatusCode::NOT_FOUND => {
                per_node.insert(node, json!({"status": "not_found"}));
            }
            Ok((code, v)) => {
                unreachable.push(node.clone());
                per_node.insert(node, json!({"status": code.as_u16(), "answer": v}));
            }
            Err(e) => {
                unreachable.push(node.clone());
                per_node.insert(node, json!({"status": "unreachable", "error": e}));
            }
        }
    }
    if !held {
        if unreachable.is_empty() {
            return error(
                StatusCode::NOT_FOUND,
                "not_found",
                "no recordings for that call",
            );
        }
        let msg = format!("no node answered with recordings; not asked: {unreachable:?}");
        return error(StatusCode::BAD_GATEWAY, "cluster_incomplete", &msg);
    }
    if !unreachable.is_empty() {
        merged.insert("status".into(), json!("incomplete"));
        merged.insert("unreachable_nodes".into(), json!(unreachable));
    }
    merged.insert("nodes".into(), Value::Object(per_node));
    json_response(StatusCode::OK, Value::Object(merged))
}

/// A request as it goes on to another node: the caller's credentials (as headers: a
/// credential in the query is moved out of it, so it appears in no URL) and body.
fn outgoing<'a>(call: &OwnedCall<'a>, from_node: &'a str) -> forward::Outgoing<'a> {
    use hyper::header::{HeaderName, HeaderValue};
    let keep = [
        hyper::header::AUTHORIZATION,
        hyper::header::CONTENT_TYPE,
        HeaderName::from_static("x-api-key"),
    ];
    let mut headers: Vec<(HeaderName, HeaderValue)> = call
        .headers
        .iter()
        .filter(|(name, _)| keep.contains(name))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    let has = |h: &[(HeaderName, HeaderValue)], name: &str| h.iter().any(|(n, _)| n == name);
    if let Some(key) = query_param(call.query, "api_key") {
        if let (false, Ok(v)) = (has(&headers, "x-api-key"), HeaderValue::from_str(&key)) {
            headers.push((HeaderName::from_static("x-api-key"), v));
        }
    }
    if let Some(token) = query_param(call.query, "token") {
        let bearer = HeaderValue::from_str(&format!("Bearer {token}"));
        if let (false, Ok(v)) = (has(&headers, "authorization"), bearer) {
            headers.push((hyper::header::AUTHORIZATION, v));
        }
    }
    let rest: Vec<&str> = call
        .query
        .split('&')
        .filter(|kv| {
            let name = kv.split('=').next().unwrap_or("");
            !kv.is_empty() && name != "api_key" && name != "token"
        })
        .collect();
    let path_and_query = if rest.is_empty() {
        call.path.to_owned()
    } else {
        format!("{}?{}", call.path, rest.join("&"))
    };
    forward::Outgoing {
        method: call.method.clone(),
        path_and_query,
        headers,
        body: call.body.clone(),
        from_node,
    }
}

/// A per-call request, as received.
struct OwnedCall<'a> {
    call_id: &'a str,
    method: &'a Method,
    path: &'a str,
    query: &'a str,
    headers: &'a hyper::HeaderMap,
    body: &'a Bytes,
}

/// Sends a per-call request for a call this node does not run to the node that does, and
/// returns its answer; `None` means answer here (no cluster, a local call, an unknown call,
/// Redis unavailable, or a request already forwarded once).
async fn to_owner(state: &ApiState, call: OwnedCall<'_>) -> Option<Response<Full<Bytes>>> {
    let cluster = state.cluster.get()?;
    if call.headers.contains_key(forward::FORWARDED_HEADER) {
        return None;
    }
    if state
        .read()
        .sessions
        .iter()
        .any(|s| s.call_id == call.call_id)
    {
        return None;
    }
    let owner = match cluster.owner(call.call_id).await {
        Ok(Some(owner)) if owner.node != cluster.node_id && owner.api_url == cluster.api_url => {
            let msg = format!(
                "call runs on node {}, which {}",
                owner.node,
                misadvertised(&owner.api_url)
            );
            return Some(error(StatusCode::BAD_GATEWAY, "owner_unreachable", &msg));
        }
        Ok(Some(owner)) if owner.node != cluster.node_id => owner,
        Ok(_) => return None,
        Err(e) => {
            tracing::warn!(error = %e, "cluster: owner lookup failed; answering locally");
            return None;
        }
    };
    let out = outgoing(&call, &cluster.node_id);
    cluster
        .status
        .forwarded
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match forward::send(&owner.api_url, out, CALL_FORWARD_DEADLINE).await {
        Ok(answer) => {
            let mut resp = Response::builder()
                .status(answer.status)
                .header("Server", SERVER)
                .header("X-Siprec-Node", owner.node.as_str());
            if let Some(ct) = answer.headers.get(hyper::header::CONTENT_TYPE) {
                resp = resp.header("Content-Type", ct);
            }
            Some(
                resp.body(Full::new(answer.body))
                    .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))),
            )
        }
        Err(e) => {
            let msg = format!(
                "call runs on node {}, which did not answer: {e}",
                owner.node
            );
            Some(error(StatusCode::BAD_GATEWAY, "owner_unreachable", &msg))
        }
    }
}

/// Whether `dir` accepts a new file, and the free space under it in MiB.
fn storage_status(dir: &std::path::Path) -> (bool, u64) {
    let _ = std::fs::create_dir_all(dir);
    let probe = dir.join(".siprec-ready-probe");
    let writable = std::fs::write(&probe, b"ok").is_ok();
    let _ = std::fs::remove_file(&probe);
    (writable, free_mb(dir).unwrap_or(0))
}

/// Free space for unprivileged writers under `dir`, in MiB.
pub fn free_mb(dir: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain data; path is a valid NUL-terminated string; result checked.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64 / (1024 * 1024))
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match (bytes[i], bytes.get(i + 1..i + 3)) {
            (b'%', Some(hex)) => std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok()),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, b) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn json_response(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .header("Server", SERVER)
        .body(Full::new(Bytes::from(bytes)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn method_not_allowed() -> Response<Full<Bytes>> {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed",
    )
}

/// The reference server's error envelope.
pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json_response(
        status,
        json!({"error": {"code": code, "message": message, "status": status.as_u16()}}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A forwarded request carries the caller's credentials as headers, never in the URL.
    #[test]
    fn forwarded_credentials_leave_the_query() {
        let headers = hyper::HeaderMap::new();
        let body = Bytes::new();
        let call = OwnedCall {
            call_id: "c",
            method: &Method::POST,
            path: "/api/sessions/c/pause",
            query: "api_key=k1&x=1&token=t1",
            headers: &headers,
            body: &body,
        };
        let out = outgoing(&call, "node-a");
        assert_eq!(out.path_and_query, "/api/sessions/c/pause?x=1");
        let get = |n: &str| {
            out.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.to_str().unwrap().to_owned())
        };
        assert_eq!(get("x-api-key").as_deref(), Some("k1"));
        assert_eq!(get("authorization").as_deref(), Some("Bearer t1"));
        let plain = OwnedCall { query: "", ..call };
        assert_eq!(
            outgoing(&plain, "node-a").path_and_query,
            "/api/sessions/c/pause"
        );
    }

    /// Query parameters are percent-decoded; malformed escapes are kept literally.
    #[test]
    fn query_decoding() {
        assert_eq!(query_param("id=a%40b&x=1", "id").as_deref(), Some("a@b"));
        assert_eq!(query_param("x=1", "id"), None);
        assert_eq!(query_param("id=%zz%4", "id").as_deref(), Some("%zz%4"));
        assert_eq!(query_param("id=%", "id").as_deref(), Some("%"));
    }
}
