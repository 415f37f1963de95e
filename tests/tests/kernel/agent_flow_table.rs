//! The agent's read of the live flow table (what `GET /api/v1/flows` pages through), against
//! the real program in the kernel: flows made by BPF_PROG_TEST_RUN are all found, page by page.
use std::{collections::HashSet, net::IpAddr};

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

#[test]
#[ignore = "needs root"]
fn flows_are_paged_with_a_cursor() {
    let mut h = Harness::with_options(&LoadOptions {
        flow_capacity: 1024,
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
