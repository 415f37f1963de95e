//! The failover decision, pure (no I/O): from what one round of probes saw and what the watch
//! remembers of earlier rounds, who is primary, what to change, and who serves writes and reads.
use std::{net::SocketAddr, time::Duration, time::Instant};

use serde::Serialize;

/// One database node: a backend of the write service.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub addr: SocketAddr,
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
}
