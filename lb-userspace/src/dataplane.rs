//! The only module that touches aya: loads the XDP object, pins and adopts its maps, attaches
//! the program (replacing a pinned one in place), and reads and writes the maps.
//! The firewall's maps are written in `dataplane/firewall_maps.rs`.
use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::{Array, HashMap, IterableMap as _, MapData, PerCpuArray, ProgramArray},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        Xdp, XdpMode,
    },
    Ebpf, EbpfLoader, VerifierLogLevel,
};
use lb_common::{
    maps::{
        flow_clock, Backend, Counters, Flow, FlowKey, FlowKeyV4, NatReverse, RuleCounters, Service,
        ServiceKey, Settings, Verdict, FAMILY_V4, PROTO_TCP, V4_HALF_GROUPS, V4_ROOT_GROUPS,
    },
    names,
};

use crate::sizing::{MapMemory, MapSizes, MemoryReport};
use log::{info, warn};
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd};

mod firewall_maps;

/// The XDP object built by build.rs from lb-ebpf.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));

/// Name of the pinned XDP link inside the pin directory.
const LINK_PIN: &str = "link";
/// Maps earlier versions pinned that this one no longer has: removed when a pin directory is
/// adopted, so an upgrade leaves nothing behind (the old program keeps its own reference until
/// the new one replaces it). `FW_V4`: the IPv4 rule trie, now the table `FW_V4_TABLE`.
const RETIRED_PINS: [&str; 1] = ["FW_V4"];
/// bpffs superblock magic (statfs f_type).
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// bpffs directory to pin maps (and the link) in; `None` loads private maps (tests).
    pub pin_dir: Option<PathBuf>,
    /// Entries of `FLOWS_V4`, and of `FLOWS_V6` unless `flow_v6_capacity` says otherwise.
    pub flow_capacity: u32,
    pub flow_v6_capacity: Option<u32>,
    pub nat_capacity: u32,
    pub unverified_capacity: u32,
    pub rate_capacity: u32,
    /// Groups of each half of `FW_V4_TABLE` (a multiple of 64, at most `V4_HALF_GROUPS`).
    pub fw_v4_half_groups: u32,
    /// Pinned maps of another size than these are re-created (`RESIZED_AT_START`) or adopted
    /// with a warning: the agent's start. Without it, pins are adopted whatever their size
    /// (a tool or test opening a running agent's maps).
    pub resize_pins: bool,
}

impl Default for LoadOptions {
    /// The object's own sizes (the largest rule table): what the tests load.
    fn default() -> Self {
        Self {
            pin_dir: None,
            flow_capacity: lb_common::DEFAULT_FLOW_CAPACITY,
            flow_v6_capacity: None,
            nat_capacity: lb_common::DEFAULT_NAT_CAPACITY,
            unverified_capacity: lb_common::DEFAULT_UNVERIFIED_CAPACITY,
            rate_capacity: lb_common::RATE_BUCKETS,
            fw_v4_half_groups: V4_HALF_GROUPS,
            resize_pins: false,
        }
    }
}

impl LoadOptions {
    pub fn for_sizes(sizes: &MapSizes, pin_dir: Option<PathBuf>) -> Self {
        Self {
            pin_dir,
            flow_capacity: sizes.flows_v4,
            flow_v6_capacity: Some(sizes.flows_v6),
            nat_capacity: sizes.nat_reverse,
            unverified_capacity: sizes.unverified_flows,
            rate_capacity: sizes.rate_buckets,
            fw_v4_half_groups: sizes.fw_v4_half_groups,
            resize_pins: true,
        }
    }

    /// `max_entries` of the maps sized at load time, by name.
    fn entries(&self) -> [(&'static str, u32); 6] {
        [
            (names::FLOWS_V4, self.flow_capacity),
            (
                names::FLOWS_V6,
                self.flow_v6_capacity.unwrap_or(self.flow_capacity),
            ),
            (names::UNVERIFIED_FLOWS, self.unverified_capacity),
            (names::NAT_REVERSE, self.nat_capacity),
            (names::RATE_BUCKETS, self.rate_capacity),
            (names::FW_V4_TABLE, 2 * self.fw_v4_half_groups),
        ]
    }
}

/// Maps whose content the agent rebuilds whole at start (the IPv4 rule table) or that only hold
/// short-lived state (rate buckets): a pinned one of another size than wanted is re-created at
/// the wanted size. The flow and NAT tables are adopted with the size they have, so that their
/// connections live on; the status and the log say a clean stop and start resizes them.
const RESIZED_AT_START: [&str; 2] = [names::FW_V4_TABLE, names::RATE_BUCKETS];

/// A page of the flow table: the entries and the key to continue after (`None` at the end).
pub struct FlowsPage {
    pub flows: Vec<(FlowKey, Flow)>,
    pub next: Option<FlowKey>,
}

/// How the program ended up attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    Native,
    /// Native mode was refused; generic (skb) mode works everywhere but is much slower.
    GenericFallback,
    Generic,
    /// A pinned link from an earlier agent now runs this program (no traffic gap).
    ReplacedPinned,
}

