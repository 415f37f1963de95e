//! Where a packet goes. The flow table first: a known flow whose backend may still serve it is
//! decided by that one lookup. Otherwise the service: a new flow takes the next slot of the
//! service's selection table through an atomic cursor. Otherwise a NAT reply, or the kernel.
use core::intrinsics::{atomic_cxchg, atomic_xadd, AtomicOrdering};

use aya_ebpf::{bindings::BPF_NOEXIST, programs::XdpContext};
use network_types::eth::EthHdr;

use lb_common::{
    maps::{
        Backend, Flow, FlowKey, FlowKeyV4, NatReverse, Service, ServiceKey, Verdict,
        BACKEND_ACTIVE, BACKEND_DRAINING, FLOW_PACKET_RATE, MODE_NAT, PROTO_UDP, STATE_ESTABLISHED,
        STATE_OPENING, STATE_UDP,
    },
    MAX_SNAT_ADDRS, NAT_PORT_TRIES, NAT_TAKEOVER_TRIES,
};

use crate::{
    conntrack::{self, Clock, Entry, Table},
    maps::{
        BACKENDS, FLOWS_V4, NAT_REVERSE, RINGS, RR_CURSORS, SERVICES, SERVICE_STATS, SETTINGS,
        SNAT_ADDRS,
    },
    parse::{ptr_at, Packet},
};

