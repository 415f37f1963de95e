//! A plain-Rust reference model of what the XDP program decides for one frame, written from the
//! intended behaviour (README, docs/DATAPATH.md, docs/FIREWALL.md, the comments of the data
//! path), not from its code. The packet fuzzer runs every frame through the real program and
//! through [`decide`] with the same configuration and compares the two.
//!
//! Covered: parsing (Ethernet, up to two 802.1Q/802.1ad tags, IPv4 with IHL / total-length / fragment
//! checks, IPv6 without extension headers, TCP/UDP ports and flags, ICMP type, truncations), the
//! firewall (TCP flag checks, source == destination, fragments to VIPs, global CIDR rules with
//! longest-prefix precedence and allow/drop/log actions, bogons, per-service and per-host-port
//! source rules, the host policy), service lookup, established flows, new flows, NAT replies and
//! the pass to the kernel.
//!
//! The life of a flow: a SYN or a UDP datagram starts one; the client's ACK after its SYN
//! establishes it; a FIN or RST (the client's, or a NAT backend's) closes it; a SYN on a closing
//! flow starts the next connection on the same ports; a flow idle for longer than its state's
//! timeout is gone; a TCP packet other than a SYN without a live flow is dropped and creates
//! nothing. Time is the caller's [`Clock`] (the program under test is given the same one).
//!
//! Not covered: rate limits (they depend on time: configs under the model have none), rule-set
//! swaps while flows live (the firewall generation never changes), backend state changes while
//! flows live, flow-table eviction, and the NAT port choice (any port of the range that no live
//! flow uses).
//!
//! Round robin is state the caller keeps: a new flow is reported as such
//! ([`Action::Dsr`] / [`Action::Nat`] with no backend), established flows and NAT replies come
//! from the caller's [`State`], which moves them along with [`after_client_packet`] and
//! [`after_reply`].
use crate::maps::{FlowTimeouts, Verdict, PROTO_TCP, PROTO_UDP};

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;

const ETH_LEN: usize = 14;
const VLAN_LEN: usize = 4;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const TCP_LEN: usize = 20;
const UDP_LEN: usize = 8;
const ICMP_LEN: usize = 4;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_URG: u8 = 0x20;

/// An address of either family (IPv4 in the first 4 bytes, the rest zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Addr {
    pub v6: bool,
    pub bytes: [u8; 16],
}

impl Addr {
    pub const fn v4(octets: [u8; 4]) -> Self {
        let mut bytes = [0; 16];
        bytes[0] = octets[0];
        bytes[1] = octets[1];
        bytes[2] = octets[2];
        bytes[3] = octets[3];
        Addr { v6: false, bytes }
    }

    pub const fn v6(bytes: [u8; 16]) -> Self {
        Addr { v6: true, bytes }
    }
}

/// A prefix of one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Addr,
    pub len: u8,
}

