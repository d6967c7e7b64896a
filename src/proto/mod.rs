//! Identifiers and units shared by every layer. No I/O. No clock.

/// Monotonic time in nanoseconds since an arbitrary process-wide origin. Sans-IO code takes it
/// as an input; only `dataplane` and the binaries read a real clock.
pub type MonoNs = u64;
