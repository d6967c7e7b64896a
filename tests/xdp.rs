//! AF_XDP building blocks on a real interface (issue 12): a veth pair whose far end lives in a
//! network namespace this test makes, the generated XDP program attached to the near end, and
//! an AF_XDP socket on its queue 0. RTP to the port range reaches the socket, checksummed and
//! parsed; SIP, RTCP and ping still reach the kernel; closing the link detaches the program.
//! Needs root (CI runs as root); skipped with a message otherwise.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use siprec::dataplane::xdp::{packet, program, sys, xsk::Xsk};

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

/// A veth pair: `near` in this namespace, `far` in namespace `ns`, addressed in
/// 10.`net`.x.0/24; removed on drop.
struct Pair {
    ns: String,
    near: String,
    far: String,
    near_ip: Ipv4Addr,
    far_ip: Ipv4Addr,
}

impl Pair {
    /// Names start with `tag` and carry our pid, so parallel runs never meet.
    fn new(tag: &str, net: u8) -> Pair {
        let pid = std::process::id();
        let subnet = (1 + pid % 200) as u8;
        let pair = Pair {
            ns: format!("s{tag}{pid}"),
            near: format!("{tag}a{pid}"),
            far: format!("{tag}b{pid}"),
            near_ip: Ipv4Addr::new(10, net, subnet, 1),
            far_ip: Ipv4Addr::new(10, net, subnet, 2),
        };
        let (ns, near, far) = (&pair.ns, &pair.near, &pair.far);
        let (near_cidr, far_cidr) = (
            format!("{}/24", pair.near_ip),
            format!("{}/24", pair.far_ip),
        );
        for args in [
            vec!["netns", "add", ns],
            vec!["link", "add", near, "type", "veth", "peer", "name", far],
            vec!["link", "set", far, "netns", ns],
            vec!["addr", "add", &near_cidr, "dev", near],
            vec!["link", "set", near, "up"],
            vec!["-n", ns, "addr", "add", &far_cidr, "dev", far],
            vec!["-n", ns, "link", "set", far, "up"],
            vec!["-n", ns, "link", "set", "lo", "up"],
        ] {
            assert!(ip(&args), "ip {args:?}");
        }
        pair
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        ip(&["link", "del", &self.near]);
        ip(&["netns", "del", &self.ns]);
    }
}

fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).unwrap();
    // SAFETY: a NUL-terminated name.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

fn mac(name: &str) -> [u8; 6] {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/address")).unwrap();
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

/// Runs `f` on a thread inside network namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on this thread only, with a namespace fd we hold.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap()
}

/// Sends raw Ethernet frames out of interface `ifname` (inside the current namespace).
fn send_raw(ifname: &str, frames: &[Vec<u8>]) {
    // SAFETY: plain syscalls; results checked; sockaddr_ll is plain old data.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex(ifname) as i32;
        addr.sll_halen = 6;
        for frame in frames {
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
            let n = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(
                n,
                frame.len() as isize,
                "{}",
                std::io::Error::last_os_error()
            );
        }
        libc::close(fd);
    }
}