impl Cidr {
    /// Same family and the first `len` bits equal.
    pub fn contains(&self, addr: &Addr) -> bool {
        if self.addr.v6 != addr.v6 {
            return false;
        }
        (0..self.len as usize).all(|bit| {
            let mask = 0x80u8 >> (bit % 8);
            self.addr.bytes[bit / 8] & mask == addr.bytes[bit / 8] & mask
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleAction {
    Allow,
    Drop,
    /// Counted only: the packet goes on as if no rule matched.
    Log,
}

/// A global rule on the source (`[[firewall.rule]]`; the bogon list is `spoof: true`).
#[derive(Clone, Copy, Debug)]
pub struct CidrRule {
    pub cidr: Cidr,
    pub action: RuleAction,
    pub spoof: bool,
}

/// A source rule of a service or an open host port: allowed or denied prefix.
#[derive(Clone, Copy, Debug)]
pub struct SourceRule {
    pub cidr: Cidr,
    pub allow: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Dsr,
    /// Source NAT towards the backends from `snat`.
    Nat {
        snat: Addr,
    },
}

#[derive(Clone, Copy, Debug)]
pub struct Backend {
    pub addr: Addr,
    /// Host order.
    pub port: u16,
    pub mac: [u8; 6],
    /// Takes new flows (in the selection table).
    pub active: bool,
}

#[derive(Clone, Copy, Debug)]
pub struct Service<'a> {
    pub vip: Addr,
    /// Host order.
    pub port: u16,
    pub proto: u8,
    pub mode: Mode,
    pub backends: &'a [Backend],
    /// Empty: every source; else only sources whose most specific rule allows them.
    pub sources: &'a [SourceRule],
}

#[derive(Clone, Copy, Debug)]
pub struct HostPort<'a> {
    /// Host order.
    pub port: u16,
    pub proto: u8,
    /// As for [`Service::sources`].
    pub sources: &'a [SourceRule],
}

/// The configuration the program was given, without rate limits.
#[derive(Clone, Copy, Debug)]
pub struct Config<'a> {
    pub tcp_flag_checks: bool,
    pub drop_fragments: bool,
    /// `restrict`: traffic to the host's addresses only reaches open ports, replies and ICMP.
    pub host_policy: bool,
    /// The host's ephemeral ports (replies to its own connections), inclusive.
    pub ephemeral: (u16, u16),
    pub rules: &'a [CidrRule],
    pub services: &'a [Service<'a>],
    /// The load balancer's own addresses, VIPs included.
    pub host_addrs: &'a [Addr],
    pub host_ports: &'a [HostPort<'a>],
    /// The MAC address of the program's interface: a unicast frame to another is never
    /// balanced. All zero: no check.
    pub own_mac: [u8; 6],
}

/// A flow in one direction (ports in host order; 0 for protocols without ports).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
}

/// What the parser found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub key: FlowKey,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub fragment: bool,
    /// A fragment other than the first: no L4 header.
    pub later_fragment: bool,
    /// Sent to a multicast or broadcast MAC address.
    pub to_group: bool,
    pub dst_mac: [u8; 6],
    /// Offsets of the IP and the L4 header.
    pub l3: usize,
    pub l4: usize,
}

/// Where a flow is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowState {
    /// TCP: SYN seen, the client has not acknowledged yet.
    Opening,
    Established,
    /// TCP: a FIN or RST was seen.
    Closing,
    Udp,
}

/// What time it is, and how long a flow of each state may stay idle (seconds).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub now: u32,
    pub timeouts: FlowTimeouts,
}

/// A client flow the program has already balanced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub service: usize,
    pub backend: usize,
    /// NAT mode: the source port towards the backend (host order).
    pub nat_port: u16,
    pub state: FlowState,
    /// The clock's `now` when the flow last sent.
    pub last_seen: u32,
}

impl Flow {
    /// A new flow begun by `packet` at `now`.
    pub fn new(service: usize, backend: usize, nat_port: u16, packet: &Packet, now: u32) -> Flow {
        let state = if packet.key.proto == PROTO_UDP {
            FlowState::Udp
        } else {
            FlowState::Opening
        };
        Flow {
            service,
            backend,
            nat_port,
            state,
            last_seen: now,
        }
    }
}

/// Idle for no longer than its state allows.
pub fn alive(flow: &Flow, clock: &Clock) -> bool {
    let limit = match flow.state {
        FlowState::Opening => clock.timeouts.tcp_opening,
        FlowState::Established => clock.timeouts.tcp_established,
        FlowState::Closing => clock.timeouts.tcp_closing,
        FlowState::Udp => clock.timeouts.udp,
    };
    clock.now.wrapping_sub(flow.last_seen) <= limit
}

/// A SYN on a closing flow is the client's next connection on the same ports.
pub fn reopens(flow: &Flow, packet: &Packet) -> bool {
    flow.state == FlowState::Closing && is_new_connection(packet)
}

/// The flow after the client sent `packet` on it (a packet the program forwarded).
pub fn after_client_packet(flow: &Flow, packet: &Packet, now: u32) -> Flow {
    let mut next = *flow;
    next.last_seen = now;
    if packet.key.proto == PROTO_TCP {
        if packet.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            next.state = FlowState::Closing;
        } else if flow.state == FlowState::Opening && packet.tcp_flags & TCP_ACK != 0 {
            next.state = FlowState::Established;
        }
    }
    next
}

