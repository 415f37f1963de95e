//! The life of a flow in the real program (BPF_PROG_TEST_RUN): handshake, close, reuse of the
//! same ports, idle limits on a clock the test sets, forged packets that create nothing, and
//! NAT ports given back, ICMP errors that follow their flow. Needs root: run by `cargo xtask test` (`--include-ignored`).
use std::net::IpAddr;

use etherparse::{
    icmpv4::DestUnreachableHeader, Icmpv4Type, Icmpv6Type, Ipv4Header, Ipv6Header, NetHeaders,
    PacketBuilder, PacketHeaders, TcpHeader, TransportHeader,
};
use lb_common::maps::{FlowTimeouts, Verdict};
use lb_tests::{
    harness::{two_web_backends, Harness, WEB1_MAC, WEB2_MAC, XDP_DROP, XDP_PASS, XDP_TX},
    packet::{l4_ports, Frame, TCP_ACK, TCP_SYN},
};
use lb_userspace::{
    config::{Mode, Protocol},
    dataplane::LoadOptions,
};

const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;
const T0: u32 = 1_000_000;
const TIMEOUTS: FlowTimeouts = FlowTimeouts::DEFAULT;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// A DSR (or NAT) service on 10.0.0.100:80 with web1 and web2, its flow clock stopped at T0.
#[track_caller]
fn service(mode: Mode, options: &LoadOptions) -> Harness {
    let mut h = Harness::with_options(options);
    let snat = (mode == Mode::Nat).then(|| ip("10.0.0.3"));
    h.add_service(
        "web",
        (ip("10.0.0.100"), 80),
        Protocol::Tcp,
        mode,
        snat,
        &two_web_backends(ip("10.0.0.11"), ip("10.0.0.12"), 80),
    );
    h.set_clock(T0);
    h
}

fn dsr() -> Harness {
    service(Mode::Dsr, &LoadOptions::default())
}

fn packet(client: &str, port: u16, flags: u8) -> Vec<u8> {
    Frame::tcp((ip(client), port), (ip("10.0.0.100"), 80))
        .tcp_flags(flags)
        .macs(CLIENT_MAC, LB_MAC)
        .build()
}

/// The backend MAC a client packet left towards; panics unless it was forwarded.
#[track_caller]
fn backend(h: &Harness, port: u16, flags: u8) -> [u8; 6] {
    let (action, out) = h.run(&packet("10.5.0.1", port, flags));
    assert_eq!(action, XDP_TX, "port {port}, flags {flags:#x}: forwarded");
    out[0..6].try_into().unwrap_or_default()
}

#[track_caller]
fn dropped_as(h: &Harness, frame: &[u8], verdict: Verdict, what: &str) {
    let before = h.verdict_count(verdict);
    assert_eq!(h.run(frame).0, XDP_DROP, "{what}: dropped");
    assert_eq!(
        h.verdict_count(verdict),
        before + 1,
        "{what}: counted as {verdict:?}"
    );
}

#[test]
#[ignore = "needs root"]
fn a_retransmitted_syn_keeps_its_backend() {
    let h = dsr();
    assert_eq!(backend(&h, 40000, TCP_SYN), WEB1_MAC);
    assert_eq!(
        backend(&h, 40001, TCP_SYN),
        WEB2_MAC,
        "another connection moves the cursor"
    );
    assert_eq!(
        backend(&h, 40000, TCP_SYN),
        WEB1_MAC,
        "the SYN again, same backend"
    );
    assert_eq!(
        backend(&h, 40000, TCP_ACK),
        WEB1_MAC,
        "the handshake completes there"
    );
    assert_eq!(h.service_counters(0).new_flows, 2);
}

/// Clients (and NATs in front of them) reuse ports: a SYN after a FIN or RST is a new connection
/// and takes the next round-robin slot, not the old connection's backend.
#[test]
#[ignore = "needs root"]
fn a_syn_after_a_close_is_a_new_connection() {
    for close in [TCP_FIN | TCP_ACK, TCP_RST] {
        let h = dsr();
        assert_eq!(backend(&h, 40000, TCP_SYN), WEB1_MAC);
        assert_eq!(backend(&h, 40000, TCP_ACK), WEB1_MAC);
        assert_eq!(
            backend(&h, 40000, close),
            WEB1_MAC,
            "the close goes where the flow went"
        );
        assert_eq!(
            backend(&h, 40000, TCP_ACK),
            WEB1_MAC,
            "late packets of the close too"
        );
        assert_eq!(
            backend(&h, 40000, TCP_SYN),
            WEB2_MAC,
            "flags {close:#x}: reused ports"
        );
        assert_eq!(
            backend(&h, 40000, TCP_ACK),
            WEB2_MAC,
            "and the new connection stays"
        );
    }
}

