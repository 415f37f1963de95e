//! Frames to fuzz with: valid headers with fields drawn from pools that hit the configuration
//! (VIPs, the host, denied / allowed / logged / bogon prefixes, backends, random addresses),
//! packets of flows the program already knows (established flows, NAT replies), and mutations
//! (truncation at every layer, IPv4 options and lying IHL / lengths, fragments, VLAN tags,
//! EtherTypes, random byte flips).
use lb_common::model::{Addr, FlowKey};

use super::{
    check::Tracker,
    scenario::{self, v4, v6, LB_MAC, NAT_PORTS},
};

/// The shortest frame BPF_PROG_TEST_RUN accepts (ETH_HLEN).
pub const MIN_FRAME: usize = 14;

/// splitmix64: small, fast, reproducible from a seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
}

/// Sources and destinations that mean something to the configuration.
const POOL4: [Addr; 22] = [
    v4(10, 5, 0, 1),     // a client inside the db service's allowed /16
    v4(10, 5, 9, 9),     // inside its denied /24
    v4(10, 6, 0, 1),     // outside it
    v4(10, 9, 1, 1),     // the SSH admin prefix
    v4(192, 0, 2, 1),    // bad-net (drop)
    v4(192, 0, 2, 7),    // partner (allow inside bad-net)
    v4(198, 51, 100, 3), // trial (log)
    v4(240, 1, 2, 3),    // bogon
    v4(0, 1, 2, 3),      // bogon
    v4(203, 0, 113, 9),  // unlisted
    scenario::VIP4,
    scenario::DB_VIP,
    v4(10, 0, 0, 2), // the host
    scenario::SNAT4,
    v4(10, 0, 0, 11), // backends
    v4(10, 0, 0, 12),
    v4(10, 0, 0, 13),
    v4(10, 0, 0, 21),
    v4(10, 0, 0, 22),
    v4(10, 0, 0, 31),
    v4(10, 0, 0, 77), // another host on the segment
    v4(255, 255, 255, 255),
];

const POOL6: [Addr; 14] = [
    v6([0xfd00, 0, 0, 0, 0, 0, 0, 0x10]),
    v6([0xfd09, 0, 0, 0, 0, 0, 0, 1]), // the SSH admin prefix
    v6([0x2001, 0xdb8, 0xbad, 0xffff, 0, 0, 0, 1]), // bad-net
    v6([0x2001, 0xdb8, 0xbad, 1, 0, 0, 0, 9]), // partner
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 5]),
    scenario::VIP6,
    v6([0xfd00, 0, 0, 0, 0, 0, 0, 2]), // the host
    scenario::SNAT6,
    v6([0xfd00, 0, 0, 0, 0, 0, 0, 0x11]),
    v6([0xfd00, 0, 0, 0, 0, 0, 0, 0x12]),
    v6([0xfd00, 0, 0, 0, 0, 0, 0, 0x21]),
    v6([0xfd00, 0, 0, 0, 0, 0, 0, 0x22]),
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 1]),
    v6([0xff02, 0, 0, 0, 0, 0, 0, 1]),
];

/// Sources whose leading bytes equal a prefix of the other family in an open host port's
/// source rules (port 22: 10.9.0.0/16 and fd09::/32): a09:101:: starts with 10.9.1.1's bytes,
/// 253.9.0.1 with fd09::/32's (a bogon, so dropped before). They expose the cross-family
/// matching of SERVICE_SOURCES (see the ignored regression test), so they are drawn only when
/// asked for.
const CROSS_FAMILY4: [Addr; 1] = [v4(253, 9, 0, 1)];
const CROSS_FAMILY6: [Addr; 2] = [
    v6([0x0a09, 0x0101, 0, 0, 0, 0, 0, 0]),
    v6([0x0a05, 0x0001, 0, 0, 0, 0, 0, 0]),
];

const PORTS: [u16; 16] = [
    80, 53, 3306, 8080, 443, 8443, 5353, 22, 9876, 68, 23, 40000, 1000, 0, 65535, 32768,
];
const PROTOS: [u8; 6] = [6, 6, 17, 17, 1, 58];
const FLAGS: [u8; 12] = [
    0x02, 0x10, 0x12, 0x11, 0x04, 0x18, 0x00, 0x03, 0x06, 0x29, 0x14, 0x01,
];
const CLIENT_MACS: [[u8; 6]; 3] = [
    [0x02, 0, 0, 0, 0, 0x10],
    [0x02, 0, 0, 0, 0, 0x20],
    [0x0a, 0xbb, 0xcc, 0xdd, 0xee, 0xff],
];

