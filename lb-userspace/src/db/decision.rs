//! The failover decision, pure (no I/O): from what one round of probes saw and what the watch
//! remembers of earlier rounds, who is primary, what to change, and who serves writes and reads.
//!
//! Safe failover rests on semi-synchronous replication: while the primary's semi-sync is on and
//! none of its commits went asynchronous (`Rpl_semi_sync_master_no_tx` unchanged), every write it
//! acknowledged reached a replica's relay log. The [`Ledger`] keeps, round after round, what that
//! proof needs; [`Cluster::decide`] promotes in `safe` mode only when it holds, and otherwise says
//! why in [`Decision::blocked`].
use std::{collections::BTreeSet, net::SocketAddr, time::Duration, time::Instant};

use serde::{Deserialize, Serialize};

use super::gtid::GtidPosition;

/// One database node: a backend of the write service.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub addr: SocketAddr,
}

/// When the watch may promote a replica on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Only a replica that provably holds every acknowledged write; otherwise the write VIP stays
    /// empty until an operator promotes one.
    Safe,
    /// The most advanced replica, even when acknowledged writes may be missing from it.
    Available,
    /// Never change a node: watch, route and report only.
    Off,
}

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub interval: Duration,
    /// A probe slower than this makes the node "slow" for the round.
    pub timeout: Duration,
    /// A probe with no answer for this long makes the node "gone".
    pub give_up: Duration,
    pub fail_after: u32,
    pub max_lag_s: u64,
    pub policy: Policy,
}

/// MariaDB: "the slave requested a GTID the master's binlog does not have": the node holds
/// transactions the primary never saw, and must be rebuilt.
const ER_MASTER_FATAL_ERROR_READING_BINLOG: u32 = 1236;

/// What one probe of a node saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observation {
    pub read_only: bool,
    pub server_id: u64,
    /// `@@gtid_current_pos`: what the node has applied or written.
    pub gtid: GtidPosition,
    /// `None` when the node replicates from nobody.
    pub replica: Option<ReplicaLink>,
    /// `Rpl_semi_sync_master_status`: acknowledged writes wait for a replica.
    pub semi_sync: bool,
    /// `Rpl_semi_sync_master_no_tx`: commits acknowledged without a replica since the node
    /// started (read before `gtid`, so each of them is inside `gtid`).
    pub async_commits: u64,
    /// `Uptime`: a restart resets `async_commits`.
    pub uptime_s: u64,
}

/// The IO (receiving) thread of a replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IoThread {
    /// Connected to its source (`Slave_IO_Running: Yes`).
    Running,
    /// Trying to reach its source (`Connecting`): the source is gone from its view.
    Connecting,
    /// Stopped by someone or by an error.
    #[default]
    Stopped,
}

/// The node's replication from a source (`SHOW SLAVE STATUS`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplicaLink {
    pub source_host: String,
    pub source_port: u16,
    pub io: IoThread,
    pub sql_running: bool,
    /// `Rpl_semi_sync_slave_status`: this replica acknowledges what it receives.
    pub semi_sync: bool,
    pub lag_s: Option<u64>,
    /// GTIDs received into the relay log (applied or not).
    pub gtid_io_pos: GtidPosition,
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

    /// Receiving from its source and acknowledging what it receives.
    fn acknowledging(&self) -> bool {
        self.io == IoThread::Running && self.semi_sync
    }
}

impl Observation {
    /// Everything the node holds: applied, or received into its relay log.
    pub fn received(&self) -> GtidPosition {
        match &self.replica {
            Some(link) => self.gtid.union(&link.gtid_io_pos),
            None => self.gtid.clone(),
        }
    }
}

/// Why a probe has no observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The node answered with an error, or refused or reset the connection.
    Refused(String),
    /// No answer yet after `timeout`, but not for `give_up` either: slow, maybe gone.
    Slow { waited_ms: u64 },
    /// No answer for `give_up`.
    GaveUp(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused(why) => f.write_str(why),
            Failure::Slow { waited_ms } => write!(f, "no answer yet after {waited_ms} ms"),
            Failure::GaveUp(why) => f.write_str(why),
        }
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
    /// Why there is no writable primary and the watch will not make one on its own.
    pub blocked: Option<String>,
}

/// Probe results of one round.
pub type Probes = Vec<Result<Observation, Failure>>;

/// What the watch knows about the current primary's acknowledged writes: enough to tell whether
/// a replica holds all of them. Kept across reloads and restarts (see `memory`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// The primary this is about.
    pub primary: String,
    /// `async_commits` at the primary's last answer.
    pub async_commits: u64,
    /// Where the primary stood when it was last seen acknowledging writes without a replica: the
    /// new primary must hold this.
    pub required: GtidPosition,
    /// Why `required` was raised, for the operator.
    pub required_because: Option<String>,
    /// Semi-sync was on at the primary's last answer.
    pub semi_sync: bool,
    /// Nodes that were acknowledging the primary's writes at its last answer and whose link has
    /// not been seen broken since.
    pub covering: BTreeSet<String>,
}

