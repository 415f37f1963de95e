//! The firewall's maps: the whole-config flags, the IPv4 rule table, IPv6 and per-service
//! prefixes by rule generation, the host policy's state, and the rule counters.

use anyhow::{bail, Context as _, Result};
use aya::maps::{
    lpm_trie::{Key as LpmKey, LpmTrie},
    Array, HashMap, IterableMap as _, MapData, PerCpuArray,
};
use lb_common::{
    maps::{
        AddrKey, CidrV6, Firewall, FwRule, HostPort, RuleCounters, ServiceCidr, V4Group,
        CIDR_GENERATION_BITS, FAMILY_V4, FAMILY_V6, SERVICE_CIDR_FAMILY_BITS,
        SERVICE_CIDR_PREFIX_BITS,
    },
    names,
};

use ipnet::{IpNet, Ipv6Net};
use std::os::fd::{AsFd as _, AsRawFd as _};

use super::{map_data, rule_counters, Dataplane};

impl Dataplane {
    pub fn firewall(&self) -> Result<Firewall> {
        let map: Array<&MapData, Firewall> = Array::try_from(self.map(names::FIREWALL)?)?;
        map.get(&0, 0).context("reading FIREWALL")
    }

    /// Switches the firewall settings (and the live rule generation) in one write.
    pub fn set_firewall(&mut self, firewall: &Firewall) -> Result<()> {
        let mut map: Array<&mut MapData, Firewall> =
            Array::try_from(self.map_mut(names::FIREWALL)?)?;
        map.set(0, firewall, 0).context("writing FIREWALL")?;
        Ok(())
    }

