//! Frames for tests, built field by field with every checksum computed from scratch here, so a
//! test that compares the program's output with a frame built by this module checks every
//! rewritten byte, checksums included.
use std::net::IpAddr;

pub type Mac = [u8; 6];

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        src_port: u16,
        dst_port: u16,
        seq: u32,
        ack: u32,
        flags: u8,
    },
    /// `checksum: false` sends an IPv4 UDP datagram without checksum (field 0).
    Udp {
        src_port: u16,
        dst_port: u16,
        checksum: bool,
    },
    /// ICMP (IPv4) or ICMPv6 (IPv6) with this type, code 0, an echo-style body.
    Icmp { icmp_type: u8 },
}

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

#[derive(Clone, Debug)]
pub struct Frame {
    pub dst_mac: Mac,
    pub src_mac: Mac,
    pub vlan: Option<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// Raw IPv4 options (a multiple of 4 bytes).
    pub ipv4_options: Vec<u8>,
    pub l4: L4,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn tcp(src: (IpAddr, u16), dst: (IpAddr, u16)) -> Self {
        Self::new(
            src.0,
            dst.0,
            L4::Tcp {
                src_port: src.1,
                dst_port: dst.1,
                seq: 1000,
                ack: 0,
                flags: TCP_SYN,
            },
        )
    }

    pub fn icmp(src: IpAddr, dst: IpAddr, icmp_type: u8) -> Self {
        Self::new(src, dst, L4::Icmp { icmp_type })
    }

    pub fn udp(src: (IpAddr, u16), dst: (IpAddr, u16)) -> Self {
        Self::new(
            src.0,
            dst.0,
            L4::Udp {
                src_port: src.1,
                dst_port: dst.1,
                checksum: true,
            },
        )
    }

    fn new(src: IpAddr, dst: IpAddr, l4: L4) -> Self {
        Frame {
            dst_mac: [0x02, 0, 0, 0, 0, 0x01],
            src_mac: [0x02, 0, 0, 0, 0, 0x10],
            vlan: None,
            src,
            dst,
            ipv4_options: Vec::new(),
            l4,
            payload: b"hello, load balancer".to_vec(),
        }
    }