/// A stray SYN on an established connection does not move it (as IPVS does).
#[test]
#[ignore = "needs root"]
fn a_syn_on_an_established_connection_keeps_it() {
    let h = dsr();
    assert_eq!(backend(&h, 40000, TCP_SYN), WEB1_MAC);
    assert_eq!(backend(&h, 40000, TCP_ACK), WEB1_MAC);
    backend(&h, 40001, TCP_SYN);
    assert_eq!(backend(&h, 40000, TCP_SYN), WEB1_MAC);
}

#[test]
#[ignore = "needs root"]
fn a_tcp_packet_without_a_flow_creates_nothing() {
    let h = dsr();
    for (flags, what) in [
        (TCP_ACK, "a forged ACK"),
        (TCP_FIN | TCP_ACK, "a FIN"),
        (TCP_RST, "a RST"),
    ] {
        dropped_as(
            &h,
            &packet("10.5.0.1", 40000, flags),
            Verdict::DropNoFlow,
            what,
        );
    }
    assert_eq!(h.service_counters(0).new_flows, 0);
    assert_eq!(
        backend(&h, 40000, TCP_SYN),
        WEB1_MAC,
        "the first real connection is the first"
    );
}

/// Each state's idle limit, on the program's clock: an expired flow is gone for every purpose.
#[test]
#[ignore = "needs root"]
fn flows_expire_after_their_states_idle_limit() {
    let mut h = dsr();
    // Opening: the handshake must complete within tcp_opening.
    assert_eq!(backend(&h, 40000, TCP_SYN), WEB1_MAC);
    h.set_clock(T0 + TIMEOUTS.tcp_opening + 1);
    dropped_as(
        &h,
        &packet("10.5.0.1", 40000, TCP_ACK),
        Verdict::DropNoFlow,
        "late ACK",
    );

    // Established: alive at the limit, gone after it.
    let mut now = T0 + 100;
    h.set_clock(now);
    assert_eq!(backend(&h, 40001, TCP_SYN), WEB2_MAC);
    assert_eq!(backend(&h, 40001, TCP_ACK), WEB2_MAC);
    now += TIMEOUTS.tcp_established;
    h.set_clock(now);
    assert_eq!(
        backend(&h, 40001, TCP_ACK),
        WEB2_MAC,
        "idle for exactly the limit"
    );
    now += TIMEOUTS.tcp_established + 1;
    h.set_clock(now);
    dropped_as(
        &h,
        &packet("10.5.0.1", 40001, TCP_ACK),
        Verdict::DropNoFlow,
        "idle too long",
    );
    assert_eq!(
        backend(&h, 40001, TCP_SYN),
        WEB1_MAC,
        "its ports: a new connection, next slot"
    );

    // Closing: short.
    assert_eq!(backend(&h, 40001, TCP_ACK), WEB1_MAC);
    assert_eq!(backend(&h, 40001, TCP_FIN | TCP_ACK), WEB1_MAC);
    h.set_clock(now + TIMEOUTS.tcp_closing + 1);
    dropped_as(
        &h,
        &packet("10.5.0.1", 40001, TCP_ACK),
        Verdict::DropNoFlow,
        "after closing",
    );
}

