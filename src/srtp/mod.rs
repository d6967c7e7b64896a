//! SRTP and SRTCP receive (RFC 3711), AES-256 counter mode (RFC 6188) and AES-GCM (RFC 7714),
//! keyed by SDP security descriptions (RFC 4568, [`sdes`]).
//!
//! No I/O, no clock, no allocation per packet. A [`Receiver`] lives on the data-plane worker
//! that owns its stream. Per packet, in this order: header check, replay check, tag check,
//! then decryption in place; a packet that fails any step is left unusable and counted, and
//! the state of the stream (rollover counter, replay window) moves only after its tag passed.
//!
//! `protect_*` exist for the load generator and the tests: the recorder never sends media.

pub mod sdes;

use aes::cipher::{generic_array::GenericArray, BlockEncrypt, KeyInit};
use aes_gcm::aead::AeadInPlace;
use sha1::digest::generic_array::GenericArray as Ga;

use crate::simd::sha1 as simd;

/// The crypto suites we accept (RFC 4568 §6.2, RFC 6188 §3, RFC 7714 §14.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Suite {
    AesCm128HmacSha1_80,
    AesCm128HmacSha1_32,
    Aes256CmHmacSha1_80,
    Aes256CmHmacSha1_32,
    AeadAes128Gcm,
    AeadAes256Gcm,
}

impl Suite {
    pub const ALL: [Suite; 6] = [
        Suite::AesCm128HmacSha1_80,
        Suite::AesCm128HmacSha1_32,
        Suite::Aes256CmHmacSha1_80,
        Suite::Aes256CmHmacSha1_32,
        Suite::AeadAes128Gcm,
        Suite::AeadAes256Gcm,
    ];

    /// The RFC 4568 name.
    pub fn name(self) -> &'static str {
        match self {
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            Suite::Aes256CmHmacSha1_80 => "AES_256_CM_HMAC_SHA1_80",
            Suite::Aes256CmHmacSha1_32 => "AES_256_CM_HMAC_SHA1_32",
            Suite::AeadAes128Gcm => "AEAD_AES_128_GCM",
            Suite::AeadAes256Gcm => "AEAD_AES_256_GCM",
        }
    }

    /// Parses a suite name; `AES_CM_256_*` is a spelling some SBCs use for RFC 6188's.
    pub fn from_name(name: &str) -> Option<Suite> {
        let upper = name.trim().to_ascii_uppercase();
        Some(match upper.as_str() {
            "AES_CM_128_HMAC_SHA1_80" => Suite::AesCm128HmacSha1_80,
            "AES_CM_128_HMAC_SHA1_32" => Suite::AesCm128HmacSha1_32,
            "AES_256_CM_HMAC_SHA1_80" | "AES_CM_256_HMAC_SHA1_80" => Suite::Aes256CmHmacSha1_80,
            "AES_256_CM_HMAC_SHA1_32" | "AES_CM_256_HMAC_SHA1_32" => Suite::Aes256CmHmacSha1_32,
            "AEAD_AES_128_GCM" => Suite::AeadAes128Gcm,
            "AEAD_AES_256_GCM" => Suite::AeadAes256Gcm,
            _ => return None,
        })
    }

    pub fn key_len(self) -> usize {
        match self {
            Suite::AesCm128HmacSha1_80 | Suite::AesCm128HmacSha1_32 | Suite::AeadAes128Gcm => 16,
            _ => 32,
        }
    }

    pub fn salt_len(self) -> usize {
        if self.is_aead() {
            12
        } else {
            14
        }
    }

    pub fn is_aead(self) -> bool {
        matches!(self, Suite::AeadAes128Gcm | Suite::AeadAes256Gcm)
    }

    /// Authentication tag length of SRTP packets.
    pub fn rtp_tag_len(self) -> usize {
        match self {
            Suite::AesCm128HmacSha1_80 | Suite::Aes256CmHmacSha1_80 => 10,
            Suite::AesCm128HmacSha1_32 | Suite::Aes256CmHmacSha1_32 => 4,
            Suite::AeadAes128Gcm | Suite::AeadAes256Gcm => 16,
        }
    }

    /// Authentication tag length of SRTCP packets: the _32 suites still use 80 bits there
    /// (RFC 4568 §6.2.2).
    pub fn rtcp_tag_len(self) -> usize {
        if self.is_aead() {
            16
        } else {
            10
        }
    }

    /// Preference when an offer lists several: larger is stronger.
    pub fn strength(self) -> u8 {
        match self {
            Suite::AeadAes256Gcm => 6,
            Suite::Aes256CmHmacSha1_80 => 5,
            Suite::AeadAes128Gcm => 4,
            Suite::AesCm128HmacSha1_80 => 3,
            Suite::Aes256CmHmacSha1_32 => 2,
            Suite::AesCm128HmacSha1_32 => 1,
        }
    }
}

/// An SRTP master key with its salt and optional MKI. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey {
    pub suite: Suite,
    key: [u8; 32],
    salt: [u8; 14],
    /// The MKI value carried in each packet (RFC 3711 §3.1), and its length in bytes (1–4).
    pub mki: Option<(u32, u8)>,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("suite", &self.suite)
            .field("mki", &self.mki)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// `material` is key || salt as carried in `inline:`; its length must match the suite.
    pub fn new(suite: Suite, material: &[u8], mki: Option<(u32, u8)>) -> Option<MasterKey> {
        let (kl, sl) = (suite.key_len(), suite.salt_len());
        if material.len() != kl + sl || mki.is_some_and(|(_, len)| !(1..=4).contains(&len)) {
            return None;
        }
        let mut key = [0u8; 32];
        let mut salt = [0u8; 14];
        key[..kl].copy_from_slice(&material[..kl]);
        salt[..sl].copy_from_slice(&material[kl..]);
        Some(MasterKey {
            suite,
            key,
            salt,
            mki,
        })
    }

    pub fn key(&self) -> &[u8] {
        &self.key[..self.suite.key_len()]
    }

    pub fn salt(&self) -> &[u8] {
        &self.salt[..self.suite.salt_len()]
    }

    fn mki_len(&self) -> usize {
        self.mki.map_or(0, |(_, l)| usize::from(l))
    }
}

