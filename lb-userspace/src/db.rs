//! Database high availability: the agent watches every MySQL/MariaDB node of the `[database]`
//! section, keeps the write VIP on the one primary and the read VIP on healthy replicas, and
//! fails over when the primary stops answering: the most advanced replica applies what it
//! received, stops replicating and becomes writable; a node that comes back is made read-only and
//! a replica of the new primary. Two writable nodes behind the write VIP cannot happen: the write
//! service holds at most the one primary, and any other writable node is fenced (read-only).
//!
//! [`Cluster::decide`] is the pure decision (unit-tested); [`run`] probes, executes and reports.
use std::{net::SocketAddr, time::Duration, time::Instant, time::SystemTime};

use anyhow::{bail, Context as _, Result};
use log::{info, warn};
use mysql_async::{prelude::Queryable as _, Conn, OptsBuilder, Row};
use serde::Serialize;

/// One database node: a backend of the write service.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub addr: SocketAddr,
}

/// Accounts the agent uses.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
    pub replication_user: String,
    pub replication_password: String,
}

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub interval: Duration,
    pub timeout: Duration,
    pub fail_after: u32,
    pub max_lag_s: u64,
    /// false: report and route only, never change a node.
    pub failover: bool,
}

/// How long promoting a replica may wait for it to apply the relay log it already received.
const APPLY_TIMEOUT_S: u64 = 5;
/// How long a promotion, fence or rejoin may take in all.
const ACTION_TIMEOUT: Duration = Duration::from_secs(10);
/// A failed rejoin is tried again after this long, not every round.
const REJOIN_BACKOFF: Duration = Duration::from_secs(5);
/// MariaDB: "the slave requested a GTID the master's binlog does not have": the node holds
/// transactions the primary never saw, and must be rebuilt.
const ER_MASTER_FATAL_ERROR_READING_BINLOG: u32 = 1236;

/// What one probe of a node saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    pub read_only: bool,
    pub server_id: u64,
    /// `@@gtid_current_pos`.
    pub gtid: String,
    /// `None` when the node replicates from nobody.
    pub replica: Option<ReplicaLink>,
    /// `Rpl_semi_sync_master_status`: acknowledged writes wait for a replica.
    pub semi_sync: bool,
}

/// The node's replication from a source (`SHOW SLAVE STATUS`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaLink {
    pub source_host: String,
    pub source_port: u16,
    pub io_running: bool,
    pub sql_running: bool,
    pub lag_s: Option<u64>,
    /// GTIDs received into the relay log (applied or not).
    pub gtid_io_pos: String,
    pub io_errno: u32,
    pub sql_errno: u32,
    /// The last IO or SQL error text, when there is one.
    pub error: Option<String>,
}

impl ReplicaLink {
    fn replicates_from(&self, node: &Node) -> bool {
        self.source_host == node.addr.ip().to_string() && self.source_port == node.addr.port()
    }

    /// The node has writes its source never had, or could not apply one: it needs an operator.
    fn diverged(&self) -> bool {
        self.io_errno == ER_MASTER_FATAL_ERROR_READING_BINLOG || self.sql_errno != 0
    }
}

/// A node's role in the cluster (`/metrics` names it as serde does; the API has its own copy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The writable node behind the write VIP.
    Primary,
    /// Replicating from the primary within `max_lag_s`: in the read service.
    Replica,
    /// Replicating from the primary, but behind by more than `max_lag_s` or with a thread stopped.
    Lagging,
    /// Read-only, not (yet) replicating from the primary; the agent re-points it.
    Standby,
    /// Writable but not the primary: being made read-only.
    Fenced,
    /// Holds writes the primary never had, or failed to apply one: rebuild it.
    Diverged,
    /// Does not answer.
    Down,
    /// Not probed yet.
    Unknown,
}

/// What the agent should do to the nodes this round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Make this replica the primary (apply its relay log, stop replicating, writable).
    Promote(usize),
    /// Make this writable non-primary read-only.
    Fence(usize),
    /// Make this node a read-only replica of the primary.
    Rejoin(usize),
}