/// The agent's memory of the cluster between rounds.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub primary: Option<usize>,
    /// Consecutive failed probes per node (for the primary: not answering, or read-only).
    pub failures: Vec<u32>,
    /// When each node's current run of failures began.
    pub failing_since: Vec<Option<Instant>>,
    /// Nodes whose last probe got no answer within `give_up`, until they answer again.
    pub gone: Vec<bool>,
    /// Rounds since start.
    pub rounds: u32,
    pub ledger: Option<Ledger>,
    /// A promotion decided earlier and not confirmed done (an agent that died mid-way).
    pub promoting: Option<usize>,
    /// The primary's `Uptime` at its last answer: a smaller one means it restarted (and its
    /// async-commit counter with it). Not in the ledger: it would change the saved memory
    /// every second.
    pub primary_uptime_s: Option<u64>,
}

impl Cluster {
    pub fn new(nodes: Vec<Node>) -> Self {
        let n = nodes.len();
        Cluster {
            nodes,
            primary: None,
            failures: vec![0; n],
            failing_since: vec![None; n],
            gone: vec![false; n],
            rounds: 0,
            ledger: None,
            promoting: None,
            primary_uptime_s: None,
        }
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Some replica still receives from node `p` (its own view of its source): `p` is alive.
    fn seen_alive_by_replicas(&self, p: usize, probes: &Probes) -> Option<usize> {
        (0..self.nodes.len()).filter(|&i| i != p).find(|&i| {
            probes[i].as_ref().is_ok_and(|seen| {
                seen.replica
                    .as_ref()
                    .is_some_and(|r| r.replicates_from(&self.nodes[p]) && r.io == IoThread::Running)
            })
        })
    }

    /// Counts this round's failures and brings the ledger up to date.
    pub fn observe(&mut self, probes: &Probes, now: Instant) {
        self.rounds = self.rounds.saturating_add(1);
        for (i, probe) in probes.iter().enumerate() {
            let failed = match probe {
                Err(Failure::Refused(_)) => true,
                Err(Failure::GaveUp(_)) => {
                    self.gone[i] = true;
                    true
                }
                // Slow is not down while a replica still receives from it.
                Err(Failure::Slow { .. }) => {
                    self.gone[i] || self.seen_alive_by_replicas(i, probes).is_none()
                }
                // A primary someone made read-only takes no writes: as good as gone.
                Ok(seen) => {
                    self.gone[i] = false;
                    self.primary == Some(i) && seen.read_only
                }
            };
            if failed {
                self.failures[i] = self.failures[i].saturating_add(1);
                self.failing_since[i].get_or_insert(now);
            } else if probe.is_ok() {
                self.failures[i] = 0;
                self.failing_since[i] = None;
            }
        }
        self.update_ledger(probes);
    }

    /// Takes node `p` as the primary (found at start) and starts its ledger from this round.
    pub fn adopt_primary(&mut self, p: usize, probes: &Probes) {
        self.primary = Some(p);
        self.update_ledger(probes);
    }

    fn update_ledger(&mut self, probes: &Probes) {
        let Some(p) = self.primary else { return };
        let name = self.nodes[p].name.clone();
        let fresh = self.ledger.as_ref().is_none_or(|l| l.primary != name);
        match &probes[p] {
            Ok(seen) if !seen.read_only => {
                if fresh {
                    self.primary_uptime_s = None;
                }
                let ledger = if fresh {
                    // First sight of this primary: what it did before is unknown, so every
                    // replica must hold all it has now (its whole history).
                    self.ledger.insert(Ledger {
                        primary: name.clone(),
                        async_commits: seen.async_commits,
                        required: seen.gtid.clone(),
                        required_because: Some(format!(
                            "the watch first saw {name} as primary at {}",
                            seen.gtid
                        )),
                        ..Ledger::default()
                    })
                } else {
                    self.ledger.get_or_insert_with(Ledger::default)
                };
                let restarted = self
                    .primary_uptime_s
                    .is_some_and(|before| seen.uptime_s < before)
                    || seen.async_commits < ledger.async_commits;
                let went_async =
                    !seen.semi_sync || (!restarted && seen.async_commits > ledger.async_commits);
                if went_async {
                    ledger.required = ledger.required.union(&seen.gtid);
                    ledger.required_because = Some(if seen.semi_sync {
                        format!(
                            "{name} acknowledged {} commits without a replica (semi-sync timed out), up to {}",
                            seen.async_commits.saturating_sub(ledger.async_commits),
                            seen.gtid
                        )
                    } else {
                        format!("{name} ran without semi-sync at {}", seen.gtid)
                    });
                }
                ledger.async_commits = seen.async_commits;
                self.primary_uptime_s = Some(seen.uptime_s);
                ledger.semi_sync = seen.semi_sync;
                ledger.covering = (0..self.nodes.len())
                    .filter(|&i| i != p)
                    .filter(|&i| {
                        probes[i].as_ref().is_ok_and(|s| {
                            s.replica.as_ref().is_some_and(|r| {
                                r.replicates_from(&self.nodes[p]) && r.acknowledging()
                            })
                        })
                    })
                    .map(|i| self.nodes[i].name.clone())
                    .collect();
            }
            _ => {
                let Some(ledger) = self.ledger.as_mut().filter(|_| !fresh) else {
                    return;
                };
                // The primary did not answer: a replica whose link was stopped (rather than
                // lost with its source) or that we cannot see may have missed acknowledged writes.
                let nodes = &self.nodes;
                ledger.covering.retain(|c| {
                    nodes.iter().position(|n| &n.name == c).is_some_and(|i| {
                        probes[i].as_ref().is_ok_and(|s| {
                            s.replica.as_ref().is_some_and(|r| {
                                r.replicates_from(&nodes[p])
                                    && match r.io {
                                        IoThread::Running => r.semi_sync,
                                        IoThread::Connecting => true,
                                        IoThread::Stopped => false,
                                    }
                            })
                        })
                    })
                });
            }
        }
    }

    /// Every answering node that is not diverged, with what it holds.
    fn answering(&self, probes: &Probes) -> Vec<(usize, GtidPosition)> {
        probes
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().ok().map(|seen| (i, seen)))
            .filter(|(_, seen)| !seen.replica.as_ref().is_some_and(ReplicaLink::diverged))
            .map(|(i, seen)| (i, seen.received()))
            .collect()
    }

