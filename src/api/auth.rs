//! Who may call the API: API keys (`X-API-Key`, `?api_key=`) and JWT bearer tokens
//! (`Authorization: Bearer`, `?token=` on WebSockets) signed HS256 with a shared secret or
//! RS256 with an RSA key (RFC 7515/7518/7519).
//!
//! Sans-IO: the caller hands over the credential it found and the wall clock; nothing here
//! reads a socket or a clock. Refuses: `alg: none`, any algorithm other than the one the
//! configured key is for (no HS256-with-the-public-key confusion), tokens without `exp`.

use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Public};
use openssl::sign::{Signer, Verifier};
use serde_json::Value;

/// The running access policy; rebuilt whole on config reload.
#[derive(Default)]
pub struct Auth {
    /// Accepted API keys (`API_KEY` and `API_KEYS`).
    keys: Vec<String>,
    jwt: Option<Jwt>,
    /// Read-only routes need a credential too (`AUTH_PROTECT_READS`).
    pub protect_reads: bool,
}

/// How JWTs are checked.
pub struct Jwt {
    pub key: JwtKey,
    /// `iss` must equal this when set.
    pub issuer: Option<String>,
    /// `aud` (a string or an array) must contain this when set.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, seconds.
    pub leeway_s: u64,
}

pub enum JwtKey {
    /// HS256 with this shared secret.
    Hs256(Vec<u8>),
    /// RS256 with this RSA public key.
    Rs256(PKey<Public>),
}

impl JwtKey {
    /// An RS256 key from a PEM public key (SPKI or PKCS#1) or certificate; RFC 7518 §3.3 asks
    /// for 2048 bits at least.
    pub fn rs256_from_pem(pem: &[u8]) -> Result<JwtKey, String> {
        let key = PKey::public_key_from_pem(pem)
            .or_else(|_| openssl::rsa::Rsa::public_key_from_pem_pkcs1(pem).and_then(PKey::from_rsa))
            .or_else(|_| openssl::x509::X509::from_pem(pem).and_then(|c| c.public_key()))
            .map_err(|_| "not a PEM public key or certificate".to_owned())?;
        let rsa = key.rsa().map_err(|_| "not an RSA key".to_owned())?;
        if rsa.size() < 256 {
            return Err(format!(
                "RSA key of {} bits; RS256 needs 2048 or more",
                rsa.size() * 8
            ));
        }
        Ok(JwtKey::Rs256(key))
    }

    fn alg(&self) -> &'static str {
        match self {
            JwtKey::Hs256(_) => "HS256",
            JwtKey::Rs256(_) => "RS256",
        }
    }
}

/// What a request carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    None,
    /// `X-API-Key` or `?api_key=`.
    ApiKey(&'a str),
    /// `Authorization: Bearer` or `?token=`: a JWT, or an API key sent as a bearer token.
    Bearer(&'a str),
}

/// Why a request was refused: 401 when it carried nothing, 403 when what it carried is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    Missing,
    Invalid(String),
}

/// Why a JWT was refused (the message goes to the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("token is not a compact JWS (three base64url parts)")]
    Malformed,
    #[error("token algorithm is not the configured one")]
    Algorithm,
    #[error("token signature does not verify")]
    Signature,
    #[error("token has no exp claim")]
    NoExpiry,
    #[error("token expired")]
    Expired,
    #[error("token not valid yet (nbf)")]
    NotYetValid,
    #[error("token issuer does not match")]
    Issuer,
    #[error("token audience does not match")]
    Audience,
}

impl Auth {
    pub fn new(keys: Vec<String>, jwt: Option<Jwt>, protect_reads: bool) -> Auth {
        let keys = keys.into_iter().filter(|k| !k.is_empty()).collect();
        Auth {
            keys,
            jwt,
            protect_reads,
        }
    }

    /// The policy of a configuration (its key file was read and checked when it was built).
    pub fn from_config(http: &crate::config::HttpConfig, auth: &crate::config::AuthConfig) -> Auth {
        let mut keys = auth.api_keys.clone();
        keys.extend(http.api_key.clone());
        let key = match (&auth.jwt_secret, &auth.jwt_public_key_pem) {
            (Some(secret), _) => Some(JwtKey::Hs256(secret.as_bytes().to_vec())),
            (None, Some(pem)) => match JwtKey::rs256_from_pem(pem) {
                Ok(k) => Some(k),
                Err(e) => {
                    tracing::error!(error = %e, "JWT public key unusable; JWTs are refused");
                    None
                }
            },
            (None, None) => None,
        };
        let jwt = key.map(|key| Jwt {
            key,
            issuer: auth.jwt_issuer.clone(),
            audience: auth.jwt_audience.clone(),
            leeway_s: auth.jwt_leeway_s,
        });
        Auth::new(keys, jwt, auth.protect_reads)
    }

