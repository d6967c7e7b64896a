//! SRTP unprotect per suite at a 160-byte payload (one 20 ms G.711 packet), against a
//! baseline measured in the same run: the same transform on OpenSSL EVP the way libsrtp
//! drives it (cipher and HMAC contexts keyed once per stream, only the IV re-set per packet:
//! `srtp_aes_icm_openssl_set_iv`, `HMAC_Init_ex(ctx, NULL, ...)`), i.e. what libsrtp built
//! with OpenSSL costs. Both sides check the tag, then decrypt in place; results are read as
//! ratios `siprec/<suite>` ÷ `openssl/<suite>`. `siprec_lanes{2,4}/<suite>` is the per-packet
//! cost when two or four streams' packets are unprotected together
//! (`Receiver::unprotect_rtp_lanes`), as the data plane does with the packets of one receive
//! batch.
//!
//!   cargo bench --bench srtp

use std::hint::black_box;
use std::ptr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;

use siprec::srtp::{
    derive_session_key, MasterKey, Options, Receiver, Sender, SrtpParams, Suite, LABEL_RTP_AUTH,
    LABEL_RTP_KEY, LABEL_RTP_SALT,
};

/// Distinct packets per pass; the receiver is rebuilt between passes (replay protection).
const PACKETS: usize = 4096;

fn params(suite: Suite) -> SrtpParams {
    let material: Vec<u8> = (0..suite.key_len() + suite.salt_len())
        .map(|i| (i * 7 + 3) as u8)
        .collect();
    SrtpParams {
        key: MasterKey::new(suite, &material, None).unwrap(),
        options: Options::default(),
    }
}

/// `PACKETS` protected packets of one stream, in order, and their plain versions.
fn packets(p: &SrtpParams) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut tx = Sender::new(p);
    let mut plain = Vec::new();
    let mut protected = Vec::new();
    for i in 0..PACKETS {
        let seq = (i as u16).wrapping_add(1000);
        let mut pkt = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78];
        pkt[2..4].copy_from_slice(&seq.to_be_bytes());
        pkt[4..8].copy_from_slice(&((i as u32) * 160).to_be_bytes());
        pkt.extend((0..160).map(|j| (i + j * 13) as u8));
        plain.push(pkt.clone());
        let len = pkt.len();
        pkt.resize(len + 32, 0);
        let n = tx.protect_rtp(&mut pkt, len).unwrap();
        pkt.truncate(n);
        protected.push(pkt);
    }
    (plain, protected)
}

/// libsrtp's receive transform on OpenSSL: AES-CTR or AES-GCM through EVP, HMAC-SHA1 through
/// an HMAC_CTX keyed once.
struct OpenSslSrtp {
    suite: Suite,
    cipher: CipherCtx,
    hmac: *mut openssl_sys::HMAC_CTX,
    salt: [u8; 14],
}

impl OpenSslSrtp {
    fn new(p: &SrtpParams) -> OpenSslSrtp {
        let suite = p.key.suite;
        let mut key = [0u8; 32];
        let key = &mut key[..suite.key_len()];
        derive_session_key(&p.key, LABEL_RTP_KEY, key);
        let mut salt = [0u8; 14];
        derive_session_key(&p.key, LABEL_RTP_SALT, &mut salt[..suite.salt_len()]);
        let mut auth = [0u8; 20];
        derive_session_key(&p.key, LABEL_RTP_AUTH, &mut auth);
        let evp = match suite {
            Suite::AesCm128HmacSha1_80 | Suite::AesCm128HmacSha1_32 => Cipher::aes_128_ctr(),
            Suite::Aes256CmHmacSha1_80 | Suite::Aes256CmHmacSha1_32 => Cipher::aes_256_ctr(),
            Suite::AeadAes128Gcm => Cipher::aes_128_gcm(),
            Suite::AeadAes256Gcm => Cipher::aes_256_gcm(),
        };
        let mut cipher = CipherCtx::new().unwrap();
        if suite.is_aead() {
            cipher.decrypt_init(Some(evp), Some(key), None).unwrap();
        } else {
            cipher.encrypt_init(Some(evp), Some(key), None).unwrap();
        }
        // SAFETY: HMAC_CTX_new returns an owned context (checked non-null) that lives until
        // Drop; the key pointer and length describe `auth`, valid for the call.
        let hmac = unsafe {
            let ctx = openssl_sys::HMAC_CTX_new();
            assert!(!ctx.is_null());
            let r = openssl_sys::HMAC_Init_ex(
                ctx,
                auth.as_ptr().cast(),
                20,
                openssl_sys::EVP_sha1(),
                ptr::null_mut(),
            );
            assert_eq!(r, 1);
            ctx
        };
        OpenSslSrtp {
            suite,
            cipher,
            hmac,
            salt,
        }
    }

