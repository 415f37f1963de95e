//! The real XDP program in the real kernel (BPF_PROG_TEST_RUN): crafted frames in, the verdict
//! and every byte out checked against frames built independently by `lb_tests::packet`.
use std::net::IpAddr;

use lb_common::{
    maps::{Flow, FlowKeyV4, Verdict},
    FLOW_CACHE_REFRESH_JIFFIES, FLOW_CACHE_SLOTS,
};
use lb_tests::{
    harness::{
        two_web_backends, BackendSpec, Harness, WEB1_MAC, WEB2_MAC, XDP_ABORTED, XDP_DROP,
        XDP_PASS, XDP_TX,
    },
    packet::{l4_ports, Frame, L4, TCP_ACK, TCP_SYN},
    stay_on_this_cpu,
};
use lb_userspace::{
    config::{Mode, Protocol},
    services::BackendState,
};

const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

struct Family {
    client: IpAddr,
    vip: IpAddr,
    snat: IpAddr,
    web1: IpAddr,
    web2: IpAddr,
}

fn v4() -> Family {
    Family {
        client: ip("10.0.0.10"),
        vip: ip("10.0.0.100"),
        snat: ip("10.0.0.3"),
        web1: ip("10.0.0.11"),
        web2: ip("10.0.0.12"),
    }
}

fn v6() -> Family {
    Family {
        client: ip("fd00::10"),
        vip: ip("fd00::100"),
        snat: ip("fd00::3"),
        web1: ip("fd00::11"),
        web2: ip("fd00::12"),
    }
}

fn two_backends(f: &Family, port: u16) -> [BackendSpec; 2] {
    two_web_backends(f.web1, f.web2, port)
}

/// A harness with one service on `f.vip:80` and backends web1, web2.
fn service(f: &Family, protocol: Protocol, mode: Mode, backend_port: u16) -> Harness {
    let mut h = Harness::new();
    let snat = (mode == Mode::Nat).then_some(f.snat);
    h.add_service(
        "web",
        (f.vip, 80),
        protocol,
        mode,
        snat,
        &two_backends(f, backend_port),
    );
    h
}

fn client_frame(f: &Family, protocol: Protocol, client_port: u16) -> Frame {
    let frame = match protocol {
        Protocol::Tcp => Frame::tcp((f.client, client_port), (f.vip, 80)),
        Protocol::Udp => Frame::udp((f.client, client_port), (f.vip, 80)),
    };
    frame.macs(CLIENT_MAC, LB_MAC)
}

/// The frame as a packet of the connection it opened (ACK instead of SYN).
fn ack(frame: &Frame) -> Frame {
    frame.clone().tcp_flags(TCP_ACK)
}

#[track_caller]
fn assert_frame(actual: &[u8], expected: &[u8], what: &str) {
    if actual != expected {
        let diff: Vec<String> = actual
            .iter()
            .zip(expected)
            .enumerate()
            .filter(|(_, (a, e))| a != e)
            .map(|(i, (a, e))| format!("byte {i}: got {a:#04x}, want {e:#04x}"))
            .collect();
        panic!(
            "{what}: frames differ (len {} vs {}):\n{}",
            actual.len(),
            expected.len(),
            diff.join("\n")
        );
    }
}

fn dsr(f: Family) {
    let h = service(&f, Protocol::Tcp, Mode::Dsr, 80);
    let frame = client_frame(&f, Protocol::Tcp, 40000);
    let (action, out) = h.run(&frame.build());
    assert_eq!(action, XDP_TX);
    // Only the MACs change: towards web1, from the load balancer's own MAC.
    let expected = frame.clone().macs(LB_MAC, WEB1_MAC).build();
    assert_frame(&out, &expected, "DSR to web1");
    assert_eq!(h.verdict_count(Verdict::ForwardDsr), 1);
    let counters = h.backend_counters(0, "web1");
    assert_eq!(
        (counters.packets, counters.bytes, counters.new_flows),
        (1, out.len() as u64, 1)
    );
}

#[test]
#[ignore = "needs root"]
fn dsr_v4_rewrites_only_the_macs() {
    dsr(v4());
}

#[test]
#[ignore = "needs root"]
fn dsr_v6_rewrites_only_the_macs() {
    dsr(v6());
}