    /// Whether any credential is configured (else every route is open).
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty() || self.jwt.is_some()
    }

    /// Lets the request through, or says why not. `now_s` is the Unix time in seconds.
    pub fn check(&self, credential: Credential<'_>, now_s: u64) -> Result<(), Denied> {
        if !self.enabled() {
            return Ok(());
        }
        match credential {
            Credential::None => Err(Denied::Missing),
            Credential::ApiKey(k) if self.key_matches(k) => Ok(()),
            Credential::ApiKey(_) => Err(Denied::Invalid("invalid API key".into())),
            Credential::Bearer(t) if self.key_matches(t) => Ok(()),
            Credential::Bearer(t) => match &self.jwt {
                None => Err(Denied::Invalid("invalid API key".into())),
                Some(jwt) => jwt
                    .verify(t, now_s)
                    .map(|_| ())
                    .map_err(|e| Denied::Invalid(e.to_string())),
            },
        }
    }

    /// Compares against every key in constant time per key (the loop does not stop early).
    fn key_matches(&self, given: &str) -> bool {
        self.keys.iter().fold(false, |hit, k| {
            hit | constant_time_eq(k.as_bytes(), given.as_bytes())
        })
    }
}

/// Equal-length inputs compare in time independent of their contents.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && openssl::memcmp::eq(a, b)
}

impl Jwt {
    /// Checks a compact-serialized JWS and returns its claims.
    pub fn verify(&self, token: &str, now_s: u64) -> Result<Value, JwtError> {
        let mut parts = token.trim().split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let header: Value = b64url_decode(h)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(JwtError::Malformed)?;
        if header.get("alg").and_then(Value::as_str) != Some(self.key.alg()) {
            return Err(JwtError::Algorithm);
        }
        // RFC 7515 §4.1.11: a critical extension we don't understand means reject.
        if header.get("crit").is_some() {
            return Err(JwtError::Malformed);
        }
        let signature = b64url_decode(s).ok_or(JwtError::Malformed)?;
        let input = &token.trim().as_bytes()[..h.len() + 1 + p.len()];
        if !self.signature_ok(input, &signature) {
            return Err(JwtError::Signature);
        }
        let claims: Value = b64url_decode(p)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(Value::is_object)
            .ok_or(JwtError::Malformed)?;
        let time = |name: &str| claims.get(name).and_then(Value::as_f64);
        let exp = time("exp").ok_or(JwtError::NoExpiry)?;
        let now = now_s as f64;
        let leeway = self.leeway_s as f64;
        if now >= exp + leeway {
            return Err(JwtError::Expired);
        }
        if time("nbf").is_some_and(|nbf| now + leeway < nbf) {
            return Err(JwtError::NotYetValid);
        }
        if let Some(want) = &self.issuer {
            if claims.get("iss").and_then(Value::as_str) != Some(want.as_str()) {
                return Err(JwtError::Issuer);
            }
        }
        if let Some(want) = &self.audience {
            let ok = match claims.get("aud") {
                Some(Value::String(a)) => a == want,
                Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(want)),
                _ => false,
            };
            if !ok {
                return Err(JwtError::Audience);
            }
        }
        Ok(claims)
    }

    fn signature_ok(&self, input: &[u8], signature: &[u8]) -> bool {
        match &self.key {
            JwtKey::Hs256(secret) => {
                let mac = PKey::hmac(secret).and_then(|k| {
                    let mut signer = Signer::new(MessageDigest::sha256(), &k)?;
                    signer.sign_oneshot_to_vec(input)
                });
                mac.is_ok_and(|mac| constant_time_eq(&mac, signature))
            }
            JwtKey::Rs256(key) => Verifier::new(MessageDigest::sha256(), key)
                .and_then(|mut v| v.verify_oneshot(signature, input))
                .unwrap_or(false),
        }
    }
}

/// base64url without padding (RFC 7515 §2); `None` on any other character.
pub fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    // One leftover character (6 bits) cannot end a valid encoding, and leftover bits must be
    // zero: each byte string has one encoding, so a token cannot be varied without a new
    // signature.
    (bits < 6 && acc & ((1 << bits) - 1) == 0).then_some(out)
}

