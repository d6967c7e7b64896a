//! Per-stream RTP receive logic: header parse, SSRC lock, sequence and timestamp extension,
//! duplicate detection, payload type → decoder, decode into a [`MediaFrame`].
//!
//! No I/O. No clock: the receive time is an input. No allocation per packet: the caller owns
//! the output frame. Reordering is not buffered for stateless codecs: frames carry their
//! extended RTP timestamp and the recorder places them by it (see `docs/recording.md`);
//! stateful decoders get their packets in sequence order through `reorder.rs`.

use std::net::SocketAddr;

use super::frame::{MediaFrame, StreamKey, FRAME_SAMPLES_MAX};
use super::g711;
use super::reorder::{Arrival, Reorder};

/// What a payload type decodes to. Indexed by PT in a 128-entry table (rtpengine's
/// `decoders[128]`), so the hot path never looks up a codec by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    Pcmu,
    Pcma,
    /// Linear 16-bit big-endian PCM (RFC 3551 L16), mono.
    L16,
    /// RFC 4733 telephone-event: never reaches the audio; the gap it covers stays silence.
    TelephoneEvent,
    /// RFC 3389 comfort noise: the gap stays silence.
    ComfortNoise,
    /// G.722: stateful, 16 kHz out of an 8000 Hz RTP clock.
    G722,
    /// G.729(A/B): 10-byte frames of 80 samples, a trailing 2-byte SID frame for comfort noise.
    G729,
    /// Opus at 48 kHz: up to 120 ms per packet, handed out over several frames.
    Opus,
}

/// Decodes a payload into samples.
type Decoder = fn(&[u8], &mut [i16]);

/// G.729 payload (RFC 3551 §4.5.6): whole 10-byte frames, then possibly one 2-byte Annex B
/// SID frame; 80 samples each, at most FRAME_SAMPLES_MAX. A stray trailing byte count other
/// than 0 or 2 is ignored.
fn decode_g729(
    decoder: &mut crate::ffi::bcg729::G729Decoder,
    payload: &[u8],
    out: &mut [i16; FRAME_SAMPLES_MAX],
) -> usize {
    use crate::ffi::bcg729::{FRAME_BYTES, FRAME_SAMPLES, SID_BYTES};
    let mut n = 0;
    let frames = payload
        .chunks(FRAME_BYTES)
        .filter(|f| f.len() == FRAME_BYTES || f.len() == SID_BYTES);
    for (frame, slot) in frames.zip(out.chunks_exact_mut(FRAME_SAMPLES)) {
        let slot: &mut [i16; FRAME_SAMPLES] = slot
            .try_into()
            .unwrap_or_else(|_| unreachable!("chunks_exact yields FRAME_SAMPLES samples"));
        decoder.decode(frame, slot);
        n += FRAME_SAMPLES;
    }
    n
}

/// L16: big-endian 16-bit samples.
fn decode_l16(payload: &[u8], out: &mut [i16]) {
    for (o, b) in out.iter_mut().zip(payload.chunks_exact(2)) {
        *o = i16::from_be_bytes([b[0], b[1]]);
    }
}

/// Parameters captured when a stream is opened or updated (never read from global config).
#[derive(Debug, Clone)]
pub struct StreamParams {
    pub key: StreamKey,
    /// PT → kind. `None` means the SDP answer did not accept that PT: counted and dropped.
    pub payload_types: [Option<PayloadKind>; 128],
    /// Audio sample rate of the decoded PCM (8000 for G.711, 16000 for G.722).
    pub sample_rate: u32,
    /// RTP timestamp rate (`a=rtpmap`; 8000 for G.722 too). Timestamps are scaled by
    /// sample_rate / clock_rate before they leave as sample positions.
    pub clock_rate: u32,
    /// A held stream (a=inactive, port 0) still receives, but its silence is expected.
    pub held: bool,
    /// Recording paused by the API: packets are tracked (sequence, loss) but not recorded, so
    /// the paused span becomes silence of the same length in the files.
    pub paused: bool,
    /// Also hand decoded frames to live transcription (STT runs, not paused by the API).
    pub transcribe: bool,
    /// Where the SRC said it sends from (its offer's c= address and m= port). Packets from
    /// there win the SSRC lock over anyone who got there first; `None` when unknown.
    pub expected_source: Option<SocketAddr>,
    /// SRTP keys when the stream is RTP/SAVP; the data plane decrypts before this receiver.
    pub srtp: Option<crate::srtp::SrtpParams>,
}

impl StreamParams {
    /// A plain (no SRTP), unpaused, unheld stream decoding `payload_types` at `sample_rate`
    /// with the RTP clock at the same rate: benches, tests and fuzzing. The session layer
    /// sets every field itself (`session::call::stream_params`).
    pub fn plain(
        key: StreamKey,
        payload_types: [Option<PayloadKind>; 128],
        sample_rate: u32,
    ) -> StreamParams {
        StreamParams {
            key,
            payload_types,
            sample_rate,
            clock_rate: sample_rate,
            held: false,
            paused: false,
            transcribe: false,
            expected_source: None,
            srtp: None,
        }
    }
}

/// Why a packet did not become audio. Each has a counter in [`RtpStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drop {
    Malformed,
    UnknownPayloadType,
    TelephoneEvent,
    ComfortNoise,
    Duplicate,
    TooOld,
    ForeignSsrc,
    Paused,
    /// Not a drop: RTCP multiplexed on the RTP port, handled by `handle_rtcp`.
    Rtcp,
    /// Not a drop: held until an earlier packet arrives or is given up (stateful codecs);
    /// its audio comes out of a later call.
    Held,
}