/// The outcome of one round's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The node taken as primary (after this round's promotion, if any).
    pub primary: Option<usize>,
    pub actions: Vec<Action>,
    /// The node behind the write VIP.
    pub write: Option<usize>,
    /// The nodes behind the read VIP.
    pub read: Vec<usize>,
    pub roles: Vec<Role>,
}

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

/// Probe results of one round: `Err` holds why a node did not answer.
pub type Probes = Vec<Result<Observation, String>>;

/// The agent's memory of the cluster between rounds.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub primary: Option<usize>,
    /// Consecutive failed probes per node (for the primary: not answering, or read-only).
    pub failures: Vec<u32>,
    /// When each node's current run of failures began.
    pub failing_since: Vec<Option<Instant>>,
    /// Rounds since start.
    pub rounds: u32,
}

/// Sum of the sequence numbers of a GTID position ("0-1-42,1-2-7"): a total order of how far a
/// node got, for nodes that replicate the same history.
pub fn gtid_progress(position: &str) -> u64 {
    position
        .split(',')
        .filter_map(|gtid| gtid.trim().rsplit('-').next()?.parse::<u64>().ok())
        .sum()
}

impl Cluster {
    pub fn new(nodes: Vec<Node>) -> Self {
        let n = nodes.len();
        Cluster {
            nodes,
            primary: None,
            failures: vec![0; n],
            failing_since: vec![None; n],
            rounds: 0,
        }
    }

    /// Counts this round's failures.
    pub fn observe(&mut self, probes: &Probes, now: Instant) {
        self.rounds = self.rounds.saturating_add(1);
        for (i, probe) in probes.iter().enumerate() {
            let failed = match probe {
                Err(_) => true,
                // A primary someone made read-only takes no writes: as good as gone.
                Ok(seen) => self.primary == Some(i) && seen.read_only,
            };
            if failed {
                self.failures[i] = self.failures[i].saturating_add(1);
                self.failing_since[i].get_or_insert(now);
            } else {
                self.failures[i] = 0;
                self.failing_since[i] = None;
            }
        }
    }

    /// Progress of a node for choosing whom to promote: what it received, applied or not.
    fn progress(seen: &Observation) -> u64 {
        let received = seen
            .replica
            .as_ref()
            .map_or(0, |r| gtid_progress(&r.gtid_io_pos));
        gtid_progress(&seen.gtid).max(received)
    }

