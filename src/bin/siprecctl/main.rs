//! `siprecctl`: the operator CLI over siprec's HTTP API.
//!
//! Exit codes: 0 success, 1 the server refused the request (4xx), 2 the server failed (5xx) or
//! could not be reached, 64 bad command line (clap's own usage errors exit 2 as well).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use clap::Parser;
use serde_json::Value;

mod cli;
use cli::*;

fn main() {
    let cli = Cli::parse();
    if let Command::Events {
        call_id,
        analytics,
        count,
    } = &cli.command
    {
        let feed = if *analytics {
            "analytics"
        } else {
            "transcriptions"
        };
        let target = target_or_exit(&cli);
        std::process::exit(follow_events(
            &target,
            feed,
            call_id.as_deref(),
            cli.token.as_deref().or(cli.api_key.as_deref()),
            *count,
            cli.json,
        ));
    }
    match &cli.command {
        Command::Completions { shell } => {
            print!(
                "{}",
                match shell.as_str() {
                    "zsh" => include_str!(concat!(env!("OUT_DIR"), "/_siprecctl")),
                    "fish" => include_str!(concat!(env!("OUT_DIR"), "/siprecctl.fish")),
                    _ => include_str!(concat!(env!("OUT_DIR"), "/siprecctl.bash")),
                }
            );
            return;
        }
        Command::Man => {
            print!("{}", include_str!(concat!(env!("OUT_DIR"), "/siprecctl.1")));
            return;
        }
        Command::Decrypt {
            input,
            output,
            key_file,
        } => std::process::exit(decrypt(input, output.as_deref(), key_file)),
        _ => {}
    }
    let id = |s: &str| encode(s);
    let (method, path, body): (&str, String, Option<String>) = match &cli.command {
        Command::Status => ("GET", "/status".into(), None),
        Command::Health => ("GET", "/health".into(), None),
        Command::Live => ("GET", "/health/live".into(), None),
        Command::Ready => ("GET", "/health/ready".into(), None),
        Command::Sessions { action } => match action {
            SessionsAction::List { cluster } => {
                ("GET", format!("/api/sessions{}", scope(*cluster)), None)
            }
            SessionsAction::Show { call_id } => {
                ("GET", format!("/api/sessions?id={}", id(call_id)), None)
            }
            SessionsAction::Stop { call_id } => {
                ("DELETE", format!("/api/sessions/{}", id(call_id)), None)
            }
            SessionsAction::Stats { cluster } => (
                "GET",
                format!("/api/sessions/stats{}", scope(*cluster)),
                None,
            ),
        },
        Command::Pause {
            call_id,
            all,
            recording,
            transcription,
            resume_after,
        } => {
            let both = !recording && !transcription;
            let body = serde_json::json!({
                "pause_recording": both || *recording,
                "pause_transcription": both || *transcription,
                "auto_resume_after": resume_after,
            })
            .to_string();
            match (call_id, all) {
                (_, true) => ("POST", "/api/sessions/pause-all".into(), Some(body)),
                (Some(c), false) => ("POST", format!("/api/sessions/{}/pause", id(c)), Some(body)),
                (None, false) => usage("pause needs a Call-ID or --all"),
            }
        }
        Command::Config { action } => match action {
            ConfigAction::Show => ("GET", "/api/config".into(), None),
            ConfigAction::Reload => ("POST", "/api/config/reload".into(), None),
            ConfigAction::Validate { file } => {
                let text = std::fs::read_to_string(file).unwrap_or_else(|e| {
                    eprintln!("siprecctl: cannot read {}: {e}", file.display());
                    std::process::exit(64);
                });
                let doc: toml::Value = toml::from_str(&text).unwrap_or_else(|e| {
                    eprintln!("siprecctl: {} is not TOML: {e}", file.display());
                    std::process::exit(1);
                });
                let body = serde_json::to_string(&doc).unwrap_or_default();
                ("POST", "/api/config/validate".into(), Some(body))
            }
        },
        Command::Events { .. }
        | Command::Completions { .. }
        | Command::Man
        | Command::Decrypt { .. } => {
            unreachable!("handled above")
        }
        Command::Gdpr { action } => {
            let (route, call_id) = match action {
                GdprAction::Export { call_id } => ("export", call_id),
                GdprAction::Erase { call_id } => ("erase", call_id),
            };
            let body = serde_json::json!({ "call_id": call_id }).to_string();
            ("POST", format!("/api/compliance/gdpr/{route}"), Some(body))
        }
        Command::Stt { action } => match action {
            SttAction::Submit {
                audio_path,
                call_id,
                session_id,
                language,
                priority,
            } => {
                let body = serde_json::json!({
                    "audio_path": audio_path,
                    "call_uuid": call_id,
                    "session_id": session_id,
                    "language": language,
                    "priority": priority,
                })
                .to_string();
                ("POST", "/api/stt/submit".into(), Some(body))
            }
            SttAction::Jobs { status, limit } => {
                let mut q = Vec::new();
                if let Some(s) = status {
                    q.push(format!("status={}", id(s)));
                }
                if let Some(l) = limit {
                    q.push(format!("limit={l}"));
                }
                ("GET", format!("/api/stt/jobs?{}", q.join("&")), None)
            }
            SttAction::Job { job_id } => ("GET", format!("/api/stt/jobs/{}", id(job_id)), None),
            SttAction::Stats => ("GET", "/api/stt/stats".into(), None),
            SttAction::Metrics => ("GET", "/api/stt/metrics".into(), None),
            SttAction::Purge => ("POST", "/api/stt/queue/purge".into(), None),
        },
        Command::Resume { call_id, all } => match (call_id, all) {
            (_, true) => ("POST", "/api/sessions/resume-all".into(), None),
            (Some(c), false) => ("POST", format!("/api/sessions/{}/resume", id(c)), None),
            (None, false) => usage("resume needs a Call-ID or --all"),
        },
    };
    let target = target_or_exit(&cli);
    let auth = Auth {
        api_key: cli.api_key.as_deref(),
        token: cli.token.as_deref(),
    };
    match request(&target, method, &path, auth, body.as_deref()) {
        Ok((status, text)) => {
            let value: Option<Value> = serde_json::from_str(&text).ok();
            match (&value, cli.json) {
                (Some(v), false) => print_human(&cli.command, v),
                (Some(v), true) => {
                    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default())
                }
                (None, _) => println!("{text}"),
            }
            std::process::exit(match status {
                200..=299 => 0,
                400..=499 => 1,
                _ => 2,
            });
        }
        Err(e) => {
            eprintln!("siprecctl: cannot reach {}: {e}", target.authority);
            std::process::exit(2);
        }
    }
}