pub struct Dataplane {
    ebpf: Ebpf,
    pin_dir: Option<PathBuf>,
    /// Whether the maps existed before this load (a restart adopting live state).
    adopted: bool,
    /// Our descriptor of the attached link; without a pin, dropping it detaches the program.
    link: Option<FdLink>,
}

impl Dataplane {
    pub fn load(options: &LoadOptions) -> Result<Self> {
        let half = options.fw_v4_half_groups;
        if !half.is_multiple_of(64) || !(V4_ROOT_GROUPS..=V4_HALF_GROUPS).contains(&half) {
            bail!("a half of FW_V4_TABLE of {half} groups: it must be a multiple of 64 between {V4_ROOT_GROUPS} and {V4_HALF_GROUPS}");
        }
        let entries = options.entries();
        if let Some((name, _)) = entries.iter().find(|(_, n)| *n == 0) {
            bail!("{name} cannot have 0 entries");
        }
        let mut loader = EbpfLoader::new();
        // The verifier's whole log on a refused load, for whoever changes the data path.
        if std::env::var_os("LB_VERIFIER_LOG").is_some() {
            loader.verifier_log_level(VerifierLogLevel::VERBOSE | VerifierLogLevel::STATS);
        }
        for (name, max_entries) in entries {
            loader.map_max_entries(name, max_entries);
        }
        let mut adopted = false;
        if let Some(dir) = &options.pin_dir {
            prepare_pin_dir(dir)?;
            for name in RETIRED_PINS {
                let path = dir.join(name);
                if path.exists() {
                    fs::remove_file(&path)
                        .with_context(|| format!("removing the retired pin {}", path.display()))?;
                    info!(
                        "removed {}: a map of an earlier version, no longer used",
                        path.display()
                    );
                }
            }
            remove_mismatched_pins(dir, if options.resize_pins { &entries } else { &[] })?;
            adopted = dir.join(names::FLOWS_V4).exists();
            for name in names::PINNED_MAPS {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader
            .load(OBJECT)
            .context("loading the XDP object (maps) into the kernel")?;
        for name in [
            names::PROGRAM_LB,
            names::PROGRAM_SLOW_ROAD,
            names::PROGRAM_GENERIC_ROAD,
            names::PROGRAM_PASS,
            names::PROGRAM_TX,
        ] {
            let program: &mut Xdp = ebpf
                .program_mut(name)
                .with_context(|| format!("program `{name}` missing from the object"))?
                .try_into()?;
            program
                .load()
                .with_context(|| format!("the kernel verifier refused program `{name}`"))?;
        }
        install_tail_calls(&mut ebpf)?;
        let mut dataplane = Self {
            ebpf,
            pin_dir: options.pin_dir.clone(),
            adopted,
            link: None,
        };
        if !adopted {
            dataplane.set_settings(&Settings::default())?;
        }
        Ok(dataplane)
    }

    /// True when the maps were adopted from an earlier agent's pins.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    pub fn program(&self) -> Result<&Xdp> {
        self.xdp(names::PROGRAM_LB)
    }

    pub fn pass_program(&self) -> Result<&Xdp> {
        self.xdp(names::PROGRAM_PASS)
    }

    fn xdp(&self, name: &str) -> Result<&Xdp> {
        let program = self
            .ebpf
            .program(name)
            .with_context(|| format!("no program `{name}`"))?;
        Ok(program.try_into()?)
    }

    /// Attaches `lb` to `iface`. With a pin directory, a link pinned by an earlier agent is
    /// updated to this program atomically; otherwise a new link is made (and pinned).
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<Attached> {
        let link_pin = self.pin_dir.as_ref().map(|dir| dir.join(LINK_PIN));
        if let Some(pin) = link_pin.as_ref().filter(|pin| pin.exists()) {
            let pinned = PinnedLink::from_pin(pin)
                .with_context(|| format!("opening the pinned XDP link {}", pin.display()))?;
            let link = XdpLink::try_from(FdLink::from(pinned))?;
            let program: &mut Xdp = self.program_mut(names::PROGRAM_LB)?;
            let id = program
                .attach_to_link(link)
                .context("replacing the program of the pinned XDP link")?;
            self.link = Some(FdLink::try_from(program.take_link(id)?)?);
            return Ok(Attached::ReplacedPinned);
        }

        let program: &mut Xdp = self.program_mut(names::PROGRAM_LB)?;
        let (id, attached) = match mode {
            XdpMode::Default | XdpMode::Driver => match program.attach(iface, XdpMode::Driver) {
                Ok(id) => (id, Attached::Native),
                Err(e) if mode == XdpMode::Default => {
                    warn!("native XDP refused on {iface} ({e}); falling back to generic mode, which is much slower");
                    (
                        program
                            .attach(iface, XdpMode::Skb)
                            .with_context(|| format!("attaching XDP to {iface}"))?,
                        Attached::GenericFallback,
                    )
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("attaching native XDP to {iface}"))
                }
            },
            XdpMode::Skb | XdpMode::Hardware => (
                program
                    .attach(iface, mode)
                    .with_context(|| format!("attaching XDP to {iface}"))?,
                Attached::Generic,
            ),
        };
        match FdLink::try_from(program.take_link(id)?) {
            Ok(link) => {
                if let Some(pin) = link_pin {
                    // The pin keeps it attached when this process dies, so flows survive a restart.
                    link.pin(&pin).with_context(|| format!("pinning the XDP link at {}", pin.display()))?;
                    let pinned = PinnedLink::from_pin(&pin)?;
                    self.link = Some(FdLink::from(pinned));
                } else {
                    self.link = Some(link);
                }
            }
            Err(e) => warn!("XDP was attached through netlink, which cannot be pinned ({e}); it stays until the interface goes away"),
        }
        Ok(attached)
    }

