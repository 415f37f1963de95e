//! Every map of the data path. Sizes are defaults; the agent may resize the flow and NAT
//! tables at load time. The agent pins all of them so a restart adopts live state.
use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray},
};
use lb_common::{
    maps::{
        AddrKey, Backend, CachedFlowV4, CidrV6, Counters, Firewall, Flow, FlowKey, FlowKeyV4,
        FwRule, HostPort, NatReverse, RateKey, RuleCounters, Service, ServiceCidr, ServiceKey,
        Settings, TxPace, V4Group, Verdict, V4_HALF_GROUPS,
    },
    DEFAULT_FLOW_CAPACITY, DEFAULT_NAT_CAPACITY, DEFAULT_UNVERIFIED_CAPACITY, FLOW_CACHE_SLOTS,
    MAX_BACKENDS, MAX_PREFIXES, MAX_RULES, MAX_SERVICES, MAX_SNAT_ADDRS,
    RATE_BUCKETS as RATE_BUCKETS_CAPACITY, RING_SLOTS, RING_TABLES_PER_SERVICE,
};

#[map]
pub static SERVICES: HashMap<ServiceKey, Service> = HashMap::with_max_entries(MAX_SERVICES, 0);

#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Selection tables: backend ids, `RING_TABLES_PER_SERVICE` tables of `RING_SLOTS` per service.
#[map]
pub static RINGS: Array<u32> =
    Array::with_max_entries(MAX_SERVICES * RING_TABLES_PER_SERVICE * RING_SLOTS, 0);

/// NAT source addresses of services with more than one, from `service id * MAX_SNAT_ADDRS`.
#[map]
pub static SNAT_ADDRS: Array<[u32; 4]> = Array::with_max_entries(MAX_SERVICES * MAX_SNAT_ADDRS, 0);

/// Round-robin cursor per service, advanced with an atomic fetch-and-add.
#[map]
pub static RR_CURSORS: Array<u64> = Array::with_max_entries(MAX_SERVICES, 0);

/// Connections (TCP past its handshake), one table per family: IPv4 keys are 16 bytes, IPv6
/// ones 40.
#[map]
pub static FLOWS_V4: LruHashMap<FlowKeyV4, Flow> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_CAPACITY, 0);

#[map]
pub static FLOWS_V6: LruHashMap<FlowKey, Flow> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_CAPACITY, 0);

/// Flows anyone can create with a forged source: TCP before its handshake completes, and UDP
/// (`conntrack.rs`). Apart from the connections, so a flood of them only evicts its own kind.
#[map]
pub static UNVERIFIED_FLOWS: LruHashMap<FlowKey, Flow> =
    LruHashMap::with_max_entries(DEFAULT_UNVERIFIED_CAPACITY, 0);

/// Each CPU's copies of the DSR flows it forwards (`flow_cache.rs`). Not pinned: a cache, and
/// an empty one is always right.
#[map]
pub static FLOW_CACHE_V4: PerCpuArray<CachedFlowV4> =
    PerCpuArray::with_max_entries(FLOW_CACHE_SLOTS, 0);

/// Bumped by the agent when a backend changes state or generation: copies made before are stale.
/// Pinned, unlike the caches: during a restart the old program still runs on its own cache until
/// the new one replaces it, and must see the new agent's bumps.
#[map]
pub static FLOW_CACHE_EPOCH: Array<u32> = Array::with_max_entries(1, 0);

#[map]
pub static NAT_REVERSE: LruHashMap<FlowKey, NatReverse> =
    LruHashMap::with_max_entries(DEFAULT_NAT_CAPACITY, 0);

#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

#[map]
pub static SERVICE_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map]
pub static BACKEND_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map]
pub static VERDICT_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(Verdict::COUNT, 0);

// ---- Firewall ----

#[map]
pub static FIREWALL: Array<Firewall> = Array::with_max_entries(1, 0);

/// IPv4 source rules (allow, drop, log), longest prefix wins: a multibit trie the agent builds
/// and writes through mmap, one half per generation (lb-common `V4Group`).
#[map]
pub static FW_V4_TABLE: Array<V4Group> =
    Array::with_max_entries(2 * V4_HALF_GROUPS, BPF_F_MMAPABLE);

/// IPv6 source rules, longest prefix wins.
#[map]
pub static FW_V6: LpmTrie<CidrV6, FwRule> = LpmTrie::with_max_entries(MAX_PREFIXES, 0);

/// Per-service (and per host port) source rules.
#[map]
pub static SERVICE_SOURCES: LpmTrie<ServiceCidr, FwRule> =
    LpmTrie::with_max_entries(MAX_PREFIXES, 0);

#[map]
pub static RULE_STATS: PerCpuArray<RuleCounters> = PerCpuArray::with_max_entries(MAX_RULES, 0);

/// GCRA state (theoretical arrival time, ns) per source and limit.
#[map]
pub static RATE_BUCKETS: LruHashMap<RateKey, u64> =
    LruHashMap::with_max_entries(RATE_BUCKETS_CAPACITY, 0);

/// The load balancer's own addresses, for the host policy.
#[map]
pub static HOST_ADDRS: HashMap<AddrKey, u8> = HashMap::with_max_entries(256, 0);

/// Ports open on the host, with their source scope (0: any source).
#[map]
pub static HOST_PORTS: HashMap<HostPort, u32> = HashMap::with_max_entries(256, 0);

/// Every VIP, whatever the port: fragments addressed to one are dropped by policy.
#[map]
pub static VIPS: HashMap<AddrKey, u8> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// Programs `lb` hands a packet to (tail calls), by `lb_common::CALL_*` index: each starts with
/// a fresh stack. Filled by the agent at load time; pinned, so a program attached by an agent
/// that has exited still finds them (a new agent puts its own in).
#[map]
pub static CALLS: ProgramArray = ProgramArray::with_max_entries(lb_common::CALL_COUNT, 0);

// ---- Benchmarks ----

/// The pace of `xdp_tx_paced`, written by `lb-bench flood-gen`.
#[map]
pub static TX_PACE: Array<TxPace> = Array::with_max_entries(1, 0);
