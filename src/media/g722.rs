//! ITU-T G.722 decoder, 64 kbit/s (mode 1): each byte carries one 6-bit lower-band and one
//! 2-bit higher-band ADPCM code for a pair of 16 kHz output samples; the two 8 kHz sub-bands
//! are recombined by the 24-tap receive QMF. Integer arithmetic as in the Recommendation, so
//! the output is bit-exact with other conforming decoders (spandsp is the test's reference).
//!
//! RTP (RFC 3551 §4.5.2): the clock rate is signalled as 8000 although the audio is 16 kHz, so
//! one RTP timestamp unit is two output samples.
//!
//! State is per stream (about 300 bytes) and lives in the data-plane worker that owns it.

/// Lower-band inverse quantizer outputs for the 6-bit code (RIL6 → QQ6, scaled).
const QM6: [i32; 64] = [
    -136, -136, -136, -136, -24808, -21904, -19008, -16704, -14984, -13512, -12280, -11192, -10232,
    -9360, -8576, -7856, -7192, -6576, -6000, -5456, -4944, -4464, -4008, -3576, -3168, -2776,
    -2400, -2032, -1688, -1360, -1040, -728, 24808, 21904, 19008, 16704, 14984, 13512, 12280,
    11192, 10232, 9360, 8576, 7856, 7192, 6576, 6000, 5456, 4944, 4464, 4008, 3576, 3168, 2776,
    2400, 2032, 1688, 1360, 1040, 728, 432, 136, -432, -136,
];
/// Lower-band inverse quantizer for the 4-bit code that drives adaptation (QQ4).
const QM4: [i32; 16] = [
    0, -20456, -12896, -8968, -6288, -4240, -2584, -1200, 20456, 12896, 8968, 6288, 4240, 2584,
    1200, 0,
];
/// 4-bit code → magnitude index for the lower band's scale-factor adaptation.
const RL42: [usize; 16] = [0, 7, 6, 5, 4, 3, 2, 1, 7, 6, 5, 4, 3, 2, 1, 0];
/// Lower-band log scale-factor multipliers (WL).
const WL: [i32; 8] = [-60, -30, 58, 172, 334, 538, 1198, 3042];
/// Higher-band inverse quantizer (QQ2), magnitude index and multipliers (WH).
const QM2: [i32; 4] = [-7408, -1616, 7408, 1616];
const RH2: [usize; 4] = [2, 1, 2, 1];
const WH: [i32; 3] = [0, -214, 798];
/// Antilog table for scale factors (ILB).
const ILB: [i32; 32] = [
    2048, 2093, 2139, 2186, 2233, 2282, 2332, 2383, 2435, 2489, 2543, 2599, 2656, 2714, 2774, 2834,
    2896, 2960, 3025, 3091, 3158, 3228, 3298, 3371, 3444, 3520, 3597, 3676, 3756, 3838, 3922, 4008,
];
/// Receive QMF coefficients (the 24-tap filter is symmetric: 12 distinct values).
const QMF: [i32; 12] = [3, -11, 12, 32, -210, 951, 3876, -805, 362, -156, 53, -11];

fn sat16(v: i32) -> i32 {
    v.clamp(i32::from(i16::MIN), i32::from(i16::MAX))
}

/// One sub-band's adaptive predictor (two poles, six zeros) and scale factor.
#[derive(Debug, Clone, Copy, Default)]
struct Band {
    /// Predicted signal, its pole and zero parts.
    s: i32,
    sp: i32,
    sz: i32,
    /// Reconstructed signal, partial reconstructions, pole coefficients: index 0 is the
    /// current sample, then the two before it.
    r: [i32; 3],
    p: [i32; 3],
    a: [i32; 3],
    /// Quantized differences and zero coefficients: current and the six before.
    d: [i32; 7],
    b: [i32; 7],
    /// Log scale factor and the scale factor it gives.
    nb: i32,
    det: i32,
}

impl Band {
    fn new(det: i32) -> Band {
        Band {
            det,
            ..Band::default()
        }
    }

    /// Scale-factor adaptation (LOGSCL + SCALEL/SCALEH): `limit` caps the log scale factor,
    /// `shift` is the band's exponent offset.
    fn adapt_scale(&mut self, multiplier: i32, limit: i32, shift: i32) {
        self.nb = (((self.nb * 127) >> 7) + multiplier).clamp(0, limit);
        let mantissa = ILB[(self.nb >> 6 & 31) as usize];
        let exponent = shift - (self.nb >> 11);
        let det = if exponent < 0 {
            mantissa << -exponent
        } else {
            mantissa >> exponent
        };
        self.det = det << 2;
    }

