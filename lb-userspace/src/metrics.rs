//! Prometheus `/metrics` (prometheus-client): traffic per service, backend and verdict read
//! from the data path's counters at scrape time, backend health, and health-check latency
//! recorded as checks run (in `check_metrics`).
use anyhow::{Context as _, Result};
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{services::BackendState, state::AgentState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    service: String,
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DatabaseRoleLabels {
    node: String,
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DatabaseNodeLabels {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendStateLabels {
    service: String,
    backend: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    verdict: String,
}

/// The Prometheus text exposition of everything the agent knows now.
pub fn render(agent: &AgentState) -> Result<String> {
    let mut registry = Registry::with_prefix("lb");
    let dataplane = agent.dataplane();

    let service_packets = Family::<ServiceLabels, Counter>::default();
    let service_bytes = Family::<ServiceLabels, Counter>::default();
    let service_flows = Family::<ServiceLabels, Counter>::default();
    let backend_packets = Family::<BackendLabels, Counter>::default();
    let backend_bytes = Family::<BackendLabels, Counter>::default();
    let backend_flows = Family::<BackendLabels, Counter>::default();
    let backend_state = Family::<BackendStateLabels, Gauge>::default();
    let backend_healthy = Family::<BackendLabels, Gauge>::default();
    let nat_in_use = Family::<ServiceLabels, Gauge>::default();
    let nat_available = Family::<ServiceLabels, Gauge>::default();
    let nat_exhausted = Family::<ServiceLabels, Counter>::default();
    for service in agent.services() {
        let labels = ServiceLabels {
            service: service.name.clone(),
        };
        let counters = dataplane.service_counters(service.id)?;
        if let Some(nat) = agent.nat_ports(service, &counters) {
            if let Some(in_use) = nat.in_use {
                nat_in_use
                    .get_or_create(&labels)
                    .set(i64::try_from(in_use).unwrap_or(i64::MAX));
            }
            nat_available
                .get_or_create(&labels)
                .set(i64::try_from(nat.available).unwrap_or(i64::MAX));
            nat_exhausted
                .get_or_create(&labels)
                .inc_by(nat.exhausted_drops);
        }
        service_packets
            .get_or_create(&labels)
            .inc_by(counters.packets);
        service_bytes.get_or_create(&labels).inc_by(counters.bytes);
        service_flows
            .get_or_create(&labels)
            .inc_by(counters.new_flows);
        for backend in &service.backends {
            let labels = BackendLabels {
                service: service.name.clone(),
                backend: backend.name.clone(),
            };
            let counters = dataplane.backend_counters(backend.id)?;
            backend_packets
                .get_or_create(&labels)
                .inc_by(counters.packets);
            backend_bytes.get_or_create(&labels).inc_by(counters.bytes);
            backend_flows
                .get_or_create(&labels)
                .inc_by(counters.new_flows);
            let current = if backend.mac.is_none() {
                BackendState::Down
            } else {
                backend.state
            };
            for state in [
                BackendState::Active,
                BackendState::Draining,
                BackendState::Down,
                BackendState::Standby,
            ] {
                let labels = BackendStateLabels {
                    service: service.name.clone(),
                    backend: backend.name.clone(),
                    state: state.name().to_string(),
                };
                backend_state
                    .get_or_create(&labels)
                    .set(i64::from(state == current));
            }
            let healthy = agent
                .runtime(backend.id)
                .and_then(|r| r.health.as_ref())
                .is_none_or(|h| h.tracker.up);
            backend_healthy
                .get_or_create(&labels)
                .set(i64::from(healthy));
        }
    }
    let verdict_packets = Family::<VerdictLabels, Counter>::default();
    let verdict_bytes = Family::<VerdictLabels, Counter>::default();
    for (verdict, counters) in dataplane.verdict_counters()? {
        let labels = VerdictLabels {
            verdict: verdict.name().to_string(),
        };
        verdict_packets
            .get_or_create(&labels)
            .inc_by(counters.packets);
        verdict_bytes.get_or_create(&labels).inc_by(counters.bytes);
    }
    let reloads = Counter::<u64>::default();
    reloads.inc_by(agent.reloads);
    let uptime = Gauge::<i64>::default();
    uptime.set(i64::try_from(agent.uptime().as_secs()).unwrap_or(i64::MAX));

    registry.register(
        "service_packets",
        "Packets sent to a service's backends",
        service_packets,
    );
    registry.register(
        "service_bytes",
        "Bytes sent to a service's backends",
        service_bytes,
    );
    registry.register("service_flows", "New flows of a service", service_flows);
    registry.register(
        "service_nat_ports_in_use",
        "NAT source ports held by live flows of a service, as last counted",
        nat_in_use,
    );
    registry.register(
        "service_nat_ports_available",
        "NAT source ports of a service: the port range towards each of its backends",
        nat_available,
    );
    registry.register(
        "service_nat_ports_exhausted",
        "New flows of a service dropped because no NAT port was free",
        nat_exhausted,
    );
    registry.register(
        "backend_packets",
        "Packets forwarded to a backend",
        backend_packets,
    );
    registry.register(
        "backend_bytes",
        "Bytes forwarded to a backend",
        backend_bytes,
    );
    registry.register(
        "backend_flows",
        "New flows given to a backend",
        backend_flows,
    );
    registry.register(
        "backend_state",
        "1 for the backend's current state (active, draining, down)",
        backend_state,
    );
    registry.register(
        "backend_healthy",
        "1 when the backend passes its health check (or has none)",
        backend_healthy,
    );
    agent.metrics.register(&mut registry);
    registry.register(
        "packets",
        "Packets seen by the XDP program, by verdict (drops included)",
        verdict_packets,
    );
    registry.register(
        "bytes",
        "Bytes seen by the XDP program, by verdict",
        verdict_bytes,
    );
    registry.register(
        "config_reloads",
        "Config reloads attempted (SIGHUP or API)",
        reloads,
    );
    registry.register(
        "agent_uptime_seconds",
        "Seconds since this agent started",
        uptime,
    );

    let memory = agent.map_memory()?;
    let map_bytes = Family::<MapLabels, Gauge>::default();
    let map_entries = Family::<MapLabels, Gauge>::default();
    for map in &memory.maps {
        let labels = MapLabels {
            map: map.name.clone(),
        };
        map_bytes
            .get_or_create(&labels)
            .set(i64::try_from(map.bytes).unwrap_or(i64::MAX));
        map_entries
            .get_or_create(&labels)
            .set(i64::from(map.max_entries));
    }
    let total = Gauge::<i64>::default();
    total.set(i64::try_from(memory.total_bytes).unwrap_or(i64::MAX));
    let budget = Gauge::<i64>::default();
    budget.set(i64::try_from(memory.budget_bytes).unwrap_or(i64::MAX));
    registry.register(
        "map_memory_bytes",
        "Kernel memory of each map of the data path (memlock, as the kernel accounts it)",
        map_bytes,
    );
    registry.register(
        "map_max_entries",
        "Entries each map of the data path was made for",
        map_entries,
    );
    registry.register(
        "map_memory_total_bytes",
        "Kernel memory of all the data path's maps",
        total,
    );
    registry.register(
        "map_memory_budget_bytes",
        "agent.map_memory_budget_mib, in bytes",
        budget,
    );

    if let Some(database) = &agent.database {
        let role = Family::<DatabaseRoleLabels, Gauge>::default();
        let lag = Family::<DatabaseNodeLabels, Gauge>::default();
        for node in &database.nodes {
            let name = serde_json::to_value(node.role)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            role.get_or_create(&DatabaseRoleLabels {
                node: node.name.clone(),
                role: name,
            })
            .set(1);
            if let Some(seconds) = node.lag_s {
                lag.get_or_create(&DatabaseNodeLabels {
                    node: node.name.clone(),
                })
                .set(i64::try_from(seconds).unwrap_or(i64::MAX));
            }
        }
        let failovers = Counter::<u64>::default();
        failovers.inc_by(database.failovers);
        registry.register(
            "database_role",
            "1 for each database node's current role",
            role,
        );
        registry.register(
            "database_replication_lag_seconds",
            "Replication lag of each replica",
            lag,
        );
        registry.register(
            "database_failovers",
            "Primaries replaced (by the agent or an operator's lb db promote) in the watch's memory",
            failovers,
        );
        let blocked = Gauge::<i64>::default();
        blocked.set(i64::from(database.blocked.is_some()));
        registry.register(
            "database_failover_blocked",
            "1 while there is no writable primary and the agent will not promote one on its own (lb status says why)",
            blocked,
        );
    }

    let mut text = String::new();
    encode(&mut text, &registry).context("encoding metrics")?;
    Ok(text)
}
