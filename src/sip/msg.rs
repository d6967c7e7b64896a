//! Tolerant SIP message parsing and printing (RFC 3261 §7 and §25), in the spirit of RFC 4475:
//! compact header forms, case-insensitive names, folded lines, LF-only line ends, leading
//! CRLFs, comma-joined values, quoted strings with escapes, IPv6 references.
//!
//! Headers are kept as text in wire order; typed views (Via, NameAddr, CSeq, SipUri) are parsed
//! on demand, so nothing we don't interpret is lost or rewritten.
//!
//! Refuses: messages over 64 KiB or with more than 100 headers, bodies shorter than their
//! Content-Length, start lines that are neither a request nor a response. Never panics on
//! input: every index is checked.

use bytes::Bytes;

/// Largest message we accept, datagram or stream.
pub const MAX_MESSAGE_BYTES: usize = 65536;
/// Most header lines we accept in one message.
pub const MAX_HEADERS: usize = 100;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Update,
    Info,
    Prack,
    Register,
    Subscribe,
    Notify,
    Refer,
    Message,
    Publish,
    Other(String),
}

impl Method {
    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Update => "UPDATE",
            Method::Info => "INFO",
            Method::Prack => "PRACK",
            Method::Register => "REGISTER",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Refer => "REFER",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Other(s) => s,
        }
    }

    /// Method names are case-sensitive (RFC 3261 §7.1).
    pub fn parse(s: &str) -> Method {
        match s {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "OPTIONS" => Method::Options,
            "UPDATE" => Method::Update,
            "INFO" => Method::Info,
            "PRACK" => Method::Prack,
            "REGISTER" => Method::Register,
            "SUBSCRIBE" => Method::Subscribe,
            "NOTIFY" => Method::Notify,
            "REFER" => Method::Refer,
            "MESSAGE" => Method::Message,
            "PUBLISH" => Method::Publish,
            other => Method::Other(other.to_owned()),
        }
    }
}

/// One header line: canonical name (long form for the ones we know) and raw value.
#[derive(Debug, Clone)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// Headers in wire order.
#[derive(Debug, Clone, Default)]
pub struct Headers(pub Vec<Header>);

/// Long forms of the compact header names (RFC 3261 §7.3.3 and later RFCs).
const COMPACT: &[(&str, &str)] = &[
    ("v", "Via"),
    ("f", "From"),
    ("t", "To"),
    ("i", "Call-ID"),
    ("m", "Contact"),
    ("l", "Content-Length"),
    ("c", "Content-Type"),
    ("k", "Supported"),
    ("s", "Subject"),
    ("e", "Content-Encoding"),
    ("o", "Event"),
    ("r", "Refer-To"),
    ("u", "Allow-Events"),
    ("x", "Session-Expires"),
    ("a", "Accept-Contact"),
    ("b", "Referred-By"),
    ("y", "Identity"),
];

/// Canonical spellings of the long names we use, so lookups and printing are uniform.
const CANONICAL: &[&str] = &[
    "Via",
    "From",
    "To",
    "Call-ID",
    "CSeq",
    "Contact",
    "Content-Type",
    "Content-Length",
    "Supported",
    "Require",
    "Allow",
    "Max-Forwards",
    "Record-Route",
    "Route",
    "Subject",
    "Session-Expires",
    "Event",
    "Refer-To",
    "Accept",
    "User-Agent",
    "Server",
    "Retry-After",
    "Content-Disposition",
    "Content-Encoding",
    "Min-SE",
    "Allow-Events",
    "Accept-Contact",
    "Referred-By",
    "Identity",
    "Proxy-Require",
    "Unsupported",
    "Warning",
    "Date",
];

/// The canonical form of a header name (compact forms expanded, known names re-cased).
pub fn canonical_name(name: &str) -> String {
    let name = name.trim();
    if name.len() == 1 {
        if let Some((_, long)) = COMPACT.iter().find(|(c, _)| c.eq_ignore_ascii_case(name)) {
            return (*long).to_owned();
        }
    }
    match CANONICAL.iter().find(|c| c.eq_ignore_ascii_case(name)) {
        Some(c) => (*c).to_owned(),
        None => name.to_owned(),
    }
}

