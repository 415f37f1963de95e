//! End to end over network namespaces: client, lb, web1, web2 on a bridge; the real agent
//! attaches the real program on the lb's NIC; nginx serves on the backends; curl is the client.
use std::collections::HashMap;

use lb_common::maps::Verdict;
use lb_tests::pinned::PinnedMaps;
use lb_userspace::services::addr_words;
use xtask::{
    lab::{addr, host, Lab, LabSpec},
    stack,
};

const REQUESTS: usize = 200;

/// `count` sequential HTTP requests from the client, each on a new connection; answers by body.
fn requests(lab: &Lab, url: &str, count: usize) -> HashMap<String, usize> {
    let script = format!("for i in $(seq {count}); do curl -s -m 3 {url} || echo FAILED; done");
    let out = lab
        .exec_stdout(host::CLIENT, &["sh", "-c", &script])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut answers = HashMap::new();
    for line in out.lines() {
        *answers.entry(line.trim().to_string()).or_default() += 1;
    }
    answers
}

/// New flows counted for every backend entry at `address:port` (one per service using it).
fn backend_new_flows(maps: &PinnedMaps, address: &str, port: u16) -> u64 {
    let (words, _) = addr_words(address.parse().unwrap_or_else(|e| panic!("{e}")));
    let backends = maps.backends().unwrap_or_else(|e| panic!("{e:#}"));
    let ids: Vec<usize> = (0..backends.len())
        .filter(|&i| {
            backends[i].addr == words && backends[i].port == port.to_be() && backends[i].state != 0
        })
        .collect();
    assert!(
        !ids.is_empty(),
        "backend {address}:{port} not in the pinned BACKENDS map"
    );
    ids.iter()
        .map(|&id| {
            maps.backend_counters(id as u32)
                .unwrap_or_else(|e| panic!("{e:#}"))
                .new_flows
        })
        .sum()
}

fn verdict(maps: &PinnedMaps, verdict: Verdict) -> u64 {
    let all = maps.verdict_counters().unwrap_or_else(|e| panic!("{e:#}"));
    all.iter()
        .find(|(v, _)| *v == verdict)
        .map_or(0, |(_, c)| c.packets)
}

#[test]
#[ignore = "needs root"]
fn http_through_the_vip_is_split_evenly_in_dsr_and_nat_mode() {
    let lab = Lab::up(LabSpec::standard("lbt-e2e-")).unwrap_or_else(|e| panic!("lab: {e:#}"));
    let agent = stack::start(&lab).unwrap_or_else(|e| panic!("{e:#}"));
    let pins = stack::pin_dir(&lab);
    let xdp = lab
        .exec_stdout(host::LB, &["ip", "link", "show", "eth0"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        xdp.contains("xdp"),
        "no XDP program on the lb's eth0:\n{xdp}"
    );

    let maps = PinnedMaps::open(&pins).unwrap_or_else(|e| panic!("{e:#}"));
    for (mode, url, verdicts) in [
        (
            "DSR",
            format!("http://{}/", addr::VIP_HTTP),
            vec![Verdict::ForwardDsr],
        ),
        (
            "NAT",
            format!("http://{}:{}/", addr::VIP_HTTP, stack::NAT_PORT),
            vec![Verdict::ForwardNat, Verdict::NatReply],
        ),
    ] {
        let port = 80;
        let before: Vec<u64> = [addr::WEB1, addr::WEB2]
            .iter()
            .map(|a| backend_new_flows(&maps, a, port))
            .collect();
        let answers = requests(&lab, &url, REQUESTS);
        assert_eq!(
            answers.get("web1"),
            Some(&(REQUESTS / 2)),
            "{mode}: answers {answers:?}"
        );
        assert_eq!(
            answers.get("web2"),
            Some(&(REQUESTS / 2)),
            "{mode}: answers {answers:?}"
        );
        // The program's own counters prove the requests went through XDP.
        for (i, a) in [addr::WEB1, addr::WEB2].iter().enumerate() {
            let flows = backend_new_flows(&maps, a, port) - before[i];
            assert_eq!(
                flows,
                (REQUESTS / 2) as u64,
                "{mode}: new flows counted for {a}"
            );
        }
        for v in verdicts {
            assert!(
                verdict(&maps, v) >= (REQUESTS * 3) as u64,
                "{mode}: too few {v:?} packets"
            );
        }
    }

    // A clean stop detaches the program and removes the pins.
    lab.stop(agent).unwrap_or_else(|e| panic!("{e:#}"));
    let xdp = lab
        .exec_stdout(host::LB, &["ip", "link", "show", "eth0"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        !xdp.contains("prog/xdp"),
        "XDP still attached after SIGTERM:\n{xdp}"
    );
    assert!(!pins.join("FLOWS_V4").exists(), "pins left behind");
    lab.down().unwrap_or_else(|e| panic!("{e:#}"));
}
