//! FLAC (RFC 9639) for recordings: a crash-safe streaming encoder and a reader.
//!
//! The encoder writes a variable-blocksize stream of 16-bit frames, each subframe CONSTANT
//! (silence costs a few bytes), FIXED of the cheapest order 0–4 with partitioned Rice residuals,
//! or VERBATIM when prediction does not pay. Every frame is whole on disk before the next one
//! starts, so the file is decodable at any instant: STREAMINFO says "length unknown" (0 samples,
//! MD5 unset) until `finish` patches in the real length and the MD5 of the audio, which `flac -t`
//! then verifies. Checkpoints end a frame early rather than keep a second of audio in memory.
//!
//! The reader decodes any 16-bit FLAC (including LPC subframes and stereo decorrelation from
//! the reference encoder) so that STT jobs and tests can read what the recorder wrote.

use std::path::Path;

use openssl::hash::{Hasher, MessageDigest};

use super::appendfile::AppendFile;
use super::encrypt::Sealer;
use super::wav::WavInfo;
use super::RecorderError;

/// Largest block: 4096 samples is the FLAC subset's limit up to 48 kHz (85 ms at 48 kHz, 0.5 s
/// at 8 kHz).
const MAX_BLOCK: usize = 4096;
/// Smallest block a checkpoint ends (only the last block of a stream may be shorter).
const MIN_BLOCK: usize = 16;
/// FLAC's channel limit.
pub const MAX_CHANNELS: u16 = 8;
/// "fLaC" + metadata block header + STREAMINFO.
const HEAD_BYTES: usize = 4 + 4 + 34;
/// Rice parameters above 14 need the 5-bit method; 14 already codes any 16-bit residual.
const MAX_RICE: u32 = 14;
/// Partition orders tried: up to 256 partitions.
const MAX_PARTITION_ORDER: u32 = 8;

pub struct FlacWriter {
    file: AppendFile,
    channels: u16,
    sample_rate: u32,
    /// Interleaved samples not yet in a frame (less than one block).
    pending: Vec<i16>,
    /// Sample frames in frames written to `file`'s buffer.
    encoded: u64,
    md5: Hasher,
    /// The block as little-endian bytes, for the MD5.
    le: Vec<u8>,
    /// Per channel scratch: the block's samples and each fixed order's residual.
    block: Vec<i32>,
    residual: [Vec<i32>; 5],
    frame_bytes: (u32, u32),
    finished: bool,
}

