//! Each CPU's cache of the DSR flows it forwards, in front of the flow table. The table's
//! lookup (the kernel's jhash of the key, its calls, its key compare) costs as much as the rest
//! of the program; a slot found by a multiplicative hash and one inlined per-CPU array lookup
//! cost a fraction of it. The table stays the truth: a copy is only made from a table entry
//! that passed every check, and serves while nothing that could change the answer has changed:
//! - the backend is still usable and the same generation (read live, as for the table);
//! - the firewall epoch is the one the flow was last checked under;
//! - the cache epoch is unchanged (the agent bumps it when a backend changes state, so a flow
//!   moved off a backend that went down is not sent back by an old copy when it comes up);
//! - the copy is younger than `FLOW_CACHE_REFRESH_JIFFIES`: then the table is asked again, which
//!   also keeps a busy flow young in the table's LRU.
//! Only the data path writes the flow table; user space writing it would have to bump the cache
//! epoch too.
use aya_ebpf::helpers::generated::bpf_jiffies64;
use lb_common::{
    maps::{CachedFlowV4, Firewall, FlowKeyV4, MODE_DSR},
    FLOW_CACHE_REFRESH_JIFFIES, FLOW_CACHE_SLOTS,
};

use crate::{
    balance::{self, Established, Route},
    maps::{FLOW_CACHE_EPOCH, FLOW_CACHE_V4},
};

/// This CPU's slot for a key: looked up once per packet, then read on a hit or written on a miss.
pub struct Slot(*mut CachedFlowV4);

/// The key's slot: the top bits of a multiplicative hash, which every bit of the key reaches.
#[inline(always)]
pub fn slot(key: &FlowKeyV4) -> Option<Slot> {
    let ports = ((key.src_port as u32) << 16) | key.dst_port as u32;
    let mixed = key.src.wrapping_mul(0x9e37_79b1) ^ key.dst ^ ports ^ key.proto;
    let index = mixed.wrapping_mul(0x85eb_ca6b) >> (32 - FLOW_CACHE_SLOTS.trailing_zeros());
    FLOW_CACHE_V4.get_ptr_mut(index).map(Slot)
}

/// The cache epoch, read once per packet and before the flow table: the agent bumps it before
/// it writes a backend, so a copy made from what the table and the backend said afterwards
/// carries an epoch that was current before them, never a later one.
#[inline(always)]
pub fn epoch() -> u32 {
    FLOW_CACHE_EPOCH.get(0).copied().unwrap_or(0)
}

impl Slot {
    /// The route of a DSR flow this CPU forwarded lately, if the slot holds its copy and the
    /// copy still holds (module comment).
    #[inline(always)]
    pub fn lookup(&self, key: &FlowKeyV4, fw: &Firewall, epoch: u32) -> Option<Route> {
        // SAFETY: this CPU's slot, written only by this CPU.
        let entry = unsafe { &*self.0 };
        if entry.key != *key || entry.fw_epoch != fw.epoch || entry.epoch != epoch {
            return None;
        }
        // SAFETY: a helper without arguments; the verifier inlines it into one load.
        let now = unsafe { bpf_jiffies64() };
        if now.wrapping_sub(entry.copied_at) >= FLOW_CACHE_REFRESH_JIFFIES {
            return None;
        }
        let backend = balance::usable_backend(entry.backend_id, entry.backend_generation)?;
        Some(Route {
            service_id: entry.service_id,
            backend_id: entry.backend_id,
            backend,
            mode: MODE_DSR,
            snat_addr: [0; 4],
            nat_port: 0,
            new_flow: false,
        })
    }

    /// Drops this CPU's copy of the key's flow: a packet that may change the flow's state (a SYN
    /// reopening it, a FIN or RST ending it) goes to the table, and later ones must follow.
    #[inline(always)]
    pub fn forget(&self, key: &FlowKeyV4) {
        // SAFETY: as in `lookup`.
        let entry = unsafe { &mut *self.0 };
        if entry.key == *key {
            // No flow has protocol 0: the copy can never match again.
            entry.key.proto = 0;
        }
    }

    /// Copies a DSR flow's table entry, which passed every check, into the slot.
    #[inline(always)]
    pub fn remember(&self, key: &FlowKeyV4, flow: &Established, epoch: u32) {
        let table = flow.flow();
        // SAFETY: as in `lookup`; a whole-value store.
        unsafe {
            *self.0 = CachedFlowV4 {
                key: *key,
                backend_id: table.backend_id,
                backend_generation: table.backend_generation,
                service_id: table.service_id,
                fw_epoch: table.fw_epoch,
                epoch,
                _pad: 0,
                copied_at: bpf_jiffies64(),
            }
        };
    }
}
