//! SDP security descriptions (RFC 4568): `a=crypto` parsing, choosing among several, and the
//! answer's line. No I/O; the answer's key comes from the caller.

use super::{MasterKey, Options, SrtpParams, Suite};

/// One parsed `a=crypto` line we can use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Crypto {
    pub tag: u32,
    pub suite: Suite,
    /// The suite as the offer spelled it, echoed in the answer.
    pub suite_name: String,
    pub params: SrtpParams,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdesError {
    #[error("crypto attribute has no tag, suite or key parameters")]
    Incomplete,
    #[error("unsupported crypto suite {0:?}")]
    UnsupportedSuite(String),
    #[error("key parameter is not inline:<base64>")]
    BadKey,
    #[error("key and salt have the wrong length for the suite")]
    BadKeyLength,
    #[error("bad MKI or lifetime")]
    BadMki,
    #[error("unsupported session parameter {0:?}")]
    UnsupportedParameter(String),
}

/// Parses the value of one `a=crypto` attribute (after `crypto:`).
pub fn parse(value: &str) -> Result<Crypto, SdesError> {
    let mut parts = value.split_whitespace();
    let (Some(tag), Some(suite_name), Some(key_params)) =
        (parts.next(), parts.next(), parts.next())
    else {
        return Err(SdesError::Incomplete);
    };
    let tag: u32 = tag.parse().map_err(|_| SdesError::Incomplete)?;
    let suite = Suite::from_name(suite_name)
        .ok_or_else(|| SdesError::UnsupportedSuite(suite_name.to_owned()))?;
    // Several keys (';'-separated) only make sense with MKIs; the first one is in force.
    let first = key_params.split(';').next().unwrap_or("");
    let inline = first
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("inline:"))
        .map(|_| &first[7..])
        .ok_or(SdesError::BadKey)?;
    let mut fields = inline.split('|');
    let mut material = [0u8; 64];
    let n = base64_decode(fields.next().unwrap_or(""), &mut material).ok_or(SdesError::BadKey)?;
    let mut mki = None;
    for field in fields {
        if let Some((value, len)) = field.split_once(':') {
            let value: u32 = value.trim().parse().map_err(|_| SdesError::BadMki)?;
            let len: u8 = len.trim().parse().map_err(|_| SdesError::BadMki)?;
            if !(1..=4).contains(&len) || (len < 4 && value >> (8 * u32::from(len)) != 0) {
                return Err(SdesError::BadMki);
            }
            mki = Some((value, len));
        } else if !valid_lifetime(field) {
            return Err(SdesError::BadMki);
        }
    }
    let key = MasterKey::new(suite, &material[..n], mki).ok_or(SdesError::BadKeyLength)?;
    let mut options = Options::default();
    for p in parts {
        let upper = p.to_ascii_uppercase();
        match upper.as_str() {
            "UNENCRYPTED_SRTP" => options.unencrypted_srtp = true,
            "UNENCRYPTED_SRTCP" => options.unencrypted_srtcp = true,
            "UNAUTHENTICATED_SRTP" => options.unauthenticated_srtp = true,
            "KDR=0" => {}
            // A key derivation rate would need keys re-derived mid-stream.
            _ if upper.starts_with("KDR=") => {
                return Err(SdesError::UnsupportedParameter(p.into()))
            }
            // Window size hint and FEC ordering don't change how we decrypt.
            _ => {}
        }
    }
    Ok(Crypto {
        tag,
        suite,
        suite_name: suite_name.to_owned(),
        params: SrtpParams { key, options },
    })
}

/// `2^n` or a decimal count of packets.
fn valid_lifetime(s: &str) -> bool {
    match s.trim().strip_prefix("2^") {
        Some(exp) => exp.parse::<u8>().is_ok_and(|e| e <= 64),
        None => s.trim().parse::<u64>().is_ok(),
    }
}

/// Of the `a=crypto` values in an m-line, the strongest we support (the first among equals).
pub fn choose<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Crypto> {
    let mut best: Option<Crypto> = None;
    for v in values {
        match parse(v) {
            Ok(c) => {
                if best
                    .as_ref()
                    .is_none_or(|b| c.suite.strength() > b.suite.strength())
                {
                    best = Some(c);
                }
            }
            Err(e) => tracing::debug!(error = %e, "crypto line not usable"),
        }
    }
    best
}

/// The answer's `a=crypto` value: the offer's tag and suite, our own key and salt (random
/// bytes from the caller, `suite.key_len() + suite.salt_len()` of them), and the offer's
/// session parameters that apply to both directions.
pub fn answer_value(offer: &Crypto, key_material: &[u8]) -> String {
    let mut s = format!(
        "{} {} inline:{}",
        offer.tag,
        offer.suite_name,
        base64_encode(key_material)
    );
    let o = offer.params.options;
    for (on, name) in [
        (o.unencrypted_srtp, "UNENCRYPTED_SRTP"),
        (o.unencrypted_srtcp, "UNENCRYPTED_SRTCP"),
        (o.unauthenticated_srtp, "UNAUTHENTICATED_SRTP"),
    ] {
        if on {
            s.push(' ');
            s.push_str(name);
        }
    }
    s
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn base64_encode(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Decodes standard base64 (padding optional) into `out`; `None` on a bad character or if
/// `out` is too small.
pub fn base64_decode(text: &str, out: &mut [u8]) -> Option<usize> {
    let text = text.trim().trim_end_matches('=');
    let mut acc: u32 = 0;
    let mut bits = 0;
    let mut n = 0;
    for c in text.bytes() {
        let v = ALPHABET.iter().position(|&a| a == c)? as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            *out.get_mut(n)? = (acc >> bits) as u8;
            n += 1;
        }
    }
    // Leftover bits beyond a byte boundary are padding and must be zero-free of data.
    (bits < 6).then_some(n)
}
