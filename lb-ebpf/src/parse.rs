//! Header parsing. Every read is bounds-checked against `data_end` first (the verifier
//! rejects the program otherwise); a packet that lies about its lengths is `DropMalformed`.
use core::mem::offset_of;

use aya_ebpf::programs::XdpContext;
use lb_common::maps::{FlowKey, FlowKeyV4, Verdict, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

pub const PROTO_ICMP: u8 = 1;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_URG: u8 = 0x20;
pub const PROTO_ICMPV6: u8 = 58;
/// ICMP and ICMPv6 headers: type, code, checksum.
const ICMP_NEEDED: usize = 4;
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const VLAN_TAG_LEN: usize = 4;
/// Bytes of the TCP or UDP header the data path reads and writes (ports, checksum).
pub const TCP_NEEDED: usize = TcpHdr::LEN;
pub const UDP_NEEDED: usize = UdpHdr::LEN;

/// What the rest of the path needs to know about a parsed TCP/UDP packet.
pub struct Packet {
    /// The flow as seen on the wire (source, destination, ports, protocol, family).
    pub key: FlowKey,
    /// Offset of the IP header.
    pub l3: usize,
    /// Offset of the TCP/UDP header.
    pub l4: usize,
    /// Bytes in the frame.
    pub len: usize,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    /// ICMP / ICMPv6 type (0 for other protocols).
    pub icmp_type: u8,
    /// An IPv4 fragment: only the first one has ports, so none is balanced.
    pub fragment: bool,
    /// A fragment other than the first: it carries no L4 header.
    pub later_fragment: bool,
    /// Sent to a multicast or broadcast MAC address: never balanced (every load balancer on
    /// the segment would forward it).
    pub to_group: bool,
}

/// The common case: an IPv4 TCP or UDP packet without IP options that is not a fragment. Its
/// headers go straight into the IPv4 flow key; the generic [`Packet`] is only built if the
/// packet needs more than the flow table (see `main.rs`).
pub struct Ipv4Packet {
    pub key: FlowKeyV4,
    /// Offset of the IP header (after at most one VLAN tag).
    pub l3: usize,
    /// Bytes in the frame.
    pub len: usize,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
}

impl Ipv4Packet {
    /// The same packet as [`parse`] describes it.
    #[inline(always)]
    pub fn to_packet(&self) -> Packet {
        Packet {
            key: self.key.to_flow(),
            l3: self.l3,
            l4: self.l3 + Ipv4Hdr::LEN,
            len: self.len,
            tcp_flags: self.tcp_flags,
            icmp_type: 0,
            fragment: false,
            later_fragment: false,
            to_group: false,
        }
    }
}

/// Recognises the common case (see [`Ipv4Packet`]) with the fewest reads. `None` for anything
/// else, malformed packets included: [`parse`] then handles the packet, and is the reference.
#[inline(always)]
pub fn parse_common_ipv4(ctx: &XdpContext) -> Option<Ipv4Packet> {
    let len = ctx.data_end() - ctx.data();
    let eth = bytes_at(ctx, 0, EthHdr::LEN)?;
    // SAFETY: bounds checked by `bytes_at`; the group bit of the destination MAC.
    if unsafe { *eth } & 1 != 0 {
        return None;
    }
    let mut l3 = EthHdr::LEN;
    // SAFETY: within the Ethernet header checked above.
    let mut ether_type = unsafe { load16(eth.wrapping_add(offset_of!(EthHdr, ether_type))) };
    if ether_type == ETH_P_8021Q.to_be() || ether_type == ETH_P_8021AD.to_be() {
        let tag = bytes_at(ctx, l3, VLAN_TAG_LEN)?;
        // SAFETY: the inner EtherType, the last two bytes of the tag checked just now.
        ether_type = unsafe { load16(tag.wrapping_add(2)) };
        l3 += VLAN_TAG_LEN;
    }
    if ether_type != ETH_P_IP.to_be() {
        return None;
    }
    let ip = bytes_at(ctx, l3, Ipv4Hdr::LEN)?;
    // SAFETY: bounds checked by `bytes_at`.
    let (vihl, proto) = unsafe {
        (
            *ip.wrapping_add(offset_of!(Ipv4Hdr, vihl)),
            *ip.wrapping_add(offset_of!(Ipv4Hdr, proto)),
        )
    };
    // Version 4, a 20-byte header; neither more fragments nor a fragment offset.
    // SAFETY: within the IPv4 header checked above.
    let (frags, total_len) = unsafe {
        (
            load16(ip.wrapping_add(offset_of!(Ipv4Hdr, frags))),
            u16::from_be(load16(ip.wrapping_add(offset_of!(Ipv4Hdr, tot_len)))) as usize,
        )
    };
    if vihl != 0x45 || frags & 0x3FFFu16.to_be() != 0 {
        return None;
    }
    if total_len < Ipv4Hdr::LEN || l3 + total_len > len {
        return None;
    }
    let l4 = l3 + Ipv4Hdr::LEN;
    let (ports, tcp_flags) = match proto {
        PROTO_TCP => {
            let tcp = bytes_at(ctx, l4, TCP_NEEDED)?;
            // SAFETY: within the TCP header checked above (flags are byte 13).
            (tcp, unsafe { *tcp.wrapping_add(13) })
        }
        PROTO_UDP => (bytes_at(ctx, l4, UDP_NEEDED)?, 0),
        _ => return None,
    };
    // SAFETY: the addresses lie in the IPv4 header, the ports in the L4 header, both checked.
    let key = unsafe {
        FlowKeyV4 {
            src: load32(ip.wrapping_add(offset_of!(Ipv4Hdr, src_addr))),
            dst: load32(ip.wrapping_add(offset_of!(Ipv4Hdr, dst_addr))),
            src_port: load16(ports),
            dst_port: load16(ports.wrapping_add(2)),
            proto: proto as u32,
        }
    };
    Some(Ipv4Packet {
        key,
        l3,
        len,
        tcp_flags,
    })
}

/// Pointer to `len` bytes at `offset`, or `None` if the packet is too short for them.
#[inline(always)]
pub fn bytes_at(ctx: &XdpContext, offset: usize, len: usize) -> Option<*mut u8> {
    let start = ctx.data();
    // The verifier needs this comparison before any access at start + offset.
    if start + offset + len > ctx.data_end() {
        return None;
    }
    Some((start + offset) as *mut u8)
}

/// Pointer to a `T` at `offset`, or `None` if the packet is too short for it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    bytes_at(ctx, offset, core::mem::size_of::<T>()).map(|p| p as *mut T)
}

