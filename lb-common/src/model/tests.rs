//! The model on its own: hand-built frames, table-driven.
extern crate std;
use std::vec::Vec;

use super::NatReply as Reply;
use super::*;
use crate::maps::Verdict::{self, *};

const VIP: Addr = Addr::v4([10, 0, 0, 100]);
const NAT_VIP: Addr = Addr::v4([10, 0, 0, 101]);
const HOST: Addr = Addr::v4([10, 0, 0, 2]);
const CLIENT: Addr = Addr::v4([10, 5, 0, 1]);
const SNAT: Addr = Addr::v4([10, 0, 0, 3]);
const BACKENDS: [Backend; 2] = [
    Backend {
        addr: Addr::v4([10, 0, 0, 11]),
        port: 80,
        mac: [2, 0, 0, 0, 0, 0x11],
        active: true,
    },
    Backend {
        addr: Addr::v4([10, 0, 0, 12]),
        port: 80,
        mac: [2, 0, 0, 0, 0, 0x12],
        active: true,
    },
];
const DOWN: [Backend; 1] = [Backend {
    addr: Addr::v4([10, 0, 0, 13]),
    port: 80,
    mac: [2, 0, 0, 0, 0, 0x13],
    active: false,
}];
const APP_ONLY: [SourceRule; 2] = [
    SourceRule {
        cidr: Cidr {
            addr: Addr::v4([10, 5, 0, 0]),
            len: 16,
        },
        allow: true,
    },
    SourceRule {
        cidr: Cidr {
            addr: Addr::v4([10, 5, 9, 9]),
            len: 32,
        },
        allow: false,
    },
];
const SERVICES: [Service; 3] = [
    Service {
        vip: VIP,
        port: 80,
        proto: 6,
        mode: Mode::Dsr,
        backends: &BACKENDS,
        sources: &APP_ONLY,
    },
    Service {
        vip: NAT_VIP,
        port: 53,
        proto: 17,
        mode: Mode::Nat { snat: SNAT },
        backends: &BACKENDS,
        sources: &[],
    },
    Service {
        vip: VIP,
        port: 81,
        proto: 6,
        mode: Mode::Dsr,
        backends: &DOWN,
        sources: &[],
    },
];
const RULES: [CidrRule; 3] = [
    CidrRule {
        cidr: Cidr {
            addr: Addr::v4([192, 0, 2, 0]),
            len: 24,
        },
        action: RuleAction::Drop,
        spoof: false,
    },
    CidrRule {
        cidr: Cidr {
            addr: Addr::v4([192, 0, 2, 7]),
            len: 32,
        },
        action: RuleAction::Allow,
        spoof: false,
    },
    CidrRule {
        cidr: Cidr {
            addr: Addr::v4([240, 0, 0, 0]),
            len: 4,
        },
        action: RuleAction::Drop,
        spoof: true,
    },
];
const HOST_PORTS: [HostPort; 1] = [HostPort {
    port: 22,
    proto: 6,
    sources: &[],
}];
const HOSTS: [Addr; 3] = [HOST, VIP, NAT_VIP];
const CONFIG: Config = Config {
    tcp_flag_checks: true,
    drop_fragments: true,
    host_policy: true,
    ephemeral: (32768, 60999),
    rules: &RULES,
    services: &SERVICES,
    host_addrs: &HOSTS,
    host_ports: &HOST_PORTS,
    own_mac: [0; 6],
};

const NOW: u32 = 1_000_000;
const CLOCK: Clock = Clock {
    now: NOW,
    timeouts: FlowTimeouts::DEFAULT,
};

/// No flows, except DSR flows from CLIENT: an established one from port 7777, a closing one
/// from 7778, one idle for longer than an established flow may be from 7779; and one NAT reply
/// on port 20000.
struct Fixed;