/// Per-stream counters, read by the control plane once a second (never per packet).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct RtpStats {
    pub packets: u64,
    pub bytes: u64,
    pub audio_packets: u64,
    /// Sequence numbers never seen, corrected when a late packet fills the hole.
    pub lost: u64,
    pub out_of_order: u64,
    pub duplicates: u64,
    pub too_old: u64,
    pub malformed: u64,
    pub unknown_pt: u64,
    pub telephone_events: u64,
    pub comfort_noise: u64,
    pub foreign_ssrc: u64,
    pub ssrc_changes: u64,
    pub ring_full: u64,
    /// Packets of stateful codecs (G.722, G.729, Opus) held after a hole so that they are
    /// decoded in sequence order, and those that came after their hole was given up (or were
    /// held when the SSRC changed), dropped.
    pub held_for_order: u64,
    pub too_late_for_decoder: u64,
    /// Audio packets not recorded because recording was paused.
    pub paused: u64,
    /// Samples made up for lost packets: G.711 repeat-and-fade, Opus FEC and concealment.
    pub concealed_samples: u64,
    /// Interarrival jitter we measured (RFC 3550 §6.4.1, A.8), in microseconds.
    pub jitter_us: u64,
    /// RTCP packets received for this stream (port + 1 or muxed) and what they said.
    pub rtcp_packets: u64,
    pub rtcp_sender_reports: u64,
    /// The sender's own packet count from its last SR (compare with `packets`).
    pub rtcp_sender_packet_count: Option<u32>,
    /// Loss and jitter the SRC's last report block gave (about the leg it receives).
    pub rtcp_reported_fraction_lost: Option<u8>,
    pub rtcp_reported_jitter: Option<u32>,
    /// SRTP/SRTCP packets dropped: tag mismatch, replayed or too old, or unusable
    /// (too short, unknown MKI).
    pub srtp_auth_failures: u64,
    pub srtp_replays: u64,
    pub srtp_malformed: u64,
    pub last_rx_ns: u64,
    pub ssrc: Option<u32>,
}

impl RtpStats {
    /// Adds `o`'s counters (not its SSRC or last-receive time): totals over many streams.
    pub fn add(&mut self, o: &RtpStats) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.audio_packets += o.audio_packets;
        self.lost += o.lost;
        self.out_of_order += o.out_of_order;
        self.duplicates += o.duplicates;
        self.too_old += o.too_old;
        self.malformed += o.malformed;
        self.unknown_pt += o.unknown_pt;
        self.telephone_events += o.telephone_events;
        self.comfort_noise += o.comfort_noise;
        self.foreign_ssrc += o.foreign_ssrc;
        self.ssrc_changes += o.ssrc_changes;
        self.ring_full += o.ring_full;
        self.held_for_order += o.held_for_order;
        self.too_late_for_decoder += o.too_late_for_decoder;
        self.paused += o.paused;
        self.concealed_samples += o.concealed_samples;
        self.rtcp_packets += o.rtcp_packets;
        self.rtcp_sender_reports += o.rtcp_sender_reports;
        self.srtp_auth_failures += o.srtp_auth_failures;
        self.srtp_replays += o.srtp_replays;
        self.srtp_malformed += o.srtp_malformed;
    }
}

/// After this long without a packet from the locked SSRC a new SSRC takes over at once.
const SSRC_GAP_NS: u64 = 60_000_000;
/// When the locked SSRC came from the SRC's signalled address, a source elsewhere takes over
/// only after this much silence (NAT rebinding), never by interleaving packets.
const TRUSTED_SSRC_GAP_NS: u64 = 1_000_000_000;
/// Without a gap, a new SSRC takes over after this many consecutive packets (a hard switch
/// by an SBC on transfer), so stray packets from elsewhere cannot steal the stream.
const SSRC_SWITCH_PACKETS: u32 = 3;
/// A sequence jump larger than this restarts tracking instead of counting thousands lost
/// (RFC 3550 A.1 MAX_DROPOUT).
const MAX_DROPOUT: u64 = 3000;
/// Sequence numbers tracked behind the highest one for duplicate detection.
const SEQ_WINDOW: u64 = 64;

/// The receive state of one stream. Lives on exactly one data-plane worker.
#[derive(Debug)]
pub struct RtpReceiver {
    params: StreamParams,
    ssrc: Option<u32>,
    /// The locked SSRC was seen from `params.expected_source`.
    ssrc_trusted: bool,
    ssrc_epoch: u32,
    candidate: Option<(u32, u32)>,
    highest_seq: u64,
    seen: u64,
    last_ext_ts: u64,
    started: bool,
    stats: RtpStats,
    /// Jitter estimator state: last transit time and the running estimate, in RTP units.
    transit: Option<i64>,
    jitter: f64,
    /// The RFC 4733 event in progress: its RTP timestamp, event code, first arrival, and
    /// whether it was already reported (its end packet is sent three times).
    dtmf: Option<(u32, u8, u64, bool)>,
    /// Completed digits waiting for the data plane to report them (at most two per packet;
    /// a few slots, allocated once).
    digits: std::collections::VecDeque<Dtmf>,
    /// The stream's G.722 and G.729 decoder states when its PT map has those codecs
    /// (allocated when the stream opens or is updated, never per packet).
    g722: Option<Box<super::g722::G722Decoder>>,
    g729: Option<crate::ffi::bcg729::G729Decoder>,
    opus: Option<Box<super::opus::OpusState>>,
    /// Loss concealment of G.711 streams.
    plc: Option<Box<super::plc::Plc>>,
    /// Packets missing right before the one being handled (by sequence number).
    lost_before: u64,
    /// In-order delivery for the stateful decoders (`reorder.rs`).
    reorder: Option<Box<Reorder>>,
}

/// A DTMF digit received as an RFC 4733 telephone-event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dtmf {
    /// `0`–`9`, `*`, `#`, `A`–`D`.
    pub digit: char,
    /// Arrival of its first packet (monotonic ns).
    pub start_ns: u64,
    pub duration_ms: u32,
}