impl FlacWriter {
    /// Creates `path` (which must not exist), encrypted at rest when `sealer` is given.
    pub fn create(
        path: &Path,
        channels: u16,
        sample_rate: u32,
        sealer: Option<Sealer>,
    ) -> Result<FlacWriter, RecorderError> {
        assert!(
            (1..=MAX_CHANNELS).contains(&channels),
            "FLAC takes 1–8 channels"
        );
        let head = head_bytes(channels, sample_rate, 0, (0, 0), [0; 16]);
        let file = AppendFile::create(path, &head, sealer)?;
        let md5 = Hasher::new(MessageDigest::md5())
            .map_err(|e| RecorderError::io("md5", path, std::io::Error::other(e)))?;
        Ok(FlacWriter {
            file,
            channels,
            sample_rate,
            pending: Vec::with_capacity(MAX_BLOCK * usize::from(channels)),
            encoded: 0,
            md5,
            le: Vec::new(),
            block: Vec::with_capacity(MAX_BLOCK),
            residual: Default::default(),
            frame_bytes: (u32::MAX, 0),
            finished: false,
        })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Sample frames accepted so far.
    pub fn frames(&self) -> u64 {
        self.encoded + (self.pending.len() / usize::from(self.channels)) as u64
    }

    pub fn write_interleaved(&mut self, samples: &[i16]) -> Result<(), RecorderError> {
        self.file.check()?;
        let block = MAX_BLOCK * usize::from(self.channels);
        let mut rest = samples;
        while !rest.is_empty() {
            let take = rest.len().min(block - self.pending.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == block {
                self.encode_pending()?;
            }
        }
        Ok(())
    }

    /// Ends the current frame (if it holds at least 16 samples), writes everything out and
    /// optionally fdatasyncs it. The file then decodes to everything but those few samples.
    pub fn checkpoint(&mut self, sync: bool) -> Result<(), RecorderError> {
        if self.pending.len() >= MIN_BLOCK * usize::from(self.channels) {
            self.encode_pending()?;
        }
        self.file.flush()?;
        if sync {
            self.file.sync()?;
        }
        Ok(())
    }

    /// Writes the last (possibly short) frame, then patches STREAMINFO with the length, the
    /// frame sizes and the MD5 of the audio; with `sync`, the frames are durable before the
    /// patch and the patch after it.
    pub fn finish(mut self, sync: bool) -> Result<WavInfo, RecorderError> {
        self.finished = true;
        if !self.pending.is_empty() {
            self.encode_pending()?;
        }
        self.file.flush()?;
        if sync {
            self.file.sync()?;
        }
        let digest = self
            .md5
            .finish()
            .map_err(|e| RecorderError::io("md5", self.file.path(), std::io::Error::other(e)))?;
        let mut md5 = [0u8; 16];
        md5.copy_from_slice(&digest);
        let sizes = if self.encoded == 0 {
            (0, 0)
        } else {
            self.frame_bytes
        };
        let head = head_bytes(self.channels, self.sample_rate, self.encoded, sizes, md5);
        self.file.patch(0, &head)?;
        self.file.seal_end()?;
        if sync {
            self.file.sync()?;
        }
        Ok(WavInfo {
            path: self.path().to_path_buf(),
            channels: self.channels,
            sample_rate: self.sample_rate,
            frames: self.encoded,
            key_id: self.file.key_id().map(str::to_owned),
        })
    }

    fn encode_pending(&mut self) -> Result<(), RecorderError> {
        let channels = usize::from(self.channels);
        let n = self.pending.len() / channels;
        self.le.clear();
        self.le
            .extend(self.pending.iter().flat_map(|s| s.to_le_bytes()));
        self.md5
            .update(&self.le)
            .map_err(|e| RecorderError::io("md5", self.file.path(), std::io::Error::other(e)))?;
        // Worst case: header, verbatim subframes, footer.
        let bound = 32 + channels * (2 * n + 4);
        let out = self.file.room_for(bound)?;
        let start = out.len();
        write_frame_header(out, self.encoded, n, self.sample_rate, self.channels);
        let mut bits = BitWriter::new(out);
        for c in 0..channels {
            self.block.clear();
            self.block.extend(
                self.pending[c..]
                    .iter()
                    .step_by(channels)
                    .map(|&s| i32::from(s)),
            );
            encode_subframe(&mut bits, &self.block, &mut self.residual);
        }
        bits.align();
        let crc = crc16(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
        let size = (out.len() - start) as u32;
        self.frame_bytes = (self.frame_bytes.0.min(size), self.frame_bytes.1.max(size));
        self.pending.clear();
        self.encoded += n as u64;
        Ok(())
    }
}

impl Drop for FlacWriter {
    fn drop(&mut self) {
        if !self.finished {
            // Best effort on an early exit: what is in frames reaches the file.
            let _ = self.checkpoint(false);
        }
    }
}

impl std::fmt::Debug for FlacWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlacWriter")
            .field("path", &self.path())
            .field("channels", &self.channels)
            .field("sample_rate", &self.sample_rate)
            .field("frames", &self.frames())
            .finish()
    }
}

/// "fLaC" and the STREAMINFO block (the only metadata block).
fn head_bytes(
    channels: u16,
    rate: u32,
    total: u64,
    frame_bytes: (u32, u32),
    md5: [u8; 16],
) -> [u8; HEAD_BYTES] {
    let mut h = [0u8; HEAD_BYTES];
    h[0..4].copy_from_slice(b"fLaC");
    h[4] = 0x80; // last metadata block, type 0 (STREAMINFO)
    h[5..8].copy_from_slice(&[0, 0, 34]);
    h[8..10].copy_from_slice(&(MIN_BLOCK as u16).to_be_bytes());
    h[10..12].copy_from_slice(&(MAX_BLOCK as u16).to_be_bytes());
    h[12..15].copy_from_slice(&frame_bytes.0.to_be_bytes()[1..]);
    h[15..18].copy_from_slice(&frame_bytes.1.to_be_bytes()[1..]);
    // 20 bits rate, 3 bits channels − 1, 5 bits bits-per-sample − 1, 36 bits total samples.
    let packed: u64 = (u64::from(rate & 0xF_FFFF) << 44)
        | (u64::from(channels - 1) << 41)
        | (15u64 << 36)
        | (total & 0xF_FFFF_FFFF);
    h[18..26].copy_from_slice(&packed.to_be_bytes());
    h[26..42].copy_from_slice(&md5);
    h
}

fn write_frame_header(out: &mut Vec<u8>, first_sample: u64, n: usize, rate: u32, channels: u16) {
    let start = out.len();
    // Sync code, reserved bit, variable blocksize.
    out.extend_from_slice(&[0xFF, 0xF9]);
    let block_code: u8 = if n <= 256 { 0b0110 } else { 0b0111 };
    let (rate_code, rate_extra): (u8, Option<(u32, usize)>) = match rate {
        88_200 => (0b0001, None),
        176_400 => (0b0010, None),
        192_000 => (0b0011, None),
        8_000 => (0b0100, None),
        16_000 => (0b0101, None),
        22_050 => (0b0110, None),
        24_000 => (0b0111, None),
        32_000 => (0b1000, None),
        44_100 => (0b1001, None),
        48_000 => (0b1010, None),
        96_000 => (0b1011, None),
        r if r % 1000 == 0 && r / 1000 <= 255 => (0b1100, Some((r / 1000, 1))),
        r if r <= 0xFFFF => (0b1101, Some((r, 2))),
        r if r % 10 == 0 && r / 10 <= 0xFFFF => (0b1110, Some((r / 10, 2))),
        _ => (0b0000, None), // from STREAMINFO
    };
    out.push(block_code << 4 | rate_code);
    // Independent channels, 16 bits per sample.
    out.push(((channels - 1) as u8) << 4 | 0b100 << 1);
    utf8_number(out, first_sample);
    if n <= 256 {
        out.push((n - 1) as u8);
    } else {
        out.extend_from_slice(&((n - 1) as u16).to_be_bytes());
    }
    if let Some((v, bytes)) = rate_extra {
        out.extend_from_slice(&v.to_be_bytes()[4 - bytes..]);
    }
    let crc = crc8(&out[start..]);
    out.push(crc);
}

/// FLAC's UTF-8-like coding of a number up to 36 bits.
fn utf8_number(out: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        out.push(v as u8);
        return;
    }
    let len = match v {
        0..0x800 => 2,
        0x800..0x1_0000 => 3,
        0x1_0000..0x20_0000 => 4,
        0x20_0000..0x400_0000 => 5,
        0x400_0000..0x8000_0000 => 6,
        _ => 7,
    };
    let lead_mask: u8 = !(0xFFu8 >> len);
    let lead_bits = 6 * (len - 1);
    out.push(lead_mask | ((v >> lead_bits) as u8 & (0x7F >> len)));
    for i in (0..len - 1).rev() {
        out.push(0x80 | ((v >> (6 * i)) & 0x3F) as u8);
    }
}

