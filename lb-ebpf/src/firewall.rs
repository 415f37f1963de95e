//! The firewall, in the same pass and before any balancing: sanity checks every packet gets,
//! CIDR rules on the source (longest prefix wins), per-service source rules and rate limits,
//! and the policy for traffic to the load balancer itself.
use aya_ebpf::{helpers::generated::bpf_ktime_get_ns, programs::XdpContext};
use lb_common::maps::{
    AddrKey, CidrV6, Firewall, FwRule, HostPort, Rate, RateKey, Service, ServiceCidr, V4Entry,
    Verdict, ACTION_DROP, CIDR_GENERATION_BITS, FAMILY_V4, FLOW_PACKET_RATE, FW_DROP_FRAGMENTS,
    FW_HOST_POLICY, FW_SCOPED_SOURCES, FW_TCP_FLAG_CHECKS, FW_V4_RULES, FW_V6_RULES, PROTO_TCP,
    PROTO_UDP, RATE_ICMP_ECHO, RATE_PACKETS, RATE_SYN, RATE_SYN_BUDGET, REASON_SPOOF, SCOPE_HOST,
    SERVICE_CIDR_FAMILY_BITS, SERVICE_CIDR_PREFIX_BITS, V4_ENTRY_GROUP, V4_STRIDE_BITS,
};

use crate::{
    balance::{service_key, Established},
    conntrack,
    maps::{
        FIREWALL, FW_V4_TABLE, FW_V6, HOST_ADDRS, HOST_PORTS, RATE_BUCKETS, RULE_STATS, SERVICES,
        SERVICE_SOURCES, VIPS,
    },
    parse::{
        bytes_at, load16, Ipv4Packet, Packet, PROTO_ICMP, PROTO_ICMPV6, TCP_FIN, TCP_PSH, TCP_RST,
        TCP_SYN, TCP_URG,
    },
};

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;

/// The firewall switches (all off until the agent writes them). A one-element array: the
/// look-up cannot miss, and the verifier turns it into a plain address.
#[inline(always)]
pub fn settings() -> Result<&'static Firewall, Verdict> {
    FIREWALL.get(0).ok_or(Verdict::DropInternal)
}

/// Checks every IP packet gets, wherever it goes: impossible TCP flags, source equal to
/// destination, fragments to a VIP, then the CIDR rules on the source.
#[inline(always)]
pub fn screen(packet: &Packet, fw: &Firewall) -> Result<(), Verdict> {
    let key = &packet.key;
    let tcp = key.proto == PROTO_TCP && !packet.fragment;
    if tcp && tcp_flags_refused(packet.tcp_flags, fw) {
        return Err(Verdict::DropTcpFlags);
    }
    if key.src == key.dst {
        return Err(Verdict::DropSpoofed);
    }
    if packet.fragment && fw.flags & FW_DROP_FRAGMENTS != 0 {
        let vip = AddrKey {
            addr: key.dst,
            family: key.family as u32,
        };
        // SAFETY: read-only look-up of a value the agent replaces whole.
        if unsafe { VIPS.get(&vip) }.is_some() {
            return Err(Verdict::DropFragment);
        }
    }
    let rule = if key.family == FAMILY_V4 {
        if fw.flags & FW_V4_RULES == 0 {
            return Ok(());
        }
        v4_rule(key.src[0], fw.v4_base)
    } else {
        if fw.flags & FW_V6_RULES == 0 {
            return Ok(());
        }
        let cidr = CidrV6 {
            generation: fw.generation as u8,
            addr: addr_bytes(&key.src),
        };
        FW_V6
            .get(&lpm_key(CIDR_GENERATION_BITS + 128, cidr))
            .copied()
    };
    match rule {
        Some(rule) => apply_source_rule(&rule, packet.len),
        None => Ok(()),
    }
}

/// A unicast frame sent to a MAC address other than ours (`Firewall::own_mac`; no check while
/// that is unset). Group frames are not: they go their own way (see `main.rs`).
#[inline(always)]
pub fn to_other_host(ctx: &XdpContext, fw: &Firewall) -> bool {
    let Some(dst) = bytes_at(ctx, 0, 6) else {
        return false;
    };
    let own = fw.own_mac.as_ptr();
    // SAFETY: the six bytes of the destination MAC checked above; `own_mac` is six bytes at an
    // even offset of the map value.
    unsafe {
        let (a, b, c) = (load16(own), load16(own.add(2)), load16(own.add(4)));
        if a | b | c == 0 || *dst & 1 != 0 {
            return false;
        }
        load16(dst) != a || load16(dst.wrapping_add(2)) != b || load16(dst.wrapping_add(4)) != c
    }
}

