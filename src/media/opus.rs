//! Opus (RFC 6716, RTP per RFC 7587) through libopus (the `opus` crate): decoded to mono at
//! 48 kHz, the RTP clock, so timestamps are sample positions. A packet carries 2.5–120 ms, so
//! a stream keeps its own buffer of up to 120 ms and hands it out in frames of at most
//! FRAME_SAMPLES_MAX.
//!
//! Loss: when a packet arrives after a gap (its timestamp past where the last one ended), the
//! gap up to 120 ms is filled before it: the part just before the packet from the packet's
//! in-band FEC data when the encoder sent some (libopus falls back to concealment when not),
//! anything earlier by libopus's packet-loss concealment.

use super::frame::FRAME_SAMPLES_MAX;

/// Opus decodes at this rate (its RTP clock).
pub const RATE: u32 = 48_000;
/// The longest packet, and the longest gap filled: 120 ms.
const MAX_SAMPLES: usize = 5_760;
/// Concealment works in multiples of 2.5 ms.
const GRAIN: usize = 120;

pub struct OpusState {
    decoder: opus::Decoder,
    pcm: Box<[i16; MAX_SAMPLES * 2]>,
    /// `pcm[next..len]` is waiting to be handed out; `pcm[0]` is at position `start`.
    next: usize,
    len: usize,
    start: u64,
    /// Where the latest packet ended (sample position), to see gaps.
    expected: Option<u64>,
    /// Samples made up by FEC or concealment (for the stream's counters).
    pub concealed: u64,
}

impl std::fmt::Debug for OpusState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusState")
            .field("pending", &(self.len - self.next))
            .field("expected", &self.expected)
            .finish()
    }
}

impl OpusState {
    /// None when libopus refuses to create a decoder (out of memory).
    pub fn new() -> Option<OpusState> {
        Some(OpusState {
            decoder: opus::Decoder::new(RATE, opus::Channels::Mono).ok()?,
            pcm: Box::new([0; MAX_SAMPLES * 2]),
            next: 0,
            len: 0,
            start: 0,
            expected: None,
            concealed: 0,
        })
    }

    /// Decodes the packet at position `ts`, after filling a gap before it. False for a
    /// packet libopus cannot parse (nothing is handed out then).
    pub fn decode(&mut self, payload: &[u8], ts: u64) -> bool {
        self.next = 0;
        self.len = 0;
        let Ok(duration) = opus::packet::get_nb_samples(payload, RATE) else {
            return false;
        };
        if duration == 0 || duration > MAX_SAMPLES {
            return false;
        }
        self.start = ts;
        if let Some(expected) = self.expected.filter(|&e| ts > e) {
            let gap = ((ts - expected) as usize).min(MAX_SAMPLES) / GRAIN * GRAIN;
            if gap > 0 {
                // FEC can rebuild at most the one packet before this, of this one's length.
                let fec = gap.min(duration);
                let plc = gap - fec;
                let ok = (plc == 0
                    || self
                        .decoder
                        .decode(&[], &mut self.pcm[..plc], false)
                        .is_ok())
                    && self
                        .decoder
                        .decode(payload, &mut self.pcm[plc..gap], true)
                        .is_ok();
                if ok {
                    self.len = gap;
                    self.start = ts - gap as u64;
                    self.concealed += gap as u64;
                }
            }
        }
        let from = self.len;
        match self
            .decoder
            .decode(payload, &mut self.pcm[from..from + duration], false)
        {
            Ok(n) => self.len += n,
            Err(_) => return false,
        }
        let end = ts + duration as u64;
        self.expected = Some(self.expected.map_or(end, |e| e.max(end)));
        true
    }

    /// Drops what was decoded but not handed out (a paused stream).
    pub fn discard(&mut self) {
        self.next = self.len;
    }

    /// The next frame of what was decoded: its position and samples written, or None.
    pub fn take(&mut self, out: &mut [i16; FRAME_SAMPLES_MAX]) -> Option<(u64, usize)> {
        if self.next >= self.len {
            return None;
        }
        let n = (self.len - self.next).min(FRAME_SAMPLES_MAX);
        out[..n].copy_from_slice(&self.pcm[self.next..self.next + n]);
        let at = self.start + self.next as u64;
        self.next += n;
        Some((at, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packets(frames: usize, fec: bool) -> Vec<Vec<u8>> {
        let mut enc =
            opus::Encoder::new(RATE, opus::Channels::Mono, opus::Application::Voip).unwrap();
        enc.set_inband_fec(fec).unwrap();
        enc.set_packet_loss_perc(if fec { 20 } else { 0 }).unwrap();
        (0..frames)
            .map(|f| {
                let pcm: Vec<i16> = (0..960)
                    .map(|i| {
                        let t = (f * 960 + i) as f64 / f64::from(RATE);
                        (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
                    })
                    .collect();
                enc.encode_vec(&pcm, 4000).unwrap()
            })
            .collect()
    }

    #[test]
    fn frames_and_gaps() {
        let p = packets(10, true);
        let mut s = OpusState::new().unwrap();
        let mut out = [0i16; FRAME_SAMPLES_MAX];
        assert!(s.decode(&p[0], 1000));
        assert_eq!(s.take(&mut out), Some((1000, 960)));
        assert_eq!(s.take(&mut out), None);
        // Packet 2 lost: packet 3 brings 960 samples of FEC before its own 960.
        assert!(s.decode(&p[2], 1000 + 2 * 960));
        assert_eq!(s.take(&mut out), Some((1960, 960)));
        assert!(out.iter().any(|&x| x != 0), "the gap is filled");
        assert_eq!(s.take(&mut out), Some((2920, 960)));
        assert_eq!(s.concealed, 960);
        // Three lost: two concealed, one from FEC.
        assert!(s.decode(&p[6], 1000 + 6 * 960));
        let mut positions = Vec::new();
        while let Some((at, n)) = s.take(&mut out) {
            positions.push((at, n));
        }
        assert_eq!(
            positions,
            [(3880, 960), (4840, 960), (5800, 960), (6760, 960)]
        );
        assert!(!s.decode(&[0xff, 0xff, 0xff], 9000), "garbage is refused");
        assert!(!s.decode(&[], 9000));
    }
}