/// A frame before serialisation: every field the generator varies.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Mostly the load balancer's; now and then another host's, a group's or a random one.
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// TPID and tag.
    pub vlan: Option<(u16, u16)>,
    pub src: Addr,
    pub dst: Addr,
    pub proto: u8,
    pub ipv4_options: Vec<u8>,
    /// Flags and fragment offset field of IPv4.
    pub frags: u16,
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub udp_zero_checksum: bool,
    pub payload: Vec<u8>,
    /// Bytes after the IP packet (Ethernet padding).
    pub trailer: Vec<u8>,
}

pub struct Generator {
    pub cross_family: bool,
}

impl Generator {
    /// The next frame: fresh, of a known flow, or a reply to a NAT flow, then maybe mutated.
    pub fn frame(&self, rng: &mut Rng, tracker: &Tracker) -> Vec<u8> {
        let spec = match rng.below(10) {
            0..=1 if !tracker.client_flows.is_empty() => {
                let key = tracker.client_flows[rng.below(tracker.client_flows.len())];
                self.known_flow(rng, key)
            }
            2 if !tracker.reply_keys.is_empty() => {
                let key = tracker.reply_keys[rng.below(tracker.reply_keys.len())];
                self.known_flow(rng, key)
            }
            _ => self.fresh(rng),
        };
        let mut frame = build(&spec);
        if rng.chance(30) {
            mutate(rng, &mut frame, &spec);
        }
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header.
        if frame.len() < MIN_FRAME {
            frame.resize(MIN_FRAME, 0);
        }
        frame
    }

    fn address(&self, rng: &mut Rng, v6: bool) -> Addr {
        match (v6, rng.below(10)) {
            (false, 0) if self.cross_family => rng.pick(&CROSS_FAMILY4),
            (true, 0) if self.cross_family => rng.pick(&CROSS_FAMILY6),
            (false, 1) => v4(rng.byte(), rng.byte(), rng.byte(), rng.byte()),
            (true, 1) => {
                let mut bytes = [0u8; 16];
                bytes.iter_mut().for_each(|b| *b = rng.byte());
                Addr::v6(bytes)
            }
            (false, _) => rng.pick(&POOL4),
            (true, _) => rng.pick(&POOL6),
        }
    }

    fn port(&self, rng: &mut Rng) -> u16 {
        match rng.below(8) {
            0 => rng.next_u64() as u16,
            1 => NAT_PORTS.0 + rng.below((NAT_PORTS.1 - NAT_PORTS.0 + 1) as usize) as u16,
            2 => scenario::EPHEMERAL.0 + rng.below(1000) as u16,
            _ => rng.pick(&PORTS),
        }
    }

    fn fresh(&self, rng: &mut Rng) -> Spec {
        let is_v6 = rng.chance(35);
        let proto = if rng.chance(5) {
            rng.byte()
        } else {
            rng.pick(&PROTOS)
        };
        let mut spec = Spec {
            dst_mac: LB_MAC,
            src_mac: rng.pick(&CLIENT_MACS),
            vlan: None,
            src: self.address(rng, is_v6),
            dst: self.address(rng, is_v6),
            proto,
            ipv4_options: Vec::new(),
            frags: 0x4000,
            src_port: self.port(rng),
            dst_port: self.port(rng),
            tcp_flags: if rng.chance(20) {
                rng.byte()
            } else {
                rng.pick(&FLAGS)
            },
            icmp_type: rng.pick(&[0, 3, 8, 11, 128, 129, 135, 136]),
            udp_zero_checksum: rng.chance(20),
            payload: Vec::new(),
            trailer: Vec::new(),
        };
        // A third of them aimed at a service (its VIP, port and protocol).
        if rng.chance(33) {
            let services = scenario::MODEL.services;
            let service = services[rng.below(services.len())];
            spec.src = self.address(rng, service.vip.v6);
            (spec.dst, spec.dst_port, spec.proto) = (service.vip, service.port, service.proto);
        }
        // Asked for the known bug: now and then straight at the source-restricted SSH port.
        if self.cross_family && rng.chance(1) {
            (spec.src, spec.dst, spec.dst_port, spec.proto) = (
                rng.pick(&CROSS_FAMILY6),
                v6([0xfd00, 0, 0, 0, 0, 0, 0, 2]),
                22,
                6,
            );
        }
        self.decorate(rng, spec)
    }

