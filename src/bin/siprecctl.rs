//! `siprecctl`: the operator CLI over siprec's HTTP API.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Operator CLI for a running siprec server (talks to its HTTP API).
#[derive(Parser, Debug)]
#[command(name = "siprecctl", version, about)]
struct Cli {
    /// Server address (host:port of the HTTP API).
    #[arg(long, default_value = "127.0.0.1:8080", env = "SIPRECCTL_ADDR")]
    addr: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Liveness (exit 0 when the process answers).
    Live,
    /// Readiness with every check (exit 1 when not ready).
    Ready,
    /// Active recording sessions, or one by Call-ID.
    Sessions {
        #[arg(long)]
        id: Option<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    let path = match &cli.command {
        Command::Live => "/health/live".to_owned(),
        Command::Ready => "/health/ready".to_owned(),
        Command::Sessions { id: None } => "/api/sessions".to_owned(),
        Command::Sessions { id: Some(id) } => format!("/api/sessions?id={}", encode(id)),
    };
    match get(&cli.addr, &path) {
        Ok((status, body)) => {
            match serde_json::from_str::<serde_json::Value>(&body) {
                Ok(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or(body)),
                Err(_) => println!("{body}"),
            }
            std::process::exit(if (200..300).contains(&status) { 0 } else { 1 });
        }
        Err(e) => {
            eprintln!("siprecctl: cannot reach {}: {e}", cli.addr);
            std::process::exit(2);
        }
    }
}

fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: siprecctl\r\n\r\n"
    )?;
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
