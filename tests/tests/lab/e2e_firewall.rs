//! The firewall end to end over namespaces: a denied client cannot connect while an allowed one
//! can; the database VIP takes the app servers and refuses the client; a flood from a denied
//! source never reaches a server while the rules are reloaded 100 times, and a legit client
//! sees no failed request meanwhile.
use std::{
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use lb_common::maps::Verdict;

use lb_tests::agent_lab::{curl, lb_err, lb_json, lb_ok};
use lb_userspace::{
    config,
    dataplane::{Dataplane, LoadOptions},
    firewall::{self, RuleSet},
    services::ServiceTable,
};
use xtask::{
    lab::{addr, host, Lab, LabSpec},
    stack,
};

/// A second address of the client namespace, listed in a drop rule.
const DENIED: &str = "10.99.0.66";
const FLOOD_PORT: u16 = 5353;
// Bounded in count and in time (6 s): it must overlap the 100 reloads (~5 s).
const FLOOD_PACKETS: u32 = 2_000_000;

const TOKEN: &str = "a-long-random-token-for-the-firewall-test";

fn agent_config(lab: &Lab, denied: &str) -> String {
    format!(
        r#"[agent]
interface = "eth0"
pin_path = "{pins}"

[api]
token_file = "{token_file}"

[[firewall.rule]]
name = "denied-client"
sources = ["{denied}/32"]
action = "drop"

[[service]]
name = "web"
vip = "{vip}"
port = 80
mode = "dsr"

[[service.backend]]
name = "web1"
address = "{web1}"

[[service.backend]]
name = "web2"
address = "{web2}"

[[service]]
name = "flood-target"
vip = "{vip}"
port = {flood_port}
protocol = "udp"
mode = "dsr"

[[service.backend]]
name = "web1"
address = "{web1}"

[[service]]
name = "db-write"
vip = "{db_vip}"
port = 3306
mode = "dsr"
allow_sources = ["{web1}/32", "{web2}/32"]

[[service.backend]]
name = "db1"
address = "{db1}"
"#,
        pins = stack::pin_dir(lab).display(),
        token_file = lab.dir().join("token").display(),
        vip = addr::VIP_HTTP,
        web1 = addr::WEB1,
        web2 = addr::WEB2,
        db1 = addr::DB1,
        db_vip = addr::VIP_DB_WRITE,
        flood_port = FLOOD_PORT,
    )
}

#[track_caller]
fn ok<T>(result: anyhow::Result<T>) -> T {
    result.unwrap_or_else(|e| panic!("{e:#}"))
}

/// Packets from `source` counted by an nftables rule on `host` (what reached the server).
fn install_counter(lab: &Lab, host: &str, source: &str) {
    ok(lab.exec(host, &["nft", "add table inet seen"]));
    ok(lab.exec(
        host,
        &[
            "nft",
            "add chain inet seen input { type filter hook input priority -300; }",
        ],
    ));
    ok(lab.exec(
        host,
        &[
            "nft",
            &format!("add rule inet seen input ip saddr {source} counter"),
        ],
    ));
}

fn counted(lab: &Lab, host: &str) -> u64 {
    let out = ok(lab.exec_stdout(host, &["nft", "list chain inet seen input"]));
    out.split("packets ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX)
}

/// One request from `from` (from the address `source`, if given) answered with 200 within 2 s.
fn curl_ok(lab: &Lab, from: &str, source: Option<&str>, url: &str) -> bool {
    let mut extra = vec!["-m", "2"];
    if let Some(source) = source {
        extra.extend(["--interface", source]);
    }
    curl(lab, from, &extra, url).0 == 200
}

#[test]
#[ignore = "needs root"]
fn the_firewall_blocks_denied_sources_and_guards_the_database_vip() {
    let lab = ok(Lab::up(LabSpec::standard("lbt-fw-")));
    ok(lab.exec(
        host::CLIENT,
        &["ip", "addr", "add", &format!("{DENIED}/24"), "dev", "eth0"],
    ));
    let lb = ok(stack::release_binary("lb"));
    ok(stack::start_web_servers(&lab));
    ok(stack::start_mariadb(&lab, host::DB1));
    ok(stack::attach_peer_pass(&lab, &lb));
    ok(xtask::util::write_private(
        &lab.dir().join("token"),
        format!("{TOKEN}\n"),
    ));
    let config_path = lab.dir().join("lb.toml");
    ok(xtask::util::write_private(
        &config_path,
        agent_config(&lab, DENIED),
    ));
    let _agent = ok(stack::start_agent(&lab, &lb, &config_path));

    let web = format!("http://{}/", addr::VIP_HTTP);
    assert!(
        curl_ok(&lab, host::CLIENT, None, &web),
        "the allowed client is refused"
    );
    assert!(
        !curl_ok(&lab, host::CLIENT, Some(DENIED), &web),
        "the denied client got through"
    );

    // The database VIP: real MariaDB behind it, reachable from the app servers only.
    let query = |from: &str| {
        let password = format!("-p{}", stack::MYSQL_CHECK_PASSWORD);
        let args = [
            "mariadb",
            "--no-defaults",
            "-h",
            addr::VIP_DB_WRITE,
            "-P",
            "3306",
            "-u",
            stack::MYSQL_CHECK_USER,
            &password,
        ];
        lab.exec(
            from,
            &[&args[..], &["--connect-timeout=2", "-N", "-e", "SELECT 1"]].concat(),
        )
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "1")
        .unwrap_or(false)
    };
    assert!(query(host::WEB1), "web1 cannot reach the database VIP");
    assert!(query(host::WEB2), "web2 cannot reach the database VIP");
    assert!(!query(host::CLIENT), "the client reached the database VIP");

    // The rules through the CLI (and so the API): counters, a runtime rule added and removed.
    let list = lb_json(&lab, &["fw", "list"]);
    let rule = list["rules"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == "denied-client"))
        .cloned();
    let rule = rule.unwrap_or_else(|| panic!("denied-client not listed: {list}"));
    assert!(
        rule["packets"].as_u64().unwrap_or(0) >= 1,
        "the denied curl was not counted: {rule}"
    );
    assert!(
        rule["last_hit_s_ago"].as_f64().is_some_and(|s| s < 60.0),
        "{rule}"
    );
    assert!(list["rules"].as_array().is_some_and(|r| r
        .iter()
        .any(|r| r["name"] == "db-write/others" && r["packets"].as_u64() > Some(0))));
    let table = lb_ok(&lab, &["fw", "list"]);
    assert!(
        table.contains("denied-client") && table.contains("drop_denied"),
        "{table}"
    );
    let token = format!("--token-file={}", lab.dir().join("token").display());
    let unauthorized = lb_err(&lab, &["fw", "add", "temp", "--source", "10.99.0.10/32"]);
    assert!(unauthorized.contains("token"), "{unauthorized}");
    lb_ok(
        &lab,
        &[
            "fw",
            "add",
            "temp",
            "--source",
            "10.99.0.10/32",
            "--action",
            "drop",
            &token,
        ],
    );
    assert!(
        !curl_ok(&lab, host::CLIENT, None, &web),
        "a runtime drop rule did not apply"
    );
    let duplicate = lb_err(
        &lab,
        &["fw", "add", "again", "--source", "10.99.0.10/32", &token],
    );
    assert!(duplicate.contains("belongs to rule `temp`"), "{duplicate}");
    let bad = lb_err(
        &lab,
        &["fw", "add", "bad", "--source", "10.0.0.0/40", &token],
    );
    assert!(bad.contains("prefix length"), "{bad}");
    lb_ok(&lab, &["fw", "del", "temp", &token]);
    assert!(
        curl_ok(&lab, host::CLIENT, None, &web),
        "removing the runtime rule did not apply"
    );
    let missing = lb_err(&lab, &["fw", "del", "temp", &token]);
    assert!(
        missing.contains("no firewall rule named `temp`"),
        "{missing}"
    );

    // A bounded flood from the denied source while the rules are reloaded 100 times.
    install_counter(&lab, host::WEB1, DENIED);
    install_counter(&lab, host::WEB2, DENIED);
    let flood = format!(
        "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('{DENIED}',0))\n\
         end=time.time()+6\nfor i in range({FLOOD_PACKETS}):\n  s.sendto(b'x'*64,('{}',{FLOOD_PORT}))\n  \
         if i%1000==0 and time.time()>end: break\n",
        addr::VIP_HTTP
    );
    let flood_pid = ok(lab.spawn(host::CLIENT, &["python3", "-c", &flood], "flood"));
    let denied_drops = |dataplane: &Dataplane| {
        ok(dataplane.verdict_counters())
            .iter()
            .find(|(v, _)| *v == Verdict::DropDenied)
            .map_or(0, |(_, c)| c.packets)
    };

    let pins: PathBuf = stack::pin_dir(&lab);
    let text = agent_config(&lab, DENIED);
    let parsed = ok(config::parse(&config_path, &text).map_err(|e| anyhow::anyhow!("{e}")));
    // The same rules in another order: a real new rule set (new ids), same meaning.
    let reordered_text = text.replacen(
        "name = \"denied-client\"",
        "name = \"denied-client-again\"",
        1,
    );
    let reordered =
        ok(config::parse(&config_path, &reordered_text).map_err(|e| anyhow::anyhow!("{e}")));
    let mut dataplane = ok(Dataplane::load(&LoadOptions {
        pin_dir: Some(pins),
        ..LoadOptions::default()
    }));
    assert!(
        dataplane.adopted(),
        "the test must share the running agent's maps"
    );
    let flooding =
        xtask::util::wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            denied_drops(&dataplane) > 100
        });
    assert!(
        flooding,
        "the flood did not start:\n{}",
        lab.read_log("flood")
    );
    let table = ok(ServiceTable::from_config(
        &parsed,
        &ok(dataplane.services()),
        &ok(dataplane.backends()),
    ));
    let mut hosts = ok(lab.exec_stdout(host::LB, &["ip", "-o", "addr", "show", "dev", "eth0"]))
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3)?.split('/').next()?.parse().ok())
        .collect::<Vec<std::net::IpAddr>>();
    let vips: Vec<std::net::IpAddr> = parsed.services.iter().map(|s| s.vip).collect();
    hosts.extend(&vips);

    let reloading = AtomicBool::new(true);
    let failed_requests = std::thread::scope(|scope| {
        let legit = scope.spawn(|| {
            let mut failed = 0;
            let mut done = 0;
            while reloading.load(Ordering::SeqCst) || done < 50 {
                if !curl_ok(&lab, host::CLIENT, None, &web) {
                    failed += 1;
                }
                done += 1;
            }
            (failed, done)
        });
        // Reloads spread over ~5 s, so they overlap the flood and the legit requests.
        let mut reload_time = Duration::ZERO;
        for round in 0..100 {
            let config = if round % 2 == 0 { &reordered } else { &parsed };
            let rules = RuleSet::from_config(config, &table, firewall::ephemeral_ports());
            let started = Instant::now();
            ok(firewall::apply(&mut dataplane, &rules, &hosts, &vips));
            reload_time += started.elapsed();
            std::thread::sleep(Duration::from_millis(50));
        }
        reloading.store(false, Ordering::SeqCst);
        eprintln!("100 rule reloads took {reload_time:?}");
        legit.join().unwrap_or((u32::MAX, 0))
    });
    let _ = lab.stop(flood_pid);
    let flood_log = lab.read_log("flood");
    assert!(
        !flood_log.contains("Traceback"),
        "the flood failed to run:\n{flood_log}"
    );

    let reached = counted(&lab, host::WEB1) + counted(&lab, host::WEB2);
    assert_eq!(
        reached, 0,
        "packets from the denied source reached a server"
    );
    let (failed, done) = failed_requests;
    assert_eq!(
        failed, 0,
        "{failed} of {done} legit requests failed during the reloads"
    );
    let dropped = denied_drops(&dataplane);
    assert!(
        dropped > 1000,
        "the flood barely ran: {dropped} packets dropped"
    );
    eprintln!("flood: {dropped} packets dropped by the firewall, 0 reached a server; {done} legit requests, 0 failed");
    ok(lab.down());
}
