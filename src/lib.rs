//! siprec: a SIPREC (RFC 7865/7866) session recording server.
//!
//! Modules follow the path a SIP message or an RTP packet travels; see `docs/architecture.md`.
//! `proto`, `sip`, `sdp`, `siprec`, `session` and `media` are sans-IO: no sockets, no clock.
//! `dataplane` is the only module that touches epoll/recvmmsg (and io_uring later).

pub mod api;
pub mod cluster;
pub mod config;
pub mod dataplane;
pub mod events;
pub mod ffi;
#[doc(hidden)]
pub mod fuzz;
pub mod httpc;
pub mod media;
pub mod proto;
pub mod ring;
pub mod sdp;
pub mod session;
pub mod simd;
pub mod sink;
pub mod sip;
pub mod siprec;
pub mod srtp;
pub mod takeover;