/// Forged SYNs from many sources fill only the unverified flows: a connection survives a flood
/// of twice that table's size, in the same program.
#[test]
#[ignore = "needs root"]
fn a_syn_flood_cannot_evict_a_connection() {
    let options = LoadOptions {
        flow_capacity: 1024,
        unverified_capacity: 1024,
        ..LoadOptions::default()
    };
    let h = service(Mode::Dsr, &options);
    let held = |flags| {
        let (action, out) = h.run(&packet("10.5.0.1", 40000, flags));
        (action, out[0..6].to_vec())
    };
    assert_eq!(held(TCP_SYN), (XDP_TX, WEB1_MAC.to_vec()));
    assert_eq!(held(TCP_ACK), (XDP_TX, WEB1_MAC.to_vec()));
    for i in 0..2048u32 {
        let source = std::net::Ipv4Addr::from(0x0b00_0000 + i);
        let syn = Frame::tcp(
            (IpAddr::V4(source), 1024 + (i % 60000) as u16),
            (ip("10.0.0.100"), 80),
        )
        .tcp_flags(TCP_SYN)
        .macs(CLIENT_MAC, LB_MAC)
        .build();
        assert_eq!(h.run(&syn).0, XDP_TX);
        // Forged ACKs besides: they create nothing at all.
        let ack = Frame::tcp((IpAddr::V4(source), 7), (ip("10.0.0.100"), 80))
            .tcp_flags(TCP_ACK)
            .macs(CLIENT_MAC, LB_MAC)
            .build();
        assert_eq!(h.run(&ack).0, XDP_DROP);
    }
    assert_eq!(
        held(TCP_ACK),
        (XDP_TX, WEB1_MAC.to_vec()),
        "the connection kept its backend"
    );
    assert_eq!(h.verdict_count(Verdict::DropNoFlow), 2048);
}

/// NAT ports come back when their flow ends: a port is never taken while its flow lives, and
/// is taken over once the flow has closed and its closing time has passed.
#[test]
#[ignore = "needs root"]
fn nat_ports_are_given_back_when_their_flow_ends() {
    let mut h = service(Mode::Nat, &LoadOptions::default());
    // Two ports towards each backend: four connections fill them.
    h.set_nat_ports(20000, 20001);
    let mut ports = Vec::new();
    for port in 40000..40004 {
        let (action, out) = h.run(&packet("10.5.0.1", port, TCP_SYN));
        assert_eq!(action, XDP_TX, "connection {port}");
        ports.push((out[0..6].to_vec(), l4_ports(&out).0));
        assert_eq!(h.run(&packet("10.5.0.1", port, TCP_ACK)).0, XDP_TX);
    }
    dropped_as(
        &h,
        &packet("10.5.0.1", 40004, TCP_SYN),
        Verdict::DropNatPortsExhausted,
        "every port in use",
    );
    // Connection 40000 (web1) closes: its port stays held through the closing time.
    assert_eq!(
        h.run(&packet("10.5.0.1", 40000, TCP_FIN | TCP_ACK)).0,
        XDP_TX
    );
    h.set_clock(T0 + TIMEOUTS.tcp_closing);
    dropped_as(
        &h,
        &packet("10.5.0.1", 40004, TCP_SYN),
        Verdict::DropNatPortsExhausted,
        "a closing flow may still send",
    );
    h.set_clock(T0 + TIMEOUTS.tcp_closing + 1);
    // Round robin: 40004's SYN was dropped twice without a slot; the cursor is at web1 again
    // only every other flow, so try until the freed web1 port is handed out.
    let mut taken = None;
    for port in 40004..40008 {
        let (action, out) = h.run(&packet("10.5.0.1", port, TCP_SYN));
        if action == XDP_TX && out[0..6] == WEB1_MAC {
            taken = Some(l4_ports(&out).0);
            break;
        }
    }
    assert_eq!(
        taken,
        Some(ports[0].1),
        "the closed connection's port, taken over"
    );
}

/// A NAT backend's FIN ends the client's flow too (NAT sees both directions).
#[test]
#[ignore = "needs root"]
fn a_nat_backends_fin_closes_the_flow() {
    let mut h = service(Mode::Nat, &LoadOptions::default());
    h.set_nat_ports(20000, 20999);
    let (_, out) = h.run(&packet("10.5.0.1", 40000, TCP_SYN));
    let (nat_port, _) = l4_ports(&out);
    assert_eq!(h.run(&packet("10.5.0.1", 40000, TCP_ACK)).0, XDP_TX);
    let fin = Frame::tcp((ip("10.0.0.11"), 80), (ip("10.0.0.3"), nat_port))
        .tcp_flags(TCP_FIN | TCP_ACK)
        .macs(WEB1_MAC, LB_MAC)
        .build();
    assert_eq!(
        h.run(&fin).0,
        XDP_TX,
        "the backend's FIN goes to the client"
    );
    h.set_clock(T0 + TIMEOUTS.tcp_closing + 1);
    dropped_as(
        &h,
        &packet("10.5.0.1", 40000, TCP_ACK),
        Verdict::DropNoFlow,
        "closed by the backend",
    );
}

