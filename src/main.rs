//! `siprec`: the SIPREC recording server. Wiring only: configuration, threads, CPU placement,
//! sockets of the control plane, signals. Everything with logic lives in the library.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;

use siprec::api::{self, ApiState, MetricsSnapshot, RecorderTotals, SipCounters, Snapshot};
use siprec::config::{self, Config, FileConfig, Override};
use siprec::dataplane::{self, Dataplane, DataplaneSettings, StreamSockets};
use siprec::proto::pii::{self, Pii};
use siprec::session::{
    self, ports::PortPool, Action, MediaPorts, Now, SessionConfig, SessionManager,
};
use siprec::sink::recorder::{self, RecorderCommand, RecorderConfig};
use siprec::sink::stt::{self, SttCommand, SttHandle};
use siprec::sip::pike::{Pike, Verdict};
use siprec::sip::{self, Message, Peer, TransactionLayer, Transport, TsxConfig};
use siprec::takeover::{self, link::Link, Frame, Listener, ListenerKind};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// SIPREC (RFC 7865/7866) session recording server.
///
/// Configuration is read from the TOML file given with --config, then from environment
/// variables (SIP_HOST, PORTS, EXTERNAL_IP, HTTP_PORT, RECORDING_DIR, RTP_PORT_MIN,
/// RTP_PORT_MAX, MAX_CONCURRENT_CALLS, RTP_TIMEOUT, RECORDING_COMBINE_LEGS, API_KEY, ...),
/// then from these flags; later wins. With none of them it runs on embedded defaults.
#[derive(Parser, Debug)]
#[command(name = "siprec", version, about, long_about)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, short = 'c', value_name = "PATH", global = true)]
    config: Option<PathBuf>,
    /// Address for SIP sockets (SIP_HOST).
    #[arg(long)]
    sip_host: Option<String>,
    /// Comma-separated SIP ports, each on UDP and TCP (PORTS).
    #[arg(long)]
    ports: Option<String>,
    /// Address to advertise in SDP and Contact behind NAT (EXTERNAL_IP).
    #[arg(long)]
    external_ip: Option<String>,
    /// HTTP API port (HTTP_PORT).
    #[arg(long)]
    http_port: Option<String>,
    /// Recording root directory (RECORDING_DIR).
    #[arg(long)]
    recording_dir: Option<String>,
    /// First RTP port, even (RTP_PORT_MIN).
    #[arg(long)]
    rtp_port_min: Option<String>,
    /// Last RTP port (RTP_PORT_MAX).
    #[arg(long)]
    rtp_port_max: Option<String>,
    /// Concurrent calls before 503 (MAX_CONCURRENT_CALLS).
    #[arg(long)]
    max_concurrent_calls: Option<String>,
    /// Seconds without RTP before we hang up (RTP_TIMEOUT).
    #[arg(long)]
    rtp_timeout: Option<String>,
    /// Receive workers, 0 = auto (DATAPLANE_WORKERS).
    #[arg(long)]
    workers: Option<String>,
    /// Log filter, e.g. info or siprec=debug (RUST_LOG wins when set).
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Take over the listening sockets of the server running with this configuration (at its
    /// TAKEOVER_SOCKET) instead of binding them; it drains and exits (docs/operations.md).
    /// SIGUSR2 makes a running server start its successor this way.
    #[arg(long)]
    takeover: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigAction {
    /// Validates FILE (with the environment and flags applied) and prints the result.
    Validate { file: PathBuf },
}

impl Cli {
    fn overrides(&self) -> Vec<Override> {
        let mut o = config::env_overrides();
        o.extend(self.flag_overrides());
        o
    }

    /// Overrides given as flags (they win over the environment, also on reload).
    fn flag_overrides(&self) -> Vec<Override> {
        let mut o = Vec::new();
        let flags: [(&'static str, &Option<String>); 10] = [
            ("SIP_HOST", &self.sip_host),
            ("PORTS", &self.ports),
            ("EXTERNAL_IP", &self.external_ip),
            ("HTTP_PORT", &self.http_port),
            ("RECORDING_DIR", &self.recording_dir),
            ("RTP_PORT_MIN", &self.rtp_port_min),
            ("RTP_PORT_MAX", &self.rtp_port_max),
            ("MAX_CONCURRENT_CALLS", &self.max_concurrent_calls),
            ("RTP_TIMEOUT", &self.rtp_timeout),
            ("DATAPLANE_WORKERS", &self.workers),
        ];
        for (key, value) in flags {
            if let Some(v) = value {
                o.push((key, v.clone()));
            }
        }
        o
    }
}

fn load_config(
    file: Option<&PathBuf>,
    overrides: &[Override],
) -> Result<Config, config::ConfigError> {
    let f = match file {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    Config::build(f, overrides)
}

fn main() {
    let cli = Cli::parse();
    if let Some(Command::Config {
        action: ConfigAction::Validate { file },
    }) = &cli.command
    {
        match load_config(Some(file), &cli.overrides()) {
            Ok(c) => {
                println!("{}: valid", file.display());
                println!("{}", serde_json::to_string_pretty(&c).unwrap_or_default());
                std::process::exit(0);
            }
            Err(e) => {
                eprintln!("{}: invalid: {e}", file.display());
                std::process::exit(2);
            }
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log_level));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = match load_config(cli.config.as_ref(), &cli.overrides()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("siprec: configuration error: {e}");
            std::process::exit(2);
        }
    };
    let source = ConfigSource {
        file: cli.config.clone(),
        flags: cli.flag_overrides(),
    };
    let lifecycle = Lifecycle {
        // Resolved now: after a package upgrade the path names the new binary, while
        // /proc/self/exe would name the deleted old one.
        exe: std::env::current_exe().ok(),
        args: std::env::args_os()
            .skip(1)
            .filter(|a| a != "--takeover")
            .collect(),
        takeover: cli.takeover,
    };
    if let Err(e) = run(config, source, lifecycle) {
        eprintln!("siprec: {e:#}");
        std::process::exit(1);
    }
}

/// Where the configuration came from, so a reload (API or SIGHUP) reads it the same way.
struct ConfigSource {
    file: Option<PathBuf>,
    flags: Vec<Override>,
}

impl ConfigSource {
    fn load(&self) -> Result<Config, config::ConfigError> {
        let mut overrides = config::env_overrides();
        overrides.extend(self.flags.iter().cloned());
        load_config(self.file.as_ref(), &overrides)
    }
}

/// How this process was started, to start a successor the same way (SIGUSR2).
struct Lifecycle {
    exe: Option<PathBuf>,
    args: Vec<std::ffi::OsString>,
    /// `--takeover`: take the listening sockets of the running server.
    takeover: bool,
}

fn run(config: Config, source: ConfigSource, lifecycle: Lifecycle) -> anyhow::Result<()> {
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "siprec starting");
    // Personal data in logs shows as hashes salted per process (LOG_PII=true shows it).
    let mut salt = [0u8; 8];
    os_random(&mut salt);
    pii::configure(config.log.pii, u64::from_le_bytes(salt));
    std::fs::create_dir_all(&config.recording.dir).with_context(|| {
        format!(
            "cannot create RECORDING_DIR {}",
            config.recording.dir.display()
        )
    })?;

    let takeover_path = config.sip.takeover_socket.clone().unwrap_or_else(|| {
        let runtime = std::env::var_os("RUNTIME_DIRECTORY").map(PathBuf::from);
        takeover::default_socket_path(&config.recording.dir, runtime.as_deref())
    });
    let inherited = if lifecycle.takeover {
        match takeover::link::connect(&takeover_path, Duration::from_secs(10)) {
            Ok(inherited) => {
                tracing::info!(
                    predecessor = inherited.hello.pid,
                    version = %inherited.hello.version,
                    sockets = inherited.hello.listeners.len(),
                    "takeover: received the running server's listening sockets"
                );
                Some(inherited)
            }
            // Nothing listens there: no server runs, so this one starts on its own.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                tracing::warn!(
                    path = %takeover_path.display(), error = %e,
                    "takeover: no running server answered; starting on our own"
                );
                None
            }
            // A server may run (busy with another takeover, not ours to talk to, ...):
            // starting anyway would fight it for its sockets and its recordings.
            Err(e) => anyhow::bail!(
                "takeover: the server at {} did not hand over: {e}",
                takeover_path.display()
            ),
        }
    } else {
        None
    };

    let nofile = dataplane::raise_nofile_limit();
    tracing::debug!(nofile, "open file limit");
    let stt_wanted = config.stt.provider != config::SttProvider::None;
    let (workers, cores) = dataplane::plan_workers(config.dataplane.workers, stt_wanted);
    let stt_cores = dataplane::spare_cores(&cores);
    let mut producers = Vec::with_capacity(workers);
    let mut consumers = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (p, c) = siprec::ring::channel_filled(
            config.dataplane.ring_slots,
            siprec::media::MediaFrame::empty(),
        );
        producers.push(p);
        consumers.push(c);
    }
    let recorder_config = RecorderConfig {
        combine_legs: config.recording.combine_legs,
        commit_delay_ms: 300,
        header_patch_interval_ms: 1000,
        fsync: config.recording.fsync,
        format: config.recording.format,
        opus_bitrate: config.recording.opus_bitrate,
        // Checked when the configuration was built; read again here.
        encryption: match &config.recording.encryption_key_file {
            Some(path) => Some(Arc::new(
                recorder::Keyring::load(path).map_err(|e| anyhow::anyhow!(e))?,
            )),
            None => None,
        },
    };
    let (recorder, recorder_thread) =
        recorder::spawn(recorder_config, consumers, recorder::SystemMonotonicClock)
            .context("cannot start the recorder thread")?;
    let (stt, stt_producers, stt_error, stt_jobs) = start_stt(&config, workers, &stt_cores);
    let outputs = producers
        .into_iter()
        .zip(stt_producers)
        .map(|(recorder, stt)| dataplane::Outputs { recorder, stt })
        .collect();
    let settings = DataplaneSettings {
        backend: config.dataplane.backend,
        workers,
        batch_size: config.dataplane.batch_size,
        cores,
        sqpoll: config.dataplane.sqpoll,
        coalesce: Duration::from_micros(u64::from(config.dataplane.coalesce_us)),
        xdp: config.dataplane.xdp_interface.clone().map(|interface| {
            dataplane::xdp::XdpSettings {
                interface,
                zerocopy: config.dataplane.xdp_zerocopy,
                port_min: config.media.rtp_port_min,
                port_max: config.media.rtp_port_max,
                // SIP_HOST when it names one; else every address of the interface.
                address: Some(config.sip.host).filter(|h| !h.is_unspecified()),
            }
        }),
    };
    let dataplane = Dataplane::start(settings, outputs).context("cannot start data plane")?;
    let budget = dataplane::memory_budget_bytes(
        workers,
        config.dataplane.ring_slots,
        dataplane.backend(),
        stt.is_some(),
    );
    tracing::info!(
        workers,
        backend = dataplane.backend(),
        fixed_memory_mib = budget / (1024 * 1024),
        "data plane started"
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot build the control-plane runtime")?;
    let stt_state = SttState {
        handle: stt,
        error: stt_error,
        jobs: stt_jobs,
    };
    let process = Process {
        lifecycle,
        takeover_path,
        inherited,
    };
    let result = runtime.block_on(control_plane(
        config, source, dataplane, recorder, &stt_state, process,
    ));
    let stt = stt_state.handle;
    if let Err(e) = recorder_thread.join() {
        tracing::error!(?e, "recorder thread panicked");
    }
    if let Some(stt) = stt {
        stt.shutdown();
    }
    result
}