/// One channel of one frame: CONSTANT, the best FIXED order, or VERBATIM.
fn encode_subframe(bits: &mut BitWriter<'_>, x: &[i32], residual: &mut [Vec<i32>; 5]) {
    let n = x.len();
    if x.iter().all(|&s| s == x[0]) {
        bits.put(8, 0b0000_0000);
        bits.put_signed(16, x[0]);
        return;
    }
    let mut best: Option<(u64, usize, u32)> = None;
    for (order, r) in residual.iter_mut().enumerate().take(n.min(5)) {
        r.clear();
        r.extend((order..n).map(|i| fixed_residual(x, i, order)));
        let (cost, partition_order) = residual_cost(r, n, order);
        let cost = cost + 16 * order as u64;
        if best.is_none_or(|(c, _, _)| cost < c) {
            best = Some((cost, order, partition_order));
        }
    }
    let verbatim = 16 * n as u64;
    match best {
        Some((cost, order, p)) if cost < verbatim => {
            bits.put(8, (0b001000 | order as u64) << 1);
            for &s in &x[..order] {
                bits.put_signed(16, s);
            }
            write_residual(bits, &residual[order], n, order, p);
        }
        _ => {
            bits.put(8, 0b0000_0010);
            for &s in x {
                bits.put_signed(16, s);
            }
        }
    }
}

