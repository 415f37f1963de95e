//! The agent's view of services and backends, and how it becomes map contents: stable ids,
//! generations, and selection tables (weighted round robin expanded into slots). Pure logic:
//! `program` applies it to a [`Dataplane`].
use std::net::IpAddr;

use anyhow::{bail, Context as _, Result};
use lb_common::{
    maps::{
        Backend, Rate, Service, ServiceKey, ALGORITHM_ROUND_ROBIN, BACKEND_ACTIVE, BACKEND_DOWN,
        BACKEND_DRAINING, BACKEND_UNUSED, FAMILY_V4, FAMILY_V6, MODE_DSR, MODE_NAT, PROTO_TCP,
        PROTO_UDP,
    },
    MAX_BACKENDS, MAX_SERVICES, MAX_SNAT_ADDRS, RING_SLOTS, RING_TABLES_PER_SERVICE,
};

use crate::{
    config::{Config, Mode, Protocol},
    dataplane::Dataplane,
};

/// Health of a backend as the data path sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendState {
    /// Gets new flows.
    Active,
    /// Keeps its flows, gets no new ones.
    Draining,
    /// Unreachable: out of the table, its flows re-balanced.
    Down,
    /// Healthy, but out of this VIP because of its database role (a replica behind the write
    /// VIP, a primary or lagging node behind the read VIP): to the data path it is down.
    Standby,
}

impl BackendState {
    /// Lower-case name, as the API and metrics show it.
    pub fn name(self) -> &'static str {
        match self {
            BackendState::Active => "active",
            BackendState::Draining => "draining",
            BackendState::Down => "down",
            BackendState::Standby => "standby",
        }
    }

    fn to_map(self) -> u8 {
        match self {
            BackendState::Active => BACKEND_ACTIVE,
            BackendState::Draining => BACKEND_DRAINING,
            BackendState::Down | BackendState::Standby => BACKEND_DOWN,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BackendEntry {
    pub name: String,
    pub id: u32,
    pub generation: u32,
    pub addr: IpAddr,
    pub port: u16,
    pub weight: u32,
    pub state: BackendState,
    /// `None` until the neighbour table gave it; such a backend stays out of rotation.
    pub mac: Option<[u8; 6]>,
}

#[derive(Debug, Clone)]
pub struct ServiceEntry {
    pub name: String,
    pub id: u32,
    pub key: ServiceKey,
    pub mode: Mode,
    /// NAT mode: the source addresses towards the backends (at least one).
    pub snat: Vec<IpAddr>,
    /// Which of the service's two selection tables the data path reads.
    pub active_table: u32,
    pub backends: Vec<BackendEntry>,
    pub limits: Limits,
}

/// A service's rate limits (all unlimited by default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// New connections per source address.
    pub syn_rate: Rate,
    /// Packets per source address.
    pub packet_rate: Rate,
    /// New connections from all sources together.
    pub syn_budget: Rate,
}

impl ServiceEntry {
    /// Ids of backends that take new flows, expanded by weight.
    pub fn selection_table(&self) -> Vec<u32> {
        let eligible: Vec<(u32, u32)> = self
            .backends
            .iter()
            .filter(|b| b.state == BackendState::Active && b.mac.is_some())
            .map(|b| (b.id, b.weight))
            .collect();
        weighted_round_robin(&eligible, RING_SLOTS as usize)
    }

    /// NAT mode: how many source ports the service can hold at once, `min..=max` towards each
    /// of its backends from each of its SNAT addresses (a reply is told apart by backend
    /// address and port, SNAT address and port). `None` in DSR mode.
    pub fn nat_ports_available(&self, min: u16, max: u16) -> Option<u64> {
        let per_backend = (u64::from(max) + 1).saturating_sub(u64::from(min));
        let pairs = self.backends.len() as u64 * self.snat.len() as u64;
        (self.mode == Mode::Nat).then(|| per_backend * pairs)
    }

    fn ring_offset(&self, table: u32) -> u32 {
        (self.id * RING_TABLES_PER_SERVICE + table) * RING_SLOTS
    }
}

/// Slots for weighted round robin: weights reduced by their gcd (scaled down if they do not
/// fit), then interleaved with the smooth algorithm so a heavy backend's turns are spread out.
/// Equal weights give one slot each in order: strict round robin.
pub fn weighted_round_robin(backends: &[(u32, u32)], max_slots: usize) -> Vec<u32> {
    if backends.is_empty() {
        return Vec::new();
    }
    let divisor = backends.iter().fold(0, |g, &(_, w)| gcd(g, w.max(1)));
    let mut weights: Vec<u64> = backends
        .iter()
        .map(|&(_, w)| (w.max(1) / divisor) as u64)
        .collect();
    let total: u64 = weights.iter().sum();
    if total > max_slots as u64 {
        let scale = max_slots as f64 / total as f64;
        for w in &mut weights {
            *w = ((*w as f64 * scale).floor() as u64).max(1);
        }
        while weights.iter().sum::<u64>() > max_slots as u64 {
            if let Some(max) = weights.iter_mut().max() {
                *max -= 1;
            }
        }
    }
    let total: i64 = weights.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; backends.len()];
    let mut slots = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..backends.len() {
            current[i] += weights[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        slots.push(backends[best].0);
    }
    slots
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

pub fn addr_words(addr: IpAddr) -> ([u32; 4], u8) {
    match addr {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], FAMILY_V4),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([word(0), word(4), word(8), word(12)], FAMILY_V6)
        }
    }
}

