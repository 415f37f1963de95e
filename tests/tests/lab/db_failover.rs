//! The seed's database single point of failure, closed: MariaDB db1 (primary) and db2 (made a
//! replica by the agent), semi-synchronous, behind the write and read VIPs. The primary is killed
//! while notes are written through the app: writes must succeed again through db2 within 5 s,
//! every acknowledged note must be on db2, and db1 must come back read-only as db2's replica,
//! never as a second writable node behind the write VIP.
use std::time::Duration;

use lb_tests::agent_lab::backend;
use xtask::{
    failover,
    lab::{addr, host, Lab, LabSpec},
    stack::{self, AgentOptions},
};

const FAILOVER_BUDGET: Duration = Duration::from_secs(5);

#[test]
#[ignore = "needs root"]
fn primary_killed_during_writes_fails_over_without_losing_an_acknowledged_write() {
    let lab = Lab::up(LabSpec::standard("lbt-db-")).unwrap_or_else(|e| panic!("lab: {e:#}"));
    let lb = stack::release_binary("lb").unwrap_or_else(|e| panic!("{e:#}"));
    let (db1, _db2) = stack::start_database_cluster(&lab).unwrap_or_else(|e| panic!("{e:#}"));
    let options = AgentOptions {
        web_health: Some("kind = \"http\"\npath = \"/healthz\"".into()),
        app_tier: true,
        database: true,
        ..AgentOptions::default()
    };
    stack::start_with(&lab, &options).unwrap_or_else(|e| panic!("{e:#}"));

    // The agent found db1 writable and made the empty db2 its replica.
    let status = failover::wait_for_roles(&lab, &lb, "db1", &["db2"], Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let nodes = &status["database"]["nodes"];
    assert_eq!(
        nodes[0]["semi_sync"], true,
        "acknowledged writes wait for db2: {status}"
    );
    assert_eq!(nodes[1]["read_only"], true, "{status}");
    assert_eq!(
        failover::write_served_by(&lab).unwrap_or_else(|e| panic!("{e:#}")),
        "db1"
    );
    failover::wait_caught_up(&lab, host::DB2, host::DB1, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:#}"));
    // Reads go to the replica.
    let read = lab
        .exec_stdout(
            host::CLIENT,
            &[
                "curl",
                "-sf",
                "-m",
                "3",
                &format!("http://{}/api/notes", addr::VIP_HTTP),
            ],
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        read.contains("\"name\":\"db2\""),
        "reads should be served by the replica db2: {read}"
    );
    // A node outside a VIP because of its role is standby, not down.
    for (service, node, state) in [
        ("db", "db2", "standby"),
        ("db", "db1", "active"),
        ("db-read", "db1", "standby"),
        ("db-read", "db2", "active"),
    ] {
        assert_eq!(
            backend(&lab, service, node)["state"],
            state,
            "{service} {node}"
        );
    }

    let report = failover::kill_primary_during_writes(
        &lab,
        &lb,
        "db1",
        db1,
        "db2",
        30,
        Duration::from_secs(20),
    )
    .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", lab.read_log("agent")));
    println!(
        "failover: {} ms as the client saw it (agent: {:?} ms); {} writes acknowledged, {} lost, {} failed",
        report.failover.as_millis(),
        report.agent_failover_ms,
        report.acked_writes,
        report.lost_writes,
        report.failed_writes
    );
    assert_eq!(report.lost_writes, 0, "acknowledged writes were lost");
    assert!(
        report.failover <= FAILOVER_BUDGET,
        "failover took {:?}",
        report.failover
    );
    assert_eq!(
        failover::write_served_by(&lab).unwrap_or_else(|e| panic!("{e:#}")),
        "db2"
    );

    // db1 returns read-only and becomes db2's replica; writes stay on db2.
    failover::bring_back_as_replica(&lab, &lb, "db1", "db2", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", lab.read_log("agent")));
    for _ in 0..6 {
        assert_eq!(
            failover::write_served_by(&lab).unwrap_or_else(|e| panic!("{e:#}")),
            "db2",
            "a write reached db1"
        );
    }
    failover::wait_caught_up(&lab, host::DB1, host::DB2, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let on_db1 = stack::mariadb_root(&lab, host::DB1, "SELECT COUNT(*) FROM notes.notes")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let on_db2 = stack::mariadb_root(&lab, host::DB2, "SELECT COUNT(*) FROM notes.notes")
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(on_db1, on_db2, "db1 has every note again");
    lab.down().unwrap_or_else(|e| panic!("{e:#}"));
}