fn fixed_residual(x: &[i32], i: usize, order: usize) -> i32 {
    match order {
        0 => x[i],
        1 => x[i] - x[i - 1],
        2 => x[i] - 2 * x[i - 1] + x[i - 2],
        3 => x[i] - 3 * x[i - 1] + 3 * x[i - 2] - x[i - 3],
        _ => x[i] - 4 * x[i - 1] + 6 * x[i - 2] - 4 * x[i - 3] + x[i - 4],
    }
}

fn zigzag(r: i32) -> u32 {
    ((r << 1) ^ (r >> 31)) as u32
}

/// The Rice parameter for `count` residuals summing (zigzagged) to `sum`, and its estimated bits.
fn rice_choice(sum: u64, count: u64) -> (u32, u64) {
    if count == 0 {
        return (0, 0);
    }
    let mut k = 0;
    while k < MAX_RICE && (count << (k + 1)) < sum {
        k += 1;
    }
    (k, count * (u64::from(k) + 1) + (sum >> k))
}

/// The partition orders whose partitions divide `n` and leave the first one non-empty.
fn partition_orders(n: usize, order: usize) -> impl Iterator<Item = u32> {
    (0..=MAX_PARTITION_ORDER).take_while(move |&p| n.is_multiple_of(1 << p) && (n >> p) > order)
}

/// Estimated bits of the residual at its best partition order: (bits, order).
fn residual_cost(r: &[i32], n: usize, order: usize) -> (u64, u32) {
    let mut best = (u64::MAX, 0);
    for p in partition_orders(n, order) {
        let mut bits = 6u64;
        for (start, end) in partitions(n, order, p) {
            let sum: u64 = r[start..end].iter().map(|&v| u64::from(zigzag(v))).sum();
            bits += 4 + rice_choice(sum, (end - start) as u64).1;
        }
        if bits < best.0 {
            best = (bits, p);
        }
    }
    best
}

/// Index ranges into the residual (which starts after `order` warm-up samples) per partition.
fn partitions(n: usize, order: usize, p: u32) -> impl Iterator<Item = (usize, usize)> {
    let size = n >> p;
    (0..1usize << p).map(move |i| {
        let start = if i == 0 { 0 } else { i * size - order };
        (start, (i + 1) * size - order)
    })
}

fn write_residual(bits: &mut BitWriter<'_>, r: &[i32], n: usize, order: usize, p: u32) {
    bits.put(2, 0b00); // 4-bit Rice parameters
    bits.put(4, u64::from(p));
    for (start, end) in partitions(n, order, p) {
        let part = &r[start..end];
        let sum: u64 = part.iter().map(|&v| u64::from(zigzag(v))).sum();
        let (k, _) = rice_choice(sum, part.len() as u64);
        bits.put(4, u64::from(k));
        for &v in part {
            let u = zigzag(v);
            bits.put_zeros(u >> k);
            bits.put(1 + k, (1u64 << k) | u64::from(u) & ((1u64 << k) - 1));
        }
    }
}

struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    acc: u64,
    bits: u32,
}