/// SDES session parameters that change the transform (RFC 4568 §6.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub unencrypted_srtp: bool,
    pub unencrypted_srtcp: bool,
    pub unauthenticated_srtp: bool,
}

/// What a stream needs to decrypt what its SRC sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrtpParams {
    pub key: MasterKey,
    pub options: Options,
}

/// Why a packet was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SrtpError {
    /// Too short for its header, tag and MKI, or a header that doesn't parse.
    Malformed,
    /// Its index was seen already or is older than the replay window.
    Replay,
    /// The authentication tag (or GCM tag) does not match.
    AuthFailed,
    /// An MKI that matches none of the stream's keys.
    UnknownMki,
}

/// Per-stream SRTP drop counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SrtpStats {
    pub auth_failures: u64,
    pub replays: u64,
    pub malformed: u64,
    pub unknown_mki: u64,
    /// Packets that authenticated under the key in force before the last re-key.
    pub previous_key_packets: u64,
}

impl SrtpStats {
    pub fn add(&mut self, o: &SrtpStats) {
        self.auth_failures += o.auth_failures;
        self.replays += o.replays;
        self.malformed += o.malformed;
        self.unknown_mki += o.unknown_mki;
        self.previous_key_packets += o.previous_key_packets;
    }

    fn count(&mut self, e: SrtpError) {
        match e {
            SrtpError::Malformed => self.malformed += 1,
            SrtpError::Replay => self.replays += 1,
            SrtpError::AuthFailed => self.auth_failures += 1,
            SrtpError::UnknownMki => self.unknown_mki += 1,
        }
    }
}

// --- transforms ---

type Block = GenericArray<u8, aes::cipher::consts::U16>;

// Key schedules stay inline: one per stream, and a Box would add a pointer chase per packet.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Aes {
    A128(aes::Aes128),
    A256(aes::Aes256),
}

impl Aes {
    fn new(key: &[u8]) -> Aes {
        match key.len() {
            16 => Aes::A128(aes::Aes128::new(GenericArray::from_slice(key))),
            _ => Aes::A256(aes::Aes256::new(GenericArray::from_slice(&key[..32]))),
        }
    }

    fn encrypt_blocks(&self, blocks: &mut [Block]) {
        match self {
            Aes::A128(c) => c.encrypt_blocks(blocks),
            Aes::A256(c) => c.encrypt_blocks(blocks),
        }
    }
}

/// Blocks of keystream made per cipher call: each call costs ~12 ns fixed here, so a
/// 160-byte payload (10 blocks) is done in one.
const KEYSTREAM_BLOCKS: usize = 16;

/// XORs AES counter-mode keystream into `data` (RFC 3711 §4.1.1): block `j` encrypts `iv`
/// with `j` added to its last 16 bits.
fn aes_cm_xor(cipher: &Aes, iv: &[u8; 16], data: &mut [u8]) {
    let mut blocks = [Block::default(); KEYSTREAM_BLOCKS];
    let mut counter: u16 = 0;
    for chunk in data.chunks_mut(16 * KEYSTREAM_BLOCKS) {
        let n = chunk.len().div_ceil(16);
        for block in &mut blocks[..n] {
            block.copy_from_slice(iv);
            block[14..].copy_from_slice(&counter.to_be_bytes());
            counter = counter.wrapping_add(1);
        }
        cipher.encrypt_blocks(&mut blocks[..n]);
        for (bytes, block) in chunk.chunks_mut(16).zip(&blocks) {
            // Whole blocks XOR as one 128-bit word; only a packet's last block is partial.
            let k: [u8; 16] = (*block).into();
            match <&mut [u8; 16]>::try_from(&mut *bytes) {
                Ok(b) => *b = (u128::from_ne_bytes(*b) ^ u128::from_ne_bytes(k)).to_ne_bytes(),
                Err(_) => bytes.iter_mut().zip(k).for_each(|(b, k)| *b ^= k),
            }
        }
    }
}

/// AES counter mode for packets: `simd::aes` (all blocks in flight, AES-NI) when the CPU
/// has it, the `aes` crate otherwise.
#[derive(Clone)]
struct CmCipher {
    fast: Option<crate::simd::aes::RoundKeys>,
    soft: Aes,
}

impl CmCipher {
    fn xor(&self, iv: &[u8; 16], data: &mut [u8]) {
        match &self.fast {
            Some(fast) => fast.ctr_xor(iv, data),
            None => aes_cm_xor(&self.soft, iv, data),
        }
    }
}

/// The RFC 3711 §4.3 key derivation with key_derivation_rate 0 (`r = 0`), the AES-CM PRF of
/// the master key's size; a 96-bit master salt (GCM, RFC 7714 §11) is padded with zeros.
pub fn derive_session_key(master: &MasterKey, label: u8, out: &mut [u8]) {
    let cipher = Aes::new(master.key());
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(&master.salt);
    iv[7] ^= label;
    out.fill(0);
    aes_cm_xor(&cipher, &iv, out);
}

// Key schedules stay inline: one per stream, and a Box would add a pointer chase per packet.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Gcm {
    G128(aes_gcm::Aes128Gcm),
    G256(aes_gcm::Aes256Gcm),
}

/// One direction-and-protocol transform (SRTP or SRTCP) with its session keys.
// Inline for the same reason as `Aes`: one per stream, read on every packet.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Transform {
    Cm {
        cipher: CmCipher,
        salt: [u8; 14],
        auth: HmacSha1,
        tag_len: usize,
    },
    Gcm {
        aead: Gcm,
        salt: [u8; 12],
    },
}

