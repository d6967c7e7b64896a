//! One recording session: the SIP dialog with the SRC, its streams, metadata and lifecycle.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::json;

use crate::events::{Event, EventKind};
use crate::media::activity::{ActivityTotals, SpeakerChange, WINDOW_MS};
use crate::media::rtp::{PayloadKind, RtpStats, StreamParams};
use crate::media::StreamKey;
use crate::proto::pii::{self, Pii};
use crate::proto::{date_ymd, rfc3339_ms};
use crate::sdp::{self, AcceptedMedia, AnswerParams, AnswerPolicy, Codec, Direction, MediaPlan};
use crate::sink::recorder::{
    sanitize_component, AudioFormat, RecordedFile, RecorderCommand, RecorderEvent, StreamSpec,
};
use crate::sip::{Method, NameAddr, Peer, Request, Response, Transport, TsxKey};
use crate::siprec::{self, metadata::RecordingMetadata};

use super::{Action, MediaPorts, Now, SessionConfig, SessionCounters};

/// Written when recording starts and removed once session.json is written; found by
/// `recorder::recover` after a crash.
pub const PARTIAL_SESSION_FILE: &str = "session.partial.json";

/// DTMF digits kept per call for session.json (later ones still become events).
const DTMF_MAX: usize = 1000;

/// Metadata updates kept per call for session.json; later ones are applied but not listed.
const METADATA_HISTORY_MAX: usize = 1000;

/// Methods we answer; sent in Allow.
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO";

/// Lifecycle of a recording session, as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    /// 200 OK sent, waiting for ACK (recording already runs).
    Answered,
    /// ACK received.
    Connected,
    /// Ended; waiting for the recorder to close the files.
    Ending,
}

/// The API's view of a session (`GET /api/sessions`).
#[derive(Debug, Clone, Serialize)]
pub struct CallSummary {
    pub call_id: String,
    pub state: CallState,
    pub created_at: String,
    pub participants: Vec<String>,
    pub recording_path: String,
    #[serde(skip)]
    pub session: u64,
    pub session_id: String,
    pub siprec: bool,
    pub streams: Vec<StreamSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StreamSummary {
    pub index: u32,
    pub label: Option<String>,
    pub codec: Option<&'static str>,
    pub held: bool,
    pub local_port: Option<u16>,
    pub packets: u64,
    pub lost: u64,
    /// The SRTP crypto suite when the stream is SRTP.
    pub srtp: Option<&'static str>,
}

/// Everything the manager decided before the call exists.
pub(super) struct CallSetup {
    pub session: u64,
    pub call_id: String,
    pub local_tag: String,
    pub sdp_session_id: u64,
    pub advertised_ip: IpAddr,
    pub sip_port: u16,
    pub sip_tls_port: u16,
    pub is_siprec: bool,
    pub peer: Peer,
    pub recording_root: PathBuf,
    pub combine_legs: bool,
    pub recording_format: AudioFormat,
    pub recording_encrypted: bool,
    pub branch_seed: u64,
    pub key_source: fn(&mut [u8]),
    pub require_srtp: bool,
    pub transcribe: bool,
}

impl CallStream {
    fn srtp_suite(&self) -> Option<&'static str> {
        Some(self.media.as_ref()?.crypto.as_ref()?.suite.name())
    }
}

struct CallStream {
    index: u32,
    label: Option<String>,
    file_stem: String,
    port: Option<u16>,
    media: Option<AcceptedMedia>,
    held: bool,
    stats: RtpStats,
}

#[derive(Serialize)]
struct MetadataEvent {
    at: String,
    changes: Vec<siprec::metadata::MetadataChange>,
}

pub(super) struct Call {
    /// DTMF digits received (bounded), for session.json.
    dtmf: Vec<serde_json::Value>,
    /// Only SRTP m-lines are recorded (re-INVITEs too).
    require_srtp: bool,
    /// The final talk-time analytics, for session.json.
    analytics: Option<serde_json::Value>,
    /// Fills our SRTP answer keys (the OS RNG in production).
    key_source: fn(&mut [u8]),
    session: u64,
    session_id: String,
    call_id: String,
    state: CallState,
    end_reason: Option<&'static str>,
    local_tag: String,
    remote_tag: Option<String>,
    /// The INVITE's From (their identity, with tag) and To (ours, without tag).
    remote_party: String,
    local_party: String,
    remote_target: String,
    route_set: Vec<String>,
    peer: Peer,
    advertised_ip: IpAddr,
    sip_port: u16,
    sip_tls_port: u16,
    local_cseq: u32,
    remote_cseq: u32,
    sdp_session_id: u64,
    sdp_version: u64,
    is_siprec: bool,
    streams: Vec<CallStream>,
    metadata: RecordingMetadata,
    metadata_history: Vec<MetadataEvent>,
    created_unix_ms: u64,
    start_ns: u64,
    end_ns: Option<u64>,
    end_unix_ms: Option<u64>,
    dir: PathBuf,
    combine_legs: bool,
    recording_format: AudioFormat,
    recording_encrypted: bool,
    branch_seed: u64,
    last_modify_ns: u64,
    pause: Option<Pause>,
    /// Live transcription runs for this call (unless paused by the API).
    transcribe: bool,
}

/// A pause requested through the API (survives re-INVITEs).
#[derive(Debug, Clone, Copy)]
struct Pause {
    recording: bool,
    transcription: bool,
    at_unix_ms: u64,
    at_ns: u64,
    /// `auto_resume_at`: (wall clock for the API, monotonic deadline for the timer).
    resume_at: Option<(u64, u64)>,
}

/// The reference server's PauseStatus payload.
#[derive(Debug, Clone, Serialize)]
pub struct PauseStatus {
    pub session_id: String,
    pub is_paused: bool,
    pub recording_paused: bool,
    pub transcription_paused: bool,
    pub paused_at: Option<String>,
    /// Seconds since the pause began (0 when not paused).
    pub pause_duration: f64,
    pub auto_resume_at: Option<String>,
}