/// Finishes recordings a crash left unfinished: headers repaired, session.json marked
/// `interrupted`.
fn recover_interrupted(root: &std::path::Path) {
    log_recovered(&recorder::recover(
        root,
        &siprec::proto::rfc3339_ms(now().unix_ms),
    ));
}

fn log_recovered(recovered: &[recorder::Recovered]) {
    for r in recovered {
        let (dir, files) = (Pii(r.dir.display()), r.files.len());
        tracing::warn!(%dir, files, headers_repaired = r.repaired,
            "interrupted recording finished (session.json marked interrupted)");
    }
}

/// The process's place in a takeover (src/takeover).
struct Process {
    lifecycle: Lifecycle,
    takeover_path: PathBuf,
    /// Sockets taken from a running predecessor (`--takeover`).
    inherited: Option<takeover::link::Inherited>,
}

/// Live transcription as the control plane sees it.
struct SttState {
    handle: Option<SttHandle>,
    /// Why the configured provider is not running.
    error: Option<String>,
    /// The STT jobs queue (`/api/stt/*`); open even when no engine runs, so jobs can be
    /// listed and wait for one.
    jobs: Option<Arc<stt::jobs::Jobs>>,
}

type SttRings = Vec<Option<siprec::ring::Producer<siprec::media::MediaFrame>>>;

/// Starts live transcription when a provider is configured and usable, with one STT ring per
/// data-plane worker. A missing or broken model is logged (with the command that installs
/// it) and the server records without transcription; the error is also in /health.
fn start_stt(
    config: &Config,
    workers: usize,
    cores: &[usize],
) -> (
    Option<SttHandle>,
    SttRings,
    Option<String>,
    Option<Arc<stt::jobs::Jobs>>,
) {
    let none = || (0..workers).map(|_| None).collect();
    let open_jobs = |provider: Result<&'static str, String>| {
        let root = &config.recording.dir;
        match stt::jobs::Jobs::open(root, provider, &config.stt.language) {
            Ok(jobs) => Some(Arc::new(jobs)),
            Err(e) => {
                tracing::error!(error = %e, "cannot open the STT job queue under RECORDING_DIR");
                None
            }
        }
    };
    if config.stt.provider == config::SttProvider::None {
        tracing::info!("live transcription off (STT_PROVIDER=none)");
        let jobs = open_jobs(Err("STT_PROVIDER=none".into()));
        return (None, none(), None, jobs);
    }
    let threads = match config.stt.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
        n => n,
    };
    let s = &config.stt;
    let model = match s.provider {
        config::SttProvider::Embedded => {
            match stt::engine::WhisperModel::load(&s.model, &s.language, threads) {
                Ok(model) => Some(model),
                Err(e) => {
                    let why = "live transcription unavailable; recording continues";
                    tracing::error!(error = %e, "{why}");
                    let jobs = open_jobs(Err(e.to_string()));
                    return (None, none(), Some(e.to_string()), jobs);
                }
            }
        }
        _ => None,
    };
    let openai = stt::openai::OpenAiConfig {
        url: s.openai_url.clone(),
        api_key: s.openai_api_key.clone(),
        model: s.openai_model.clone(),
        timeout: Duration::from_secs(u64::from(s.request_timeout_s)),
        language: s.language.clone(),
    };
    // Patterns were checked when the configuration was built.
    let redactor = config
        .stt
        .redact_pii
        .then(|| stt::redact::Redactor::new(&config.stt.redact_patterns).ok())
        .flatten()
        .map(Arc::new);
    let mut producers = Vec::with_capacity(workers);
    let mut consumers = Vec::with_capacity(workers);
    for _ in 0..workers {
        let (p, c) = siprec::ring::channel_filled(
            config.dataplane.ring_slots,
            siprec::media::MediaFrame::empty(),
        );
        producers.push(Some(p));
        consumers.push(c);
    }
    let stt_config = stt::SttConfig {
        segmenter: stt::segment::SegmenterConfig {
            sample_rate: 8000,
            partial_interval_ms: config.stt.partial_interval_ms,
            end_silence_ms: config.stt.end_silence_ms,
            max_utterance_ms: config.stt.max_utterance_s * 1000,
            min_speech_ms: 200,
        },
        workers: config.stt.workers,
        queue_max: config.stt.queue_max,
        redactor: redactor.clone(),
        cores: cores.to_vec(),
    };
    let deepgram = stt::deepgram::DeepgramConfig {
        url: s.deepgram_url.clone(),
        api_key: s.deepgram_api_key.clone(),
        model: s.deepgram_model.clone(),
        timeout: Duration::from_secs(u64::from(s.request_timeout_s)),
        language: s.language.clone(),
    };
    let make = || -> Result<Box<dyn stt::engine::Engine>, stt::engine::EngineError> {
        match (&model, s.provider) {
            (Some(model), _) => Ok(Box::new(model.engine()?)),
            (None, config::SttProvider::Deepgram) => Ok(Box::new(
                stt::deepgram::DeepgramEngine::new(deepgram.clone())?,
            )),
            (None, _) => Ok(Box::new(stt::openai::OpenAiEngine::new(openai.clone())?)),
        }
    };
    let jobs = open_jobs(Ok(config.stt.provider.name()));
    let clock = recorder::SystemMonotonicClock;
    match stt::spawn(stt_config, consumers, clock, make, jobs.clone()) {
        Ok(handle) => {
            match config.stt.provider {
                config::SttProvider::Openai => tracing::info!(
                    url = %config.stt.openai_url,
                    model = %config.stt.openai_model,
                    workers = config.stt.workers,
                    "live transcription on (openai provider)"
                ),
                config::SttProvider::Deepgram => tracing::info!(
                    url = %config.stt.deepgram_url,
                    model = %config.stt.deepgram_model,
                    workers = config.stt.workers,
                    "live transcription on (deepgram provider)"
                ),
                _ => tracing::info!(
                    model = %config.stt.model.display(),
                    workers = config.stt.workers,
                    threads,
                    "live transcription on (embedded whisper.cpp)"
                ),
            }
            (Some(handle), producers, None, jobs)
        }
        Err(e) => {
            tracing::error!(error = %e, "live transcription unavailable; recording continues");
            let jobs = open_jobs(Err(e.to_string()));
            (None, none(), Some(e.to_string()), jobs)
        }
    }
}

/// systemd's notify protocol (sd_notify(3)) without libsystemd: one datagram per state
/// change to $NOTIFY_SOCKET. Silent when not run by systemd.
struct Notifier {
    socket: Option<(
        std::os::unix::net::UnixDatagram,
        std::os::unix::net::SocketAddr,
    )>,
    /// Send WATCHDOG=1 (systemd set WATCHDOG_USEC for us).
    watchdog: bool,
}

impl Notifier {
    fn from_env() -> Notifier {
        use std::os::linux::net::SocketAddrExt;
        let socket = std::env::var("NOTIFY_SOCKET").ok().and_then(|path| {
            let addr = match path.strip_prefix('@') {
                Some(abs) => std::os::unix::net::SocketAddr::from_abstract_name(abs).ok()?,
                None => std::os::unix::net::SocketAddr::from_pathname(&path).ok()?,
            };
            let sock = std::os::unix::net::UnixDatagram::unbound().ok()?;
            Some((sock, addr))
        });
        let watchdog = std::env::var("WATCHDOG_USEC").is_ok_and(|v| v.parse::<u64>().is_ok());
        Notifier { socket, watchdog }
    }

    fn send(&self, message: &str) {
        if let Some((sock, addr)) = &self.socket {
            if let Err(e) = sock.send_to_addr(message.as_bytes(), addr) {
                tracing::debug!(error = %e, "sd_notify failed");
            }
        }
    }
}

/// Where the process is on its way out.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Running,
    /// SIGTERM: new calls get 503, running calls go on until they end or `until`.
    Draining {
        until: Instant,
    },
    /// Calls are being ended (BYE sent); exit when the recorder closed them or at `until`.
    Ending {
        until: Instant,
    },
}

/// An inbound SIP message with where it came from.
struct Inbound {
    peer: Peer,
    message: Message,
}

type TcpConns = Arc<Mutex<HashMap<u64, mpsc::Sender<Vec<u8>>>>>;

/// The SIP over TLS context; replaced on reload so renewed certificates need no restart.
type SipTls = Arc<Mutex<Option<Arc<openssl::ssl::SslAcceptor>>>>;