/// Digits held between two reports by the data plane (it drains them after every packet).
const DIGITS_QUEUED: usize = 4;

fn dtmf_char(event: u8) -> Option<char> {
    match event {
        0..=9 => Some((b'0' + event) as char),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some((b'A' + event - 12) as char),
        _ => None,
    }
}

impl RtpReceiver {
    pub fn new(params: StreamParams) -> Self {
        let mut rx = RtpReceiver {
            g722: None,
            g729: None,
            opus: None,
            plc: None,
            lost_before: 0,
            reorder: None,
            params,
            ssrc: None,
            ssrc_trusted: false,
            ssrc_epoch: 0,
            candidate: None,
            highest_seq: 0,
            seen: 0,
            last_ext_ts: 0,
            started: false,
            stats: RtpStats::default(),
            transit: None,
            jitter: 0.0,
            dtmf: None,
            digits: std::collections::VecDeque::with_capacity(DIGITS_QUEUED),
        };
        rx.add_decoder_states();
        rx
    }

    /// Creates the per-stream decoder states the PT map needs and doesn't have yet (when the
    /// stream opens or a re-INVITE changes its codecs; never per packet). States already there
    /// carry on.
    fn add_decoder_states(&mut self) {
        let has = |kind| self.params.payload_types.contains(&Some(kind));
        if has(PayloadKind::G722) && self.g722.is_none() {
            self.g722 = Some(Box::default());
        }
        if has(PayloadKind::G729) && self.g729.is_none() {
            self.g729 = crate::ffi::bcg729::G729Decoder::new();
        }
        if has(PayloadKind::Opus) && self.opus.is_none() {
            self.opus = super::opus::OpusState::new().map(Box::new);
        }
        if (has(PayloadKind::Pcmu) || has(PayloadKind::Pcma)) && self.plc.is_none() {
            self.plc = Some(Box::default());
        }
        let stateful = has(PayloadKind::G722) || has(PayloadKind::G729) || has(PayloadKind::Opus);
        if stateful && self.reorder.is_none() {
            self.reorder = Some(Box::default());
        }
    }

    /// RFC 4733 §2.3: one event per RTP timestamp, its packets repeated with a growing
    /// duration, the last ones (E bit) up to three times. A digit is complete at its first E
    /// packet, or when the next event starts without one having arrived.
    fn track_dtmf(&mut self, now_ns: u64, ts: u32, payload: &[u8]) {
        let [event, flags, d0, d1, ..] = *payload else {
            return;
        };
        let end = flags & 0x80 != 0;
        let duration = u32::from(u16::from_be_bytes([d0, d1]));
        // telephone-event shares the codec's RTP clock (the answer only keeps it then).
        let rate = self.params.clock_rate.max(1);
        let ms = |units: u32| (u64::from(units) * 1000 / u64::from(rate)) as u32;
        match self.dtmf {
            Some((cur, _, _, reported)) if cur == ts => {
                if end && !reported {
                    if let Some((_, code, start, _)) = self.dtmf {
                        self.complete_digit(code, start, ms(duration));
                    }
                    self.dtmf = Some((ts, event, self.dtmf.map_or(now_ns, |d| d.2), true));
                }
            }
            previous => {
                if let Some((_, code, start, false)) = previous {
                    // Its end packets were lost: report it with what we know.
                    self.complete_digit(code, start, 0);
                }
                self.dtmf = Some((ts, event, now_ns, end));
                if end {
                    self.complete_digit(event, now_ns, ms(duration));
                }
            }
        }
    }

    fn complete_digit(&mut self, event: u8, start_ns: u64, duration_ms: u32) {
        if let Some(digit) = dtmf_char(event) {
            if self.digits.len() == DIGITS_QUEUED {
                self.digits.pop_front();
            }
            self.digits.push_back(Dtmf {
                digit,
                start_ns,
                duration_ms,
            });
        }
    }

    /// A digit completed by the last packets, oldest first (the data plane reports them at
    /// once).
    pub fn take_digit(&mut self) -> Option<Dtmf> {
        self.digits.pop_front()
    }

    /// Handles an RTCP packet for this stream (its port + 1, or muxed on the RTP port).
    pub fn handle_rtcp(&mut self, packet: &[u8]) {
        self.stats.rtcp_packets += 1;
        let Some(s) = super::rtcp::parse(packet) else {
            self.stats.malformed += 1;
            return;
        };
        self.stats.rtcp_sender_reports += u64::from(s.sender_reports);
        if s.sender_packets.is_some() {
            self.stats.rtcp_sender_packet_count = s.sender_packets;
        }
        if s.fraction_lost.is_some() {
            self.stats.rtcp_reported_fraction_lost = s.fraction_lost;
            self.stats.rtcp_reported_jitter = s.jitter;
        }
    }

    pub fn params(&self) -> &StreamParams {
        &self.params
    }

    /// Replaces PT map and hold state (re-INVITE); SSRC, sequence and decoder state carry on.
    pub fn update(&mut self, params: StreamParams) {
        debug_assert_eq!(params.key, self.params.key);
        self.params = params;
        self.add_decoder_states();
    }

    pub fn stats(&self) -> &RtpStats {
        &self.stats
    }

    /// Counts an SRTP packet the data plane dropped before it reached this receiver.
    pub fn count_srtp_drop(&mut self, e: crate::srtp::SrtpError) {
        use crate::srtp::SrtpError;
        match e {
            SrtpError::AuthFailed => self.stats.srtp_auth_failures += 1,
            SrtpError::Replay => self.stats.srtp_replays += 1,
            SrtpError::Malformed | SrtpError::UnknownMki => self.stats.srtp_malformed += 1,
        }
    }

    pub fn count_ring_full(&mut self) {
        self.stats.ring_full += 1;
    }

