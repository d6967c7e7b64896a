//! The bpf(2) calls the AF_XDP backend needs, without libbpf: create the XSKMAP, load the
//! program, attach it to an interface with a BPF link (detached when the link's fd closes,
//! also when the process dies), and run it on a test frame (BPF_PROG_TEST_RUN).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use super::program::Insn;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_LINK_CREATE: libc::c_long = 28;

const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;

/// `XDP_FLAGS_SKB_MODE`: generic XDP, after the driver built an skb (any interface).
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// `XDP_FLAGS_DRV_MODE`: native XDP in the driver (no skb; needs driver support).
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct MapUpdate {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct TestRun {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, initialized #[repr(C)] prefix of `union bpf_attr`; the kernel
    // reads (and for some commands writes) at most size_of::<T>() bytes of it, and any pointers
    // in it point at buffers the caller keeps alive across the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// An XSKMAP of `entries` slots (one per receive queue).
pub fn create_xskmap(entries: u32) -> io::Result<OwnedFd> {
    let mut attr = MapCreate {
        map_type: BPF_MAP_TYPE_XSKMAP,
        key_size: 4,
        value_size: 4,
        max_entries: entries,
        map_flags: 0,
    };
    bpf(BPF_MAP_CREATE, &mut attr).map(owned)
}

/// An array of a u32 per UDP port: nonzero where a stream has the port open.
pub fn create_port_map() -> io::Result<OwnedFd> {
    let mut attr = MapCreate {
        map_type: BPF_MAP_TYPE_ARRAY,
        key_size: 4,
        value_size: 4,
        max_entries: 1 << 16,
        map_flags: 0,
    };
    bpf(BPF_MAP_CREATE, &mut attr).map(owned)
}

/// Marks `port` open (or not) in the port map.
pub fn set_port(map_fd: i32, port: u16, open: bool) -> io::Result<()> {
    update(map_fd, u32::from(port), u32::from(open))
}

/// Puts the AF_XDP socket `xsk_fd` in slot `queue` of the XSKMAP.
pub fn set_xsk(map_fd: i32, queue: u32, xsk_fd: i32) -> io::Result<()> {
    update(map_fd, queue, xsk_fd as u32)
}

/// `map[key] = value` for a map of u32 keys and values.
fn update(map_fd: i32, key: u32, value: u32) -> io::Result<()> {
    let mut attr = MapUpdate {
        map_fd: map_fd as u32,
        key: &key as *const u32 as u64,
        value: &value as *const u32 as u64,
        ..Default::default()
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
}

/// Loads an XDP program; on a verifier refusal the error carries the verifier's log. (The
/// log is only asked for on a retry: a full log buffer fails even a program that verified.)
pub fn load_xdp(insns: &[Insn]) -> io::Result<OwnedFd> {
    load(insns, 0).or_else(|_| load(insns, 1))
}

fn load(insns: &[Insn], log_level: u32) -> io::Result<OwnedFd> {
    let license = c"Apache-2.0";
    let mut log = vec![0u8; if log_level > 0 { 1 << 20 } else { 0 }];
    let mut name = [0u8; 16];
    name[..10].copy_from_slice(b"siprec_rtp");
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level,
        log_size: log.len() as u32,
        log_buf: if log.is_empty() {
            0
        } else {
            log.as_mut_ptr() as u64
        },
        prog_name: name,
        ..Default::default()
    };
    bpf(BPF_PROG_LOAD, &mut attr).map(owned).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        let tail: String = text.lines().rev().take(8).collect::<Vec<_>>().join(" | ");
        io::Error::new(e.kind(), format!("{e}; verifier: {tail}"))
    })
}

/// Attaches `prog_fd` to interface `ifindex` (`flags`: XDP_FLAGS_DRV_MODE or
/// XDP_FLAGS_SKB_MODE). The program stays attached while the returned link fd is open.
pub fn attach_xdp(prog_fd: i32, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    let mut attr = LinkCreate {
        prog_fd: prog_fd as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags,
    };
    bpf(BPF_LINK_CREATE, &mut attr).map(owned)
}

