//! One AF_XDP socket bound to one receive queue, with its own UMEM: frames the XDP program
//! redirects land in UMEM chunks the fill ring lent the kernel; the RX ring says which. Each
//! chunk goes back to the fill ring as soon as its frame has been handled, so the kernel never
//! runs dry while we keep up (and counts what it drops when we do not).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};

const AF_XDP: i32 = 44;
const SOL_XDP: i32 = 283;
const XDP_MMAP_OFFSETS: i32 = 1;
const XDP_RX_RING: i32 = 2;
const XDP_UMEM_REG: i32 = 4;
const XDP_UMEM_FILL_RING: i32 = 5;
const XDP_UMEM_COMPLETION_RING: i32 = 6;
const XDP_STATISTICS: i32 = 7;
const XDP_PGOFF_RX_RING: libc::off_t = 0;
const XDP_UMEM_PGOFF_FILL_RING: libc::off_t = 0x1_0000_0000;
const XDP_UMEM_PGOFF_COMPLETION_RING: libc::off_t = 0x1_8000_0000;
const XDP_COPY: u16 = 1 << 1;
const XDP_ZEROCOPY: u16 = 1 << 2;
const XDP_USE_NEED_WAKEUP: u16 = 1 << 3;
const XDP_RING_NEED_WAKEUP: u32 = 1;

#[repr(C)]
struct UmemReg {
    addr: u64,
    len: u64,
    chunk_size: u32,
    headroom: u32,
    flags: u32,
    tx_metadata_len: u32,
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct RingOffset {
    producer: u64,
    consumer: u64,
    desc: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct MmapOffsets {
    rx: RingOffset,
    tx: RingOffset,
    fr: RingOffset,
    cr: RingOffset,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    options: u32,
}

#[repr(C)]
struct SockaddrXdp {
    family: u16,
    flags: u16,
    ifindex: u32,
    queue_id: u32,
    shared_umem_fd: u32,
}

/// The kernel's counters for the socket (`struct xdp_statistics`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct Statistics {
    /// Frames dropped for reasons other than a full ring or an empty fill ring.
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    /// Frames dropped because the RX ring was full (we fell behind).
    pub rx_ring_full: u64,
    /// Times the fill ring had no chunk for a frame.
    pub rx_fill_ring_empty_descs: u64,
    pub tx_ring_empty_descs: u64,
}

/// An anonymous or ring mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize, fd: RawFd, offset: libc::off_t) -> io::Result<Mapping> {
        let (flags, fd) = if fd < 0 {
            (
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
            )
        } else {
            (libc::MAP_SHARED | libc::MAP_POPULATE, fd)
        };
        // SAFETY: a fresh mapping of `len` bytes; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned; nothing uses the mapping after this.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// A single-producer single-consumer ring shared with the kernel.
struct Ring<T> {
    _map: Mapping,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    flags: *const AtomicU32,
    descs: *mut T,
    mask: u32,
}

impl<T: Copy> Ring<T> {
    fn map(fd: RawFd, off: RingOffset, entries: u32, pgoff: libc::off_t) -> io::Result<Self> {
        let len = off.desc as usize + entries as usize * std::mem::size_of::<T>();
        let map = Mapping::new(len, fd, pgoff)?;
        // SAFETY: the kernel placed the producer, consumer and flags words and the descriptor
        // array at these offsets inside the mapping it just gave us, aligned for their types.
        unsafe {
            Ok(Ring {
                producer: map.ptr.add(off.producer as usize).cast(),
                consumer: map.ptr.add(off.consumer as usize).cast(),
                flags: map.ptr.add(off.flags as usize).cast(),
                descs: map.ptr.add(off.desc as usize).cast(),
                mask: entries - 1,
                _map: map,
            })
        }
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points into our live mapping (see `map`).
        unsafe { &*self.producer }
    }
    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as above.
        unsafe { &*self.consumer }
    }
    fn flags(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.flags).load(Ordering::Relaxed) }
    }
    fn read(&self, index: u32) -> T {
        // SAFETY: index & mask < entries: inside the descriptor array.
        unsafe { self.descs.add((index & self.mask) as usize).read_volatile() }
    }
    fn write(&self, index: u32, value: T) {
        // SAFETY: as above; this slot is ours to write (producer side, not yet published).
        unsafe {
            self.descs
                .add((index & self.mask) as usize)
                .write_volatile(value)
        }
    }
}

/// An AF_XDP socket with its UMEM, bound to `queue` of `ifindex`.
pub struct Xsk {
    fd: OwnedFd,
    umem: Mapping,
    chunk: u32,
    rx: Ring<Desc>,
    fill: Ring<u64>,
    _completion: Ring<u64>,
    /// Whether it runs without copies (the driver's zero-copy mode).
    pub zerocopy: bool,
}

// SAFETY: the raw pointers point into mappings owned by this value; it is used by one thread
// at a time (the worker that owns it).
unsafe impl Send for Xsk {}

