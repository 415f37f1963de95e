//! How large each map of the data path is made, from what the config needs, and the kernel
//! memory that takes. The figures reported (status API, `/metrics`, `lb status`,
//! `lb map-memory`) are the kernel's own (`memlock` in the map's fdinfo, read by
//! [`crate::dataplane::Dataplane::map_memory`]); the estimate here only serves the budget check
//! of a config before anything is loaded, and is checked against the kernel's figures by the
//! test `tests/tests/kernel/map_memory.rs`.
use lb_common::{
    maps::{
        AddrKey, Backend, CachedFlowV4, CidrV6, Counters, Firewall, Flow, FlowKey, FlowKeyV4,
        FwRule, HostPort, NatReverse, RateKey, RuleCounters, Service, ServiceCidr, ServiceKey,
        Settings, TxPace, V4Group, Verdict, V4_CHILD_GROUPS, V4_ROOT_GROUPS,
    },
    names, FLOW_CACHE_SLOTS, MAX_BACKENDS, MAX_RULES, MAX_SERVICES, MAX_SNAT_ADDRS,
    RATE_BUCKETS as MAX_RATE_BUCKETS, RING_SLOTS, RING_TABLES_PER_SERVICE,
};
use serde::{Deserialize, Serialize};

/// Entries of a flow, NAT or rate table the config does not use (a map cannot have 0): enough
/// for a service a reload adds to work at a small scale until the next clean start sizes the
/// table for it (the reload's summary says so).
pub const UNUSED_TABLE_ENTRIES: u32 = 1024;
/// IPv4 firewall prefixes the rule table has room for at least, beyond the config's own: rules
/// added through the API (`lb fw add`) go there.
pub const MIN_V4_PREFIX_ROOM: u32 = 1024;
/// A half of `FW_V4_TABLE` is mapped on its own (mmap), so it is a whole number of pages:
/// 64 groups of 64 bytes.
const GROUPS_PER_PAGE: u32 = 4096 / std::mem::size_of::<V4Group>() as u32;

/// What a config asks of the maps: the figures their sizes and the memory estimate follow
/// (`Config::map_demand` reads them off a config).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MapDemand {
    /// `agent.flow_capacity`.
    pub flow_capacity: u32,
    /// `agent.unverified_capacity` (default: a quarter of `flow_capacity`).
    pub unverified_capacity: u32,
    /// A service has an IPv4 VIP.
    pub ipv4_services: bool,
    /// A service has an IPv6 VIP.
    pub ipv6_services: bool,
    /// A service is in NAT mode.
    pub nat_services: bool,
    /// Some packet may take a rate bucket: a service limit, or a host limit under the host
    /// policy.
    pub rate_limits: bool,
    /// IPv4 prefixes of the global rules and the bogons (what goes to `FW_V4_TABLE`).
    pub v4_prefixes: usize,
    /// IPv6 prefixes of the global rules and the bogons (what goes to `FW_V6`).
    pub v6_prefixes: usize,
    /// Entries of `SERVICE_SOURCES`: every service's allow and deny sources and open host
    /// port's sources, plus their defaults.
    pub scoped_sources: u64,
}

/// The sizes (`max_entries`) the agent gives the maps that depend on the config. The other
/// maps have the fixed sizes of lb-ebpf `maps.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapSizes {
    /// `flow_capacity` with an IPv4 service, else [`UNUSED_TABLE_ENTRIES`].
    pub flows_v4: u32,
    /// `flow_capacity` with an IPv6 service, else [`UNUSED_TABLE_ENTRIES`].
    pub flows_v6: u32,
    /// `unverified_capacity` (default: a quarter of `flow_capacity`).
    pub unverified_flows: u32,
    /// `flow_capacity` with a NAT service (each NAT flow holds one entry), else
    /// [`UNUSED_TABLE_ENTRIES`].
    pub nat_reverse: u32,
    /// With a rate limit somewhere: one bucket per source that may be opening a connection
    /// (`unverified_capacity`, at most lb-common's `RATE_BUCKETS`); else
    /// [`UNUSED_TABLE_ENTRIES`].
    pub rate_buckets: u32,
    /// Groups of each of the two halves of `FW_V4_TABLE`: the root, and room below it for
    /// twice the config's IPv4 prefixes (at least [`MIN_V4_PREFIX_ROOM`]), 3 groups each.
    pub fw_v4_half_groups: u32,
}

