//! G.711 µ-law (PCMU) and A-law (PCMA) decoding, ITU-T G.711, by 256-entry tables.
//!
//! Encoders are here too: the test SRC and the bench need them to produce known audio.

/// Decodes µ-law bytes into 16-bit PCM. `out` must be at least `input.len()` long.
pub fn decode_ulaw(input: &[u8], out: &mut [i16]) {
    for (o, &b) in out.iter_mut().zip(input) {
        *o = ULAW_TABLE[b as usize];
    }
}

/// Decodes A-law bytes into 16-bit PCM. `out` must be at least `input.len()` long.
pub fn decode_alaw(input: &[u8], out: &mut [i16]) {
    for (o, &b) in out.iter_mut().zip(input) {
        *o = ALAW_TABLE[b as usize];
    }
}

pub const fn ulaw_to_linear(u: u8) -> i16 {
    let u = !u;
    let sign = u & 0x80;
    let exponent = ((u >> 4) & 0x07) as i32;
    let mantissa = (u & 0x0F) as i32;
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    if sign != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

pub const fn alaw_to_linear(a: u8) -> i16 {
    let a = a ^ 0x55;
    let sign = a & 0x80;
    let exponent = ((a >> 4) & 0x07) as i32;
    let mantissa = (a & 0x0F) as i32;
    let magnitude = if exponent == 0 {
        (mantissa << 4) + 8
    } else {
        ((mantissa << 4) + 0x108) << (exponent - 1)
    };
    if sign != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

/// Encodes one linear sample to µ-law (G.711 §A, with the 0x84 bias).
pub fn linear_to_ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut s = sample as i32;
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    if s > CLIP {
        s = CLIP;
    }
    s += BIAS;
    let mut exponent = 7;
    let mut mask = 0x4000;
    while exponent > 0 && s & mask == 0 {
        exponent -= 1;
        mask >>= 1;
    }
    let mantissa = (s >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) | mantissa) as u8
}

/// Encodes one linear sample to A-law.
pub fn linear_to_alaw(sample: i16) -> u8 {
    let mut s = sample as i32;
    let sign = if s >= 0 { 0x80 } else { 0x00 };
    if s < 0 {
        s = -s - 1;
    }
    if s > 32767 {
        s = 32767;
    }
    let (exponent, mantissa) = if s < 256 {
        (0, (s >> 4) & 0x0F)
    } else {
        let mut e = 1;
        while e < 7 && s >= (256 << e) {
            e += 1;
        }
        (e, (s >> (e + 3)) & 0x0F)
    };
    ((sign | (exponent << 4) | mantissa) ^ 0x55) as u8
}

static ULAW_TABLE: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = ulaw_to_linear(i as u8);
        i += 1;
    }
    t
};

static ALAW_TABLE: [i16; 256] = {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = alaw_to_linear(i as u8);
        i += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    /// Known values from the G.711 tables: µ-law 0xFF/0x7F are ±0, 0x00 is -32124,
    /// A-law 0xD5 is +8 and 0x55 is -8, 0xAA is +32256.
    #[test]
    fn known_values() {
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xAA), 32256);
    }

    /// Encoding a decoded code gives the same code back, for every code (the tables are the
    /// codec's fixed points), except µ-law's negative zero which encodes to positive zero.
    #[test]
    fn roundtrip_every_code() {
        for c in 0..=255u8 {
            let lin = ulaw_to_linear(c);
            let back = linear_to_ulaw(lin);
            assert_eq!(ulaw_to_linear(back), lin, "ulaw code {c:#x}");
            let lin = alaw_to_linear(c);
            assert_eq!(linear_to_alaw(lin), c, "alaw code {c:#x}");
        }
    }
}