impl Call {
    /// Answers a new INVITE: parses the body, plans and renders the SDP answer, opens streams
    /// and starts the recording. On failure returns the status to reject with (400, 413, 415,
    /// 488, 503) and leaves no resources allocated.
    pub(super) fn accept(
        now: Now,
        ports: &mut dyn MediaPorts,
        setup: CallSetup,
        key: TsxKey,
        request: &Request,
        actions: &mut VecDeque<Action>,
    ) -> Result<(Call, bool), u16> {
        let content_type = request.headers.get("Content-Type");
        let body = siprec::body::split_body(content_type, &request.body).map_err(|e| e.status())?;
        let sdp_text = body.sdp.ok_or(488u16)?;
        let offer = sdp::parse(&sdp_text).map_err(|_| 488u16)?;
        let mut metadata_error = false;
        let metadata = match body.metadata.as_deref().map(siprec::metadata::parse) {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                tracing::warn!(call_id = %Pii(&setup.call_id), error = %e,
                    "unusable recording metadata");
                metadata_error = true;
                RecordingMetadata::default()
            }
            None => RecordingMetadata::default(),
        };
        let policy = AnswerPolicy {
            require_srtp: setup.require_srtp,
        };
        let plan = sdp::plan_answer(&offer, policy).map_err(|_| 488u16)?;

        let mut allocated = Vec::new();
        for p in &plan {
            if p.accept.is_some() {
                match ports.allocate(now.mono_ns) {
                    Some(port) => allocated.push(Some(port)),
                    None => {
                        for port in allocated.into_iter().flatten() {
                            ports.release(port, now.mono_ns);
                        }
                        return Err(503);
                    }
                }
            } else {
                allocated.push(None);
            }
        }

