//! What a lab is made of: its hosts, their addresses, the links between them.
use std::time::Duration;

use anyhow::{bail, Result};

use crate::util;

/// Prefix of the lab brought up by `cargo xtask lab up` / `run` / `demo` by default.
pub const DEFAULT_PREFIX: &str = "lbx-";
/// Every test lab prefix starts with this; `cargo xtask test` cleans `lbt-*` before and after.
pub const TEST_PREFIX: &str = "lbt-";
/// Parent of every lab's directory (`/run/lb-lab/{prefix}`): bpffs and logs.
pub const LAB_RUN_DIR: &str = "/run/lb-lab";
/// Name of the switch namespace suffix (`{prefix}sw`).
pub const SWITCH: &str = "sw";
/// The bridge inside the switch namespace.
pub const BRIDGE: &str = "br0";
/// The interface name of every host (inside its namespace).
pub const HOST_IFACE: &str = "eth0";

/// How long a lab command may run before it is killed (see [`Lab::exec_timeout`]).
pub const EXEC_TIMEOUT: Duration = util::DEFAULT_TIMEOUT;
/// Grace period between SIGTERM and SIGKILL at teardown.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// Host names of the standard lab.
pub mod host {
    pub const CLIENT: &str = "client";
    pub const LB: &str = "lb";
    pub const WEB1: &str = "web1";
    pub const WEB2: &str = "web2";
    pub const DB1: &str = "db1";
    pub const DB2: &str = "db2";
    /// Every host of the standard lab, in creation order.
    pub const ALL: [&str; 6] = [CLIENT, LB, WEB1, WEB2, DB1, DB2];
    /// The web backends.
    pub const WEBS: [&str; 2] = [WEB1, WEB2];
    /// The database backends (db1 starts as primary).
    pub const DBS: [&str; 2] = [DB1, DB2];
}

/// Addresses of the standard lab, so that tests, configs and the demo agree.
pub mod addr {
    pub const SUBNET_V4: &str = "10.99.0.0/24";
    pub const SUBNET_V6: &str = "fd99::/64";
    pub const PREFIX_LEN_V4: u8 = 24;
    pub const PREFIX_LEN_V6: u8 = 64;

    pub const CLIENT: &str = "10.99.0.10";
    pub const CLIENT_V6: &str = "fd99::10";
    /// The load balancer's own address (its XDP program sits on this NIC).
    pub const LB: &str = "10.99.0.2";
    pub const LB_V6: &str = "fd99::2";
    /// Source address of NAT-mode traffic from the load balancer to the backends.
    pub const LB_SNAT: &str = "10.99.0.3";
    pub const LB_SNAT_V6: &str = "fd99::3";
    pub const WEB1: &str = "10.99.0.11";
    pub const WEB1_V6: &str = "fd99::11";
    pub const WEB2: &str = "10.99.0.12";
    pub const WEB2_V6: &str = "fd99::12";
    pub const DB1: &str = "10.99.0.21";
    pub const DB1_V6: &str = "fd99::21";
    pub const DB2: &str = "10.99.0.22";
    pub const DB2_V6: &str = "fd99::22";

    /// HTTP service VIP (configured on the backends' `lo` for DSR).
    pub const VIP_HTTP: &str = "10.99.0.100";
    pub const VIP_HTTP_V6: &str = "fd99::100";
    /// Database writer VIP (the current primary).
    pub const VIP_DB_WRITE: &str = "10.99.0.101";
    /// Database reader VIP (the replicas).
    pub const VIP_DB_READ: &str = "10.99.0.102";

    /// The VIPs the web servers carry on `lo` (DSR backends of the web service).
    pub const WEB_LOOPBACK: [&str; 2] = ["10.99.0.100/32", "fd99::100/128"];
    /// The VIPs the database servers carry on `lo` (DSR backends of the database services).
    /// Only there: a web server with a database VIP on its own loopback would talk to itself.
    pub const DB_LOOPBACK: [&str; 2] = ["10.99.0.101/32", "10.99.0.102/32"];
    /// Every VIP: the load balancer holds them all, so it answers ARP/NDP for them.
    pub const ALL_VIPS: [&str; 4] = [
        "10.99.0.100/32",
        "fd99::100/128",
        "10.99.0.101/32",
        "10.99.0.102/32",
    ];
}

