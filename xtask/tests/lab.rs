//! The lab itself: real namespaces, real pings, clean teardown. Needs root; without root every
//! test is `#[ignore = "needs root"]` (`cargo xtask test` runs them as root with `--include-ignored`),
//! and fails saying so when run without it.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use xtask::lab::{self, addr, host, HostSpec, Lab, LabSpec};
use xtask::util;

#[track_caller]
fn assert_root() {
    assert!(
        util::is_root(),
        "this test needs root (network namespaces, veth pairs, a bpffs mount): run it as root"
    );
}

/// Names of the links of the root namespace.
fn root_links() -> BTreeSet<String> {
    let text =
        util::stdout_of(std::process::Command::new("ip").args(["-o", "link"])).expect("ip -o link");
    text.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

fn bpffs_mounted(dir: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let dir = dir.to_string_lossy();
    mounts.lines().any(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        f.len() > 2 && f[1] == dir && f[2] == "bpf"
    })
}

fn ping(lab: &Lab, from: &str, to: &str) {
    // The first IPv6 ping also resolves the neighbour: allow a couple of attempts.
    let mut last = None;
    for _ in 0..3 {
        match lab.exec(from, &["ping", "-c1", "-W1", to]) {
            Ok(_) => return,
            Err(e) => last = Some(e),
        }
    }
    panic!("{from} cannot ping {to}: {:#}", last.expect("an error"));
}

fn assert_gone(prefix: &str, links_before: &BTreeSet<String>) {
    let left = lab::namespaces_with_prefix(prefix).expect("ip netns list");
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    assert_eq!(&root_links(), links_before, "root namespace links changed");
    let dir = lab::lab_dir(prefix);
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(
        !bpffs_mounted(&dir.join("bpffs")),
        "lab bpffs still mounted"
    );
}

#[test]
#[ignore = "needs root"]
fn standard_lab_pings_and_tears_down_cleanly() {
    assert_root();
    let prefix = "lbt-lab-";
    lab::cleanup_stale(prefix).expect("cleanup_stale");
    let links_before = root_links();

    let started = std::time::Instant::now();
    let lab = Lab::up(LabSpec::standard(prefix)).expect("lab up");
    eprintln!("lab up took {:?}", started.elapsed());

    let mut expected: Vec<String> = host::ALL.iter().map(|h| format!("{prefix}{h}")).collect();
    expected.push(format!("{prefix}sw"));
    let mut have = lab::namespaces_with_prefix(prefix).expect("ns list");
    have.sort();
    expected.sort();
    assert_eq!(have, expected);
    assert_eq!(
        root_links(),
        links_before,
        "lab up touched the root namespace"
    );

    for to in [
        addr::WEB1,
        addr::WEB2,
        addr::WEB1_V6,
        addr::WEB2_V6,
        addr::LB,
        addr::LB_SNAT_V6,
    ] {
        ping(&lab, host::CLIENT, to);
    }

    let feature = |h: &str| {
        let k = lab
            .exec_stdout(h, &["ethtool", "-k", "eth0"])
            .expect("ethtool -k");
        k.lines()
            .find(|l| l.starts_with("tx-checksumming:"))
            .map(|l| l.trim().to_string())
            .unwrap_or_default()
    };
    assert_eq!(feature(host::CLIENT), "tx-checksumming: off");
    assert_eq!(feature(host::WEB1), "tx-checksumming: off");
    assert_eq!(feature(host::LB), "tx-checksumming: on");

    // DSR backends: their role's VIPs (only those) on lo, and they do not answer ARP for them.
    let lo_of = |h: &str| {
        lab.exec_stdout(h, &["ip", "-o", "addr", "show", "dev", "lo"])
            .expect("ip addr")
    };
    let (web_lo, db_lo) = (lo_of(host::WEB2), lo_of(host::DB1));
    for vip in [addr::VIP_HTTP, addr::VIP_HTTP_V6] {
        assert!(web_lo.contains(vip), "{vip} not on web2's lo: {web_lo}");
        assert!(!db_lo.contains(vip), "{vip} on db1's lo: {db_lo}");
    }
    for vip in [addr::VIP_DB_WRITE, addr::VIP_DB_READ] {
        assert!(db_lo.contains(vip), "{vip} not on db1's lo: {db_lo}");
        assert!(
            !web_lo.contains(&format!("{vip}/")),
            "{vip} on web2's lo: {web_lo}"
        );
    }
    let arp = lab
        .exec_stdout(
            host::DB1,
            &[
                "sysctl",
                "-n",
                "net.ipv4.conf.eth0.arp_ignore",
                "net.ipv4.conf.all.arp_announce",
            ],
        )
        .expect("sysctl");
    assert_eq!(arp.split_whitespace().collect::<Vec<_>>(), ["1", "2"]);

    // The private bpffs is mounted and visible inside `ip netns exec`.
    assert!(
        bpffs_mounted(&lab.bpffs()),
        "{} is not a bpffs",
        lab.bpffs().display()
    );
    let fstype = lab
        .exec_stdout(
            host::LB,
            &["stat", "-f", "-c", "%T", &lab.bpffs().to_string_lossy()],
        )
        .expect("stat -f");
    assert_eq!(fstype, "bpf_fs");

    let (sw_ns, port) = lab.switch_port(host::LB);
    assert_eq!((sw_ns.as_str(), port.as_str()), ("lbt-lab-sw", "lb"));
    lab.exec("sw", &["ip", "link", "show", "dev", &port])
        .expect("switch port exists");
    assert_eq!(lab.mac(host::WEB1).expect("mac").len(), 17);

    // Errors name the command and carry its stderr.
    let err = lab
        .exec(host::CLIENT, &["ip", "link", "show", "dev", "nosuchdev"])
        .expect_err("must fail");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("ip netns exec lbt-lab-client ip link show dev nosuchdev"),
        "{msg}"
    );
    assert!(msg.contains("nosuchdev"), "{msg}");

    // A tracked background process, and a stray one started behind the lab's back.
    let pid = lab
        .spawn(host::WEB1, &["sleep", "600"], "sleep.log")
        .expect("spawn");
    assert!(lab.is_running(pid));
    lab.exec(host::WEB2, &["sh", "-c", "sleep 600 >/dev/null 2>&1 &"])
        .expect("stray");
    let stray: Vec<u32> =
        util::stdout_of(std::process::Command::new("ip").args(["netns", "pids", "lbt-lab-web2"]))
            .expect("pids")
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
    assert_eq!(
        stray.len(),
        1,
        "expected the stray sleep in web2: {stray:?}"
    );
    assert!(lab.read_log("sleep.log").contains("=== lab spawn:"));

    let started = std::time::Instant::now();
    lab.down().expect("lab down");
    eprintln!("lab down took {:?}", started.elapsed());
    assert!(
        !util::process_alive(pid),
        "tracked process {pid} survived teardown"
    );
    assert!(
        !util::process_alive(stray[0]),
        "stray process {} survived teardown",
        stray[0]
    );
    assert_gone(prefix, &links_before);
}

