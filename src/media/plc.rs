//! Packet-loss concealment for G.711 streams: when sequence numbers show lost packets, the gap
//! before the next packet starts with the last 20 ms heard repeated and faded out linearly over
//! 60 ms; beyond 60 ms it stays silence. A short loss then doesn't click, and a long one
//! doesn't invent speech. A late packet that arrives while the gap is still uncommitted
//! overwrites the concealment with the real audio (the recorder's timeline places by position).

/// Samples kept of the last packet, and the longest concealment (8 kHz: 20 and 60 ms).
const HISTORY: usize = 160;
pub const MAX_CONCEAL: usize = 480;

#[derive(Debug, Clone)]
pub struct Plc {
    history: [i16; HISTORY],
    history_len: usize,
    /// Where the latest packet ended (sample position).
    expected: Option<u64>,
    pending: [i16; MAX_CONCEAL],
    pending_len: usize,
    pending_at: u64,
    /// Samples made up so far (for the stream's counters).
    pub concealed: u64,
}

impl Default for Plc {
    fn default() -> Self {
        Plc {
            history: [0; HISTORY],
            history_len: 0,
            expected: None,
            pending: [0; MAX_CONCEAL],
            pending_len: 0,
            pending_at: 0,
            concealed: 0,
        }
    }
}

impl Plc {
    /// After a packet decoded to `pcm` at position `at`: `lost` packets were missing right
    /// before it (by sequence number). Stages concealment for the gap, then remembers `pcm`.
    pub fn after_packet(&mut self, at: u64, pcm: &[i16], lost: u64) {
        self.pending_len = 0;
        if let (true, Some(expected)) = (lost > 0 && self.history_len > 0, self.expected) {
            if at > expected {
                let n = ((at - expected) as usize).min(MAX_CONCEAL);
                let history = &self.history[..self.history_len];
                for (k, slot) in self.pending[..n].iter_mut().enumerate() {
                    let gain = 1.0 - k as f32 / MAX_CONCEAL as f32;
                    *slot = (f32::from(history[k % history.len()]) * gain) as i16;
                }
                self.pending_len = n;
                self.pending_at = expected;
                self.concealed += n as u64;
            }
        }
        if pcm.is_empty() {
            return;
        }
        let keep = pcm.len().min(HISTORY);
        self.history[..keep].copy_from_slice(&pcm[pcm.len() - keep..]);
        self.history_len = keep;
        let end = at + pcm.len() as u64;
        self.expected = Some(self.expected.map_or(end, |e| e.max(end)));
    }

    /// The staged concealment, once: its position and samples written into `out`.
    pub fn take(&mut self, out: &mut [i16]) -> Option<(u64, usize)> {
        if self.pending_len == 0 {
            return None;
        }
        let n = self.pending_len.min(out.len());
        out[..n].copy_from_slice(&self.pending[..n]);
        self.pending_len = 0;
        Some((self.pending_at, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conceals_only_real_losses_and_fades() {
        let mut plc = Plc::default();
        let tone: Vec<i16> = (0..160)
            .map(|i| if i % 2 == 0 { 1000 } else { -1000 })
            .collect();
        let mut out = [0i16; MAX_CONCEAL];
        plc.after_packet(0, &tone, 0);
        assert_eq!(plc.take(&mut out), None);
        // One packet lost: 160 samples of the last packet, fading.
        plc.after_packet(320, &tone, 1);
        assert_eq!(plc.take(&mut out), Some((160, 160)));
        assert_eq!(out[0], 1000);
        assert!(
            out[159].abs() < 1000 && out[159].abs() > 600,
            "{}",
            out[159]
        );
        assert_eq!(plc.take(&mut out), None, "once");
        // Five lost (100 ms): 60 ms concealed, down to silence; the rest stays silence.
        plc.after_packet(480 + 800, &tone, 5);
        let (at, n) = plc.take(&mut out).unwrap();
        assert_eq!((at, n), (480, MAX_CONCEAL));
        assert!(out[MAX_CONCEAL - 1].abs() < 5);
        // A timestamp gap without lost sequence numbers (silence suppression): nothing.
        plc.after_packet(5000, &tone, 0);
        assert_eq!(plc.take(&mut out), None);
        assert_eq!(plc.concealed, 640);
    }
}
