//! The health-check tasks, one per checked backend, and the backend states their outcomes set.
use std::{collections::HashMap, time::SystemTime};

use log::{info, warn};

use crate::health::{self, Check};

use super::{lock, AgentState, Checker, HealthStatus};

impl AgentState {
    /// Spawns one health-check task per backend that has a check. `checks` is keyed by
    /// (service, backend) name.
    pub(super) fn start_checkers(&mut self, checks: HashMap<(String, String), Check>) {
        let mut by_id = Vec::new();
        for service in &self.table.services {
            for backend in &service.backends {
                if let Some(check) = checks.get(&(service.name.clone(), backend.name.clone())) {
                    by_id.push((backend.id, check.clone()));
                }
            }
        }
        for (id, check) in by_id {
            self.start_checker(id, check);
        }
        let checked: std::collections::HashSet<u32> = self.checkers.keys().copied().collect();
        for (id, runtime) in &mut self.backends {
            if !checked.contains(id) {
                runtime.health = None;
            }
        }
    }

    pub(super) fn start_checker(&mut self, id: u32, check: Check) {
        if let Some(old) = self.checkers.remove(&id) {
            old.task.abort();
        }
        if let Some(runtime) = self.backends.get_mut(&id) {
            // What is known (up or down) is kept; rise and fall come from the (new) check.
            let up = runtime.health.as_ref().is_none_or(|h| h.tracker.up);
            let status = runtime
                .health
                .get_or_insert_with(|| HealthStatus::new(check.kind(), check.tracker(up)));
            status.tracker = check.tracker(up);
            status.kind = check.kind();
        }
        self.next_token += 1;
        let token = self.next_token;
        let me = self.me.clone();
        let task = tokio::spawn(health::run_checker(check, move |outcome| {
            let Some(shared) = me.upgrade() else {
                return false;
            };
            let mut agent = lock(&shared);
            agent.record_check(id, token, outcome)
        }));
        self.checkers.insert(
            id,
            Checker {
                token,
                task: task.abort_handle(),
            },
        );
    }

    pub(super) fn stop_checker(&mut self, id: u32) {
        if let Some(checker) = self.checkers.remove(&id) {
            checker.task.abort();
        }
    }

    pub(super) fn stop_checkers(&mut self) {
        for (_, checker) in self.checkers.drain() {
            checker.task.abort();
        }
    }

    /// Applies one check outcome; false tells a task whose backend or check is gone to stop.
    fn record_check(&mut self, id: u32, token: u64, outcome: health::Outcome) -> bool {
        if self.checkers.get(&id).map(|c| c.token) != Some(token) {
            return false;
        }
        let Some(index) = self
            .table
            .services
            .iter()
            .position(|s| s.backends.iter().any(|b| b.id == id))
        else {
            return false;
        };
        let service_name = self.table.services[index].name.clone();
        let backend_name = self.table.services[index]
            .backends
            .iter()
            .find(|b| b.id == id)
            .map(|b| b.name.clone())
            .unwrap_or_default();
        self.metrics.observe_check(
            &service_name,
            &backend_name,
            outcome.latency,
            outcome.result.is_ok(),
        );
        let Some(status) = self.backends.get_mut(&id).and_then(|r| r.health.as_mut()) else {
            return false;
        };
        status.checks += 1;
        status.last_latency = Some(outcome.latency);
        let ok = outcome.result.is_ok();
        if !ok {
            status.failures += 1;
        }
        status.last = Some(outcome.result.map_err(|e| format!("{e:#}")));
        let Some(up) = status.tracker.record(ok) else {
            return true;
        };
        status.since = SystemTime::now();
        let detail = match &status.last {
            Some(Ok(seen)) => seen.clone(),
            Some(Err(why)) => why.clone(),
            None => String::new(),
        };
        if up {
            info!(
                "service {service_name} backend {backend_name}: up after {} good checks ({detail})",
                status.tracker.rise
            );
        } else {
            warn!("service {service_name} backend {backend_name}: down after {} failed checks ({detail}); out of rotation", status.tracker.fall);
        }
        if let Err(e) = self.program_service(index) {
            warn!("service {service_name}: writing the new backend state failed: {e:#}");
        }
        true
    }
}