    /// The answering node whose received position holds every other's, if one does; among
    /// equals a replica of `old`, then the lowest index.
    fn most_advanced(&self, probes: &Probes, old: Option<usize>) -> Option<usize> {
        let answering = self.answering(probes);
        let all = answering
            .iter()
            .fold(GtidPosition::default(), |acc, (_, g)| acc.union(g));
        answering
            .iter()
            .filter(|(_, g)| g.holds(&all))
            .max_by_key(|(i, _)| {
                let from_old = old.is_some_and(|old| self.link_from(probes, *i, old));
                (from_old, std::cmp::Reverse(*i))
            })
            .map(|(i, _)| *i)
    }

    /// The answering node that lacks the fewest transactions of all the others.
    fn least_behind(&self, probes: &Probes, old: Option<usize>) -> Option<usize> {
        let answering = self.answering(probes);
        let all = answering
            .iter()
            .fold(GtidPosition::default(), |acc, (_, g)| acc.union(g));
        answering
            .iter()
            .max_by_key(|(i, g)| {
                let from_old = old.is_some_and(|old| self.link_from(probes, *i, old));
                (
                    std::cmp::Reverse(g.missing(&all)),
                    from_old,
                    std::cmp::Reverse(*i),
                )
            })
            .map(|(i, _)| *i)
    }

    fn link_from(&self, probes: &Probes, i: usize, source: usize) -> bool {
        probes[i].as_ref().is_ok_and(|seen| {
            seen.replica
                .as_ref()
                .is_some_and(|r| r.replicates_from(&self.nodes[source]))
        })
    }

    /// The replica to replace failed primary `old` with in safe mode, or why there is none.
    fn safe_candidate(&self, probes: &Probes, old: usize) -> Result<usize, String> {
        let old_name = &self.nodes[old].name;
        // The old primary back (read-only after a restart) holds what it acknowledged itself.
        let everything = self
            .answering(probes)
            .iter()
            .fold(GtidPosition::default(), |acc, (_, g)| acc.union(g));
        if probes[old]
            .as_ref()
            .is_ok_and(|seen| seen.received().holds(&everything))
        {
            return Ok(old);
        }

        let ledger = self
            .ledger
            .as_ref()
            .filter(|l| &l.primary == old_name)
            .ok_or_else(|| {
                format!("the watch never saw {old_name} answer as primary, so it cannot tell which writes it acknowledged")
            })?;
        if !ledger.semi_sync {
            return Err(format!("{old_name} ran without semi-synchronous replication at its last answer: writes it acknowledged may be on no replica"));
        }
        if let Some(silent) = (0..self.nodes.len()).find(|&i| i != old && probes[i].is_err()) {
            return Err(format!(
                "{} does not answer: it may hold writes {old_name} acknowledged that no other node has",
                self.nodes[silent].name
            ));
        }
        let c = self
            .most_advanced(probes, Some(old))
            .ok_or_else(|| "no replica holds every transaction the others received".to_string())?;
        let name = &self.nodes[c].name;
        let received = probes[c]
            .as_ref()
            .map(Observation::received)
            .unwrap_or_default();
        if !received.holds(&ledger.required) {
            return Err(format!(
                "{name} lacks {} transactions {old_name} acknowledged: it holds {received}, it needs {} ({})",
                received.missing(&ledger.required),
                ledger.required,
                ledger.required_because.as_deref().unwrap_or("")
            ));
        }
        if !ledger.covering.contains(name) {
            return Err(format!("{name} was not acknowledging {old_name}'s writes at its last answer, or its replication was stopped since (IO thread or semi-sync off)"));
        }
        Ok(c)
    }