impl State for Fixed {
    fn flow(&self, key: &FlowKey) -> Option<Flow> {
        let (state, last_seen) = match key.src_port {
            7777 => (FlowState::Established, NOW - 5),
            7778 => (FlowState::Closing, NOW - 5),
            7779 => (FlowState::Established, NOW - 901),
            _ => return None,
        };
        (key.dst == VIP).then_some(Flow {
            service: 0,
            backend: 1,
            nat_port: 0,
            state,
            last_seen,
        })
    }
    fn nat_reply(&self, key: &FlowKey) -> Option<Reply> {
        (key.dst == SNAT && key.dst_port == 20000).then_some(Reply {
            service: 1,
            backend: 0,
            client: CLIENT,
            client_port: 5353,
            vip: NAT_VIP,
            vip_port: 53,
            client_mac: [2, 0, 0, 0, 0, 0x10],
        })
    }
}

/// An Ethernet + IPv4 frame with a 20-byte L4 header (ports, TCP flags at byte 13).
fn v4(src: Addr, dst: Addr, proto: u8, ports: (u16, u16), flags: u8) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend([2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0x10, 0x08, 0x00]);
    f.extend([0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, proto, 0, 0]);
    f.extend(&src.bytes[..4]);
    f.extend(&dst.bytes[..4]);
    f.extend(ports.0.to_be_bytes());
    f.extend(ports.1.to_be_bytes());
    f.extend([0; 9]);
    f.push(flags);
    f.extend([0; 6]);
    f
}

fn syn(src: Addr, dst: Addr, dport: u16) -> Vec<u8> {
    v4(src, dst, 6, (1000, dport), 0x02)
}

fn edit(mut frame: Vec<u8>, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    f(&mut frame);
    frame
}

