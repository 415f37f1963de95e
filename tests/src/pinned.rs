//! The maps a running agent pinned, read from outside it: the lab tests check the program's own
//! counters, not only what the agent reports.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use aya::maps::{Array, HashMap, MapData};
use lb_common::{
    maps::{AddrKey, Backend, Counters, RuleCounters, Verdict},
    names,
};
use lb_userspace::dataplane::{rule_counters, sum_counters};

/// Read access to the maps a running agent pinned, for the lab tests (the agent itself and the
/// CLI go through the API).
pub struct PinnedMaps {
    dir: PathBuf,
}

impl PinnedMaps {
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.join(names::BACKENDS).exists() {
            bail!(
                "no pinned maps under {}: is `lb run` running with this pin_path?",
                dir.display()
            );
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn map(&self, name: &str) -> Result<aya::maps::Map> {
        let data = MapData::from_pin(self.dir.join(name))
            .with_context(|| format!("opening pinned map {name}"))?;
        Ok(match name {
            names::SERVICE_STATS
            | names::BACKEND_STATS
            | names::VERDICT_STATS
            | names::RULE_STATS => aya::maps::Map::PerCpuArray(data),
            names::SERVICES | names::HOST_ADDRS => aya::maps::Map::HashMap(data),
            _ => aya::maps::Map::Array(data),
        })
    }

    pub fn backends(&self) -> Result<Vec<Backend>> {
        let map = self.map(names::BACKENDS)?;
        let array: Array<&MapData, Backend> = Array::try_from(&map)?;
        array
            .iter()
            .map(|item| item.context("reading BACKENDS"))
            .collect()
    }

    pub fn backend_counters(&self, id: u32) -> Result<Counters> {
        self.counters(names::BACKEND_STATS, id)
    }

    pub fn service_counters(&self, id: u32) -> Result<Counters> {
        self.counters(names::SERVICE_STATS, id)
    }

    /// The keys of `HOST_ADDRS`: the addresses the host policy protects (the VIPs among them).
    pub fn host_addrs(&self) -> Result<Vec<AddrKey>> {
        let map = self.map(names::HOST_ADDRS)?;
        let map: HashMap<&MapData, AddrKey, u8> = HashMap::try_from(&map)?;
        map.keys()
            .map(|key| key.context("reading HOST_ADDRS"))
            .collect()
    }

    pub fn verdict_counters(&self) -> Result<Vec<(Verdict, Counters)>> {
        Verdict::ALL
            .iter()
            .map(|&v| Ok((v, self.counters(names::VERDICT_STATS, v as u32)?)))
            .collect()
    }

    pub fn rule_counters(&self, id: u32) -> Result<RuleCounters> {
        rule_counters(&self.map(names::RULE_STATS)?, id)
    }

    fn counters(&self, name: &str, index: u32) -> Result<Counters> {
        sum_counters(&self.map(name)?, index)
    }
}