    /// Decides this round: who is primary, what to change, who serves writes and reads.
    pub fn decide(&self, probes: &Probes, settings: &Settings) -> Decision {
        let n = self.nodes.len();
        let acting = settings.policy != Policy::Off;
        let mut actions = Vec::new();
        let mut primary = self.primary;
        let mut promoted = None;
        let mut blocked = None;
        match (self.primary, self.promoting) {
            // An earlier promotion was decided with full knowledge: finish it.
            (_, Some(c)) if acting && probes[c].is_ok() => promoted = Some(c),
            (Some(p), _) if self.failures[p] >= settings.fail_after => {
                let name = &self.nodes[p].name;
                match settings.policy {
                    Policy::Safe => match self.safe_candidate(probes, p) {
                        Ok(c) => promoted = Some(c),
                        Err(why) => {
                            blocked = Some(format!(
                                "{name} failed and no replica is promoted: {why}; `lb db promote NODE --force` takes responsibility"
                            ))
                        }
                    },
                    Policy::Available => {
                        promoted = self.least_behind(probes, Some(p));
                        if promoted.is_none() {
                            blocked = Some(format!("{name} failed and no other node answers"));
                        }
                    }
                    Policy::Off => {
                        blocked = Some(format!("{name} failed; failover is off"));
                    }
                }
            }
            (Some(_), _) => {}
            (None, _) => {
                let writable: Vec<usize> = (0..n)
                    .filter(|&i| probes[i].as_ref().is_ok_and(|s| !s.read_only))
                    .collect();
                let all_answered = probes.iter().all(Result::is_ok);
                if writable.len() == 1 {
                    primary = Some(writable[0]);
                } else if writable.len() > 1 {
                    let names: Vec<&str> = writable
                        .iter()
                        .map(|&i| self.nodes[i].name.as_str())
                        .collect();
                    if settings.policy == Policy::Available {
                        // Keep the least behind; the others are fenced below.
                        primary = self.least_behind(probes, None);
                    } else {
                        blocked = Some(format!(
                            "{} are all writable and the watch has no record of which is the primary; `lb db promote NODE --force` picks one",
                            names.join(" and ")
                        ));
                    }
                } else if acting
                    && (all_answered
                        || (settings.policy == Policy::Available
                            && self.rounds >= settings.fail_after))
                {
                    // Nobody writable (e.g. all restarted read-only): the node that holds what
                    // every other holds loses nothing.
                    promoted = self.most_advanced(probes, None);
                    if promoted.is_none() && settings.policy == Policy::Available {
                        promoted = self.least_behind(probes, None);
                    }
                    if promoted.is_none() {
                        blocked = Some("every node is read-only and none holds every transaction the others have; `lb db promote NODE --force` picks one".into());
                    }
                } else if !all_answered {
                    blocked = Some("every answering node is read-only; waiting for all nodes to answer before choosing a primary".into());
                }
            }
        }
        if let Some(c) = promoted {
            actions.push(Action::Promote(c));
            primary = Some(c);
            blocked = None;
        }

        let mut roles = vec![Role::Unknown; n];
        let mut read = Vec::new();
        for i in 0..n {
            let seen = match &probes[i] {
                // Slow but still replicated from: alive, keep its role.
                Err(Failure::Slow { .. })
                    if Some(i) == primary && !self.gone[i] && self.failures[i] == 0 =>
                {
                    roles[i] = Role::Primary;
                    continue;
                }
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
                    if r.io == IoThread::Running
                        && r.sql_running
                        && r.lag_s.is_some_and(|lag| lag <= settings.max_lag_s) =>
                {
                    Role::Replica
                }
                Some(_) => Role::Lagging,
                // Not replicating, and holding transactions the primary lacks: re-pointing it
                // would fail; it needs an operator.
                None if probes[p]
                    .as_ref()
                    .is_ok_and(|primary| !primary.gtid.holds(&seen.gtid)) =>
                {
                    Role::Diverged
                }
                None => Role::Standby,
            };
            // Changes to the others wait for a promotion to be done (next round), and re-pointing
            // waits for a primary that answers.
            let primary_answers = probes[p].as_ref().is_ok_and(|s| !s.read_only);
            if acting && promoted.is_none() {
                match roles[i] {
                    Role::Fenced if link.is_some() => actions.push(Action::Fence(i)),
                    Role::Fenced if !primary_answers => actions.push(Action::Fence(i)),
                    Role::Fenced | Role::Standby if primary_answers => {
                        actions.push(Action::Rejoin(i))
                    }
                    // A replica of the primary with a thread stopped (not by an error): restart it.
                    Role::Lagging
                        if primary_answers
                            && link.is_some_and(|r| {
                                (r.io == IoThread::Stopped || !r.sql_running)
                                    && r.io_errno == 0
                                    && r.sql_errno == 0
                            }) =>
                    {
                        actions.push(Action::Rejoin(i))
                    }
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
            blocked,
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Cluster {
        let node = |name: &str, addr: &str| Node {
            name: name.into(),
            addr: addr.parse().unwrap_or_else(|e| panic!("{e}")),
        };
        Cluster::new(vec![
            node("db1", "10.0.0.21:3306"),
            node("db2", "10.0.0.22:3306"),
            node("db3", "10.0.0.23:3306"),
        ])
    }

    const SETTINGS: Settings = Settings {
        interval: Duration::from_millis(200),
        timeout: Duration::from_millis(500),
        give_up: Duration::from_secs(6),
        fail_after: 3,
        max_lag_s: 10,
        policy: Policy::Safe,
    };

    fn at(text: &str) -> GtidPosition {
        GtidPosition::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A writable primary with semi-sync on and `async_commits` commits that went asynchronous.
    fn primary_with(gtid: &str, async_commits: u64) -> Result<Observation, Failure> {
        Ok(Observation {
            read_only: false,
            gtid: at(gtid),
            semi_sync: true,
            async_commits,
            uptime_s: 100,
            ..Default::default()
        })
    }

    fn primary(gtid: &str) -> Result<Observation, Failure> {
        primary_with(gtid, 0)
    }

    fn replica_of(source: &str, gtid: &str, lag: Option<u64>) -> Result<Observation, Failure> {
        Ok(Observation {
            read_only: true,
            gtid: at(gtid),
            replica: Some(ReplicaLink {
                source_host: source.into(),
                source_port: 3306,
                io: if lag.is_some() {
                    IoThread::Running
                } else {
                    IoThread::Connecting
                },
                sql_running: true,
                semi_sync: lag.is_some(),
                lag_s: lag,
                gtid_io_pos: at(gtid),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// `probe` with its IO thread set to `io`.
    fn with_io(
        mut probe: Result<Observation, Failure>,
        io: IoThread,
    ) -> Result<Observation, Failure> {
        if let Ok(Observation {
            replica: Some(link),
            ..
        }) = probe.as_mut()
        {
            link.io = io;
            link.semi_sync = io == IoThread::Running;
        }
        probe
    }

    fn standalone_read_only(gtid: &str) -> Result<Observation, Failure> {
        Ok(Observation {
            read_only: true,
            gtid: at(gtid),
            ..Default::default()
        })
    }

    fn down() -> Result<Observation, Failure> {
        Err(Failure::Refused("connection refused".into()))
    }

    fn slow() -> Result<Observation, Failure> {
        Err(Failure::Slow { waited_ms: 500 })
    }

    fn round_with(c: &mut Cluster, probes: &Probes, settings: &Settings) -> Decision {
        c.observe(probes, Instant::now());
        let d = c.decide(probes, settings);
        if !d.actions.iter().any(|a| matches!(a, Action::Promote(_))) {
            match d.primary {
                Some(p) if c.primary != Some(p) => c.adopt_primary(p, probes),
                other => c.primary = other,
            }
        }
        d
    }

    fn round(c: &mut Cluster, probes: &Probes) -> Decision {
        round_with(c, probes, &SETTINGS)
    }

    /// db1 primary at 0-1-10, db2 and db3 replicas acknowledging its writes.
    fn healthy() -> Probes {
        vec![
            primary("0-1-10"),
            replica_of("10.0.0.21", "0-1-10", Some(0)),
            replica_of("10.0.0.21", "0-1-10", Some(0)),
        ]
    }

    fn promoted(d: &Decision) -> Option<usize> {
        d.actions.iter().find_map(|a| match a {
            Action::Promote(c) => Some(*c),
            _ => None,
        })
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
        assert_eq!(d.blocked, None);
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
    fn failover_waits_for_fail_after_then_promotes_the_replica_holding_everything() {
        let mut c = cluster();
        round(
            &mut c,
            &vec![
                primary("0-1-10"),
                replica_of("10.0.0.21", "0-1-8", Some(0)),
                replica_of("10.0.0.21", "0-1-10", Some(0)),
            ],
        );
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
        assert_eq!(d.blocked, None);
    }

    #[test]
    fn safe_mode_refuses_a_replica_whose_io_thread_was_stopped() {
        let mut c = cluster();
        round(&mut c, &healthy());
        // db2's and db3's IO threads stopped while db1 still takes writes.
        let stopped = vec![
            primary_with("0-1-12", 2),
            with_io(
                replica_of("10.0.0.21", "0-1-10", Some(0)),
                IoThread::Stopped,
            ),
            with_io(
                replica_of("10.0.0.21", "0-1-10", Some(0)),
                IoThread::Stopped,
            ),
        ];
        round_with(
            &mut c,
            &stopped,
            &Settings {
                policy: Policy::Off,
                ..SETTINGS
            },
        );
        let lost = vec![
            down(),
            with_io(replica_of("10.0.0.21", "0-1-10", None), IoThread::Stopped),
            with_io(replica_of("10.0.0.21", "0-1-10", None), IoThread::Stopped),
        ];
        let d = (0..3)
            .map(|_| round(&mut c, &lost))
            .last()
            .unwrap_or_else(|| panic!());
        assert!(d.actions.is_empty(), "{d:?}");
        assert_eq!(d.write, None, "the write VIP stays empty");
        let why = d.blocked.unwrap_or_default();
        assert!(why.contains("lacks 2 transactions"), "{why}");
        assert!(why.contains("lb db promote"), "{why}");

        // The operator's choice, or the available policy, promotes anyway.
        let available = Settings {
            policy: Policy::Available,
            ..SETTINGS
        };
        assert_eq!(promoted(&c.decide(&lost, &available)), Some(1));
    }

    #[test]
    fn safe_mode_refuses_a_replica_that_stopped_acknowledging_before_the_primary_died() {
        let mut c = cluster();
        round(&mut c, &healthy());
        // db1 answers while db2 and db3 no longer acknowledge (no async commit seen yet).
        round(
            &mut c,
            &vec![
                primary("0-1-10"),
                with_io(
                    replica_of("10.0.0.21", "0-1-10", Some(0)),
                    IoThread::Connecting,
                ),
                with_io(
                    replica_of("10.0.0.21", "0-1-10", Some(0)),
                    IoThread::Stopped,
                ),
            ],
        );
        let lost = vec![
            down(),
            replica_of("10.0.0.21", "0-1-10", None),
            replica_of("10.0.0.21", "0-1-10", None),
        ];
        let d = (0..3)
            .map(|_| round(&mut c, &lost))
            .last()
            .unwrap_or_else(|| panic!());
        let why = d.blocked.unwrap_or_default();
        assert!(why.contains("was not acknowledging"), "{why}");
    }

    #[test]
    fn a_replica_that_caught_up_after_async_commits_is_promoted() {
        let mut c = cluster();
        round(&mut c, &healthy());
        // Two commits went asynchronous at 0-1-12, then the replicas caught up to 0-1-13.
        round(
            &mut c,
            &vec![
                primary_with("0-1-12", 2),
                replica_of("10.0.0.21", "0-1-11", Some(0)),
                replica_of("10.0.0.21", "0-1-11", Some(0)),
            ],
        );
        round(
            &mut c,
            &vec![
                primary_with("0-1-13", 2),
                replica_of("10.0.0.21", "0-1-13", Some(0)),
                replica_of("10.0.0.21", "0-1-13", Some(0)),
            ],
        );
        let lost = vec![
            down(),
            replica_of("10.0.0.21", "0-1-13", None),
            replica_of("10.0.0.21", "0-1-13", None),
        ];
        let d = (0..3)
            .map(|_| round(&mut c, &lost))
            .last()
            .unwrap_or_else(|| panic!());
        assert_eq!(promoted(&d), Some(1), "{d:?}");
    }

    #[test]
    fn safe_mode_refuses_after_the_primary_ran_without_semi_sync() {
        let mut c = cluster();
        let mut no_semi = primary("0-1-10");
        if let Ok(seen) = no_semi.as_mut() {
            seen.semi_sync = false;
        }
        round(
            &mut c,
            &vec![
                no_semi,
                replica_of("10.0.0.21", "0-1-10", Some(0)),
                replica_of("10.0.0.21", "0-1-10", Some(0)),
            ],
        );
        let lost = vec![
            down(),
            replica_of("10.0.0.21", "0-1-10", None),
            replica_of("10.0.0.21", "0-1-10", None),
        ];
        let d = (0..3)
            .map(|_| round(&mut c, &lost))
            .last()
            .unwrap_or_else(|| panic!());
        assert!(d
            .blocked
            .unwrap_or_default()
            .contains("without semi-synchronous"));
    }

    #[test]
    fn safe_mode_waits_for_every_other_node_to_answer() {
        let mut c = cluster();
        round(&mut c, &healthy());
        let lost = vec![down(), replica_of("10.0.0.21", "0-1-10", None), down()];
        let d = (0..3)
            .map(|_| round(&mut c, &lost))
            .last()
            .unwrap_or_else(|| panic!());
        assert!(d.actions.is_empty());
        assert!(d
            .blocked
            .unwrap_or_default()
            .contains("db3 does not answer"));
    }

    #[test]
    fn safe_mode_needs_to_have_seen_the_primary() {
        let mut c = cluster();
        c.primary = Some(0);
        let lost = vec![
            down(),
            replica_of("10.0.0.21", "0-1-10", None),
            replica_of("10.0.0.21", "0-1-10", None),
        ];
        let d = (0..3)
            .map(|_| round(&mut c, &lost))
            .last()
            .unwrap_or_else(|| panic!());
        assert!(d.blocked.unwrap_or_default().contains("never saw db1"));
        let available = Settings {
            policy: Policy::Available,
            ..SETTINGS
        };
        assert_eq!(promoted(&c.decide(&lost, &available)), Some(1));
    }

    #[test]
    fn the_ledger_changes_only_with_what_it_proves() {
        let mut c = cluster();
        round(&mut c, &healthy());
        let before = c.ledger.clone();
        assert!(before.is_some());
        let mut later = healthy();
        if let Ok(seen) = later[0].as_mut() {
            seen.uptime_s += 5;
            seen.gtid = at("0-1-11");
        }
        round(&mut c, &later);
        assert_eq!(
            c.ledger, before,
            "a new position or uptime alone must not rewrite the saved memory"
        );
        // A restart resets the async counter: not evidence of async commits.
        let mut restarted = healthy();
        if let Ok(seen) = restarted[0].as_mut() {
            seen.uptime_s = 3;
        }
        round(&mut c, &restarted);
        let mut counted = healthy();
        if let Ok(seen) = counted[0].as_mut() {
            seen.uptime_s = 4;
            seen.async_commits = 1;
            seen.gtid = at("0-1-12");
        }
        round(&mut c, &counted);
        assert_eq!(
            c.ledger.as_ref().map(|l| l.required.to_string()).as_deref(),
            Some("0-1-12")
        );
    }

    #[test]
    fn a_slow_primary_that_replicas_still_receive_from_is_not_failed_over() {
        let mut c = cluster();
        round(&mut c, &healthy());
        let slow_but_replicated = vec![
            slow(),
            replica_of("10.0.0.21", "0-1-10", Some(0)),
            replica_of("10.0.0.21", "0-1-10", Some(0)),
        ];
        for _ in 0..10 {
            let d = round(&mut c, &slow_but_replicated);
            assert!(d.actions.is_empty(), "{d:?}");
            assert_eq!((d.write, d.roles[0]), (Some(0), Role::Primary));
        }
        // Replicas lost it too: counted, and failed over after fail_after rounds.
        let slow_and_lost = vec![
            slow(),
            replica_of("10.0.0.21", "0-1-10", None),
            replica_of("10.0.0.21", "0-1-10", None),
        ];
        let d = (0..3)
            .map(|_| round(&mut c, &slow_and_lost))
            .last()
            .unwrap_or_else(|| panic!());
        assert_eq!(promoted(&d), Some(1));
    }

    #[test]
    fn a_primary_that_gave_no_answer_for_give_up_counts_even_while_replicated_from() {
        let mut c = cluster();
        round(&mut c, &healthy());
        let mut gone = healthy();
        gone[0] = Err(Failure::GaveUp("no answer in 6000 ms".into()));
        round(&mut c, &gone);
        let mut still = healthy();
        still[0] = slow();
        round(&mut c, &still);
        let d = round(&mut c, &still);
        assert_eq!(
            promoted(&d),
            Some(1),
            "partitioned from the agent, not slow: {d:?}"
        );
    }

    #[test]
    fn the_old_primary_back_read_only_is_promoted_again_when_nobody_else_holds_its_writes() {
        let mut c = cluster();
        round(&mut c, &healthy());
        // Semi-sync timed out and stayed off: the ledger alone would refuse everyone.
        let mut alone = primary_with("0-1-12", 2);
        if let Ok(seen) = alone.as_mut() {
            seen.semi_sync = false;
        }
        round(
            &mut c,
            &vec![
                alone,
                with_io(
                    replica_of("10.0.0.21", "0-1-10", Some(0)),
                    IoThread::Stopped,
                ),
                with_io(
                    replica_of("10.0.0.21", "0-1-10", Some(0)),
                    IoThread::Stopped,
                ),
            ],
        );
        let lost = vec![
            down(),
            with_io(replica_of("10.0.0.21", "0-1-10", None), IoThread::Stopped),
            with_io(replica_of("10.0.0.21", "0-1-10", None), IoThread::Stopped),
        ];
        for _ in 0..3 {
            round(&mut c, &lost);
        }
        let mut back = lost.clone();
        back[0] = standalone_read_only("0-1-12");
        let d = round(&mut c, &back);
        assert_eq!(promoted(&d), Some(0), "{d:?}");
    }

    #[test]
    fn the_old_primary_comes_back_read_only_as_a_replica_of_the_new_one() {
        let mut c = cluster();
        c.primary = Some(1);
        // db1 restarted writable (no read_only in its config): fenced and re-pointed at once.
        let probes = vec![
            primary("0-1-10"),
            primary("0-2-12"),
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
    fn two_writable_nodes_without_a_record_need_an_operator_in_safe_mode() {
        let probes = vec![primary("0-1-5"), primary("0-1-9"), down()];
        let mut c = cluster();
        let d = round(&mut c, &probes);
        assert_eq!((d.primary, d.write), (None, None));
        assert!(d.actions.is_empty());
        assert!(d
            .blocked
            .unwrap_or_default()
            .contains("db1 and db2 are all writable"));

        let mut c = cluster();
        let available = Settings {
            policy: Policy::Available,
            ..SETTINGS
        };
        let d = round_with(&mut c, &probes, &available);
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
            link.io = IoThread::Stopped;
        }
        let d = round(&mut c, &vec![probe, primary("0-2-12"), down()]);
        assert_eq!(d.roles[0], Role::Diverged);
        assert!(d.actions.is_empty());
        assert_eq!(d.read, vec![1]);
    }

    #[test]
    fn a_returning_node_with_transactions_the_primary_lacks_is_not_re_pointed() {
        let mut c = cluster();
        c.primary = Some(1);
        let d = round(
            &mut c,
            &vec![
                standalone_read_only("0-1-12,1-1-3"),
                primary("0-2-14"),
                down(),
            ],
        );
        assert_eq!(d.roles[0], Role::Diverged);
        assert!(d.actions.is_empty(), "{d:?}");
        assert!(!d.read.contains(&0) && d.write == Some(1));
    }

    #[test]
    fn a_stopped_replica_is_restarted() {
        let mut c = cluster();
        let probes = vec![
            primary("0-1-10"),
            with_io(replica_of("10.0.0.21", "0-1-9", Some(0)), IoThread::Stopped),
            replica_of("10.0.0.21", "0-1-10", Some(0)),
        ];
        let d = round(&mut c, &probes);
        assert_eq!(d.roles[1], Role::Lagging);
        assert_eq!(d.actions, vec![Action::Rejoin(1)]);
    }

    #[test]
    fn an_unfinished_promotion_is_finished() {
        let mut c = cluster();
        c.primary = Some(0);
        c.promoting = Some(1);
        let probes = vec![down(), replica_of("10.0.0.21", "0-1-10", None), down()];
        c.observe(&probes, Instant::now());
        let d = c.decide(&probes, &SETTINGS);
        assert_eq!(d.actions, vec![Action::Promote(1)]);
    }

    #[test]
    fn all_read_only_at_start_promotes_the_node_holding_everything() {
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
        let mut c = cluster();
        let d = round(
            &mut c,
            &vec![
                standalone_read_only("0-1-10"),
                standalone_read_only("0-1-3,1-2-5"),
                down(),
            ],
        );
        assert!(d.actions.is_empty(), "not everyone answered: {d:?}");
        let d = round(
            &mut c,
            &vec![
                standalone_read_only("0-1-10"),
                standalone_read_only("0-1-3,1-2-5"),
                standalone_read_only(""),
            ],
        );
        assert!(d.actions.is_empty(), "nobody holds everything: {d:?}");
        assert!(d.blocked.is_some());
    }

    #[test]
    fn no_failover_when_off() {
        let mut c = cluster();
        round(&mut c, &healthy());
        let off = Settings {
            policy: Policy::Off,
            ..SETTINGS
        };
        let lost: Probes = vec![
            down(),
            replica_of("10.0.0.21", "0-1-10", None),
            standalone_read_only(""),
        ];
        let d = (0..5)
            .map(|_| round_with(&mut c, &lost, &off))
            .last()
            .unwrap_or_else(|| panic!());
        assert!(d.actions.is_empty());
        assert_eq!(d.write, None, "the primary is gone and nobody replaces it");
        assert!(d.blocked.unwrap_or_default().contains("failover is off"));
    }
}