/// Where a parsed packet belongs.
pub enum Target {
    /// A live flow whose backend may still serve it.
    Established(Established),
    /// A new flow of this service; `replaces` names the table of a dead, closing or orphaned
    /// entry of the same addresses and ports.
    Service(&'static Service, Option<Table>),
    /// A TCP packet other than a SYN to a service, without a live flow: it creates nothing.
    NoFlow,
    NatReply(&'static NatReverse),
    Kernel,
}

/// A live flow-table entry and its (still usable) backend.
pub struct Established {
    pub entry: Entry,
    pub backend: &'static Backend,
}

impl Established {
    /// A copy of the entry: other CPUs may write its stamp and state meanwhile.
    #[inline(always)]
    pub fn flow(&self) -> Flow {
        // SAFETY: a value of a flow map, valid while the program runs.
        unsafe { *self.entry.flow }
    }

    /// Records that the flow passed the firewall's current rules.
    #[inline(always)]
    pub fn set_fw_epoch(&self, epoch: u32) {
        // SAFETY: as above; one aligned u32 store, a racing CPU writes the same value.
        unsafe { (*self.entry.flow).fw_epoch = epoch };
    }

    #[inline(always)]
    pub fn route(&self) -> Route {
        let flow = self.flow();
        Route {
            service_id: flow.service_id,
            backend_id: flow.backend_id,
            backend: self.backend,
            mode: flow.mode,
            snat_addr: flow.snat_addr,
            nat_port: flow.nat_port,
            new_flow: false,
        }
    }
}

/// How a packet of a service leaves.
pub struct Route {
    pub service_id: u32,
    pub backend_id: u32,
    pub backend: &'static Backend,
    pub mode: u8,
    /// NAT mode: the source address and port towards the backend (port in network order).
    pub snat_addr: [u32; 4],
    pub nat_port: u16,
    pub new_flow: bool,
}

/// The connection of the common IPv4 case, if there is an entry for it (alive or not).
#[inline(always)]
pub fn connection_v4(key: &FlowKeyV4) -> Option<Entry> {
    FLOWS_V4.get_ptr_mut(key).map(|flow| Entry {
        flow,
        table: Table::Verified,
    })
}

/// Where a packet goes, given its connection's entry if it has one (`FLOWS_V4` / `FLOWS_V6`).
/// A live flow with a usable backend keeps it; a SYN on a closing flow, or any packet of a flow
/// whose backend is gone, is balanced afresh (the latter so that the client hears a reset soon
/// rather than time out); a dead flow counts as none. The unverified flows are only asked once
/// the service is known, so traffic to no service costs no look-up there; a service removed
/// therefore ends its half-open and UDP flows at once, while its connections finish.
#[inline(always)]
pub fn target(packet: &Packet, connection: Option<Entry>, clock: &Clock) -> Target {
    let mut replaces = None;
    let mut client_proven = false;
    if let Some(entry) = connection {
        match follow(entry, packet, clock) {
            Ok(established) => return Target::Established(established),
            Err(proven) => (replaces, client_proven) = (Some(entry.table), proven),
        }
    }
    let service = match lookup_service(packet) {
        Target::Service(service, _) => service,
        other => return other,
    };
    if replaces.is_none() {
        if let Some(entry) = conntrack::find_unverified(&packet.key) {
            match follow(entry, packet, clock) {
                Ok(established) => return Target::Established(established),
                Err(proven) => (replaces, client_proven) = (Some(entry.table), proven),
            }
        }
    }
    let tcp_not_syn = packet.key.proto != PROTO_UDP && !conntrack::is_syn(packet.tcp_flags);
    if tcp_not_syn && !client_proven {
        Target::NoFlow
    } else {
        Target::Service(service, replaces)
    }
}

/// A flow entry that still decides the packet's way, or `Err(client_proven)`: whether the
/// entry was a live connection whose backend is gone (its client has proven its address).
#[inline(always)]
fn follow(entry: Entry, packet: &Packet, clock: &Clock) -> Result<Established, bool> {
    // SAFETY: a value of a flow map, valid while the program runs.
    let flow = unsafe { &*entry.flow };
    if !conntrack::alive(flow, clock) || conntrack::reopens(flow, packet.tcp_flags) {
        return Err(false);
    }
    match usable_backend(flow.backend_id, flow.backend_generation) {
        Some(backend) => Ok(Established { entry, backend }),
        None => Err(entry.table == Table::Verified),
    }
}

/// The backend a flow began on, if it may still serve it. Otherwise the backend is down or
/// gone (its id given to another): the service re-balances the flow.
#[inline(always)]
pub fn usable_backend(id: u32, generation: u32) -> Option<&'static Backend> {
    let backend = BACKENDS.get(id)?;
    let usable = backend.state == BACKEND_ACTIVE || backend.state == BACKEND_DRAINING;
    (usable && backend.generation == generation).then_some(backend)
}

/// A packet without a live flow: a service's, a NAT reply, or the kernel's.
#[inline(always)]
pub fn lookup_service(packet: &Packet) -> Target {
    let key = service_key(packet);
    // SAFETY: values are only replaced whole by the agent (hash-map update), never mutated.
    if let Some(service) = unsafe { SERVICES.get(&key) } {
        return Target::Service(service, None);
    }
    // SAFETY: as above; the data path only rewrites an entry whose flow has ended.
    if let Some(reverse) = unsafe { NAT_REVERSE.get(&packet.key) } {
        return Target::NatReply(reverse);
    }
    Target::Kernel
}

#[inline(always)]
pub fn service_key(packet: &Packet) -> ServiceKey {
    ServiceKey {
        addr: packet.key.dst,
        port: packet.key.dst_port,
        proto: packet.key.proto,
        family: packet.key.family,
    }
}

/// A new flow: the next backend in the service's selection table, recorded in the flow table
/// (any entry of a re-balanced flow is replaced).
#[inline(always)]
pub fn new_flow(
    ctx: &XdpContext,
    packet: &Packet,
    service: &'static Service,
    replaces: Option<Table>,
    fw_epoch: u32,
    clock: &Clock,
) -> Result<Route, Verdict> {
    if service.ring_len == 0 {
        return Err(Verdict::DropNoBackend);
    }
    let cursor = RR_CURSORS
        .get_ptr_mut(service.id)
        .ok_or(Verdict::DropInternal)?;
    // SAFETY: a u64 inside an array map value, valid for the program's run. Shared across CPUs,
    // hence one atomic fetch-and-add (the BPF target has no atomic types with fetch_add, only the
    // intrinsic). SeqCst: LLVM 22 emits a relaxed one without the fetch, and the JIT emits the
    // same `lock xadd` for both.
    let ticket = unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(cursor, 1) };
    let slot = service.ring_offset + (ticket % service.ring_len as u64) as u32;
    let backend_id = *RINGS.get(slot).ok_or(Verdict::DropInternal)?;
    let backend = BACKENDS.get(backend_id).ok_or(Verdict::DropInternal)?;
    // The agent flips tables before it takes a backend out; a stale slot is a lost race.
    if backend.state != BACKEND_ACTIVE {
        return Err(Verdict::DropNoBackend);
    }

