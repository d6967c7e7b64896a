//! The AF_XDP worker backend: the worker's AF_XDP socket for the RTP the XDP program
//! redirects to its queue, and epoll on the streams' kernel sockets for everything else
//! (RTCP, RTP the program left to the kernel: fragments, another queue's frames). Both feed
//! the same `Core::handle`, so a stream's state and counters are the same whichever way a
//! packet came.

use std::io;
use std::os::fd::AsRawFd;

use super::super::epoll::Epoll;
use super::super::mono_now_ns;
use super::super::worker::{Backend, Core, Stream};
use super::xsk::Xsk;
use super::{packet, sys, WorkerXdp, UMEM_CHUNK, UMEM_FRAMES};

/// Frames taken from the RX ring per call.
const BATCH: u32 = 64;

pub struct XdpBackend {
    kernel: Epoll,
    xsk: Xsk,
    /// The program's port map: a port is taken off the NIC only while a stream has it.
    ports_fd: std::os::fd::RawFd,
    /// Slot + 1 of the stream whose RTP port is the index; 0: none.
    slots: Box<[u32]>,
    /// Polls since the kernel's drop counters were last read.
    polls: u32,
}

/// The socket's kernel counters are read every this many polls (a getsockopt; a poll is a
/// drained batch or a wait of up to WAIT_MS).
const STATISTICS_EVERY: u32 = 256;

impl XdpBackend {
    pub(in crate::dataplane) fn new(batch: usize, x: &WorkerXdp) -> io::Result<XdpBackend> {
        let kernel = Epoll::new(batch)?;
        let xsk =
            Xsk::new(x.ifindex, x.queue, UMEM_FRAMES, UMEM_CHUNK, x.zerocopy).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("AF_XDP socket on queue {}: {e} (memlock limit?)", x.queue),
                )
            })?;
        sys::set_xsk(x.map_fd, x.queue, xsk.as_raw_fd())?;
        kernel.watch(xsk.as_raw_fd())?;
        Ok(XdpBackend {
            kernel,
            xsk,
            ports_fd: x.ports_fd,
            slots: vec![0; 1 << 16].into_boxed_slice(),
            polls: 0,
        })
    }

    pub fn zerocopy(&self) -> bool {
        self.xsk.zerocopy
    }
}

impl Backend for XdpBackend {
    fn add(&mut self, slot: usize, stream: &Stream) -> io::Result<()> {
        self.kernel.add(slot, stream)?;
        let port = stream.sockets.rtp.local_addr()?.port();
        self.slots[usize::from(port)] = slot as u32 + 1;
        // Until this succeeds the port's frames stay with the kernel (and its socket).
        if let Err(e) = sys::set_port(self.ports_fd, port, true) {
            tracing::warn!(port, error = %e, "AF_XDP: port left to the kernel path");
        }
        Ok(())
    }

    fn remove(&mut self, slot: usize, stream: &Stream) {
        if let Ok(addr) = stream.sockets.rtp.local_addr() {
            let entry = &mut self.slots[usize::from(addr.port())];
            if *entry == slot as u32 + 1 {
                *entry = 0;
                let _ = sys::set_port(self.ports_fd, addr.port(), false);
            }
        }
        self.kernel.remove(slot, stream);
    }

    fn poll(&mut self, core: &mut Core) {
        // Frames that arrived while we waited are taken now, after the worker applied its
        // commands: a stream opened just before its first packet came is there to take it
        // (the kernel path gets this for free, its socket holding the datagram meanwhile).
        self.drain(core);
        self.polls += 1;
        if self.polls >= STATISTICS_EVERY {
            self.polls = 0;
            // Frames the kernel could not hand us: our RX ring was full, or the fill ring
            // had no chunk. Cumulative per socket, and the socket is this worker's only one.
            if let Ok(s) = self.xsk.statistics() {
                core.local.xdp_kernel_drops = s.rx_dropped + s.rx_ring_full;
            }
        }
        // Waits (up to WAIT_MS) on the kernel sockets and the AF_XDP socket alike.
        self.kernel.poll(core);
    }
}

impl XdpBackend {
    fn drain(&mut self, core: &mut Core) {
        let now = mono_now_ns();
        let slots = &self.slots;
        // Bounded, so commands, RTCP and the heartbeat get their turn under any load (epoll
        // reports the socket ready at once if frames remain).
        for _ in 0..UMEM_FRAMES / BATCH {
            let n = self.xsk.receive(BATCH, |frame| match packet::parse(frame) {
                Ok(udp) => match slots[usize::from(udp.destination.port())] {
                    // A port in the range with no stream: the program takes it, nobody wants it.
                    0 => core.local.unknown_socket += 1,
                    slot => {
                        let payload = &mut frame[udp.payload];
                        core.handle(now, slot as usize - 1, 0, false, Some(udp.source), payload);
                    }
                },
                // Bad checksum, truncated: counted, as the kernel would drop it.
                Err(_) => core.local.receive_errors += 1,
            });
            if n < BATCH {
                break;
            }
        }
    }
}