impl<'a> BitWriter<'a> {
    fn new(out: &'a mut Vec<u8>) -> BitWriter<'a> {
        BitWriter {
            out,
            acc: 0,
            bits: 0,
        }
    }

    /// Appends the low `n` (≤ 32) bits of `v`.
    fn put(&mut self, n: u32, v: u64) {
        debug_assert!(n <= 32);
        self.acc = (self.acc << n) | (v & ((1u64 << n) - 1));
        self.bits += n;
        while self.bits >= 8 {
            self.bits -= 8;
            self.out.push((self.acc >> self.bits) as u8);
        }
        self.acc &= (1u64 << self.bits) - 1;
    }

    fn put_signed(&mut self, n: u32, v: i32) {
        self.put(n, u64::from(v as u32));
    }

    fn put_zeros(&mut self, mut n: u32) {
        while n > 0 {
            let step = n.min(32);
            self.put(step, 0);
            n -= step;
        }
    }

    /// Pads with zero bits to a byte boundary.
    fn align(&mut self) {
        if self.bits > 0 {
            self.put(8 - self.bits, 0);
        }
    }
}

fn crc8(bytes: &[u8]) -> u8 {
    let mut crc = 0u8;
    for &b in bytes {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                crc << 1 ^ 0x07
            } else {
                crc << 1
            };
        }
    }
    crc
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc = 0u16;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                crc << 1 ^ 0x8005
            } else {
                crc << 1
            };
        }
    }
    crc
}

// ---------------------------------------------------------------------------------------------
// Reader

/// Reads a 16-bit FLAC file: `(channels, sample_rate, interleaved samples)`. A file whose
/// STREAMINFO gives no length (a recording cut off by a crash) may end in a torn frame, which
/// is dropped; otherwise every frame must be whole, pass its CRCs, and add up to the length.
pub fn read_flac(path: &Path) -> Result<(u16, u32, Vec<i16>), RecorderError> {
    let bytes = std::fs::read(path).map_err(|e| RecorderError::io("read", path, e))?;
    decode(&bytes).map_err(|reason| RecorderError::InvalidAudio {
        path: path.to_path_buf(),
        reason,
    })
}

fn decode(bytes: &[u8]) -> Result<(u16, u32, Vec<i16>), &'static str> {
    if bytes.len() < HEAD_BYTES || &bytes[0..4] != b"fLaC" {
        return Err("missing fLaC signature");
    }
    let mut at = 4;
    let mut info = None;
    loop {
        let header = bytes.get(at..at + 4).ok_or("metadata past end of file")?;
        let len = u32::from_be_bytes([0, header[1], header[2], header[3]]) as usize;
        let body = bytes
            .get(at + 4..at + 4 + len)
            .ok_or("metadata past end of file")?;
        if header[0] & 0x7F == 0 {
            if len < 34 {
                return Err("STREAMINFO too short");
            }
            let packed = u64::from_be_bytes(body[10..18].try_into().expect("8 bytes"));
            let rate = (packed >> 44) as u32;
            let channels = ((packed >> 41) & 7) as u16 + 1;
            let bps = ((packed >> 36) & 31) as u32 + 1;
            let total = packed & 0xF_FFFF_FFFF;
            info = Some((rate, channels, bps, total));
        }
        at += 4 + len;
        if header[0] & 0x80 != 0 {
            break;
        }
    }
    let (rate, channels, bps, total) = info.ok_or("no STREAMINFO")?;
    if bps != 16 {
        return Err("not 16-bit FLAC");
    }
    let mut out = Vec::with_capacity((total as usize * usize::from(channels)).min(1 << 22));
    let mut chans: Vec<Vec<i32>> = vec![Vec::new(); usize::from(channels)];
    while at < bytes.len() {
        match decode_frame(&bytes[at..], channels, &mut chans) {
            Ok(used) => {
                let n = chans[0].len();
                for i in 0..n {
                    for ch in &chans {
                        out.push(ch[i] as i16);
                    }
                }
                at += used;
            }
            // A recording cut short: its length was never written, its tail may be torn.
            Err(_) if total == 0 => break,
            Err(e) => return Err(e),
        }
    }
    if total != 0 && out.len() as u64 != total * u64::from(channels) {
        return Err("samples do not add up to STREAMINFO's length");
    }
    Ok((channels, rate, out))
}

