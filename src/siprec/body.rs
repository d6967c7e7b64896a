//! Splits a SIPREC request body into its SDP and metadata parts (RFC 7866 §9, RFC 2046
//! multipart/mixed). Tolerant of quoted or bare boundaries, preamble and epilogue, CRLF or LF,
//! parts in any order; a plain `application/sdp` body (Cisco NBR, PBX forks) works too.
//!
//! Refuses: metadata over 256 KiB (413), bodies that are not UTF-8, content types that carry
//! neither SDP nor metadata (415).

/// Largest metadata document we parse.
pub const MAX_METADATA_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Default)]
pub struct InviteBody {
    pub sdp: Option<String>,
    pub metadata: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    #[error("recording metadata larger than {MAX_METADATA_BYTES} bytes")]
    MetadataTooLarge,
    #[error("bad multipart body: {0}")]
    BadMultipart(String),
    #[error("unsupported content type {0:?}")]
    UnsupportedContentType(String),
    #[error("body is not UTF-8")]
    NotUtf8,
}

impl BodyError {
    pub fn status(&self) -> u16 {
        match self {
            BodyError::MetadataTooLarge => 413,
            BodyError::UnsupportedContentType(_) => 415,
            _ => 400,
        }
    }
}

/// Splits `body` according to its `Content-Type`.
pub fn split_body(content_type: Option<&str>, body: &[u8]) -> Result<InviteBody, BodyError> {
    if body.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(InviteBody::default());
    }
    let text = std::str::from_utf8(body).map_err(|_| BodyError::NotUtf8)?;
    let ct = content_type.unwrap_or("application/sdp");
    let (media_type, params) = split_content_type(ct);
    let mut out = InviteBody::default();
    match media_type.as_str() {
        "multipart/mixed" | "multipart/related" | "multipart/alternative" => {
            let boundary = params
                .iter()
                .find(|(k, _)| k == "boundary")
                .map(|(_, v)| v.clone())
                .filter(|b| !b.is_empty())
                .ok_or_else(|| BodyError::BadMultipart("no boundary".into()))?;
            let parts = split_multipart(text, &boundary)?;
            for part in parts {
                let (headers, content) = split_part(part);
                let part_type = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                    .map(|(_, v)| split_content_type(v).0)
                    .unwrap_or_default();
                store(&mut out, &part_type, content)?;
            }
        }
        other => {
            store(&mut out, other, text)?;
            if out.sdp.is_none() && out.metadata.is_none() {
                return Err(BodyError::UnsupportedContentType(other.to_owned()));
            }
        }
    }
    Ok(out)
}

fn store(out: &mut InviteBody, media_type: &str, content: &str) -> Result<(), BodyError> {
    match media_type {
        "application/sdp" if out.sdp.is_none() => out.sdp = Some(content.to_owned()),
        "application/rs-metadata+xml" | "application/rs-metadata" if out.metadata.is_none() => {
            if content.len() > MAX_METADATA_BYTES {
                return Err(BodyError::MetadataTooLarge);
            }
            out.metadata = Some(content.to_owned());
        }
        _ => {} // Unknown parts are ignored.
    }
    Ok(())
}

/// `type/subtype; k=v; k="v"` → lowercased type and lowercased-key parameters.
fn split_content_type(ct: &str) -> (String, Vec<(String, String)>) {
    let mut parts = ct.split(';');
    let media_type = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let params = parts
        .filter_map(|p| {
            let (k, v) = p.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            Some((k.trim().to_ascii_lowercase(), v.to_owned()))
        })
        .collect();
    (media_type, params)
}

