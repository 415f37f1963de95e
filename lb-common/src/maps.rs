//! Keys and values of every map. Addresses are kept as 16 bytes in network order; an IPv4
//! address fills the first 4 and `family` tells which one it is. Ports are in network order, as
//! on the wire, so the data path never swaps bytes.

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Forwarding mode of a service.
pub const MODE_DSR: u8 = 1;
pub const MODE_NAT: u8 = 2;

/// Backend selection of a service. Round robin walks the selection table with a shared
/// cursor; weighted round robin is the same walk over a table the agent expands by weight.
pub const ALGORITHM_ROUND_ROBIN: u8 = 1;

/// Backend states. Only `ACTIVE` backends appear in selection tables; `DRAINING` ones keep
/// their flows; flows on `DOWN` or `UNUSED` backends are re-balanced.
pub const BACKEND_UNUSED: u8 = 0;
pub const BACKEND_ACTIVE: u8 = 1;
pub const BACKEND_DRAINING: u8 = 2;
pub const BACKEND_DOWN: u8 = 3;

macro_rules! pod {
    ($($t:ty),* $(,)?) => {$(
        #[cfg(feature = "user")]
        // SAFETY: `#[repr(C)]`, only integer fields, no implicit padding (checked by the size
        // assertions below).
        unsafe impl aya::Pod for $t {}
    )*};
}

/// A service: (VIP, port, protocol). `SERVICES` maps it to [`Service`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub addr: [u32; 4],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    pub id: u32,
    pub mode: u8,
    pub algorithm: u8,
    /// NAT mode: how many source addresses the service uses towards its backends. With more
    /// than one they are in `SNAT_ADDRS` from `id * MAX_SNAT_ADDRS`; `snat_addr` is the first.
    pub snat_count: u8,
    pub _pad: u8,
    /// Index in `RINGS` of the first slot of the active selection table.
    pub ring_offset: u32,
    /// Slots in use in the active selection table; 0 means no active backend.
    pub ring_len: u32,
    /// NAT mode: the load balancer's own address that backends reply to (the first, if several).
    pub snat_addr: [u32; 4],
    /// New connections (TCP SYN, or a new UDP flow) per source address (/32, /64).
    pub syn_rate: Rate,
    /// Packets per source address.
    pub packet_rate: Rate,
    /// New connections from all sources together (a flood from many addresses).
    pub syn_budget: Rate,
}

/// One backend, indexed by its id in `BACKENDS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: [u32; 4],
    pub port: u16,
    pub family: u8,
    pub state: u8,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    /// Bumped each time the id is given to another backend, so stale flows notice.
    pub generation: u32,
    /// The service this backend serves (lets a restarted agent adopt ids).
    pub service_id: u32,
}

/// A flow as seen in the packet: source and destination of that direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u32; 4],
    pub dst: [u32; 4],
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// `FLOWS_V4` key: an IPv4 flow in 16 bytes. The flow table's cost is mostly hashing and
/// comparing the key, so IPv4 (most traffic) does not pay for 40-byte IPv6-sized keys.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKeyV4 {
    pub src: u32,
    pub dst: u32,
    pub src_port: u16,
    pub dst_port: u16,
    /// The IP protocol, widened to fill the last word: a key without padding is built with
    /// plain stores (zeroing a 3-byte pad made the BPF build call a byte-loop memset).
    pub proto: u32,
}

impl FlowKeyV4 {
    pub const fn from_flow(key: &FlowKey) -> Self {
        FlowKeyV4 {
            src: key.src[0],
            dst: key.dst[0],
            src_port: key.src_port,
            dst_port: key.dst_port,
            proto: key.proto as u32,
        }
    }

    pub const fn to_flow(&self) -> FlowKey {
        FlowKey {
            src: [self.src, 0, 0, 0],
            dst: [self.dst, 0, 0, 0],
            src_port: self.src_port,
            dst_port: self.dst_port,
            proto: self.proto as u8,
            family: FAMILY_V4,
            _pad: [0; 2],
        }
    }
}