/// Where the API is and how to reach it.
struct Target {
    /// `host:port`, for connecting and the Host header.
    authority: String,
    host: String,
    /// Set for https:// URLs.
    tls: Option<openssl::ssl::SslConnector>,
}

fn target_or_exit(cli: &Cli) -> Target {
    target(&cli.url, cli.cacert.as_deref()).unwrap_or_else(|e| {
        eprintln!("siprecctl: {e}");
        std::process::exit(64);
    })
}

/// `host:port`, `http://host:port` or `https://host[:port]` (443 by default).
fn target(url: &str, cacert: Option<&std::path::Path>) -> Result<Target, String> {
    let (tls, rest) = match url.split_once("://") {
        Some(("https", rest)) => (true, rest),
        Some(("http", rest)) => (false, rest),
        Some((scheme, _)) => return Err(format!("--url: unsupported scheme {scheme}")),
        None => (false, url),
    };
    let authority = rest.split('/').next().unwrap_or("").to_owned();
    if authority.is_empty() {
        return Err(format!("--url {url}: no host"));
    }
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok() && !authority.ends_with(']'));
    let authority = match (has_port, tls) {
        (true, _) => authority,
        (false, true) => format!("{authority}:443"),
        (false, false) => format!("{authority}:80"),
    };
    let host = authority
        .rsplit_once(':')
        .map_or("", |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let tls = match tls {
        false => None,
        true => {
            let mut b = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls_client())
                .map_err(|e| format!("TLS: {e}"))?;
            if let Some(ca) = cacert {
                b.set_ca_file(ca)
                    .map_err(|e| format!("--cacert {}: {e}", ca.display()))?;
            }
            Some(b.build())
        }
    };
    Ok(Target {
        authority,
        host,
        tls,
    })
}

