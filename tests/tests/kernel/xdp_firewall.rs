//! The firewall of the real XDP program in the real kernel (BPF_PROG_TEST_RUN), programmed from
//! agent configs exactly as `lb run` programs it.
use std::{net::IpAddr, thread::sleep, time::Duration};

use lb_common::maps::Verdict;
use lb_tests::{
    harness::{ConfigHarness, XDP_DROP, XDP_PASS, XDP_TX},
    packet::{Frame, TCP_ACK, TCP_SYN},
};

const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// Services on 10.0.0.100:80 (web) and [fd00::100]:80 (web6), backends .11/.12 and ::11/::12,
/// plus whatever `extra` adds (more [[service]] keys go after `extra_service_keys`).
fn config(firewall: &str, extra_service_keys: &str) -> String {
    format!(
        r#"
{firewall}

[[service]]
name = "web"
vip = "10.0.0.100"
port = 80
mode = "dsr"
{extra_service_keys}

[[service.backend]]
name = "web1"
address = "10.0.0.11"

[[service.backend]]
name = "web2"
address = "10.0.0.12"

[[service]]
name = "web6"
vip = "fd00::100"
port = 80
mode = "dsr"

[[service.backend]]
name = "web1"
address = "fd00::11"
"#
    )
}

fn harness(firewall: &str, extra_service_keys: &str) -> ConfigHarness {
    let macs = [
        (ip("10.0.0.11"), [2, 0, 0, 0, 0, 0x11]),
        (ip("10.0.0.12"), [2, 0, 0, 0, 0, 0x12]),
        (ip("fd00::11"), [2, 0, 0, 0, 0, 0x11]),
    ];
    ConfigHarness::new(
        &config(firewall, extra_service_keys),
        &macs,
        &[ip("10.0.0.2"), ip("fd00::2")],
    )
}

fn syn(src: &str, sport: u16, dst: &str, dport: u16) -> Vec<u8> {
    Frame::tcp((ip(src), sport), (ip(dst), dport))
        .macs(CLIENT_MAC, LB_MAC)
        .build()
}

#[track_caller]
fn assert_action(h: &ConfigHarness, frame: &[u8], action: u32, what: &str) {
    let (got, _) = h.run(frame);
    assert_eq!(got, action, "{what}: expected action {action}, got {got}");
}

const DENY_RULES: &str = r#"
[firewall.host]
policy = "open"

[[firewall.rule]]
name = "bad-net"
sources = ["192.0.2.0/24", "2001:db8:bad::/48"]
action = "drop"

[[firewall.rule]]
name = "partner"
sources = ["192.0.2.7/32", "2001:db8:bad:1::/64"]
action = "allow"

[[firewall.rule]]
name = "trial"
sources = ["198.51.100.0/24"]
action = "log"
"#;

#[test]
#[ignore = "needs root"]
fn cidr_rules_drop_allow_and_log_with_longest_prefix_precedence() {
    let h = harness(DENY_RULES, "");
    // Denied /24 and /48: dropped to the service and to anything else.
    assert_action(
        &h,
        &syn("192.0.2.1", 1000, "10.0.0.100", 80),
        XDP_DROP,
        "denied v4 source to the VIP",
    );
    assert_action(
        &h,
        &syn("192.0.2.200", 1000, "10.0.0.55", 22),
        XDP_DROP,
        "denied v4 source elsewhere",
    );
    assert_action(
        &h,
        &syn("2001:db8:bad:ffff::1", 1000, "fd00::100", 80),
        XDP_DROP,
        "denied v6 source",
    );
    // The /32 and /64 allowed inside them win.
    assert_action(
        &h,
        &syn("192.0.2.7", 1000, "10.0.0.100", 80),
        XDP_TX,
        "allowed /32 inside the denied /24",
    );
    assert_action(
        &h,
        &syn("2001:db8:bad:1::9", 1000, "fd00::100", 80),
        XDP_TX,
        "allowed /64 inside the denied /48",
    );
    // A log rule counts but does not drop.
    assert_action(
        &h,
        &syn("198.51.100.3", 1000, "10.0.0.100", 80),
        XDP_TX,
        "logged source",
    );
    // Unlisted sources are untouched.
    assert_action(
        &h,
        &syn("203.0.113.9", 1000, "10.0.0.100", 80),
        XDP_TX,
        "unlisted source",
    );

    assert_eq!(h.rule("bad-net").packets, 3);
    assert_eq!(h.rule("partner").packets, 2);
    assert_eq!(h.rule("trial").packets, 1);
    assert!(h.rule("bad-net").bytes > 3 * 60);
    assert_eq!(h.verdict_count(Verdict::DropDenied), 3);
}

