//! The XDP program, generated as eBPF instructions for the configured port range and
//! addresses: no C compiler, no object file, nothing built at build time.
//!
//! It takes Ethernet II frames (at most one VLAN tag) carrying UDP over IPv4 (no options, not
//! a fragment) or IPv6 (no extension headers) to one of our addresses and to an even port in
//! `RTP_PORT_MIN..=RTP_PORT_MAX` (an RTP port: RTCP's odd ports stay with the kernel), and
//! redirects them to the AF_XDP socket of the receive queue they came in on. Everything else
//! (SIP, ARP, ICMP, fragments, RTCP, other traffic) is passed to the kernel untouched, and so
//! is a frame whose queue has no socket (the redirect's fallback action).

use std::net::IpAddr;

/// XDP return codes (`enum xdp_action`).
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// `bpf_map_lookup_elem` and `bpf_redirect_map` (`enum bpf_func_id`).
const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
const HELPER_REDIRECT_MAP: i32 = 51;

/// One eBPF instruction as the kernel reads it (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

/// What the program matches.
#[derive(Debug, Clone)]
pub struct Filter {
    pub port_min: u16,
    pub port_max: u16,
    /// Destination addresses that are ours; empty: any.
    pub addresses: Vec<IpAddr>,
    /// Returned when the queue has no socket in the map. XDP_PASS in service (the kernel
    /// gets the frame); tests use XDP_TX to see what would have been redirected.
    pub miss_action: u32,
    /// Receive workers: a stream's port belongs to worker `port / 2 % workers`, whose socket
    /// is bound to the queue of the same number. A frame that arrived on another queue goes
    /// to the kernel, where the owner reads it from the stream's UDP socket: slower, never
    /// lost.
    pub workers: u32,
}

// Registers.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;
const R6: u8 = 6;
const R7: u8 = 7;
const R10: u8 = 10;

/// A jump target, resolved when the program is finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Label(usize);

/// A tiny assembler: instructions, labels and the jumps waiting for them.
#[derive(Default)]
struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label)>,
}

impl Asm {
    fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    fn bind(&mut self, label: Label) {
        self.labels[label.0] = Some(self.insns.len());
    }

    fn emit(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.insns.push(Insn {
            code,
            regs: src << 4 | dst,
            off,
            imm,
        });
    }

    fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, to: Label) {
        self.fixups.push((self.insns.len(), to));
        self.emit(code, dst, src, 0, imm);
    }

    fn mov_imm(&mut self, dst: u8, imm: i32) {
        self.emit(0xb7, dst, 0, 0, imm);
    }
    fn mov_reg(&mut self, dst: u8, src: u8) {
        self.emit(0xbf, dst, src, 0, 0);
    }
    fn add_imm(&mut self, dst: u8, imm: i32) {
        self.emit(0x07, dst, 0, 0, imm);
    }
    fn and_imm(&mut self, dst: u8, imm: i32) {
        self.emit(0x57, dst, 0, 0, imm);
    }
    /// Big-endian bytes loaded little-endian, put back in host order (BPF_END, BPF_TO_BE).
    fn be16(&mut self, dst: u8) {
        self.emit(0xdc, dst, 0, 0, 16);
    }
    fn load_u8(&mut self, dst: u8, src: u8, off: i16) {
        self.emit(0x71, dst, src, off, 0);
    }
    fn load_u16(&mut self, dst: u8, src: u8, off: i16) {
        self.emit(0x69, dst, src, off, 0);
    }
    fn load_u32(&mut self, dst: u8, src: u8, off: i16) {
        self.emit(0x61, dst, src, off, 0);
    }
    fn jeq_imm(&mut self, dst: u8, imm: i32, to: Label) {
        self.jump(0x15, dst, 0, imm, to);
    }
    fn jne_imm(&mut self, dst: u8, imm: i32, to: Label) {
        self.jump(0x55, dst, 0, imm, to);
    }
    /// 32-bit compares (BPF_JMP32): an address word compares exactly, sign bit or not.
    fn jeq32_imm(&mut self, dst: u8, imm: u32, to: Label) {
        self.jump(0x16, dst, 0, imm as i32, to);
    }
    fn jne32_imm(&mut self, dst: u8, imm: u32, to: Label) {
        self.jump(0x56, dst, 0, imm as i32, to);
    }
    fn jlt_imm(&mut self, dst: u8, imm: i32, to: Label) {
        self.jump(0xa5, dst, 0, imm, to);
    }
    fn jgt_imm(&mut self, dst: u8, imm: i32, to: Label) {
        self.jump(0x25, dst, 0, imm, to);
    }
    fn jgt_reg(&mut self, dst: u8, src: u8, to: Label) {
        self.jump(0x2d, dst, src, 0, to);
    }
    fn ja(&mut self, to: Label) {
        self.jump(0x05, 0, 0, 0, to);
    }
    /// `dst = map fd` (BPF_LD | BPF_DW | BPF_IMM with BPF_PSEUDO_MAP_FD): two slots.
    fn load_map_fd(&mut self, dst: u8, fd: i32) {
        self.emit(0x18, dst, 1, 0, fd);
        self.emit(0, 0, 0, 0, 0);
    }
    fn call(&mut self, helper: i32) {
        self.emit(0x85, 0, 0, 0, helper);
    }
    fn exit(&mut self) {
        self.emit(0x95, 0, 0, 0, 0);
    }

    /// `r2 + end` within the packet (r3 = data_end), else `fail`: what lets the verifier
    /// accept loads below `end`.
    fn need(&mut self, end: i32, fail: Label) {
        self.mov_reg(R4, R2);
        self.add_imm(R4, end);
        self.jgt_reg(R4, R3, fail);
    }

    fn finish(mut self) -> Vec<Insn> {
        for (at, label) in std::mem::take(&mut self.fixups) {
            let target = self.labels[label.0].expect("every label is bound");
            self.insns[at].off = (target as i64 - at as i64 - 1) as i16;
        }
        self.insns
    }
}

