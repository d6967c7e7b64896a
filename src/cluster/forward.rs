//! Sends a per-call API request on to the node that owns the call (HTTP/1.1, or HTTPS when
//! the owner advertises an https:// URL), and hands its answer back unchanged.
//!
//! Refuses: forwarding twice. A forwarded request carries [`FORWARDED_HEADER`]; a node that
//! receives one answers from what it has, so two nodes that disagree never bounce a request.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode, Uri};

/// Names the node a request was forwarded from.
pub const FORWARDED_HEADER: &str = "x-siprec-forwarded-by";
/// The whole exchange with the owner, connect to last byte.
const DEADLINE: Duration = Duration::from_secs(5);
/// The most of an owner's answer we pass back.
const BODY_MAX: usize = 4 << 20;

/// The owner's answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// What to send: method, path with query, the caller's credentials and body.
pub struct Outgoing<'a> {
    pub method: Method,
    pub path_and_query: &'a str,
    /// Header name and value pairs copied from the caller (credentials, content type).
    pub headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
    pub body: Bytes,
    pub from_node: &'a str,
}

/// Sends `out` to the API at `base` (`http(s)://host:port`).
pub async fn send(base: &str, out: Outgoing<'_>) -> Result<Answer, String> {
    match tokio::time::timeout(DEADLINE, exchange(base, out)).await {
        Ok(r) => r,
        Err(_) => Err(format!("{base} did not answer within {DEADLINE:?}")),
    }
}

async fn exchange(base: &str, out: Outgoing<'_>) -> Result<Answer, String> {
    let uri: Uri = base
        .parse()
        .map_err(|e| format!("bad node URL {base}: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("bad node URL {base}: http:// or https:// expected")),
    };
    let host = uri
        .host()
        .ok_or_else(|| format!("bad node URL {base}: no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connect {base}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let mut req = Request::builder()
        .method(out.method)
        .uri(out.path_and_query)
        .header(hyper::header::HOST, authority)
        .header(FORWARDED_HEADER, out.from_node);
    for (name, value) in out.headers {
        req = req.header(name, value);
    }
    let req = req
        .body(Full::new(out.body))
        .map_err(|e| format!("request: {e}"))?;
    if tls {
        let connector = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls_client())
            .map_err(|e| format!("TLS: {e}"))?
            .build();
        let ssl = connector
            .configure()
            .and_then(|c| c.into_ssl(&host))
            .map_err(|e| format!("TLS: {e}"))?;
        let mut stream =
            tokio_openssl::SslStream::new(ssl, tcp).map_err(|e| format!("TLS: {e}"))?;
        std::pin::Pin::new(&mut stream)
            .connect()
            .await
            .map_err(|e| format!("TLS handshake with {base}: {e}"))?;
        round_trip(hyper_util::rt::TokioIo::new(stream), req).await
    } else {
        round_trip(hyper_util::rt::TokioIo::new(tcp), req).await
    }
}

async fn round_trip<IO>(io: IO, req: Request<Full<Bytes>>) -> Result<Answer, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP: {e}"));
    let answer = match resp {
        Ok(resp) => {
            let status = resp.status();
            let content_type = resp
                .headers()
                .get(hyper::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let limited = http_body_util::Limited::new(resp.into_body(), BODY_MAX);
            let body = limited
                .collect()
                .await
                .map_err(|e| format!("HTTP body: {e}"))?
                .to_bytes();
            Ok(Answer {
                status,
                content_type,
                body,
            })
        }
        Err(e) => Err(e),
    };
    driver.abort();
    answer
}
