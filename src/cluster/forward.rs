//! Sends a per-call API request on to the node that owns the call (HTTP/1.1, or HTTPS when
//! the owner advertises an https:// URL), and hands its answer back unchanged.
//!
//! Refuses: forwarding twice. A forwarded request carries [`FORWARDED_HEADER`]; a node that
//! receives one answers from what it has, so two nodes that disagree never bounce a request.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request};

use crate::httpc;

/// Names the node a request was forwarded from.
pub const FORWARDED_HEADER: &str = "x-siprec-forwarded-by";
/// The most of an owner's answer we pass back.
const BODY_MAX: usize = 4 << 20;

/// What to send: method, path with query, the caller's credentials and body.
pub struct Outgoing<'a> {
    pub method: Method,
    pub path_and_query: String,
    /// Header name and value pairs copied from the caller (credentials, content type).
    pub headers: Vec<(hyper::header::HeaderName, hyper::header::HeaderValue)>,
    pub body: Bytes,
    pub from_node: &'a str,
}

/// Sends `out` to the API at `base` (`http(s)://host:port`), connect to last byte within
/// `deadline`.
pub async fn send(
    base: &str,
    out: Outgoing<'_>,
    deadline: Duration,
) -> Result<httpc::Answer, String> {
    let to = httpc::Endpoint::parse(base)?;
    let mut req = Request::builder()
        .method(out.method)
        .uri(out.path_and_query.as_str())
        .header(hyper::header::HOST, to.authority.as_str())
        .header(FORWARDED_HEADER, out.from_node);
    for (name, value) in out.headers {
        req = req.header(name, value);
    }
    let req = req
        .body(Full::new(out.body))
        .map_err(|e| format!("request: {e}"))?;
    httpc::send(&to, req, deadline, BODY_MAX).await
}