#[test]
fn rtp_reaches_the_af_xdp_socket_and_the_rest_the_kernel() {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: AF_XDP on a veth pair needs root");
        return;
    }
    let pair = Pair::new("x", 77);
    let (ns, near, far) = (pair.ns.clone(), pair.near.clone(), pair.far.clone());
    let (near_ip, far_ip) = (pair.near_ip, pair.far_ip);

    let map = sys::create_xskmap(1).unwrap();
    let filter = program::Filter {
        port_min: 20000,
        port_max: 20999,
        addresses: vec![near_ip.into()],
        miss_action: program::XDP_PASS,
        workers: 1,
    };
    let ports = sys::create_port_map().unwrap();
    for port in [20000, 20002] {
        sys::set_port(ports.as_raw_fd(), port, true).unwrap();
    }
    let insns = program::generate(&filter, map.as_raw_fd(), ports.as_raw_fd());
    let prog = sys::load_xdp(&insns).unwrap();
    let index = ifindex(&near);
    let link = sys::attach_xdp(prog.as_raw_fd(), index, sys::XDP_FLAGS_DRV_MODE)
        .or_else(|_| sys::attach_xdp(prog.as_raw_fd(), index, sys::XDP_FLAGS_SKB_MODE))
        .expect("attach XDP");
    let mut xsk = Xsk::new(index, 0, 64, 2048, false).expect("AF_XDP socket");
    sys::set_xsk(map.as_raw_fd(), 0, xsk.as_raw_fd()).unwrap();
    let sip = UdpSocket::bind((near_ip, 5060)).unwrap();
    sip.set_read_timeout(Some(Duration::from_secs(2))).unwrap();

    // RTP (even port in range) as raw frames with real checksums; one to RTCP's odd port.
    let near_mac = mac(&near);
    let source = SocketAddr::from((far_ip, 40000));
    let frame = |port: u16, seq: u8| {
        let mut f = packet::build(
            source,
            SocketAddr::from((near_ip, port)),
            None,
            &[0x80, 0, 0, seq],
        );
        f[..6].copy_from_slice(&near_mac);
        f
    };
    let frames: Vec<Vec<u8>> = (0..5)
        .map(|i| frame(20000, i))
        .chain([frame(20001, 9)])
        .collect();
    let far_if = far.clone();
    in_netns(&ns, move || send_raw(&far_if, &frames));
    // SIP from the far side's kernel UDP socket.
    in_netns(&ns, move || {
        let s = UdpSocket::bind((far_ip, 0)).unwrap();
        s.send_to(b"OPTIONS sip:x SIP/2.0\r\n\r\n", (near_ip, 5060))
            .unwrap();
    });

    // Real UDP from the far side's kernel (checksums finished in software).
    let off = Command::new("ip")
        .args(["netns", "exec", &ns, "ethtool", "-K", &far, "tx", "off"])
        .output();
    assert!(off.is_ok_and(|o| o.status.success()), "ethtool -K tx off");
    let big: Vec<Vec<u8>> = (0..20u8)
        .map(|i| (0..172).map(|j| i ^ (j as u8)).collect())
        .collect();
    let sent_big = big.clone();
    in_netns(&ns, move || {
        let s = UdpSocket::bind((far_ip, 0)).unwrap();
        for p in &sent_big {
            s.send_to(p, (near_ip, 20002)).unwrap();
        }
    });
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < 25 && Instant::now() < deadline {
        xsk.receive(64, |f| {
            got.push(packet::parse(f).map(|u| (u.destination, f[u.payload].to_vec())))
        });
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(100));
    xsk.receive(64, |f| {
        got.push(packet::parse(f).map(|u| (u.destination, f[u.payload].to_vec())))
    });
    let want: Vec<_> = (0..5u8)
        .map(|i| Ok((SocketAddr::from((near_ip, 20000)), vec![0x80, 0, 0, i])))
        .chain(
            big.iter()
                .map(|p| Ok((SocketAddr::from((near_ip, 20002)), p.clone()))),
        )
        .collect();
    assert_eq!(got, want, "RTP frames at the AF_XDP socket, RTCP not");
    let mut buf = [0u8; 256];
    let (n, from) = sip.recv_from(&mut buf).expect("SIP reaches the kernel");
    assert!(buf[..n].starts_with(b"OPTIONS"), "{from}");
    let ping = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            &near_ip.to_string(),
        ])
        .status();
    match ping {
        Ok(s) => assert!(s.success(), "ping across the pair while XDP is attached"),
        Err(e) => eprintln!("ping not run: {e}"),
    }
    let stats = xsk.statistics().unwrap();
    assert_eq!(stats.rx_dropped + stats.rx_ring_full, 0, "{stats:?}");

    // Closing the link detaches the program.
    assert!(
        attached(None, &near),
        "ip link shows the program while attached"
    );
    drop(link);
    assert!(
        !attached(None, &near),
        "closing the link detaches the program"
    );
}

