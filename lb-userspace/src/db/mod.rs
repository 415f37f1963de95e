//! Database high availability: the agent watches every MySQL/MariaDB node of the `[database]`
//! section, keeps the write VIP on the one primary and the read VIP on healthy replicas, and
//! fails over when the primary stops answering: the most advanced replica applies what it
//! received, stops replicating and becomes writable; a node that comes back is made read-only and
//! a replica of the new primary. Two writable nodes behind the write VIP cannot happen: the write
//! service holds at most the one primary, and any other writable node is fenced (read-only).
//!
//! `decision` is the pure decision (unit-tested), `sql` talks to the nodes, and [`run`] here probes,
//! decides, executes and reports, round after round.
mod decision;
mod sql;

use std::{time::Duration, time::Instant, time::SystemTime};

use log::{info, warn};
use mysql_async::Conn;

pub use self::decision::{
    gtid_progress, Action, Cluster, Decision, Node, Observation, Probes, ReplicaLink, Role,
    Settings,
};
pub use self::sql::Credentials;
use self::sql::{fence, probe, promote, rejoin};

/// How long a promotion, fence or rejoin may take in all.
const ACTION_TIMEOUT: Duration = Duration::from_secs(10);
/// A failed rejoin is tried again after this long, not every round.
const REJOIN_BACKOFF: Duration = Duration::from_secs(5);

/// A failover that happened.
#[derive(Debug, Clone)]
pub struct FailoverRecord {
    pub from: String,
    pub to: String,
    pub at_unix: u64,
    /// From the first failed probe of the old primary to the new one being writable.
    pub duration_ms: u64,
}

/// One node in the report.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub name: String,
    pub address: String,
    pub role: Role,
    pub reachable: bool,
    pub read_only: Option<bool>,
    pub lag_s: Option<u64>,
    pub gtid: Option<String>,
    pub semi_sync: Option<bool>,
    /// `host:port` this node replicates from.
    pub replicating_from: Option<String>,
    pub error: Option<String>,
}

/// What the watch reports after every round (the API shows it as its own `DatabaseStatus`).
#[derive(Debug, Clone)]
pub struct DatabaseStatus {
    /// The services of the write and read VIPs (filled in by the agent).
    pub write_service: String,
    pub read_service: Option<String>,
    pub primary: Option<String>,
    /// The node behind the write VIP, and those behind the read VIP.
    pub write: Option<String>,
    pub read: Vec<String>,
    pub failovers: u64,
    pub last_failover: Option<FailoverRecord>,
    pub nodes: Vec<NodeStatus>,
}

