//! Opus in Ogg (RFC 7845) for recordings: a crash-safe streaming writer and a reader.
//!
//! 20 ms Opus packets (libopus, VoIP mode) are gathered into Ogg pages; a page goes to the file
//! when it fills and at every checkpoint (each second), so a crash loses at most the audio since
//! the last one and the file stays playable: every page on disk is whole, with its CRC and
//! granule position. `finish` encodes the encoder's look-ahead out, then marks the last page
//! end-of-stream with a granule position that trims the padding of the last packet, so the
//! decoded length equals what was recorded, sample for sample.
//!
//! Opus takes 8, 12, 16, 24 or 48 kHz and one or two channels in this mapping (family 0); the
//! recorder writes other streams as WAV.

use std::path::Path;

use opus::{Application, Bitrate, Channels, Decoder, Encoder};

use super::appendfile::AppendFile;
use super::encrypt::Sealer;
use super::wav::WavInfo;
use super::RecorderError;

/// Rates Opus encodes natively.
pub const RATES: [u32; 5] = [8000, 12000, 16000, 24000, 48000];
/// Lacing values per page: 255 is Ogg's limit.
const MAX_SEGMENTS: usize = 255;
/// libopus's encoder complexity (0–10, default 10): 5 takes 45 % less CPU than 10 (the
/// `encode_1s` bench, perf/README.md), for a recording format chosen to save storage.
const COMPLEXITY: i32 = 5;
/// Largest packet we ask libopus for (RFC 6716 caps a frame at 1275 bytes).
const MAX_PACKET: usize = 1500;

pub struct OggOpusWriter {
    file: AppendFile,
    encoder: Encoder,
    channels: u16,
    sample_rate: u32,
    serial: u32,
    /// Next page's sequence number.
    sequence: u32,
    /// Samples (per channel, at 48 kHz) the decoder drops at the start: the encoder's delay.
    pre_skip: u64,
    /// Interleaved samples not yet in a packet (less than one 20 ms frame).
    pending: Vec<i16>,
    /// Sample frames accepted, at the input rate.
    frames_in: u64,
    /// Sample frames in packets so far, at the input rate.
    frames_packed: u64,
    /// The page being filled: its lacing values and packet bytes.
    lacing: Vec<u8>,
    body: Vec<u8>,
    packet: Vec<u8>,
    finished: bool,
}

