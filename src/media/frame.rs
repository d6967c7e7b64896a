//! The decoded audio frame that travels from a data-plane worker to a sink through a ring.

/// Largest frame a ring slot holds, in samples: 60 ms at 16 kHz (G.722 in a later issue).
/// Memory: every ring slot is one MediaFrame (≈ 1.9 KiB), `dataplane.ring_slots` per worker;
/// `dataplane::memory_budget_bytes` sums it at start-up.
pub const FRAME_SAMPLES_MAX: usize = 960;

/// Identifies one recorded media stream across threads: the recording session's slot and the
/// stream's index (its m-line position in the first offer). Cheap to copy, no allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    /// Recording session number, unique for the life of the process.
    pub session: u64,
    /// Stream index inside the recording session (m-line order).
    pub stream: u32,
}

/// One decoded RTP packet's worth of 16-bit PCM.
///
/// Positioning: the recorder places the samples at a position in the session's timeline using
/// `arrival_ns` (monotonic clock, read once per receive batch) for the first packet of each
/// `ssrc_epoch`, and the extended RTP timestamp for every later packet of that epoch, so
/// reordering, loss and jitter resolve by placement (see `docs/recording.md`).
#[derive(Clone, Copy)]
pub struct MediaFrame {
    pub key: StreamKey,
    /// Monotonic nanoseconds at which the batch holding this packet was received.
    pub arrival_ns: u64,
    /// Extended (wrap-free) RTP timestamp of the first sample, in `clock_rate` units.
    pub ext_ts: u64,
    /// Incremented by the data plane whenever the stream's SSRC changes (new mapping).
    pub ssrc_epoch: u32,
    /// Sample rate of `samples` (8000 for G.711).
    pub sample_rate: u32,
    /// Number of valid samples in `samples`.
    pub len: u16,
    pub samples: [i16; FRAME_SAMPLES_MAX],
}

// A ring slot stays under 2 KiB: the size the memory budget and docs/dataplane.md assume.
const _: () = assert!(std::mem::size_of::<MediaFrame>() <= 2048);

impl MediaFrame {
    pub fn pcm(&self) -> &[i16] {
        &self.samples[..self.len as usize]
    }

    /// Makes `self` equal to `other` where it counts: the header and the `len` valid
    /// samples, not the whole buffer (a ring slot updated in place).
    pub fn copy_from(&mut self, other: &MediaFrame) {
        self.key = other.key;
        self.arrival_ns = other.arrival_ns;
        self.ext_ts = other.ext_ts;
        self.ssrc_epoch = other.ssrc_epoch;
        self.sample_rate = other.sample_rate;
        self.len = other.len;
        let n = other.len as usize;
        self.samples[..n].copy_from_slice(&other.samples[..n]);
    }
}

impl std::fmt::Debug for MediaFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaFrame")
            .field("key", &self.key)
            .field("arrival_ns", &self.arrival_ns)
            .field("ext_ts", &self.ext_ts)
            .field("ssrc_epoch", &self.ssrc_epoch)
            .field("sample_rate", &self.sample_rate)
            .field("len", &self.len)
            .finish()
    }
}