    /// The node to promote among those answering, other than `except`: the most advanced one,
    /// a node that replicated from `except` first, then the lowest index.
    fn candidate(&self, probes: &Probes, except: Option<usize>) -> Option<usize> {
        probes
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != except)
            .filter_map(|(i, p)| p.as_ref().ok().map(|seen| (i, seen)))
            .filter(|(_, seen)| !seen.replica.as_ref().is_some_and(ReplicaLink::diverged))
            .max_by_key(|(i, seen)| {
                let from_old = except.is_some_and(|old| {
                    seen.replica
                        .as_ref()
                        .is_some_and(|r| r.replicates_from(&self.nodes[old]))
                });
                (Self::progress(seen), from_old, std::cmp::Reverse(*i))
            })
            .map(|(i, _)| i)
    }

    /// Decides this round: who is primary, what to change, who serves writes and reads.
    pub fn decide(&self, probes: &Probes, settings: &Settings) -> Decision {
        let n = self.nodes.len();
        let mut actions = Vec::new();
        let mut primary = self.primary;
        let mut promoted = None;
        match self.primary {
            Some(p) if self.failures[p] >= settings.fail_after && settings.failover => {
                if let Some(c) = self.candidate(probes, Some(p)) {
                    promoted = Some(c);
                }
            }
            Some(_) => {}
            None => {
                let writable: Vec<usize> = (0..n)
                    .filter(|&i| probes[i].as_ref().is_ok_and(|s| !s.read_only))
                    .collect();
                if writable.len() == 1 {
                    primary = Some(writable[0]);
                } else if writable.len() > 1 {
                    // Split brain at start: keep the most advanced, fence the others below.
                    primary = writable
                        .iter()
                        .copied()
                        .max_by_key(|&i| probes[i].as_ref().map_or(0, Self::progress));
                } else {
                    // Nobody writable (e.g. all restarted read-only): once every node had its
                    // chance to answer, promote the most advanced.
                    let all_answered = probes.iter().all(Result::is_ok);
                    if settings.failover && (all_answered || self.rounds >= settings.fail_after) {
                        promoted = self.candidate(probes, None);
                    }
                }
            }
        }
        if let Some(c) = promoted {
            actions.push(Action::Promote(c));
            primary = Some(c);
        }

        let mut roles = vec![Role::Unknown; n];
        let mut read = Vec::new();
        for i in 0..n {
            let seen = match &probes[i] {
                Err(_) => {
                    roles[i] = Role::Down;
                    continue;
                }
                Ok(seen) => seen,
            };
            if Some(i) == primary {
                roles[i] = if promoted == Some(i) || !seen.read_only {
                    Role::Primary
                } else {
                    Role::Down
                };
                continue;
            }
            let Some(p) = primary else {
                roles[i] = if seen.read_only {
                    Role::Standby
                } else {
                    Role::Fenced
                };
                continue;
            };
            let link = seen
                .replica
                .as_ref()
                .filter(|r| r.replicates_from(&self.nodes[p]));
            roles[i] = match link {
                Some(r) if r.diverged() => Role::Diverged,
                _ if !seen.read_only => Role::Fenced,
                Some(r)
                    if r.io_running
                        && r.sql_running
                        && r.lag_s.is_some_and(|lag| lag <= settings.max_lag_s) =>
                {
                    Role::Replica
                }
                Some(_) => Role::Lagging,
                None => Role::Standby,
            };
            // Changes to the others wait for a promotion to be done (next round).
            if settings.failover && promoted.is_none() {
                match roles[i] {
                    Role::Fenced if link.is_some() => actions.push(Action::Fence(i)),
                    Role::Fenced | Role::Standby => actions.push(Action::Rejoin(i)),
                    _ => {}
                }
            }
            if roles[i] == Role::Replica {
                read.push(i);
            }
        }
        let write = primary.filter(|&p| {
            promoted == Some(p)
                || probes[p].as_ref().is_ok_and(|s| !s.read_only)
                || self.failures[p] < settings.fail_after
        });
        if read.is_empty() {
            read.extend(write);
        }
        Decision {
            primary,
            actions,
            write,
            read,
            roles,
        }
    }
}

/// A new connection to `node` as the agent's account.
async fn login(node: &Node, credentials: &Credentials) -> Result<Conn> {
    let opts = OptsBuilder::default()
        .ip_or_hostname(node.addr.ip().to_string())
        .tcp_port(node.addr.port())
        .user(Some(&credentials.user))
        .pass(Some(&credentials.password))
        .prefer_socket(false);
    Conn::new(opts).await.context("login")
}

/// The `SHOW SLAVE STATUS` row of a node that replicates from somebody.
fn replication_source(status: &[Row]) -> Option<&Row> {
    status
        .first()
        .filter(|row| text(row, "Master_Host").is_some_and(|h| !h.is_empty()))
}

fn text(row: &Row, column: &str) -> Option<String> {
    row.get_opt::<Option<String>, &str>(column)
        .and_then(Result::ok)
        .flatten()
}

fn number<T: std::str::FromStr>(row: &Row, column: &str) -> Option<T> {
    text(row, column).and_then(|v| v.trim().parse().ok())
}