/// Two big-endian bytes as `ldx_h` reads them on this (little-endian) machine.
fn wire16(value: u16) -> i32 {
    i32::from(u16::from_ne_bytes(value.to_be_bytes()))
}

/// Four wire bytes as `ldx_w` reads them.
fn wire32(bytes: [u8; 4]) -> u32 {
    u32::from_ne_bytes(bytes)
}

/// The program for `filter`, redirecting into the XSKMAP `map_fd` the frames whose port is
/// marked open in the array map `ports_fd` (a u32 per port; the workers mark their streams'
/// ports). A port no stream has open passes to the kernel: a socket of another program, or
/// of the process a takeover replaced, bound in the range keeps its traffic.
pub fn generate(filter: &Filter, map_fd: i32, ports_fd: i32) -> Vec<Insn> {
    let mut a = Asm::default();
    let pass = a.label();
    let redirect = a.label();
    let vlan = a.label();
    let (v4, v6) = ([a.label(), a.label()], [a.label(), a.label()]);

    a.mov_reg(R6, R1);
    a.load_u32(R2, R6, 0); // data
    a.load_u32(R3, R6, 4); // data_end
    a.need(14, pass);
    a.load_u16(R5, R2, 12);
    a.jeq_imm(R5, wire16(0x0800), v4[0]);
    a.jeq_imm(R5, wire16(0x86dd), v6[0]);
    a.jeq_imm(R5, wire16(0x8100), vlan);
    a.jeq_imm(R5, wire16(0x88a8), vlan);
    a.ja(pass);

    a.bind(vlan);
    a.need(18, pass);
    a.load_u16(R5, R2, 16);
    a.jeq_imm(R5, wire16(0x0800), v4[1]);
    a.jeq_imm(R5, wire16(0x86dd), v6[1]);
    a.ja(pass);

    let v4_addrs: Vec<[u8; 4]> = filter
        .addresses
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V4(v4) => Some(v4.octets()),
            IpAddr::V6(_) => None,
        })
        .collect();
    let v6_addrs: Vec<[u8; 16]> = filter
        .addresses
        .iter()
        .filter_map(|ip| match ip {
            IpAddr::V6(v6) => Some(v6.octets()),
            IpAddr::V4(_) => None,
        })
        .collect();
    let any = filter.addresses.is_empty();

    for (i, l3) in [14i16, 18].into_iter().enumerate() {
        // IPv4: version 4 with a 20-byte header, UDP, not a fragment, to one of ours. (With
        // addresses of the other family only, none is ours; code that no jump reaches is
        // refused by the verifier, so there is none.)
        a.bind(v4[i]);
        if !any && v4_addrs.is_empty() {
            a.ja(pass);
        } else {
            a.need(i32::from(l3) + 28, pass);
            a.load_u8(R5, R2, l3);
            a.jne_imm(R5, 0x45, pass);
            a.load_u8(R5, R2, l3 + 9);
            a.jne_imm(R5, 17, pass);
            a.load_u16(R5, R2, l3 + 6);
            a.and_imm(R5, wire16(0x3fff));
            a.jne_imm(R5, 0, pass);
            let port = a.label();
            if !any {
                a.load_u32(R5, R2, l3 + 16);
                for addr in &v4_addrs {
                    a.jeq32_imm(R5, wire32(*addr), port);
                }
                a.ja(pass);
            }
            a.bind(port);
            a.load_u16(R5, R2, l3 + 22);
            port_check(&mut a, filter, pass, redirect);
        }

        // IPv6: UDP as the next header (no extension headers), to one of ours.
        a.bind(v6[i]);
        if !any && v6_addrs.is_empty() {
            a.ja(pass);
            continue;
        }
        a.need(i32::from(l3) + 48, pass);
        a.load_u8(R5, R2, l3);
        a.and_imm(R5, 0xf0);
        a.jne_imm(R5, 0x60, pass);
        a.load_u8(R5, R2, l3 + 6);
        a.jne_imm(R5, 17, pass);
        let port = a.label();
        if !any {
            for addr in &v6_addrs {
                let next = a.label();
                for (w, word) in addr.chunks_exact(4).enumerate() {
                    let word = wire32(word.try_into().expect("4 bytes"));
                    a.load_u32(R5, R2, l3 + 24 + 4 * w as i16);
                    a.jne32_imm(R5, word, next);
                }
                a.ja(port);
                a.bind(next);
            }
            a.ja(pass);
        }
        a.bind(port);
        a.load_u16(R5, R2, l3 + 42);
        port_check(&mut a, filter, pass, redirect);
    }

    // Only a port a stream has open: r7 = port, looked up in the port map.
    a.bind(redirect);
    a.emit(0x63, R10, R7, -4, 0); // *(u32 *)(r10 - 4) = r7
    a.mov_reg(R2, R10);
    a.add_imm(R2, -4);
    a.load_map_fd(R1, ports_fd);
    a.call(HELPER_MAP_LOOKUP_ELEM);
    a.jeq_imm(R0, 0, pass);
    a.load_u32(R0, R0, 0);
    a.jeq_imm(R0, 0, pass);
    // To the socket of this receive queue; without one, `miss_action`.
    a.load_u32(R2, R6, 16); // rx_queue_index
    a.load_map_fd(R1, map_fd);
    a.mov_imm(R3, filter.miss_action as i32);
    a.call(HELPER_REDIRECT_MAP);
    a.exit();

    a.bind(pass);
    a.mov_imm(R0, XDP_PASS as i32);
    a.exit();
    a.finish()
}

