//! NAT port recycling under churn (`nat_churn` keys): many distinct client tuples (source
//! address and port pairs), each one real TCP connection through the NAT VIP (handshake, one
//! HTTP/1.1 request, answer, close), none reused. A backend has ~31k NAT ports (1024-32767), so
//! a million connections only pass if the ports of closed connections are taken over again.
//! In a lab of its own (`lbb-nc-`); the driver is `lb-bench churn-client`, run in the client
//! namespace with the addresses added there.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};
use xtask::{
    flow_flood, http,
    lab::{addr, host, Lab},
    load, stack,
};

use super::labkit::{self, round};

pub const PREFIX: &str = "lbb-nc-";
pub const KEYS: [&str; 2] = ["connections", "failed"];
/// Distinct tuples of the full run, and of `--quick`. Not 1M by default: here the NAT path
/// made ~850 connections/s under this churn (2026-12-05), so 1M would take ~20 minutes; run
/// `lb-bench nat-churn --count 1000000` for it.
pub const FULL_COUNT: u64 = 300_000;
pub const MILLION: u64 = 1_000_000;
pub const QUICK_COUNT: u64 = 100_000;
/// The client addresses the tuples come from: 10.99.0.160 and the next ones (no lab host there).
const FIRST_SOURCE: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 160);
const SOURCES: u8 = 20;
/// The source ports of each address (below and across the ephemeral range: only the driver
/// uses these addresses).
const PORTS: (u16, u16) = (10_000, 60_999);

const FIREWALL: &str = r#"
[[firewall.host.open_ports]]
port = 22

[[firewall.host.open_ports]]
port = 68
protocol = "udp"
"#;

#[derive(Clone, Debug)]
pub struct Config {
    pub quick: bool,
    pub count: u64,
    pub threads: u32,
    /// Bound of the whole run: the driver stops starting connections after it.
    pub max_seconds: u64,
}

impl Config {
    pub fn new(quick: bool) -> Self {
        Config {
            quick,
            count: if quick { QUICK_COUNT } else { FULL_COUNT },
            threads: 16,
            max_seconds: if quick { 120 } else { 900 },
        }
    }
}

// ---------------------------------------------------------------------------------------
// The driver (`lb-bench churn-client`, inside the client namespace).

#[derive(Clone, Debug)]
pub struct ClientArgs {
    pub first_source: Ipv4Addr,
    pub sources: u8,
    pub first_port: u16,
    pub last_port: u16,
    pub count: u64,
    pub target: SocketAddrV4,
    pub threads: u32,
    pub timeout: Duration,
    pub max_seconds: u64,
}

/// Tuple `i`: the addresses take turns, each port once per address.
fn tuple(a: &ClientArgs, i: u64) -> SocketAddrV4 {
    let sources = u64::from(a.sources.max(1));
    let address = u32::from(a.first_source) + (i % sources) as u32;
    SocketAddrV4::new(
        Ipv4Addr::from(address),
        a.first_port.saturating_add((i / sources) as u16),
    )
}

/// One connection: handshake, `GET /` (keep-alive), the answer, then this side closes first
/// (its TIME_WAIT stays here, on a tuple never used again; the server keeps none).
fn one(client: &http::Client, a: &ClientArgs, source: SocketAddrV4) -> std::io::Result<String> {
    let stream = load::connect_from(source, a.target, a.timeout)?;
    let request = http::get(&a.target.ip().to_string(), "/")?;
    load::get_ok(client, &stream, request, a.timeout)
}

