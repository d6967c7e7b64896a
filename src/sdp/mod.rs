//! SDP (RFC 4566/8866): a tolerant parser and printer, and the SRS offer/answer of RFC 7866 §8
//! (`answer`). No I/O.
//!
//! Refuses: bodies over 64 KiB, more than 32 m-lines or 1024 lines, a missing `v=` line.
//! Unknown line types are skipped; attributes are kept as text.

mod answer;

pub use answer::{
    plan_answer, render_answer, AcceptedMedia, AnswerError, AnswerParams, AnswerPolicy, Codec,
    MediaPlan,
};

const MAX_BYTES: usize = 65536;
const MAX_MEDIA: usize = 32;
const MAX_LINES: usize = 1024;

#[derive(Debug, Clone, Default)]
pub struct SessionDescription {
    pub version: u32,
    pub origin: Origin,
    pub session_name: String,
    pub connection: Option<Connection>,
    pub attributes: Vec<Attribute>,
    pub media: Vec<MediaDescription>,
}

#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub username: String,
    pub session_id: String,
    pub session_version: String,
    pub net_type: String,
    pub addr_type: String,
    pub address: String,
}

#[derive(Debug, Clone)]
pub struct Connection {
    pub net_type: String,
    pub addr_type: String,
    /// Without any `/ttl` or `/count` suffix.
    pub address: String,
}

#[derive(Debug, Clone)]
pub struct Attribute {
    pub name: String,
    pub value: Option<String>,
}

#[derive(Debug, Clone)]
pub struct MediaDescription {
    pub media: String,
    pub port: u16,
    pub port_count: Option<u16>,
    pub proto: String,
    pub formats: Vec<String>,
    pub connection: Option<Connection>,
    pub attributes: Vec<Attribute>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, serde::Serialize)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    pub pt: u8,
    pub encoding: String,
    pub clock_rate: u32,
    pub channels: Option<u16>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    #[error("SDP larger than {MAX_BYTES} bytes or with too many lines or m-lines")]
    TooLarge,
    #[error("SDP has no v= line")]
    NoVersion,
    #[error("bad SDP line {0:?}")]
    BadLine(String),
}

fn direction_of(attrs: &[Attribute]) -> Option<Direction> {
    attrs.iter().rev().find_map(|a| match a.name.as_str() {
        "sendrecv" => Some(Direction::SendRecv),
        "sendonly" => Some(Direction::SendOnly),
        "recvonly" => Some(Direction::RecvOnly),
        "inactive" => Some(Direction::Inactive),
        _ => None,
    })
}

impl MediaDescription {
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(name))
            .map(|a| a.value.as_deref().unwrap_or(""))
    }

    pub fn label(&self) -> Option<&str> {
        self.attribute("label")
            .map(str::trim)
            .filter(|l| !l.is_empty())
    }

    /// The rtpmap of `pt`: from `a=rtpmap`, else RFC 3551's static table.
    pub fn rtpmap(&self, pt: u8) -> Option<RtpMap> {
        for a in self
            .attributes
            .iter()
            .filter(|a| a.name.eq_ignore_ascii_case("rtpmap"))
        {
            let Some(v) = a.value.as_deref() else {
                continue;
            };
            let Some((p, rest)) = v.trim().split_once(char::is_whitespace) else {
                continue;
            };
            if p.trim().parse::<u8>().ok() != Some(pt) {
                continue;
            }
            let mut parts = rest.trim().split('/');
            let encoding = parts.next().unwrap_or("").trim().to_owned();
            let clock_rate = parts.next().and_then(|r| r.trim().parse().ok())?;
            let channels = parts.next().and_then(|c| c.trim().parse().ok());
            return Some(RtpMap {
                pt,
                encoding,
                clock_rate,
                channels,
            });
        }
        let (encoding, clock_rate) = match pt {
            0 => ("PCMU", 8000),
            3 => ("GSM", 8000),
            4 => ("G723", 8000),
            8 => ("PCMA", 8000),
            9 => ("G722", 8000),
            11 => ("L16", 44100),
            13 => ("CN", 8000),
            18 => ("G729", 8000),
            _ => return None,
        };
        Some(RtpMap {
            pt,
            encoding: encoding.to_owned(),
            clock_rate,
            channels: None,
        })
    }

    pub fn direction(&self) -> Option<Direction> {
        direction_of(&self.attributes)
    }

    pub fn rtcp_mux(&self) -> bool {
        self.attribute("rtcp-mux").is_some()
    }

    pub fn ptime(&self) -> Option<u32> {
        self.attribute("ptime").and_then(|p| p.trim().parse().ok())
    }
}

