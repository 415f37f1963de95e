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

/// The position that holds what every one of `nodes` holds.
fn everything(nodes: &[(usize, GtidPosition)]) -> GtidPosition {
    nodes
        .iter()
        .fold(GtidPosition::default(), |acc, (_, g)| acc.union(g))
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
        let all = everything(&answering);
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
        let all = everything(&answering);
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
        let everything = everything(&self.answering(probes));
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
mod tests;
