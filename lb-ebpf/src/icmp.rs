//! ICMP errors about a flow. A router that cannot forward a packet (too big for its next link,
//! no route, TTL exceeded) tells the packet's source and quotes the packet's head. For a VIP's
//! reply the source is the VIP; for a NAT flow's packet to its backend it is the SNAT address.
//! Either way the error lands on the load balancer, whose kernel knows no such connection, so
//! it is sent on to the end that holds the flow: path-MTU discovery depends on it (without
//! "fragmentation needed" / "packet too big" a server keeps sending segments too large for the
//! path, and large replies stall).
//!
//! - DSR: the error goes unchanged to the flow's backend, which holds the VIP.
//! - NAT, about a reply to the client: translated to what the backend sent (outer destination,
//!   the quoted addresses and ports) and sent to the backend.
//! - NAT, about a packet to the backend: translated to what the client sent and sent back to it.
//!
//! Only errors about a live flow are followed; any other ICMP goes on as before (host policy).
use core::mem::offset_of;

use aya_ebpf::programs::XdpContext;
use lb_common::maps::{FlowKey, NatReverse, Verdict, FAMILY_V4, MODE_NAT, PROTO_TCP, PROTO_UDP};
use network_types::ip::{Ipv4Hdr, Ipv6Hdr};

use crate::{
    balance,
    checksum::Delta,
    conntrack::{self, Clock},
    forward::rewrite_eth,
    maps::NAT_REVERSE,
    parse::{bytes_at, load16, load32, store16, store32, Packet, PROTO_ICMP, PROTO_ICMPV6},
};

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMPV6_TIME_EXCEEDED: u8 = 3;
/// Type, code, checksum and the four bytes before the quoted packet (unused, or the MTU).
const ICMP_HEADER: usize = 8;
/// An error must quote at least the transport header's first 8 bytes; the ports are the first 4.
const QUOTED_PORTS: usize = 4;
/// Where the checksum sits in a TCP / UDP header, and the bytes needed to reach it.
const TCP_CHECK_END: usize = 18;
const UDP_CHECK_END: usize = 8;

/// The quoted packet: where its headers sit, and its flow as the other end sends it (addresses
/// and ports swapped): the client's flow key of a VIP's reply, or the reply key of a NAT flow's
/// packet to its backend.
struct Quoted {
    l3: usize,
    l4: usize,
    key: FlowKey,
}

/// The verdict for an ICMP error about a live flow, after sending it on; `None` for any other
/// packet.
#[inline(always)]
pub fn follow_flow(ctx: &XdpContext, packet: &Packet, clock: &Clock) -> Option<Verdict> {
    if !is_error(packet) {
        return None;
    }
    let quoted = quoted(ctx, packet)?;
    if let Some(entry) = conntrack::find(&quoted.key) {
        // SAFETY: a value of a flow map, valid while the program runs.
        let flow = unsafe { &*entry.flow };
        if !conntrack::alive(flow, clock) {
            return None;
        }
        let backend = balance::usable_backend(flow.backend_id, flow.backend_generation)?;
        let result = if flow.mode == MODE_NAT {
            // What the backend sent: from its address and port to the flow's SNAT address and port.
            let sent = Endpoints {
                src: &backend.addr,
                dst: &flow.snat_addr,
                src_port: backend.port,
                dst_port: flow.nat_port,
            };
            translate(ctx, packet, &quoted, &backend.addr, &sent, &backend.mac)
        } else {
            rewrite_eth(ctx, &backend.mac)
        };
        return Some(result.map_or_else(|verdict| verdict, |()| Verdict::ForwardIcmp));
    }
    // SAFETY: as in `balance::lookup_service`.
    let reverse: &NatReverse = unsafe { NAT_REVERSE.get(&quoted.key) }?;
    if !balance::port_in_use(reverse, quoted.key.dst_port, &quoted.key, clock) {
        return None;
    }
    // What the client sent: from its address and port to the VIP's.
    let sent = Endpoints {
        src: &reverse.client_addr,
        dst: &reverse.vip,
        src_port: reverse.client_port,
        dst_port: reverse.vip_port,
    };
    let result = translate(
        ctx,
        packet,
        &quoted,
        &reverse.client_addr,
        &sent,
        &reverse.client_mac,
    );
    Some(result.map_or_else(|verdict| verdict, |()| Verdict::ForwardIcmp))
}