pub const LABEL_RTP_KEY: u8 = 0;
pub const LABEL_RTP_AUTH: u8 = 1;
pub const LABEL_RTP_SALT: u8 = 2;
pub const LABEL_RTCP_KEY: u8 = 3;
pub const LABEL_RTCP_AUTH: u8 = 4;
pub const LABEL_RTCP_SALT: u8 = 5;

impl Transform {
    fn new(master: &MasterKey, rtcp: bool) -> Transform {
        let suite = master.suite;
        let (lk, la, ls) = match rtcp {
            false => (LABEL_RTP_KEY, LABEL_RTP_AUTH, LABEL_RTP_SALT),
            true => (LABEL_RTCP_KEY, LABEL_RTCP_AUTH, LABEL_RTCP_SALT),
        };
        let mut key = [0u8; 32];
        let key = &mut key[..suite.key_len()];
        derive_session_key(master, lk, key);
        if suite.is_aead() {
            let mut salt = [0u8; 12];
            derive_session_key(master, ls, &mut salt);
            let aead = match key.len() {
                16 => Gcm::G128(aes_gcm::Aes128Gcm::new(GenericArray::from_slice(key))),
                _ => Gcm::G256(aes_gcm::Aes256Gcm::new(GenericArray::from_slice(key))),
            };
            return Transform::Gcm { aead, salt };
        }
        let mut salt = [0u8; 14];
        derive_session_key(master, ls, &mut salt);
        let mut auth_key = [0u8; 20];
        derive_session_key(master, la, &mut auth_key);
        let auth = HmacSha1::new(&auth_key);
        Transform::Cm {
            cipher: CmCipher {
                fast: crate::simd::aes::RoundKeys::new(key),
                soft: Aes::new(key),
            },
            salt,
            auth,
            tag_len: if rtcp {
                suite.rtcp_tag_len()
            } else {
                suite.rtp_tag_len()
            },
        }
    }

    fn tag_len(&self) -> usize {
        match self {
            Transform::Cm { tag_len, .. } => *tag_len,
            Transform::Gcm { .. } => 16,
        }
    }
}

/// HMAC-SHA1 (RFC 2104) with the key's inner and outer pad blocks hashed once per stream.
/// Per packet this runs only the SHA-1 compressions the message needs (four for a 20 ms
/// G.711 packet) straight from the packet buffer, with no streaming buffer in between.
#[derive(Clone)]
struct HmacSha1 {
    inner: [u32; 5],
    outer: [u32; 5],
}

const SHA1_IV: [u32; 5] = [
    0x6745_2301,
    0xEFCD_AB89,
    0x98BA_DCFE,
    0x1032_5476,
    0xC3D2_E1F0,
];

impl HmacSha1 {
    fn new(key: &[u8; 20]) -> HmacSha1 {
        let mut ipad = [0x36u8; 64];
        let mut opad = [0x5cu8; 64];
        for (i, k) in key.iter().enumerate() {
            ipad[i] ^= k;
            opad[i] ^= k;
        }
        let mut inner = SHA1_IV;
        sha1::compress(&mut inner, &[Ga::from(ipad)]);
        let mut outer = SHA1_IV;
        sha1::compress(&mut outer, &[Ga::from(opad)]);
        HmacSha1 { inner, outer }
    }

    /// The MAC of `data` followed by `suffix` (the ROC, or nothing), truncated into `out`.
    fn tag(&self, data: &[u8], suffix: &[u8], out: &mut [u8]) {
        let mut tail = [0u8; 128];
        let msg = inner_blocks(data, suffix, &mut tail);
        let mut state = self.inner;
        for j in 0..msg.len() {
            let block = msg.block(j);
            sha1::compress(&mut state, std::slice::from_ref(Ga::from_slice(block)));
        }
        let outer = outer_block(&state);
        let mut state = self.outer;
        sha1::compress(&mut state, std::slice::from_ref(Ga::from_slice(&outer)));
        write_tag(&state, out);
    }

    /// The full 20-byte MACs of `N` messages (data, suffix) under `N` keys, their SHA-1
    /// chains interleaved.
    fn mac_lanes<const N: usize>(
        keys: &[&HmacSha1; N],
        msgs: &[(&[u8], &[u8]); N],
        out: &mut [[u8; 20]; N],
    ) {
        let mut tails = [[0u8; 128]; N];
        let mut inner = [[0u32; 5]; N];
        let mut outer = [[0u32; 5]; N];
        for k in 0..N {
            inner[k] = keys[k].inner;
            outer[k] = keys[k].outer;
        }
        let mut cut = [(0usize, 0usize); N];
        for k in 0..N {
            cut[k] = pad_tail(msgs[k].0, msgs[k].1, &mut tails[k]);
        }
        let blocks: [simd::Blocks; N] = std::array::from_fn(|k| simd::Blocks {
            whole: &msgs[k].0[..cut[k].0],
            tail: &tails[k][..cut[k].1],
        });
        simd::compress_lanes(&mut inner, &blocks);
        let mut last = [[0u8; 64]; N];
        for k in 0..N {
            last[k] = outer_block(&inner[k]);
        }
        let blocks: [simd::Blocks; N] = std::array::from_fn(|k| simd::Blocks {
            whole: &last[k],
            tail: &[],
        });
        simd::compress_lanes(&mut outer, &blocks);
        for k in 0..N {
            out[k] = digest(&outer[k]);
        }
    }
}