/// Headers whose values are comma-separated lists that may be split (RFC 3261 §7.3.1).
const LIST_HEADERS: &[&str] = &[
    "Via",
    "Route",
    "Record-Route",
    "Supported",
    "Require",
    "Allow",
    "Contact",
    "Proxy-Require",
];

impl Headers {
    /// The first value of `name` (any case, compact or long form).
    pub fn get(&self, name: &str) -> Option<&str> {
        let name = canonical_name(name);
        let value = self
            .0
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(&name))?
            .value
            .as_str();
        if LIST_HEADERS.iter().any(|l| l.eq_ignore_ascii_case(&name)) {
            return split_list(value).into_iter().next();
        }
        Some(value)
    }

    /// Every value of `name`, list headers split at commas outside quotes and angle brackets.
    pub fn get_all<'a>(&'a self, name: &str) -> Vec<&'a str> {
        let name = canonical_name(name);
        let list = LIST_HEADERS.iter().any(|l| l.eq_ignore_ascii_case(&name));
        let mut out = Vec::new();
        for h in self.0.iter().filter(|h| h.name.eq_ignore_ascii_case(&name)) {
            if list {
                out.extend(split_list(&h.value));
            } else {
                out.push(h.value.as_str());
            }
        }
        out
    }

    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.0.push(Header {
            name: canonical_name(name),
            value: value.into(),
        });
    }

    /// Replaces every `name` header with one value (at the first one's position).
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let name = canonical_name(name);
        let value = value.into();
        match self
            .0
            .iter()
            .position(|h| h.name.eq_ignore_ascii_case(&name))
        {
            Some(i) => {
                self.0[i].value = value;
                let mut seen = 0;
                self.0.retain(|h| {
                    if h.name.eq_ignore_ascii_case(&name) {
                        seen += 1;
                        seen == 1
                    } else {
                        true
                    }
                });
            }
            None => self.0.push(Header { name, value }),
        }
    }

    pub fn remove(&mut self, name: &str) {
        let name = canonical_name(name);
        self.0.retain(|h| !h.name.eq_ignore_ascii_case(&name));
    }

    /// True when a list header (Require, Supported, …) names `token`, case-insensitively.
    pub fn has_token(&self, name: &str, token: &str) -> bool {
        self.get_all(name)
            .iter()
            .any(|v| v.trim().eq_ignore_ascii_case(token))
    }
}

/// Splits a header value at commas that are outside quoted strings and `<…>`.
fn split_list(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut quoted, mut angle, mut escaped) = (false, false, false);
    let mut start = 0;
    for (i, c) in value.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                let part = value[start..i].trim();
                if !part.is_empty() {
                    out.push(part);
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    let part = value[start..].trim();
    if !part.is_empty() {
        out.push(part);
    }
    out
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub uri: String,
    pub headers: Headers,
    pub body: Bytes,
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
    pub body: Bytes,
}

#[derive(Debug, Clone)]
pub enum Message {
    Request(Request),
    Response(Response),
}

/// Why a message could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    #[error("message larger than {MAX_MESSAGE_BYTES} bytes")]
    TooLarge,
    #[error("more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("bad start line")]
    BadStartLine,
    #[error("bad header line {0:?}")]
    BadHeader(String),
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    #[error("bad Content-Length")]
    BadContentLength,
    #[error("body shorter than Content-Length")]
    Truncated,
    #[error("message is not UTF-8 in its start line or headers")]
    NotUtf8,
    #[error("no end of headers")]
    Incomplete,
}

impl ParseError {
    /// The status to answer a request with: 413 too large, 513 too many headers (RFC 3261
    /// §21.5.14 "Message Too Large" covers header overflow), 400 otherwise.
    pub fn status(&self) -> u16 {
        match self {
            ParseError::TooLarge => 413,
            ParseError::TooManyHeaders => 513,
            _ => 400,
        }
    }
}