/// A plain or TLS connection to the API.
enum Conn {
    Plain(TcpStream),
    Tls(Box<openssl::ssl::SslStream<TcpStream>>),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

fn connect(target: &Target, read_timeout: Option<Duration>) -> std::io::Result<Conn> {
    let tcp = TcpStream::connect(&target.authority)?;
    tcp.set_read_timeout(read_timeout)?;
    let Some(tls) = &target.tls else {
        return Ok(Conn::Plain(tcp));
    };
    // `connect` checks the certificate against the host name, or the IP address.
    tls.connect(&target.host, tcp)
        .map(|s| Conn::Tls(Box::new(s)))
        .map_err(|e| std::io::Error::other(format!("TLS: {e}")))
}

#[derive(Clone, Copy)]
struct Auth<'a> {
    api_key: Option<&'a str>,
    token: Option<&'a str>,
}

fn usage(message: &str) -> ! {
    eprintln!("siprecctl: {message}");
    std::process::exit(64);
}

/// A short human rendering; anything unrecognised falls back to pretty JSON.
fn print_human(command: &Command, v: &Value) {
    if let Some(err) = v.get("error") {
        eprintln!(
            "error {}: {} ({})",
            err["status"],
            err["message"].as_str().unwrap_or(""),
            err["code"].as_str().unwrap_or("")
        );
        return;
    }
    match command {
        Command::Sessions {
            action: SessionsAction::List { .. } | SessionsAction::Show { .. },
        } => {
            let cluster = v["scope"] == "cluster";
            if cluster {
                print!("{:<16} ", "NODE");
            }
            println!(
                "{:<40} {:<10} {:<25} PARTICIPANTS",
                "CALL-ID", "STATE", "CREATED"
            );
            for s in v["sessions"].as_array().into_iter().flatten() {
                let parts: Vec<&str> = s["participants"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p.as_str())
                    .collect();
                if cluster {
                    print!("{:<16} ", s["node"].as_str().unwrap_or(""));
                }
                println!(
                    "{:<40} {:<10} {:<25} {}",
                    s["call_id"].as_str().unwrap_or(""),
                    s["state"].as_str().unwrap_or(""),
                    s["created_at"].as_str().unwrap_or(""),
                    parts.join(", ")
                );
            }
            println!("{} session(s)", v["count"]);
        }
        Command::Health | Command::Ready => {
            println!("status: {}", v["status"].as_str().unwrap_or(""));
            if let Some(checks) = v["checks"].as_object() {
                for (name, c) in checks {
                    println!(
                        "  {:<18} {:<10} {}",
                        name,
                        c["status"].as_str().unwrap_or(""),
                        c["message"].as_str().unwrap_or("")
                    );
                }
            }
        }
        Command::Stt {
            action: SttAction::Jobs { .. },
        } => {
            println!(
                "{:<26} {:<10} {:>4} {:<25} AUDIO",
                "JOB", "STATUS", "PRIO", "SUBMITTED"
            );
            for j in v["jobs"].as_array().into_iter().flatten() {
                println!(
                    "{:<26} {:<10} {:>4} {:<25} {}",
                    j["job_id"].as_str().unwrap_or(""),
                    j["status"].as_str().unwrap_or(""),
                    j["priority"],
                    j["submitted_at"].as_str().unwrap_or(""),
                    j["audio_path"].as_str().unwrap_or("")
                );
            }
            println!("{} job(s)", v["count"]);
        }
        Command::Stt {
            action: SttAction::Job { .. },
        } => {
            println!(
                "{} {} ({})",
                v["job_id"].as_str().unwrap_or(""),
                v["status"].as_str().unwrap_or(""),
                v["audio_path"].as_str().unwrap_or("")
            );
            if let Some(e) = v["error"].as_str() {
                println!("error: {e}");
            }
            for u in v["result"]["utterances"].as_array().into_iter().flatten() {
                println!(
                    "[{:>8.2}–{:>8.2}] ch{} {}",
                    u["start_s"].as_f64().unwrap_or(0.0),
                    u["end_s"].as_f64().unwrap_or(0.0),
                    u["channel"],
                    u["text"].as_str().unwrap_or("")
                );
            }
        }
        _ => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
    }
}

