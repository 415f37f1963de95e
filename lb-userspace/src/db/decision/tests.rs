//! The decision on scripted rounds of probes: failover, refusals, slowness, roles.
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
fn with_io(mut probe: Result<Observation, Failure>, io: IoThread) -> Result<Observation, Failure> {
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
