//! Legit HTTP under a flood (`flood` keys). In a lab of its own (`lbb-fl-`), the stack as
//! `xtask::stack` starts it; wrk from the client to the VIP (DSR) measures legit req/s:
//! 1. `baseline_rps`: no flood;
//! 2. `none_rps`: flood from a source no rule names (our firewall lets it pass to the kernel);
//! 3. `nftables_rps`: the same flood, dropped by an nftables rule in the lb namespace;
//! 4. `xdp_rps`: a flood from a source our drop rule names, dropped by our XDP program.
//!
//! The flood is made the way xdp-trafficgen makes it: an XDP program that returns XDP_TX is run
//! by BPF_PROG_TEST_RUN in live-frames mode (`lb-bench flood-gen`), so the kernel sends each
//! frame out of an interface without any socket. By default it is sent from the lb's switch
//! port, so it reaches the lb's eth0 as XDP frames, the way a flood reaches a NIC: as raw
//! frames, before any socket buffer exists (`FloodEntry`). Bounded in packets and in seconds.
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use lb_common::maps::Verdict;
use lb_tests::packet::Frame;
use lb_userspace::dataplane::{Dataplane, LoadOptions};
use serde_json::{json, Map, Value};
use xtask::{
    lab::{addr, host, Lab},
    stack,
};

use super::labkit::{self, median, round, Wrk};

mod tuning;
use self::tuning::*;

mod generator;
pub use self::generator::{generate, parse_mac, GenArgs, GenKind};

pub const PREFIX: &str = "lbb-fl-";
pub const KEYS: [&str; 5] = [
    "flood_pps",
    "baseline_rps",
    "none_rps",
    "nftables_rps",
    "xdp_rps",
];
/// Second address of the client, named by our drop rule (the `xdp` case floods from it).
const DENIED: &str = "10.99.0.66";
/// Third address of the client, named by no rule of ours (the `none` and `nftables` cases).
const UNLISTED: &str = "10.99.0.67";
/// The flood: UDP to this port of the VIP. Not a service, so the load balancer's kernel gets
/// whatever the XDP program passes; opened in the host policy so that the policy itself does
/// not drop it (then only the rule under test does).
const FLOOD_PORT: u16 = 9;

/// The flood's target rate. An attacker's rate does not depend on how the victim filters: every
/// flooded case gets the same rate, so what differs is only what the lb pays per flood packet.
/// The paced generator reaches ~85% of it here (~600k pps; unpaced, ~1.8M: the probe).
pub const DEFAULT_PPS: u64 = 700_000;

const FIREWALL: &str = r#"
[[firewall.rule]]
name = "flood-source"
sources = ["10.99.0.66/32"]
action = "drop"

[[firewall.host.open_ports]]
port = 22

[[firewall.host.open_ports]]
port = 68
protocol = "udp"

[[firewall.host.open_ports]]
port = 9
protocol = "udp"
"#;

/// Where the flood enters the lab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloodEntry {
    /// From the lb's switch port, straight into the lb's eth0 ring as XDP frames: what a NIC
    /// hands its driver. Our XDP program drops a frame before any socket buffer is built;
    /// nftables (and the kernel) only see it after one is.
    LbPort,
    /// From the client's eth0, across the bridge: the bridge turns every frame into a socket
    /// buffer, and the lb's veth must convert it back for XDP, so XDP's advantage mostly
    /// disappears (the figures before the default changed).
    Client,
}

