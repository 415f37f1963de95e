//! The life of a flow: how long each state may stay idle, what a packet does to its flow's
//! state, and which table each state lives in.
//!
//! - A TCP SYN opens a flow in `UNVERIFIED_FLOWS` (`STATE_OPENING`); so does a UDP datagram
//!   (`STATE_UDP`, for its whole life). Anyone can create these with a forged source, so they
//!   live apart and can only evict each other.
//! - The client's first ACK after its SYN moves the flow to `FLOWS_V4` / `FLOWS_V6`
//!   (`STATE_ESTABLISHED`): only there do connections live, and no forged packet creates an
//!   entry there without first opening one (rate-limited) in `UNVERIFIED_FLOWS`.
//! - A FIN or RST (from the client; in NAT mode from the backend too) makes it `STATE_CLOSING`;
//!   a SYN on a closing flow's addresses and ports is a new connection.
//! - A flow idle for longer than its state's timeout is gone for every purpose, whether or not
//!   the LRU has evicted it yet: its NAT port may be taken over, and its next SYN is balanced
//!   afresh. Nothing sweeps the tables: an LRU evicts what is never looked up again.
use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;
use lb_common::maps::{
    flow_clock, Flow, FlowKey, FlowKeyV4, FlowTimeouts, Verdict, FAMILY_V4, PROTO_TCP,
    STATE_CLOSING, STATE_ESTABLISHED, STATE_OPENING,
};

use crate::{
    maps::{FLOWS_V4, FLOWS_V6, SETTINGS, UNVERIFIED_FLOWS},
    parse::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// Now on the flow clock, and the idle limits: read once per packet that needs them.
pub struct Clock {
    pub now: u32,
    pub timeouts: &'static FlowTimeouts,
}

#[inline(always)]
pub fn clock() -> Result<Clock, Verdict> {
    let settings = SETTINGS.get(0).ok_or(Verdict::DropInternal)?;
    let now = if settings.test_clock != 0 {
        settings.test_clock
    } else {
        // SAFETY: a helper without arguments (the coarse clock: no hardware read).
        flow_clock(unsafe { bpf_ktime_get_coarse_ns() })
    };
    Ok(Clock {
        now,
        timeouts: &settings.timeouts,
    })
}

/// Which table a flow entry was found in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `FLOWS_V4` / `FLOWS_V6`: connections past their handshake.
    Verified,
    /// `UNVERIFIED_FLOWS`: TCP before the handshake completes, and UDP.
    Unverified,
}

/// A flow entry in one of the tables.
#[derive(Clone, Copy)]
pub struct Entry {
    pub flow: *mut Flow,
    pub table: Table,
}

/// The flow of `key`: a TCP connection first, then the unverified flows (UDP only has those).
#[inline(always)]
pub fn find(key: &FlowKey) -> Option<Entry> {
    find_connection(key).or_else(|| find_unverified(key))
}

/// The TCP connection of `key`, past its handshake.
#[inline(always)]
pub fn find_connection(key: &FlowKey) -> Option<Entry> {
    if key.proto != PROTO_TCP {
        return None;
    }
    let flow = if key.family == FAMILY_V4 {
        FLOWS_V4.get_ptr_mut(&FlowKeyV4::from_flow(key))
    } else {
        FLOWS_V6.get_ptr_mut(key)
    }?;
    Some(Entry {
        flow,
        table: Table::Verified,
    })
}

/// The flow of `key` among the unverified ones.
#[inline(always)]
pub fn find_unverified(key: &FlowKey) -> Option<Entry> {
    UNVERIFIED_FLOWS.get_ptr_mut(key).map(|flow| Entry {
        flow,
        table: Table::Unverified,
    })
}

/// The flow has not been idle for longer than its state allows.
#[inline(always)]
pub fn alive(flow: &Flow, clock: &Clock) -> bool {
    clock.now.wrapping_sub(flow.last_seen) <= clock.timeouts.of(flow.state)
}

/// A SYN (without ACK) on a closing flow is the client's next connection on the same ports.
#[inline(always)]
pub fn reopens(flow: &Flow, tcp_flags: u8) -> bool {
    flow.state == STATE_CLOSING && is_syn(tcp_flags)
}