    /// Attaches the trivial pass program (for veth peers, so XDP_TX towards them works) and
    /// pins its link at `pin`, so it stays after this process exits.
    pub fn attach_pass(&mut self, iface: &str, pin: &Path) -> Result<()> {
        let program: &mut Xdp = self.program_mut(names::PROGRAM_PASS)?;
        let id = program
            .attach(iface, XdpMode::Driver)
            .with_context(|| format!("attaching xdp_pass to {iface}"))?;
        let link = FdLink::try_from(program.take_link(id)?)?;
        std::mem::forget(
            link.pin(pin)
                .with_context(|| format!("pinning at {}", pin.display()))?,
        );
        Ok(())
    }

    fn program_mut(&mut self, name: &str) -> Result<&mut Xdp> {
        let program = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("no program `{name}`"))?;
        Ok(program.try_into()?)
    }

    /// Detaches the program and removes every pin: a clean stop.
    pub fn detach_and_unpin(&mut self) -> Result<()> {
        let Some(dir) = self.pin_dir.clone() else {
            self.link = None;
            return Ok(());
        };
        let link_pin = dir.join(LINK_PIN);
        if link_pin.exists() {
            fs::remove_file(&link_pin)
                .with_context(|| format!("unpinning {}", link_pin.display()))?;
        }
        // With the pin gone, closing the last descriptor detaches the program.
        self.link = None;
        for name in names::PINNED_MAPS {
            let path = dir.join(name);
            if path.exists() {
                fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            }
        }
        Ok(())
    }

    /// Writes the data path's settings. The flow caches are emptied after: a copy was made
    /// under the old timeouts and clock, and the flow table is what applies the new ones.
    pub fn set_settings(&mut self, settings: &Settings) -> Result<()> {
        let mut map: Array<&mut MapData, Settings> =
            Array::try_from(self.map_mut(names::SETTINGS)?)?;
        map.set(0, settings, 0).context("writing SETTINGS")?;
        self.empty_flow_caches()
    }

    pub fn put_service(&mut self, key: &ServiceKey, service: &Service) -> Result<()> {
        let mut map: HashMap<&mut MapData, ServiceKey, Service> =
            HashMap::try_from(self.map_mut(names::SERVICES)?)?;
        map.insert(key, service, 0).context("writing SERVICES")?;
        Ok(())
    }

    pub fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        let mut map: HashMap<&mut MapData, ServiceKey, Service> =
            HashMap::try_from(self.map_mut(names::SERVICES)?)?;
        map.remove(key).context("removing from SERVICES")?;
        Ok(())
    }

    pub fn services(&self) -> Result<Vec<(ServiceKey, Service)>> {
        let map: HashMap<&MapData, ServiceKey, Service> =
            HashMap::try_from(self.map(names::SERVICES)?)?;
        map.iter()
            .map(|item| item.context("reading SERVICES"))
            .collect()
    }

    /// Writes a backend. When its state or generation changes, the CPUs' flow caches are
    /// emptied first: a copy of a flow moved off a backend that went down must not send the
    /// flow back there when the backend comes up again.
    pub fn put_backend(&mut self, id: u32, backend: &Backend) -> Result<()> {
        let old: Backend = Array::<&MapData, Backend>::try_from(self.map(names::BACKENDS)?)?
            .get(&id, 0)
            .with_context(|| format!("reading BACKENDS[{id}]"))?;
        if (old.state, old.generation) != (backend.state, backend.generation) {
            self.empty_flow_caches()?;
        }
        let mut map: Array<&mut MapData, Backend> =
            Array::try_from(self.map_mut(names::BACKENDS)?)?;
        map.set(id, backend, 0)
            .with_context(|| format!("writing BACKENDS[{id}]"))?;
        Ok(())
    }

    /// Makes every copy in the CPUs' flow caches stale (the data path then asks the flow table).
    fn empty_flow_caches(&mut self) -> Result<()> {
        let mut map: Array<&mut MapData, u32> =
            Array::try_from(self.map_mut(names::FLOW_CACHE_EPOCH)?)?;
        let epoch = map.get(&0, 0).context("reading FLOW_CACHE_EPOCH")?;
        map.set(0, epoch.wrapping_add(1), 0)
            .context("writing FLOW_CACHE_EPOCH")
    }

    pub fn settings(&self) -> Result<Settings> {
        let map: Array<&MapData, Settings> = Array::try_from(self.map(names::SETTINGS)?)?;
        map.get(&0, 0).context("reading SETTINGS")
    }

    /// Every backend slot, used or not (index = backend id).
    pub fn backends(&self) -> Result<Vec<Backend>> {
        let map: Array<&MapData, Backend> = Array::try_from(self.map(names::BACKENDS)?)?;
        map.iter()
            .map(|item| item.context("reading BACKENDS"))
            .collect()
    }

    /// Writes a selection table starting at `offset` in RINGS.
    pub fn put_ring(&mut self, offset: u32, slots: &[u32]) -> Result<()> {
        let mut map: Array<&mut MapData, u32> = Array::try_from(self.map_mut(names::RINGS)?)?;
        for (i, backend_id) in slots.iter().enumerate() {
            map.set(offset + i as u32, backend_id, 0)
                .context("writing RINGS")?;
        }
        Ok(())
    }

    /// A NAT service's source addresses (IPv4 in the first word), from `offset` in `SNAT_ADDRS`.
    pub fn put_snat_addrs(&mut self, offset: u32, addrs: &[[u32; 4]]) -> Result<()> {
        let mut map: Array<&mut MapData, [u32; 4]> =
            Array::try_from(self.map_mut(names::SNAT_ADDRS)?)?;
        for (i, addr) in addrs.iter().enumerate() {
            map.set(offset + i as u32, addr, 0)
                .context("writing SNAT_ADDRS")?;
        }
        Ok(())
    }

    pub fn service_counters(&self, id: u32) -> Result<Counters> {
        self.counters(names::SERVICE_STATS, id)
    }

    pub fn backend_counters(&self, id: u32) -> Result<Counters> {
        self.counters(names::BACKEND_STATS, id)
    }

    pub fn verdict_counters(&self) -> Result<Vec<(Verdict, Counters)>> {
        Verdict::ALL
            .iter()
            .map(|&v| Ok((v, self.verdict_counter(v)?)))
            .collect()
    }

    /// The counters of one verdict (one map read, for per-packet checks).
    pub fn verdict_counter(&self, verdict: Verdict) -> Result<Counters> {
        self.counters(names::VERDICT_STATS, verdict as u32)
    }

    /// Up to `limit` entries of the flow table, in the kernel's hash order, starting after
    /// `after` (or at the beginning). Returns them and the key to continue from, `None` at the
    /// end. The table changes while it is read: a flow may be missed or seen twice, and a
    /// cursor whose flow expired meanwhile starts over from the beginning (the kernel's rule).
    pub fn flows(&self, after: Option<&FlowKey>, limit: usize) -> Result<FlowsPage> {
        // The IPv4 table first, then the IPv6 one; the cursor's family says where it points.
        let mut flows = Vec::with_capacity(limit.min(4096));
        let in_v6 = after.is_some_and(|k| k.family == lb_common::maps::FAMILY_V6);
        if !in_v6 {
            let map: HashMap<&MapData, FlowKeyV4, Flow> =
                HashMap::try_from(self.map(names::FLOWS_V4)?)?;
            let cursor = after.map(FlowKeyV4::from_flow);
            let next = walk_flows(&map, cursor, limit, &mut flows, |k| k.to_flow())?;
            if next.is_some() {
                return Ok(FlowsPage { flows, next });
            }
        }
        let map: HashMap<&MapData, FlowKey, Flow> = HashMap::try_from(self.map(names::FLOWS_V6)?)?;
        let cursor = after.copied().filter(|_| in_v6);
        let remaining = limit - flows.len();
        let next = walk_flows(&map, cursor, remaining, &mut flows, |k| *k)?;
        Ok(FlowsPage { flows, next })
    }

    /// [`Dataplane::flows`] for `UNVERIFIED_FLOWS`: TCP flows whose handshake has not completed
    /// and UDP flows, both families in one table. What a spoofed flood fills.
    pub fn unverified_flows(&self, after: Option<&FlowKey>, limit: usize) -> Result<FlowsPage> {
        let mut flows = Vec::with_capacity(limit.min(4096));
        let map: HashMap<&MapData, FlowKey, Flow> =
            HashMap::try_from(self.map(names::UNVERIFIED_FLOWS)?)?;
        let next = walk_flows(&map, after.copied(), limit, &mut flows, |k| *k)?;
        Ok(FlowsPage { flows, next })
    }

    /// The data path's flow clock now (its test clock when one is set): a flow has been idle
    /// for `now - last_seen` seconds.
    pub fn flow_clock_now(&self) -> Result<u32> {
        Ok(flow_clock_of(&self.settings()?))
    }

    fn counters(&self, map: &str, index: u32) -> Result<Counters> {
        sum_counters(self.map(map)?, index)
    }

    /// Descriptors of its own on the maps that tell which NAT ports are in use, for a thread
    /// that counts them without holding the agent (see [`NatTables::count`]).
    pub fn nat_tables(&self) -> Result<NatTables> {
        let own = |name: &str| -> Result<MapData> {
            let data = match self.map(name)? {
                aya::maps::Map::LruHashMap(data)
                | aya::maps::Map::HashMap(data)
                | aya::maps::Map::Array(data) => data,
                other => bail!("{name} is an unexpected kind of map: {other:?}"),
            };
            let fd = data
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .with_context(|| format!("duplicating the descriptor of {name}"))?;
            MapData::from_fd(fd).with_context(|| format!("opening {name}"))
        };
        Ok(NatTables {
            nat: aya::maps::Map::LruHashMap(own(names::NAT_REVERSE)?),
            flows_v4: aya::maps::Map::LruHashMap(own(names::FLOWS_V4)?),
            flows_v6: aya::maps::Map::LruHashMap(own(names::FLOWS_V6)?),
            unverified: aya::maps::Map::LruHashMap(own(names::UNVERIFIED_FLOWS)?),
            settings: aya::maps::Map::Array(own(names::SETTINGS)?),
        })
    }

    /// The kernel memory of every map of the program (`memlock` of its fdinfo: the kernel's
    /// own account), with the size each has and, where it differs, the size `wanted` gives it
    /// (`Config::map_sizes`), against a budget of `budget_bytes`.
    pub fn map_memory(&self, wanted: &MapSizes, budget_bytes: u64) -> Result<MemoryReport> {
        let mut maps = Vec::new();
        for (name, map) in self.ebpf.maps() {
            let data = map_data(map)?;
            let max_entries = data
                .info()
                .with_context(|| format!("reading {name}'s info"))?
                .max_entries();
            let bytes = memlock(data.fd().as_fd())
                .with_context(|| format!("reading the memlock of {name}"))?;
            maps.push(MapMemory {
                name: name.to_string(),
                bytes,
                max_entries,
                wanted_entries: wanted.entries_of(name).filter(|&w| w != max_entries),
            });
        }
        Ok(MemoryReport::new(maps, budget_bytes))
    }

    fn map(&self, name: &str) -> Result<&aya::maps::Map> {
        self.ebpf
            .map(name)
            .with_context(|| format!("map `{name}` missing from the object"))
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .with_context(|| format!("map `{name}` missing from the object"))
    }
}