/// Decodes one frame into `chans`; returns the bytes it took.
fn decode_frame(b: &[u8], channels: u16, chans: &mut [Vec<i32>]) -> Result<usize, &'static str> {
    let mut r = BitReader::new(b);
    if r.get(15)? != 0b111_1111_1111_1100 {
        return Err("lost frame sync");
    }
    r.get(1)?; // blocking strategy: the coded number is not needed here
    let block_code = r.get(4)?;
    let rate_code = r.get(4)?;
    let assignment = r.get(4)?;
    let size_code = r.get(3)?;
    r.get(1)?;
    if !matches!(size_code, 0b000 | 0b100) {
        return Err("frame is not 16-bit");
    }
    // The coded frame or sample number: a lead byte and its continuation bytes.
    let lead = r.get(8)? as u8;
    for _ in 0..lead.leading_ones().saturating_sub(1) {
        r.get(8)?;
    }
    let n = match block_code {
        0b0001 => 192,
        0b0010..=0b0101 => 576 << (block_code - 2),
        0b0110 => r.get(8)? + 1,
        0b0111 => r.get(16)? + 1,
        0b1000..=0b1111 => 256 << (block_code - 8),
        _ => return Err("reserved block size"),
    } as usize;
    match rate_code {
        0b1100 => drop(r.get(8)?),
        0b1101 | 0b1110 => drop(r.get(16)?),
        0b1111 => return Err("invalid sample rate code"),
        _ => {}
    }
    let header_len = r.byte_pos();
    if r.get(8)? as u8 != crc8(&b[..header_len]) {
        return Err("frame header CRC mismatch");
    }
    let (count, side) = match assignment {
        0..=7 => (assignment as u16 + 1, None),
        8..=10 => (2, Some(assignment)),
        _ => return Err("reserved channel assignment"),
    };
    if count != channels {
        return Err("frame channel count differs from STREAMINFO");
    }
    for (c, ch) in chans.iter_mut().enumerate() {
        // The side channel carries one more bit.
        let extra = match side {
            Some(8) | Some(10) => u32::from(c == 1),
            Some(_) => u32::from(c == 0),
            None => 0,
        };
        ch.clear();
        decode_subframe(&mut r, n, 16 + extra, ch)?;
    }
    match side {
        Some(8) => (0..n).for_each(|i| chans[1][i] = chans[0][i] - chans[1][i]),
        Some(9) => (0..n).for_each(|i| chans[0][i] += chans[1][i]),
        Some(_) => (0..n).for_each(|i| {
            let (mid, s) = (chans[0][i], chans[1][i]);
            let mid = (mid << 1) | (s & 1);
            chans[0][i] = (mid + s) >> 1;
            chans[1][i] = (mid - s) >> 1;
        }),
        None => {}
    }
    r.align();
    let end = r.byte_pos();
    let crc = r.get(16)? as u16;
    if crc != crc16(&b[..end]) {
        return Err("frame CRC mismatch");
    }
    Ok(end + 2)
}