impl MapSizes {
    pub fn for_demand(demand: &MapDemand) -> Self {
        let flows = demand.flow_capacity;
        let unverified = demand.unverified_capacity;
        let sized = |used: bool, entries: u32| if used { entries } else { UNUSED_TABLE_ENTRIES };
        Self {
            flows_v4: sized(demand.ipv4_services, flows),
            flows_v6: sized(demand.ipv6_services, flows),
            unverified_flows: unverified,
            nat_reverse: sized(demand.nat_services, flows),
            rate_buckets: sized(demand.rate_limits, unverified.min(MAX_RATE_BUCKETS)),
            fw_v4_half_groups: v4_half_groups(demand.v4_prefixes),
        }
    }

    /// `max_entries` of each map sized here, by name.
    pub fn entries(&self) -> [(&'static str, u32); 6] {
        [
            (names::FLOWS_V4, self.flows_v4),
            (names::FLOWS_V6, self.flows_v6),
            (names::UNVERIFIED_FLOWS, self.unverified_flows),
            (names::NAT_REVERSE, self.nat_reverse),
            (names::RATE_BUCKETS, self.rate_buckets),
            (names::FW_V4_TABLE, 2 * self.fw_v4_half_groups),
        ]
    }

    /// The wanted `max_entries` of map `name`, if it is sized here.
    pub fn entries_of(&self, name: &str) -> Option<u32> {
        self.entries()
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, e)| *e)
    }
}

/// Groups of one half of `FW_V4_TABLE` for a config with `prefixes` IPv4 prefixes.
pub fn v4_half_groups(prefixes: usize) -> u32 {
    let room = (2 * prefixes as u64).max(u64::from(MIN_V4_PREFIX_ROOM));
    let below = (3 * room).min(u64::from(V4_CHILD_GROUPS)) as u32;
    V4_ROOT_GROUPS + below.div_ceil(GROUPS_PER_PAGE) * GROUPS_PER_PAGE
}

/// The kernel memory of one map, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapMemory {
    pub name: String,
    /// `memlock` of the map's fdinfo (the kernel's `map_mem_usage`).
    pub bytes: u64,
    pub max_entries: u32,
    /// What the running config wants, when it differs from `max_entries`: the map was adopted
    /// from an earlier agent with another size, or a reload changed what the config needs. A
    /// clean stop and start (SIGTERM unpins) applies it (docs/OPERATIONS.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wanted_entries: Option<u32>,
}

/// Every map's kernel memory, largest first, and their total.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryReport {
    pub total_bytes: u64,
    /// `agent.map_memory_budget_mib` in bytes.
    pub budget_bytes: u64,
    pub maps: Vec<MapMemory>,
}

impl MemoryReport {
    pub fn new(mut maps: Vec<MapMemory>, budget_bytes: u64) -> Self {
        maps.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.name.cmp(&b.name)));
        Self {
            total_bytes: maps.iter().map(|m| m.bytes).sum(),
            budget_bytes,
            maps,
        }
    }

    /// Maps whose size differs from what the config wants.
    pub fn resize_pending(&self) -> impl Iterator<Item = &MapMemory> {
        self.maps.iter().filter(|m| m.wanted_entries.is_some())
    }
}

/// Bytes as MiB with one decimal, for people.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

// ---- The estimate (the budget check) ----

/// `sizeof(struct htab_elem)` and the per-bucket cost of the kernel's hash tables (6.x), and
/// the node of an LPM trie: calibrated against `memlock` on this project's kernel.
const HTAB_ELEM: u64 = 48;
const HTAB_BUCKET: u64 = 16;
const LPM_NODE: u64 = 48;

fn round8(n: usize) -> u64 {
    (n as u64).div_ceil(8) * 8
}

fn hash<K, V>(entries: u32, lru: bool, cpus: u64) -> u64 {
    let entries = u64::from(entries);
    let elem = HTAB_ELEM + round8(std::mem::size_of::<K>()) + round8(std::mem::size_of::<V>());
    // A plain hash table preallocates one spare element per CPU.
    let elems = if lru { entries } else { entries + cpus };
    elems * elem + entries.next_power_of_two() * HTAB_BUCKET
}

fn array<V>(entries: u32) -> u64 {
    u64::from(entries) * round8(std::mem::size_of::<V>())
}