/// The map of any kind this program has.
fn map_data(map: &aya::maps::Map) -> Result<&MapData> {
    use aya::maps::Map;
    match map {
        Map::Array(data)
        | Map::HashMap(data)
        | Map::LpmTrie(data)
        | Map::LruHashMap(data)
        | Map::PerCpuArray(data)
        | Map::PerCpuHashMap(data)
        | Map::PerCpuLruHashMap(data)
        | Map::ProgramArray(data) => Ok(data),
        _ => bail!("a map of a kind the data path does not use"),
    }
}

/// `memlock` of a map's fdinfo: the bytes the kernel accounts to it (its `map_mem_usage` since
/// Linux 6.4: what it really allocated). aya exposes this figure for programs only.
fn memlock(fd: BorrowedFd<'_>) -> Result<u64> {
    let path = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
    let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|line| line.strip_prefix("memlock:"))
        .and_then(|value| value.trim().parse().ok())
        .with_context(|| format!("no memlock line in {path}"))
}

/// The NAT ports in use, per service id, as [`NatTables::count`] found them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatPortCount {
    /// Service id -> reverse entries whose client flow is alive and still holds the port.
    pub in_use: std::collections::HashMap<u32, u64>,
    /// Entries of `NAT_REVERSE` looked at.
    pub entries: u64,
    /// False when the walk stopped at its deadline or entry budget: `in_use` is then a lower
    /// bound.
    pub complete: bool,
}