// Header fields sit at even offsets of the frame, so 16-bit loads and stores are aligned; the
// byte-array fields of network-types would otherwise compile to one load per byte.

/// A 16-bit field as it sits in memory (network order stays network order).
///
/// # Safety
/// `p..p + 2` lies in the packet (checked by [`bytes_at`]) or in a live value, at an even
/// offset.
#[inline(always)]
pub unsafe fn load16(p: *const u8) -> u16 {
    // SAFETY: the caller's promise.
    unsafe { *(p as *const u16) }
}

/// # Safety
/// As for [`load16`].
#[inline(always)]
pub unsafe fn store16(p: *mut u8, value: u16) {
    // SAFETY: the caller's promise.
    unsafe { *(p as *mut u16) = value }
}

/// A 32-bit field as it sits in memory, read as two aligned halves.
///
/// # Safety
/// As for [`load16`], for `p..p + 4`.
#[inline(always)]
pub unsafe fn load32(p: *const u8) -> u32 {
    // SAFETY: both halves lie in the four bytes the caller vouches for.
    unsafe { load16(p) as u32 | (load16(p.wrapping_add(2)) as u32) << 16 }
}

/// # Safety
/// As for [`load32`].
#[inline(always)]
pub unsafe fn store32(p: *mut u8, value: u32) {
    // SAFETY: both halves lie in the four bytes the caller vouches for.
    unsafe {
        store16(p, value as u16);
        store16(p.wrapping_add(2), (value >> 16) as u16);
    }
}

/// # Safety
/// As for [`load16`], for `p..p + 16`.
#[inline(always)]
unsafe fn load_addr6(p: *const u8) -> [u32; 4] {
    // SAFETY: the four words lie in the sixteen bytes the caller vouches for.
    unsafe {
        [
            load32(p),
            load32(p.wrapping_add(4)),
            load32(p.wrapping_add(8)),
            load32(p.wrapping_add(12)),
        ]
    }
}

/// Parses Ethernet (with at most two 802.1Q/802.1ad tags: QinQ), IPv4 or IPv6, then the ports of TCP
/// and UDP, the flags of TCP and the type of ICMP. `Err` carries the verdict for frames that
/// are not IP (passed) or lie about their lengths (dropped).
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Packet, Verdict> {
    let len = ctx.data_end() - ctx.data();
    let eth = bytes_at(ctx, 0, EthHdr::LEN).ok_or(Verdict::PassNotIp)?;
    let mut l3 = EthHdr::LEN;
    // SAFETY: within the Ethernet header checked above.
    let mut ether_type =
        u16::from_be(unsafe { load16(eth.wrapping_add(offset_of!(EthHdr, ether_type))) });
    for _ in 0..2 {
        if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
            // The inner EtherType is the last two bytes of the tag.
            let tag = bytes_at(ctx, l3, VLAN_TAG_LEN).ok_or(Verdict::PassNotIp)?;
            // SAFETY: the last two bytes of the tag checked just now.
            ether_type = u16::from_be(unsafe { load16(tag.wrapping_add(2)) });
            l3 += VLAN_TAG_LEN;
        }
    }
    // A third tag: nothing a host is sent; passed, it would skip the firewall.
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        return Err(Verdict::DropMalformed);
    }

    // Built in place: the key is filled where it stays, not assembled and then copied.
    let mut packet = Packet {
        key: FlowKey::default(),
        l3,
        l4: 0,
        len,
        tcp_flags: 0,
        icmp_type: 0,
        fragment: false,
        later_fragment: false,
        // SAFETY: bounds checked by `bytes_at`; the group bit of the destination MAC.
        to_group: unsafe { *eth } & 1 != 0,
    };
    packet.l4 = match ether_type {
        ETH_P_IP => parse_ipv4(
            ctx,
            l3,
            len,
            &mut packet.key,
            (&mut packet.fragment, &mut packet.later_fragment),
        )?,
        ETH_P_IPV6 => parse_ipv6(ctx, l3, len, &mut packet.key)?,
        _ => return Err(Verdict::PassNotIp),
    };
    // The first fragment has the L4 header (the host policy reads it); the others do not.
    let (later_fragment, l4) = (packet.later_fragment, packet.l4);
    if later_fragment {
        return Ok(packet);
    }

    match packet.key.proto {
        PROTO_TCP | PROTO_UDP => {
            let needed = if packet.key.proto == PROTO_TCP {
                TCP_NEEDED
            } else {
                UDP_NEEDED
            };
            // TCP and UDP both start with source and destination ports.
            let ports = bytes_at(ctx, l4, needed).ok_or(Verdict::DropMalformed)?;
            // SAFETY: within the L4 header checked above (TCP flags are byte 13).
            unsafe {
                packet.key.src_port = load16(ports);
                packet.key.dst_port = load16(ports.wrapping_add(2));
                if packet.key.proto == PROTO_TCP {
                    packet.tcp_flags = *ports.wrapping_add(13);
                }
            }
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let icmp = bytes_at(ctx, l4, ICMP_NEEDED).ok_or(Verdict::DropMalformed)?;
            // SAFETY: bounds checked by `bytes_at`.
            packet.icmp_type = unsafe { *icmp };
        }
        _ => {}
    }
    Ok(packet)
}