/// Runs the program once on `frame` (as if received on queue 0); its return code.
pub fn test_run(prog_fd: i32, frame: &[u8]) -> io::Result<u32> {
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = TestRun {
        prog_fd: prog_fd as u32,
        data_size_in: frame.len() as u32,
        data_size_out: out.len() as u32,
        data_in: frame.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..Default::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    Ok(attr.retval)
}

#[cfg(test)]
mod tests {
    use super::super::packet::build;
    use super::super::program::{generate, Filter, XDP_PASS, XDP_TX};
    use super::*;
    use std::os::fd::AsRawFd;

    fn addr(s: &str) -> std::net::SocketAddr {
        s.parse().unwrap()
    }

    /// The generated program, verified and run by this machine's kernel on one frame of each
    /// kind. XDP_TX stands for "redirected": no socket is in the map, so the redirect falls
    /// back to the test's miss action.
    #[test]
    fn the_kernel_runs_the_filter_as_intended() {
        let map = match create_xskmap(4) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                eprintln!("skipped: creating BPF maps needs root or CAP_BPF ({e})");
                return;
            }
            Err(e) => panic!("XSKMAP: {e}"),
        };
        // Every even port of the range is open but 20010, which no stream has.
        let ports = create_port_map().unwrap();
        for port in (20000..21000).step_by(2) {
            set_port(ports.as_raw_fd(), port, port != 20010).unwrap();
        }
        let v4: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let v6: std::net::IpAddr = "2001:db8::1".parse().unwrap();
        // One family only: the other's frames all pass.
        for (addresses, want4, want6) in
            [(vec![v4], XDP_TX, XDP_PASS), (vec![v6], XDP_PASS, XDP_TX)]
        {
            let filter = Filter {
                port_min: 20000,
                port_max: 20999,
                addresses,
                miss_action: XDP_TX,
                workers: 1,
            };
            let prog =
                load_xdp(&generate(&filter, map.as_raw_fd(), ports.as_raw_fd())).expect("verifier");
            let rtp = b"\x80\x00\x00\x01";
            let f4 = build(addr("192.0.2.9:4000"), addr("192.0.2.1:20000"), None, rtp);
            let f6 = build(
                addr("[2001:db8::9]:4000"),
                addr("[2001:db8::1]:20000"),
                None,
                rtp,
            );
            let run = |frame: &[u8]| test_run(prog.as_raw_fd(), frame).unwrap();
            assert_eq!((run(&f4), run(&f6)), (want4, want6));
        }
        // Two workers: a port belongs to worker port / 2 % 2; the test runs as queue 0, so
        // only worker 0's ports are taken, worker 1's pass to the kernel.
        let filter = Filter {
            port_min: 20000,
            port_max: 20999,
            addresses: vec![v4],
            miss_action: XDP_TX,
            workers: 2,
        };
        let prog =
            load_xdp(&generate(&filter, map.as_raw_fd(), ports.as_raw_fd())).expect("verifier");
        for (port, want) in [(20000, XDP_TX), (20002, XDP_PASS), (20004, XDP_TX)] {
            let to = std::net::SocketAddr::new(v4, port);
            let frame = build(addr("192.0.2.9:4000"), to, None, b"\x80\x00\x00\x01");
            assert_eq!(
                test_run(prog.as_raw_fd(), &frame).unwrap(),
                want,
                "port {port}"
            );
        }
        for addresses in [vec![], vec![v4, v6]] {
            let filter = Filter {
                port_min: 20000,
                port_max: 20999,
                addresses: addresses.clone(),
                miss_action: XDP_TX,
                workers: 1,
            };
            let prog =
                load_xdp(&generate(&filter, map.as_raw_fd(), ports.as_raw_fd())).expect("verifier");
            let run = |frame: &[u8]| test_run(prog.as_raw_fd(), frame).unwrap();
            let rtp = b"\x80\x00\x00\x01\x00\x00\x00\xa0\x00\x00\x00\x01payload";
            let cases = [
                ("192.0.2.9:4000", "192.0.2.1:20000", None, XDP_TX),
                ("192.0.2.9:4000", "192.0.2.1:20998", Some(7), XDP_TX),
                ("[2001:db8::9]:4000", "[2001:db8::1]:20100", None, XDP_TX),
                ("[2001:db8::9]:4000", "[2001:db8::1]:20100", Some(7), XDP_TX),
                // RTCP (odd), SIP, and ports outside the range go to the kernel.
                ("192.0.2.9:4000", "192.0.2.1:20001", None, XDP_PASS),
                ("192.0.2.9:5060", "192.0.2.1:5060", None, XDP_PASS),
                ("192.0.2.9:4000", "192.0.2.1:19998", None, XDP_PASS),
                ("192.0.2.9:4000", "192.0.2.1:21000", None, XDP_PASS),
                ("[2001:db8::9]:4000", "[2001:db8::1]:21000", None, XDP_PASS),
                // A port in the range that no stream has open.
                ("192.0.2.9:4000", "192.0.2.1:20010", None, XDP_PASS),
            ];
            for (src, dst, vlan, want) in cases {
                let frame = build(addr(src), addr(dst), vlan, rtp);
                assert_eq!(run(&frame), want, "{src} -> {dst} vlan {vlan:?}");
            }
            // To an address that is not ours: only when addresses are configured.
            let other = build(addr("192.0.2.9:4000"), addr("192.0.2.99:20000"), None, rtp);
            let other6 = build(addr("[::9]:4000"), addr("[2001:db8::2]:20000"), None, rtp);
            let want = if addresses.is_empty() {
                XDP_TX
            } else {
                XDP_PASS
            };
            assert_eq!((run(&other), run(&other6)), (want, want));
            // Fragments, IPv4 options, TCP, ARP and runts pass.
            let frame = build(addr("192.0.2.9:4000"), addr("192.0.2.1:20000"), None, rtp);
            let mut fragment = frame.clone();
            fragment[20] |= 0x20;
            let mut options = frame.clone();
            options[14] = 0x46;
            let mut tcp = frame.clone();
            tcp[23] = 6;
            let mut arp = frame.clone();
            arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
            for bad in [&fragment, &options, &tcp, &arp, &frame[..14].to_vec()] {
                assert_eq!(run(bad), XDP_PASS);
            }
        }
    }
}
