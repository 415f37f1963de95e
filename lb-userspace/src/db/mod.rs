//! Database high availability: the agent watches every MySQL/MariaDB node of the `[database]`
//! section, keeps the write VIP on the one primary and the read VIP on healthy replicas, and
//! fails over when the primary stops answering: in `safe` mode only to a replica that provably
//! holds every write the primary acknowledged (see `decision`), which applies what it received,
//! stops replicating and becomes writable; a node that comes back is made read-only and a replica
//! of the new primary. Two writable nodes behind the write VIP cannot happen: the write service
//! holds at most the one primary, and any other writable node is fenced (read-only).
//!
//! `gtid` compares positions, `decision` is the pure decision (unit-tested), `sql` talks to the
//! nodes, `memory` is what survives a reload or restart, and [`run`] here probes, decides,
//! executes and reports, round after round.
mod decision;
mod gtid;
mod memory;
mod sql;

use std::{path::PathBuf, time::Duration, time::Instant, time::SystemTime};

use log::{info, warn};
use mysql_async::Conn;
use tokio::sync::{mpsc, oneshot};

pub use self::decision::{
    Action, Cluster, Decision, Failure, IoThread, Ledger, Node, Observation, Policy, Probes,
    ReplicaLink, Role, Settings,
};
pub use self::gtid::GtidPosition;
pub use self::memory::{FailoverRecord, Memory};
pub use self::sql::Credentials;
use self::sql::{fence, probe, promote, rejoin};

/// How long a promotion, fence or rejoin may take in all.
const ACTION_TIMEOUT: Duration = Duration::from_secs(10);
/// A failed rejoin is tried again after this long, not every round.
const REJOIN_BACKOFF: Duration = Duration::from_secs(5);

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
    pub policy: Policy,
    pub primary: Option<String>,
    /// The node behind the write VIP, and those behind the read VIP.
    pub write: Option<String>,
    pub read: Vec<String>,
    /// Why there is no writable primary and the watch will not make one on its own.
    pub blocked: Option<String>,
    pub failovers: u64,
    pub last_failover: Option<FailoverRecord>,
    pub nodes: Vec<NodeStatus>,
    /// Saving the watch's memory failed: a restart would forget the primary and the ledger.
    pub memory_error: Option<String>,
}

