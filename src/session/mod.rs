//! The control plane's recording sessions: SIP dialogs ↔ RFC 7866 recording sessions ↔
//! media streams ↔ sinks. Sans-IO: transaction events and time go in; SIP responses and
//! requests, data-plane commands and recorder commands come out as [`Action`]s.
//!
//! Driving contract (str0m's `Rtc`): call a `handle_*` method for each input, then drain
//! [`SessionManager::poll_action`] until it returns `None`. Call [`SessionManager::handle_tick`]
//! about once a second (RTP timeout, duration cap).
//!
//! Refuses: sockets, files, clocks. Ports come from a [`MediaPorts`] the driver implements
//! (binding is I/O); files are written by the driver from `Action::WriteFile`.

pub mod analytics;
mod call;
pub mod ports;
pub mod transcript;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::path::PathBuf;

use crate::media::rtp::{RtpStats, StreamParams};
use crate::media::StreamKey;
use crate::proto::pii::Pii;
use crate::sink::recorder::{AudioFormat, RecorderCommand, RecorderEvent};
use crate::sip::{Peer, Request, Response, TsxEvent, TsxKey};

use call::Call;
pub use call::{CallState, CallSummary, PauseStatus, PARTIAL_SESSION_FILE};

/// How long an ended call waits for the recorder's report before it is written off.
const RECORDER_REPORT_TIMEOUT_NS: u64 = 30_000_000_000;

/// Settings captured at start-up.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub max_concurrent_calls: usize,
    pub require_siprec: bool,
    pub rtp_timeout_ns: u64,
    /// 0 = unlimited.
    pub max_duration_ns: u64,
    pub recording_root: PathBuf,
    pub combine_legs: bool,
    /// The recorder's file format, for the file names the API and session.json report.
    pub recording_format: AudioFormat,
    /// Files are encrypted at rest (`.enc` after the extension).
    pub recording_encrypted: bool,
    /// Address for SDP c=/o= and Contact when set (EXTERNAL_IP or a specific SIP_HOST).
    pub advertised_ip: Option<IpAddr>,
    /// Our SIP port, for Contact.
    pub sip_port: u16,
    /// Our SIP over TLS port, for Contact on TLS calls.
    pub sip_tls_port: u16,
    /// Fallback advertised address: the local address of the default route.
    pub fallback_ip: IpAddr,
    /// Seed for tags, branches and SDP session ids (from the OS RNG in production).
    pub seed: u64,
    /// Fills SRTP keys for our SDP answers (the OS RNG in production).
    pub key_source: fn(&mut [u8]),
    /// Record only SRTP m-lines (`SRTP_REQUIRED`).
    pub require_srtp: bool,
    /// Concurrent calls one source address may have (`SIP_MAX_CALLS_PER_SOURCE`; 0 = no
    /// limit): one misbehaving peer can't take the whole capacity.
    pub max_calls_per_source: usize,
    /// Send the calls' audio to live transcription: the running STT provider's name.
    pub transcribe: Option<&'static str>,
    /// Keywords spotted in final transcripts (`ANALYTICS_KEYWORDS`).
    pub keywords: Vec<String>,
}

/// The current time, as the two clocks the control plane needs.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Monotonic nanoseconds (same origin as the data plane's and recorder's clock).
    pub mono_ns: u64,
    /// Wall clock, milliseconds since the Unix epoch (for dates and session.json).
    pub unix_ms: u64,
}

/// RTP ports for streams. The production implementation binds sockets (and fails over to the
/// next port when one is taken); tests use the pool alone.
pub trait MediaPorts {
    /// A port whose RTP (and RTCP, port + 1) sockets are ready, or `None` when exhausted.
    fn allocate(&mut self, now_ns: u64) -> Option<u16>;
    /// Gives a port back (after its stream was closed).
    fn release(&mut self, port: u16, now_ns: u64);
    fn in_use(&self) -> usize;
}

