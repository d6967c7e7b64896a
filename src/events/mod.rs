//! The call events every live consumer sees (AMQP and the `/ws/*` WebSockets): one typed,
//! versioned JSON shape, produced by the sans-IO session core as actions and fanned out by the
//! control plane. Schema and examples: `docs/events.md`.

pub mod amqp;
pub mod spool;

use serde::Serialize;

/// Bumped when a field changes meaning or disappears (adding fields keeps the version).
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    CallStarted,
    CallEnded,
    StreamAdded,
    Hold,
    Resume,
    MetadataUpdated,
    RecordingPaused,
    RecordingResumed,
    /// A DTMF digit (RFC 4733 telephone-event) on a stream.
    Dtmf,
    /// One talker took the floor alone (or it went quiet), from the recorded audio.
    SpeakerChange,
    /// Talk time, dead air, overtalk so far (every 5 s of call time, and a final one).
    Snapshot,
    /// A consumer fell behind and lost events; `data.lost` says how many.
    Gap,
    /// Live transcription of an utterance still being spoken (superseded by later ones).
    PartialTranscript,
    /// The transcription of a whole utterance.
    FinalTranscript,
    /// A configured keyword was said (`ANALYTICS_KEYWORDS`).
    KeywordDetected,
    /// A speaker's utterances turned strongly negative.
    SentimentAlert,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::CallStarted => "call_started",
            EventKind::CallEnded => "call_ended",
            EventKind::StreamAdded => "stream_added",
            EventKind::Hold => "hold",
            EventKind::Resume => "resume",
            EventKind::MetadataUpdated => "metadata_updated",
            EventKind::RecordingPaused => "recording_paused",
            EventKind::RecordingResumed => "recording_resumed",
            EventKind::Dtmf => "dtmf",
            EventKind::SpeakerChange => "speaker_change",
            EventKind::Snapshot => "snapshot",
            EventKind::Gap => "gap",
            EventKind::PartialTranscript => "partial_transcript",
            EventKind::FinalTranscript => "final_transcript",
            EventKind::KeywordDetected => "keyword_detected",
            EventKind::SentimentAlert => "sentiment_alert",
        }
    }

    /// Call lifecycle events: published by default (`PUBLISH_CALL_EVENTS`).
    pub fn is_lifecycle(self) -> bool {
        !matches!(
            self,
            EventKind::Gap
                | EventKind::SpeakerChange
                | EventKind::Snapshot
                | EventKind::PartialTranscript
                | EventKind::FinalTranscript
                | EventKind::KeywordDetected
                | EventKind::SentimentAlert
        )
    }
}

/// One event. `id` is unique per server instance and increases with every event, so a
/// consumer of an at-least-once channel (AMQP after a reconnect) can drop duplicates.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub v: u32,
    pub id: String,
    /// Position in this instance's stream of events (the number inside `id`).
    pub seq: u64,
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub call_id: String,
    pub session_id: String,
    pub timestamp: String,
    pub data: serde_json::Value,
}

impl Event {
    /// An event not yet numbered (the session manager numbers events as it hands them out).
    pub fn new(
        kind: EventKind,
        call_id: &str,
        session_id: &str,
        timestamp: String,
        data: serde_json::Value,
    ) -> Event {
        Event {
            v: SCHEMA_VERSION,
            id: String::new(),
            seq: 0,
            kind,
            call_id: call_id.to_owned(),
            session_id: session_id.to_owned(),
            timestamp,
            data,
        }
    }

    /// `siprec.<event>.<call-id>` (AMQP topic routing key).
    pub fn routing_key(&self) -> String {
        format!("siprec.{}.{}", self.kind.name(), self.call_id)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}