/// Writes the inner hash's tail into `tail`: what is left of `data` after its whole blocks,
/// the suffix, 0x80, zeros and the bit length. Returns (whole bytes of `data`, tail bytes).
fn pad_tail(data: &[u8], suffix: &[u8], tail: &mut [u8; 128]) -> (usize, usize) {
    let whole = data.len() / 64 * 64;
    let rest = &data[whole..];
    let n = rest.len() + suffix.len();
    let blocks = if n + 9 <= 64 { 1 } else { 2 };
    tail[..rest.len()].copy_from_slice(rest);
    tail[rest.len()..n].copy_from_slice(suffix);
    tail[n] = 0x80;
    let bits = ((64 + data.len() + suffix.len()) as u64) * 8;
    tail[blocks * 64 - 8..blocks * 64].copy_from_slice(&bits.to_be_bytes());
    (whole, blocks * 64)
}

/// The inner hash's blocks after the key block: `data`'s whole blocks in place, then the
/// padded tail written into `tail`.
fn inner_blocks<'a>(data: &'a [u8], suffix: &[u8], tail: &'a mut [u8; 128]) -> simd::Blocks<'a> {
    let (whole, tail_len) = pad_tail(data, suffix, tail);
    simd::Blocks {
        whole: &data[..whole],
        tail: &tail[..tail_len],
    }
}

/// The outer hash's one block: the inner digest, 0x80, zeros, the bit length (64 + 20 bytes).
fn outer_block(inner: &[u32; 5]) -> [u8; 64] {
    let mut block = [0u8; 64];
    for (chunk, word) in block.chunks_exact_mut(4).zip(inner) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    block[20] = 0x80;
    block[62..64].copy_from_slice(&((64u16 + 20) * 8).to_be_bytes());
    block
}

fn digest(state: &[u32; 5]) -> [u8; 20] {
    let mut digest = [0u8; 20];
    for (chunk, word) in digest.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    digest
}

fn write_tag(state: &[u32; 5], out: &mut [u8]) {
    let digest = digest(state);
    let len = out.len().min(20);
    out[..len].copy_from_slice(&digest[..len]);
}

/// Constant-time comparison of two tags of equal length.
fn tags_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// RFC 3711 §4.1.1: IV = (salt · 2^16) XOR (SSRC · 2^64) XOR (index · 2^16).
fn cm_iv(salt: &[u8; 14], ssrc: u32, index: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(salt);
    for (b, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
        *b ^= s;
    }
    for (b, s) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
        *b ^= s;
    }
    iv
}

/// RFC 7714 §8.1 / §9.1: 00 00 || SSRC || ROC || SEQ (or 00 00 || index) XOR salt.
fn gcm_nonce(salt: &[u8; 12], ssrc: u32, high: u32, low: u16, rtcp: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[2..6].copy_from_slice(&ssrc.to_be_bytes());
    if rtcp {
        // 00 00 || SSRC || 00 00 || 0 + 31-bit SRTCP index.
        n[8..12].copy_from_slice(&high.to_be_bytes());
    } else {
        n[6..10].copy_from_slice(&high.to_be_bytes());
        n[10..12].copy_from_slice(&low.to_be_bytes());
    }
    for (b, s) in n.iter_mut().zip(salt) {
        *b ^= s;
    }
    n
}

fn gcm_decrypt(
    aead: &Gcm,
    nonce: &[u8; 12],
    aad: &[u8],
    data: &mut [u8],
    tag: &[u8],
) -> Result<(), SrtpError> {
    let nonce = GenericArray::from_slice(nonce);
    let tag = GenericArray::from_slice(tag);
    let r = match aead {
        Gcm::G128(g) => g.decrypt_in_place_detached(nonce, aad, data, tag),
        Gcm::G256(g) => g.decrypt_in_place_detached(nonce, aad, data, tag),
    };
    r.map_err(|_| SrtpError::AuthFailed)
}

fn gcm_encrypt(aead: &Gcm, nonce: &[u8; 12], aad: &[u8], data: &mut [u8], tag: &mut [u8]) {
    let nonce = GenericArray::from_slice(nonce);
    let t = match aead {
        Gcm::G128(g) => g.encrypt_in_place_detached(nonce, aad, data),
        Gcm::G256(g) => g.encrypt_in_place_detached(nonce, aad, data),
    };
    if let Ok(t) = t {
        tag.copy_from_slice(&t);
    }
}