    /// Copies an IPv4 rule table (firewall::V4Table) into the half of `FW_V4_TABLE` of
    /// `generation`, through a shared mapping of the map: one copy, not a syscall per group.
    /// That half must not be the live one. Groups past the table's end are left as they are:
    /// no entry of the table points to them.
    pub fn write_v4_table(&mut self, generation: u32, groups: &[V4Group]) -> Result<()> {
        let half = self.v4_half_groups()?;
        if groups.len() > half as usize {
            bail!(
                "an IPv4 rule table of {} groups does not fit a half of FW_V4_TABLE ({half})",
                groups.len()
            );
        }
        let map: Array<&MapData, V4Group> = Array::try_from(self.map(names::FW_V4_TABLE)?)?;
        let half_bytes = half as usize * std::mem::size_of::<V4Group>();
        let offset = if generation == 0 { 0 } else { half_bytes };
        // SAFETY: a fresh shared mapping of `half_bytes` of the map's values (BPF_F_MMAPABLE; the
        // half is page aligned), written within its bounds and unmapped below.
        unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                half_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.map().fd().as_fd().as_raw_fd(),
                offset as libc::off_t,
            );
            if base == libc::MAP_FAILED {
                return Err(std::io::Error::last_os_error()).context("mmap of FW_V4_TABLE");
            }
            std::ptr::copy_nonoverlapping(groups.as_ptr(), base.cast::<V4Group>(), groups.len());
            libc::munmap(base, half_bytes);
        }
        Ok(())
    }

    /// Groups of each half of `FW_V4_TABLE`, as loaded (the kernel's `max_entries`: an adopted
    /// table keeps its size).
    pub fn v4_half_groups(&self) -> Result<u32> {
        let info = map_data(self.map(names::FW_V4_TABLE)?)?
            .info()
            .context("reading FW_V4_TABLE's info")?;
        Ok(info.max_entries() / 2)
    }

    /// An IPv6 source prefix of a rule generation.
    pub fn put_v6_prefix(&mut self, generation: u32, cidr: &Ipv6Net, rule: &FwRule) -> Result<()> {
        let bits = CIDR_GENERATION_BITS + u32::from(cidr.prefix_len());
        let mut map: LpmTrie<&mut MapData, CidrV6, FwRule> =
            LpmTrie::try_from(self.map_mut(names::FW_V6)?)?;
        let key = LpmKey::new(
            bits,
            CidrV6 {
                generation: generation as u8,
                addr: cidr.addr().octets(),
            },
        );
        map.insert(&key, rule, 0)
            .with_context(|| format!("writing {cidr} to FW_V6"))?;
        Ok(())
    }

    /// A source rule of a scope (service or host port); `None` is the scope's catch-all.
    pub fn put_scoped_prefix(
        &mut self,
        generation: u32,
        scope: u32,
        cidr: Option<&IpNet>,
        rule: &FwRule,
    ) -> Result<()> {
        // The catch-all covers the scope in both families; a prefix also matches its family.
        let (bits, family, addr) = match cidr {
            None => (SERVICE_CIDR_PREFIX_BITS, 0, [0u8; 16]),
            Some(cidr) => {
                let mut addr = [0u8; 16];
                let family = match cidr {
                    IpNet::V4(v4) => {
                        addr[..4].copy_from_slice(&v4.addr().octets());
                        FAMILY_V4
                    }
                    IpNet::V6(v6) => {
                        addr = v6.addr().octets();
                        FAMILY_V6
                    }
                };
                (
                    SERVICE_CIDR_PREFIX_BITS
                        + SERVICE_CIDR_FAMILY_BITS
                        + u32::from(cidr.prefix_len()),
                    family,
                    addr,
                )
            }
        };
        let mut map: LpmTrie<&mut MapData, ServiceCidr, FwRule> =
            LpmTrie::try_from(self.map_mut(names::SERVICE_SOURCES)?)?;
        let key = LpmKey::new(
            bits,
            ServiceCidr {
                generation: generation as u8,
                service: scope.to_be_bytes(),
                family,
                addr,
            },
        );
        map.insert(&key, rule, 0)
            .context("writing SERVICE_SOURCES")?;
        Ok(())
    }

    /// Removes every prefix of one rule generation from the two tries (the IPv4 table's halves
    /// are overwritten whole instead).
    pub fn clear_rule_generation(&mut self, generation: u32) -> Result<()> {
        let generation = generation as u8;
        {
            let mut map: LpmTrie<&mut MapData, CidrV6, FwRule> =
                LpmTrie::try_from(self.map_mut(names::FW_V6)?)?;
            let keys: Vec<_> = map
                .keys()
                .filter_map(|k| k.ok())
                .filter(|k| k.data().generation == generation)
                .collect();
            for key in keys {
                map.remove(&key).context("removing from FW_V6")?;
            }
        }
        let mut map: LpmTrie<&mut MapData, ServiceCidr, FwRule> =
            LpmTrie::try_from(self.map_mut(names::SERVICE_SOURCES)?)?;
        let keys: Vec<_> = map
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.data().generation == generation)
            .collect();
        for key in keys {
            map.remove(&key).context("removing from SERVICE_SOURCES")?;
        }
        Ok(())
    }

    /// Adds host addresses, VIPs and open host ports (before a rule switch).
    pub fn add_host_state(
        &mut self,
        hosts: &[AddrKey],
        vips: &[AddrKey],
        ports: &[(HostPort, u32)],
    ) -> Result<()> {
        for (name, keys) in [(names::HOST_ADDRS, hosts), (names::VIPS, vips)] {
            let mut map: HashMap<&mut MapData, AddrKey, u8> =
                HashMap::try_from(self.map_mut(name)?)?;
            for key in keys {
                map.insert(key, 1, 0)
                    .with_context(|| format!("writing {name}"))?;
            }
        }
        let mut map: HashMap<&mut MapData, HostPort, u32> =
            HashMap::try_from(self.map_mut(names::HOST_PORTS)?)?;
        for (port, scope) in ports {
            map.insert(port, scope, 0).context("writing HOST_PORTS")?;
        }
        Ok(())
    }

    /// Adds and removes host addresses (`HOST_ADDRS`) alone, when the interface's addresses
    /// change between rule sets. Removing an address that is not there is not an error.
    pub fn update_host_addrs(&mut self, add: &[AddrKey], remove: &[AddrKey]) -> Result<()> {
        let mut map: HashMap<&mut MapData, AddrKey, u8> =
            HashMap::try_from(self.map_mut(names::HOST_ADDRS)?)?;
        for key in add {
            map.insert(key, 1, 0)
                .context("writing HOST_ADDRS (it holds 256 addresses)")?;
        }
        for key in remove {
            if map.get(key, 0).is_ok() {
                map.remove(key).context("removing from HOST_ADDRS")?;
            }
        }
        Ok(())
    }

    /// Removes host addresses, VIPs and ports not in these lists (after a rule switch).
    pub fn retain_host_state(
        &mut self,
        hosts: &[AddrKey],
        vips: &[AddrKey],
        ports: &[(HostPort, u32)],
    ) -> Result<()> {
        for (name, keep) in [(names::HOST_ADDRS, hosts), (names::VIPS, vips)] {
            let mut map: HashMap<&mut MapData, AddrKey, u8> =
                HashMap::try_from(self.map_mut(name)?)?;
            let stale: Vec<AddrKey> = map
                .keys()
                .filter_map(|k| k.ok())
                .filter(|k| !keep.contains(k))
                .collect();
            for key in stale {
                map.remove(&key)
                    .with_context(|| format!("removing from {name}"))?;
            }
        }
        let mut map: HashMap<&mut MapData, HostPort, u32> =
            HashMap::try_from(self.map_mut(names::HOST_PORTS)?)?;
        let stale: Vec<HostPort> = map
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !ports.iter().any(|(p, _)| p == k))
            .collect();
        for key in stale {
            map.remove(&key).context("removing from HOST_PORTS")?;
        }
        Ok(())
    }

    /// Sets the counters of rules `ids` to zero on every CPU.
    pub fn reset_rule_counters(&mut self, ids: &[u32]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        let mut array: PerCpuArray<&mut MapData, RuleCounters> =
            PerCpuArray::try_from(self.map_mut(names::RULE_STATS)?)?;
        for id in ids {
            let zeros = aya::maps::PerCpuValues::try_from(vec![RuleCounters::default(); cpus])?;
            array
                .set(*id, zeros, 0)
                .with_context(|| format!("zeroing RULE_STATS[{id}]"))?;
        }
        Ok(())
    }

    /// A rule's counters summed over the CPUs.
    pub fn rule_counters(&self, id: u32) -> Result<RuleCounters> {
        rule_counters(self.map(names::RULE_STATS)?, id)
    }
}
