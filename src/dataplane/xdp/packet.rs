//! Ethernet frames as an AF_XDP socket hands them over: Ethernet II with at most one VLAN tag
//! (802.1Q or 802.1ad), IPv4 without fragments or IPv6 without extension headers, UDP with its
//! checksum verified when present (IPv6 requires one). Sans-IO: bytes in, a verdict out. The
//! XDP program (`program.rs`) sends only such frames here; anything else it passes to the
//! kernel, and anything that still does not parse here is counted and dropped.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;

const ETH_HEADER: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
const IPPROTO_UDP: u8 = 17;
const UDP_HEADER: usize = 8;

/// A UDP datagram found in a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Udp {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    /// Where the UDP payload (the RTP packet) lies in the frame.
    pub payload: Range<usize>,
}

/// Why a frame is not a UDP datagram we take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Shorter than its headers say, or lengths that disagree.
    Truncated,
    /// Not IPv4/IPv6 over Ethernet (after at most one VLAN tag).
    NotIp,
    /// IPv4 options, IPv6 extension headers, or not UDP.
    NotUdp,
    /// An IPv4 fragment (reassembly is the kernel's).
    Fragment,
    /// The UDP checksum does not match (or is missing over IPv6).
    Checksum,
}

/// Parses `frame`; the UDP datagram it carries or why not.
pub fn parse(frame: &[u8]) -> Result<Udp, Reject> {
    let mut ethertype = be16(frame, 12).ok_or(Reject::Truncated)?;
    let mut l3 = ETH_HEADER;
    if ethertype == ETHERTYPE_VLAN || ethertype == ETHERTYPE_QINQ {
        ethertype = be16(frame, 16).ok_or(Reject::Truncated)?;
        l3 += 4;
    }
    match ethertype {
        ETHERTYPE_IPV4 => parse_ipv4(frame, l3),
        ETHERTYPE_IPV6 => parse_ipv6(frame, l3),
        _ => Err(Reject::NotIp),
    }
}

fn parse_ipv4(frame: &[u8], at: usize) -> Result<Udp, Reject> {
    let header = frame.get(at..at + 20).ok_or(Reject::Truncated)?;
    if header[0] >> 4 != 4 {
        return Err(Reject::NotIp);
    }
    if header[0] & 0x0f != 5 || header[9] != IPPROTO_UDP {
        return Err(Reject::NotUdp);
    }
    // More-fragments flag or a fragment offset.
    if u16::from_be_bytes([header[6], header[7]]) & 0x3fff != 0 {
        return Err(Reject::Fragment);
    }
    let total = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if total < 20 + UDP_HEADER || frame.len() < at + total {
        return Err(Reject::Truncated);
    }
    let src = Ipv4Addr::new(header[12], header[13], header[14], header[15]);
    let dst = Ipv4Addr::new(header[16], header[17], header[18], header[19]);
    // Ethernet pads short frames: the IP length is the truth.
    let udp = &frame[at + 20..at + total];
    let mut pseudo = Checksum::default();
    pseudo.add(&header[12..20]);
    pseudo.add_u16(u16::from(IPPROTO_UDP));
    finish_udp(
        udp,
        at + 20,
        pseudo,
        IpAddr::V4(src),
        IpAddr::V4(dst),
        false,
    )
}

fn parse_ipv6(frame: &[u8], at: usize) -> Result<Udp, Reject> {
    let header = frame.get(at..at + 40).ok_or(Reject::Truncated)?;
    if header[0] >> 4 != 6 {
        return Err(Reject::NotIp);
    }
    if header[6] != IPPROTO_UDP {
        return Err(Reject::NotUdp);
    }
    let payload = usize::from(u16::from_be_bytes([header[4], header[5]]));
    if payload < UDP_HEADER || frame.len() < at + 40 + payload {
        return Err(Reject::Truncated);
    }
    let octets = |r: Range<usize>| -> [u8; 16] { header[r].try_into().expect("16 bytes") };
    let src = Ipv6Addr::from(octets(8..24));
    let dst = Ipv6Addr::from(octets(24..40));
    let udp = &frame[at + 40..at + 40 + payload];
    let mut pseudo = Checksum::default();
    pseudo.add(&header[8..40]);
    pseudo.add_u16(u16::from(IPPROTO_UDP));
    finish_udp(udp, at + 40, pseudo, IpAddr::V6(src), IpAddr::V6(dst), true)
}