        let from = request.from();
        let session_id = format!(
            "{}_{:08x}",
            sanitize_component(&setup.call_id),
            (setup.branch_seed >> 32) as u32
        );
        let dir = setup
            .recording_root
            .join(date_ymd(now.unix_ms))
            .join(&session_id);
        let mut call = Call {
            dtmf: Vec::new(),
            require_srtp: setup.require_srtp,
            analytics: None,
            key_source: setup.key_source,
            session: setup.session,
            session_id,
            call_id: setup.call_id,
            state: CallState::Answered,
            end_reason: None,
            local_tag: setup.local_tag,
            remote_tag: from.as_ref().and_then(|f| f.tag().map(str::to_owned)),
            remote_party: request.headers.get("From").unwrap_or_default().to_owned(),
            local_party: request.headers.get("To").unwrap_or_default().to_owned(),
            remote_target: contact_uri(request).unwrap_or_else(|| request.uri.clone()),
            route_set: request
                .headers
                .get_all("Record-Route")
                .iter()
                .map(|s| s.to_string())
                .collect(),
            peer: setup.peer,
            advertised_ip: setup.advertised_ip,
            sip_port: setup.sip_port,
            sip_tls_port: setup.sip_tls_port,
            local_cseq: 0,
            remote_cseq: request.cseq().map(|c| c.seq).unwrap_or(0),
            sdp_session_id: setup.sdp_session_id,
            sdp_version: 1,
            is_siprec: setup.is_siprec,
            streams: Vec::new(),
            metadata,
            metadata_history: Vec::new(),
            created_unix_ms: now.unix_ms,
            start_ns: now.mono_ns,
            end_ns: None,
            end_unix_ms: None,
            dir,
            combine_legs: setup.combine_legs,
            recording_format: setup.recording_format,
            recording_encrypted: setup.recording_encrypted,
            branch_seed: setup.branch_seed,
            last_modify_ns: now.mono_ns,
            pause: None,
            transcribe: setup.transcribe,
        };
        let mut specs = Vec::new();
        for (p, port) in plan.iter().zip(&allocated) {
            let stream = call.new_stream(p, *port);
            if let (Some(port), Some(media)) = (stream.port, stream.media.as_ref()) {
                let key = call.key(stream.index);
                let params = stream_params(key, media, stream.held, false, call.transcribe);
                actions.push_back(Action::OpenStream { port, params });
                specs.push(StreamSpec {
                    index: stream.index,
                    file_stem: stream.file_stem.clone(),
                    sample_rate: media.codec.sample_rate(),
                    in_mixed: call.combine_legs,
                });
            }
            call.streams.push(stream);
        }
        let answer = call.render_answer(&offer, &plan, &allocated);
        let mut resp = response(request, 200, &call.local_tag);
        call.add_dialog_headers(request, &mut resp);
        resp.headers.push("Content-Type", "application/sdp");
        resp.body = answer.into_bytes().into();
        actions.push_back(Action::Respond {
            key,
            response: resp,
        });
        actions.push_back(Action::Recorder(RecorderCommand::StartSession {
            session: call.session,
            dir: call.dir.clone(),
            start_ns: call.start_ns,
            streams: specs,
        }));
        actions.push_back(call.partial_session_file());
        let data = json!({
            "siprec": call.is_siprec,
            "participants": call.participants_json(),
            "streams": call.streams_json(),
        });
        actions.push_back(call.event(now, EventKind::CallStarted, data));
        tracing::info!(
            session = call.session,
            session_id = %Pii(&call.session_id),
            streams = call.streams.iter().filter(|s| s.port.is_some()).count(),
            siprec = call.is_siprec,
            "recording session started"
        );
        Ok((call, metadata_error))
    }

    /// A DTMF digit on stream `index`: kept for session.json and sent as an event.
    pub(super) fn handle_dtmf(
        &mut self,
        now: Now,
        index: u32,
        digit: crate::media::rtp::Dtmf,
        actions: &mut VecDeque<Action>,
    ) {
        let stream = self.streams.get(index as usize);
        let at_s = digit.start_ns.saturating_sub(self.start_ns) as f64 / 1e9;
        let data = json!({
            "digit": digit.digit.to_string(),
            "stream": index,
            "label": stream.and_then(|s| s.label.clone()),
            "participants": stream.map(|s| self.stream_participants(s)),
            "at_s": (at_s * 1000.0).round() / 1000.0,
            "duration_ms": digit.duration_ms,
        });
        if self.dtmf.len() < DTMF_MAX {
            self.dtmf.push(data.clone());
        }
        actions.push_back(self.event(now, EventKind::Dtmf, data));
    }

    /// Talk time, dead air and speaker changes from the recorder: `speaker_change` events and
    /// an analytics `snapshot` (the last one, `final`, also goes into session.json).
    pub(super) fn handle_activity(
        &mut self,
        now: Now,
        totals: ActivityTotals,
        changes: Vec<SpeakerChange>,
        final_: bool,
        actions: &mut VecDeque<Action>,
    ) {
        let secs = |windows: u64| (windows * WINDOW_MS) as f64 / 1000.0;
        for c in changes {
            let stream = c.stream.and_then(|i| self.streams.get(i as usize));
            let data = json!({
                "at_s": secs(c.window),
                "stream": c.stream,
                "label": stream.and_then(|s| s.label.clone()),
                "participants": stream.map(|s| self.stream_participants(s)),
            });
            actions.push_back(self.event(now, EventKind::SpeakerChange, data));
        }
        let talk_total: u64 = totals.talk.iter().map(|t| t.1).sum();
        let talk_time: Vec<serde_json::Value> = totals
            .talk
            .iter()
            .map(|&(index, windows)| {
                let stream = self.streams.get(index as usize);
                json!({
                    "stream": index,
                    "label": stream.and_then(|s| s.label.clone()),
                    "participants": stream.map(|s| self.stream_participants(s)),
                    "seconds": secs(windows),
                    "share": if talk_total > 0 { windows as f64 / talk_total as f64 } else { 0.0 },
                })
            })
            .collect();
        let first_share = totals
            .talk
            .first()
            .filter(|_| talk_total > 0)
            .map_or(0.0, |t| t.1 as f64 / talk_total as f64);
        let data = json!({
            "final": final_,
            "duration_s": secs(totals.windows),
            "talk_time": talk_time,
            "overtalk_seconds": secs(totals.overtalk),
            "agent_metrics": {
                "talk_ratio": (first_share * 1000.0).round() / 1000.0,
                "dead_air_seconds": secs(totals.dead_air),
            },
        });
        if final_ {
            self.analytics = Some(data.clone());
        }
        actions.push_back(self.event(now, EventKind::Snapshot, data));
    }

    /// A transcript log for this call's recording session.
    pub(super) fn transcript_log(
        &self,
        provider: &'static str,
        keywords: &[String],
    ) -> super::transcript::TranscriptLog {
        let mut log = super::transcript::TranscriptLog::new(
            &self.call_id,
            &self.session_id,
            self.dir.clone(),
            provider,
            keywords,
        );
        for s in &self.streams {
            log.set_speaker(s.index, self.speaker(s.index));
        }
        log
    }

    /// Who speaks on stream `index`: the sending participant's name or AoR from the SIPREC
    /// metadata, else the stream's label.
    pub(super) fn speaker(&self, index: u32) -> super::transcript::Speaker {
        let stream = self.streams.get(index as usize);
        let label = stream.and_then(|s| s.label.clone());
        let senders = label
            .as_deref()
            .map(|l| self.metadata.participants_sending(l))
            .unwrap_or_default();
        let speaker_label = senders
            .iter()
            .find_map(|p| {
                p.name
                    .clone()
                    .filter(|n| !n.is_empty())
                    .or_else(|| p.aor.clone())
            })
            .or_else(|| label.clone())
            .unwrap_or_else(|| format!("stream{index}"));
        super::transcript::Speaker {
            speaker_label,
            label,
            participants: stream
                .map(|s| self.stream_participants(s))
                .unwrap_or_default(),
        }
    }

    fn stream_participants(&self, stream: &CallStream) -> Vec<String> {
        stream
            .label
            .as_deref()
            .map(|l| {
                self.metadata
                    .participants_sending(l)
                    .iter()
                    .map(|p| p.aor.clone().unwrap_or_else(|| p.id.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A call event for live consumers (numbered later by the manager).
    fn event(&self, now: Now, kind: EventKind, data: serde_json::Value) -> Action {
        Action::Event(Event::new(
            kind,
            &self.call_id,
            &self.session_id,
            rfc3339_ms(now.unix_ms),
            data,
        ))
    }

    fn streams_json(&self) -> serde_json::Value {
        json!(self
            .streams
            .iter()
            .map(|s| json!({
                "index": s.index,
                "label": s.label,
                "codec": s.media.as_ref().map(|m| m.codec.name()),
                "srtp": s.srtp_suite(),
                "held": s.held,
                "recorded": s.port.is_some(),
            }))
            .collect::<Vec<_>>())
    }

    fn key(&self, index: u32) -> StreamKey {
        StreamKey {
            session: self.session,
            stream: index,
        }
    }

    fn new_stream(&self, p: &MediaPlan, port: Option<u16>) -> CallStream {
        let index = self.streams.len() as u32;
        let label = p.accept.as_ref().and_then(|a| a.label.clone());
        let mut stem = match &label {
            Some(l) => sanitize_component(l),
            None => format!("stream{index}"),
        };
        if stem == "mixed" || stem == "session" || self.streams.iter().any(|s| s.file_stem == stem)
        {
            stem = format!("{stem}-{index}");
        }
        let held = p
            .accept
            .as_ref()
            .is_some_and(|a| a.offered_direction == Direction::Inactive);
        CallStream {
            index,
            label,
            file_stem: stem,
            port: if p.accept.is_some() { port } else { None },
            media: p.accept.clone(),
            held,
            stats: RtpStats::default(),
        }
    }

    fn render_answer(
        &self,
        offer: &sdp::SessionDescription,
        plan: &[MediaPlan],
        ports: &[Option<u16>],
    ) -> String {
        // Our own key for each SRTP m-line: we never send media, but RFC 4568 wants one.
        let crypto = plan
            .iter()
            .map(|p| {
                let c = p.accept.as_ref()?.crypto.as_ref()?;
                let mut material = [0u8; 46];
                let material = &mut material[..c.suite.key_len() + c.suite.salt_len()];
                (self.key_source)(material);
                Some(crate::srtp::sdes::answer_value(c, material))
            })
            .collect();
        let params = AnswerParams {
            local_addr: self.advertised_ip,
            session_id: self.sdp_session_id,
            session_version: self.sdp_version,
            ports: ports.to_vec(),
            crypto,
        };
        sdp::render_answer(offer, plan, &params)
    }

    fn add_dialog_headers(&self, request: &Request, resp: &mut Response) {
        let transport = match self.peer.transport {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
            Transport::Tls => ";transport=tls",
        };
        let host = match self.advertised_ip {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        // RFC 7866 §6.1.1: the SRS identifies itself with the +sip.srs feature tag.
        resp.headers.push(
            "Contact",
            format!(
                "<sip:siprec@{host}:{}{transport}>;+sip.srs",
                self.local_port()
            ),
        );
        add_capabilities(resp);
        if request.headers.has_token("Require", "siprec") {
            resp.headers.push("Require", "siprec");
        }
        // RFC 4028: accept the offered session interval, the SRC refreshes.
        if let Some(se) = request.headers.get("Session-Expires") {
            let interval = se.split(';').next().unwrap_or("1800").trim();
            if interval.parse::<u32>().is_ok() {
                resp.headers
                    .push("Session-Expires", format!("{interval};refresher=uac"));
                if request.headers.has_token("Supported", "timer") {
                    resp.headers.push("Require", "timer");
                }
            }
        }
        for rr in request.headers.get_all("Record-Route") {
            resp.headers.push("Record-Route", rr);
        }
    }

    pub(super) fn session(&self) -> u64 {
        self.session
    }

    /// How long ago the call ended, if it did.
    pub(super) fn ended_for_ns(&self, now_ns: u64) -> Option<u64> {
        self.end_ns.map(|end| now_ns.saturating_sub(end))
    }

    pub(super) fn local_tag(&self) -> &str {
        &self.local_tag
    }

    /// The recording session's directory.
    pub(super) fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub(super) fn is_active(&self) -> bool {
        self.state != CallState::Ending
    }

    /// The address the SRC signals from.
    pub(super) fn source_ip(&self) -> IpAddr {
        self.peer.addr.ip()
    }

    /// True when `request` belongs to this dialog (remote tag and our tag match).
    pub(super) fn matches(&self, request: &Request) -> bool {
        let from_tag = request.from().and_then(|f| f.tag().map(str::to_owned));
        let to_tag = request.to().and_then(|t| t.tag().map(str::to_owned));
        from_tag == self.remote_tag && to_tag.as_deref() == Some(self.local_tag.as_str())
    }

    pub(super) fn handle_ack(&mut self) {
        if self.state == CallState::Answered {
            self.state = CallState::Connected;
        }
    }

    pub(super) fn error_response(&self, status: u16) -> Response {
        let mut r = Response::new(status, crate::sip::reason_phrase(status));
        r.headers.push("Content-Length", "0");
        r
    }

    pub(super) fn update_stats(&mut self, key: StreamKey, stats: RtpStats) {
        if let Some(s) = self.streams.get_mut(key.stream as usize) {
            s.stats = stats;
        }
    }

    fn recording_paused(&self) -> bool {
        self.pause.is_some_and(|p| p.recording)
    }

    pub(super) fn call_id(&self) -> &str {
        &self.call_id
    }

    pub(super) fn is_paused(&self) -> bool {
        self.pause.is_some()
    }

    /// When an `auto_resume_at` pause is due (monotonic ns).
    pub(super) fn resume_deadline_ns(&self) -> Option<u64> {
        self.pause.and_then(|p| p.resume_at).map(|(_, ns)| ns)
    }

    /// Pauses (or changes what is paused) and pushes new stream parameters to the data plane.
    /// `resume_at_ms` (wall clock) resumes it by itself; the latest request replaces it.
    pub(super) fn set_pause(
        &mut self,
        now: Now,
        (recording, transcription): (bool, bool),
        resume_at_ms: Option<u64>,
        actions: &mut VecDeque<Action>,
    ) {
        let was_recording_paused = self.recording_paused();
        let since = self.pause.map(|p| (p.at_unix_ms, p.at_ns));
        let (at_unix_ms, at_ns) = since.unwrap_or((now.unix_ms, now.mono_ns));
        // The deadline is kept on the monotonic clock so a wall-clock step doesn't move it.
        let resume_at = resume_at_ms.map(|ms| {
            let wait_ns = ms.saturating_sub(now.unix_ms).saturating_mul(1_000_000);
            (ms, now.mono_ns.saturating_add(wait_ns))
        });
        self.pause = (recording || transcription).then_some(Pause {
            recording,
            transcription,
            at_unix_ms,
            at_ns,
            resume_at,
        });
        self.push_stream_params(actions);
        if recording != was_recording_paused {
            let kind = match recording {
                true => EventKind::RecordingPaused,
                false => EventKind::RecordingResumed,
            };
            let data = json!({
                "recording": recording,
                "transcription": transcription,
                "auto_resume_at": resume_at.map(|(ms, _)| rfc3339_ms(ms)),
            });
            actions.push_back(self.event(now, kind, data));
        }
        tracing::info!(
            session = self.session,
            recording,
            transcription,
            "pause changed"
        );
    }

    /// Audio goes to live transcription: STT runs and the API has not paused it.
    fn transcribing(&self) -> bool {
        self.transcribe && !self.pause.is_some_and(|p| p.transcription)
    }

    fn push_stream_params(&self, actions: &mut VecDeque<Action>) {
        let paused = self.recording_paused();
        let stt = self.transcribing();
        for s in &self.streams {
            if let (Some(port), Some(media)) = (s.port, s.media.as_ref()) {
                let params = stream_params(self.key(s.index), media, s.held, paused, stt);
                actions.push_back(Action::UpdateStream { port, params });
            }
        }
    }

    pub(super) fn pause_status(&self, now: Now) -> PauseStatus {
        PauseStatus {
            session_id: self.call_id.clone(),
            is_paused: self.pause.is_some(),
            recording_paused: self.pause.is_some_and(|p| p.recording),
            transcription_paused: self.pause.is_some_and(|p| p.transcription),
            paused_at: self.pause.map(|p| rfc3339_ms(p.at_unix_ms)),
            pause_duration: self
                .pause
                .map_or(0.0, |p| now.mono_ns.saturating_sub(p.at_ns) as f64 / 1e9),
            auto_resume_at: self
                .pause
                .and_then(|p| p.resume_at)
                .map(|(ms, _)| rfc3339_ms(ms)),
        }
    }

    pub(super) fn add_rtp_stats(&self, total: &mut RtpStats) {
        for s in &self.streams {
            total.add(&s.stats);
        }
    }

    pub(super) fn duration_ns(&self, now_ns: u64) -> u64 {
        now_ns.saturating_sub(self.start_ns)
    }

    /// Time since the last RTP packet on any stream that is not on hold (or since the call
    /// started or was last modified), or `None` when every stream is held.
    pub(super) fn rtp_idle_ns(&self, now_ns: u64) -> Option<u64> {
        let live: Vec<&CallStream> = self
            .streams
            .iter()
            .filter(|s| s.port.is_some() && !s.held)
            .collect();
        if live.is_empty() {
            return None;
        }
        let last = live
            .iter()
            .map(|s| s.stats.last_rx_ns)
            .chain([self.start_ns, self.last_modify_ns])
            .max()
            .unwrap_or(self.start_ns);
        Some(now_ns.saturating_sub(last))
    }

    /// A re-INVITE or UPDATE inside the dialog: new SDP (hold/resume, codec change, streams
    /// added) and/or partial metadata.
    pub(super) fn handle_modify(
        &mut self,
        now: Now,
        ports: &mut dyn MediaPorts,
        key: TsxKey,
        request: &Request,
        actions: &mut VecDeque<Action>,
        counters: &mut SessionCounters,
    ) {
        if let Some(cseq) = request.cseq() {
            self.remote_cseq = self.remote_cseq.max(cseq.seq);
        }
        if let Some(target) = contact_uri(request) {
            self.remote_target = target;
        }
        let content_type = request.headers.get("Content-Type");
        let body = match siprec::body::split_body(content_type, &request.body) {
            Ok(b) => b,
            Err(e) => {
                let resp = response(request, e.status(), &self.local_tag);
                actions.push_back(Action::Respond {
                    key,
                    response: resp,
                });
                return;
            }
        };
        if let Some(xml) = body.metadata.as_deref() {
            match siprec::metadata::parse(xml) {
                Ok(update) => {
                    let changes = self.metadata.merge(update);
                    if !changes.is_empty() {
                        tracing::info!(
                            session = self.session,
                            changes = changes.len(),
                            "metadata update"
                        );
                        let data = json!({
                            "changes": changes,
                            "participants": self.participants_json(),
                        });
                        actions.push_back(self.event(now, EventKind::MetadataUpdated, data));
                        // Bounded: an SRC sending endless updates can't grow a call forever.
                        if self.metadata_history.len() < METADATA_HISTORY_MAX {
                            self.metadata_history.push(MetadataEvent {
                                at: rfc3339_ms(now.unix_ms),
                                changes,
                            });
                        }
                    }
                }
                Err(e) => {
                    counters.metadata_errors += 1;
                    tracing::warn!(session = self.session, error = %e, "unusable metadata update");
                }
            }
        }
        self.last_modify_ns = now.mono_ns;
        let Some(sdp_text) = body.sdp else {
            let mut resp = response(request, 200, &self.local_tag);
            self.add_dialog_headers(request, &mut resp);
            actions.push_back(Action::Respond {
                key,
                response: resp,
            });
            return;
        };
        let offer = match sdp::parse(&sdp_text) {
            Ok(o) if !o.media.is_empty() => o,
            _ => {
                let resp = response(request, 488, &self.local_tag);
                actions.push_back(Action::Respond {
                    key,
                    response: resp,
                });
                return;
            }
        };
        // Every m-line on port 0 is a valid "hold everything" offer in a re-INVITE.
        let policy = AnswerPolicy {
            require_srtp: self.require_srtp,
        };
        let plan = sdp::plan_answer(&offer, policy).unwrap_or_else(|_| rejected_plan(&offer));
        let mut answer_ports = Vec::with_capacity(plan.len());
        for p in &plan {
            let index = p.index;
            if index < self.streams.len() {
                let key = self.key(index as u32);
                let (paused, stt) = (self.recording_paused(), self.transcribing());
                let stream = &mut self.streams[index];
                let was_held = stream.held;
                match (&p.accept, stream.port) {
                    (Some(media), Some(port)) => {
                        stream.held = media.offered_direction == Direction::Inactive;
                        stream.media = Some(media.clone());
                        let params = stream_params(key, media, stream.held, paused, stt);
                        actions.push_back(Action::UpdateStream { port, params });
                        answer_ports.push(Some(port));
                    }
                    (None, Some(_)) => {
                        // Port 0 on a stream we record: hold, keep the port for the resume.
                        stream.held = true;
                        answer_ports.push(None);
                    }
                    (_, None) => answer_ports.push(None),
                }
                let stream = &self.streams[index];
                if stream.port.is_some() && stream.held != was_held {
                    let kind = if stream.held {
                        EventKind::Hold
                    } else {
                        EventKind::Resume
                    };
                    let data = json!({"stream": stream.index, "label": stream.label});
                    actions.push_back(self.event(now, kind, data));
                }
            } else {
                // A stream added by this offer: own file; mixed.wav's channels are fixed.
                let port = match p.accept {
                    Some(_) => match ports.allocate(now.mono_ns) {
                        Some(port) => Some(port),
                        None => {
                            let mut resp = response(request, 503, &self.local_tag);
                            resp.headers.push("Retry-After", "30");
                            actions.push_back(Action::Respond {
                                key,
                                response: resp,
                            });
                            return;
                        }
                    },
                    None => None,
                };
                let stream = self.new_stream(p, port);
                if let (Some(port), Some(media)) = (stream.port, stream.media.as_ref()) {
                    let (paused, stt) = (self.recording_paused(), self.transcribing());
                    let key = self.key(stream.index);
                    let params = stream_params(key, media, stream.held, paused, stt);
                    actions.push_back(Action::OpenStream { port, params });
                    actions.push_back(Action::Recorder(RecorderCommand::AddStream {
                        session: self.session,
                        spec: StreamSpec {
                            index: stream.index,
                            file_stem: stream.file_stem.clone(),
                            sample_rate: media.codec.sample_rate(),
                            in_mixed: false,
                        },
                    }));
                }
                answer_ports.push(stream.port);
                let data = json!({
                    "stream": stream.index,
                    "label": stream.label,
                    "codec": stream.media.as_ref().map(|m| m.codec.name()),
                    "srtp": stream.srtp_suite(),
                    "recorded": stream.port.is_some(),
                });
                self.streams.push(stream);
                actions.push_back(self.event(now, EventKind::StreamAdded, data));
            }
        }
        self.sdp_version += 1;
        let answer = self.render_answer(&offer, &plan, &answer_ports);
        let mut resp = response(request, 200, &self.local_tag);
        self.add_dialog_headers(request, &mut resp);
        resp.headers.push("Content-Type", "application/sdp");
        resp.body = answer.into_bytes().into();
        actions.push_back(Action::Respond {
            key,
            response: resp,
        });
    }

    /// Ends the recording session: optional BYE to the SRC, streams closed, ports released,
    /// recorder told to finish at `now`. session.json follows when the recorder reports back.
    pub(super) fn terminate(
        &mut self,
        now: Now,
        ports: &mut dyn MediaPorts,
        reason: &'static str,
        actions: &mut VecDeque<Action>,
        send_bye: bool,
    ) {
        if self.state == CallState::Ending {
            return;
        }
        if send_bye {
            let bye = self.build_bye();
            actions.push_back(Action::SendRequest {
                peer: self.peer,
                request: bye,
            });
        }
        for s in &self.streams {
            if let Some(port) = s.port {
                actions.push_back(Action::CloseStream {
                    port,
                    key: self.key(s.index),
                });
                ports.release(port, now.mono_ns);
            }
        }
        self.state = CallState::Ending;
        self.end_reason = Some(reason);
        self.end_ns = Some(now.mono_ns);
        self.end_unix_ms = Some(now.unix_ms);
        actions.push_back(Action::Recorder(RecorderCommand::StopSession {
            session: self.session,
            end_ns: now.mono_ns,
        }));
        let duration_s = now.mono_ns.saturating_sub(self.start_ns) as f64 / 1e9;
        let data = json!({"reason": reason, "duration_s": (duration_s * 1000.0).round() / 1000.0});
        actions.push_back(self.event(now, EventKind::CallEnded, data));
        tracing::info!(session = self.session, reason, "recording session ending");
    }

    fn build_bye(&mut self) -> Request {
        self.local_cseq = self.local_cseq.max(1) + 1;
        self.branch_seed = self
            .branch_seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1);
        let mut req = Request::new(Method::Bye, self.remote_target.clone());
        let transport = match self.peer.transport {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        };
        let host = match self.advertised_ip {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        req.headers.push(
            "Via",
            format!(
                "SIP/2.0/{transport} {host}:{};branch=z9hG4bK{:016x};rport",
                self.local_port(),
                self.branch_seed
            ),
        );
        req.headers.push("Max-Forwards", "70");
        let local = if self.local_party.contains("tag=") {
            self.local_party.clone()
        } else {
            format!("{};tag={}", self.local_party, self.local_tag)
        };
        req.headers.push("From", local);
        req.headers.push("To", self.remote_party.clone());
        req.headers.push("Call-ID", self.call_id.clone());
        req.headers.push("CSeq", format!("{} BYE", self.local_cseq));
        for route in &self.route_set {
            req.headers.push("Route", route.clone());
        }
        req.headers.push("Content-Length", "0");
        req
    }

    /// Handles the recorder's report; returns true when the call can be forgotten.
    pub(super) fn handle_recorder_event(
        &mut self,
        now: Now,
        event: RecorderEvent,
        actions: &mut VecDeque<Action>,
    ) -> bool {
        let (files, record_stats, error) = match event {
            RecorderEvent::SessionClosed {
                files,
                streams,
                error,
                ..
            } => (files, streams, error),
            RecorderEvent::SessionFailed { error, .. } => (Vec::new(), Vec::new(), Some(error)),
            RecorderEvent::Activity { .. } => return false,
        };
        if let Some(e) = &error {
            let e = pii::redact_in(e, &self.dir.display().to_string());
            tracing::error!(session = self.session, error = %e, "recording failed");
        }
        if self.state != CallState::Ending {
            // The manager ends a call before handing it a failure; anything else is a late
            // report about a call that is still running.
            return false;
        }
        let end_unix_ms = self.end_unix_ms.unwrap_or(now.unix_ms);
        let duration_s = self
            .end_ns
            .unwrap_or(now.mono_ns)
            .saturating_sub(self.start_ns) as f64
            / 1e9;
        let doc = self.session_doc(
            Some((end_unix_ms, duration_s)),
            &files,
            &record_stats,
            error,
        );
        let mut bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
        bytes.push(b'\n');
        actions.push_back(Action::WriteFile {
            path: self.dir.join("session.json"),
            bytes,
        });
        // The call is complete: the crash-recovery copy goes (once session.json is there).
        actions.push_back(Action::DropPartialSession {
            dir: self.dir.clone(),
        });
        true
    }

    /// `session.partial.json`: what session.json will say, written when recording starts, so
    /// that a crash leaves the call's parties and streams next to its audio; recovery at the
    /// next start turns it into session.json marked `interrupted`.
    pub(super) fn partial_session_file(&self) -> Action {
        let doc = self.session_doc(None, &[], &[], None);
        let mut bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
        bytes.push(b'\n');
        Action::WriteFile {
            path: self.dir.join(PARTIAL_SESSION_FILE),
            bytes,
        }
    }

    /// session.json's document; `end` (wall-clock ms, duration in s) is `None` while the call
    /// runs.
    fn session_doc(
        &self,
        end: Option<(u64, f64)>,
        files: &[RecordedFile],
        record_stats: &[crate::sink::recorder::StreamRecordStats],
        error: Option<String>,
    ) -> serde_json::Value {
        let (end_unix_ms, duration_s) = match end {
            Some((ms, d)) => (Some(rfc3339_ms(ms)), Some(d)),
            None => (None, None),
        };
        json!({
            "version": 1,
            "session_id": self.session_id,
            "call_id": self.call_id,
            "siprec": self.is_siprec,
            "end_reason": self.end_reason,
            "created_at": rfc3339_ms(self.created_unix_ms),
            "start": rfc3339_ms(self.created_unix_ms),
            "end": end_unix_ms,
            "duration_s": duration_s,
            "recording_sessions": self.metadata.sessions,
            "participants": self.participants_json(),
            "streams": self.streams.iter().map(|s| json!({
                "index": s.index,
                "label": s.label,
                "file": s.port.map(|_| self.stream_file(s, files)),
                "codec": s.media.as_ref().map(|m| m.codec.name()),
                "payload_type": s.media.as_ref().map(|m| m.pt),
                "clock_rate": s.media.as_ref().map(|m| m.clock_rate),
                "sample_rate": s.media.as_ref().map(|m| m.codec.sample_rate()),
                "telephone_event_pt": s.media.as_ref().and_then(|m| m.telephone_event_pt),
                "local_port": s.port,
                "srtp": s.srtp_suite(),
                "held_at_end": s.held,
                "ssrc": s.stats.ssrc.map(|v| format!("{v:08x}")),
                "rtp": s.stats,
                "participants": s.label.as_deref().map(|l| self.metadata.participants_sending(l)
                    .iter().map(|p| p.id.clone()).collect::<Vec<_>>()),
            })).collect::<Vec<_>>(),
            "files": files,
            "analytics": self.analytics,
            "dtmf": self.dtmf,
            // Written by live transcription when it has finished this session's audio.
            "transcripts": self.transcribe.then_some(["transcript.json", "transcript.vtt"]),
            "recorder": record_stats,
            "metadata": self.metadata,
            "metadata_history": self.metadata_history,
            "error": error,
        })
    }

    fn participants_json(&self) -> serde_json::Value {
        if !self.metadata.participants.is_empty() {
            return serde_json::to_value(&self.metadata.participants).unwrap_or_default();
        }
        // A plain INVITE (Cisco NBR, PBX fork): the dialog's parties stand in.
        let parse = |s: &str| NameAddr::parse(s);
        let parties = [parse(&self.remote_party), parse(&self.local_party)];
        json!(parties
            .iter()
            .flatten()
            .map(|p| json!({"aor": p.uri, "name": p.display}))
            .collect::<Vec<_>>())
    }

    /// Our SIP port on the call's transport (Contact, Via).
    fn local_port(&self) -> u16 {
        match self.peer.transport {
            Transport::Tls => self.sip_tls_port,
            _ => self.sip_port,
        }
    }

    /// `<stem>.<ext>` in the format the recorder writes such a file in.
    fn file_name(&self, stem: &str, channels: u16, rate: u32) -> String {
        let format = self.recording_format.for_stream(channels, rate);
        crate::sink::recorder::file_name(stem, format, self.recording_encrypted)
    }

    /// A stream's file name: what the recorder reported writing, else what it would write.
    fn stream_file(&self, s: &CallStream, files: &[RecordedFile]) -> String {
        let recorded = files.iter().find(|f| f.stream == Some(s.index));
        match recorded.and_then(|f| f.path.file_name()) {
            Some(name) => name.to_string_lossy().into_owned(),
            None => {
                let rate = s.media.as_ref().map_or(8000, |m| m.codec.sample_rate());
                self.file_name(&s.file_stem, 1, rate)
            }
        }
    }

    pub(super) fn summary(&self) -> CallSummary {
        let participants = if self.metadata.participants.is_empty() {
            [&self.remote_party, &self.local_party]
                .iter()
                .filter_map(|s| NameAddr::parse(s).map(|n| n.uri))
                .collect()
        } else {
            self.metadata
                .participants
                .iter()
                .filter_map(|p| p.aor.clone())
                .collect()
        };
        let recording = if self.combine_legs {
            let recorded = self.streams.iter().filter_map(|s| s.media.as_ref());
            let channels = recorded.clone().count();
            let rate = recorded
                .map(|m| m.codec.sample_rate())
                .max()
                .unwrap_or(8000);
            let channels = u16::try_from(channels).unwrap_or(u16::MAX);
            self.dir.join(self.file_name("mixed", channels, rate))
        } else {
            let stream = self.streams.iter().find(|s| s.port.is_some());
            let rate = stream
                .and_then(|s| s.media.as_ref())
                .map_or(8000, |m| m.codec.sample_rate());
            let stem = stream.map_or("stream0", |s| s.file_stem.as_str());
            self.dir.join(self.file_name(stem, 1, rate))
        };
        CallSummary {
            call_id: self.call_id.clone(),
            state: self.state,
            created_at: rfc3339_ms(self.created_unix_ms),
            participants,
            recording_path: recording.display().to_string(),
            session: self.session,
            session_id: self.session_id.clone(),
            siprec: self.is_siprec,
            streams: self
                .streams
                .iter()
                .map(|s| StreamSummary {
                    index: s.index,
                    label: s.label.clone(),
                    codec: s.media.as_ref().map(|m| m.codec.name()),
                    held: s.held,
                    local_port: s.port,
                    packets: s.stats.packets,
                    lost: s.stats.lost,
                    srtp: s.srtp_suite(),
                })
                .collect(),
        }
    }
}

/// A response to `request` with our To tag (RFC 3261 §8.2.6).
pub fn response(request: &Request, status: u16, tag: &str) -> Response {
    let mut r = Response::from_request(request, status, crate::sip::reason_phrase(status));
    if status > 100 {
        r.set_to_tag(tag);
    }
    r
}

/// Allow/Accept/Supported, as OPTIONS and dialog responses carry them.
pub fn add_capabilities(resp: &mut Response) {
    resp.headers.push("Allow", ALLOW);
    resp.headers.push(
        "Accept",
        "application/sdp, application/rs-metadata+xml, application/rs-metadata, multipart/mixed",
    );
    resp.headers.push("Supported", "siprec, timer");
}

/// RFC 7866 §6.1.1: a recording session has `Require: siprec` and/or `+sip.src` in Contact.
pub fn is_siprec(request: &Request) -> bool {
    request.headers.has_token("Require", "siprec")
        || request
            .headers
            .get_all("Contact")
            .iter()
            .any(|c| c.to_ascii_lowercase().contains("+sip.src"))
}

fn contact_uri(request: &Request) -> Option<String> {
    let contact = request.headers.get("Contact")?;
    NameAddr::parse(contact).map(|n| n.uri)
}

/// The address we advertise: configured, else the IP literal the SRC addressed us by, else
/// the configured fallback (the local address of the default route).
pub(super) fn advertised_ip(config: &SessionConfig, request: &Request, _peer: Peer) -> IpAddr {
    if let Some(ip) = config.advertised_ip {
        return ip;
    }
    if let Some(uri) = crate::sip::SipUri::parse(&request.uri) {
        if let Ok(ip) = uri.host.parse::<IpAddr>() {
            if !ip.is_unspecified() {
                return ip;
            }
        }
    }
    config.fallback_ip
}

/// Data-plane parameters of an accepted stream: the PT table from its SDP.
fn stream_params(
    key: StreamKey,
    media: &AcceptedMedia,
    held: bool,
    paused: bool,
    transcribe: bool,
) -> StreamParams {
    let kind = |codec: Codec| match codec {
        Codec::Pcmu => PayloadKind::Pcmu,
        Codec::Pcma => PayloadKind::Pcma,
        Codec::L16(_) => PayloadKind::L16,
        Codec::G722 => PayloadKind::G722,
        Codec::G729 => PayloadKind::G729,
        Codec::Opus => PayloadKind::Opus,
    };
    let mut payload_types = [None; 128];
    // A PT switch mid-stream must keep the rates: the stream's file and timeline have one.
    for &(pt, codec) in &media.decodable {
        let rates = |c: Codec| (c.clock_rate(), c.sample_rate());
        if rates(codec) != rates(media.codec) {
            continue;
        }
        if let Some(slot) = payload_types.get_mut(pt as usize) {
            *slot = Some(kind(codec));
        }
    }
    if let Some(slot) = payload_types.get_mut(media.pt as usize) {
        *slot = Some(kind(media.codec));
    }
    if let Some(te) = media.telephone_event_pt {
        if let Some(slot) = payload_types.get_mut(te as usize) {
            *slot = Some(PayloadKind::TelephoneEvent);
        }
    }
    // RFC 3389 comfort noise on its static PT is always understood (as silence).
    if payload_types[13].is_none() {
        payload_types[13] = Some(PayloadKind::ComfortNoise);
    }
    // The SRC's offer names where it sends from (symmetric RTP, RFC 4961): c= and m= port.
    let expected_source = media
        .remote_addr
        .as_deref()
        .and_then(|a| a.parse::<std::net::IpAddr>().ok())
        .filter(|ip| !ip.is_unspecified() && media.remote_port != 0)
        .map(|ip| std::net::SocketAddr::new(ip, media.remote_port));
    StreamParams {
        key,
        payload_types,
        sample_rate: media.codec.sample_rate(),
        clock_rate: media.codec.clock_rate(),
        held,
        paused,
        transcribe,
        expected_source,
        srtp: media.crypto.as_ref().map(|c| c.params.clone()),
    }
}

fn rejected_plan(offer: &sdp::SessionDescription) -> Vec<MediaPlan> {
    offer
        .media
        .iter()
        .enumerate()
        .map(|(index, m)| MediaPlan {
            index,
            media: m.media.clone(),
            accept: None,
            reject_reason: Some("port 0"),
        })
        .collect()
}