/// Flow value, in `FLOWS_V4` / `FLOWS_V6` (TCP connections whose handshake completed) and in
/// `UNVERIFIED_FLOWS` (TCP before that, and UDP): where a client flow to a service goes, with
/// everything its later packets need, so an established packet costs one hash lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub backend_id: u32,
    pub backend_generation: u32,
    pub service_id: u32,
    /// Firewall epoch the flow was admitted (or last re-checked) under; another one re-checks it.
    pub fw_epoch: u32,
    /// NAT mode: the source address towards the backend.
    pub snat_addr: [u32; 4],
    /// When the flow last sent, on the data path's flow clock (seconds, [`flow_clock`]); written
    /// at most once a second per flow, so an established packet costs no write.
    pub last_seen: u32,
    /// NAT mode: the source port towards the backend (network order).
    pub nat_port: u16,
    /// `MODE_DSR` or `MODE_NAT`, as the service was when the flow began.
    pub mode: u8,
    /// `FLOW_*` flags.
    pub flags: u8,
    /// `STATE_*`: where the flow is in its life, which sets how long it may stay idle.
    pub state: u8,
    /// Padding as scalars: zeroing a byte array made the BPF build call a byte-loop memset,
    /// which the verifier walks byte by byte.
    pub _pad: u8,
    pub _pad2: u16,
}

/// Flow states (`Flow::state`), as a load balancer that sees the client's side of TCP can tell
/// them (NAT mode also sees the backend's FIN and RST).
/// A TCP SYN was balanced; the handshake has not completed. Lives in `UNVERIFIED_FLOWS`.
pub const STATE_OPENING: u8 = 1;
/// The client acknowledged after its SYN: a connection. Lives in `FLOWS_V4` / `FLOWS_V6`.
pub const STATE_ESTABLISHED: u8 = 2;
/// A FIN or RST was seen: the connection ends; a SYN on the same addresses and ports starts a
/// new one.
pub const STATE_CLOSING: u8 = 3;
/// A UDP flow (no handshake to tell a real client from a forged one). Lives in
/// `UNVERIFIED_FLOWS`.
pub const STATE_UDP: u8 = 4;

/// The data path's flow clock for a kernel time in ns: whole seconds. A flow is alive while
/// `now - last_seen <= timeout of its state` (wrapping arithmetic; 136 years to wrap).
pub const fn flow_clock(ktime_ns: u64) -> u32 {
    (ktime_ns / 1_000_000_000) as u32
}

/// How long a flow of each state may stay idle, in seconds of the flow clock. The fields are in
/// the order of the `STATE_*` values.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowTimeouts {
    pub tcp_opening: u32,
    pub tcp_established: u32,
    pub tcp_closing: u32,
    pub udp: u32,
}

impl FlowTimeouts {
    /// IPVS's defaults for established TCP (15 min); short for the ends of a connection, so a
    /// forged SYN or a finished connection gives its entry and NAT port back soon.
    pub const DEFAULT: FlowTimeouts = FlowTimeouts {
        tcp_opening: 10,
        tcp_established: 900,
        tcp_closing: 10,
        udp: 60,
    };

    /// The idle limit of a state, read by position (states are 1..=4 in field order), so the
    /// data path reads it without a branch per state.
    #[inline(always)]
    pub fn of(&self, state: u8) -> u32 {
        let limits = self as *const FlowTimeouts as *const u32;
        // SAFETY: four u32 fields in `repr(C)` order; the index is masked to 0..=3.
        unsafe { *limits.add((state.wrapping_sub(1) & 3) as usize) }
    }
}

impl Default for FlowTimeouts {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// `FLOW_CACHE_V4` value: a per-CPU copy of a DSR flow's `FLOWS_V4` entry, found by a cheap
/// hash of its key, so that the busy flows of a CPU skip the flow table's lookup (whose
/// hashing and calls cost as much as the rest of the program).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedFlowV4 {
    pub key: FlowKeyV4,
    pub backend_id: u32,
    pub backend_generation: u32,
    pub service_id: u32,
    pub fw_epoch: u32,
    /// `FLOW_CACHE_EPOCH` when copied: the agent bumps it to make every copy stale.
    pub epoch: u32,
    pub _pad: u32,
    /// Kernel jiffies when the entry was last copied from the flow table.
    pub copied_at: u64,
}

