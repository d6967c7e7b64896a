use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn params(suite: Suite, seed: u8) -> SrtpParams {
    let material: Vec<u8> = (0..suite.key_len() + suite.salt_len())
        .map(|i| seed.wrapping_add(i as u8).wrapping_mul(31))
        .collect();
    SrtpParams {
        key: MasterKey::new(suite, &material, None).unwrap(),
        options: Options::default(),
    }
}

/// An RTP packet: PCMU, `seq`, timestamp 160·seq, SSRC, 160 bytes of a pattern.
fn rtp(seq: u16, ssrc: u32) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p[8..12].copy_from_slice(&ssrc.to_be_bytes());
    p.extend((0..160).map(|i| (i as u8) ^ (seq as u8)));
    p
}

fn protect(tx: &mut Sender, plain: &[u8]) -> Vec<u8> {
    let mut buf = plain.to_vec();
    buf.resize(plain.len() + 64, 0);
    let n = tx.protect_rtp(&mut buf, plain.len()).unwrap();
    buf.truncate(n);
    buf
}

/// RFC 3711 Appendix B.2: AES-CM keystream for session key 2B7E…, salt F0F1…FD, SSRC 0,
/// index 0 (blocks 0, 1, 2 and 0xFEFF…0xFF01).
#[test]
fn rfc3711_b2_keystream() {
    let cipher = Aes::new(&hex("2B7E151628AED2A6ABF7158809CF4F3C"));
    let mut salt = [0u8; 14];
    salt.copy_from_slice(&hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD"));
    let iv = cm_iv(&salt, 0, 0);
    let mut ks = vec![0u8; 16 * 0xFF02];
    aes_cm_xor(&cipher, &iv, &mut ks);
    assert_eq!(ks[..16], hex("E03EAD0935C95E80E166B16DD92B4EB4"));
    assert_eq!(ks[16..32], hex("D23513162B02D0F72A43A2FE4A5F97AB"));
    assert_eq!(ks[32..48], hex("41E95B3BB0A2E8DD477901E4FCA894C0"));
    assert_eq!(
        ks[16 * 0xFEFF..16 * 0xFF00],
        hex("EC8CDF7398607CB0F2D21675EA9EA1E4")
    );
    assert_eq!(
        ks[16 * 0xFF00..16 * 0xFF01],
        hex("362B7C3C6773516318A077D7FC5073AE")
    );
    assert_eq!(
        ks[16 * 0xFF01..16 * 0xFF02],
        hex("6A2CC3787889374FBEB4C81B17BA6C44")
    );
    // The AES-NI path gives the same whole segment.
    if let Some(fast) = crate::simd::aes::RoundKeys::new(&hex("2B7E151628AED2A6ABF7158809CF4F3C")) {
        let mut ks2 = vec![0u8; 16 * 0xFF02];
        fast.ctr_xor(&iv, &mut ks2);
        assert!(ks2 == ks, "AES-NI keystream differs");
    }
}

/// RFC 3711 Appendix B.3: session keys derived from master key E1F9… and salt 0EC6….
#[test]
fn rfc3711_b3_key_derivation() {
    let mut material = hex("E1F97A0D3E018BE0D64FA32C06DE4139");
    material.extend(hex("0EC675AD498AFEEBB6960B3AABE6"));
    let master = MasterKey::new(Suite::AesCm128HmacSha1_80, &material, None).unwrap();
    let mut key = [0u8; 16];
    derive_session_key(&master, LABEL_RTP_KEY, &mut key);
    assert_eq!(key[..], hex("C61E7A93744F39EE10734AFE3FF7A087"));
    let mut salt = [0u8; 14];
    derive_session_key(&master, LABEL_RTP_SALT, &mut salt);
    assert_eq!(salt[..], hex("30CBBC08863D8C85D49DB34A9AE1"));
    let mut auth = [0u8; 94];
    derive_session_key(&master, LABEL_RTP_AUTH, &mut auth);
    assert_eq!(
        auth[..],
        hex(
            "CEBE321F6FF7716B6FD4AB49AF256A156D38BAA48F0A0ACF3C34E2359E6CDBCE\
             E049646C43D9327AD175578EF72270986371C10C9A369AC2F94A8C5FBCDDDC25\
             6D6E919A48B610EF17C2041E474035766B68642C59BBFC2F34DB60DBDFB2"
        )
    );
}

/// RFC 6188 §7.1: AES-256 counter-mode keystream.
#[test]
fn rfc6188_keystream() {
    let cipher = Aes::new(&hex(
        "57f82fe3613fd170a85ec93c40b1f0922ec4cb0dc025b58272147cc438944a98",
    ));
    let mut salt = [0u8; 14];
    salt.copy_from_slice(&hex("f0f1f2f3f4f5f6f7f8f9fafbfcfd"));
    let mut ks = [0u8; 48];
    aes_cm_xor(&cipher, &cm_iv(&salt, 0, 0), &mut ks);
    assert_eq!(
        ks[..],
        hex(
            "92bdd28a93c3f52511c677d08b5515a49da71b2378a854f67050756ded165bac\
             63c4868b7096d88421b563b8c94c9a31"
        )
    );
}

/// RFC 6188 §7.2: AES-256 key derivation.
#[test]
fn rfc6188_key_derivation() {
    let mut material = hex("f0f04914b513f2763a1b1fa130f10e2998f6f6e43e4309d1e622a0e332b9f1b6");
    material.extend(hex("3b04803de51ee7c96423ab5b78d2"));
    let master = MasterKey::new(Suite::Aes256CmHmacSha1_80, &material, None).unwrap();
    let mut key = [0u8; 32];
    derive_session_key(&master, LABEL_RTP_KEY, &mut key);
    assert_eq!(
        key[..],
        hex("5ba1064e30ec51613cad926c5a28ef731ec7fb397f70a960653caf06554cd8c4")
    );
    let mut salt = [0u8; 14];
    derive_session_key(&master, LABEL_RTP_SALT, &mut salt);
    assert_eq!(salt[..], hex("fa31791685ca444a9e07c6c64e93"));
    let mut auth = [0u8; 20];
    derive_session_key(&master, LABEL_RTP_AUTH, &mut auth);
    assert_eq!(auth[..], hex("fd9c32d39ed5fbb5a9dc96b30818454d1313dc05"));
}

/// A context whose SRTP and SRTCP transforms use the given GCM session key and salt (the
/// RFC 7714 vectors skip key derivation).
fn gcm_context(session_key: &[u8]) -> Context {
    let suite = match session_key.len() {
        16 => Suite::AeadAes128Gcm,
        _ => Suite::AeadAes256Gcm,
    };
    let mut salt = [0u8; 12];
    salt.copy_from_slice(&hex("517569642070726f2071756f"));
    let aead = match suite {
        Suite::AeadAes128Gcm => Gcm::G128(aes_gcm::Aes128Gcm::new(GenericArray::from_slice(
            session_key,
        ))),
        _ => Gcm::G256(aes_gcm::Aes256Gcm::new(GenericArray::from_slice(
            session_key,
        ))),
    };
    let mut ctx = Context::new(&params(suite, 0));
    ctx.rtp = Transform::Gcm {
        aead: aead.clone(),
        salt,
    };
    ctx.rtcp = Transform::Gcm { aead, salt };
    ctx
}

const RFC7714_KEY_256: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// RFC 7714 §16: the RTP packet "Gallia est omnis divisa in partes tres" under
/// AEAD_AES_128_GCM and AEAD_AES_256_GCM; decrypting gives the packet back.
#[test]
fn rfc7714_rtp() {
    let plain = hex(
        "8040f17b8041f8d35501a0b247616c6c696120657374206f6d6e69732064697669\
                     736120696e207061727465732074726573",
    );
    let cases = [
        (
            &RFC7714_KEY_256[..32],
            "8040f17b8041f8d35501a0b2f24de3a3fb34de6cacba861c9d7e4bcabe633bd50d294e6f42a5f47a\
             51c7d19b36de3adf8833899d7f27beb16a9152cf765ee4390cce",
        ),
        (
            RFC7714_KEY_256,
            "8040f17b8041f8d35501a0b232b1de78a822fe12ef9f78fa332e33aab18012389a58e2f3b50b2a02\
             76ffae0f1ba63799b87b7aa3db36dfffd6b0f9bb7878d7a76c13",
        ),
    ];
    for (key, protected) in cases {
        let mut ctx = gcm_context(&hex(key));
        let mut pkt = hex(protected);
        let n = ctx.unprotect_rtp(&mut pkt).unwrap();
        assert_eq!(pkt[..n], plain[..]);
        let mut bad = hex(protected);
        bad[20] ^= 0x80;
        let mut ctx = gcm_context(&hex(key));
        assert_eq!(ctx.unprotect_rtp(&mut bad), Err(SrtpError::AuthFailed));
        let mut tx = Sender {
            ctx: gcm_context(&hex(key)),
            roc: 0,
            last_seq: None,
            rtcp_index: 0,
        };
        let mut buf = plain.clone();
        buf.resize(plain.len() + 16, 0);
        let n = tx.protect_rtp(&mut buf, plain.len()).unwrap();
        assert_eq!(buf[..n], hex(protected)[..]);
    }
}

/// RFC 7714 §17: SRTCP, encrypted (E=1) and authenticated only (E=0), both key sizes.
#[test]
fn rfc7714_rtcp() {
    let plain = hex(
        "81c8000d4d6172734e5450314e545032525450200000042a0000e9304c756e61\
                     deadbeefdeadbeefdeadbeefdeadbeefdeadbeef",
    );
    let cases = [
        (
            &RFC7714_KEY_256[..32],
            "81c8000d4d61727363e94885dcdab67ca727d7662f6b7e997ff5c0f76c06f32dc676a5f1730d6fda\
             4ce09b4686303ded0bb9275bc84aa45896cf4d2fc5abf87245d9eade800005d4",
        ),
        (
            RFC7714_KEY_256,
            "81c8000d4d617273d50ae4d1f5ce5d304ba297e47d470c282c3ece5dbffe0a50a2eaa5c1110555be\
             8415f658c61de0476f1b6fad1d1eb30c4446839f57ff6f6cb26ac3be800005d4",
        ),
        (
            &RFC7714_KEY_256[..32],
            "81c8000d4d6172734e5450314e545032525450200000042a0000e9304c756e61deadbeefdeadbeef\
             deadbeefdeadbeefdeadbeef841dd9683dd78ec92ae58790125f62b3000005d4",
        ),
        (
            RFC7714_KEY_256,
            "81c8000d4d6172734e5450314e545032525450200000042a0000e9304c756e61deadbeefdeadbeef\
             deadbeefdeadbeefdeadbeef91db4afbfeee5a978fab4393ed2615fe000005d4",
        ),
    ];
    for (key, protected) in cases {
        let mut ctx = gcm_context(&hex(key));
        let mut pkt = hex(protected);
        let n = ctx.unprotect_rtcp(&mut pkt).unwrap();
        assert_eq!(pkt[..n], plain[..], "{protected}");
        let mut ctx = gcm_context(&hex(key));
        let mut bad = hex(protected);
        bad[9] ^= 1;
        assert_eq!(ctx.unprotect_rtcp(&mut bad), Err(SrtpError::AuthFailed));
    }
    // Our sender produces the encrypted vector from index 0x5d4.
    let mut tx = Sender {
        ctx: gcm_context(&hex(&RFC7714_KEY_256[..32])),
        roc: 0,
        last_seq: None,
        rtcp_index: 0x5d4,
    };
    let mut buf = plain.clone();
    buf.resize(plain.len() + 20, 0);
    let n = tx.protect_rtcp(&mut buf, plain.len()).unwrap();
    assert_eq!(buf[..n], hex(cases[0].1)[..]);
}

/// Every suite: protect → unprotect gives the packet back; SRTCP too.
#[test]
fn round_trip_every_suite() {
    for suite in Suite::ALL {
        let p = params(suite, 7);
        let mut tx = Sender::new(&p);
        let mut rx = Receiver::new(&p);
        for seq in [1u16, 2, 3, 10, 9] {
            let plain = rtp(seq, 0x1234_5678);
            let mut pkt = protect(&mut tx, &plain);
            assert_eq!(pkt.len(), plain.len() + suite.rtp_tag_len(), "{suite:?}");
            assert_ne!(pkt[12..172], plain[12..], "{suite:?} payload encrypted");
            let n = rx.unprotect_rtp(&mut pkt).unwrap();
            assert_eq!(pkt[..n], plain[..], "{suite:?}");
        }
        let sr = hex("80c8000600000001 0000000100000002 0000000300000004 00000005");
        let mut buf = sr.clone();
        buf.resize(sr.len() + 64, 0);
        let n = tx.protect_rtcp(&mut buf, sr.len()).unwrap();
        buf.truncate(n);
        assert_eq!(n, sr.len() + 4 + suite.rtcp_tag_len());
        let n = rx.unprotect_rtcp(&mut buf).unwrap();
        assert_eq!(buf[..n], sr[..], "{suite:?} srtcp");
        assert_eq!(*rx.stats(), SrtpStats::default());
    }
}

/// A flipped bit anywhere fails authentication and leaves the stream usable; a replayed
/// packet and one older than the window are refused before any decryption.
#[test]
fn broken_tag_and_replay() {
    for suite in Suite::ALL {
        let p = params(suite, 9);
        let mut tx = Sender::new(&p);
        let mut rx = Receiver::new(&p);
        let good = protect(&mut tx, &rtp(100, 1));
        for bit in [0usize, 12 * 8, (good.len() - 1) * 8] {
            let mut bad = good.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(rx.unprotect_rtp(&mut bad).is_err(), "{suite:?} bit {bit}");
        }
        let mut ok = good.clone();
        rx.unprotect_rtp(&mut ok).unwrap();
        let mut again = good.clone();
        assert_eq!(rx.unprotect_rtp(&mut again), Err(SrtpError::Replay));
        assert_eq!(again, good, "a replay is not decrypted");
        // Move 200 packets ahead: 100 is now outside the 128-packet window.
        let mut far = protect(&mut tx, &rtp(300, 1));
        rx.unprotect_rtp(&mut far).unwrap();
        let mut late = protect(&mut tx, &rtp(150, 1));
        assert_eq!(rx.unprotect_rtp(&mut late), Err(SrtpError::Replay));
        // Within the window, a late packet is fine once.
        let mut late = protect(&mut tx, &rtp(250, 1));
        assert!(rx.unprotect_rtp(&mut late.clone()).is_ok());
        assert_eq!(rx.unprotect_rtp(&mut late), Err(SrtpError::Replay));
        let s = rx.stats();
        assert_eq!(s.replays, 3, "{suite:?}");
        assert!(s.auth_failures + s.malformed >= 2, "{suite:?} {s:?}");
    }
}

/// Garbage of every length: an error, never a panic.
#[test]
fn garbage_never_panics() {
    for suite in Suite::ALL {
        let mut rx = Receiver::new(&params(suite, 3));
        for len in 0..64 {
            let mut g: Vec<u8> = (0..len).map(|i| (i * 37 + 0x80) as u8).collect();
            assert!(rx.unprotect_rtp(&mut g).is_err());
            let mut g: Vec<u8> = (0..len).map(|i| (i * 11 + 0x80) as u8).collect();
            assert!(rx.unprotect_rtcp(&mut g).is_err());
        }
    }
}

/// A call longer than 65536 packets: the sequence wraps, the ROC moves up to 3, and
/// reordering across the wrap still decrypts.
#[test]
fn sequence_wrap_and_roc() {
    let p = params(Suite::AesCm128HmacSha1_80, 1);
    let mut tx = Sender::new(&p);
    let mut rx = Receiver::new(&p);
    let mut seq: u16 = 65000;
    let mut total = 0;
    while total < 140_000 {
        // Send 65533, 65535, 65534, 0 … around each wrap: reordered by one.
        let (a, b) = (seq, seq.wrapping_add(1));
        let pa = protect(&mut tx, &rtp(a, 5));
        let pb = protect(&mut tx, &rtp(b, 5));
        for (mut pkt, s) in [(pb, b), (pa, a)] {
            let n = rx
                .unprotect_rtp(&mut pkt)
                .unwrap_or_else(|e| panic!("seq {s}: {e:?}"));
            assert_eq!(pkt[..n], rtp(s, 5)[..]);
        }
        seq = seq.wrapping_add(2);
        total += 2;
    }
    assert_eq!(tx.roc, 3);
    assert_eq!(rx.current.rtp_ssrcs.lookup(5).1.highest >> 16, 3);
}

/// An SSRC change keeps both SSRCs' replay state apart.
#[test]
fn ssrc_change() {
    let p = params(Suite::AesCm128HmacSha1_32, 4);
    let mut tx1 = Sender::new(&p);
    let mut tx2 = Sender::new(&p);
    let mut rx = Receiver::new(&p);
    for seq in 0..10u16 {
        let mut a = protect(&mut tx1, &rtp(seq + 1000, 0xAAAA));
        assert!(rx.unprotect_rtp(&mut a).is_ok());
    }
    // A new SSRC starting at a low sequence number is not mistaken for a replay.
    for seq in 0..10u16 {
        let mut b = protect(&mut tx2, &rtp(seq, 0xBBBB));
        assert!(rx.unprotect_rtp(&mut b).is_ok());
    }
    assert_eq!(*rx.stats(), SrtpStats::default());
}

/// Re-key mid-call: packets under the old key still in flight decrypt, the new key takes
/// over at its first packet, and after the grace period the old key is gone.
#[test]
fn key_change_mid_call() {
    let old = params(Suite::AesCm128HmacSha1_80, 1);
    let new = params(Suite::AeadAes128Gcm, 2);
    let mut tx_old = Sender::new(&old);
    let mut rx = Receiver::new(&old);
    for seq in 0..50u16 {
        let mut p = protect(&mut tx_old, &rtp(seq, 9));
        rx.unprotect_rtp(&mut p).unwrap();
    }
    rx.update(&new);
    assert_eq!(rx.suite(), Suite::AeadAes128Gcm);
    let mut tx_new = Sender::new(&new);
    let late_old = protect(&mut tx_old, &rtp(50, 9));
    let mut first_new = protect(&mut tx_new, &rtp(51, 9));
    assert!(rx.unprotect_rtp(&mut first_new).is_ok());
    let mut l = late_old.clone();
    assert!(rx.unprotect_rtp(&mut l).is_ok(), "late old-key packet");
    assert_eq!(rx.stats().previous_key_packets, 1);
    for seq in 52..(52 + PREVIOUS_KEY_GRACE as u16) {
        let mut p = protect(&mut tx_new, &rtp(seq, 9));
        rx.unprotect_rtp(&mut p).unwrap();
    }
    let mut stale = protect(&mut tx_old, &rtp(400, 9));
    assert_eq!(rx.unprotect_rtp(&mut stale), Err(SrtpError::AuthFailed));
    // The same parameters again (a re-INVITE that keeps the key) change nothing.
    rx.update(&new);
    assert!(rx.previous.is_none());
}

/// MKI: the key is picked by the MKI in the packet; an unknown MKI is counted.
#[test]
fn mki() {
    let material: Vec<u8> = (0..30).collect();
    let key = MasterKey::new(Suite::AesCm128HmacSha1_80, &material, Some((7, 2))).unwrap();
    let p = SrtpParams {
        key,
        options: Options::default(),
    };
    let mut tx = Sender::new(&p);
    let mut rx = Receiver::new(&p);
    let plain = rtp(1, 1);
    let mut pkt = protect(&mut tx, &plain);
    assert_eq!(pkt.len(), plain.len() + 2 + 10);
    assert_eq!(pkt[plain.len()..plain.len() + 2], [0, 7]);
    let mut copy = pkt.clone();
    copy[plain.len() + 1] = 8;
    assert_eq!(rx.unprotect_rtp(&mut copy), Err(SrtpError::UnknownMki));
    let n = rx.unprotect_rtp(&mut pkt).unwrap();
    assert_eq!(pkt[..n], plain[..]);
}

/// UNENCRYPTED_SRTP and UNAUTHENTICATED_SRTP change the packet layout as RFC 4568 says.
#[test]
fn session_parameters() {
    let mut p = params(Suite::AesCm128HmacSha1_80, 5);
    p.options.unencrypted_srtp = true;
    let mut tx = Sender::new(&p);
    let mut rx = Receiver::new(&p);
    let plain = rtp(1, 1);
    let mut pkt = protect(&mut tx, &plain);
    assert_eq!(pkt[..plain.len()], plain[..], "payload in clear");
    assert_eq!(rx.unprotect_rtp(&mut pkt), Ok(plain.len()));

    let mut p = params(Suite::AesCm128HmacSha1_80, 5);
    p.options.unauthenticated_srtp = true;
    let mut tx = Sender::new(&p);
    let mut rx = Receiver::new(&p);
    let mut pkt = protect(&mut tx, &plain);
    assert_eq!(pkt.len(), plain.len(), "no tag");
    assert_eq!(rx.unprotect_rtp(&mut pkt), Ok(plain.len()));
    assert_eq!(pkt, plain);
}

/// Keys never reach logs: Debug of keys and receivers shows the suite only.
#[test]
fn debug_hides_keys() {
    let p = params(Suite::AesCm128HmacSha1_80, 0x41);
    let text = format!("{p:?} {:?}", Receiver::new(&p));
    assert!(text.contains("AesCm128HmacSha1_80"));
    for b in p.key.key() {
        assert!(!text.contains(&format!("{b}, ")), "{text}");
    }
}

mod sdes_tests {
    use super::super::sdes::*;
    use super::super::*;

    /// RFC 4568 §9.1's example line parses: key, lifetime, MKI.
    #[test]
    fn parse_rfc_example() {
        let c = parse(
            "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:4",
        )
        .unwrap();
        assert_eq!(c.tag, 1);
        assert_eq!(c.suite, Suite::AesCm128HmacSha1_80);
        assert_eq!(c.params.key.mki, Some((1, 4)));
        assert_eq!(c.params.key.key().len(), 16);
        assert_eq!(c.params.options, Options::default());
    }

    #[test]
    fn parse_errors() {
        let key = "inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR";
        assert_eq!(parse(""), Err(SdesError::Incomplete));
        assert!(matches!(
            parse(&format!("1 F8_128_HMAC_SHA1_80 {key}")),
            Err(SdesError::UnsupportedSuite(_))
        ));
        assert_eq!(
            parse(&format!("1 AES_256_CM_HMAC_SHA1_80 {key}")),
            Err(SdesError::BadKeyLength)
        );
        assert_eq!(
            parse("1 AES_CM_128_HMAC_SHA1_80 inline:!!!"),
            Err(SdesError::BadKey)
        );
        assert_eq!(
            parse(&format!("1 AES_CM_128_HMAC_SHA1_80 {key}|1:9")),
            Err(SdesError::BadMki)
        );
        assert!(matches!(
            parse(&format!("1 AES_CM_128_HMAC_SHA1_80 {key} KDR=4")),
            Err(SdesError::UnsupportedParameter(_))
        ));
        let c = parse(&format!(
            "2 AES_CM_128_HMAC_SHA1_32 {key} UNENCRYPTED_SRTCP WSH=64"
        ))
        .unwrap();
        assert!(c.params.options.unencrypted_srtcp);
    }

    /// Several lines: the strongest supported wins; unsupported ones are skipped.
    #[test]
    fn choose_strongest() {
        let k30 = base64_encode(&[1u8; 30]);
        let k44 = base64_encode(&[2u8; 44]);
        let k46 = base64_encode(&[3u8; 46]);
        let lines = [
            format!("1 AES_CM_128_HMAC_SHA1_32 inline:{k30}"),
            format!("2 F8_128_HMAC_SHA1_80 inline:{k30}"),
            format!("3 AEAD_AES_256_GCM inline:{k44}"),
            format!("4 AES_256_CM_HMAC_SHA1_80 inline:{k46}"),
        ];
        let c = choose(lines.iter().map(String::as_str)).unwrap();
        assert_eq!((c.tag, c.suite), (3, Suite::AeadAes256Gcm));
        assert!(choose(["1 F8_128_HMAC_SHA1_80 inline:x"]).is_none());
    }

    #[test]
    fn answer_line() {
        let c = parse(&format!(
            "5 AES_CM_128_HMAC_SHA1_80 inline:{} UNENCRYPTED_SRTCP",
            base64_encode(&[0u8; 30])
        ))
        .unwrap();
        let line = answer_value(&c, &[0xffu8; 30]);
        let want = format!(
            "5 AES_CM_128_HMAC_SHA1_80 inline:{} UNENCRYPTED_SRTCP",
            "/".repeat(40)
        );
        assert_eq!(line, want);
    }

    #[test]
    fn base64_round_trip() {
        for n in 0..50usize {
            let data: Vec<u8> = (0..n).map(|i| (i * 73) as u8).collect();
            let text = base64_encode(&data);
            let mut out = [0u8; 64];
            let m = base64_decode(&text, &mut out).unwrap();
            assert_eq!(out[..m], data[..]);
        }
        let mut small = [0u8; 2];
        assert_eq!(base64_decode("AAAAAA", &mut small), None);
    }
}

/// Our HMAC-SHA1 equals the hmac crate's for every message length around block edges.
#[test]
fn hmac_sha1_matches_reference() {
    use hmac::Mac;
    let key: [u8; 20] = std::array::from_fn(|i| i as u8 * 3);
    let ours = HmacSha1::new(&key);
    let data: Vec<u8> = (0..300).map(|i| (i * 7) as u8).collect();
    for len in 0..data.len() {
        for suffix in [&[][..], &[1, 2, 3, 4][..]] {
            let mut reference = <hmac::Hmac<sha1::Sha1> as Mac>::new_from_slice(&key).unwrap();
            reference.update(&data[..len]);
            reference.update(suffix);
            let want = reference.finalize().into_bytes();
            let mut got = [0u8; 20];
            ours.tag(&data[..len], suffix, &mut got);
            assert_eq!(got[..], want[..], "len {len}");
        }
    }
}

/// Pairs give exactly what single calls give: good packets, a broken tag in either lane, a
/// replay, different suites (GCM falls back to one at a time), and a re-keyed receiver.
#[test]
fn pairs_equal_single() {
    for (sa, sb) in [
        (Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_80),
        (Suite::AesCm128HmacSha1_32, Suite::Aes256CmHmacSha1_80),
        (Suite::AesCm128HmacSha1_80, Suite::AeadAes128Gcm),
    ] {
        let (pa, pb) = (params(sa, 1), params(sb, 2));
        let (mut txa, mut txb) = (Sender::new(&pa), Sender::new(&pb));
        let (mut ra, mut rb) = (Receiver::new(&pa), Receiver::new(&pb));
        let (mut sa1, mut sb1) = (Receiver::new(&pa), Receiver::new(&pb));
        for seq in 0..300u16 {
            let plain_a = rtp(seq, 10);
            // Lane b: a different length and, now and then, a header extension.
            let mut plain_b = rtp(seq.wrapping_mul(3), 20);
            if seq % 7 == 0 {
                plain_b[0] |= 0x10;
                plain_b.splice(12..12, [0xbe, 0xde, 0, 1, 1, 2, 3, 4]);
            }
            plain_b.truncate(plain_b.len() - (seq % 50) as usize);
            let mut a = protect(&mut txa, &plain_a);
            let mut b = protect(&mut txb, &plain_b);
            match seq % 11 {
                3 => a[20] ^= 1,
                5 => {
                    let n = b.len();
                    b[n - 1] ^= 1
                }
                _ => {}
            }
            if seq % 13 == 4 {
                // A replay of this very packet right after it, in the other lane's pair.
                let mut again = a.clone();
                let _ = sa1.unprotect_rtp(&mut again.clone());
                let mut b2 = b.clone();
                let _ = Receiver::unprotect_rtp_lanes([&mut ra, &mut rb], [&mut again, &mut b2]);
                let _ = sb1.unprotect_rtp(&mut b.clone());
            }
            let (mut a1, mut b1) = (a.clone(), b.clone());
            let want = [sa1.unprotect_rtp(&mut a1), sb1.unprotect_rtp(&mut b1)];
            let got = Receiver::unprotect_rtp_lanes([&mut ra, &mut rb], [&mut a, &mut b]);
            assert_eq!(got, want, "{sa:?} {sb:?} seq {seq}");
            assert_eq!((a, b), (a1, b1), "same bytes after");
        }
        assert_eq!(ra.stats(), sa1.stats());
        assert_eq!(rb.stats(), sb1.stats());
        assert!(ra.stats().auth_failures > 0);
    }
}

/// Four lanes: four streams of different suites and lengths decrypt as they would alone.
#[test]
fn four_lanes() {
    let suites = [
        Suite::AesCm128HmacSha1_80,
        Suite::Aes256CmHmacSha1_32,
        Suite::AesCm128HmacSha1_32,
        Suite::Aes256CmHmacSha1_80,
    ];
    let ps = suites.map(|s| params(s, s.strength()));
    let mut tx = ps.each_ref().map(Sender::new);
    let mut rx = ps.each_ref().map(Receiver::new);
    for seq in 0..200u16 {
        let plain: [Vec<u8>; 4] = std::array::from_fn(|k| {
            let mut p = rtp(seq, k as u32);
            p.truncate(p.len() - k * 30 - (seq as usize % 9));
            p
        });
        let mut pk: [Vec<u8>; 4] = std::array::from_fn(|k| protect(&mut tx[k], &plain[k]));
        if seq % 17 == 3 {
            pk[2][15] ^= 4;
        }
        let [r0, r1, r2, r3] = &mut rx;
        let [p0, p1, p2, p3] = &mut pk;
        let got = Receiver::unprotect_rtp_lanes([r0, r1, r2, r3], [p0, p1, p2, p3]);
        for k in 0..4 {
            if k == 2 && seq % 17 == 3 {
                assert_eq!(got[k], Err(SrtpError::AuthFailed));
                continue;
            }
            let n = got[k].unwrap();
            assert_eq!(pk[k][..n], plain[k][..], "lane {k} seq {seq}");
        }
    }
    assert_eq!(rx[2].stats().auth_failures, 12);
}

/// Without AES-NI the `aes` crate path runs: both give the same keystream.
#[test]
fn portable_and_aesni_keystreams_agree() {
    for key in [vec![3u8; 16], vec![9u8; 32]] {
        let soft = CmCipher {
            fast: None,
            soft: Aes::new(&key),
        };
        let fast = CmCipher {
            fast: crate::simd::aes::RoundKeys::new(&key),
            soft: Aes::new(&key),
        };
        let iv = cm_iv(&[7; 14], 0x1234, 0x0001_0002_0003);
        for len in [0usize, 1, 15, 16, 17, 160, 161, 191, 192, 193, 400] {
            let (mut a, mut b) = (vec![0x5au8; len], vec![0x5au8; len]);
            soft.xor(&iv, &mut a);
            fast.xor(&iv, &mut b);
            assert_eq!(a, b, "key {} len {len}", key.len());
        }
    }
}
