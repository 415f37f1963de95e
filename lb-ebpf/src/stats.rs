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

/// A packet forwarded to a backend: its service's and its backend's counters.
#[inline(always)]
pub fn count_forward(route: &Route, len: usize) {
    count_service_and_backend(route.service_id, route.backend_id, len, route.new_flow);
}

/// Every packet of a service's flow counts for the service and for the backend, both ways.
#[inline(always)]
pub fn count_service_and_backend(service_id: u32, backend_id: u32, len: usize, new_flow: bool) {
    bump(SERVICE_STATS.get_ptr_mut(service_id), len as u64, new_flow);
    bump(BACKEND_STATS.get_ptr_mut(backend_id), len as u64, new_flow);
}
