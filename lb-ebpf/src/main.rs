//! The XDP data path, in the order a packet meets it: parse, firewall, balance, forward,
//! count. Each step lives in its own module; this page is the whole story. There are two roads
//! through it: `process` takes any packet; `process_common_ipv4` takes most of them (IPv4
//! TCP/UDP without options) with fewer instructions, and joins `process` at `decide` whenever
//! a packet needs more than its flow-table entry.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![allow(
    internal_features,
    reason = "atomic_xadd: the BPF target has no atomic type with fetch_add"
)]

mod balance;
mod checksum;
mod conntrack;
mod firewall;
mod flow_cache;
mod forward;
mod icmp;
mod maps;
mod parse;
mod stats;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    helpers::generated::bpf_ktime_get_ns,
    macros::xdp,
    programs::XdpContext,
};
use lb_common::{
    maps::{Firewall, Verdict, MODE_NAT, PROTO_TCP, STATE_ESTABLISHED},
    CALL_GENERIC_ROAD, CALL_SLOW_ROAD,
};

use balance::Target;
use maps::CALLS;
use parse::Packet;

#[xdp]
// Inlined into aya's entry point: as a BPF-to-BPF call it cost a call per packet.
#[inline(always)]
pub fn lb(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    // Most traffic is IPv4 TCP/UDP without options: it takes a shorter road to the same verdict.
    let verdict = match parse::parse_common_ipv4(&ctx) {
        Some(packet) => process_common_ipv4(&ctx, &packet),
        None => {
            // Any other packet takes the generic road, a program of its own (a tail call: both
            // roads inlined here overflowed the 512-byte stack).
            // SAFETY: the context is the program's own; `CALLS` holds only XDP programs.
            unsafe { CALLS.tail_call(&ctx, CALL_GENERIC_ROAD) };
            // Only until an agent fills `CALLS`.
            Verdict::PassNotIp
        }
    };
    stats::count_verdict(verdict, bytes);
    action(verdict)
}

/// The generic road (`process`): packets the common road does not take, handed over by `lb`.
#[xdp]
pub fn lb_generic_road(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let verdict = process(&ctx);
    stats::count_verdict(verdict, bytes);
    action(verdict)
}

/// The slow road: packets `lb` hands over (a tail call, so a fresh stack: inlined into `lb`,
/// this overflowed its 512 bytes) after its firewall screen. They are rare and never balanced:
/// fragments, frames sent to a group MAC, and ICMP errors, which may belong to a flow.
#[xdp]
pub fn lb_slow_road(ctx: XdpContext) -> u32 {
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let verdict = slow_road(&ctx);
    stats::count_verdict(verdict, bytes);
    action(verdict)
}

#[inline(always)]
fn slow_road(ctx: &XdpContext) -> Verdict {
    let packet = match parse::parse(ctx) {
        Ok(packet) => packet,
        Err(verdict) => return verdict,
    };
    let fw = match firewall::settings() {
        Ok(fw) => fw,
        Err(verdict) => return verdict,
    };
    if packet.fragment {
        return firewall::fragment(&packet, fw);
    }
    // Every load balancer on the segment would forward a frame sent to a group.
    if !packet.to_group {
        let clock = match conntrack::clock() {
            Ok(clock) => clock,
            Err(verdict) => return verdict,
        };
        if let Some(verdict) = icmp::follow_flow(ctx, &packet, &clock) {
            return verdict;
        }
    }
    // What `lb` does with any packet that is no service's and no NAT reply.
    firewall::host_policy(&packet, fw)
}

#[inline(always)]
fn action(verdict: Verdict) -> u32 {
    match verdict {
        Verdict::ForwardDsr | Verdict::ForwardNat | Verdict::NatReply | Verdict::ForwardIcmp => {
            XDP_TX
        }
        _ if verdict.is_drop() => XDP_DROP,
        _ => XDP_PASS,
    }
}

/// A trivial program: the floor in benchmarks, and what the lab attaches on veth peers so that
/// XDP_TX towards them is accepted.
#[xdp]
pub fn xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// Sends every frame back out of its interface: `lb-bench`'s flood generator runs it through
/// BPF_PROG_TEST_RUN in live-frames mode.
#[xdp]
pub fn xdp_tx(ctx: XdpContext) -> u32 {
    restore_headers(&ctx);
    XDP_TX
}

/// `xdp_tx` at a steady rate (`TX_PACE`): each frame waits for its time slot, spinning on the
/// clock, so a live-frames run sends evenly spaced frames instead of bursts at full speed
/// (each BPF_PROG_TEST_RUN call costs milliseconds to set up, so user space cannot pace finely).
#[xdp]
pub fn xdp_tx_paced(ctx: XdpContext) -> u32 {
    pace();
    restore_headers(&ctx);
    XDP_TX
}