/// The service limits packets per source: every packet of the flow is counted.
pub const FLOW_PACKET_RATE: u8 = 1;

/// `NAT_REVERSE` value, keyed by the reply's [`FlowKey`] (backend -> SNAT address:NAT port).
/// The entry holds the port for the client flow it names while that flow lives; once the flow
/// has expired or closed, a new flow takes the port over by bumping `claim` with a
/// compare-and-swap, so two CPUs can never both take it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatReverse {
    pub client_addr: [u32; 4],
    pub vip: [u32; 4],
    pub client_port: u16,
    pub vip_port: u16,
    pub client_mac: [u8; 6],
    pub _pad: [u8; 2],
    pub service_id: u32,
    pub backend_id: u32,
    /// Bumped by each flow that takes the port over.
    pub claim: u32,
}

impl NatReverse {
    /// The client flow this entry answers, as the client sends it.
    #[inline(always)]
    pub const fn client_flow(&self, proto: u8, family: u8) -> FlowKey {
        FlowKey {
            src: self.client_addr,
            dst: self.vip,
            src_port: self.client_port,
            dst_port: self.vip_port,
            proto,
            family,
            _pad: [0; 2],
        }
    }
}

/// `TX_PACE` element 0: the pace and the frame headers of the benchmarks' flood generator
/// (`xdp_tx`, `xdp_tx_paced`, `xdp_tx_spoofed`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxPace {
    /// Nanoseconds between two frames (0: no pacing).
    pub interval_ns: u64,
    /// When the next frame may leave (bpf_ktime_get_ns).
    pub next_ns: u64,
    /// `xdp_tx_spoofed` only: the bits of the IPv4 source address to draw at random, as the
    /// address sits in the frame (network order; 0: the address is kept).
    pub src_mask: u32,
    /// `xdp_tx_spoofed` only: source ports are drawn from `port_min..=port_min + port_span`.
    pub port_min: u16,
    pub port_span: u16,
    /// The frame's first [`TX_HEADER_BYTES`] as the generator built it, written back before
    /// each send: live-frames mode recycles a page without resetting it, so a frame would
    /// otherwise leave carrying whatever the receiver rewrote in it (a load balancer's MACs).
    pub headers: [u8; TX_HEADER_BYTES],
    pub _pad: [u8; 2],
}

/// Ethernet, IPv4 without options and a TCP header without options; a UDP frame's first 12
/// bytes of payload with it.
pub const TX_HEADER_BYTES: usize = 54;

/// Data-path wide settings, element 0 of `SETTINGS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// NAT source ports are taken from `nat_port_min..=nat_port_max` (host order).
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    /// 0 in service: the flow clock is the kernel's. Otherwise the flow clock reads this value,
    /// so that tests decide what time it is.
    pub test_clock: u32,
    pub timeouts: FlowTimeouts,
}

impl Default for Settings {
    fn default() -> Self {
        // Below Linux's default ephemeral range, so the host's own connections never collide.
        Self {
            nat_port_min: 1024,
            nat_port_max: 32767,
            test_clock: 0,
            timeouts: FlowTimeouts::DEFAULT,
        }
    }
}

/// Per-CPU counters of a service, a backend or a verdict.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// `SERVICE_STATS` only: new flows of the service dropped as `drop_nat_ports_exhausted`
    /// (0 in the other maps).
    pub nat_ports_exhausted: u64,
}

impl Counters {
    pub fn add(&mut self, other: &Counters) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
        self.new_flows = self.new_flows.wrapping_add(other.new_flows);
        self.nat_ports_exhausted = self
            .nat_ports_exhausted
            .wrapping_add(other.nat_ports_exhausted);
    }
}

pod!(
    ServiceKey,
    Service,
    Backend,
    FlowKey,
    FlowKeyV4,
    Flow,
    CachedFlowV4,
    NatReverse,
    Settings,
    FlowTimeouts,
    Counters,
    TxPace
);
pod!(
    Rate,
    RateKey,
    Firewall,
    FwRule,
    CidrV6,
    ServiceCidr,
    AddrKey,
    HostPort,
    RuleCounters
);

