//! SIP, sans-IO: a tolerant message parser/printer (`msg`) and RFC 3261 transactions
//! (`transaction`). No sockets, no clock: bytes and time are inputs, bytes and events outputs.

pub mod acl;
pub mod msg;
pub mod pike;
pub mod transaction;

pub use msg::*;
pub use transaction::*;