    /// Block 4 of the Recommendation: reconstruct, adapt the pole and zero coefficients to
    /// the quantized difference `d`, and predict the next sample.
    fn update(&mut self, d: i32) {
        self.d[0] = d;
        self.r[0] = sat16(self.s + d);
        self.p[0] = sat16(self.sz + d);
        let sign = |v: i32| v >> 15;

        // UPPOL2: second pole.
        let wd1 = sat16(self.a[1] << 2);
        let wd2 = if sign(self.p[0]) == sign(self.p[1]) {
            -wd1
        } else {
            wd1
        }
        .min(32767);
        let mut wd3 = if sign(self.p[0]) == sign(self.p[2]) {
            128
        } else {
            -128
        };
        wd3 += wd2 >> 7;
        wd3 += (self.a[2] * 32512) >> 15;
        let a2 = wd3.clamp(-12288, 12288);

        // UPPOL1: first pole, limited by the second.
        let wd1 = if sign(self.p[0]) == sign(self.p[1]) {
            192
        } else {
            -192
        };
        let wd2 = (self.a[1] * 32640) >> 15;
        let limit = sat16(15360 - a2);
        let a1 = sat16(wd1 + wd2).clamp(-limit, limit);

        // UPZERO: the six zeros, each from its own previous value and difference.
        let step = if d == 0 { 0 } else { 128 };
        for (b, &di) in self.b[1..].iter_mut().zip(&self.d[1..]) {
            let wd2 = if sign(di) == sign(d) { step } else { -step };
            *b = sat16(wd2 + ((*b * 32640) >> 15));
        }

        // DELAYA: shift the histories.
        self.d.copy_within(0..6, 1);
        for i in (1..3).rev() {
            self.r[i] = self.r[i - 1];
            self.p[i] = self.p[i - 1];
        }
        self.a[1] = a1;
        self.a[2] = a2;

        // FILTEP, FILTEZ, PREDIC.
        let wd1 = (self.a[1] * sat16(self.r[1] + self.r[1])) >> 15;
        let wd2 = (self.a[2] * sat16(self.r[2] + self.r[2])) >> 15;
        self.sp = sat16(wd1 + wd2);
        let mut sz = 0;
        for i in (1..7).rev() {
            sz += (self.b[i] * sat16(self.d[i] + self.d[i])) >> 15;
        }
        self.sz = sat16(sz);
        self.s = sat16(self.sp + self.sz);
    }
}

/// One stream's G.722 decoder.
#[derive(Debug, Clone)]
pub struct G722Decoder {
    low: Band,
    high: Band,
    /// Receive QMF delay line: the last 12 (sum, difference) pairs.
    x: [i32; 24],
}

impl Default for G722Decoder {
    fn default() -> Self {
        G722Decoder::new()
    }
}

impl G722Decoder {
    pub fn new() -> G722Decoder {
        G722Decoder {
            low: Band::new(32),
            high: Band::new(8),
            x: [0; 24],
        }
    }

    /// Decodes `payload` into `out` (two samples per byte, as many bytes as fit); returns the
    /// number of samples written.
    pub fn decode(&mut self, payload: &[u8], out: &mut [i16]) -> usize {
        let mut n = 0;
        for (&code, pair) in payload.iter().zip(out.chunks_exact_mut(2)) {
            let (low_code, high_code) = (usize::from(code & 0x3f), usize::from(code >> 6));

            // Lower band: reconstruct from the 6-bit code, adapt from its 4-bit truncation.
            let rlow = (self.low.s + ((self.low.det * QM6[low_code]) >> 15)).clamp(-16384, 16383);
            let code4 = low_code >> 2;
            let dlow = (self.low.det * QM4[code4]) >> 15;
            self.low.adapt_scale(WL[RL42[code4]], 18432, 8);
            self.low.update(dlow);

            // Higher band.
            let dhigh = (self.high.det * QM2[high_code]) >> 15;
            let rhigh = (dhigh + self.high.s).clamp(-16384, 16383);
            self.high.adapt_scale(WH[RH2[high_code]], 22528, 10);
            self.high.update(dhigh);

            // Receive QMF: two output samples per pair of sub-band samples.
            self.x.copy_within(2.., 0);
            self.x[22] = rlow + rhigh;
            self.x[23] = rlow - rhigh;
            let (mut even, mut odd) = (0i32, 0i32);
            for (i, &c) in QMF.iter().enumerate() {
                even += self.x[2 * i] * c;
                odd += self.x[2 * i + 1] * QMF[11 - i];
            }
            pair[0] = sat16(odd >> 11) as i16;
            pair[1] = sat16(even >> 11) as i16;
            n += 2;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any byte sequence decodes without panicking or overflowing (the arithmetic saturates
    /// where the Recommendation does).
    #[test]
    fn every_code_decodes() {
        let mut d = G722Decoder::new();
        let payload: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        let mut out = vec![0i16; 8192];
        assert_eq!(d.decode(&payload, &mut out), 8192);
        let mut d = G722Decoder::new();
        let loud: Vec<u8> = [0x04u8, 0x20].iter().copied().cycle().take(4096).collect();
        assert_eq!(d.decode(&loud, &mut out), 8192);
    }

    /// Output is bounded by the buffer: no sample is written past it.
    #[test]
    fn short_output_buffer() {
        let mut d = G722Decoder::new();
        let mut out = [0i16; 5];
        assert_eq!(d.decode(&[0x12; 10], &mut out), 4);
    }
}