impl FloodEntry {
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "lb-port" => Ok(FloodEntry::LbPort),
            "client" => Ok(FloodEntry::Client),
            other => bail!("--flood-entry {other:?}: expected lb-port or client"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            FloodEntry::LbPort => "lb-port",
            FloodEntry::Client => "client",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub quick: bool,
    pub wrk: Wrk,
    pub repetitions: u32,
    /// Upper bound of flood packets per run.
    pub max_packets: u64,
    /// Frames per BPF_PROG_TEST_RUN batch (live frames; the kernel allows up to 256).
    pub batch: u32,
    /// The flood's rate, the same in every flooded case (0: as fast as the kernel takes them).
    pub pps: u64,
    /// Seconds of the unpaced probe of the highest rate (0: no probe).
    pub probe_seconds: f64,
    pub entry: FloodEntry,
    /// Give the generator and the lb's receive path a CPU each (`CpuSplit`).
    pub split_cpus: bool,
}

impl Config {
    pub fn new(quick: bool) -> Self {
        Config {
            quick,
            wrk: Wrk {
                threads: 2,
                connections: 64,
                seconds: if quick { 5 } else { 10 },
                cpu: None,
            },
            repetitions: if quick { 2 } else { 3 },
            max_packets: 200_000_000,
            batch: 64,
            pps: DEFAULT_PPS,
            probe_seconds: 2.0,
            entry: FloodEntry::LbPort,
            split_cpus: true,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The generator (`lb-bench flood-gen`, run inside the namespace of the interface it sends from).

pub struct FloodResult {
    pub flood: Value,
    pub detail: Value,
}

/// Verdict counters of the running agent (its pinned maps), summed over the verdicts a flood
/// packet can get at the lb.
fn flood_verdicts(dp: &Dataplane) -> Result<(u64, u64)> {
    let all = dp.verdict_counters()?;
    let get = |v: Verdict| {
        all.iter()
            .find(|(x, _)| *x == v)
            .map_or(0, |(_, c)| c.packets)
    };
    let denied = get(Verdict::DropDenied);
    let passed =
        get(Verdict::PassNoService) + get(Verdict::PassHost) + get(Verdict::DropHostPolicy);
    Ok((denied, passed))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Case {
    Baseline,
    None,
    Nftables,
    Xdp,
}

impl Case {
    fn key(self) -> &'static str {
        match self {
            Case::Baseline => "baseline_rps",
            Case::None => "none_rps",
            Case::Nftables => "nftables_rps",
            Case::Xdp => "xdp_rps",
        }
    }
    fn source(self) -> Option<&'static str> {
        match self {
            Case::Baseline => None,
            Case::None | Case::Nftables => Some(UNLISTED),
            Case::Xdp => Some(DENIED),
        }
    }
}

/// The namespace and interface the generator sends from, and the label of that interface in
/// [`nic_counters`].
fn gen_iface(lab: &Lab, entry: FloodEntry) -> (String, String, &'static str) {
    match entry {
        FloodEntry::LbPort => (
            xtask::lab::SWITCH.to_string(),
            lab.switch_port(host::LB).1,
            "sw/lb",
        ),
        FloodEntry::Client => (host::CLIENT.to_string(), "eth0".into(), "client/eth0"),
    }
}

/// Starts the generator (bounded by `seconds` and `cfg.max_packets`).
fn spawn_gen(
    lab: &Lab,
    cfg: &Config,
    src: &str,
    pps: u64,
    seconds: f64,
    lb_mac: &str,
    log: &str,
) -> Result<u32> {
    let exe = labkit::self_exe()?;
    let (ns, iface, _) = gen_iface(lab, cfg.entry);
    let pin: Vec<String> = match cfg.split_cpus.then(cpu_split).flatten() {
        Some(split) => vec!["taskset".into(), "-c".into(), split.generator.to_string()],
        None => Vec::new(),
    };
    let args = [
        exe.display().to_string(),
        "flood-gen".into(),
        "--iface".into(),
        iface,
        "--dst-mac".into(),
        lb_mac.to_string(),
        "--src".into(),
        src.into(),
        "--dst".into(),
        addr::VIP_HTTP.into(),
        "--dport".into(),
        FLOOD_PORT.to_string(),
        "--packets".into(),
        cfg.max_packets.to_string(),
        "--seconds".into(),
        seconds.to_string(),
        "--batch".into(),
        cfg.batch.to_string(),
        "--pps".into(),
        pps.to_string(),
    ];
    let args: Vec<String> = pin.into_iter().chain(args).collect();
    lab.spawn(&ns, &args, log)
}

/// Waits for the generator to end (it is bounded by its own --seconds) and reads its result.
fn gen_result(lab: &Lab, pid: u32, log: &str) -> Value {
    let done = xtask::util::wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
        !lab.is_running(pid)
    });
    if !done {
        let _ = lab.stop(pid);
    }
    let text = lab.read_log(log);
    text.lines().rev().find_map(|l| serde_json::from_str::<Value>(l).ok()).unwrap_or_else(|| {
        json!({ "error": format!("no result line from the generator: {}", text.lines().rev().take(5).collect::<Vec<_>>().join(" | ")) })
    })
}

/// The highest rate: the generator unpaced for a few seconds, no wrk, from the denied source
/// (dropped by our XDP program at the lb). What the generator sent and what reached the lb.
fn probe(lab: &Lab, dp: &Dataplane, cfg: &Config, lb_mac: &str) -> Result<Value> {
    let before = flood_verdicts(dp)?;
    let pid = spawn_gen(
        lab,
        cfg,
        DENIED,
        0,
        cfg.probe_seconds,
        lb_mac,
        "flood-gen-probe",
    )?;
    let gen = gen_result(lab, pid, "flood-gen-probe");
    let after = flood_verdicts(dp)?;
    let arrived = (after.0 - before.0) + (after.1 - before.1);
    let seconds = gen["seconds"].as_f64().unwrap_or(f64::NAN);
    Ok(json!({
        "what": "the generator unpaced (as fast as the kernel takes frames) for a few seconds, no wrk, from the denied source",
        "generator": gen,
        "arrived_at_lb_xdp": arrived,
        "arrived_pps": round(arrived as f64 / seconds, 0),
    }))
}

fn run_case(lab: &Lab, dp: &Dataplane, cfg: &Config, case: Case, lb_mac: &str) -> Result<Value> {
    let url = format!("http://{}/", addr::VIP_HTTP);
    if case == Case::Nftables {
        nft_rule(lab, true)?;
    }
    let log = format!("flood-gen-{}", case.key());
    let flood_seconds = f64::from(cfg.wrk.seconds) + 2.0;
    let before = flood_verdicts(dp)?;
    let nics_before = nic_counters(lab);
    let mut gen_pid = None;
    if let Some(src) = case.source() {
        gen_pid = Some(spawn_gen(
            lab,
            cfg,
            src,
            cfg.pps,
            flood_seconds,
            lb_mac,
            &log,
        )?);
        // The flood is under way before wrk starts.
        let started =
            xtask::util::wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
                flood_verdicts(dp)
                    .map(|now| now.0 + now.1 > before.0 + before.1 + 5_000)
                    .unwrap_or(false)
            });
        if !started {
            bail!("the flood did not reach the lb:\n{}", lab.read_log(&log));
        }
    }
    let t0 = Instant::now();
    let v0 = flood_verdicts(dp)?;
    let wrk = labkit::wrk(lab, &cfg.wrk, &url);
    let window = t0.elapsed().as_secs_f64();
    let v1 = flood_verdicts(dp)?;
    let nft = if case == Case::Nftables {
        nft_dropped(lab)
    } else {
        None
    };
    let gen = gen_pid.map_or(Value::Null, |pid| gen_result(lab, pid, &log));
    let nics = nic_delta(&nics_before, &nic_counters(lab));
    if case == Case::Nftables {
        nft_rule(lab, false)?;
    }
    let wrk = wrk?;
    let (denied, passed) = (v1.0 - v0.0, v1.1 - v0.1);
    let seen = (denied + passed) as f64 / window;
    // What left the generator's interface: its frames minus those the veth could not pass on.
    let xmit = nics[format!("{} tx_queue_0_xdp_xmit", gen_iface(lab, cfg.entry).2)].as_u64();
    let gen_s = gen["seconds"].as_f64();
    let left_pps = match (xmit, gen_s) {
        (Some(x), Some(t)) if t > 0.0 => Some(round(x as f64 / t, 0)),
        _ => None,
    };
    Ok(json!({
        "rps": round(wrk.rps, 1),
        "p50_ms": wrk.p50_ms.map(|v| round(v, 3)),
        "p99_ms": wrk.p99_ms.map(|v| round(v, 3)),
        "requests": wrk.requests,
        "errors": wrk.errors,
        "flood_source": case.source(),
        "generator": gen,
        "left_generator_pps": left_pps,
        "lb_xdp_during_wrk": {
            "seconds": round(window, 2),
            "drop_denied_pps": round(denied as f64 / window, 0),
            "passed_to_kernel_pps": round(passed as f64 / window, 0),
            "seen_pps": round(seen, 0),
        },
        "nftables_dropped_packets": nft,
        "veth_drop_err_xdp_counters_delta": nics,
    }))
}