const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);
const _: () = assert!(core::mem::size_of::<Service>() == 80);
const _: () = assert!(core::mem::size_of::<Backend>() == 36);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<FlowKeyV4>() == 16);
const _: () = assert!(core::mem::size_of::<Flow>() == 44);
const _: () = assert!(core::mem::size_of::<CachedFlowV4>() == 48);
const _: () = assert!(core::mem::size_of::<NatReverse>() == 56);
const _: () = assert!(core::mem::size_of::<Settings>() == 24);
const _: () = assert!(core::mem::size_of::<Counters>() == 32);

// ---- Firewall ----

/// A token bucket as GCRA: one packet every `interval_ns`, bursts of up to
/// `tolerance_ns / interval_ns + 1`. `interval_ns == 0` means no limit. The agent turns
/// "rate per second, burst" into these so the data path never divides.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rate {
    pub interval_ns: u64,
    pub tolerance_ns: u64,
}

impl Rate {
    pub const UNLIMITED: Rate = Rate {
        interval_ns: 0,
        tolerance_ns: 0,
    };

    /// `per_second` packets a second on average, `burst` at once; 0 per second: no limit.
    pub const fn per_second(per_second: u32, burst: u32) -> Rate {
        if per_second == 0 {
            return Rate::UNLIMITED;
        }
        let interval_ns = 1_000_000_000 / per_second as u64;
        let burst = if burst == 0 { 1 } else { burst as u64 };
        Rate {
            interval_ns: if interval_ns == 0 { 1 } else { interval_ns },
            tolerance_ns: interval_ns * (burst - 1),
        }
    }

    pub const fn is_limited(&self) -> bool {
        self.interval_ns != 0
    }
}

/// What a rate bucket counts.
pub const RATE_SYN: u8 = 1;
pub const RATE_PACKETS: u8 = 2;
pub const RATE_SYN_BUDGET: u8 = 3;
pub const RATE_ICMP_ECHO: u8 = 4;
/// `RateKey::scope` of host-wide limits (traffic to the load balancer itself).
pub const SCOPE_HOST: u32 = u32::MAX;

/// `RATE_BUCKETS` key: a source (/32 for IPv4, /64 for IPv6; zero for a service's budget),
/// the service (or `SCOPE_HOST`) and what is counted. The value is the bucket's theoretical
/// arrival time in ns (GCRA).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RateKey {
    pub addr: [u32; 4],
    pub scope: u32,
    pub kind: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}

/// Rule actions.
pub const ACTION_ALLOW: u8 = 1;
pub const ACTION_DROP: u8 = 2;
/// Dry run: counted and reported, the packet goes on as if no rule matched.
pub const ACTION_LOG: u8 = 3;

/// Why a rule exists, so a drop is counted under the right reason.
pub const REASON_POLICY: u8 = 0;
/// A bogon / anti-spoofing prefix on the outside interface.
pub const REASON_SPOOF: u8 = 1;

/// Value of the CIDR tries: the rule that owns the prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FwRule {
    /// Index in `RULE_STATS`.
    pub id: u32,
    pub action: u8,
    pub reason: u8,
    pub _pad: [u8; 2],
}

