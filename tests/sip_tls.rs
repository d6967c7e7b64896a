//! SIP over TLS (`SIP_TLS_CERT_FILE`/`SIP_TLS_KEY_FILE`, `transport=tls`) and mutual TLS
//! (`SIP_TLS_CA_FILE`): a SIPREC call over TLS from an OpenSSL client is answered with a TLS
//! Contact and recorded; under mutual TLS a client without a certificate is refused (counted)
//! and one with an accepted certificate records.

mod common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::*;
use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslStream, SslVerifyMode};
use siprec::sip::{Message, Method, Request, Response, StreamFramer};

const TLS_PORT: u16 = 21565;

/// A SIP client on one TLS connection.
struct TlsSrc {
    stream: SslStream<TcpStream>,
    framer: StreamFramer,
    call_id: String,
    cseq: u32,
    to_tag: Option<String>,
}

impl TlsSrc {
    /// Connects, trusting `ca` for the server; presents `client` (cert, key) if given.
    fn connect(
        ca: &std::path::Path,
        client: Option<(&std::path::Path, &std::path::Path)>,
        call_id: &str,
    ) -> Result<TlsSrc, String> {
        let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
        b.set_ca_file(ca).unwrap();
        b.set_verify(SslVerifyMode::PEER);
        if let Some((cert, key)) = client {
            b.set_certificate_file(cert, SslFiletype::PEM).unwrap();
            b.set_private_key_file(key, SslFiletype::PEM).unwrap();
        }
        let tcp = TcpStream::connect(("127.0.0.1", TLS_PORT)).map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut config = b.build().configure().unwrap();
        config.set_verify_hostname(false); // the certificate names IP 127.0.0.1
        let stream = config
            .connect("127.0.0.1", tcp)
            .map_err(|e| e.to_string())?;
        Ok(TlsSrc {
            stream,
            framer: StreamFramer::new(),
            call_id: call_id.to_owned(),
            cseq: 0,
            to_tag: None,
        })
    }

    fn request(&mut self, method: Method) -> Request {
        if method != Method::Ack {
            self.cseq += 1;
        }
        let mut r = Request::new(
            method.clone(),
            format!("sip:srs@127.0.0.1:{TLS_PORT};transport=tls"),
        );
        let branch = format!("z9hG4bK-tls-{}-{}", self.cseq, method.as_str());
        r.headers
            .push("Via", format!("SIP/2.0/TLS 127.0.0.1:5999;branch={branch}"));
        r.headers.push("Max-Forwards", "70");
        r.headers.push("From", "<sip:src@127.0.0.1>;tag=tlsfrom");
        let to = match &self.to_tag {
            Some(t) => format!("<sip:srs@127.0.0.1>;tag={t}"),
            None => "<sip:srs@127.0.0.1>".to_owned(),
        };
        r.headers.push("To", to);
        r.headers.push("Call-ID", self.call_id.clone());
        r.headers
            .push("CSeq", format!("{} {}", self.cseq, method.as_str()));
        r.headers
            .push("Contact", "<sip:src@127.0.0.1:5999;transport=tls>");
        r
    }

    fn send(&mut self, r: &Request) -> std::io::Result<()> {
        let mut out = Vec::new();
        r.encode(&mut out);
        self.stream.write_all(&out)
    }

    /// The final response to the last request (provisional ones skipped).
    fn final_response(&mut self) -> Option<Response> {
        let mut buf = [0u8; 8192];
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            while let Some(Ok(m)) = self.framer.next_message() {
                if let Message::Response(r) = m {
                    if r.status >= 200 {
                        return Some(r);
                    }
                }
            }
            match self.stream.read(&mut buf) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.framer.push(&buf[..n]),
            }
        }
        None
    }
}

/// A SIPREC call over TLS: 200 with a TLS Contact on the TLS port, RTP recorded, BYE over TLS.
fn tls_call(
    ca: &std::path::Path,
    client: Option<(&std::path::Path, &std::path::Path)>,
    ports: &TestPorts,
    call_id: &str,
) -> Result<Vec<i16>, String> {
    let mut src = TlsSrc::connect(ca, client, call_id)?;
    let (ct, body) = siprec_body(1, "sendonly", ports.src_rtp);
    let mut invite = src.request(Method::Invite);
    invite.headers.push("Require", "siprec");
    invite.headers.push("Content-Type", ct);
    invite.body = body.into_bytes().into();
    src.send(&invite).map_err(|e| e.to_string())?;
    let ok = src.final_response().ok_or("no answer over TLS")?;
    assert_eq!(ok.status, 200);
    let contact = ok.headers.get("Contact").unwrap_or_default().to_owned();
    assert!(
        contact.contains(&format!(":{TLS_PORT};transport=tls")),
        "{contact}"
    );
    src.to_tag = ok.to_tag();
    let ack = src.request(Method::Ack);
    src.send(&ack).unwrap();
    let port = answer_ports(&String::from_utf8_lossy(&ok.body))[0];
    let rtp = UdpSocket::bind(("127.0.0.1", ports.src_rtp)).unwrap();
    let pcm = source_audio(31, 8000);
    play(
        &rtp,
        audio_packets(port, 0x7715, 1, 0, Duration::ZERO, &pcm),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_millis(400));
    let bye = src.request(Method::Bye);
    src.send(&bye).unwrap();
    assert_eq!(src.final_response().map(|r| r.status), Some(200));
    Ok(ulaw_roundtrip(&pcm))
}

#[test]
fn sip_over_tls_and_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "srs");
    let (client_cert, client_key) = self_signed(dir.path(), "src");
    let tls_env = |ca: Option<&std::path::Path>| {
        let mut env = vec![
            ("SIP_TLS_CERT_FILE", cert.display().to_string()),
            ("SIP_TLS_KEY_FILE", key.display().to_string()),
            ("SIP_TLS_PORT", TLS_PORT.to_string()),
        ];
        if let Some(ca) = ca {
            env.push(("SIP_TLS_CA_FILE", ca.display().to_string()));
        }
        env
    };
    let ports = TestPorts::new(56);

    let env = tls_env(None);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start(56, &env);
    let want = tls_call(&cert, None, &ports, "tls-1@127.0.0.1").unwrap();
    let sessions = wait_sessions(&server.recordings(), 1, Duration::from_secs(10));
    let (_, _, leg) = siprec::sink::recorder::read_wav(&sessions[0].join("1.wav")).unwrap();
    assert!(
        find(&leg, &want).is_some(),
        "the call over TLS is recorded exactly"
    );
    // A client that does not trust the server's certificate never gets to send.
    let (other, _) = self_signed(dir.path(), "other");
    assert!(TlsSrc::connect(&other, None, "x").is_err());
    drop(server);

    // Mutual TLS: only clients with a certificate from SIP_TLS_CA_FILE.
    let env = tls_env(Some(&client_cert));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = Server::start(56, &env);
    let refused = tls_call(&cert, None, &ports, "tls-2@127.0.0.1");
    assert!(refused.is_err(), "no client certificate: refused");
    let want = tls_call(
        &cert,
        Some((&client_cert, &client_key)),
        &ports,
        "tls-3@127.0.0.1",
    )
    .unwrap();
    let sessions = wait_sessions(&server.recordings(), 1, Duration::from_secs(10));
    let (_, _, leg) = siprec::sink::recorder::read_wav(&sessions[0].join("1.wav")).unwrap();
    assert!(find(&leg, &want).is_some());
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (_, m) = http_get(ports.http, "/metrics").unwrap();
        if m.contains("siprec_sip_messages_dropped_total{reason=\"tls_handshake\"} 1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "handshake failure not counted:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