impl SessionDescription {
    pub fn direction(&self) -> Option<Direction> {
        direction_of(&self.attributes)
    }

    /// Media-level direction, else session-level, else sendrecv. A connection address of
    /// 0.0.0.0 (RFC 2543 hold) counts as inactive.
    pub fn media_direction(&self, index: usize) -> Direction {
        if self
            .media_connection(index)
            .is_some_and(|c| c.address == "0.0.0.0")
        {
            return Direction::Inactive;
        }
        self.media
            .get(index)
            .and_then(|m| m.direction())
            .or_else(|| self.direction())
            .unwrap_or(Direction::SendRecv)
    }

    pub fn media_connection(&self, index: usize) -> Option<&Connection> {
        self.media
            .get(index)?
            .connection
            .as_ref()
            .or(self.connection.as_ref())
    }
}

fn parse_connection(v: &str) -> Result<Connection, SdpError> {
    let mut p = v.split_whitespace();
    let (Some(net_type), Some(addr_type), Some(address)) = (p.next(), p.next(), p.next()) else {
        return Err(SdpError::BadLine(format!("c={v}")));
    };
    Ok(Connection {
        net_type: net_type.to_owned(),
        addr_type: addr_type.to_owned(),
        address: address.split('/').next().unwrap_or(address).to_owned(),
    })
}

fn parse_attribute(v: &str) -> Attribute {
    match v.split_once(':') {
        Some((n, val)) => Attribute {
            name: n.trim().to_owned(),
            value: Some(val.trim().to_owned()),
        },
        None => Attribute {
            name: v.trim().to_owned(),
            value: None,
        },
    }
}

/// Parses an SDP body, CRLF or LF line ends. Never panics.
pub fn parse(text: &str) -> Result<SessionDescription, SdpError> {
    if text.len() > MAX_BYTES {
        return Err(SdpError::TooLarge);
    }
    let mut sd = SessionDescription::default();
    let mut seen_version = false;
    for (n, raw) in text.lines().enumerate() {
        if n >= MAX_LINES {
            return Err(SdpError::TooLarge);
        }
        let line = raw.trim_end();
        if line.is_empty() {
            continue;
        }
        let Some((kind, value)) = line.split_once('=') else {
            return Err(SdpError::BadLine(line.chars().take(40).collect()));
        };
        let kind = kind.trim();
        match kind {
            "v" => {
                sd.version = value
                    .trim()
                    .parse()
                    .map_err(|_| SdpError::BadLine(line.into()))?;
                seen_version = true;
            }
            "o" => {
                let p: Vec<&str> = value.split_whitespace().collect();
                if p.len() >= 6 {
                    sd.origin = Origin {
                        username: p[0].into(),
                        session_id: p[1].into(),
                        session_version: p[2].into(),
                        net_type: p[3].into(),
                        addr_type: p[4].into(),
                        address: p[5].into(),
                    };
                }
            }
            "s" => sd.session_name = value.to_owned(),
            "c" => {
                let c = parse_connection(value)?;
                match sd.media.last_mut() {
                    Some(m) => m.connection = Some(c),
                    None => sd.connection = Some(c),
                }
            }
            "a" => {
                let a = parse_attribute(value);
                match sd.media.last_mut() {
                    Some(m) => m.attributes.push(a),
                    None => sd.attributes.push(a),
                }
            }
            "m" => {
                if sd.media.len() >= MAX_MEDIA {
                    return Err(SdpError::TooLarge);
                }
                let mut p = value.split_whitespace();
                let media = p.next().ok_or_else(|| SdpError::BadLine(line.into()))?;
                let port_spec = p.next().ok_or_else(|| SdpError::BadLine(line.into()))?;
                let proto = p.next().ok_or_else(|| SdpError::BadLine(line.into()))?;
                let (port, count) = match port_spec.split_once('/') {
                    Some((a, b)) => (a, b.parse().ok()),
                    None => (port_spec, None),
                };
                let port = port.parse().map_err(|_| SdpError::BadLine(line.into()))?;
                sd.media.push(MediaDescription {
                    media: media.to_owned(),
                    port,
                    port_count: count,
                    proto: proto.to_owned(),
                    formats: p.map(str::to_owned).collect(),
                    connection: None,
                    attributes: Vec::new(),
                });
            }
            _ => {} // t=, b=, k=, i=, u=, e=, p=, z=, r=: not needed by an SRS.
        }
    }
    if !seen_version {
        return Err(SdpError::NoVersion);
    }
    Ok(sd)
}