/// `FW_V4_TABLE`: the IPv4 source rules as a multibit trie with strides 20-4-4-4, built by the
/// agent and read by the data path with at most four array look-ups (no pointer chase per
/// prefix bit, as an LPM trie does). Every element is a group of 16 entries (one cache line).
/// The map holds two halves, one per rule-set generation, each of at most `V4_HALF_GROUPS`
/// groups (the agent sizes them for the config's rules at load time): the agent writes the idle
/// half, then switches `Firewall::generation` and `Firewall::v4_base` in one write. In a half, groups
/// `0..V4_ROOT_GROUPS` are the root: the address's top 16 bits pick the group, the next 4 bits
/// the entry. An entry is 0 (no rule), `V4_ENTRY_GROUP | g` (group `g` of the same half holds
/// the next 4 bits), or a rule (`V4Entry::rule`). Prefixes are expanded to the stride and longer
/// ones pushed over shorter ones at build time, so the entry reached last is the longest match.
pub type V4Group = [u32; V4_GROUP_ENTRIES as usize];
pub const V4_GROUP_ENTRIES: u32 = 16;
/// Address bits the root resolves (top 16 pick the group, 4 more the entry).
pub const V4_ROOT_BITS: u32 = 20;
pub const V4_ROOT_GROUPS: u32 = 1 << 16;
/// Bits each level below the root resolves.
pub const V4_STRIDE_BITS: u32 = 4;
/// Most groups below the root in one half: a prefix needs at most one new group per level below
/// the root (3), so any rule set of `MAX_PREFIXES / 2` prefixes fits.
pub const V4_CHILD_GROUPS: u32 = 3 * (crate::MAX_PREFIXES / 2);
pub const V4_HALF_GROUPS: u32 = V4_ROOT_GROUPS + V4_CHILD_GROUPS;
/// Marks an entry that points to a group.
pub const V4_ENTRY_GROUP: u32 = 1 << 31;

/// A rule as an entry of `FW_V4_TABLE`: rule id (bits 0-15), action (16-17), reason (18). The
/// action is never 0, so a rule entry is never the empty entry.
pub struct V4Entry;

impl V4Entry {
    const ACTION_SHIFT: u32 = 16;
    const REASON_SHIFT: u32 = 18;

    /// `None` if the rule id does not fit in 16 bits (`MAX_RULES`).
    pub const fn rule(rule: &FwRule) -> Option<u32> {
        if rule.id >= crate::MAX_RULES || rule.action == 0 || rule.action > 3 || rule.reason > 1 {
            return None;
        }
        Some(
            rule.id
                | (rule.action as u32) << Self::ACTION_SHIFT
                | (rule.reason as u32) << Self::REASON_SHIFT,
        )
    }

    /// The rule of a non-empty, non-group entry.
    #[inline(always)]
    pub const fn decode(entry: u32) -> FwRule {
        FwRule {
            id: entry & 0xFFFF,
            action: ((entry >> Self::ACTION_SHIFT) & 3) as u8,
            reason: ((entry >> Self::REASON_SHIFT) & 1) as u8,
            _pad: [0; 2],
        }
    }
}

/// LPM data of `FW_V6`: the rule-set generation (so a new set is written beside the live one
/// and switched to at once), then the source address. Prefix length = 8 + the CIDR's length.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CidrV6 {
    pub generation: u8,
    pub addr: [u8; 16],
}

/// LPM data of `SERVICE_SOURCES`: generation, scope (a service id, big endian: matched whole,
/// first), the address family (so an IPv4 prefix never matches the first bytes of an IPv6
/// source), then the source address (IPv4 in the first 4 bytes). A scope's catch-all has
/// prefix length `SERVICE_CIDR_PREFIX_BITS` (any family); a source prefix has
/// `SERVICE_CIDR_PREFIX_BITS + SERVICE_CIDR_FAMILY_BITS` + the CIDR's.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceCidr {
    pub generation: u8,
    pub service: [u8; 4],
    pub family: u8,
    pub addr: [u8; 16],
}

/// Bits of the prefix before the address in the LPM keys above and in `FW_V6`'s.
pub const CIDR_GENERATION_BITS: u32 = 8;
pub const SERVICE_CIDR_PREFIX_BITS: u32 = 8 + 32;
pub const SERVICE_CIDR_FAMILY_BITS: u32 = 8;

/// `HOST_ADDRS` and `VIPS` key: an address (of the load balancer itself, or a VIP).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrKey {
    pub addr: [u32; 4],
    /// `FAMILY_V4` or `FAMILY_V6`, widened like `FlowKeyV4::proto` (no padding to zero).
    pub family: u32,
}