    pub fn macs(mut self, src: Mac, dst: Mac) -> Self {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    pub fn ports(&self) -> (u16, u16) {
        match self.l4 {
            L4::Tcp {
                src_port, dst_port, ..
            }
            | L4::Udp {
                src_port, dst_port, ..
            } => (src_port, dst_port),
            L4::Icmp { .. } => (0, 0),
        }
    }

    pub fn set_ports(&mut self, src: u16, dst: u16) {
        match &mut self.l4 {
            L4::Tcp {
                src_port, dst_port, ..
            }
            | L4::Udp {
                src_port, dst_port, ..
            } => {
                *src_port = src;
                *dst_port = dst;
            }
            L4::Icmp { .. } => panic!("ICMP has no ports"),
        }
    }

    /// Sets the TCP flags (panics for other protocols).
    pub fn tcp_flags(mut self, value: u8) -> Self {
        match &mut self.l4 {
            L4::Tcp { flags, .. } => *flags = value,
            _ => panic!("not TCP"),
        }
        self
    }

    /// The frame with source and destination (addresses and ports) replaced.
    pub fn with_endpoints(&self, src: (IpAddr, u16), dst: (IpAddr, u16)) -> Self {
        let mut frame = self.clone();
        frame.src = src.0;
        frame.dst = dst.0;
        frame.set_ports(src.1, dst.1);
        frame
    }

    pub fn build(&self) -> Vec<u8> {
        let mut l4 = match self.l4 {
            L4::Tcp {
                src_port,
                dst_port,
                seq,
                ack,
                flags,
            } => {
                let mut h = Vec::with_capacity(20);
                h.extend(src_port.to_be_bytes());
                h.extend(dst_port.to_be_bytes());
                h.extend(seq.to_be_bytes());
                h.extend(ack.to_be_bytes());
                h.push(5 << 4);
                h.push(flags);
                h.extend(64240u16.to_be_bytes());
                h.extend([0, 0, 0, 0]); // checksum, urgent pointer
                h
            }
            L4::Udp {
                src_port, dst_port, ..
            } => {
                let mut h = Vec::with_capacity(8);
                h.extend(src_port.to_be_bytes());
                h.extend(dst_port.to_be_bytes());
                h.extend(((8 + self.payload.len()) as u16).to_be_bytes());
                h.extend([0, 0]);
                h
            }
            // type, code, checksum, identifier, sequence number
            L4::Icmp { icmp_type } => vec![icmp_type, 0, 0, 0, 0x12, 0x34, 0, 1],
        };
        l4.extend(&self.payload);
        let proto = match self.l4 {
            L4::Tcp { .. } => 6u8,
            L4::Udp { .. } => 17u8,
            L4::Icmp { .. } if self.src.is_ipv4() => 1u8,
            L4::Icmp { .. } => 58u8,
        };
        let wants_checksum = !matches!(
            self.l4,
            L4::Udp {
                checksum: false,
                ..
            }
        ) || self.src.is_ipv6();
        if wants_checksum {
            // ICMP for IPv4 has no pseudo-header; TCP, UDP and ICMPv6 do.
            let mut sum = if proto == 1 {
                0
            } else {
                pseudo_header_sum(self.src, self.dst, proto, l4.len())
            };
            sum += ones_sum(&l4);
            let mut check = !fold(sum);
            if proto == 17 && check == 0 {
                check = 0xFFFF;
            }
            let at = match proto {
                6 => 16,
                17 => 6,
                _ => 2,
            };
            l4[at..at + 2].copy_from_slice(&check.to_be_bytes());
        }

        let mut frame = Vec::new();
        frame.extend(self.dst_mac);
        frame.extend(self.src_mac);
        if let Some(vid) = self.vlan {
            frame.extend(0x8100u16.to_be_bytes());
            frame.extend(vid.to_be_bytes());
        }
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                frame.extend(0x0800u16.to_be_bytes());
                assert!(self.ipv4_options.len().is_multiple_of(4) && self.ipv4_options.len() <= 40);
                let header_len = 20 + self.ipv4_options.len();
                let mut ip = Vec::with_capacity(header_len);
                ip.push(0x40 | (header_len / 4) as u8);
                ip.push(0);
                ip.extend(((header_len + l4.len()) as u16).to_be_bytes());
                ip.extend(0x1234u16.to_be_bytes()); // id
                ip.extend(0x4000u16.to_be_bytes()); // don't fragment
                ip.push(64);
                ip.push(proto);
                ip.extend([0, 0]);
                ip.extend(src.octets());
                ip.extend(dst.octets());
                ip.extend(&self.ipv4_options);
                let check = !fold(ones_sum(&ip));
                ip[10..12].copy_from_slice(&check.to_be_bytes());
                frame.extend(ip);
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                frame.extend(0x86DDu16.to_be_bytes());
                frame.extend([0x60, 0, 0, 0]);
                frame.extend((l4.len() as u16).to_be_bytes());
                frame.push(proto);
                frame.push(64);
                frame.extend(src.octets());
                frame.extend(dst.octets());
            }
            _ => panic!("mixed address families in a test frame"),
        }
        frame.extend(l4);
        frame
    }
}

fn pseudo_header_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u64 {
    let mut bytes = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            bytes.extend(s.octets());
            bytes.extend(d.octets());
            bytes.extend([0, proto]);
            bytes.extend((len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            bytes.extend(s.octets());
            bytes.extend(d.octets());
            bytes.extend((len as u32).to_be_bytes());
            bytes.extend([0, 0, 0, proto]);
        }
        _ => panic!("mixed address families"),
    }
    ones_sum(&bytes)
}

/// RFC 1071: the sum of big-endian 16-bit words, odd byte padded with zero.
fn ones_sum(bytes: &[u8]) -> u64 {
    bytes
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u64)
        .sum()
}