    /// Another packet of a flow in `key`'s direction.
    fn known_flow(&self, rng: &mut Rng, key: FlowKey) -> Spec {
        let spec = Spec {
            dst_mac: LB_MAC,
            src_mac: rng.pick(&CLIENT_MACS),
            vlan: None,
            src: key.src,
            dst: key.dst,
            proto: key.proto,
            ipv4_options: Vec::new(),
            frags: 0x4000,
            src_port: key.src_port,
            dst_port: key.dst_port,
            tcp_flags: if rng.chance(80) {
                rng.pick(&[0x10, 0x18, 0x10, 0x18, 0x11, 0x14, 0x04, 0x02])
            } else {
                rng.pick(&FLAGS)
            },
            icmp_type: 0,
            udp_zero_checksum: rng.chance(20),
            payload: Vec::new(),
            trailer: Vec::new(),
        };
        self.decorate(rng, spec)
    }

    /// Payload, padding, tags, options and fragments, each now and then.
    fn decorate(&self, rng: &mut Rng, mut spec: Spec) -> Spec {
        if rng.chance(4) {
            let mut random: [u8; 6] = rng.bytes(6).try_into().unwrap_or(LB_MAC);
            random[0] &= 0xFE;
            spec.dst_mac = rng.pick(&[
                [0x02, 0, 0, 0, 0, 0x10],
                [0x02, 0, 0, 0, 0, 0x02],
                [0xff; 6],
                [0x01, 0x00, 0x5e, 0, 0, 1],
                random,
            ]);
        }
        let payload_len = rng.pick(&[0, 0, 1, 7, 20, 64, 300]);
        spec.payload = rng.bytes(payload_len);
        if rng.chance(10) {
            let n = 1 + rng.below(30);
            spec.trailer = rng.bytes(n);
        }
        if rng.chance(15) {
            spec.vlan = Some((rng.pick(&[0x8100, 0x88A8]), rng.next_u64() as u16));
        }
        if !spec.src.v6 && rng.chance(15) {
            let words = 1 + rng.below(10);
            spec.ipv4_options = if rng.chance(50) {
                vec![1; 4 * words]
            } else {
                rng.bytes(4 * words)
            };
        }
        if !spec.src.v6 && rng.chance(8) {
            let random = rng.next_u64() as u16;
            spec.frags = rng.pick(&[0x2000, 0x00B9, 0x20B9, 0x8000, 0x4001, 0x0000, random]);
        }
        spec
    }
}

/// Serialises `spec`. Checksums are left random: the checks compare how the program changes
/// them, not their values.
pub fn build(spec: &Spec) -> Vec<u8> {
    let mut l4 = match spec.proto {
        6 => {
            let mut h = Vec::with_capacity(20);
            h.extend(spec.src_port.to_be_bytes());
            h.extend(spec.dst_port.to_be_bytes());
            h.extend([
                0,
                0,
                0x03,
                0xE8,
                0,
                0,
                0,
                0,
                0x50,
                spec.tcp_flags,
                0xFA,
                0xF0,
            ]);
            h.extend(spec_checksum(spec));
            h.extend([0, 0]);
            h
        }
        17 => {
            let mut h = Vec::with_capacity(8);
            h.extend(spec.src_port.to_be_bytes());
            h.extend(spec.dst_port.to_be_bytes());
            h.extend(((8 + spec.payload.len()) as u16).to_be_bytes());
            h.extend(if spec.udp_zero_checksum {
                [0, 0]
            } else {
                spec_checksum(spec)
            });
            h
        }
        1 | 58 => vec![spec.icmp_type, 0, 0x5A, 0xA5, 0x12, 0x34, 0, 1],
        _ => Vec::new(),
    };
    l4.extend(&spec.payload);

    let mut frame = Vec::with_capacity(64 + l4.len());
    frame.extend(spec.dst_mac);
    frame.extend(spec.src_mac);
    if let Some((tpid, tag)) = spec.vlan {
        frame.extend(tpid.to_be_bytes());
        frame.extend(tag.to_be_bytes());
    }
    if spec.src.v6 {
        frame.extend([0x86, 0xDD, 0x60, 0, 0, 0]);
        frame.extend((l4.len() as u16).to_be_bytes());
        frame.push(spec.proto);
        frame.push(64);
        frame.extend(spec.src.bytes);
        frame.extend(spec.dst.bytes);
    } else {
        frame.extend([0x08, 0x00]);
        let header_len = 20 + spec.ipv4_options.len();
        frame.push(0x40 | (header_len / 4) as u8);
        frame.push(0);
        frame.extend(((header_len + l4.len()) as u16).to_be_bytes());
        frame.extend([0x12, 0x34]);
        frame.extend(spec.frags.to_be_bytes());
        frame.extend([64, spec.proto, 0xC3, 0x3C]);
        frame.extend(&spec.src.bytes[..4]);
        frame.extend(&spec.dst.bytes[..4]);
        frame.extend(&spec.ipv4_options);
    }
    frame.extend(l4);
    frame.extend(&spec.trailer);
    frame
}