fn request(
    target: &Target,
    method: &str,
    path: &str,
    auth: Auth<'_>,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = connect(target, Some(Duration::from_secs(10)))?;
    let body = body.unwrap_or("");
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {}\r\nUser-Agent: siprecctl/{}\r\n",
        target.authority,
        env!("CARGO_PKG_VERSION")
    );
    if let Some(key) = auth.api_key {
        req.push_str(&format!("X-API-Key: {key}\r\n"));
    }
    if let Some(token) = auth.token {
        req.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes())?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Prints events from `/ws/<feed>` until `count` of them or the server closes; the exit code.
fn follow_events(
    target: &Target,
    feed: &str,
    call_id: Option<&str>,
    token: Option<&str>,
    count: Option<usize>,
    json: bool,
) -> i32 {
    use tokio_tungstenite::tungstenite::{client, Message};
    let mut query = Vec::new();
    if let Some(c) = call_id {
        query.push(format!("call_id={}", encode(c)));
    }
    if let Some(t) = token {
        query.push(format!("token={}", encode(t)));
    }
    // The scheme only shapes the handshake request; TLS is already on `stream` for https.
    let url = format!("ws://{}/ws/{feed}?{}", target.authority, query.join("&"));
    let stream = match connect(target, None) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("siprecctl: cannot reach {}: {e}", target.authority);
            return 2;
        }
    };
    let mut ws = match client(url.as_str(), stream) {
        Ok((ws, _)) => ws,
        Err(e) => {
            eprintln!("siprecctl: WebSocket handshake failed: {e}");
            return 2;
        }
    };
    let mut seen = 0;
    loop {
        let text = match ws.read() {
            Ok(Message::Text(t)) => t.to_string(),
            Ok(Message::Close(_)) | Err(_) => return 0,
            Ok(_) => continue,
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        match v["type"].as_str() {
            Some("connected") => continue,
            Some("error") => {
                eprintln!("siprecctl: {}", v["message"].as_str().unwrap_or("refused"));
                return 1;
            }
            _ => {}
        }
        if json {
            println!("{text}");
        } else {
            println!(
                "{} {:<17} {} {}",
                v["timestamp"].as_str().unwrap_or(""),
                v["type"].as_str().unwrap_or(""),
                v["call_id"].as_str().unwrap_or(""),
                v["data"]
            );
        }
        seen += 1;
        if count.is_some_and(|n| seen >= n) {
            let _ = ws.close(None);
            return 0;
        }
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `siprecctl decrypt`: exit status 0, or 1 with the reason on stderr.
fn decrypt(input: &Path, output: Option<&Path>, key_file: &Path) -> i32 {
    use siprec::sink::recorder::{decrypt_file, Keyring};
    let output = match output {
        Some(o) => o.to_path_buf(),
        None if input.extension().is_some_and(|e| e == "enc") => input.with_extension(""),
        None => {
            eprintln!(
                "siprecctl: {} does not end in .enc; give --output",
                input.display()
            );
            return 1;
        }
    };
    let result = Keyring::load(key_file).and_then(|k| decrypt_file(&k, input, &output));
    match result {
        Ok(opened) => {
            let state = if opened.complete {
                "complete"
            } else {
                "cut short (the server stopped while recording): decrypted up to its last whole \
                 record"
            };
            println!(
                "{}: {} bytes, key {}, {state}",
                output.display(),
                opened.plaintext.len(),
                opened.key_id
            );
            0
        }
        Err(e) => {
            eprintln!("siprecctl: {e}");
            1
        }
    }
}

/// The query that asks a node for the whole cluster.
fn scope(cluster: bool) -> &'static str {
    if cluster {
        "?scope=cluster"
    } else {
        ""
    }
}
