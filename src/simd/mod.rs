//! CPU-specific kernels the sans-IO modules call through safe functions: each checks the CPU
//! at run time and falls back to portable code. The only place besides the data plane's
//! backends where `unsafe` is allowed, and only for intrinsics.

pub mod aes;
pub mod sha1;
