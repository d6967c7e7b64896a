//! The S3 calls the uploader makes (PUT, multipart, HEAD, DELETE), signed with SigV4 over
//! [`crate::httpc`]. Every body is sent with its Content-MD5 and its SHA-256 in the signature,
//! so the store refuses a corrupted transfer (BadDigest / XAmzContentSHA256Mismatch).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, StatusCode};

use super::sigv4::{self, Credentials, Signable};
use crate::config::UploadConfig;
use crate::httpc::{self, Endpoint};

/// The most of an S3 answer we read (XML documents; object bodies are never fetched).
const ANSWER_MAX: usize = 1 << 20;
/// Metadata carrying the whole object's SHA-256 (hex), checked after upload.
pub const SHA256_META: &str = "x-amz-meta-sha256";

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("{0}")]
    Transport(String),
    #[error("S3 {status}: {code}: {message}")]
    Status {
        status: u16,
        code: String,
        message: String,
    },
    #[error("S3 answer: {0}")]
    Answer(String),
}

impl S3Error {
    pub fn code(&self) -> Option<&str> {
        match self {
            S3Error::Status { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// What HEAD says of an object.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectInfo {
    pub size: u64,
    /// Without quotes.
    pub etag: String,
    /// Whether the ETag is the content's MD5 (not with SSE-KMS or SSE-C encryption).
    pub md5_etag: bool,
    pub sha256: Option<String>,
}

pub struct S3 {
    endpoint: Endpoint,
    bucket: String,
    path_style: bool,
    creds: Credentials,
    timeout: Duration,
}

impl S3 {
    pub fn new(config: &UploadConfig) -> Result<S3, String> {
        let endpoint = config.endpoint.as_deref().ok_or("S3_ENDPOINT unset")?;
        Ok(S3 {
            endpoint: Endpoint::parse(endpoint)?,
            bucket: config.bucket.clone(),
            path_style: config.path_style,
            creds: Credentials {
                access_key_id: config.access_key_id.clone(),
                secret_access_key: config.secret_access_key.clone(),
                region: config.region.clone(),
            },
            timeout: Duration::from_secs(u64::from(config.timeout_s)),
        })
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Signs and sends one request; a status outside 2xx becomes [`S3Error::Status`].
    async fn call(
        &self,
        method: &str,
        key: &str,
        query: &[(&str, &str)],
        extra: Vec<(&str, String)>,
        body: Bytes,
    ) -> Result<httpc::Answer, S3Error> {
        let (host, path) = if self.path_style {
            let path = sigv4::encode_path(&format!("/{}/{key}", self.bucket));
            (self.endpoint.authority.clone(), path)
        } else {
            let host = format!("{}.{}", self.bucket, self.endpoint.authority);
            (host, sigv4::encode_path(&format!("/{key}")))
        };
        let payload = sigv4::sha256_hex(&body);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let amz_date = sigv4::amz_date(now);
        let mut headers: Vec<(&str, String)> = vec![
            ("host", host),
            ("x-amz-date", amz_date.clone()),
            ("x-amz-content-sha256", payload.clone()),
        ];
        if !body.is_empty() {
            let md5 = openssl::base64::encode_block(&sigv4::md5(&body));
            headers.push(("content-md5", md5));
        }
        headers.extend(extra);
        let signable = Signable {
            method,
            path: &path,
            query,
            headers: &headers,
            payload_sha256: &payload,
            amz_date: &amz_date,
        };
        let auth = sigv4::authorization(&signable, &self.creds);
        let canonical_query = sigv4::canonical_query(query);
        let uri = if canonical_query.is_empty() {
            path.clone()
        } else {
            format!("{path}?{canonical_query}")
        };
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in &headers {
            req = req.header(*k, v.as_str());
        }
        req = req.header("authorization", auth);
        let req = req
            .body(Full::new(body))
            .map_err(|e| S3Error::Transport(format!("request: {e}")))?;
        let answer = httpc::send(&self.endpoint, req, self.timeout, ANSWER_MAX)
            .await
            .map_err(S3Error::Transport)?;
        if answer.status.is_success() {
            // CompleteMultipartUpload may fail after its 200 (an Error document).
            if xml_text(&answer.body, "Error").is_some() && method == "POST" {
                return Err(status_error(StatusCode::OK, &answer.body));
            }
            return Ok(answer);
        }
        Err(status_error(answer.status, &answer.body))
    }

    /// A whole object in one PUT; returns its ETag.
    pub async fn put_object(
        &self,
        key: &str,
        body: Bytes,
        content_type: &str,
        sha256_hex: &str,
    ) -> Result<String, S3Error> {
        let extra = object_headers(content_type, sha256_hex);
        let answer = self.call("PUT", key, &[], extra, body).await?;
        etag(&answer)
    }

    /// Starts a multipart upload; returns its upload id.
    pub async fn create_multipart(
        &self,
        key: &str,
        content_type: &str,
        sha256_hex: &str,
    ) -> Result<String, S3Error> {
        let extra = object_headers(content_type, sha256_hex);
        let answer = self
            .call("POST", key, &[("uploads", "")], extra, Bytes::new())
            .await?;
        xml_text(&answer.body, "UploadId")
            .filter(|id| !id.is_empty())
            .ok_or_else(|| S3Error::Answer("no UploadId in CreateMultipartUpload".into()))
    }

    /// One part (numbered from 1); returns its ETag and whether that is the part's MD5.
    pub async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: Bytes,
    ) -> Result<(String, bool), S3Error> {
        let n = number.to_string();
        let query = [("partNumber", n.as_str()), ("uploadId", upload_id)];
        let answer = self.call("PUT", key, &query, Vec::new(), body).await?;
        Ok((etag(&answer)?, md5_etag(&answer)))
    }

    /// Assembles the parts, given as (number, ETag) in ascending order.
    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<(), S3Error> {
        let mut xml = String::from("<CompleteMultipartUpload>");
        for (n, etag) in parts {
            xml.push_str(&format!(
                "<Part><PartNumber>{n}</PartNumber><ETag>\"{etag}\"</ETag></Part>"
            ));
        }
        xml.push_str("</CompleteMultipartUpload>");
        let extra = vec![("content-type", "application/xml".to_owned())];
        let query = [("uploadId", upload_id)];
        self.call("POST", key, &query, extra, Bytes::from(xml))
            .await
            .map(drop)
    }

    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), S3Error> {
        let query = [("uploadId", upload_id)];
        self.call("DELETE", key, &query, Vec::new(), Bytes::new())
            .await
            .map(drop)
    }

    /// The object's size, ETag and recorded SHA-256; `None` if it does not exist.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>, S3Error> {
        let answer = match self.call("HEAD", key, &[], Vec::new(), Bytes::new()).await {
            Ok(a) => a,
            Err(S3Error::Status { status: 404, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let header = |name: &str| {
            answer
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let size = header("content-length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| S3Error::Answer("HEAD without Content-Length".into()))?;
        Ok(Some(ObjectInfo {
            size,
            etag: etag(&answer)?,
            md5_etag: md5_etag(&answer),
            sha256: header(SHA256_META),
        }))
    }

    /// Deletes an object (deleting a missing one succeeds, as in S3).
    pub async fn delete(&self, key: &str) -> Result<(), S3Error> {
        match self
            .call("DELETE", key, &[], Vec::new(), Bytes::new())
            .await
        {
            Ok(_) | Err(S3Error::Status { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// The headers an object is created with: its type and its whole SHA-256.
fn object_headers(content_type: &str, sha256_hex: &str) -> Vec<(&'static str, String)> {
    vec![
        ("content-type", content_type.to_owned()),
        (SHA256_META, sha256_hex.to_owned()),
    ]
}

/// S3 ETags are the MD5 of the content except under SSE-KMS and SSE-C encryption.
fn md5_etag(answer: &httpc::Answer) -> bool {
    let kms = answer
        .headers
        .get("x-amz-server-side-encryption")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("aws:kms"));
    let customer = answer
        .headers
        .contains_key("x-amz-server-side-encryption-customer-algorithm");
    !kms && !customer
}

fn etag(answer: &httpc::Answer) -> Result<String, S3Error> {
    answer
        .headers
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim_matches('"').to_owned())
        .ok_or_else(|| S3Error::Answer("no ETag".into()))
}

fn status_error(status: StatusCode, body: &[u8]) -> S3Error {
    S3Error::Status {
        status: status.as_u16(),
        code: xml_text(body, "Code").unwrap_or_else(|| status.to_string()),
        message: xml_text(body, "Message").unwrap_or_default(),
    }
}

/// The text of the first `<tag>` element (entities decoded); enough for S3's flat answers.
pub fn xml_text(xml: &[u8], tag: &str) -> Option<String> {
    let text = std::str::from_utf8(xml).ok()?;
    let open = format!("<{tag}>");
    let start = text.find(&open)? + open.len();
    let end = start + text[start..].find(&format!("</{tag}>"))?;
    Some(
        text[start..end]
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

/// The ETag S3 gives a multipart object: MD5 of the parts' MD5s, then `-<parts>`.
pub fn multipart_etag(part_md5s: &[[u8; 16]]) -> String {
    let joined: Vec<u8> = part_md5s.iter().flatten().copied().collect();
    format!("{}-{}", sigv4::hex(&sigv4::md5(&joined)), part_md5s.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_answers() {
        let create = b"<?xml version=\"1.0\"?><InitiateMultipartUploadResult><Bucket>b</Bucket>\
            <Key>k</Key><UploadId>abc&amp;1</UploadId></InitiateMultipartUploadResult>";
        assert_eq!(xml_text(create, "UploadId").as_deref(), Some("abc&1"));
        let err = b"<Error><Code>NoSuchUpload</Code><Message>gone</Message></Error>";
        match status_error(StatusCode::NOT_FOUND, err) {
            S3Error::Status {
                status,
                code,
                message,
            } => {
                assert_eq!(
                    (status, code.as_str(), message.as_str()),
                    (404, "NoSuchUpload", "gone")
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(xml_text(b"<a>1</a>", "b"), None);
    }

    /// The multipart ETag's shape (its value is checked against a real store in
    /// tests/upload.rs).
    #[test]
    fn multipart_etag_shape() {
        let one = sigv4::md5(b"part");
        let etag = multipart_etag(&[one]);
        assert!(etag.ends_with("-1") && etag.len() == 34, "{etag}");
    }
}
