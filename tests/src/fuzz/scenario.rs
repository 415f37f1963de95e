//! The configurations under fuzz: agent configs (TOML, programmed the way `lb run` does) and
//! the same configurations written out by hand for the model. `strict` has every firewall
//! feature on; `relaxed` turns the switches off (no TCP flag checks, fragments to VIPs passed,
//! host policy open, no CIDR rules) so the other side of each branch is compared too. No rate limits anywhere (they
//! depend on time, which the model leaves out).
use std::net::IpAddr;

use lb_common::model::{
    Addr, Backend, Cidr, CidrRule, Config, HostPort, Mode, RuleAction, Service, SourceRule,
};
use lb_userspace::services::BackendState;

use crate::harness::ConfigHarness;

/// NAT source ports the harness is given, and the host's ephemeral ports (as in ConfigHarness).
pub const NAT_PORTS: (u16, u16) = (20000, 29999);
pub const EPHEMERAL: (u16, u16) = (32768, 60999);
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// The firewall of the `strict` scenario.
pub const STRICT_FIREWALL: &str = r#"
[firewall]
bogons = ["0.0.0.0/8", "240.0.0.0/4"]

[firewall.host]
policy = "restrict"
icmp_echo_rate = 0

[[firewall.host.open_ports]]
port = 22
sources = ["10.9.0.0/16", "fd09::/32"]

[[firewall.host.open_ports]]
port = 9876

[[firewall.host.open_ports]]
port = 68
protocol = "udp"

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

/// The firewall of the `relaxed` scenario.
pub const RELAXED_FIREWALL: &str = r#"
[firewall]
drop_fragments = false
tcp_flag_checks = false

[firewall.host]
policy = "open"
"#;

/// The services of both scenarios.
pub const SERVICES_TOML: &str = r#"
[[service]]
name = "web"
vip = "10.0.0.100"
port = 80
mode = "dsr"
[[service.backend]]
name = "web1"
address = "10.0.0.11"
[[service.backend]]
name = "web2"
address = "10.0.0.12"
[[service.backend]]
name = "web3"
address = "10.0.0.13"

[[service]]
name = "dns"
vip = "10.0.0.100"
port = 53
protocol = "udp"
mode = "nat"
snat_address = "10.0.0.3"
[[service.backend]]
name = "dns1"
address = "10.0.0.21"
port = 5353
[[service.backend]]
name = "dns2"
address = "10.0.0.22"
port = 5353

[[service]]
name = "db"
vip = "10.0.0.101"
port = 3306
mode = "nat"
snat_address = "10.0.0.3"
allow_sources = ["10.5.0.0/16"]
deny_sources = ["10.5.9.0/24"]
[[service.backend]]
name = "db1"
address = "10.0.0.31"

[[service]]
name = "gone"
vip = "10.0.0.101"
port = 8080
mode = "dsr"
[[service.backend]]
name = "gone1"
address = "10.0.0.41"

[[service]]
name = "web6"
vip = "fd00::100"
port = 80
mode = "dsr"
[[service.backend]]
name = "web1"
address = "fd00::11"
[[service.backend]]
name = "web2"
address = "fd00::12"

[[service]]
name = "api6"
vip = "fd00::100"
port = 443
mode = "nat"
snat_address = "fd00::3"
[[service.backend]]
name = "api1"
address = "fd00::21"
port = 8443
[[service.backend]]
name = "api2"
address = "fd00::22"
port = 8443
"#;

/// Backend states set after loading: (service, backend, state).
pub const STATES: [(&str, &str, BackendState); 2] = [
    ("web", "web3", BackendState::Draining),
    ("gone", "gone1", BackendState::Down),
];

/// The load balancer's own addresses besides the VIPs.
pub const HOST_ADDRS: [&str; 2] = ["10.0.0.2", "fd00::2"];

pub const fn v4(a: u8, b: u8, c: u8, d: u8) -> Addr {
    Addr::v4([a, b, c, d])
}

/// An IPv6 address from its eight 16-bit groups.
pub const fn v6(groups: [u16; 8]) -> Addr {
    let mut bytes = [0u8; 16];
    let mut i = 0;
    while i < 8 {
        bytes[2 * i] = (groups[i] >> 8) as u8;
        bytes[2 * i + 1] = groups[i] as u8;
        i += 1;
    }
    Addr::v6(bytes)
}

