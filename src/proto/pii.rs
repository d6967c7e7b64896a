//! Personal data in logs: calling numbers, SIP URIs, Call-IDs (which often embed a host or an
//! IP), source addresses and the recording paths named after Call-IDs.
//!
//! `Pii(x)` displays as `‹pii:1a2b3c›`: a short hash, salted per process, so that the lines
//! of one call can be followed in a log without the log holding the number or address itself
//! (and without a table of hashes of every phone number revealing it: the salt changes at every
//! start). With `LOG_PII=true` (`log.pii`) it displays `x` as it is, for a debugging session.
//! session.json, the API and events keep the real values: they are the product, not logs.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static REVEAL: AtomicBool = AtomicBool::new(false);
static SALT: AtomicU64 = AtomicU64::new(0);

/// Sets, once at start-up, whether `Pii` shows values, and the salt of the hashes.
pub fn configure(reveal: bool, salt: u64) {
    REVEAL.store(reveal, Ordering::Relaxed);
    SALT.store(salt, Ordering::Relaxed);
}

/// Personal data: displays redacted unless `log.pii` is on.
pub struct Pii<T>(pub T);

impl<T: fmt::Display> fmt::Display for Pii<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if REVEAL.load(Ordering::Relaxed) {
            return self.0.fmt(f);
        }
        write!(f, "‹pii:{:06x}›", tag(&self.0.to_string()))
    }
}

impl<T: fmt::Display> fmt::Debug for Pii<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `text` with every occurrence of `secret` shown as `Pii(secret)`: for error messages that
/// name a recording's path (which holds its Call-ID) but whose cause ("No space left on
/// device") must stay readable.
pub fn redact_in(text: &str, secret: &str) -> String {
    if secret.is_empty() || REVEAL.load(Ordering::Relaxed) {
        return text.to_owned();
    }
    text.replace(secret, &Pii(secret).to_string())
}

/// 24 bits of a salted FNV-1a hash.
fn tag(s: &str) -> u32 {
    let salt = SALT.load(Ordering::Relaxed);
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ salt;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    ((h >> 32) ^ h) as u32 & 0xFF_FFFF
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_and_correlates() {
        let a = Pii("sip:+15551234567@carrier.example").to_string();
        assert!(a.starts_with("‹pii:") && !a.contains("555"), "{a}");
        assert_eq!(a, Pii("sip:+15551234567@carrier.example").to_string());
        assert_ne!(a, Pii("sip:+15551234568@carrier.example").to_string());
        let msg = redact_in(
            "write /rec/2026/abc_1.2.3.4/1.wav: No space left",
            "/rec/2026/abc_1.2.3.4",
        );
        assert!(
            msg.ends_with("/1.wav: No space left") && !msg.contains("1.2.3.4"),
            "{msg}"
        );
    }
}