impl OggOpusWriter {
    /// `bitrate` is in bit/s per channel; encrypted at rest when `sealer` is given.
    pub fn create(
        path: &Path,
        channels: u16,
        sample_rate: u32,
        bitrate: u32,
        sealer: Option<Sealer>,
    ) -> Result<OggOpusWriter, RecorderError> {
        let opus_err = |e: opus::Error| RecorderError::io("opus", path, std::io::Error::other(e));
        let layout = match channels {
            1 => Channels::Mono,
            2 => Channels::Stereo,
            _ => {
                let e = std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "Opus takes 1–2 channels",
                );
                return Err(RecorderError::io("opus", path, e));
            }
        };
        let mut encoder = Encoder::new(sample_rate, layout, Application::Voip).map_err(opus_err)?;
        let bits = i32::try_from(bitrate.saturating_mul(u32::from(channels))).unwrap_or(i32::MAX);
        encoder.set_bitrate(Bitrate::Bits(bits)).map_err(opus_err)?;
        encoder.set_complexity(COMPLEXITY).map_err(opus_err)?;
        let lookahead = encoder.get_lookahead().map_err(opus_err)?;
        let pre_skip = u64::try_from(lookahead).unwrap_or(0) * 48_000 / u64::from(sample_rate);
        let serial = path_serial(path);
        let mut head = Vec::with_capacity(160);
        let opus_head = opus_head(channels, pre_skip as u16, sample_rate);
        push_page(
            &mut head,
            serial,
            0,
            0x02,
            0,
            &[opus_head.len() as u8],
            &opus_head,
        );
        let tags = opus_tags();
        push_page(&mut head, serial, 1, 0x00, 0, &[tags.len() as u8], &tags);
        let file = AppendFile::create(path, &head, sealer)?;
        Ok(OggOpusWriter {
            file,
            encoder,
            channels,
            sample_rate,
            serial,
            sequence: 2,
            pre_skip,
            pending: Vec::with_capacity(frame_len(sample_rate) * usize::from(channels)),
            frames_in: 0,
            frames_packed: 0,
            lacing: Vec::with_capacity(MAX_SEGMENTS),
            body: Vec::new(),
            packet: vec![0; MAX_PACKET],
            finished: false,
        })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    pub fn write_interleaved(&mut self, samples: &[i16]) -> Result<(), RecorderError> {
        self.file.check()?;
        let frame = frame_len(self.sample_rate) * usize::from(self.channels);
        self.frames_in += (samples.len() / usize::from(self.channels)) as u64;
        let mut rest = samples;
        while !rest.is_empty() {
            let take = rest.len().min(frame - self.pending.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == frame {
                self.encode_pending()?;
            }
        }
        Ok(())
    }

    /// Ends the page being filled and writes it out (the audio of a partial 20 ms frame stays
    /// pending); optionally fdatasyncs.
    pub fn checkpoint(&mut self, sync: bool) -> Result<(), RecorderError> {
        self.end_page(false)?;
        self.file.flush()?;
        if sync {
            self.file.sync()?;
        }
        Ok(())
    }

    /// Pads and encodes the last frame, drains the encoder's delay, and ends the stream with a
    /// page whose granule position trims the padding.
    pub fn finish(mut self, sync: bool) -> Result<WavInfo, RecorderError> {
        self.finished = true;
        let frame = frame_len(self.sample_rate) * usize::from(self.channels);
        let lookahead = self.pre_skip * u64::from(self.sample_rate) / 48_000;
        // At least one packet, so that the end-of-stream page carries the final granule.
        while self.frames_packed < self.frames_in + lookahead || self.lacing.is_empty() {
            self.pending.resize(frame, 0);
            self.encode_pending()?;
        }
        self.end_page(true)?;
        self.file.flush()?;
        self.file.seal_end()?;
        if sync {
            self.file.sync()?;
        }
        Ok(WavInfo {
            path: self.path().to_path_buf(),
            channels: self.channels,
            sample_rate: self.sample_rate,
            frames: self.frames_in,
            key_id: self.file.key_id().map(str::to_owned),
        })
    }

    fn encode_pending(&mut self) -> Result<(), RecorderError> {
        let len = self
            .encoder
            .encode(&self.pending, &mut self.packet)
            .map_err(|e| {
                RecorderError::io("opus encode", self.file.path(), std::io::Error::other(e))
            })?;
        self.pending.clear();
        self.frames_packed += frame_len(self.sample_rate) as u64;
        let segments = len / 255 + 1;
        if self.lacing.len() + segments > MAX_SEGMENTS {
            self.end_page(false)?;
        }
        self.lacing.extend(std::iter::repeat_n(255u8, len / 255));
        self.lacing.push((len % 255) as u8);
        self.body.extend_from_slice(&self.packet[..len]);
        Ok(())
    }

    /// Moves the page being filled into the file's buffer (nothing if it is empty and not the
    /// last). Its granule (RFC 7845 §4): the samples, at 48 kHz, that the packets up to its end
    /// decode to, pre-skip included; on the last page the pre-skip plus what was recorded, so
    /// that players trim the padding.
    fn end_page(&mut self, last: bool) -> Result<(), RecorderError> {
        if self.lacing.is_empty() && !last {
            return Ok(());
        }
        let rate = u64::from(self.sample_rate);
        let granule = if last {
            self.pre_skip + self.frames_in * 48_000 / rate
        } else {
            self.frames_packed * 48_000 / rate
        };
        let flags = if last { 0x04 } else { 0x00 };
        let bytes = 27 + self.lacing.len() + self.body.len();
        let out = self.file.room_for(bytes)?;
        push_page(
            out,
            self.serial,
            self.sequence,
            flags,
            granule,
            &self.lacing,
            &self.body,
        );
        self.sequence += 1;
        self.lacing.clear();
        self.body.clear();
        Ok(())
    }
}

impl Drop for OggOpusWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.checkpoint(false);
        }
    }
}