    /// Handles one datagram received at `now_ns`. On audio, fills `frame` in place (the caller
    /// owns it, so nothing is allocated) and returns `Ok`; otherwise the counted reason.
    pub fn handle_packet(
        &mut self,
        now_ns: u64,
        packet: &[u8],
        frame: &mut MediaFrame,
    ) -> Result<(), Drop> {
        self.handle_packet_from(now_ns, None, packet, frame)
    }

    /// [`RtpReceiver::handle_packet`] knowing the datagram's source address, so the SRC's
    /// signalled address wins the SSRC lock over packets injected from elsewhere.
    pub fn handle_packet_from(
        &mut self,
        now_ns: u64,
        source: Option<SocketAddr>,
        packet: &[u8],
        frame: &mut MediaFrame,
    ) -> Result<(), Drop> {
        // RTCP under rtcp-mux (RFC 5761 §4): packet types 200–204 on the RTP port.
        if packet.len() >= 2 && packet[0] >> 6 == 2 && (200..=204).contains(&packet[1]) {
            self.handle_rtcp(packet);
            return Err(Drop::Rtcp);
        }
        self.stats.packets += 1;
        self.stats.bytes += packet.len() as u64;
        let header = match parse_header(packet) {
            Some(h) => h,
            None => {
                self.stats.malformed += 1;
                return Err(Drop::Malformed);
            }
        };
        let trusted = source.is_some() && source == self.params.expected_source;
        self.lock_ssrc(now_ns, header.ssrc, trusted)?;
        self.stats.last_rx_ns = now_ns;

        let kind = match self.params.payload_types[header.pt as usize] {
            Some(kind) => kind,
            None => {
                self.stats.unknown_pt += 1;
                return Err(Drop::UnknownPayloadType);
            }
        };
        let seq = self.track_sequence(header.seq)?;
        let ext_ts = self.extend_timestamp(header.timestamp);
        self.update_jitter(now_ns, ext_ts);
        let payload = &packet[header.payload_start..header.payload_end];
        let stateful = matches!(
            kind,
            PayloadKind::G722 | PayloadKind::G729 | PayloadKind::Opus
        );
        if let Some(reorder) = self.reorder.as_deref_mut() {
            if !stateful {
                reorder.seen(seq);
            } else {
                match reorder.arrive(seq) {
                    Arrival::Now => {}
                    Arrival::Late => {
                        self.stats.too_late_for_decoder += 1;
                        return Err(Drop::TooOld);
                    }
                    Arrival::Hold => {
                        reorder.hold(seq, ext_ts, now_ns, header.marker, kind, payload);
                        self.stats.held_for_order += 1;
                        return self.release_held(frame);
                    }
                }
            }
        }
        match kind {
            PayloadKind::TelephoneEvent => {
                self.stats.telephone_events += 1;
                self.track_dtmf(now_ns, header.timestamp, payload);
                Err(Drop::TelephoneEvent)
            }
            PayloadKind::ComfortNoise => {
                self.stats.comfort_noise += 1;
                Err(Drop::ComfortNoise)
            }
            _ => self.decode_audio(now_ns, kind, ext_ts, header.marker, payload, frame),
        }
    }

    /// Decodes the oldest held packet that may go now into `frame`; `Drop::Held` if none.
    fn release_held(&mut self, frame: &mut MediaFrame) -> Result<(), Drop> {
        while let Some(held) = self.reorder.as_deref_mut().and_then(|r| r.release()) {
            let payload = held.payload();
            let decoded = self.decode_audio(
                held.arrival_ns,
                held.kind,
                held.ext_ts,
                held.marker,
                payload,
                frame,
            );
            // A paused or malformed packet is counted by `decode_audio`; try the next.
            if decoded.is_ok() {
                return Ok(());
            }
        }
        Err(Drop::Held)
    }