/// Parses one UDP datagram. Content-Length is optional; when present and larger than what
/// remains, the message is rejected; when smaller, the body is cut to it.
pub fn parse_datagram(buf: &[u8]) -> Result<Message, ParseError> {
    if buf.len() > MAX_MESSAGE_BYTES {
        return Err(ParseError::TooLarge);
    }
    let (head, body_start) = split_head(buf).ok_or(ParseError::Incomplete)?;
    let mut message = parse_head(head)?;
    let rest = &buf[body_start..];
    let body = match content_length(headers_of(&message))? {
        Some(n) if n > rest.len() => return Err(ParseError::Truncated),
        Some(n) => &rest[..n],
        None => rest,
    };
    set_body(&mut message, Bytes::copy_from_slice(body));
    check_mandatory(&message)?;
    Ok(message)
}

/// Finds the end of the header block (blank line, CRLF or LF style) after optional leading
/// empty lines; returns the head (without the blank line) and where the body starts.
fn split_head(buf: &[u8]) -> Option<(&[u8], usize)> {
    let mut start = 0;
    while start < buf.len() && (buf[start] == b'\r' || buf[start] == b'\n') {
        start += 1;
    }
    let mut i = start;
    while i < buf.len() {
        if buf[i] == b'\n' {
            // "\n\n" or "\n\r\n" ends the head.
            if buf.get(i + 1) == Some(&b'\n') {
                return Some((&buf[start..i], i + 2));
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some((&buf[start..i], i + 3));
            }
        }
        i += 1;
    }
    None
}

fn parse_head(head: &[u8]) -> Result<Message, ParseError> {
    let text = std::str::from_utf8(head).map_err(|_| ParseError::NotUtf8)?;
    let mut lines: Vec<String> = Vec::new();
    for raw in text.split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let continuation = line.starts_with(' ') || line.starts_with('\t');
        let count = lines.len();
        match lines.last_mut() {
            // Folded line (RFC 3261 §7.3.1): joins the previous header with one space.
            Some(prev) if continuation && count > 1 => {
                let trimmed = prev.trim_end().len();
                prev.truncate(trimmed);
                prev.push(' ');
                prev.push_str(line.trim());
            }
            _ if continuation => return Err(ParseError::BadStartLine),
            _ => {
                if lines.len() > MAX_HEADERS + 1 {
                    return Err(ParseError::TooManyHeaders);
                }
                lines.push(line.to_owned());
            }
        }
    }
    let start = lines.first().ok_or(ParseError::BadStartLine)?;
    let header_lines = &lines[1..];
    if header_lines.len() > MAX_HEADERS {
        return Err(ParseError::TooManyHeaders);
    }
    let mut headers = Headers(Vec::with_capacity(header_lines.len()));
    for line in header_lines {
        if line.trim().is_empty() {
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| ParseError::BadHeader(truncate(line)))?;
        let name = name.trim();
        if name.is_empty() || name.contains(' ') {
            return Err(ParseError::BadHeader(truncate(line)));
        }
        headers.0.push(Header {
            name: canonical_name(name),
            value: value.trim().to_owned(),
        });
    }
    // The encoder always writes a Content-Length: keep room for it, so that whatever parses
    // re-encodes to a message that parses (found by libFuzzer, `src/fuzz.rs`).
    let others = headers
        .0
        .iter()
        .filter(|h| h.name != "Content-Length")
        .count();
    if others >= MAX_HEADERS {
        return Err(ParseError::TooManyHeaders);
    }
    parse_start_line(start.trim(), headers)
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

fn parse_start_line(line: &str, headers: Headers) -> Result<Message, ParseError> {
    let mut parts = line.splitn(3, ' ');
    let first = parts.next().unwrap_or("");
    if first.eq_ignore_ascii_case("SIP/2.0") {
        let code = parts.next().ok_or(ParseError::BadStartLine)?;
        let status: u16 = code.trim().parse().map_err(|_| ParseError::BadStartLine)?;
        if !(100..=699).contains(&status) {
            return Err(ParseError::BadStartLine);
        }
        let reason = parts.next().unwrap_or("").trim().to_owned();
        return Ok(Message::Response(Response {
            status,
            reason,
            headers,
            body: Bytes::new(),
        }));
    }
    let uri = parts.next().ok_or(ParseError::BadStartLine)?.trim();
    let version = parts.next().ok_or(ParseError::BadStartLine)?.trim();
    if !version.eq_ignore_ascii_case("SIP/2.0")
        || first.is_empty()
        || uri.is_empty()
        || !first
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
    {
        return Err(ParseError::BadStartLine);
    }
    Ok(Message::Request(Request {
        method: Method::parse(first),
        uri: uri.to_owned(),
        headers,
        body: Bytes::new(),
    }))
}