#[inline(always)]
pub fn is_syn(tcp_flags: u8) -> bool {
    tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// A packet that cannot change its flow's state (no SYN, FIN or RST; UDP has no flags): the
/// only kind the per-CPU flow cache serves.
#[inline(always)]
pub fn keeps_state(tcp_flags: u8) -> bool {
    tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0
}

/// Stamps the flow as seen now: one write per flow per second at most.
#[inline(always)]
pub fn touch(flow: *mut Flow, clock: &Clock) {
    // SAFETY: a value of a flow map, valid while the program runs; one aligned u32 store, and
    // a racing CPU writes the same second.
    unsafe {
        if (*flow).last_seen != clock.now {
            (*flow).last_seen = clock.now;
        }
    }
}

/// The state after a client packet with `tcp_flags` (TCP flows only).
#[inline(always)]
pub fn next_state(state: u8, tcp_flags: u8) -> u8 {
    if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        STATE_CLOSING
    } else if state == STATE_OPENING && tcp_flags & TCP_ACK != 0 {
        STATE_ESTABLISHED
    } else {
        state
    }
}

/// A client packet of a live flow: stamps it, moves it along its states, and moves a flow
/// whose handshake just completed from the unverified flows to the connections.
#[inline(always)]
pub fn advance(key: &FlowKey, entry: &Entry, tcp_flags: u8, clock: &Clock) {
    touch(entry.flow, clock);
    if key.proto != PROTO_TCP {
        return;
    }
    // SAFETY: as in `touch`.
    let flow = unsafe { &mut *entry.flow };
    let state = next_state(flow.state, tcp_flags);
    if state == flow.state {
        return;
    }
    if entry.table == Table::Unverified && tcp_flags & TCP_ACK != 0 {
        // The handshake completed: the flow becomes a connection. A racing CPU moving the same
        // flow writes the same value, and one of the two removals finds nothing.
        let mut moved = *flow;
        moved.state = state;
        let inserted = if key.family == FAMILY_V4 {
            FLOWS_V4.insert(&FlowKeyV4::from_flow(key), &moved, 0)
        } else {
            FLOWS_V6.insert(key, &moved, 0)
        };
        if inserted.is_ok() {
            let _ = UNVERIFIED_FLOWS.remove(key);
            return;
        }
    }
    flow.state = state;
}

/// Records a new flow in the table of its state, and removes a dead or closing entry of the
/// same addresses and ports from the other table, so that later packets find only this one.
#[inline(always)]
pub fn record(key: &FlowKey, flow: &Flow, replaced: Option<Table>) -> Result<(), Verdict> {
    let verified = flow.state == STATE_ESTABLISHED || flow.state == STATE_CLOSING;
    let inserted = if !verified {
        if replaced == Some(Table::Verified) {
            remove_verified(key);
        }
        UNVERIFIED_FLOWS.insert(key, flow, 0)
    } else {
        if replaced == Some(Table::Unverified) {
            let _ = UNVERIFIED_FLOWS.remove(key);
        }
        if key.family == FAMILY_V4 {
            FLOWS_V4.insert(&FlowKeyV4::from_flow(key), flow, 0)
        } else {
            FLOWS_V6.insert(key, flow, 0)
        }
    };
    inserted.map_err(|_| Verdict::DropInternal)
}

#[inline(always)]
fn remove_verified(key: &FlowKey) {
    let _ = if key.family == FAMILY_V4 {
        FLOWS_V4.remove(&FlowKeyV4::from_flow(key))
    } else {
        FLOWS_V6.remove(key)
    };
}

/// A FIN or RST from a NAT backend ends the client flow it answers; its closing time starts
/// now (an idle connection closed by its backend must not expire at once).
#[inline(always)]
pub fn backend_closes(client_key: &FlowKey, nat_port: u16, tcp_flags: u8, clock: &Clock) {
    if tcp_flags & (TCP_FIN | TCP_RST) == 0 {
        return;
    }
    if let Some(entry) = find(client_key) {
        // SAFETY: a value of a flow map, valid while the program runs; aligned stores.
        unsafe {
            if (*entry.flow).nat_port == nat_port {
                (*entry.flow).state = STATE_CLOSING;
                (*entry.flow).last_seen = clock.now;
            }
        }
    }
}