    let mut flow = Flow {
        backend_id,
        backend_generation: backend.generation,
        service_id: service.id,
        fw_epoch,
        snat_addr: [0; 4],
        nat_port: 0,
        mode: service.mode,
        flags: if service.packet_rate.is_limited() {
            FLOW_PACKET_RATE
        } else {
            0
        },
        last_seen: clock.now,
        // A SYN opens; any other TCP packet here re-balances a connection whose backend is gone.
        state: if packet.key.proto == PROTO_UDP {
            STATE_UDP
        } else if conntrack::is_syn(packet.tcp_flags) {
            STATE_OPENING
        } else {
            STATE_ESTABLISHED
        },
        _pad: 0,
        _pad2: 0,
    };
    if service.mode == MODE_NAT {
        let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Verdict::DropMalformed)?;
        // SAFETY: bounds checked by `ptr_at`.
        let client_mac = unsafe { (*eth).src_addr };
        let mut reverse = NatReverse {
            client_addr: packet.key.src,
            vip: packet.key.dst,
            client_port: packet.key.src_port,
            vip_port: packet.key.dst_port,
            client_mac,
            _pad: [0; 2],
            service_id: service.id,
            backend_id,
            claim: 0,
        };
        let mut reply_key = FlowKey {
            src: backend.addr,
            dst: service.snat_addr,
            src_port: backend.port,
            // Each port tried is written here by `reserve_nat_port`.
            dst_port: 0,
            proto: packet.key.proto,
            family: packet.key.family,
            _pad: [0; 2],
        };
        let hash = flow_hash(&packet.key);
        flow.nat_port = match reserve_nat_port(service, &mut reverse, &mut reply_key, hash, clock) {
            NO_PORT => {
                if let Some(counters) = SERVICE_STATS.get_ptr_mut(service.id) {
                    // SAFETY: a per-CPU slot: only this CPU writes it while the program runs.
                    unsafe { (*counters).nat_ports_exhausted += 1 };
                }
                return Err(Verdict::DropNatPortsExhausted);
            }
            port => port as u16,
        };
        // The address the port was found on.
        flow.snat_addr = reply_key.dst;
    }
    conntrack::record(&packet.key, &flow, replaces)?;
    Ok(Route {
        service_id: service.id,
        backend_id,
        backend,
        mode: flow.mode,
        snat_addr: flow.snat_addr,
        nat_port: flow.nat_port,
        new_flow: true,
    })
}

/// Claims a source address and port towards the backend of `reply_key` for the client flow
/// `reverse` names; both are left in `reply_key`. A free port is taken by inserting its reverse
/// entry with BPF_NOEXIST; a port whose flow has expired, closed or moved to another port is
/// taken over by a compare-and-swap on the entry's `claim`. Either way two CPUs can never take
/// the same port, and a port is never taken while its flow lives. Tries a few (address, port)
/// pairs derived from the flow's hash; the address changes fastest, so a service with several
/// addresses spreads its flows over all of them.
///
/// Returns the port (network order), or [`NO_PORT`].
#[inline(always)]
fn reserve_nat_port(
    service: &Service,
    reverse: &mut NatReverse,
    reply_key: &mut FlowKey,
    hash: u32,
    clock: &Clock,
) -> u32 {
    let Some(settings) = SETTINGS.get(0) else {
        return NO_PORT;
    };
    let min = settings.nat_port_min as u32;
    let range = (settings.nat_port_max as u32).saturating_sub(min) + 1;
    let addresses = (service.snat_count as u32).clamp(1, MAX_SNAT_ADDRS);
    let pairs = range * addresses;
    // Candidate `attempt`: address `c % addresses`, port `c / addresses` of the range. Checked
    // division: the compiler cannot see these are non-zero, and the panic path it would emit
    // ends the program without an exit, which the verifier refuses.
    // Where the candidates start moves each second: a SYN retransmitted after all were held
    // asks other pairs (with a fixed start it met the same held run again until a flow there
    // ended, so early in a churn a connection could fail for good).
    let start = hash ^ clock.now.wrapping_mul(GOLDEN_RATIO_32);
    let place = |attempt: u32, reply_key: &mut FlowKey| {
        let c = start.wrapping_add(attempt).checked_rem(pairs).unwrap_or(0);
        reply_key.dst_port = ((min + c.checked_div(addresses).unwrap_or(c)) as u16).to_be();
        if addresses > 1 {
            // Written by the agent before the service that counts it; the first stays otherwise.
            let slot = service.id * MAX_SNAT_ADDRS + c.checked_rem(addresses).unwrap_or(0);
            reply_key.dst = match SNAT_ADDRS.get(slot) {
                Some(addr) => *addr,
                None => service.snat_addr,
            };
        }
    };
    for attempt in 0..NAT_PORT_TRIES {
        place(attempt, reply_key);
        if NAT_REVERSE
            .insert(&*reply_key, &*reverse, BPF_NOEXIST as u64)
            .is_ok()
        {
            return reply_key.dst_port as u32;
        }
    }
    // Every pair tried is held: take over some whose flow has ended. Only a few, as each costs
    // flow look-ups (and the verifier walks each one); spread over the run, as held pairs
    // cluster.
    for attempt in 0..NAT_TAKEOVER_TRIES {
        place(attempt * NAT_PORT_TRIES / NAT_TAKEOVER_TRIES, reply_key);
        if take_over(reverse, reply_key, clock) {
            return reply_key.dst_port as u32;
        }
    }
    NO_PORT
}