// ---- ICMP errors about a flow (path-MTU discovery) ----

const ROUTER: &str = "10.0.0.254";
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xFE];
const CLIENT: &str = "10.5.0.1";
const VIP: &str = "10.0.0.100";
const SNAT: &str = "10.0.0.3";
const WEB1: &str = "10.0.0.11";

fn v4(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>()
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .octets()
}

/// What a router with a 1400-byte next hop sends to `to` about a TCP packet from `from` to
/// `towards` (built by etherparse, whole, so every checksum it quotes can be checked).
fn frag_needed(to: &str, from: (&str, u16), towards: (&str, u16)) -> Vec<u8> {
    let mut quoted = Vec::new();
    PacketBuilder::ipv4(v4(from.0), v4(towards.0), 63)
        .tcp(from.1, towards.1, 1000, 65535)
        .write(&mut quoted, &[])
        .unwrap_or_else(|e| panic!("quoted packet: {e}"));
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(ROUTER_MAC, LB_MAC)
        .ipv4(v4(ROUTER), v4(to), 64)
        .icmpv4(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ))
        .write(&mut frame, &quoted)
        .unwrap_or_else(|e| panic!("ICMP error: {e}"));
    frame
}

/// The outer IPv4 header, the quoted IPv4 header and TCP header of a forwarded ICMP error,
/// after checking every checksum in it with etherparse.
#[track_caller]
fn checked_error(out: &[u8]) -> (Ipv4Header, Ipv4Header, TcpHeader) {
    let headers = PacketHeaders::from_ethernet_slice(out).expect("the error parses");
    let Some(NetHeaders::Ipv4(outer, _)) = headers.net else {
        panic!("an IPv4 packet");
    };
    assert_eq!(
        outer.calc_header_checksum(),
        outer.header_checksum,
        "outer IPv4 checksum"
    );
    let Some(TransportHeader::Icmpv4(icmp)) = headers.transport else {
        panic!("an ICMP packet");
    };
    let body = headers.payload.slice();
    assert_eq!(
        icmp.icmp_type.calc_checksum(body),
        icmp.checksum,
        "ICMP checksum"
    );
    let (inner, rest) = Ipv4Header::from_slice(body).expect("a quoted IPv4 header");
    assert_eq!(
        inner.calc_header_checksum(),
        inner.header_checksum,
        "quoted IPv4 checksum"
    );
    let (tcp, _) = TcpHeader::from_slice(rest).expect("a quoted TCP header");
    assert_eq!(
        tcp.calc_checksum_ipv4(&inner, &[]).expect("a small packet"),
        tcp.checksum,
        "quoted TCP checksum"
    );
    (outer, inner, tcp)
}

/// DSR: the backend holds the VIP, so a router's error about its reply goes to it unchanged.
/// Errors about no live flow are not followed.
#[test]
#[ignore = "needs root"]
fn an_icmp_error_about_a_dsr_flow_reaches_its_backend() {
    let mut h = dsr();
    assert_eq!(backend(&h, 40000, TCP_SYN), WEB1_MAC);
    assert_eq!(backend(&h, 40000, TCP_ACK), WEB1_MAC);
    let error = frag_needed(VIP, (VIP, 80), (CLIENT, 40000));
    let (action, out) = h.run(&error);
    assert_eq!(action, XDP_TX, "forwarded");
    assert_eq!(out[0..6], WEB1_MAC, "to the flow's backend");
    assert_eq!(out[6..12], LB_MAC, "from the load balancer");
    assert_eq!(out[12..], error[12..], "unchanged past Ethernet");
    assert_eq!(h.verdict_count(Verdict::ForwardIcmp), 1);

    let not_followed = |h: &Harness, frame: &[u8], what: &str| {
        assert_eq!(h.run(frame).0, XDP_PASS, "{what}: left to the kernel");
    };
    not_followed(
        &h,
        &frag_needed(VIP, (VIP, 80), (CLIENT, 40001)),
        "no such flow",
    );
    not_followed(
        &h,
        &frag_needed(VIP, (WEB1, 80), (CLIENT, 40000)),
        "about a packet the VIP did not send",
    );
    assert_eq!(h.run(&packet(CLIENT, 40000, TCP_RST)).0, XDP_TX);
    h.set_clock(T0 + TIMEOUTS.tcp_closing + 1);
    not_followed(&h, &error, "a flow closed and gone");
    assert_eq!(h.verdict_count(Verdict::ForwardIcmp), 1);
}