impl MediaPorts for ports::PortPool {
    fn allocate(&mut self, now_ns: u64) -> Option<u16> {
        ports::PortPool::allocate(self, now_ns)
    }
    fn release(&mut self, port: u16, now_ns: u64) {
        ports::PortPool::release(self, port, now_ns)
    }
    fn in_use(&self) -> usize {
        ports::PortPool::in_use(self)
    }
}

/// What the driver must do, in order.
#[derive(Debug)]
pub enum Action {
    Respond {
        key: TsxKey,
        response: Response,
    },
    /// Start a non-INVITE client transaction (BYE).
    SendRequest {
        peer: Peer,
        request: Request,
    },
    OpenStream {
        port: u16,
        params: StreamParams,
    },
    UpdateStream {
        port: u16,
        params: StreamParams,
    },
    CloseStream {
        port: u16,
        key: StreamKey,
    },
    Recorder(RecorderCommand),
    /// Write `bytes` to `path` atomically (temp + rename).
    WriteFile {
        path: PathBuf,
        bytes: Vec<u8>,
    },
    /// Remove `dir`'s session.partial.json once its session.json is there (if writing
    /// session.json failed, say on a full disk, the partial copy stays for recovery).
    DropPartialSession {
        dir: PathBuf,
    },
    /// A call event for live consumers, numbered in the order actions are handed out.
    Event(crate::events::Event),
}

/// Process-wide counters for /health and (later) metrics.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct SessionCounters {
    pub calls_total: u64,
    pub calls_rejected_capacity: u64,
    pub calls_rejected_ports: u64,
    pub calls_rejected_sdp: u64,
    pub calls_rejected_not_siprec: u64,
    /// INVITEs refused because their source already had SIP_MAX_CALLS_PER_SOURCE calls.
    pub calls_rejected_source_limit: u64,
    /// INVITEs refused because the recording disk is below RECORDING_MIN_FREE_MB.
    pub calls_rejected_storage: u64,
    pub calls_cancelled: u64,
    pub calls_rtp_timeout: u64,
    pub calls_duration_cap: u64,
    pub calls_ack_timeout: u64,
    pub metadata_errors: u64,
    pub calls_recording_failed: u64,
}

/// Owns every recording session of the process.
pub struct SessionManager {
    config: SessionConfig,
    calls: HashMap<String, Call>,
    by_invite: HashMap<TsxKey, String>,
    by_session: HashMap<u64, String>,
    actions: VecDeque<Action>,
    next_session: u64,
    rng: u64,
    /// Identifies this server run in event ids; `event_seq` numbers its events.
    instance: u64,
    event_seq: u64,
    draining: bool,
    /// The recording disk is below RECORDING_MIN_FREE_MB (`set_storage_low`).
    storage_low: bool,
    counters: SessionCounters,
    /// The earliest `auto_resume_at` deadline (monotonic ns; MAX for none).
    next_resume_ns: u64,
    /// RTP counters of the streams of calls already forgotten (metrics stay monotonic).
    closed_rtp: RtpStats,
    /// Transcripts of transcribed recording sessions, until STT says each is done.
    transcripts: HashMap<u64, transcript::TranscriptLog>,
}

impl SessionManager {
    pub fn new(config: SessionConfig) -> SessionManager {
        let rng = config.seed | 1;
        let mut m = SessionManager {
            config,
            calls: HashMap::new(),
            by_invite: HashMap::new(),
            by_session: HashMap::new(),
            actions: VecDeque::new(),
            next_session: 1,
            rng,
            instance: 0,
            event_seq: 0,
            draining: false,
            storage_low: false,
            counters: SessionCounters::default(),
            next_resume_ns: u64::MAX,
            closed_rtp: RtpStats::default(),
            transcripts: HashMap::new(),
        };
        m.instance = m.next_random();
        m
    }

    // --- getters ---