fn headers_of(m: &Message) -> &Headers {
    match m {
        Message::Request(r) => &r.headers,
        Message::Response(r) => &r.headers,
    }
}

fn set_body(m: &mut Message, body: Bytes) {
    match m {
        Message::Request(r) => r.body = body,
        Message::Response(r) => r.body = body,
    }
}

fn content_length(h: &Headers) -> Result<Option<usize>, ParseError> {
    match h.get("Content-Length") {
        None => Ok(None),
        Some(v) => {
            let n: usize = v.trim().parse().map_err(|_| ParseError::BadContentLength)?;
            if n > MAX_MESSAGE_BYTES {
                return Err(ParseError::TooLarge);
            }
            Ok(Some(n))
        }
    }
}

/// RFC 3261 §8.1.1: Via, From, To, Call-ID and CSeq are mandatory; we can't route or match a
/// message without them.
fn check_mandatory(m: &Message) -> Result<(), ParseError> {
    let h = headers_of(m);
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        if h.get(name).is_none() {
            return Err(ParseError::MissingHeader(name));
        }
    }
    let cseq = h
        .get("CSeq")
        .and_then(CSeq::parse)
        .ok_or_else(|| ParseError::BadHeader("CSeq".into()))?;
    if let Message::Request(r) = m {
        if r.method != cseq.method && r.method != Method::Ack && r.method != Method::Cancel {
            return Err(ParseError::BadHeader("CSeq method".into()));
        }
    }
    Ok(())
}

/// A best-effort error response to a request that failed to parse: when its Via, From, To,
/// Call-ID and CSeq can be recovered. `None` for responses and garbage (drop and count).
pub fn error_response(buf: &[u8], err: &ParseError) -> Option<Response> {
    let buf = &buf[..buf.len().min(MAX_MESSAGE_BYTES)];
    let (head, _) = split_head(buf).unwrap_or((buf, buf.len()));
    let text = String::from_utf8_lossy(head);
    let first = text.lines().next()?.trim();
    if first.to_ascii_uppercase().starts_with("SIP/") {
        return None;
    }
    let method = first.split(' ').next()?;
    if method == "ACK" {
        return None; // Never answer an ACK.
    }
    let mut headers = Headers::default();
    for line in text.lines().skip(1).take(MAX_HEADERS * 2) {
        if let Some((name, value)) = line.split_once(':') {
            let name = canonical_name(name);
            if ["Via", "From", "To", "Call-ID", "CSeq"].contains(&name.as_str()) {
                headers.0.push(Header {
                    name,
                    value: value.trim().to_owned(),
                });
            }
        }
    }
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        headers.get(name)?;
    }
    let status = err.status();
    let mut resp = Response::new(status, reason_phrase(status));
    resp.headers = headers;
    Some(resp)
}

/// TCP framing (RFC 3261 §18.3): Content-Length is mandatory, messages may be pipelined and
/// arrive in pieces; CRLF keep-alives between messages are skipped.
#[derive(Debug, Default)]
pub struct StreamFramer {
    buf: Vec<u8>,
    failed: bool,
    /// Keep-alive pings ("\r\n\r\n", RFC 5626 §3.5.1) seen since the last call to
    /// [`StreamFramer::take_pings`]; the caller answers each with "\r\n".
    pings: usize,
}