/// The client flow after its NAT backend's reply `packet`, sent to `nat_port`: a FIN or RST
/// closes it.
pub fn after_reply(flow: &Flow, packet: &Packet, nat_port: u16, now: u32) -> Flow {
    let mut next = *flow;
    let closes = packet.key.proto == PROTO_TCP && packet.tcp_flags & (TCP_FIN | TCP_RST) != 0;
    if closes && flow.nat_port == nat_port {
        next.state = FlowState::Closing;
        next.last_seen = now;
    }
    next
}

/// A NAT flow seen from the backend's reply: where the reply goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatReply {
    pub service: usize,
    pub backend: usize,
    pub client: Addr,
    pub client_port: u16,
    pub vip: Addr,
    pub vip_port: u16,
    pub client_mac: [u8; 6],
}

/// The flows and NAT entries that exist (kept by the caller).
pub trait State {
    fn flow(&self, key: &FlowKey) -> Option<Flow>;
    /// Keyed by the reply as it arrives (backend -> SNAT address and NAT port).
    fn nat_reply(&self, key: &FlowKey) -> Option<NatReply>;
}

/// What happens to a forwarded frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Passed or dropped untouched.
    None,
    /// To a backend of `service` by MAC: `backend` for an established flow, `None` for a new
    /// flow (the next backend in round robin).
    Dsr {
        service: usize,
        backend: Option<usize>,
    },
    /// To a backend of `service` with addresses and ports rewritten: the established flow, or
    /// `None` for a new one (next backend, a free NAT port).
    Nat { service: usize, flow: Option<Flow> },
    /// A backend's reply rewritten back to the client.
    NatReply(NatReply),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub action: Action,
    /// `None` when the frame did not parse.
    pub packet: Option<Packet>,
}

/// The program's decision for `frame`.
pub fn decide(frame: &[u8], config: &Config, state: &impl State, clock: &Clock) -> Decision {
    let packet = match parse(frame) {
        Ok(packet) => packet,
        Err(verdict) => {
            return Decision {
                verdict,
                action: Action::None,
                packet: None,
            }
        }
    };
    let (verdict, action) = match route(&packet, config, state, clock) {
        Ok(action) => (verdict_of(&action), action),
        Err(verdict) => (verdict, Action::None),
    };
    Decision {
        verdict,
        action,
        packet: Some(packet),
    }
}

fn verdict_of(action: &Action) -> Verdict {
    match action {
        Action::Dsr { .. } => Verdict::ForwardDsr,
        Action::Nat { .. } => Verdict::ForwardNat,
        Action::NatReply(_) => Verdict::NatReply,
        Action::None => Verdict::PassNoService,
    }
}

/// `Ok(action)` forwards; `Err(verdict)` passes or drops.
fn route(
    packet: &Packet,
    config: &Config,
    state: &impl State,
    clock: &Clock,
) -> Result<Action, Verdict> {
    screen(packet, config)?;
    if config.own_mac != [0; 6] && !packet.to_group && packet.dst_mac != config.own_mac {
        // Whoever it was sent to balances it; here it would be balanced a second time.
        return Err(Verdict::PassOtherHost);
    }
    if packet.fragment {
        // Only the first fragment has ports: the host policy judges it; none is balanced.
        let verdict = host_policy(packet, config);
        if !packet.later_fragment && verdict.is_drop() {
            return Err(verdict);
        }
        return Err(Verdict::PassFragment);
    }
    if packet.to_group {
        // Every load balancer on the segment would forward a frame sent to a group.
        return Err(host_policy(packet, config));
    }
    let key = &packet.key;
    let syn = is_new_connection(packet);
    if let Some(flow) = state.flow(key) {
        if alive(&flow, clock) && !reopens(&flow, packet) {
            return Ok(forward(flow.service, Some(flow), config));
        }
    }
    if let Some(index) = config
        .services
        .iter()
        .position(|s| s.vip == key.dst && s.port == key.dst_port && s.proto == key.proto)
    {
        if key.proto == PROTO_TCP && !syn {
            return Err(Verdict::DropNoFlow);
        }
        let service = &config.services[index];
        if !sources_admit(service.sources, &key.src) {
            return Err(Verdict::DropServiceSource);
        }
        if !service.backends.iter().any(|b| b.active) {
            return Err(Verdict::DropNoBackend);
        }
        return Ok(forward(index, None, config));
    }
    if let Some(reply) = state.nat_reply(key) {
        return Ok(Action::NatReply(reply));
    }
    Err(host_policy(packet, config))
}

