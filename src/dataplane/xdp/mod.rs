//! AF_XDP (issue 12): RTP taken off the NIC's receive queue before the kernel's UDP stack.
//!
//! The XDP program that picks RTP out of the frames (`program`, generated as eBPF for the
//! configured port range, addresses and worker count), the bpf(2) calls that load, attach and
//! test-run it (`sys`), the AF_XDP socket with its UMEM and rings (`xsk`), the parser of the
//! frames it receives (`packet`), and the worker backend on them (`backend`). `Attached` is
//! the program on the interface for the process's lifetime: the BPF link detaches it when
//! dropped, and the kernel does the same when the process dies.

pub mod backend;
pub mod packet;
pub mod program;
pub mod sys;
pub mod xsk;

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// UMEM chunks per worker, and their size: 4,096 × 2 KiB = 8 MiB.
pub const UMEM_FRAMES: u32 = 4096;
pub const UMEM_CHUNK: u32 = 2048;
pub const UMEM_BYTES: usize = UMEM_FRAMES as usize * UMEM_CHUNK as usize;

/// What the AF_XDP backend needs from the configuration.
#[derive(Debug, Clone)]
pub struct XdpSettings {
    pub interface: String,
    pub zerocopy: bool,
    pub port_min: u16,
    pub port_max: u16,
    /// Our address on the interface; None: every address it has.
    pub address: Option<IpAddr>,
}

/// The program attached to the interface, with its map; detached when dropped.
pub struct Attached {
    ifindex: u32,
    zerocopy: bool,
    map: OwnedFd,
    ports: OwnedFd,
    _prog: OwnedFd,
    _link: OwnedFd,
}

/// What one worker needs to bind its socket to its queue and enter it in the map.
pub struct WorkerXdp {
    pub(crate) ifindex: u32,
    pub(crate) queue: u32,
    pub(crate) map_fd: RawFd,
    pub(crate) ports_fd: RawFd,
    pub(crate) zerocopy: bool,
}

impl Attached {
    /// Checks what AF_XDP needs, loads the program for `workers` queues and attaches it
    /// (native mode, else generic). Each failure says what is missing.
    pub fn new(settings: &XdpSettings, workers: usize) -> io::Result<Attached> {
        let name = &settings.interface;
        let ifindex = ifindex(name).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("AF_XDP: no interface {name:?}"),
            )
        })?;
        let queues = rx_queues(name);
        if queues.is_some_and(|q| q < workers) {
            let q = queues.unwrap_or(0);
            return Err(io::Error::other(format!(
                "AF_XDP: {name} has {q} receive queues for {workers} workers: set \
                 DATAPLANE_WORKERS={q} or `ethtool -L {name} combined {workers}`"
            )));
        }
        let map = sys::create_xskmap(workers as u32).map_err(|e| {
            explain(
                e,
                "creating the socket map (needs CAP_BPF and CAP_NET_ADMIN, e.g. root)",
            )
        })?;
        let ports = sys::create_port_map()
            .map_err(|e| explain(e, "creating the port map (needs CAP_BPF and CAP_NET_ADMIN)"))?;
        // Never "any address": frames bridged or forwarded through the interface are not ours.
        let addresses = match settings.address {
            Some(a) => vec![a],
            None => interface_addresses(name),
        };
        if addresses.is_empty() {
            return Err(io::Error::other(format!(
                "AF_XDP: {name} has no address to match (or they could not be read): set \
                 SIP_HOST to the address RTP arrives at"
            )));
        }
        let filter = program::Filter {
            port_min: settings.port_min,
            port_max: settings.port_max,
            addresses,
            miss_action: program::XDP_PASS,
            workers: workers as u32,
        };
        let insns = program::generate(&filter, map.as_raw_fd(), ports.as_raw_fd());
        let prog = sys::load_xdp(&insns)
            .map_err(|e| explain(e, "loading the XDP program (kernel ≥ 5.9 with BPF links)"))?;
        let (link, mode) = match sys::attach_xdp(prog.as_raw_fd(), ifindex, sys::XDP_FLAGS_DRV_MODE)
        {
            Ok(link) => (link, "native"),
            Err(native) => {
                let link = sys::attach_xdp(prog.as_raw_fd(), ifindex, sys::XDP_FLAGS_SKB_MODE)
                    .map_err(|e| {
                        explain(
                            e,
                            &format!(
                                "attaching XDP to {name} (native: {native}; another XDP \
                                 program attached?)"
                            ),
                        )
                    })?;
                (link, "generic")
            }
        };
        tracing::info!(
            interface = %name,
            mode,
            ports = %format!("{}..={}", settings.port_min, settings.port_max),
            addresses = ?filter.addresses,
            "XDP program attached"
        );
        Ok(Attached {
            ifindex,
            zerocopy: settings.zerocopy,
            map,
            ports,
            _prog: prog,
            _link: link,
        })
    }

    /// Worker `queue`'s part.
    pub fn worker(&self, queue: u32) -> WorkerXdp {
        WorkerXdp {
            ifindex: self.ifindex,
            queue,
            map_fd: self.map.as_raw_fd(),
            ports_fd: self.ports.as_raw_fd(),
            zerocopy: self.zerocopy,
        }
    }
}

fn explain(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("AF_XDP: {what}: {e}"))
}

fn ifindex(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a NUL-terminated name; the call only reads it.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (index != 0).then_some(index)
}

/// Receive queues of `name` (from sysfs), when it says.
fn rx_queues(name: &str) -> Option<usize> {
    let dir = std::fs::read_dir(format!("/sys/class/net/{name}/queues")).ok()?;
    let n = dir
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
        .count();
    (n > 0).then_some(n)
}

/// The IPv4 and IPv6 addresses of interface `name`.
fn interface_addresses(name: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list we free below with freeifaddrs; we
    // read each entry's name and address only while the list is alive, and only as the
    // sockaddr type its family says.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return out;
        }
        let mut at = list;
        while !at.is_null() {
            let entry = &*at;
            at = entry.ifa_next;
            if entry.ifa_addr.is_null() || entry.ifa_name.is_null() {
                continue;
            }
            if std::ffi::CStr::from_ptr(entry.ifa_name).to_bytes() != name.as_bytes() {
                continue;
            }
            match i32::from((*entry.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*(entry.ifa_addr as *const libc::sockaddr_in);
                    out.push(IpAddr::from(
                        u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                    ));
                }
                libc::AF_INET6 => {
                    let sin6 = &*(entry.ifa_addr as *const libc::sockaddr_in6);
                    out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                }
                _ => {}
            }
        }
        libc::freeifaddrs(list);
    }
    out
}