/// `HOST_PORTS` key: a port open on the load balancer itself (admin: SSH, the status API). The
/// value is a source scope: 0 admits any source, else only sources of that scope's rules in
/// `SERVICE_SOURCES` (scopes above `MAX_SERVICES` belong to host ports).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// Network order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// Firewall switches, element 0 of `FIREWALL`. Written whole by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Firewall {
    /// `FW_*` flags.
    pub flags: u32,
    /// Generation of the live rule set: the half of `FW_V4_TABLE` and the keys of the LPM tries
    /// (0 or 1).
    pub generation: u32,
    /// Replies to the host's own connections arrive on these ports (host order).
    pub ephemeral_min: u16,
    pub ephemeral_max: u16,
    /// Counts rule-set changes (wrapping). Flows record the epoch they were admitted under: the
    /// generation alone, 0 or 1, would let a flow skip its re-check after two changes.
    pub epoch: u32,
    /// ICMP echo requests to the host, per source.
    pub host_icmp_echo: Rate,
    /// New connections to the host's open ports, per source.
    pub host_syn_rate: Rate,
    /// Index in `FW_V4_TABLE` of the live half's first group: `generation` times the groups of
    /// a half, which the agent sets when it loads the table (sized for the config's rules).
    pub v4_base: u32,
    /// The MAC address of the interface the program is attached to, as it sits in a frame. A
    /// unicast frame sent to another MAC is never balanced (`PassOtherHost`): a switch flooding
    /// an unknown destination, or another load balancer's traffic on the segment, would
    /// otherwise be forwarded a second time, from the destination's own MAC. All zero: not
    /// known (a program not attached by the agent), no check.
    pub own_mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// There are IPv4 rules in `FW_V4_TABLE` / IPv6 rules in `FW_V6` (skip the lookup otherwise).
pub const FW_V4_RULES: u32 = 1 << 0;
pub const FW_V6_RULES: u32 = 1 << 1;
/// Drop IPv4 fragments addressed to a VIP (they cannot be balanced).
pub const FW_DROP_FRAGMENTS: u32 = 1 << 2;
/// Traffic to the host's own addresses: only open ports, replies, rate-limited echo.
pub const FW_HOST_POLICY: u32 = 1 << 3;
/// Drop TCP packets with impossible flag combinations.
pub const FW_TCP_FLAG_CHECKS: u32 = 1 << 4;
/// Some service or host port has source rules in `SERVICE_SOURCES`. A scope with rules has a
/// catch-all `drop` entry (the scope's whole prefix), so a scope without any entry admits all.
pub const FW_SCOPED_SOURCES: u32 = 1 << 5;

/// Per-CPU counters of a rule. When it last matched is dated by the agent (`RuleActivity`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleCounters {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<Rate>() == 16);
const _: () = assert!(core::mem::size_of::<RateKey>() == 24);
const _: () = assert!(core::mem::size_of::<FwRule>() == 8);
const _: () = assert!(core::mem::size_of::<V4Group>() == 64);
const _: () = assert!(core::mem::size_of::<CidrV6>() == 17);
const _: () = assert!(core::mem::size_of::<ServiceCidr>() == 22);
const _: () = assert!(core::mem::size_of::<AddrKey>() == 20);
const _: () = assert!(core::mem::size_of::<HostPort>() == 4);
const _: () = assert!(core::mem::size_of::<Firewall>() == 64);
const _: () = assert!(core::mem::size_of::<RuleCounters>() == 16);

