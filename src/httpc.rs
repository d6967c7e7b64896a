//! A one-request HTTP/1.1 client (plain or TLS through OpenSSL) on hyper, for the few calls
//! siprec makes itself: forwarding an API request to another node, talking to S3.
//!
//! Refuses: pooling or redirects. Each request opens its connection, sends, reads a bounded
//! answer and closes, all within one deadline, so a dead peer costs one timeout and nothing
//! lingers.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{HeaderMap, Request, StatusCode, Uri};

/// A peer's answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Where a base URL (`http(s)://host[:port]`) points.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// `host[:port]` as the Host header carries it.
    pub authority: String,
}

impl Endpoint {
    pub fn parse(base: &str) -> Result<Endpoint, String> {
        let uri: Uri = base.parse().map_err(|e| format!("bad URL {base}: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("bad URL {base}: http:// or https:// expected")),
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("bad URL {base}: no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        Ok(Endpoint {
            tls,
            host,
            port,
            authority,
        })
    }
}

/// Sends `req` (its URI only the path and query) to `to`, reading at most `body_max` bytes of
/// the answer, all within `deadline`.
pub async fn send(
    to: &Endpoint,
    req: Request<Full<Bytes>>,
    deadline: Duration,
    body_max: usize,
) -> Result<Answer, String> {
    let at = format!("{}:{}", to.host, to.port);
    match tokio::time::timeout(deadline, exchange(to, req, body_max)).await {
        Ok(r) => r.map_err(|e| format!("{at}: {e}")),
        Err(_) => Err(format!("{at} did not answer within {deadline:?}")),
    }
}

async fn exchange(
    to: &Endpoint,
    req: Request<Full<Bytes>>,
    body_max: usize,
) -> Result<Answer, String> {
    let tcp = tokio::net::TcpStream::connect((to.host.as_str(), to.port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    if to.tls {
        let ssl = connector()?
            .configure()
            .and_then(|c| c.into_ssl(&to.host))
            .map_err(|e| format!("TLS: {e}"))?;
        let mut stream =
            tokio_openssl::SslStream::new(ssl, tcp).map_err(|e| format!("TLS: {e}"))?;
        std::pin::Pin::new(&mut stream)
            .connect()
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        round_trip(hyper_util::rt::TokioIo::new(stream), req, body_max).await
    } else {
        round_trip(hyper_util::rt::TokioIo::new(tcp), req, body_max).await
    }
}

/// The TLS client context, built once: building it reads the system's CA bundle from disk,
/// which must not happen per request on the control plane's thread.
fn connector() -> Result<&'static openssl::ssl::SslConnector, String> {
    static CONNECTOR: std::sync::OnceLock<Result<openssl::ssl::SslConnector, String>> =
        std::sync::OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls_client())
                .map(|b| b.build())
                .map_err(|e| format!("TLS: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

async fn round_trip<IO>(
    io: IO,
    req: Request<Full<Bytes>>,
    body_max: usize,
) -> Result<Answer, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let answer = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let limited = http_body_util::Limited::new(resp.into_body(), body_max);
        let body = limited
            .collect()
            .await
            .map_err(|e| format!("HTTP body: {e}"))?
            .to_bytes();
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
    .await;
    driver.abort();
    answer
}
