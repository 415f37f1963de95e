//! Every map of the data path. Sizes are defaults; the agent may resize the flow and NAT
//! tables at load time. The agent pins all of them so a restart adopts live state.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    maps::{Backend, Counters, Flow, FlowKey, NatReverse, Service, ServiceKey, Settings, Verdict},
    DEFAULT_FLOW_CAPACITY, DEFAULT_NAT_CAPACITY, MAX_BACKENDS, MAX_SERVICES, RING_SLOTS,
    RING_TABLES_PER_SERVICE,
};

#[map]
pub static SERVICES: HashMap<ServiceKey, Service> = HashMap::with_max_entries(MAX_SERVICES, 0);

#[map]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Selection tables: backend ids, `RING_TABLES_PER_SERVICE` tables of `RING_SLOTS` per service.
#[map]
pub static RINGS: Array<u32> =
    Array::with_max_entries(MAX_SERVICES * RING_TABLES_PER_SERVICE * RING_SLOTS, 0);

/// Round-robin cursor per service, advanced with an atomic fetch-and-add.
#[map]
pub static RR_CURSORS: Array<u64> = Array::with_max_entries(MAX_SERVICES, 0);

#[map]
pub static FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(DEFAULT_FLOW_CAPACITY, 0);

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
