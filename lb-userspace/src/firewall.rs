//! The firewall's rule set: built from the config, written to the data path as a new
//! generation beside the live one, then switched to with one write, then the old generation
//! removed. Traffic never sees a half-written rule set. The IPv4 source rules become a
//! multibit table ([`V4Table`]) built here, so the data path only indexes arrays.
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{bail, Context as _, Result};
use ipnet::{IpNet, Ipv4Net};
use lb_common::{
    maps::{
        AddrKey, Firewall, FwRule, HostPort, Rate, V4Entry, V4Group, ACTION_ALLOW, ACTION_DROP,
        ACTION_LOG, FW_DROP_FRAGMENTS, FW_HOST_POLICY, FW_SCOPED_SOURCES, FW_TCP_FLAG_CHECKS,
        FW_V4_RULES, FW_V6_RULES, PROTO_TCP, PROTO_UDP, REASON_POLICY, REASON_SPOOF,
        V4_CHILD_GROUPS, V4_ENTRY_GROUP, V4_GROUP_ENTRIES, V4_HALF_GROUPS, V4_ROOT_BITS,
        V4_ROOT_GROUPS, V4_STRIDE_BITS,
    },
    MAX_RULES, MAX_SERVICES,
};
use serde::Serialize;

use crate::{
    config::{Action, Config, HostPolicy, Protocol},
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

/// When each rule last matched, dated by the agent: the data path only counts packets (a clock
/// read per dropped packet cost more than the rest of the rule's bookkeeping), so a rule's last
/// hit is the first sample that saw its packet count grow. Samples come every second and on
/// every API read, so the date is right to within a second.
#[derive(Default)]
pub struct RuleActivity {
    /// By rule name and id (an id is reused by another rule after a change): packets at the
    /// last sample, and when they last grew.
    seen: std::collections::HashMap<(String, u32), (u64, Option<std::time::Instant>)>,
}

impl RuleActivity {
    /// Records a sample of `rule`'s packet count; returns when it last matched, if it has.
    pub fn observe(
        &mut self,
        rule: &RuleInfo,
        packets: u64,
        now: std::time::Instant,
    ) -> Option<std::time::Instant> {
        let entry = self
            .seen
            .entry((rule.name.clone(), rule.id))
            .or_insert((0, None));
        if packets != entry.0 {
            *entry = (packets, Some(now));
        }
        entry.1
    }

    /// Forgets rules no longer in `rules`.
    pub fn retain(&mut self, rules: &[RuleInfo]) {
        self.seen
            .retain(|(name, id), _| rules.iter().any(|r| r.id == *id && &r.name == name));
    }
}

/// A source rule of one scope (a service, or an open host port); `None`: the scope's catch-all.
pub struct ScopedEntry {
    pub scope: u32,
    pub cidr: Option<IpNet>,
    pub rule: FwRule,
}

/// Everything the data path needs of the firewall.
#[derive(Default)]
pub struct RuleSet {
    pub rules: Vec<RuleInfo>,
    pub prefixes: Vec<(IpNet, FwRule)>,
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
    /// Adds a rule; its id is its position.
    fn add_rule(
        &mut self,
        name: String,
        kind: RuleKind,
        action: Action,
        prefixes: &[IpNet],
    ) -> FwRule {
        let id = self.rules.len() as u32;
        self.rules.push(RuleInfo {
            id,
            name,
            kind,
            action,
            prefixes: prefixes.iter().map(IpNet::to_string).collect(),
        });
        FwRule {
            id,
            action: action_code(action),
            reason: REASON_POLICY,
            _pad: [0; 2],
        }
    }

    /// Adds a source rule of `scope` (a service or an open host port) with its prefixes; without
    /// prefixes, it is the scope's catch-all.
    fn add_scoped(
        &mut self,
        scope: u32,
        name: String,
        kind: RuleKind,
        action: Action,
        cidrs: Vec<IpNet>,
    ) {
        let rule = self.add_rule(name, kind, action, &cidrs);
        if cidrs.is_empty() {
            self.scoped.push(ScopedEntry {
                scope,
                cidr: None,
                rule,
            });
        }
        self.scoped.extend(cidrs.into_iter().map(|c| ScopedEntry {
            scope,
            cidr: Some(c),
            rule,
        }));
    }

    /// Rule ids follow the config's order, so counters keep their meaning across restarts of
    /// an unchanged config. Service scopes use the service ids of `services`.
    pub fn from_config(config: &Config, services: &ServiceTable, ephemeral: (u16, u16)) -> Self {
        let fw = &config.firewall;
        let mut set = RuleSet::default();
        for rule in &fw.rules {
            let cidrs: Vec<IpNet> = rule.sources.clone();
            let entry = set.add_rule(rule.name.clone(), RuleKind::Global, rule.action, &cidrs);
            set.prefixes.extend(cidrs.into_iter().map(|c| (c, entry)));
        }
        if !fw.bogons.is_empty() {
            let cidrs: Vec<IpNet> = fw.bogons.clone();
            let mut entry = set.add_rule("bogons".into(), RuleKind::Bogons, Action::Drop, &cidrs);
            entry.reason = REASON_SPOOF;
            set.prefixes.extend(cidrs.into_iter().map(|c| (c, entry)));
        }

        for service in &config.services {
            if service.allow_sources.is_empty() {
                continue;
            }
            let name = service.name.clone();
            let Some(scope) = services
                .services
                .iter()
                .find(|s| s.name == name)
                .map(|s| s.id)
            else {
                continue;
            };
            let allow: Vec<IpNet> = service.allow_sources.clone();
            let deny: Vec<IpNet> = service.deny_sources.clone();
            set.add_scoped(
                scope,
                format!("{name}/allow_sources"),
                RuleKind::ServiceAllow {
                    service: name.clone(),
                },
                Action::Allow,
                allow,
            );
            if !deny.is_empty() {
                set.add_scoped(
                    scope,
                    format!("{name}/deny_sources"),
                    RuleKind::ServiceDeny {
                        service: name.clone(),
                    },
                    Action::Drop,
                    deny,
                );
            }
            set.add_scoped(
                scope,
                format!("{name}/others"),
                RuleKind::ServiceDefaultDrop { service: name },
                Action::Drop,
                Vec::new(),
            );
        }

        for (index, open) in fw.host.open_ports.iter().enumerate() {
            let port = open.port;
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
            let cidrs: Vec<IpNet> = open.sources.clone();
            set.add_scoped(
                scope,
                format!("host/{protocol}/{port}"),
                RuleKind::HostPortAllow {
                    port,
                    protocol: protocol.clone(),
                },
                Action::Allow,
                cidrs,
            );
            set.add_scoped(
                scope,
                format!("host/{protocol}/{port}/others"),
                RuleKind::HostPortDefaultDrop { port, protocol },
                Action::Drop,
                Vec::new(),
            );
            set.host_ports.push((key, scope));
        }

        let mut flags = 0;
        if set.prefixes.iter().any(|(c, _)| matches!(c, IpNet::V4(_))) {
            flags |= FW_V4_RULES;
        }
        if set.prefixes.iter().any(|(c, _)| matches!(c, IpNet::V6(_))) {
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
            epoch: 0,
            host_icmp_echo: Rate::per_second(fw.host.icmp_echo_rate, fw.host.icmp_echo_burst),
            host_syn_rate: Rate::per_second(fw.host.syn_rate, fw.host.syn_burst),
            v4_base: 0,
            // Set by the agent for the interface it attaches to (`interface_mac`).
            own_mac: [0; 6],
            _pad: [0; 2],
        };
        set
    }
}

/// The IPv4 source rules as `FW_V4_TABLE` holds them (see lb-common `V4Group`): the root
/// groups, then the groups below the root in the order they were made. Built in user space so
/// that the data path does at most four array look-ups per packet, whatever the rule set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V4Table {
    pub groups: Vec<V4Group>,
    /// The most groups it may take (a half of `FW_V4_TABLE`).
    half_groups: u32,
}