/// Writes the generator's headers back into the frame (`TxPace::headers`: live-frames mode
/// hands out recycled pages as the receiver left them). A frame shorter than them, or a run
/// without `TX_PACE` set, leaves as it is.
#[inline(always)]
fn restore_headers(ctx: &XdpContext) {
    use lb_common::maps::TX_HEADER_BYTES;
    let Some(pace) = maps::TX_PACE.get(0) else {
        return;
    };
    let Some(frame) = parse::bytes_at(ctx, 0, TX_HEADER_BYTES) else {
        return;
    };
    // SAFETY: `frame` has TX_HEADER_BYTES bytes (checked above), the map value's array as many.
    unsafe { core::ptr::copy_nonoverlapping(pace.headers.as_ptr(), frame, TX_HEADER_BYTES) };
}

/// Waits for the next frame's time slot of `TX_PACE`, spinning on the clock.
#[inline(always)]
fn pace() {
    // A bound for the verifier: about 100 µs of waiting, enough for rates down to ~10k pps.
    const MAX_SPINS: u32 = 4096;
    if let Some(pace) = maps::TX_PACE.get_ptr_mut(0) {
        // SAFETY: the map's only element; the generator runs on one CPU.
        let pace = unsafe { &mut *pace };
        // SAFETY: a helper without arguments.
        let mut now = unsafe { bpf_ktime_get_ns() };
        for _ in 0..MAX_SPINS {
            if now >= pace.next_ns {
                break;
            }
            // SAFETY: as above.
            now = unsafe { bpf_ktime_get_ns() };
        }
        // Behind schedule: start again from now rather than catch up in a burst (tried: catching
        // up by one batch overflowed the receiver's 256-frame ring more often).
        pace.next_ns = pace.next_ns.max(now) + pace.interval_ns;
    }
}

/// `xdp_tx_paced` sending every frame from another source: the bits `TX_PACE.src_mask` of the
/// IPv4 source address, the source port (and a TCP frame's sequence number) drawn at random,
/// the checksums updated. For spoofed floods (`lb-bench flood-gen --spoof-bits`). Expects
/// Ethernet + IPv4 without options + TCP or UDP, as the generator builds them; passes anything
/// else unchanged.
#[xdp]
pub fn xdp_tx_spoofed(ctx: XdpContext) -> u32 {
    pace();
    restore_headers(&ctx);
    spoof(&ctx);
    XDP_TX
}

#[inline(always)]
fn spoof(ctx: &XdpContext) {
    use aya_ebpf::helpers::generated::bpf_get_prandom_u32;
    use checksum::Delta;
    use parse::{bytes_at, load16, load32, store16, store32};
    const IP: usize = 14;
    const L4: usize = IP + 20;
    let Some(pace) = maps::TX_PACE.get(0) else {
        return;
    };
    // Ethernet, IPv4 (20 bytes) and the TCP header's first 20 bytes.
    let Some(frame) = bytes_at(ctx, 0, L4 + 8) else {
        return;
    };
    // SAFETY: within the 42 bytes checked above.
    let proto = unsafe { *frame.add(IP + 9) };
    let (check_at, len) = match proto {
        PROTO_TCP => (L4 + 16, L4 + 20),
        lb_common::maps::PROTO_UDP => (L4 + 6, L4 + 8),
        _ => return,
    };
    let Some(frame) = bytes_at(ctx, 0, len) else {
        return;
    };
    // SAFETY: helpers without arguments.
    let (r1, r2) = unsafe { (bpf_get_prandom_u32(), bpf_get_prandom_u32()) };
    // SAFETY: every field below lies in the `len` bytes checked above, at an even offset.
    unsafe {
        let mut ip = Delta::default();
        let mut l4 = Delta::default();
        let src_at = frame.wrapping_add(IP + 12);
        let old_src = load32(src_at);
        let new_src = (old_src & !pace.src_mask) | (r1 & pace.src_mask);
        store32(src_at, new_src);
        ip.word32(old_src, new_src);
        l4.word32(old_src, new_src);
        let port_at = frame.wrapping_add(L4);
        let old_port = load16(port_at);
        let span = u32::from(pace.port_span) + 1;
        let new_port = ((u32::from(pace.port_min) + (r2 & 0xFFFF) % span) as u16).to_be();
        store16(port_at, new_port);
        l4.word16(old_port, new_port);
        if proto == PROTO_TCP {
            let seq_at = frame.wrapping_add(L4 + 4);
            let old_seq = load32(seq_at);
            let new_seq = bpf_get_prandom_u32(); // a helper without arguments
            store32(seq_at, new_seq);
            l4.word32(old_seq, new_seq);
        }
        let ip_check_at = frame.wrapping_add(IP + 10);
        store16(ip_check_at, ip.apply(load16(ip_check_at)));
        let l4_check_at = frame.wrapping_add(check_at);
        let old_check = load16(l4_check_at);
        // A UDP checksum of 0 means "none": it stays so; a computed 0 is sent as 0xFFFF.
        if proto == PROTO_TCP || old_check != 0 {
            let check = l4.apply(old_check);
            store16(
                l4_check_at,
                if check == 0 && proto != PROTO_TCP {
                    0xFFFF
                } else {
                    check
                },
            );
        }
    }
}