/// Length of the RTP header (fixed part, CSRCs, extension), if `packet` has a whole one.
pub fn rtp_header_len(packet: &[u8]) -> Option<usize> {
    if packet.len() < 12 || packet[0] >> 6 != 2 {
        return None;
    }
    let mut len = 12 + 4 * usize::from(packet[0] & 0x0f);
    if packet[0] & 0x10 != 0 {
        let ext = packet.get(len + 2..len + 4)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    (len <= packet.len()).then_some(len)
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

// --- replay and rollover state ---

/// Largest packet authenticated as a whole (GCM without encryption copies it as AAD).
const PACKET_MAX: usize = 2048;

/// Replay window width in packets (RFC 3711 §3.3.2 asks for at least 64).
const REPLAY_WINDOW: u64 = 128;
/// SSRCs tracked per stream: an SBC switching SSRC on transfer keeps both for a while.
const SSRCS_PER_STREAM: usize = 4;

/// Receive state of one SSRC: rollover counter, highest sequence, replay bitmap.
#[derive(Clone, Copy, Debug, Default)]
struct SsrcState {
    ssrc: u32,
    used: bool,
    /// Highest authenticated index (ROC << 16 | SEQ for SRTP; the SRTCP index for SRTCP).
    highest: u64,
    /// Bit `d` set: index `highest - d` was received.
    window: u128,
    /// Last use, in packets of this context: picks the entry to recycle.
    last_use: u64,
}

impl SsrcState {
    /// RFC 3711 §3.3.1 / Appendix A: the index of `seq`, guessing the ROC from the highest.
    fn estimate(&self, seq: u16) -> Option<u64> {
        if !self.used {
            return Some(u64::from(seq));
        }
        let roc = self.highest >> 16;
        let s_l = (self.highest & 0xffff) as i64;
        let seq_i = i64::from(seq);
        let v = if s_l < 32768 {
            if seq_i - s_l > 32768 {
                roc.checked_sub(1)?
            } else {
                roc
            }
        } else if s_l - 32768 > seq_i {
            roc + 1
        } else {
            roc
        };
        Some(v << 16 | u64::from(seq))
    }

    fn check(&self, index: u64) -> Result<(), SrtpError> {
        if !self.used || index > self.highest {
            return Ok(());
        }
        let d = self.highest - index;
        if d >= REPLAY_WINDOW || self.window & (1u128 << d) != 0 {
            return Err(SrtpError::Replay);
        }
        Ok(())
    }

    fn accept(&mut self, index: u64) {
        if !self.used {
            self.used = true;
            self.highest = index;
            self.window = 1;
        } else if index > self.highest {
            let shift = index - self.highest;
            self.window = if shift >= REPLAY_WINDOW {
                1
            } else {
                (self.window << shift) | 1
            };
            self.highest = index;
        } else {
            self.window |= 1u128 << (self.highest - index);
        }
    }
}

#[derive(Clone, Debug, Default)]
struct SsrcTable {
    entries: [SsrcState; SSRCS_PER_STREAM],
    clock: u64,
}

impl SsrcTable {
    /// The entry of `ssrc`, or a fresh one that would replace the least recently used.
    fn lookup(&self, ssrc: u32) -> (usize, SsrcState) {
        if let Some(i) = self.entries.iter().position(|e| e.used && e.ssrc == ssrc) {
            return (i, self.entries[i]);
        }
        let i = self
            .entries
            .iter()
            .enumerate()
            .min_by_key(|(_, e)| (e.used, e.last_use))
            .map_or(0, |(i, _)| i);
        (
            i,
            SsrcState {
                ssrc,
                ..SsrcState::default()
            },
        )
    }

    fn store(&mut self, slot: usize, mut state: SsrcState) {
        self.clock += 1;
        state.last_use = self.clock;
        self.entries[slot] = state;
    }
}

/// An AES-CM SRTP packet that passed every check but its tag.
struct Pending {
    slot: usize,
    state: SsrcState,
    index: u64,
    ssrc: u32,
    header_len: usize,
    /// End of the authenticated portion (header and payload).
    end: usize,
    /// Where the tag starts (after the MKI).
    tag_at: usize,
}

/// The keys and replay state of one master key, for SRTP and SRTCP.
#[derive(Clone)]
struct Context {
    key: MasterKey,
    options: Options,
    rtp: Transform,
    rtcp: Transform,
    rtp_ssrcs: SsrcTable,
    rtcp_ssrcs: SsrcTable,
}

impl Context {
    fn new(params: &SrtpParams) -> Context {
        Context {
            key: params.key.clone(),
            options: params.options,
            rtp: Transform::new(&params.key, false),
            rtcp: Transform::new(&params.key, true),
            rtp_ssrcs: SsrcTable::default(),
            rtcp_ssrcs: SsrcTable::default(),
        }
    }

    fn mki_matches(&self, mki: &[u8]) -> bool {
        match self.key.mki {
            None => true,
            Some((value, len)) => {
                let want = value.to_be_bytes();
                mki == &want[4 - usize::from(len)..]
            }
        }
    }

    /// The checks of an AES-CM packet with a tag that come before the tag (header, MKI,
    /// replay); `None` when this context takes the one-packet path (GCM, no tag).
    fn prepare_cm(&self, packet: &[u8]) -> Option<Result<Pending, SrtpError>> {
        let Transform::Cm { tag_len, .. } = &self.rtp else {
            return None;
        };
        if self.options.unauthenticated_srtp {
            return None;
        }
        let tag_len = *tag_len;
        Some((|| {
            let h = rtp_header_len(packet).ok_or(SrtpError::Malformed)?;
            let mki_len = self.key.mki_len();
            if packet.len() < h + tag_len + mki_len {
                return Err(SrtpError::Malformed);
            }
            let seq = u16::from_be_bytes([packet[2], packet[3]]);
            let ssrc = be32(&packet[8..12]);
            let (slot, state) = self.rtp_ssrcs.lookup(ssrc);
            let index = state.estimate(seq).ok_or(SrtpError::Replay)?;
            state.check(index)?;
            let end = packet.len() - tag_len - mki_len;
            if !self.mki_matches(&packet[end..end + mki_len]) {
                return Err(SrtpError::UnknownMki);
            }
            Ok(Pending {
                slot,
                state,
                index,
                ssrc,
                header_len: h,
                end,
                tag_at: end + mki_len,
            })
        })())
    }

    /// After `prepare_cm`: compares `tag` (computed over `packet[..end]` and the ROC),
    /// decrypts, and moves the replay state.
    fn complete_cm(
        &mut self,
        p: &Pending,
        packet: &mut [u8],
        tag: &[u8],
    ) -> Result<usize, SrtpError> {
        if !tags_equal(tag, &packet[p.tag_at..]) {
            return Err(SrtpError::AuthFailed);
        }
        if let (false, Transform::Cm { cipher, salt, .. }) =
            (self.options.unencrypted_srtp, &self.rtp)
        {
            let iv = cm_iv(salt, p.ssrc, p.index);
            cipher.xor(&iv, &mut packet[p.header_len..p.end]);
        }
        let mut state = p.state;
        state.accept(p.index);
        self.rtp_ssrcs.store(p.slot, state);
        Ok(p.end)
    }

    fn cm_auth(&self) -> Option<&HmacSha1> {
        match &self.rtp {
            Transform::Cm { auth, .. } => Some(auth),
            Transform::Gcm { .. } => None,
        }
    }

    /// SRTP packet → plain RTP packet in `packet[..n]`.
    fn unprotect_rtp(&mut self, packet: &mut [u8]) -> Result<usize, SrtpError> {
        if let Some(prepared) = self.prepare_cm(packet) {
            let p = prepared?;
            let mut tag = [0u8; 10];
            let tag = &mut tag[..packet.len() - p.tag_at];
            let roc = ((p.index >> 16) as u32).to_be_bytes();
            if let Some(auth) = self.cm_auth() {
                auth.tag(&packet[..p.end], &roc, tag);
            }
            return self.complete_cm(&p, packet, tag);
        }
        let h = rtp_header_len(packet).ok_or(SrtpError::Malformed)?;
        let mki_len = self.key.mki_len();
        let unauthenticated = self.options.unauthenticated_srtp && !self.rtp_is_aead();
        let tag_len = if unauthenticated {
            0
        } else {
            self.rtp.tag_len()
        };
        if packet.len() < h + tag_len + mki_len {
            return Err(SrtpError::Malformed);
        }
        let seq = u16::from_be_bytes([packet[2], packet[3]]);
        let ssrc = be32(&packet[8..12]);
        let (slot, mut state) = self.rtp_ssrcs.lookup(ssrc);
        let index = state.estimate(seq).ok_or(SrtpError::Replay)?;
        state.check(index)?;
        let end = packet.len() - tag_len - mki_len;
        let roc = (index >> 16) as u32;
        match &self.rtp {
            Transform::Cm {
                cipher, salt, auth, ..
            } => {
                // The MKI sits between the authenticated portion and the tag (§3.1).
                if !self.mki_matches(&packet[end..end + mki_len]) {
                    return Err(SrtpError::UnknownMki);
                }
                if tag_len > 0 {
                    let mut tag = [0u8; 10];
                    let tag = &mut tag[..tag_len];
                    auth.tag(&packet[..end], &roc.to_be_bytes(), tag);
                    if !tags_equal(tag, &packet[end + mki_len..]) {
                        return Err(SrtpError::AuthFailed);
                    }
                }
                if !self.options.unencrypted_srtp {
                    cipher.xor(&cm_iv(salt, ssrc, index), &mut packet[h..end]);
                }
            }
            Transform::Gcm { aead, salt } => {
                // The tag is part of the ciphertext; the MKI follows it (RFC 7714 §8).
                let tag_end = end + tag_len;
                if !self.mki_matches(&packet[tag_end..tag_end + mki_len]) {
                    return Err(SrtpError::UnknownMki);
                }
                let nonce = gcm_nonce(salt, ssrc, roc, seq, false);
                let (head, rest) = packet.split_at_mut(h);
                let (body, tag) = rest.split_at_mut(end - h);
                if self.options.unencrypted_srtp {
                    // Authentication only: the whole packet is associated data.
                    let mut aad = [0u8; PACKET_MAX];
                    let total = head.len() + body.len();
                    let aad = aad.get_mut(..total).ok_or(SrtpError::Malformed)?;
                    aad[..head.len()].copy_from_slice(head);
                    aad[head.len()..].copy_from_slice(body);
                    gcm_decrypt(aead, &nonce, aad, &mut [], &tag[..tag_len])?;
                } else {
                    gcm_decrypt(aead, &nonce, head, body, &tag[..tag_len])?;
                }
            }
        }
        state.accept(index);
        self.rtp_ssrcs.store(slot, state);
        Ok(end)
    }

    fn rtp_is_aead(&self) -> bool {
        matches!(self.rtp, Transform::Gcm { .. })
    }

    /// SRTCP packet → plain compound RTCP in `packet[..n]`.
    fn unprotect_rtcp(&mut self, packet: &mut [u8]) -> Result<usize, SrtpError> {
        let mki_len = self.key.mki_len();
        let tag_len = self.rtcp.tag_len();
        let aead = matches!(self.rtcp, Transform::Gcm { .. });
        // CM: header(8) .. E|index(4) MKI tag. GCM: header(8) .. tag(16) E|index(4) MKI.
        let trailer = 4 + tag_len + mki_len;
        if packet.len() < 8 + trailer || packet[0] >> 6 != 2 {
            return Err(SrtpError::Malformed);
        }
        let ssrc = be32(&packet[4..8]);
        let len = packet.len();
        let (e_at, mki_at) = match aead {
            false => (len - trailer, len - tag_len - mki_len),
            true => (len - 4 - mki_len, len - mki_len),
        };
        let word = be32(&packet[e_at..e_at + 4]);
        let encrypted = word & 0x8000_0000 != 0;
        let index = u64::from(word & 0x7fff_ffff);
        if !self.mki_matches(&packet[mki_at..mki_at + mki_len]) {
            return Err(SrtpError::UnknownMki);
        }
        let (slot, mut state) = self.rtcp_ssrcs.lookup(ssrc);
        state.check(index)?;
        let plain_end = match &self.rtcp {
            Transform::Cm {
                cipher, salt, auth, ..
            } => {
                let mut tag = [0u8; 10];
                let tag = &mut tag[..tag_len];
                auth.tag(&packet[..e_at + 4], &[], tag);
                if !tags_equal(tag, &packet[len - tag_len..]) {
                    return Err(SrtpError::AuthFailed);
                }
                if encrypted {
                    cipher.xor(&cm_iv(salt, ssrc, index), &mut packet[8..e_at]);
                }
                e_at
            }
            Transform::Gcm { aead, salt } => {
                let nonce = gcm_nonce(salt, ssrc, index as u32, 0, true);
                let ct_end = e_at - tag_len;
                let mut tag = [0u8; 16];
                tag.copy_from_slice(&packet[ct_end..e_at]);
                let word_bytes = word.to_be_bytes();
                if encrypted {
                    // AAD: the first 8 octets and the E|index word (RFC 7714 §9.3).
                    let mut aad = [0u8; 12];
                    aad[..8].copy_from_slice(&packet[..8]);
                    aad[8..].copy_from_slice(&word_bytes);
                    gcm_decrypt(aead, &nonce, &aad, &mut packet[8..ct_end], &tag)?;
                } else {
                    // Unencrypted SRTCP: the whole RTCP and the word are AAD (§9.2).
                    let mut aad = [0u8; PACKET_MAX];
                    let n = ct_end + 4;
                    let aad = aad.get_mut(..n).ok_or(SrtpError::Malformed)?;
                    aad[..ct_end].copy_from_slice(&packet[..ct_end]);
                    aad[ct_end..].copy_from_slice(&word_bytes);
                    gcm_decrypt(aead, &nonce, aad, &mut [], &tag)?;
                }
                ct_end
            }
        };
        state.accept(index);
        self.rtcp_ssrcs.store(slot, state);
        Ok(plain_end)
    }
}

/// How many packets must authenticate under a new key before the old one is forgotten:
/// packets sent before the switch may still arrive late or reordered.
const PREVIOUS_KEY_GRACE: u32 = 128;

/// The SRTP receive side of one stream: the key in force and, after a re-key, the previous
/// one until the SRC has clearly switched.
pub struct Receiver {
    current: Context,
    previous: Option<Context>,
    since_switch: u32,
    stats: SrtpStats,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("suite", &self.current.key.suite)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Receiver {
    pub fn new(params: &SrtpParams) -> Receiver {
        Receiver {
            current: Context::new(params),
            previous: None,
            since_switch: 0,
            stats: SrtpStats::default(),
        }
    }

    pub fn suite(&self) -> Suite {
        self.current.key.suite
    }

    pub fn stats(&self) -> &SrtpStats {
        &self.stats
    }

    /// A re-INVITE's crypto line: a new key takes over from the first packet that
    /// authenticates under it; the ROC and replay state carry over per SSRC, as libsrtp's
    /// `srtp_update` does, since the SSRC's packet index continues.
    pub fn update(&mut self, params: &SrtpParams) {
        if params.key == self.current.key && params.options == self.current.options {
            return;
        }
        let mut next = Context::new(params);
        next.rtp_ssrcs = self.current.rtp_ssrcs.clone();
        next.rtcp_ssrcs = self.current.rtcp_ssrcs.clone();
        self.previous = Some(std::mem::replace(&mut self.current, next));
        self.since_switch = 0;
    }

    /// Authenticates, replay-checks and decrypts an SRTP packet in place; on success the
    /// plain RTP packet is `packet[..n]`. Failures are counted.
    pub fn unprotect_rtp(&mut self, packet: &mut [u8]) -> Result<usize, SrtpError> {
        let r = self.current.unprotect_rtp(packet);
        self.finish(r, packet, false)
    }

    /// Whether `unprotect_rtp_lanes` can interleave this stream's packets (AES-CM with a tag).
    pub fn batches(&self) -> bool {
        self.current.cm_auth().is_some() && !self.current.options.unauthenticated_srtp
    }

    /// `unprotect_rtp` of `N` packets of `N` different streams at once: with AES-CM their
    /// HMAC-SHA1 chains run interleaved (`simd::sha1`), which costs far less per packet than
    /// one at a time. Results and state changes are exactly those of `N` `unprotect_rtp`
    /// calls in lane order.
    pub fn unprotect_rtp_lanes<const N: usize>(
        rx: [&mut Receiver; N],
        pkts: [&mut [u8]; N],
    ) -> [Result<usize, SrtpError>; N] {
        let mut pending: [Option<Pending>; N] = [const { None }; N];
        let mut macs = [[0u8; 20]; N];
        // Phase 1 (shared borrows): every check before the tag, then all MACs at once.
        let ready = 'macs: {
            let mut keys: [Option<&HmacSha1>; N] = [None; N];
            for k in 0..N {
                match (rx[k].current.prepare_cm(pkts[k]), rx[k].current.cm_auth()) {
                    (Some(Ok(p)), Some(auth)) => {
                        keys[k] = Some(auth);
                        pending[k] = Some(p);
                    }
                    _ => break 'macs false,
                }
            }
            let Some(first) = keys[0] else {
                break 'macs false;
            };
            let mut key_refs = [first; N];
            let mut rocs = [[0u8; 4]; N];
            let mut ends = [0usize; N];
            for k in 0..N {
                match (keys[k], &pending[k]) {
                    (Some(key), Some(p)) => {
                        key_refs[k] = key;
                        rocs[k] = ((p.index >> 16) as u32).to_be_bytes();
                        ends[k] = p.end;
                    }
                    _ => break 'macs false,
                }
            }
            let msgs: [(&[u8], &[u8]); N] =
                std::array::from_fn(|k| (&pkts[k][..ends[k]], &rocs[k][..]));
            HmacSha1::mac_lanes(&key_refs, &msgs, &mut macs);
            true
        };
        // Phase 2 (exclusive borrows): compare, decrypt, move the state; or one at a time.
        let mut out = [Ok(0); N];
        for k in 0..N {
            let pkt = &mut *pkts[k];
            let r = &mut *rx[k];
            out[k] = match (ready, pending[k].take()) {
                (true, Some(p)) => {
                    let tag_len = pkt.len() - p.tag_at;
                    let res = r.current.complete_cm(&p, pkt, &macs[k][..tag_len]);
                    r.finish(res, pkt, false)
                }
                _ => r.unprotect_rtp(pkt),
            };
        }
        out
    }

    /// The same for an SRTCP packet.
    pub fn unprotect_rtcp(&mut self, packet: &mut [u8]) -> Result<usize, SrtpError> {
        let r = self.current.unprotect_rtcp(packet);
        self.finish(r, packet, true)
    }

    fn finish(
        &mut self,
        r: Result<usize, SrtpError>,
        packet: &mut [u8],
        rtcp: bool,
    ) -> Result<usize, SrtpError> {
        match r {
            Ok(n) => {
                if self.previous.is_some() {
                    self.since_switch += 1;
                    if self.since_switch >= PREVIOUS_KEY_GRACE {
                        self.previous = None;
                    }
                }
                Ok(n)
            }
            Err(e @ (SrtpError::AuthFailed | SrtpError::UnknownMki)) => {
                // A failed check leaves the packet untouched, so the old key can try it.
                let old = self.previous.as_mut().map(|p| match rtcp {
                    false => p.unprotect_rtp(packet),
                    true => p.unprotect_rtcp(packet),
                });
                match old {
                    Some(Ok(n)) => {
                        self.stats.previous_key_packets += 1;
                        Ok(n)
                    }
                    _ => {
                        self.stats.count(e);
                        Err(e)
                    }
                }
            }
            Err(e) => {
                self.stats.count(e);
                Err(e)
            }
        }
    }
}

/// The sending side, for the load generator and tests: tracks the ROC of one SSRC.
pub struct Sender {
    ctx: Context,
    roc: u32,
    last_seq: Option<u16>,
    rtcp_index: u32,
}

impl Sender {
    pub fn new(params: &SrtpParams) -> Sender {
        Sender {
            ctx: Context::new(params),
            roc: 0,
            last_seq: None,
            rtcp_index: 0,
        }
    }

    /// Bytes `protect_rtp` appends (tag and MKI).
    pub fn rtp_overhead(&self) -> usize {
        let tag = if self.ctx.options.unauthenticated_srtp && !self.ctx.rtp_is_aead() {
            0
        } else {
            self.ctx.rtp.tag_len()
        };
        tag + self.ctx.key.mki_len()
    }

    /// Protects the RTP packet in `buf[..len]` in place; returns the SRTP length. `buf` must
    /// have `rtp_overhead()` spare bytes. Sequence numbers must not go backwards by more
    /// than half the space (no reordering on send).
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Option<usize> {
        let h = rtp_header_len(&buf[..len])?;
        let out = len + self.rtp_overhead();
        if buf.len() < out {
            return None;
        }
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        if let Some(last) = self.last_seq {
            if seq < last && last - seq > 0x8000 {
                self.roc = self.roc.wrapping_add(1);
            }
        }
        self.last_seq = Some(seq);
        let ssrc = be32(&buf[8..12]);
        let index = u64::from(self.roc) << 16 | u64::from(seq);
        let mki = self.mki_bytes();
        let mki = &mki[4 - self.ctx.key.mki_len()..];
        match &self.ctx.rtp {
            Transform::Cm {
                cipher,
                salt,
                auth,
                tag_len,
            } => {
                if !self.ctx.options.unencrypted_srtp {
                    cipher.xor(&cm_iv(salt, ssrc, index), &mut buf[h..len]);
                }
                buf[len..len + mki.len()].copy_from_slice(mki);
                if !self.ctx.options.unauthenticated_srtp {
                    let mut tag = [0u8; 10];
                    let tag = &mut tag[..*tag_len];
                    auth.tag(&buf[..len], &self.roc.to_be_bytes(), tag);
                    buf[len + mki.len()..out].copy_from_slice(tag);
                }
            }
            Transform::Gcm { aead, salt } => {
                let nonce = gcm_nonce(salt, ssrc, self.roc, seq, false);
                let (head, rest) = buf.split_at_mut(h);
                let (body, rest) = rest.split_at_mut(len - h);
                gcm_encrypt(aead, &nonce, head, body, &mut rest[..16]);
                rest[16..16 + mki.len()].copy_from_slice(mki);
            }
        }
        Some(out)
    }

    /// Protects a compound RTCP packet in `buf[..len]` in place (always encrypted).
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Option<usize> {
        let tag_len = self.ctx.rtcp.tag_len();
        let mki_len = self.ctx.key.mki_len();
        let out = len + 4 + tag_len + mki_len;
        if len < 8 || buf.len() < out {
            return None;
        }
        let ssrc = be32(&buf[4..8]);
        let index = self.rtcp_index & 0x7fff_ffff;
        self.rtcp_index = self.rtcp_index.wrapping_add(1);
        let word = (0x8000_0000 | index).to_be_bytes();
        let mki = self.mki_bytes();
        let mki = &mki[4 - mki_len..];
        match &self.ctx.rtcp {
            Transform::Cm {
                cipher, salt, auth, ..
            } => {
                cipher.xor(&cm_iv(salt, ssrc, u64::from(index)), &mut buf[8..len]);
                buf[len..len + 4].copy_from_slice(&word);
                buf[len + 4..len + 4 + mki_len].copy_from_slice(mki);
                let mut tag = [0u8; 10];
                auth.tag(&buf[..len + 4], &[], &mut tag);
                buf[out - tag_len..out].copy_from_slice(&tag[..tag_len]);
            }
            Transform::Gcm { aead, salt } => {
                let nonce = gcm_nonce(salt, ssrc, index, 0, true);
                let mut aad = [0u8; 12];
                aad[..8].copy_from_slice(&buf[..8]);
                aad[8..].copy_from_slice(&word);
                let (body, rest) = buf[8..].split_at_mut(len - 8);
                gcm_encrypt(aead, &nonce, &aad, body, &mut rest[..16]);
                rest[16..20].copy_from_slice(&word);
                rest[20..20 + mki_len].copy_from_slice(mki);
            }
        }
        Some(out)
    }

    fn mki_bytes(&self) -> [u8; 4] {
        self.ctx.key.mki.map_or([0; 4], |(v, _)| v.to_be_bytes())
    }
}

#[cfg(test)]
mod tests;