#[test]
#[ignore = "needs root"]
fn dsr_keeps_a_vlan_tag() {
    let f = v4();
    let h = service(&f, Protocol::Tcp, Mode::Dsr, 80);
    let mut frame = client_frame(&f, Protocol::Tcp, 40000);
    frame.vlan = Some(42);
    let (action, out) = h.run(&frame.build());
    assert_eq!(action, XDP_TX);
    assert_frame(
        &out,
        &frame.clone().macs(LB_MAC, WEB1_MAC).build(),
        "tagged DSR",
    );
}

fn nat(f: Family, protocol: Protocol) {
    let mut h = service(&f, protocol, Mode::Nat, 8080);
    h.set_nat_ports(20000, 20999);
    let frame = client_frame(&f, protocol, 40000);
    let (action, out) = h.run(&frame.build());
    assert_eq!(action, XDP_TX, "NAT forward verdict");
    let (nat_port, backend_port) = l4_ports(&out);
    assert!(
        (20000..=20999).contains(&nat_port),
        "NAT port {nat_port} outside the configured range"
    );
    assert_eq!(backend_port, 8080);
    let forward = frame
        .with_endpoints((f.snat, nat_port), (f.web1, 8080))
        .macs(LB_MAC, WEB1_MAC);
    assert_frame(&out, &forward.build(), "NAT forward to web1");

    // The backend's reply comes back to the load balancer and goes out to the client as if
    // from the VIP.
    let mut reply = forward
        .with_endpoints((f.web1, 8080), (f.snat, nat_port))
        .macs(WEB1_MAC, LB_MAC);
    if let L4::Tcp { flags, ack, .. } = &mut reply.l4 {
        *flags = TCP_ACK | 0x02;
        *ack = 1001;
    }
    reply.payload = b"a reply of another length".to_vec();
    let (action, out) = h.run(&reply.build());
    assert_eq!(action, XDP_TX, "NAT reply verdict");
    let to_client = reply
        .with_endpoints((f.vip, 80), (f.client, 40000))
        .macs(LB_MAC, CLIENT_MAC);
    assert_frame(&out, &to_client.build(), "NAT reply to the client");

    // The next client packet of the flow reuses the same port and backend.
    let (_, again) = h.run(&frame.build());
    assert_frame(&again, &forward.build(), "second packet of the NAT flow");
    assert_eq!(h.verdict_count(Verdict::ForwardNat), 2);
    assert_eq!(h.verdict_count(Verdict::NatReply), 1);
    assert_eq!(h.service_counters(0).packets, 3);
    assert_eq!(h.service_counters(0).new_flows, 1);
}

#[test]
#[ignore = "needs root"]
fn nat_v4_tcp_forward_and_reply() {
    nat(v4(), Protocol::Tcp);
}

#[test]
#[ignore = "needs root"]
fn nat_v4_udp_forward_and_reply() {
    nat(v4(), Protocol::Udp);
}

#[test]
#[ignore = "needs root"]
fn nat_v6_tcp_forward_and_reply() {
    nat(v6(), Protocol::Tcp);
}

#[test]
#[ignore = "needs root"]
fn nat_v6_udp_forward_and_reply() {
    nat(v6(), Protocol::Udp);
}

#[test]
#[ignore = "needs root"]
fn nat_keeps_a_zero_udp_checksum_zero() {
    let f = v4();
    let h = service(&f, Protocol::Udp, Mode::Nat, 53);
    let mut frame = client_frame(&f, Protocol::Udp, 5353);
    frame.l4 = L4::Udp {
        src_port: 5353,
        dst_port: 80,
        checksum: false,
    };
    let (action, out) = h.run(&frame.build());
    assert_eq!(action, XDP_TX);
    let (nat_port, _) = l4_ports(&out);
    let mut expected = frame
        .with_endpoints((f.snat, nat_port), (f.web1, 53))
        .macs(LB_MAC, WEB1_MAC);
    expected.l4 = L4::Udp {
        src_port: nat_port,
        dst_port: 53,
        checksum: false,
    };
    assert_frame(&out, &expected.build(), "checksum-less UDP");
}

