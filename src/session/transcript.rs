//! The transcript of one recording session: live transcript events as STT results arrive, and
//! `transcript.json` + `transcript.vtt` beside the recording once STT has finished the
//! session (which may be after the call has ended and left the session manager).

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::json;

use super::analytics::TextAnalytics;
use crate::events::{Event, EventKind};
use crate::proto::rfc3339_ms;
use crate::sink::stt::Transcript;

/// Finals kept per session (≈ 30 h of speech in 20 s utterances); beyond it they still go
/// out live, and the files say how many were left out.
const FINALS_MAX: usize = 5_000;

/// Who speaks on one stream, from the SIPREC metadata.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Speaker {
    /// The participant's name, else AoR, else the stream's label, else `stream<N>`.
    pub speaker_label: String,
    /// The stream's SDP `a=label`.
    pub label: Option<String>,
    /// AoRs of the participants sending on the stream.
    pub participants: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Utterance {
    pub stream: u32,
    pub utterance: u32,
    pub speaker: String,
    pub label: Option<String>,
    pub participants: Vec<String>,
    pub start_s: f64,
    pub end_s: f64,
    pub text: String,
    pub confidence: f64,
    pub sentiment: super::analytics::Sentiment,
    pub keywords: Vec<String>,
}

pub struct TranscriptLog {
    pub call_id: String,
    pub session_id: String,
    pub dir: PathBuf,
    pub provider: &'static str,
    speakers: HashMap<u32, Speaker>,
    finals: Vec<Utterance>,
    left_out: u64,
    failures: u64,
    pub analytics: TextAnalytics,
}

fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

impl TranscriptLog {
    pub fn new(
        call_id: &str,
        session_id: &str,
        dir: PathBuf,
        provider: &'static str,
        keywords: &[String],
    ) -> Self {
        TranscriptLog {
            call_id: call_id.to_owned(),
            session_id: session_id.to_owned(),
            dir,
            provider,
            speakers: HashMap::new(),
            finals: Vec::new(),
            left_out: 0,
            failures: 0,
            analytics: TextAnalytics::new(keywords),
        }
    }

    /// Refreshes who speaks on `stream` (metadata may change during the call).
    pub fn set_speaker(&mut self, stream: u32, speaker: Speaker) {
        self.speakers.insert(stream, speaker);
    }

    pub fn count_failure(&mut self) {
        self.failures += 1;
    }

    fn speaker(&self, stream: u32) -> Speaker {
        self.speakers
            .get(&stream)
            .cloned()
            .unwrap_or_else(|| Speaker {
                speaker_label: format!("stream{stream}"),
                ..Speaker::default()
            })
    }

    /// The live events for one result: the transcript (finals also kept for the files, with
    /// sentiment and keyword hits), then a `keyword_detected` per keyword and a
    /// `sentiment_alert` when the speaker's run of negative utterances reaches the threshold.
    pub fn events(&mut self, unix_ms: u64, t: Transcript) -> Vec<Event> {
        let speaker = self.speaker(t.key.stream);
        let confidence = (f64::from(t.confidence) * 1000.0).round() / 1000.0;
        let analysis = match t.is_final {
            true => self.analytics.on_final(&speaker.speaker_label, &t.text),
            false => super::analytics::Analysis {
                sentiment: super::analytics::sentiment(&t.text),
                keywords: Vec::new(),
                alert: None,
            },
        };
        let data = json!({
            "text": t.text,
            "is_final": t.is_final,
            "speaker_label": speaker.speaker_label,
            "participants": speaker.participants,
            "stream": t.key.stream,
            "label": speaker.label,
            "utterance": t.utterance,
            "start_s": seconds(t.start_ms),
            "end_s": seconds(t.end_ms),
            "confidence": confidence,
            "latency_ms": t.latency_ms,
            "provider": self.provider,
            "sentiment": analysis.sentiment,
            "keywords": analysis.keywords,
        });
        let kind = match t.is_final {
            true => EventKind::FinalTranscript,
            false => EventKind::PartialTranscript,
        };
        let timestamp = rfc3339_ms(unix_ms);
        let event = |kind, data| {
            Event::new(
                kind,
                &self.call_id,
                &self.session_id,
                timestamp.clone(),
                data,
            )
        };
        let mut out = vec![event(kind, data)];
        for k in &analysis.keywords {
            let data = json!({
                "keyword": k,
                "speaker_label": speaker.speaker_label,
                "stream": t.key.stream,
                "at_s": seconds(t.start_ms),
                "text": t.text,
            });
            out.push(event(EventKind::KeywordDetected, data));
        }
        if let Some(score) = analysis.alert {
            let data = json!({
                "speaker_label": speaker.speaker_label,
                "stream": t.key.stream,
                "at_s": seconds(t.start_ms),
                "score": (score * 1000.0).round() / 1000.0,
                "reason": "consecutive strongly negative utterances",
            });
            out.push(event(EventKind::SentimentAlert, data));
        }
        if t.is_final && !t.text.is_empty() {
            if self.finals.len() < FINALS_MAX {
                self.finals.push(Utterance {
                    stream: t.key.stream,
                    utterance: t.utterance,
                    speaker: speaker.speaker_label,
                    label: speaker.label,
                    participants: speaker.participants,
                    start_s: seconds(t.start_ms),
                    end_s: seconds(t.end_ms),
                    text: t.text,
                    confidence,
                    sentiment: analysis.sentiment,
                    keywords: analysis.keywords,
                });
            } else {
                self.left_out += 1;
            }
        }
        out
    }