fn setsockopt<T>(fd: RawFd, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: value is a live T of the size we pass.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            SOL_XDP,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn getsockopt<T: Default>(fd: RawFd, name: i32) -> io::Result<T> {
    let mut value = T::default();
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: value is a writable T; the kernel writes at most `len` bytes.
    let rc =
        unsafe { libc::getsockopt(fd, SOL_XDP, name, (&mut value as *mut T).cast(), &mut len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

impl Xsk {
    /// `frames` chunks of `chunk` bytes (both powers of two; chunk 2048 or 4096). Zero-copy
    /// when asked and the driver allows it, else copy mode.
    pub fn new(
        ifindex: u32,
        queue: u32,
        frames: u32,
        chunk: u32,
        zerocopy: bool,
    ) -> io::Result<Xsk> {
        assert!(frames.is_power_of_two() && chunk.is_power_of_two());
        // SAFETY: plain syscall; the result is checked.
        let raw = unsafe { libc::socket(AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let umem = Mapping::new(frames as usize * chunk as usize, -1, 0)?;
        let reg = UmemReg {
            addr: umem.ptr as u64,
            len: umem.len as u64,
            chunk_size: chunk,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        setsockopt(raw, XDP_UMEM_REG, &reg)?;
        setsockopt(raw, XDP_UMEM_FILL_RING, &frames)?;
        setsockopt(raw, XDP_UMEM_COMPLETION_RING, &frames)?;
        setsockopt(raw, XDP_RX_RING, &frames)?;
        let off: MmapOffsets = getsockopt(raw, XDP_MMAP_OFFSETS)?;
        let rx = Ring::map(raw, off.rx, frames, XDP_PGOFF_RX_RING)?;
        let fill = Ring::map(raw, off.fr, frames, XDP_UMEM_PGOFF_FILL_RING)?;
        let completion = Ring::map(raw, off.cr, frames, XDP_UMEM_PGOFF_COMPLETION_RING)?;
        // Every chunk is lent to the kernel from the start.
        for i in 0..frames {
            fill.write(i, u64::from(i) * u64::from(chunk));
        }
        fill.producer().store(frames, Ordering::Release);
        let mut xsk = Xsk {
            fd,
            umem,
            chunk,
            rx,
            fill,
            _completion: completion,
            zerocopy: false,
        };
        let mode = if zerocopy { XDP_ZEROCOPY } else { XDP_COPY };
        match xsk.bind(ifindex, queue, mode) {
            Ok(()) => xsk.zerocopy = zerocopy,
            Err(e) if zerocopy => {
                tracing::warn!(error = %e, "AF_XDP zero-copy refused by the driver; copy mode");
                xsk.bind(ifindex, queue, XDP_COPY)?;
            }
            Err(e) => return Err(e),
        }
        Ok(xsk)
    }

    fn bind(&self, ifindex: u32, queue: u32, mode: u16) -> io::Result<()> {
        let addr = SockaddrXdp {
            family: AF_XDP as u16,
            flags: mode | XDP_USE_NEED_WAKEUP,
            ifindex,
            queue_id: queue,
            shared_umem_fd: 0,
        };
        // SAFETY: addr is a live sockaddr_xdp of the size we pass.
        let rc = unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                (&addr as *const SockaddrXdp).cast(),
                std::mem::size_of::<SockaddrXdp>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Hands up to `max` received frames to `handle` (in place, mutable: SRTP decrypts there)
    /// and gives their chunks back to the kernel; how many there were.
    pub fn receive(&mut self, max: u32, mut handle: impl FnMut(&mut [u8])) -> u32 {
        let consumer = self.rx.consumer().load(Ordering::Relaxed);
        let available = self
            .rx
            .producer()
            .load(Ordering::Acquire)
            .wrapping_sub(consumer);
        let n = available.min(max);
        let fill_at = self.fill.producer().load(Ordering::Relaxed);
        let chunk_mask = !(u64::from(self.chunk) - 1);
        for i in 0..n {
            let desc = self.rx.read(consumer.wrapping_add(i));
            let start = desc.addr as usize;
            let end = start.saturating_add(desc.len as usize);
            if end <= self.umem.len {
                // SAFETY: [start, end) lies inside the UMEM (checked), and the kernel handed
                // this chunk to us until we return it to the fill ring below.
                let frame = unsafe {
                    std::slice::from_raw_parts_mut(self.umem.ptr.add(start), end - start)
                };
                handle(frame);
            }
            self.fill
                .write(fill_at.wrapping_add(i), desc.addr & chunk_mask);
        }
        if n > 0 {
            self.rx
                .consumer()
                .store(consumer.wrapping_add(n), Ordering::Release);
            self.fill
                .producer()
                .store(fill_at.wrapping_add(n), Ordering::Release);
        }
        // The driver may have asked for a kick after our last refill, also when nothing came
        // (one waiting for it would never fill the RX ring again).
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.fill.flags() & XDP_RING_NEED_WAKEUP != 0 {
            // SAFETY: a zero-length non-blocking receive: only wakes the driver up.
            unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                )
            };
        }
        n
    }

    /// The kernel's drop counters for this socket.
    pub fn statistics(&self) -> io::Result<Statistics> {
        getsockopt(self.fd.as_raw_fd(), XDP_STATISTICS)
    }
}

impl AsRawFd for Xsk {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
