//! Which source networks may send us SIP (`SIP_ALLOWED_NETWORKS`): a list of CIDR blocks,
//! IPv4 and IPv6. Empty = everyone. No I/O.

use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Block {
    net: u128,
    bits: u8,
    v4: bool,
}

/// An allow list of networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    blocks: Vec<Block>,
}

fn as_u128(ip: IpAddr) -> (u128, bool) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), true),
        // An IPv4-mapped IPv6 source is matched as the IPv4 address it is.
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (u128::from(u32::from(v4)), true),
            None => (u128::from(v6), false),
        },
    }
}

fn mask(bits: u8, width: u8) -> u128 {
    match bits {
        0 => 0,
        b => (!0u128 >> (128 - u32::from(width))) & !((1u128 << (width - b)) - 1),
    }
}

impl Acl {
    /// Parses `10.0.0.0/8, 192.0.2.7, 2001:db8::/32` (a bare address is a /32 or /128).
    pub fn parse(list: &str) -> Result<Acl, String> {
        let mut blocks = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (addr, bits) = match item.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (item, None),
            };
            let ip: IpAddr = addr.trim().parse().map_err(|_| format!("{item:?}"))?;
            let (net, v4) = as_u128(ip);
            let width = if v4 { 32 } else { 128 };
            let bits = match bits {
                Some(b) => b.trim().parse::<u8>().map_err(|_| format!("{item:?}"))?,
                None => width,
            };
            if bits > width {
                return Err(format!("{item:?}"));
            }
            blocks.push(Block {
                net: net & mask(bits, width),
                bits,
                v4,
            });
        }
        Ok(Acl { blocks })
    }

    /// No blocks: everyone is allowed.
    pub fn is_open(&self) -> bool {
        self.blocks.is_empty()
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        if self.blocks.is_empty() {
            return true;
        }
        let (addr, v4) = as_u128(ip);
        self.blocks.iter().any(|b| {
            let width = if b.v4 { 32 } else { 128 };
            b.v4 == v4 && addr & mask(b.bits, width) == b.net
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_and_addresses() {
        let acl = Acl::parse("10.0.0.0/8, 192.0.2.7,2001:db8::/32, 0.0.0.0/0 ").unwrap();
        assert!(acl.allows("10.1.2.3".parse().unwrap()));
        let acl = Acl::parse("10.0.0.0/8, 192.0.2.7, 2001:db8::/32").unwrap();
        assert!(acl.allows("10.255.0.1".parse().unwrap()));
        assert!(!acl.allows("11.0.0.1".parse().unwrap()));
        assert!(acl.allows("192.0.2.7".parse().unwrap()));
        assert!(!acl.allows("192.0.2.8".parse().unwrap()));
        assert!(
            acl.allows("::ffff:10.9.9.9".parse().unwrap()),
            "mapped IPv4"
        );
        assert!(acl.allows("2001:db8:1::5".parse().unwrap()));
        assert!(!acl.allows("2001:db9::5".parse().unwrap()));
        assert!(Acl::parse("")
            .unwrap()
            .allows("203.0.113.1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nonsense", "10.0.0.0/x", "::/129"] {
            assert!(Acl::parse(bad).is_err(), "{bad}");
        }
    }
}