/// Destination unreachable (fragmentation needed among them), time exceeded; for IPv6 also
/// packet too big.
#[inline(always)]
pub fn is_error(packet: &Packet) -> bool {
    let t = packet.icmp_type;
    if packet.key.family == FAMILY_V4 {
        packet.key.proto == PROTO_ICMP && (t == ICMP_DEST_UNREACH || t == ICMP_TIME_EXCEEDED)
    } else {
        packet.key.proto == PROTO_ICMPV6
            && (t == ICMPV6_DEST_UNREACH || t == ICMPV6_PACKET_TOO_BIG || t == ICMPV6_TIME_EXCEEDED)
    }
}

/// Reads the quoted packet: same family as the error, TCP or UDP, its source the error's
/// destination (an error about someone else's packet is not ours to follow).
#[inline(always)]
fn quoted(ctx: &XdpContext, packet: &Packet) -> Option<Quoted> {
    let l3 = packet.l4 + ICMP_HEADER;
    let mut key = FlowKey {
        family: packet.key.family,
        ..FlowKey::default()
    };
    let (l4, src) = if packet.key.family == FAMILY_V4 {
        let ip = bytes_at(ctx, l3, Ipv4Hdr::LEN)?;
        // SAFETY: bounds checked by `bytes_at`.
        let (vihl, proto) = unsafe {
            (
                *ip.wrapping_add(offset_of!(Ipv4Hdr, vihl)),
                *ip.wrapping_add(offset_of!(Ipv4Hdr, proto)),
            )
        };
        let header_len = ((vihl & 0x0F) as usize) * 4;
        if vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN {
            return None;
        }
        key.proto = proto;
        // SAFETY: within the quoted IPv4 header checked above.
        let (dst, src) = unsafe {
            (
                load32(ip.wrapping_add(offset_of!(Ipv4Hdr, dst_addr))),
                load32(ip.wrapping_add(offset_of!(Ipv4Hdr, src_addr))),
            )
        };
        key.src[0] = dst;
        let src = [src, 0, 0, 0];
        (l3 + header_len, src)
    } else {
        let ip = bytes_at(ctx, l3, Ipv6Hdr::LEN)?;
        // SAFETY: bounds checked by `bytes_at`.
        key.proto = unsafe { *ip.wrapping_add(offset_of!(Ipv6Hdr, next_hdr)) };
        let (src_at, dst_at) = (offset_of!(Ipv6Hdr, src_addr), offset_of!(Ipv6Hdr, dst_addr));
        let mut src = [0; 4];
        for i in 0..4 {
            // SAFETY: within the quoted IPv6 header checked above.
            unsafe {
                src[i] = load32(ip.wrapping_add(src_at + 4 * i));
                key.src[i] = load32(ip.wrapping_add(dst_at + 4 * i));
            }
        }
        (l3 + Ipv6Hdr::LEN, src)
    };
    if (key.proto != PROTO_TCP && key.proto != PROTO_UDP) || src != packet.key.dst {
        return None;
    }
    key.dst = src;
    let ports = bytes_at(ctx, l4, QUOTED_PORTS)?;
    // SAFETY: within the quoted ports checked above.
    unsafe {
        key.dst_port = load16(ports);
        key.src_port = load16(ports.wrapping_add(2));
    }
    Some(Quoted { l3, l4, key })
}

/// The quoted packet's new addresses and ports (ports in network order).
struct Endpoints<'a> {
    src: &'a [u32; 4],
    dst: &'a [u32; 4],
    src_port: u16,
    dst_port: u16,
}

