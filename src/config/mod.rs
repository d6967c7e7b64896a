//! Configuration: TOML file → environment (the reference server's names) → CLI flags, parsed
//! into one validated [`Config`]. Invalid values never get past this module: each error names
//! the key, the value and what is allowed.
//!
//! Refuses: reading configuration anywhere else. The hot path never reads `Config`; subsystems
//! copy what they need when a stream or a thread is created.

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::sink::recorder::{AudioFormat, FsyncPolicy};

/// The validated configuration of one `siprec` process.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub sip: SipConfig,
    pub http: HttpConfig,
    pub media: MediaConfig,
    pub recording: RecordingConfig,
    pub dataplane: DataplaneConfig,
    pub amqp: AmqpConfig,
    pub cluster: ClusterConfig,
    pub upload: UploadConfig,
    pub stt: SttConfig,
    pub analytics: AnalyticsConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
}

/// What the log may hold.
#[derive(Debug, Clone, Serialize)]
pub struct LogConfig {
    /// `LOG_PII`: show Call-IDs, URIs, addresses and recording paths in logs as they are,
    /// instead of as salted hashes (`proto::pii`). Default false; for a debugging session.
    pub pii: bool,
}

/// Who may call the HTTP API besides `API_KEY` (`docs/api.md`, Authentication). Everything
/// here can change on reload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuthConfig {
    /// `API_KEYS` (comma-separated): more accepted API keys. Never serialized.
    #[serde(skip_serializing)]
    pub api_keys: Vec<String>,
    /// `AUTH_JWT_SECRET`: HS256 tokens are accepted, signed with this (≥ 32 bytes). Never
    /// serialized.
    #[serde(skip_serializing)]
    pub jwt_secret: Option<String>,
    /// `AUTH_JWT_PUBLIC_KEY_FILE`: RS256 tokens are accepted, signed by this RSA key (PEM public
    /// key or certificate, ≥ 2048 bits).
    pub jwt_public_key_file: Option<PathBuf>,
    /// The file's contents, read and checked when the configuration is built.
    #[serde(skip_serializing)]
    pub jwt_public_key_pem: Option<Vec<u8>>,
    /// `AUTH_JWT_ISSUER`: required `iss` claim.
    pub jwt_issuer: Option<String>,
    /// `AUTH_JWT_AUDIENCE`: required `aud` claim.
    pub jwt_audience: Option<String>,
    /// `AUTH_JWT_LEEWAY`: clock skew allowed on `exp`/`nbf`, seconds (default 30).
    pub jwt_leeway_s: u64,
    /// `AUTH_PROTECT_READS`: read-only routes need a credential too (probes under `/health/`
    /// stay open).
    pub protect_reads: bool,
}

/// Text analytics of transcripts (`docs/events.md`).
#[derive(Debug, Clone, Serialize)]
pub struct AnalyticsConfig {
    /// `ANALYTICS_KEYWORDS` (comma-separated; phrases allowed): `keyword_detected` events.
    pub keywords: Vec<String>,
}

/// Which speech engine transcribes calls live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SttProvider {
    /// whisper.cpp inside the process, model on local disk (`stt.model`).
    Embedded,
    /// An OpenAI-compatible `/v1/audio/transcriptions` server (`stt.openai_url`).
    Openai,
    /// Deepgram's live WebSocket API (`stt.deepgram_url`).
    Deepgram,
    /// No live transcription.
    None,
}

impl SttProvider {
    pub fn name(self) -> &'static str {
        match self {
            SttProvider::Embedded => "embedded",
            SttProvider::Openai => "openai",
            SttProvider::Deepgram => "deepgram",
            SttProvider::None => "none",
        }
    }
}

/// Live transcription (`docs/stt.md`).
#[derive(Debug, Clone, Serialize)]
pub struct SttConfig {
    /// `STT_PROVIDER`: embedded (default) or none.
    pub provider: SttProvider,
    /// `STT_MODEL`: the ggml Whisper model, installed by `./.ci/model.sh`.
    /// Default ./models/ggml-base-q8_0.bin (q8_0 quantized: about 20 % less CPU, same accuracy).
    pub model: PathBuf,
    /// `STT_LANGUAGE`: spoken language (a Whisper language code), default en.
    pub language: String,
    /// `STT_WORKERS`: utterances transcribed at once, default 1.
    pub workers: usize,
    /// `STT_THREADS`: threads per utterance (whisper.cpp n_threads); 0 = every core, up to 4.
    pub threads: usize,
    /// `STT_PARTIAL_INTERVAL_MS`: a partial result per this much new speech; 0 = finals only.
    /// Default 1000.
    pub partial_interval_ms: u32,
    /// `STT_END_SILENCE_MS`: silence that ends an utterance, default 600.
    pub end_silence_ms: u32,
    /// `STT_MAX_UTTERANCE_S`: longest utterance before a forced cut, default 20 (at most 28).
    pub max_utterance_s: u32,
    /// `STT_QUEUE_MAX`: utterances waiting for the engine before new ones are dropped.
    pub queue_max: usize,
    /// `STT_REDACT_PII`: redact card numbers (Luhn-checked), national ids and phone numbers
    /// from transcripts before they leave the STT workers. Default false.
    pub redact_pii: bool,
    /// `STT_REDACT_PATTERNS` (a JSON array of regular expressions in the environment): more
    /// text to redact, when `redact_pii` is on.
    pub redact_patterns: Vec<String>,
    /// `STT_OPENAI_URL`: base URL of the `openai` provider, default https://api.openai.com/v1.
    pub openai_url: String,
    /// `STT_OPENAI_API_KEY`: sent as a Bearer token. Never serialized.
    #[serde(skip_serializing)]
    pub openai_api_key: Option<String>,
    /// `STT_OPENAI_MODEL`, default whisper-1.
    pub openai_model: String,
    /// `STT_REQUEST_TIMEOUT`: seconds per request of the openai and deepgram providers,
    /// default 30.
    pub request_timeout_s: u32,
    /// `STT_DEEPGRAM_URL`, default wss://api.deepgram.com/v1/listen.
    pub deepgram_url: String,
    /// `STT_DEEPGRAM_API_KEY`: sent as `Authorization: Token …`. Never serialized.
    #[serde(skip_serializing)]
    pub deepgram_api_key: Option<String>,
    /// `STT_DEEPGRAM_MODEL`, default nova-2.
    pub deepgram_model: String,
}

/// Publishing call events to RabbitMQ (`docs/events.md`).
#[derive(Debug, Clone, Serialize)]
pub struct AmqpConfig {
    /// `ENABLE_REALTIME_AMQP`, default false.
    pub enabled: bool,
    /// `AMQP_URL`, default amqp://guest:guest@127.0.0.1:5672/%2f. Never serialized (it may
    /// hold a password).
    #[serde(skip_serializing)]
    pub url: String,
    /// `AMQP_SPOOL_DIR`: events beyond `buffer_max`, and those unconfirmed at shutdown, are
    /// kept here on disk, in order, and published later (also after a restart).
    pub spool_dir: Option<PathBuf>,
    /// `AMQP_SPOOL_MAX_MB` (default 1024): beyond it the oldest spooled events are dropped.
    pub spool_max_mb: u64,
    /// `AMQP_TLS_CA_FILE`: PEM certificates to trust for amqps:// instead of the system's.
    pub tls_ca_file: Option<PathBuf>,
    /// The file's contents, read when the configuration is built.
    #[serde(skip_serializing)]
    pub tls_ca_pem: Option<String>,
    /// Durable topic exchange declared on connect (`AMQP_EXCHANGE`, default siprec.events).
    pub exchange: String,
    /// Events kept while the broker is unreachable or unconfirmed (`AMQP_BUFFER_MAX`); the
    /// oldest are dropped and counted beyond it.
    pub buffer_max: usize,
    /// Call lifecycle events (`PUBLISH_CALL_EVENTS`, default true).
    pub publish_call_events: bool,
    /// Transcript and analytics filters of the reference server (`PUBLISH_*`); they apply
    /// once those events exist (issues 7 and 13).
    pub publish_partial_transcripts: bool,
    pub publish_final_transcripts: bool,
    pub publish_sentiment_updates: bool,
    pub publish_keyword_detections: bool,
    pub publish_speaker_changes: bool,
    /// Talk-time `snapshot` events (`PUBLISH_ANALYTICS`, default true).
    pub publish_analytics: bool,
}

/// Several nodes sharing what they run through Redis (`docs/cluster.md`). Off unless
/// `REDIS_URL` is set.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterConfig {
    /// `REDIS_URL` (redis:// or rediss://). Never serialized (it may hold a password).
    #[serde(skip_serializing)]
    pub redis_url: Option<String>,
    /// `CLUSTER_NODE_ID`, default the host name. Unique per node.
    pub node_id: String,
    /// `CLUSTER_ADVERTISE_URL`: where the other nodes reach this node's API (requests for
    /// calls this node owns are forwarded there). Default http(s)://<SIP address>:<HTTP port>.
    pub advertise_url: String,
    /// `CLUSTER_KEY_PREFIX`, default `siprec`: several clusters can share one Redis.
    pub key_prefix: String,
    /// `CLUSTER_TTL` seconds (default 10): a node that stops heartbeating leaves the registry,
    /// with its sessions, this long after its last heartbeat.
    pub ttl_s: u32,
}

