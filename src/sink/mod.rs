//! Consumers of decoded media on their own threads: the recorder and live transcription (STT).

pub mod recorder;
pub mod stt;
pub mod upload;