/// Some checksum-looking value that depends on the fields.
fn spec_checksum(spec: &Spec) -> [u8; 2] {
    let x = spec
        .src
        .bytes
        .iter()
        .chain(&spec.dst.bytes)
        .fold(spec.src_port ^ spec.dst_port.rotate_left(3), |a, &b| {
            a.rotate_left(5) ^ b as u16
        });
    x.to_be_bytes()
}

/// One mutation: truncation (often at a header boundary), a lying IHL / length, a byte flip,
/// a changed EtherType or version, random bytes.
fn mutate(rng: &mut Rng, frame: &mut Vec<u8>, spec: &Spec) {
    let l3 = 14 + if spec.vlan.is_some() { 4 } else { 0 };
    let l4 = l3
        + if spec.src.v6 {
            40
        } else {
            20 + spec.ipv4_options.len()
        };
    match rng.below(9) {
        0 => {
            // Around a header boundary.
            let at = rng.pick(&[
                12usize,
                14,
                16,
                18,
                l3,
                l3 + 10,
                l3 + 20,
                l4,
                l4 + 4,
                l4 + 8,
                l4 + 13,
                l4 + 20,
            ]);
            let at = (at + rng.below(3)).saturating_sub(1);
            frame.truncate(at);
        }
        1 => {
            let len = rng.below(frame.len() + 1);
            frame.truncate(len);
        }
        2 if !spec.src.v6 && frame.len() > l3 => frame[l3] = 0x40 | rng.below(16) as u8,
        3 if frame.len() > l3 + 3 => {
            let at = if spec.src.v6 { l3 + 4 } else { l3 + 2 };
            let value = match rng.below(3) {
                0 => (frame.len() - l3) as u16 + rng.below(5) as u16,
                1 => rng.below(60) as u16,
                _ => rng.next_u64() as u16,
            };
            frame[at..at + 2].copy_from_slice(&value.to_be_bytes());
        }
        4 if frame.len() > l3 => frame[l3] = (rng.below(16) as u8) << 4 | (frame[l3] & 0x0F),
        5 if frame.len() >= 14 => {
            let at = l3 - 2;
            if frame.len() >= at + 2 {
                let random = rng.next_u64() as u16;
                let ether_type = rng.pick(&[0x0800u16, 0x86DD, 0x8100, 0x88A8, 0x0806, random]);
                frame[at..at + 2].copy_from_slice(&ether_type.to_be_bytes());
            }
        }
        6 => {
            // Bytes deleted or inserted in the middle.
            let at = rng.below(frame.len() + 1);
            if rng.chance(50) {
                let end = (at + 1 + rng.below(8)).min(frame.len());
                frame.drain(at..end);
            } else {
                let n = 1 + rng.below(8);
                let bytes = rng.bytes(n);
                frame.splice(at..at, bytes);
            }
        }
        _ => {
            for _ in 0..1 + rng.below(4) {
                if !frame.is_empty() {
                    let at = rng.below(frame.len());
                    frame[at] ^= 1 << rng.below(8);
                }
            }
        }
    }
}