    pub fn active_calls(&self) -> usize {
        self.calls.values().filter(|c| c.is_active()).count()
    }

    pub fn counters(&self) -> SessionCounters {
        self.counters
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Call-IDs of the calls held (a process taking over forwards their SIP here).
    pub fn call_ids(&self) -> Vec<String> {
        self.calls.keys().cloned().collect()
    }

    /// The recording directories of the calls held.
    pub fn recording_dirs(&self) -> Vec<PathBuf> {
        self.calls.values().map(|c| c.dir().to_path_buf()).collect()
    }

    /// Summaries for the API, oldest first.
    pub fn summaries(&self) -> Vec<CallSummary> {
        let mut v: Vec<CallSummary> = self.calls.values().map(|c| c.summary()).collect();
        v.sort_by_key(|s| s.session);
        v
    }

    /// RTP counters summed over every stream this process has recorded.
    pub fn rtp_totals(&self) -> RtpStats {
        let mut total = self.closed_rtp;
        for call in self.calls.values() {
            call.add_rtp_stats(&mut total);
        }
        total
    }

    /// True when no call holds resources (used by shutdown to know when to exit).
    pub fn is_idle(&self) -> bool {
        self.calls.is_empty()
    }

    // --- handle_* ---

    /// A transaction-layer event.
    pub fn handle_tsx_event(&mut self, now: Now, ports: &mut dyn MediaPorts, event: TsxEvent) {
        match event {
            TsxEvent::Request { key, request, peer } => {
                self.handle_request(now, ports, key, request, peer)
            }
            TsxEvent::Ack { request, .. } => {
                if let Some(call) = request.call_id().and_then(|id| self.calls.get_mut(id)) {
                    call.handle_ack();
                }
            }
            TsxEvent::Cancelled { invite } => {
                if let Some(call_id) = self.by_invite.remove(&invite) {
                    self.counters.calls_cancelled += 1;
                    if let Some(call) = self.calls.get_mut(&call_id) {
                        let resp = call.error_response(487);
                        self.actions.push_back(Action::Respond {
                            key: invite,
                            response: resp,
                        });
                        call.terminate(now, ports, "cancelled", &mut self.actions, false);
                    }
                }
            }
            TsxEvent::AckTimeout { call_id, .. } => {
                if let Some(call) = self.calls.get_mut(&call_id) {
                    self.counters.calls_ack_timeout += 1;
                    call.terminate(now, ports, "ack_timeout", &mut self.actions, true);
                }
            }
            TsxEvent::Response { .. } | TsxEvent::ClientTimeout { .. } => {
                // Responses to our BYEs: the session is already being finalized.
            }
        }
    }

    /// Per-stream counters published by the data plane.
    pub fn handle_stream_stats(&mut self, key: StreamKey, stats: RtpStats) {
        if let Some(call) = self
            .by_session
            .get(&key.session)
            .and_then(|id| self.calls.get_mut(id))
        {
            call.update_stats(key, stats);
        }
    }

    /// The recorder finished (or failed) a recording session: write session.json and forget
    /// the call. A recording that fails while its call runs (disk error) ends the call with
    /// BYE, so the SRC knows it is not recorded and can fail over to another SRS.
    pub fn handle_recorder_event(
        &mut self,
        now: Now,
        ports: &mut dyn MediaPorts,
        event: RecorderEvent,
    ) {
        let session = match &event {
            RecorderEvent::SessionClosed { session, .. } => *session,
            RecorderEvent::SessionFailed { session, .. } => *session,
            RecorderEvent::Activity { session, .. } => *session,
        };
        let Some(call_id) = self.by_session.get(&session).cloned() else {
            return;
        };
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        if let RecorderEvent::Activity {
            totals,
            changes,
            final_,
            ..
        } = event
        {
            call.handle_activity(now, totals, changes, final_, &mut self.actions);
            // The spec's snapshot also carries the transcripts' sentiment trend and keywords.
            if let (Some(log), Some(Action::Event(e))) =
                (self.transcripts.get(&session), self.actions.back_mut())
            {
                if e.kind == crate::events::EventKind::Snapshot {
                    e.data["sentiment_trend"] = log.analytics.trend();
                    e.data["keywords"] = serde_json::json!(log.analytics.keywords_heard());
                }
            }
            return;
        }
        if matches!(event, RecorderEvent::SessionFailed { .. }) && call.is_active() {
            self.counters.calls_recording_failed += 1;
            call.terminate(now, ports, "recording_failed", &mut self.actions, true);
        }
        let done = call.handle_recorder_event(now, event, &mut self.actions);
        if done {
            self.by_session.remove(&session);
            if let Some(call) = self.calls.remove(&call_id) {
                call.add_rtp_stats(&mut self.closed_rtp);
            }
        }
    }

    /// A result of live transcription: a transcript event (speaker named from the call's
    /// metadata), and once STT has finished a session, its transcript files.
    pub fn handle_stt(&mut self, now: Now, result: crate::sink::stt::SttResult) {
        use crate::sink::stt::SttResult;
        match result {
            SttResult::Transcript(t) => {
                let session = t.key.session;
                let Some(log) = self.transcripts.get_mut(&session) else {
                    return;
                };
                let call = self
                    .by_session
                    .get(&session)
                    .and_then(|id| self.calls.get(id));
                if let Some(call) = call {
                    log.set_speaker(t.key.stream, call.speaker(t.key.stream));
                }
                for event in log.events(now.unix_ms, t) {
                    self.actions.push_back(Action::Event(event));
                }
            }
            SttResult::Failed { key, .. } => {
                if let Some(log) = self.transcripts.get_mut(&key.session) {
                    log.count_failure();
                }
            }
            SttResult::SessionDone { session } => {
                if let Some(log) = self.transcripts.remove(&session) {
                    self.actions.push_back(Action::WriteFile {
                        path: log.dir.join("transcript.json"),
                        bytes: log.render_json(now.unix_ms),
                    });
                    self.actions.push_back(Action::WriteFile {
                        path: log.dir.join("transcript.vtt"),
                        bytes: log.render_vtt(),
                    });
                }
            }
        }
    }

    /// Recording sessions whose transcripts are still being written (STT backlog).
    pub fn transcripts_pending(&self) -> usize {
        self.transcripts.len()
    }

    /// A DTMF digit the data plane decoded on stream `key`: into session.json and an event.
    pub fn handle_dtmf(&mut self, now: Now, key: StreamKey, digit: crate::media::rtp::Dtmf) {
        let Some(call) = self
            .by_session
            .get(&key.session)
            .and_then(|id| self.calls.get_mut(id))
        else {
            return;
        };
        call.handle_dtmf(now, key.stream, digit, &mut self.actions);
    }

    /// Periodic work: RTP timeout and duration cap (we send BYE).
    pub fn handle_tick(&mut self, now: Now, ports: &mut dyn MediaPorts) {
        let timeout = self.config.rtp_timeout_ns;
        let cap = self.config.max_duration_ns;
        // A recorder that never reports (it died) must not leak calls: give up after a while
        // and write session.json with the error.
        let stale: Vec<u64> = self
            .calls
            .values()
            .filter(|c| {
                c.ended_for_ns(now.mono_ns)
                    .is_some_and(|ns| ns >= RECORDER_REPORT_TIMEOUT_NS)
            })
            .map(|c| c.session())
            .collect();
        for session in stale {
            let error = "the recorder did not report the session closed".to_owned();
            let event = RecorderEvent::SessionFailed { session, error };
            self.handle_recorder_event(now, ports, event);
        }
        for call in self.calls.values_mut() {
            if !call.is_active() {
                continue;
            }
            if call
                .rtp_idle_ns(now.mono_ns)
                .is_some_and(|idle| idle >= timeout)
            {
                self.counters.calls_rtp_timeout += 1;
                call.terminate(now, ports, "rtp_timeout", &mut self.actions, true);
            } else if cap > 0 && call.duration_ns(now.mono_ns) >= cap {
                self.counters.calls_duration_cap += 1;
                call.terminate(now, ports, "max_duration", &mut self.actions, true);
            }
        }
    }

    /// Graceful stop: new INVITEs get 503, every running call is ended with BYE.
    pub fn shutdown(&mut self, now: Now, ports: &mut dyn MediaPorts) {
        self.draining = true;
        for call in self.calls.values_mut() {
            if call.is_active() {
                call.terminate(now, ports, "shutdown", &mut self.actions, true);
            }
        }
    }

    /// Ends a recording session on request (API `DELETE /api/sessions/{id}`): we send BYE.
    /// Returns false when no active call has that Call-ID.
    pub fn end_session(&mut self, now: Now, ports: &mut dyn MediaPorts, call_id: &str) -> bool {
        match self.calls.get_mut(call_id).filter(|c| c.is_active()) {
            Some(call) => {
                call.terminate(now, ports, "api", &mut self.actions, true);
                true
            }
            None => false,
        }
    }

    /// Pauses recording and/or transcription of one call; `None` when it doesn't exist.
    /// A paused recording keeps its files aligned: the span is written as silence. With
    /// `auto_resume_at_ms` (Unix ms) the call resumes by itself then ([`Self::resume_due`]).
    pub fn pause(
        &mut self,
        now: Now,
        call_id: &str,
        (recording, transcription): (bool, bool),
        auto_resume_at_ms: Option<u64>,
    ) -> Option<PauseStatus> {
        let call = self.calls.get_mut(call_id).filter(|c| c.is_active())?;
        let flags = (recording, transcription);
        call.set_pause(now, flags, auto_resume_at_ms, &mut self.actions);
        if let Some(deadline) = call.resume_deadline_ns() {
            self.next_resume_ns = self.next_resume_ns.min(deadline);
        }
        Some(call.pause_status(now))
    }

    /// Resumes a call; `None` when it doesn't exist.
    pub fn resume(&mut self, now: Now, call_id: &str) -> Option<PauseStatus> {
        self.pause(now, call_id, (false, false), None)
    }

    /// Resumes the calls whose `auto_resume_at` has come. Cheap when none is due: call it on
    /// every control-plane tick.
    pub fn resume_due(&mut self, now: Now) {
        if now.mono_ns < self.next_resume_ns {
            return;
        }
        let mut next = u64::MAX;
        for call in self.calls.values_mut().filter(|c| c.is_active()) {
            match call.resume_deadline_ns() {
                Some(at) if at <= now.mono_ns => {
                    tracing::info!(call_id = %Pii(call.call_id()), "auto_resume_at reached");
                    call.set_pause(now, (false, false), None, &mut self.actions);
                }
                Some(at) => next = next.min(at),
                None => {}
            }
        }
        self.next_resume_ns = next;
    }

    pub fn pause_status(&self, now: Now, call_id: &str) -> Option<PauseStatus> {
        self.calls
            .get(call_id)
            .filter(|c| c.is_active())
            .map(|c| c.pause_status(now))
    }

    /// Pause states of every active call.
    pub fn pause_statuses(&self, now: Now) -> Vec<PauseStatus> {
        let mut v: Vec<PauseStatus> = self
            .calls
            .values()
            .filter(|c| c.is_active())
            .map(|c| c.pause_status(now))
            .collect();
        v.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        v
    }

    /// Call-IDs of the active calls.
    pub fn active_call_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .calls
            .values()
            .filter(|c| c.is_active())
            .map(|c| c.call_id().to_owned())
            .collect();
        v.sort();
        v
    }

