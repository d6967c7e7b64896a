//! RTCP (RFC 3550 §6) as far as a recorder needs it: walk a compound packet, take the sender
//! report's counts and the report blocks' loss and jitter figures. No I/O; never panics.

/// What one compound RTCP packet said.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtcpSummary {
    pub sender_reports: u32,
    pub receiver_reports: u32,
    /// From the last SR: the sender's packet and octet counts.
    pub sender_packets: Option<u32>,
    pub sender_octets: Option<u32>,
    /// From the last report block: fraction lost (/256), cumulative lost, jitter (RTP units).
    pub fraction_lost: Option<u8>,
    pub cumulative_lost: Option<u32>,
    pub jitter: Option<u32>,
    pub bye: bool,
}

/// Parses a compound RTCP packet; `None` if its first packet is not valid RTCP.
pub fn parse(packet: &[u8]) -> Option<RtcpSummary> {
    let mut s = RtcpSummary::default();
    let mut rest = packet;
    let mut first = true;
    while rest.len() >= 4 {
        let version = rest[0] >> 6;
        let count = (rest[0] & 0x1F) as usize;
        let pt = rest[1];
        let len = (u16::from_be_bytes([rest[2], rest[3]]) as usize + 1) * 4;
        if version != 2 || len > rest.len() || !(192..=223).contains(&pt) {
            return if first { None } else { Some(s) };
        }
        let body = &rest[4..len];
        let blocks = match pt {
            200 if body.len() >= 24 => {
                s.sender_reports += 1;
                s.sender_packets =
                    Some(u32::from_be_bytes([body[16], body[17], body[18], body[19]]));
                s.sender_octets =
                    Some(u32::from_be_bytes([body[20], body[21], body[22], body[23]]));
                &body[24..]
            }
            201 if body.len() >= 4 => {
                s.receiver_reports += 1;
                &body[4..]
            }
            203 => {
                s.bye = true;
                &[][..]
            }
            _ => &[][..],
        };
        for block in blocks.chunks_exact(24).take(count) {
            s.fraction_lost = Some(block[4]);
            let lost = u32::from_be_bytes([0, block[5], block[6], block[7]]);
            s.cumulative_lost = Some(lost);
            s.jitter = Some(u32::from_be_bytes([
                block[12], block[13], block[14], block[15],
            ]));
        }
        rest = &rest[len..];
        first = false;
    }
    Some(s)
}

/// A sender report with one report block, for tests and the bench.
pub fn write_sender_report(ssrc: u32, rtp_ts: u32, packets: u32, octets: u32, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&[0x81, 200, 0, 12]);
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(&[0; 8]); // NTP timestamp
    out.extend_from_slice(&rtp_ts.to_be_bytes());
    out.extend_from_slice(&packets.to_be_bytes());
    out.extend_from_slice(&octets.to_be_bytes());
    // Report block about the other leg: 1/256 lost, 3 cumulative, jitter 40.
    out.extend_from_slice(&0x1234u32.to_be_bytes());
    out.extend_from_slice(&[1, 0, 0, 3]);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&40u32.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A compound SR + SDES + BYE parses; truncations and garbage never panic.
    #[test]
    fn compound_and_garbage() {
        let mut sr = Vec::new();
        write_sender_report(7, 160, 50, 8000, &mut sr);
        let mut compound = sr.clone();
        compound.extend_from_slice(&[0x81, 202, 0, 1, 0, 0, 0, 7]);
        compound.extend_from_slice(&[0x81, 203, 0, 1, 0, 0, 0, 7]);
        let s = parse(&compound).unwrap();
        assert_eq!(s.sender_reports, 1);
        assert_eq!((s.sender_packets, s.sender_octets), (Some(50), Some(8000)));
        assert_eq!(
            (s.fraction_lost, s.cumulative_lost, s.jitter),
            (Some(1), Some(3), Some(40))
        );
        assert!(s.bye);
        for n in 0..compound.len() {
            let _ = parse(&compound[..n]);
        }
        assert!(parse(&[0x80, 0, 0, 0]).is_none(), "RTP is not RTCP");
        assert!(parse(&[0xFF; 40]).is_none());
    }
}