    /// Decodes one audio packet (in sequence order for stateful codecs) into `frame`.
    fn decode_audio(
        &mut self,
        now_ns: u64,
        kind: PayloadKind,
        ext_ts: u64,
        marker: bool,
        payload: &[u8],
        frame: &mut MediaFrame,
    ) -> Result<(), Drop> {
        // (stateless decoder, bytes per sample); None for the stateful codecs.
        let (decode, width): (Option<Decoder>, usize) = match kind {
            PayloadKind::Pcmu => (Some(g711::decode_ulaw), 1),
            PayloadKind::Pcma => (Some(g711::decode_alaw), 1),
            PayloadKind::L16 => (Some(decode_l16), 2),
            _ => (None, 1),
        };
        if payload.len() < width {
            self.stats.malformed += 1;
            return Err(Drop::Malformed);
        }
        // Longer payloads (> 120 ms of G.711, > 60 ms of G.722, > 20 ms of 48 kHz L16) are cut
        // at FRAME_SAMPLES_MAX: outside RFC 3551's recommendations, and no vendor we know
        // sends them. An odd trailing L16 byte is ignored.
        // Where the frame starts when the decoder says so (Opus after filling a gap).
        let mut frame_at = None;
        let n = match (decode, kind) {
            (Some(decode), _) => {
                if self.params.paused {
                    self.stats.paused += 1;
                    return Err(Drop::Paused);
                }
                let n = (payload.len() / width).min(FRAME_SAMPLES_MAX);
                decode(&payload[..n * width], &mut frame.samples[..n]);
                if let (PayloadKind::Pcmu | PayloadKind::Pcma, Some(plc)) =
                    (kind, self.plc.as_deref_mut())
                {
                    // A marker bit starts a talkspurt: the silence before it was meant.
                    let lost = if marker { 0 } else { self.lost_before };
                    plc.after_packet(ext_ts, &frame.samples[..n], lost);
                }
                n
            }
            // Stateful decoders run even while paused: their predictors must follow the
            // encoder's. A PT map with them always comes with their state (`new`, `update`).
            (None, PayloadKind::G722) => {
                let Some(g722) = self.g722.as_deref_mut() else {
                    self.stats.unknown_pt += 1;
                    return Err(Drop::UnknownPayloadType);
                };
                let bytes = payload.len().min(FRAME_SAMPLES_MAX / 2);
                let n = g722.decode(&payload[..bytes], &mut frame.samples[..bytes * 2]);
                if self.params.paused {
                    self.stats.paused += 1;
                    return Err(Drop::Paused);
                }
                n
            }
            (None, PayloadKind::Opus) => {
                let Some(opus) = self.opus.as_deref_mut() else {
                    self.stats.unknown_pt += 1;
                    return Err(Drop::UnknownPayloadType);
                };
                let before = opus.concealed;
                if !opus.decode(payload, ext_ts) {
                    self.stats.malformed += 1;
                    return Err(Drop::Malformed);
                }
                self.stats.concealed_samples += opus.concealed - before;
                if self.params.paused {
                    opus.discard();
                    self.stats.paused += 1;
                    return Err(Drop::Paused);
                }
                // The first frame here; the rest through `next_frame`.
                let Some((at, n)) = opus.take(&mut frame.samples) else {
                    self.stats.malformed += 1;
                    return Err(Drop::Malformed);
                };
                frame_at = Some(at);
                n
            }
            (None, _) => {
                let Some(g729) = self.g729.as_mut() else {
                    self.stats.unknown_pt += 1;
                    return Err(Drop::UnknownPayloadType);
                };
                let n = decode_g729(g729, payload, &mut frame.samples);
                if n == 0 {
                    self.stats.malformed += 1;
                    return Err(Drop::Malformed);
                }
                if self.params.paused {
                    self.stats.paused += 1;
                    return Err(Drop::Paused);
                }
                n
            }
        };
        frame.key = self.params.key;
        frame.arrival_ns = now_ns;
        // Sample positions at the decoded rate (G.722: two per RTP timestamp unit).
        frame.ext_ts = if let Some(at) = frame_at {
            at
        } else if self.params.sample_rate == self.params.clock_rate {
            ext_ts
        } else {
            ext_ts * u64::from(self.params.sample_rate) / u64::from(self.params.clock_rate.max(1))
        };
        frame.ssrc_epoch = self.ssrc_epoch;
        frame.sample_rate = self.params.sample_rate;
        frame.len = n as u16;
        self.stats.audio_packets += 1;
        Ok(())
    }

    /// More audio of the packet just handled, when it decoded to more than one frame (Opus
    /// packets over 20 ms, or a filled gap before one): fills `frame` (keeping the fields the
    /// packet's frame set) and returns true, until there is none.
    pub fn next_frame(&mut self, frame: &mut MediaFrame) -> bool {
        if let Some((at, n)) = self
            .plc
            .as_deref_mut()
            .and_then(|plc| plc.take(&mut frame.samples))
        {
            frame.ext_ts = at;
            frame.len = n as u16;
            self.stats.concealed_samples += n as u64;
            return true;
        }
        if let Some((at, n)) = self
            .opus
            .as_deref_mut()
            .and_then(|opus| opus.take(&mut frame.samples))
        {
            frame.ext_ts = at;
            frame.len = n as u16;
            return true;
        }
        // Packets held for order that may go now.
        self.release_held(frame).is_ok()
    }

    /// SSRC lock: the first SSRC is recorded; another takes over when it comes from the SRC's
    /// signalled address, after the locked one fell silent, or after a steady run of packets —
    /// but a stream locked from the signalled address is only taken over after a long silence,
    /// so packets injected from elsewhere can't steal it by interleaving.
    fn lock_ssrc(&mut self, now_ns: u64, ssrc: u32, trusted: bool) -> Result<(), Drop> {
        match self.ssrc {
            Some(locked) if locked == ssrc => {
                self.candidate = None;
                self.ssrc_trusted |= trusted;
                Ok(())
            }
            Some(_) if trusted => {
                self.switch_ssrc(ssrc);
                self.ssrc_trusted = true;
                Ok(())
            }
            Some(_) => {
                let silent_ns = now_ns.saturating_sub(self.stats.last_rx_ns);
                let takeover = if self.ssrc_trusted {
                    silent_ns >= TRUSTED_SSRC_GAP_NS
                } else {
                    let count = match self.candidate {
                        Some((c, n)) if c == ssrc => n + 1,
                        _ => 1,
                    };
                    self.candidate = Some((ssrc, count));
                    silent_ns >= SSRC_GAP_NS || count >= SSRC_SWITCH_PACKETS
                };
                if takeover {
                    self.switch_ssrc(ssrc);
                    self.ssrc_trusted = false;
                    Ok(())
                } else {
                    self.stats.foreign_ssrc += 1;
                    Err(Drop::ForeignSsrc)
                }
            }
            None => {
                self.ssrc = Some(ssrc);
                self.stats.ssrc = Some(ssrc);
                self.ssrc_trusted = trusted;
                Ok(())
            }
        }
    }

    fn switch_ssrc(&mut self, ssrc: u32) {
        self.ssrc = Some(ssrc);
        self.stats.ssrc = Some(ssrc);
        self.stats.ssrc_changes += 1;
        self.ssrc_epoch += 1;
        self.candidate = None;
        self.started = false;
        self.last_ext_ts = 0;
        self.transit = None;
        if let Some(reorder) = self.reorder.as_deref_mut() {
            self.stats.too_late_for_decoder += reorder.reset() as u64;
        }
    }