/// r5 holds the destination port as loaded: in range, even, and owned by the worker of the
/// queue the frame came in on, or `pass`.
fn port_check(a: &mut Asm, filter: &Filter, pass: Label, redirect: Label) {
    a.be16(R5);
    a.jlt_imm(R5, i32::from(filter.port_min), pass);
    a.jgt_imm(R5, i32::from(filter.port_max), pass);
    a.mov_reg(R4, R5);
    a.and_imm(R4, 1);
    a.jne_imm(R4, 0, pass);
    a.mov_reg(R4, R5);
    a.emit(0x77, R4, 0, 0, 1); // r4 >>= 1
    a.emit(0x97, R4, 0, 0, filter.workers.max(1) as i32); // r4 %= workers
    a.mov_reg(R7, R5);
    a.load_u32(R5, R6, 16); // rx_queue_index
    a.jump(0x5d, R4, R5, 0, pass); // r4 != r5
    a.ja(redirect);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_land_on_their_labels() {
        let filter = Filter {
            port_min: 20000,
            port_max: 20999,
            addresses: vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
            miss_action: XDP_PASS,
            workers: 1,
        };
        let insns = generate(&filter, 7, 8);
        // Every jump stays inside the program; the last instruction exits.
        for (i, insn) in insns.iter().enumerate() {
            let class = insn.code & 0x07;
            let op = insn.code & 0xf0;
            if (class == 0x05 || class == 0x06) && op != 0x80 && op != 0x90 {
                let target = i as i64 + 1 + i64::from(insn.off);
                assert!((0..insns.len() as i64).contains(&target), "jump at {i}");
            }
        }
        assert_eq!(insns.last().unwrap().code, 0x95);
        // The map fds are in the two 64-bit loads: the port map's, then the socket map's.
        let loads: Vec<_> = insns.iter().filter(|i| i.code == 0x18).collect();
        assert_eq!(loads.len(), 2);
        assert_eq!((loads[0].imm, loads[0].regs >> 4), (8, 1));
        assert_eq!((loads[1].imm, loads[1].regs >> 4), (7, 1));
    }
}
