//! Health checks against real servers being stopped and started: nginx behind an HTTP check and
//! MariaDB behind a MySQL check (login, `SELECT 1`, writable primary). A dead backend must leave
//! the rotation within interval x fall (600 ms by default) and return after `rise` good checks.
use std::time::{Duration, Instant};

use lb_tests::agent_lab::{answers, backend, wait_for_state};
use xtask::{
    lab::{addr, host, Lab, LabSpec},
    stack::{self, AgentOptions, MYSQL_CHECK_PASSWORD, MYSQL_CHECK_USER},
};

/// Detection budget: interval x fall with the defaults, plus the time one check may take and
/// the poll of the API that observes it.
const DETECT_BUDGET: Duration = Duration::from_millis(1000);

#[track_caller]
fn within(what: &str, found: Option<Duration>, started: Instant, budget: Duration) -> Duration {
    let elapsed = started.elapsed();
    assert!(found.is_some(), "{what}: not seen within the wait");
    println!("{what}: {} ms", elapsed.as_millis());
    assert!(
        elapsed <= budget,
        "{what} took {elapsed:?}, budget {budget:?}"
    );
    elapsed
}

#[test]
#[ignore = "needs root"]
fn dead_backends_leave_the_rotation_within_the_budget_and_come_back() {
    let lab = Lab::up(LabSpec::standard("lbt-ag2-")).unwrap_or_else(|e| panic!("lab: {e:#}"));
    let lb = stack::release_binary("lb").unwrap_or_else(|e| panic!("{e:#}"));
    let web1 = stack::start_web_server(&lab, host::WEB1).unwrap_or_else(|e| panic!("{e:#}"));
    stack::start_web_server(&lab, host::WEB2).unwrap_or_else(|e| panic!("{e:#}"));
    let db1 = stack::start_mariadb(&lab, host::DB1).unwrap_or_else(|e| panic!("{e:#}"));
    stack::attach_peer_pass(&lab, &lb).unwrap_or_else(|e| panic!("{e:#}"));
    let options = AgentOptions {
        web_health: Some("kind = \"http\"\nexpect_status = 200".into()),
        api_token: None,
        db_health: Some(format!(
            "kind = \"mysql\"\nuser = \"{MYSQL_CHECK_USER}\"\npassword = \"{MYSQL_CHECK_PASSWORD}\"\nrole = \"primary\"\ntimeout_ms = 200"
        )),
        app_tier: false,
        database: false,
        firewall: false,
    };
    let config = stack::write_agent_config_with(&lab, &options).unwrap_or_else(|e| panic!("{e:#}"));
    let agent = stack::start_agent(&lab, &lb, &config).unwrap_or_else(|e| panic!("{e:#}"));
    let url = format!("http://{}/", addr::VIP_HTTP);

    // MariaDB answers the real protocol: login, SELECT 1, read_only off.
    let mut db = backend(&lab, "db", "db1");
    for _ in 0..50 {
        if db["health"]["last_ok"] == true {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        db = backend(&lab, "db", "db1");
    }
    assert_eq!(db["health"]["last_detail"], "primary (writable)", "{db}");
    assert_eq!(db["state"], "active", "{db}");

    // nginx on web1 stops: out within the budget, no client request fails.
    let stopped = Instant::now();
    lab.stop(web1).unwrap_or_else(|e| panic!("{e:#}"));
    let found = wait_for_state(&lab, "web-dsr", "web1", "down", Duration::from_secs(3));
    within(
        "web1 (nginx stopped) out of rotation after",
        found,
        stopped,
        DETECT_BUDGET,
    );
    let web1_state = backend(&lab, "web-dsr", "web1");
    assert_eq!(web1_state["health"]["up"], false, "{web1_state}");
    assert_eq!(backend(&lab, "web-nat", "web1")["state"], "down");
    let seen = answers(&lab, &url, 6);
    assert_eq!(
        seen.get("web2"),
        Some(&6),
        "requests while web1 is down: {seen:?}"
    );

    // nginx starts again: back after `rise` (2) good checks.
    stack::start_web_server(&lab, host::WEB1).unwrap_or_else(|e| panic!("{e:#}"));
    let started = Instant::now();
    let found = wait_for_state(&lab, "web-dsr", "web1", "active", Duration::from_secs(3));
    within(
        "web1 (nginx started) back in rotation after",
        found,
        started,
        Duration::from_millis(1000),
    );
    let seen = answers(&lab, &url, 4);
    assert_eq!(
        (seen.get("web1"), seen.get("web2")),
        (Some(&2), Some(&2)),
        "{seen:?}"
    );

    // MariaDB crashes (SIGKILL): out within the budget.
    let killed = Instant::now();
    assert!(lab.signal(db1, libc::SIGKILL));
    let found = wait_for_state(&lab, "db", "db1", "down", Duration::from_secs(3));
    within(
        "db1 (mariadbd killed) out of rotation after",
        found,
        killed,
        DETECT_BUDGET,
    );
    let _ = lab.stop(db1);
    let db = backend(&lab, "db", "db1");
    assert!(
        db["health"]["last_detail"]
            .as_str()
            .is_some_and(|d| d.contains("MySQL login")),
        "{db}"
    );

    // MariaDB starts again (same data): back after rise.
    let db1 = stack::start_mariadb(&lab, host::DB1).unwrap_or_else(|e| panic!("{e:#}"));
    let started = Instant::now();
    let found = wait_for_state(&lab, "db", "db1", "active", Duration::from_secs(3));
    within(
        "db1 (mariadbd started) back in rotation after",
        found,
        started,
        Duration::from_millis(1500),
    );

    // The role matters: a read-only server is no primary.
    let socket = format!(
        "--socket={}",
        lab.dir().join("mariadb-db1").join("mysqld.sock").display()
    );
    let sql = |statement: &str| {
        lab.exec(
            host::DB1,
            &[
                "mariadb",
                "--no-defaults",
                &socket,
                "-uroot",
                "-e",
                statement,
            ],
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    };
    sql("SET GLOBAL read_only = 1");
    let found = wait_for_state(&lab, "db", "db1", "down", Duration::from_secs(3));
    assert!(
        found.is_some(),
        "a read-only server stayed in the writer service"
    );
    let db = backend(&lab, "db", "db1");
    assert!(
        db["health"]["last_detail"]
            .as_str()
            .is_some_and(|d| d.contains("read_only is on")),
        "{db}"
    );
    sql("SET GLOBAL read_only = 0");
    assert!(wait_for_state(&lab, "db", "db1", "active", Duration::from_secs(3)).is_some());

    lab.stop(db1).unwrap_or_else(|e| panic!("{e:#}"));
    lab.stop(agent).unwrap_or_else(|e| panic!("{e:#}"));
    lab.down().unwrap_or_else(|e| panic!("{e:#}"));
}
