//! Flows under load over real namespaces: the real agent, nginx on web1 and web2, traffic from
//! the client namespace. A spoofed flood against small flow tables while connections are held
//! (`xtask/src/flow_flood.rs`, also `cargo xtask chaos`'s `flow_flood`), and round robin when
//! the client ports of an outage come back. Needs root: run by `cargo xtask test`
//! (`--include-ignored`).
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    process::Command,
    time::Duration,
};

use lb_tests::agent_lab::wait_for_state;
use xtask::{
    flow_flood,
    lab::{addr, host, Lab, LabSpec},
    load,
    stack::{self, AgentOptions},
    util,
};

fn ok<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
#[ignore = "needs root"]
fn a_spoofed_flood_twice_the_flow_tables_leaves_held_and_new_connections_working() {
    let lab = ok(Lab::up(LabSpec::standard("lbt-ff-")));
    let options = flow_flood::Options::quick();
    ok(flow_flood::start(&lab, &options));
    let report = flow_flood::run(&lab, &options)
        .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", lab.read_log("agent")));
    println!("{report:#?}");
    let table = u64::from(options.flow_capacity.max(options.unverified_capacity));
    for kind in ["syn", "ack", "udp"] {
        assert!(
            report.sent_of(kind) >= 2 * table,
            "the {kind} flood sent {} packets, less than twice the table ({table})",
            report.sent_of(kind)
        );
    }
    // The agent lists the flood where the program keeps it: among the unverified flows.
    assert!(
        report.spoofed_unverified_listed > 0,
        "no spoofed flow listed by GET /api/v1/flows?table=unverified"
    );
    assert_eq!(
        report.spoofed_connections_listed, 0,
        "spoofed flows listed as connections"
    );
    assert!(
        report.established_survived,
        "a held keep-alive connection stopped answering or moved: {:?}",
        report.held
    );
    assert!(report.legit_requests > 0, "no legit request was made");
    assert_eq!(
        report.legit_failed, 0,
        "legit new connections failed during or after the flood ({} during): {:?}",
        report.legit_failed_during_flood, report.first_failures
    );
    // Frames that found the lb's receive ring full never reached the program.
    let acks = report.sent_of("ack").saturating_sub(report.ring_full);
    assert!(
        report.verdict("drop_no_flow") >= acks,
        "drop_no_flow grew by {}, but {acks} spoofed ACKs reached the lb (verdicts {:?})",
        report.verdict("drop_no_flow"),
        report.verdicts
    );
    let opened = (report.sent_of("syn") + report.sent_of("udp")).saturating_sub(report.ring_full);
    assert!(
        report.verdict("forward_dsr") >= opened,
        "forward_dsr grew by {}, but {opened} spoofed SYNs and datagrams reached the lb (verdicts {:?})",
        report.verdict("forward_dsr"),
        report.verdicts
    );
    ok(lab.down());
}

/// Client ports of the outage, reused after it (below the ephemeral range, so nothing else
/// takes them meanwhile).
const FIRST_PORT: u16 = 21_000;
const CONNECTIONS: u16 = 200;
/// The split may be off exact round robin by this share of the connections.
const TOLERANCE: f64 = 0.02;

/// `CONNECTIONS` connections in turn from the client's ports FIRST_PORT.., one request each
/// with `Connection: close`: the server closes first, so no port stays in TIME_WAIT on the
/// client's side. Answers by body (the server's name), failures by error.
fn connections_from_fixed_ports(lab: &Lab, port: u16) -> BTreeMap<String, usize> {
    let client: Ipv4Addr = addr::CLIENT.parse().unwrap_or_else(|e| panic!("{e}"));
    let vip: Ipv4Addr = addr::VIP_HTTP.parse().unwrap_or_else(|e| panic!("{e}"));
    let timeout = Duration::from_secs(3);
    let answers = load::in_netns(&lab.ns(host::CLIENT), || {
        let mut answers = BTreeMap::new();
        for source in FIRST_PORT..FIRST_PORT + CONNECTIONS {
            let answer = load::connect_from(
                SocketAddrV4::new(client, source),
                SocketAddrV4::new(vip, port),
                timeout,
            )
            .and_then(|s| load::request_closed_by_server(s, addr::VIP_HTTP, timeout))
            .unwrap_or_else(|e| format!("failed: {e}"));
            *answers.entry(answer).or_insert(0) += 1;
        }
        Ok(answers)
    });
    answers.unwrap_or_else(|e| panic!("the client namespace: {e}"))
}

/// SIGKILL to every process in web2's namespace: its nginx crashes.
fn crash_web2(lab: &Lab) {
    let ns = lab.ns(host::WEB2);
    let pids = ok(util::stdout_of(
        Command::new("ip").args(["netns", "pids", &ns]),
    ));
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
    {
        lab.signal(pid, libc::SIGKILL);
    }
}

#[test]
#[ignore = "needs root"]
fn the_client_ports_of_an_outage_are_balanced_round_robin_after_it() {
    let lab = ok(Lab::up(LabSpec::standard("lbt-rr-")));
    let options = AgentOptions {
        web_health: Some("kind = \"http\"\nexpect_status = 200".into()),
        ..AgentOptions::default()
    };
    ok(stack::start_with(&lab, &options));
    let services = [("web-dsr", 80), ("web-nat", stack::NAT_PORT)];
    for (service, _) in services {
        for web in host::WEBS {
            assert!(
                wait_for_state(&lab, service, web, "active", Duration::from_secs(10)).is_some(),
                "{service}/{web} never became active"
            );
        }
    }

    // The outage: web2 down, every connection from the test's ports on web1.
    crash_web2(&lab);
    for (service, _) in services {
        assert!(
            wait_for_state(&lab, service, host::WEB2, "down", Duration::from_secs(10)).is_some(),
            "{service}/web2 was not taken out after its crash"
        );
    }
    for (service, port) in services {
        let answers = connections_from_fixed_ports(&lab, port);
        assert_eq!(
            answers.get("web1"),
            Some(&usize::from(CONNECTIONS)),
            "{service} during the outage: answers {answers:?}"
        );
    }

    // web2 back; the same client ports again, each a new connection (its old one closed by
    // the server, then by the client, seconds before).
    ok(stack::start_web_server(&lab, host::WEB2));
    for (service, _) in services {
        assert!(
            wait_for_state(&lab, service, host::WEB2, "active", Duration::from_secs(10)).is_some(),
            "{service}/web2 did not come back"
        );
    }
    let exact = f64::from(CONNECTIONS) / 2.0;
    let allowed = TOLERANCE * f64::from(CONNECTIONS);
    for (service, port) in services {
        let answers = connections_from_fixed_ports(&lab, port);
        let count = |web: &str| answers.get(web).copied().unwrap_or(0);
        assert_eq!(
            count("web1") + count("web2"),
            usize::from(CONNECTIONS),
            "{service} after the outage: answers {answers:?}"
        );
        for web in host::WEBS {
            assert!(
                (count(web) as f64 - exact).abs() <= allowed,
                "{service} after the outage, the outage's {CONNECTIONS} client ports reused: {web} got {} \
                 connections; exact round robin is {exact}, tolerance +-{:.0}% of the connections \
                 (+-{allowed}); answers {answers:?}",
                count(web),
                TOLERANCE * 100.0
            );
        }
        println!("{service}: the outage's client ports after it: {answers:?}");
    }
    ok(lab.down());
}