    /// Active calls currently paused.
    pub fn paused_calls(&self) -> usize {
        self.calls
            .values()
            .filter(|c| c.is_active() && c.is_paused())
            .count()
    }

    /// Limits that may change while running (configuration reload).
    pub fn set_limits(
        &mut self,
        max_concurrent_calls: usize,
        require_siprec: bool,
        rtp_timeout_ns: u64,
        max_duration_ns: u64,
    ) {
        self.config.max_concurrent_calls = max_concurrent_calls;
        self.config.require_siprec = require_siprec;
        self.config.rtp_timeout_ns = rtp_timeout_ns;
        self.config.max_duration_ns = max_duration_ns;
    }

    /// Stops accepting new calls (drain) without ending running ones.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    /// The recording disk is below its free-space floor: new calls and OPTIONS get 503 until
    /// it is not. Running calls go on (a failed write ends a call by itself).
    pub fn set_storage_low(&mut self, low: bool) {
        if low != self.storage_low {
            tracing::warn!(
                low,
                "recording storage below RECORDING_MIN_FREE_MB: {}",
                if low {
                    "refusing new calls"
                } else {
                    "taking calls again"
                }
            );
        }
        self.storage_low = low;
    }

    // --- poll ---

    pub fn poll_action(&mut self) -> Option<Action> {
        let mut action = self.actions.pop_front()?;
        if let Action::Event(e) = &mut action {
            self.event_seq += 1;
            e.seq = self.event_seq;
            e.id = format!("{:016x}-{}", self.instance, self.event_seq);
        }
        Some(action)
    }

