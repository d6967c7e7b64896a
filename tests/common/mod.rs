//! Test support for end-to-end tests against the built `siprec` binary on 127.0.0.1: start and
//! stop the server, a minimal SIP client playing the SRC, a paced RTP sender, WAV reading.
#![allow(dead_code)]

pub mod amqp;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use siprec::media::g711;
use siprec::media::rtp::write_packet;
use siprec::sip::{self, Message, Method, Request, Response};

/// Ports of one test, disjoint from every other test's so nextest can run them in parallel.
/// `n` < 52. SIP 21000+10n, HTTP 22000+n, RTP 23000+200n .. +199 (up to 28999; slots 30–42
/// use 30000+200(n-30), slots 43–47 20000+200(n-43), slots 48–51 22100+200(n-48)), all below
/// the ephemeral range; SIPp tests use 29000+10n and 29300+10n for their own SIP and media.
pub struct TestPorts {
    pub sip: u16,
    pub http: u16,
    pub rtp_min: u16,
    pub rtp_max: u16,
    pub src_sip: u16,
    pub src_rtp: u16,
}

impl TestPorts {
    /// Slot `k` of a block of ports from `base`: SIP base+10k, HTTP base+100+k, RTP
    /// base+200+200k (two hundred ports).
    fn block(base: u16, k: u16) -> TestPorts {
        TestPorts {
            sip: base + 10 * k,
            http: base + 100 + k,
            rtp_min: base + 200 + 200 * k,
            rtp_max: base + 200 + 200 * k + 199,
            src_sip: base + 10 * k + 1,
            src_rtp: base + 10 * k + 2,
        }
    }

    pub fn new(n: u16) -> TestPorts {
        assert!(
            n < 66,
            "slot {n}: no RTP range left below the ephemeral range"
        );
        // Slots 59–61 (the cluster's three nodes) live in 19000–19799, slots 62–65 in
        // 18000–18999, below the default RTP range's top (no test server uses it).
        match n {
            59..62 => return TestPorts::block(19000, n - 59),
            62.. => return TestPorts::block(18000, n - 62),
            _ => {}
        }
        // Slots 30–42 take their RTP ranges from 30000 (29000–29599 belongs to SIPp), slots
        // 43–47 from 20000, 48–51 from 22100 (above the HTTP ports), 52–53 from 29600 (above
        // SIPp's), 54–55 from 21600 (above the SIP ports of slots < 59), 56 from 22900, 57
        // from 32600, 58 from 19800.
        let rtp_min = match n {
            0..30 => 23000 + 200 * n,
            30..43 => 30000 + 200 * (n - 30),
            43..48 => 20000 + 200 * (n - 43),
            48..52 => 22100 + 200 * (n - 48),
            52..54 => 29600 + 200 * (n - 52),
            54..56 => 21600 + 200 * (n - 54),
            // 22900–22999: half a range, between the HTTP ports' and slot 0's.
            56 => 22900,
            // 32600–32767: below Linux's ephemeral range (32768–60999).
            57 => 32600,
            // 19800–19999: the top of the default RTP range, which no test server uses.
            _ => 19800,
        };
        let rtp_max = match n {
            56 => 22999,
            57 => 32767,
            _ => rtp_min + 199,
        };
        TestPorts {
            sip: 21000 + 10 * n,
            http: 22000 + n,
            rtp_min,
            rtp_max,
            src_sip: 21000 + 10 * n + 1,
            src_rtp: 21000 + 10 * n + 2,
        }
    }
}

/// The server binary with a test's environment: `ports` on 127.0.0.1, recordings under
/// `recordings`, no live transcription, the suite's data-plane backend.
pub fn siprec_command(ports: &TestPorts, recordings: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_siprec"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("SIP_HOST", "127.0.0.1")
        .env("HTTP_HOST", "127.0.0.1")
        .env("PORTS", ports.sip.to_string())
        .env("HTTP_PORT", ports.http.to_string())
        .env("RTP_PORT_MIN", ports.rtp_min.to_string())
        .env("RTP_PORT_MAX", ports.rtp_max.to_string())
        .env("RECORDING_DIR", recordings)
        .env("RECORDING_MIN_FREE_MB", "1")
        .env("RTP_PORT_COOLDOWN", "0")
        // Live transcription only where a test asks for it (tests/stt.rs).
        .env("STT_PROVIDER", "none");
    // The suite runs once per data-plane backend: .ci/test sets DATAPLANE_BACKEND.
    if let Ok(backend) = std::env::var("DATAPLANE_BACKEND") {
        cmd.env("DATAPLANE_BACKEND", backend);
    }
    cmd
}

