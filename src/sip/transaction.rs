//! RFC 3261 §17 transactions, sans-IO. Drive it like str0m's `Rtc` or quinn's `Connection`:
//! feed `handle_message` / `handle_timeout`, issue `respond` / `send_request`, then drain
//! `poll_output` until it returns `None`, and wake up again at `poll_timeout`.
//!
//! Server INVITE transactions answer 100 Trying at once, absorb retransmitted INVITEs with the
//! latest response, retransmit a 2xx until its ACK arrives (RFC 6026 "Accepted"), retransmit
//! non-2xx finals on Timer G until the ACK (absorbed), and handle CANCEL (200 + `Cancelled`).
//! Non-INVITE server transactions replay their response to retransmissions until Timer J.
//! Non-INVITE client transactions (our BYE) retransmit on Timer E until a final or Timer F.
//! Over TCP nothing is retransmitted (the transport is reliable; RFC 3261 §17.1.2.2).
//!
//! Refuses: sockets and clocks. The timer scan is linear in live transactions; they live for
//! at most 64×T1, so the set stays small next to the number of calls.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::msg::{reason_phrase, Message, Method, Request, Response};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    /// TCP under TLS (`SIP/2.0/TLS`, `transport=tls`).
    Tls,
}

/// Where a message came from or goes to. `conn` identifies the local socket (UDP) or the
/// connection (TCP) so the driver answers from the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    pub transport: Transport,
    pub addr: SocketAddr,
    pub conn: Option<u64>,
}

/// Identifies one transaction; opaque.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TsxKey(u64);

#[derive(Debug)]
pub enum TsxEvent {
    /// A new request for the TU (never a retransmission, never CANCEL, never ACK).
    Request {
        key: TsxKey,
        request: Request,
        peer: Peer,
    },
    /// The first ACK for a 2xx, or an ACK that matches nothing.
    Ack { request: Request, peer: Peer },
    /// CANCEL matched a pending INVITE (200 already sent to the CANCEL); answer it 487.
    Cancelled { invite: TsxKey },
    /// A 2xx to INVITE went unacknowledged for 64×T1; the TU should end the dialog.
    AckTimeout { invite: TsxKey, call_id: String },
    /// A response to one of our client transactions.
    Response { key: TsxKey, response: Response },
    /// Timer F fired for our client transaction.
    ClientTimeout { key: TsxKey },
}

#[derive(Debug)]
pub struct Transmit {
    pub peer: Peer,
    pub payload: Vec<u8>,
}

#[derive(Debug)]
pub enum Output {
    Transmit(Transmit),
    Event(TsxEvent),
}

#[derive(Debug, Clone)]
pub struct TsxConfig {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
    /// Live transactions before new requests get 503 without one.
    pub max_transactions: usize,
    /// `Server:` added to responses that lack it.
    pub server_header: Option<String>,
}

