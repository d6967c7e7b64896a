//! In-order delivery for stateful decoders (G.722, G.729, Opus).
//!
//! G.711 packets can be decoded in any order: the recorder places them by timestamp. A
//! stateful decoder cannot: G.722's ADPCM predictors, G.729's filters and Opus's CELT/SILK
//! state follow the encoder only if packets are decoded in sequence order, and a swapped pair
//! leaves audible damage that takes tens of milliseconds to fade. So a packet that arrives
//! after a hole in the sequence numbers waits here, up to `HOLD` packets, for the missing one;
//! when it comes everything is decoded in order. When the hold is full the hole is given up
//! (the codec's concealment fills it) and the held packets are decoded in order. A packet for
//! a hole already given up is too late for the decoder and is dropped (counted).
//!
//! Cost: nothing on the in-order path (no copy); one copy of the payload for a held packet.
//! Latency: at most `HOLD` packet times, only after a hole; the recorder's 300 ms commit delay
//! absorbs it.

use super::rtp::PayloadKind;

/// Packets held after a hole: 4 × 20 ms, beyond which the hole counts as loss.
pub const HOLD: usize = 4;
/// Largest payload held (a 1500-byte datagram's); longer ones are cut, as if malformed.
const PAYLOAD_MAX: usize = 1500;

/// A packet waiting for an earlier one.
#[derive(Debug, Clone)]
pub struct Held {
    pub seq: u64,
    pub ext_ts: u64,
    pub arrival_ns: u64,
    pub marker: bool,
    pub kind: PayloadKind,
    pub len: usize,
    pub payload: [u8; PAYLOAD_MAX],
}

impl Held {
    pub fn payload(&self) -> &[u8] {
        &self.payload[..self.len]
    }
}

/// What to do with an arriving packet of a stateful codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// In order with nothing held: decode it now.
    Now,
    /// After a hole, or behind held packets: `hold` it, then `release`.
    Hold,
    /// Its place was given up (or decoded) already: drop it.
    Late,
}

#[derive(Debug)]
pub struct Reorder {
    /// The sequence number the decoder expects next.
    next: Option<u64>,
    /// Held packets by sequence number. Capacity `HOLD + 1`, allocated once.
    held: Vec<Held>,
}

impl Default for Reorder {
    fn default() -> Self {
        Reorder {
            next: None,
            held: Vec::with_capacity(HOLD + 1),
        }
    }
}

impl Reorder {
    /// Classifies packet `seq` (extended) of a stateful codec.
    pub fn arrive(&mut self, seq: u64) -> Arrival {
        match self.next {
            None => {
                self.next = Some(seq + 1);
                Arrival::Now
            }
            Some(next) if seq < next => Arrival::Late,
            Some(next) if seq == next && self.held.is_empty() => {
                self.next = Some(seq + 1);
                Arrival::Now
            }
            Some(_) => Arrival::Hold,
        }
    }

    /// Another packet of the stream (DTMF, comfort noise, a stateless codec) took `seq`: it
    /// fills its place in the sequence.
    pub fn seen(&mut self, seq: u64) {
        match self.next {
            Some(next) if seq == next => self.next = Some(seq + 1),
            None => self.next = Some(seq + 1),
            _ => {}
        }
    }

    /// Holds a packet `arrive` said to hold. A duplicate of a held one is ignored (the
    /// receiver's duplicate check runs first; this is belt and braces).
    pub fn hold(
        &mut self,
        seq: u64,
        ext_ts: u64,
        arrival_ns: u64,
        marker: bool,
        kind: PayloadKind,
        payload: &[u8],
    ) {
        let at = match self.held.binary_search_by_key(&seq, |h| h.seq) {
            Ok(_) => return,
            Err(at) => at,
        };
        let len = payload.len().min(PAYLOAD_MAX);
        let mut held = Held {
            seq,
            ext_ts,
            arrival_ns,
            marker,
            kind,
            len,
            payload: [0; PAYLOAD_MAX],
        };
        held.payload[..len].copy_from_slice(&payload[..len]);
        // Within capacity: `release` runs after every hold and keeps at most HOLD.
        self.held.insert(at, held);
    }

    /// The next packet to decode, if any: the lowest held one when it is next in sequence,
    /// or when more than `HOLD` wait (the hole before it is given up).
    pub fn release(&mut self) -> Option<Held> {
        let lowest = self.held.first()?.seq;
        let next = self.next.unwrap_or(lowest);
        if lowest != next && self.held.len() <= HOLD {
            return None;
        }
        self.next = Some(lowest + 1);
        Some(self.held.remove(0))
    }

    /// Packets held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// A new SSRC: its sequence numbers start afresh. Held packets of the old one are dropped;
    /// returns how many.
    pub fn reset(&mut self) -> usize {
        let dropped = self.held.len();
        self.held.clear();
        self.next = None;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds sequence numbers; returns the order they reach the decoder in.
    fn run(r: &mut Reorder, arrivals: &[u64]) -> Vec<u64> {
        let mut out = Vec::new();
        for &seq in arrivals {
            match r.arrive(seq) {
                Arrival::Now => out.push(seq),
                Arrival::Late => {}
                Arrival::Hold => {
                    r.hold(seq, seq * 160, 0, false, PayloadKind::G722, &[seq as u8]);
                    while let Some(h) = r.release() {
                        assert_eq!(h.payload(), [seq_byte(h.seq)]);
                        out.push(h.seq);
                    }
                }
            }
        }
        out
    }

    fn seq_byte(seq: u64) -> u8 {
        seq as u8
    }

    #[test]
    fn swapped_pairs_decode_in_order() {
        let mut r = Reorder::default();
        assert_eq!(run(&mut r, &[1, 3, 2, 4, 6, 5, 7]), [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(r.held(), 0);
        // Three packets late still make it.
        assert_eq!(run(&mut r, &[9, 10, 11, 8, 12]), [8, 9, 10, 11, 12]);
    }

    #[test]
    fn a_lost_packet_is_given_up_after_hold() {
        let mut r = Reorder::default();
        // 2 never comes: 3..=6 wait, 7 overflows the hold, all go out in order.
        assert_eq!(run(&mut r, &[1, 3, 4, 5, 6]), [1]);
        assert_eq!(run(&mut r, &[7]), [3, 4, 5, 6, 7]);
        // 2 arriving now is too late for the decoder.
        assert_eq!(r.arrive(2), Arrival::Late);
        assert_eq!(run(&mut r, &[8]), [8]);
    }

    #[test]
    fn other_packets_fill_their_places() {
        let mut r = Reorder::default();
        assert_eq!(run(&mut r, &[1]), [1]);
        // 2 is a DTMF packet, arriving after 3.
        assert_eq!(run(&mut r, &[3]), Vec::<u64>::new());
        r.seen(2);
        assert_eq!(run(&mut r, &[4]), [3, 4]);
    }

    #[test]
    fn reset_starts_afresh() {
        let mut r = Reorder::default();
        assert_eq!(run(&mut r, &[1, 3]), [1]);
        assert_eq!(r.reset(), 1);
        assert_eq!(run(&mut r, &[500, 501]), [500, 501]);
    }
}