fn forward(service: usize, flow: Option<Flow>, config: &Config) -> Action {
    match config.services[service].mode {
        Mode::Dsr => Action::Dsr {
            service,
            backend: flow.map(|f| f.backend),
        },
        Mode::Nat { .. } => Action::Nat { service, flow },
    }
}

/// Ethernet, at most two VLAN tags (a third is malformed), IPv4 or IPv6, then what the rest
/// needs of L4 (a first fragment has it too).
pub fn parse(frame: &[u8]) -> Result<Packet, Verdict> {
    if frame.len() < ETH_LEN {
        return Err(Verdict::PassNotIp);
    }
    let is_tag = |ether_type: u16| ether_type == 0x8100 || ether_type == 0x88A8;
    let mut ether_type = be16(frame, 12);
    let mut l3 = ETH_LEN;
    for _ in 0..2 {
        if is_tag(ether_type) {
            if frame.len() < l3 + VLAN_LEN {
                return Err(Verdict::PassNotIp);
            }
            ether_type = be16(frame, l3 + 2);
            l3 += VLAN_LEN;
        }
    }
    if is_tag(ether_type) {
        return Err(Verdict::DropMalformed);
    }
    let mut packet = match ether_type {
        0x0800 => parse_ipv4(frame, l3)?,
        0x86DD => parse_ipv6(frame, l3)?,
        _ => return Err(Verdict::PassNotIp),
    };
    packet.to_group = frame[0] & 1 != 0;
    packet.dst_mac.copy_from_slice(&frame[..6]);
    if packet.later_fragment {
        return Ok(packet);
    }
    // L4 fields are read from the frame as it is (its end, not the IP length, bounds them).
    let l4 = packet.l4;
    let needed = match packet.key.proto {
        PROTO_TCP => TCP_LEN,
        PROTO_UDP => UDP_LEN,
        // Either ICMP number is read as ICMP in either family.
        PROTO_ICMP | PROTO_ICMPV6 => ICMP_LEN,
        _ => return Ok(packet),
    };
    if frame.len() < l4 + needed {
        return Err(Verdict::DropMalformed);
    }
    match packet.key.proto {
        PROTO_TCP | PROTO_UDP => {
            packet.key.src_port = be16(frame, l4);
            packet.key.dst_port = be16(frame, l4 + 2);
            if packet.key.proto == PROTO_TCP {
                packet.tcp_flags = frame[l4 + 13];
            }
        }
        _ => packet.icmp_type = frame[l4],
    }
    Ok(packet)
}

fn parse_ipv4(frame: &[u8], l3: usize) -> Result<Packet, Verdict> {
    if frame.len() < l3 + IPV4_LEN {
        return Err(Verdict::DropMalformed);
    }
    let ip = &frame[l3..];
    let header_len = (ip[0] & 0x0F) as usize * 4;
    if ip[0] >> 4 != 4 || header_len < IPV4_LEN {
        return Err(Verdict::DropMalformed);
    }
    let total_len = be16(ip, 2) as usize;
    if total_len < header_len || total_len > ip.len() {
        return Err(Verdict::DropMalformed);
    }
    let key = FlowKey {
        src: Addr::v4([ip[12], ip[13], ip[14], ip[15]]),
        dst: Addr::v4([ip[16], ip[17], ip[18], ip[19]]),
        src_port: 0,
        dst_port: 0,
        proto: ip[9],
    };
    // More fragments, or an offset.
    let fragment = be16(ip, 6) & 0x3FFF != 0;
    Ok(Packet {
        key,
        tcp_flags: 0,
        icmp_type: 0,
        fragment,
        later_fragment: be16(ip, 6) & 0x1FFF != 0,
        to_group: false,
        dst_mac: [0; 6],
        l3,
        l4: l3 + header_len,
    })
}