#[test]
#[ignore = "needs root"]
fn service_source_rules_admit_only_their_sources() {
    let h = harness(
        "[firewall.host]\npolicy = \"open\"",
        r#"allow_sources = ["10.0.1.0/24"]
deny_sources = ["10.0.1.66/32"]"#,
    );
    assert_action(
        &h,
        &syn("10.0.1.5", 1000, "10.0.0.100", 80),
        XDP_TX,
        "app subnet",
    );
    assert_action(
        &h,
        &syn("10.0.9.5", 1000, "10.0.0.100", 80),
        XDP_DROP,
        "outside the allowed subnet",
    );
    assert_action(
        &h,
        &syn("10.0.1.66", 1000, "10.0.0.100", 80),
        XDP_DROP,
        "denied inside the allowed subnet",
    );
    // Another service without rules admits everyone.
    assert_action(
        &h,
        &syn("2001:db8::5", 1000, "fd00::100", 80),
        XDP_TX,
        "service without source rules",
    );
    assert_eq!(h.verdict_count(Verdict::DropServiceSource), 2);
    assert_eq!(h.rule("web/others").packets, 1);
    assert_eq!(h.rule("web/deny_sources").packets, 1);
    assert_eq!(h.rule("web/allow_sources").packets, 1);
}

/// Every rule change re-checks an established flow against its service's source rules, on its
/// next packet, however many changes came in between (two changes bring back the same half of
/// the rule tables), and whether the flow's packets came from the flow table or a CPU's copy.
#[test]
#[ignore = "needs root"]
fn an_established_flow_is_re_checked_after_any_number_of_rule_changes() {
    lb_tests::stay_on_this_cpu();
    let open = "[firewall.host]\npolicy = \"open\"";
    let allow = r#"allow_sources = ["10.0.1.0/24"]"#;
    let deny_it = r#"allow_sources = ["10.0.1.0/24"]
deny_sources = ["10.0.1.5/32"]"#;
    let deny_it_and_more = r#"allow_sources = ["10.0.1.0/24"]
deny_sources = ["10.0.1.5/32", "10.0.1.6/32"]"#;
    let mut h = harness(open, allow);
    let flow = syn("10.0.1.5", 1000, "10.0.0.100", 80);
    for i in 0..3 {
        assert_action(&h, &flow, XDP_TX, &format!("packet {i}: admitted"));
    }
    for changes in [1, 2, 3] {
        // `changes` rule changes in a row that all deny the flow's source, then one that admits
        // it again; no packet of the flow in between.
        for change in 0..changes {
            let extra = if change % 2 == 0 {
                deny_it
            } else {
                deny_it_and_more
            };
            apply_rules(&mut h, open, extra);
        }
        assert_action(
            &h,
            &flow,
            XDP_DROP,
            &format!("after {changes} change(s) denying its source"),
        );
        apply_rules(&mut h, open, allow);
        assert_action(
            &h,
            &flow,
            XDP_TX,
            &format!("admitted again after {changes}"),
        );
        assert_action(&h, &flow, XDP_TX, "and its next packet");
    }
    assert_eq!(h.verdict_count(Verdict::DropServiceSource), 3);
}