impl std::fmt::Display for SessionDescription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = &self.origin;
        write!(f, "v={}\r\n", self.version)?;
        write!(
            f,
            "o={} {} {} {} {} {}\r\n",
            o.username, o.session_id, o.session_version, o.net_type, o.addr_type, o.address
        )?;
        write!(
            f,
            "s={}\r\n",
            if self.session_name.is_empty() {
                "-"
            } else {
                &self.session_name
            }
        )?;
        if let Some(c) = &self.connection {
            write!(f, "c={} {} {}\r\n", c.net_type, c.addr_type, c.address)?;
        }
        write!(f, "t=0 0\r\n")?;
        for a in &self.attributes {
            write_attribute(f, a)?;
        }
        for m in &self.media {
            write!(
                f,
                "m={} {} {} {}\r\n",
                m.media,
                m.port,
                m.proto,
                m.formats.join(" ")
            )?;
            if let Some(c) = &m.connection {
                write!(f, "c={} {} {}\r\n", c.net_type, c.addr_type, c.address)?;
            }
            for a in &m.attributes {
                write_attribute(f, a)?;
            }
        }
        Ok(())
    }
}

fn write_attribute(f: &mut std::fmt::Formatter<'_>, a: &Attribute) -> std::fmt::Result {
    match &a.value {
        Some(v) => write!(f, "a={}:{}\r\n", a.name, v),
        None => write!(f, "a={}\r\n", a.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\no=- 1 2 IN IP4 198.51.100.1\ns=-\nc=IN IP4 198.51.100.1\nt=0 0\n\
a=sendonly\nm=audio 4000 RTP/AVP 8 0 101\na=rtpmap:101 telephone-event/8000\na=label:caller\n\
m=audio 4002 RTP/AVP 0\nc=IN IP4 0.0.0.0\na=label:callee\nm=video 0 RTP/AVP 96\n";

    /// LF-only SDP parses; rtpmap falls back to the static table; directions and hold.
    #[test]
    fn parse_tolerant() {
        let sd = parse(OFFER).unwrap();
        assert_eq!(sd.media.len(), 3);
        assert_eq!(sd.media[0].formats, ["8", "0", "101"]);
        assert_eq!(sd.media[0].rtpmap(8).unwrap().encoding, "PCMA");
        assert_eq!(sd.media[0].rtpmap(101).unwrap().encoding, "telephone-event");
        assert_eq!(sd.media[0].label(), Some("caller"));
        assert_eq!(sd.media_direction(0), Direction::SendOnly);
        assert_eq!(sd.media_direction(1), Direction::Inactive);
        assert!(sd.to_string().contains("m=audio 4002 RTP/AVP 0\r\n"));
    }

    /// Garbage and limits give errors, never panics.
    #[test]
    fn errors() {
        assert!(parse("").is_err());
        assert!(parse("v=0\nm=audio x RTP/AVP 0\n").is_err());
        assert!(parse("v=0\nm=audio\n").is_err());
        assert!(parse("garbage").is_err());
        let many = format!("v=0\n{}", "m=audio 1 RTP/AVP 0\n".repeat(40));
        assert!(matches!(parse(&many), Err(SdpError::TooLarge)));
        for n in 0..OFFER.len() {
            let _ = parse(&OFFER[..n]);
        }
    }
}
