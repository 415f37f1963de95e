//! Restart without loss: a long-lived TCP connection through the VIP keeps working while the
//! agent is killed with SIGKILL, while no agent runs, and after a new agent (a copy of the binary
//! at another path, as an upgrade would be) adopts the pinned maps and swaps its program into
//! the pinned XDP link. New connections work throughout.
use std::{net::SocketAddr, time::Duration};

use lb_tests::{
    agent_lab::{answers, lb_json},
    netns, require_root,
};
use xtask::{
    lab::{addr, host, Lab, LabSpec},
    stack::{self, AgentOptions},
};

#[test]
fn a_long_lived_connection_survives_kill_9_and_an_upgrade_of_the_agent() {
    if !require_root("a_long_lived_connection_survives_kill_9_and_an_upgrade_of_the_agent") {
        return;
    }
    let lab = Lab::up(LabSpec::standard("lbt-ag3-")).unwrap_or_else(|e| panic!("lab: {e:#}"));
    let options = AgentOptions {
        web_health: Some("kind = \"tcp\"".into()),
        ..AgentOptions::default()
    };
    let agent = stack::start_with(&lab, &options).unwrap_or_else(|e| panic!("{e:#}"));
    let url = format!("http://{}/", addr::VIP_HTTP);
    let vip: SocketAddr = format!("{}:80", addr::VIP_HTTP)
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));

    // One real TCP connection from the client namespace, kept open (HTTP keep-alive).
    let mut connection = netns::connect_in(&lab.ns(host::CLIENT), vip, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut get = |when: &str| {
        netns::keep_alive_get(&mut connection, addr::VIP_HTTP)
            .unwrap_or_else(|e| panic!("long-lived connection {when}: {e}"))
    };
    let served_by = get("before the kill");
    assert!(served_by == "web1" || served_by == "web2", "{served_by}");

    // kill -9: no clean stop, the pinned link keeps the program attached.
    assert!(lab.signal(agent, libc::SIGKILL));
    assert!(xtask::util::wait_until(
        Duration::from_secs(3),
        Duration::from_millis(20),
        || !lab.is_running(agent)
    ));
    let _ = lab.stop(agent);
    let link = lab
        .exec_stdout(host::LB, &["ip", "link", "show", "eth0"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(link.contains("xdp"), "XDP detached with the agent:\n{link}");
    assert_eq!(get("with no agent running"), served_by);
    let seen = answers(&lab, &url, 4);
    assert_eq!(
        (seen.get("web1"), seen.get("web2")),
        (Some(&2), Some(&2)),
        "new connections with no agent: {seen:?}"
    );

    // The "new version": the same program from a binary at another path adopts everything.
    let upgraded = lab.dir().join("lb-upgraded");
    std::fs::copy(
        stack::release_binary("lb").unwrap_or_else(|e| panic!("{e:#}")),
        &upgraded,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let config = lab.dir().join("lb.toml");
    let agent = stack::start_agent_logged(&lab, &upgraded, &config, "agent-upgraded")
        .unwrap_or_else(|e| panic!("{e:#}"));
    let log = lab.read_log("agent-upgraded");
    assert!(
        log.contains("adopted pinned maps")
            && log.contains("replaced the program of the pinned XDP link"),
        "{log}"
    );
    let status = lb_json(&lab, &["status"]);
    assert_eq!(
        (status["adopted"].as_bool(), status["attach"].as_str()),
        (Some(true), Some("replaced_pinned")),
        "{status}"
    );
    assert_eq!(get("after the restart"), served_by);
    let seen = answers(&lab, &url, 4);
    assert_eq!(
        (seen.get("web1"), seen.get("web2")),
        (Some(&2), Some(&2)),
        "new connections after the restart: {seen:?}"
    );
    // Health checks run again in the new agent, from the adopted state.
    std::thread::sleep(Duration::from_millis(500));
    let backends = lb_json(&lab, &["backends", "web-dsr"]);
    for b in backends[0]["backends"]
        .as_array()
        .unwrap_or_else(|| panic!("{backends}"))
    {
        assert_eq!(
            (b["state"].as_str(), b["health"]["up"].as_bool()),
            (Some("active"), Some(true)),
            "{b}"
        );
    }
    assert_eq!(get("at the end"), served_by);

    // A clean stop still detaches and unpins.
    lab.stop(agent).unwrap_or_else(|e| panic!("{e:#}"));
    let link = lab
        .exec_stdout(host::LB, &["ip", "link", "show", "eth0"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        !link.contains("prog/xdp"),
        "XDP still attached after SIGTERM:\n{link}"
    );
    assert!(
        !stack::pin_dir(&lab).join("FLOWS").exists(),
        "pins left behind"
    );
    lab.down().unwrap_or_else(|e| panic!("{e:#}"));
}