/// The parts between `--boundary` delimiter lines, preamble and epilogue dropped.
fn split_multipart<'a>(text: &'a str, boundary: &str) -> Result<Vec<&'a str>, BodyError> {
    let delimiter = format!("--{boundary}");
    // Positions of delimiter lines: at the start or right after a line feed.
    let mut starts = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find(&delimiter) {
        let at = from + i;
        if at == 0 || text.as_bytes()[at - 1] == b'\n' {
            starts.push(at);
        }
        from = at + delimiter.len();
    }
    if starts.is_empty() {
        return Err(BodyError::BadMultipart("boundary not found".into()));
    }
    let mut parts = Vec::new();
    for (n, &at) in starts.iter().enumerate() {
        let after = at + delimiter.len();
        if text[after..].starts_with("--") {
            break; // Close delimiter: the rest is epilogue.
        }
        // Skip the rest of the delimiter line (transport padding, CRLF or LF).
        let content_start = match text[after..].find('\n') {
            Some(nl) => after + nl + 1,
            None => break,
        };
        let end = starts.get(n + 1).copied().unwrap_or(text.len());
        if content_start > end {
            continue;
        }
        // The line break before the next delimiter belongs to the delimiter.
        let mut content = &text[content_start..end];
        content = content.strip_suffix('\n').unwrap_or(content);
        content = content.strip_suffix('\r').unwrap_or(content);
        parts.push(content);
    }
    Ok(parts)
}

/// Part headers (until the first blank line) and content.
fn split_part(part: &str) -> (Vec<(String, String)>, &str) {
    let mut headers = Vec::new();
    let mut offset = 0;
    for line in part.split_inclusive('\n') {
        let trimmed = line.trim_end_matches(['\r', '\n']);
        offset += line.len();
        if trimmed.is_empty() {
            return (headers, &part[offset..]);
        }
        match trimmed.split_once(':') {
            Some((k, v)) if !k.contains(' ') => {
                headers.push((k.trim().to_owned(), v.trim().to_owned()))
            }
            // No header block at all: the whole part is content (text/plain by default).
            _ => return (Vec::new(), part),
        }
    }
    (headers, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SDP: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\nm=audio 1 RTP/AVP 0\r\n";
    const XML: &str = "<recording xmlns='urn:ietf:params:xml:ns:recording:1'/>";

    /// Quoted boundary, preamble, epilogue, metadata first, LF-only lines, extra parameters.
    #[test]
    fn multipart_variants() {
        let body = format!(
            "preamble text\n--uniqueBoundary\nContent-Type: application/rs-metadata+xml;charset=UTF-8\n\
Content-Disposition: recording-session\n\n{XML}\n--uniqueBoundary\ncontent-type: APPLICATION/SDP\n\n{SDP}\n--uniqueBoundary--\nepilogue\n"
        );
        let b = split_body(
            Some("multipart/mixed; charset=x; BOUNDARY=\"uniqueBoundary\""),
            body.as_bytes(),
        )
        .unwrap();
        assert_eq!(b.sdp.as_deref(), Some(SDP));
        assert_eq!(b.metadata.as_deref(), Some(XML));
    }

    /// CRLF multipart with an unquoted boundary and the older rs-metadata type.
    #[test]
    fn crlf_unquoted() {
        let body = format!(
            "--xyz\r\nContent-Type: application/sdp\r\n\r\n{SDP}\r\n--xyz\r\nContent-Type: application/rs-metadata\r\n\r\n{XML}\r\n--xyz--\r\n"
        );
        let b = split_body(Some("multipart/mixed;boundary=xyz"), body.as_bytes()).unwrap();
        assert_eq!(b.sdp.as_deref(), Some(SDP));
        assert_eq!(b.metadata.as_deref(), Some(XML));
    }

    /// Plain SDP, empty body, unsupported type, too-large metadata, missing boundary.
    #[test]
    fn plain_and_errors() {
        assert_eq!(
            split_body(Some("application/sdp"), SDP.as_bytes())
                .unwrap()
                .sdp
                .as_deref(),
            Some(SDP)
        );
        assert!(split_body(None, b"").unwrap().sdp.is_none());
        assert_eq!(
            split_body(Some("text/html"), b"<p>").unwrap_err().status(),
            415
        );
        let big = "x".repeat(MAX_METADATA_BYTES + 1);
        assert_eq!(
            split_body(Some("application/rs-metadata+xml"), big.as_bytes())
                .unwrap_err()
                .status(),
            413
        );
        assert!(split_body(Some("multipart/mixed"), b"--a\r\n\r\nx").is_err());
        assert!(split_body(Some("multipart/mixed;boundary=q"), b"no delimiters").is_err());
        assert!(split_body(Some("application/sdp"), &[0xff, 0xfe]).is_err());
    }
}