/// The UDP header at `udp` (which spans exactly the IP payload), found at `offset`.
fn finish_udp(
    udp: &[u8],
    offset: usize,
    mut sum: Checksum,
    src: IpAddr,
    dst: IpAddr,
    checksum_required: bool,
) -> Result<Udp, Reject> {
    let length = usize::from(be16(udp, 4).ok_or(Reject::Truncated)?);
    if length < UDP_HEADER || length > udp.len() {
        return Err(Reject::Truncated);
    }
    let udp = &udp[..length];
    let checksum = u16::from_be_bytes([udp[6], udp[7]]);
    if checksum == 0 {
        if checksum_required {
            return Err(Reject::Checksum);
        }
    } else {
        // The UDP length counts in the pseudo-header; the datagram includes its checksum, so
        // a correct one sums to 0xffff.
        sum.add_u16(length as u16);
        sum.add(udp);
        if sum.fold() != 0xffff {
            return Err(Reject::Checksum);
        }
    }
    Ok(Udp {
        source: SocketAddr::new(src, u16::from_be_bytes([udp[0], udp[1]])),
        destination: SocketAddr::new(dst, u16::from_be_bytes([udp[2], udp[3]])),
        payload: offset + UDP_HEADER..offset + length,
    })
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

/// The Internet checksum (RFC 1071) as a running one's-complement sum.
#[derive(Debug, Default, Clone, Copy)]
struct Checksum(u64);

impl Checksum {
    fn add(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(2);
        for pair in &mut chunks {
            self.0 += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
        if let [last] = chunks.remainder() {
            self.0 += u64::from(*last) << 8;
        }
    }

    fn add_u16(&mut self, value: u16) {
        self.0 += u64::from(value);
    }

    fn fold(self) -> u16 {
        let mut sum = self.0;
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }
}

/// Builds an Ethernet frame around a UDP datagram, checksum filled in (for tests and the
/// bench's sender).
pub fn build(
    source: SocketAddr,
    destination: SocketAddr,
    vlan: Option<u16>,
    payload: &[u8],
) -> Vec<u8> {
    let mut frame = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    if let Some(id) = vlan {
        frame.extend_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        frame.extend_from_slice(&(id & 0x0fff).to_be_bytes());
    }
    let udp_len = (UDP_HEADER + payload.len()) as u16;
    let mut sum = Checksum::default();
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            frame.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
            ip[6] = 0x40; // Don't fragment.
            ip[8] = 64;
            ip[9] = IPPROTO_UDP;
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            let mut ip_sum = Checksum::default();
            ip_sum.add(&ip);
            ip[10..12].copy_from_slice(&(!ip_sum.fold()).to_be_bytes());
            frame.extend_from_slice(&ip);
            sum.add(&ip[12..20]);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            frame.extend_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&udp_len.to_be_bytes());
            ip[6] = IPPROTO_UDP;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&s.octets());
            ip[24..40].copy_from_slice(&d.octets());
            frame.extend_from_slice(&ip);
            sum.add(&ip[8..40]);
        }
        _ => panic!("source and destination of one family"),
    }
    sum.add_u16(u16::from(IPPROTO_UDP));
    sum.add_u16(udp_len);
    let mut udp = Vec::with_capacity(usize::from(udp_len));
    udp.extend_from_slice(&source.port().to_be_bytes());
    udp.extend_from_slice(&destination.port().to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    sum.add(&udp);
    let checksum = match !sum.fold() {
        0 => 0xffff, // RFC 768: a computed zero is sent as all ones.
        c => c,
    };
    udp[6..8].copy_from_slice(&checksum.to_be_bytes());
    frame.extend_from_slice(&udp);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn udp_over_ipv4_ipv6_and_vlan_parses_with_its_checksum() {
        let payload = b"\x80\x00\x00\x01rtp payload of odd length";
        for (src, dst) in [
            ("192.0.2.7:4000", "198.51.100.1:20000"),
            ("[2001:db8::7]:4000", "[2001:db8::1]:20000"),
        ] {
            for vlan in [None, Some(42)] {
                let frame = build(addr(src), addr(dst), vlan, payload);
                let udp = parse(&frame).unwrap();
                assert_eq!(udp.source, addr(src));
                assert_eq!(udp.destination, addr(dst));
                assert_eq!(&frame[udp.payload.clone()], payload);
                // Ethernet padding after the datagram is not payload.
                let mut padded = frame.clone();
                padded.extend_from_slice(&[0; 20]);
                assert_eq!(parse(&padded).unwrap().payload, udp.payload);
            }
        }
    }

    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let frame = build(
            addr("192.0.2.7:4000"),
            addr("198.51.100.1:20000"),
            None,
            b"abcd",
        );
        // Ports and payload (a flipped length is caught as a length).
        for i in (34..38).chain(42..frame.len()) {
            let mut bad = frame.clone();
            bad[i] ^= 0x10;
            assert_eq!(parse(&bad), Err(Reject::Checksum), "byte {i}");
        }
        // IPv4 may leave it out; IPv6 may not.
        let mut none = frame.clone();
        none[40..42].copy_from_slice(&[0, 0]);
        assert!(parse(&none).is_ok());
        let v6 = build(addr("[::1]:4000"), addr("[::2]:20000"), None, b"abcd");
        let mut none = v6.clone();
        none[60..62].copy_from_slice(&[0, 0]);
        assert_eq!(parse(&none), Err(Reject::Checksum));
    }

    #[test]
    fn everything_else_is_rejected_never_misparsed() {
        let frame = build(
            addr("192.0.2.7:4000"),
            addr("198.51.100.1:20000"),
            None,
            b"abcd",
        );
        for len in 0..frame.len() {
            assert!(parse(&frame[..len]).is_err(), "truncated to {len}");
        }
        let mut arp = frame.clone();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(parse(&arp), Err(Reject::NotIp));
        let mut tcp = frame.clone();
        tcp[23] = 6;
        assert_eq!(parse(&tcp), Err(Reject::NotUdp));
        let mut options = frame.clone();
        options[14] = 0x46;
        assert_eq!(parse(&options), Err(Reject::NotUdp));
        let mut fragment = frame.clone();
        fragment[20] = 0x20; // More fragments.
        assert_eq!(parse(&fragment), Err(Reject::Fragment));
        let mut later = frame.clone();
        later[21] = 1; // Offset 8.
        assert_eq!(parse(&later), Err(Reject::Fragment));
        let mut long = frame.clone();
        long[38..40].copy_from_slice(&200u16.to_be_bytes()); // UDP length past the IP payload.
        assert_eq!(parse(&long), Err(Reject::Truncated));
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x1234_5678_u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 128) as usize;
            let mut frame = build(
                addr("192.0.2.7:4000"),
                addr("198.51.100.1:20000"),
                None,
                b"xy",
            );
            frame.resize(len.max(frame.len()), 0);
            let i = (seed >> 8) as usize % frame.len();
            frame[i] = (seed >> 16) as u8;
            frame.truncate(len);
            let _ = parse(&frame);
        }
    }
}
