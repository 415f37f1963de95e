//! End to end over network namespaces: client, lb, web1, web2 on a bridge; the real agent
//! attaches the real program on the lb's NIC; nginx serves on the backends; curl is the client.
use std::{collections::HashMap, path::Path, time::Duration};

use lb_common::maps::Verdict;
use lb_tests::{require_root, workspace_binary};
use lb_userspace::{dataplane::PinnedMaps, services::addr_words};
use xtask::lab::{addr, host, Lab, LabSpec};

const REQUESTS: usize = 200;

fn nginx_config(lab: &Lab, name: &str) -> String {
    let dir = lab.dir().join(format!("nginx-{name}"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let conf = format!(
        "worker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\nevents {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir};\n  \
         uwsgi_temp_path {dir}; scgi_temp_path {dir};\n  server {{ listen 80; listen [::]:80; location / {{ return 200 \"{name}\\n\"; }} }}\n}}\n",
        dir = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap_or_else(|e| panic!("{e}"));
    path.display().to_string()
}

fn agent_config(lab: &Lab) -> String {
    let path = lab.dir().join("lb.toml");
    let text = format!(
        r#"[agent]
interface = "eth0"
pin_path = "{pins}"

[[service]]
name = "web-dsr"
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
name = "web-nat"
vip = "{vip}"
port = 8080
mode = "nat"
snat_address = "{snat}"

[[service.backend]]
name = "web1"
address = "{web1}"
port = 80

[[service.backend]]
name = "web2"
address = "{web2}"
port = 80
"#,
        pins = lab.bpffs().join("lb").display(),
        vip = addr::VIP_HTTP,
        web1 = addr::WEB1,
        web2 = addr::WEB2,
        snat = addr::LB_SNAT,
    );
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    path.display().to_string()
}

/// `count` sequential HTTP requests from the client, each on a new connection; answers by body.
fn requests(lab: &Lab, url: &str, count: usize) -> HashMap<String, usize> {
    let script = format!("for i in $(seq {count}); do curl -s -m 3 {url} || echo FAILED; done");
    let out = lab.exec_stdout(host::CLIENT, &["sh", "-c", &script]).unwrap_or_else(|e| panic!("{e:#}"));
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
        .filter(|&i| backends[i].addr == words && backends[i].port == port.to_be() && backends[i].state != 0)
        .collect();
    assert!(!ids.is_empty(), "backend {address}:{port} not in the pinned BACKENDS map");
    ids.iter().map(|&id| maps.backend_counters(id as u32).unwrap_or_else(|e| panic!("{e:#}")).new_flows).sum()
}

fn verdict(maps: &PinnedMaps, verdict: Verdict) -> u64 {
    let all = maps.verdict_counters().unwrap_or_else(|e| panic!("{e:#}"));
    all.iter().find(|(v, _)| *v == verdict).map_or(0, |(_, c)| c.packets)
}

#[test]
fn http_through_the_vip_is_split_evenly_in_dsr_and_nat_mode() {
    if !require_root("http_through_the_vip_is_split_evenly_in_dsr_and_nat_mode") {
        return;
    }
    let lab = Lab::up(LabSpec::standard("lbt-e2e-")).unwrap_or_else(|e| panic!("lab: {e:#}"));
    let lb = workspace_binary("lb").display().to_string();

    for web in host::WEBS {
        let conf = nginx_config(&lab, web);
        lab.spawn(web, &["nginx", "-c", &conf, "-g", "daemon off;"], &format!("nginx-{web}"))
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    // XDP_TX out of the lb's veth only works when the peer (the switch port) runs XDP too.
    let (switch_ns, port) = lab.switch_port(host::LB);
    let pass_pin = lab.bpffs().join("pass-lb");
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", &switch_ns, &lb, "attach-pass", "--iface", &port, "--pin"])
        .arg(&pass_pin)
        .status()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "attach-pass failed");

    let config = agent_config(&lab);
    let agent = lab.spawn(host::LB, &[lb.as_str(), "run", "--config", &config], "agent").unwrap_or_else(|e| panic!("{e:#}"));
    let pins = lab.bpffs().join("lb");
    let ready = xtask::util::wait_until(Duration::from_secs(15), Duration::from_millis(100), || {
        lab.read_log("agent").contains("lb: running")
    });
    assert!(ready, "agent did not start:\n{}", lab.read_log("agent"));
    let xdp = lab.exec_stdout(host::LB, &["ip", "link", "show", "eth0"]).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(xdp.contains("xdp"), "no XDP program on the lb's eth0:\n{xdp}");
    let servers_up = xtask::util::wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        lab.exec(host::CLIENT, &["curl", "-s", "-m", "1", &format!("http://{}/", addr::WEB1)]).is_ok()
            && lab.exec(host::CLIENT, &["curl", "-s", "-m", "1", &format!("http://{}/", addr::WEB2)]).is_ok()
    });
    assert!(servers_up, "nginx did not come up:\n{}\n{}", lab.read_log("nginx-web1"), lab.read_log("nginx-web2"));

    let maps = PinnedMaps::open(&pins).unwrap_or_else(|e| panic!("{e:#}"));
    for (mode, url, verdicts) in [
        ("DSR", format!("http://{}/", addr::VIP_HTTP), vec![Verdict::ForwardDsr]),
        ("NAT", format!("http://{}:8080/", addr::VIP_HTTP), vec![Verdict::ForwardNat, Verdict::NatReply]),
    ] {
        let port = 80;
        let before: Vec<u64> = [addr::WEB1, addr::WEB2].iter().map(|a| backend_new_flows(&maps, a, port)).collect();
        let answers = requests(&lab, &url, REQUESTS);
        assert_eq!(answers.get("web1"), Some(&(REQUESTS / 2)), "{mode}: answers {answers:?}");
        assert_eq!(answers.get("web2"), Some(&(REQUESTS / 2)), "{mode}: answers {answers:?}");
        // The program's own counters prove the requests went through XDP.
        for (i, a) in [addr::WEB1, addr::WEB2].iter().enumerate() {
            let flows = backend_new_flows(&maps, a, port) - before[i];
            assert_eq!(flows, (REQUESTS / 2) as u64, "{mode}: new flows counted for {a}");
        }
        for v in verdicts {
            assert!(verdict(&maps, v) >= (REQUESTS * 3) as u64, "{mode}: too few {v:?} packets");
        }
    }

    // A clean stop detaches the program and removes the pins.
    lab.stop(agent).unwrap_or_else(|e| panic!("{e:#}"));
    let xdp = lab.exec_stdout(host::LB, &["ip", "link", "show", "eth0"]).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(!xdp.contains("prog/xdp"), "XDP still attached after SIGTERM:\n{xdp}");
    assert!(!Path::new(&pins).join("FLOWS").exists(), "pins left behind");
    lab.down().unwrap_or_else(|e| panic!("{e:#}"));
}