impl V4Table {
    /// Longest prefix wins; of two rules on the very same prefix, the later one (the order of
    /// the config). Host bits of a prefix are ignored.
    pub fn build(prefixes: &[(Ipv4Net, FwRule)]) -> Result<Self> {
        Self::build_within(prefixes, V4_HALF_GROUPS)
    }

    /// [`V4Table::build`] for a half of `FW_V4_TABLE` of `half_groups` groups (the agent sizes
    /// the table for the config's rules): an error, not a truncated table, when it does not fit.
    pub fn build_within(prefixes: &[(Ipv4Net, FwRule)], half_groups: u32) -> Result<Self> {
        // Shorter prefixes first: a longer one then overwrites the entries it covers, and a group
        // made below an entry starts with that entry's rule (the shorter prefix's answer).
        let mut order: Vec<usize> = (0..prefixes.len()).collect();
        order.sort_by_key(|&i| prefixes[i].0.prefix_len());
        let mut table = V4Table {
            groups: vec![[0; V4_GROUP_ENTRIES as usize]; V4_ROOT_GROUPS as usize],
            half_groups: half_groups.clamp(V4_ROOT_GROUPS, V4_HALF_GROUPS),
        };
        for i in order {
            let (net, rule) = &prefixes[i];
            let entry = V4Entry::rule(rule).with_context(|| {
                format!("{net}: rule id {} or its action does not fit the IPv4 table (at most {MAX_RULES} rules)", rule.id)
            })?;
            table.insert(u32::from(net.network()), u32::from(net.prefix_len()), entry)?;
        }
        Ok(table)
    }