/// NAT, an error about a reply on its way to the client: the backend must see it about what it
/// sent (its address and port, towards the SNAT address and the flow's NAT port).
#[test]
#[ignore = "needs root"]
fn an_icmp_error_about_a_nat_reply_is_translated_for_the_backend() {
    let mut h = service(Mode::Nat, &LoadOptions::default());
    h.set_nat_ports(20000, 20999);
    let (_, out) = h.run(&packet(CLIENT, 40000, TCP_SYN));
    let (nat_port, _) = l4_ports(&out);
    assert_eq!(h.run(&packet(CLIENT, 40000, TCP_ACK)).0, XDP_TX);

    let (action, out) = h.run(&frag_needed(VIP, (VIP, 80), (CLIENT, 40000)));
    assert_eq!(action, XDP_TX, "forwarded");
    assert_eq!(out[0..6], WEB1_MAC, "to the flow's backend");
    let (outer, inner, tcp) = checked_error(&out);
    assert_eq!(outer.source, v4(ROUTER), "still from the router");
    assert_eq!(outer.destination, v4(WEB1));
    assert_eq!((inner.source, tcp.source_port), (v4(WEB1), 80));
    assert_eq!(
        (inner.destination, tcp.destination_port),
        (v4(SNAT), nat_port)
    );
    assert_eq!(h.verdict_count(Verdict::ForwardIcmp), 1);
}

/// NAT, an error about a packet on its way to the backend: the client must see it about what it
/// sent (to the VIP).
#[test]
#[ignore = "needs root"]
fn an_icmp_error_about_a_nat_request_is_translated_for_the_client() {
    let mut h = service(Mode::Nat, &LoadOptions::default());
    h.set_nat_ports(20000, 20999);
    let (_, out) = h.run(&packet(CLIENT, 40000, TCP_SYN));
    let (nat_port, _) = l4_ports(&out);
    assert_eq!(h.run(&packet(CLIENT, 40000, TCP_ACK)).0, XDP_TX);

    let (action, out) = h.run(&frag_needed(SNAT, (SNAT, nat_port), (WEB1, 80)));
    assert_eq!(action, XDP_TX, "forwarded");
    assert_eq!(out[0..6], CLIENT_MAC, "to the client's next hop");
    let (outer, inner, tcp) = checked_error(&out);
    assert_eq!(outer.destination, v4(CLIENT));
    assert_eq!((inner.source, tcp.source_port), (v4(CLIENT), 40000));
    assert_eq!((inner.destination, tcp.destination_port), (v4(VIP), 80));

    // Once the flow is gone, its port's errors are no one's.
    assert_eq!(h.run(&packet(CLIENT, 40000, TCP_RST)).0, XDP_TX);
    h.set_clock(T0 + TIMEOUTS.tcp_closing + 1);
    assert_eq!(
        h.run(&frag_needed(SNAT, (SNAT, nat_port), (WEB1, 80))).0,
        XDP_PASS,
        "a closed flow's port"
    );
}