/// The address `addr_words` made, back from its words.
pub fn words_addr(words: [u32; 4], family: u8) -> IpAddr {
    if family == FAMILY_V6 {
        let mut octets = [0u8; 16];
        for (i, word) in words.iter().enumerate() {
            octets[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
        }
        IpAddr::from(octets)
    } else {
        IpAddr::from(words[0].to_ne_bytes())
    }
}

pub fn service_key(vip: IpAddr, port: u16, protocol: Protocol) -> ServiceKey {
    let (addr, family) = addr_words(vip);
    let proto = match protocol {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
    };
    ServiceKey {
        addr,
        port: port.to_be(),
        proto,
        family,
    }
}

/// All services, with ids that stay stable across agent restarts.
#[derive(Debug, Default)]
pub struct ServiceTable {
    pub services: Vec<ServiceEntry>,
    /// Highest generation seen per backend id, so a reused id always gets a new one.
    generations: Vec<u32>,
}

impl ServiceTable {
    /// Builds the table from the config, reusing the ids found in maps adopted from an earlier
    /// agent, so its flows keep pointing at the same backends.
    pub fn from_config(
        config: &Config,
        existing_services: &[(ServiceKey, Service)],
        existing_backends: &[Backend],
    ) -> Result<Self> {
        let mut generations: Vec<u32> = vec![0; MAX_BACKENDS as usize];
        let mut backend_taken = vec![false; MAX_BACKENDS as usize];
        for (id, backend) in existing_backends
            .iter()
            .enumerate()
            .take(MAX_BACKENDS as usize)
        {
            generations[id] = backend.generation;
        }
        let mut service_taken = vec![false; MAX_SERVICES as usize];
        let mut table = ServiceTable {
            services: Vec::new(),
            generations: Vec::new(),
        };

        // First pass: services and backends that already have ids.
        let mut planned = Vec::new();
        for service in &config.services {
            let key = service_key(service.vip, service.port, service.protocol);
            let id = existing_services
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, s)| s.id);
            if let Some(id) = id.filter(|&id| id < MAX_SERVICES && !service_taken[id as usize]) {
                service_taken[id as usize] = true;
                planned.push((service, key, Some(id)));
            } else {
                planned.push((service, key, None));
            }
        }
        for (service, key, id) in planned {
            let id = match id {
                Some(id) => id,
                None => {
                    let free = service_taken
                        .iter()
                        .position(|t| !t)
                        .context("no free service id")?;
                    service_taken[free] = true;
                    free as u32
                }
            };
            let mut backends = Vec::new();
            for backend in &service.backends {
                let addr = backend.address;
                let port = backend.port_or(service.port);
                let (words, family) = addr_words(addr);
                let reused = existing_backends.iter().enumerate().position(|(i, b)| {
                    !backend_taken[i]
                        && b.state != BACKEND_UNUSED
                        && b.service_id == id
                        && b.addr == words
                        && b.family == family
                        && b.port == port.to_be()
                });
                let (backend_id, generation) = match reused {
                    Some(i) => (i as u32, generations[i]),
                    None => {
                        // Ids freed by this agent are not reused before unused ones.
                        let free = (0..MAX_BACKENDS as usize)
                            .find(|&i| {
                                !backend_taken[i]
                                    && existing_backends
                                        .get(i)
                                        .is_none_or(|b| b.state == BACKEND_UNUSED)
                            })
                            .context("no free backend id")?;
                        generations[free] = generations[free].wrapping_add(1);
                        (free as u32, generations[free])
                    }
                };
                backend_taken[backend_id as usize] = true;
                backends.push(BackendEntry {
                    name: backend.name.clone(),
                    id: backend_id,
                    generation,
                    addr,
                    port,
                    weight: backend.weight,
                    state: BackendState::Active,
                    mac: None,
                });
            }
            let active_table = existing_services
                .iter()
                .find(|(k, _)| *k == key)
                .map_or(0, |(_, s)| {
                    (s.ring_offset / RING_SLOTS) % RING_TABLES_PER_SERVICE
                });
            table.services.push(ServiceEntry {
                name: service.name.clone(),
                id,
                key,
                mode: service.mode,
                snat: service
                    .snat_address
                    .as_ref()
                    .map_or_else(Vec::new, |a| a.0.clone()),
                active_table,
                backends,
                limits: Limits {
                    syn_rate: Rate::per_second(service.syn_rate, service.syn_burst),
                    packet_rate: Rate::per_second(service.packet_rate, service.packet_burst),
                    syn_budget: Rate::per_second(service.syn_budget, service.syn_budget_burst),
                },
            });
        }
        table.generations = generations;
        Ok(table)
    }

    pub fn service_mut(&mut self, name: &str) -> Option<&mut ServiceEntry> {
        self.services.iter_mut().find(|s| s.name == name)
    }

    /// A backend id no service uses, with a generation its earlier flows do not carry.
    pub fn allocate_backend_id(&mut self) -> Result<(u32, u32)> {
        let used: std::collections::HashSet<u32> = self
            .services
            .iter()
            .flat_map(|s| &s.backends)
            .map(|b| b.id)
            .collect();
        let id = (0..MAX_BACKENDS)
            .find(|id| !used.contains(id))
            .context("all backend ids are in use")?;
        if self.generations.len() < MAX_BACKENDS as usize {
            self.generations.resize(MAX_BACKENDS as usize, 0);
        }
        let generation = &mut self.generations[id as usize];
        *generation = generation.wrapping_add(1);
        Ok((id, *generation))
    }
}