/// A running server with its own recording directory; killed on drop.
pub struct Server {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub ports: TestPorts,
    pub log: PathBuf,
}

impl Server {
    pub fn start(n: u16, env: &[(&str, &str)]) -> Server {
        Server::start_with_args(n, env, &[])
    }

    /// Like `start`, with extra command-line arguments (e.g. `--config FILE`).
    pub fn start_with_args(n: u16, env: &[(&str, &str)], args: &[&std::ffi::OsStr]) -> Server {
        let ports = TestPorts::new(n);
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("server.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let recordings = dir.path().join("recordings");
        let mut cmd = siprec_command(&ports, &recordings);
        cmd.args(args).stdout(Stdio::null()).stderr(log_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn siprec");
        let server = Server {
            child: Some(child),
            dir,
            ports,
            log,
        };
        let tls = env.iter().any(|(k, _)| *k == "HTTP_TLS_CERT_FILE");
        server.wait_ready(tls);
        server
    }

    pub fn recordings(&self) -> PathBuf {
        self.dir.path().join("recordings")
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_ready(&self, tls: bool) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if tls {
                // The certificate is the test's to check; readiness is all this asks.
                let url = format!("https://127.0.0.1:{}/health/ready", self.ports.http);
                let ok = std::process::Command::new("curl")
                    .args(["-sf", "-k", "-o", "/dev/null", "--max-time", "2", &url])
                    .status()
                    .is_ok_and(|s| s.success());
                if ok {
                    return;
                }
            } else if let Ok((200, _)) = http_get(self.ports.http, "/health/ready") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server not ready in 15 s; log:\n{}", self.log_text());
    }

    /// Sends `signal` to the server without waiting.
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain syscall on our own child's pid.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Waits up to `timeout` for the server to exit; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGTERM, then wait for a clean exit; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: plain syscall on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// GET over a plain HTTP/1.0 connection: (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    http_request(port, "GET", path, &[], "")
}

/// A minimal SIPREC client (the SRC side of one dialog) over UDP.
pub struct Src {
    pub sock: UdpSocket,
    pub server: SocketAddr,
    pub call_id: String,
    pub from_tag: String,
    pub to_tag: Option<String>,
    pub cseq: u32,
}

impl Src {
    pub fn new(local_port: u16, server_port: u16, call_id: &str) -> Src {
        let sock = UdpSocket::bind(("127.0.0.1", local_port)).expect("bind SRC SIP socket");
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Src {
            sock,
            server: SocketAddr::from(([127, 0, 0, 1], server_port)),
            call_id: call_id.to_owned(),
            from_tag: "src-tag-1".to_owned(),
            to_tag: None,
            cseq: 0,
        }
    }

    fn local(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    /// A request of this dialog with fresh Via branch and the next CSeq.
    pub fn request(&mut self, method: Method) -> Request {
        if method != Method::Ack {
            self.cseq += 1;
        }
        let mut r = Request::new(method.clone(), format!("sip:srs@{}", self.server));
        // Branches are unique per request across the whole test process (RFC 3261 §8.1.1.7).
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let unique = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let via = format!(
            "SIP/2.0/UDP {};branch=z9hG4bK-t{pid}-{unique};rport",
            self.local()
        );
        r.headers.push("Via", via);
        r.headers.push("Max-Forwards", "70");
        r.headers
            .push("From", format!("<sip:src@127.0.0.1>;tag={}", self.from_tag));
        let to = match &self.to_tag {
            Some(t) => format!("<sip:srs@127.0.0.1>;tag={t}"),
            None => "<sip:srs@127.0.0.1>".to_owned(),
        };
        r.headers.push("To", to);
        r.headers.push("Call-ID", self.call_id.clone());
        r.headers
            .push("CSeq", format!("{} {}", self.cseq, method.as_str()));
        r.headers
            .push("Contact", format!("<sip:src@{}>;+sip.src", self.local()));
        r
    }

    pub fn send(&self, request: &Request) {
        let mut out = Vec::new();
        request.encode(&mut out);
        self.sock.send_to(&out, self.server).expect("send SIP");
    }

    /// Sends `request` and returns its final response (provisionals skipped).
    pub fn transact(&mut self, request: &Request) -> Response {
        self.send(request);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline {
            let Ok((n, _)) = self.sock.recv_from(&mut buf) else {
                continue;
            };
            match sip::parse_datagram(&buf[..n]) {
                Ok(Message::Response(r)) if r.status >= 200 => {
                    let same = r.cseq().map(|c| c.seq) == Some(self.cseq);
                    if !same {
                        continue;
                    }
                    if request.method == Method::Invite && self.to_tag.is_none() {
                        self.to_tag = r.to_tag();
                    }
                    return r;
                }
                Ok(Message::Request(req)) => self.answer_server_request(&req),
                _ => {}
            }
        }
        panic!("no final response to {:?}", request.method);
    }

    /// Answers a request from the server (its BYE) with 200.
    pub fn answer_server_request(&self, req: &Request) {
        let resp = Response::from_request(req, 200, "OK");
        let mut out = Vec::new();
        resp.encode(&mut out);
        let _ = self.sock.send_to(&out, self.server);
    }

    /// Waits up to `timeout` for a request from the server (e.g. BYE after RTP timeout).
    pub fn wait_request(&self, timeout: Duration) -> Option<Request> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline {
            let Ok((n, _)) = self.sock.recv_from(&mut buf) else {
                continue;
            };
            if let Ok(Message::Request(req)) = sip::parse_datagram(&buf[..n]) {
                return Some(req);
            }
        }
        None
    }

    pub fn invite(&mut self, content_type: &str, body: &str) -> Response {
        let mut r = self.request(Method::Invite);
        r.headers.push("Require", "siprec");
        r.headers.push("Content-Type", content_type);
        r.body = body.as_bytes().to_vec().into();
        self.transact(&r)
    }

    /// INVITEs a one-stream sendonly recording whose RTP comes from `rtp_port`, checks the
    /// 200 and ACKs it; returns the port the server answered for the stream.
    pub fn record_one(&mut self, rtp_port: u16) -> u16 {
        let (ct, body) = siprec_body(1, "sendonly", rtp_port);
        let ok = self.invite(&ct, &body);
        assert_eq!(ok.status, 200, "INVITE {}", self.call_id);
        self.ack();
        answer_ports(&String::from_utf8_lossy(&ok.body))[0]
    }

    pub fn ack(&mut self) {
        let r = self.request(Method::Ack);
        self.send(&r);
    }

    pub fn bye(&mut self) -> Response {
        let r = self.request(Method::Bye);
        self.transact(&r)
    }
}

/// Sends `audio` to 127.0.0.1:`port` as 20 ms PCMU packets paced in real time, numbered from
/// `first` (timestamps follow).
pub fn send_pcmu(sock: &UdpSocket, port: u16, audio: &[i16], first: u16, ssrc: u32) {
    let t0 = Instant::now();
    for (k, chunk) in audio.chunks(160).enumerate() {
        let due = t0 + Duration::from_millis(20 * k as u64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let payload: Vec<u8> = chunk.iter().map(|&s| g711::linear_to_ulaw(s)).collect();
        let seq = first.wrapping_add(k as u16);
        let mut packet = Vec::new();
        write_packet(0, seq, 160 * u32::from(seq), ssrc, &payload, &mut packet);
        sock.send_to(&packet, ("127.0.0.1", port)).unwrap();
    }
}

/// Ports of the m-lines in an SDP answer, in order (0 for rejected).
pub fn answer_ports(sdp: &str) -> Vec<u16> {
    sdp.lines()
        .filter_map(|l| l.strip_prefix("m="))
        .map(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0)
        })
        .collect()
}

/// A SIPREC multipart body with `n` labelled PCMU m-lines (+ telephone-event 101), and RFC 7865
/// metadata naming two participants.
pub fn siprec_body(n: usize, direction: &str, src_rtp: u16) -> (String, String) {
    let mut sdp = String::from(
        "v=0\r\no=SRC 100 1 IN IP4 127.0.0.1\r\ns=SIPREC\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n",
    );
    for i in 0..n {
        sdp.push_str(&format!(
            "m=audio {} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=label:{}\r\na={direction}\r\n",
            src_rtp + 2 * i as u16,
            i + 1
        ));
    }
    let metadata = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\r\n\
<recording xmlns='urn:ietf:params:xml:ns:recording:1'>\r\n\
<datamode>complete</datamode>\r\n\
<session session_id=\"c2Vzc2lvbjE=\"><sipSessionID>abc</sipSessionID></session>\r\n\
<participant participant_id=\"cGFydDE=\"><nameID aor=\"sip:alice@example.com\"><name>Alice</name></nameID></participant>\r\n\
<participant participant_id=\"cGFydDI=\"><nameID aor=\"sip:bob@example.com\"><name>Bob</name></nameID></participant>\r\n\
<stream stream_id=\"c3RyMQ==\" session_id=\"c2Vzc2lvbjE=\"><label>1</label></stream>\r\n\
<stream stream_id=\"c3RyMg==\" session_id=\"c2Vzc2lvbjE=\"><label>2</label></stream>\r\n\
<participantstreamassoc participant_id=\"cGFydDE=\"><send>c3RyMQ==</send><recv>c3RyMg==</recv></participantstreamassoc>\r\n\
<participantstreamassoc participant_id=\"cGFydDI=\"><send>c3RyMg==</send><recv>c3RyMQ==</recv></participantstreamassoc>\r\n\
</recording>\r\n";
    let body = format!(
        "--BOUNDARY\r\nContent-Type: application/sdp\r\n\r\n{sdp}\r\n--BOUNDARY\r\nContent-Type: application/rs-metadata+xml\r\nContent-Disposition: recording-session\r\n\r\n{metadata}\r\n--BOUNDARY--\r\n"
    );
    ("multipart/mixed;boundary=BOUNDARY".to_owned(), body)
}

/// Deterministic test audio for stream `seed`: a chirp-like sum of two tones with a slow
/// envelope, distinct per seed, never silent for long; 8 kHz.
pub fn source_audio(seed: u32, samples: usize) -> Vec<i16> {
    let f1 = 300.0 + 170.0 * seed as f64;
    let f2 = 1100.0 + 90.0 * seed as f64;
    (0..samples)
        .map(|i| {
            let t = i as f64 / 8000.0;
            let env = 0.55 + 0.45 * (2.0 * std::f64::consts::PI * 1.3 * t).sin();
            let v = (2.0 * std::f64::consts::PI * (f1 + 40.0 * t) * t).sin() * 0.6
                + (2.0 * std::f64::consts::PI * f2 * t).sin() * 0.3;
            (v * env * 12000.0) as i16 + if i % 2 == 0 { 3 } else { -3 }
        })
        .collect()
}

/// What the G.711 µ-law round trip makes of `pcm`: the exact samples a correct recording holds.
pub fn ulaw_roundtrip(pcm: &[i16]) -> Vec<i16> {
    pcm.iter()
        .map(|&s| g711::ulaw_to_linear(g711::linear_to_ulaw(s)))
        .collect()
}

/// One scheduled datagram: send `bytes` to `port` at `at` after the schedule's start.
pub struct Scheduled {
    pub at: Duration,
    pub port: u16,
    pub bytes: Vec<u8>,
}

/// Builds the µ-law packets of `pcm` (20 ms each) starting at schedule time `start`, with
/// RTP sequence `seq0` and timestamp `ts0`.
pub fn audio_packets(
    port: u16,
    ssrc: u32,
    seq0: u16,
    ts0: u32,
    start: Duration,
    pcm: &[i16],
) -> Vec<Scheduled> {
    pcm.chunks(160)
        .enumerate()
        .map(|(i, chunk)| {
            let payload: Vec<u8> = chunk.iter().map(|&s| g711::linear_to_ulaw(s)).collect();
            let mut bytes = Vec::new();
            write_packet(
                0,
                seq0.wrapping_add(i as u16),
                ts0.wrapping_add(160 * i as u32),
                ssrc,
                &payload,
                &mut bytes,
            );
            Scheduled {
                at: start + Duration::from_millis(20 * i as u64),
                port,
                bytes,
            }
        })
        .collect()
}

/// RFC 4733 packets of one DTMF digit lasting `packets` × 20 ms (the last three with E bit,
/// as senders repeat the end packet), all with the event's start timestamp.
pub fn dtmf_packets(
    port: u16,
    ssrc: u32,
    seq0: u16,
    ts: u32,
    start: Duration,
    digit: u8,
    packets: usize,
) -> Vec<Scheduled> {
    (0..packets + 2)
        .map(|i| {
            let end = i + 1 >= packets;
            let duration = (160 * (i.min(packets - 1) + 1)) as u16;
            let payload = [
                digit,
                if end { 0x80 | 10 } else { 10 },
                (duration >> 8) as u8,
                duration as u8,
            ];
            let mut bytes = Vec::new();
            write_packet(
                101,
                seq0.wrapping_add(i as u16),
                ts,
                ssrc,
                &payload,
                &mut bytes,
            );
            if i == 0 {
                bytes[1] |= 0x80; // Marker on the first packet of the event.
            }
            let at = start + Duration::from_millis(20 * i.min(packets - 1) as u64);
            Scheduled { at, port, bytes }
        })
        .collect()
}

/// Sends every scheduled datagram at its time (absolute schedule, so pacing doesn't drift).
pub fn play(sock: &UdpSocket, mut schedule: Vec<Scheduled>, origin: Instant) {
    schedule.sort_by_key(|s| s.at);
    for s in schedule {
        let due = origin + s.at;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let _ = sock.send_to(&s.bytes, ("127.0.0.1", s.port));
    }
}

/// Waits for `dir/*/*/session.json` files to appear; returns their directories.
pub fn wait_sessions(root: &Path, count: usize, timeout: Duration) -> Vec<PathBuf> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut found = Vec::new();
        if let Ok(days) = std::fs::read_dir(root) {
            for day in days.flatten() {
                if let Ok(sessions) = std::fs::read_dir(day.path()) {
                    for s in sessions.flatten() {
                        if s.path().join("session.json").exists() {
                            found.push(s.path());
                        }
                    }
                }
            }
        }
        if found.len() >= count || Instant::now() >= deadline {
            found.sort();
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Finds `needle` in `hay` (exact sample match); returns its first index.
/// Checks that `sent` (20 ms packets of 160 samples) is in `leg` in order and never shifted:
/// each packet exactly, or missing on a loaded machine: silence (too late for the recorder)
/// or other audio (lost, and concealed by the receiver). Returns (silent, concealed) packet
/// counts for the caller to hold against the server's counters; an error says what is wrong.
/// More than half missing is an error.
pub fn exact_or_missing(leg: &[i16], sent: &[i16]) -> Result<(usize, usize), String> {
    let packets = sent.len() / 160;
    // Where packet 0 is (or would be: before the recording's start when the first packets
    // never made it).
    let anchor = (0..packets).find_map(|k| {
        let at = find(leg, &sent[k * 160..k * 160 + 160])?;
        Some(at as i64 - (k * 160) as i64)
    });
    let Some(p0) = anchor else {
        return Err(format!("none of the {packets} packets is in the recording"));
    };
    let (mut silent, mut other) = (0, 0);
    for k in 0..packets {
        let (a, b) = (k * 160, k * 160 + 160);
        if p0 + (a as i64) < 0 {
            silent += 1; // Before the recording began: missing.
            continue;
        }
        let start = (p0 + a as i64) as usize;
        let Some(got) = leg.get(start..start + 160) else {
            return Err(format!("packet {k} is past the end of the recording"));
        };
        if got == &sent[a..b] {
            continue;
        }
        if got.iter().any(|&x| x != 0) {
            other += 1;
        } else {
            silent += 1;
        }
    }
    if (silent + other) * 2 > packets {
        return Err(format!(
            "{silent} silent and {other} other of {packets} packets"
        ));
    }
    Ok((silent, other))
}

pub fn find(hay: &[i16], needle: &[i16]) -> Option<usize> {
    if needle.is_empty() || needle.len() > hay.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Channel `c` of an interleaved buffer.
pub fn channel(interleaved: &[i16], channels: usize, c: usize) -> Vec<i16> {
    interleaved
        .iter()
        .skip(c)
        .step_by(channels)
        .copied()
        .collect()
}

/// Any HTTP request over HTTP/1.0: (status, body); panics if the server can't be reached.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    http_request(port, method, path, headers, body).expect("HTTP request")
}

fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n");
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
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

/// A self-signed certificate for 127.0.0.1 and its key, written to `dir/{name}.crt|.key`.
pub fn self_signed(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", &format!("/CN={name}")])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    (cert, key)
}
