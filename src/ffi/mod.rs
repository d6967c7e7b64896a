//! Safe wrappers over the C codec libraries the media path links: bcg729 (G.729). The only
//! `unsafe` outside the data plane and SIMD, each call with its SAFETY argument; everything
//! above this module (src/media) stays safe and sans-IO.

pub mod bcg729;