/// Rewrites a NAT flow's error for its other end: the outer destination, the quoted packet's
/// addresses and ports, and every checksum they are part of (the outer IPv4 header's, the
/// quoted IPv4 header's, the quoted transport checksum when quoted, and the ICMP checksum over
/// all of it, with ICMPv6's pseudo-header).
#[inline(always)]
fn translate(
    ctx: &XdpContext,
    packet: &Packet,
    quoted: &Quoted,
    outer_dst: &[u32; 4],
    new: &Endpoints,
    next_hop: &[u8; 6],
) -> Result<(), Verdict> {
    rewrite_eth(ctx, next_hop)?;
    let v4 = packet.key.family == FAMILY_V4;
    // The quoted packet travelled the other way: its source is the flow key's destination.
    let (old_src, old_dst) = (&quoted.key.dst, &quoted.key.src);
    let (old_src_port, old_dst_port) = (quoted.key.dst_port, quoted.key.src_port);

    // The outer destination, and with it the outer IPv4 checksum or ICMPv6's pseudo-header.
    let mut outer = Delta::default();
    let mut inner_addrs = Delta::default();
    if v4 {
        outer.word32(packet.key.dst[0], outer_dst[0]);
        let ip = bytes_at(ctx, packet.l3, Ipv4Hdr::LEN).ok_or(Verdict::DropMalformed)?;
        let check = ip.wrapping_add(offset_of!(Ipv4Hdr, check));
        // SAFETY: within the outer IPv4 header checked above.
        unsafe {
            store32(ip.wrapping_add(offset_of!(Ipv4Hdr, dst_addr)), outer_dst[0]);
            store16(check, outer.apply(load16(check)));
        }

        inner_addrs.word32(old_src[0], new.src[0]);
        inner_addrs.word32(old_dst[0], new.dst[0]);
        let ip = bytes_at(ctx, quoted.l3, Ipv4Hdr::LEN).ok_or(Verdict::DropMalformed)?;
        // SAFETY: within the quoted IPv4 header checked above.
        unsafe {
            store32(ip.wrapping_add(offset_of!(Ipv4Hdr, src_addr)), new.src[0]);
            store32(ip.wrapping_add(offset_of!(Ipv4Hdr, dst_addr)), new.dst[0]);
        }
    } else {
        let ip = bytes_at(ctx, packet.l3, Ipv6Hdr::LEN).ok_or(Verdict::DropMalformed)?;
        let dst_at = offset_of!(Ipv6Hdr, dst_addr);
        for i in 0..4 {
            outer.word32(packet.key.dst[i], outer_dst[i]);
            // SAFETY: within the outer IPv6 header checked above.
            unsafe { store32(ip.wrapping_add(dst_at + 4 * i), outer_dst[i]) };
        }
        let ip = bytes_at(ctx, quoted.l3, Ipv6Hdr::LEN).ok_or(Verdict::DropMalformed)?;
        let (src_at, dst_at) = (offset_of!(Ipv6Hdr, src_addr), offset_of!(Ipv6Hdr, dst_addr));
        for i in 0..4 {
            inner_addrs.word32(old_src[i], new.src[i]);
            inner_addrs.word32(old_dst[i], new.dst[i]);
            // SAFETY: within the quoted IPv6 header checked above.
            unsafe {
                store32(ip.wrapping_add(src_at + 4 * i), new.src[i]);
                store32(ip.wrapping_add(dst_at + 4 * i), new.dst[i]);
            }
        }
    }

    // Everything the ICMP checksum covers that changed, summed as it goes.
    let mut icmp = inner_addrs;
    if v4 {
        let ip = bytes_at(ctx, quoted.l3, Ipv4Hdr::LEN).ok_or(Verdict::DropMalformed)?;
        let check = ip.wrapping_add(offset_of!(Ipv4Hdr, check));
        // SAFETY: within the quoted IPv4 header checked above.
        let old_check = unsafe { load16(check) };
        let new_check = inner_addrs.apply(old_check);
        // SAFETY: as above.
        unsafe { store16(check, new_check) };
        icmp.word16(old_check, new_check);
    } else {
        icmp = icmp.plus(outer);
    }

    let mut ports = Delta::default();
    ports.word16(old_src_port, new.src_port);
    ports.word16(old_dst_port, new.dst_port);
    let l4 = bytes_at(ctx, quoted.l4, QUOTED_PORTS).ok_or(Verdict::DropMalformed)?;
    // SAFETY: within the quoted ports checked above.
    unsafe {
        store16(l4, new.src_port);
        store16(l4.wrapping_add(2), new.dst_port);
    }
    icmp = icmp.plus(ports);
    // The quoted transport checksum, if the router quoted that far (a UDP checksum of 0 over
    // IPv4 means none).
    // Constant lengths in each branch: the verifier loses a bound that is chosen at run time.
    let check = if quoted.key.proto == PROTO_TCP {
        bytes_at(ctx, quoted.l4, TCP_CHECK_END).map(|l4| l4.wrapping_add(16))
    } else {
        bytes_at(ctx, quoted.l4, UDP_CHECK_END).map(|l4| l4.wrapping_add(6))
    };
    if let Some(check) = check {
        // SAFETY: the quoted transport checksum, within the bytes checked above.
        let old_check = unsafe { load16(check) };
        if quoted.key.proto == PROTO_TCP || old_check != 0 || !v4 {
            let mut updated = inner_addrs.plus(ports).apply(old_check);
            if quoted.key.proto == PROTO_UDP && updated == 0 {
                updated = 0xFFFF;
            }
            // SAFETY: as above.
            unsafe { store16(check, updated) };
            icmp.word16(old_check, updated);
        }
    }

    let header = bytes_at(ctx, packet.l4, ICMP_HEADER).ok_or(Verdict::DropMalformed)?;
    let check = header.wrapping_add(2);
    // SAFETY: within the ICMP header checked above.
    unsafe { store16(check, icmp.apply(load16(check))) };
    Ok(())
}