/// An operator's order to the watch.
#[derive(Debug)]
pub enum Command {
    /// `lb db promote NODE --force`: make this node the primary whatever the policy says. The
    /// reply says what happened.
    Promote {
        node: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
}

/// Everything a watch starts from.
pub struct Watch {
    pub nodes: Vec<Node>,
    pub credentials: Credentials,
    pub settings: Settings,
    /// What an earlier watch (before a reload) or agent (before a restart) knew.
    pub memory: Memory,
    pub state_file: Option<PathBuf>,
    pub commands: mpsc::Receiver<Command>,
}

/// The outcome of one probe task.
type ProbeDone = (usize, Result<(Conn, Observation), Failure>);

/// Watches the cluster until `report` returns false. `report` gets the status, the nodes that
/// belong behind the write VIP and the read VIP, and the memory a successor must start from.
pub async fn run(
    watch: Watch,
    mut report: impl FnMut(&DatabaseStatus, Option<&str>, &[&str], &Memory) -> bool,
) {
    let Watch {
        nodes,
        credentials,
        settings,
        memory,
        state_file,
        mut commands,
    } = watch;
    let n = nodes.len();
    let mut cluster = Cluster::new(nodes);
    cluster.primary = memory.primary.as_deref().and_then(|p| cluster.index_of(p));
    cluster.promoting = memory
        .promoting
        .as_deref()
        .and_then(|p| cluster.index_of(p));
    cluster.ledger = memory
        .ledger
        .clone()
        .filter(|l| cluster.index_of(&l.primary).is_some());
    if let Some(p) = cluster.primary {
        info!(
            "database: remembered primary {}{}",
            cluster.nodes[p].name,
            cluster.promoting.map_or(String::new(), |c| format!(
                ", and an unfinished promotion of {}",
                cluster.nodes[c].name
            ))
        );
    }
    let mut failovers = memory.failovers;
    let mut last_failover = memory.last_failover.clone();
    let mut saved = memory;
    let mut memory_error = None;
    let mut conns: Vec<Option<Conn>> = (0..n).map(|_| None).collect();
    let mut in_flight: Vec<Option<Instant>> = vec![None; n];
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<ProbeDone>();
    let mut errors: Vec<Option<String>> = vec![None; n];
    let mut last_rejoin: Vec<Option<Instant>> = vec![None; n];
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let started = Instant::now();
        // A node whose last probe is still out keeps it: a slow node is not probed twice.
        for (i, node) in cluster.nodes.iter().enumerate() {
            if in_flight[i].is_some() {
                continue;
            }
            in_flight[i] = Some(started);
            let (conn, node, credentials) = (conns[i].take(), node.clone(), credentials.clone());
            let done = done_tx.clone();
            tokio::spawn(async move {
                let outcome =
                    match tokio::time::timeout(settings.give_up, probe(conn, &node, &credentials))
                        .await
                    {
                        Ok(Ok(answer)) => Ok(answer),
                        Ok(Err(e)) => Err(Failure::Refused(error_text(&e))),
                        Err(_) => Err(Failure::GaveUp(format!(
                            "no answer within {} ms",
                            settings.give_up.as_millis()
                        ))),
                    };
                done.send((i, outcome)).ok();
            });
        }
        let mut answers: Vec<Option<Result<Observation, Failure>>> = vec![None; n];
        let deadline = tokio::time::Instant::from_std(started + settings.timeout);
        while answers.iter().any(Option::is_none) {
            let Ok(Some((i, outcome))) = tokio::time::timeout_at(deadline, done_rx.recv()).await
            else {
                break;
            };
            in_flight[i] = None;
            answers[i] = Some(outcome.map(|(conn, seen)| {
                conns[i] = Some(conn);
                seen
            }));
        }
        let mut probes: Probes = answers
            .into_iter()
            .enumerate()
            .map(|(i, answer)| {
                answer.unwrap_or_else(|| {
                    Err(Failure::Slow {
                        waited_ms: in_flight[i].map_or(0, |at| at.elapsed().as_millis() as u64),
                    })
                })
            })
            .collect();
        cluster.observe(&probes, started);

        while let Ok(command) = commands.try_recv() {
            match command {
                Command::Promote { node, reply } => {
                    let outcome = forced_promotion(
                        &mut cluster,
                        &mut probes,
                        &node,
                        &credentials,
                        (&state_file, &mut saved, &mut memory_error),
                        (&mut failovers, &mut last_failover),
                    )
                    .await;
                    reply.send(outcome).ok();
                }
            }
        }

        let decision = cluster.decide(&probes, &settings);
        if cluster.primary.is_none()
            && decision.primary.is_some()
            && decision
                .actions
                .iter()
                .all(|a| !matches!(a, Action::Promote(_)))
        {
            if let Some(p) = decision.primary {
                info!("database: {} is the primary", cluster.nodes[p].name);
                cluster.adopt_primary(p, &probes);
            }
        }
        let mut decision = decision;
        for action in decision.actions.clone() {
            let outcome = match action {
                Action::Promote(c) => {
                    let old = cluster.primary.filter(|&p| p != c);
                    let since = cluster
                        .primary
                        .and_then(|p| cluster.failing_since[p])
                        .unwrap_or(started);
                    let finishing = cluster.promoting == Some(c);
                    warn!(
                        "database: {} -> promoting {}",
                        if finishing {
                            "an unfinished promotion".to_string()
                        } else {
                            cluster.primary.map_or("no primary".to_string(), |p| {
                                format!(
                                    "primary {} failed {} probes",
                                    cluster.nodes[p].name, settings.fail_after
                                )
                            })
                        },
                        cluster.nodes[c].name
                    );
                    // Remembered before the first step: an agent killed mid-way finishes it.
                    cluster.promoting = Some(c);
                    remember(
                        &cluster,
                        (failovers, &last_failover),
                        &state_file,
                        &mut saved,
                        &mut memory_error,
                    )
                    .await;
                    sql::step(&cluster.nodes[c], 0, "remembered").await;
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
                        if let Some(record) =
                            became_primary(&mut cluster, &mut probes, c, old, took, false)
                        {
                            failovers += 1;
                            last_failover = Some(record);
                        }
                    }
                    cluster.promoting = None;
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
                policy: Policy::Off,
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
        remember(
            &cluster,
            (failovers, &last_failover),
            &state_file,
            &mut saved,
            &mut memory_error,
        )
        .await;
        let status = status_of(
            &cluster,
            &probes,
            &decision,
            &errors,
            &settings,
            (failovers, last_failover.clone()),
            memory_error.clone(),
        );
        let write = decision.write.map(|w| cluster.nodes[w].name.as_str());
        let read: Vec<&str> = decision
            .read
            .iter()
            .map(|&r| cluster.nodes[r].name.as_str())
            .collect();
        if !report(&status, write, &read, &saved) {
            return;
        }
    }
}

/// Node `c` was made the primary: the cluster follows (a new ledger starts next round, and this
/// round's probe is what `c` is now), and the failover from `old`, if any, is recorded.
fn became_primary(
    cluster: &mut Cluster,
    probes: &mut Probes,
    c: usize,
    old: Option<usize>,
    took: Duration,
    forced: bool,
) -> Option<FailoverRecord> {
    cluster.primary = Some(c);
    cluster.ledger = None;
    cluster.failures[c] = 0;
    cluster.failing_since[c] = None;
    if let Ok(seen) = probes[c].as_mut() {
        seen.read_only = false;
        seen.replica = None;
    }
    old.map(|from| FailoverRecord {
        from: cluster.nodes[from].name.clone(),
        to: cluster.nodes[c].name.clone(),
        at_unix: crate::unix_time::unix_seconds(SystemTime::now()),
        duration_ms: took.as_millis() as u64,
        forced,
    })
}

/// The outermost context and the root cause: driver errors repeat themselves.
fn error_text(e: &anyhow::Error) -> String {
    if e.chain().count() > 1 {
        format!("{e}: {}", e.root_cause())
    } else {
        format!("{e}")
    }
}

/// The memory the cluster stands for now.
fn memory_of(cluster: &Cluster, failovers: u64, last: &Option<FailoverRecord>) -> Memory {
    Memory {
        primary: cluster.primary.map(|p| cluster.nodes[p].name.clone()),
        promoting: cluster.promoting.map(|p| cluster.nodes[p].name.clone()),
        ledger: cluster.ledger.clone(),
        failovers,
        last_failover: last.clone(),
    }
}

/// Saves the memory when it changed (off the runtime's workers).
async fn remember(
    cluster: &Cluster,
    (failovers, last): (u64, &Option<FailoverRecord>),
    state_file: &Option<PathBuf>,
    saved: &mut Memory,
    error: &mut Option<String>,
) {
    let memory = memory_of(cluster, failovers, last);
    if &memory == saved && error.is_none() {
        return;
    }
    *saved = memory.clone();
    let Some(path) = state_file.clone() else {
        return;
    };
    let result = tokio::task::spawn_blocking(move || memory.save(&path)).await;
    *error = match result {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e:#}")),
        Err(e) => Some(format!("saving the memory: {e}")),
    };
    if let Some(e) = error {
        warn!("database: {e}: a restarted agent would not know the primary");
    }
}

/// `lb db promote NODE --force`: the operator takes responsibility for what the old primary
/// acknowledged and `node` lacks.
async fn forced_promotion(
    cluster: &mut Cluster,
    probes: &mut Probes,
    node: &str,
    credentials: &Credentials,
    (state_file, saved, memory_error): (&Option<PathBuf>, &mut Memory, &mut Option<String>),
    (failovers, last_failover): (&mut u64, &mut Option<FailoverRecord>),
) -> Result<String, String> {
    let c = cluster
        .index_of(node)
        .ok_or_else(|| format!("no database node is called `{node}`"))?;
    let seen = probes[c]
        .as_ref()
        .map_err(|e| format!("{node} does not answer ({e}); nothing was changed"))?;
    if cluster.primary == Some(c) && !seen.read_only {
        return Ok(format!("{node} already is the primary"));
    }
    let old = cluster.primary.filter(|&p| p != c);
    warn!("database: an operator forces the promotion of {node}");
    cluster.promoting = Some(c);
    remember(
        cluster,
        (*failovers, last_failover),
        state_file,
        saved,
        memory_error,
    )
    .await;
    let result = tokio::time::timeout(ACTION_TIMEOUT, promote(&cluster.nodes[c], credentials))
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
    cluster.promoting = None;
    let outcome = match result {
        Ok(()) => {
            let failing_for = old
                .and_then(|from| cluster.failing_since[from])
                .map_or(Duration::ZERO, |at| at.elapsed());
            if let Some(record) = became_primary(cluster, probes, c, old, failing_for, true) {
                *failovers += 1;
                *last_failover = Some(record);
            }
            Ok(format!("{node} is the primary"))
        }
        Err(e) => Err(format!("promoting {node} failed: {e:#}")),
    };
    remember(
        cluster,
        (*failovers, last_failover),
        state_file,
        saved,
        memory_error,
    )
    .await;
    outcome
}

fn status_of(
    cluster: &Cluster,
    probes: &Probes,
    decision: &Decision,
    action_errors: &[Option<String>],
    settings: &Settings,
    (failovers, last_failover): (u64, Option<FailoverRecord>),
    memory_error: Option<String>,
) -> DatabaseStatus {
    let nodes = cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let seen = probes[i].as_ref().ok();
            let probe_error = probes[i].as_ref().err().map(|failure| match failure {
                Failure::Slow { .. } if decision.roles[i] == Role::Primary => {
                    format!("slow: {failure}, but its replicas still receive from it")
                }
                _ => failure.to_string(),
            });
            let link = seen.and_then(|s| s.replica.as_ref());
            NodeStatus {
                name: node.name.clone(),
                address: node.addr.to_string(),
                role: decision.roles[i],
                reachable: seen.is_some(),
                read_only: seen.map(|s| s.read_only),
                lag_s: link.and_then(|r| r.lag_s),
                gtid: seen.map(|s| s.gtid.to_string()),
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
        policy: settings.policy,
        primary: decision.primary.map(|p| cluster.nodes[p].name.clone()),
        write: decision.write.map(|w| cluster.nodes[w].name.clone()),
        read: decision
            .read
            .iter()
            .map(|&r| cluster.nodes[r].name.clone())
            .collect(),
        blocked: decision.blocked.clone(),
        failovers,
        last_failover,
        nodes,
        memory_error,
    }
}
