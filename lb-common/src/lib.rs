//! Types, capacities and pure logic shared by the XDP program (`lb-ebpf`) and the agent
//! (`lb-userspace`). Everything here is `no_std` and `#[repr(C)]` with explicit padding, so
//! the kernel and user space agree on every byte.
#![no_std]

pub mod maps;
pub mod model;

/// Services the data path can hold (VIP, port, protocol).
pub const MAX_SERVICES: u32 = 256;
/// Backends across all services; a backend id indexes the backend table.
pub const MAX_BACKENDS: u32 = 4096;
/// Slots of one selection table; weighted round robin expands weights into slots.
pub const RING_SLOTS: u32 = 1024;
/// Each service owns two selection tables: the agent fills the idle one, then flips.
pub const RING_TABLES_PER_SERVICE: u32 = 2;
/// Default size of each flow table (IPv4, IPv6; LRU); the agent may set another at load time.
pub const DEFAULT_FLOW_CAPACITY: u32 = 1 << 20;
/// Default size of the table of unverified flows (TCP before its handshake completes, and UDP):
/// anyone can create these with a forged source, so they live apart from the connections and
/// can only evict each other.
pub const DEFAULT_UNVERIFIED_CAPACITY: u32 = 1 << 18;
/// Slots of each CPU's flow cache (a power of two: the slot is the top bits of a hash).
/// 4096 slots of 48 bytes, 192 KiB per CPU: small enough to stay in the CPU's cache when many
/// flows take turns, so a miss costs little.
pub const FLOW_CACHE_SLOTS: u32 = 1 << 12;
/// How long a flow-cache copy serves before the flow table is asked again, in kernel ticks
/// (32 ms at HZ=1000, 128 ms at HZ=250): that lookup is what keeps a busy flow young in the
/// table's LRU.
pub const FLOW_CACHE_REFRESH_JIFFIES: u64 = 32;
/// Default size of each NAT table (LRU); the agent may set another at load time.
pub const DEFAULT_NAT_CAPACITY: u32 = 1 << 20;
/// Firewall rules (CIDR prefixes and service source rules share the id space).
pub const MAX_RULES: u32 = 65536;
/// Prefixes per CIDR trie, both generations together (a new set is written beside the live one).
pub const MAX_PREFIXES: u32 = 2 * 131072;
/// Rate-limit buckets (LRU): sources being limited at once.
pub const RATE_BUCKETS: u32 = 262144;
/// How many NAT ports a new flow tries before it is dropped as `NatPortsExhausted`.
pub const NAT_PORT_TRIES: u32 = 8;
/// Of those, how many it then tries to take over from a flow that has ended: each costs flow
/// look-ups. With three the verifier refuses `lb_generic_road` (too complex); a fourth also
/// overflows `lb`'s 512-byte stack.
pub const NAT_TAKEOVER_TRIES: u32 = 2;
/// Source addresses a NAT service may use towards its backends (`SNAT_ADDRS`): each one adds
/// the whole port range to the connections a backend can hold at once.
pub const MAX_SNAT_ADDRS: u32 = 8;

/// Names of the maps and programs in the object, used by both sides.
/// Indexes of the programs `lb` tail-calls (map `CALLS`): the slow road (fragments, frames to
/// a group MAC, ICMP errors).
pub const CALL_SLOW_ROAD: u32 = 0;
/// Every packet the common IPv4 road does not take (`process` in lb-ebpf).
pub const CALL_GENERIC_ROAD: u32 = 1;
pub const CALL_COUNT: u32 = 2;

pub mod names {
    pub const PROGRAM_LB: &str = "lb";
    pub const PROGRAM_SLOW_ROAD: &str = "lb_slow_road";
    pub const PROGRAM_GENERIC_ROAD: &str = "lb_generic_road";
    pub const CALLS: &str = "CALLS";
    pub const PROGRAM_PASS: &str = "xdp_pass";
    pub const PROGRAM_TX: &str = "xdp_tx";
    pub const PROGRAM_TX_PACED: &str = "xdp_tx_paced";
    pub const PROGRAM_TX_SPOOFED: &str = "xdp_tx_spoofed";
    pub const TX_PACE: &str = "TX_PACE";
    pub const SERVICES: &str = "SERVICES";
    pub const BACKENDS: &str = "BACKENDS";
    pub const RINGS: &str = "RINGS";
    pub const RR_CURSORS: &str = "RR_CURSORS";
    pub const FLOWS_V4: &str = "FLOWS_V4";
    pub const FLOWS_V6: &str = "FLOWS_V6";
    pub const UNVERIFIED_FLOWS: &str = "UNVERIFIED_FLOWS";
    pub const FLOW_CACHE_V4: &str = "FLOW_CACHE_V4";
    pub const FLOW_CACHE_EPOCH: &str = "FLOW_CACHE_EPOCH";
    pub const NAT_REVERSE: &str = "NAT_REVERSE";
    pub const SETTINGS: &str = "SETTINGS";
    pub const SERVICE_STATS: &str = "SERVICE_STATS";
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    pub const VERDICT_STATS: &str = "VERDICT_STATS";
    pub const FIREWALL: &str = "FIREWALL";
    pub const FW_V4_TABLE: &str = "FW_V4_TABLE";
    pub const FW_V6: &str = "FW_V6";
    pub const SERVICE_SOURCES: &str = "SERVICE_SOURCES";
    pub const RULE_STATS: &str = "RULE_STATS";
    pub const RATE_BUCKETS: &str = "RATE_BUCKETS";
    pub const HOST_ADDRS: &str = "HOST_ADDRS";
    pub const HOST_PORTS: &str = "HOST_PORTS";
    pub const VIPS: &str = "VIPS";
    pub const SNAT_ADDRS: &str = "SNAT_ADDRS";
    /// Every map the agent pins and adopts across restarts.
    pub const PINNED_MAPS: [&str; 24] = [
        // Pinned so that the programs it names stay reachable through a restart of the agent.
        CALLS,
        SERVICES,
        BACKENDS,
        FLOW_CACHE_EPOCH,
        RINGS,
        RR_CURSORS,
        FLOWS_V4,
        FLOWS_V6,
        UNVERIFIED_FLOWS,
        NAT_REVERSE,
        SETTINGS,
        SERVICE_STATS,
        BACKEND_STATS,
        VERDICT_STATS,
        FIREWALL,
        FW_V4_TABLE,
        FW_V6,
        SERVICE_SOURCES,
        RULE_STATS,
        RATE_BUCKETS,
        HOST_ADDRS,
        HOST_PORTS,
        VIPS,
        SNAT_ADDRS,
    ];
}