/// One host of the lab: a namespace with `eth0` on the switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    /// Short name, e.g. "client", "lb", "web1" (namespace `{prefix}{name}`, switch port `{name}`).
    pub name: String,
    /// IPv4 addresses of `eth0`, CIDR, e.g. "10.99.0.10/24".
    pub ipv4: Vec<String>,
    /// IPv6 addresses of `eth0`, CIDR, e.g. "fd99::10/64" (added without DAD).
    pub ipv6: Vec<String>,
    /// Extra addresses on `lo`, CIDR, e.g. the VIP "10.99.0.100/32" of a DSR backend.
    pub loopback_addrs: Vec<String>,
    /// `ethtool -K eth0 tx off`: packets a local socket sends over veth otherwise carry a
    /// partial checksum that is wrong once XDP forwards them.
    pub tx_checksum_off: bool,
    /// `arp_ignore=1`, `arp_announce=2` on `all` and `eth0`: the host must not answer ARP
    /// for the VIPs it carries on `lo`.
    pub dsr_backend: bool,
    /// Reached through a router host instead of the switch (`None`: on the switch).
    pub via: Option<RouterLink>,
}

/// The link of a host that sits behind a router: the host's `eth0` pairs with a link named
/// after the host in the router's namespace, and the host's default routes point at the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterLink {
    /// The router: a host on the switch, listed before this one. It forwards IPv4 and IPv6.
    pub router: String,
    /// The router's addresses on this link, CIDR (e.g. "10.97.0.1/24", "fd97::1/64").
    pub router_addrs: Vec<String>,
    /// MTU of the router's end only. The host's end keeps 1500, so the host announces the
    /// larger MSS and the router must answer bigger packets with "fragmentation needed" /
    /// "packet too big": a path MTU smaller than either end's own.
    pub router_mtu: Option<u32>,
}

impl HostSpec {
    /// A host with no addresses, TX checksum offload off, not a DSR backend.
    pub fn new(name: &str) -> Self {
        HostSpec {
            name: name.to_string(),
            ipv4: Vec::new(),
            ipv6: Vec::new(),
            loopback_addrs: Vec::new(),
            tx_checksum_off: true,
            dsr_backend: false,
            via: None,
        }
    }
}

/// A lab: a namespace prefix and its hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabSpec {
    /// Prepended to every namespace name; keep it short and ending in '-' ("lbx-", "lbt-fw-").
    /// Tests must use prefixes starting with [`TEST_PREFIX`].
    pub prefix: String,
    pub hosts: Vec<HostSpec>,
}