/// Programs the firewall of `config(firewall, extra_service_keys)` as `lb run` does on reload.
fn apply_rules(h: &mut ConfigHarness, firewall: &str, extra_service_keys: &str) {
    let text = config(firewall, extra_service_keys);
    let parsed = lb_userspace::config::parse(std::path::Path::new("t.toml"), &text)
        .unwrap_or_else(|e| panic!("{e}"));
    let rules = lb_userspace::firewall::RuleSet::from_config(&parsed, &h.table, (32768, 60999));
    let vips = [ip("10.0.0.100"), ip("fd00::100")];
    lb_userspace::firewall::apply(&mut h.harness.dataplane, &rules, &[ip("10.0.0.2")], &vips)
        .unwrap_or_else(|e| panic!("{e:#}"));
}

const HOST_POLICY: &str = r#"
[firewall.host]
policy = "restrict"
icmp_echo_rate = 100
icmp_echo_burst = 3

[[firewall.host.open_ports]]
port = 22
sources = ["10.9.0.0/16", "fd09::/32"]

[[firewall.host.open_ports]]
port = 9876
"#;

/// `frame` with VLAN tags (TPIDs, outermost first) inserted after its MAC addresses.
fn tagged(frame: &[u8], tpids: &[u16]) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    for (i, tpid) in tpids.iter().enumerate() {
        out.extend(tpid.to_be_bytes());
        out.extend((100 + i as u16).to_be_bytes());
    }
    out.extend(&frame[12..]);
    out
}

/// `frame` (untagged IPv4) with the flags / fragment-offset field set.
fn with_frags(mut frame: Vec<u8>, frags: u16) -> Vec<u8> {
    frame[20..22].copy_from_slice(&frags.to_be_bytes());
    frame
}

/// Ways around the host policy that once passed unfiltered: fragments, QinQ, frames sent to a
/// group MAC address.
#[test]
#[ignore = "needs root"]
fn fragments_qinq_and_group_frames_meet_the_host_policy() {
    let h = harness(HOST_POLICY, "");
    let closed = syn("10.8.1.1", 1000, "10.0.0.2", 23);
    let before = h.verdict_count(Verdict::DropHostPolicy);
    // Fragments: the first carries the ports and is judged on them; the rest pass (the kernel
    // cannot reassemble them without the first).
    assert_action(
        &h,
        &with_frags(closed.clone(), 0x2000),
        XDP_DROP,
        "first fragment, closed port",
    );
    assert_action(
        &h,
        &with_frags(syn("10.9.1.1", 1000, "10.0.0.2", 22), 0x2000),
        XDP_PASS,
        "first fragment, open port",
    );
    assert_action(
        &h,
        &with_frags(closed.clone(), 0x00B9),
        XDP_PASS,
        "later fragment",
    );
    // QinQ: the same policy behind two tags; a third tag is malformed.
    assert_action(
        &h,
        &tagged(&closed, &[0x88A8, 0x8100]),
        XDP_DROP,
        "QinQ, closed port",
    );
    assert_action(
        &h,
        &tagged(&syn("10.9.1.1", 1000, "10.0.0.2", 22), &[0x88A8, 0x8100]),
        XDP_PASS,
        "QinQ, open port",
    );
    let malformed = h.verdict_count(Verdict::DropMalformed);
    assert_action(
        &h,
        &tagged(&closed, &[0x88A8, 0x8100, 0x8100]),
        XDP_DROP,
        "three tags",
    );
    assert_eq!(h.verdict_count(Verdict::DropMalformed), malformed + 1);
    assert_eq!(h.verdict_count(Verdict::DropHostPolicy), before + 2);
    // A VIP's packet behind two tags is still balanced.
    let to_vip = syn("10.5.0.1", 2000, "10.0.0.100", 80);
    assert_action(
        &h,
        &tagged(&to_vip, &[0x88A8, 0x8100]),
        XDP_TX,
        "QinQ to a VIP",
    );
    // Sent to the broadcast or a multicast MAC: never balanced (every load balancer on the
    // segment would forward it), judged as traffic to the host.
    for group in [[0xFF; 6], [0x01, 0x00, 0x5E, 0, 0, 1]] {
        let mut frame = syn("10.5.0.1", 2001, "10.0.0.100", 80);
        frame[0..6].copy_from_slice(&group);
        assert_action(&h, &frame, XDP_DROP, "a VIP's SYN to a group MAC");
    }
    assert_eq!(h.verdict_count(Verdict::DropHostPolicy), before + 4);
}

