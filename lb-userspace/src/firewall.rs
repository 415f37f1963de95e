//! The firewall's rule set: built from the config, written to the data path as a new
//! generation beside the live one, then switched to with one write, then the old generation
//! removed. Traffic never sees a half-written rule set.
use std::net::IpAddr;

use anyhow::{Context as _, Result};
use lb_common::{
    maps::{
        AddrKey, Firewall, FwRule, HostPort, Rate, ACTION_ALLOW, ACTION_DROP, ACTION_LOG,
        FW_DROP_FRAGMENTS, FW_HOST_POLICY, FW_SCOPED_SOURCES, FW_TCP_FLAG_CHECKS, FW_V4_RULES,
        FW_V6_RULES, PROTO_TCP, PROTO_UDP, REASON_POLICY, REASON_SPOOF,
    },
    MAX_SERVICES,
};
use serde::Serialize;

use crate::{
    config::{Action, Cidr, Config, HostPolicy, Protocol},
    dataplane::Dataplane,
    services::{addr_words, ServiceTable},
};

/// What a rule is, for people reading counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RuleKind {
    /// A `[[firewall.rule]]`.
    Global,
    /// The bogon list.
    Bogons,
    /// A service's `allow_sources`, `deny_sources`, or the drop of everyone else.
    ServiceAllow {
        service: String,
    },
    ServiceDeny {
        service: String,
    },
    ServiceDefaultDrop {
        service: String,
    },
    /// The sources of an open host port, and the drop of everyone else.
    HostPortAllow {
        port: u16,
        protocol: String,
    },
    HostPortDefaultDrop {
        port: u16,
        protocol: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct RuleInfo {
    pub id: u32,
    pub name: String,
    #[serde(flatten)]
    pub kind: RuleKind,
    pub action: Action,
    pub prefixes: Vec<String>,
}

/// A source rule of one scope (a service, or an open host port); `None`: the scope's catch-all.
pub struct ScopedEntry {
    pub scope: u32,
    pub cidr: Option<Cidr>,
    pub rule: FwRule,
}

/// Everything the data path needs of the firewall.
#[derive(Default)]
pub struct RuleSet {
    pub rules: Vec<RuleInfo>,
    pub prefixes: Vec<(Cidr, FwRule)>,
    pub scoped: Vec<ScopedEntry>,
    pub host_ports: Vec<(HostPort, u32)>,
    pub settings: Firewall,
}

fn action_code(action: Action) -> u8 {
    match action {
        Action::Allow => ACTION_ALLOW,
        Action::Drop => ACTION_DROP,
        Action::Log => ACTION_LOG,
    }
}

fn proto_code(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
    }
}

fn protocol_name(protocol: Protocol) -> String {
    match protocol {
        Protocol::Tcp => "tcp".into(),
        Protocol::Udp => "udp".into(),
    }
}

impl RuleSet {
    /// Rule ids follow the config's order, so counters keep their meaning across restarts of
    /// an unchanged config. Service scopes use the service ids of `services`.
    pub fn from_config(config: &Config, services: &ServiceTable, ephemeral: (u16, u16)) -> Self {
        let fw = &config.firewall;
        let mut set = RuleSet {
            rules: Vec::new(),
            prefixes: Vec::new(),
            scoped: Vec::new(),
            host_ports: Vec::new(),
            settings: Firewall::default(),
        };
        let add_rule = |set: &mut RuleSet,
                        name: String,
                        kind: RuleKind,
                        action: Action,
                        prefixes: &[Cidr]|
         -> FwRule {
            let id = set.rules.len() as u32;
            set.rules.push(RuleInfo {
                id,
                name,
                kind,
                action,
                prefixes: prefixes.iter().map(Cidr::to_string).collect(),
            });
            FwRule {
                id,
                action: action_code(action),
                reason: REASON_POLICY,
                _pad: [0; 2],
            }
        };

        for rule in &fw.rules {
            let cidrs: Vec<Cidr> = rule.sources.iter().map(|c| *c.get_ref()).collect();
            let entry = add_rule(
                &mut set,
                rule.name.get_ref().clone(),
                RuleKind::Global,
                rule.action,
                &cidrs,
            );
            set.prefixes.extend(cidrs.into_iter().map(|c| (c, entry)));
        }
        if !fw.bogons.is_empty() {
            let cidrs: Vec<Cidr> = fw.bogons.iter().map(|c| *c.get_ref()).collect();
            let mut entry = add_rule(
                &mut set,
                "bogons".into(),
                RuleKind::Bogons,
                Action::Drop,
                &cidrs,
            );
            entry.reason = REASON_SPOOF;
            set.prefixes.extend(cidrs.into_iter().map(|c| (c, entry)));
        }

        for service in &config.services {
            if service.allow_sources.is_empty() {
                continue;
            }
            let name = service.name.get_ref().clone();
            let Some(scope) = services
                .services
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.id)
            else {
                continue;
            };
            let allow: Vec<Cidr> = service.allow_sources.iter().map(|c| *c.get_ref()).collect();
            let deny: Vec<Cidr> = service.deny_sources.iter().map(|c| *c.get_ref()).collect();
            let allow_rule = add_rule(
                &mut set,
                format!("{name}/allow_sources"),
                RuleKind::ServiceAllow {
                    service: name.clone(),
                },
                Action::Allow,
                &allow,
            );
            set.scoped.extend(allow.into_iter().map(|c| ScopedEntry {
                scope,
                cidr: Some(c),
                rule: allow_rule,
            }));
            if !deny.is_empty() {
                let deny_rule = add_rule(
                    &mut set,
                    format!("{name}/deny_sources"),
                    RuleKind::ServiceDeny {
                        service: name.clone(),
                    },
                    Action::Drop,
                    &deny,
                );
                set.scoped.extend(deny.into_iter().map(|c| ScopedEntry {
                    scope,
                    cidr: Some(c),
                    rule: deny_rule,
                }));
            }
            let others = add_rule(
                &mut set,
                format!("{name}/others"),
                RuleKind::ServiceDefaultDrop { service: name },
                Action::Drop,
                &[],
            );
            set.scoped.push(ScopedEntry {
                scope,
                cidr: None,
                rule: others,
            });
        }

