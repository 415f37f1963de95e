//! The agent's read of the live flow table (what `GET /api/v1/flows` pages through), against
//! the real program in the kernel: flows made by BPF_PROG_TEST_RUN are all found, page by page,
//! connections and unverified flows apart.
use std::{collections::HashSet, net::IpAddr};

use lb_common::maps::{STATE_ESTABLISHED, STATE_OPENING, STATE_UDP};
use lb_tests::{
    harness::{two_web_backends, Harness, XDP_TX},
    packet::{Frame, TCP_ACK},
};
use lb_userspace::{
    config::{Mode, Protocol},
    dataplane::LoadOptions,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Small tables (1024 entries each) and a DSR web service on 10.0.0.100:80 over two backends.
fn small_tables_with_web_service() -> Harness {
    let mut h = Harness::with_options(&LoadOptions {
        flow_capacity: 1024,
        unverified_capacity: 1024,
        nat_capacity: 1024,
        ..LoadOptions::default()
    });
    let backends = two_web_backends(ip("10.0.0.11"), ip("10.0.0.12"), 80);
    h.add_service(
        "web",
        (ip("10.0.0.100"), 80),
        Protocol::Tcp,
        Mode::Dsr,
        None,
        &backends,
    );
    h
}

#[test]
#[ignore = "needs root"]
fn flows_are_paged_with_a_cursor() {
    let h = small_tables_with_web_service();
    let empty = h
        .dataplane
        .flows(None, 10)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        empty.flows.is_empty() && empty.next.is_none(),
        "a fresh table is empty"
    );

    const FLOWS: u16 = 7;
    for port in 0..FLOWS {
        // A SYN, then the ACK that makes the flow a connection (the table listed here).
        let syn = Frame::tcp((ip("10.0.0.10"), 40000 + port), (ip("10.0.0.100"), 80));
        assert_eq!(h.run(&syn.build()).0, XDP_TX);
        assert_eq!(h.run(&syn.tcp_flags(TCP_ACK).build()).0, XDP_TX);
    }
    let mut seen = HashSet::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = h
            .dataplane
            .flows(cursor.as_ref(), 3)
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert!(page.flows.len() <= 3);
        pages += 1;
        for (key, flow) in page.flows {
            assert_eq!(key.dst_port, 80u16.to_be());
            assert!(seen.insert(u16::from_be(key.src_port)), "flow seen twice");
            assert!(flow.backend_id == 1 || flow.backend_id == 2, "{flow:?}");
        }
        match page.next {
            Some(key) => cursor = Some(key),
            None => break,
        }
        assert!(pages < 10, "paging does not end");
    }
    assert_eq!(seen, (40000..40000 + FLOWS).collect::<HashSet<_>>());
}

/// What `lb flows --unverified` lists: SYNs without their ACK and UDP flows, apart from the
/// connections, each with its state and idle time on the data path's flow clock.
#[test]
#[ignore = "needs root"]
fn unverified_flows_are_listed_apart_with_their_state_and_idle_time() {
    let mut h = small_tables_with_web_service();
    let dns = two_web_backends(ip("10.0.0.11"), ip("10.0.0.12"), 53);
    h.add_service(
        "dns",
        (ip("10.0.0.100"), 53),
        Protocol::Udp,
        Mode::Dsr,
        None,
        &dns,
    );
    h.set_clock(1_000);
    // Three half-open handshakes, one completed connection, one UDP flow.
    for port in 0..3 {
        let syn = Frame::tcp((ip("10.0.0.10"), 41000 + port), (ip("10.0.0.100"), 80));
        assert_eq!(h.run(&syn.build()).0, XDP_TX);
    }
    let done = Frame::tcp((ip("10.0.0.10"), 42000), (ip("10.0.0.100"), 80));
    assert_eq!(h.run(&done.build()).0, XDP_TX);
    assert_eq!(h.run(&done.tcp_flags(TCP_ACK).build()).0, XDP_TX);
    let datagram = Frame::udp((ip("10.0.0.10"), 43000), (ip("10.0.0.100"), 53));
    assert_eq!(h.run(&datagram.build()).0, XDP_TX);
    h.set_clock(1_004);

    let all = |unverified: bool| {
        let mut flows = Vec::new();
        let mut cursor = None;
        loop {
            let page = if unverified {
                h.dataplane.unverified_flows(cursor.as_ref(), 2)
            } else {
                h.dataplane.flows(cursor.as_ref(), 2)
            }
            .unwrap_or_else(|e| panic!("{e:#}"));
            flows.extend(page.flows);
            match page.next {
                Some(key) => cursor = Some(key),
                None => break flows,
            }
        }
    };
    let mut unverified: Vec<(u16, u8)> = all(true)
        .iter()
        .map(|(key, flow)| (u16::from_be(key.src_port), flow.state))
        .collect();
    unverified.sort_unstable();
    assert_eq!(
        unverified,
        vec![
            (41000, STATE_OPENING),
            (41001, STATE_OPENING),
            (41002, STATE_OPENING),
            (43000, STATE_UDP)
        ]
    );
    let connections = all(false);
    assert_eq!(connections.len(), 1, "{connections:?}");
    assert_eq!(u16::from_be(connections[0].0.src_port), 42000);
    assert_eq!(connections[0].1.state, STATE_ESTABLISHED);
    let now = h
        .dataplane
        .flow_clock_now()
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(now, 1_004);
    assert_eq!(
        now - connections[0].1.last_seen,
        4,
        "idle since the test clock's 1000"
    );
}