/// `screen` for the common IPv4 case: the same checks in the same order (a fragment never
/// gets here).
#[inline(always)]
pub fn screen_ipv4(packet: &Ipv4Packet, fw: &Firewall) -> Result<(), Verdict> {
    let key = &packet.key;
    if key.proto == PROTO_TCP as u32 && tcp_flags_refused(packet.tcp_flags, fw) {
        return Err(Verdict::DropTcpFlags);
    }
    if key.src == key.dst {
        return Err(Verdict::DropSpoofed);
    }
    if fw.flags & FW_V4_RULES == 0 {
        return Ok(());
    }
    match v4_rule(key.src, fw.v4_base) {
        Some(rule) => apply_source_rule(&rule, packet.len),
        None => Ok(()),
    }
}

#[inline(always)]
fn tcp_flags_refused(flags: u8, fw: &Firewall) -> bool {
    fw.flags & FW_TCP_FLAG_CHECKS != 0 && bad_tcp_flags(flags)
}

/// A CIDR rule on the source: a spoofed-source (bogon) rule drops with its own reason.
#[inline(always)]
fn apply_source_rule(rule: &FwRule, len: usize) -> Result<(), Verdict> {
    let drop = if rule.reason == REASON_SPOOF {
        Verdict::DropSpoofed
    } else {
        Verdict::DropDenied
    };
    apply(rule, len, drop)
}

/// The most specific rule for an IPv4 source, from the live half of `FW_V4_TABLE` (it starts at
/// group `half`, `Firewall::v4_base`): the root entry of its top 20 bits, then at most three
/// groups of 4 bits, each named by the entry before it. The agent pushed longer prefixes over
/// shorter ones, so the last entry decides.
#[inline(always)]
fn v4_rule(src: u32, half: u32) -> Option<FwRule> {
    let addr = u32::from_be(src);
    let root = FW_V4_TABLE.get(half + (addr >> 16))?;
    // Masked to 4 bits: within the 16 entries of a group (the verifier checks the same).
    let mut entry = root[((addr >> 12) & 0xF) as usize];
    for shift in [2 * V4_STRIDE_BITS, V4_STRIDE_BITS, 0] {
        if entry & V4_ENTRY_GROUP == 0 {
            break;
        }
        let group = FW_V4_TABLE.get(half + (entry & !V4_ENTRY_GROUP))?;
        entry = group[((addr >> shift) & 0xF) as usize];
    }
    (entry != 0 && entry & V4_ENTRY_GROUP == 0).then(|| V4Entry::decode(entry))
}

/// Admission to a service: its source rules, then its rate limits (per source, and the budget
/// of new connections from all sources).
#[inline(always)]
pub fn admit(packet: &Packet, service: &Service, fw: &Firewall) -> Result<(), Verdict> {
    if fw.flags & FW_SCOPED_SOURCES != 0 {
        check_sources(packet, service.id, fw, Verdict::DropServiceSource)?;
    }
    let limited = service.packet_rate.is_limited()
        || service.syn_rate.is_limited()
        || service.syn_budget.is_limited();
    if !limited {
        return Ok(());
    }
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if service.packet_rate.is_limited()
        && !take(
            &source_bucket(packet, service.id, RATE_PACKETS),
            &service.packet_rate,
            now,
        )
    {
        return Err(Verdict::DropRateLimited);
    }
    // Only new flows get here: a TCP SYN (or a connection whose backend is gone), or a UDP flow.
    if is_new_connection(packet) || packet.key.proto == PROTO_UDP {
        if service.syn_rate.is_limited()
            && !take(
                &source_bucket(packet, service.id, RATE_SYN),
                &service.syn_rate,
                now,
            )
        {
            return Err(Verdict::DropRateLimited);
        }
        let budget = RateKey {
            addr: [0; 4],
            scope: service.id,
            kind: RATE_SYN_BUDGET,
            family: 0,
            _pad: [0; 2],
        };
        if service.syn_budget.is_limited() && !take(&budget, &service.syn_budget, now) {
            return Err(Verdict::DropSynBudget);
        }
    }
    Ok(())
}

/// Whether `recheck` has anything to do for this flow's packets.
#[inline(always)]
pub fn needs_recheck(flow: &Established, fw: &Firewall) -> bool {
    let entry = flow.flow();
    entry.fw_epoch != fw.epoch || entry.flags & FLOW_PACKET_RATE != 0
}