/// The maps that say which NAT ports are in use, on descriptors of their own
/// ([`Dataplane::nat_tables`]), so that a thread can walk them without the agent's lock.
pub struct NatTables {
    nat: aya::maps::Map,
    flows_v4: aya::maps::Map,
    flows_v6: aya::maps::Map,
    unverified: aya::maps::Map,
    settings: aya::maps::Map,
}

impl NatTables {
    /// Counts, per service, the `NAT_REVERSE` entries whose port is in use: the client flow
    /// the entry names is alive on the data path's flow clock and still holds this port
    /// towards this backend (the data path's own test before it takes a port over, `port_in_use`
    /// in lb-ebpf/src/balance.rs). Stops at `deadline`, or after looking at twice the table's
    /// capacity (a walk restarts when its key is evicted under it), with `complete` false.
    pub fn count(&self, deadline: std::time::Instant) -> Result<NatPortCount> {
        let settings: Array<&MapData, Settings> = Array::try_from(&self.settings)?;
        let settings = settings.get(&0, 0).context("reading SETTINGS")?;
        let now = flow_clock_of(&settings);
        let nat: HashMap<&MapData, FlowKey, NatReverse> = HashMap::try_from(&self.nat)?;
        let flows_v4: HashMap<&MapData, FlowKeyV4, Flow> = HashMap::try_from(&self.flows_v4)?;
        let flows_v6: HashMap<&MapData, FlowKey, Flow> = HashMap::try_from(&self.flows_v6)?;
        let unverified: HashMap<&MapData, FlowKey, Flow> = HashMap::try_from(&self.unverified)?;
        let budget = u64::from(nat.map().info()?.max_entries()).saturating_mul(2);
        // The client flow's entry, found as the data path finds it (conntrack::find).
        let find = |key: &FlowKey| -> Option<Flow> {
            if key.proto == PROTO_TCP {
                let verified = if key.family == FAMILY_V4 {
                    flows_v4.get(&FlowKeyV4::from_flow(key), 0).ok()
                } else {
                    flows_v6.get(key, 0).ok()
                };
                if verified.is_some() {
                    return verified;
                }
            }
            unverified.get(key, 0).ok()
        };
        let fd = nat.map().fd().as_fd();
        let mut count = NatPortCount::default();
        let mut cursor: Option<FlowKey> = None;
        loop {
            if count.entries >= budget || std::time::Instant::now() >= deadline {
                return Ok(count);
            }
            let Some(reply) = map_next_key(fd, cursor.as_ref()).context("walking NAT_REVERSE")?
            else {
                count.complete = true;
                return Ok(count);
            };
            cursor = Some(reply);
            count.entries += 1;
            // An entry evicted since its key was read is simply skipped.
            let Ok(held) = nat.get(&reply, 0) else {
                continue;
            };
            let in_use = find(&held.client_flow(reply.proto, reply.family)).is_some_and(|flow| {
                now.wrapping_sub(flow.last_seen) <= settings.timeouts.of(flow.state)
                    && flow.nat_port == reply.dst_port
                    && flow.backend_id == held.backend_id
            });
            if in_use {
                *count.in_use.entry(held.service_id).or_default() += 1;
            }
        }
    }
}