/// A unicast frame sent to another host's MAC is never balanced: a switch flooding an unknown
/// destination, or a second load balancer's forwarded traffic, would otherwise be forwarded
/// again, from the destination's own MAC (which teaches a switch that the backend sits behind
/// the load balancer). Seen in the lab: a flood generator's recycled frames did just that.
#[test]
#[ignore = "needs root"]
fn frames_to_another_hosts_mac_are_never_balanced() {
    let to = |mac: [u8; 6], frame: &[u8]| {
        let mut frame = frame.to_vec();
        frame[0..6].copy_from_slice(&mac);
        frame
    };
    let other = [0x02, 0, 0, 0, 0, 0x11];
    let open = syn("10.5.0.1", 3000, "10.0.0.100", 80);
    let ack = Frame::tcp((ip("10.5.0.1"), 3000), (ip("10.0.0.100"), 80))
        .macs(CLIENT_MAC, LB_MAC)
        .tcp_flags(TCP_ACK)
        .build();

    // Until the agent has told the program its MAC, there is no check.
    let mut h = harness(HOST_POLICY, "");
    assert_action(
        &h,
        &to(other, &open),
        XDP_TX,
        "unchecked: a SYN to another MAC",
    );

    h.set_own_mac(LB_MAC);
    let passed = h.verdict_count(Verdict::PassOtherHost);
    assert_action(
        &h,
        &to(other, &syn("10.5.0.2", 3000, "10.0.0.100", 80)),
        XDP_PASS,
        "a SYN to another MAC",
    );
    assert_eq!(h.verdict_count(Verdict::PassOtherHost), passed + 1);
    // It opened nothing: the ACK that would complete its handshake has no flow.
    let no_flow = h.verdict_count(Verdict::DropNoFlow);
    let stray_ack = Frame::tcp((ip("10.5.0.2"), 3000), (ip("10.0.0.100"), 80))
        .macs(CLIENT_MAC, LB_MAC)
        .tcp_flags(TCP_ACK)
        .build();
    assert_action(&h, &stray_ack, XDP_DROP, "the ACK after it, to our MAC");
    assert_eq!(h.verdict_count(Verdict::DropNoFlow), no_flow + 1);

    // An established connection: its packets to our MAC are forwarded, a copy sent to the
    // backend's MAC is not (not even by the flow cache's short cut).
    assert_action(&h, &ack, XDP_TX, "the established connection, to our MAC");
    assert_action(&h, &ack, XDP_TX, "again (the flow cache)");
    assert_action(
        &h,
        &to(other, &ack),
        XDP_PASS,
        "the same packet to the backend's MAC",
    );
    assert_action(
        &h,
        &to(other, &to_v6_syn()),
        XDP_PASS,
        "IPv6 (the generic road)",
    );
    assert_eq!(h.verdict_count(Verdict::PassOtherHost), passed + 3);
    // Group frames are not another host's: they still meet the host policy.
    let policy = h.verdict_count(Verdict::DropHostPolicy);
    assert_action(
        &h,
        &to([0xFF; 6], &open),
        XDP_DROP,
        "a VIP's SYN to the broadcast MAC",
    );
    assert_eq!(h.verdict_count(Verdict::DropHostPolicy), policy + 1);
}

fn to_v6_syn() -> Vec<u8> {
    syn("fd00::5:1", 3000, "fd00::100", 80)
}

