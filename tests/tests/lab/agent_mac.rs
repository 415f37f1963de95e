//! A backend that changes its MAC address (a replaced NIC, a moved VM) while the agent runs:
//! the agent notices it in the neighbour table and rewrites the backend, without a reload.
use std::time::{Duration, Instant};

use lb_tests::agent_lab::answers;
use xtask::{
    lab::{addr, host, Lab, LabSpec},
    stack,
};

/// web1's new MAC (locally administered).
const NEW_MAC: &str = "02:00:00:00:be:11";

#[test]
#[ignore = "needs root"]
fn a_backend_that_changes_its_mac_gets_traffic_again_without_a_reload() {
    let lab = Lab::up(LabSpec::standard("lbt-mac-")).unwrap_or_else(|e| panic!("lab: {e:#}"));
    // Neighbour entries go stale after 1-2 s instead of 15-45 s: the agent's recheck then asks
    // the kernel to verify them, as it would after the default time.
    lab.exec(
        host::LB,
        &[
            "sysctl",
            "-qw",
            "net.ipv4.neigh.eth0.base_reachable_time_ms=1000",
        ],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    stack::start(&lab).unwrap_or_else(|e| panic!("{e:#}"));
    let url = format!("http://{}/", addr::VIP_HTTP);
    let before = answers(&lab, &url, 4);
    assert_eq!(
        (before.get("web1"), before.get("web2")),
        (Some(&2), Some(&2)),
        "{before:?}"
    );

    lab.exec(
        host::WEB1,
        &["ip", "link", "set", "dev", "eth0", "address", NEW_MAC],
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let changed = Instant::now();
    let noticed =
        xtask::util::wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
            lab.read_log("agent")
                .contains("backend web1: MAC changed from")
                && lab.read_log("agent").contains(NEW_MAC)
        });
    assert!(
        noticed,
        "the agent never noticed:\n{}",
        lab.read_log("agent")
    );
    println!(
        "web1's new MAC taken {} ms after the change",
        changed.elapsed().as_millis()
    );
    let after = answers(&lab, &url, 4);
    assert_eq!(
        (after.get("web1"), after.get("web2")),
        (Some(&2), Some(&2)),
        "web1 must answer at its new MAC: {after:?}"
    );
    lab.down().unwrap_or_else(|e| panic!("{e:#}"));
}