/// One probe on a node's connection (made when there is none).
async fn probe(
    conn: Option<Conn>,
    node: &Node,
    credentials: &Credentials,
) -> Result<(Conn, Observation)> {
    let mut conn = match conn {
        Some(conn) => conn,
        None => login(node, credentials).await?,
    };
    let row: Option<(i64, u64, String)> = conn
        .query_first("SELECT @@read_only, @@server_id, @@gtid_current_pos")
        .await?;
    let (read_only, server_id, gtid) = row.context("no answer to SELECT @@read_only")?;
    let status: Vec<Row> = conn.query("SHOW SLAVE STATUS").await?;
    let replica = replication_source(&status).map(|row| {
        let error = [text(row, "Last_IO_Error"), text(row, "Last_SQL_Error")]
            .into_iter()
            .flatten()
            .find(|e| !e.is_empty());
        ReplicaLink {
            source_host: text(row, "Master_Host").unwrap_or_default(),
            source_port: number(row, "Master_Port").unwrap_or(0),
            io_running: text(row, "Slave_IO_Running")
                .is_some_and(|v| v.eq_ignore_ascii_case("yes")),
            sql_running: text(row, "Slave_SQL_Running")
                .is_some_and(|v| v.eq_ignore_ascii_case("yes")),
            lag_s: number(row, "Seconds_Behind_Master"),
            gtid_io_pos: text(row, "Gtid_IO_Pos").unwrap_or_default(),
            io_errno: number(row, "Last_IO_Errno").unwrap_or(0),
            sql_errno: number(row, "Last_SQL_Errno").unwrap_or(0),
            error,
        }
    });
    let semi: Option<(String, String)> = conn
        .query_first("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_status'")
        .await?;
    let semi_sync = semi.is_some_and(|(_, value)| value.eq_ignore_ascii_case("on"));
    Ok((
        conn,
        Observation {
            read_only: read_only != 0,
            server_id,
            gtid,
            replica,
            semi_sync,
        },
    ))
}

