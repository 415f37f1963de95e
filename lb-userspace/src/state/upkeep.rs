//! Background upkeep: backends' MAC addresses resolved and kept up to date, `HOST_ADDRS` kept
//! to the interface's addresses, and the NAT ports in use counted.
use std::{
    net::IpAddr,
    sync::{Mutex, Weak},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use log::{info, warn};

use crate::{dataplane::NatTables, firewall, neighbor};

use super::{changes::dedup, lock, AgentState, NatPortSample};

/// The interface's addresses are re-read on every address notification, and this often without
/// one (a notification lost to a full socket buffer, or no netlink at all).
const HOST_ADDRS_RECHECK: Duration = Duration::from_secs(10);
/// The NAT ports in use are counted this long after the previous count ended...
const NAT_COUNT_INTERVAL: Duration = Duration::from_secs(2);
/// ...and one count walks the NAT table for this long at most (then it is a lower bound).
const NAT_COUNT_BUDGET: Duration = Duration::from_secs(2);

/// A backend without a MAC, as it was when the question was asked.
#[derive(Debug, Clone, Copy)]
pub struct Unresolved {
    pub id: u32,
    pub generation: u32,
    pub addr: IpAddr,
}

/// The backends without a MAC and the interface to look for them on.
#[derive(Debug, Clone)]
pub struct MacQuery {
    pub ifindex: u32,
    pub backends: Vec<Unresolved>,
}

impl MacQuery {
    /// Looks each backend up in the neighbour table, and provokes ARP/NDP for those not there
    /// (found by a later query). Netlink and a socket: call it off the runtime, without the lock.
    pub fn run(&self) -> Vec<(Unresolved, [u8; 6])> {
        let addrs: Vec<IpAddr> = self.backends.iter().map(|b| b.addr).collect();
        // One dump of the table for all of them; a failed dump asks the kernel for every one.
        let entries = neighbor::lookup_many(self.ifindex, &addrs).unwrap_or_default();
        let mut found = Vec::new();
        for (i, backend) in self.backends.iter().enumerate() {
            match entries.get(i).copied().flatten() {
                Some(entry) => found.push((*backend, entry.mac)),
                None => neighbor::reverify(backend.addr),
            }
        }
        found
    }
}

/// Every backend with the MAC the data path has for it, to compare with the neighbour table.
#[derive(Debug, Clone)]
pub struct MacRecheck {
    pub ifindex: u32,
    pub backends: Vec<(Unresolved, [u8; 6])>,
}

impl MacRecheck {
    /// The backends whose neighbour entry now has another MAC (a host that changed its NIC or
    /// moved); asks the kernel to re-verify stale entries, for the next recheck. Netlink: call
    /// it off the runtime, without the lock.
    pub fn run(&self) -> Result<Vec<(Unresolved, [u8; 6])>> {
        let addrs: Vec<IpAddr> = self.backends.iter().map(|(b, _)| b.addr).collect();
        let entries = neighbor::lookup_many(self.ifindex, &addrs)?;
        let mut changed = Vec::new();
        for ((backend, known), entry) in self.backends.iter().zip(entries) {
            // Gone from the table, or not confirmed lately: the kernel looks again.
            let Some(entry) = entry else {
                neighbor::reverify(backend.addr);
                continue;
            };
            if entry.stale {
                neighbor::reverify(backend.addr);
            }
            if entry.mac != *known {
                changed.push((*backend, entry.mac));
            }
        }
        Ok(changed)
    }
}

impl AgentState {
    /// What [`MacRecheck::run`] compares: every backend that has a MAC.
    pub fn mac_recheck(&self) -> MacRecheck {
        MacRecheck {
            ifindex: self.ifindex,
            backends: self
                .table
                .services
                .iter()
                .flat_map(|s| &s.backends)
                .filter_map(|b| {
                    let asked = Unresolved {
                        id: b.id,
                        generation: b.generation,
                        addr: b.addr,
                    };
                    b.mac.map(|mac| (asked, mac))
                })
                .collect(),
        }
    }

    /// What [`record_macs`](Self::record_macs) needs to be asked.
    pub fn unresolved(&self) -> MacQuery {
        MacQuery {
            ifindex: self.ifindex,
            backends: self
                .table
                .services
                .iter()
                .flat_map(|s| &s.backends)
                .filter(|b| b.mac.is_none())
                .map(|b| Unresolved {
                    id: b.id,
                    generation: b.generation,
                    addr: b.addr,
                })
                .collect(),
        }
    }

    /// Gives the MACs a [`MacQuery`] or a [`MacRecheck`] found to their backends (those still
    /// there and the same), and rewrites the services whose backends gained or changed one.
    pub fn record_macs(&mut self, found: &[(Unresolved, [u8; 6])]) {
        for index in 0..self.table.services.len() {
            let service = &mut self.table.services[index];
            let mut changed = false;
            for backend in &mut service.backends {
                let Some((_, mac)) = found.iter().find(|(asked, _)| {
                    asked.id == backend.id
                        && asked.generation == backend.generation
                        && asked.addr == backend.addr
                }) else {
                    continue;
                };
                match backend.mac {
                    Some(known) if known == *mac => continue,
                    Some(known) => info!(
                        "service {} backend {}: MAC changed from {} to {}",
                        service.name,
                        backend.name,
                        neighbor::format_mac(&known),
                        neighbor::format_mac(mac)
                    ),
                    None => info!(
                        "service {} backend {}: resolved to {}",
                        service.name,
                        backend.name,
                        neighbor::format_mac(mac)
                    ),
                }
                backend.mac = Some(*mac);
                changed = true;
            }
            if changed {
                if let Err(e) = self.program_service(index) {
                    warn!("service {}: {e:#}", self.table.services[index].name);
                }
            }
        }
    }

    /// Brings `HOST_ADDRS` up to date with the interface's addresses `now`: adds the new ones and
    /// removes the gone ones (a VIP stays), one entry at a time, without rebuilding the rule
    /// set. Returns whether anything changed.
    pub fn refresh_host_addrs(&mut self, now: Vec<IpAddr>) -> Result<bool> {
        let now = dedup(now);
        let added: Vec<IpAddr> = now
            .iter()
            .filter(|a| !self.host_addrs.contains(a))
            .copied()
            .collect();
        let removed: Vec<IpAddr> = self
            .host_addrs
            .iter()
            .filter(|a| !now.contains(a))
            .copied()
            .collect();
        if added.is_empty() && removed.is_empty() {
            return Ok(false);
        }
        let vips: Vec<IpAddr> = self.config.services.iter().map(|s| s.vip).collect();
        let add: Vec<_> = added.iter().map(|a| firewall::addr_key(*a)).collect();
        let remove: Vec<_> = removed
            .iter()
            .filter(|a| !vips.contains(a))
            .map(|a| firewall::addr_key(*a))
            .collect();
        self.dataplane.update_host_addrs(&add, &remove)?;
        let list = |addrs: &[IpAddr]| {
            if addrs.is_empty() {
                "none".to_string()
            } else {
                addrs
                    .iter()
                    .map(IpAddr::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        info!(
            "addresses of {} changed: added {}, removed {}; the host policy now covers {}",
            self.iface,
            list(&added),
            list(&removed),
            list(&now)
        );
        self.host_addrs = now;
        Ok(true)
    }
}

/// Follows the interface's addresses on a thread of its own (netlink and getifaddrs block):
/// each address notification about the interface, and every [`HOST_ADDRS_RECHECK`] anyway,
/// re-reads them and brings `HOST_ADDRS` up to date. Ends when the agent is gone.
pub(crate) fn watch_host_addresses(
    state: Weak<Mutex<AgentState>>,
    iface: String,
    ifindex: u32,
) -> Result<()> {
    let events = match neighbor::AddressEvents::open() {
        Ok(events) => Some(events),
        Err(e) => {
            warn!(
                "{e:#}: the addresses of {iface} are re-read every {} s instead",
                HOST_ADDRS_RECHECK.as_secs()
            );
            None
        }
    };
    std::thread::Builder::new()
        .name("host-addrs".into())
        .spawn(move || {
            // Subscribed before this first read: no change between the two is missed.
            loop {
                let Some(shared) = state.upgrade() else {
                    return;
                };
                match firewall::interface_addresses(&iface) {
                    Ok(addrs) => {
                        if let Err(e) = lock(&shared).refresh_host_addrs(addrs) {
                            warn!("updating the host addresses: {e:#}");
                        }
                    }
                    Err(e) => warn!("reading the addresses of {iface}: {e:#}"),
                }
                drop(shared);
                match &events {
                    Some(events) => {
                        if let Err(e) = events.wait(ifindex, HOST_ADDRS_RECHECK) {
                            warn!("{e:#}");
                            std::thread::sleep(HOST_ADDRS_RECHECK);
                        }
                    }
                    None => std::thread::sleep(HOST_ADDRS_RECHECK),
                }
            }
        })
        .context("starting the host address watch")?;
    Ok(())
}

/// Counts the NAT ports in use on a thread of its own (a walk of the NAT table, each entry a
/// few map look-ups), every [`NAT_COUNT_INTERVAL`], each walk bounded by [`NAT_COUNT_BUDGET`].
/// Ends when the agent is gone.
pub(super) fn count_nat_ports(
    tables: NatTables,
    sample: Weak<Mutex<Option<NatPortSample>>>,
) -> Result<()> {
    std::thread::Builder::new()
        .name("nat-ports".into())
        .spawn(move || loop {
            let result = tables.count(Instant::now() + NAT_COUNT_BUDGET);
            let Some(shared) = sample.upgrade() else {
                return;
            };
            match result {
                Ok(count) => {
                    *shared
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(NatPortSample {
                        count,
                        at: Instant::now(),
                    });
                }
                Err(e) => warn!("counting the NAT ports in use: {e:#}"),
            }
            drop(shared);
            std::thread::sleep(NAT_COUNT_INTERVAL);
        })
        .context("starting the NAT port count")?;
    Ok(())
}