impl StreamFramer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, data: &[u8]) {
        if !self.failed {
            self.buf.extend_from_slice(data);
        }
    }

    /// Keep-alive pings received since the last call.
    pub fn take_pings(&mut self) -> usize {
        std::mem::take(&mut self.pings)
    }

    /// The next complete message, `None` until more bytes arrive, or an error after which the
    /// connection must be closed.
    pub fn next_message(&mut self) -> Option<Result<Message, ParseError>> {
        if self.failed {
            return None;
        }
        // Skip keep-alive line ends between messages.
        let mut skip = 0;
        while skip < self.buf.len() && (self.buf[skip] == b'\r' || self.buf[skip] == b'\n') {
            skip += 1;
        }
        if skip > 0 {
            if self.buf[..skip].windows(4).any(|w| w == b"\r\n\r\n") {
                self.pings += 1;
            }
            self.buf.drain(..skip);
        }
        if self.buf.is_empty() {
            return None;
        }
        let Some((head, body_start)) = split_head(&self.buf) else {
            if self.buf.len() > MAX_MESSAGE_BYTES {
                self.failed = true;
                return Some(Err(ParseError::TooLarge));
            }
            return None;
        };
        let mut message = match parse_head(head) {
            Ok(m) => m,
            Err(e) => {
                self.failed = true;
                return Some(Err(e));
            }
        };
        let length = match content_length(headers_of(&message)) {
            Ok(Some(n)) => n,
            Ok(None) => {
                self.failed = true;
                return Some(Err(ParseError::MissingHeader("Content-Length")));
            }
            Err(e) => {
                self.failed = true;
                return Some(Err(e));
            }
        };
        if body_start + length > MAX_MESSAGE_BYTES {
            self.failed = true;
            return Some(Err(ParseError::TooLarge));
        }
        if self.buf.len() < body_start + length {
            return None;
        }
        let body = Bytes::copy_from_slice(&self.buf[body_start..body_start + length]);
        self.buf.drain(..body_start + length);
        set_body(&mut message, body);
        Some(check_mandatory(&message).map(|()| message))
    }
}

fn encode_headers(headers: &Headers, body: &[u8], out: &mut Vec<u8>) {
    for h in headers.0.iter().filter(|h| h.name != "Content-Length") {
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
}

impl Request {
    pub fn new(method: Method, uri: impl Into<String>) -> Self {
        Request {
            method,
            uri: uri.into(),
            headers: Headers::default(),
            body: Bytes::new(),
        }
    }

    pub fn call_id(&self) -> Option<&str> {
        self.headers.get("Call-ID")
    }

    pub fn cseq(&self) -> Option<CSeq> {
        self.headers.get("CSeq").and_then(CSeq::parse)
    }

    pub fn from(&self) -> Option<NameAddr> {
        self.headers.get("From").and_then(NameAddr::parse)
    }

    pub fn to(&self) -> Option<NameAddr> {
        self.headers.get("To").and_then(NameAddr::parse)
    }

    pub fn top_via(&self) -> Option<Via> {
        self.headers.get("Via").and_then(Via::parse)
    }

    /// Writes the request with CRLF line ends and a correct Content-Length.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(
            format!("{} {} SIP/2.0\r\n", self.method.as_str(), self.uri).as_bytes(),
        );
        encode_headers(&self.headers, &self.body, out);
    }
}

impl Response {
    pub fn new(status: u16, reason: impl Into<String>) -> Self {
        Response {
            status,
            reason: reason.into(),
            headers: Headers::default(),
            body: Bytes::new(),
        }
    }

    /// A response that copies Via (all), From, To, Call-ID and CSeq (RFC 3261 §8.2.6.2).
    pub fn from_request(req: &Request, status: u16, reason: impl Into<String>) -> Self {
        let mut r = Response::new(status, reason);
        for h in &req.headers.0 {
            if matches!(h.name.as_str(), "Via" | "From" | "To" | "Call-ID" | "CSeq") {
                r.headers.0.push(h.clone());
            }
        }
        r
    }

    pub fn to_tag(&self) -> Option<String> {
        self.headers
            .get("To")
            .and_then(NameAddr::parse)
            .and_then(|n| n.tag().map(str::to_owned))
    }