fn decode_subframe(
    r: &mut BitReader<'_>,
    n: usize,
    bps: u32,
    out: &mut Vec<i32>,
) -> Result<(), &'static str> {
    if r.get(1)? != 0 {
        return Err("subframe padding bit set");
    }
    let kind = r.get(6)?;
    let wasted = if r.get(1)? == 1 { r.unary()? + 1 } else { 0 };
    let bps = bps.checked_sub(wasted).ok_or("too many wasted bits")?;
    match kind {
        0 => {
            let v = r.signed(bps)?;
            out.resize(n, v);
        }
        1 => {
            for _ in 0..n {
                out.push(r.signed(bps)?);
            }
        }
        8..=12 => {
            let order = (kind - 8) as usize;
            if order > n {
                return Err("predictor order exceeds block");
            }
            for _ in 0..order {
                out.push(r.signed(bps)?);
            }
            read_residual(r, n, order, out)?;
            for i in order..n {
                // Wide arithmetic: a hostile file may hold any 32-bit values here.
                let x = |j: usize| i64::from(out[i - j]);
                let predicted = match order {
                    0 => 0,
                    1 => x(1),
                    2 => 2 * x(1) - x(2),
                    3 => 3 * x(1) - 3 * x(2) + x(3),
                    _ => 4 * x(1) - 6 * x(2) + 4 * x(3) - x(4),
                };
                out[i] = out[i].wrapping_add(predicted as i32);
            }
        }
        32..=63 => {
            let order = (kind - 31) as usize;
            if order > n {
                return Err("predictor order exceeds block");
            }
            for _ in 0..order {
                out.push(r.signed(bps)?);
            }
            let precision = r.get(4)? + 1;
            if precision == 16 {
                return Err("invalid LPC precision");
            }
            let shift = r.signed(5)?;
            if shift < 0 {
                return Err("negative LPC shift");
            }
            let mut coefs = [0i64; 32];
            for c in coefs.iter_mut().take(order) {
                *c = i64::from(r.signed(precision)?);
            }
            read_residual(r, n, order, out)?;
            for i in order..n {
                let sum: i64 = (0..order)
                    .map(|j| coefs[j] * i64::from(out[i - 1 - j]))
                    .sum();
                out[i] = out[i].wrapping_add((sum >> shift) as i32);
            }
        }
        _ => return Err("reserved subframe type"),
    }
    if wasted > 0 {
        out.iter_mut().for_each(|v| *v <<= wasted);
    }
    Ok(())
}

fn read_residual(
    r: &mut BitReader<'_>,
    n: usize,
    order: usize,
    out: &mut Vec<i32>,
) -> Result<(), &'static str> {
    let param_bits = match r.get(2)? {
        0 => 4,
        1 => 5,
        _ => return Err("reserved residual coding method"),
    };
    let escape = (1 << param_bits) - 1;
    let p = r.get(4)?;
    if !n.is_multiple_of(1 << p) || (n >> p) < order {
        return Err("invalid partition order");
    }
    for (start, end) in partitions(n, order, p) {
        let k = r.get(param_bits)?;
        if k == escape {
            let raw = r.get(5)?;
            for _ in start..end {
                out.push(if raw == 0 { 0 } else { r.signed(raw)? });
            }
        } else {
            for _ in start..end {
                let q = r.unary()?;
                let u = (u64::from(q) << k) | u64::from(r.get(k)?);
                let u = u32::try_from(u).map_err(|_| "residual out of range")?;
                out.push((u >> 1) as i32 ^ -((u & 1) as i32));
            }
        }
    }
    Ok(())
}