/// Marks a backend id unused after its backend was removed: the flows still pinned to it are
/// re-balanced by the data path.
pub fn retire_backend(dataplane: &mut Dataplane, id: u32, generation: u32) -> Result<()> {
    dataplane.put_backend(
        id,
        &Backend {
            state: BACKEND_UNUSED,
            generation,
            ..Backend::default()
        },
    )
}

/// One map write of a service change (see [`plan_service`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapWrite {
    Backend {
        id: u32,
        backend: Backend,
    },
    /// The service's selection table, written into its idle half at `offset`.
    Ring {
        offset: u32,
        slots: Vec<u32>,
    },
    /// A NAT service's source addresses (when it has more than one), from `offset`.
    SnatAddrs {
        offset: u32,
        addrs: Vec<[u32; 4]>,
    },
    /// The service entry that points the data path at the new table: the flip.
    Service {
        key: ServiceKey,
        service: Service,
    },
}

/// The writes that program `service`, in the order they must reach the data path, and the
/// selection table (0 or 1) that is live after them.
///
/// A new flow reads the live table's slot, then the backend's entry, and is dropped as
/// `drop_no_backend` when that backend is not active. So a backend leaving new-flow selection
/// (draining, down, MAC lost) is written only after the flip to a table without it, and a
/// backend entering it (enabled, up, resolved) is written before the flip to a table with it:
/// the live table never names a backend whose entry says it takes no new flows.
pub fn plan_service(service: &ServiceEntry) -> Result<(Vec<MapWrite>, u32)> {
    let snat: Vec<[u32; 4]> = match service.mode {
        Mode::Nat => service.snat.iter().map(|a| addr_words(*a).0).collect(),
        Mode::Dsr => Vec::new(),
    };
    if service.mode == Mode::Nat && snat.is_empty() {
        bail!("service {}: NAT mode without snat_address", service.name);
    }
    if snat.len() > MAX_SNAT_ADDRS as usize {
        bail!(
            "service {}: {} snat addresses, at most {MAX_SNAT_ADDRS}",
            service.name,
            snat.len()
        );
    }
    let mut before = Vec::new();
    if snat.len() > 1 {
        // Before the service entry that counts them.
        before.push(MapWrite::SnatAddrs {
            offset: service.id * MAX_SNAT_ADDRS,
            addrs: snat.clone(),
        });
    }
    let mut after = Vec::new();
    for backend in &service.backends {
        let (addr, family) = addr_words(backend.addr);
        let state = if backend.mac.is_some() {
            backend.state.to_map()
        } else {
            BACKEND_DOWN
        };
        let write = MapWrite::Backend {
            id: backend.id,
            backend: Backend {
                addr,
                port: backend.port.to_be(),
                family,
                state,
                mac: backend.mac.unwrap_or([0; 6]),
                _pad: [0; 2],
                generation: backend.generation,
                service_id: service.id,
            },
        };
        // Exactly the backends of the new table are active (see `selection_table`).
        if state == BACKEND_ACTIVE {
            before.push(write);
        } else {
            after.push(write);
        }
    }
    let slots = service.selection_table();
    let table = 1 - service.active_table;
    let offset = service.ring_offset(table);
    let entry = Service {
        id: service.id,
        mode: if service.mode == Mode::Nat {
            MODE_NAT
        } else {
            MODE_DSR
        },
        algorithm: ALGORITHM_ROUND_ROBIN,
        snat_count: snat.len() as u8,
        _pad: 0,
        ring_offset: offset,
        ring_len: slots.len() as u32,
        snat_addr: snat.first().copied().unwrap_or_default(),
        syn_rate: service.limits.syn_rate,
        packet_rate: service.limits.packet_rate,
        syn_budget: service.limits.syn_budget,
    };
    let mut writes = before;
    writes.push(MapWrite::Ring { offset, slots });
    writes.push(MapWrite::Service {
        key: service.key,
        service: entry,
    });
    writes.extend(after);
    Ok((writes, table))
}

