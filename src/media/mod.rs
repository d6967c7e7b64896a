//! Media: RTP header handling, decoders, and the frame type that leaves the data plane.
//!
//! No I/O. No clock.

pub mod activity;
pub mod frame;
pub mod g711;
pub mod g722;
pub mod opus;
pub mod plc;
pub mod reorder;
pub mod rtcp;
pub mod rtp;

pub use frame::{MediaFrame, StreamKey, FRAME_SAMPLES_MAX};
