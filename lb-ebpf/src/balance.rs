//! Service lookup and backend choice: the flow table first, so a flow sticks to its backend;
//! for a new flow, the next slot of the service's selection table by an atomic cursor.
use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{bindings::BPF_NOEXIST, programs::XdpContext};
use network_types::eth::EthHdr;

use lb_common::{
    maps::{
        Backend, Flow, FlowKey, NatReverse, Service, ServiceKey, Verdict, BACKEND_ACTIVE,
        BACKEND_DRAINING, MODE_NAT,
    },
    NAT_PORT_TRIES,
};

use crate::{
    maps::{BACKENDS, FLOWS, NAT_REVERSE, RINGS, RR_CURSORS, SERVICES, SETTINGS},
    parse::{ptr_at, Packet},
};

/// Where a parsed packet belongs.
pub enum Target {
    Service(&'static Service),
    NatReply(&'static NatReverse),
    Kernel,
}

/// The backend a packet goes to.
pub struct Chosen {
    pub backend_id: u32,
    pub backend: &'static Backend,
    /// NAT mode: the source port towards the backend (network order).
    pub nat_port: u16,
    pub new_flow: bool,
}

#[inline(always)]
pub fn lookup(packet: &Packet) -> Target {
    let key = ServiceKey {
        addr: packet.key.dst,
        port: packet.key.dst_port,
        proto: packet.key.proto,
        family: packet.key.family,
    };
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

/// Backend of an existing flow if it may still serve it, else a new one from the table.
#[inline(always)]
pub fn choose_backend(
    ctx: &XdpContext,
    packet: &Packet,
    service: &Service,
) -> Result<Chosen, Verdict> {
    // SAFETY: flow values are replaced whole, never partly written.
    if let Some(flow) = unsafe { FLOWS.get(&packet.key) } {
        if let Some(backend) = BACKENDS.get(flow.backend_id) {
            let usable = backend.state == BACKEND_ACTIVE || backend.state == BACKEND_DRAINING;
            if usable && backend.generation == flow.backend_generation {
                return Ok(Chosen {
                    backend_id: flow.backend_id,
                    backend,
                    nat_port: flow.nat_port,
                    new_flow: false,
                });
            }
        }
        // The backend is down or gone: fall through and re-balance this flow.
    }
    new_flow(ctx, packet, service)
}

#[inline(always)]
fn new_flow(ctx: &XdpContext, packet: &Packet, service: &Service) -> Result<Chosen, Verdict> {
    if service.ring_len == 0 {
        return Err(Verdict::DropNoBackend);
    }
    let cursor = RR_CURSORS.get_ptr_mut(service.id).ok_or(Verdict::DropInternal)?;
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
        nat_port: 0,
        client_mac: [0; 6],
    };
    if service.mode == MODE_NAT {
        let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Verdict::DropMalformed)?;
        // SAFETY: bounds checked by `ptr_at`.
        flow.client_mac = unsafe { (*eth).src_addr };
        flow.nat_port = reserve_nat_port(packet, service, backend_id, backend, flow.client_mac)?;
    }
    // Any existing entry (a re-balanced flow) is replaced.
    FLOWS.insert(&packet.key, &flow, 0).map_err(|_| Verdict::DropInternal)?;
    Ok(Chosen { backend_id, backend, nat_port: flow.nat_port, new_flow: true })
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
        if NAT_REVERSE.insert(&reply_key, &reverse, BPF_NOEXIST as u64).is_ok() {
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