/// One run of `case`, or its error as the run's entry (the nftables rule removed either way).
fn run_case_or_error(lab: &Lab, dp: &Dataplane, cfg: &Config, case: Case, lb_mac: &str) -> Value {
    run_case(lab, dp, cfg, case, lb_mac).unwrap_or_else(|e| {
        let _ = nft_rule(lab, false);
        json!({ "error": format!("{e:#}") })
    })
}

/// A flooded run counts if the flood that left the generator was at least this share of the
/// median over all flooded runs: the cases are only comparable under the same flood.
const EQUAL_FLOOD: f64 = 0.85;

fn short_flood(run: &Value, median_pps: f64) -> bool {
    run["left_generator_pps"]
        .as_f64()
        .is_some_and(|pps| pps < EQUAL_FLOOD * median_pps)
}

/// Runs again, once, every flooded run whose flood fell short of the others' (a generator
/// that lost frames in a full ring); marks the ones still short. Returns the (case, rep)
/// retried.
fn retry_unequal_floods(
    lab: &Lab,
    dp: &Dataplane,
    cfg: &Config,
    lb_mac: &str,
    runs: &mut Map<String, Value>,
) -> Result<Vec<Value>> {
    let flooded = [Case::None, Case::Nftables, Case::Xdp];
    let all: Vec<f64> = flooded
        .iter()
        .filter_map(|c| runs.get(c.key()).and_then(Value::as_array))
        .flatten()
        .filter_map(|r| r["left_generator_pps"].as_f64())
        .collect();
    let Some(reference) = median(&all) else {
        return Ok(Vec::new());
    };
    let mut retried = Vec::new();
    for case in flooded {
        let Some(list) = runs.get_mut(case.key()).and_then(Value::as_array_mut) else {
            continue;
        };
        for (rep, run) in list.iter_mut().enumerate() {
            if !short_flood(run, reference) {
                continue;
            }
            let again = run_case_or_error(lab, dp, cfg, case, lb_mac);
            eprintln!(
                "lb-bench: flood {} rep {} again (its flood was under {EQUAL_FLOOD} of the median {reference:.0} pps): {again}",
                case.key(),
                rep + 1
            );
            retried.push(json!({ "case": case.key(), "rep": rep + 1, "first": run.clone() }));
            *run = again;
            if short_flood(run, reference) {
                run["unequal_flood"] = json!(true);
            }
        }
    }
    Ok(retried)
}

