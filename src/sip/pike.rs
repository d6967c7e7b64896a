//! Flood protection per source address (like Kamailio's pike): a source sending more than
//! `limit` SIP messages in a second is blocked — its messages dropped unanswered — for
//! `block` seconds. No I/O, no clock: time is an input.

use std::collections::HashMap;
use std::net::IpAddr;

const WINDOW_NS: u64 = 1_000_000_000;
/// Sources tracked at most; beyond it idle ones are forgotten first (and a flood of spoofed
/// sources can't grow memory without bound).
const MAX_SOURCES: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Source {
    window_start: u64,
    count: u32,
    blocked_until: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Dropped: the source is blocked. `new` on the message that tripped the limit.
    Block {
        new: bool,
    },
}

#[derive(Debug)]
pub struct Pike {
    limit: u32,
    block_ns: u64,
    sources: HashMap<IpAddr, Source>,
}

impl Pike {
    /// `limit` messages per second per source (0: off), blocks lasting `block_s` seconds.
    pub fn new(limit: u32, block_s: u32) -> Pike {
        Pike {
            limit,
            block_ns: u64::from(block_s) * 1_000_000_000,
            sources: HashMap::new(),
        }
    }

    pub fn check(&mut self, ip: IpAddr, now_ns: u64) -> Verdict {
        if self.limit == 0 {
            return Verdict::Allow;
        }
        if self.sources.len() >= MAX_SOURCES && !self.sources.contains_key(&ip) {
            self.forget_idle(now_ns);
            if self.sources.len() >= MAX_SOURCES {
                // Still full of live sources: judge this one without remembering it.
                return Verdict::Allow;
            }
        }
        let s = self.sources.entry(ip).or_insert(Source {
            window_start: now_ns,
            count: 0,
            blocked_until: 0,
        });
        if now_ns < s.blocked_until {
            return Verdict::Block { new: false };
        }
        if now_ns.saturating_sub(s.window_start) >= WINDOW_NS {
            s.window_start = now_ns;
            s.count = 0;
        }
        s.count += 1;
        if s.count > self.limit {
            s.blocked_until = now_ns + self.block_ns;
            return Verdict::Block { new: true };
        }
        Verdict::Allow
    }

    /// Forgets sources neither blocked nor heard from in the last window.
    pub fn forget_idle(&mut self, now_ns: u64) {
        self.sources.retain(|_, s| {
            now_ns < s.blocked_until || now_ns.saturating_sub(s.window_start) < WINDOW_NS
        });
    }

    pub fn blocked(&self, now_ns: u64) -> usize {
        self.sources
            .values()
            .filter(|s| now_ns < s.blocked_until)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn blocks_a_flood_for_a_while_and_spares_others() {
        let mut p = Pike::new(10, 5);
        let bad: IpAddr = "198.51.100.1".parse().unwrap();
        let good: IpAddr = "198.51.100.2".parse().unwrap();
        for i in 0..10 {
            assert_eq!(p.check(bad, i), Verdict::Allow);
        }
        assert_eq!(p.check(bad, 11), Verdict::Block { new: true });
        assert_eq!(p.check(bad, 12), Verdict::Block { new: false });
        assert_eq!(p.check(good, 13), Verdict::Allow);
        assert_eq!(p.blocked(14), 1);
        // Still blocked after the window, free after the block.
        assert_eq!(p.check(bad, 2 * S), Verdict::Block { new: false });
        assert_eq!(p.check(bad, 5 * S + 12), Verdict::Allow);
        // A steady 10 per second is never blocked.
        let mut q = Pike::new(10, 5);
        for i in 0..100u64 {
            assert_eq!(q.check(bad, i * S / 10), Verdict::Allow);
        }
        // Off.
        let mut off = Pike::new(0, 5);
        for i in 0..1000 {
            assert_eq!(off.check(bad, i), Verdict::Allow);
        }
        p.forget_idle(100 * S);
        assert_eq!(p.sources.len(), 0);
    }
}