/// base64url without padding.
pub fn b64url_encode(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7515 Appendix A.1: the HS256 example JWS and its key.
    const A1_TOKEN: &str = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.\
        eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0\
        cnVlfQ.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const A1_KEY: &str = "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hc\
        gUuTwjAzZr1Z9CAow";

    fn a1() -> Jwt {
        Jwt {
            key: JwtKey::Hs256(b64url_decode(A1_KEY).unwrap()),
            issuer: None,
            audience: None,
            leeway_s: 0,
        }
    }

    #[test]
    fn rfc7515_a1_hs256() {
        let claims = a1().verify(A1_TOKEN, 1_300_819_379).unwrap();
        assert_eq!(claims["iss"], "joe");
        assert_eq!(claims["http://example.com/is_root"], true);
        assert_eq!(a1().verify(A1_TOKEN, 1_300_819_380), Err(JwtError::Expired));
        let mut late = a1();
        late.leeway_s = 60;
        assert!(late.verify(A1_TOKEN, 1_300_819_430).is_ok());
        let mut iss = a1();
        iss.issuer = Some("joe".into());
        assert!(iss.verify(A1_TOKEN, 0).is_ok());
        iss.issuer = Some("jane".into());
        assert_eq!(iss.verify(A1_TOKEN, 0), Err(JwtError::Issuer));
        let mut aud = a1();
        aud.audience = Some("siprec".into());
        assert_eq!(aud.verify(A1_TOKEN, 0), Err(JwtError::Audience));
    }

    #[test]
    fn tampering_and_algorithm_confusion_are_refused() {
        let jwt = a1();
        // One flipped signature bit; the last character's unused bits set.
        let mut bad = A1_TOKEN.to_owned();
        bad.replace_range(bad.len() - 5..bad.len() - 4, "A");
        assert_eq!(jwt.verify(&bad, 0), Err(JwtError::Signature));
        let mut loose = A1_TOKEN.to_owned();
        assert_eq!(loose.pop(), Some('k'));
        loose.push('l');
        assert_eq!(jwt.verify(&loose, 0), Err(JwtError::Malformed));
        // A different payload under the original signature.
        let (h, rest) = A1_TOKEN.split_once('.').unwrap();
        let sig = rest.rsplit_once('.').unwrap().1;
        let forged = format!("{h}.{}.{sig}", b64url_encode(br#"{"iss":"joe","exp":9e9}"#));
        assert_eq!(jwt.verify(&forged, 0), Err(JwtError::Signature));
        // alg none, and RS256 against an HMAC key.
        let none = format!(
            "{}.{}.",
            b64url_encode(br#"{"alg":"none"}"#),
            b64url_encode(br#"{"exp":9e9}"#)
        );
        assert_eq!(jwt.verify(&none, 0), Err(JwtError::Algorithm));
        let rs = format!("{}.{}.{sig}", b64url_encode(br#"{"alg":"RS256"}"#), "e30");
        assert_eq!(jwt.verify(&rs, 0), Err(JwtError::Algorithm));
        for junk in ["", "a.b", "a.b.c.d", "!!.e30.e30", "e30.e30.e30"] {
            assert!(jwt.verify(junk, 0).is_err(), "{junk}");
        }
    }

    #[test]
    fn signed_here_no_exp_and_nbf() {
        let secret = b"0123456789abcdef0123456789abcdef".to_vec();
        let sign = |claims: &str| {
            let input = format!(
                "{}.{}",
                b64url_encode(br#"{"alg":"HS256","typ":"JWT"}"#),
                b64url_encode(claims.as_bytes())
            );
            let key = PKey::hmac(&secret).unwrap();
            let mut s = Signer::new(MessageDigest::sha256(), &key).unwrap();
            let mac = s.sign_oneshot_to_vec(input.as_bytes()).unwrap();
            format!("{input}.{}", b64url_encode(&mac))
        };
        let jwt = Jwt {
            key: JwtKey::Hs256(secret.clone()),
            issuer: None,
            audience: Some("siprec".into()),
            leeway_s: 5,
        };
        assert!(jwt
            .verify(&sign(r#"{"exp":200,"aud":["x","siprec"]}"#), 100)
            .is_ok());
        assert_eq!(
            jwt.verify(&sign(r#"{"aud":"siprec"}"#), 100),
            Err(JwtError::NoExpiry)
        );
        let nbf = sign(r#"{"exp":200,"nbf":150,"aud":"siprec"}"#);
        assert_eq!(jwt.verify(&nbf, 100), Err(JwtError::NotYetValid));
        assert!(jwt.verify(&nbf, 146).is_ok());
    }

    #[test]
    fn policy() {
        let open = Auth::default();
        assert_eq!(open.check(Credential::None, 0), Ok(()));
        let auth = Auth::new(vec!["k1".into(), "".into(), "k2".into()], Some(a1()), false);
        assert_eq!(auth.check(Credential::None, 0), Err(Denied::Missing));
        assert_eq!(auth.check(Credential::ApiKey("k2"), 0), Ok(()));
        assert_eq!(auth.check(Credential::Bearer("k1"), 0), Ok(()));
        assert!(matches!(
            auth.check(Credential::ApiKey(""), 0),
            Err(Denied::Invalid(_))
        ));
        assert_eq!(
            auth.check(Credential::Bearer(A1_TOKEN), 1_300_000_000),
            Ok(())
        );
        assert_eq!(
            auth.check(Credential::ApiKey(A1_TOKEN), 1_300_000_000),
            Err(Denied::Invalid("invalid API key".into()))
        );
        let err = auth.check(Credential::Bearer(A1_TOKEN), 1_400_000_000);
        assert_eq!(err, Err(Denied::Invalid("token expired".into())));
    }

    #[test]
    fn base64url_round_trips() {
        for n in 0..40u8 {
            let data: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37) ^ 0xa5).collect();
            assert_eq!(b64url_decode(&b64url_encode(&data)).unwrap(), data);
        }
        assert_eq!(b64url_encode(b"{}"), "e30");
        assert!(b64url_decode("e30=").is_none());
        assert!(b64url_decode("e").is_none());
    }
}