    /// `transcript.json`: every final utterance in call-time order.
    pub fn render_json(&self, unix_ms: u64) -> Vec<u8> {
        let doc = json!({
            "call_id": self.call_id,
            "session_id": self.session_id,
            "provider": self.provider,
            "completed_at": rfc3339_ms(unix_ms),
            "utterances": self.sorted(),
            "keywords": self.analytics.keywords_heard(),
            "sentiment_trend": self.analytics.trend(),
            "left_out": self.left_out,
            "failures": self.failures,
        });
        let mut bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// `transcript.vtt`: WebVTT cues with the speaker as a voice span.
    pub fn render_vtt(&self) -> Vec<u8> {
        let mut out = String::from("WEBVTT\n");
        for (i, u) in self.sorted().iter().enumerate() {
            // A cue's text must not contain "-->" or a blank line; voice names no ">".
            let text = u.text.replace("-->", "->").replace('\n', " ");
            let voice = u.speaker.replace(['>', '\n'], " ");
            out.push_str(&format!(
                "\n{}\n{} --> {}\n<v {}>{}\n",
                i + 1,
                vtt_time(u.start_s),
                vtt_time(u.end_s),
                voice,
                text
            ));
        }
        out.into_bytes()
    }

    fn sorted(&self) -> Vec<&Utterance> {
        let mut v: Vec<&Utterance> = self.finals.iter().collect();
        v.sort_by(|a, b| {
            a.start_s
                .total_cmp(&b.start_s)
                .then(a.stream.cmp(&b.stream))
        });
        v
    }
}

/// `hh:mm:ss.mmm`.
fn vtt_time(s: f64) -> String {
    let ms = (s * 1000.0).round().max(0.0) as u64;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::StreamKey;

    fn t(stream: u32, utterance: u32, is_final: bool, start_ms: u64, text: &str) -> Transcript {
        Transcript {
            key: StreamKey { session: 1, stream },
            utterance,
            is_final,
            start_ms,
            end_ms: start_ms + 1500,
            text: text.to_owned(),
            confidence: 0.91234,
            latency_ms: 700,
        }
    }

    fn log() -> TranscriptLog {
        let keywords = ["refund".to_owned()];
        let mut log =
            TranscriptLog::new("c@h", "s1", PathBuf::from("/rec/s1"), "embedded", &keywords);
        log.set_speaker(
            0,
            Speaker {
                speaker_label: "Alice".into(),
                label: Some("1".into()),
                participants: vec!["sip:alice@example.com".into()],
            },
        );
        log
    }

    /// Events carry the speaker from the metadata; partials are not kept, finals are, in
    /// call-time order across streams.
    #[test]
    fn events_and_files() {
        let mut log = log();
        let e = log.events(0, t(0, 0, false, 500, "hello")).remove(0);
        assert_eq!(e.kind, EventKind::PartialTranscript);
        assert_eq!(e.data["speaker_label"], "Alice");
        assert_eq!(e.data["is_final"], false);
        let bob = log.events(0, t(1, 0, true, 2_000, "hi there, I want a refund"));
        let kinds: Vec<EventKind> = bob.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [EventKind::FinalTranscript, EventKind::KeywordDetected]
        );
        assert_eq!(bob[0].data["keywords"][0], "refund");
        assert_eq!(bob[1].data["speaker_label"], "stream1");
        let e = log.events(0, t(0, 0, true, 500, "hello world")).remove(0);
        assert_eq!(e.kind, EventKind::FinalTranscript);
        assert_eq!(e.data["sentiment"]["label"], "neutral");
        assert_eq!(e.data["confidence"], 0.912);
        let doc: serde_json::Value = serde_json::from_slice(&log.render_json(0)).unwrap();
        let u = doc["utterances"].as_array().unwrap();
        assert_eq!(u.len(), 2);
        assert_eq!(u[0]["text"], "hello world");
        assert_eq!(u[1]["speaker"], "stream1");
        assert_eq!(doc["keywords"][0], "refund");
        let vtt = String::from_utf8(log.render_vtt()).unwrap();
        assert_eq!(
            vtt,
            "WEBVTT\n\n1\n00:00:00.500 --> 00:00:02.000\n<v Alice>hello world\n\n\
             2\n00:00:02.000 --> 00:00:03.500\n<v stream1>hi there, I want a refund\n"
        );
    }

    #[test]
    fn vtt_times() {
        assert_eq!(vtt_time(3723.0456), "01:02:03.046");
        assert_eq!(vtt_time(0.0), "00:00:00.000");
    }
}