fn per_cpu_array<V>(entries: u32, cpus: u64) -> u64 {
    u64::from(entries) * (8 + round8(std::mem::size_of::<V>()) * cpus)
}

/// What the maps of a config with `demand` will take, by map name, before they exist.
/// `cpus`: the possible CPUs (per-CPU maps have a copy each).
pub fn estimate(demand: &MapDemand, cpus: u32) -> Vec<(&'static str, u64)> {
    let sizes = MapSizes::for_demand(demand);
    let cpus = u64::from(cpus.max(1));
    let v6_prefixes = demand.v6_prefixes as u64;
    let scoped = demand.scoped_sources;
    let lpm = |entries: u64, data: usize| {
        entries * (LPM_NODE + 4 + data as u64 + std::mem::size_of::<FwRule>() as u64)
    };
    vec![
        (
            names::SERVICES,
            hash::<ServiceKey, Service>(MAX_SERVICES, false, cpus),
        ),
        (names::BACKENDS, array::<Backend>(MAX_BACKENDS)),
        (
            names::RINGS,
            array::<u32>(MAX_SERVICES * RING_TABLES_PER_SERVICE * RING_SLOTS),
        ),
        (names::RR_CURSORS, array::<u64>(MAX_SERVICES)),
        (
            names::SNAT_ADDRS,
            array::<[u32; 4]>(MAX_SERVICES * MAX_SNAT_ADDRS),
        ),
        (
            names::FLOWS_V4,
            hash::<FlowKeyV4, Flow>(sizes.flows_v4, true, cpus),
        ),
        (
            names::FLOWS_V6,
            hash::<FlowKey, Flow>(sizes.flows_v6, true, cpus),
        ),
        (
            names::UNVERIFIED_FLOWS,
            hash::<FlowKey, Flow>(sizes.unverified_flows, true, cpus),
        ),
        (
            names::FLOW_CACHE_V4,
            per_cpu_array::<CachedFlowV4>(FLOW_CACHE_SLOTS, cpus),
        ),
        (names::FLOW_CACHE_EPOCH, array::<u32>(1)),
        (
            names::NAT_REVERSE,
            hash::<FlowKey, NatReverse>(sizes.nat_reverse, true, cpus),
        ),
        (names::SETTINGS, array::<Settings>(1)),
        (
            names::SERVICE_STATS,
            per_cpu_array::<Counters>(MAX_SERVICES, cpus),
        ),
        (
            names::BACKEND_STATS,
            per_cpu_array::<Counters>(MAX_BACKENDS, cpus),
        ),
        (
            names::VERDICT_STATS,
            per_cpu_array::<Counters>(Verdict::COUNT, cpus),
        ),
        (names::FIREWALL, array::<Firewall>(1)),
        (
            names::FW_V4_TABLE,
            array::<V4Group>(2 * sizes.fw_v4_half_groups),
        ),
        (
            names::FW_V6,
            lpm(v6_prefixes, std::mem::size_of::<CidrV6>()),
        ),
        (
            names::SERVICE_SOURCES,
            lpm(scoped, std::mem::size_of::<ServiceCidr>()),
        ),
        (
            names::RULE_STATS,
            per_cpu_array::<RuleCounters>(MAX_RULES, cpus),
        ),
        (
            names::RATE_BUCKETS,
            hash::<RateKey, u64>(sizes.rate_buckets, true, cpus),
        ),
        (names::HOST_ADDRS, hash::<AddrKey, u8>(256, false, cpus)),
        (names::HOST_PORTS, hash::<HostPort, u32>(256, false, cpus)),
        (names::VIPS, hash::<AddrKey, u8>(MAX_SERVICES, false, cpus)),
        (names::TX_PACE, array::<TxPace>(1)),
    ]
}

/// The estimate's total.
pub fn estimate_total(demand: &MapDemand, cpus: u32) -> u64 {
    estimate(demand, cpus).iter().map(|(_, b)| b).sum()
}

/// Possible CPUs (what per-CPU maps are allocated for), 1 if unknown.
#[cfg(not(fuzzing))]
pub fn possible_cpus() -> u32 {
    aya::util::nr_cpus().map_or(1, |n| n as u32)
}

/// The config fuzz target compiles this module without aya; the count only scales an estimate.
#[cfg(fuzzing)]
pub fn possible_cpus() -> u32 {
    2
}