    // --- internals ---

    fn handle_request(
        &mut self,
        now: Now,
        ports: &mut dyn MediaPorts,
        key: TsxKey,
        request: Request,
        peer: Peer,
    ) {
        use crate::sip::Method;
        let in_dialog = request.to().is_some_and(|to| to.tag().is_some());
        let call_id = request.call_id().unwrap_or_default().to_owned();
        match request.method {
            Method::Invite if !in_dialog => self.handle_new_invite(now, ports, key, request, peer),
            Method::Options => {
                let status = if self.draining || self.storage_low || self.at_capacity() {
                    503
                } else {
                    200
                };
                let mut resp = call::response(&request, status, &self.new_tag());
                call::add_capabilities(&mut resp);
                if status == 503 {
                    resp.headers.push("Retry-After", "30");
                }
                self.actions.push_back(Action::Respond {
                    key,
                    response: resp,
                });
            }
            Method::Invite | Method::Update | Method::Bye | Method::Info => {
                let Some(call) = self.calls.get_mut(&call_id).filter(|c| c.matches(&request))
                else {
                    let resp = call::response(&request, 481, &self.new_tag());
                    self.actions.push_back(Action::Respond {
                        key,
                        response: resp,
                    });
                    return;
                };
                match request.method {
                    Method::Bye => {
                        let resp = call::response(&request, 200, call.local_tag());
                        self.actions.push_back(Action::Respond {
                            key,
                            response: resp,
                        });
                        call.terminate(now, ports, "bye", &mut self.actions, false);
                    }
                    Method::Info => {
                        let resp = call::response(&request, 200, call.local_tag());
                        self.actions.push_back(Action::Respond {
                            key,
                            response: resp,
                        });
                    }
                    _ => {
                        let counters = &mut self.counters;
                        call.handle_modify(now, ports, key, &request, &mut self.actions, counters);
                    }
                }
            }
            Method::Register | Method::Subscribe | Method::Publish | Method::Message => {
                let mut resp = call::response(&request, 405, &self.new_tag());
                resp.headers.push("Allow", call::ALLOW);
                self.actions.push_back(Action::Respond {
                    key,
                    response: resp,
                });
            }
            Method::Ack | Method::Cancel => {} // The transaction layer handles these.
            _ => {
                let mut resp = call::response(&request, 501, &self.new_tag());
                resp.headers.push("Allow", call::ALLOW);
                self.actions.push_back(Action::Respond {
                    key,
                    response: resp,
                });
            }
        }
    }