/// `reserve_nat_port` found no port (ports start at 1).
const NO_PORT: u32 = 0;

/// 2^32 / phi, odd: multiplying by it scatters consecutive seconds over the whole range.
const GOLDEN_RATIO_32: u32 = 0x9E37_79B9;

/// Takes over the port of `reply_key` if its flow has ended (`reserve_nat_port`).
#[inline(always)]
fn take_over(reverse: &mut NatReverse, reply_key: &FlowKey, clock: &Clock) -> bool {
    let Some(held) = NAT_REVERSE.get_ptr_mut(reply_key) else {
        return false;
    };
    // SAFETY: a value of the LRU NAT map, valid while the program runs; read before the flow is
    // judged, so a takeover by another CPU meanwhile makes the swap below fail.
    let claim = unsafe { core::ptr::read_volatile(&(*held).claim) };
    // SAFETY: as above.
    if port_in_use(unsafe { &*held }, reply_key.dst_port, reply_key, clock) {
        return false;
    }
    // SAFETY: as above; an aligned u32. The BPF target has no atomic types, only intrinsics.
    let (_, won) = unsafe {
        atomic_cxchg::<u32, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            &raw mut (*held).claim,
            claim,
            claim.wrapping_add(1),
        )
    };
    if won {
        reverse.claim = claim.wrapping_add(1);
        // SAFETY: as above; the port is ours now. Its old flow has ended, so a reply that reads
        // the entry half-written belongs to nobody.
        unsafe { *held = *reverse };
    }
    won
}

/// Whether the client flow a reverse entry names is alive and still uses this port (the
/// reply's protocol and family are the flow's).
#[inline(always)]
pub fn port_in_use(held: &NatReverse, port: u16, reply_key: &FlowKey, clock: &Clock) -> bool {
    match conntrack::find(&held.client_flow(reply_key.proto, reply_key.family)) {
        Some(entry) => {
            // SAFETY: a value of a flow map, valid while the program runs.
            let flow = unsafe { &*entry.flow };
            conntrack::alive(flow, clock)
                && flow.nat_port == port
                && flow.snat_addr == reply_key.dst
                && flow.backend_id == held.backend_id
        }
        None => false,
    }
}

/// Mixes the client's address and ports (murmur3's finalizer); only spreads NAT ports, so it
/// need not resist attack: a collision just tries the next port. The address is mixed before
/// the ports are folded in: XORed raw, the last two octets of an IPv4 address and the source
/// port cancelled out, so clients on neighbouring addresses using neighbouring ports (a NAT
/// pool, a load generator) shared a few hundred port sequences between thousands of tuples
/// (`lb-bench nat-churn`: 40 connections/s, SYNs dropped for want of a port).
#[inline(always)]
fn flow_hash(key: &FlowKey) -> u32 {
    let address = key.src[0]
        ^ key.src[1].rotate_left(8)
        ^ key.src[2].rotate_left(16)
        ^ key.src[3].rotate_left(24);
    fmix(fmix(address) ^ (((key.src_port as u32) << 16) | key.dst_port as u32))
}

/// murmur3's 32-bit finalizer.
#[inline(always)]
fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85EB_CA6B);
    h ^= h >> 13;
    h = h.wrapping_mul(0xC2B2_AE35);
    h ^ (h >> 16)
}
