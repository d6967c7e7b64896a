//! G.729 / G.729A / Annex B decoding with Belledonne's bcg729 (Debian `libbcg729-0`), one
//! context per stream.

use std::ffi::c_void;
use std::ptr::NonNull;

/// Samples per 10 ms G.729 frame at 8 kHz.
pub const FRAME_SAMPLES: usize = 80;
/// Bytes of a speech frame, and of an Annex B SID (comfort-noise) frame.
pub const FRAME_BYTES: usize = 10;
pub const SID_BYTES: usize = 2;

#[link(name = "bcg729")]
extern "C" {
    fn initBcg729DecoderChannel() -> *mut c_void;
    fn closeBcg729DecoderChannel(ctx: *mut c_void);
    fn bcg729Decoder(
        ctx: *mut c_void,
        bitstream: *const u8,
        bitstream_len: u8,
        frame_erasure: u8,
        sid_frame: u8,
        rfc3389_payload: u8,
        signal: *mut i16,
    );
}

/// One stream's decoder state (about 2 KiB inside bcg729).
#[derive(Debug)]
pub struct G729Decoder {
    ctx: NonNull<c_void>,
}

// SAFETY: the context is heap memory owned by this value alone; bcg729 keeps no thread-local
// or global state, so using it from another thread than the one that created it is sound.
// It is not Sync: `&mut self` is required for every call.
unsafe impl Send for G729Decoder {}

impl G729Decoder {
    /// None when bcg729 could not allocate its context.
    pub fn new() -> Option<G729Decoder> {
        // SAFETY: no arguments; returns a fresh context or null.
        let ctx = unsafe { initBcg729DecoderChannel() };
        NonNull::new(ctx).map(|ctx| G729Decoder { ctx })
    }

    /// Decodes one 10-byte speech frame or 2-byte SID frame (comfort noise) into 80 samples.
    /// Any other length is treated as a lost frame (concealed).
    pub fn decode(&mut self, frame: &[u8], out: &mut [i16; FRAME_SAMPLES]) {
        let (sid, erased) = match frame.len() {
            FRAME_BYTES => (0, 0),
            SID_BYTES => (1, 0),
            _ => (0, 1),
        };
        let mut bits = [0u8; FRAME_BYTES];
        let n = frame.len().min(FRAME_BYTES);
        bits[..n].copy_from_slice(&frame[..n]);
        // SAFETY: `ctx` is a live context from initBcg729DecoderChannel; `bits` holds the 10
        // bytes bcg729 may read whatever length we pass; `out` has the 80 samples it writes.
        unsafe {
            bcg729Decoder(
                self.ctx.as_ptr(),
                bits.as_ptr(),
                n as u8,
                erased,
                sid,
                0,
                out.as_mut_ptr(),
            )
        }
    }

    /// 80 samples of packet-loss concealment (G.729's own, from the last good frames).
    pub fn conceal(&mut self, out: &mut [i16; FRAME_SAMPLES]) {
        self.decode(&[], out);
    }
}

impl Drop for G729Decoder {
    fn drop(&mut self) {
        // SAFETY: the context came from initBcg729DecoderChannel and is freed exactly once.
        unsafe { closeBcg729DecoderChannel(self.ctx.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_sid_and_loss_decode() {
        let mut d = G729Decoder::new().unwrap();
        let mut out = [0i16; FRAME_SAMPLES];
        d.decode(
            &[0x78, 0x52, 0x80, 0xa0, 0x00, 0xfa, 0xc2, 0x00, 0x07, 0xd6],
            &mut out,
        );
        d.decode(&[0x55, 0x66], &mut out);
        d.conceal(&mut out);
        d.decode(&[0xff; 7], &mut out);
        drop(d);
        // Contexts come and go: each is freed by Drop.
        for _ in 0..1000 {
            assert!(G729Decoder::new().is_some());
        }
    }
}
