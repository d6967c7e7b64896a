//! The SRS side of offer/answer (RFC 7866 §8, RFC 3264 §6): one m-line per offered m-line in
//! the same order, receive-only, each `a=label` echoed, the first codec we decode, and
//! telephone-event kept when offered. Nothing else is copied from the offer.

use std::fmt::Write as _;
use std::net::IpAddr;

use super::{Direction, SessionDescription};
use crate::srtp::sdes::{self, Crypto};

/// Codecs the recorder decodes today.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Codec {
    Pcmu,
    Pcma,
    /// Linear 16-bit PCM, mono, big-endian (RFC 3551 §4.5.11), at its clock rate.
    L16(u32),
    /// ITU-T G.722 at 64 kbit/s: 16 kHz audio under an 8000 Hz RTP clock (RFC 3551 §4.5.2).
    G722,
    /// ITU-T G.729 / G.729A, with Annex B comfort noise (RFC 3551 §4.5.6), through bcg729.
    G729,
    /// Opus (RFC 7587): `opus/48000/2` whatever the channels sent; recorded mono at 48 kHz.
    Opus,
}

impl Codec {
    pub fn name(&self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::L16(_) => "L16",
            Codec::G722 => "G722",
            Codec::G729 => "G729",
            Codec::Opus => "opus",
        }
    }

    /// The RTP timestamp rate, as signalled in `a=rtpmap`.
    pub fn clock_rate(&self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma | Codec::G722 | Codec::G729 => 8000,
            Codec::L16(rate) => *rate,
            Codec::Opus => 48_000,
        }
    }

    /// The `/channels` part of its `a=rtpmap` in our answer (RFC 7587 §7 wants 2 for Opus).
    pub fn rtpmap_channels(&self) -> Option<u16> {
        (*self == Codec::Opus).then_some(2)
    }

    /// The rate of the decoded audio (the recording's): the clock rate, except G.722's 16 kHz.
    pub fn sample_rate(&self) -> u32 {
        match self {
            Codec::G722 => 16000,
            c => c.clock_rate(),
        }
    }

    fn from_rtpmap(encoding: &str, rate: u32, channels: Option<u16>) -> Option<Codec> {
        match (encoding.to_ascii_uppercase().as_str(), rate, channels) {
            ("PCMU", 8000, None | Some(1)) => Some(Codec::Pcmu),
            ("PCMA", 8000, None | Some(1)) => Some(Codec::Pcma),
            ("G722", 8000, None | Some(1)) => Some(Codec::G722),
            ("G729" | "G729A", 8000, None | Some(1)) => Some(Codec::G729),
            ("OPUS", 48_000, None | Some(1) | Some(2)) => Some(Codec::Opus),
            // Mono only; 20 ms at 48 kHz is the largest frame we carry.
            ("L16", 8000 | 16000 | 32000 | 44100 | 48000, None | Some(1)) => Some(Codec::L16(rate)),
            _ => None,
        }
    }
}

/// What the operator allows in an offer.
#[derive(Debug, Clone, Copy, Default)]
pub struct AnswerPolicy {
    /// Only RTP/SAVP(F) m-lines are recorded (`SRTP_REQUIRED`); plain ones get port 0.
    pub require_srtp: bool,
}

/// An m-line we record.
#[derive(Debug, Clone)]
pub struct AcceptedMedia {
    pub pt: u8,
    pub codec: Codec,
    pub clock_rate: u32,
    pub telephone_event_pt: Option<u8>,
    pub telephone_event_rate: Option<u32>,
    pub label: Option<String>,
    pub rtcp_mux: bool,
    pub ptime: Option<u32>,
    pub offered_direction: Direction,
    pub remote_addr: Option<String>,
    pub remote_port: u16,
    /// Every offered PT we can decode, so a PT change mid-stream still decodes.
    pub decodable: Vec<(u8, Codec)>,
    /// RTP/SAVP(F): the offered crypto line we use (RFC 4568), the strongest we support.
    pub crypto: Option<Crypto>,
}

#[derive(Debug, Clone)]
pub struct MediaPlan {
    pub index: usize,
    pub media: String,
    pub accept: Option<AcceptedMedia>,
    pub reject_reason: Option<&'static str>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnswerError {
    #[error("no offered stream can be recorded")]
    NoUsableStream,
}