#[test]
#[ignore = "needs root"]
fn nat_with_ipv4_options() {
    let f = v4();
    let h = service(&f, Protocol::Tcp, Mode::Nat, 80);
    let mut frame = client_frame(&f, Protocol::Tcp, 40000);
    // Record route (7), 11 bytes, then no-op padding: 12 bytes of options, IHL 8.
    frame.ipv4_options = vec![7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let (action, out) = h.run(&frame.build());
    assert_eq!(action, XDP_TX);
    let (nat_port, _) = l4_ports(&out);
    let expected = frame
        .with_endpoints((f.snat, nat_port), (f.web1, 80))
        .macs(LB_MAC, WEB1_MAC);
    assert_frame(&out, &expected.build(), "NAT with IPv4 options");
}

#[test]
#[ignore = "needs root"]
fn round_robin_alternates_exactly_over_100_new_flows() {
    for f in [v4(), v6()] {
        let h = service(&f, Protocol::Tcp, Mode::Dsr, 80);
        let mut order = Vec::new();
        for i in 0..100 {
            let (action, out) = h.run(&client_frame(&f, Protocol::Tcp, 30000 + i).build());
            assert_eq!(action, XDP_TX);
            order.push(if out[0..6] == WEB1_MAC {
                1
            } else if out[0..6] == WEB2_MAC {
                2
            } else {
                0
            });
        }
        let expected: Vec<u8> = (0..100).map(|i| if i % 2 == 0 { 1 } else { 2 }).collect();
        assert_eq!(order, expected, "strict alternation web1, web2, ...");
        assert_eq!(h.backend_counters(0, "web1").new_flows, 50);
        assert_eq!(h.backend_counters(0, "web2").new_flows, 50);
    }
}

#[test]
#[ignore = "needs root"]
fn weighted_round_robin_follows_the_weights() {
    let f = v4();
    let mut h = Harness::new();
    let mut backends = two_backends(&f, 80);
    backends[0].weight = 3;
    h.add_service(
        "web",
        (f.vip, 80),
        Protocol::Tcp,
        Mode::Dsr,
        None,
        &backends,
    );
    for i in 0..400 {
        h.run(&client_frame(&f, Protocol::Tcp, 20000 + i).build());
    }
    assert_eq!(h.backend_counters(0, "web1").new_flows, 300);
    assert_eq!(h.backend_counters(0, "web2").new_flows, 100);
}

/// The data path has two roads (lb-ebpf main.rs): the short one for IPv4 TCP/UDP without
/// options, tagged or not, and the generic one. A flow's packets take either, depending on
/// their headers; they must land on the same backend and be counted the same way.
#[test]
#[ignore = "needs root"]
fn an_established_flow_leaves_alike_by_either_road() {
    stay_on_this_cpu();
    let f = v4();
    for mode in [Mode::Dsr, Mode::Nat] {
        let h = service(&f, Protocol::Tcp, mode, 80);
        let syn = client_frame(&f, Protocol::Tcp, 40000);
        // The flow begins on web1; the next new flow moves the cursor to web2.
        let (_, first) = h.run(&syn.build());
        h.run(&client_frame(&f, Protocol::Tcp, 40001).build());
        let plain = ack(&syn);
        let mut tagged = plain.clone();
        tagged.vlan = Some(42);
        let mut with_options = plain.clone();
        with_options.ipv4_options = vec![1, 1, 1, 0];
        // DSR: the first short-road packet finds the flow in the table and copies it into this
        // CPU's flow cache; the next ones (tagged or not) are served from the copy.
        for (what, frame) in [
            ("short road", &plain),
            ("short road, tagged", &tagged),
            ("generic road (IP options)", &with_options),
            ("short road again", &plain),
        ] {
            let (action, out) = h.run(&frame.build());
            assert_eq!(action, XDP_TX, "{mode:?}, {what}");
            // The destination MAC comes first, tag or not.
            assert_eq!(
                out[0..6],
                first[0..6],
                "{mode:?}, {what}: the flow changed backend"
            );
            if mode == Mode::Dsr {
                assert_frame(&out, &frame.clone().macs(LB_MAC, WEB1_MAC).build(), what);
            }
        }
        let web1 = h.backend_counters(0, "web1");
        assert_eq!(
            (web1.packets, web1.new_flows),
            (5, 1),
            "{mode:?}: web1's counters"
        );
        let forwarded = if mode == Mode::Dsr {
            Verdict::ForwardDsr
        } else {
            Verdict::ForwardNat
        };
        assert_eq!(h.verdict_count(forwarded), 6, "{mode:?}: forward verdicts");
        assert_eq!(
            h.service_counters(0).packets,
            6,
            "{mode:?}: the service's packets"
        );
    }
}

#[test]
#[ignore = "needs root"]
fn a_flow_sticks_to_its_backend() {
    let f = v4();
    let h = service(&f, Protocol::Tcp, Mode::Dsr, 80);
    let (_, first) = h.run(&client_frame(&f, Protocol::Tcp, 40000).build());
    let sticky = ack(&client_frame(&f, Protocol::Tcp, 40000)).build();
    for i in 0..10 {
        // Other new flows move the round-robin cursor in between.
        h.run(&client_frame(&f, Protocol::Tcp, 50000 + i).build());
        let (action, out) = h.run(&sticky);
        assert_eq!(action, XDP_TX);
        assert_eq!(
            out[0..6],
            first[0..6],
            "packet {i} of the flow changed backend"
        );
    }
    assert_eq!(h.backend_counters(0, "web1").packets, 1 + 10 + 5);
}

#[test]
#[ignore = "needs root"]
fn flows_of_a_removed_backend_are_rebalanced() {
    stay_on_this_cpu();
    let f = v4();
    let mut h = service(&f, Protocol::Tcp, Mode::Dsr, 80);
    let syn = client_frame(&f, Protocol::Tcp, 40000);
    assert_eq!(h.run(&syn.build()).1[0..6], WEB1_MAC);
    let on_web1 = ack(&syn).build();
    // The first ACK makes it a connection; the second is copied into this CPU's flow cache,
    // which must notice the change too.
    assert_eq!(h.run(&on_web1).1[0..6], WEB1_MAC);
    assert_eq!(h.run(&on_web1).1[0..6], WEB1_MAC);
    h.set_backend_state(0, "web1", BackendState::Down);
    assert_eq!(
        h.run(&on_web1).1[0..6],
        WEB2_MAC,
        "the flow moves to the remaining backend"
    );
    for i in 0..6 {
        let (_, out) = h.run(&client_frame(&f, Protocol::Tcp, 41000 + i).build());
        assert_eq!(out[0..6], WEB2_MAC, "new flows avoid the removed backend");
    }
    h.set_backend_state(0, "web2", BackendState::Down);
    let (action, _) = h.run(&client_frame(&f, Protocol::Tcp, 42000).build());
    assert_eq!(action, XDP_DROP, "no backend left");
    assert_eq!(h.verdict_count(Verdict::DropNoBackend), 1);
}

/// More flows than a CPU's flow cache has slots, so that copies evict each other: every packet
/// still leaves towards its flow's backend.
#[test]
#[ignore = "needs root"]
fn flows_that_evict_each_other_from_the_flow_cache_keep_their_backends() {
    stay_on_this_cpu();
    let f = v4();
    let h = service(&f, Protocol::Tcp, Mode::Dsr, 80);
    let flows = 3 * FLOW_CACHE_SLOTS;
    let frame = |i: u32, flags: u8| {
        let client = IpAddr::from(std::net::Ipv4Addr::from(0x0a01_0000 + i / 1000));
        Frame::tcp((client, 20000 + (i % 1000) as u16), (f.vip, 80))
            .tcp_flags(flags)
            .macs(CLIENT_MAC, LB_MAC)
            .build()
    };
    let run = |i: u32, flags: u8| {
        let (action, out) = h.run(&frame(i, flags));
        assert_eq!(action, XDP_TX, "flow {i}");
        out[5]
    };
    let backend_of = |i: u32| run(i, TCP_ACK);
    // SYNs open the connections; the ACKs of the rounds below are what the cache serves.
    let first: Vec<u8> = (0..flows).map(|i| run(i, TCP_SYN)).collect();
    for round in 0..2 {
        for (i, backend) in first.iter().enumerate() {
            assert_eq!(
                backend_of(i as u32),
                *backend,
                "round {round}: flow {i} changed backend"
            );
        }
    }
    assert_eq!(h.verdict_count(Verdict::ForwardDsr), 3 * u64::from(flows));
    assert_eq!(h.service_counters(0).new_flows, u64::from(flows));
}

/// The flow cache serves a copy of the flow's table entry, and asks the table again once the
/// copy is `FLOW_CACHE_REFRESH_JIFFIES` old. Seen by taking the entry out of the table behind
/// the program's back (the agent never does): the copy still forwards the flow; once it is
/// old, the flow is new to the table and round robin places it again.
#[test]
#[ignore = "needs root"]
fn the_flow_cache_serves_a_copy_then_asks_the_flow_table_again() {
    stay_on_this_cpu();
    let f = v4();
    let h = service(&f, Protocol::Tcp, Mode::Dsr, 80);
    let syn = client_frame(&f, Protocol::Tcp, 40000);
    assert_eq!(h.run(&syn.build()).1[0..6], WEB1_MAC, "the SYN: a new flow");
    let flow = ack(&syn).build();
    assert_eq!(
        h.run(&flow).1[0..6],
        WEB1_MAC,
        "first ACK: the handshake completes, the flow becomes a connection"
    );
    assert_eq!(
        h.run(&flow).1[0..6],
        WEB1_MAC,
        "second ACK: from the table, copied"
    );
    let flows = flow_table(&h);
    let key = flows
        .keys()
        .next()
        .expect("the flow is in the table")
        .unwrap_or_else(|e| panic!("{e}"));
    let mut flows = flows;
    flows.remove(&key).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(h.run(&flow).1[0..6], WEB1_MAC, "third ACK: from the copy");
    assert_eq!(
        flow_table(&h).keys().count(),
        0,
        "the copy did not re-create the entry"
    );
    // At least 100 ticks a second on any kernel; a margin for a slow machine.
    std::thread::sleep(std::time::Duration::from_millis(
        FLOW_CACHE_REFRESH_JIFFIES * 10 + 200,
    ));
    assert_eq!(
        h.run(&flow),
        (XDP_DROP, flow.clone()),
        "after the refresh time: the table has no entry, and an ACK creates none"
    );
    assert_eq!(h.verdict_count(Verdict::DropNoFlow), 1);
    assert_eq!(
        h.run(&syn.build()).1[0..6],
        WEB2_MAC,
        "a SYN on the same ports: a new flow, placed by round robin"
    );
    assert_eq!(h.backend_counters(0, "web2").new_flows, 1);
}

/// The program's IPv4 flow table, found through the program's map ids.
fn flow_table(h: &Harness) -> aya::maps::HashMap<aya::maps::MapData, FlowKeyV4, Flow> {
    let program = h.dataplane.program().unwrap_or_else(|e| panic!("{e:#}"));
    let info = program.info().unwrap_or_else(|e| panic!("{e}"));
    let ids = info
        .map_ids()
        .unwrap_or_else(|e| panic!("{e}"))
        .expect("the kernel lists the program's maps");
    for id in ids {
        let map = aya::maps::MapData::from_id(id).unwrap_or_else(|e| panic!("{e}"));
        let info = map.info().unwrap_or_else(|e| panic!("{e}"));
        if info.name_as_str() == Some(lb_common::names::FLOWS_V4) {
            let map = aya::maps::Map::from_map_data(map).unwrap_or_else(|e| panic!("{e}"));
            return aya::maps::HashMap::try_from(map).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    panic!("the program has no map {}", lb_common::names::FLOWS_V4);
}

/// A flow moved off a backend that went down stays where it moved when the backend comes back,
/// even though this CPU's flow cache still holds a young copy naming the old backend.
#[test]
#[ignore = "needs root"]
fn a_flow_moved_off_a_down_backend_stays_moved_when_it_comes_back() {
    stay_on_this_cpu();
    let f = v4();
    let mut h = service(&f, Protocol::Tcp, Mode::Dsr, 80);
    let syn = client_frame(&f, Protocol::Tcp, 40000);
    assert_eq!(h.run(&syn.build()).1[0..6], WEB1_MAC);
    let flow = ack(&syn).build();
    assert_eq!(h.run(&flow).1[0..6], WEB1_MAC, "a connection now");
    assert_eq!(h.run(&flow).1[0..6], WEB1_MAC, "copied into the cache");
    h.set_backend_state(0, "web1", BackendState::Down);
    assert_eq!(h.run(&flow).1[0..6], WEB2_MAC, "moved while web1 is down");
    h.set_backend_state(0, "web1", BackendState::Active);
    for i in 0..3 {
        assert_eq!(
            h.run(&flow).1[0..6],
            WEB2_MAC,
            "packet {i} after web1 came back"
        );
    }
}

#[test]
#[ignore = "needs root"]
fn a_draining_backend_keeps_its_flows_and_gets_no_new_ones() {
    let f = v4();
    let mut h = service(&f, Protocol::Tcp, Mode::Dsr, 80);
    let syn = client_frame(&f, Protocol::Tcp, 40000);
    assert_eq!(h.run(&syn.build()).1[0..6], WEB1_MAC);
    let on_web1 = ack(&syn).build();
    h.set_backend_state(0, "web1", BackendState::Draining);
    for i in 0..6 {
        assert_eq!(h.run(&on_web1).1[0..6], WEB1_MAC, "the existing flow stays");
        let (_, out) = h.run(&client_frame(&f, Protocol::Tcp, 41000 + i).build());
        assert_eq!(out[0..6], WEB2_MAC, "new flows go elsewhere");
    }
}

#[test]
#[ignore = "needs root"]
fn traffic_not_for_a_service_passes_untouched() {
    let f = v4();
    let h = service(&f, Protocol::Tcp, Mode::Dsr, 80);
    let mut other_port = client_frame(&f, Protocol::Tcp, 40000);
    other_port.set_ports(40000, 22);
    let other_host = Frame::tcp((f.client, 40000), (ip("10.0.0.2"), 80)).macs(CLIENT_MAC, LB_MAC);
    let udp_same_port = client_frame(&f, Protocol::Udp, 40000);
    let v6_other = Frame::tcp((ip("fd00::10"), 1), (ip("fd00::2"), 80));
    let mut arp = vec![0xff; 6];
    arp.extend(CLIENT_MAC);
    arp.extend([0x08, 0x06]);
    arp.extend([0u8; 28]);
    for (what, frame) in [
        ("other port", other_port.build()),
        ("other host", other_host.build()),
        ("UDP to a TCP service", udp_same_port.build()),
        ("IPv6 elsewhere", v6_other.build()),
        ("ARP", arp),
    ] {
        let (action, out) = h.run(&frame);
        assert_eq!(action, XDP_PASS, "{what}");
        assert_frame(&out, &frame, what);
    }
}

/// Every prefix of a valid packet must be handled: dropped or passed, never aborted.
fn truncations(f: Family, mode: Mode) {
    let h = service(&f, Protocol::Tcp, mode, 80);
    let mut frame = client_frame(&f, Protocol::Tcp, 40000);
    if f.client.is_ipv4() {
        frame.ipv4_options = vec![1, 1, 1, 1, 1, 1, 1, 0];
    }
    let full = frame.build();
    for len in 14..full.len() {
        let (action, _) = h.run(&full[..len]);
        assert_ne!(action, XDP_ABORTED, "truncated to {len} bytes");
        assert!(
            action == XDP_DROP || action == XDP_PASS,
            "truncated to {len} bytes: action {action}"
        );
    }
    assert_eq!(h.run(&full).0, XDP_TX);
}

#[test]
#[ignore = "needs root"]
fn truncated_tcp_ipv4_is_never_aborted() {
    truncations(v4(), Mode::Dsr);
    truncations(v4(), Mode::Nat);
}

#[test]
#[ignore = "needs root"]
fn truncated_tcp_ipv6_is_never_aborted() {
    truncations(v6(), Mode::Dsr);
    truncations(v6(), Mode::Nat);
}

#[test]
#[ignore = "needs root"]
fn lying_ipv4_headers_are_dropped_as_malformed() {
    let f = v4();
    let h = service(&f, Protocol::Tcp, Mode::Dsr, 80);
    let good = client_frame(&f, Protocol::Tcp, 40000).build();
    let mut cases = Vec::new();
    let mut ihl_too_small = good.clone();
    ihl_too_small[14] = 0x44;
    cases.push(("IHL 4", ihl_too_small));
    let mut ihl_past_end = good.clone();
    ihl_past_end[14] = 0x4F;
    cases.push(("IHL past the packet", ihl_past_end));
    let mut total_too_long = good.clone();
    total_too_long[16..18].copy_from_slice(&2000u16.to_be_bytes());
    cases.push(("total length past the packet", total_too_long));
    let mut version = good.clone();
    version[14] = 0x65;
    cases.push(("version 6 in an IPv4 frame", version));
    for (what, frame) in cases {
        let (action, _) = h.run(&frame);
        assert_eq!(action, XDP_DROP, "{what}");
    }
    assert_eq!(h.verdict_count(Verdict::DropMalformed), 4);
}

#[test]
#[ignore = "needs root"]
fn ipv4_fragments_go_to_the_kernel() {
    let f = v4();
    let h = service(&f, Protocol::Tcp, Mode::Dsr, 80);
    let mut frame = client_frame(&f, Protocol::Tcp, 40000).build();
    frame[20..22].copy_from_slice(&0x2000u16.to_be_bytes()); // more fragments
    assert_eq!(h.run(&frame).0, XDP_PASS);
    assert_eq!(h.verdict_count(Verdict::PassFragment), 1);
}

#[test]
#[ignore = "needs root"]
fn nat_ports_are_distinct_per_flow() {
    let f = v4();
    let mut h = Harness::new();
    // One backend, so every flow competes for ports towards it.
    h.add_service(
        "web",
        (f.vip, 80),
        Protocol::Tcp,
        Mode::Nat,
        Some(f.snat),
        &[BackendSpec {
            name: "web1",
            addr: f.web1,
            port: 80,
            mac: WEB1_MAC,
            weight: 1,
        }],
    );
    h.set_nat_ports(30000, 30063);
    let mut ports = std::collections::HashSet::new();
    let mut exhausted = 0;
    for i in 0..64u16 {
        let (action, out) = h.run(&client_frame(&f, Protocol::Tcp, 1000 + i).build());
        if action == XDP_TX {
            assert!(
                ports.insert(l4_ports(&out).0),
                "a NAT port was handed out twice"
            );
        } else {
            assert_eq!(action, XDP_DROP);
            exhausted += 1;
        }
    }
    // A few flows may fail to find a free port among their tries once the range fills up.
    assert!(ports.len() >= 48, "only {} of 64 ports used", ports.len());
    assert_eq!(h.verdict_count(Verdict::DropNatPortsExhausted), exhausted);
}

/// A drain, a health failure and an enable, applied one map write at a time, with two new
/// connections after each write: with two backends in strict round robin, one of any two
/// consecutive new flows takes web1's slot of whatever table is live. None may be dropped as
/// `drop_no_backend`: a backend leaves selection only after the flip to a table without it,
/// and joins it only before the flip to a table with it.
#[test]
#[ignore = "needs root"]
fn no_new_flow_is_lost_at_any_step_of_a_backend_change() {
    let f = v4();
    let mut h = service(&f, Protocol::Tcp, Mode::Dsr, 80);
    let mut port = 20000;
    for state in [
        BackendState::Draining,
        BackendState::Active,
        BackendState::Down,
        BackendState::Active,
    ] {
        h.services[0].backends[0].state = state;
        let (writes, table) = lb_userspace::services::plan_service(&h.services[0])
            .unwrap_or_else(|e| panic!("{e:#}"));
        for (step, write) in writes.iter().enumerate() {
            lb_userspace::services::apply_write(&mut h.dataplane, write)
                .unwrap_or_else(|e| panic!("{e:#}"));
            for _ in 0..2 {
                port += 1;
                let (action, _) = h.run(&client_frame(&f, Protocol::Tcp, port).build());
                assert_eq!(
                    action,
                    XDP_TX,
                    "web1 {state:?}: a new connection after write {step} ({write:?}) was not forwarded"
                );
            }
        }
        h.services[0].active_table = table;
    }
    assert_eq!(h.verdict_count(Verdict::DropNoBackend), 0);
}