impl std::fmt::Debug for OggOpusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OggOpusWriter")
            .field("path", &self.path())
            .field("channels", &self.channels)
            .field("sample_rate", &self.sample_rate)
            .field("frames", &self.frames_in)
            .finish()
    }
}

fn frame_len(rate: u32) -> usize {
    rate as usize / 50
}

/// A stream serial number from the path (FNV-1a): stable, and different per file of a call.
fn path_serial(path: &Path) -> u32 {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str()
        .as_bytes()
        .iter()
        .fold(0x811c_9dc5u32, |h, &b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        })
}

fn opus_head(channels: u16, pre_skip: u16, input_rate: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(19);
    h.extend_from_slice(b"OpusHead");
    h.push(1); // version
    h.push(channels as u8);
    h.extend_from_slice(&pre_skip.to_le_bytes());
    h.extend_from_slice(&input_rate.to_le_bytes());
    h.extend_from_slice(&0i16.to_le_bytes()); // output gain
    h.push(0); // mapping family 0: mono or stereo
    h
}

fn opus_tags() -> Vec<u8> {
    let vendor = concat!("siprec ", env!("CARGO_PKG_VERSION"));
    let mut t = Vec::with_capacity(16 + vendor.len() + 4);
    t.extend_from_slice(b"OpusTags");
    t.extend_from_slice(&(vendor.len() as u32).to_le_bytes());
    t.extend_from_slice(vendor.as_bytes());
    t.extend_from_slice(&0u32.to_le_bytes()); // no comments
    t
}

fn push_page(
    out: &mut Vec<u8>,
    serial: u32,
    sequence: u32,
    flags: u8,
    granule: u64,
    lacing: &[u8],
    body: &[u8],
) {
    let start = out.len();
    out.extend_from_slice(b"OggS");
    out.push(0); // version
    out.push(flags);
    out.extend_from_slice(&granule.to_le_bytes());
    out.extend_from_slice(&serial.to_le_bytes());
    out.extend_from_slice(&sequence.to_le_bytes());
    out.extend_from_slice(&[0; 4]); // CRC, filled in below
    out.push(lacing.len() as u8);
    out.extend_from_slice(lacing);
    out.extend_from_slice(body);
    let crc = ogg_crc(&out[start..]);
    out[start + 22..start + 26].copy_from_slice(&crc.to_le_bytes());
}

/// Ogg's CRC-32: polynomial 0x04C11DB7, not reflected, zero initial value and final XOR.
fn ogg_crc(bytes: &[u8]) -> u32 {
    static TABLE: std::sync::LazyLock<[u32; 256]> = std::sync::LazyLock::new(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut r = (i as u32) << 24;
            for _ in 0..8 {
                r = if r & 0x8000_0000 != 0 {
                    r << 1 ^ 0x04C1_1DB7
                } else {
                    r << 1
                };
            }
            *e = r;
        }
        t
    });
    bytes.iter().fold(0u32, |crc, &b| {
        crc << 8 ^ TABLE[usize::from((crc >> 24) as u8 ^ b)]
    })
}

// ---------------------------------------------------------------------------------------------
// Reader

/// Reads an Ogg Opus file as 16-bit PCM at its original input rate (48 kHz if that is not one
/// Opus decodes to): `(channels, rate, interleaved samples)`, pre-skip and end padding trimmed.
/// Pages must pass their CRC; a file cut off by a crash ends at its last whole page.
pub fn read_ogg_opus(path: &Path) -> Result<(u16, u32, Vec<i16>), RecorderError> {
    let bytes = std::fs::read(path).map_err(|e| RecorderError::io("read", path, e))?;
    decode(&bytes).map_err(|reason| RecorderError::InvalidAudio {
        path: path.to_path_buf(),
        reason,
    })
}