/// Runs every tuple once over `threads` threads; prints nothing, returns the figures.
pub fn client(a: &ClientArgs) -> Result<Value> {
    let per_source = u64::from(a.last_port.saturating_sub(a.first_port)) + 1;
    if a.sources == 0 || a.count > per_source * u64::from(a.sources) {
        bail!(
            "{} tuples do not fit in {} addresses x {per_source} ports",
            a.count,
            a.sources
        );
    }
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let errors: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
    let examples: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let served: Mutex<BTreeMap<String, u64>> = Mutex::new(BTreeMap::new());
    let started = Instant::now();
    let limit = Duration::from_secs(a.max_seconds);
    std::thread::scope(|scope| {
        for _ in 0..a.threads.max(1) {
            scope.spawn(|| {
                let mut mine: BTreeMap<String, u64> = BTreeMap::new();
                let client = match http::Client::new() {
                    Ok(client) => client,
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        *errors
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .entry(format!("runtime: {e}"))
                            .or_default() += 1;
                        return;
                    }
                };
                loop {
                    if started.elapsed() > limit {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= a.count {
                        break;
                    }
                    let source = tuple(a, i);
                    match one(&client, a, source) {
                        Ok(body) => *mine.entry(body).or_default() += 1,
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            let kind = format!("{:?}", e.kind());
                            *errors
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .entry(kind)
                                .or_default() += 1;
                            let mut ex = examples.lock().unwrap_or_else(|p| p.into_inner());
                            if ex.len() < 5 {
                                ex.push(format!(
                                    "{source} at {:.1} s: {e}",
                                    started.elapsed().as_secs_f64()
                                ));
                            }
                        }
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
                let mut all = served.lock().unwrap_or_else(|p| p.into_inner());
                for (k, v) in mine {
                    *all.entry(k).or_default() += v;
                }
            });
        }
    });
    let seconds = started.elapsed().as_secs_f64();
    let done = done.load(Ordering::Relaxed);
    Ok(json!({
        "connections": done,
        "failed": failed.load(Ordering::Relaxed),
        "asked": a.count,
        "stopped_by_time_bound": done < a.count,
        "seconds": round(seconds, 2),
        "connections_per_s": round(done as f64 / seconds.max(1e-9), 0),
        "served_by": served.into_inner().unwrap_or_else(|p| p.into_inner()),
        "errors_by_kind": errors.into_inner().unwrap_or_else(|p| p.into_inner()),
        "first_errors": examples.into_inner().unwrap_or_else(|p| p.into_inner()),
        "threads": a.threads,
    }))
}

// ---------------------------------------------------------------------------------------
// The part.

pub struct NatChurnResult {
    pub nat_churn: Value,
    pub detail: Value,
}

fn run_in(lab: &Lab, cfg: &Config) -> Result<NatChurnResult> {
    for n in 0..SOURCES {
        let address = Ipv4Addr::from(u32::from(FIRST_SOURCE) + u32::from(n));
        lab.exec(
            host::CLIENT,
            &["ip", "addr", "add", &format!("{address}/24"), "dev", "eth0"],
        )
        .with_context(|| format!("adding {address} to the client"))?;
    }
    let before = flow_flood::verdicts(lab)?;
    let exe = labkit::self_exe()?;
    let target = format!("{}:{}", addr::VIP_HTTP, stack::NAT_PORT);
    let args = [
        exe.display().to_string(),
        "churn-client".into(),
        "--first-source".into(),
        FIRST_SOURCE.to_string(),
        "--sources".into(),
        SOURCES.to_string(),
        "--first-port".into(),
        PORTS.0.to_string(),
        "--last-port".into(),
        PORTS.1.to_string(),
        "--count".into(),
        cfg.count.to_string(),
        "--target".into(),
        target.clone(),
        "--threads".into(),
        cfg.threads.to_string(),
        "--max-seconds".into(),
        cfg.max_seconds.to_string(),
    ];
    let out = lab.exec_timeout(
        host::CLIENT,
        &args,
        Duration::from_secs(cfg.max_seconds + 60),
    )?;
    let driver: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "lb-bench churn-client printed no JSON: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let after = flow_flood::verdicts(lab)?;
    let verdicts: BTreeMap<String, u64> = after
        .iter()
        .filter_map(|(k, v)| {
            let d = v.saturating_sub(before.get(k).copied().unwrap_or(0));
            (d > 0).then(|| (k.clone(), d))
        })
        .collect();
    let connections = driver["connections"].as_u64().unwrap_or(0);
    let failed = driver["failed"].as_u64().unwrap_or(0);
    let nat_ports = u64::from(PORTS_PER_BACKEND) * 2;
    let detail = json!({
        "driver": driver,
        "lb_verdicts_delta": verdicts,
        "target": target,
        "tuples": format!("{SOURCES} client addresses from {FIRST_SOURCE}, ports {}-{}; each tuple used once", PORTS.0, PORTS.1),
        "connection": "handshake, GET / (HTTP/1.1 keep-alive), the answer, then the client closes first; a failure is any error (connect, send, answer not 200) within 10 s",
        "nat_ports": format!("{nat_ports} in all: 2 backends x {PORTS_PER_BACKEND} ports (1024-32767, the defaults), held through closing (tcp_closing 10 s) and taken over after"),
        "asked": cfg.count,
        "count_note": if cfg.count < MILLION { format!("{} tuples, fewer than 1M (--quick: {QUICK_COUNT}, full: {FULL_COUNT}; `lb-bench nat-churn --count 1000000` for 1M)", cfg.count) } else { format!("{} tuples", cfg.count) },
        "quick": cfg.quick,
    });
    Ok(NatChurnResult {
        nat_churn: json!({ "connections": connections, "failed": failed }),
        detail,
    })
}

/// NAT ports per backend with the default range (1024-32767).
const PORTS_PER_BACKEND: u32 = 32_767 - 1_024 + 1;

/// The whole part: lab up, stack, the driver, lab down (also on failure).
pub fn run(cfg: &Config) -> Result<NatChurnResult> {
    let (lab, _agent) = labkit::stack_lab(PREFIX, FIREWALL)?;
    let result = run_in(&lab, cfg);
    let down = lab.down();
    let result = result?;
    down?;
    Ok(result)
}

pub fn table(nat_churn: &Value, detail: &Value) -> String {
    let f = |v: &Value| v.as_u64().map_or("null".into(), |v| v.to_string());
    format!(
        "connections {} (distinct client tuples through the NAT VIP{}), failed {}, {} conn/s, {} s\n",
        f(&nat_churn["connections"]),
        match detail["asked"].as_u64() {
            Some(n) if n < MILLION => format!("; {n} asked, fewer than 1M: see nat_churn_detail.count_note"),
            _ => String::new(),
        },
        f(&nat_churn["failed"]),
        detail["driver"]["connections_per_s"],
        detail["driver"]["seconds"],
    )
}