#[test]
#[ignore = "needs root"]
fn the_host_only_takes_open_ports_replies_and_limited_echo() {
    let h = harness(HOST_POLICY, "");
    assert_action(
        &h,
        &syn("10.9.1.1", 1000, "10.0.0.2", 22),
        XDP_PASS,
        "SSH from the admin prefix",
    );
    assert_action(
        &h,
        &syn("fd09::1", 1000, "fd00::2", 22),
        XDP_PASS,
        "SSH from the admin prefix (v6)",
    );
    assert_action(
        &h,
        &syn("10.8.1.1", 1000, "10.0.0.2", 22),
        XDP_DROP,
        "SSH from elsewhere",
    );
    assert_action(
        &h,
        &syn("10.8.1.1", 1000, "10.0.0.2", 9876),
        XDP_PASS,
        "a port open to all",
    );
    assert_action(
        &h,
        &syn("10.8.1.1", 1000, "10.0.0.2", 23),
        XDP_DROP,
        "a closed port",
    );
    assert_action(
        &h,
        &syn("10.8.1.1", 1000, "10.0.0.100", 443),
        XDP_DROP,
        "a VIP port that is no service",
    );
    // Replies to the host's own connections (ephemeral port, ACK set) pass; a bare SYN does not.
    let reply = Frame::tcp((ip("10.0.0.11"), 80), (ip("10.0.0.2"), 40000))
        .tcp_flags(TCP_SYN | TCP_ACK)
        .build();
    assert_action(&h, &reply, XDP_PASS, "SYN-ACK to an ephemeral port");
    assert_action(
        &h,
        &syn("10.8.1.1", 1000, "10.0.0.2", 40000),
        XDP_DROP,
        "bare SYN to an ephemeral port",
    );
    // Echo: the burst of 3 passes, the 4th is over the rate; other ICMP types pass.
    let echo = Frame::icmp(ip("10.8.1.1"), ip("10.0.0.2"), 8).build();
    for i in 0..3 {
        assert_action(&h, &echo, XDP_PASS, &format!("echo {i}"));
    }
    assert_action(&h, &echo, XDP_DROP, "echo over the rate");
    assert_action(
        &h,
        &Frame::icmp(ip("10.8.1.1"), ip("10.0.0.2"), 3).build(),
        XDP_PASS,
        "ICMP unreachable",
    );
    let echo6 = Frame::icmp(ip("fd08::1"), ip("fd00::2"), 128).build();
    assert_action(
        &h,
        &echo6,
        XDP_PASS,
        "ICMPv6 echo from another source has its own bucket",
    );
    // Traffic to other hosts is not the host policy's business.
    assert_action(
        &h,
        &syn("10.8.1.1", 1000, "10.0.0.77", 23),
        XDP_PASS,
        "to another address",
    );
    assert_eq!(h.verdict_count(Verdict::DropHostPolicy), 4);
    assert_eq!(h.rule("host/tcp/22/others").packets, 1);
    assert_eq!(h.verdict_count(Verdict::DropRateLimited), 1);
    // After 10 ms at 100/s one more echo conforms.
    sleep(Duration::from_millis(15));
    assert_action(&h, &echo, XDP_PASS, "echo after the bucket refilled");
}

#[test]
#[ignore = "needs root"]
fn the_syn_rate_limits_each_source_and_refills() {
    let h = harness(
        "[firewall.host]\npolicy = \"open\"",
        "syn_rate = 20\nsyn_burst = 3",
    );
    for port in 0..3 {
        assert_action(
            &h,
            &syn("10.5.0.1", 2000 + port, "10.0.0.100", 80),
            XDP_TX,
            "within the burst",
        );
    }
    assert_action(
        &h,
        &syn("10.5.0.1", 2100, "10.0.0.100", 80),
        XDP_DROP,
        "over the rate",
    );
    // Packets of an admitted connection are not new connections.
    let ack = Frame::tcp((ip("10.5.0.1"), 2000), (ip("10.0.0.100"), 80))
        .tcp_flags(TCP_ACK)
        .macs(CLIENT_MAC, LB_MAC)
        .build();
    assert_action(&h, &ack, XDP_TX, "an ACK of an admitted connection");
    // Other sources have their own bucket.
    assert_action(
        &h,
        &syn("10.5.0.2", 2000, "10.0.0.100", 80),
        XDP_TX,
        "another source",
    );
    assert_eq!(h.verdict_count(Verdict::DropRateLimited), 1);
    sleep(Duration::from_millis(60)); // 20/s: one token per 50 ms
    assert_action(
        &h,
        &syn("10.5.0.1", 2200, "10.0.0.100", 80),
        XDP_TX,
        "after the refill",
    );
    assert_action(
        &h,
        &syn("10.5.0.1", 2201, "10.0.0.100", 80),
        XDP_DROP,
        "only one token came back",
    );
}