    /// Extends the 16-bit sequence number, detects duplicates and counts loss/reordering.
    fn track_sequence(&mut self, seq: u16) -> Result<u64, Drop> {
        self.lost_before = 0;
        if !self.started {
            self.started = true;
            self.highest_seq = (1 << 16) + seq as u64; // Room below for early reordering.
            self.seen = 1;
            return Ok(self.highest_seq);
        }
        let delta = seq.wrapping_sub(self.highest_seq as u16) as i16 as i64;
        let ext = (self.highest_seq as i64 + delta) as u64;
        if ext > self.highest_seq {
            let ahead = ext - self.highest_seq;
            if ahead > MAX_DROPOUT {
                // The sender restarted its sequence; don't book thousands of losses.
                self.highest_seq = ext;
                self.seen = 1;
                return Ok(ext);
            }
            self.stats.lost += ahead - 1;
            self.lost_before = ahead - 1;
            self.seen = if ahead >= SEQ_WINDOW {
                0
            } else {
                self.seen << ahead
            };
            self.seen |= 1;
            self.highest_seq = ext;
            Ok(ext)
        } else {
            let behind = self.highest_seq - ext;
            if behind >= SEQ_WINDOW {
                self.stats.too_old += 1;
                return Err(Drop::TooOld);
            }
            let bit = 1u64 << behind;
            if self.seen & bit != 0 {
                self.stats.duplicates += 1;
                return Err(Drop::Duplicate);
            }
            self.seen |= bit;
            self.stats.out_of_order += 1;
            self.stats.lost = self.stats.lost.saturating_sub(1);
            Ok(ext)
        }
    }

    /// RFC 3550 A.8: J += (|D| − J) / 16, D the change in transit time, in RTP units.
    fn update_jitter(&mut self, now_ns: u64, ext_ts: u64) {
        let rate = u64::from(self.params.clock_rate.max(1));
        let arrival = (now_ns as u128 * rate as u128 / 1_000_000_000) as i64;
        let transit = arrival - ext_ts as i64;
        if let Some(last) = self.transit {
            let d = (transit - last).unsigned_abs() as f64;
            self.jitter += (d - self.jitter) / 16.0;
            self.stats.jitter_us = (self.jitter * 1e6 / rate as f64) as u64;
        }
        self.transit = Some(transit);
    }

    fn extend_timestamp(&mut self, ts: u32) -> u64 {
        if self.last_ext_ts == 0 {
            self.last_ext_ts = (1u64 << 32) + ts as u64;
            return self.last_ext_ts;
        }
        let delta = ts.wrapping_sub(self.last_ext_ts as u32) as i32 as i64;
        let ext = (self.last_ext_ts as i64 + delta) as u64;
        if ext > self.last_ext_ts {
            self.last_ext_ts = ext;
        }
        ext
    }
}

/// The fields of an RTP header we use, with the payload's range inside the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub pt: u8,
    pub marker: bool,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload_start: usize,
    pub payload_end: usize,
}

/// Parses an RTP header (RFC 3550 §5.1): version 2, CSRCs, extension and padding handled.
/// Returns `None` for anything malformed; never panics.
pub fn parse_header(packet: &[u8]) -> Option<RtpHeader> {
    if packet.len() < 12 || packet[0] >> 6 != 2 {
        return None;
    }
    let padding = packet[0] & 0x20 != 0;
    let extension = packet[0] & 0x10 != 0;
    let csrc_count = (packet[0] & 0x0F) as usize;
    let pt = packet[1] & 0x7F;
    // RTCP packet types 200-204 share the port under rtcp-mux (RFC 5761 §4): PT 72-76 here.
    if (72..=76).contains(&pt) {
        return None;
    }
    let mut start = 12 + 4 * csrc_count;
    if extension {
        let ext = packet.get(start..start + 4)?;
        let words = u16::from_be_bytes([ext[2], ext[3]]) as usize;
        start += 4 + 4 * words;
    }
    let mut end = packet.len();
    if padding {
        let pad = *packet.last()? as usize;
        if pad == 0 {
            return None;
        }
        end = end.checked_sub(pad)?;
    }
    if start > end {
        return None;
    }
    Some(RtpHeader {
        pt,
        marker: packet[1] & 0x80 != 0,
        seq: u16::from_be_bytes([packet[2], packet[3]]),
        timestamp: u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]),
        ssrc: u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]),
        payload_start: start,
        payload_end: end,
    })
}

/// Writes a minimal RTP packet (no CSRC, no extension) into `out`; for the test SRC and bench.
pub fn write_packet(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&[0x80, pt & 0x7F]);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&ts.to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(payload);
}