#[test]
#[ignore = "needs root"]
fn crashed_lab_is_removed_by_cleanup_stale() {
    assert_root();
    let prefix = "lbt-crash-";
    lab::cleanup_stale(prefix).expect("cleanup_stale");
    let links_before = root_links();
    let mut a = HostSpec::new("a");
    a.ipv4.push("10.98.0.1/24".into());
    a.ipv6.push("fd98::1/64".into());
    let mut b = HostSpec::new("b");
    b.ipv4.push("10.98.0.2/24".into());
    b.loopback_addrs.push("10.98.0.100/32".into());
    b.dsr_backend = true;
    let lab = Lab::up(LabSpec {
        prefix: prefix.into(),
        hosts: vec![a, b],
    })
    .expect("lab up");
    lab.exec("a", &["ping", "-c1", "-W1", "10.98.0.2"])
        .expect("ping");
    let pid = lab
        .spawn("b", &["sleep", "600"], "sleep.log")
        .expect("spawn");
    let bpffs = lab.bpffs();
    std::mem::forget(lab); // the "crash": no teardown at all

    assert_eq!(lab::namespaces_with_prefix(prefix).expect("ns").len(), 3);
    assert!(bpffs_mounted(&bpffs));
    lab::cleanup_stale(prefix).expect("cleanup_stale");
    // The forgotten child is a zombie of this process now; process_alive counts that as dead.
    assert!(
        util::wait_until(Duration::from_secs(2), Duration::from_millis(20), || {
            !util::process_alive(pid)
        }),
        "process {pid} of the crashed lab survived cleanup"
    );
    assert_gone(prefix, &links_before);
    lab::cleanup_stale(prefix).expect("cleanup_stale is idempotent");
}

#[test]
#[ignore = "needs root"]
fn failed_lab_up_leaves_nothing() {
    assert_root();
    let prefix = "lbt-fail-";
    lab::cleanup_stale(prefix).expect("cleanup_stale");
    let links_before = root_links();
    let mut spec = LabSpec::standard(prefix);
    spec.hosts[3].ipv4 = vec!["10.99.0.300/24".into()]; // web2: invalid address
    let err = Lab::up(spec).expect_err("an invalid address must fail");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("10.99.0.300/24") && msg.contains("web2"),
        "{msg}"
    );
    eprintln!("expected error: {msg}");
    assert_gone(prefix, &links_before);
}