        for (index, open) in fw.host.open_ports.iter().enumerate() {
            let port = *open.port.get_ref();
            let key = HostPort {
                port: port.to_be(),
                proto: proto_code(open.protocol),
                _pad: 0,
            };
            if open.sources.is_empty() {
                set.host_ports.push((key, 0));
                continue;
            }
            let scope = MAX_SERVICES + 1 + index as u32;
            let protocol = protocol_name(open.protocol);
            let cidrs: Vec<Cidr> = open.sources.iter().map(|c| *c.get_ref()).collect();
            let allow = add_rule(
                &mut set,
                format!("host/{protocol}/{port}"),
                RuleKind::HostPortAllow {
                    port,
                    protocol: protocol.clone(),
                },
                Action::Allow,
                &cidrs,
            );
            set.scoped.extend(cidrs.into_iter().map(|c| ScopedEntry {
                scope,
                cidr: Some(c),
                rule: allow,
            }));
            let others = add_rule(
                &mut set,
                format!("host/{protocol}/{port}/others"),
                RuleKind::HostPortDefaultDrop { port, protocol },
                Action::Drop,
                &[],
            );
            set.scoped.push(ScopedEntry {
                scope,
                cidr: None,
                rule: others,
            });
            set.host_ports.push((key, scope));
        }

        let mut flags = 0;
        if set.prefixes.iter().any(|(c, _)| c.addr.is_ipv4()) {
            flags |= FW_V4_RULES;
        }
        if set.prefixes.iter().any(|(c, _)| c.addr.is_ipv6()) {
            flags |= FW_V6_RULES;
        }
        if !set.scoped.is_empty() {
            flags |= FW_SCOPED_SOURCES;
        }
        if fw.drop_fragments {
            flags |= FW_DROP_FRAGMENTS;
        }
        if fw.tcp_flag_checks {
            flags |= FW_TCP_FLAG_CHECKS;
        }
        if fw.host.policy == HostPolicy::Restrict {
            flags |= FW_HOST_POLICY;
        }
        set.settings = Firewall {
            flags,
            generation: 0,
            ephemeral_min: ephemeral.0,
            ephemeral_max: ephemeral.1,
            _pad: 0,
            host_icmp_echo: Rate::per_second(fw.host.icmp_echo_rate, fw.host.icmp_echo_burst),
            host_syn_rate: Rate::per_second(fw.host.syn_rate, fw.host.syn_burst),
        };
        set
    }
}

/// Writes `set` as the next generation, switches the data path to it, then removes the old
/// one. Returns the generation now live.
pub fn apply(
    dataplane: &mut Dataplane,
    set: &RuleSet,
    host_addrs: &[IpAddr],
    vips: &[IpAddr],
) -> Result<u32> {
    let live = dataplane.firewall()?;
    let next = if live.generation == 0 { 1 } else { 0 };
    dataplane
        .clear_rule_generation(next)
        .context("clearing the idle rule generation")?;
    for (cidr, rule) in &set.prefixes {
        dataplane.put_prefix(next, cidr, rule)?;
    }
    for entry in &set.scoped {
        dataplane.put_scoped_prefix(next, entry.scope, entry.cidr.as_ref(), &entry.rule)?;
    }
    // Addresses and ports are added before the switch and removed after it, so the host policy
    // never lacks an entry the new rules need.
    let addr_keys = |addrs: &[IpAddr]| -> Vec<AddrKey> {
        addrs
            .iter()
            .map(|a| {
                let (addr, family) = addr_words(*a);
                AddrKey {
                    addr,
                    family,
                    _pad: [0; 3],
                }
            })
            .collect()
    };
    let host_keys = addr_keys(host_addrs);
    let vip_keys = addr_keys(vips);
    dataplane.add_host_state(&host_keys, &vip_keys, &set.host_ports)?;
    dataplane.set_firewall(&Firewall {
        generation: next,
        ..set.settings
    })?;
    dataplane.retain_host_state(&host_keys, &vip_keys, &set.host_ports)?;
    dataplane
        .clear_rule_generation(1 - next)
        .context("removing the old rule generation")?;
    Ok(next)
}

/// The host's ephemeral port range (replies to its own connections arrive there).
pub fn ephemeral_ports() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| {
            let mut parts = text.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((parts.next()??, parts.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// The addresses of `iface` (IPv4 and IPv6, link-local included).
pub fn interface_addresses(iface: &str) -> Result<Vec<IpAddr>> {
    let mut addrs = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getifaddrs");
    }
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: a node of the list getifaddrs returned.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        if entry.ifa_addr.is_null() || entry.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string.
        let name = unsafe { std::ffi::CStr::from_ptr(entry.ifa_name) };
        if name.to_bytes() != iface.as_bytes() {
            continue;
        }
        // SAFETY: the family says which sockaddr type it is.
        unsafe {
            match (*entry.ifa_addr).sa_family as i32 {
                libc::AF_INET => {
                    let sin = &*(entry.ifa_addr as *const libc::sockaddr_in);
                    addrs.push(IpAddr::from(
                        u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                    ));
                }
                libc::AF_INET6 => {
                    let sin6 = &*(entry.ifa_addr as *const libc::sockaddr_in6);
                    addrs.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                }
                _ => {}
            }
        }
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(list) };
    Ok(addrs)
}
