//! The RTP port pool: even ports in RTP_PORT_MIN..=RTP_PORT_MAX (RTCP on port + 1), handed
//! out oldest-released first, with a cooldown before reuse so late packets of an old call can't
//! land in a new one. No I/O: binding is the caller's business (it may `mark_unusable`).

use std::collections::VecDeque;

#[derive(Debug)]
pub struct PortPool {
    free: VecDeque<u16>,
    /// Released ports with the monotonic ns at which they may be reused, in release order.
    cooling: VecDeque<(u16, u64)>,
    cooldown_ns: u64,
    total: usize,
}

impl PortPool {
    /// Every even port `p` with `min <= p` and `p + 1 <= max`.
    pub fn new(min: u16, max: u16, cooldown_ns: u64) -> PortPool {
        let first = min + (min % 2);
        let free: VecDeque<u16> = (first..max)
            .step_by(2)
            .filter(|p| p.checked_add(1).is_some_and(|q| q <= max))
            .collect();
        let total = free.len();
        PortPool {
            free,
            cooling: VecDeque::new(),
            cooldown_ns,
            total,
        }
    }

    /// Takes the next free port, or `None` when every port is in use or cooling down.
    pub fn allocate(&mut self, now_ns: u64) -> Option<u16> {
        while let Some(&(port, ready_ns)) = self.cooling.front() {
            if ready_ns > now_ns {
                break;
            }
            self.cooling.pop_front();
            self.free.push_back(port);
        }
        self.free.pop_front()
    }

    /// Returns a port; it becomes available after the cooldown.
    pub fn release(&mut self, port: u16, now_ns: u64) {
        self.cooling.push_back((port, now_ns + self.cooldown_ns));
    }

    /// Ports allocated and not released (cooling ports count as free capacity soon).
    pub fn in_use(&self) -> usize {
        self.total - self.free.len() - self.cooling.len()
    }

    pub fn capacity(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Even ports only, RTCP port inside the range, exhaustion returns None.
    #[test]
    fn even_ports_and_exhaustion() {
        let mut p = PortPool::new(10000, 10005, 0);
        assert_eq!(p.capacity(), 3);
        assert_eq!(p.allocate(0), Some(10000));
        assert_eq!(p.allocate(0), Some(10002));
        assert_eq!(p.allocate(0), Some(10004));
        assert_eq!(p.allocate(0), None);
        assert_eq!(p.in_use(), 3);
    }

    /// A released port rests for the cooldown before it is handed out again.
    #[test]
    fn cooldown() {
        let mut p = PortPool::new(10000, 10001, 5);
        assert_eq!(p.allocate(0), Some(10000));
        p.release(10000, 10);
        assert_eq!(p.allocate(14), None);
        assert_eq!(p.allocate(15), Some(10000));
    }
}