    fn at_capacity(&self) -> bool {
        self.active_calls() >= self.config.max_concurrent_calls
    }

    fn handle_new_invite(
        &mut self,
        now: Now,
        ports: &mut dyn MediaPorts,
        key: TsxKey,
        request: Request,
        peer: Peer,
    ) {
        let tag = self.new_tag();
        let reject = |actions: &mut VecDeque<Action>, status: u16, retry: bool| {
            let mut resp = call::response(&request, status, &tag);
            if retry {
                resp.headers.push("Retry-After", "30");
            }
            actions.push_back(Action::Respond {
                key,
                response: resp,
            });
        };
        let call_id = match request.call_id() {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => return reject(&mut self.actions, 400, false),
        };
        if self.calls.contains_key(&call_id) {
            // Same Call-ID without a To tag: a second dialog attempt we don't support.
            return reject(&mut self.actions, 482, false);
        }
        if self.draining || self.at_capacity() {
            self.counters.calls_rejected_capacity += 1;
            return reject(&mut self.actions, 503, true);
        }
        if self.storage_low {
            self.counters.calls_rejected_storage += 1;
            return reject(&mut self.actions, 503, true);
        }
        let limit = self.config.max_calls_per_source;
        if limit > 0 {
            let ip = peer.addr.ip();
            let from_source = self
                .calls
                .values()
                .filter(|c| c.is_active() && c.source_ip() == ip)
                .count();
            if from_source >= limit {
                self.counters.calls_rejected_source_limit += 1;
                return reject(&mut self.actions, 503, true);
            }
        }
        let is_siprec = call::is_siprec(&request);
        if self.config.require_siprec && !is_siprec {
            self.counters.calls_rejected_not_siprec += 1;
            return reject(&mut self.actions, 403, false);
        }
        let session = self.next_session;
        let sdp_session_id = self.next_random() >> 1;
        let advertised = call::advertised_ip(&self.config, &request, peer);
        let setup = call::CallSetup {
            session,
            call_id: call_id.clone(),
            local_tag: tag.clone(),
            sdp_session_id,
            advertised_ip: advertised,
            sip_port: self.config.sip_port,
            sip_tls_port: self.config.sip_tls_port,
            is_siprec,
            peer,
            recording_root: self.config.recording_root.clone(),
            combine_legs: self.config.combine_legs,
            recording_format: self.config.recording_format,
            recording_encrypted: self.config.recording_encrypted,
            branch_seed: self.next_random(),
            key_source: self.config.key_source,
            require_srtp: self.config.require_srtp,
            transcribe: self.config.transcribe.is_some(),
        };
        match Call::accept(now, ports, setup, key, &request, &mut self.actions) {
            Ok((call, metadata_error)) => {
                if metadata_error {
                    self.counters.metadata_errors += 1;
                }
                self.next_session += 1;
                self.counters.calls_total += 1;
                self.by_invite.insert(key, call_id.clone());
                self.by_session.insert(session, call_id.clone());
                if let Some(provider) = self.config.transcribe {
                    self.transcripts.insert(
                        session,
                        call.transcript_log(provider, &self.config.keywords),
                    );
                }
                self.calls.insert(call_id, call);
            }
            Err(status) => {
                match status {
                    503 => self.counters.calls_rejected_ports += 1,
                    _ => self.counters.calls_rejected_sdp += 1,
                }
                reject(&mut self.actions, status, status == 503);
            }
        }
    }

    fn new_tag(&mut self) -> String {
        format!("{:016x}", self.next_random())
    }

    /// splitmix64: tags and ids must be unique and unguessable enough for SIP, and the seed
    /// comes from the OS RNG; tests pass a fixed seed for reproducible output.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests;