/// What the data path's flow clock reads now under `settings`.
fn flow_clock_of(settings: &Settings) -> u32 {
    if settings.test_clock != 0 {
        settings.test_clock
    } else {
        flow_clock(monotonic_coarse_ns())
    }
}

/// The clock the data path's flow clock reads (`bpf_ktime_get_coarse_ns`), in ns.
fn monotonic_coarse_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut now) };
    (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64)
}

/// Appends up to `limit` entries of one flow table after `cursor`; returns where to continue
/// (`None`: the table is done).
fn walk_flows<K: aya::Pod + Copy>(
    map: &HashMap<&MapData, K, Flow>,
    mut cursor: Option<K>,
    limit: usize,
    flows: &mut Vec<(FlowKey, Flow)>,
    to_key: impl Fn(&K) -> FlowKey,
) -> Result<Option<FlowKey>> {
    let fd = map.map().fd().as_fd();
    let start = flows.len();
    while flows.len() - start < limit {
        let Some(key) = map_next_key(fd, cursor.as_ref()).context("walking the flow table")? else {
            return Ok(None);
        };
        // A flow evicted since its key was read is simply skipped.
        if let Ok(flow) = map.get(&key, 0) {
            flows.push((to_key(&key), flow));
        }
        cursor = Some(key);
    }
    Ok(cursor.map(|k| to_key(&k)))
}