impl LabSpec {
    /// The seed infrastructure: client, lb, web1, web2, db1, db2 on one switch.
    pub fn standard(prefix: &str) -> LabSpec {
        let plain = |name: &str, v4: &[&str], v6: &[&str], tx_off: bool| HostSpec {
            name: name.to_string(),
            ipv4: v4.iter().map(|s| s.to_string()).collect(),
            ipv6: v6.iter().map(|s| s.to_string()).collect(),
            loopback_addrs: Vec::new(),
            tx_checksum_off: tx_off,
            dsr_backend: false,
            via: None,
        };
        let backend = |name: &str, v4: &str, v6: &str, vips: &[&str]| HostSpec {
            loopback_addrs: vips.iter().map(|s| s.to_string()).collect(),
            dsr_backend: true,
            ..plain(name, &[v4], &[v6], true)
        };
        LabSpec {
            prefix: prefix.to_string(),
            hosts: vec![
                plain(host::CLIENT, &["10.99.0.10/24"], &["fd99::10/64"], true),
                // The lb keeps TX checksum offload: its XDP program forwards, its sockets
                // (health checks, NAT source) talk to the backends directly.
                // The VIPs are local to the lb too, so it answers ARP/NDP for them and clients
                // send VIP traffic to its NIC, where the XDP program takes it. Linux answers
                // ARP for an IPv4 address on `lo`, but neighbour solicitations only for the
                // NIC's own addresses: the IPv6 VIP sits on `eth0`.
                HostSpec {
                    loopback_addrs: addr::ALL_VIPS
                        .iter()
                        .filter(|a| !a.contains(':'))
                        .map(|s| s.to_string())
                        .collect(),
                    ..plain(
                        host::LB,
                        &["10.99.0.2/24", "10.99.0.3/24"],
                        &["fd99::2/64", "fd99::3/64", "fd99::100/128"],
                        false,
                    )
                },
                backend(
                    host::WEB1,
                    "10.99.0.11/24",
                    "fd99::11/64",
                    &addr::WEB_LOOPBACK,
                ),
                backend(
                    host::WEB2,
                    "10.99.0.12/24",
                    "fd99::12/64",
                    &addr::WEB_LOOPBACK,
                ),
                backend(
                    host::DB1,
                    "10.99.0.21/24",
                    "fd99::21/64",
                    &addr::DB_LOOPBACK,
                ),
                backend(
                    host::DB2,
                    "10.99.0.22/24",
                    "fd99::22/64",
                    &addr::DB_LOOPBACK,
                ),
            ],
        }
    }

    /// Check names and lengths before anything is created.
    pub fn validate(&self) -> Result<()> {
        validate_prefix(&self.prefix)?;
        if self.hosts.is_empty() {
            bail!("lab spec {:?} has no hosts", self.prefix);
        }
        let mut seen = std::collections::HashSet::new();
        for h in &self.hosts {
            let n = &h.name;
            if n.is_empty()
                || n.len() > 15
                || !n
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                || !n.starts_with(|c: char| c.is_ascii_lowercase())
            {
                bail!("lab host name {n:?} must be 1-15 chars of [a-z0-9], starting with a letter (it names a switch port)");
            }
            if n == SWITCH || n == BRIDGE || n == "lo" {
                bail!("lab host name {n:?} is reserved");
            }
            if !seen.insert(n.clone()) {
                bail!("lab host name {n:?} appears twice");
            }
            let router_addrs = h.via.iter().flat_map(|v| &v.router_addrs);
            for a in h
                .ipv4
                .iter()
                .chain(&h.ipv6)
                .chain(&h.loopback_addrs)
                .chain(router_addrs)
            {
                if !a.contains('/') {
                    bail!("address {a:?} of lab host {n:?} must be CIDR (e.g. 10.99.0.10/24)");
                }
            }
            if let Some(via) = &h.via {
                // The router's end is created when the router exists: it must come first.
                let router = self.hosts.iter().find(|r| r.name == via.router);
                if !matches!(router, Some(r) if r.via.is_none() && seen.contains(&r.name) && r.name != *n)
                {
                    bail!(
                        "lab host {n:?} is behind router {:?}, which must be a host on the switch listed before it",
                        via.router
                    );
                }
            }
        }
        Ok(())
    }

    /// Namespace name of `host` (or of the switch for [`SWITCH`]).
    pub fn ns(&self, host: &str) -> String {
        format!("{}{}", self.prefix, host)
    }

    /// Every namespace of this lab, hosts first, switch last.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v: Vec<String> = self.hosts.iter().map(|h| self.ns(&h.name)).collect();
        v.push(self.ns(SWITCH));
        v
    }

    pub fn host(&self, name: &str) -> Option<&HostSpec> {
        self.hosts.iter().find(|h| h.name == name)
    }
}

pub(super) fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty()
        || prefix.len() > 32
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("lab prefix {prefix:?} must be 1-32 chars of [A-Za-z0-9_-] (e.g. \"lbx-\")");
    }
    Ok(())
}