/// Watches the cluster until `report` returns false. `report` gets the status and the nodes that
/// belong behind the write VIP and the read VIP; it returns false when the agent is done with us.
pub async fn run(
    nodes: Vec<Node>,
    credentials: Credentials,
    settings: Settings,
    mut report: impl FnMut(&DatabaseStatus, Option<&str>, &[&str]) -> bool,
) {
    let mut cluster = Cluster::new(nodes);
    let mut conns: Vec<Option<Conn>> = (0..cluster.nodes.len()).map(|_| None).collect();
    let mut errors: Vec<Option<String>> = vec![None; cluster.nodes.len()];
    let mut last_rejoin: Vec<Option<Instant>> = vec![None; cluster.nodes.len()];
    let (mut failovers, mut last_failover) = (0u64, None);
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (i, node) in cluster.nodes.iter().enumerate() {
            let (conn, node, credentials) = (conns[i].take(), node.clone(), credentials.clone());
            tasks.spawn(async move {
                let result =
                    match tokio::time::timeout(settings.timeout, probe(conn, &node, &credentials))
                        .await
                    {
                        Ok(result) => result,
                        Err(_) => Err(anyhow::anyhow!(
                            "no answer within {} ms",
                            settings.timeout.as_millis()
                        )),
                    };
                (i, result)
            });
        }
        let mut probes: Probes = vec![Err("not probed".into()); cluster.nodes.len()];
        while let Some(joined) = tasks.join_next().await {
            let Ok((i, result)) = joined else { continue };
            probes[i] = match result {
                Ok((conn, seen)) => {
                    conns[i] = Some(conn);
                    Ok(seen)
                }
                // The outermost context and the root cause: driver errors repeat themselves.
                Err(e) if e.chain().count() > 1 => Err(format!("{e}: {}", e.root_cause())),
                Err(e) => Err(format!("{e}")),
            };
        }
        cluster.observe(&probes, started);
        let decision = cluster.decide(&probes, &settings);
        if cluster.primary.is_none()
            && decision.primary.is_some()
            && decision
                .actions
                .iter()
                .all(|a| !matches!(a, Action::Promote(_)))
        {
            info!(
                "database: {} is the primary",
                cluster.nodes[decision.primary.unwrap_or(0)].name
            );
            cluster.primary = decision.primary;
        }
        let mut decision = decision;
        for action in decision.actions.clone() {
            let outcome = match action {
                Action::Promote(c) => {
                    let old = cluster.primary.map(|p| cluster.nodes[p].name.clone());
                    let since = cluster
                        .primary
                        .and_then(|p| cluster.failing_since[p])
                        .unwrap_or(started);
                    warn!(
                        "database: {} -> promoting {}",
                        old.as_deref().map_or("no primary".to_string(), |o| format!(
                            "primary {o} failed {} probes",
                            settings.fail_after
                        )),
                        cluster.nodes[c].name
                    );
                    let result = tokio::time::timeout(
                        ACTION_TIMEOUT,
                        promote(&cluster.nodes[c], &credentials),
                    )
                    .await;
                    let result = result.unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
                    if result.is_ok() {
                        let took = since.elapsed();
                        info!(
                            "database: {} is the primary ({} ms after the first failed probe)",
                            cluster.nodes[c].name,
                            took.as_millis()
                        );
                        if let Some(from) = old {
                            failovers += 1;
                            last_failover = Some(FailoverRecord {
                                from,
                                to: cluster.nodes[c].name.clone(),
                                at_unix: crate::unix_time::unix_seconds(SystemTime::now()),
                                duration_ms: took.as_millis() as u64,
                            });
                        }
                        cluster.primary = Some(c);
                        if let Ok(seen) = probes[c].as_mut() {
                            seen.read_only = false;
                            seen.replica = None;
                        }
                    }
                    (c, "promoting", result)
                }
                Action::Fence(i) => {
                    warn!(
                        "database: {} is writable but not the primary: making it read-only",
                        cluster.nodes[i].name
                    );
                    let result = tokio::time::timeout(
                        ACTION_TIMEOUT,
                        fence(&cluster.nodes[i], &credentials),
                    )
                    .await;
                    (
                        i,
                        "fencing",
                        result.unwrap_or_else(|_| Err(anyhow::anyhow!("timed out"))),
                    )
                }
                Action::Rejoin(i) => {
                    if last_rejoin[i].is_some_and(|at| at.elapsed() < REJOIN_BACKOFF) {
                        continue;
                    }
                    last_rejoin[i] = Some(Instant::now());
                    let Some(p) = decision.primary else { continue };
                    info!(
                        "database: making {} a replica of {}",
                        cluster.nodes[i].name, cluster.nodes[p].name
                    );
                    let result = tokio::time::timeout(
                        ACTION_TIMEOUT,
                        rejoin(&cluster.nodes[i], &cluster.nodes[p], &credentials),
                    )
                    .await;
                    (
                        i,
                        "re-pointing",
                        result.unwrap_or_else(|_| Err(anyhow::anyhow!("timed out"))),
                    )
                }
            };
            let (i, what, result) = outcome;
            errors[i] = match result {
                Ok(()) => None,
                Err(e) => {
                    warn!("database: {what} {} failed: {e:#}", cluster.nodes[i].name);
                    Some(format!("{what} failed: {e:#}"))
                }
            };
        }
        if decision
            .actions
            .iter()
            .any(|a| matches!(a, Action::Promote(_)))
        {
            // Route to what actually happened: the promotion may have failed.
            let settled = Settings {
                failover: false,
                ..settings
            };
            let mut after = cluster.clone();
            after.failures.iter_mut().for_each(|f| *f = 0);
            decision = after.decide(&probes, &settled);
            if cluster.primary != decision.primary {
                decision.write = None;
                decision.read.clear();
            }
        }
        let status = status_of(
            &cluster,
            &probes,
            &decision,
            &errors,
            failovers,
            last_failover.clone(),
        );
        let write = decision.write.map(|w| cluster.nodes[w].name.as_str());
        let read: Vec<&str> = decision
            .read
            .iter()
            .map(|&r| cluster.nodes[r].name.as_str())
            .collect();
        if !report(&status, write, &read) {
            return;
        }
    }
}

fn status_of(
    cluster: &Cluster,
    probes: &Probes,
    decision: &Decision,
    action_errors: &[Option<String>],
    failovers: u64,
    last_failover: Option<FailoverRecord>,
) -> DatabaseStatus {
    let nodes = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let seen = probes[i].as_ref().ok();
            let probe_error = probes[i].as_ref().err().cloned();
            let link = seen.and_then(|s| s.replica.as_ref());
            NodeStatus {
                name: node.name.clone(),
                address: node.addr.to_string(),
                role: decision.roles[i],
                reachable: seen.is_some(),
                read_only: seen.map(|s| s.read_only),
                lag_s: link.and_then(|r| r.lag_s),
                gtid: seen.map(|s| s.gtid.clone()),
                semi_sync: seen.map(|s| s.semi_sync),
                replicating_from: link.map(|r| format!("{}:{}", r.source_host, r.source_port)),
                error: probe_error
                    .or_else(|| link.and_then(|r| r.error.clone()))
                    .or_else(|| action_errors[i].clone()),
            }
        })
        .collect();
    DatabaseStatus {
        write_service: String::new(),
        read_service: None,
        primary: decision.primary.map(|p| cluster.nodes[p].name.clone()),
        write: decision.write.map(|w| cluster.nodes[w].name.clone()),
        read: decision
            .read
            .iter()
            .map(|&r| cluster.nodes[r].name.clone())
            .collect(),
        failovers,
        last_failover,
        nodes,
    }
}