async fn control_plane(
    mut config: Config,
    source: ConfigSource,
    mut dataplane: Dataplane,
    recorder: recorder::RecorderHandle,
    stt_state: &SttState,
    process: Process,
) -> anyhow::Result<()> {
    let stt = &stt_state.handle;
    let Process {
        lifecycle,
        takeover_path,
        mut inherited,
    } = process;
    let (tx, mut rx) = mpsc::channel::<Inbound>(4096);
    let parse_errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut udp = Vec::new();
    let conns: TcpConns = Arc::default();
    // The listening sockets a successor would take, and the HTTP task serving one (stopped
    // when it has). The SIP readers wait for the gate while a predecessor still reads them.
    let mut listeners = Listeners::default();
    let (gate, gate_rx) = tokio::sync::watch::channel(match inherited {
        Some(_) => Gate::Wait,
        None => Gate::Run,
    });
    for (i, &port) in config.sip.ports.iter().enumerate() {
        let addr = SocketAddr::new(config.sip.host, port);
        let socket = match take_inherited(&mut inherited, ListenerKind::SipUdp, addr) {
            Some(fd) => UdpSocket::from_std(nonblocking(std::net::UdpSocket::from(fd))?)?,
            None => {
                let socket = UdpSocket::bind(addr)
                    .await
                    .with_context(|| format!("cannot bind SIP UDP {addr}"))?;
                // A burst of INVITEs (an SBC failing its calls over to us) must queue, not
                // drop, while the control plane is busy: 4 MiB, capped by net.core.rmem_max.
                let _ = socket2::SockRef::from(&socket).set_recv_buffer_size(SIP_UDP_RCVBUF);
                socket
            }
        };
        let socket = Arc::new(socket);
        let listener = match take_inherited(&mut inherited, ListenerKind::SipTcp, addr) {
            Some(fd) => TcpListener::from_std(nonblocking(std::net::TcpListener::from(fd))?)?,
            None => TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot bind SIP TCP {addr}"))?,
        };
        listeners.add(ListenerKind::SipUdp, addr, socket.as_raw_fd());
        listeners.add(ListenerKind::SipTcp, addr, listener.as_raw_fd());
        tokio::spawn(udp_receive(
            socket.clone(),
            i as u64,
            tx.clone(),
            parse_errors.clone(),
            gate_rx.clone(),
        ));
        let errors = parse_errors.clone();
        let accept = tcp_accept(listener, conns.clone(), tx.clone(), errors, gate_rx.clone());
        tokio::spawn(accept);
        tracing::info!(%addr, "SIP listening on UDP and TCP");
        udp.push(socket);
    }
    let sip_tls: SipTls = Arc::default();
    let tls_failures = Arc::new(std::sync::atomic::AtomicU64::new(0));
    if let Some(acceptor) = sip_tls_context(&config.sip).map_err(anyhow::Error::msg)? {
        *sip_tls.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(acceptor));
        let addr = SocketAddr::new(config.sip.host, config.sip.tls_port);
        let listener = match take_inherited(&mut inherited, ListenerKind::SipTls, addr) {
            Some(fd) => TcpListener::from_std(nonblocking(std::net::TcpListener::from(fd))?)?,
            None => TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot bind SIP TLS {addr}"))?,
        };
        listeners.add(ListenerKind::SipTls, addr, listener.as_raw_fd());
        tokio::spawn(tls_accept(
            listener,
            sip_tls.clone(),
            conns.clone(),
            tx.clone(),
            parse_errors.clone(),
            tls_failures.clone(),
            gate_rx.clone(),
        ));
        let mutual = config.sip.tls_ca_file.is_some();
        tracing::info!(%addr, mutual, "SIP listening on TLS");
    }
    let http_addr = SocketAddr::new(config.http.host, config.http.port);
    let api_listener = match take_inherited(&mut inherited, ListenerKind::Http, http_addr) {
        Some(fd) => TcpListener::from_std(nonblocking(std::net::TcpListener::from(fd))?)?,
        None => api::bind(http_addr)
            .await
            .with_context(|| format!("cannot bind HTTP {http_addr}"))?,
    };
    listeners.add(ListenerKind::Http, http_addr, api_listener.as_raw_fd());
    // Before any call, and only once our sockets are bound (no other server runs on them):
    // recordings a crash left unfinished get their headers and session.json. Not while a
    // predecessor runs: its recordings are open, not interrupted; that waits until it has gone.
    if inherited.is_none() {
        recover_interrupted(&config.recording.dir);
    }
    let (api_tx, mut api_rx) = mpsc::channel::<api::ApiRequest>(64);
    let api_state = ApiState::new(
        config.recording.dir.clone(),
        config.recording.min_free_mb,
        api::auth::Auth::from_config(&config.http, &config.auth),
        api_tx,
    );
    api_state.set_config(serde_json::to_value(&config).unwrap_or_default());
    // Never plain HTTP when HTTPS was asked for.
    api_state.set_tls(http_tls(&config.http).map_err(anyhow::Error::msg)?);
    api_state.set_rate_limit(config.http.rate_limit_per_s);
    if let Some(jobs) = &stt_state.jobs {
        let _ = api_state.stt_jobs.set(jobs.clone());
    }
    let serve = tokio::spawn(api::serve(api_listener, api_state.clone()));
    listeners.tasks.push(serve);
    tracing::info!(%http_addr, "HTTP API listening");
    // Taking over, the uploader starts once the old process (and its uploader) has gone.
    let mut uploader = match inherited {
        Some(_) => None,
        None => start_uploader(&config, &api_state)?,
    };
    let mut cluster_task = match config.cluster.redis_url.clone() {
        None => None,
        Some(url) => {
            if config.cluster.advertise_url.is_empty() {
                let ip = default_route_ip();
                let scheme = if config.http.tls_cert_file.is_some() {
                    "https"
                } else {
                    "http"
                };
                config.cluster.advertise_url =
                    siprec::config::advertise_url_for(scheme, ip, config.http.port);
                if ip.is_loopback() {
                    tracing::warn!(
                        "cluster: no address other nodes can reach this API on; set \
                         CLUSTER_ADVERTISE_URL (or HTTP_HOST or EXTERNAL_IP)"
                    );
                }
            }
            let cluster = siprec::cluster::Cluster::new(&config.cluster, &url)
                .map_err(|e| anyhow::anyhow!("REDIS_URL: {e}"))?;
            let _ = api_state.cluster.set(cluster.clone());
            let (stop, stopped) = tokio::sync::watch::channel(false);
            tracing::info!(
                node = %config.cluster.node_id,
                api = %config.cluster.advertise_url,
                "cluster registry enabled"
            );
            let task = tokio::spawn(siprec::cluster::run(cluster, api_state.clone(), stopped));
            Some((stop, task))
        }
    };

    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("OS RNG unavailable: {e}"))?;
    let advertised = config
        .sip
        .external_ip
        .or(Some(config.sip.host).filter(|h| !h.is_unspecified()));
    let mut sessions = SessionManager::new(SessionConfig {
        max_concurrent_calls: config.sip.max_concurrent_calls,
        require_siprec: config.sip.require_siprec,
        rtp_timeout_ns: config.media.rtp_timeout_s as u64 * 1_000_000_000,
        max_duration_ns: config.media.max_call_duration_s as u64 * 1_000_000_000,
        recording_root: config.recording.dir.clone(),
        combine_legs: config.recording.combine_legs,
        recording_format: config.recording.format,
        recording_encrypted: config.recording.encryption_key_file.is_some(),
        advertised_ip: advertised,
        fallback_ip: default_route_ip(),
        sip_port: config.sip.ports[0],
        sip_tls_port: config.sip.tls_port,
        seed: u64::from_le_bytes(seed),
        key_source: os_random,
        require_srtp: config.media.srtp_required,
        max_calls_per_source: config.sip.max_calls_per_source,
        transcribe: stt.is_some().then(|| config.stt.provider.name()),
        keywords: config.analytics.keywords.clone(),
    });
    let mut tsx = TransactionLayer::new(TsxConfig {
        server_header: Some(api::SERVER.to_owned()),
        ..TsxConfig::default()
    });
    let mut ports = BoundPorts {
        pool: PortPool::new(
            config.media.rtp_port_min,
            config.media.rtp_port_max,
            config.media.port_cooldown_s as u64 * 1_000_000_000,
        ),
        bind_ip: config.sip.host,
        sockets: HashMap::new(),
    };
    // Call events: every live consumer subscribes to this bus; a consumer that falls more
    // than its capacity behind loses the oldest and is told how many (broadcast lag).
    let (events, _) = tokio::sync::broadcast::channel::<Arc<siprec::events::Event>>(4096);
    api_state.set_ws(api::ws::WsHub {
        events: events.clone(),
        clients: Arc::default(),
        max_clients: config.http.ws_max_clients,
        slow_client: config.http.ws_slow_client,
        queue_max: config.http.ws_client_queue,
        counters: Arc::default(),
    });
    let mut amqp_task = None;
    // Taking over, the publisher starts once the old process has given up its spool; events
    // wait in the subscription until then.
    let mut amqp_pending = None;
    let amqp_status = config.amqp.enabled.then(|| {
        let status = Arc::new(siprec::events::amqp::AmqpStatus::default());
        let _ = api_state.amqp.set(status.clone());
        if inherited.is_some() {
            amqp_pending = Some(events.subscribe());
        } else {
            amqp_task = Some(spawn_amqp(
                config.amqp.clone(),
                events.subscribe(),
                status.clone(),
            ));
        }
        tracing::info!(exchange = %config.amqp.exchange, "AMQP publishing enabled");
        status
    });
    let acl =
        siprec::sip::acl::Acl::parse(&config.sip.allowed_networks.join(",")).unwrap_or_default();
    if !acl.is_open() {
        tracing::info!(networks = ?config.sip.allowed_networks, "SIP source ACL active");
    }
    let mut pike = Pike::new(config.sip.flood_limit, config.sip.flood_block_s);
    let io = Io {
        udp,
        conns,
        sip: Default::default(),
        parse_errors,
        tls_failures,
        events,
        amqp: amqp_status,
        stt: stt.as_ref().map(|s| s.commands.clone()),
        relay: Default::default(),
    };

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sighup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut sigusr2 =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined2())?;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut last_session_tick = Instant::now();
    let mut stop = Stop::Running;
    let mut exit_now = false;
    // Takeover, as the old process: the listener a successor connects to, the link once one
    // has, the child SIGUSR2 started, and whether the sockets are the successor's now.
    // AF_XDP holds the interface's one XDP program: a second process could not attach its
    // own beside it, so there is no takeover (an upgrade restarts; docs/operations.md).
    let xdp = config.dataplane.backend == dataplane::BackendChoice::AfXdp;
    let listen = match xdp {
        true => Err(std::io::Error::other("not with DATAPLANE_BACKEND=af_xdp")),
        false => takeover::link::listen(&takeover_path, inherited.is_some()),
    };
    let mut takeover_listener = match listen {
        Ok(l) => Some(l),
        Err(e) => {
            let path = takeover_path.display();
            tracing::warn!(%path, error = %e, "takeover socket unavailable; no takeover");
            None
        }
    };
    let mut successor: Option<Successor> = None;
    let mut successor_child: Option<std::process::Child> = None;
    let mut handed_over = false;
    // Once handed over: the calls we keep; SIP for any other goes to the successor.
    let mut own_calls = std::collections::HashSet::new();
    let (exited_tx, mut exited_rx) = mpsc::channel::<u32>(1);
    let mut sigterm_seen = false;
    // Takeover, as the new process: the old one's link and the calls it still runs.
    let mut predecessor = inherited.take().and_then(|inherited| {
        for listener in inherited.unused() {
            tracing::warn!(
                ?listener,
                "takeover: socket not in this configuration; closed"
            );
        }
        let pid = inherited.hello.pid;
        let stream = nonblocking_unix(inherited.stream).and_then(tokio::net::UnixStream::from_std);
        match stream {
            Ok(stream) => Some(Predecessor {
                pid,
                link: takeover::link::spawn(stream, inherited.reader),
                calls: Default::default(),
                dirs: Vec::new(),
                listed: false,
            }),
            Err(e) => {
                tracing::error!(error = %e, "takeover link unusable");
                None
            }
        }
    });
    let notifier = Notifier::from_env();
    notifier.send(&format!(
        "READY=1\nSTATUS=recording; backend {}; 0 active calls",
        dataplane.backend()
    ));
    if let Some(p) = &predecessor {
        *io.relay.borrow_mut() = Some(p.link.tx.clone());
        let _ = p.link.tx.try_send(Frame::Ready {
            pid: std::process::id(),
        });
        tracing::info!(
            predecessor = p.pid,
            "takeover: ready; the old process drains"
        );
    }
    let drain_timeout = Duration::from_secs(u64::from(config.sip.drain_timeout_s));
    let mut sip_bound = true;
    loop {
        let deadline = tsx
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            Some(inbound) = rx.recv() => {
                let ip = inbound.peer.addr.ip();
                if !acl.allows(ip) {
                    io.deny(inbound, config.sip.acl_action);
                } else if let Verdict::Block { new } = pike.check(ip, dataplane::mono_now_ns()) {
                    io.sip.borrow_mut().flood_dropped += 1;
                    if new {
                        let secs = config.sip.flood_block_s;
                        let source = Pii(ip);
                        tracing::warn!(%source, block_s = secs, "SIP flood: source blocked");
                    }
                } else if let Some(link) =
                    relay_to(&predecessor, &own_calls, &successor, handed_over, &inbound.message)
                {
                    // Another process's call (or, once handed over, anything not ours).
                    let mut message = Vec::new();
                    inbound.message.encode(&mut message);
                    let frame = Frame::Forward { peer: inbound.peer, message };
                    if link.try_send(frame).is_err() {
                        tracing::warn!("takeover link full; a SIP message dropped");
                    }
                } else {
                    io.count_inbound(&inbound.message);
                    tsx.handle_message(Instant::now(), inbound.peer, inbound.message);
                }
            }
            accepted = accept_successor(takeover_listener.as_ref().map(|l| &l.listener)),
                if successor.is_none()
                    && !handed_over
                    && predecessor.is_none()
                    && matches!(stop, Stop::Running) =>
            {
                match accepted {
                    Ok(mut stream) => {
                        let (hello, fds) = listeners.hello();
                        let peer_pid = stream.peer_cred().ok().and_then(|c| c.pid());
                        match takeover::link::send_hello(&mut stream, &hello, &fds).await {
                            Ok(()) => {
                                let msg = "takeover: a new process took the sockets";
                                tracing::info!(?peer_pid, "{msg}");
                                let link = takeover::link::spawn(stream, Default::default());
                                successor = Some(Successor { link, peer_pid });
                            }
                            Err(e) => tracing::warn!(error = %e, "takeover: hello failed"),
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "takeover socket accept failed"),
                }
            }
            frame = next_frame(successor.as_mut().map(|s| &mut s.link)) => match frame {
                Some(Frame::Ready { pid }) if !handed_over => {
                    // The successor is ready: stop reading the sockets (what was read is still
                    // handled, or forwarded to it), keep our calls, and drain them.
                    handed_over = true;
                    let pid = successor.as_ref().and_then(|s| s.peer_pid).map_or(pid, |p| p as u32);
                    let _ = gate.send(Gate::Stop);
                    for task in listeners.tasks.drain(..) {
                        task.abort();
                    }
                    // The successor publishes the node's registry now.
                    if let Some((_, task)) = cluster_task.take() {
                        task.abort();
                    }
                    own_calls = sessions.call_ids().into_iter().collect();
                    let dirs = sessions
                        .recording_dirs()
                        .into_iter()
                        .map(|d| std::path::absolute(&d).unwrap_or(d).display().to_string())
                        .collect();
                    tracing::info!(
                        successor = pid,
                        calls = own_calls.len(),
                        "takeover: handed over; draining the running calls"
                    );
                    notifier.send(&format!(
                        "MAINPID={pid}\nSTATUS=handed over to {pid}; draining {} calls",
                        own_calls.len()
                    ));
                    if let Some(s) = &successor {
                        let calls = own_calls.iter().cloned().collect();
                        // The link is idle but for this: the queue has room.
                        let _ = s.link.tx.send(Frame::Calls { calls, dirs }).await;
                        *io.relay.borrow_mut() = Some(s.link.tx.clone());
                        // The AMQP spool becomes the successor's once our publisher has
                        // flushed into it; our last events are published without one.
                        let old = amqp_task
                            .take_if(|_| config.amqp.spool_dir.is_some());
                        if let (Some(old), Some(status)) = (old, &io.amqp) {
                            let mut amqp = config.amqp.clone();
                            amqp.spool_dir = None;
                            let rx = io.events.subscribe();
                            amqp_task = Some(spawn_amqp(amqp, rx, status.clone()));
                            tokio::spawn(release_spool(old, s.link.tx.clone()));
                        } else {
                            let _ = s.link.tx.send(Frame::SpoolFree).await;
                        }
                    }
                    sessions.set_draining(true);
                    // Our calls go on until they end: the ports no longer block anything. A
                    // SIGTERM that came first keeps its deadline.
                    let cap = match config.media.max_call_duration_s {
                        0 => TAKEOVER_DRAIN_MAX,
                        s => Duration::from_secs(u64::from(s)),
                    };
                    if matches!(stop, Stop::Running) {
                        stop = Stop::Draining { until: Instant::now() + cap.max(drain_timeout) };
                    }
                }
                Some(Frame::Forward { peer, message }) => io.relayed_in(&mut tsx, peer, &message),
                Some(Frame::Transmit { peer, message }) => io.transmit(peer, &message),
                Some(other) => {
                    tracing::warn!(?other, "takeover: unexpected frame from the new process")
                }
                None => {
                    successor = None;
                    *io.relay.borrow_mut() = None;
                    if handed_over {
                        // Keep hearing our calls' BYEs until they end.
                        tracing::error!("takeover: the new process exited; reading SIP UDP again");
                        // (The gate's sender going away does not close it.)
                        let (_, udp_gate) = tokio::sync::watch::channel(Gate::Run);
                        for (i, socket) in io.udp.iter().enumerate() {
                            let errors = io.parse_errors.clone();
                            let (tx, g) = (tx.clone(), udp_gate.clone());
                            tokio::spawn(udp_receive(socket.clone(), i as u64, tx, errors, g));
                        }
                        own_calls.clear();
                    } else {
                        // It may have taken the socket's path: take it back unless it
                        // listens there still.
                        tracing::warn!("takeover: the new process went away before it was ready");
                        if !takeover_listener.as_ref().is_some_and(|l| l.is_ours()) {
                            takeover_listener = takeover::link::listen(&takeover_path, false)
                                .inspect_err(|e| tracing::warn!(error = %e, "takeover socket lost"))
                                .ok();
                        }
                    }
                }
            },
            frame = next_frame(predecessor.as_mut().map(|p| &mut p.link)) => match frame {
                Some(Frame::Calls { calls, dirs }) => {
                    if let Some(p) = &mut predecessor {
                        p.calls.extend(calls);
                        p.dirs.extend(dirs.into_iter().map(PathBuf::from));
                        p.listed = true;
                    }
                    tracing::info!("takeover: the old process stopped reading; reading SIP now");
                    let _ = gate.send(Gate::Run);
                }
                Some(Frame::SpoolFree) => {
                    if let (Some(rx), Some(status)) = (amqp_pending.take(), &io.amqp) {
                        amqp_task = Some(spawn_amqp(config.amqp.clone(), rx, status.clone()));
                    }
                }
                Some(Frame::Forward { peer, message }) => io.relayed_in(&mut tsx, peer, &message),
                Some(Frame::Transmit { peer, message }) => io.transmit(peer, &message),
                Some(other) => {
                    tracing::warn!(?other, "takeover: unexpected frame from the old process")
                }
                None => {
                    // Its last SIP went through us; what remains is to see it gone, then
                    // finish what it left unfinished and take over its duties.
                    let Some(p) = predecessor.take() else { continue };
                    *io.relay.borrow_mut() = None;
                    if let (Some(rx), Some(status)) = (amqp_pending.take(), &io.amqp) {
                        amqp_task = Some(spawn_amqp(config.amqp.clone(), rx, status.clone()));
                    }
                    let exited = exited_tx.clone();
                    let root = config.recording.dir.clone();
                    if p.listed {
                        // We read SIP already: finish only its recordings, beside ours.
                        tokio::task::spawn_blocking(move || {
                            if wait_gone(p.pid, Duration::from_secs(60)) {
                                let now = siprec::proto::rfc3339_ms(now().unix_ms);
                                log_recovered(&recorder::recover_dirs(&p.dirs, &now));
                            }
                            let _ = exited.blocking_send(p.pid);
                        });
                    } else {
                        // It went before saying which calls were its own; we have none yet,
                        // so everything unfinished is its: recover all, then read SIP.
                        tracing::warn!("takeover: the old process went away mid-handover");
                        tokio::task::spawn_blocking(move || {
                            if wait_gone(p.pid, Duration::from_secs(60)) {
                                recover_interrupted(&root);
                            }
                            let _ = exited.blocking_send(p.pid);
                        });
                    }
                }
            },
            Some(pid) = exited_rx.recv() => {
                tracing::info!(pid, "takeover: the old process has exited");
                let _ = gate.send(Gate::Run);
                if uploader.is_none() {
                    uploader = start_uploader(&config, &api_state).unwrap_or_else(|e| {
                        tracing::error!(error = %e, "uploads stay off");
                        None
                    });
                }
            }
            _ = sigusr2.recv() => {
                let running = successor_child
                    .as_mut()
                    .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
                let busy = successor.is_some() || handed_over || running || predecessor.is_some();
                if busy || !matches!(stop, Stop::Running) {
                    tracing::warn!("SIGUSR2: a takeover is under way, or draining");
                } else if takeover_listener.is_none() {
                    tracing::error!("SIGUSR2: no takeover socket; cannot start a successor");
                } else {
                    match spawn_successor(&lifecycle) {
                        Ok(child) => {
                            tracing::info!(pid = child.id(), "SIGUSR2: started the new process");
                            successor_child = Some(child);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "SIGUSR2: cannot start the new process")
                        }
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                tsx.handle_timeout(Instant::now());
            }
            Some(request) = api_rx.recv() => {
                let value = match request.op {
                    api::ApiOp::Reload => {
                        Some(reload(&source, &mut config, &mut sessions, &api_state, &sip_tls))
                    }
                    op => handle_api(&mut sessions, &mut ports, op),
                };
                let _ = request.reply.send(value);
            }
            _ = sighup.recv() => {
                let result = reload(&source, &mut config, &mut sessions, &api_state, &sip_tls);
                tracing::info!(%result, "SIGHUP: configuration reloaded");
            }
            _ = tick.tick() => {
                let now = now();
                sessions.resume_due(now);
                while let Some(report) = dataplane.try_report() {
                    match report {
                        dataplane::Report::Stats { streams, .. } => {
                            for (key, stats) in streams {
                                sessions.handle_stream_stats(key, stats);
                            }
                        }
                        dataplane::Report::Closed { key, stats } => {
                            sessions.handle_stream_stats(key, *stats)
                        }
                        dataplane::Report::Dtmf { key, digit } => {
                            sessions.handle_dtmf(now, key, digit)
                        }
                    }
                }
                while let Ok(event) = recorder.events.try_recv() {
                    sessions.handle_recorder_event(now, &mut ports, event);
                }
                if let Some(stt) = stt {
                    while let Ok(result) = stt.results.try_recv() {
                        sessions.handle_stt(now, result);
                    }
                }
                if last_session_tick.elapsed() >= Duration::from_secs(1) {
                    last_session_tick = Instant::now();
                    if let Some(child) = &mut successor_child {
                        if let Ok(Some(status)) = child.try_wait() {
                            if !status.success() {
                                tracing::warn!(%status, "takeover: the new process exited");
                            }
                            successor_child = None;
                        }
                    }
                    pike.forget_idle(dataplane::mono_now_ns());
                    sessions.handle_tick(now, &mut ports);
                    // Below RECORDING_MIN_FREE_MB new calls and OPTIONS get 503, as
                    // /health/ready does: SBCs fork elsewhere before the disk is full.
                    let free = api::free_mb(&config.recording.dir);
                    let floor = config.recording.min_free_mb;
                    sessions.set_storage_low(free.is_some_and(|mb| mb < floor));
                    // The watchdog is fed only while every worker's loop is turning, so a stuck
                    // data plane gets the service restarted.
                    let ages = dataplane.heartbeat_ages_ns(dataplane::mono_now_ns());
                    let alive = ages.iter().all(|&age| age < 2_000_000_000);
                    let status = format!(
                        "STATUS={}; backend {}; {} active calls",
                        if matches!(stop, Stop::Running) { "recording" } else { "draining" },
                        dataplane.backend(),
                        sessions.active_calls()
                    );
                    // Once handed over, systemd hears the successor (its MAINPID) only.
                    if !handed_over {
                        if notifier.watchdog && alive {
                            notifier.send(&format!("WATCHDOG=1\n{status}"));
                        } else {
                            notifier.send(&status);
                        }
                    }
                }
                api_state.publish(Snapshot {
                    sessions: sessions.summaries(),
                    sip_bound,
                    draining: sessions.is_draining(),
                    worker_heartbeat_age_ms: dataplane
                        .heartbeat_ages_ns(dataplane::mono_now_ns())
                        .into_iter()
                        .map(|ns| ns / 1_000_000)
                        .collect(),
                    ports_in_use: ports.pool.in_use(),
                    ports_capacity: ports.pool.capacity(),
                    backend: dataplane.backend(),
                    metrics: metrics_snapshot(
                        &io,
                        &sessions,
                        &dataplane,
                        &recorder,
                        &ports,
                        (stt_state, &config.stt),
                    ),
                    paused_calls: sessions.paused_calls(),
                });
                match stop {
                    Stop::Running => {}
                    Stop::Draining { until } if sessions.is_idle() || Instant::now() >= until => {
                        if !sessions.is_idle() {
                            tracing::info!("drain timeout: ending the remaining calls with BYE");
                        }
                        sessions.shutdown(now, &mut ports);
                        stop = Stop::Ending { until: Instant::now() + Duration::from_secs(10) };
                    }
                    Stop::Draining { .. } => {}
                    Stop::Ending { until } => {
                        // Leave after this turn's pump, which writes the last session.json
                        // (and the last transcripts, if STT finishes them in time).
                        let idle = sessions.is_idle() && sessions.transcripts_pending() == 0;
                        exit_now = idle || Instant::now() >= until;
                    }
                }
            }
            _ = tokio::signal::ctrl_c(), if !matches!(stop, Stop::Ending { .. }) => {
                tracing::info!("SIGINT: ending calls and closing recordings");
                sessions.shutdown(now(), &mut ports);
                stop = Stop::Ending { until: Instant::now() + Duration::from_secs(10) };
            }
            _ = sigterm.recv(), if !matches!(stop, Stop::Ending { .. }) => {
                // Having handed over we are draining already, but a first SIGTERM (systemd
                // stopping the unit) still leaves the calls DRAIN_TIMEOUT, not nothing.
                let first_after_handover = handed_over && !sigterm_seen;
                sigterm_seen = true;
                if (matches!(stop, Stop::Running) || first_after_handover)
                    && !drain_timeout.is_zero()
                {
                    // Graceful drain: refuse new calls (503), let running ones finish.
                    tracing::info!(
                        active = sessions.active_calls(),
                        timeout_s = drain_timeout.as_secs(),
                        "SIGTERM: draining; a second SIGTERM ends the calls now"
                    );
                    sessions.set_draining(true);
                    notifier.send("STOPPING=1\nSTATUS=draining");
                    stop = Stop::Draining { until: Instant::now() + drain_timeout };
                } else {
                    tracing::info!("SIGTERM: ending calls and closing recordings");
                    sessions.shutdown(now(), &mut ports);
                    stop = Stop::Ending { until: Instant::now() + Duration::from_secs(10) };
                }
            }
        }
        pump(
            &mut tsx,
            &mut sessions,
            &mut ports,
            &dataplane,
            &recorder,
            &io,
        );
        if matches!(stop, Stop::Ending { .. }) {
            sip_bound = false;
        }
        if exit_now {
            break;
        }
    }
    if let Some(socket) = &takeover_listener {
        socket.remove();
    }
    let _ = recorder.commands.send(RecorderCommand::Shutdown);
    dataplane.shutdown();
    // The last events (the drained calls' call_ended) get published, or spooled for the next
    // run; the publisher takes at most its 2 s flush plus the spool write.
    if let Some((stop, task)) = amqp_task {
        let _ = stop.send(true);
        if tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .is_err()
        {
            tracing::warn!("AMQP publisher did not stop in 5 s");
        }
    }
    // Leave the registry first: no node forwards to this one while it winds down.
    if let Some((stop, task)) = cluster_task {
        let _ = stop.send(true);
        if tokio::time::timeout(Duration::from_secs(3), task)
            .await
            .is_err()
        {
            tracing::warn!("cluster registry did not stop in 3 s; the node expires by TTL");
        }
    }
    if let Some(up) = uploader {
        let _ = tokio::task::spawn_blocking(move || up.stop(Duration::from_secs(5))).await;
    }
    tracing::info!("siprec stopped");
    Ok(())
}