/// Copying finished recordings to S3-compatible object storage (`docs/cluster.md`). Off
/// unless `S3_ENDPOINT` and `S3_BUCKET` are set.
#[derive(Debug, Clone, Serialize)]
pub struct UploadConfig {
    /// `S3_ENDPOINT`: http(s)://host[:port] of the S3 API (AWS, MinIO, Ceph RGW, ...).
    pub endpoint: Option<String>,
    /// `S3_BUCKET`.
    pub bucket: String,
    /// `S3_REGION`, default us-east-1 (signing scope).
    pub region: String,
    /// `S3_ACCESS_KEY_ID` / `S3_SECRET_ACCESS_KEY`. Never serialized.
    #[serde(skip_serializing)]
    pub access_key_id: String,
    #[serde(skip_serializing)]
    pub secret_access_key: String,
    /// `S3_PREFIX`: prepended to every key (`<prefix><day>/<session>/<file>`).
    pub prefix: String,
    /// `S3_PATH_STYLE` (default true): `endpoint/bucket/key`; false: `bucket.endpoint/key`.
    pub path_style: bool,
    /// `S3_PART_SIZE_MB` (default 8, 5 to 5120): files above it go up in parts.
    pub part_size_mb: u32,
    /// `S3_LOCAL_RETENTION` seconds: audio files are deleted locally this long after a
    /// verified upload (session.json and the upload record stay). Unset: kept.
    pub local_retention_s: Option<u64>,
    /// `S3_TIMEOUT` seconds per request (default 30).
    pub timeout_s: u32,
    /// `S3_MAX_MBPS`: upload bandwidth cap in megabits per second (0 = none).
    pub max_mbps: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct SipConfig {
    /// Address the SIP sockets bind to (`SIP_HOST`). Default 0.0.0.0.
    pub host: IpAddr,
    /// Ports bound for SIP, each over UDP and TCP (`PORTS`). Default 5060.
    pub ports: Vec<u16>,
    /// Address written into SDP c=/o= and Contact when behind NAT (`EXTERNAL_IP`).
    pub external_ip: Option<IpAddr>,
    /// Reject INVITEs that are not SIPREC (no `Require: siprec` / `+sip.src`) with 403.
    /// Default false: plain INVITEs (Cisco NBR, PBX forks) are recorded too.
    pub require_siprec: bool,
    /// Concurrent recording sessions before new INVITEs get 503 (`MAX_CONCURRENT_CALLS`).
    pub max_concurrent_calls: usize,
    /// On SIGTERM, seconds running calls may go on while new ones get 503 (`DRAIN_TIMEOUT`);
    /// then we send BYE. 0 ends calls at once. Keep systemd's TimeoutStopSec above it.
    pub drain_timeout_s: u32,
    /// Source networks allowed to send SIP (`SIP_ALLOWED_NETWORKS`, CIDR list); empty: all.
    pub allowed_networks: Vec<String>,
    /// What others get (`SIP_ACL_ACTION`): `reject` (403 to requests) or `drop` (silence).
    pub acl_action: AclAction,
    /// SIP messages per second one source may send (`SIP_FLOOD_LIMIT`; 0 = no limit, the
    /// default: SBCs legitimately send hundreds of calls a second).
    pub flood_limit: u32,
    /// Seconds a flooding source stays blocked (`SIP_FLOOD_BLOCK`, default 60).
    pub flood_block_s: u32,
    /// Concurrent calls per source address (`SIP_MAX_CALLS_PER_SOURCE`; 0 = no limit).
    pub max_calls_per_source: usize,
    /// SIP over TLS (RFC 3261 §26, `transport=tls`) is served when a certificate and key are
    /// given (`SIP_TLS_CERT_FILE`, `SIP_TLS_KEY_FILE`, PEM), on `SIP_TLS_PORT` (default 5061);
    /// re-read on SIGHUP/reload.
    pub tls_port: u16,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Mutual TLS (`SIP_TLS_CA_FILE`): SRCs must present a certificate issued by one of these
    /// CAs (PEM bundle). Default: any client.
    pub tls_ca_file: Option<PathBuf>,
    /// Unix socket a new process connects to, to take over the listening sockets
    /// (`TAKEOVER_SOCKET`; docs/operations.md, Upgrading). None: `$RUNTIME_DIRECTORY/
    /// takeover.sock` under systemd, else `.takeover.sock` in the recording directory.
    pub takeover_socket: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AclAction {
    Reject,
    Drop,
}

#[derive(Debug, Clone, Serialize)]
pub struct HttpConfig {
    pub host: IpAddr,
    /// `HTTP_PORT`, default 8080.
    pub port: u16,
    /// `API_KEY`: required as `X-API-Key` on mutating routes when set. Never serialized.
    #[serde(skip_serializing)]
    pub api_key: Option<String>,
    /// Requests per second per client address (`HTTP_RATE_LIMIT`, burst twice that); beyond
    /// it 429 with Retry-After. 0 disables.
    pub rate_limit_per_s: u32,
    /// WebSocket clients at once on `/ws/*` (`WS_MAX_CLIENTS`); more are refused (1013).
    pub ws_max_clients: usize,
    /// Events queued for one WebSocket client at most before it counts as slow
    /// (`WS_CLIENT_QUEUE`, default 1024).
    pub ws_client_queue: usize,
    /// A WebSocket client that falls behind: `drop_oldest` (a `gap` message) or `disconnect`
    /// (`WS_SLOW_CLIENT`).
    pub ws_slow_client: crate::api::ws::SlowClient,
    /// `HTTP_TLS_CERT_FILE` (PEM chain) and `HTTP_TLS_KEY_FILE`: HTTPS when both are set;
    /// re-read on reload and SIGHUP.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MediaConfig {
    /// First RTP port (`RTP_PORT_MIN`, even). Default 10000.
    pub rtp_port_min: u16,
    /// Last RTP port (`RTP_PORT_MAX`). Default 20000.
    pub rtp_port_max: u16,
    /// Seconds without RTP on every non-held stream before we end the call (`RTP_TIMEOUT`).
    pub rtp_timeout_s: u32,
    /// Seconds a released port rests before reuse, so late packets of the old call can't land
    /// in a new one.
    pub port_cooldown_s: u32,
    /// Longest recording in seconds before we send BYE (0 = unlimited).
    pub max_call_duration_s: u32,
    /// Refuse plain RTP: only RTP/SAVP(F) m-lines are recorded; an offer without one gets
    /// 488 (`SRTP_REQUIRED`, default false).
    pub srtp_required: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecordingConfig {
    /// Root of `YYYY-MM-DD/<session-id>/` directories (`RECORDING_DIR`). Default ./recordings.
    pub dir: PathBuf,
    /// Write mixed.wav with one channel per stream (`RECORDING_COMBINE_LEGS`). Default true.
    pub combine_legs: bool,
    /// When WAV data reaches the disk: never forced, with each header patch, or on close.
    pub fsync: FsyncPolicy,
    /// File format of recordings: wav, flac or opus (Opus in Ogg) (`RECORDING_FORMAT`).
    /// Default wav. A stream a format cannot hold (FLAC over 8 channels, Opus over 2 or at
    /// another rate than 8/12/16/24/48 kHz) is written as WAV.
    pub format: AudioFormat,
    /// Opus bit rate per channel in bit/s, 6000–256000 (`RECORDING_OPUS_BITRATE`). Default 32000.
    pub opus_bitrate: u32,
    /// Encrypt every recording file at rest (AES-256-GCM) with the first key of this file of
    /// `<key-id> <64 hex digits>` lines (`RECORDING_ENCRYPTION_KEY_FILE`). Default: plain files.
    pub encryption_key_file: Option<PathBuf>,
    /// /health/ready fails below this much free space, in MiB.
    pub min_free_mb: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DataplaneConfig {
    /// Receive backend: auto (io_uring if the kernel allows, else epoll), io_uring, epoll.
    pub backend: crate::dataplane::BackendChoice,
    /// Receive workers; 0 = auto (every core but the control plane's when ≥ 3 cores, else 1).
    pub workers: usize,
    /// Slots per (worker, recorder) ring. Memory: workers × ring_slots × ~2 KiB.
    pub ring_slots: usize,
    /// Datagrams received per recvmmsg call.
    pub batch_size: usize,
    /// io_uring: a kernel thread per worker polls its submission queue (`DATAPLANE_SQPOLL`,
    /// default false). Costs a busy kernel thread while traffic flows; saves submit calls.
    pub sqpoll: bool,
    /// After a poll that handled packets, a worker sleeps this long (µs) so the next poll
    /// takes a batch rather than one wake-up per packet (`DATAPLANE_COALESCE_US`, default
    /// 500; 0 = off). Adds at most this much to a packet's arrival time.
    pub coalesce_us: u32,
    /// af_xdp: the interface RTP arrives on (`DATAPLANE_XDP_INTERFACE`); required then.
    pub xdp_interface: Option<String>,
    /// af_xdp: ask the driver for zero-copy (`DATAPLANE_XDP_ZEROCOPY`, default false; copy
    /// mode, which every driver offers, when it refuses).
    pub xdp_zerocopy: bool,
}

/// A configuration value that cannot be used, with everything needed to fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("invalid {key} = {value:?}: {allowed}")]
    Invalid {
        key: &'static str,
        value: String,
        allowed: String,
    },
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Toml { path: PathBuf, message: String },
}

/// Raw layered values: every field optional, as text where it may come from env or CLI.
/// The file gives typed TOML; env and flags give strings with the reference server's names.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub sip: FileSip,
    #[serde(default)]
    pub http: FileHttp,
    #[serde(default)]
    pub media: FileMedia,
    #[serde(default)]
    pub recording: FileRecording,
    #[serde(default)]
    pub dataplane: FileDataplane,
    #[serde(default)]
    pub amqp: FileAmqp,
    #[serde(default)]
    pub cluster: FileCluster,
    #[serde(default)]
    pub upload: FileUpload,
    #[serde(default)]
    pub stt: FileStt,
    #[serde(default)]
    pub analytics: FileAnalytics,
    #[serde(default)]
    pub auth: FileAuth,
    #[serde(default)]
    pub log: FileLog,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLog {
    pub pii: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAuth {
    pub api_keys: Option<Vec<String>>,
    pub jwt_secret: Option<String>,
    pub jwt_public_key_file: Option<PathBuf>,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub jwt_leeway_s: Option<u64>,
    pub protect_reads: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAnalytics {
    pub keywords: Option<Vec<String>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStt {
    pub provider: Option<SttProvider>,
    pub model: Option<PathBuf>,
    pub language: Option<String>,
    pub workers: Option<usize>,
    pub threads: Option<usize>,
    pub partial_interval_ms: Option<u32>,
    pub end_silence_ms: Option<u32>,
    pub max_utterance_s: Option<u32>,
    pub queue_max: Option<usize>,
    pub redact_pii: Option<bool>,
    pub redact_patterns: Option<Vec<String>>,
    pub openai_url: Option<String>,
    pub openai_api_key: Option<String>,
    pub openai_model: Option<String>,
    pub request_timeout_s: Option<u32>,
    pub deepgram_url: Option<String>,
    pub deepgram_api_key: Option<String>,
    pub deepgram_model: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpload {
    pub endpoint: Option<String>,
    pub bucket: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub prefix: Option<String>,
    pub path_style: Option<bool>,
    pub part_size_mb: Option<u32>,
    pub local_retention_s: Option<u64>,
    pub timeout_s: Option<u32>,
    pub max_mbps: Option<u32>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCluster {
    pub redis_url: Option<String>,
    pub node_id: Option<String>,
    pub advertise_url: Option<String>,
    pub key_prefix: Option<String>,
    pub ttl_s: Option<u32>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAmqp {
    pub enabled: Option<bool>,
    pub url: Option<String>,
    pub tls_ca_file: Option<PathBuf>,
    pub spool_dir: Option<PathBuf>,
    pub spool_max_mb: Option<u64>,
    pub exchange: Option<String>,
    pub buffer_max: Option<usize>,
    pub publish_call_events: Option<bool>,
    pub publish_partial_transcripts: Option<bool>,
    pub publish_final_transcripts: Option<bool>,
    pub publish_sentiment_updates: Option<bool>,
    pub publish_keyword_detections: Option<bool>,
    pub publish_speaker_changes: Option<bool>,
    pub publish_analytics: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSip {
    pub drain_timeout_s: Option<u32>,
    pub host: Option<String>,
    pub ports: Option<Vec<u16>>,
    pub external_ip: Option<String>,
    pub require_siprec: Option<bool>,
    pub max_concurrent_calls: Option<usize>,
    pub allowed_networks: Option<Vec<String>>,
    pub acl_action: Option<AclAction>,
    pub flood_limit: Option<u32>,
    pub flood_block_s: Option<u32>,
    pub max_calls_per_source: Option<usize>,
    pub tls_port: Option<u16>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub tls_ca_file: Option<PathBuf>,
    pub takeover_socket: Option<PathBuf>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHttp {
    pub ws_max_clients: Option<usize>,
    pub ws_client_queue: Option<usize>,
    pub ws_slow_client: Option<crate::api::ws::SlowClient>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub api_key: Option<String>,
    pub rate_limit_per_s: Option<u32>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMedia {
    pub rtp_port_min: Option<u16>,
    pub rtp_port_max: Option<u16>,
    pub rtp_timeout_s: Option<u32>,
    pub port_cooldown_s: Option<u32>,
    pub max_call_duration_s: Option<u32>,
    pub srtp_required: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRecording {
    pub dir: Option<PathBuf>,
    pub combine_legs: Option<bool>,
    pub fsync: Option<FsyncPolicy>,
    pub format: Option<AudioFormat>,
    pub opus_bitrate: Option<u32>,
    pub encryption_key_file: Option<PathBuf>,
    pub min_free_mb: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDataplane {
    pub backend: Option<crate::dataplane::BackendChoice>,
    pub workers: Option<usize>,
    pub ring_slots: Option<usize>,
    pub batch_size: Option<usize>,
    pub sqpoll: Option<bool>,
    pub coalesce_us: Option<u32>,
    pub xdp_interface: Option<String>,
    pub xdp_zerocopy: Option<bool>,
}

/// One override from the environment or a CLI flag: the env-style key and its text.
pub type Override = (&'static str, String);

/// The keys overrides may use, each with the file key it maps to (for messages and docs).
pub const OVERRIDE_KEYS: &[(&str, &str)] = &[
    ("SIP_HOST", "sip.host"),
    ("PORTS", "sip.ports"),
    ("EXTERNAL_IP", "sip.external_ip"),
    ("SIP_REQUIRE_SIPREC", "sip.require_siprec"),
    ("MAX_CONCURRENT_CALLS", "sip.max_concurrent_calls"),
    ("DRAIN_TIMEOUT", "sip.drain_timeout_s"),
    ("SIP_ALLOWED_NETWORKS", "sip.allowed_networks"),
    ("SIP_ACL_ACTION", "sip.acl_action"),
    ("SIP_FLOOD_LIMIT", "sip.flood_limit"),
    ("SIP_FLOOD_BLOCK", "sip.flood_block_s"),
    ("SIP_MAX_CALLS_PER_SOURCE", "sip.max_calls_per_source"),
    ("SIP_TLS_PORT", "sip.tls_port"),
    ("SIP_TLS_CERT_FILE", "sip.tls_cert_file"),
    ("SIP_TLS_KEY_FILE", "sip.tls_key_file"),
    ("SIP_TLS_CA_FILE", "sip.tls_ca_file"),
    ("TAKEOVER_SOCKET", "sip.takeover_socket"),
    ("HTTP_HOST", "http.host"),
    ("HTTP_PORT", "http.port"),
    ("API_KEY", "http.api_key"),
    ("HTTP_RATE_LIMIT", "http.rate_limit_per_s"),
    ("WS_MAX_CLIENTS", "http.ws_max_clients"),
    ("WS_CLIENT_QUEUE", "http.ws_client_queue"),
    ("WS_SLOW_CLIENT", "http.ws_slow_client"),
    ("HTTP_TLS_CERT_FILE", "http.tls_cert_file"),
    ("HTTP_TLS_KEY_FILE", "http.tls_key_file"),
    ("RTP_PORT_MIN", "media.rtp_port_min"),
    ("RTP_PORT_MAX", "media.rtp_port_max"),
    ("RTP_TIMEOUT", "media.rtp_timeout_s"),
    ("RTP_PORT_COOLDOWN", "media.port_cooldown_s"),
    ("MAX_CALL_DURATION", "media.max_call_duration_s"),
    ("SRTP_REQUIRED", "media.srtp_required"),
    ("RECORDING_DIR", "recording.dir"),
    ("RECORDING_COMBINE_LEGS", "recording.combine_legs"),
    ("RECORDING_FSYNC", "recording.fsync"),
    ("RECORDING_FORMAT", "recording.format"),
    ("RECORDING_OPUS_BITRATE", "recording.opus_bitrate"),
    (
        "RECORDING_ENCRYPTION_KEY_FILE",
        "recording.encryption_key_file",
    ),
    ("RECORDING_MIN_FREE_MB", "recording.min_free_mb"),
    ("DATAPLANE_BACKEND", "dataplane.backend"),
    ("DATAPLANE_WORKERS", "dataplane.workers"),
    ("DATAPLANE_RING_SLOTS", "dataplane.ring_slots"),
    ("DATAPLANE_BATCH_SIZE", "dataplane.batch_size"),
    ("DATAPLANE_SQPOLL", "dataplane.sqpoll"),
    ("DATAPLANE_COALESCE_US", "dataplane.coalesce_us"),
    ("DATAPLANE_XDP_INTERFACE", "dataplane.xdp_interface"),
    ("DATAPLANE_XDP_ZEROCOPY", "dataplane.xdp_zerocopy"),
    ("ENABLE_REALTIME_AMQP", "amqp.enabled"),
    ("AMQP_URL", "amqp.url"),
    ("AMQP_TLS_CA_FILE", "amqp.tls_ca_file"),
    ("AMQP_SPOOL_DIR", "amqp.spool_dir"),
    ("AMQP_SPOOL_MAX_MB", "amqp.spool_max_mb"),
    ("AMQP_EXCHANGE", "amqp.exchange"),
    ("AMQP_BUFFER_MAX", "amqp.buffer_max"),
    ("PUBLISH_CALL_EVENTS", "amqp.publish_call_events"),
    (
        "PUBLISH_PARTIAL_TRANSCRIPTS",
        "amqp.publish_partial_transcripts",
    ),
    (
        "PUBLISH_FINAL_TRANSCRIPTS",
        "amqp.publish_final_transcripts",
    ),
    (
        "PUBLISH_SENTIMENT_UPDATES",
        "amqp.publish_sentiment_updates",
    ),
    (
        "PUBLISH_KEYWORD_DETECTIONS",
        "amqp.publish_keyword_detections",
    ),
    ("PUBLISH_SPEAKER_CHANGES", "amqp.publish_speaker_changes"),
    ("PUBLISH_ANALYTICS", "amqp.publish_analytics"),
    ("REDIS_URL", "cluster.redis_url"),
    ("CLUSTER_NODE_ID", "cluster.node_id"),
    ("CLUSTER_ADVERTISE_URL", "cluster.advertise_url"),
    ("CLUSTER_KEY_PREFIX", "cluster.key_prefix"),
    ("CLUSTER_TTL", "cluster.ttl_s"),
    ("S3_ENDPOINT", "upload.endpoint"),
    ("S3_BUCKET", "upload.bucket"),
    ("S3_REGION", "upload.region"),
    ("S3_ACCESS_KEY_ID", "upload.access_key_id"),
    ("S3_SECRET_ACCESS_KEY", "upload.secret_access_key"),
    ("S3_PREFIX", "upload.prefix"),
    ("S3_PATH_STYLE", "upload.path_style"),
    ("S3_PART_SIZE_MB", "upload.part_size_mb"),
    ("S3_LOCAL_RETENTION", "upload.local_retention_s"),
    ("S3_TIMEOUT", "upload.timeout_s"),
    ("S3_MAX_MBPS", "upload.max_mbps"),
    ("STT_PROVIDER", "stt.provider"),
    ("STT_MODEL", "stt.model"),
    ("STT_LANGUAGE", "stt.language"),
    ("STT_WORKERS", "stt.workers"),
    ("STT_THREADS", "stt.threads"),
    ("STT_PARTIAL_INTERVAL_MS", "stt.partial_interval_ms"),
    ("STT_END_SILENCE_MS", "stt.end_silence_ms"),
    ("STT_MAX_UTTERANCE_S", "stt.max_utterance_s"),
    ("STT_QUEUE_MAX", "stt.queue_max"),
    ("STT_REDACT_PII", "stt.redact_pii"),
    ("STT_REDACT_PATTERNS", "stt.redact_patterns"),
    ("STT_OPENAI_URL", "stt.openai_url"),
    ("STT_OPENAI_API_KEY", "stt.openai_api_key"),
    ("STT_OPENAI_MODEL", "stt.openai_model"),
    ("STT_REQUEST_TIMEOUT", "stt.request_timeout_s"),
    ("STT_DEEPGRAM_URL", "stt.deepgram_url"),
    ("STT_DEEPGRAM_API_KEY", "stt.deepgram_api_key"),
    ("STT_DEEPGRAM_MODEL", "stt.deepgram_model"),
    ("ANALYTICS_KEYWORDS", "analytics.keywords"),
    ("LOG_PII", "log.pii"),
    ("API_KEYS", "auth.api_keys"),
    ("AUTH_JWT_SECRET", "auth.jwt_secret"),
    ("AUTH_JWT_PUBLIC_KEY_FILE", "auth.jwt_public_key_file"),
    ("AUTH_JWT_ISSUER", "auth.jwt_issuer"),
    ("AUTH_JWT_AUDIENCE", "auth.jwt_audience"),
    ("AUTH_JWT_LEEWAY", "auth.jwt_leeway_s"),
    ("AUTH_PROTECT_READS", "auth.protect_reads"),
];

impl FileConfig {
    /// Reads and parses a TOML file; unknown keys are errors (a typo must not be ignored).
    pub fn load(path: &std::path::Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Toml {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }
}

/// Collects the overrides present in the process environment, in `OVERRIDE_KEYS` order.
pub fn env_overrides() -> Vec<Override> {
    OVERRIDE_KEYS
        .iter()
        .filter_map(|(key, _)| std::env::var(key).ok().map(|v| (*key, v)))
        .collect()
}

impl Config {
    /// Builds the validated configuration: `file` values, then each override in order (later
    /// wins: pass env first, then CLI flags), then embedded defaults for anything unset.
    pub fn build(file: FileConfig, overrides: &[Override]) -> Result<Config, ConfigError> {
        let mut f = file;
        for (key, value) in overrides {
            apply_override(&mut f, key, value)?;
        }
        let sip = SipConfig {
            host: parse_ip("SIP_HOST", f.sip.host.as_deref().unwrap_or("0.0.0.0"))?,
            ports: f.sip.ports.clone().unwrap_or_else(|| vec![5060]),
            external_ip: match f.sip.external_ip.as_deref() {
                None | Some("") => None,
                Some(v) => Some(parse_ip("EXTERNAL_IP", v)?),
            },
            require_siprec: f.sip.require_siprec.unwrap_or(false),
            max_concurrent_calls: f.sip.max_concurrent_calls.unwrap_or(1000),
            drain_timeout_s: f.sip.drain_timeout_s.unwrap_or(120),
            allowed_networks: f.sip.allowed_networks.clone().unwrap_or_default(),
            acl_action: f.sip.acl_action.unwrap_or(AclAction::Reject),
            flood_limit: f.sip.flood_limit.unwrap_or(0),
            flood_block_s: f.sip.flood_block_s.unwrap_or(60),
            max_calls_per_source: f.sip.max_calls_per_source.unwrap_or(0),
            tls_port: f.sip.tls_port.unwrap_or(5061),
            tls_cert_file: path_set(&f.sip.tls_cert_file),
            tls_key_file: path_set(&f.sip.tls_key_file),
            tls_ca_file: path_set(&f.sip.tls_ca_file),
            takeover_socket: path_set(&f.sip.takeover_socket),
        };
        match (&sip.tls_cert_file, &sip.tls_key_file) {
            (None, None) => {}
            (Some(cert), Some(key)) => {
                if sip.tls_port == 0 || sip.ports.contains(&sip.tls_port) {
                    let v = sip.tls_port.to_string();
                    return Err(invalid("SIP_TLS_PORT", v, "a port other than PORTS'"));
                }
                let ca = sip.tls_ca_file.as_deref();
                crate::api::tls::sip_acceptor(cert, key, ca).map_err(|e| {
                    let allowed = format!("a PEM certificate chain, its key and CA file ({e})");
                    invalid("SIP_TLS_CERT_FILE", cert.display().to_string(), allowed)
                })?;
            }
            (Some(_), None) | (None, Some(_)) => {
                let allowed = "SIP_TLS_CERT_FILE and SIP_TLS_KEY_FILE together";
                return Err(invalid("SIP_TLS_KEY_FILE", "(one of the pair)", allowed));
            }
        }
        if sip.ports.is_empty() || sip.ports.contains(&0) {
            return Err(invalid(
                "PORTS",
                format!("{:?}", sip.ports),
                "one or more ports 1-65535",
            ));
        }
        if sip.max_concurrent_calls == 0 {
            return Err(invalid("MAX_CONCURRENT_CALLS", "0", "an integer ≥ 1"));
        }
        let http = HttpConfig {
            host: parse_ip("HTTP_HOST", f.http.host.as_deref().unwrap_or("0.0.0.0"))?,
            port: f.http.port.unwrap_or(8080),
            api_key: f.http.api_key.clone().filter(|k| !k.is_empty()),
            rate_limit_per_s: f.http.rate_limit_per_s.unwrap_or(100),
            ws_max_clients: f.http.ws_max_clients.unwrap_or(1000),
            ws_client_queue: f.http.ws_client_queue.unwrap_or(1024),
            ws_slow_client: f
                .http
                .ws_slow_client
                .unwrap_or(crate::api::ws::SlowClient::DropOldest),
            tls_cert_file: path_set(&f.http.tls_cert_file),
            tls_key_file: path_set(&f.http.tls_key_file),
        };
        if http.port == 0 {
            return Err(invalid("HTTP_PORT", "0", "a port 1-65535"));
        }
        if !(1..=1_000_000).contains(&http.ws_client_queue) {
            let v = http.ws_client_queue.to_string();
            return Err(invalid("WS_CLIENT_QUEUE", v, "1 to 1000000 events"));
        }
        match (&http.tls_cert_file, &http.tls_key_file) {
            (None, None) => {}
            (Some(cert), Some(key)) => {
                crate::api::tls::acceptor(cert, key).map_err(|e| {
                    let allowed = format!("a PEM certificate chain and its key ({e})");
                    invalid("HTTP_TLS_CERT_FILE", cert.display().to_string(), allowed)
                })?;
            }
            (Some(_), None) | (None, Some(_)) => {
                let allowed = "HTTP_TLS_CERT_FILE and HTTP_TLS_KEY_FILE together";
                return Err(invalid("HTTP_TLS_KEY_FILE", "(one of the pair)", allowed));
            }
        }
        let media = MediaConfig {
            rtp_port_min: f.media.rtp_port_min.unwrap_or(10000),
            rtp_port_max: f.media.rtp_port_max.unwrap_or(20000),
            rtp_timeout_s: f.media.rtp_timeout_s.unwrap_or(30),
            port_cooldown_s: f.media.port_cooldown_s.unwrap_or(5),
            max_call_duration_s: f.media.max_call_duration_s.unwrap_or(4 * 3600),
            srtp_required: f.media.srtp_required.unwrap_or(false),
        };
        if media.rtp_port_min < 1024 || !media.rtp_port_min.is_multiple_of(2) {
            let v = media.rtp_port_min.to_string();
            return Err(invalid("RTP_PORT_MIN", v, "an even port 1024-65534"));
        }
        if media.rtp_port_max <= media.rtp_port_min {
            let v = media.rtp_port_max.to_string();
            let allowed = format!("a port above RTP_PORT_MIN ({})", media.rtp_port_min);
            return Err(invalid("RTP_PORT_MAX", v, allowed));
        }
        if media.rtp_timeout_s == 0 {
            return Err(invalid("RTP_TIMEOUT", "0", "seconds ≥ 1"));
        }
        for port in &sip.ports {
            if (media.rtp_port_min..=media.rtp_port_max).contains(port) {
                let allowed = "SIP ports outside RTP_PORT_MIN..RTP_PORT_MAX";
                return Err(invalid("PORTS", port.to_string(), allowed));
            }
        }
        let networks = sip.allowed_networks.join(",");
        if let Err(item) = crate::sip::acl::Acl::parse(&networks) {
            let allowed = format!("CIDR blocks such as 10.0.0.0/8 or 2001:db8::/32 (bad: {item})");
            return Err(invalid("SIP_ALLOWED_NETWORKS", networks, allowed));
        }
        let recording = RecordingConfig {
            dir: f
                .recording
                .dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("./recordings")),
            combine_legs: f.recording.combine_legs.unwrap_or(true),
            fsync: f.recording.fsync.unwrap_or(FsyncPolicy::OnClose),
            format: f.recording.format.unwrap_or_default(),
            opus_bitrate: f.recording.opus_bitrate.unwrap_or(32_000),
            encryption_key_file: path_set(&f.recording.encryption_key_file),
            min_free_mb: f.recording.min_free_mb.unwrap_or(512),
        };
        if recording.dir.as_os_str().is_empty() {
            return Err(invalid("RECORDING_DIR", "", "a directory path"));
        }
        if let Some(keys) = &recording.encryption_key_file {
            crate::sink::recorder::Keyring::load(keys).map_err(|e| {
                let allowed = format!("a file of `<key-id> <64 hex digits>` lines ({e})");
                invalid(
                    "RECORDING_ENCRYPTION_KEY_FILE",
                    keys.display().to_string(),
                    allowed,
                )
            })?;
        }
        if !(6_000..=256_000).contains(&recording.opus_bitrate) {
            let value = recording.opus_bitrate.to_string();
            return Err(invalid(
                "RECORDING_OPUS_BITRATE",
                value,
                "6000 to 256000 bit/s",
            ));
        }
        let dataplane = DataplaneConfig {
            backend: f
                .dataplane
                .backend
                .unwrap_or(crate::dataplane::BackendChoice::Auto),
            workers: f.dataplane.workers.unwrap_or(0),
            ring_slots: f.dataplane.ring_slots.unwrap_or(4096),
            batch_size: f.dataplane.batch_size.unwrap_or(32),
            sqpoll: f.dataplane.sqpoll.unwrap_or(false),
            coalesce_us: f.dataplane.coalesce_us.unwrap_or(500),
            xdp_interface: f.dataplane.xdp_interface.clone().filter(|i| !i.is_empty()),
            xdp_zerocopy: f.dataplane.xdp_zerocopy.unwrap_or(false),
        };
        if dataplane.backend == crate::dataplane::BackendChoice::AfXdp {
            match &dataplane.xdp_interface {
                None => {
                    let allowed = "an interface name when DATAPLANE_BACKEND=af_xdp";
                    return Err(invalid("DATAPLANE_XDP_INTERFACE", "", allowed));
                }
                Some(name) if name.len() > 15 || name.contains(['/', ' ']) => {
                    let allowed = "an interface name (at most 15 characters)";
                    return Err(invalid("DATAPLANE_XDP_INTERFACE", name.as_str(), allowed));
                }
                Some(_) => {}
            }
        }
        if !(16..=1 << 20).contains(&dataplane.ring_slots) {
            let v = dataplane.ring_slots.to_string();
            return Err(invalid("DATAPLANE_RING_SLOTS", v, "16 to 1048576 slots"));
        }
        if !(1..=1024).contains(&dataplane.batch_size) {
            let v = dataplane.batch_size.to_string();
            return Err(invalid("DATAPLANE_BATCH_SIZE", v, "1 to 1024 datagrams"));
        }
        if dataplane.workers > 256 {
            let v = dataplane.workers.to_string();
            return Err(invalid("DATAPLANE_WORKERS", v, "0 (auto) to 256"));
        }
        let a = &f.amqp;
        let mut amqp = AmqpConfig {
            enabled: a.enabled.unwrap_or(false),
            url: a
                .url
                .clone()
                .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned()),
            tls_ca_file: path_set(&a.tls_ca_file),
            tls_ca_pem: None,
            spool_dir: path_set(&a.spool_dir),
            spool_max_mb: a.spool_max_mb.unwrap_or(1024),
            exchange: a
                .exchange
                .clone()
                .unwrap_or_else(|| "siprec.events".to_owned()),
            buffer_max: a.buffer_max.unwrap_or(100_000),
            publish_call_events: a.publish_call_events.unwrap_or(true),
            publish_partial_transcripts: a.publish_partial_transcripts.unwrap_or(true),
            publish_final_transcripts: a.publish_final_transcripts.unwrap_or(true),
            publish_sentiment_updates: a.publish_sentiment_updates.unwrap_or(true),
            publish_keyword_detections: a.publish_keyword_detections.unwrap_or(true),
            publish_speaker_changes: a.publish_speaker_changes.unwrap_or(true),
            publish_analytics: a.publish_analytics.unwrap_or(true),
        };
        if !amqp.url.starts_with("amqp://") && !amqp.url.starts_with("amqps://") {
            let shown = amqp.url.split('@').next_back().unwrap_or("").to_owned();
            return Err(invalid("AMQP_URL", shown, "an amqp:// or amqps:// URL"));
        }
        if let Some(path) = &amqp.tls_ca_file {
            let shown = path.display().to_string();
            let pem = std::fs::read_to_string(path).map_err(|e| {
                invalid(
                    "AMQP_TLS_CA_FILE",
                    shown.clone(),
                    format!("a readable file ({e})"),
                )
            })?;
            if openssl::x509::X509::stack_from_pem(pem.as_bytes()).map_or(true, |c| c.is_empty()) {
                return Err(invalid("AMQP_TLS_CA_FILE", shown, "PEM certificates"));
            }
            amqp.tls_ca_pem = Some(pem);
        }
        if amqp.exchange.is_empty() || amqp.exchange.len() > 255 {
            return Err(invalid(
                "AMQP_EXCHANGE",
                amqp.exchange.clone(),
                "1 to 255 bytes",
            ));
        }
        if amqp.buffer_max == 0 {
            return Err(invalid("AMQP_BUFFER_MAX", "0", "at least 1 event"));
        }
        let t = &f.stt;
        let stt = SttConfig {
            provider: t.provider.unwrap_or(SttProvider::Embedded),
            model: t
                .model
                .clone()
                .unwrap_or_else(|| PathBuf::from("./models/ggml-base-q8_0.bin")),
            language: t.language.clone().unwrap_or_else(|| "en".to_owned()),
            workers: t.workers.unwrap_or(1),
            threads: t.threads.unwrap_or(0),
            partial_interval_ms: t.partial_interval_ms.unwrap_or(1000),
            end_silence_ms: t.end_silence_ms.unwrap_or(600),
            max_utterance_s: t.max_utterance_s.unwrap_or(20),
            queue_max: t.queue_max.unwrap_or(256),
            redact_pii: t.redact_pii.unwrap_or(false),
            redact_patterns: t.redact_patterns.clone().unwrap_or_default(),
            openai_url: t
                .openai_url
                .clone()
                .unwrap_or_else(|| "https://api.openai.com/v1".to_owned()),
            openai_api_key: t.openai_api_key.clone().filter(|k| !k.is_empty()),
            openai_model: t
                .openai_model
                .clone()
                .unwrap_or_else(|| "whisper-1".to_owned()),
            request_timeout_s: t.request_timeout_s.unwrap_or(30),
            deepgram_url: t
                .deepgram_url
                .clone()
                .unwrap_or_else(|| "wss://api.deepgram.com/v1/listen".to_owned()),
            deepgram_api_key: t.deepgram_api_key.clone().filter(|k| !k.is_empty()),
            deepgram_model: t
                .deepgram_model
                .clone()
                .unwrap_or_else(|| "nova-2".to_owned()),
        };
        let url = &stt.deepgram_url;
        if !(url.starts_with("ws://") || url.starts_with("wss://")) || url.len() < 8 {
            return Err(invalid(
                "STT_DEEPGRAM_URL",
                url.clone(),
                "a ws:// or wss:// URL",
            ));
        }
        let url = &stt.openai_url;
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
            return Err(invalid(
                "STT_OPENAI_URL",
                url.clone(),
                "an http:// or https:// URL",
            ));
        }
        if !(1..=600).contains(&stt.request_timeout_s) {
            let v = stt.request_timeout_s.to_string();
            return Err(invalid("STT_REQUEST_TIMEOUT", v, "1 to 600 seconds"));
        }
        if let Err(e) = crate::sink::stt::redact::Redactor::new(&stt.redact_patterns) {
            let allowed = format!("regular expressions ({e})");
            return Err(invalid(
                "STT_REDACT_PATTERNS",
                format!("{:?}", stt.redact_patterns),
                allowed,
            ));
        }
        if !(1..=64).contains(&stt.workers) {
            return Err(invalid("STT_WORKERS", stt.workers.to_string(), "1 to 64"));
        }
        if stt.threads > 64 {
            return Err(invalid(
                "STT_THREADS",
                stt.threads.to_string(),
                "0 (auto) to 64",
            ));
        }
        if !(1..=28).contains(&stt.max_utterance_s) {
            let v = stt.max_utterance_s.to_string();
            return Err(invalid(
                "STT_MAX_UTTERANCE_S",
                v,
                "1 to 28 seconds (Whisper hears 30 s)",
            ));
        }
        if !(100..=10_000).contains(&stt.end_silence_ms) {
            let v = stt.end_silence_ms.to_string();
            return Err(invalid("STT_END_SILENCE_MS", v, "100 to 10000 ms"));
        }
        if stt.queue_max == 0 {
            return Err(invalid("STT_QUEUE_MAX", "0", "at least 1 utterance"));
        }
        let language_ok = (2..=8).contains(&stt.language.len())
            && stt.language.bytes().all(|b| b.is_ascii_lowercase());
        if !language_ok {
            let allowed = "a Whisper language code such as en, de, es, or auto";
            return Err(invalid("STT_LANGUAGE", stt.language.clone(), allowed));
        }
        let auth = auth_config(&f.auth)?;
        let cluster = cluster_config(&f.cluster, &sip, &http)?;
        let upload = upload_config(&f.upload)?;
        Ok(Config {
            sip,
            http,
            media,
            recording,
            dataplane,
            amqp,
            cluster,
            upload,
            stt,
            auth,
            analytics: AnalyticsConfig {
                keywords: f
                    .analytics
                    .keywords
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|k| k.trim().to_owned())
                    .filter(|k| !k.is_empty())
                    .collect(),
            },
            log: LogConfig {
                pii: f.log.pii.unwrap_or(false),
            },
        })
    }

    /// The address we put in SDP and Contact: EXTERNAL_IP, else the SIP bind address when it is
    /// specific, else the address the request arrived on (`local`).
    pub fn advertised_ip(&self, local: IpAddr) -> IpAddr {
        if let Some(ip) = self.sip.external_ip {
            return ip;
        }
        if !self.sip.host.is_unspecified() {
            return self.sip.host;
        }
        local
    }
}

/// An optional path setting: an empty value (`KEY=` in the environment) means unset.
fn path_set(p: &Option<PathBuf>) -> Option<PathBuf> {
    p.clone().filter(|p| !p.as_os_str().is_empty())
}

/// Checks the JWT keys here, so a bad key file fails start-up, validate and reload alike.
fn auth_config(a: &FileAuth) -> Result<AuthConfig, ConfigError> {
    let nonempty = |s: &Option<String>| s.clone().filter(|v| !v.trim().is_empty());
    let jwt_secret = nonempty(&a.jwt_secret);
    if jwt_secret.as_ref().is_some_and(|s| s.len() < 32) {
        let allowed = "at least 32 bytes (RFC 7518 §3.2: an HS256 key of 256 bits or more)";
        return Err(invalid("AUTH_JWT_SECRET", "(hidden)", allowed));
    }
    let jwt_public_key_file = path_set(&a.jwt_public_key_file);
    if jwt_secret.is_some() && jwt_public_key_file.is_some() {
        let allowed = "either AUTH_JWT_SECRET or AUTH_JWT_PUBLIC_KEY_FILE, not both";
        return Err(invalid("AUTH_JWT_PUBLIC_KEY_FILE", "(both set)", allowed));
    }
    let jwt_public_key_pem = match &jwt_public_key_file {
        None => None,
        Some(path) => {
            let shown = path.display().to_string();
            let pem = std::fs::read(path).map_err(|e| {
                invalid(
                    "AUTH_JWT_PUBLIC_KEY_FILE",
                    shown.clone(),
                    format!("a readable file ({e})"),
                )
            })?;
            crate::api::auth::JwtKey::rs256_from_pem(&pem).map_err(|e| {
                let allowed = format!("an RSA public key or certificate in PEM ({e})");
                invalid("AUTH_JWT_PUBLIC_KEY_FILE", shown, allowed)
            })?;
            Some(pem)
        }
    };
    Ok(AuthConfig {
        api_keys: a
            .api_keys
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .collect(),
        jwt_secret,
        jwt_public_key_file,
        jwt_public_key_pem,
        jwt_issuer: nonempty(&a.jwt_issuer),
        jwt_audience: nonempty(&a.jwt_audience),
        jwt_leeway_s: a.jwt_leeway_s.unwrap_or(30),
        protect_reads: a.protect_reads.unwrap_or(false),
    })
}

fn upload_config(u: &FileUpload) -> Result<UploadConfig, ConfigError> {
    let endpoint = u.endpoint.clone().filter(|e| !e.is_empty());
    let bucket = u.bucket.clone().unwrap_or_default();
    let config = UploadConfig {
        endpoint: endpoint.map(|e| e.trim_end_matches('/').to_owned()),
        bucket,
        region: u.region.clone().unwrap_or_else(|| "us-east-1".to_owned()),
        access_key_id: u.access_key_id.clone().unwrap_or_default(),
        secret_access_key: u.secret_access_key.clone().unwrap_or_default(),
        prefix: u.prefix.clone().unwrap_or_default(),
        path_style: u.path_style.unwrap_or(true),
        part_size_mb: u.part_size_mb.unwrap_or(8),
        local_retention_s: u.local_retention_s,
        timeout_s: u.timeout_s.unwrap_or(30),
        max_mbps: u.max_mbps.unwrap_or(0),
    };
    let Some(endpoint) = &config.endpoint else {
        return Ok(config);
    };
    if crate::httpc::Endpoint::parse(endpoint).is_err() || endpoint.matches('/').count() > 2 {
        let allowed = "http(s)://host[:port] without a path";
        return Err(invalid("S3_ENDPOINT", endpoint.clone(), allowed));
    }
    // S3 bucket naming: 3–63 lower-case letters, digits, '-' and '.'.
    let b = &config.bucket;
    let bucket_ok = (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.');
    if !bucket_ok {
        return Err(invalid(
            "S3_BUCKET",
            b.clone(),
            "an S3 bucket name (3–63 a-z 0-9 - .)",
        ));
    }
    if config.access_key_id.is_empty() || config.secret_access_key.is_empty() {
        let allowed = "both S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY with S3_ENDPOINT";
        return Err(invalid("S3_ACCESS_KEY_ID", "(missing)", allowed));
    }
    // A part is read into memory whole: S3 allows up to 5 GiB, we take up to 512 MiB.
    if !(5..=512).contains(&config.part_size_mb) {
        let v = config.part_size_mb.to_string();
        return Err(invalid("S3_PART_SIZE_MB", v, "5 to 512"));
    }
    if config
        .local_retention_s
        .is_some_and(|s| s > 10 * 365 * 86_400)
    {
        let v = config.local_retention_s.unwrap_or(0).to_string();
        return Err(invalid(
            "S3_LOCAL_RETENTION",
            v,
            "at most ten years of seconds",
        ));
    }
    if !(1..=3600).contains(&config.timeout_s) {
        return Err(invalid(
            "S3_TIMEOUT",
            config.timeout_s.to_string(),
            "1 to 3600 seconds",
        ));
    }
    Ok(config)
}

/// `scheme://ip:port`, with IPv6 in brackets.
pub fn advertise_url_for(scheme: &str, ip: std::net::IpAddr, port: u16) -> String {
    match ip {
        std::net::IpAddr::V6(v6) => format!("{scheme}://[{v6}]:{port}"),
        v4 => format!("{scheme}://{v4}:{port}"),
    }
}

fn cluster_config(
    c: &FileCluster,
    sip: &SipConfig,
    http: &HttpConfig,
) -> Result<ClusterConfig, ConfigError> {
    let redis_url = c.redis_url.clone().filter(|u| !u.is_empty());
    if let Some(url) = &redis_url {
        let ok = ["redis://", "rediss://", "unix://", "redis+unix://"];
        if !ok.iter().any(|p| url.starts_with(p)) {
            let shown = url.split('@').next_back().unwrap_or("").to_owned();
            return Err(invalid("REDIS_URL", shown, "a redis:// or rediss:// URL"));
        }
    }
    let node_id = match c.node_id.clone().filter(|n| !n.is_empty()) {
        Some(id) => id,
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "siprec".to_owned()),
    };
    let id_ok = node_id.len() <= 128
        && node_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !id_ok {
        // No ':': it separates the parts of the node's Redis keys.
        let allowed = "up to 128 letters, digits, '-', '_' or '.'";
        return Err(invalid("CLUSTER_NODE_ID", node_id, allowed));
    }
    let key_prefix = c.key_prefix.clone().unwrap_or_else(|| "siprec".to_owned());
    if key_prefix.is_empty() || key_prefix.len() > 64 || key_prefix.contains(char::is_whitespace) {
        let allowed = "1 to 64 characters without spaces";
        return Err(invalid("CLUSTER_KEY_PREFIX", key_prefix, allowed));
    }
    let ttl_s = c.ttl_s.unwrap_or(10);
    // At least five heartbeats (and two Redis deadlines) per TTL, so a slow Redis round trip
    // never makes a live node flap.
    if !(5..=3600).contains(&ttl_s) {
        return Err(invalid(
            "CLUSTER_TTL",
            ttl_s.to_string(),
            "5 to 3600 seconds",
        ));
    }
    let advertise_url = match c.advertise_url.clone().filter(|u| !u.is_empty()) {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let scheme = if http.tls_cert_file.is_some() {
                "https"
            } else {
                "http"
            };
            // Unknown here (HTTP on every address, no EXTERNAL_IP): the binary fills in the
            // address of the default route at start (`advertise_url_for`).
            let ip = sip
                .external_ip
                .or(Some(http.host).filter(|h| !h.is_unspecified()));
            ip.map(|ip| advertise_url_for(scheme, ip, http.port))
                .unwrap_or_default()
        }
    };
    let bad_scheme =
        !advertise_url.starts_with("http://") && !advertise_url.starts_with("https://");
    if !advertise_url.is_empty() && bad_scheme {
        let allowed = "an http:// or https:// URL";
        return Err(invalid("CLUSTER_ADVERTISE_URL", advertise_url, allowed));
    }
    Ok(ClusterConfig {
        redis_url,
        node_id,
        advertise_url,
        key_prefix,
        ttl_s,
    })
}

fn invalid(key: &'static str, value: impl Into<String>, allowed: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.into(),
        allowed: allowed.into(),
    }
}

fn parse_ip(key: &'static str, value: &str) -> Result<IpAddr, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| invalid(key, value, "an IPv4 or IPv6 address"))
}

fn parse_bool(key: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(invalid(key, value, "true or false")),
    }
}

fn parse_num<T: std::str::FromStr>(
    key: &'static str,
    value: &str,
    allowed: &str,
) -> Result<T, ConfigError> {
    value
        .trim()
        .parse()
        .map_err(|_| invalid(key, value, allowed))
}

fn apply_override(f: &mut FileConfig, key: &'static str, v: &str) -> Result<(), ConfigError> {
    const PORT: &str = "a port 1-65535";
    const SECONDS: &str = "a whole number of seconds";
    const COUNT: &str = "a non-negative integer";
    match key {
        "SIP_HOST" => f.sip.host = Some(v.to_owned()),
        "PORTS" => {
            let ports = v
                .split(',')
                .map(|p| p.trim())
                .filter(|p| !p.is_empty())
                .map(|p| p.parse::<u16>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| invalid(key, v, "a comma-separated list of ports 1-65535"))?;
            f.sip.ports = Some(ports);
        }
        "EXTERNAL_IP" => f.sip.external_ip = Some(v.to_owned()),
        "SIP_REQUIRE_SIPREC" => f.sip.require_siprec = Some(parse_bool(key, v)?),
        "MAX_CONCURRENT_CALLS" => f.sip.max_concurrent_calls = Some(parse_num(key, v, COUNT)?),
        "DRAIN_TIMEOUT" => f.sip.drain_timeout_s = Some(parse_num(key, v, SECONDS)?),
        "SIP_ALLOWED_NETWORKS" => {
            let list: Vec<String> = v
                .split(',')
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
                .collect();
            f.sip.allowed_networks = Some(list);
        }
        "SIP_FLOOD_LIMIT" => f.sip.flood_limit = Some(parse_num(key, v, COUNT)?),
        "SIP_FLOOD_BLOCK" => f.sip.flood_block_s = Some(parse_num(key, v, SECONDS)?),
        "SIP_MAX_CALLS_PER_SOURCE" => f.sip.max_calls_per_source = Some(parse_num(key, v, COUNT)?),
        "SIP_ACL_ACTION" => {
            f.sip.acl_action = Some(match v.trim() {
                "reject" => AclAction::Reject,
                "drop" => AclAction::Drop,
                _ => return Err(invalid(key, v, "reject or drop")),
            });
        }
        "HTTP_HOST" => f.http.host = Some(v.to_owned()),
        "HTTP_PORT" => f.http.port = Some(parse_num(key, v, PORT)?),
        "API_KEY" => f.http.api_key = Some(v.to_owned()),
        "HTTP_RATE_LIMIT" => f.http.rate_limit_per_s = Some(parse_num(key, v, COUNT)?),
        "WS_MAX_CLIENTS" => f.http.ws_max_clients = Some(parse_num(key, v, COUNT)?),
        "WS_CLIENT_QUEUE" => f.http.ws_client_queue = Some(parse_num(key, v, COUNT)?),
        "HTTP_TLS_CERT_FILE" => f.http.tls_cert_file = Some(v.trim().into()),
        "HTTP_TLS_KEY_FILE" => f.http.tls_key_file = Some(v.trim().into()),
        "WS_SLOW_CLIENT" => {
            use crate::api::ws::SlowClient;
            f.http.ws_slow_client = Some(match v.trim() {
                "drop_oldest" => SlowClient::DropOldest,
                "disconnect" => SlowClient::Disconnect,
                _ => return Err(invalid(key, v, "drop_oldest or disconnect")),
            });
        }
        "RTP_PORT_MIN" => f.media.rtp_port_min = Some(parse_num(key, v, PORT)?),
        "RTP_PORT_MAX" => f.media.rtp_port_max = Some(parse_num(key, v, PORT)?),
        "RTP_TIMEOUT" => {
            let v = v.trim().trim_end_matches('s');
            f.media.rtp_timeout_s = Some(parse_num(key, v, SECONDS)?)
        }
        "RTP_PORT_COOLDOWN" => f.media.port_cooldown_s = Some(parse_num(key, v, SECONDS)?),
        "MAX_CALL_DURATION" => f.media.max_call_duration_s = Some(parse_num(key, v, SECONDS)?),
        "SIP_TLS_PORT" => f.sip.tls_port = Some(parse_num(key, v, PORT)?),
        "SIP_TLS_CERT_FILE" => f.sip.tls_cert_file = Some(v.trim().into()),
        "SIP_TLS_KEY_FILE" => f.sip.tls_key_file = Some(v.trim().into()),
        "SIP_TLS_CA_FILE" => f.sip.tls_ca_file = Some(v.trim().into()),
        "TAKEOVER_SOCKET" => f.sip.takeover_socket = Some(v.trim().into()),
        "SRTP_REQUIRED" => f.media.srtp_required = Some(parse_bool(key, v)?),
        "RECORDING_DIR" => f.recording.dir = Some(PathBuf::from(v)),
        "RECORDING_COMBINE_LEGS" => f.recording.combine_legs = Some(parse_bool(key, v)?),
        "RECORDING_FSYNC" => {
            let policy = match v.trim() {
                "never" => FsyncPolicy::Never,
                "periodic" => FsyncPolicy::Periodic,
                "on_close" => FsyncPolicy::OnClose,
                _ => return Err(invalid(key, v, "never, periodic or on_close")),
            };
            f.recording.fsync = Some(policy);
        }
        "RECORDING_FORMAT" => {
            let format =
                AudioFormat::parse(v.trim()).ok_or_else(|| invalid(key, v, "wav, flac or opus"))?;
            f.recording.format = Some(format);
        }
        "RECORDING_OPUS_BITRATE" => f.recording.opus_bitrate = Some(parse_num(key, v, COUNT)?),
        "RECORDING_ENCRYPTION_KEY_FILE" => f.recording.encryption_key_file = Some(v.trim().into()),
        "RECORDING_MIN_FREE_MB" => f.recording.min_free_mb = Some(parse_num(key, v, COUNT)?),
        "DATAPLANE_BACKEND" => {
            use crate::dataplane::BackendChoice;
            let choice = match v.trim() {
                "auto" => BackendChoice::Auto,
                "io_uring" => BackendChoice::IoUring,
                "epoll" => BackendChoice::Epoll,
                "af_xdp" => BackendChoice::AfXdp,
                _ => return Err(invalid(key, v, "auto, io_uring, epoll or af_xdp")),
            };
            f.dataplane.backend = Some(choice);
        }
        "DATAPLANE_WORKERS" => f.dataplane.workers = Some(parse_num(key, v, COUNT)?),
        "DATAPLANE_RING_SLOTS" => f.dataplane.ring_slots = Some(parse_num(key, v, COUNT)?),
        "DATAPLANE_BATCH_SIZE" => f.dataplane.batch_size = Some(parse_num(key, v, COUNT)?),
        "DATAPLANE_SQPOLL" => f.dataplane.sqpoll = Some(parse_bool(key, v)?),
        "DATAPLANE_COALESCE_US" => f.dataplane.coalesce_us = Some(parse_num(key, v, COUNT)?),
        "DATAPLANE_XDP_INTERFACE" => f.dataplane.xdp_interface = Some(v.trim().to_owned()),
        "DATAPLANE_XDP_ZEROCOPY" => f.dataplane.xdp_zerocopy = Some(parse_bool(key, v)?),
        "ENABLE_REALTIME_AMQP" => f.amqp.enabled = Some(parse_bool(key, v)?),
        "AMQP_URL" => f.amqp.url = Some(v.trim().to_owned()),
        "AMQP_TLS_CA_FILE" => f.amqp.tls_ca_file = Some(v.trim().into()),
        "AMQP_SPOOL_DIR" => f.amqp.spool_dir = Some(v.trim().into()),
        "AMQP_SPOOL_MAX_MB" => f.amqp.spool_max_mb = Some(parse_num(key, v, COUNT)?),
        "AMQP_EXCHANGE" => f.amqp.exchange = Some(v.trim().to_owned()),
        "AMQP_BUFFER_MAX" => f.amqp.buffer_max = Some(parse_num(key, v, COUNT)?),
        "PUBLISH_CALL_EVENTS" => f.amqp.publish_call_events = Some(parse_bool(key, v)?),
        "PUBLISH_PARTIAL_TRANSCRIPTS" => {
            f.amqp.publish_partial_transcripts = Some(parse_bool(key, v)?)
        }
        "PUBLISH_FINAL_TRANSCRIPTS" => f.amqp.publish_final_transcripts = Some(parse_bool(key, v)?),
        "PUBLISH_SENTIMENT_UPDATES" => f.amqp.publish_sentiment_updates = Some(parse_bool(key, v)?),
        "PUBLISH_KEYWORD_DETECTIONS" => {
            f.amqp.publish_keyword_detections = Some(parse_bool(key, v)?)
        }
        "PUBLISH_SPEAKER_CHANGES" => f.amqp.publish_speaker_changes = Some(parse_bool(key, v)?),
        "PUBLISH_ANALYTICS" => f.amqp.publish_analytics = Some(parse_bool(key, v)?),
        "REDIS_URL" => f.cluster.redis_url = Some(v.trim().to_owned()),
        "CLUSTER_NODE_ID" => f.cluster.node_id = Some(v.trim().to_owned()),
        "CLUSTER_ADVERTISE_URL" => f.cluster.advertise_url = Some(v.trim().to_owned()),
        "CLUSTER_KEY_PREFIX" => f.cluster.key_prefix = Some(v.trim().to_owned()),
        "CLUSTER_TTL" => f.cluster.ttl_s = Some(parse_num(key, v, SECONDS)?),
        "S3_ENDPOINT" => f.upload.endpoint = Some(v.trim().to_owned()),
        "S3_BUCKET" => f.upload.bucket = Some(v.trim().to_owned()),
        "S3_REGION" => f.upload.region = Some(v.trim().to_owned()),
        "S3_ACCESS_KEY_ID" => f.upload.access_key_id = Some(v.trim().to_owned()),
        "S3_SECRET_ACCESS_KEY" => f.upload.secret_access_key = Some(v.trim().to_owned()),
        "S3_PREFIX" => f.upload.prefix = Some(v.trim().to_owned()),
        "S3_PATH_STYLE" => f.upload.path_style = Some(parse_bool(key, v)?),
        "S3_PART_SIZE_MB" => f.upload.part_size_mb = Some(parse_num(key, v, COUNT)?),
        "S3_LOCAL_RETENTION" => f.upload.local_retention_s = Some(parse_num(key, v, SECONDS)?),
        "S3_TIMEOUT" => f.upload.timeout_s = Some(parse_num(key, v, SECONDS)?),
        "S3_MAX_MBPS" => f.upload.max_mbps = Some(parse_num(key, v, COUNT)?),
        "STT_PROVIDER" => {
            f.stt.provider = Some(match v.trim() {
                "embedded" | "whisper" => SttProvider::Embedded,
                "openai" => SttProvider::Openai,
                "deepgram" => SttProvider::Deepgram,
                "none" | "" => SttProvider::None,
                _ => return Err(invalid(key, v, "embedded, openai, deepgram or none")),
            })
        }
        "STT_MODEL" => f.stt.model = Some(PathBuf::from(v.trim())),
        "STT_LANGUAGE" => f.stt.language = Some(v.trim().to_owned()),
        "STT_WORKERS" => f.stt.workers = Some(parse_num(key, v, COUNT)?),
        "STT_THREADS" => f.stt.threads = Some(parse_num(key, v, COUNT)?),
        "STT_PARTIAL_INTERVAL_MS" => f.stt.partial_interval_ms = Some(parse_num(key, v, COUNT)?),
        "STT_END_SILENCE_MS" => f.stt.end_silence_ms = Some(parse_num(key, v, COUNT)?),
        "STT_MAX_UTTERANCE_S" => f.stt.max_utterance_s = Some(parse_num(key, v, SECONDS)?),
        "STT_QUEUE_MAX" => f.stt.queue_max = Some(parse_num(key, v, COUNT)?),
        "STT_REDACT_PII" => f.stt.redact_pii = Some(parse_bool(key, v)?),
        "STT_OPENAI_URL" => f.stt.openai_url = Some(v.trim().to_owned()),
        "STT_DEEPGRAM_URL" => f.stt.deepgram_url = Some(v.trim().to_owned()),
        "STT_DEEPGRAM_API_KEY" => f.stt.deepgram_api_key = Some(v.trim().to_owned()),
        "STT_DEEPGRAM_MODEL" => f.stt.deepgram_model = Some(v.trim().to_owned()),
        "LOG_PII" => f.log.pii = Some(parse_bool(key, v)?),
        "ANALYTICS_KEYWORDS" => {
            f.analytics.keywords = Some(v.split(',').map(|k| k.trim().to_owned()).collect())
        }
        "API_KEYS" => f.auth.api_keys = Some(v.split(',').map(|k| k.trim().to_owned()).collect()),
        "AUTH_JWT_SECRET" => f.auth.jwt_secret = Some(v.to_owned()),
        "AUTH_JWT_PUBLIC_KEY_FILE" => f.auth.jwt_public_key_file = Some(v.trim().into()),
        "AUTH_JWT_ISSUER" => f.auth.jwt_issuer = Some(v.trim().to_owned()),
        "AUTH_JWT_AUDIENCE" => f.auth.jwt_audience = Some(v.trim().to_owned()),
        "AUTH_JWT_LEEWAY" => f.auth.jwt_leeway_s = Some(parse_num(key, v, SECONDS)?),
        "AUTH_PROTECT_READS" => f.auth.protect_reads = Some(parse_bool(key, v)?),
        "STT_OPENAI_API_KEY" => f.stt.openai_api_key = Some(v.trim().to_owned()),
        "STT_OPENAI_MODEL" => f.stt.openai_model = Some(v.trim().to_owned()),
        "STT_REQUEST_TIMEOUT" => {
            let v = v.trim().trim_end_matches('s');
            f.stt.request_timeout_s = Some(parse_num(key, v, SECONDS)?)
        }
        "STT_REDACT_PATTERNS" => {
            let patterns: Vec<String> = serde_json::from_str(v)
                .map_err(|_| invalid(key, v, r#"a JSON array of strings, e.g. ["ACC-\d{6}"]"#))?;
            f.stt.redact_patterns = Some(patterns);
        }
        _ => return Err(invalid(key, v, "a known configuration key")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No file, no env, no flags: the embedded defaults (5060, 8080, ./recordings).
    #[test]
    fn defaults() {
        let c = Config::build(FileConfig::default(), &[]).unwrap();
        assert_eq!(c.sip.ports, vec![5060]);
        assert_eq!(c.http.port, 8080);
        assert_eq!(c.recording.dir, PathBuf::from("./recordings"));
        assert!(c.recording.combine_legs);
        assert_eq!(c.media.rtp_timeout_s, 30);
    }

    /// The file sets a value, env overrides it, a later (CLI) override wins over env.
    #[test]
    fn layering_file_env_cli() {
        let file: FileConfig =
            toml::from_str("[http]\nport = 9000\n[sip]\nports = [5070]").unwrap();
        let c = Config::build(file.clone(), &[]).unwrap();
        assert_eq!((c.http.port, c.sip.ports.clone()), (9000, vec![5070]));
        let env = [
            ("HTTP_PORT", "9100".to_owned()),
            ("PORTS", "5080, 5081".to_owned()),
        ];
        let c = Config::build(file.clone(), &env).unwrap();
        assert_eq!((c.http.port, c.sip.ports.clone()), (9100, vec![5080, 5081]));
        let both = [env[0].clone(), ("HTTP_PORT", "9200".to_owned())];
        assert_eq!(Config::build(file, &both).unwrap().http.port, 9200);
    }

    /// Each bad value names the key, echoes the value and says what is allowed.
    #[test]
    fn errors_name_key_value_and_allowed() {
        let cases = [
            ("HTTP_PORT", "http", "a port 1-65535"),
            ("RTP_PORT_MIN", "10001", "an even port"),
            ("PORTS", "5060,x", "comma-separated"),
            ("RECORDING_COMBINE_LEGS", "maybe", "true or false"),
            ("RECORDING_FORMAT", "mp3", "wav, flac or opus"),
            ("RECORDING_OPUS_BITRATE", "500", "6000 to 256000 bit/s"),
            ("SIP_HOST", "256.1.1.1", "IPv4 or IPv6"),
            ("RTP_TIMEOUT", "0", "seconds"),
        ];
        for (key, value, allowed) in cases {
            let err = Config::build(FileConfig::default(), &[(key, value.to_owned())])
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{err}");
            assert!(err.contains(value), "{err}");
            assert!(err.contains(allowed), "{err}");
        }
    }

    /// docs/configuration.md documents every key: each environment name, and each file key as
    /// a `key = …` line inside its `[section]` of the reference file there.
    #[test]
    fn every_key_is_documented() {
        let doc = include_str!("../../docs/configuration.md");
        let mut sections: std::collections::HashMap<&str, Vec<&str>> = Default::default();
        let mut current = "";
        for line in doc.lines() {
            let t = line.trim_start();
            if let Some(rest) = t.strip_prefix('[') {
                current = rest.split(']').next().unwrap_or("");
            } else if let Some((key, _)) = t.split_once(" =") {
                sections.entry(current).or_default().push(key.trim());
            }
        }
        for (env, file_key) in OVERRIDE_KEYS {
            assert!(doc.contains(env), "{env} is not in docs/configuration.md");
            let (section, key) = file_key.split_once('.').unwrap();
            let documented = sections
                .get(section)
                .is_some_and(|keys| keys.contains(&key));
            assert!(
                documented,
                "{file_key} ({env}) has no `{key} = …` line under [{section}]"
            );
        }
    }

    /// JWT settings are checked when built: short HS256 secrets, both key kinds at once, and
    /// an unreadable or non-RSA key file are refused, naming the key and never the secret.
    #[test]
    fn auth_keys_are_checked() {
        let build = |pairs: &[(&'static str, &str)]| {
            let env: Vec<_> = pairs.iter().map(|(k, v)| (*k, v.to_string())).collect();
            Config::build(FileConfig::default(), &env).map_err(|e| e.to_string())
        };
        let err = build(&[("AUTH_JWT_SECRET", "short-secret")]).unwrap_err();
        assert!(
            err.contains("AUTH_JWT_SECRET") && !err.contains("short-secret"),
            "{err}"
        );
        let long = "0123456789abcdef0123456789abcdef";
        let c = build(&[("AUTH_JWT_SECRET", long), ("API_KEYS", "a, ,b")]).unwrap();
        assert_eq!(c.auth.api_keys, ["a", "b"]);
        assert!(!serde_json::to_string(&c).unwrap().contains(long));
        let err = build(&[
            ("AUTH_JWT_SECRET", long),
            ("AUTH_JWT_PUBLIC_KEY_FILE", "/x"),
        ]);
        assert!(err.unwrap_err().contains("not both"));
        let err = build(&[("AUTH_JWT_PUBLIC_KEY_FILE", "/nonexistent/key.pem")]).unwrap_err();
        assert!(
            err.contains("/nonexistent/key.pem") && err.contains("readable"),
            "{err}"
        );
        let err = build(&[("AUTH_JWT_PUBLIC_KEY_FILE", "Cargo.toml")]).unwrap_err();
        assert!(err.contains("PEM"), "{err}");
    }

    /// RTP_PORT_MAX must be above RTP_PORT_MIN, and SIP ports may not sit inside the range.
    #[test]
    fn cross_field_checks() {
        let o = [
            ("RTP_PORT_MIN", "20000".to_owned()),
            ("RTP_PORT_MAX", "10000".to_owned()),
        ];
        assert!(Config::build(FileConfig::default(), &o)
            .unwrap_err()
            .to_string()
            .contains("RTP_PORT_MAX"));
        let o = [("PORTS", "15000".to_owned())];
        assert!(Config::build(FileConfig::default(), &o)
            .unwrap_err()
            .to_string()
            .contains("PORTS"));
    }

    /// A typo in the file is an error, not a silently ignored key.
    #[test]
    fn unknown_file_key_rejected() {
        assert!(toml::from_str::<FileConfig>("[sip]\nprots = [5060]").is_err());
    }
}