#[test]
#[ignore = "needs root"]
fn the_packet_rate_and_the_syn_budget() {
    let h = harness(
        "[firewall.host]\npolicy = \"open\"",
        "packet_rate = 10\npacket_burst = 4",
    );
    let ack = Frame::tcp((ip("10.5.0.1"), 2000), (ip("10.0.0.100"), 80))
        .tcp_flags(TCP_ACK)
        .macs(CLIENT_MAC, LB_MAC)
        .build();
    // The SYN opens the connection and is its first packet.
    assert_action(
        &h,
        &syn("10.5.0.1", 2000, "10.0.0.100", 80),
        XDP_TX,
        "the SYN, within the packet burst",
    );
    for _ in 0..3 {
        assert_action(&h, &ack, XDP_TX, "within the packet burst");
    }
    assert_action(&h, &ack, XDP_DROP, "over the packet rate");

    let h = harness(
        "[firewall.host]\npolicy = \"open\"",
        "syn_budget = 10\nsyn_budget_burst = 5",
    );
    for i in 0..5 {
        assert_action(
            &h,
            &syn(&format!("10.6.0.{}", i + 1), 3000, "10.0.0.100", 80),
            XDP_TX,
            "within the budget",
        );
    }
    assert_action(
        &h,
        &syn("10.6.0.99", 3000, "10.0.0.100", 80),
        XDP_DROP,
        "a sixth source over the budget",
    );
    assert_eq!(h.verdict_count(Verdict::DropSynBudget), 1);
}

#[test]
#[ignore = "needs root"]
fn malformed_and_abusive_packets_are_dropped_with_a_reason() {
    let h = harness(
        r#"[firewall]
bogons = ["0.0.0.0/8", "240.0.0.0/4"]
[firewall.host]
policy = "open""#,
        "",
    );
    let tcp = |flags: u8| {
        Frame::tcp((ip("10.5.0.1"), 2000), (ip("10.0.0.100"), 80))
            .tcp_flags(flags)
            .macs(CLIENT_MAC, LB_MAC)
            .build()
    };
    for (flags, what) in [
        (0x03, "SYN+FIN"),
        (0x06, "SYN+RST"),
        (0x00, "no flags"),
        (0x29, "FIN+PSH+URG"),
    ] {
        assert_action(&h, &tcp(flags), XDP_DROP, what);
    }
    assert_eq!(h.verdict_count(Verdict::DropTcpFlags), 4);

    assert_action(
        &h,
        &syn("10.0.0.100", 80, "10.0.0.100", 80),
        XDP_DROP,
        "source equals destination",
    );
    assert_action(
        &h,
        &syn("240.1.2.3", 1000, "10.0.0.100", 80),
        XDP_DROP,
        "bogon source",
    );
    assert_eq!(h.verdict_count(Verdict::DropSpoofed), 2);
    assert_eq!(h.rule("bogons").packets, 1);

    // Fragments: to a VIP dropped by policy; to another address left to the kernel.
    let mut fragment = syn("10.5.0.1", 2000, "10.0.0.100", 80);
    fragment[20..22].copy_from_slice(&0x2000u16.to_be_bytes());
    assert_action(&h, &fragment, XDP_DROP, "fragment to a VIP");
    let mut elsewhere = syn("10.5.0.1", 2000, "10.0.0.77", 80);
    elsewhere[20..22].copy_from_slice(&0x00B9u16.to_be_bytes()); // a later fragment: offset only
    assert_action(&h, &elsewhere, XDP_PASS, "fragment elsewhere");
    assert_eq!(h.verdict_count(Verdict::DropFragment), 1);
}