/// The NAT ports the agent reports per service: a tiny range filled, the next new flow dropped
/// and counted against its own service only; the ports in use counted from the tables as the
/// data path judges them (an opening flow holds its port, an ended one does not).
#[test]
#[ignore = "needs root"]
fn nat_ports_in_use_and_exhaustion_are_counted_per_service() {
    let mut h = service(Mode::Nat, &LoadOptions::default());
    let other = h.add_service(
        "other",
        (ip("10.0.0.100"), 81),
        Protocol::Tcp,
        Mode::Nat,
        Some(ip("10.0.0.3")),
        &two_web_backends(ip("10.0.0.21"), ip("10.0.0.22"), 80),
    );
    // Two ports towards each of two backends.
    h.set_nat_ports(20000, 20001);
    assert_eq!(h.services[0].nat_ports_available(20000, 20001), Some(4));
    let count = |h: &Harness| {
        h.dataplane
            .nat_tables()
            .and_then(|t| t.count(std::time::Instant::now() + std::time::Duration::from_secs(60)))
            .unwrap_or_else(|e| panic!("{e:#}"))
    };
    let empty = count(&h);
    assert!(empty.complete && empty.in_use.is_empty(), "{empty:?}");

    // Three connections, and a fourth that only sent its SYN: every port is held.
    for port in 40000..40004 {
        assert_eq!(h.run(&packet("10.5.0.1", port, TCP_SYN)).0, XDP_TX);
        if port < 40003 {
            assert_eq!(h.run(&packet("10.5.0.1", port, TCP_ACK)).0, XDP_TX);
        }
    }
    // One connection to the other service.
    let to_other = Frame::tcp((ip("10.5.0.1"), 50000), (ip("10.0.0.100"), 81))
        .tcp_flags(TCP_SYN)
        .macs(CLIENT_MAC, LB_MAC)
        .build();
    assert_eq!(h.run(&to_other).0, XDP_TX);
    for port in 40004..40006 {
        dropped_as(
            &h,
            &packet("10.5.0.1", port, TCP_SYN),
            Verdict::DropNatPortsExhausted,
            "every port in use",
        );
    }
    assert_eq!(h.service_counters(0).nat_ports_exhausted, 2);
    assert_eq!(h.service_counters(other).nat_ports_exhausted, 0);
    let counted = count(&h);
    assert!(counted.complete, "{counted:?}");
    assert_eq!(
        counted.in_use.get(&h.services[0].id),
        Some(&4),
        "{counted:?}"
    );
    assert_eq!(
        counted.in_use.get(&h.services[other].id),
        Some(&1),
        "{counted:?}"
    );

    // A connection closes: its port is held through its closing time...
    assert_eq!(
        h.run(&packet("10.5.0.1", 40000, TCP_FIN | TCP_ACK)).0,
        XDP_TX
    );
    h.set_clock(T0 + TIMEOUTS.tcp_closing);
    assert_eq!(count(&h).in_use.get(&h.services[0].id), Some(&4));
    // ...and given back after it, as is the port of the SYN that never completed.
    h.set_clock(T0 + TIMEOUTS.tcp_closing.max(TIMEOUTS.tcp_opening) + 1);
    let counted = count(&h);
    assert_eq!(
        counted.in_use.get(&h.services[0].id),
        Some(&2),
        "{counted:?}"
    );
    assert_eq!(
        counted.in_use.get(&h.services[other].id),
        None,
        "{counted:?}"
    );
    assert_eq!(
        counted.entries, 5,
        "the reverse entries stay until taken over"
    );
}

/// With several SNAT addresses a backend holds the port range once per address: one port and
/// three addresses give six connections over two backends, each (address, backend) pair once,
/// each reply found on its own address; the seventh finds nothing free.
#[test]
#[ignore = "needs root"]
fn each_snat_address_adds_the_port_range() {
    let mut h = service(Mode::Nat, &LoadOptions::default());
    let snat = [ip("10.0.0.3"), ip("10.0.0.4"), ip("10.0.0.5")];
    h.set_snat(0, &snat);
    h.set_nat_ports(20000, 20000);
    assert_eq!(h.services[0].nat_ports_available(20000, 20000), Some(6));
    let mut pairs = Vec::new();
    for port in 40000..40006 {
        let (action, out) = h.run(&packet(CLIENT, port, TCP_SYN));
        assert_eq!(action, XDP_TX, "connection {port}");
        let headers = PacketHeaders::from_ethernet_slice(&out).unwrap_or_else(|e| panic!("{e}"));
        let Some(NetHeaders::Ipv4(ipv4, _)) = headers.net else {
            panic!("connection {port}: not IPv4");
        };
        let source = IpAddr::from(ipv4.source);
        assert!(snat.contains(&source), "connection {port} from {source}");
        let mac: [u8; 6] = out[0..6].try_into().unwrap_or_default();
        assert!(
            !pairs.contains(&(source, mac)),
            "{source} used twice towards {mac:02x?}"
        );
        pairs.push((source, mac));
        assert_eq!(l4_ports(&out).0, 20000);
        assert_eq!(h.run(&packet(CLIENT, port, TCP_ACK)).0, XDP_TX);
        // The backend's reply to that address and port reaches this client.
        let backend_ip = if mac == WEB1_MAC {
            "10.0.0.11"
        } else {
            "10.0.0.12"
        };
        let reply = Frame::tcp((ip(backend_ip), 80), (source, 20000))
            .tcp_flags(TCP_ACK)
            .macs(mac, LB_MAC)
            .build();
        let (action, out) = h.run(&reply);
        assert_eq!(action, XDP_TX, "reply to {source}");
        assert_eq!(
            l4_ports(&out),
            (80, port),
            "reply to {source} goes to its client port"
        );
    }
    dropped_as(
        &h,
        &packet(CLIENT, 40006, TCP_SYN),
        Verdict::DropNatPortsExhausted,
        "every address and port in use",
    );
    // Back to one address: the range again holds one connection per backend, and those of the
    // removed addresses keep theirs until they end.
    h.set_snat(0, &snat[..1]);
    assert_eq!(h.services[0].nat_ports_available(20000, 20000), Some(2));
    dropped_as(
        &h,
        &packet(CLIENT, 40007, TCP_SYN),
        Verdict::DropNatPortsExhausted,
        "the one address's ports are in use",
    );
    assert_eq!(
        h.run(&packet(CLIENT, 40005, TCP_ACK)).0,
        XDP_TX,
        "a live flow keeps going"
    );
}