/// Uploads finished recordings when object storage is configured.
fn start_uploader(
    config: &Config,
    api_state: &Arc<ApiState>,
) -> anyhow::Result<Option<siprec::sink::upload::Uploader>> {
    if config.upload.endpoint.is_none() {
        return Ok(None);
    }
    let status = Arc::new(siprec::sink::upload::UploadStatus::default());
    let _ = api_state.upload.set(status.clone());
    let root = config.recording.dir.clone();
    let up = siprec::sink::upload::Uploader::spawn(&config.upload, root, status)
        .map_err(|e| anyhow::anyhow!("S3 upload: {e}"))?;
    Ok(Some(up))
}

type AmqpTask = (
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
);

/// Starts the AMQP publisher on `events`; stop it by sending true.
fn spawn_amqp(
    config: config::AmqpConfig,
    events: tokio::sync::broadcast::Receiver<Arc<siprec::events::Event>>,
    status: Arc<siprec::events::amqp::AmqpStatus>,
) -> AmqpTask {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(siprec::events::amqp::run(config, events, status, stopped));
    (stop, task)
}

/// How long a process that handed over drains its calls when `MAX_CALL_DURATION` does not
/// bound them: the ports no longer stand in anyone's way.
/// Receive buffer asked for each SIP UDP socket.
const SIP_UDP_RCVBUF: usize = 4 << 20;