#[test]
fn decisions() {
    let ack = |src, sport, dst, dport| v4(src, dst, 6, (sport, dport), 0x10);
    let cases: Vec<(&str, Vec<u8>, Verdict, Action)> = std::vec![
        (
            "new DSR flow",
            syn(CLIENT, VIP, 80),
            ForwardDsr,
            Action::Dsr {
                service: 0,
                backend: None
            }
        ),
        (
            "established DSR flow",
            ack(CLIENT, 7777, VIP, 80),
            ForwardDsr,
            Action::Dsr {
                service: 0,
                backend: Some(1)
            }
        ),
        (
            "ACK of a closing flow",
            ack(CLIENT, 7778, VIP, 80),
            ForwardDsr,
            Action::Dsr {
                service: 0,
                backend: Some(1)
            }
        ),
        (
            "SYN on a closing flow: the next connection",
            v4(CLIENT, VIP, 6, (7778, 80), 0x02),
            ForwardDsr,
            Action::Dsr {
                service: 0,
                backend: None
            }
        ),
        (
            "ACK of an expired flow",
            ack(CLIENT, 7779, VIP, 80),
            DropNoFlow,
            Action::None
        ),
        (
            "ACK without a flow",
            ack(CLIENT, 4321, VIP, 80),
            DropNoFlow,
            Action::None
        ),
        (
            "new NAT flow",
            v4(CLIENT, NAT_VIP, 17, (5353, 53), 0),
            ForwardNat,
            Action::Nat {
                service: 1,
                flow: None
            }
        ),
        (
            "NAT reply",
            v4(BACKENDS[0].addr, SNAT, 17, (80, 20000), 0),
            Verdict::NatReply,
            Action::NatReply(
                Fixed
                    .nat_reply(&FlowKey {
                        src: CLIENT,
                        dst: SNAT,
                        src_port: 0,
                        dst_port: 20000,
                        proto: 17
                    })
                    .expect("the fixed NAT entry")
            )
        ),
        (
            "service source denied /32 inside allowed /16",
            syn(Addr::v4([10, 5, 9, 9]), VIP, 80),
            DropServiceSource,
            Action::None
        ),
        (
            "service source outside the allowed /16",
            syn(Addr::v4([10, 6, 0, 1]), VIP, 80),
            DropServiceSource,
            Action::None
        ),
        (
            "service without active backend",
            syn(CLIENT, VIP, 81),
            DropNoBackend,
            Action::None
        ),
        (
            "denied /24",
            syn(Addr::v4([192, 0, 2, 1]), VIP, 80),
            DropDenied,
            Action::None
        ),
        (
            "allowed /32 in the denied /24, then the service rules",
            syn(Addr::v4([192, 0, 2, 7]), VIP, 80),
            DropServiceSource,
            Action::None
        ),
        (
            "bogon",
            syn(Addr::v4([240, 1, 2, 3]), HOST, 22),
            DropSpoofed,
            Action::None
        ),
        (
            "source equals destination",
            syn(VIP, VIP, 80),
            DropSpoofed,
            Action::None
        ),
        (
            "SYN+FIN",
            v4(CLIENT, VIP, 6, (1000, 80), 0x03),
            DropTcpFlags,
            Action::None
        ),
        (
            "no TCP flags",
            v4(CLIENT, HOST, 6, (1000, 22), 0),
            DropTcpFlags,
            Action::None
        ),
        (
            "open host port",
            syn(CLIENT, HOST, 22),
            PassHost,
            Action::None
        ),
        (
            "closed host port",
            syn(CLIENT, HOST, 23),
            DropHostPolicy,
            Action::None
        ),
        (
            "VIP port that is no service",
            syn(CLIENT, VIP, 443),
            DropHostPolicy,
            Action::None
        ),
        (
            "bare SYN to an ephemeral port",
            syn(CLIENT, HOST, 40000),
            DropHostPolicy,
            Action::None
        ),
        (
            "ACK to an ephemeral port",
            ack(CLIENT, 1000, HOST, 40000),
            PassHost,
            Action::None
        ),
        (
            "UDP to an ephemeral port",
            v4(CLIENT, HOST, 17, (53, 40000), 0),
            PassHost,
            Action::None
        ),
        (
            "ICMP to the host",
            v4(CLIENT, HOST, 1, (0x0800, 0), 0),
            PassHost,
            Action::None
        ),
        (
            "GRE to the host",
            v4(CLIENT, HOST, 47, (0, 0), 0),
            DropHostPolicy,
            Action::None
        ),
        (
            "elsewhere",
            syn(CLIENT, Addr::v4([10, 0, 0, 77]), 23),
            PassNoService,
            Action::None
        ),
        (
            "fragment to a VIP",
            edit(syn(CLIENT, VIP, 80), |f| f[20] = 0x20),
            DropFragment,
            Action::None
        ),
        (
            "fragment elsewhere",
            edit(syn(CLIENT, HOST, 80), |f| f[21] = 0xB9),
            PassFragment,
            Action::None
        ),
        (
            "truncated Ethernet",
            std::vec![0; 13],
            PassNotIp,
            Action::None
        ),
        (
            "ARP",
            edit(syn(CLIENT, VIP, 80), |f| f[12..14].copy_from_slice(&[8, 6])),
            PassNotIp,
            Action::None
        ),
        (
            "IHL 4",
            edit(syn(CLIENT, VIP, 80), |f| f[14] = 0x44),
            DropMalformed,
            Action::None
        ),
        (
            "total length past the end",
            edit(syn(CLIENT, VIP, 80), |f| f[17] = 41),
            DropMalformed,
            Action::None
        ),
        (
            "total length below the header",
            edit(syn(CLIENT, VIP, 80), |f| f[17] = 19),
            DropMalformed,
            Action::None
        ),
        (
            "version 6 in IPv4",
            edit(syn(CLIENT, VIP, 80), |f| f[14] = 0x65),
            DropMalformed,
            Action::None
        ),
        (
            "TCP header cut short",
            edit(syn(CLIENT, VIP, 80), |f| {
                f.truncate(53);
                f[17] = 39
            }),
            DropMalformed,
            Action::None
        ),
        (
            "tagged",
            edit(syn(CLIENT, VIP, 80), |f| {
                f.splice(12..12, [0x81, 0, 0, 42]);
            }),
            ForwardDsr,
            Action::Dsr {
                service: 0,
                backend: None
            }
        ),
        (
            "tag cut short",
            edit(std::vec![0; 16], |f| f[12] = 0x81),
            PassNotIp,
            Action::None
        ),
    ];
    for (what, frame, verdict, action) in cases {
        let decision = decide(&frame, &CONFIG, &Fixed, &CLOCK);
        assert_eq!(
            (decision.verdict, decision.action),
            (verdict, action),
            "{what}"
        );
    }
}