/// Decides, per offered m-line, whether and how we record it.
pub fn plan_answer(
    offer: &SessionDescription,
    policy: AnswerPolicy,
) -> Result<Vec<MediaPlan>, AnswerError> {
    let plan: Vec<MediaPlan> = offer
        .media
        .iter()
        .enumerate()
        .map(|(index, m)| {
            let reject = |reason| MediaPlan {
                index,
                media: m.media.clone(),
                accept: None,
                reject_reason: Some(reason),
            };
            if m.port == 0 {
                return reject("port 0 offered");
            }
            if !m.media.eq_ignore_ascii_case("audio") {
                return reject("not audio");
            }
            let proto = m.proto.to_ascii_uppercase();
            // RTP/AVP(F) plain; RTP/SAVP(F) keyed by SDES. DTLS-SRTP (UDP/TLS/RTP/SAVP) and
            // anything else is refused. A plain m-line's crypto lines (best-effort SRTP
            // offers) are ignored: the answer stays plain.
            let crypto = match proto.as_str() {
                "RTP/AVP" | "RTP/AVPF" if policy.require_srtp => {
                    return reject("plain RTP refused: SRTP is required")
                }
                "RTP/AVP" | "RTP/AVPF" => None,
                "RTP/SAVP" | "RTP/SAVPF" => {
                    let lines = m
                        .attributes
                        .iter()
                        .filter(|a| a.name.eq_ignore_ascii_case("crypto"))
                        .filter_map(|a| a.value.as_deref());
                    match sdes::choose(lines) {
                        Some(c) => Some(c),
                        None => return reject("no supported SRTP crypto suite"),
                    }
                }
                _ => return reject("transport not RTP/AVP or RTP/SAVP"),
            };
            let pts: Vec<u8> = m
                .formats
                .iter()
                .filter_map(|f| f.parse().ok())
                .filter(|&p| p < 128)
                .collect();
            let decodable: Vec<(u8, Codec)> = pts
                .iter()
                .filter_map(|&pt| {
                    let map = m.rtpmap(pt)?;
                    Codec::from_rtpmap(&map.encoding, map.clock_rate, map.channels).map(|c| (pt, c))
                })
                .collect();
            let Some(&(pt, codec)) = decodable.first() else {
                return reject("no codec we decode");
            };
            let te = pts.iter().find_map(|&p| {
                let map = m.rtpmap(p)?;
                (map.encoding.eq_ignore_ascii_case("telephone-event")
                    && map.clock_rate == codec.clock_rate())
                .then_some((p, map.clock_rate))
            });
            MediaPlan {
                index,
                media: m.media.clone(),
                accept: Some(AcceptedMedia {
                    pt,
                    codec,
                    clock_rate: codec.clock_rate(),
                    telephone_event_pt: te.map(|t| t.0),
                    telephone_event_rate: te.map(|t| t.1),
                    label: m.label().map(str::to_owned),
                    rtcp_mux: m.rtcp_mux(),
                    ptime: m.ptime(),
                    offered_direction: offer.media_direction(index),
                    remote_addr: offer.media_connection(index).map(|c| c.address.clone()),
                    remote_port: m.port,
                    decodable,
                    crypto,
                }),
                reject_reason: None,
            }
        })
        .collect();
    if plan.iter().all(|p| p.accept.is_none()) {
        return Err(AnswerError::NoUsableStream);
    }
    Ok(plan)
}

#[derive(Debug, Clone)]
pub struct AnswerParams {
    pub local_addr: IpAddr,
    pub session_id: u64,
    pub session_version: u64,
    /// One per plan entry; `None` renders the m-line rejected.
    pub ports: Vec<Option<u16>>,
    /// One per plan entry: our `a=crypto` value for an SRTP m-line (see
    /// [`crate::srtp::sdes::answer_value`]).
    pub crypto: Vec<Option<String>>,
}