/// A packet of an established flow: re-checked against the service's source rules only when
/// the rule set changed since the flow was admitted, and counted against the service's packet
/// rate only when it has one. Everything else was decided when the flow began.
#[inline(always)]
pub fn recheck(packet: &Packet, flow: &Established, fw: &Firewall) -> Result<(), Verdict> {
    let entry = flow.flow();
    if entry.fw_epoch != fw.epoch {
        if fw.flags & FW_SCOPED_SOURCES != 0 {
            check_sources(packet, entry.service_id, fw, Verdict::DropServiceSource)?;
        }
        flow.set_fw_epoch(fw.epoch);
    }
    if entry.flags & FLOW_PACKET_RATE != 0 {
        // SAFETY: read-only look-up of a value the agent replaces whole.
        if let Some(service) = unsafe { SERVICES.get(&service_key(packet)) } {
            if service.packet_rate.is_limited() {
                // SAFETY: a helper without arguments.
                let now = unsafe { bpf_ktime_get_ns() };
                if !take(
                    &source_bucket(packet, service.id, RATE_PACKETS),
                    &service.packet_rate,
                    now,
                ) {
                    return Err(Verdict::DropRateLimited);
                }
            }
        }
    }
    Ok(())
}

/// A fragment is never balanced (only the first has ports). The first is judged by the host
/// policy on its ports like any packet to the host; the others pass, as the kernel cannot
/// reassemble them without the first.
#[inline(always)]
pub fn fragment(packet: &Packet, fw: &Firewall) -> Verdict {
    if !packet.later_fragment {
        let verdict = host_policy(packet, fw);
        if verdict.is_drop() {
            return verdict;
        }
    }
    Verdict::PassFragment
}

/// Traffic that is neither for a service nor a NAT reply. To the host's own addresses, under
/// the host policy: open ports (with their source rules), replies to the host's own
/// connections, ICMP (echo requests rate limited); anything else is dropped. Other traffic is
/// none of the firewall's business beyond `screen`.
#[inline(always)]
pub fn host_policy(packet: &Packet, fw: &Firewall) -> Verdict {
    let key = &packet.key;
    if fw.flags & FW_HOST_POLICY == 0 {
        return Verdict::PassNoService;
    }
    let host = AddrKey {
        addr: key.dst,
        family: key.family as u32,
    };
    // SAFETY: read-only look-up of a value the agent replaces whole.
    if unsafe { HOST_ADDRS.get(&host) }.is_none() {
        return Verdict::PassNoService;
    }
    match key.proto {
        PROTO_TCP | PROTO_UDP => {
            let port = HostPort {
                port: key.dst_port,
                proto: key.proto,
                _pad: 0,
            };
            // SAFETY: as above.
            if let Some(&scope) = unsafe { HOST_PORTS.get(&port) } {
                if scope != 0 && fw.flags & FW_SCOPED_SOURCES != 0 {
                    if let Err(verdict) = check_sources(packet, scope, fw, Verdict::DropHostPolicy)
                    {
                        return verdict;
                    }
                }
                if is_new_connection(packet) && fw.host_syn_rate.is_limited() {
                    // SAFETY: a helper without arguments.
                    let now = unsafe { bpf_ktime_get_ns() };
                    if !take(
                        &source_bucket(packet, SCOPE_HOST, RATE_SYN),
                        &fw.host_syn_rate,
                        now,
                    ) {
                        return Verdict::DropRateLimited;
                    }
                }
                return Verdict::PassHost;
            }
            // Replies to connections the host opened arrive on its ephemeral ports; a bare SYN
            // there is someone else's new connection.
            let port = u16::from_be(key.dst_port);
            let reply =
                port >= fw.ephemeral_min && port <= fw.ephemeral_max && !is_new_connection(packet);
            if reply
                || (key.proto == PROTO_UDP && port >= fw.ephemeral_min && port <= fw.ephemeral_max)
            {
                Verdict::PassHost
            } else {
                Verdict::DropHostPolicy
            }
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let echo = if key.proto == PROTO_ICMP {
                ICMP_ECHO_REQUEST
            } else {
                ICMPV6_ECHO_REQUEST
            };
            if packet.icmp_type == echo && fw.host_icmp_echo.is_limited() {
                // SAFETY: a helper without arguments.
                let now = unsafe { bpf_ktime_get_ns() };
                if !take(
                    &source_bucket(packet, SCOPE_HOST, RATE_ICMP_ECHO),
                    &fw.host_icmp_echo,
                    now,
                ) {
                    return Verdict::DropRateLimited;
                }
            }
            // Errors, neighbour discovery and rate-allowed echoes go to the kernel.
            Verdict::PassHost
        }
        _ => Verdict::DropHostPolicy,
    }
}

