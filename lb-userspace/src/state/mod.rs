//! The agent's shared state: what `lb run` owns while it runs, and the reads of it that the API,
//! `/metrics` and the main loop make. The changes made to it live in the submodules, one
//! concern each.
pub mod changes;
pub(crate) mod db_watch;
mod health_tasks;
pub mod lifecycle;
pub(crate) mod reload;
pub(crate) mod upkeep;

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Result;
use lb_common::maps::RuleCounters;
use tokio::task::AbortHandle;

use crate::{
    check_metrics::CheckMetrics,
    config::Config,
    dataplane::{Attached, Dataplane, NatPortCount},
    db,
    firewall::{RuleActivity, RuleSet},
    health::Tracker,
    services::{self, BackendState, ServiceEntry, ServiceTable},
    sizing,
};

pub type SharedState = Arc<Mutex<AgentState>>;

/// Locks the state; a panic elsewhere while holding it leaves data that is still consistent
/// enough to serve (every change is written to the maps before it is recorded).
pub fn lock(state: &SharedState) -> MutexGuard<'_, AgentState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The operator's choice for a backend, independent of its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    Enabled,
    /// No new flows; existing ones finish.
    Draining,
}

/// What the agent knows about a backend beyond its map entry.
#[derive(Debug, Clone)]
pub struct BackendRuntime {
    /// The backend id's generation this belongs to (ids are reused with a new generation).
    pub generation: u32,
    pub admin: AdminState,
    /// `None` when the service has no health check.
    pub health: Option<HealthStatus>,
    /// Database services only: whether the node's role belongs behind this VIP (the primary
    /// for writes, healthy replicas for reads); `None` for other services.
    pub role_up: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct HealthStatus {
    pub kind: &'static str,
    pub tracker: Tracker,
    pub checks: u64,
    pub failures: u64,
    /// What the last check saw (`Ok`) or why it failed (`Err`).
    pub last: Option<Result<String, String>>,
    pub last_latency: Option<Duration>,
    pub since: SystemTime,
}

impl HealthStatus {
    pub(crate) fn new(kind: &'static str, tracker: Tracker) -> Self {
        Self {
            kind,
            tracker,
            checks: 0,
            failures: 0,
            last: None,
            last_latency: None,
            since: SystemTime::now(),
        }
    }
}

/// The running health-check task of a backend id.
struct Checker {
    /// Distinguishes this task from an aborted predecessor still holding an outcome.
    token: u64,
    task: AbortHandle,
}

/// The outcome of the last reload.
#[derive(Debug, Clone)]
pub struct ReloadRecord {
    pub at: SystemTime,
    pub ok: bool,
    pub message: String,
}

/// Everything `lb run` owns while it runs. Shared as [`SharedState`] by the API handlers, the
/// health-check tasks and the main loop; nobody awaits while holding the lock.
pub struct AgentState {
    me: Weak<Mutex<AgentState>>,
    dataplane: Dataplane,
    table: ServiceTable,
    config: Config,
    pub config_path: PathBuf,
    pub iface: String,
    ifindex: u32,
    pub pin_dir: PathBuf,
    pub attached: Option<Attached>,
    /// The maps (and flows) were adopted from an earlier agent.
    pub adopted: bool,
    pub started: SystemTime,
    pub api_bind: SocketAddr,
    /// Bearer token for writes; `None` refuses every write.
    pub token: Option<String>,
    backends: HashMap<u32, BackendRuntime>,
    checkers: HashMap<u32, Checker>,
    next_token: u64,
    pub metrics: CheckMetrics,
    pub reloads: u64,
    pub last_reload: Option<ReloadRecord>,
    /// The firewall rules in force (ids index the data path's rule counters).
    pub rules: RuleSet,
    /// Names of the rules added through the API (they last until the next reload or restart).
    pub runtime_rules: Vec<String>,
    /// When each rule last matched (the data path only counts).
    rule_activity: RuleActivity,
    /// The database cluster as the last round saw it (`[database]` only).
    pub database: Option<db::DatabaseStatus>,
    database_watch: Option<Checker>,
    /// What the watch knows that a reload must not reset (handed to the next watch).
    database_memory: Option<db::Memory>,
    /// Operator commands to the running watch (`lb db promote`).
    database_commands: Option<tokio::sync::mpsc::Sender<db::Command>>,
    /// The interface's addresses as last written to `HOST_ADDRS` (the VIPs are there too).
    pub host_addrs: Vec<IpAddr>,
    /// The last count of the NAT ports in use, written by the thread that counts them.
    pub nat_ports: Arc<Mutex<Option<NatPortSample>>>,
}

/// The NAT source ports of a service towards its backends, as the agent knows them now.
#[derive(Debug, Clone)]
pub struct NatPortUse {
    /// Ports held by live flows, as last counted; `None` before the first count.
    pub in_use: Option<u64>,
    /// `agent.nat_port_min..=nat_port_max` towards each backend, once per SNAT address.
    pub available: u64,
    pub snat_addresses: Vec<IpAddr>,
    /// New flows dropped because none of the ports they tried was free.
    pub exhausted_drops: u64,
    /// False when the last count stopped at its time budget: `in_use` is then a lower bound.
    pub complete: bool,
    /// How long ago the last count was made.
    pub counted_ago: Option<Duration>,
}

/// A count of the NAT ports in use and when it was made.
#[derive(Debug, Clone)]
pub struct NatPortSample {
    pub count: NatPortCount,
    pub at: Instant,
}

impl AgentState {
    pub fn services(&self) -> &[ServiceEntry] {
        &self.table.services
    }