/// Applies one write of [`plan_service`].
pub fn apply_write(dataplane: &mut Dataplane, write: &MapWrite) -> Result<()> {
    match write {
        MapWrite::Backend { id, backend } => dataplane.put_backend(*id, backend),
        MapWrite::Ring { offset, slots } => dataplane.put_ring(*offset, slots),
        MapWrite::SnatAddrs { offset, addrs } => dataplane.put_snat_addrs(*offset, addrs),
        MapWrite::Service { key, service } => dataplane.put_service(key, service),
    }
}

/// Writes one service to the data path in [`plan_service`]'s order: the backends that take new
/// flows, the selection table into the idle half, the service entry that flips to it, then
/// the backends that take none. Readers never see a half-written table, nor a table slot
/// naming a backend that takes no new flows.
pub fn program_service(dataplane: &mut Dataplane, service: &mut ServiceEntry) -> Result<()> {
    let (writes, table) = plan_service(service)?;
    for write in &writes {
        apply_write(dataplane, write)?;
        if matches!(write, MapWrite::Service { .. }) {
            // The flip happened: the next change writes the other half, even if a later
            // write fails.
            service.active_table = table;
        }
    }
    Ok(())
}

/// Marks backend ids that no service uses any more as unused (their flows re-balance) and
/// removes services that are gone from the config.
pub fn remove_stale(
    dataplane: &mut Dataplane,
    table: &ServiceTable,
    existing_services: &[(ServiceKey, Service)],
    existing_backends: &[Backend],
) -> Result<()> {
    for (key, _) in existing_services {
        if !table.services.iter().any(|s| s.key == *key) {
            dataplane.remove_service(key)?;
        }
    }
    for (id, backend) in existing_backends.iter().enumerate() {
        let used = table
            .services
            .iter()
            .flat_map(|s| &s.backends)
            .any(|b| b.id as usize == id);
        if backend.state != BACKEND_UNUSED && !used {
            dataplane.put_backend(
                id as u32,
                &Backend {
                    state: BACKEND_UNUSED,
                    ..*backend
                },
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_weights_are_strict_round_robin() {
        assert_eq!(weighted_round_robin(&[(7, 1), (9, 1)], 1024), vec![7, 9]);
        assert_eq!(
            weighted_round_robin(&[(1, 5), (2, 5), (3, 5)], 1024),
            vec![1, 2, 3]
        );
    }

    #[test]
    fn weights_are_interleaved_and_proportional() {
        let slots = weighted_round_robin(&[(1, 5), (2, 1), (3, 1)], 1024);
        assert_eq!(slots, vec![1, 1, 2, 1, 3, 1, 1]);
        let slots = weighted_round_robin(&[(1, 2), (2, 1)], 1024);
        assert_eq!(slots, vec![1, 2, 1]);
    }

    #[test]
    fn too_many_slots_are_scaled_down_keeping_every_backend() {
        let backends: Vec<(u32, u32)> =
            (0..20).map(|i| (i, if i == 0 { 100 } else { 3 })).collect();
        let slots = weighted_round_robin(&backends, 64);
        assert!(slots.len() <= 64);
        for i in 0..20 {
            assert!(slots.contains(&i), "backend {i} lost its slot");
        }
    }

    #[test]
    fn addresses_round_trip_through_words() {
        for text in ["10.1.2.3", "fd99::100", "::1", "255.255.255.255"] {
            let addr: IpAddr = text.parse().unwrap_or_else(|e| panic!("{e}"));
            let (words, family) = addr_words(addr);
            assert_eq!(words_addr(words, family), addr);
        }
    }

    fn two_backend_service() -> ServiceEntry {
        let backend = |name: &str, id: u32, last: u8| BackendEntry {
            name: name.into(),
            id,
            generation: 1,
            addr: IpAddr::from([10, 0, 0, last]),
            port: 80,
            weight: 1,
            state: BackendState::Active,
            mac: Some([2, 0, 0, 0, 0, last]),
        };
        ServiceEntry {
            name: "web".into(),
            id: 3,
            key: service_key(IpAddr::from([10, 0, 0, 100]), 80, Protocol::Tcp),
            mode: Mode::Dsr,
            snat: Vec::new(),
            active_table: 0,
            backends: vec![backend("web1", 1, 11), backend("web2", 2, 12)],
            limits: Limits::default(),
        }
    }

    /// Where each write of a plan comes: "flip" for the service entry, the backend's id and
    /// map state for a backend, "table" for the selection table.
    fn order(writes: &[MapWrite]) -> Vec<String> {
        writes
            .iter()
            .map(|w| match w {
                MapWrite::Backend { id, backend } => {
                    format!("backend {id} state {}", backend.state)
                }
                MapWrite::Ring { slots, .. } => format!("table {slots:?}"),
                MapWrite::SnatAddrs { addrs, .. } => format!("snat {}", addrs.len()),
                MapWrite::Service { .. } => "flip".into(),
            })
            .collect()
    }

    /// The order a drain, a health failure, a lost MAC and an enable write the maps in: a
    /// backend leaves new-flow selection after the flip to a table without it, and joins it
    /// before the flip to a table with it.
    #[test]
    fn a_backend_leaves_selection_after_the_flip_and_joins_before_it() {
        let mut service = two_backend_service();
        let (writes, table) = plan_service(&service).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(table, 1);
        assert_eq!(
            order(&writes),
            [
                format!("backend 1 state {BACKEND_ACTIVE}"),
                format!("backend 2 state {BACKEND_ACTIVE}"),
                "table [1, 2]".into(),
                "flip".into(),
            ]
        );
        for (leaves, map_state) in [
            (BackendState::Draining, BACKEND_DRAINING),
            (BackendState::Down, BACKEND_DOWN),
            (BackendState::Standby, BACKEND_DOWN),
        ] {
            service.backends[0].state = leaves;
            let (writes, _) = plan_service(&service).unwrap_or_else(|e| panic!("{e:#}"));
            assert_eq!(
                order(&writes),
                [
                    format!("backend 2 state {BACKEND_ACTIVE}"),
                    "table [2]".into(),
                    "flip".into(),
                    format!("backend 1 state {map_state}"),
                ],
                "{leaves:?}"
            );
        }
        // Back: its state first, then the table that names it.
        service.backends[0].state = BackendState::Active;
        let (writes, _) = plan_service(&service).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            order(&writes),
            [
                format!("backend 1 state {BACKEND_ACTIVE}"),
                format!("backend 2 state {BACKEND_ACTIVE}"),
                "table [1, 2]".into(),
                "flip".into(),
            ]
        );
        // A backend without a MAC is written down, after the flip.
        service.backends[1].mac = None;
        let (writes, _) = plan_service(&service).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            order(&writes),
            [
                format!("backend 1 state {BACKEND_ACTIVE}"),
                "table [1]".into(),
                "flip".into(),
                format!("backend 2 state {BACKEND_DOWN}"),
            ]
        );
    }

    #[test]
    fn no_backend_no_slot() {
        assert!(weighted_round_robin(&[], 1024).is_empty());
    }
}
