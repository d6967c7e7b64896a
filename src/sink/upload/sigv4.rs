//! AWS Signature Version 4 for S3 requests (sans-IO): canonical request, string to sign,
//! signing key and the `Authorization` header. Checked against AWS's published S3 examples.
//!
//! S3 rules: the canonical URI is the path with each segment percent-encoded once (unreserved
//! `A-Za-z0-9-_.~` kept, `/` kept, no `.`/`..` folding); query keys and values are encoded
//! the same way with `/` encoded too, sorted, and a key without value is written `k=`.

use openssl::hash::{hash, MessageDigest};
use openssl::pkey::PKey;
use openssl::sign::Signer;

/// What a request is signed with.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub region: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// One request to sign. `headers` must include `host` and `x-amz-date` and
/// `x-amz-content-sha256`; every header given is signed.
pub struct Signable<'a> {
    pub method: &'a str,
    /// The path as sent, already encoded with [`encode_path`].
    pub path: &'a str,
    /// Query parameters, not encoded.
    pub query: &'a [(&'a str, &'a str)],
    pub headers: &'a [(&'a str, String)],
    /// Hex SHA-256 of the body, or `UNSIGNED-PAYLOAD`.
    pub payload_sha256: &'a str,
    /// `YYYYMMDDTHHMMSSZ`.
    pub amz_date: &'a str,
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&sha256(data))
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    openssl::sha::sha256(data)
}

pub fn md5(data: &[u8]) -> [u8; 16] {
    let digest = hash(MessageDigest::md5(), data).expect("MD5 is always available");
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest);
    out
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let pkey = PKey::hmac(key).expect("HMAC key");
    let mut signer = Signer::new(MessageDigest::sha256(), &pkey).expect("HMAC-SHA256");
    signer.update(data).expect("HMAC update");
    signer.sign_to_vec().expect("HMAC sign")
}

/// Percent-encodes `s` for a URI, keeping the unreserved set (and `/` when `keep_slash`).
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        let keep = b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/');
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An object path (`/bucket/key` or `/key`) as sent and as signed.
pub fn encode_path(path: &str) -> String {
    uri_encode(path, true)
}

/// The canonical query string: encoded, sorted by key then value.
pub fn canonical_query(query: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// (canonical headers block, signed header names).
fn canonical_headers(headers: &[(&str, String)]) -> (String, String) {
    let mut h: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| {
            let value = v.split_whitespace().collect::<Vec<_>>().join(" ");
            (k.to_ascii_lowercase(), value)
        })
        .collect();
    h.sort();
    let block: String = h.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let names = h
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    (block, names)
}

pub fn canonical_request(r: &Signable<'_>) -> String {
    let (block, names) = canonical_headers(r.headers);
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        r.method,
        r.path,
        canonical_query(r.query),
        block,
        names,
        r.payload_sha256
    )
}

fn scope(date: &str, region: &str) -> String {
    format!("{date}/{region}/s3/aws4_request")
}

pub fn string_to_sign(r: &Signable<'_>, region: &str) -> String {
    let date = &r.amz_date[..8.min(r.amz_date.len())];
    format!(
        "AWS4-HMAC-SHA256\n{}\n{}\n{}",
        r.amz_date,
        scope(date, region),
        sha256_hex(canonical_request(r).as_bytes())
    )
}

pub fn signing_key(secret: &str, date: &str, region: &str) -> Vec<u8> {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, b"s3");
    hmac(&k_service, b"aws4_request")
}

/// The `Authorization` header value for `r`.
pub fn authorization(r: &Signable<'_>, creds: &Credentials) -> String {
    let date = &r.amz_date[..8.min(r.amz_date.len())];
    let key = signing_key(&creds.secret_access_key, date, &creds.region);
    let signature = hex(&hmac(&key, string_to_sign(r, &creds.region).as_bytes()));
    let (_, names) = canonical_headers(r.headers);
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{},SignedHeaders={names},Signature={signature}",
        creds.access_key_id,
        scope(date, &creds.region)
    )
}

