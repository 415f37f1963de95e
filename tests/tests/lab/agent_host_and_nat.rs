//! A running agent in namespaces follows the addresses of its interface (an address added
//! after the start is protected by the host policy, a removed one leaves `HOST_ADDRS`), and
//! reports each NAT service's ports: in use, available, and new flows dropped for want of one,
//! through `lb status`, `/api/v1/status`, `/api/v1/services` and `/metrics`.
use std::{net::IpAddr, time::Duration};

use lb_tests::agent_lab::{curl, lb_json, lb_ok};
use lb_tests::pinned::PinnedMaps;
use lb_userspace::firewall::addr_key;
use serde_json::Value;
use xtask::{
    lab::{addr, host, Lab, LabSpec},
    stack::{self, AgentOptions, NAT_PORT},
    util,
};

const API: &str = "http://127.0.0.1:9876";
/// An address given to the lb's interface after the agent started.
const LATE_V4: &str = "10.99.0.50";
const LATE_V6: &str = "fd99::50";
/// The agent's NAT ports: one towards each backend.
const NAT_PORT_ONLY: u16 = 20000;
/// How long the agent may take to notice: a bound on a failing test, never a measured time.
const PATIENCE: Duration = Duration::from_secs(30);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn host_addresses(lab: &Lab) -> Vec<String> {
    let status = lb_json(lab, &["status"]);
    status["host_addresses"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn in_host_addrs_map(lab: &Lab, address: &str) -> bool {
    let maps = PinnedMaps::open(&stack::pin_dir(lab)).unwrap_or_else(|e| panic!("{e:#}"));
    let keys = maps.host_addrs().unwrap_or_else(|e| panic!("{e:#}"));
    keys.contains(&addr_key(ip(address)))
}

fn verdict(lab: &Lab, name: &str) -> u64 {
    let status = lb_json(lab, &["status"]);
    status["verdicts"]
        .as_array()
        .and_then(|all| all.iter().find(|v| v["verdict"] == name))
        .and_then(|v| v["packets"].as_u64())
        .unwrap_or_else(|| panic!("no verdict {name} in {status}"))
}

fn web_nat_ports(lab: &Lab) -> Value {
    let status = lb_json(lab, &["status"]);
    status["nat"]
        .as_array()
        .and_then(|all| all.iter().find(|n| n["service"] == "web-nat"))
        .cloned()
        .unwrap_or_else(|| panic!("no web-nat in the status's nat: {status}"))
}

#[test]
#[ignore = "needs root"]
fn host_addresses_are_followed_and_nat_ports_are_reported() {
    let lab = Lab::up(LabSpec::standard("lbt-hn-")).unwrap_or_else(|e| panic!("lab: {e:#}"));
    // The lab's agent, with a NAT port range of one port.
    let config = stack::write_agent_config_with(&lab, &AgentOptions::default())
        .unwrap_or_else(|e| panic!("{e:#}"));
    let text = std::fs::read_to_string(&config).unwrap_or_else(|e| panic!("{e}"));
    let text = text.replacen(
        "[agent]\n",
        &format!("[agent]\nnat_port_min = {NAT_PORT_ONLY}\nnat_port_max = {NAT_PORT_ONLY}\n"),
        1,
    );
    xtask::util::write_private(&config, text).unwrap_or_else(|e| panic!("{e:#}"));
    let lb = stack::release_binary("lb").unwrap_or_else(|e| panic!("{e:#}"));
    stack::start_web_servers(&lab).unwrap_or_else(|e| panic!("{e:#}"));
    stack::attach_peer_pass(&lab, &lb).unwrap_or_else(|e| panic!("{e:#}"));
    let agent = stack::start_agent(&lab, &lb, &config).unwrap_or_else(|e| panic!("{e:#}"));

    host_addresses_followed(&lab);
    nat_ports_reported(&lab);

    lab.stop(agent).unwrap_or_else(|e| panic!("{e:#}"));
    lab.down().unwrap_or_else(|e| panic!("{e:#}"));
}

fn host_addresses_followed(lab: &Lab) {
    let before = host_addresses(lab);
    assert!(before.contains(&addr::LB.to_string()), "{before:?}");
    assert!(!before.contains(&LATE_V4.to_string()), "{before:?}");
    assert!(in_host_addrs_map(lab, addr::LB));

    // Addresses added after the start (as DHCP or an operator would).
    lab.exec(
        host::LB,
        &["ip", "addr", "add", &format!("{LATE_V4}/24"), "dev", "eth0"],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    lab.exec(
        host::LB,
        &[
            "ip",
            "addr",
            "add",
            &format!("{LATE_V6}/64"),
            "dev",
            "eth0",
            "nodad",
        ],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let seen = util::wait_until(PATIENCE, Duration::from_millis(100), || {
        let now = host_addresses(lab);
        now.contains(&LATE_V4.to_string()) && now.contains(&LATE_V6.to_string())
    });
    assert!(
        seen,
        "the agent never took up {LATE_V4} and {LATE_V6}: {:?}",
        host_addresses(lab)
    );
    assert!(
        in_host_addrs_map(lab, LATE_V4),
        "{LATE_V4} not in HOST_ADDRS"
    );
    assert!(
        in_host_addrs_map(lab, LATE_V6),
        "{LATE_V6} not in HOST_ADDRS"
    );
    let status = lb_ok(lab, &["status"]);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("host ") && l.contains(LATE_V4)),
        "{status}"
    );

    // A closed port on the new address: dropped by the host policy, not refused by the kernel.
    let dropped = verdict(lab, "drop_host_policy");
    let out = lab
        .exec_unchecked(
            host::CLIENT,
            &["curl", "-s", "-m", "2", &format!("http://{LATE_V4}:9/")],
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(
        out.status.code(),
        Some(28),
        "curl to a closed port of {LATE_V4} must time out (dropped), not be refused: {out:?}"
    );
    assert!(
        verdict(lab, "drop_host_policy") > dropped,
        "no drop_host_policy for {LATE_V4}:9"
    );

    // Removed: it leaves the map; the lab's own address stays.
    lab.exec(
        host::LB,
        &["ip", "addr", "del", &format!("{LATE_V4}/24"), "dev", "eth0"],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let gone = util::wait_until(PATIENCE, Duration::from_millis(100), || {
        !host_addresses(lab).contains(&LATE_V4.to_string())
    });
    assert!(gone, "{LATE_V4} still listed: {:?}", host_addresses(lab));
    assert!(
        !in_host_addrs_map(lab, LATE_V4),
        "{LATE_V4} still in HOST_ADDRS"
    );
    assert!(in_host_addrs_map(lab, LATE_V6));
    assert!(in_host_addrs_map(lab, addr::LB));
}

fn nat_ports_reported(lab: &Lab) {
    let nat = web_nat_ports(lab);
    assert_eq!(
        nat["available"], 2,
        "one port towards each of 2 backends: {nat}"
    );
    assert_eq!(nat["exhausted_drops"], 0, "{nat}");

    // Two connections through the NAT service hold both ports (web1's and web2's)...
    let vip = format!("/dev/tcp/{}/{NAT_PORT}", addr::VIP_HTTP);
    for i in 0..2 {
        let log = format!("hold-{i}");
        let script = format!("exec 3<>{vip} && echo connected && sleep 120");
        lab.spawn(host::CLIENT, &["bash", "-c", &script], &log)
            .unwrap_or_else(|e| panic!("{e:#}"));
        let connected = util::wait_until(PATIENCE, Duration::from_millis(50), || {
            // The line itself: the log's first line quotes the command, "echo connected" too.
            lab.read_log(&log).lines().any(|line| line == "connected")
        });
        assert!(connected, "connection {i}: {}", lab.read_log(&log));
    }
    // ...so a third new connection finds no free port.
    let (code, _) = curl(
        lab,
        host::CLIENT,
        &["-m", "2"],
        &format!("http://{}:{NAT_PORT}/", addr::VIP_HTTP),
    );
    assert_eq!(code, 0, "the third connection must not be served");
    let counted = util::wait_until(PATIENCE, Duration::from_millis(100), || {
        web_nat_ports(lab)["in_use"] == 2
    });
    let nat = web_nat_ports(lab);
    assert!(counted, "the agent never counted 2 ports in use: {nat}");
    assert!(
        nat["exhausted_drops"].as_u64().is_some_and(|n| n >= 1),
        "{nat}"
    );
    assert_eq!(nat["complete"], true, "{nat}");

    let status = lb_ok(lab, &["status"]);
    println!("$ lb status\n{status}");
    let line = format!(
        "nat       web-nat: ports in use 2 of 2 (from {});",
        addr::LB_SNAT
    );
    assert!(status.contains(&line), "{status}");
    let (code, body) = curl(
        lab,
        host::LB,
        &[],
        &format!("{API}/api/v1/services/web-nat"),
    );
    assert_eq!(code, 200, "{body}");
    let service: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    assert_eq!(service["nat_ports"]["in_use"], 2, "{service}");
    assert_eq!(service["nat_ports"]["available"], 2, "{service}");
    assert_eq!(
        service["nat_ports"]["snat_addresses"],
        serde_json::json!([addr::LB_SNAT]),
        "{service}"
    );
    let (_, dsr) = curl(
        lab,
        host::LB,
        &[],
        &format!("{API}/api/v1/services/web-dsr"),
    );
    let dsr: Value = serde_json::from_str(&dsr).unwrap_or(Value::Null);
    assert_eq!(
        dsr["nat_ports"],
        Value::Null,
        "a DSR service has no NAT ports: {dsr}"
    );
    let (code, metrics) = curl(lab, host::LB, &[], &format!("{API}/metrics"));
    assert_eq!(code, 200);
    for needle in [
        "lb_service_nat_ports_in_use{service=\"web-nat\"} 2",
        "lb_service_nat_ports_available{service=\"web-nat\"} 2",
        "lb_service_nat_ports_exhausted_total{service=\"web-nat\"} ",
    ] {
        assert!(
            metrics.contains(needle),
            "/metrics lacks {needle}:\n{metrics}"
        );
    }
    assert!(
        !metrics.contains("lb_service_nat_ports_in_use{service=\"web-dsr\"}"),
        "{metrics}"
    );
}