/// A backend's MAC: its address's last byte (each service's backends differ in it).
pub fn backend_mac(addr: &Addr) -> [u8; 6] {
    let last = if addr.v6 {
        addr.bytes[15]
    } else {
        addr.bytes[3]
    };
    [0x02, 0, 0, 0, 0, last]
}

const fn cidr(addr: Addr, len: u8) -> Cidr {
    Cidr { addr, len }
}

const fn backend(addr: Addr, port: u16, active: bool) -> Backend {
    let last = if addr.v6 {
        addr.bytes[15]
    } else {
        addr.bytes[3]
    };
    Backend {
        addr,
        port,
        mac: [0x02, 0, 0, 0, 0, last],
        active,
    }
}

pub const VIP4: Addr = v4(10, 0, 0, 100);
pub const DB_VIP: Addr = v4(10, 0, 0, 101);
pub const VIP6: Addr = v6([0xfd00, 0, 0, 0, 0, 0, 0, 0x100]);
pub const SNAT4: Addr = v4(10, 0, 0, 3);
pub const SNAT6: Addr = v6([0xfd00, 0, 0, 0, 0, 0, 0, 3]);

const WEB: [Backend; 3] = [
    backend(v4(10, 0, 0, 11), 80, true),
    backend(v4(10, 0, 0, 12), 80, true),
    backend(v4(10, 0, 0, 13), 80, false),
];
const DNS: [Backend; 2] = [
    backend(v4(10, 0, 0, 21), 5353, true),
    backend(v4(10, 0, 0, 22), 5353, true),
];
const DB: [Backend; 1] = [backend(v4(10, 0, 0, 31), 3306, true)];
const GONE: [Backend; 1] = [backend(v4(10, 0, 0, 41), 8080, false)];
const WEB6: [Backend; 2] = [
    backend(v6([0xfd00, 0, 0, 0, 0, 0, 0, 0x11]), 80, true),
    backend(v6([0xfd00, 0, 0, 0, 0, 0, 0, 0x12]), 80, true),
];
const API6: [Backend; 2] = [
    backend(v6([0xfd00, 0, 0, 0, 0, 0, 0, 0x21]), 8443, true),
    backend(v6([0xfd00, 0, 0, 0, 0, 0, 0, 0x22]), 8443, true),
];
const DB_SOURCES: [SourceRule; 2] = [
    SourceRule {
        cidr: cidr(v4(10, 5, 0, 0), 16),
        allow: true,
    },
    SourceRule {
        cidr: cidr(v4(10, 5, 9, 0), 24),
        allow: false,
    },
];
const SSH_SOURCES: [SourceRule; 2] = [
    SourceRule {
        cidr: cidr(v4(10, 9, 0, 0), 16),
        allow: true,
    },
    SourceRule {
        cidr: cidr(v6([0xfd09, 0, 0, 0, 0, 0, 0, 0]), 32),
        allow: true,
    },
];

const fn rule(addr: Addr, len: u8, action: RuleAction, spoof: bool) -> CidrRule {
    CidrRule {
        cidr: cidr(addr, len),
        action,
        spoof,
    }
}

const RULES: [CidrRule; 7] = [
    rule(v4(192, 0, 2, 0), 24, RuleAction::Drop, false),
    rule(
        v6([0x2001, 0xdb8, 0xbad, 0, 0, 0, 0, 0]),
        48,
        RuleAction::Drop,
        false,
    ),
    rule(v4(192, 0, 2, 7), 32, RuleAction::Allow, false),
    rule(
        v6([0x2001, 0xdb8, 0xbad, 1, 0, 0, 0, 0]),
        64,
        RuleAction::Allow,
        false,
    ),
    rule(v4(198, 51, 100, 0), 24, RuleAction::Log, false),
    rule(v4(0, 0, 0, 0), 8, RuleAction::Drop, true),
    rule(v4(240, 0, 0, 0), 4, RuleAction::Drop, true),
];