/// Prints the answer SDP (CRLF line ends).
pub fn render_answer(
    offer: &SessionDescription,
    plan: &[MediaPlan],
    params: &AnswerParams,
) -> String {
    let addr_type = if params.local_addr.is_ipv6() {
        "IP6"
    } else {
        "IP4"
    };
    let mut s = String::with_capacity(512);
    let _ = write!(
        s,
        "v=0\r\no=siprec {} {} IN {addr_type} {}\r\ns=siprec\r\nc=IN {addr_type} {}\r\nt=0 0\r\n",
        params.session_id, params.session_version, params.local_addr, params.local_addr
    );
    for (i, p) in plan.iter().enumerate() {
        let offered = offer.media.get(p.index);
        let proto = offered.map(|m| m.proto.as_str()).unwrap_or("RTP/AVP");
        let port = params.ports.get(i).copied().flatten();
        match (&p.accept, port) {
            (Some(a), Some(port)) => {
                let mut fmts = a.pt.to_string();
                if let Some(te) = a.telephone_event_pt {
                    let _ = write!(fmts, " {te}");
                }
                let _ = write!(s, "m=audio {port} {proto} {fmts}\r\n");
                let channels = a.codec.rtpmap_channels().map(|c| format!("/{c}"));
                let _ = write!(
                    s,
                    "a=rtpmap:{} {}/{}{}\r\n",
                    a.pt,
                    a.codec.name(),
                    a.clock_rate,
                    channels.unwrap_or_default()
                );
                if let Some(te) = a.telephone_event_pt {
                    let _ = write!(
                        s,
                        "a=rtpmap:{te} telephone-event/{}\r\n",
                        a.telephone_event_rate.unwrap_or(8000)
                    );
                    let fmtp = offered.and_then(|m| {
                        m.attributes
                            .iter()
                            .filter(|x| x.name.eq_ignore_ascii_case("fmtp"))
                            .find_map(|x| {
                                let v = x.value.as_deref()?;
                                let (pt, rest) = v.split_once(char::is_whitespace)?;
                                (pt.trim().parse::<u8>().ok() == Some(te))
                                    .then(|| rest.trim().to_owned())
                            })
                    });
                    if let Some(f) = fmtp {
                        let _ = write!(s, "a=fmtp:{te} {f}\r\n");
                    }
                }
                if let Some(label) = &a.label {
                    let _ = write!(s, "a=label:{label}\r\n");
                }
                if let Some(crypto) = params.crypto.get(i).and_then(|c| c.as_deref()) {
                    let _ = write!(s, "a=crypto:{crypto}\r\n");
                }
                if a.rtcp_mux {
                    s.push_str("a=rtcp-mux\r\n");
                }
                let dir = match a.offered_direction {
                    Direction::SendOnly | Direction::SendRecv => "recvonly",
                    Direction::Inactive | Direction::RecvOnly => "inactive",
                };
                let _ = write!(s, "a={dir}\r\n");
            }
            _ => {
                let media = offered.map(|m| m.media.as_str()).unwrap_or("audio");
                let fmt = offered
                    .and_then(|m| m.formats.first())
                    .map(String::as_str)
                    .unwrap_or("0");
                let _ = write!(s, "m={media} 0 {proto} {fmt}\r\n");
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(text: &str) -> SessionDescription {
        super::super::parse(text).unwrap()
    }

    /// Two labelled m-lines: PCMU (after GSM, which we don't decode) + telephone-event kept with
    /// fmtp, labels echoed, recvonly, a video line and an SRTP line without a suite we support
    /// rejected with port 0.
    #[test]
    fn answer_shape() {
        let o = offer(
            "v=0\r\no=- 1 1 IN IP4 198.51.100.1\r\ns=-\r\nc=IN IP4 198.51.100.1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 3 0 101\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=label:1\r\na=sendonly\r\na=rtcp-mux\r\n\
m=video 4002 RTP/AVP 96\r\n\
m=audio 4004 RTP/SAVP 0\r\na=crypto:1 F8_128_HMAC_SHA1_80 inline:xx\r\n\
m=audio 4006 RTP/AVP 8\r\na=label:2\r\na=inactive\r\n",
        );
        let plan = plan_answer(&o, AnswerPolicy::default()).unwrap();
        assert_eq!(
            plan.iter().map(|p| p.accept.is_some()).collect::<Vec<_>>(),
            [true, false, false, true]
        );
        let params = AnswerParams {
            local_addr: "192.0.2.1".parse().unwrap(),
            session_id: 7,
            session_version: 1,
            ports: vec![Some(10000), None, None, Some(10002)],
            crypto: vec![None; 4],
        };
        let a = render_answer(&o, &plan, &params);
        assert_eq!(
            a,
            "v=0\r\no=siprec 7 1 IN IP4 192.0.2.1\r\ns=siprec\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
m=audio 10000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=label:1\r\na=rtcp-mux\r\na=recvonly\r\n\
m=video 0 RTP/AVP 96\r\n\
m=audio 0 RTP/SAVP 0\r\n\
m=audio 10002 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=label:2\r\na=inactive\r\n"
        );
    }

    /// Nothing recordable (GSM only) → NoUsableStream (488).
    #[test]
    fn no_usable_stream() {
        let o = offer("v=0\r\nm=audio 4000 RTP/AVP 3\r\nm=audio 0 RTP/AVP 0\r\n");
        assert!(plan_answer(&o, AnswerPolicy::default()).is_err());
    }

    /// RTP/SAVP with several crypto lines: accepted with the strongest suite, the answer
    /// carries the given crypto value; unsupported suites only → port 0; DTLS-SRTP refused.
    #[test]
    fn srtp_answer() {
        let k30 = crate::srtp::sdes::base64_encode(&[1u8; 30]);
        let k46 = crate::srtp::sdes::base64_encode(&[2u8; 46]);
        let o = offer(&format!(
            "v=0\r\nc=IN IP4 198.51.100.1\r\nm=audio 4000 RTP/SAVP 0\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:{k30}\r\n\
a=crypto:2 AES_256_CM_HMAC_SHA1_80 inline:{k46}|2^31\r\na=label:1\r\n\
m=audio 4002 RTP/SAVP 0\r\na=crypto:1 F8_128_HMAC_SHA1_80 inline:{k30}\r\n\
m=audio 4004 UDP/TLS/RTP/SAVP 0\r\na=fingerprint:sha-256 00\r\n"
        ));
        let plan = plan_answer(&o, AnswerPolicy::default()).unwrap();
        let c = plan[0].accept.as_ref().unwrap().crypto.as_ref().unwrap();
        assert_eq!(
            (c.tag, c.suite),
            (2, crate::srtp::Suite::Aes256CmHmacSha1_80)
        );
        assert!(plan[1].accept.is_none() && plan[2].accept.is_none());
        let params = AnswerParams {
            local_addr: "192.0.2.1".parse().unwrap(),
            session_id: 1,
            session_version: 1,
            ports: vec![Some(10000), None, None],
            crypto: vec![
                Some("2 AES_256_CM_HMAC_SHA1_80 inline:KEY".into()),
                None,
                None,
            ],
        };
        let a = render_answer(&o, &plan, &params);
        assert!(a.contains("m=audio 10000 RTP/SAVP 0\r\n"), "{a}");
        assert!(
            a.contains("a=crypto:2 AES_256_CM_HMAC_SHA1_80 inline:KEY\r\n"),
            "{a}"
        );
        assert!(a.contains("m=audio 0 RTP/SAVP 0\r\nm=audio 0 UDP/TLS/RTP/SAVP 0\r\n"));
        let none = offer(&format!(
            "v=0\r\nm=audio 4000 RTP/SAVP 0\r\na=crypto:1 F8_128_HMAC_SHA1_80 inline:{k30}\r\n"
        ));
        assert!(
            plan_answer(&none, AnswerPolicy::default()).is_err(),
            "no usable stream → 488"
        );
        // SRTP required: the plain m-line of a mixed offer is refused; a plain offer → 488.
        let strict = AnswerPolicy { require_srtp: true };
        let mixed = offer(&format!(
            "v=0\r\nm=audio 4000 RTP/AVP 0\r\nm=audio 4002 RTP/SAVP 0\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{k30}\r\n"
        ));
        let plan = plan_answer(&mixed, strict).unwrap();
        assert!(plan[0].accept.is_none() && plan[1].accept.is_some());
        let plain = offer("v=0\r\nm=audio 4000 RTP/AVP 0\r\n");
        assert!(plan_answer(&plain, strict).is_err());
    }
}