/// The most specific rule of `scope` in `SERVICE_SOURCES` decides; a scope with rules ends in a
/// catch-all drop, a scope without any admits everyone.
#[inline(always)]
fn check_sources(packet: &Packet, scope: u32, fw: &Firewall, drop: Verdict) -> Result<(), Verdict> {
    let key = &packet.key;
    let bits = if key.family == FAMILY_V4 { 32 } else { 128 };
    let cidr = ServiceCidr {
        generation: fw.generation as u8,
        service: scope.to_be_bytes(),
        family: key.family,
        addr: addr_bytes(&key.src),
    };
    match SERVICE_SOURCES.get(&lpm_key(
        SERVICE_CIDR_PREFIX_BITS + SERVICE_CIDR_FAMILY_BITS + bits,
        cidr,
    )) {
        Some(rule) => apply(rule, packet.len, drop),
        None => Ok(()),
    }
}

/// Counts the rule's hit and applies its action; a `log` rule only counts.
#[inline(always)]
fn apply(rule: &FwRule, len: usize, drop: Verdict) -> Result<(), Verdict> {
    // No timestamp here: the agent dates the last hit by watching `packets` grow, which keeps a
    // helper call off every dropped packet.
    if let Some(counters) = RULE_STATS.get_ptr_mut(rule.id) {
        // SAFETY: a per-CPU slot: only this CPU writes it while the program runs.
        unsafe {
            (*counters).packets += 1;
            (*counters).bytes += len as u64;
        }
    }
    // `allow` and `log` (a dry run) both let the packet go on.
    if rule.action == ACTION_DROP {
        Err(drop)
    } else {
        Ok(())
    }
}

/// GCRA: the packet conforms if the bucket's theoretical arrival time is at most `tolerance`
/// ahead of now. Concurrent CPUs may both pass on the same token: limits are approximate by a
/// packet or two, never by more.
#[inline(always)]
fn take(key: &RateKey, rate: &Rate, now: u64) -> bool {
    match RATE_BUCKETS.get_ptr_mut(key) {
        Some(tat) => {
            // SAFETY: a u64 in an LRU map value, valid while the program runs.
            let theoretical = unsafe { *tat }.max(now);
            if theoretical - now > rate.tolerance_ns {
                return false;
            }
            unsafe { *tat = theoretical + rate.interval_ns };
            true
        }
        None => {
            // A failed insert (never expected in an LRU map) admits the packet: a rate limit is
            // no reason to cut legitimate traffic.
            let _ = RATE_BUCKETS.insert(key, &(now + rate.interval_ns), 0);
            true
        }
    }
}

/// The bucket of a source: its /32, or its /64 for IPv6 (one host's whole subnet).
#[inline(always)]
fn source_bucket(packet: &Packet, scope: u32, kind: u8) -> RateKey {
    let src = &packet.key.src;
    let addr = if packet.key.family == FAMILY_V4 {
        [src[0], 0, 0, 0]
    } else {
        [src[0], src[1], 0, 0]
    };
    RateKey {
        addr,
        scope,
        kind,
        family: packet.key.family,
        _pad: [0; 2],
    }
}

#[inline(always)]
fn is_new_connection(packet: &Packet) -> bool {
    packet.key.proto == PROTO_TCP && conntrack::is_syn(packet.tcp_flags)
}

/// SYN+FIN, SYN+RST, no flag at all, or FIN+PSH+URG ("Xmas"): no real TCP stack sends these.
#[inline(always)]
fn bad_tcp_flags(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_FIN) == TCP_SYN | TCP_FIN
        || flags & (TCP_SYN | TCP_RST) == TCP_SYN | TCP_RST
        || flags == 0
        || flags & (TCP_FIN | TCP_PSH | TCP_URG) == TCP_FIN | TCP_PSH | TCP_URG
}

#[inline(always)]
fn lpm_key<K>(prefix_len: u32, data: K) -> aya_ebpf::maps::lpm_trie::Key<K> {
    aya_ebpf::maps::lpm_trie::Key::new(prefix_len, data)
}

#[inline(always)]
fn addr_bytes(addr: &[u32; 4]) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[0..4].copy_from_slice(&addr[0].to_ne_bytes());
    bytes[4..8].copy_from_slice(&addr[1].to_ne_bytes());
    bytes[8..12].copy_from_slice(&addr[2].to_ne_bytes());
    bytes[12..16].copy_from_slice(&addr[3].to_ne_bytes());
    bytes
}