    /// Adds `;tag=` to To when it has none.
    pub fn set_to_tag(&mut self, tag: &str) {
        if let Some(h) = self.headers.0.iter_mut().find(|h| h.name == "To") {
            let has_tag = NameAddr::parse(&h.value).is_some_and(|n| n.tag().is_some());
            if !has_tag {
                h.value = format!("{};tag={tag}", h.value.trim_end());
            }
        }
    }

    pub fn cseq(&self) -> Option<CSeq> {
        self.headers.get("CSeq").and_then(CSeq::parse)
    }

    pub fn call_id(&self) -> Option<&str> {
        self.headers.get("Call-ID")
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        let reason = if self.reason.is_empty() {
            reason_phrase(self.status)
        } else {
            &self.reason
        };
        out.extend_from_slice(format!("SIP/2.0 {} {}\r\n", self.status, reason).as_bytes());
        encode_headers(&self.headers, &self.body, out);
    }
}

impl Message {
    pub fn call_id(&self) -> Option<&str> {
        match self {
            Message::Request(r) => r.call_id(),
            Message::Response(r) => r.call_id(),
        }
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Message::Request(r) => r.encode(out),
            Message::Response(r) => r.encode(out),
        }
    }
}

/// Standard reason phrases.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Request Entity Too Large",
        415 => "Unsupported Media Type",
        420 => "Bad Extension",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        513 => "Message Too Large",
        _ => match status / 100 {
            1 => "Provisional",
            2 => "OK",
            3 => "Redirect",
            4 => "Client Error",
            5 => "Server Error",
            _ => "Global Failure",
        },
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

impl CSeq {
    pub fn parse(s: &str) -> Option<CSeq> {
        let mut parts = s.split_whitespace();
        let seq = parts.next()?.parse().ok()?;
        let method = Method::parse(parts.next()?);
        Some(CSeq { seq, method })
    }
}

type Params = Vec<(String, Option<String>)>;

/// Parses `;name=value;flag` parameters (values may be quoted).
fn parse_params(s: &str) -> Params {
    split_outside_quotes(s, ';')
        .into_iter()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.trim().to_owned(), Some(v.trim().to_owned())),
            None => (p.to_owned(), None),
        })
        .collect()
}

fn print_params(params: &Params, out: &mut String) {
    for (k, v) in params {
        out.push(';');
        out.push_str(k);
        if let Some(v) = v {
            out.push('=');
            out.push_str(v);
        }
    }
}

fn find_param<'a>(params: &'a Params, name: &str) -> Option<Option<&'a str>> {
    params
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_deref())
}

fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut quoted, mut escaped, mut start) = (false, false, 0);
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Splits `host[:port]` with IPv6 references (`[2001:db8::1]:5060`); host without brackets.
fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.trim().parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => {
            Some((host.to_owned(), Some(port.trim().parse().ok()?)))
        }
        Some(_) => Some((s.to_owned(), None)), // Bare IPv6 without brackets: tolerate.
        None if !s.is_empty() => Some((s.to_owned(), None)),
        None => None,
    }
}

fn print_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// A Via header value (RFC 3261 §20.42).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    pub transport: String,
    pub host: String,
    pub port: Option<u16>,
    pub params: Vec<(String, Option<String>)>,
}

impl Via {
    pub fn parse(s: &str) -> Option<Via> {
        let s = s.trim();
        // "SIP / 2.0 / UDP host" with optional spaces around the slashes (RFC 4475 §3.1.1.1).
        let mut rest = s;
        let mut proto = Vec::new();
        for _ in 0..3 {
            let r = rest.trim_start();
            let end = r
                .find(|c: char| c == '/' || c.is_whitespace())
                .unwrap_or(r.len());
            proto.push(&r[..end]);
            rest = r[end..].trim_start();
            rest = rest.strip_prefix('/').unwrap_or(rest);
        }
        if !proto[0].eq_ignore_ascii_case("SIP") || proto[2].is_empty() {
            return None;
        }
        let rest = rest.trim_start();
        let (sent_by, params) = match rest.find(';') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (host, port) = split_host_port(sent_by.trim())?;
        if host.is_empty() {
            return None;
        }
        Some(Via {
            transport: proto[2].to_ascii_uppercase(),
            host,
            port,
            params: parse_params(params),
        })
    }

