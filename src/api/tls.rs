//! TLS contexts (OpenSSL through tokio-openssl) for HTTPS and for SIP over TLS: rebuilt from
//! the certificate and key files on every config reload and SIGHUP, so a renewed certificate
//! is served without a restart; connections already open keep the one they started with.

use std::path::Path;

use openssl::ssl::{
    AlpnError, SslAcceptor, SslAcceptorBuilder, SslFiletype, SslMethod, SslVerifyMode,
};

/// A server-side TLS context from a PEM certificate chain and its private key: Mozilla's
/// "intermediate" profile (TLS 1.2 and 1.3), ALPN `http/1.1`.
pub fn acceptor(cert: &Path, key: &Path) -> Result<SslAcceptor, String> {
    let mut b = server_context(cert, key)?;
    b.set_alpn_select_callback(|_, client| {
        openssl::ssl::select_next_proto(b"\x08http/1.1", client).ok_or(AlpnError::NOACK)
    });
    Ok(b.build())
}

/// The SIP over TLS context (same profile, no ALPN); with `ca`, clients must present a
/// certificate chaining to one of its CAs (mutual TLS).
pub fn sip_acceptor(cert: &Path, key: &Path, ca: Option<&Path>) -> Result<SslAcceptor, String> {
    let mut b = server_context(cert, key)?;
    if let Some(ca) = ca {
        b.set_ca_file(ca)
            .map_err(|e| format!("CA file {}: {e}", ca.display()))?;
        b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
    }
    Ok(b.build())
}

fn server_context(cert: &Path, key: &Path) -> Result<SslAcceptorBuilder, String> {
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
        .map_err(|e| format!("TLS context: {e}"))?;
    b.set_certificate_chain_file(cert)
        .map_err(|e| format!("certificate {}: {e}", cert.display()))?;
    b.set_private_key_file(key, SslFiletype::PEM)
        .map_err(|e| format!("private key {}: {e}", key.display()))?;
    b.check_private_key()
        .map_err(|_| "the private key does not match the certificate".to_owned())?;
    Ok(b)
}
