//! Rewrites and sends the packet back out (XDP_TX). DSR only changes MAC addresses; NAT also
//! changes addresses and ports, with incremental checksum updates.
use core::mem::offset_of;

use aya_ebpf::programs::XdpContext;
use lb_common::maps::{NatReverse, Verdict, FAMILY_V4, PROTO_TCP};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::{
    balance::Route,
    checksum::Delta,
    parse::{bytes_at, load16, store16, store32, Packet, TCP_NEEDED, UDP_NEEDED},
};

/// The frame leaves from our own MAC (its old destination) towards `next_hop`, which sits at
/// an even offset of a map value (`Backend`, `NatReverse`), so it is read in three 16-bit loads.
#[inline(always)]
pub fn rewrite_eth(ctx: &XdpContext, next_hop: &[u8; 6]) -> Result<(), Verdict> {
    let eth = bytes_at(ctx, 0, EthHdr::LEN).ok_or(Verdict::DropMalformed)?;
    let (dst, src) = (offset_of!(EthHdr, dst_addr), offset_of!(EthHdr, src_addr));
    for half in [0, 2, 4] {
        // SAFETY: the MACs lie in the Ethernet header checked above; `next_hop` is a live
        // 6-byte array at an even offset.
        unsafe {
            store16(
                eth.wrapping_add(src + half),
                load16(eth.wrapping_add(dst + half)),
            );
            store16(
                eth.wrapping_add(dst + half),
                load16(next_hop.as_ptr().wrapping_add(half)),
            );
        }
    }
    Ok(())
}

#[inline(always)]
pub fn dsr_to_backend(ctx: &XdpContext, route: &Route) -> Verdict {
    match rewrite_eth(ctx, &route.backend.mac) {
        Ok(()) => Verdict::ForwardDsr,
        Err(verdict) => verdict,
    }
}

#[inline(always)]
pub fn nat_to_backend(ctx: &XdpContext, packet: &Packet, route: &Route) -> Verdict {
    let new = Endpoints {
        src: &route.snat_addr,
        dst: &route.backend.addr,
        src_port: route.nat_port,
        dst_port: route.backend.port,
    };
    match rewrite_eth(ctx, &route.backend.mac).and_then(|()| rewrite_l3_l4(ctx, packet, &new)) {
        Ok(()) => Verdict::ForwardNat,
        Err(verdict) => verdict,
    }
}

#[inline(always)]
pub fn nat_to_client(ctx: &XdpContext, packet: &Packet, reverse: &NatReverse) -> Verdict {
    let new = Endpoints {
        src: &reverse.vip,
        dst: &reverse.client_addr,
        src_port: reverse.vip_port,
        dst_port: reverse.client_port,
    };
    match rewrite_eth(ctx, &reverse.client_mac).and_then(|()| rewrite_l3_l4(ctx, packet, &new)) {
        Ok(()) => Verdict::NatReply,
        Err(verdict) => verdict,
    }
}

/// New source and destination of a NAT-ed packet (ports in network order).
struct Endpoints<'a> {
    src: &'a [u32; 4],
    dst: &'a [u32; 4],
    src_port: u16,
    dst_port: u16,
}

#[inline(always)]
fn rewrite_l3_l4(ctx: &XdpContext, packet: &Packet, new: &Endpoints) -> Result<(), Verdict> {
    let old = &packet.key;
    let mut addresses = Delta::default();
    if old.family == FAMILY_V4 {
        addresses.word32(old.src[0], new.src[0]);
        addresses.word32(old.dst[0], new.dst[0]);
        let ip = bytes_at(ctx, packet.l3, Ipv4Hdr::LEN).ok_or(Verdict::DropMalformed)?;
        let check = ip.wrapping_add(offset_of!(Ipv4Hdr, check));
        // SAFETY: within the IPv4 header checked above.
        unsafe {
            store32(ip.wrapping_add(offset_of!(Ipv4Hdr, src_addr)), new.src[0]);
            store32(ip.wrapping_add(offset_of!(Ipv4Hdr, dst_addr)), new.dst[0]);
            store16(check, addresses.apply(load16(check)));
        }
    } else {
        let ip = bytes_at(ctx, packet.l3, Ipv6Hdr::LEN).ok_or(Verdict::DropMalformed)?;
        let (src, dst) = (offset_of!(Ipv6Hdr, src_addr), offset_of!(Ipv6Hdr, dst_addr));
        for i in 0..4 {
            addresses.word32(old.src[i], new.src[i]);
            addresses.word32(old.dst[i], new.dst[i]);
            // SAFETY: within the IPv6 header checked above.
            unsafe {
                store32(ip.wrapping_add(src + 4 * i), new.src[i]);
                store32(ip.wrapping_add(dst + 4 * i), new.dst[i]);
            }
        }
    }

    let mut ports = Delta::default();
    ports.word16(old.src_port, new.src_port);
    ports.word16(old.dst_port, new.dst_port);
    // The L4 checksum covers the pseudo-header (addresses) and the ports.
    let l4_delta = addresses.plus(ports);
    if old.proto == PROTO_TCP {
        let tcp = bytes_at(ctx, packet.l4, TCP_NEEDED).ok_or(Verdict::DropMalformed)?;
        let check = tcp.wrapping_add(offset_of!(TcpHdr, check));
        // SAFETY: within the TCP header checked above.
        unsafe {
            store16(tcp.wrapping_add(offset_of!(TcpHdr, source)), new.src_port);
            store16(tcp.wrapping_add(offset_of!(TcpHdr, dest)), new.dst_port);
            store16(check, l4_delta.apply(load16(check)));
        }
    } else {
        let udp = bytes_at(ctx, packet.l4, UDP_NEEDED).ok_or(Verdict::DropMalformed)?;
        let check = udp.wrapping_add(offset_of!(UdpHdr, check));
        // SAFETY: within the UDP header checked above.
        unsafe {
            store16(udp.wrapping_add(offset_of!(UdpHdr, src)), new.src_port);
            store16(udp.wrapping_add(offset_of!(UdpHdr, dst)), new.dst_port);
            let old_check = load16(check);
            // IPv4 UDP may carry no checksum (0); a computed 0 is sent as 0xFFFF (RFC 768).
            if old_check != 0 || old.family != FAMILY_V4 {
                let updated = l4_delta.apply(old_check);
                store16(check, if updated == 0 { 0xFFFF } else { updated });
            }
        }
    }
    Ok(())
}