#[test]
#[ignore = "needs root"]
fn a_new_rule_set_replaces_the_old_one_whole() {
    let mut h = harness(DENY_RULES, "");
    let denied = syn("192.0.2.1", 1000, "10.0.0.100", 80);
    let other = syn("203.0.113.9", 1000, "10.0.0.100", 80);
    assert_action(&h, &denied, XDP_DROP, "denied before");
    // Swap between two rule sets many times; every state seen is one of the two, whole.
    let other_rules = DENY_RULES.replace("192.0.2.0/24", "203.0.113.0/24");
    for round in 0..20 {
        let rules = if round % 2 == 0 {
            &other_rules
        } else {
            DENY_RULES
        };
        apply_rules(&mut h, rules, "");
        let (first, second) = if round % 2 == 0 {
            (XDP_TX, XDP_DROP)
        } else {
            (XDP_DROP, XDP_TX)
        };
        assert_action(&h, &denied, first, &format!("round {round}: 192.0.2.1"));
        assert_action(&h, &other, second, &format!("round {round}: 203.0.113.9"));
    }
}

/// A rule never inherits another rule's counters: after a change that replaces the first rule
/// by a new one (same id), the new rule starts from zero; a rule that kept its id keeps its
/// count.
#[test]
#[ignore = "needs root"]
fn a_rule_never_inherits_another_rules_counters() {
    let mut h = harness(DENY_RULES, "");
    let from_bad = syn("192.0.2.1", 1000, "10.0.0.100", 80);
    let from_trial = syn("198.51.100.1", 1000, "10.0.0.100", 80);
    let from_new = syn("203.0.113.9", 1000, "10.0.0.100", 80);
    assert_action(&h, &from_bad, XDP_DROP, "bad-net");
    assert_action(&h, &from_trial, XDP_TX, "trial (log)");
    assert_eq!(h.rule("trial").packets, 1);

    // "bad-net" goes, "new-net" takes its place (and its id).
    let changed = DENY_RULES.replace(
        "name = \"bad-net\"\nsources = [\"192.0.2.0/24\", \"2001:db8:bad::/48\"]",
        "name = \"new-net\"\nsources = [\"203.0.113.0/24\"]",
    );
    assert_ne!(changed, DENY_RULES, "the test's edit applies");
    let parsed = lb_userspace::config::parse(std::path::Path::new("t.toml"), &config(&changed, ""))
        .unwrap_or_else(|e| panic!("{e}"));
    let next = lb_userspace::firewall::RuleSet::from_config(&parsed, &h.table, (32768, 60999));
    let vips = [ip("10.0.0.100"), ip("fd00::100")];
    lb_userspace::firewall::replace(
        &mut h.harness.dataplane,
        &h.rules,
        &next,
        &[ip("10.0.0.2")],
        &vips,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    h.rules = next;

    assert_eq!(h.rule("trial").packets, 1, "trial kept its count");
    assert_eq!(h.rule("new-net").packets, 0, "new-net starts from zero");
    assert_action(&h, &from_new, XDP_DROP, "new-net");
    assert_action(&h, &from_trial, XDP_TX, "trial (log), after");
    assert_action(&h, &from_bad, XDP_TX, "bad-net is gone");
    assert_eq!(h.rule("new-net").packets, 1);
    assert_eq!(h.rule("trial").packets, 2);
}

/// Found by the packet fuzzer (shrunk). Source rules of a scope (a service, an open host port)
/// share one LPM trie keyed by (generation, scope, 16 address bytes) with no family, and an IPv4
/// prefix is stored in the first 4 bytes: so an IPv6 source whose first bytes spell an allowed
/// IPv4 prefix is admitted. Here a09:: (bytes 0a 09 ...) reaches SSH on the host, open only to
/// 10.9.0.0/16 and fd09::/32. (The reverse, an IPv4 source matching an IPv6 prefix's first 32
/// bits, is the same flaw; bogons hide it for fd09::/32.)
#[test]
#[ignore = "needs root"]
fn an_ipv6_source_never_matches_an_ipv4_source_prefix() {
    let h = harness(HOST_POLICY, "");
    // TCP FIN+ACK from a09:: to [fd00::100]:22 (a VIP is one of the host's addresses).
    let frame: [u8; 74] = [
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x86, 0xdd, 0x60,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x06, 0x00, 0x0a, 0x09, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x16, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x11, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    assert_action(
        &h,
        &frame,
        XDP_DROP,
        "IPv6 source a09:: to a port open to 10.9.0.0/16 and fd09::/32",
    );
    assert_eq!(h.verdict_count(Verdict::DropHostPolicy), 1);
    // The same with a whole SYN from a09:101:: to the host's own address.
    assert_action(
        &h,
        &syn("a09:101::1", 1000, "fd00::2", 22),
        XDP_DROP,
        "a09:101::1 to SSH",
    );
}

/// The program's walk of the IPv4 rule table agrees with a plain longest-prefix match over the
/// config's prefixes, at every depth of the table: prefixes of every length from /8 to /32,
/// nested in two small regions so that they cover each other, with drop, allow and log rules.
/// Probed at the first and last address of every prefix, just outside each, and in between.
#[test]
#[ignore = "needs root"]
fn the_ipv4_rule_table_is_a_longest_prefix_match_at_every_depth() {
    let mut state = 0x1234_5678_9abc_def1u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let actions = ["drop", "allow", "log"];
    // (first address, length, index of its rule): rule r has action actions[r % 3].
    let mut prefixes: Vec<(u32, u8, usize)> = Vec::new();
    let mut rules = String::from("[firewall.host]\npolicy = \"open\"\n");
    for r in 0..12 {
        let mut sources = Vec::new();
        for _ in 0..40 {
            let len = 8 + (next() % 25) as u8;
            let base = if next() % 2 == 0 {
                0xCB00_0000u32
            } else {
                0xC612_0000
            };
            let addr = (base | (next() as u32 & 0x0003_FFFF)) & (u32::MAX << (32 - u32::from(len)));
            // The config refuses a prefix in two rules.
            if prefixes.iter().any(|&(a, l, _)| (a, l) == (addr, len)) {
                continue;
            }
            sources.push(format!("\"{}/{len}\"", std::net::Ipv4Addr::from(addr)));
            prefixes.push((addr, len, r));
        }
        rules.push_str(&format!(
            "\n[[firewall.rule]]\nname = \"r{r}\"\nsources = [{}]\naction = \"{}\"\n",
            sources.join(", "),
            actions[r % 3]
        ));
    }
    let h = harness(&rules, "");
    // The longest prefix decides; a log rule lets the packet on as if nothing matched.
    let expected = |addr: u32| -> u32 {
        let mut best: Option<(u8, usize)> = None;
        for &(first, len, rule) in &prefixes {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            if addr & mask == first && best.is_none_or(|(l, _)| len > l) {
                best = Some((len, rule));
            }
        }
        match best {
            Some((_, rule)) if actions[rule % 3] == "drop" => XDP_DROP,
            _ => XDP_TX,
        }
    };
    let mut probes = Vec::new();
    for &(first, len, _) in &prefixes {
        let last = first | !u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        probes.extend([
            first,
            last,
            first.wrapping_sub(1),
            last.wrapping_add(1),
            first + (last - first) / 2,
        ]);
    }
    let mut dropped = 0;
    for (i, addr) in probes.into_iter().enumerate() {
        let src = std::net::Ipv4Addr::from(addr).to_string();
        let want = expected(addr);
        dropped += usize::from(want == XDP_DROP);
        assert_action(
            &h,
            &syn(&src, 1024 + (i % 60000) as u16, "10.0.0.100", 80),
            want,
            &format!("source {src}"),
        );
    }
    assert!(
        dropped > 100,
        "the probes hit drop rules ({dropped}), not only passes"
    );
}