const TAKEOVER_DRAIN_MAX: Duration = Duration::from_secs(24 * 3600);

/// Where a SIP message goes instead of our transaction layer: to the predecessor when it is
/// one of its calls; once we handed over, to the successor when it is not one of ours.
fn relay_to<'a>(
    predecessor: &'a Option<Predecessor>,
    own_calls: &std::collections::HashSet<String>,
    successor: &'a Option<Successor>,
    handed_over: bool,
    message: &Message,
) -> Option<&'a mpsc::Sender<Frame>> {
    if let Some(p) = predecessor.as_ref().filter(|p| p.owns(message)) {
        return Some(&p.link.tx);
    }
    let ours = message.call_id().is_some_and(|c| own_calls.contains(c));
    match successor {
        Some(s) if handed_over && !ours => Some(&s.link.tx),
        _ => None,
    }
}

/// The process taking over from us.
struct Successor {
    link: Link,
    /// Its pid as the kernel tells it (SO_PEERCRED), for MAINPID=.
    peer_pid: Option<i32>,
}

/// Waits (blocking) until process `pid` has exited (or is a zombie), at most `timeout`;
/// whether it has.
fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) if !stat.contains(") Z ") => {}
            _ => return true,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::warn!(
        pid,
        "takeover: the old process is still there; its files left as they are"
    );
    false
}

/// Stops the publisher that owns the AMQP spool (it flushes into it), then tells the
/// successor the spool is its own.
async fn release_spool(old: AmqpTask, link: mpsc::Sender<Frame>) {
    let (stop, task) = old;
    let _ = stop.send(true);
    let abort = task.abort_handle();
    if tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .is_err()
    {
        tracing::warn!("AMQP publisher did not stop in 5 s; aborted");
        abort.abort();
    }
    let _ = link.send(Frame::SpoolFree).await;
}

