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
    pub _pad: [u8; 2],
    /// Index in `RINGS` of the first slot of the active selection table.
    pub ring_offset: u32,
    /// Slots in use in the active selection table; 0 means no active backend.
    pub ring_len: u32,
    /// NAT mode: the load balancer's own address that backends reply to.
    pub snat_addr: [u32; 4],
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

/// `FLOWS` value: where a client flow to a service goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flow {
    pub backend_id: u32,
    pub backend_generation: u32,
    pub service_id: u32,
    /// NAT mode: the source port the flow uses towards the backend (network order).
    pub nat_port: u16,
    /// NAT mode: where replies go at layer 2 (the client or its router).
    pub client_mac: [u8; 6],
}

/// `NAT_REVERSE` value, keyed by the reply's [`FlowKey`] (backend -> SNAT address:NAT port).
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
}

/// Data-path wide settings, element 0 of `SETTINGS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// NAT source ports are taken from `nat_port_min..=nat_port_max` (host order).
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    pub _pad: u32,
}

impl Default for Settings {
    fn default() -> Self {
        // Below Linux's default ephemeral range, so the host's own connections never collide.
        Self { nat_port_min: 1024, nat_port_max: 32767, _pad: 0 }
    }
}

/// Per-CPU counters of a service, a backend or a verdict.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

impl Counters {
    pub fn add(&mut self, other: &Counters) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
        self.new_flows = self.new_flows.wrapping_add(other.new_flows);
    }
}

pod!(ServiceKey, Service, Backend, FlowKey, Flow, NatReverse, Settings, Counters);

const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);
const _: () = assert!(core::mem::size_of::<Service>() == 32);
const _: () = assert!(core::mem::size_of::<Backend>() == 36);
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<Flow>() == 20);
const _: () = assert!(core::mem::size_of::<NatReverse>() == 52);
const _: () = assert!(core::mem::size_of::<Settings>() == 8);
const _: () = assert!(core::mem::size_of::<Counters>() == 24);

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
}

impl Verdict {
    pub const COUNT: u32 = 10;
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
        }
    }
}
