//! AF_XDP (issue 12): RTP taken off the NIC's receive queue before the kernel's UDP stack.
//!
//! Built so far, each tested on its own: the XDP program that picks RTP out of the frames
//! (`program`, generated as eBPF for the configured port range and addresses), the bpf(2)
//! calls that load, attach and test-run it (`sys`), and the parser of the frames it
//! redirects (`packet`), and the AF_XDP socket with its UMEM and rings (`xsk`). The worker
//! backend built on them is not yet: `dataplane.backend` offers io_uring and epoll only.

pub mod packet;
pub mod program;
pub mod sys;
pub mod xsk;