    pub fn service(&self, name: &str) -> Option<&ServiceEntry> {
        self.table.services.iter().find(|s| s.name == name)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn dataplane(&self) -> &Dataplane {
        &self.dataplane
    }

    /// The kernel memory of every map, and the sizes the running config wants.
    pub fn map_memory(&self) -> Result<sizing::MemoryReport> {
        self.dataplane.map_memory(
            &self.config.map_sizes(),
            self.config.agent.map_memory_budget_bytes(),
        )
    }

    pub fn runtime(&self, backend_id: u32) -> Option<&BackendRuntime> {
        self.backends.get(&backend_id)
    }

    /// The state the data path is given for a backend (before the MAC rule: a backend without
    /// a resolved MAC is written as down).
    pub fn effective_state(&self, backend_id: u32) -> BackendState {
        match self.backends.get(&backend_id) {
            Some(runtime) if runtime.health.as_ref().is_some_and(|h| !h.tracker.up) => {
                BackendState::Down
            }
            Some(runtime) if runtime.role_up == Some(false) => BackendState::Standby,
            Some(runtime) if runtime.admin == AdminState::Draining => BackendState::Draining,
            _ => BackendState::Active,
        }
    }

    /// Writes service `index` with every backend's effective state.
    fn program_service(&mut self, index: usize) -> Result<()> {
        let states: Vec<BackendState> = self.table.services[index]
            .backends
            .iter()
            .map(|b| self.effective_state(b.id))
            .collect();
        let service = &mut self.table.services[index];
        for (backend, state) in service.backends.iter_mut().zip(states) {
            backend.state = state;
        }
        services::program_service(&mut self.dataplane, service)
    }

    /// Every rule with its counters and when it last matched, as of now. Called every second,
    /// so that a last hit is dated even when nobody asks.
    /// The result is in the order of `self.rules.rules`.
    pub fn sample_rules(&mut self) -> Result<Vec<(RuleCounters, Option<Instant>)>> {
        let now = Instant::now();
        let mut sampled = Vec::with_capacity(self.rules.rules.len());
        for rule in &self.rules.rules {
            let counters = self.dataplane.rule_counters(rule.id)?;
            let last_hit = self.rule_activity.observe(rule, counters.packets, now);
            sampled.push((counters, last_hit));
        }
        self.rule_activity.retain(&self.rules.rules);
        Ok(sampled)
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed().unwrap_or_default()
    }

    /// The NAT figures of a service (`None` in DSR mode): ports in use as last counted, ports
    /// available (`agent.nat_port_min..=nat_port_max` towards each of its backends from its
    /// one SNAT address), and new flows dropped for want of a port (`counters` are the
    /// service's).
    pub fn nat_ports(
        &self,
        service: &ServiceEntry,
        counters: &lb_common::maps::Counters,
    ) -> Option<NatPortUse> {
        let available = service.nat_ports_available(
            self.config.agent.nat_port_min,
            self.config.agent.nat_port_max,
        )?;
        let sample = self
            .nat_ports
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        Some(NatPortUse {
            in_use: sample
                .as_ref()
                .map(|s| s.count.in_use.get(&service.id).copied().unwrap_or(0)),
            available,
            snat_addresses: service.snat.clone(),
            exhausted_drops: counters.nat_ports_exhausted,
            complete: sample.as_ref().is_some_and(|s| s.count.complete),
            counted_ago: sample.map(|s| s.at.elapsed()),
        })
    }
}