impl Default for TsxConfig {
    fn default() -> Self {
        TsxConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            max_transactions: 50_000,
            server_header: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    InviteServer,
    NonInviteServer,
    NonInviteClient,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Server: no final response yet. Client: waiting for a final.
    Proceeding,
    /// Final sent (server) or received (client).
    Completed,
    /// INVITE server: 2xx sent, waiting for its ACK (RFC 6026).
    Accepted,
    /// INVITE server: the ACK arrived; lingering to absorb retransmissions.
    Confirmed,
}

#[derive(Debug)]
struct Tsx {
    kind: Kind,
    state: State,
    peer: Peer,
    index_key: String,
    /// Encoded latest response (server) or the request (client), for retransmission.
    last: Option<Vec<u8>>,
    /// Where `last` goes.
    dest: Peer,
    retransmit_at: Option<Instant>,
    interval: Duration,
    expire_at: Option<Instant>,
    /// (Call-ID, CSeq number) of an INVITE whose 2xx awaits an ACK.
    ack_key: Option<(String, u32)>,
    call_id: String,
}

/// The transaction layer of one SIP endpoint.
pub struct TransactionLayer {
    config: TsxConfig,
    tsxs: HashMap<TsxKey, Tsx>,
    server_index: HashMap<String, TsxKey>,
    client_index: HashMap<String, TsxKey>,
    accepted: HashMap<(String, u32), TsxKey>,
    outputs: VecDeque<Output>,
    next_key: u64,
    overload_rejections: u64,
    unmatched_responses: u64,
}

impl TransactionLayer {
    pub fn new(config: TsxConfig) -> Self {
        TransactionLayer {
            config,
            tsxs: HashMap::new(),
            server_index: HashMap::new(),
            client_index: HashMap::new(),
            accepted: HashMap::new(),
            outputs: VecDeque::new(),
            next_key: 1,
            overload_rejections: 0,
            unmatched_responses: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.tsxs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tsxs.is_empty()
    }

    /// Requests refused with 503 because `max_transactions` was reached.
    pub fn overload_rejections(&self) -> u64 {
        self.overload_rejections
    }

    /// Responses that matched none of our client transactions (dropped).
    pub fn unmatched_responses(&self) -> u64 {
        self.unmatched_responses
    }

    pub fn handle_message(&mut self, now: Instant, peer: Peer, msg: Message) {
        match msg {
            Message::Request(r) => self.handle_request(now, peer, r),
            Message::Response(r) => self.handle_response(now, r),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let mut retransmit = Vec::new();
        let mut expired = Vec::new();
        for (key, t) in self.tsxs.iter_mut() {
            if t.expire_at.is_some_and(|at| at <= now) {
                expired.push(*key);
                continue;
            }
            if let Some(at) = t.retransmit_at.filter(|at| *at <= now) {
                if let Some(bytes) = &t.last {
                    retransmit.push(Transmit {
                        peer: t.dest,
                        payload: bytes.clone(),
                    });
                }
                // Timers E and G double up to T2 (RFC 3261 §17.1.2.2, §17.2.1).
                t.interval = (t.interval * 2).min(self.config.t2);
                t.retransmit_at = Some(at.max(now) + t.interval);
            }
        }
        for t in retransmit {
            self.outputs.push_back(Output::Transmit(t));
        }
        expired.sort();
        for key in expired {
            let Some(t) = self.remove(key) else { continue };
            match (t.kind, t.state) {
                (Kind::InviteServer, State::Accepted) => {
                    self.outputs.push_back(Output::Event(TsxEvent::AckTimeout {
                        invite: key,
                        call_id: t.call_id,
                    }));
                }
                (Kind::NonInviteClient, State::Proceeding) => {
                    self.outputs
                        .push_back(Output::Event(TsxEvent::ClientTimeout { key }));
                }
                _ => {}
            }
        }
    }

    /// Sends `response` within server transaction `key` (ignored if the transaction is gone).
    pub fn respond(&mut self, now: Instant, key: TsxKey, mut response: Response) {
        if let Some(server) = &self.config.server_header {
            if response.headers.get("Server").is_none() {
                response.headers.push("Server", server.clone());
            }
        }
        let (t1, t4) = (self.config.t1, self.config.t4);
        let Some(t) = self.tsxs.get_mut(&key) else {
            return;
        };
        if t.kind == Kind::NonInviteClient
            || matches!(
                t.state,
                State::Completed | State::Accepted | State::Confirmed
            )
        {
            return; // A final was already sent.
        }
        let mut bytes = Vec::new();
        response.encode(&mut bytes);
        let udp = t.peer.transport == Transport::Udp;
        t.dest = response_destination(t.peer, &response);
        t.last = Some(bytes.clone());
        let status = response.status;
        if status >= 200 {
            t.interval = t1;
            match t.kind {
                Kind::InviteServer if status < 300 => {
                    t.state = State::Accepted;
                    t.retransmit_at = udp.then_some(now + t1);
                    t.expire_at = Some(now + 64 * t1);
                    if let Some(seq) = response.cseq().map(|c| c.seq) {
                        let ack_key = (t.call_id.clone(), seq);
                        t.ack_key = Some(ack_key.clone());
                        self.accepted.insert(ack_key, key);
                    }
                }
                Kind::InviteServer => {
                    t.state = State::Completed;
                    t.retransmit_at = udp.then_some(now + t1);
                    t.expire_at = Some(now + 64 * t1);
                }
                _ => {
                    t.state = State::Completed;
                    t.retransmit_at = None;
                    t.expire_at = Some(if udp { now + 64 * t1 } else { now });
                }
            }
            let _ = t4;
        }
        let dest = t.dest;
        self.outputs.push_back(Output::Transmit(Transmit {
            peer: dest,
            payload: bytes,
        }));
    }

    /// Starts a non-INVITE client transaction. `request` carries its own top Via with a
    /// z9hG4bK branch.
    pub fn send_request(&mut self, now: Instant, peer: Peer, request: Request) -> TsxKey {
        let key = self.new_key();
        let mut bytes = Vec::new();
        request.encode(&mut bytes);
        let branch = request
            .top_via()
            .and_then(|v| v.branch().map(str::to_owned))
            .unwrap_or_default();
        let index_key = format!("{branch}|{}", request.method.as_str());
        let udp = peer.transport == Transport::Udp;
        self.client_index.insert(index_key.clone(), key);
        self.tsxs.insert(
            key,
            Tsx {
                kind: Kind::NonInviteClient,
                state: State::Proceeding,
                peer,
                index_key,
                last: Some(bytes.clone()),
                dest: peer,
                retransmit_at: udp.then_some(now + self.config.t1),
                interval: self.config.t1,
                expire_at: Some(now + 64 * self.config.t1),
                ack_key: None,
                call_id: request.call_id().unwrap_or_default().to_owned(),
            },
        );
        self.outputs.push_back(Output::Transmit(Transmit {
            peer,
            payload: bytes,
        }));
        key
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The earliest instant at which `handle_timeout` has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.tsxs
            .values()
            .flat_map(|t| [t.retransmit_at, t.expire_at])
            .flatten()
            .min()
    }

    fn new_key(&mut self) -> TsxKey {
        let k = TsxKey(self.next_key);
        self.next_key += 1;
        k
    }

    fn remove(&mut self, key: TsxKey) -> Option<Tsx> {
        let t = self.tsxs.remove(&key)?;
        let index = if t.kind == Kind::NonInviteClient {
            &mut self.client_index
        } else {
            &mut self.server_index
        };
        if index.get(&t.index_key) == Some(&key) {
            index.remove(&t.index_key);
        }
        if let Some(ack_key) = &t.ack_key {
            if self.accepted.get(ack_key) == Some(&key) {
                self.accepted.remove(ack_key);
            }
        }
        Some(t)
    }

    fn handle_request(&mut self, now: Instant, peer: Peer, mut request: Request) {
        stamp_via(&mut request, peer);
        let (t1, t4) = (self.config.t1, self.config.t4);
        match request.method {
            Method::Ack => {
                let key = server_key(&request, &Method::Invite);
                if let Some(&tsx_key) = self.server_index.get(&key) {
                    if let Some(t) = self.tsxs.get_mut(&tsx_key) {
                        if t.state == State::Completed && t.kind == Kind::InviteServer {
                            // ACK for our non-2xx final: absorb, Timer I.
                            t.state = State::Confirmed;
                            t.retransmit_at = None;
                            let udp = peer.transport == Transport::Udp;
                            t.expire_at = Some(if udp { now + t4 } else { now });
                            return;
                        }
                        if t.state == State::Confirmed {
                            return;
                        }
                    }
                }
                let ack_key = (
                    request.call_id().unwrap_or_default().to_owned(),
                    request.cseq().map(|c| c.seq).unwrap_or(0),
                );
                if let Some(&tsx_key) = self.accepted.get(&ack_key) {
                    if let Some(t) = self.tsxs.get_mut(&tsx_key) {
                        if t.state == State::Confirmed {
                            return; // Retransmitted ACK.
                        }
                        t.state = State::Confirmed;
                        t.retransmit_at = None;
                        // Linger (RFC 6026 Timer L) to absorb a retransmitted INVITE.
                    }
                }
                self.outputs
                    .push_back(Output::Event(TsxEvent::Ack { request, peer }));
            }
            Method::Cancel => {
                let key = server_key(&request, &Method::Invite);
                let invite = self.server_index.get(&key).copied();
                let status = if invite.is_some() { 200 } else { 481 };
                let resp = Response::from_request(&request, status, reason_phrase(status));
                self.send_stateless(peer, resp);
                if let Some(invite) = invite {
                    if self
                        .tsxs
                        .get(&invite)
                        .is_some_and(|t| t.state == State::Proceeding)
                    {
                        self.outputs
                            .push_back(Output::Event(TsxEvent::Cancelled { invite }));
                    }
                }
            }
            _ => {
                let key = server_key(&request, &request.method);
                if let Some(&existing) = self.server_index.get(&key) {
                    if let Some(t) = self.tsxs.get(&existing) {
                        if let Some(bytes) = &t.last {
                            let payload = bytes.clone();
                            self.outputs.push_back(Output::Transmit(Transmit {
                                peer: t.dest,
                                payload,
                            }));
                        }
                    }
                    return;
                }
                if self.tsxs.len() >= self.config.max_transactions {
                    self.overload_rejections += 1;
                    let mut resp = Response::from_request(&request, 503, reason_phrase(503));
                    resp.headers.push("Retry-After", "5");
                    self.send_stateless(peer, resp);
                    return;
                }
                let tsx_key = self.new_key();
                let kind = if request.method == Method::Invite {
                    Kind::InviteServer
                } else {
                    Kind::NonInviteServer
                };
                self.server_index.insert(key.clone(), tsx_key);
                self.tsxs.insert(
                    tsx_key,
                    Tsx {
                        kind,
                        state: State::Proceeding,
                        peer,
                        index_key: key,
                        last: None,
                        dest: peer,
                        retransmit_at: None,
                        interval: t1,
                        // A TU that never answers must not leak the transaction.
                        expire_at: Some(now + 128 * t1),
                        ack_key: None,
                        call_id: request.call_id().unwrap_or_default().to_owned(),
                    },
                );
                if kind == Kind::InviteServer {
                    let mut trying = Response::from_request(&request, 100, "Trying");
                    if let Some(server) = &self.config.server_header {
                        trying.headers.push("Server", server.clone());
                    }
                    let mut bytes = Vec::new();
                    trying.encode(&mut bytes);
                    let dest = response_destination(peer, &trying);
                    if let Some(t) = self.tsxs.get_mut(&tsx_key) {
                        t.last = Some(bytes.clone());
                        t.dest = dest;
                    }
                    self.outputs.push_back(Output::Transmit(Transmit {
                        peer: dest,
                        payload: bytes,
                    }));
                }
                self.outputs.push_back(Output::Event(TsxEvent::Request {
                    key: tsx_key,
                    request,
                    peer,
                }));
            }
        }
    }

    /// Sends a response that belongs to no transaction of ours (CANCEL's, overload 503s).
    fn send_stateless(&mut self, peer: Peer, mut response: Response) {
        if let Some(server) = &self.config.server_header {
            if response.headers.get("Server").is_none() {
                response.headers.push("Server", server.clone());
            }
        }
        let mut payload = Vec::new();
        response.encode(&mut payload);
        let dest = response_destination(peer, &response);
        self.outputs.push_back(Output::Transmit(Transmit {
            peer: dest,
            payload,
        }));
    }

    fn handle_response(&mut self, now: Instant, response: Response) {
        let branch = response
            .headers
            .get("Via")
            .and_then(super::msg::Via::parse)
            .and_then(|v| v.branch().map(str::to_owned))
            .unwrap_or_default();
        let method = response
            .cseq()
            .map(|c| c.method)
            .unwrap_or(Method::Other(String::new()));
        let key = format!("{branch}|{}", method.as_str());
        let Some(&tsx_key) = self.client_index.get(&key) else {
            self.unmatched_responses += 1;
            return;
        };
        let (t2, t4) = (self.config.t2, self.config.t4);
        let Some(t) = self.tsxs.get_mut(&tsx_key) else {
            return;
        };
        if t.state == State::Completed {
            return; // Retransmitted final: absorbed (Timer K).
        }
        if response.status >= 200 {
            t.state = State::Completed;
            t.retransmit_at = None;
            let udp = t.peer.transport == Transport::Udp;
            t.expire_at = Some(if udp { now + t4 } else { now });
        } else if t.retransmit_at.is_some() {
            t.interval = t2;
        }
        self.outputs.push_back(Output::Event(TsxEvent::Response {
            key: tsx_key,
            response,
        }));
    }
}

/// RFC 3261 §18.2.1: note where the request really came from in its top Via.
fn stamp_via(request: &mut Request, peer: Peer) {
    let Some(h) = request.headers.0.iter_mut().find(|h| h.name == "Via") else {
        return;
    };
    // The top Via is the first value of the first Via header line.
    let (first, rest) = match split_first_value(&h.value) {
        Some(parts) => parts,
        None => return,
    };
    let Some(mut via) = super::msg::Via::parse(first) else {
        return;
    };
    let source = peer.addr.ip().to_string();
    if via.host.parse::<IpAddr>().ok() != Some(peer.addr.ip()) {
        via.set_param("received", Some(&source));
    }
    if let Some(None) = via.param("rport") {
        via.set_param("rport", Some(&peer.addr.port().to_string()));
    }
    h.value = match rest {
        Some(rest) => format!("{via}, {rest}"),
        None => via.to_string(),
    };
}

/// Splits "v1, v2, …" into the first value and the rest (commas in quotes ignored).
fn split_first_value(value: &str) -> Option<(&str, Option<&str>)> {
    let mut quoted = false;
    for (i, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => return Some((value[..i].trim(), Some(value[i + 1..].trim()))),
            _ => {}
        }
    }
    Some((value.trim(), None))
}

/// RFC 3261 §18.2.2: TCP and TLS answer on the connection; UDP to the source address and port when
/// the client asked for rport (RFC 3581), else to the source address at the Via port.
fn response_destination(peer: Peer, response: &Response) -> Peer {
    if peer.transport != Transport::Udp {
        return peer;
    }
    let via = response.headers.get("Via").and_then(super::msg::Via::parse);
    let port = match &via {
        Some(v) if v.param("rport").is_some() => peer.addr.port(),
        Some(v) => v.port.unwrap_or(5060),
        None => peer.addr.port(),
    };
    Peer {
        addr: SocketAddr::new(peer.addr.ip(), port),
        ..peer
    }
}

/// The server-transaction match key (RFC 3261 §17.2.3): branch + sent-by + method, or for
/// RFC 2543 peers without the magic cookie, Call-ID + CSeq number + From tag + sent-by.
fn server_key(request: &Request, method: &Method) -> String {
    let via = request.top_via();
    let sent_by = via
        .as_ref()
        .map(|v| format!("{}:{}", v.host.to_ascii_lowercase(), v.port.unwrap_or(5060)))
        .unwrap_or_default();
    match via.as_ref().and_then(|v| v.branch()) {
        Some(b) if b.starts_with("z9hG4bK") => format!("{b}|{sent_by}|{}", method.as_str()),
        _ => {
            let from_tag = request
                .from()
                .and_then(|f| f.tag().map(str::to_owned))
                .unwrap_or_default();
            let seq = request.cseq().map(|c| c.seq).unwrap_or(0);
            format!(
                "2543|{}|{seq}|{from_tag}|{sent_by}|{}",
                request.call_id().unwrap_or_default(),
                method.as_str()
            )
        }
    }
}

#[cfg(test)]
#[path = "transaction/tests.rs"]
mod tests;