/// Set on the connection id of a SIP message the successor forwarded to us (after a
/// takeover): its answer goes back through the successor.
const FORWARDED: u64 = 1 << 63;

/// The listening sockets and the tasks reading them.
#[derive(Default)]
struct Listeners {
    sockets: Vec<(Listener, std::os::fd::RawFd)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Listeners {
    fn add(&mut self, kind: ListenerKind, addr: SocketAddr, fd: std::os::fd::RawFd) {
        self.sockets.push((Listener { kind, addr }, fd));
    }

    /// What a successor is sent: the listeners and their descriptors, in the same order.
    fn hello(&self) -> (takeover::Hello, Vec<std::os::fd::RawFd>) {
        let hello = takeover::Hello {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            listeners: self.sockets.iter().map(|(l, _)| l.clone()).collect(),
        };
        (hello, self.sockets.iter().map(|(_, fd)| *fd).collect())
    }
}

/// The running predecessor, as its successor sees it.
struct Predecessor {
    pid: u32,
    link: Link,
    /// Its calls: SIP carrying one of these Call-IDs is forwarded to it.
    calls: std::collections::HashSet<String>,
    /// Their recording directories: finished (recovered) if it leaves them unfinished.
    dirs: Vec<PathBuf>,
    /// It sent its list of calls (it had stopped reading SIP).
    listed: bool,
}

impl Predecessor {
    fn owns(&self, message: &Message) -> bool {
        message.call_id().is_some_and(|c| self.calls.contains(c))
    }
}

fn take_inherited(
    inherited: &mut Option<takeover::link::Inherited>,
    kind: ListenerKind,
    addr: SocketAddr,
) -> Option<std::os::fd::OwnedFd> {
    inherited.as_mut()?.take(kind, addr)
}

fn nonblocking<S: NonBlocking>(socket: S) -> std::io::Result<S> {
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn nonblocking_unix(
    stream: std::os::unix::net::UnixStream,
) -> std::io::Result<std::os::unix::net::UnixStream> {
    stream.set_nonblocking(true)?;
    Ok(stream)
}

/// The std sockets a tokio one is made from.
trait NonBlocking {
    fn set_nonblocking(&self, on: bool) -> std::io::Result<()>;
}

impl NonBlocking for std::net::UdpSocket {
    fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        std::net::UdpSocket::set_nonblocking(self, on)
    }
}

impl NonBlocking for std::net::TcpListener {
    fn set_nonblocking(&self, on: bool) -> std::io::Result<()> {
        std::net::TcpListener::set_nonblocking(self, on)
    }
}

/// The next frame of a link; never resolves when there is none. None: the link is gone.
async fn next_frame(link: Option<&mut Link>) -> Option<Frame> {
    match link {
        Some(link) => link.rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A successor connecting; never resolves without a listener.
async fn accept_successor(
    listener: Option<&tokio::net::UnixListener>,
) -> std::io::Result<tokio::net::UnixStream> {
    match listener {
        Some(listener) => listener.accept().await.map(|(stream, _)| stream),
        None => std::future::pending().await,
    }
}

/// Starts the binary at the path this process was started from (the new one after an
/// upgrade) with the same arguments and `--takeover`.
fn spawn_successor(lifecycle: &Lifecycle) -> std::io::Result<std::process::Child> {
    let exe = lifecycle
        .exe
        .as_ref()
        .ok_or_else(|| std::io::Error::other("path of the binary unknown"))?;
    std::process::Command::new(exe)
        .args(&lifecycle.args)
        .arg("--takeover")
        .stdin(std::process::Stdio::null())
        .spawn()
}

/// Moves outputs between the transaction layer and the session manager until both are idle.
fn pump(
    tsx: &mut TransactionLayer,
    sessions: &mut SessionManager,
    ports: &mut BoundPorts,
    dataplane: &Dataplane,
    recorder: &recorder::RecorderHandle,
    io: &Io,
) {
    loop {
        let mut progressed = false;
        while let Some(out) = tsx.poll_output() {
            progressed = true;
            match out {
                sip::Output::Transmit(t) => io.transmit(t.peer, &t.payload),
                sip::Output::Event(e) => sessions.handle_tsx_event(now(), ports, e),
            }
        }
        while let Some(action) = sessions.poll_action() {
            progressed = true;
            match action {
                Action::Respond { key, response } => tsx.respond(Instant::now(), key, response),
                Action::SendRequest { peer, request } => {
                    tsx.send_request(Instant::now(), peer, request);
                }
                Action::OpenStream { port, params } => match ports.sockets.remove(&port) {
                    Some(sockets) => dataplane.open(port, params, sockets),
                    None => tracing::error!(port, "no bound sockets for stream"),
                },
                Action::UpdateStream { port, params } => dataplane.update(port, params),
                Action::CloseStream { port, key } => dataplane.close(port, key),
                Action::Recorder(cmd) => {
                    if let Some(stt) = &io.stt {
                        if let Some(c) = stt_command(&cmd) {
                            let _ = stt.send(c);
                        }
                    }
                    if recorder.commands.send(cmd).is_err() {
                        tracing::error!("recorder thread is gone");
                    }
                }
                Action::WriteFile { path, bytes } => {
                    // The recorder thread creates a session's directory; a file written at the
                    // start of the call may come first.
                    if let Some(dir) = path.parent() {
                        let _ = std::fs::create_dir_all(dir);
                    }
                    if let Err(e) = recorder::write_atomic(&path, &bytes) {
                        let e = pii::redact_in(&e.to_string(), &path.display().to_string());
                        let path = Pii(path.display());
                        tracing::error!(%path, error = %e, "cannot write file");
                    }
                }
                Action::DropPartialSession { dir } => {
                    if dir.join("session.json").exists() {
                        let partial = dir.join(siprec::session::PARTIAL_SESSION_FILE);
                        let _ = std::fs::remove_file(partial);
                    }
                }
                Action::Event(e) => {
                    // No subscriber (AMQP off) is fine: the event just has no audience.
                    let _ = io.events.send(Arc::new(e));
                }
            }
        }
        if !progressed {
            break;
        }
    }
}

/// What live transcription must hear of a recorder command: the same sessions and streams.
fn stt_command(cmd: &RecorderCommand) -> Option<SttCommand> {
    Some(match cmd {
        RecorderCommand::StartSession {
            session,
            start_ns,
            streams,
            ..
        } => SttCommand::StartSession {
            session: *session,
            start_ns: *start_ns,
            streams: streams.iter().map(|s| (s.index, s.sample_rate)).collect(),
        },
        RecorderCommand::AddStream { session, spec } => SttCommand::AddStream {
            session: *session,
            index: spec.index,
            sample_rate: spec.sample_rate,
        },
        RecorderCommand::StopSession { session, end_ns } => SttCommand::StopSession {
            session: *session,
            end_ns: *end_ns,
        },
        RecorderCommand::Shutdown => return None,
    })
}

fn now() -> Now {
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Now {
        mono_ns: dataplane::mono_now_ns(),
        unix_ms,
    }
}

/// The local address of the default route, used in SDP when nothing better is known.
/// Connecting a UDP socket sends no packet.
/// SRTP answer keys from the OS RNG. We never send media with them; should the RNG ever
/// fail after start-up, the answer still goes out and the failure is logged.
fn os_random(buf: &mut [u8]) {
    if let Err(e) = getrandom::fill(buf) {
        tracing::error!(error = %e, "OS RNG failed; SRTP answer key is not random");
    }
}

fn default_route_ip() -> IpAddr {
    std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| {
            s.connect("192.0.2.1:9")?;
            s.local_addr()
        })
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// The port pool plus socket binding: a port is handed out only once its RTP and RTCP
/// sockets are bound, so the SDP answer never names a port we can't receive on.
struct BoundPorts {
    pool: PortPool,
    bind_ip: IpAddr,
    sockets: HashMap<u16, StreamSockets>,
}

impl MediaPorts for BoundPorts {
    fn allocate(&mut self, now_ns: u64) -> Option<u16> {
        for _ in 0..self.pool.capacity() {
            let port = self.pool.allocate(now_ns)?;
            match dataplane::bind_stream_sockets(self.bind_ip, port, true) {
                Ok(s) => {
                    self.sockets.insert(port, s);
                    return Some(port);
                }
                // Held by another process: after a takeover, the old one's calls.
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    tracing::debug!(port, "RTP port in use; trying the next");
                    self.pool.release(port, now_ns);
                }
                Err(e) => {
                    tracing::warn!(port, error = %e, "RTP port unavailable; trying the next");
                    self.pool.release(port, now_ns);
                }
            }
        }
        None
    }

    fn release(&mut self, port: u16, now_ns: u64) {
        self.sockets.remove(&port);
        self.pool.release(port, now_ns);
    }

    fn in_use(&self) -> usize {
        self.pool.in_use()
    }
}

struct Io {
    /// Call events to live consumers (AMQP).
    events: tokio::sync::broadcast::Sender<Arc<siprec::events::Event>>,
    amqp: Option<Arc<siprec::events::amqp::AmqpStatus>>,
    /// Commands to live transcription, when it runs.
    stt: Option<crossbeam_channel::Sender<SttCommand>>,
    udp: Vec<Arc<UdpSocket>>,
    conns: TcpConns,
    /// SIP counters for /metrics (this thread only).
    sip: std::cell::RefCell<SipCounters>,
    /// Unparsable SIP messages, counted by the receive tasks.
    parse_errors: Arc<std::sync::atomic::AtomicU64>,
    /// Failed SIP TLS handshakes, counted by the accept task.
    tls_failures: Arc<std::sync::atomic::AtomicU64>,
    /// During a takeover: the other process, through which answers to the SIP it forwarded
    /// to us leave.
    relay: std::cell::RefCell<Option<mpsc::Sender<Frame>>>,
}

impl Io {
    fn count_inbound(&self, message: &Message) {
        if let Message::Request(r) = message {
            let mut sip = self.sip.borrow_mut();
            *sip.requests
                .entry(r.method.as_str().to_owned())
                .or_default() += 1;
        }
    }

    fn sip_counters(&self) -> SipCounters {
        let mut c = self.sip.borrow().clone();
        c.parse_errors = self.parse_errors.load(std::sync::atomic::Ordering::Relaxed);
        c.tls_handshake_failures = self.tls_failures.load(std::sync::atomic::Ordering::Relaxed);
        c
    }

    /// A message from a source outside SIP_ALLOWED_NETWORKS: counted, and a request other
    /// than ACK gets a stateless 403 unless the action is `drop`.
    fn deny(&self, inbound: Inbound, action: siprec::config::AclAction) {
        self.sip.borrow_mut().acl_denied += 1;
        tracing::debug!(source = %inbound.peer.addr, "SIP from a source the ACL denies");
        if let (siprec::config::AclAction::Reject, Message::Request(req)) =
            (action, &inbound.message)
        {
            if req.method != sip::Method::Ack {
                let mut resp = sip::Response::from_request(req, 403, "Forbidden");
                resp.set_to_tag("acl");
                let mut out = Vec::new();
                resp.encode(&mut out);
                self.transmit(inbound.peer, &out);
            }
        }
    }

    /// A SIP message the other process of a takeover forwarded: ours to handle; the
    /// connection id is marked so the answer goes back through it.
    fn relayed_in(&self, tsx: &mut TransactionLayer, peer: Peer, bytes: &[u8]) {
        match sip::parse_datagram(bytes) {
            Ok(message) => {
                let conn = FORWARDED | peer.conn.unwrap_or(0);
                let peer = Peer {
                    conn: Some(conn),
                    ..peer
                };
                self.count_inbound(&message);
                tsx.handle_message(Instant::now(), peer, message);
            }
            Err(e) => tracing::warn!(error = %e, "takeover: unparsable forwarded message"),
        }
    }

    fn transmit(&self, peer: Peer, payload: &[u8]) {
        // "SIP/2.0 NNN …": count responses by status code.
        if payload.starts_with(b"SIP/2.0 ") {
            let code = std::str::from_utf8(payload.get(8..11).unwrap_or_default())
                .ok()
                .and_then(|c| c.parse::<u16>().ok());
            if let Some(code) = code {
                *self.sip.borrow_mut().responses.entry(code).or_default() += 1;
            }
        }
        let forwarded = peer.conn.filter(|c| c & FORWARDED != 0);
        if let Some(conn) = forwarded.filter(|_| peer.transport != Transport::Udp) {
            // Came over the other process's TCP/TLS connection: the answer goes back on it.
            let peer = Peer {
                conn: Some(conn & !FORWARDED),
                ..peer
            };
            let message = payload.to_vec();
            let sent = match self.relay.borrow().as_ref() {
                Some(link) => link.try_send(Frame::Transmit { peer, message }).is_ok(),
                None => false,
            };
            if !sent {
                tracing::warn!("takeover link gone or full; answer to a forwarded request lost");
            }
            return;
        }
        match peer.transport {
            Transport::Udp => {
                // The UDP sockets are shared: one forwarded to us is answered on ours.
                let index = peer.conn.unwrap_or(0) & !FORWARDED;
                let socket = &self.udp[index as usize % self.udp.len()];
                if let Err(e) = socket.try_send_to(payload, peer.addr) {
                    tracing::warn!(error = %e, "SIP UDP send failed");
                }
            }
            Transport::Tcp | Transport::Tls => {
                let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
                match peer.conn.and_then(|c| conns.get(&c)) {
                    Some(tx) => {
                        if tx.try_send(payload.to_vec()).is_err() {
                            tracing::warn!("SIP TCP connection backlogged; message dropped");
                        }
                    }
                    None => tracing::warn!(addr = %Pii(peer.addr), "SIP TCP connection gone"),
                }
            }
        }
    }
}

/// The SIP over TLS context of `SIP_TLS_CERT_FILE`/`SIP_TLS_KEY_FILE` (and `SIP_TLS_CA_FILE`),
/// None without TLS.
fn sip_tls_context(
    sip: &siprec::config::SipConfig,
) -> Result<Option<openssl::ssl::SslAcceptor>, String> {
    match (&sip.tls_cert_file, &sip.tls_key_file) {
        (Some(cert), Some(key)) => {
            api::tls::sip_acceptor(cert, key, sip.tls_ca_file.as_deref()).map(Some)
        }
        _ => Ok(None),
    }
}

/// The HTTPS context of `HTTP_TLS_CERT_FILE`/`HTTP_TLS_KEY_FILE`, None for plain HTTP.
fn http_tls(
    http: &siprec::config::HttpConfig,
) -> Result<Option<openssl::ssl::SslAcceptor>, String> {
    match (&http.tls_cert_file, &http.tls_key_file) {
        (Some(cert), Some(key)) => api::tls::acceptor(cert, key).map(Some),
        _ => Ok(None),
    }
}

/// Re-reads the configuration (file → environment → the original flags), applies what can
/// change while running and reports what needs a restart. The running configuration is kept
/// when the new one is invalid.
fn reload(
    source: &ConfigSource,
    config: &mut Config,
    sessions: &mut SessionManager,
    api_state: &ApiState,
    sip_tls: &SipTls,
) -> serde_json::Value {
    use serde_json::json;
    let at = siprec::proto::rfc3339_ms(now().unix_ms);
    let result = match source.load() {
        Err(e) => json!({"result": "error", "error": e.to_string(), "at": at}),
        Ok(new) => {
            let old_json = serde_json::to_value(&*config).unwrap_or_default();
            let new_json = serde_json::to_value(&new).unwrap_or_default();
            let mut changed = Vec::new();
            diff_keys("", &old_json, &new_json, &mut changed);
            if new.http.api_key != config.http.api_key {
                changed.push("http.api_key".to_owned());
            }
            // Secrets are not serialized, so the diff above cannot see them.
            if new.auth.api_keys != config.auth.api_keys {
                changed.push("auth.api_keys".to_owned());
            }
            if new.auth.jwt_secret != config.auth.jwt_secret {
                changed.push("auth.jwt_secret".to_owned());
            }
            if new.auth.jwt_public_key_pem != config.auth.jwt_public_key_pem
                && !changed.iter().any(|k| k == "auth.jwt_public_key_file")
            {
                changed.push("auth.jwt_public_key_file".to_owned());
            }
            const LIVE: &[&str] = &[
                "sip.max_concurrent_calls",
                "sip.require_siprec",
                "media.rtp_timeout_s",
                "media.max_call_duration_s",
                "http.api_key",
                "http.rate_limit_per_s",
                "http.tls_cert_file",
                "http.tls_key_file",
                "recording.min_free_mb",
            ];
            // SIP TLS files reload live when TLS runs; starting it needs a restart (its port).
            let mut sip_tls = sip_tls.lock().unwrap_or_else(|e| e.into_inner());
            let tls_running = sip_tls.is_some();
            let tls_files = ["sip.tls_cert_file", "sip.tls_key_file", "sip.tls_ca_file"];
            let (applied, restart): (Vec<String>, Vec<String>) =
                changed.into_iter().partition(|k| {
                    LIVE.contains(&k.as_str())
                        || k.starts_with("auth.")
                        || (tls_running && tls_files.contains(&k.as_str()))
                });
            if tls_running {
                match sip_tls_context(&new.sip) {
                    Ok(Some(ctx)) => *sip_tls = Some(Arc::new(ctx)),
                    Ok(None) => tracing::warn!("SIP TLS stays on until a restart"),
                    Err(e) => {
                        tracing::error!(error = %e, "SIP TLS certificate unusable; keeping the old")
                    }
                }
            }
            drop(sip_tls);
            sessions.set_limits(
                new.sip.max_concurrent_calls,
                new.sip.require_siprec,
                new.media.rtp_timeout_s as u64 * 1_000_000_000,
                new.media.max_call_duration_s as u64 * 1_000_000_000,
            );
            api_state.set_auth(api::auth::Auth::from_config(&new.http, &new.auth));
            // Always rebuilt: a renewed certificate usually keeps its file name. A file that
            // changed between the check and here keeps the running context.
            match http_tls(&new.http) {
                Ok(tls) => api_state.set_tls(tls),
                Err(e) => {
                    tracing::error!(error = %e, "HTTPS certificate unusable; keeping the old")
                }
            }
            api_state.set_rate_limit(new.http.rate_limit_per_s);
            api_state.set_min_free_mb(new.recording.min_free_mb);
            // Keys that need a restart keep their running values.
            let mut merged = config.clone();
            merged.sip.max_concurrent_calls = new.sip.max_concurrent_calls;
            merged.sip.require_siprec = new.sip.require_siprec;
            merged.media.rtp_timeout_s = new.media.rtp_timeout_s;
            merged.media.max_call_duration_s = new.media.max_call_duration_s;
            merged.http.api_key = new.http.api_key.clone();
            merged.auth = new.auth.clone();
            merged.http.tls_cert_file = new.http.tls_cert_file.clone();
            merged.http.tls_key_file = new.http.tls_key_file.clone();
            if tls_running {
                merged.sip.tls_cert_file = new.sip.tls_cert_file.clone();
                merged.sip.tls_key_file = new.sip.tls_key_file.clone();
                merged.sip.tls_ca_file = new.sip.tls_ca_file.clone();
            }
            merged.http.rate_limit_per_s = new.http.rate_limit_per_s;
            merged.recording.min_free_mb = new.recording.min_free_mb;
            *config = merged;
            api_state.set_config(serde_json::to_value(&*config).unwrap_or_default());
            json!({"result": "ok", "at": at, "applied": applied, "restart_required": restart})
        }
    };
    api_state.set_reload_status(result.clone());
    result
}

/// Dotted keys whose values differ between two JSON objects.
fn diff_keys(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            for (k, va) in x {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match y.get(k) {
                    Some(vb) => diff_keys(&key, va, vb, out),
                    None => out.push(key),
                }
            }
        }
        _ if a != b => out.push(prefix.to_owned()),
        _ => {}
    }
}