/// The server in a network namespace with `DATAPLANE_BACKEND=af_xdp` on its veth end records
/// a call from an SRC on the other end sample for sample; garbage from another source to the
/// stream's port costs nothing; on exit the program is gone from the interface.
#[test]
fn a_call_is_recorded_through_af_xdp() {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: AF_XDP on a veth pair needs root");
        return;
    }
    if Command::new("ethtool").arg("--version").output().is_err() {
        panic!("ethtool missing: run ./.ci/deps.sh");
    }
    let pair = Pair::new("y", 78);
    let (ns, near, far) = (pair.ns.clone(), pair.near.clone(), pair.far.clone());
    let (near_ip, far_ip) = (pair.near_ip, pair.far_ip);
    // A local sender's UDP checksums are left to the NIC; a veth leaves them unfinished.
    // Checksums are finished in software so the frames look like a real wire's.
    let off = Command::new("ethtool")
        .args(["-K", &near, "tx", "off"])
        .status();
    assert!(off.is_ok_and(|s| s.success()), "ethtool -K tx off");

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("server.log");
    let server = Command::new("ip")
        .args(["netns", "exec", &ns, env!("CARGO_BIN_EXE_siprec")])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("SIP_HOST", far_ip.to_string())
        .env("HTTP_HOST", far_ip.to_string())
        .env("PORTS", "5060")
        .env("HTTP_PORT", "8080")
        .env("RTP_PORT_MIN", "20000")
        .env("RTP_PORT_MAX", "20099")
        .env("RTP_PORT_COOLDOWN", "0")
        .env("RECORDING_DIR", dir.path().join("recordings"))
        .env("RECORDING_MIN_FREE_MB", "1")
        .env("STT_PROVIDER", "none")
        .env("DATAPLANE_WORKERS", "1")
        .env("DATAPLANE_BACKEND", "af_xdp")
        .env("DATAPLANE_XDP_INTERFACE", &far)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut server = Killed(server);
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let http = |path: &str| -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect((far_ip, 8080)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = http("/health/ready");
        if ready.as_deref().is_some_and(|r| r.contains(" 200 ")) {
            break;
        }
        if let Ok(Some(status)) = server.0.try_wait() {
            panic!("server exited {status}: {}", log_text());
        }
        assert!(
            Instant::now() < deadline,
            "not ready ({ready:?}): {}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let health = http("/health").unwrap();
    assert!(health.contains("af_xdp"), "{health}");
    assert!(attached(Some(&ns), &far), "the program is on the interface");

    // The SRC, on the near end.
    let sock = UdpSocket::bind((near_ip, 5070)).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut src = common::Src {
        sock,
        server: SocketAddr::from((far_ip, 5060)),
        call_id: "af-xdp@10.78.0.1".to_owned(),
        from_tag: "src-tag-1".to_owned(),
        to_tag: None,
        cseq: 0,
    };
    let (ct, body) = common::siprec_body(1, "sendonly", 5072);
    let body = body.replace("127.0.0.1", &near_ip.to_string());
    let ok = src.invite(&ct, &body);
    assert_eq!(ok.status, 200, "{}", log_text());
    src.ack();
    let port = common::answer_ports(&String::from_utf8_lossy(&ok.body))[0];
    let rtp = UdpSocket::bind((near_ip, 5072)).unwrap();
    let stranger = UdpSocket::bind((near_ip, 5074)).unwrap();
    let audio = common::source_audio(70, 16_000);
    let t0 = Instant::now();
    for (k, chunk) in audio.chunks(160).enumerate() {
        let due = t0 + Duration::from_millis(20 * k as u64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let payload: Vec<u8> = chunk
            .iter()
            .map(|&s| siprec::media::g711::linear_to_ulaw(s))
            .collect();
        let mut packet = Vec::new();
        let seq = k as u16 + 1;
        siprec::media::rtp::write_packet(
            0,
            seq,
            160 * u32::from(seq),
            0x5a5a,
            &payload,
            &mut packet,
        );
        rtp.send_to(&packet, (far_ip, port)).unwrap();
        if k % 20 == 10 {
            stranger.send_to(b"not rtp at all", (far_ip, port)).unwrap();
        }
    }
    assert_eq!(src.bye().status, 200);
    let sessions =
        common::wait_sessions(&dir.path().join("recordings"), 1, Duration::from_secs(10));
    let (_, _, leg) = siprec::sink::recorder::read_wav(&sessions[0].join("1.wav")).unwrap();
    let meta = std::fs::read_to_string(sessions[0].join("session.json")).unwrap();
    let sent = common::ulaw_roundtrip(&audio);
    assert!(
        common::find(&leg, &sent).is_some(),
        "every sample through AF_XDP ({} in the file: {:?}); {meta}; log: {}",
        leg.len(),
        common::exact_or_missing(&leg, &sent),
        log_text()
    );
    let metrics = http("/metrics").unwrap();
    assert!(
        metrics.contains("siprec_rtp_packets_received_total"),
        "metrics served"
    );
    // The kernel's AF_XDP drop counters are exported; 50 packets/s never fill the ring.
    assert!(
        metrics.contains("siprec_dataplane_events_total{event=\"xdp_kernel_drop\"} 0"),
        "{metrics}"
    );
    // The RTP went around the kernel's UDP stack: the namespace's UDP counters saw the SIP
    // (a handful of datagrams), not the 100 RTP packets and the garbage.
    let snmp = Command::new("ip")
        .args(["netns", "exec", &ns, "cat", "/proc/net/snmp"])
        .output()
        .unwrap();
    let snmp = String::from_utf8_lossy(&snmp.stdout).into_owned();
    let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
    let column = udp[0]
        .split_whitespace()
        .position(|c| c == "InDatagrams")
        .unwrap();
    let in_datagrams: u64 = udp[1]
        .split_whitespace()
        .nth(column)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        in_datagrams < 50,
        "{in_datagrams} UDP datagrams went through the kernel: {snmp}"
    );

    // SIGTERM (to the server inside `ip netns exec`, which execs it): exit 0, program gone.
    // SAFETY: plain syscall on our child.
    unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = server.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit: {}", log_text());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}: {}", log_text());
    assert!(!attached(Some(&ns), &far), "detached at exit");
}

/// A child process killed when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `ip link` shows an XDP program (native or generic) on `ifname`, in namespace `ns`
/// or in ours.
fn attached(ns: Option<&str>, ifname: &str) -> bool {
    let mut args = vec!["-d", "link", "show", ifname];
    if let Some(ns) = ns {
        args.splice(0..0, ["-n", ns]);
    }
    let out = Command::new("ip").args(&args).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    ["prog/xdp", "xdpgeneric", "xdpdrv", "xdp/id"]
        .iter()
        .any(|marker| text.contains(marker))
}