fn run_in(lab: &Lab, cfg: &Config) -> Result<FloodResult> {
    // The client's second and third addresses (the lb answers the unlisted one's flood with ICMP),
    // and xdp_pass on its switch port: XDP_TX of a generator on the client's eth0 leaves only
    // when the peer runs an XDP program. From the lb's switch port, the peer is the lb's eth0,
    // which runs the agent's program.
    for a in [DENIED, UNLISTED] {
        lab.exec(
            host::CLIENT,
            &["ip", "addr", "add", &format!("{a}/24"), "dev", "eth0"],
        )?;
    }
    let lb = stack::release_binary("lb")?;
    let (sw, port) = lab.switch_port(host::CLIENT);
    let pin = lab.bpffs().join(format!("pass-{port}"));
    lab.exec(
        xtask::lab::SWITCH,
        &[
            lb.display().to_string(),
            "attach-pass".into(),
            "--iface".into(),
            port.clone(),
            "--pin".into(),
            pin.display().to_string(),
        ],
    )
    .with_context(|| format!("attaching xdp_pass to {sw}/{port}"))?;
    let split = cfg.split_cpus.then(cpu_split).flatten();
    let mut cfg = cfg.clone();
    let (napi_thread, pinned) = match split {
        Some(split) => {
            cfg.wrk.cpu = Some(split.lab);
            (
                Some(pin_lb_receive(lab, split)?),
                Some(pin_lab_processes(lab, split.lab)?),
            )
        }
        None => (None, None),
    };
    let cfg = &cfg;
    let lb_mac = lab.mac(host::LB)?;
    let dp = Dataplane::load(&LoadOptions {
        pin_dir: Some(stack::pin_dir(lab)),
        ..LoadOptions::default()
    })
    .context("opening the agent's pinned maps")?;
    if !dp.adopted() {
        bail!("the agent's maps are not pinned where expected");
    }
    // Warm-up, then the probe of the highest rate.
    labkit::wrk(
        lab,
        &Wrk {
            seconds: 1,
            ..cfg.wrk.clone()
        },
        &format!("http://{}/", addr::VIP_HTTP),
    )?;
    let probe = if cfg.probe_seconds > 0.0 {
        probe(lab, &dp, cfg, &lb_mac).unwrap_or_else(|e| json!({ "error": format!("{e:#}") }))
    } else {
        Value::Null
    };
    eprintln!("lb-bench: flood probe (unpaced): {probe}");

    let cases = [Case::Baseline, Case::None, Case::Nftables, Case::Xdp];
    let mut runs: Map<String, Value> = Map::new();
    let mut orders = Vec::new();
    for rep in 0..cfg.repetitions {
        let order = labkit::alternating(&cases, rep);
        orders.push(order.iter().map(|c| c.key()).collect::<Vec<_>>());
        for case in order {
            let entry = run_case_or_error(lab, &dp, cfg, case, &lb_mac);
            eprintln!("lb-bench: flood {} rep {}: {}", case.key(), rep + 1, entry);
            runs.entry(case.key())
                .or_insert_with(|| json!([]))
                .as_array_mut()
                .context("runs")?
                .push(entry);
        }
    }

    let retried = retry_unequal_floods(lab, &dp, cfg, &lb_mac, &mut runs)?;

    let mut flood = Map::new();
    let mut detail = Map::new();
    let mut gen_pps = Vec::new();
    let mut lb_seen = Vec::new();
    let mut left_pps = Vec::new();
    for case in cases {
        let list = runs
            .get(case.key())
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let complete = !list.is_empty() && list.iter().all(|r| r.get("error").is_none());
        // Only runs that got the same flood as the others count (see retry_unequal_floods).
        let rps: Vec<f64> = list
            .iter()
            .filter(|r| r["unequal_flood"] != json!(true))
            .filter_map(|r| r["rps"].as_f64())
            .collect();
        let value = if complete {
            median(&rps).map(|v| round(v, 0))
        } else {
            None
        };
        flood.insert(case.key().into(), json!(value));
        let pps: Vec<f64> = list
            .iter()
            .filter_map(|r| r["generator"]["pps"].as_f64())
            .collect();
        gen_pps.extend(&pps);
        let left: Vec<f64> = list
            .iter()
            .filter_map(|r| r["left_generator_pps"].as_f64())
            .collect();
        left_pps.extend(&left);
        let lb_pps: Vec<f64> = list
            .iter()
            .filter_map(|r| r["lb_xdp_during_wrk"]["seen_pps"].as_f64())
            .collect();
        lb_seen.extend(&lb_pps);
        let mut d = json!({
            "runs": list,
            "p99_ms_median": median(&list.iter().filter_map(|r| r["p99_ms"].as_f64()).collect::<Vec<_>>()),
        });
        if case != Case::Baseline {
            d["generator_pps_median"] = json!(median(&pps).map(|v| round(v, 0)));
            d["left_generator_pps_median"] = json!(median(&left).map(|v| round(v, 0)));
            d["lb_seen_pps_median"] = json!(median(&lb_pps).map(|v| round(v, 0)));
        }
        if !complete {
            d["reason"] = json!("a run failed (see runs)");
        } else if rps.is_empty() {
            d["reason"] = json!(
                "no run of this case got the same flood as the others (see runs: unequal_flood)"
            );
        }
        detail.insert(case.key().into(), d);
    }
    flood.insert(
        "flood_pps".into(),
        json!(median(&left_pps).map(|v| round(v, 0))),
    );
    detail.insert("probe_unpaced".into(), probe);
    detail.insert(
        "flood_pps_cross_check".into(),
        json!({
            "generator_pps_median": median(&gen_pps).map(|v| round(v, 0)),
            "left_generator_pps_median": median(&left_pps).map(|v| round(v, 0)),
            "lb_seen_pps_median": median(&lb_seen).map(|v| round(v, 0)),
            "note": "lb_seen: flood packets counted by the lb's XDP program (verdicts DropDenied, or passed to the kernel) per second of the wrk run; below the generator's rate when frames are lost on the way (veth rings)",
        }),
    );
    let get = |k: &str| flood.get(k).and_then(Value::as_f64);
    let ratio = |a: &str, b: &str| match (get(a), get(b)) {
        (Some(a), Some(b)) if b > 0.0 => json!(round(a / b, 2)),
        _ => Value::Null,
    };
    detail.insert(
        "ratios".into(),
        json!({
            "xdp_rps / nftables_rps": ratio("xdp_rps", "nftables_rps"),
            "xdp_rps / baseline_rps": ratio("xdp_rps", "baseline_rps"),
            "nftables_rps / baseline_rps": ratio("nftables_rps", "baseline_rps"),
            "none_rps / baseline_rps": ratio("none_rps", "baseline_rps"),
        }),
    );
    detail.insert(
        "run".into(),
        json!({
            "wrk": cfg.wrk.describe(),
            "target": format!("http://{}/ (service web-dsr, DSR, web1 + web2)", addr::VIP_HTTP),
            "repetitions": cfg.repetitions,
            "orders": orders,
            "figure": "median over the repetitions whose flood was equal to the others'",
            "equal_flood": format!(
                "a flooded run whose left_generator_pps is under {EQUAL_FLOOD} of the median over all flooded runs got \
                 less flood than the others (frames lost in a full veth ring at the lb's switch port): it is run once \
                 more, and if the new run is short too it is marked unequal_flood and left out of its case's median"
            ),
            "retried_runs": retried,
            "flood": format!(
                "UDP {}-byte frames to {}:{FLOOD_PORT} (not a service; opened in the agent's host policy so only the \
                 rule under test drops it), made by `lb-bench flood-gen`: the xdp_tx program (returns XDP_TX) run by \
                 BPF_PROG_TEST_RUN in live-frames mode (batch {}), so each frame leaves an interface with no socket \
                 involved. Entry `{}`: {}. Paced to {} packets/s (0: unpaced) in every flooded case, at most {} packets \
                 and {} s per run (the wrk run plus 2 s; it starts before wrk)",
                Frame::udp((Ipv4Addr::UNSPECIFIED.into(), 0), (Ipv4Addr::UNSPECIFIED.into(), 0)).build().len(),
                addr::VIP_HTTP,
                cfg.batch,
                cfg.entry.name(),
                match cfg.entry {
                    FloodEntry::LbPort => "sent from the lb's switch port (ingress_ifindex = that port, in the switch namespace), so \
                        the frames land in the lb's eth0 receive ring as XDP frames, as a flood reaches a NIC; our XDP program \
                        drops them before any socket buffer exists, nftables and the kernel see them only after the veth \
                        builds one",
                    FloodEntry::Client => "sent from the client's eth0 (xdp_pass is attached to the client's switch port, as XDP_TX \
                        out of a veth needs), across the bridge, which hands the lb's eth0 socket buffers that the veth \
                        converts back for XDP",
                },
                cfg.pps,
                cfg.max_packets,
                cfg.wrk.seconds + 2
            ),
            "cases": {
                "baseline_rps": "no flood",
                "none_rps": format!("flood from {UNLISTED}, which no rule names: our XDP program passes it to the lb's kernel (UDP, no socket: dropped there, ICMP port unreachable rate-limited)"),
                "nftables_rps": format!("flood from {UNLISTED}, dropped by an nftables rule in the lb namespace: table netdev {NFT_TABLE}, chain on the ingress hook of eth0 (the earliest nftables hook), `ip saddr {UNLISTED} counter drop`; our XDP program passes it up first, as it would in a deployment of both"),
                "xdp_rps": format!("flood from {DENIED}, dropped by our XDP program: rule `flood-source` ({DENIED}/32, action drop) in the agent's config"),
            },
            "flood_pps": "frames that left the generator's interface (its tx_queue_0_xdp_xmit counter, i.e. the generator's frames minus the xdp_xmit_errors of a full veth ring) per second of the generator's run, median over the flooded runs. Cross-checked in flood_pps_cross_check with the generator's own count and with what the lb's XDP program counted during the wrk run (verdict counters of the agent's pinned maps); each run's figures, and the drop/error/XDP counters of every veth end on the way, are in the cases' runs; probe_unpaced gives the highest rate the lab's path takes with no other load",
            "pps_target": cfg.pps,
            "entry": cfg.entry.name(),
            "cpus": match split {
                Some(split) => json!({
                    "generator_cpu": split.generator,
                    "lab_cpu": split.lab,
                    "lb_napi_thread_pid": napi_thread,
                    "lab_processes_pinned": pinned,
                    "how": "the generator runs under taskset on its CPU, standing for the outside world; the lab runs on the other: every process of its namespaces (agent, web servers, ...) pinned with taskset -a, wrk started under taskset, and the lb's eth0 switched to threaded NAPI with that thread pinned too",
                }),
                None => json!({ "split": false, "why": if cfg.split_cpus { "fewer than 2 CPUs" } else { "--no-cpu-split" } }),
            },
            "machine_note": "see cpus: with 2 CPUs, the generator has one and the whole lab (the lb's receive thread at real-time priority, the agent, the web servers, wrk) the other; without the split, everything shares both and the lb's receive work runs inside the generator's system calls",
            "quick": cfg.quick,
        }),
    );
    Ok(FloodResult {
        flood: Value::Object(flood),
        detail: Value::Object(detail),
    })
}

pub fn run(cfg: &Config) -> Result<FloodResult> {
    let (lab, _agent) = labkit::stack_lab(PREFIX, FIREWALL)?;
    let result = run_in(&lab, cfg);
    let down = lab.down();
    let result = result?;
    down?;
    Ok(result)
}

pub fn table(flood: &Value) -> String {
    let base = flood["baseline_rps"].as_f64();
    let nft = flood["nftables_rps"].as_f64();
    let mut s = format!(
        "flood_pps (flood frames that left the generator, per s): {}\n",
        flood["flood_pps"]
            .as_f64()
            .map_or("null".into(), |v| format!("{v:.0}"))
    );
    s += &format!(
        "{:<14} {:>10} {:>12} {:>12}\n",
        "case", "req/s", "x baseline", "x nftables"
    );
    for k in ["baseline_rps", "none_rps", "nftables_rps", "xdp_rps"] {
        let v = flood[k].as_f64();
        let x = |b: Option<f64>| match (v, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        s += &format!(
            "{k:<14} {:>10} {:>12} {:>12}\n",
            v.map_or("null".into(), |v| format!("{v:.0}")),
            x(base),
            x(nft)
        );
    }
    s
}
