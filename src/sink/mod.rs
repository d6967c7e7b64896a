//! Consumers of decoded media on their own threads: the recorder (and STT, analytics later).

pub mod recorder;
