//! RFC 7865 recording metadata: parse `application/rs-metadata(+xml)` into a model, and merge
//! partial updates (re-INVITE/UPDATE) into it, reporting what changed.
//!
//! Accepts the namespace `urn:ietf:params:xml:ns:recording:1` and the pre-RFC
//! `urn:ietf:params:xml:ns:recording` under any prefix, RFC attribute names (`participant_id`)
//! and the older drafts' (`id`, `session`, send/recv inside `<participant>`).
//!
//! Refuses: DTDs (no entity expansion, so no billion-laughs), documents over 256 KiB, nesting
//! deeper than 32 or more than 10,000 elements, a root other than `<recording>`. Unknown
//! elements are ignored.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;
use serde::Serialize;

const MAX_BYTES: usize = 256 * 1024;
const MAX_DEPTH: usize = 32;
const MAX_ELEMENTS: usize = 10_000;
/// Participants (and streams) a merged model keeps across partial updates of one call.
const PARTICIPANTS_MAX: usize = 1000;

#[derive(Debug, Clone, Default, Serialize)]
pub struct RecordingMetadata {
    pub data_mode: Option<String>,
    pub groups: Vec<Group>,
    pub sessions: Vec<CommunicationSession>,
    pub participants: Vec<Participant>,
    pub streams: Vec<MetaStream>,
    pub session_recording_assoc: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Group {
    pub id: String,
    pub associate_time: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CommunicationSession {
    pub id: String,
    pub group_ref: Option<String>,
    pub sip_session_ids: Vec<String>,
    pub start_time: Option<String>,
    pub stop_time: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Participant {
    pub id: String,
    pub aor: Option<String>,
    pub name: Option<String>,
    pub send: Vec<String>,
    pub recv: Vec<String>,
    pub associate_time: Option<String>,
    pub disassociate_time: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct MetaStream {
    pub id: String,
    pub session_id: Option<String>,
    pub label: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    #[error("metadata XML: {0}")]
    Xml(String),
    #[error("metadata must not contain a DTD")]
    DtdForbidden,
    #[error("metadata larger than 256 KiB or with too many elements")]
    TooLarge,
    #[error("metadata nested too deeply")]
    TooDeep,
    #[error("root element is not <recording>")]
    NotRecording,
}

#[derive(Debug, Clone, Serialize)]
pub enum MetadataChange {
    ParticipantJoined { id: String, aor: Option<String> },
    ParticipantLeft { id: String, aor: Option<String> },
    StreamAdded { id: String, label: Option<String> },
    StreamAssociationChanged { participant: String },
    SessionStopped { id: String },
}

/// What the element currently open expects its text to become.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Slot {
    None,
    DataMode,
    GroupAssociateTime,
    SessionGroupRef,
    SipSessionId,
    SessionStart,
    SessionStop,
    Name,
    Send,
    Recv,
    AssociateTime,
    DisassociateTime,
    Label,
}

/// The record the next text or child belongs to.
#[derive(Clone, Copy)]
enum Owner {
    None,
    Group(usize),
    Session(usize),
    Participant(usize),
    Stream(usize),
    /// participantstreamassoc / participantsessionassoc: the participant's index.
    Assoc(usize),
}

pub fn parse(xml: &str) -> Result<RecordingMetadata, MetadataError> {
    if xml.len() > MAX_BYTES {
        return Err(MetadataError::TooLarge);
    }
    let mut reader = Reader::from_str(xml);
    reader.config_mut().trim_text(true);
    let mut md = RecordingMetadata::default();
    let mut depth = 0usize;
    let mut elements = 0usize;
    let mut saw_root = false;
    let mut owners: Vec<Owner> = Vec::new();
    let mut slot = Slot::None;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| MetadataError::Xml(e.to_string()))?;
        match event {
            Event::DocType(_) => return Err(MetadataError::DtdForbidden),
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(event, Event::Empty(_));
                elements += 1;
                if elements > MAX_ELEMENTS {
                    return Err(MetadataError::TooLarge);
                }
                let name = local(e);
                if !saw_root {
                    if name != "recording" {
                        return Err(MetadataError::NotRecording);
                    }
                    saw_root = true;
                    if !empty {
                        depth += 1;
                        owners.push(Owner::None);
                    }
                    continue;
                }
                if depth >= MAX_DEPTH {
                    return Err(MetadataError::TooDeep);
                }
                let parent = owners.last().copied().unwrap_or(Owner::None);
                let (owner, new_slot) = open_element(&mut md, &name, e, parent);
                if !empty {
                    depth += 1;
                    owners.push(owner);
                    slot = new_slot;
                }
            }
            Event::Text(t) => {
                let text = t
                    .unescape()
                    .map_err(|e| MetadataError::Xml(e.to_string()))?;
                let owner = owners.last().copied().unwrap_or(Owner::None);
                assign_text(&mut md, owner, slot, text.trim());
            }
            Event::CData(t) => {
                let text = String::from_utf8_lossy(&t).into_owned();
                let owner = owners.last().copied().unwrap_or(Owner::None);
                assign_text(&mut md, owner, slot, text.trim());
            }
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                owners.pop();
                slot = Slot::None;
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !saw_root {
        return Err(MetadataError::NotRecording);
    }
    Ok(md)
}

fn local(e: &BytesStart) -> String {
    String::from_utf8_lossy(e.local_name().as_ref()).to_ascii_lowercase()
}

/// The value of the first attribute (local name, any case) among `names`.
fn attr(e: &BytesStart, names: &[&str]) -> Option<String> {
    e.attributes().flatten().find_map(|a| {
        let key = String::from_utf8_lossy(a.key.local_name().as_ref()).to_ascii_lowercase();
        if names.contains(&key.as_str()) {
            a.unescape_value().ok().map(|v| v.trim().to_owned())
        } else {
            None
        }
    })
}

fn participant_index(md: &mut RecordingMetadata, id: String) -> usize {
    match md.participants.iter().position(|p| p.id == id) {
        Some(i) => i,
        None => {
            md.participants.push(Participant {
                id,
                ..Default::default()
            });
            md.participants.len() - 1
        }
    }
}

fn open_element(
    md: &mut RecordingMetadata,
    name: &str,
    e: &BytesStart,
    parent: Owner,
) -> (Owner, Slot) {
    match (name, parent) {
        ("datamode", _) | ("dataMode", _) => (parent, Slot::DataMode),
        ("group", Owner::None) => {
            let id = attr(e, &["group_id", "id"]).unwrap_or_default();
            md.groups.push(Group {
                id,
                associate_time: None,
            });
            (Owner::Group(md.groups.len() - 1), Slot::None)
        }
        ("session", Owner::None) => {
            let id = attr(e, &["session_id", "id"]).unwrap_or_default();
            md.sessions.push(CommunicationSession {
                id,
                ..Default::default()
            });
            (Owner::Session(md.sessions.len() - 1), Slot::None)
        }
        ("participant", Owner::None) => {
            let id = attr(e, &["participant_id", "id"]).unwrap_or_default();
            (Owner::Participant(participant_index(md, id)), Slot::None)
        }
        ("stream", Owner::None) => {
            let id = attr(e, &["stream_id", "id"]).unwrap_or_default();
            let session_id = attr(e, &["session_id", "session"]);
            md.streams.push(MetaStream {
                id,
                session_id,
                label: None,
            });
            (Owner::Stream(md.streams.len() - 1), Slot::None)
        }
        ("participantstreamassoc", Owner::None) | ("participantsessionassoc", Owner::None) => {
            let id = attr(e, &["participant_id", "participant"]).unwrap_or_default();
            (Owner::Assoc(participant_index(md, id)), Slot::None)
        }
        ("sessionrecordingassoc", Owner::None) => {
            if let Some(id) = attr(e, &["session_id", "session"]) {
                md.session_recording_assoc.push(id);
            }
            (Owner::None, Slot::None)
        }
        ("nameid", Owner::Participant(i)) => {
            if let Some(aor) = attr(e, &["aor"]) {
                md.participants[i].aor.get_or_insert(aor);
            }
            (parent, Slot::None)
        }
        ("aor", Owner::Participant(_)) => (parent, Slot::None),
        ("name", Owner::Participant(_)) => (parent, Slot::Name),
        ("send", Owner::Participant(_) | Owner::Assoc(_)) => (parent, Slot::Send),
        ("recv", Owner::Participant(_) | Owner::Assoc(_)) => (parent, Slot::Recv),
        ("associate-time", Owner::Group(_)) => (parent, Slot::GroupAssociateTime),
        ("associate-time", _) => (parent, Slot::AssociateTime),
        ("disassociate-time", _) => (parent, Slot::DisassociateTime),
        ("group-ref", Owner::Session(_)) => (parent, Slot::SessionGroupRef),
        ("sipsessionid", Owner::Session(_)) => (parent, Slot::SipSessionId),
        ("start-time", Owner::Session(_)) => (parent, Slot::SessionStart),
        ("stop-time", Owner::Session(_)) => (parent, Slot::SessionStop),
        ("label", Owner::Stream(_)) => (parent, Slot::Label),
        // Unknown or misplaced elements: their content is ignored.
        _ => (Owner::None, Slot::None),
    }
}

fn assign_text(md: &mut RecordingMetadata, owner: Owner, slot: Slot, text: &str) {
    if text.is_empty() {
        return;
    }
    let t = || Some(text.to_owned());
    match (slot, owner) {
        (Slot::DataMode, _) => md.data_mode = t(),
        (Slot::GroupAssociateTime, Owner::Group(i)) => md.groups[i].associate_time = t(),
        (Slot::SessionGroupRef, Owner::Session(i)) => md.sessions[i].group_ref = t(),
        (Slot::SipSessionId, Owner::Session(i)) => {
            md.sessions[i].sip_session_ids.push(text.to_owned())
        }
        (Slot::SessionStart, Owner::Session(i)) => md.sessions[i].start_time = t(),
        (Slot::SessionStop, Owner::Session(i)) => md.sessions[i].stop_time = t(),
        (Slot::Name, Owner::Participant(i)) => md.participants[i].name = t(),
        (Slot::Send, Owner::Participant(i) | Owner::Assoc(i))
            if !md.participants[i].send.iter().any(|s| s == text) =>
        {
            md.participants[i].send.push(text.to_owned());
        }
        (Slot::Recv, Owner::Participant(i) | Owner::Assoc(i))
            if !md.participants[i].recv.iter().any(|s| s == text) =>
        {
            md.participants[i].recv.push(text.to_owned());
        }
        (Slot::AssociateTime, Owner::Participant(i) | Owner::Assoc(i)) => {
            md.participants[i].associate_time = t()
        }
        (Slot::DisassociateTime, Owner::Participant(i) | Owner::Assoc(i)) => {
            md.participants[i].disassociate_time = t()
        }
        (Slot::Label, Owner::Stream(i)) => md.streams[i].label = t(),
        _ => {}
    }
}

impl RecordingMetadata {
    /// Merges an update. `complete` replaces the model (reporting differences); `partial`
    /// (or absent, as some SRCs send) merges by id.
    pub fn merge(&mut self, update: RecordingMetadata) -> Vec<MetadataChange> {
        let mut changes = Vec::new();
        let complete = update
            .data_mode
            .as_deref()
            .is_some_and(|m| m.eq_ignore_ascii_case("complete"));
        if complete {
            for p in &self.participants {
                if !update.participants.iter().any(|u| u.id == p.id) {
                    changes.push(MetadataChange::ParticipantLeft {
                        id: p.id.clone(),
                        aor: p.aor.clone(),
                    });
                }
            }
        }
        for u in &update.participants {
            match self.participants.iter_mut().find(|p| p.id == u.id) {
                Some(p) => {
                    if u.aor.is_some() {
                        p.aor = u.aor.clone();
                    }
                    if u.name.is_some() {
                        p.name = u.name.clone();
                    }
                    if (!u.send.is_empty() && u.send != p.send)
                        || (!u.recv.is_empty() && u.recv != p.recv)
                    {
                        if !u.send.is_empty() {
                            p.send = u.send.clone();
                        }
                        if !u.recv.is_empty() {
                            p.recv = u.recv.clone();
                        }
                        changes.push(MetadataChange::StreamAssociationChanged {
                            participant: p.id.clone(),
                        });
                    }
                    if u.disassociate_time.is_some() && p.disassociate_time.is_none() {
                        p.disassociate_time = u.disassociate_time.clone();
                        changes.push(MetadataChange::ParticipantLeft {
                            id: p.id.clone(),
                            aor: p.aor.clone(),
                        });
                    }
                }
                None => {
                    if u.disassociate_time.is_some() {
                        changes.push(MetadataChange::ParticipantLeft {
                            id: u.id.clone(),
                            aor: u.aor.clone(),
                        });
                    } else {
                        changes.push(MetadataChange::ParticipantJoined {
                            id: u.id.clone(),
                            aor: u.aor.clone(),
                        });
                    }
                    if !complete && self.participants.len() < PARTICIPANTS_MAX {
                        self.participants.push(u.clone());
                    }
                }
            }
        }
        for s in &update.streams {
            match self.streams.iter_mut().find(|x| x.id == s.id) {
                Some(x) => {
                    if s.label.is_some() {
                        x.label = s.label.clone();
                    }
                }
                None => {
                    changes.push(MetadataChange::StreamAdded {
                        id: s.id.clone(),
                        label: s.label.clone(),
                    });
                    if !complete && self.streams.len() < PARTICIPANTS_MAX {
                        self.streams.push(s.clone());
                    }
                }
            }
        }
        for s in &update.sessions {
            match self.sessions.iter_mut().find(|x| x.id == s.id) {
                Some(x) if s.stop_time.is_some() && x.stop_time.is_none() => {
                    x.stop_time = s.stop_time.clone();
                    changes.push(MetadataChange::SessionStopped { id: s.id.clone() });
                }
                Some(_) => {}
                None if !complete => self.sessions.push(s.clone()),
                None => {}
            }
        }
        if complete {
            *self = update;
        } else {
            for g in update.groups {
                if !self.groups.iter().any(|x| x.id == g.id) {
                    self.groups.push(g);
                }
            }
        }
        changes
    }

    /// Participants that send on the stream labelled `label`.
    pub fn participants_sending(&self, label: &str) -> Vec<&Participant> {
        let ids: Vec<&str> = self
            .streams
            .iter()
            .filter(|s| s.label.as_deref() == Some(label))
            .map(|s| s.id.as_str())
            .collect();
        self.participants
            .iter()
            .filter(|p| p.send.iter().any(|s| ids.contains(&s.as_str())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7865 §8.1-style complete metadata with a prefix, participantstreamassoc.
    #[test]
    fn rfc7865_complete() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<rs:recording xmlns:rs='urn:ietf:params:xml:ns:recording:1'>
  <rs:datamode>complete</rs:datamode>
  <rs:group group_id="7+OTCyoxTmqmqyA/1weDAg==">
    <rs:associate-time>2010-12-16T23:41:07Z</rs:associate-time>
  </rs:group>
  <rs:session session_id="hVpd7YQgRW2nD22h7q60JQ==">
    <rs:sipSessionID>ab30317f1a784dc48ff824d0d3715d86;remote=47755a9de7794ba387653f2099600ef2</rs:sipSessionID>
    <rs:group-ref>7+OTCyoxTmqmqyA/1weDAg==</rs:group-ref>
  </rs:session>
  <rs:participant participant_id="srfBElmCRp2QB23b7Mpk0w==">
    <rs:nameID aor="sip:bob@biloxi.com"><rs:name xml:lang="it">Bob</rs:name></rs:nameID>
  </rs:participant>
  <rs:participant participant_id="zSfPoSvdSDCmU3A3TRDxAw==">
    <rs:nameID aor="sip:alice@atlanta.com"><rs:name>Alice &amp; Co</rs:name></rs:nameID>
  </rs:participant>
  <rs:stream stream_id="UAAMm5GRQKSCMVvLyl4rFw==" session_id="hVpd7YQgRW2nD22h7q60JQ=="><rs:label>96</rs:label></rs:stream>
  <rs:stream stream_id="i1Pz3to5hGk8fuXl+PbwCw==" session_id="hVpd7YQgRW2nD22h7q60JQ=="><rs:label>97</rs:label></rs:stream>
  <rs:participantstreamassoc participant_id="srfBElmCRp2QB23b7Mpk0w==">
    <rs:send>i1Pz3to5hGk8fuXl+PbwCw==</rs:send><rs:recv>UAAMm5GRQKSCMVvLyl4rFw==</rs:recv>
  </rs:participantstreamassoc>
  <rs:unknownThing><rs:label>ignored</rs:label></rs:unknownThing>
</rs:recording>"#;
        let md = parse(xml).unwrap();
        assert_eq!(md.data_mode.as_deref(), Some("complete"));
        assert_eq!(md.participants.len(), 2);
        assert_eq!(
            md.participants[0].aor.as_deref(),
            Some("sip:bob@biloxi.com")
        );
        assert_eq!(md.participants[1].name.as_deref(), Some("Alice & Co"));
        assert_eq!(
            md.streams
                .iter()
                .map(|s| s.label.as_deref())
                .collect::<Vec<_>>(),
            [Some("96"), Some("97")]
        );
        assert_eq!(
            md.participants_sending("97")[0].id,
            "srfBElmCRp2QB23b7Mpk0w=="
        );
        assert_eq!(
            md.sessions[0].group_ref.as_deref(),
            Some("7+OTCyoxTmqmqyA/1weDAg==")
        );
    }

    /// Older namespace and draft shape: `id` attributes, send/recv inside participant.
    #[test]
    fn older_draft_shape() {
        let xml = r#"<recording xmlns="urn:ietf:params:xml:ns:recording">
<dataMode>complete</dataMode>
<session id="s1"/>
<participant id="p1" session="s1"><nameID aor="sip:caller@example.com"/><send>st1</send><recv>st2</recv></participant>
<stream id="st1" session="s1"><label>caller</label></stream>
<stream id="st2" session="s1"><label>callee</label></stream>
</recording>"#;
        let md = parse(xml).unwrap();
        assert_eq!(md.participants[0].send, ["st1"]);
        assert_eq!(
            md.participants_sending("caller")[0].aor.as_deref(),
            Some("sip:caller@example.com")
        );
        assert_eq!(md.data_mode.as_deref(), Some("complete"));
    }

    /// DTDs (entity bombs) are refused; wrong roots, garbage and truncations are errors.
    #[test]
    fn hostile_input() {
        let bomb = r#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]><recording>&lol2;</recording>"#;
        assert!(matches!(parse(bomb), Err(MetadataError::DtdForbidden)));
        assert!(matches!(parse("<html/>"), Err(MetadataError::NotRecording)));
        assert!(parse("").is_err());
        let deep = format!(
            "<recording>{}{}</recording>",
            "<a>".repeat(40),
            "</a>".repeat(40)
        );
        assert!(matches!(parse(&deep), Err(MetadataError::TooDeep)));
        let xml = "<recording><participant participant_id='a'><nameID aor='sip:a@b'/></participant></recording>";
        for n in 0..xml.len() {
            let _ = parse(&xml[..n]);
        }
    }

    /// A partial update: one participant joins, another leaves (transfer), a stream appears.
    #[test]
    fn partial_merge() {
        let mut md = parse(
            "<recording xmlns='urn:ietf:params:xml:ns:recording:1'><datamode>complete</datamode>\
<participant participant_id='a'><nameID aor='sip:a@x'/></participant>\
<participant participant_id='b'><nameID aor='sip:b@x'/></participant></recording>",
        )
        .unwrap();
        let update = parse("<recording xmlns='urn:ietf:params:xml:ns:recording:1'><datamode>partial</datamode>\
<participant participant_id='c'><nameID aor='sip:c@x'/></participant>\
<participantsessionassoc participant_id='b' session_id='s'><disassociate-time>2025-01-01T00:00:00Z</disassociate-time></participantsessionassoc>\
<stream stream_id='s3'><label>3</label></stream></recording>").unwrap();
        let changes = md.merge(update);
        let kinds: Vec<String> = changes.iter().map(|c| format!("{c:?}")).collect();
        assert!(
            kinds
                .iter()
                .any(|k| k.contains("ParticipantJoined") && k.contains("sip:c@x")),
            "{kinds:?}"
        );
        assert!(
            kinds
                .iter()
                .any(|k| k.contains("ParticipantLeft") && k.contains("\"b\"")),
            "{kinds:?}"
        );
        assert!(kinds.iter().any(|k| k.contains("StreamAdded")), "{kinds:?}");
        assert_eq!(md.participants.len(), 3);
    }
}