/// Carries out an API request on the calls; `None` means "no such session".
fn handle_api(
    sessions: &mut SessionManager,
    ports: &mut BoundPorts,
    op: api::ApiOp,
) -> Option<serde_json::Value> {
    use api::ApiOp;
    use serde_json::json;
    let now = now();
    let list = |v: Vec<session::PauseStatus>| json!({"count": v.len(), "sessions": v});
    match op {
        ApiOp::End { call_id } => sessions
            .end_session(now, ports, &call_id)
            .then(|| json!({"call_id": call_id, "status": "ending"})),
        ApiOp::Pause {
            call_id: Some(id),
            recording,
            transcription,
            auto_resume_at_ms,
        } => sessions
            .pause(now, &id, (recording, transcription), auto_resume_at_ms)
            .and_then(|s| serde_json::to_value(s).ok()),
        ApiOp::Resume { call_id: Some(id) } => sessions
            .resume(now, &id)
            .and_then(|s| serde_json::to_value(s).ok()),
        ApiOp::PauseStatus { call_id: Some(id) } => sessions
            .pause_status(now, &id)
            .and_then(|s| serde_json::to_value(s).ok()),
        ApiOp::Pause {
            call_id: None,
            recording,
            transcription,
            auto_resume_at_ms,
        } => {
            let ids = sessions.active_call_ids();
            let flags = (recording, transcription);
            Some(list(
                ids.iter()
                    .filter_map(|id| sessions.pause(now, id, flags, auto_resume_at_ms))
                    .collect(),
            ))
        }
        ApiOp::Resume { call_id: None } => {
            let ids = sessions.active_call_ids();
            Some(list(
                ids.iter()
                    .filter_map(|id| sessions.resume(now, id))
                    .collect(),
            ))
        }
        ApiOp::PauseStatus { call_id: None } => Some(list(sessions.pause_statuses(now))),
        ApiOp::Reload => None, // Handled by the caller, which owns the configuration.
    }
}