fn v6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>()
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .octets()
}

/// IPv6, NAT: a router's "packet too big" about a reply reaches the backend translated, with
/// the ICMPv6 checksum (which covers the outer addresses) and the quoted TCP checksum right.
#[test]
#[ignore = "needs root"]
fn a_packet_too_big_about_a_nat_reply_is_translated_for_the_backend() {
    let (client, vip, snat, web1) = ("fd05::1", "fd00::100", "fd00::3", "fd00::11");
    let mut h = Harness::with_options(&LoadOptions::default());
    h.add_service(
        "web6",
        (ip(vip), 80),
        Protocol::Tcp,
        Mode::Nat,
        Some(ip(snat)),
        &two_web_backends(ip(web1), ip("fd00::12"), 80),
    );
    h.set_clock(T0);
    h.set_nat_ports(20000, 20999);
    let open = |flags| {
        Frame::tcp((ip(client), 40000), (ip(vip), 80))
            .tcp_flags(flags)
            .macs(CLIENT_MAC, LB_MAC)
            .build()
    };
    let (_, out) = h.run(&open(TCP_SYN));
    let (nat_port, _) = l4_ports(&out);
    assert_eq!(h.run(&open(TCP_ACK)).0, XDP_TX);

    let mut quoted = Vec::new();
    PacketBuilder::ipv6(v6(vip), v6(client), 63)
        .tcp(80, 40000, 1000, 65535)
        .write(&mut quoted, &[])
        .unwrap_or_else(|e| panic!("quoted packet: {e}"));
    let mut error = Vec::new();
    PacketBuilder::ethernet2(ROUTER_MAC, LB_MAC)
        .ipv6(v6("fd00::fe"), v6(vip), 64)
        .icmpv6(Icmpv6Type::PacketTooBig { mtu: 1280 })
        .write(&mut error, &quoted)
        .unwrap_or_else(|e| panic!("ICMPv6 error: {e}"));
    let (action, out) = h.run(&error);
    assert_eq!(action, XDP_TX, "forwarded");
    assert_eq!(out[0..6], WEB1_MAC, "to the flow's backend");

    let headers = PacketHeaders::from_ethernet_slice(&out).expect("the error parses");
    let Some(NetHeaders::Ipv6(outer, _)) = headers.net else {
        panic!("an IPv6 packet");
    };
    assert_eq!(outer.destination, v6(web1));
    let Some(TransportHeader::Icmpv6(icmp)) = headers.transport else {
        panic!("an ICMPv6 packet");
    };
    let body = headers.payload.slice();
    assert_eq!(
        icmp.icmp_type
            .calc_checksum(outer.source, outer.destination, body)
            .expect("a small packet"),
        icmp.checksum,
        "ICMPv6 checksum"
    );
    let (inner, rest) = Ipv6Header::from_slice(body).expect("a quoted IPv6 header");
    let (tcp, _) = TcpHeader::from_slice(rest).expect("a quoted TCP header");
    assert_eq!((inner.source, tcp.source_port), (v6(web1), 80));
    assert_eq!(
        (inner.destination, tcp.destination_port),
        (v6(snat), nat_port)
    );
    assert_eq!(
        tcp.calc_checksum_ipv6(&inner, &[]).expect("a small packet"),
        tcp.checksum,
        "quoted TCP checksum"
    );
}