    /// Checks the tag and decrypts in place; returns the plain length.
    fn unprotect(&mut self, pkt: &mut [u8], roc: u32) -> Option<usize> {
        let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
        let ssrc = [pkt[8], pkt[9], pkt[10], pkt[11]];
        let tag_len = self.suite.rtp_tag_len();
        let end = pkt.len().checked_sub(tag_len)?;
        if self.suite.is_aead() {
            let mut iv = [0u8; 12];
            iv[2..6].copy_from_slice(&ssrc);
            iv[6..10].copy_from_slice(&roc.to_be_bytes());
            iv[10..12].copy_from_slice(&seq.to_be_bytes());
            for (b, s) in iv.iter_mut().zip(&self.salt) {
                *b ^= s;
            }
            self.cipher.decrypt_init(None, None, Some(&iv)).ok()?;
            self.cipher.cipher_update(&pkt[..12], None).ok()?;
            let (body, tag) = pkt[12..].split_at_mut(end - 12);
            self.cipher.set_tag(tag).ok()?;
            self.cipher.cipher_update_inplace(body, body.len()).ok()?;
            self.cipher.cipher_final(&mut []).ok()?;
            return Some(end);
        }
        let mut mac = [0u8; 20];
        // SAFETY: `self.hmac` is the live context from `new`; every pointer/length pair
        // describes a slice or array valid for the call; `mac` holds SHA-1's 20 bytes.
        unsafe {
            let ctx = self.hmac;
            openssl_sys::HMAC_Init_ex(ctx, ptr::null(), 0, ptr::null(), ptr::null_mut());
            openssl_sys::HMAC_Update(ctx, pkt.as_ptr(), end);
            openssl_sys::HMAC_Update(ctx, roc.to_be_bytes().as_ptr(), 4);
            let mut len = 20u32;
            openssl_sys::HMAC_Final(ctx, mac.as_mut_ptr(), &mut len);
        }
        let diff = mac[..tag_len]
            .iter()
            .zip(&pkt[end..])
            .fold(0u8, |a, (x, y)| a | (x ^ y));
        if diff != 0 {
            return None;
        }
        let mut iv = [0u8; 16];
        iv[..14].copy_from_slice(&self.salt);
        for (b, s) in iv[4..8].iter_mut().zip(ssrc) {
            *b ^= s;
        }
        iv[12] ^= (seq >> 8) as u8;
        iv[13] ^= seq as u8;
        for (b, s) in iv[8..12].iter_mut().zip(roc.to_be_bytes()) {
            *b ^= s;
        }
        self.cipher.encrypt_init(None, None, Some(&iv)).ok()?;
        self.cipher
            .cipher_update_inplace(&mut pkt[12..end], end - 12)
            .ok()?;
        Some(end)
    }
}

impl Drop for OpenSslSrtp {
    fn drop(&mut self) {
        // SAFETY: the context came from HMAC_CTX_new and is freed exactly once.
        unsafe { openssl_sys::HMAC_CTX_free(self.hmac) }
    }
}