/// A string literal for SQL text (`CHANGE MASTER` takes no placeholders).
fn sql_string(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Makes a replica the primary without losing what it acknowledged: stop receiving, apply
/// everything received, forget the source, become writable.
async fn promote(node: &Node, credentials: &Credentials) -> Result<()> {
    let mut conn = login(node, credentials).await?;
    let status: Vec<Row> = conn.query("SHOW SLAVE STATUS").await?;
    if replication_source(&status).is_some() {
        conn.query_drop("STOP SLAVE IO_THREAD").await?;
        let status: Vec<Row> = conn.query("SHOW SLAVE STATUS").await?;
        let received = status
            .first()
            .and_then(|row| text(row, "Gtid_IO_Pos"))
            .unwrap_or_default();
        if !received.is_empty() {
            let applied: Option<i64> = conn
                .exec_first(
                    "SELECT MASTER_GTID_WAIT(?, ?)",
                    (&received, APPLY_TIMEOUT_S),
                )
                .await?;
            if applied != Some(0) {
                conn.query_drop("START SLAVE IO_THREAD").await.ok();
                bail!("it did not apply its relay log (up to {received}) within {APPLY_TIMEOUT_S} s; not promoted");
            }
        }
        conn.query_drop("STOP SLAVE").await?;
        conn.query_drop("RESET SLAVE ALL").await?;
    }
    conn.query_drop("SET GLOBAL read_only = OFF").await?;
    conn.disconnect().await.ok();
    Ok(())
}

async fn fence(node: &Node, credentials: &Credentials) -> Result<()> {
    let mut conn = login(node, credentials).await?;
    conn.query_drop("SET GLOBAL read_only = ON").await?;
    conn.disconnect().await.ok();
    Ok(())
}

/// Makes a node a read-only replica of `primary`, from where its own history ends.
async fn rejoin(node: &Node, primary: &Node, credentials: &Credentials) -> Result<()> {
    let mut conn = login(node, credentials).await?;
    conn.query_drop("SET GLOBAL read_only = ON").await?;
    conn.query_drop("STOP SLAVE").await?;
    let change = format!(
        "CHANGE MASTER TO MASTER_HOST = {host}, MASTER_PORT = {port}, MASTER_USER = {user}, MASTER_PASSWORD = {password}, \
         MASTER_USE_GTID = current_pos, MASTER_CONNECT_RETRY = 1",
        host = sql_string(&primary.addr.ip().to_string()),
        port = primary.addr.port(),
        user = sql_string(&credentials.replication_user),
        password = sql_string(&credentials.replication_password),
    );
    conn.query_drop(change).await?;
    conn.query_drop("START SLAVE").await?;
    conn.disconnect().await.ok();
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Cluster {
        Cluster::new(vec![
            Node {
                name: "db1".into(),
                addr: "10.0.0.21:3306".parse().unwrap_or_else(|e| panic!("{e}")),
            },
            Node {
                name: "db2".into(),
                addr: "10.0.0.22:3306".parse().unwrap_or_else(|e| panic!("{e}")),
            },
            Node {
                name: "db3".into(),
                addr: "10.0.0.23:3306".parse().unwrap_or_else(|e| panic!("{e}")),
            },
        ])
    }

    const SETTINGS: Settings = Settings {
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(500),
        fail_after: 3,
        max_lag_s: 10,
        failover: true,
    };

    fn primary(gtid: &str) -> Result<Observation, String> {
        Ok(Observation {
            read_only: false,
            gtid: gtid.into(),
            ..Default::default()
        })
    }

    fn replica_of(source: &str, gtid: &str, lag: Option<u64>) -> Result<Observation, String> {
        Ok(Observation {
            read_only: true,
            gtid: gtid.into(),
            replica: Some(ReplicaLink {
                source_host: source.into(),
                source_port: 3306,
                io_running: lag.is_some(),
                sql_running: lag.is_some(),
                lag_s: lag,
                gtid_io_pos: gtid.into(),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    fn standalone_read_only(gtid: &str) -> Result<Observation, String> {
        Ok(Observation {
            read_only: true,
            gtid: gtid.into(),
            ..Default::default()
        })
    }

    fn down() -> Result<Observation, String> {
        Err("connection refused".into())
    }

    fn round(c: &mut Cluster, probes: &Probes) -> Decision {
        c.observe(probes, Instant::now());
        let d = c.decide(probes, &SETTINGS);
        if !d.actions.iter().any(|a| matches!(a, Action::Promote(_))) {
            c.primary = d.primary;
        }
        d
    }

    #[test]
    fn gtid_progress_adds_domains() {
        assert_eq!(gtid_progress(""), 0);
        assert_eq!(gtid_progress("0-1-42"), 42);
        assert_eq!(gtid_progress("0-1-42,1-2-7"), 49);
        assert_eq!(gtid_progress("garbage"), 0);
    }

    #[test]
    fn healthy_cluster_writes_to_primary_and_reads_from_replicas() {
        let mut c = cluster();
        let probes = vec![
            primary("0-1-10"),
            replica_of("10.0.0.21", "0-1-10", Some(0)),
            replica_of("10.0.0.21", "0-1-9", Some(30)),
        ];
        let d = round(&mut c, &probes);
        assert_eq!(d.primary, Some(0));
        assert_eq!(d.write, Some(0));
        assert_eq!(d.read, vec![1], "db3 lags 30 s > 10 s");
        assert_eq!(d.roles, vec![Role::Primary, Role::Replica, Role::Lagging]);
        assert!(d.actions.is_empty());
    }

    #[test]
    fn a_fresh_node_is_made_a_replica_and_reads_fall_back_to_the_primary() {
        let mut c = cluster();
        let probes = vec![primary("0-1-10"), standalone_read_only(""), down()];
        let d = round(&mut c, &probes);
        assert_eq!(d.actions, vec![Action::Rejoin(1)]);
        assert_eq!(d.read, vec![0], "no replica yet: the primary serves reads");
        assert_eq!(d.roles, vec![Role::Primary, Role::Standby, Role::Down]);
    }

    #[test]
    fn failover_waits_for_fail_after_then_promotes_the_most_advanced_replica() {
        let mut c = cluster();
        let healthy = vec![
            primary("0-1-10"),
            replica_of("10.0.0.21", "0-1-8", Some(0)),
            replica_of("10.0.0.21", "0-1-10", Some(0)),
        ];
        round(&mut c, &healthy);
        let lost = vec![
            down(),
            replica_of("10.0.0.21", "0-1-8", None),
            replica_of("10.0.0.21", "0-1-10", None),
        ];
        for _ in 0..2 {
            let d = round(&mut c, &lost);
            assert!(d.actions.is_empty(), "{d:?}");
            assert_eq!(d.write, Some(0), "a blip keeps the primary");
        }
        let d = round(&mut c, &lost);
        assert_eq!(d.actions, vec![Action::Promote(2)], "db3 received more");
        assert_eq!((d.primary, d.write), (Some(2), Some(2)));
    }

    #[test]
    fn the_old_primary_comes_back_read_only_as_a_replica_of_the_new_one() {
        let mut c = cluster();
        c.primary = Some(1);
        // db1 restarted writable (no read_only in its config): fenced and re-pointed at once.
        let probes = vec![
            primary("0-1-10"),
            primary("0-1-10,0-2-12"),
            replica_of("10.0.0.22", "0-2-12", Some(0)),
        ];
        let d = round(&mut c, &probes);
        assert_eq!(d.primary, Some(1));
        assert_eq!(d.write, Some(1), "never the second writable node");
        assert_eq!(d.actions, vec![Action::Rejoin(0)]);
        assert_eq!(d.roles[0], Role::Fenced);
        assert_eq!(d.read, vec![2]);
    }

    #[test]
    fn a_writable_replica_is_fenced_not_rejoined() {
        let mut c = cluster();
        let mut probe = replica_of("10.0.0.21", "0-1-10", Some(0));
        if let Ok(seen) = probe.as_mut() {
            seen.read_only = false;
        }
        c.primary = Some(0);
        let d = round(&mut c, &vec![primary("0-1-10"), probe, down()]);
        assert_eq!(d.actions, vec![Action::Fence(1)]);
        assert!(!d.read.contains(&1));
    }

    #[test]
    fn two_writable_nodes_at_start_keep_the_most_advanced() {
        let mut c = cluster();
        let d = round(&mut c, &vec![primary("0-1-5"), primary("0-1-9"), down()]);
        assert_eq!((d.primary, d.write), (Some(1), Some(1)));
        assert_eq!(d.actions, vec![Action::Rejoin(0)]);
    }

    #[test]
    fn a_diverged_node_is_reported_and_left_alone() {
        let mut c = cluster();
        c.primary = Some(1);
        let mut probe = replica_of("10.0.0.22", "0-1-11", None);
        if let Ok(Observation {
            replica: Some(link),
            ..
        }) = probe.as_mut()
        {
            link.io_errno = ER_MASTER_FATAL_ERROR_READING_BINLOG;
        }
        let d = round(&mut c, &vec![probe, primary("0-2-12"), down()]);
        assert_eq!(d.roles[0], Role::Diverged);
        assert!(d.actions.is_empty());
        assert_eq!(d.read, vec![1]);
    }

    #[test]
    fn all_read_only_at_start_promotes_once_everyone_answered() {
        let mut c = cluster();
        let d = round(
            &mut c,
            &vec![
                standalone_read_only("0-1-10"),
                replica_of("10.0.0.21", "0-1-10", Some(0)),
                standalone_read_only("0-1-3"),
            ],
        );
        assert_eq!(
            d.actions,
            vec![Action::Promote(0)],
            "db1 is as far as db2 and replicates from nobody"
        );
    }

    #[test]
    fn no_failover_when_disabled() {
        let mut c = cluster();
        c.primary = Some(0);
        let settings = Settings {
            failover: false,
            ..SETTINGS
        };
        let lost: Probes = vec![
            down(),
            replica_of("10.0.0.21", "0-1-10", None),
            standalone_read_only(""),
        ];
        for _ in 0..5 {
            c.observe(&lost, Instant::now());
        }
        let d = c.decide(&lost, &settings);
        assert!(d.actions.is_empty());
        assert_eq!(d.write, None, "the primary is gone and nobody replaces it");
    }

    #[test]
    fn sql_strings_are_escaped() {
        assert_eq!(sql_string("a'b\\c"), "'a\\'b\\\\c'");
    }
}