    pub fn branch(&self) -> Option<&str> {
        self.param("branch").flatten()
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name)
    }

    pub fn set_param(&mut self, name: &str, value: Option<&str>) {
        let value = value.map(str::to_owned);
        match self
            .params
            .iter_mut()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            Some(p) => p.1 = value,
            None => self.params.push((name.to_owned(), value)),
        }
    }
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = format!("SIP/2.0/{} {}", self.transport, print_host(&self.host));
        if let Some(p) = self.port {
            s.push_str(&format!(":{p}"));
        }
        print_params(&self.params, &mut s);
        f.write_str(&s)
    }
}

/// A name-addr or addr-spec with header parameters (From, To, Contact, Route).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    pub display: Option<String>,
    pub uri: String,
    pub params: Vec<(String, Option<String>)>,
}

impl NameAddr {
    pub fn parse(s: &str) -> Option<NameAddr> {
        let s = s.trim();
        if s.is_empty() {
            return None;
        }
        let (display, rest) = if let Some(q) = s.strip_prefix('"') {
            // Quoted display name with backslash escapes.
            let mut out = String::new();
            let mut chars = q.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            out.push(n);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => out.push(c),
                }
            }
            (Some(out), q.get(end?..)?.trim_start())
        } else {
            match s.find('<') {
                Some(i) => {
                    let d = s[..i].trim();
                    ((!d.is_empty()).then(|| d.to_owned()), &s[i..])
                }
                None => (None, s),
            }
        };
        if let Some(inner) = rest.strip_prefix('<') {
            let (uri, after) = inner.split_once('>')?;
            let after = after.trim_start();
            let params = after
                .strip_prefix(';')
                .map(parse_params)
                .unwrap_or_default();
            return Some(NameAddr {
                display,
                uri: uri.trim().to_owned(),
                params,
            });
        }
        // addr-spec: parameters after the URI belong to the header (RFC 3261 §20).
        let (uri, params) = match rest.split_once(';') {
            Some((u, p)) => (u.trim(), parse_params(p)),
            None => (rest.trim(), Vec::new()),
        };
        if uri.is_empty() {
            return None;
        }
        Some(NameAddr {
            display,
            uri: uri.to_owned(),
            params,
        })
    }

    pub fn tag(&self) -> Option<&str> {
        find_param(&self.params, "tag").flatten()
    }
}

impl std::fmt::Display for NameAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::new();
        if let Some(d) = &self.display {
            s.push('"');
            s.push_str(&d.replace('\\', "\\\\").replace('"', "\\\""));
            s.push_str("\" ");
        }
        s.push('<');
        s.push_str(&self.uri);
        s.push('>');
        print_params(&self.params, &mut s);
        f.write_str(&s)
    }
}

/// A sip:/sips: URI (RFC 3261 §19.1), host without IPv6 brackets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri {
    pub scheme: String,
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub params: Vec<(String, Option<String>)>,
}

impl SipUri {
    pub fn parse(s: &str) -> Option<SipUri> {
        let s = s.trim().trim_start_matches('<').trim_end_matches('>');
        let (scheme, rest) = s.split_once(':')?;
        if !scheme.eq_ignore_ascii_case("sip") && !scheme.eq_ignore_ascii_case("sips") {
            return None;
        }
        let rest = rest.split('?').next().unwrap_or(rest);
        let (userhost, params) = match rest.find(';') {
            Some(i) => (&rest[..i], parse_params(&rest[i + 1..])),
            None => (rest, Vec::new()),
        };
        let (user, hostport) = match userhost.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_owned()), h),
            None => (None, userhost),
        };
        let (host, port) = split_host_port(hostport)?;
        if host.is_empty() {
            return None;
        }
        Some(SipUri {
            scheme: scheme.to_ascii_lowercase(),
            user,
            host,
            port,
            params,
        })
    }

    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        find_param(&self.params, name)
    }
}

#[cfg(test)]
#[path = "msg/tests.rs"]
mod tests;