#[test]
fn ipv6_parse_and_lengths() {
    let mut f = std::vec![0u8; 14 + 40 + 20];
    f[12..14].copy_from_slice(&[0x86, 0xDD]);
    f[14] = 0x60;
    f[18..20].copy_from_slice(&20u16.to_be_bytes());
    f[20] = 6;
    f[22] = 0xfd;
    f[37] = 1;
    f[38] = 0xfd;
    f[53] = 2;
    f[54 + 13] = 0x02;
    let packet = parse(&f).expect("a valid IPv6 frame");
    assert!(packet.key.src.v6 && packet.key.proto == 6 && packet.l4 == 54 && packet.tcp_flags == 2);
    let mut long = f.clone();
    long[19] = 21;
    assert_eq!(
        parse(&long),
        Err(DropMalformed),
        "payload length past the end"
    );
    assert_eq!(parse(&f[..53]), Err(DropMalformed), "header cut short");
}

#[test]
fn prefixes_do_not_cross_families() {
    let v4 = Cidr {
        addr: Addr::v4([32, 1, 13, 184]),
        len: 32,
    };
    let mut bytes = [0; 16];
    bytes[..4].copy_from_slice(&[32, 1, 13, 184]);
    assert!(v4.contains(&Addr::v4([32, 1, 13, 184])));
    assert!(
        !v4.contains(&Addr::v6(bytes)),
        "an IPv6 address never matches an IPv4 prefix"
    );
    let zero = Cidr {
        addr: Addr::v6([0; 16]),
        len: 0,
    };
    assert!(zero.contains(&Addr::v6(bytes)) && !zero.contains(&Addr::v4([1, 2, 3, 4])));
}

#[test]
fn a_flow_lives_through_its_states() {
    let packet =
        |flags: u8| parse(&v4(CLIENT, VIP, 6, (1000, 80), flags)).expect("a valid TCP frame");
    let syn = packet(0x02);
    let opening = Flow::new(0, 0, 0, &syn, NOW);
    assert_eq!(opening.state, FlowState::Opening);
    let retransmitted = after_client_packet(&opening, &syn, NOW + 1);
    assert_eq!(
        retransmitted.state,
        FlowState::Opening,
        "a SYN again keeps it opening"
    );
    let established = after_client_packet(&opening, &packet(0x10), NOW + 1);
    assert_eq!(established.state, FlowState::Established);
    assert_eq!(established.last_seen, NOW + 1);
    let closing = after_client_packet(&established, &packet(0x11), NOW + 2);
    assert_eq!(closing.state, FlowState::Closing);
    assert_eq!(
        after_client_packet(&established, &packet(0x04), NOW).state,
        FlowState::Closing
    );
    let at = |now| Clock { now, ..CLOCK };
    assert!(alive(&closing, &at(NOW + 2 + 10)));
    assert!(!alive(&closing, &at(NOW + 2 + 11)));
    assert!(alive(&established, &at(NOW + 1 + 900)));
    assert!(!alive(&opening, &at(NOW + 11)));
    let udp = parse(&v4(CLIENT, NAT_VIP, 17, (5353, 53), 0)).expect("a valid UDP frame");
    assert_eq!(Flow::new(1, 0, 20000, &udp, NOW).state, FlowState::Udp);
    let fin_reply = parse(&v4(BACKENDS[0].addr, SNAT, 6, (80, 20000), 0x11)).expect("valid");
    let nat = Flow {
        nat_port: 20000,
        ..established
    };
    assert_eq!(
        after_reply(&nat, &fin_reply, 20000, NOW + 3).state,
        FlowState::Closing
    );
    assert_eq!(
        after_reply(&nat, &fin_reply, 20001, NOW + 3).state,
        FlowState::Established,
        "a reply to another port is another flow's"
    );
}
