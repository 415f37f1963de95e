//! Per-CPU counters: no atomics and no sharing on the hot path; the agent sums the CPUs.
use lb_common::maps::{Counters, Verdict};

use crate::{
    balance::Route,
    maps::{BACKEND_STATS, SERVICE_STATS, VERDICT_STATS},
};

#[inline(always)]
fn bump(counters: Option<*mut Counters>, bytes: u64, new_flow: bool) {
    if let Some(counters) = counters {
        // SAFETY: a per-CPU slot: only this CPU writes it while the program runs.
        let counters = unsafe { &mut *counters };
        counters.packets += 1;
        counters.bytes += bytes;
        counters.new_flows += new_flow as u64;
    }
}

#[inline(always)]
pub fn count_verdict(verdict: Verdict, bytes: u64) {
    bump(VERDICT_STATS.get_ptr_mut(verdict as u32), bytes, false);
}

#[inline(always)]
pub fn count_service(service_id: u32, bytes: u64, new_flow: bool) {
    bump(SERVICE_STATS.get_ptr_mut(service_id), bytes, new_flow);
}

#[inline(always)]
pub fn count_backend(backend_id: u32, bytes: u64, new_flow: bool) {
    bump(BACKEND_STATS.get_ptr_mut(backend_id), bytes, new_flow);
}

/// A packet forwarded to a backend: its service's and its backend's counters.
#[inline(always)]
pub fn count_forward(route: &Route, len: usize) {
    count_service(route.service_id, len as u64, route.new_flow);
    count_backend(route.backend_id, len as u64, route.new_flow);
}