fn fold(mut sum: u64) -> u16 {
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    sum as u16
}

pub fn mac(last: u8) -> Mac {
    [0x02, 0, 0, 0, 0, last]
}

/// The L4 source port in a built frame (after Ethernet, an optional tag and the IP header).
pub fn l4_ports(frame: &[u8]) -> (u16, u16) {
    let mut l3 = 14;
    if u16::from_be_bytes([frame[12], frame[13]]) == 0x8100 {
        l3 += 4;
    }
    let l4 = if frame[l3] >> 4 == 4 {
        l3 + (frame[l3] & 0x0F) as usize * 4
    } else {
        l3 + 40
    };
    (
        u16::from_be_bytes([frame[l4], frame[l4 + 1]]),
        u16::from_be_bytes([frame[l4 + 2], frame[l4 + 3]]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_ipv4_header_checksum() {
        // The classic example header (Wikipedia, IPv4 header checksum): checksum 0xB861.
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(!fold(ones_sum(&header)), 0xB861);
    }

    /// The checksums of whole built frames, computed apart from this file (RFC 1071 over the
    /// same bytes, by a separate implementation) so that the builder is not checked against
    /// its own helpers only.
    #[test]
    fn built_frames_carry_known_checksums() {
        let v4 = |last: u8| IpAddr::from([10, 0, 0, last]);
        let v6 =
            |prefix: [u16; 2], last: u16| IpAddr::from([prefix[0], prefix[1], 0, 0, 0, 0, 0, last]);
        let at =
            |frame: &[u8], offset: usize| u16::from_be_bytes([frame[offset], frame[offset + 1]]);
        // Ethernet 14, IPv4 20, IPv6 40; TCP checksum at +16, UDP at +6, ICMP at +2.
        let tcp4 = Frame::tcp((v4(1), 1234), (v4(2), 80)).build();
        assert_eq!(at(&tcp4, 14 + 10), 0x1486, "IPv4 header");
        assert_eq!(at(&tcp4, 34 + 16), 0xBD4C, "TCP over IPv4");
        let udp4 = Frame::udp((v4(1), 5353), (v4(2), 53)).build();
        assert_eq!(at(&udp4, 34 + 6), 0xFC10, "UDP over IPv4");
        let icmp4 = Frame::icmp(v4(1), v4(2), 8).build();
        assert_eq!(at(&icmp4, 34 + 2), 0x0B46, "ICMP echo request");
        let tcp6 = Frame::tcp(
            (v6([0x2001, 0xdb8], 1), 40000),
            (v6([0x2001, 0xdb8], 2), 443),
        )
        .build();
        assert_eq!(at(&tcp6, 54 + 16), 0xDD00, "TCP over IPv6");
        let udp6 = Frame::udp((v6([0xfd00, 0], 1), 5353), (v6([0xfd00, 0], 2), 53)).build();
        assert_eq!(at(&udp6, 54 + 6), 0x160F, "UDP over IPv6");
        let icmp6 = Frame::icmp(v6([0xfd00, 0], 1), v6([0xfd00, 0], 2), 128).build();
        assert_eq!(at(&icmp6, 54 + 2), 0x98EA, "ICMPv6 echo request");
    }

    #[test]
    fn built_frames_verify() {
        let frame = Frame::tcp(
            (IpAddr::from([10, 0, 0, 1]), 1234),
            (IpAddr::from([10, 0, 0, 2]), 80),
        )
        .build();
        // A correct IPv4 header sums to 0xFFFF including its checksum.
        assert_eq!(fold(ones_sum(&frame[14..34])), 0xFFFF);
        let l4 = &frame[34..];
        let sum = pseudo_header_sum(
            IpAddr::from([10, 0, 0, 1]),
            IpAddr::from([10, 0, 0, 2]),
            6,
            l4.len(),
        ) + ones_sum(l4);
        assert_eq!(fold(sum), 0xFFFF);
    }
}