    fn insert(&mut self, addr: u32, len: u32, entry: u32) -> Result<()> {
        let root = addr >> (32 - V4_ROOT_BITS);
        if len <= V4_ROOT_BITS {
            // The root's entries in address order are the entries of groups 0, 1, ... in turn.
            for slot in root..root + (1 << (V4_ROOT_BITS - len)) {
                self.groups[(slot / V4_GROUP_ENTRIES) as usize]
                    [(slot % V4_GROUP_ENTRIES) as usize] = entry;
            }
            return Ok(());
        }
        let (mut group, mut index) = (
            (root / V4_GROUP_ENTRIES) as usize,
            (root % V4_GROUP_ENTRIES) as usize,
        );
        let mut resolved = V4_ROOT_BITS;
        loop {
            let child = self.child(group, index)?;
            resolved += V4_STRIDE_BITS;
            let nibble = ((addr >> (32 - resolved)) & (V4_GROUP_ENTRIES - 1)) as usize;
            if len <= resolved {
                // The prefix ends inside this stride: it covers 2^(resolved - len) entries.
                let count = 1usize << (resolved - len);
                self.groups[child][nibble..nibble + count].fill(entry);
                return Ok(());
            }
            (group, index) = (child, nibble);
        }
    }

    /// The group entry `index` of `group` points to; made if it held a rule or nothing, with
    /// that rule in all its entries (the addresses below keep their shorter prefix's rule).
    fn child(&mut self, group: usize, index: usize) -> Result<usize> {
        let entry = self.groups[group][index];
        if entry & V4_ENTRY_GROUP != 0 {
            return Ok((entry & !V4_ENTRY_GROUP) as usize);
        }
        let child = self.groups.len();
        if child >= self.half_groups as usize {
            let below = self.half_groups - V4_ROOT_GROUPS;
            if self.half_groups >= V4_HALF_GROUPS {
                bail!("the IPv4 rule table is full ({V4_CHILD_GROUPS} groups below the root); merge prefixes");
            }
            bail!(
                "the IPv4 rule table is full: the agent sized it at start for the config's rules \
                 ({below} groups below the root); put the rules in the config and restart the agent \
                 (a restart keeps the flows and re-creates the table at the size they need)"
            );
        }
        self.groups.push([entry; V4_GROUP_ENTRIES as usize]);
        self.groups[group][index] = V4_ENTRY_GROUP | child as u32;
        Ok(child)
    }

    /// The rule for `addr`, walked as the data path walks the map (lb-ebpf `firewall::v4_rule`).
    pub fn lookup(&self, addr: Ipv4Addr) -> Option<FwRule> {
        let addr = u32::from(addr);
        let mut entry = *self
            .groups
            .get((addr >> 16) as usize)?
            .get(((addr >> 12) & 0xF) as usize)?;
        for shift in [2 * V4_STRIDE_BITS, V4_STRIDE_BITS, 0] {
            if entry & V4_ENTRY_GROUP == 0 {
                break;
            }
            entry = *self
                .groups
                .get((entry & !V4_ENTRY_GROUP) as usize)?
                .get(((addr >> shift) & 0xF) as usize)?;
        }
        (entry != 0 && entry & V4_ENTRY_GROUP == 0).then(|| V4Entry::decode(entry))
    }
}

impl RuleSet {
    /// The ids whose rule is not the one `previous` had under that id (another name, or no
    /// rule): their counters hold another rule's hits and must start from zero. Ids stay
    /// positions in the config, so a rule that a change moves starts afresh under its new id,
    /// and counters are never carried over to another rule. (Ids that followed a rule by name
    /// would keep its count across a change, but a restarted agent could not rebuild them from
    /// the config, and adopted counters would then land on the wrong rules.)
    pub fn changed_ids(&self, previous: &RuleSet) -> Vec<u32> {
        self.rules
            .iter()
            .filter(|r| {
                !previous
                    .rules
                    .iter()
                    .any(|p| p.id == r.id && p.name == r.name)
            })
            .map(|r| r.id)
            .collect()
    }
}