fn decode(bytes: &[u8]) -> Result<(u16, u32, Vec<i16>), &'static str> {
    let mut packets: Vec<Vec<u8>> = Vec::new();
    let mut partial: Vec<u8> = Vec::new();
    let mut last_granule = None;
    let mut at = 0;
    while at < bytes.len() {
        let Some(page) = bytes.get(at..at + 27) else {
            break; // torn tail
        };
        if &page[0..4] != b"OggS" || page[4] != 0 {
            return Err("not an Ogg page");
        }
        let segments = usize::from(page[26]);
        let Some(lacing) = bytes.get(at + 27..at + 27 + segments) else {
            break;
        };
        let body_len: usize = lacing.iter().map(|&l| usize::from(l)).sum();
        let end = at + 27 + segments + body_len;
        let Some(whole) = bytes.get(at..end) else {
            break;
        };
        let mut check = whole.to_vec();
        check[22..26].fill(0);
        if ogg_crc(&check) != u32::from_le_bytes(page[22..26].try_into().expect("4 bytes")) {
            return Err("Ogg page CRC mismatch");
        }
        let mut body = &whole[27 + segments..];
        for &l in lacing {
            partial.extend_from_slice(&body[..usize::from(l)]);
            body = &body[usize::from(l)..];
            if l < 255 {
                packets.push(std::mem::take(&mut partial));
            }
        }
        let granule = u64::from_le_bytes(page[6..14].try_into().expect("8 bytes"));
        if granule != u64::MAX {
            last_granule = Some(granule);
        }
        at = end;
    }
    let mut packets = packets.into_iter();
    let head = packets.next().ok_or("no OpusHead")?;
    if head.len() < 19 || &head[0..8] != b"OpusHead" {
        return Err("no OpusHead");
    }
    let channels = u16::from(head[9]);
    let pre_skip = u64::from(u16::from_le_bytes([head[10], head[11]]));
    let input_rate = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes"));
    if head[18] != 0 || !(1..=2).contains(&channels) {
        return Err("only mono or stereo Opus (mapping family 0) is read");
    }
    let rate = if RATES.contains(&input_rate) {
        input_rate
    } else {
        48_000
    };
    let tags = packets.next().ok_or("no OpusTags")?;
    if !tags.starts_with(b"OpusTags") {
        return Err("no OpusTags");
    }
    let layout = if channels == 1 {
        Channels::Mono
    } else {
        Channels::Stereo
    };
    let mut decoder = Decoder::new(rate, layout).map_err(|_| "opus decoder refused the stream")?;
    let mut pcm = Vec::new();
    // 120 ms, the longest packet, at 48 kHz.
    let mut frame = vec![0i16; 5760 * usize::from(channels)];
    for packet in packets {
        let n = decoder
            .decode(&packet, &mut frame, false)
            .map_err(|_| "corrupt Opus packet")?;
        pcm.extend_from_slice(&frame[..n * usize::from(channels)]);
    }
    // Saturating: a hostile granule position must not overflow (it is clamped to the audio).
    let scale = |v: u64| {
        let frames = v.saturating_mul(u64::from(rate)) / 48_000;
        usize::try_from(frames)
            .unwrap_or(usize::MAX)
            .saturating_mul(usize::from(channels))
    };
    let skip = scale(pre_skip).min(pcm.len());
    let end = last_granule
        .map(|g| scale(g.saturating_sub(pre_skip)).saturating_add(skip))
        .unwrap_or(pcm.len())
        .min(pcm.len());
    Ok((channels, rate, pcm[skip..end.max(skip)].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(n: usize, channels: usize, rate: u32) -> Vec<i16> {
        (0..n * channels)
            .map(|i| {
                let t = (i / channels) as f64 / f64::from(rate);
                let f = if i % channels == 0 { 440.0 } else { 660.0 };
                (8000.0 * (2.0 * std::f64::consts::PI * f * t).sin()) as i16
            })
            .collect()
    }

    /// Signal to noise ratio of `got` against `want`, in dB.
    fn snr(want: &[i16], got: &[i16]) -> f64 {
        let signal: f64 = want.iter().map(|&s| f64::from(s).powi(2)).sum();
        let noise: f64 = want
            .iter()
            .zip(got)
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
            .sum();
        10.0 * (signal / noise.max(1.0)).log10()
    }

    /// The decoded length equals what was written, at every rate and layout, and the audio is
    /// the same signal (Opus is lossy: compared by SNR).
    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        for (channels, rate) in [(1u16, 8000u32), (2, 16000), (1, 48000), (2, 12000)] {
            let path = dir.path().join(format!("{channels}-{rate}.opus"));
            let n = rate as usize * 3 + 77;
            let samples = tone(n, usize::from(channels), rate);
            let mut w = OggOpusWriter::create(&path, channels, rate, 32_000, None).unwrap();
            for (i, chunk) in samples.chunks(321 * usize::from(channels)).enumerate() {
                w.write_interleaved(chunk).unwrap();
                if i % 9 == 0 {
                    w.checkpoint(false).unwrap();
                }
            }
            assert_eq!(w.finish(false).unwrap().frames, n as u64);
            let (c, r, back) = read_ogg_opus(&path).unwrap();
            assert_eq!((c, r), (channels, rate));
            assert_eq!(back.len(), samples.len(), "{channels} ch at {rate} Hz");
            // Perceptual coding keeps a pure tone's waveform only roughly (8–20 dB here); a
            // misaligned decode scores below 0.
            let db = snr(&samples, &back);
            assert!(db > 6.0, "{channels} ch at {rate} Hz: SNR {db:.1} dB");
        }
    }

    /// After a crash, every page written at the last checkpoint decodes.
    #[test]
    fn readable_without_finish() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.opus");
        let samples = tone(16_000, 1, 8000);
        let mut w = OggOpusWriter::create(&path, 1, 8000, 24_000, None).unwrap();
        assert!(read_ogg_opus(&path).unwrap().2.is_empty());
        w.write_interleaved(&samples[..8000]).unwrap();
        w.checkpoint(true).unwrap();
        w.write_interleaved(&samples[8000..]).unwrap();
        std::mem::forget(w); // SIGKILL
        let got = read_ogg_opus(&path).unwrap().2;
        // 8000 samples in 50 packets, less the encoder's delay.
        assert!((7900..=8000).contains(&got.len()), "{}", got.len());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 3);
        assert!(decode(&bytes).unwrap().2.len() < 7900);
        bytes[40] ^= 1;
        assert!(decode(&bytes).is_err());
    }

    /// A hostile granule position (u64::MAX − 1 on the last page) is clamped, not an overflow.
    #[test]
    fn huge_granule_is_clamped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.opus");
        let mut w = OggOpusWriter::create(&path, 1, 8000, 24_000, None).unwrap();
        w.write_interleaved(&tone(4000, 1, 8000)).unwrap();
        w.finish(false).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.windows(4).rposition(|p| p == b"OggS").unwrap();
        bytes[last + 6..last + 14].copy_from_slice(&(u64::MAX - 1).to_le_bytes());
        let mut check = bytes[last..].to_vec();
        check[22..26].fill(0);
        let crc = ogg_crc(&check);
        bytes[last + 22..last + 26].copy_from_slice(&crc.to_le_bytes());
        let (_, _, pcm) = decode(&bytes).unwrap();
        assert!(pcm.len() >= 4000);
    }

    /// The CRC of RFC 3533 (the check value of CRC-32/MPEG-2 without its init and final XOR).
    #[test]
    fn crc_vector() {
        assert_eq!(ogg_crc(b"123456789"), 0x89A1_897F);
    }
}
