//! Restart without loss: a long-lived TCP connection through the VIP keeps working while the
//! agent is killed with SIGKILL, while no agent runs, and after a new agent (a copy of the binary
//! at another path, as an upgrade would be) adopts the pinned maps and swaps its program into
//! the pinned XDP link. New connections work throughout.
use std::{net::SocketAddr, time::Duration};

use lb_tests::{
    agent_lab::{answers, lb_json},
    netns,
};
use xtask::{
    lab::{addr, host, Lab, LabSpec},
    stack::{self, AgentOptions},
};

#[test]
#[ignore = "needs root"]
fn a_long_lived_connection_survives_kill_9_and_an_upgrade_of_the_agent() {
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

/// A bpffs mounted for one test, unmounted and removed on drop (on failure too).
struct ScratchBpffs(std::path::PathBuf);

impl ScratchBpffs {
    fn mount(name: &str) -> Self {
        lb_tests::assert_root("mounting a bpffs");
        let dir = std::path::PathBuf::from(format!("/run/lbt-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let scratch = ScratchBpffs(dir);
        run(&["mount", "-t", "bpf", "bpf", &scratch.path()]);
        scratch
    }

    fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for ScratchBpffs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[track_caller]
fn run(args: &[&str]) {
    xtask::util::output(std::process::Command::new(args[0]).args(&args[1..]))
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// A map pinned by an earlier version with another value layout is not adopted as it is (reading
/// it with this version's type would misread it): its pin is replaced by a map of this version.
/// A pin with this version's layout is adopted, the same map.
#[test]
#[ignore = "needs root"]
fn a_pinned_map_of_an_earlier_layout_starts_afresh() {
    use aya::maps::MapInfo;
    use lb_common::names;
    use lb_userspace::dataplane::{Dataplane, LoadOptions};

    let pins = ScratchBpffs::mount("pins");
    let pin = |name: &str| format!("{}/{name}", pins.path());
    // RULE_STATS as it was before rule hits lost their timestamp: 24-byte values.
    run(&[
        "bpftool",
        "map",
        "create",
        &pin(names::RULE_STATS),
        "type",
        "percpu_array",
        "key",
        "4",
        "value",
        "24",
        "entries",
        "65536",
        "name",
        "RULE_STATS",
    ]);
    // VERDICT_STATS with this version's layout (24-byte counters).
    let verdicts = std::mem::size_of::<lb_common::maps::Counters>().to_string();
    let entries = lb_common::maps::Verdict::COUNT.to_string();
    run(&[
        "bpftool",
        "map",
        "create",
        &pin(names::VERDICT_STATS),
        "type",
        "percpu_array",
        "key",
        "4",
        "value",
        &verdicts,
        "entries",
        &entries,
        "name",
        "VERDICT_STATS",
    ]);
    let kept_id = MapInfo::from_pin(pin(names::VERDICT_STATS))
        .unwrap_or_else(|e| panic!("{e}"))
        .id();

    let dataplane = Dataplane::load(&LoadOptions {
        pin_dir: Some(pins.0.clone()),
        ..LoadOptions::default()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let rule_stats = MapInfo::from_pin(pin(names::RULE_STATS)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        rule_stats.value_size() as usize,
        std::mem::size_of::<lb_common::maps::RuleCounters>(),
        "RULE_STATS is this version's map"
    );
    assert_eq!(
        dataplane
            .rule_counters(0)
            .unwrap_or_else(|e| panic!("{e:#}")),
        lb_common::maps::RuleCounters::default()
    );
    let verdict_stats =
        MapInfo::from_pin(pin(names::VERDICT_STATS)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        verdict_stats.id(),
        kept_id,
        "a matching pin is adopted as it is"
    );
    drop(dataplane);
}

/// During a restart the old program keeps forwarding, on its own flow cache, until the new
/// agent's program replaces it. A backend change the new agent makes in that time must reach
/// the old program's cache too (the cache epoch is pinned and shared): here web1 goes down and
/// comes back, and the flow that moved off it must not be sent back by an old copy.
#[test]
#[ignore = "needs root"]
fn a_new_agents_backend_change_reaches_the_old_programs_flow_cache() {
    use lb_tests::harness::{two_web_backends, Harness, XDP_TX};
    use lb_userspace::{
        config::{Mode, Protocol},
        dataplane::LoadOptions,
        services::BackendState,
    };
    let ip = |s: &str| -> std::net::IpAddr { s.parse().unwrap_or_else(|e| panic!("{s}: {e}")) };
    let mac = |last: u8| [2, 0, 0, 0, 0, last];
    let pins = ScratchBpffs::mount("cache-epoch");
    let options = LoadOptions {
        pin_dir: Some(pins.0.clone()),
        ..LoadOptions::default()
    };
    let backends = two_web_backends(ip("10.0.0.11"), ip("10.0.0.12"), 80);
    let vip = (ip("10.0.0.100"), 80);
    let mut old = Harness::with_options(&options);
    old.add_service("web", vip, Protocol::Tcp, Mode::Dsr, None, &backends);
    // The new agent adopts the pinned maps and programs the same service (same ids).
    let mut new = Harness::with_options(&options);
    new.add_service("web", vip, Protocol::Tcp, Mode::Dsr, None, &backends);

    lb_tests::stay_on_this_cpu();
    let syn = lb_tests::packet::Frame::tcp((ip("10.0.0.10"), 40000), (vip.0, vip.1))
        .macs(mac(0x10), mac(0x01));
    assert_eq!(old.run(&syn.build()).0, XDP_TX, "the SYN");
    let flow = syn.tcp_flags(lb_tests::packet::TCP_ACK).build();
    let backend_of = |h: &Harness, what: &str| {
        let (action, out) = h.run(&flow);
        assert_eq!(action, XDP_TX, "{what}");
        out[5]
    };
    assert_eq!(backend_of(&old, "first ACK: a connection"), 0x11);
    assert_eq!(backend_of(&old, "second packet, copied"), 0x11);
    new.set_backend_state(0, "web1", BackendState::Down);
    assert_eq!(
        backend_of(&old, "web1 down"),
        0x12,
        "the flow moves to web2"
    );
    new.set_backend_state(0, "web1", BackendState::Active);
    assert_eq!(
        backend_of(&old, "web1 back"),
        0x12,
        "an old copy sent the flow back to web1"
    );
    drop(new);
    drop(old);
}