fn metrics_snapshot(
    io: &Io,
    sessions: &SessionManager,
    dataplane: &Dataplane,
    recorder: &recorder::RecorderHandle,
    ports: &BoundPorts,
    (stt, stt_config): (&SttState, &config::SttConfig),
) -> MetricsSnapshot {
    use std::sync::atomic::Ordering::Relaxed;
    let r = &recorder.counters;
    let redactions = stt
        .handle
        .as_ref()
        .and_then(|h| h.redactor.as_ref())
        .map(|r| {
            r.counts()
                .map(|(k, n)| (k.name().to_owned(), n))
                .into_iter()
                .collect()
        })
        .unwrap_or_default();
    let mut stt_totals = siprec::api::metrics::SttTotals {
        redactions,
        provider: stt_config.provider.name().to_owned(),
        error: stt.error.clone(),
        queue_max: stt_config.queue_max as u64,
        sessions_pending: sessions.transcripts_pending() as u64,
        ..Default::default()
    };
    if let Some(h) = &stt.handle {
        let c = &h.counters;
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed);
        stt_totals.running = true;
        stt_totals.workers = h.workers as u64;
        stt_totals.workers_busy = c.workers_busy.load(Relaxed) as u64;
        stt_totals.queue_depth = c.queue_depth.load(Relaxed) as u64;
        stt_totals.frames = l(&c.frames);
        stt_totals.frames_unknown = l(&c.frames_unknown);
        stt_totals.partials_queued = l(&c.partials_queued);
        stt_totals.partials_dropped = l(&c.partials_dropped);
        stt_totals.finals_queued = l(&c.finals_queued);
        stt_totals.finals_dropped = l(&c.finals_dropped);
        stt_totals.transcripts_partial = l(&c.transcripts_partial);
        stt_totals.transcripts_final = l(&c.transcripts_final);
        stt_totals.failures = l(&c.failures);
        stt_totals.utterances_too_short = l(&c.utterances_too_short);
        stt_totals.audio_seconds = l(&c.audio_ms) as f64 / 1000.0;
        stt_totals.busy_seconds = l(&c.busy_ms) as f64 / 1000.0;
        stt_totals.busy_final_seconds = l(&c.busy_final_ms) as f64 / 1000.0;
    }
    MetricsSnapshot {
        active_calls: sessions.active_calls() as u64,
        sip: io.sip_counters(),
        calls: sessions.counters(),
        rtp: sessions.rtp_totals(),
        dataplane: dataplane.totals(),
        recorder: RecorderTotals {
            frames_popped: r.frames_popped.load(Relaxed),
            frames_unknown_dropped: r.frames_unknown_dropped.load(Relaxed),
            frames_malformed_dropped: r.frames_malformed_dropped.load(Relaxed),
            sessions_closed: r.sessions_closed.load(Relaxed),
            sessions_failed: r.sessions_failed.load(Relaxed),
        },
        ports_in_use: ports.pool.in_use() as u64,
        ports_capacity: ports.pool.capacity() as u64,
        disk_free_bytes: 0, // Filled at scrape time by the API.
        backend: dataplane.backend().to_owned(),
        workers: dataplane.workers() as u64,
        cluster: None,
        upload: None,
        amqp: io.amqp.as_ref().map(|a| siprec::api::metrics::AmqpTotals {
            connected: a.connected.load(Relaxed),
            confirmed: a.confirmed.load(Relaxed),
            dropped: a.dropped.load(Relaxed),
            buffered: a.buffered.load(Relaxed),
            connects: a.connects.load(Relaxed),
        }),
        // Filled at scrape time by the API.
        ws_clients: 0,
        ws_events_dropped: 0,
        ws_slow_disconnects: 0,
        ready: false,
        workers_alive: 0,
        stt: stt_totals,
    }
}

async fn udp_receive(
    socket: Arc<UdpSocket>,
    index: u64,
    tx: mpsc::Sender<Inbound>,
    parse_errors: Arc<std::sync::atomic::AtomicU64>,
    mut gate: tokio::sync::watch::Receiver<Gate>,
) {
    let mut buf = vec![0u8; sip::MAX_MESSAGE_BYTES + 1];
    if !opened(&mut gate).await {
        return;
    }
    loop {
        // Stopping between datagrams only: one read is never lost half-handled.
        let received = tokio::select! {
            biased;
            _ = closed(&mut gate) => return,
            r = socket.recv_from(&mut buf) => r,
        };
        let (n, addr) = match received {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "SIP UDP receive error");
                continue;
            }
        };
        let data = &buf[..n];
        if data.iter().all(|b| b.is_ascii_whitespace()) {
            continue; // Keep-alive.
        }
        match sip::parse_datagram(data) {
            Ok(message) => {
                let peer = Peer {
                    transport: Transport::Udp,
                    addr,
                    conn: Some(index),
                };
                if tx.send(Inbound { peer, message }).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                parse_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(%addr, error = %e, "malformed SIP datagram");
                if let Some(resp) = sip::error_response(data, &e) {
                    let mut out = Vec::new();
                    resp.encode(&mut out);
                    let _ = socket.try_send_to(&out, addr);
                }
            }
        }
    }
}

/// Whether the SIP listening sockets are read. A process taking over waits until its
/// predecessor has stopped reading them and said which calls are its own; that one stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    Wait,
    Run,
    Stop,
}

/// Waits until the gate leaves `Wait`; whether it opened.
async fn opened(gate: &mut tokio::sync::watch::Receiver<Gate>) -> bool {
    matches!(
        gate.wait_for(|g| *g != Gate::Wait).await.as_deref(),
        Ok(Gate::Run)
    )
}

/// Resolves when the gate says stop; never otherwise (also not when its sender is gone).
async fn closed(gate: &mut tokio::sync::watch::Receiver<Gate>) {
    if gate.wait_for(|g| *g == Gate::Stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Connection ids of SIP TCP and TLS connections (UDP sockets are numbered from 0).
/// The process id goes in the high half, so the two processes of a takeover never number two
/// connections alike.
static NEXT_CONN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

async fn tcp_accept(
    listener: TcpListener,
    conns: TcpConns,
    tx: mpsc::Sender<Inbound>,
    parse_errors: Arc<std::sync::atomic::AtomicU64>,
    mut gate: tokio::sync::watch::Receiver<Gate>,
) {
    if !opened(&mut gate).await {
        return;
    }
    loop {
        let accepted = tokio::select! {
            biased;
            _ = closed(&mut gate) => return,
            r = listener.accept() => r,
        };
        let (stream, addr) = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "SIP TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (conns, tx, errors) = (conns.clone(), tx.clone(), parse_errors.clone());
        serve_sip_stream(stream, addr, Transport::Tcp, conns, tx, errors);
    }
}

/// SIP over TLS: each accepted connection completes its handshake (with the context of the
/// moment: a reload swaps it for new connections) before it is served like TCP.
async fn tls_accept(
    listener: TcpListener,
    tls: SipTls,
    conns: TcpConns,
    tx: mpsc::Sender<Inbound>,
    parse_errors: Arc<std::sync::atomic::AtomicU64>,
    failures: Arc<std::sync::atomic::AtomicU64>,
    mut gate: tokio::sync::watch::Receiver<Gate>,
) {
    if !opened(&mut gate).await {
        return;
    }
    loop {
        let accepted = tokio::select! {
            biased;
            _ = closed(&mut gate) => return,
            r = listener.accept() => r,
        };
        let (stream, addr) = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "SIP TLS accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(acceptor) = tls.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            continue;
        };
        let (conns, tx, errors) = (conns.clone(), tx.clone(), parse_errors.clone());
        let failures = failures.clone();
        tokio::spawn(async move {
            match api::tls_accept(&acceptor, stream).await {
                Ok(tls) => serve_sip_stream(tls, addr, Transport::Tls, conns, tx, errors),
                Err(e) => {
                    failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(addr = %Pii(addr), error = %e, "SIP TLS handshake failed");
                }
            }
        });
    }
}

/// Reads SIP messages off one TCP or TLS connection (framed by Content-Length) and writes
/// what the driver queues for it; the connection is known by an id while it lasts.
fn serve_sip_stream<S>(
    stream: S,
    addr: SocketAddr,
    transport: Transport,
    conns: TcpConns,
    tx: mpsc::Sender<Inbound>,
    parse_errors: Arc<std::sync::atomic::AtomicU64>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let seq = NEXT_CONN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = (u64::from(std::process::id()) + 1) << 32 | (seq & 0xffff_ffff);
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(256);
    conns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, out_tx);
    let (mut reader, mut writer) = tokio::io::split(stream);
    tokio::spawn(async move {
        while let Some(bytes) = out_rx.recv().await {
            if writer.write_all(&bytes).await.is_err() || writer.flush().await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut framer = sip::StreamFramer::new();
        let mut buf = vec![0u8; 16 * 1024];
        'conn: loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            framer.push(&buf[..n]);
            while let Some(result) = framer.next_message() {
                match result {
                    Ok(message) => {
                        let peer = Peer {
                            transport,
                            addr,
                            conn: Some(id),
                        };
                        if tx.send(Inbound { peer, message }).await.is_err() {
                            break 'conn;
                        }
                    }
                    Err(e) => {
                        parse_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::debug!(addr = %Pii(addr), error = %e,
                            "SIP stream framing error; closing");
                        break 'conn;
                    }
                }
            }
        }
        conns.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    });
}
