//! SIPREC bodies and metadata: multipart splitting of INVITE/UPDATE bodies (`body`) and the
//! RFC 7865 recording metadata model (`metadata`). No I/O.

pub mod body;
pub mod metadata;