/// What the program did with a packet; indexes `VERDICT_STATS`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not IPv4/IPv6, or not TCP/UDP: the kernel's business.
    PassNotIp = 0,
    /// IP but not addressed to a service nor a NAT reply.
    PassNoService = 1,
    /// IPv4 fragment: no ports to balance on, left to the kernel.
    PassFragment = 2,
    ForwardDsr = 3,
    ForwardNat = 4,
    NatReply = 5,
    /// Header shorter than it claims, or bad IHL / lengths.
    DropMalformed = 6,
    /// Addressed to a service that has no active backend.
    DropNoBackend = 7,
    /// Every NAT port tried for the new flow was taken.
    DropNatPortsExhausted = 8,
    /// A map the data path needs was missing an entry it must have (agent bug).
    DropInternal = 9,
    /// The source matched a `drop` CIDR rule.
    DropDenied = 10,
    /// The service only admits sources its rules allow.
    DropServiceSource = 11,
    /// Addressed to the load balancer itself, on a port that is not open.
    DropHostPolicy = 12,
    /// Over a per-source rate (new connections, packets, ICMP echo).
    DropRateLimited = 13,
    /// Over the service's budget of new connections from all sources.
    DropSynBudget = 14,
    /// An IPv4 fragment addressed to a VIP.
    DropFragment = 15,
    /// TCP flags no real stack sends (SYN+FIN, SYN+RST, none, FIN+PSH+URG).
    DropTcpFlags = 16,
    /// Source equals destination, or a bogon / spoofed source prefix.
    DropSpoofed = 17,
    /// ICMP and other protocols to the host pass the firewall and go to the kernel.
    PassHost = 18,
    /// A TCP packet other than a SYN, to a service, that belongs to no live flow (a forged ACK,
    /// or the rest of a connection whose entry expired): it creates nothing.
    DropNoFlow = 19,
    /// An ICMP error (unreachable, fragmentation needed, packet too big, time exceeded) about a
    /// live flow, sent on to the end that holds the flow: its backend, or a NAT flow's client.
    ForwardIcmp = 20,
    /// A unicast frame sent to another host's MAC address (`Firewall::own_mac`): never
    /// balanced, left to the kernel as it is.
    PassOtherHost = 21,
}

impl Verdict {
    pub const COUNT: u32 = 22;
    pub const ALL: [Verdict; Self::COUNT as usize] = [
        Verdict::PassNotIp,
        Verdict::PassNoService,
        Verdict::PassFragment,
        Verdict::ForwardDsr,
        Verdict::ForwardNat,
        Verdict::NatReply,
        Verdict::DropMalformed,
        Verdict::DropNoBackend,
        Verdict::DropNatPortsExhausted,
        Verdict::DropInternal,
        Verdict::DropDenied,
        Verdict::DropServiceSource,
        Verdict::DropHostPolicy,
        Verdict::DropRateLimited,
        Verdict::DropSynBudget,
        Verdict::DropFragment,
        Verdict::DropTcpFlags,
        Verdict::DropSpoofed,
        Verdict::PassHost,
        Verdict::DropNoFlow,
        Verdict::ForwardIcmp,
        Verdict::PassOtherHost,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Verdict::PassNotIp => "pass_not_ip",
            Verdict::PassNoService => "pass_no_service",
            Verdict::PassFragment => "pass_fragment",
            Verdict::ForwardDsr => "forward_dsr",
            Verdict::ForwardNat => "forward_nat",
            Verdict::NatReply => "nat_reply",
            Verdict::DropMalformed => "drop_malformed",
            Verdict::DropNoBackend => "drop_no_backend",
            Verdict::DropNatPortsExhausted => "drop_nat_ports_exhausted",
            Verdict::DropInternal => "drop_internal",
            Verdict::DropDenied => "drop_denied",
            Verdict::DropServiceSource => "drop_service_source",
            Verdict::DropHostPolicy => "drop_host_policy",
            Verdict::DropRateLimited => "drop_rate_limited",
            Verdict::DropSynBudget => "drop_syn_budget",
            Verdict::DropFragment => "drop_fragment",
            Verdict::DropTcpFlags => "drop_tcp_flags",
            Verdict::DropSpoofed => "drop_spoofed",
            Verdict::PassHost => "pass_host",
            Verdict::DropNoFlow => "drop_no_flow",
            Verdict::ForwardIcmp => "forward_icmp",
            Verdict::PassOtherHost => "pass_other_host",
        }
    }

    /// What the program returns for this verdict.
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Verdict::DropMalformed
                | Verdict::DropNoBackend
                | Verdict::DropNatPortsExhausted
                | Verdict::DropInternal
                | Verdict::DropDenied
                | Verdict::DropServiceSource
                | Verdict::DropHostPolicy
                | Verdict::DropRateLimited
                | Verdict::DropSynBudget
                | Verdict::DropFragment
                | Verdict::DropTcpFlags
                | Verdict::DropSpoofed
                | Verdict::DropNoFlow
        )
    }
}