impl MediaFrame {
    /// A zeroed frame to be filled by [`RtpReceiver::handle_packet`].
    pub fn empty() -> Self {
        MediaFrame {
            key: StreamKey {
                session: 0,
                stream: 0,
            },
            arrival_ns: 0,
            ext_ts: 0,
            ssrc_epoch: 0,
            sample_rate: 0,
            len: 0,
            samples: [0; FRAME_SAMPLES_MAX],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> StreamParams {
        let mut payload_types = [None; 128];
        payload_types[0] = Some(PayloadKind::Pcmu);
        payload_types[101] = Some(PayloadKind::TelephoneEvent);
        payload_types[13] = Some(PayloadKind::ComfortNoise);
        let key = StreamKey {
            session: 1,
            stream: 0,
        };
        StreamParams::plain(key, payload_types, 8000)
    }

    fn pkt(pt: u8, seq: u16, ts: u32, ssrc: u32) -> Vec<u8> {
        let mut out = Vec::new();
        write_packet(pt, seq, ts, ssrc, &[0xFF; 160], &mut out);
        out
    }

    /// In-order G.711 packets decode to 160 samples with increasing extended timestamps.
    #[test]
    fn decodes_in_order() {
        let mut rx = RtpReceiver::new(params());
        let mut f = MediaFrame::empty();
        rx.handle_packet(0, &pkt(0, 10, 1000, 7), &mut f).unwrap();
        let first = f.ext_ts;
        assert_eq!(f.len, 160);
        rx.handle_packet(20, &pkt(0, 11, 1160, 7), &mut f).unwrap();
        assert_eq!(f.ext_ts - first, 160);
        assert_eq!(rx.stats().lost, 0);
    }

    /// A lost G.711 packet: the next packet's frame, then (next_frame) a concealment frame
    /// where the lost one belonged; nothing more after that, nor for a packet after a gap in
    /// timestamps only (silence suppression).
    #[test]
    fn g711_loss_is_concealed() {
        let loud = |seq: u16, ts: u32| {
            let mut out = Vec::new();
            write_packet(0, seq, ts, 7, &[0x20; 160], &mut out);
            out
        };
        let mut rx = RtpReceiver::new(params());
        let mut f = MediaFrame::empty();
        rx.handle_packet(0, &loud(1, 0), &mut f).unwrap();
        let first = f.ext_ts;
        assert!(!rx.next_frame(&mut f));
        rx.handle_packet(40, &loud(3, 320), &mut f).unwrap();
        assert_eq!(f.ext_ts - first, 320);
        assert!(rx.next_frame(&mut f));
        assert_eq!((f.ext_ts - first, f.len), (160, 160));
        assert!(f.samples[..160].iter().any(|&x| x != 0));
        assert_eq!(rx.stats().concealed_samples, 160);
        assert!(!rx.next_frame(&mut f));
        rx.handle_packet(60, &loud(4, 2000), &mut f).unwrap();
        assert!(!rx.next_frame(&mut f));
    }

    /// Sequence and timestamp wrap without a discontinuity.
    #[test]
    fn wraps() {
        let mut rx = RtpReceiver::new(params());
        let mut f = MediaFrame::empty();
        rx.handle_packet(0, &pkt(0, 65535, u32::MAX - 79, 7), &mut f)
            .unwrap();
        let first = f.ext_ts;
        rx.handle_packet(1, &pkt(0, 0, 80, 7), &mut f).unwrap();
        assert_eq!(f.ext_ts - first, 160);
        assert_eq!(rx.stats().lost, 0);
    }

    /// A duplicate is dropped; a late packet fills its hole and un-counts the loss.
    #[test]
    fn duplicate_and_reorder() {
        let mut rx = RtpReceiver::new(params());
        let mut f = MediaFrame::empty();
        rx.handle_packet(0, &pkt(0, 1, 0, 7), &mut f).unwrap();
        rx.handle_packet(0, &pkt(0, 3, 320, 7), &mut f).unwrap();
        assert_eq!(rx.stats().lost, 1);
        rx.handle_packet(0, &pkt(0, 2, 160, 7), &mut f).unwrap();
        assert_eq!(rx.stats().lost, 0);
        assert_eq!(rx.stats().out_of_order, 1);
        assert_eq!(
            rx.handle_packet(0, &pkt(0, 2, 160, 7), &mut f),
            Err(Drop::Duplicate)
        );
        assert_eq!(
            rx.handle_packet(0, &pkt(0, 3, 320, 7), &mut f),
            Err(Drop::Duplicate)
        );
    }

    /// telephone-event and comfort noise never reach the audio; unknown PTs are counted.
    #[test]
    fn dtmf_cn_unknown() {
        let mut rx = RtpReceiver::new(params());
        let mut f = MediaFrame::empty();
        assert_eq!(
            rx.handle_packet(0, &pkt(101, 1, 0, 7), &mut f),
            Err(Drop::TelephoneEvent)
        );
        assert_eq!(
            rx.handle_packet(0, &pkt(13, 2, 0, 7), &mut f),
            Err(Drop::ComfortNoise)
        );
        assert_eq!(
            rx.handle_packet(0, &pkt(96, 3, 0, 7), &mut f),
            Err(Drop::UnknownPayloadType)
        );
        assert_eq!(rx.stats().unknown_pt, 1);
    }

    /// A foreign SSRC interleaved with the locked one is dropped; after a gap, or after a
    /// steady run of packets, the new SSRC takes over with a new epoch.
    #[test]
    fn ssrc_lock_and_switch() {
        let ms = 1_000_000;
        let mut rx = RtpReceiver::new(params());
        let mut f = MediaFrame::empty();
        rx.handle_packet(0, &pkt(0, 1, 0, 7), &mut f).unwrap();
        assert_eq!(
            rx.handle_packet(ms, &pkt(0, 500, 0, 9), &mut f),
            Err(Drop::ForeignSsrc)
        );
        rx.handle_packet(2 * ms, &pkt(0, 2, 160, 7), &mut f)
            .unwrap();
        rx.handle_packet(200 * ms, &pkt(0, 900, 5000, 9), &mut f)
            .unwrap();
        assert_eq!(f.ssrc_epoch, 1);
        assert_eq!(rx.stats().lost, 0);
        // A hard switch without a gap takes over on the third packet.
        assert!(rx
            .handle_packet(201 * ms, &pkt(0, 50, 0, 11), &mut f)
            .is_err());
        assert!(rx
            .handle_packet(202 * ms, &pkt(0, 51, 160, 11), &mut f)
            .is_err());
        rx.handle_packet(203 * ms, &pkt(0, 52, 320, 11), &mut f)
            .unwrap();
        assert_eq!(f.ssrc_epoch, 2);
    }

    /// Packets injected from elsewhere, even first and interleaved, can't hold the lock
    /// against the SRC's signalled address; once it holds it they are foreign.
    #[test]
    fn signalled_source_wins_the_lock() {
        let ms = 1_000_000;
        let src: SocketAddr = "198.51.100.7:4000".parse().unwrap();
        let evil: SocketAddr = "198.51.100.66:9999".parse().unwrap();
        let mut p = params();
        p.expected_source = Some(src);
        let mut rx = RtpReceiver::new(p);
        let mut f = MediaFrame::empty();
        rx.handle_packet_from(0, Some(evil), &pkt(0, 1, 0, 0xBAD), &mut f)
            .unwrap();
        rx.handle_packet_from(ms, Some(src), &pkt(0, 100, 0, 7), &mut f)
            .unwrap();
        assert_eq!(rx.stats().ssrc, Some(7));
        for i in 0..10u16 {
            let t = (2 + u64::from(i)) * ms;
            let r = rx.handle_packet_from(t, Some(evil), &pkt(0, 2 + i, 0, 0xBAD), &mut f);
            assert_eq!(r, Err(Drop::ForeignSsrc));
            rx.handle_packet_from(t, Some(src), &pkt(0, 101 + i, 160, 7), &mut f)
                .unwrap();
        }
        // After a long silence of the signalled source, another may take over (NAT).
        rx.handle_packet_from(2_000 * ms, Some(evil), &pkt(0, 50, 0, 0x0A7), &mut f)
            .unwrap();
        assert_eq!(rx.stats().ssrc, Some(0x0A7));
    }

    /// Evenly paced packets have no jitter; ±5 ms alternating arrival shows about 10 ms.
    #[test]
    fn jitter_estimate() {
        let ms = 1_000_000u64;
        let mut rx = RtpReceiver::new(params());
        let mut f = MediaFrame::empty();
        for i in 0..200u32 {
            rx.handle_packet(
                1_000 * ms + u64::from(i) * 20 * ms,
                &pkt(0, i as u16, i * 160, 7),
                &mut f,
            )
            .unwrap();
        }
        assert!(rx.stats().jitter_us < 200, "{}", rx.stats().jitter_us);
        let mut rx = RtpReceiver::new(params());
        for i in 0..400u32 {
            let skew = if i % 2 == 0 { 0 } else { 10 * ms };
            let at = 1_000 * ms + u64::from(i) * 20 * ms + skew;
            rx.handle_packet(at, &pkt(0, i as u16, i * 160, 7), &mut f)
                .unwrap();
        }
        let j = rx.stats().jitter_us;
        assert!((8_000..=11_000).contains(&j), "{j}");
    }

    /// RTCP muxed on the RTP port is handled as RTCP, never as audio.
    #[test]
    fn muxed_rtcp() {
        let mut rx = RtpReceiver::new(params());
        let mut f = MediaFrame::empty();
        let mut sr = Vec::new();
        crate::media::rtcp::write_sender_report(7, 0, 10, 1600, &mut sr);
        assert_eq!(rx.handle_packet(0, &sr, &mut f), Err(Drop::Rtcp));
        assert_eq!(rx.stats().rtcp_sender_reports, 1);
        assert_eq!(rx.stats().rtcp_sender_packet_count, Some(10));
        assert_eq!(rx.stats().packets, 0);
    }

    /// Malformed headers (short, wrong version, padding longer than the packet, extension
    /// past the end, RTCP under mux) are rejected without panicking.
    #[test]
    fn malformed() {
        assert!(parse_header(&[0x80; 11]).is_none());
        assert!(parse_header(&[0x40; 20]).is_none());
        let mut p = pkt(0, 1, 0, 1);
        p[0] |= 0x20;
        *p.last_mut().unwrap() = 255;
        assert!(parse_header(&p).is_none());
        let mut p = pkt(0, 1, 0, 1);
        p[0] |= 0x10;
        p[14] = 0xFF;
        p[15] = 0xFF;
        assert!(parse_header(&p).is_none());
        let mut p = pkt(0, 1, 0, 1);
        p[1] = 200;
        assert!(parse_header(&p).is_none());
        // Every prefix of a valid packet with extension and CSRCs: no panic.
        let mut p = pkt(0, 1, 0, 1);
        p[0] = 0x92;
        for n in 0..p.len() {
            let _ = parse_header(&p[..n]);
        }
    }

    /// RFC 4733: one digit per event timestamp, reported at its first E packet with its
    /// duration (the repeated E packets are not new digits); a digit whose E packets were
    /// lost is reported when the next one starts.
    #[test]
    fn dtmf_digits() {
        let mut p = params();
        p.payload_types[101] = Some(PayloadKind::TelephoneEvent);
        let mut r = RtpReceiver::new(p);
        let mut frame = MediaFrame::empty();
        let mut seq = 0u16;
        let mut send = |r: &mut RtpReceiver, at_ms: u64, ts: u32, payload: [u8; 4]| {
            let mut pkt = Vec::new();
            write_packet(101, seq, ts, 9, &payload, &mut pkt);
            seq += 1;
            let _ = r.handle_packet(at_ms * 1_000_000, &pkt, &mut frame);
            std::iter::from_fn(|| r.take_digit()).collect::<Vec<_>>()
        };
        let mut digits = Vec::new();
        // '#' (11): 5 packets, then E three times with duration 800 (100 ms).
        for i in 0..5u16 {
            let d = 160 * (i + 1);
            digits.extend(send(
                &mut r,
                1000 + 20 * i as u64,
                8000,
                [11, 10, (d >> 8) as u8, d as u8],
            ));
        }
        for _ in 0..3 {
            digits.extend(send(&mut r, 1100, 8000, [11, 0x8a, 0x03, 0x20]));
        }
        // '7': its E packets are lost; then 'A' (12) arrives with a single E packet.
        digits.extend(send(&mut r, 2000, 16000, [7, 10, 0, 160]));
        digits.extend(send(&mut r, 3000, 24000, [12, 0x8a, 0x01, 0x40]));
        let got: Vec<(char, u64, u32)> = digits
            .iter()
            .map(|d| (d.digit, d.start_ns / 1_000_000, d.duration_ms))
            .collect();
        assert_eq!(got, [('#', 1000, 100), ('7', 2000, 0), ('A', 3000, 40)]);
    }
}