/// `bpf(BPF_MAP_GET_NEXT_KEY)`: the key after `key` (the first one for `None`), `None` past the
/// last. aya only iterates from the beginning, and paging needs to resume from a cursor.
fn map_next_key<K: Copy>(fd: BorrowedFd<'_>, key: Option<&K>) -> std::io::Result<Option<K>> {
    /// The map-element part of `union bpf_attr`.
    #[repr(C)]
    struct MapElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        next_key: u64,
        flags: u64,
    }
    const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
    let mut next = std::mem::MaybeUninit::<K>::uninit();
    let attr = MapElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        _pad: 0,
        key: key.map_or(0, |k| std::ptr::from_ref(k) as u64),
        next_key: next.as_mut_ptr() as u64,
        flags: 0,
    };
    // SAFETY: `attr` is a valid bpf_attr prefix for this command; the kernel writes exactly one
    // key of the map's key size (= size_of::<K>(), checked by aya when the map was typed) into `next`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_GET_NEXT_KEY,
            std::ptr::from_ref(&attr),
            std::mem::size_of::<MapElemAttr>(),
        )
    };
    if ret == 0 {
        // SAFETY: the kernel filled it (see above).
        return Ok(Some(unsafe { next.assume_init() }));
    }
    let error = std::io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::ENOENT) {
        Ok(None)
    } else {
        Err(error)
    }
}

