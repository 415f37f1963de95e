//! Path MTU discovery through the load balancer, over namespaces. The client sits behind a
//! router whose link towards it has a smaller MTU (1280) than the client's own end (1500), so
//! the client announces an MSS the path cannot carry. A backend's full-size segments then meet
//! the router, which answers "fragmentation needed" / "packet too big" to their source: the VIP,
//! i.e. the load balancer. Unless the load balancer hands that error to the flow's backend (DSR)
//! or translates it back (NAT), the backend keeps sending segments that never arrive and the
//! download stalls.
use lb_common::maps::Verdict;
use lb_tests::pinned::PinnedMaps;
use xtask::{
    lab::{addr, host, HostSpec, Lab, LabSpec, RouterLink},
    stack::{self, AgentOptions, WebAddresses},
};

const ROUTER: &str = "router";
const FAR_CLIENT: &str = "far";
const FAR_CLIENT_V4: &str = "10.97.0.10";
const FAR_CLIENT_V6: &str = "fd97::10";
const PATH_MTU: u32 = 1280;
/// Requests per service and family: both backends, each twice.
const REQUESTS: usize = 4;

fn ok<T>(r: anyhow::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}

/// The standard lab without the databases, plus a router on the switch and a client behind it.
fn spec() -> LabSpec {
    let mut spec = LabSpec::standard("lbt-pmtu-");
    spec.hosts.retain(|h| !host::DBS.contains(&h.name.as_str()));
    let mut router = HostSpec::new(ROUTER);
    router.ipv4.push("10.99.0.1/24".into());
    router.ipv6.push("fd99::1/64".into());
    spec.hosts.push(router);
    let mut far = HostSpec::new(FAR_CLIENT);
    far.ipv4.push(format!("{FAR_CLIENT_V4}/24"));
    far.ipv6.push(format!("{FAR_CLIENT_V6}/64"));
    far.via = Some(RouterLink {
        router: ROUTER.into(),
        router_addrs: vec!["10.97.0.1/24".into(), "fd97::1/64".into()],
        router_mtu: Some(PATH_MTU),
    });
    spec.hosts.push(far);
    spec
}

fn forward_icmp(maps: &PinnedMaps) -> u64 {
    ok(maps.verdict_counters())
        .iter()
        .find(|(v, _)| *v == Verdict::ForwardIcmp)
        .map_or(0, |(_, c)| c.packets)
}

/// Downloads `/large` from `url` [`REQUESTS`] times on the far client; each body must be one
/// backend's whole file, and both backends must have answered.
fn downloads_complete(lab: &Lab, what: &str, url: &str) {
    let mut answered = Vec::new();
    for i in 0..REQUESTS {
        let file = lab.dir().join(format!("pmtu-{i}.bin"));
        let path = file.display().to_string();
        let out = lab.exec_unchecked(FAR_CLIENT, &["curl", "-s", "-m", "15", "-o", &path, url]);
        let body = std::fs::read(&file).unwrap_or_default();
        let _ = std::fs::remove_file(&file);
        let web = host::WEBS
            .into_iter()
            .find(|web| body == stack::large_body(web));
        let Some(web) = web else {
            panic!(
                "{what}: download {i} of {url} got {} of {} bytes ({out:?}); the path MTU \
                 error did not reach the backend.\nagent log:\n{}",
                body.len(),
                stack::LARGE_BODY_BYTES,
                lab.read_log("agent")
            );
        };
        answered.push(web);
    }
    for web in host::WEBS {
        assert!(
            answered.contains(&web),
            "{what}: {web} never answered ({answered:?})"
        );
    }
}

#[test]
#[ignore = "needs root"]
fn downloads_larger_than_the_path_mtu_complete_in_dsr_and_nat_over_ipv4_and_ipv6() {
    let lab = ok(Lab::up(spec()));
    let lb = ok(stack::release_binary("lb"));
    ok(stack::start_web_servers(&lab));
    ok(stack::attach_peer_pass(&lab, &lb));
    let config = ok(stack::write_agent_config_extended(
        &lab,
        &AgentOptions::default(),
        "",
        // The web services again on the IPv6 VIP.
        &ok(stack::web_services("-v6", &WebAddresses::IPV6, "")),
    ));
    ok(stack::start_agent(&lab, &lb, &config));
    // The backends answer a DSR client directly, through the router.
    for web in host::WEBS {
        ok(lab.exec(
            web,
            &["ip", "route", "add", "10.97.0.0/24", "via", "10.99.0.1"],
        ));
        ok(lab.exec(
            web,
            &["ip", "-6", "route", "add", "fd97::/64", "via", "fd99::1"],
        ));
    }
    ok(lab.exec(FAR_CLIENT, &["ping", "-c1", "-W2", addr::WEB1]));
    ok(lab.exec(FAR_CLIENT, &["ping", "-6", "-c1", "-W2", addr::WEB1_V6]));

    let maps = ok(PinnedMaps::open(&stack::pin_dir(&lab)));
    let v4 = addr::VIP_HTTP.to_string();
    let v6 = format!("[{}]", addr::VIP_HTTP_V6);
    let nat = stack::NAT_PORT;
    for (what, url, far_client) in [
        ("IPv4 DSR", format!("http://{v4}/large"), FAR_CLIENT_V4),
        (
            "IPv4 NAT",
            format!("http://{v4}:{nat}/large"),
            FAR_CLIENT_V4,
        ),
        ("IPv6 DSR", format!("http://{v6}/large"), FAR_CLIENT_V6),
        (
            "IPv6 NAT",
            format!("http://{v6}:{nat}/large"),
            FAR_CLIENT_V6,
        ),
    ] {
        let before = forward_icmp(&maps);
        downloads_complete(&lab, what, &url);
        // One error per backend at least: each learns the path MTU once.
        let errors = forward_icmp(&maps) - before;
        assert!(
            errors >= 2,
            "{what}: {errors} ICMP errors went through the lb; the downloads cannot have met the \
             path MTU"
        );
        if what.ends_with("DSR") {
            // Each backend keeps the path MTU towards the client it learnt from the error.
            for web in host::WEBS {
                let route = ok(lab.exec_stdout(web, &["ip", "route", "get", far_client]));
                assert!(
                    route.contains(&format!("mtu {PATH_MTU}")),
                    "{what}: {web} has no path MTU towards {far_client}: {route}"
                );
            }
        }
    }
    ok(lab.down());
}