/// Fills the IPv4 part of `key` and returns the offset of the L4 header.
#[inline(always)]
fn parse_ipv4(
    ctx: &XdpContext,
    l3: usize,
    len: usize,
    key: &mut FlowKey,
    (fragment, later_fragment): (&mut bool, &mut bool),
) -> Result<usize, Verdict> {
    let ip = bytes_at(ctx, l3, Ipv4Hdr::LEN).ok_or(Verdict::DropMalformed)?;
    // SAFETY: bounds checked by `bytes_at`.
    let vihl = unsafe { *ip.wrapping_add(offset_of!(Ipv4Hdr, vihl)) };
    // Masked to 4 bits, so the verifier knows the header is at most 60 bytes.
    let header_len = ((vihl & 0x0F) as usize) * 4;
    if vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN {
        return Err(Verdict::DropMalformed);
    }
    // SAFETY: within the IPv4 header checked above.
    let total_len =
        u16::from_be(unsafe { load16(ip.wrapping_add(offset_of!(Ipv4Hdr, tot_len))) }) as usize;
    if total_len < header_len || l3 + total_len > len {
        return Err(Verdict::DropMalformed);
    }
    // More-fragments flag or a fragment offset.
    // SAFETY: within the IPv4 header checked above.
    let frags = u16::from_be(unsafe { load16(ip.wrapping_add(offset_of!(Ipv4Hdr, frags))) });
    *fragment = frags & 0x3FFF != 0;
    *later_fragment = frags & 0x1FFF != 0;
    key.family = FAMILY_V4;
    // SAFETY: within the IPv4 header checked above.
    unsafe {
        key.proto = *ip.wrapping_add(offset_of!(Ipv4Hdr, proto));
        key.src[0] = load32(ip.wrapping_add(offset_of!(Ipv4Hdr, src_addr)));
        key.dst[0] = load32(ip.wrapping_add(offset_of!(Ipv4Hdr, dst_addr)));
    }
    Ok(l3 + header_len)
}

/// Fills the IPv6 part of `key` and returns the offset of the L4 header. Extension headers are
/// not walked: such packets carry another next-header value and go to the kernel.
#[inline(always)]
fn parse_ipv6(
    ctx: &XdpContext,
    l3: usize,
    len: usize,
    key: &mut FlowKey,
) -> Result<usize, Verdict> {
    let ip = bytes_at(ctx, l3, Ipv6Hdr::LEN).ok_or(Verdict::DropMalformed)?;
    // SAFETY: bounds checked by `bytes_at`.
    if unsafe { *ip } >> 4 != 6 {
        return Err(Verdict::DropMalformed);
    }
    // SAFETY: within the IPv6 header checked above.
    let payload_len =
        u16::from_be(unsafe { load16(ip.wrapping_add(offset_of!(Ipv6Hdr, payload_len))) }) as usize;
    if l3 + Ipv6Hdr::LEN + payload_len > len {
        return Err(Verdict::DropMalformed);
    }
    key.family = FAMILY_V6;
    // SAFETY: within the IPv6 header checked above.
    unsafe {
        key.proto = *ip.wrapping_add(offset_of!(Ipv6Hdr, next_hdr));
        key.src = load_addr6(ip.wrapping_add(offset_of!(Ipv6Hdr, src_addr)));
        key.dst = load_addr6(ip.wrapping_add(offset_of!(Ipv6Hdr, dst_addr)));
    }
    Ok(l3 + Ipv6Hdr::LEN)
}