struct BitReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> BitReader<'a> {
    fn new(bytes: &'a [u8]) -> BitReader<'a> {
        BitReader { bytes, pos: 0 }
    }

    fn get(&mut self, n: u32) -> Result<u32, &'static str> {
        let mut v = 0u32;
        for _ in 0..n {
            let byte = *self
                .bytes
                .get(self.pos / 8)
                .ok_or("frame past end of file")?;
            v = v << 1 | u32::from(byte >> (7 - self.pos % 8) & 1);
            self.pos += 1;
        }
        Ok(v)
    }

    fn signed(&mut self, n: u32) -> Result<i32, &'static str> {
        let v = self.get(n)?;
        Ok(if n == 0 {
            0
        } else {
            ((v << (32 - n)) as i32) >> (32 - n)
        })
    }

    fn unary(&mut self) -> Result<u32, &'static str> {
        let mut zeros = 0;
        while self.get(1)? == 0 {
            zeros += 1;
            if zeros > 1 << 20 {
                return Err("unary run too long");
            }
        }
        Ok(zeros)
    }

    fn align(&mut self) {
        self.pos = self.pos.div_ceil(8) * 8;
    }

    fn byte_pos(&self) -> usize {
        self.pos / 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(n: usize) -> Vec<i16> {
        let mut seed = 7u32;
        (0..n)
            .map(|i| {
                seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let tone = 9000.0 * (i as f64 * 0.05).sin();
                let noise = f64::from((seed >> 16) as i16) / 64.0;
                if (i / 3000) % 3 == 2 {
                    0 // silence: CONSTANT subframes
                } else {
                    (tone + noise) as i16
                }
            })
            .collect()
    }

    /// Everything written reads back identically, across odd write sizes, checkpoints that
    /// end short frames, extreme samples and silence.
    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        for (channels, rate) in [(1u16, 8000u32), (2, 16000), (3, 11025), (1, 48000)] {
            let path = dir.path().join(format!("{channels}-{rate}.flac"));
            let mut samples = signal(50_001 * usize::from(channels));
            samples.truncate(samples.len() / usize::from(channels) * usize::from(channels));
            samples[100] = i16::MIN;
            samples[101] = i16::MAX;
            samples[102] = i16::MIN;
            let mut w = FlacWriter::create(&path, channels, rate, None).unwrap();
            let step = 333 * usize::from(channels);
            for (i, chunk) in samples.chunks(step).enumerate() {
                w.write_interleaved(chunk).unwrap();
                if i % 17 == 0 {
                    w.checkpoint(false).unwrap();
                }
            }
            let info = w.finish(false).unwrap();
            assert_eq!(info.frames as usize, samples.len() / usize::from(channels));
            let (c, r, back) = read_flac(&path).unwrap();
            assert_eq!((c, r), (channels, rate));
            assert!(back == samples, "{channels} ch at {rate} Hz differs");
            let size = std::fs::metadata(&path).unwrap().len() as usize;
            assert!(size < samples.len() * 2, "compresses: {size} B");
        }
    }

    /// A crash leaves a file that decodes to everything up to the last checkpoint; a torn
    /// last frame is dropped, not an error.
    #[test]
    fn readable_without_finish() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.flac");
        let samples = signal(20_000);
        let mut w = FlacWriter::create(&path, 1, 8000, None).unwrap();
        assert_eq!(read_flac(&path).unwrap().2, Vec::<i16>::new());
        w.write_interleaved(&samples[..10_000]).unwrap();
        w.checkpoint(true).unwrap();
        assert_eq!(read_flac(&path).unwrap().2, samples[..10_000]);
        w.write_interleaved(&samples[10_000..]).unwrap();
        std::mem::forget(w); // SIGKILL: no Drop, no finish
        let mut bytes = std::fs::read(&path).unwrap();
        assert_eq!(decode(&bytes).unwrap().2, samples[..10_000]);
        bytes.truncate(bytes.len() - 5); // a torn tail
        let got = decode(&bytes).unwrap().2;
        assert!(got.len() < 10_000 && got[..] == samples[..got.len()]);
    }

    /// Corruption is an error, not garbage audio.
    #[test]
    fn reader_checks_crcs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.flac");
        let mut w = FlacWriter::create(&path, 1, 8000, None).unwrap();
        w.write_interleaved(&signal(9000)).unwrap();
        w.finish(false).unwrap();
        let good = std::fs::read(&path).unwrap();
        for at in [HEAD_BYTES + 3, good.len() / 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            assert!(decode(&bad).is_err(), "flipped byte {at} accepted");
        }
        assert!(decode(&good[..good.len() - 1]).is_err());
        assert!(decode(b"fLaC").is_err());
    }

    #[test]
    fn utf8_numbers() {
        for (v, want) in [
            (0u64, vec![0x00]),
            (0x7F, vec![0x7F]),
            (0x80, vec![0xC2, 0x80]),
            (0x800, vec![0xE0, 0xA0, 0x80]),
            (
                0xF_FFFF_FFFF,
                vec![0xFE, 0xBF, 0xBF, 0xBF, 0xBF, 0xBF, 0xBF],
            ),
        ] {
            let mut out = Vec::new();
            utf8_number(&mut out, v);
            assert_eq!(out, want, "{v:#x}");
        }
    }
}
