//! The host under the flood: nftables as the peer, NIC counters, and the CPUs the receive path and the lab are pinned to.
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Map, Value};
use xtask::lab::{host, Lab};

use super::*;

pub(super) const NFT_TABLE: &str = "lbbench";

pub(super) fn nft_rule(lab: &Lab, on: bool) -> Result<()> {
    if on {
        lab.exec(host::LB, &["nft", &format!("add table netdev {NFT_TABLE}")])?;
        lab.exec(
            host::LB,
            &["nft", &format!("add chain netdev {NFT_TABLE} ingress {{ type filter hook ingress device eth0 priority -500; }}")],
        )?;
        lab.exec(
            host::LB,
            &[
                "nft",
                &format!("add rule netdev {NFT_TABLE} ingress ip saddr {UNLISTED} counter drop"),
            ],
        )?;
    } else {
        let _ = lab.exec_unchecked(
            host::LB,
            &["nft", &format!("delete table netdev {NFT_TABLE}")],
        );
    }
    Ok(())
}

pub(super) fn nft_dropped(lab: &Lab) -> Option<u64> {
    let out = lab
        .exec_stdout(
            host::LB,
            &["nft", &format!("list table netdev {NFT_TABLE}")],
        )
        .ok()?;
    out.split("packets ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Counters of the veth ends on the flood's way (`ethtool -S`): the client's eth0, its switch
/// port, the lb's switch port, the lb's eth0.
pub(super) fn nic_counters(lab: &Lab) -> Vec<(String, u64)> {
    let mut all = Vec::new();
    let (sw_client, sw_lb) = (lab.switch_port(host::CLIENT).1, lab.switch_port(host::LB).1);
    for (host, iface, label) in [
        (host::CLIENT, "eth0", "client/eth0"),
        (xtask::lab::SWITCH, sw_client.as_str(), "sw/client"),
        (xtask::lab::SWITCH, sw_lb.as_str(), "sw/lb"),
        (host::LB, "eth0", "lb/eth0"),
    ] {
        let Ok(text) = lab.exec_stdout(host, &["ethtool", "-S", iface]) else {
            continue;
        };
        for line in text.lines() {
            if let Some((k, v)) = line.trim().split_once(':') {
                if let Ok(v) = v.trim().parse::<u64>() {
                    all.push((format!("{label} {}", k.trim()), v));
                }
            }
        }
    }
    all
}

/// Non-zero differences of the drop, error and XDP counters between two [`nic_counters`].
pub(super) fn nic_delta(before: &[(String, u64)], after: &[(String, u64)]) -> Value {
    let mut out = Map::new();
    for (k, v) in after {
        let b = before
            .iter()
            .find(|(bk, _)| bk == k)
            .map_or(0, |(_, bv)| *bv);
        let interesting = ["drop", "err", "xdp", "full"].iter().any(|w| k.contains(w));
        if interesting && *v > b {
            out.insert(k.clone(), json!(v - b));
        }
    }
    Value::Object(out)
}

/// The CPUs of the flood part. The generator stands for the outside world, so it gets a CPU of
/// its own, and the whole lab (the lb's receive work, its eth0's NAPI made a kernel thread; the
/// agent, the web servers, wrk) shares the other. Otherwise the lb's receive path runs inside
/// the generator's system calls (a veth hands frames over on the sending CPU), so what the lb
/// spends on the flood slows the flood rather than the lb, and the generator's CPU time, which
/// no real flood costs its victim, comes out of the legit traffic's.
#[derive(Clone, Copy, Debug)]
pub(super) struct CpuSplit {
    pub(super) generator: usize,
    pub(super) lab: usize,
}

pub(super) fn cpu_split() -> Option<CpuSplit> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cpus >= 2).then_some(CpuSplit {
        generator: 0,
        lab: cpus - 1,
    })
}

/// Moves the NAPI of the lb's eth0 into a kernel thread (`threaded` NAPI) pinned to
/// `split.lab`; returns its pid.
pub(super) fn pin_lb_receive(lab: &Lab, split: CpuSplit) -> Result<u32> {
    let napi_threads = || -> Vec<u32> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.starts_with("napi/eth0-"))
            })
            .collect()
    };
    let before = napi_threads();
    lab.exec(
        host::LB,
        &["sh", "-c", "echo 1 > /sys/class/net/eth0/threaded"],
    )
    .context("turning on threaded NAPI on the lb's eth0")?;
    let mut new: Vec<u32> = Vec::new();
    xtask::util::wait_until(Duration::from_secs(2), Duration::from_millis(20), || {
        new = napi_threads()
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        !new.is_empty()
    });
    let [pid] = new[..] else {
        bail!("expected one new napi/eth0-* thread for the lb's eth0, found {new:?}");
    };
    xtask::util::output(std::process::Command::new("taskset").args([
        "-pc",
        &split.lab.to_string(),
        &pid.to_string(),
    ]))
    .context("pinning the lb's NAPI thread")?;
    // Real-time priority, as the softirq it replaces has: receive work runs before processes.
    // A fair-share thread would leave frames waiting in the 256-frame ring behind wrk and the
    // web servers and lose them there, whatever the lb does with them.
    xtask::util::output(std::process::Command::new("chrt").args([
        "-f",
        "-p",
        "50",
        &pid.to_string(),
    ]))
    .context("giving the lb's NAPI thread real-time priority")?;
    Ok(pid)
}

/// Pins every process in the lab's namespaces (all their threads) to `cpu`; returns how many.
pub(super) fn pin_lab_processes(lab: &Lab, cpu: usize) -> Result<usize> {
    use std::os::unix::fs::MetadataExt as _;
    let mut inodes = Vec::new();
    for ns in lab.spec().namespaces() {
        let meta = std::fs::metadata(format!("/run/netns/{ns}"))
            .with_context(|| format!("namespace {ns}"))?;
        inodes.push(format!("net:[{}]", meta.ino()));
    }
    let mut pinned = 0;
    for entry in std::fs::read_dir("/proc")?.filter_map(|e| e.ok()) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(link) = std::fs::read_link(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        if !inodes.iter().any(|i| link.as_os_str() == i.as_str()) {
            continue;
        }
        xtask::util::output(std::process::Command::new("taskset").args([
            "-a",
            "-pc",
            &cpu.to_string(),
            &pid.to_string(),
        ]))
        .with_context(|| format!("pinning pid {pid} to CPU {cpu}"))?;
        pinned += 1;
    }
    Ok(pinned)
}