/// Whether the IPv4 rules of `config` fit a half of `FW_V4_TABLE` of `half_groups` groups: the
/// table's shape only depends on the prefixes. `Err` says what to do.
pub fn v4_rules_fit(config: &Config, half_groups: u32) -> Result<(), String> {
    let rule = FwRule {
        id: 0,
        action: ACTION_DROP,
        reason: REASON_POLICY,
        _pad: [0; 2],
    };
    let fw = &config.firewall;
    let v4: Vec<(Ipv4Net, FwRule)> = fw
        .rules
        .iter()
        .flat_map(|r| &r.sources)
        .chain(&fw.bogons)
        .filter_map(|c| match c {
            IpNet::V4(net) => Some((*net, rule)),
            IpNet::V6(_) => None,
        })
        .collect();
    V4Table::build_within(&v4, half_groups)
        .map(|_| ())
        .map_err(|e| format!("{e:#}"))
}

/// Replaces the live rule set `previous` with `next` ([`apply`]), then zeroes the counters of
/// the ids that now name another rule. Zeroed after the switch, not before: until then the old
/// rule still counts on its id. The new rule's hits in the moment between are not counted.
pub fn replace(
    dataplane: &mut Dataplane,
    previous: &RuleSet,
    next: &RuleSet,
    host_addrs: &[IpAddr],
    vips: &[IpAddr],
) -> Result<u32> {
    let generation = apply(dataplane, next, host_addrs, vips)?;
    // At start-up there is no previous set: the ids are the positions an agent before a
    // restart gave the same config, so adopted counters keep their meaning.
    if !previous.rules.is_empty() {
        dataplane
            .reset_rule_counters(&next.changed_ids(previous))
            .context("zeroing the counters of ids that now name another rule")?;
    }
    Ok(generation)
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
    let v4: Vec<(Ipv4Net, FwRule)> = set
        .prefixes
        .iter()
        .filter_map(|(cidr, rule)| match cidr {
            IpNet::V4(net) => Some((*net, *rule)),
            IpNet::V6(_) => None,
        })
        .collect();
    let half = dataplane.v4_half_groups()?;
    let table = V4Table::build_within(&v4, half).context("building the IPv4 rule table")?;
    dataplane
        .write_v4_table(next, &table.groups)
        .context("writing the idle half of the IPv4 rule table")?;
    dataplane
        .clear_rule_generation(next)
        .context("clearing the idle rule generation")?;
    for (cidr, rule) in &set.prefixes {
        if let IpNet::V6(net) = cidr {
            dataplane.put_v6_prefix(next, net, rule)?;
        }
    }
    for entry in &set.scoped {
        dataplane.put_scoped_prefix(next, entry.scope, entry.cidr.as_ref(), &entry.rule)?;
    }
    // Addresses and ports are added before the switch and removed after it, so the host policy
    // never lacks an entry the new rules need.
    let addr_keys =
        |addrs: &[IpAddr]| -> Vec<AddrKey> { addrs.iter().map(|a| addr_key(*a)).collect() };
    let host_keys = addr_keys(host_addrs);
    let vip_keys = addr_keys(vips);
    dataplane.add_host_state(&host_keys, &vip_keys, &set.host_ports)?;
    dataplane.set_firewall(&Firewall {
        generation: next,
        epoch: next_epoch(live.epoch),
        v4_base: next * half,
        ..set.settings
    })?;
    dataplane.retain_host_state(&host_keys, &vip_keys, &set.host_ports)?;
    // The old half of the IPv4 table stays as it is (unreachable) until the next change
    // overwrites it; the tries' old keys go now.
    dataplane
        .clear_rule_generation(1 - next)
        .context("removing the old rule generation")?;
    Ok(next)
}

/// The firewall epoch after `live`. It never takes the values 0 and 1: flows adopted from a
/// version before epochs carry the rule generation (0 or 1) there, and must be re-checked once.
fn next_epoch(live: u32) -> u32 {
    live.wrapping_add(1).max(2)
}

/// The MAC address of `iface` (sysfs, which `ip netns exec` mounts for the namespace).
pub fn interface_mac(iface: &str) -> Result<[u8; 6]> {
    let path = format!("/sys/class/net/{iface}/address");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_mac(text.trim())
        .with_context(|| format!("{path}: {:?} is not a MAC address", text.trim()))
}

/// `aa:bb:cc:dd:ee:ff` (either case).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
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

/// The key of an address in `HOST_ADDRS` and `VIPS`.
pub fn addr_key(addr: IpAddr) -> AddrKey {
    let (addr, family) = addr_words(addr);
    AddrKey {
        addr,
        family: family as u32,
    }
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

#[cfg(test)]
mod tests;