fn parse_ipv6(frame: &[u8], l3: usize) -> Result<Packet, Verdict> {
    if frame.len() < l3 + IPV6_LEN {
        return Err(Verdict::DropMalformed);
    }
    let ip = &frame[l3..];
    if ip[0] >> 4 != 6 || IPV6_LEN + be16(ip, 4) as usize > ip.len() {
        return Err(Verdict::DropMalformed);
    }
    let mut src = [0; 16];
    let mut dst = [0; 16];
    src.copy_from_slice(&ip[8..24]);
    dst.copy_from_slice(&ip[24..40]);
    // Extension headers are not walked: the next-header value is the protocol.
    let key = FlowKey {
        src: Addr::v6(src),
        dst: Addr::v6(dst),
        src_port: 0,
        dst_port: 0,
        proto: ip[6],
    };
    Ok(Packet {
        key,
        tcp_flags: 0,
        icmp_type: 0,
        fragment: false,
        later_fragment: false,
        to_group: false,
        dst_mac: [0; 6],
        l3,
        l4: l3 + IPV6_LEN,
    })
}

/// Checks every parsed packet gets, wherever it goes.
fn screen(packet: &Packet, config: &Config) -> Result<(), Verdict> {
    let key = &packet.key;
    if config.tcp_flag_checks
        && key.proto == PROTO_TCP
        && !packet.fragment
        && impossible_flags(packet.tcp_flags)
    {
        return Err(Verdict::DropTcpFlags);
    }
    if key.src == key.dst {
        return Err(Verdict::DropSpoofed);
    }
    let to_vip = config.services.iter().any(|s| s.vip == key.dst);
    if packet.fragment && config.drop_fragments && to_vip {
        return Err(Verdict::DropFragment);
    }
    let rule = config
        .rules
        .iter()
        .filter(|r| r.cidr.contains(&key.src))
        .max_by_key(|r| r.cidr.len);
    match rule {
        Some(rule) if rule.action == RuleAction::Drop => Err(if rule.spoof {
            Verdict::DropSpoofed
        } else {
            Verdict::DropDenied
        }),
        _ => Ok(()),
    }
}

/// SYN+FIN, SYN+RST, no flag at all, FIN+PSH+URG.
fn impossible_flags(flags: u8) -> bool {
    flags & (TCP_SYN | TCP_FIN) == TCP_SYN | TCP_FIN
        || flags & (TCP_SYN | TCP_RST) == TCP_SYN | TCP_RST
        || flags == 0
        || flags & (TCP_FIN | TCP_PSH | TCP_URG) == TCP_FIN | TCP_PSH | TCP_URG
}

/// No rules: everyone. Rules: the most specific matching one decides, no match is a drop.
fn sources_admit(rules: &[SourceRule], src: &Addr) -> bool {
    if rules.is_empty() {
        return true;
    }
    rules
        .iter()
        .filter(|r| r.cidr.contains(src))
        .max_by_key(|r| r.cidr.len)
        .is_some_and(|r| r.allow)
}

fn is_new_connection(packet: &Packet) -> bool {
    packet.key.proto == PROTO_TCP && packet.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Traffic neither for a service nor a NAT reply.
fn host_policy(packet: &Packet, config: &Config) -> Verdict {
    let key = &packet.key;
    if !config.host_policy || !config.host_addrs.contains(&key.dst) {
        return Verdict::PassNoService;
    }
    match key.proto {
        PROTO_TCP | PROTO_UDP => {
            if let Some(open) = config
                .host_ports
                .iter()
                .find(|p| p.port == key.dst_port && p.proto == key.proto)
            {
                return if sources_admit(open.sources, &key.src) {
                    Verdict::PassHost
                } else {
                    Verdict::DropHostPolicy
                };
            }
            let ephemeral = (config.ephemeral.0..=config.ephemeral.1).contains(&key.dst_port);
            // Replies to the host's own connections; a bare SYN is someone's new connection.
            if ephemeral && (key.proto == PROTO_UDP || !is_new_connection(packet)) {
                Verdict::PassHost
            } else {
                Verdict::DropHostPolicy
            }
        }
        PROTO_ICMP | PROTO_ICMPV6 => Verdict::PassHost,
        _ => Verdict::DropHostPolicy,
    }
}

fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

#[cfg(test)]
mod tests;
