//! The command line of `siprecctl`, alone in its file so `build.rs` can include it to
//! generate the shell completions and the man page at build time.

use clap::{Parser, Subcommand};

/// Operator CLI for a running siprec server (talks to its HTTP API).
#[derive(Parser, Debug)]
#[command(name = "siprecctl", version)]
pub struct Cli {
    /// HTTP API address (host:port) or URL; https://… speaks TLS (hostname or IP checked).
    #[arg(
        long,
        global = true,
        default_value = "127.0.0.1:8080",
        env = "SIPRECCTL_URL"
    )]
    pub url: String,
    /// API key for mutating commands (sent as X-API-Key).
    #[arg(long, global = true, env = "SIPRECCTL_API_KEY")]
    pub api_key: Option<String>,
    /// JWT sent as Authorization: Bearer (and as ?token= on WebSockets).
    #[arg(long, global = true, env = "SIPRECCTL_TOKEN")]
    pub token: Option<String>,
    /// PEM file of the CA (or self-signed certificate) to trust for https:// instead of the
    /// system's roots.
    #[arg(long, global = true, env = "SIPRECCTL_CACERT")]
    pub cacert: Option<std::path::PathBuf>,
    /// Print the server's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Version, uptime, backend and process figures (GET /status).
    Status,
    /// Aggregated health checks (GET /health); exit 1 when unhealthy.
    Health,
    /// Liveness (GET /health/live).
    Live,
    /// Readiness (GET /health/ready); exit 1 when not ready.
    Ready,
    /// Recording sessions.
    Sessions {
        #[command(subcommand)]
        action: SessionsAction,
    },
    /// Pause recording and/or transcription of one call (or --all).
    Pause {
        /// Call-ID (omit with --all).
        call_id: Option<String>,
        #[arg(long)]
        all: bool,
        /// Pause only the recording (default: both).
        #[arg(long)]
        recording: bool,
        /// Pause only the transcription (default: both).
        #[arg(long)]
        transcription: bool,
        /// Resume by itself after this many seconds.
        #[arg(long, value_name = "SECONDS")]
        resume_after: Option<f64>,
    },
    /// Resume one call (or --all).
    Resume {
        call_id: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Configuration of the running server.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// GDPR export and erase of one call's recordings.
    Gdpr {
        #[command(subcommand)]
        action: GdprAction,
    },
    /// Follow live call events (WebSocket /ws/transcriptions, or /ws/analytics), one line
    /// each; --token (or else the API key) is sent as the token.
    Events {
        /// Only this call's events.
        #[arg(long)]
        call_id: Option<String>,
        /// The analytics feed (adds talk-time snapshots).
        #[arg(long)]
        analytics: bool,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<usize>,
    },
    /// STT jobs: transcribe recordings already on disk (/api/stt/*).
    Stt {
        #[command(subcommand)]
        action: SttAction,
    },
    /// Print the shell completion script (generated at build time).
    Completions {
        #[arg(value_parser = ["bash", "zsh", "fish"])]
        shell: String,
    },
    /// Print the man page (roff, generated at build time): `siprecctl man | man -l -`.
    Man,
    /// Decrypt a recording encrypted at rest (`*.enc`) into a playable file; offline, no
    /// server needed. Exit 1 on a wrong key or an altered file.
    Decrypt {
        /// The encrypted file (e.g. 1.wav.enc).
        input: std::path::PathBuf,
        /// Where to write (must not exist); default: the input without `.enc`.
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
        /// The key file the server uses (`<key-id> <64 hex digits>` lines).
        #[arg(long, env = "RECORDING_ENCRYPTION_KEY_FILE")]
        key_file: std::path::PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigAction {
    /// The running configuration (no secrets).
    Show,
    /// Validate a TOML configuration file on the server (as the server would read it).
    Validate { file: std::path::PathBuf },
    /// Re-read the configuration file and environment; prints what needs a restart.
    Reload,
}

#[derive(Subcommand, Debug)]
pub enum SttAction {
    /// Queue a recording (a WAV under the server's RECORDING_DIR; relative paths from it).
    Submit {
        audio_path: String,
        #[arg(long)]
        call_id: Option<String>,
        #[arg(long)]
        session_id: Option<String>,
        /// e.g. en, en-US, auto (default: the server's STT_LANGUAGE).
        #[arg(long)]
        language: Option<String>,
        /// Higher runs first (default 0).
        #[arg(long)]
        priority: Option<i64>,
    },
    /// Jobs, newest first.
    Jobs {
        /// queued, running, completed, failed or all.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// One job, with its transcript when done.
    Job { job_id: String },
    /// Queue depth and counters.
    Stats,
    /// Per-provider processing metrics.
    Metrics,
    /// Drop every queued job.
    Purge,
}

#[derive(Subcommand, Debug)]
pub enum GdprAction {
    /// Archive every file of the call into the server's export directory.
    Export { call_id: String },
    /// Erase every file of the call (recordings, session.json, exports).
    Erase { call_id: String },
}

#[derive(Subcommand, Debug)]
pub enum SessionsAction {
    /// Active sessions.
    List {
        /// Every live node's sessions, from the cluster registry (needs REDIS_URL).
        #[arg(long)]
        cluster: bool,
    },
    /// One session by Call-ID.
    Show { call_id: String },
    /// End a recording (the server sends BYE; in a cluster, any node forwards it).
    Stop { call_id: String },
    /// Aggregate counters.
    Stats {
        /// Summed over every live node of the cluster.
        #[arg(long)]
        cluster: bool,
    },
}
