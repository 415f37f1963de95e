//! Where a packet goes. The flow table first: a known flow whose backend may still serve it is
//! decided by that one lookup. Otherwise the service: a new flow takes the next slot of the
//! service's selection table through an atomic cursor. Otherwise a NAT reply, or the kernel.
use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{bindings::BPF_NOEXIST, programs::XdpContext};
use network_types::eth::EthHdr;

use lb_common::{
    maps::{
        Backend, Flow, FlowKey, FlowKeyV4, NatReverse, Service, ServiceKey, Verdict,
        BACKEND_ACTIVE, BACKEND_DRAINING, FAMILY_V4, FLOW_PACKET_RATE, MODE_NAT,
    },
    NAT_PORT_TRIES,
};

use crate::{
    maps::{BACKENDS, FLOWS_V4, FLOWS_V6, NAT_REVERSE, RINGS, RR_CURSORS, SERVICES, SETTINGS},
    parse::{ptr_at, Packet},
};

/// Where a parsed packet belongs.
pub enum Target {
    /// A known flow whose backend may still serve it.
    Established(Established),
    /// A new flow of this service, or one whose backend is gone.
    Service(&'static Service),
    NatReply(&'static NatReverse),
    Kernel,
}

/// A flow-table entry and its (still usable) backend.
pub struct Established {
    flow: *mut Flow,
    pub backend: &'static Backend,
}

impl Established {
    #[inline(always)]
    pub fn flow(&self) -> &Flow {
        // SAFETY: a value of the LRU flow map, valid while the program runs.
        unsafe { &*self.flow }
    }

    /// Records that the flow passed the firewall's current rules.
    #[inline(always)]
    pub fn set_fw_epoch(&self, epoch: u32) {
        // SAFETY: as above; one aligned u32 store, a racing CPU writes the same value.
        unsafe { (*self.flow).fw_epoch = epoch };
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

#[inline(always)]
pub fn lookup(packet: &Packet) -> Target {
    let flow = if packet.key.family == FAMILY_V4 {
        FLOWS_V4.get_ptr_mut(&FlowKeyV4::from_flow(&packet.key))
    } else {
        FLOWS_V6.get_ptr_mut(&packet.key)
    };
    match established(flow) {
        Some(flow) => Target::Established(flow),
        None => lookup_service(packet),
    }
}

/// The flow-table entry of the common IPv4 case, if its backend may still serve it.
#[inline(always)]
pub fn established_v4(key: &FlowKeyV4) -> Option<Established> {
    established(FLOWS_V4.get_ptr_mut(key))
}

#[inline(always)]
fn established(flow: Option<*mut Flow>) -> Option<Established> {
    let flow = flow?;
    // SAFETY: a value of the LRU flow map, valid while the program runs.
    let entry = unsafe { &*flow };
    let backend = usable_backend(entry.backend_id, entry.backend_generation)?;
    Some(Established { flow, backend })
}

/// The backend a flow began on, if it may still serve it. Otherwise the backend is down or
/// gone (its id given to another): the service re-balances the flow.
#[inline(always)]
pub fn usable_backend(id: u32, generation: u32) -> Option<&'static Backend> {
    let backend = BACKENDS.get(id)?;
    let usable = backend.state == BACKEND_ACTIVE || backend.state == BACKEND_DRAINING;
    (usable && backend.generation == generation).then_some(backend)
}

/// A packet without a usable flow: a service's (new flow), a NAT reply, or the kernel's.
#[inline(always)]
pub fn lookup_service(packet: &Packet) -> Target {
    let key = service_key(packet);
    // SAFETY: values are only replaced whole by the agent (hash-map update), never mutated.
    if let Some(service) = unsafe { SERVICES.get(&key) } {
        return Target::Service(service);
    }
    // SAFETY: as above; the data path inserts these with BPF_NOEXIST and never mutates them.
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
    fw_epoch: u32,
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
    };
    if service.mode == MODE_NAT {
        let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Verdict::DropMalformed)?;
        // SAFETY: bounds checked by `ptr_at`.
        let client_mac = unsafe { (*eth).src_addr };
        flow.snat_addr = service.snat_addr;
        flow.nat_port = reserve_nat_port(packet, service, backend_id, backend, client_mac)?;
    }
    let inserted = if packet.key.family == FAMILY_V4 {
        FLOWS_V4.insert(&FlowKeyV4::from_flow(&packet.key), &flow, 0)
    } else {
        FLOWS_V6.insert(&packet.key, &flow, 0)
    };
    inserted.map_err(|_| Verdict::DropInternal)?;
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

/// Claims a source port towards `backend` for this client flow by inserting the reverse entry
/// with BPF_NOEXIST, so two CPUs can never hand out the same port. Tries a few ports derived
/// from the flow's hash; a port already held by this very flow is reused.
#[inline(always)]
fn reserve_nat_port(
    packet: &Packet,
    service: &Service,
    backend_id: u32,
    backend: &Backend,
    client_mac: [u8; 6],
) -> Result<u16, Verdict> {
    let settings = SETTINGS.get(0).ok_or(Verdict::DropInternal)?;
    let min = settings.nat_port_min as u32;
    let range = (settings.nat_port_max as u32).saturating_sub(min) + 1;
    let reverse = NatReverse {
        client_addr: packet.key.src,
        vip: packet.key.dst,
        client_port: packet.key.src_port,
        vip_port: packet.key.dst_port,
        client_mac,
        _pad: [0; 2],
        service_id: service.id,
        backend_id,
    };
    let mut reply_key = FlowKey {
        src: backend.addr,
        dst: service.snat_addr,
        src_port: backend.port,
        dst_port: 0,
        proto: packet.key.proto,
        family: packet.key.family,
        _pad: [0; 2],
    };
    let hash = flow_hash(&packet.key);
    for attempt in 0..NAT_PORT_TRIES {
        let port = ((min + (hash.wrapping_add(attempt)) % range) as u16).to_be();
        reply_key.dst_port = port;
        if NAT_REVERSE
            .insert(&reply_key, &reverse, BPF_NOEXIST as u64)
            .is_ok()
        {
            return Ok(port);
        }
        // SAFETY: read-only look at an entry the data path never mutates.
        if let Some(held) = unsafe { NAT_REVERSE.get(&reply_key) } {
            if held.client_addr == reverse.client_addr
                && held.client_port == reverse.client_port
                && held.vip == reverse.vip
                && held.vip_port == reverse.vip_port
            {
                return Ok(port);
            }
        }
    }
    Err(Verdict::DropNatPortsExhausted)
}

/// Mixes the client's address and ports (murmur3's finalizer); only spreads NAT ports, so it
/// need not resist attack: a collision just tries the next port.
#[inline(always)]
fn flow_hash(key: &FlowKey) -> u32 {
    let mut h = key.src[0] ^ key.src[1] ^ key.src[2] ^ key.src[3];
    h ^= ((key.src_port as u32) << 16) | key.dst_port as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85EB_CA6B);
    h ^= h >> 13;
    h = h.wrapping_mul(0xC2B2_AE35);
    h ^ (h >> 16)
}