/// Removes the pins of maps whose key or value size differs from this object's definition:
/// an earlier version's layout. aya would adopt such a map as it is, and reading it with this
/// version's types would misread it (a per-CPU value larger than the type overruns the read
/// buffer). Such a map starts afresh, and the log says so; when the flow table is among them,
/// nothing is adopted. Of the maps sized at load time (`wanted`), those of `RESIZED_AT_START`
/// are re-created at their new size; the others are adopted as they are, with a warning.
fn remove_mismatched_pins(dir: &Path, wanted: &[(&'static str, u32)]) -> Result<()> {
    let object = aya_obj::Object::parse(OBJECT).context("parsing the BPF object's maps")?;
    for name in names::PINNED_MAPS {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let Some(def) = object.maps.get(name) else {
            continue;
        };
        let info = aya::maps::MapInfo::from_pin(&path)
            .with_context(|| format!("reading the pinned map {}", path.display()))?;
        let (key, value) = (info.key_size(), info.value_size());
        if key != def.key_size() || value != def.value_size() {
            fs::remove_file(&path)
                .with_context(|| format!("removing the outdated pin {}", path.display()))?;
            warn!(
                "{}: pinned by an earlier version with {key}-byte keys and {value}-byte values, \
                 this one uses {} and {}: the map starts afresh",
                path.display(),
                def.key_size(),
                def.value_size()
            );
            continue;
        }
        let Some(&(_, want)) = wanted.iter().find(|(n, _)| *n == name) else {
            continue;
        };
        let have = info.max_entries();
        if have == want {
            continue;
        }
        if RESIZED_AT_START.contains(&name) {
            fs::remove_file(&path)
                .with_context(|| format!("removing the pin {} to resize it", path.display()))?;
            info!(
                "{}: {have} entries pinned, this config needs {want}: re-created at the new size \
                 (the agent rewrites its content)",
                path.display()
            );
        } else {
            warn!(
                "{}: adopted with its {have} entries (the live connections are in it), this \
                 config wants {want}: stop the agent cleanly (SIGTERM unpins) and start it again \
                 to resize it",
                path.display()
            );
        }
    }
    Ok(())
}

/// The pin directory must be on a bpffs, or pinning fails with an obscure error.
fn prepare_pin_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating pin directory {}", dir.display()))?;
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: statfs fills the zeroed struct; `path` is a valid C string.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut stat) } != 0 {
        bail!(
            "statfs({}): {}",
            dir.display(),
            std::io::Error::last_os_error()
        );
    }
    if stat.f_type as i64 != BPF_FS_MAGIC {
        bail!(
            "{} is not on a bpffs mount; mount one with `mount -t bpf bpf /sys/fs/bpf` (inside `ip netns exec`, /sys/fs/bpf is hidden: use a bpffs mounted under /run)",
            dir.display()
        );
    }
    info!("pinning maps under {}", dir.display());
    Ok(())
}

/// A per-CPU counter summed over the CPUs.
pub fn sum_counters(map: &aya::maps::Map, index: u32) -> Result<Counters> {
    let array: PerCpuArray<&MapData, Counters> = PerCpuArray::try_from(map)?;
    let mut total = Counters::default();
    for counters in array
        .get(&index, 0)
        .with_context(|| format!("reading counters [{index}]"))?
        .iter()
    {
        total.add(counters);
    }
    Ok(total)
}

/// A rule's per-CPU counters summed over the CPUs.
pub fn rule_counters(map: &aya::maps::Map, id: u32) -> Result<RuleCounters> {
    let array: PerCpuArray<&MapData, RuleCounters> = PerCpuArray::try_from(map)?;
    let mut total = RuleCounters::default();
    for counters in array
        .get(&id, 0)
        .with_context(|| format!("reading RULE_STATS[{id}]"))?
        .iter()
    {
        total.packets += counters.packets;
        total.bytes += counters.bytes;
    }
    Ok(total)
}

/// Fills `CALLS` with the programs `lb` hands packets to (lb-common `CALL_*`).
fn install_tail_calls(ebpf: &mut Ebpf) -> Result<()> {
    let mut fds = Vec::new();
    for (index, name) in [
        (lb_common::CALL_SLOW_ROAD, names::PROGRAM_SLOW_ROAD),
        (lb_common::CALL_GENERIC_ROAD, names::PROGRAM_GENERIC_ROAD),
    ] {
        let program: &Xdp = ebpf
            .program(name)
            .with_context(|| format!("program `{name}` missing"))?
            .try_into()?;
        fds.push((index, name, program.fd()?.try_clone()?));
    }
    let mut calls = ProgramArray::try_from(
        ebpf.map_mut(names::CALLS)
            .with_context(|| format!("map {} missing", names::CALLS))?,
    )?;
    for (index, name, fd) in fds {
        calls
            .set(index, &fd, 0)
            .with_context(|| format!("installing program `{name}` in {}", names::CALLS))?;
    }
    Ok(())
}