/// Any packet: the reference path.
#[inline(always)]
fn process(ctx: &XdpContext) -> Verdict {
    let packet = match parse::parse(ctx) {
        Ok(packet) => packet,
        Err(verdict) => return verdict,
    };
    let fw = match firewall::settings() {
        Ok(fw) => fw,
        Err(verdict) => return verdict,
    };
    if let Err(verdict) = firewall::screen(&packet, fw) {
        return verdict;
    }
    if firewall::to_other_host(ctx, fw) {
        return Verdict::PassOtherHost;
    }
    if packet.fragment || packet.to_group || icmp::is_error(&packet) {
        // SAFETY: the context is the program's own; `CALLS` holds only XDP programs.
        unsafe { CALLS.tail_call(ctx, CALL_SLOW_ROAD) };
        // Only until an agent fills `CALLS`: none of these is balanced.
        return if packet.fragment {
            Verdict::PassFragment
        } else {
            Verdict::PassNoService
        };
    }
    let clock = match conntrack::clock() {
        Ok(clock) => clock,
        Err(verdict) => return verdict,
    };
    let connection = conntrack::find_connection(&packet.key);
    decide(
        ctx,
        &packet,
        fw,
        &clock,
        balance::target(&packet, connection, &clock),
    )
}

/// `process` for the common IPv4 case (`parse::Ipv4Packet`), in the same order: firewall, then
/// the flow table. A DSR connection's packet that changes nothing, most packets of a web
/// service, leaves straight away; anything else goes on as in `process`, with the generic
/// packet built then.
#[inline(always)]
fn process_common_ipv4(ctx: &XdpContext, v4: &parse::Ipv4Packet) -> Verdict {
    let fw = match firewall::settings() {
        Ok(fw) => fw,
        Err(verdict) => return verdict,
    };
    if let Err(verdict) = firewall::screen_ipv4(v4, fw) {
        return verdict;
    }
    // Balanced twice otherwise: by whoever the frame was for, and here.
    if firewall::to_other_host(ctx, fw) {
        return Verdict::PassOtherHost;
    }
    let plain = conntrack::keeps_state(v4.tcp_flags);
    let cache_epoch = flow_cache::epoch();
    let slot = flow_cache::slot(&v4.key);
    if let Some(slot) = &slot {
        if !plain {
            slot.forget(&v4.key);
        } else if let Some(route) = slot.lookup(&v4.key, fw, cache_epoch) {
            stats::count_forward(&route, v4.len);
            return forward::dsr_to_backend(ctx, &route);
        }
    }
    let clock = match conntrack::clock() {
        Ok(clock) => clock,
        Err(verdict) => return verdict,
    };
    let packet = v4.to_packet();
    // UDP flows are never connections: they are only among the unverified flows.
    let connection = if v4.key.proto == PROTO_TCP as u32 {
        balance::connection_v4(&v4.key)
    } else {
        None
    };
    let target = balance::target(&packet, connection, &clock);
    if let Target::Established(flow) = &target {
        let entry = flow.flow();
        let fast = plain
            && entry.mode != MODE_NAT
            && entry.state == STATE_ESTABLISHED
            && !firewall::needs_recheck(flow, fw);
        if fast {
            conntrack::touch(flow.entry.flow, &clock);
            if let Some(slot) = &slot {
                slot.remember(&v4.key, flow, cache_epoch);
            }
            let route = flow.route();
            stats::count_forward(&route, v4.len);
            return forward::dsr_to_backend(ctx, &route);
        }
    }
    decide(ctx, &packet, fw, &clock, target)
}

/// From where the packet belongs to its verdict: the firewall's checks for that place, then
/// the balancing decision, the flow's state, and the rewrite.
#[inline(always)]
fn decide(
    ctx: &XdpContext,
    packet: &Packet,
    fw: &Firewall,
    clock: &conntrack::Clock,
    target: Target,
) -> Verdict {
    let route = match target {
        Target::Established(flow) => {
            if let Err(verdict) = firewall::recheck(packet, &flow, fw) {
                return verdict;
            }
            conntrack::advance(&packet.key, &flow.entry, packet.tcp_flags, clock);
            flow.route()
        }
        Target::Service(service, replaces) => {
            if let Err(verdict) = firewall::admit(packet, service, fw) {
                return verdict;
            }
            match balance::new_flow(ctx, packet, service, replaces, fw.epoch, clock) {
                Ok(route) => route,
                Err(verdict) => return verdict,
            }
        }
        Target::NoFlow => return Verdict::DropNoFlow,
        Target::NatReply(reverse) => {
            stats::count_service_and_backend(
                reverse.service_id,
                reverse.backend_id,
                packet.len,
                false,
            );
            conntrack::backend_closes(
                &reverse.client_flow(packet.key.proto, packet.key.family),
                packet.key.dst_port,
                packet.tcp_flags,
                clock,
            );
            return forward::nat_to_client(ctx, packet, reverse);
        }
        Target::Kernel => return firewall::host_policy(packet, fw),
    };

    stats::count_forward(&route, packet.len);
    if route.mode == MODE_NAT {
        forward::nat_to_backend(ctx, packet, &route)
    } else {
        forward::dsr_to_backend(ctx, &route)
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