/// Times `iters` unprotects, copying each packet into a receive buffer first (as the data
/// plane's receive buffers hold it), `reset` between passes over the packet set.
fn run<S>(
    iters: u64,
    protected: &[Vec<u8>],
    mut state: S,
    reset: impl Fn() -> S,
    mut unprotect: impl FnMut(&mut S, &mut [u8]) -> Option<usize>,
) -> Duration {
    let mut buf = [0u8; 2048];
    let start = Instant::now();
    for i in 0..iters as usize {
        let k = i % PACKETS;
        if k == 0 && i > 0 {
            state = reset();
        }
        let pkt = &protected[k];
        let b = &mut buf[..pkt.len()];
        b.copy_from_slice(pkt);
        black_box(unprotect(&mut state, b));
    }
    start.elapsed()
}

/// Per-packet time of `iters` packets unprotected `N` at a time, one packet of each of `N`
/// streams per call.
fn lanes<const N: usize>(
    iters: u64,
    params: &[SrtpParams; 4],
    packets: &[Vec<Vec<u8>>; 4],
) -> Duration {
    let rounds = iters.div_ceil(N as u64) as usize;
    let fresh = || -> [Receiver; N] { std::array::from_fn(|k| Receiver::new(&params[k])) };
    let mut rx = fresh();
    let mut bufs = [[0u8; 2048]; N];
    let start = Instant::now();
    for i in 0..rounds {
        let k = i % PACKETS;
        if k == 0 && i > 0 {
            rx = fresh();
        }
        let mut lane = 0;
        let pkts = bufs.each_mut().map(|b| {
            let src = &packets[lane][k];
            lane += 1;
            let b = &mut b[..src.len()];
            b.copy_from_slice(src);
            b
        });
        black_box(Receiver::unprotect_rtp_lanes(rx.each_mut(), pkts));
    }
    start.elapsed() * iters as u32 / (N * rounds) as u32
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("srtp_unprotect_160");
    g.throughput(Throughput::Elements(1));
    for suite in Suite::ALL {
        let p = params(suite);
        let (plain, protected) = packets(&p);

        // Both implementations must turn every packet back into the plain one.
        let mut rx = Receiver::new(&p);
        let mut ossl = OpenSslSrtp::new(&p);
        for (pl, pr) in plain.iter().zip(&protected).take(64) {
            let mut a = pr.clone();
            let n = rx.unprotect_rtp(&mut a).unwrap();
            assert_eq!(&a[..n], &pl[..]);
            let mut b = pr.clone();
            let n = ossl.unprotect(&mut b, 0).unwrap();
            assert_eq!(&b[..n], &pl[..], "{suite:?} openssl baseline");
        }

        g.bench_function(format!("openssl/{}", suite.name()), |b| {
            b.iter_custom(|iters| {
                let new = || OpenSslSrtp::new(&p);
                run(iters, &protected, new(), new, |s, pkt| s.unprotect(pkt, 0))
            })
        });
        // Four streams' packets side by side, as a receive batch holds them: per packet.
        let lane_params: [SrtpParams; 4] = std::array::from_fn(|k| {
            let material = [0x5a ^ k as u8; 46];
            SrtpParams {
                key: MasterKey::new(suite, &material[..suite.key_len() + suite.salt_len()], None)
                    .unwrap(),
                options: Options::default(),
            }
        });
        let lane_packets: [Vec<Vec<u8>>; 4] = lane_params.each_ref().map(|p| packets(p).1);
        g.bench_function(format!("siprec_lanes2/{}", suite.name()), |b| {
            b.iter_custom(|iters| lanes::<2>(iters, &lane_params, &lane_packets))
        });
        g.bench_function(format!("siprec_lanes4/{}", suite.name()), |b| {
            b.iter_custom(|iters| lanes::<4>(iters, &lane_params, &lane_packets))
        });
        g.bench_function(format!("siprec/{}", suite.name()), |b| {
            b.iter_custom(|iters| {
                let new = || Receiver::new(&p);
                run(iters, &protected, new(), new, |r, pkt| {
                    r.unprotect_rtp(pkt).ok()
                })
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = srtp;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = benches
}
criterion_main!(srtp);