const SERVICES: [Service; 6] = [
    Service {
        vip: VIP4,
        port: 80,
        proto: 6,
        mode: Mode::Dsr,
        backends: &WEB,
        sources: &[],
    },
    Service {
        vip: VIP4,
        port: 53,
        proto: 17,
        mode: Mode::Nat { snat: SNAT4 },
        backends: &DNS,
        sources: &[],
    },
    Service {
        vip: DB_VIP,
        port: 3306,
        proto: 6,
        mode: Mode::Nat { snat: SNAT4 },
        backends: &DB,
        sources: &DB_SOURCES,
    },
    Service {
        vip: DB_VIP,
        port: 8080,
        proto: 6,
        mode: Mode::Dsr,
        backends: &GONE,
        sources: &[],
    },
    Service {
        vip: VIP6,
        port: 80,
        proto: 6,
        mode: Mode::Dsr,
        backends: &WEB6,
        sources: &[],
    },
    Service {
        vip: VIP6,
        port: 443,
        proto: 6,
        mode: Mode::Nat { snat: SNAT6 },
        backends: &API6,
        sources: &[],
    },
];

const HOSTS: [Addr; 5] = [
    v4(10, 0, 0, 2),
    v6([0xfd00, 0, 0, 0, 0, 0, 0, 2]),
    VIP4,
    DB_VIP,
    VIP6,
];

const HOST_PORTS: [HostPort; 3] = [
    HostPort {
        port: 22,
        proto: 6,
        sources: &SSH_SOURCES,
    },
    HostPort {
        port: 9876,
        proto: 6,
        sources: &[],
    },
    HostPort {
        port: 68,
        proto: 17,
        sources: &[],
    },
];

/// The `strict` scenario as the model sees it.
pub const MODEL: Config = Config {
    tcp_flag_checks: true,
    drop_fragments: true,
    host_policy: true,
    ephemeral: EPHEMERAL,
    rules: &RULES,
    services: &SERVICES,
    host_addrs: &HOSTS,
    host_ports: &HOST_PORTS,
    own_mac: LB_MAC,
};

/// The `relaxed` scenario as the model sees it.
pub const RELAXED_MODEL: Config = Config {
    tcp_flag_checks: false,
    drop_fragments: false,
    host_policy: false,
    rules: &[],
    ..MODEL
};

/// An agent config and the model's view of it.
#[derive(Clone, Copy)]
pub struct Scenario {
    pub name: &'static str,
    pub firewall: &'static str,
    pub model: &'static Config<'static>,
}

pub const STRICT: Scenario = Scenario {
    name: "strict",
    firewall: STRICT_FIREWALL,
    model: &MODEL,
};
pub const RELAXED: Scenario = Scenario {
    name: "relaxed",
    firewall: RELAXED_FIREWALL,
    model: &RELAXED_MODEL,
};
pub const ALL: [Scenario; 2] = [STRICT, RELAXED];

/// The real program, loaded and programmed from `scenario`'s config.
#[track_caller]
pub fn harness(scenario: &Scenario) -> ConfigHarness {
    let macs: Vec<(IpAddr, [u8; 6])> = MODEL
        .services
        .iter()
        .flat_map(|s| s.backends.iter())
        .map(|b| (to_ip(&b.addr), b.mac))
        .collect();
    let hosts: Vec<IpAddr> = HOST_ADDRS
        .iter()
        .map(|a| a.parse().unwrap_or_else(|e| panic!("{a}: {e}")))
        .collect();
    let toml = format!("{}\n{SERVICES_TOML}", scenario.firewall);
    let mut h = ConfigHarness::new(&toml, &macs, &hosts);
    h.set_own_mac(scenario.model.own_mac);
    h.harness.set_nat_ports(NAT_PORTS.0, NAT_PORTS.1);
    h.harness.set_clock(super::check::CLOCK_START);
    for (service, backend, state) in STATES {
        let entry = h
            .table
            .services
            .iter_mut()
            .find(|s| s.name == service)
            .unwrap_or_else(|| panic!("no service {service}"));
        let b = entry
            .backends
            .iter_mut()
            .find(|b| b.name == backend)
            .unwrap_or_else(|| panic!("no backend {backend}"));
        b.state = state;
        lb_userspace::services::program_service(&mut h.harness.dataplane, entry)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    h
}

pub fn to_ip(addr: &Addr) -> IpAddr {
    if addr.v6 {
        IpAddr::from(addr.bytes)
    } else {
        IpAddr::from([addr.bytes[0], addr.bytes[1], addr.bytes[2], addr.bytes[3]])
    }
}