/// `YYYYMMDDTHHMMSSZ` for a Unix time in seconds.
pub fn amz_date(unix_s: u64) -> String {
    let (y, m, d, h, mi, s) = crate::proto::civil(unix_s);
    format!("{y:04}{m:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            region: "us-east-1".into(),
        }
    }

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const DATE: &str = "20130524T000000Z";
    const HOST: &str = "examplebucket.s3.amazonaws.com";

    /// AWS S3 API Reference, "Examples: Signature Calculations", GET Object.
    #[test]
    fn aws_get_object_example() {
        let headers = [
            ("Host", HOST.to_owned()),
            ("Range", "bytes=0-9".to_owned()),
            ("x-amz-content-sha256", EMPTY.to_owned()),
            ("x-amz-date", DATE.to_owned()),
        ];
        let path = encode_path("/test.txt");
        let r = Signable {
            method: "GET",
            path: &path,
            query: &[],
            headers: &headers,
            payload_sha256: EMPTY,
            amz_date: DATE,
        };
        assert_eq!(
            sha256_hex(canonical_request(&r).as_bytes()),
            "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"
        );
        assert_eq!(
            authorization(&r, &creds()),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    /// The PUT Object example: a `$` in the key is encoded, every given header is signed.
    #[test]
    fn aws_put_object_example() {
        let body = b"Welcome to Amazon S3.";
        let payload = sha256_hex(body);
        assert_eq!(
            payload,
            "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072"
        );
        let headers = [
            ("Host", HOST.to_owned()),
            ("Date", "Fri, 24 May 2013 00:00:00 GMT".to_owned()),
            ("x-amz-date", DATE.to_owned()),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY".to_owned()),
            ("x-amz-content-sha256", payload.clone()),
        ];
        let path = encode_path("/test$file.text");
        assert_eq!(path, "/test%24file.text");
        let r = Signable {
            method: "PUT",
            path: &path,
            query: &[],
            headers: &headers,
            payload_sha256: &payload,
            amz_date: DATE,
        };
        assert_eq!(
            sha256_hex(canonical_request(&r).as_bytes()),
            "9e0e90d9c76de8fa5b200d8c849cd5b8dc7a3be3951ddb7f6a76b4158342019d"
        );
        assert!(authorization(&r, &creds()).ends_with(
            "Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
        ));
    }

    /// The bucket examples: a valueless parameter is `k=`, parameters are sorted.
    #[test]
    fn aws_bucket_query_examples() {
        let headers = [
            ("Host", HOST.to_owned()),
            ("x-amz-content-sha256", EMPTY.to_owned()),
            ("x-amz-date", DATE.to_owned()),
        ];
        let sign = |query: &[(&str, &str)]| {
            let r = Signable {
                method: "GET",
                path: "/",
                query,
                headers: &headers,
                payload_sha256: EMPTY,
                amz_date: DATE,
            };
            authorization(&r, &creds())
        };
        assert!(sign(&[("lifecycle", "")]).ends_with(
            "Signature=fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"
        ));
        assert!(sign(&[("prefix", "J"), ("max-keys", "2")]).ends_with(
            "Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
        ));
    }

    #[test]
    fn dates_and_encoding() {
        assert_eq!(amz_date(1_369_353_600), DATE);
        assert_eq!(amz_date(951_782_400), "20000229T000000Z");
        assert_eq!(amz_date(1_795_910_399), "20261128T235959Z");
        assert_eq!(
            encode_path("/b/calls/a b+c=é.wav"),
            "/b/calls/a%20b%2Bc%3D%C3%A9.wav"
        );
        assert_eq!(
            canonical_query(&[("prefix", "a/b"), ("list-type", "2")]),
            "list-type=2&prefix=a%2Fb"
        );
        assert_eq!(hex(&md5(b"")), "d41d8cd98f00b204e9800998ecf8427e");
    }
}
