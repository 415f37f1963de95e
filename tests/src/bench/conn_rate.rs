//! New TCP connections per second (`conn_rate` keys): wrk from the client namespace with
//! `-H 'Connection: close'`, so every request is a connection of its own (handshake, request,
//! answer, close), against web1 directly, HAProxy (round robin, in the lb namespace), and our
//! XDP load balancer in DSR (VIP:80) and NAT (VIP:8080) mode. One lab (`lbb-cr-`), the same
//! servers, the same client tool and settings for every target; the order alternates between
//! repetitions; medians.
use std::{fs, time::Duration};

use anyhow::{Context as _, Result};
use serde_json::{json, Map, Value};
use xtask::{
    flow_flood,
    lab::{addr, host, Lab},
};

use super::{
    http,
    labkit::{self, median, round, Wrk},
};

pub const PREFIX: &str = "lbb-cr-";
pub const KEYS: [&str; 4] = ["direct", "haproxy", "xdp_dsr", "xdp_nat"];

/// The host policy stays `restrict`; HAProxy's port is opened next to the default ones.
const FIREWALL: &str = r#"
[[firewall.host.open_ports]]
port = 22

[[firewall.host.open_ports]]
port = 68
protocol = "udp"

[[firewall.host.open_ports]]
port = 8001
"#;

#[derive(Clone, Debug)]
pub struct Config {
    pub quick: bool,
    pub wrk: Wrk,
    pub repetitions: u32,
}

impl Config {
    pub fn new(quick: bool) -> Self {
        Config {
            quick,
            // What a new user would type: wrk -c32 -H 'Connection: close'.
            wrk: Wrk {
                threads: 2,
                connections: 32,
                seconds: if quick { 3 } else { 5 },
                cpu: None,
            },
            repetitions: if quick { 2 } else { 3 },
        }
    }
}

pub struct ConnRateResult {
    pub conn_rate: Value,
    pub detail: Value,
}

/// Verdict counters the NAT runs can move: forwarded, answered, and refused for want of a port.
const VERDICTS: [&str; 4] = [
    "forward_dsr",
    "forward_nat",
    "nat_reply",
    "drop_nat_ports_exhausted",
];

fn run_in(lab: &Lab, cfg: &Config) -> Result<ConnRateResult> {
    let dir = lab.dir().join("bench-proxies");
    fs::create_dir_all(&dir)?;
    let haproxy_cfg = dir.join("haproxy.cfg");
    fs::write(&haproxy_cfg, http::haproxy_config(&dir)?)?;
    lab.spawn(
        host::LB,
        &["haproxy", "-db", "-f", &haproxy_cfg.display().to_string()],
        "haproxy",
    )?;
    let targets: [(&str, String); 4] = [
        ("direct", format!("http://{}/", addr::WEB1)),
        (
            "haproxy",
            format!("http://{}:{}/", addr::LB, http::HAPROXY_PORT),
        ),
        ("xdp_dsr", format!("http://{}/", addr::VIP_HTTP)),
        (
            "xdp_nat",
            format!("http://{}:{}/", addr::VIP_HTTP, xtask::stack::NAT_PORT),
        ),
    ];
    let close = ["-H", "Connection: close"];
    for (key, url) in &targets {
        let ok =
            xtask::util::wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
                lab.exec(host::CLIENT, &["curl", "-sf", "-m", "1", url])
                    .is_ok()
            });
        if !ok {
            anyhow::bail!(
                "{key} ({url}) does not answer:\n{}",
                lab.read_log("haproxy")
            );
        }
        labkit::wrk_with(
            lab,
            &Wrk {
                seconds: 1,
                ..cfg.wrk.clone()
            },
            &close,
            url,
        )?;
    }

    let mut runs: Map<String, Value> = Map::new();
    let mut orders = Vec::new();
    for rep in 0..cfg.repetitions {
        let order = labkit::alternating(&[0, 1, 2, 3], rep);
        orders.push(order.iter().map(|&i| targets[i].0).collect::<Vec<_>>());
        for &i in &order {
            let (key, url) = &targets[i];
            let before = flow_flood::verdicts(lab).unwrap_or_default();
            let r = labkit::wrk_with(lab, &cfg.wrk, &close, url);
            let after = flow_flood::verdicts(lab).unwrap_or_default();
            let verdicts: Map<String, Value> = VERDICTS
                .iter()
                .map(|v| {
                    let count = |m: &std::collections::BTreeMap<String, u64>| {
                        m.get(*v).copied().unwrap_or(0)
                    };
                    (
                        v.to_string(),
                        json!(count(&after).saturating_sub(count(&before))),
                    )
                })
                .collect();
            let entry = match r {
                Ok(r) => json!({
                    "connections_per_s": round(r.rps, 1),
                    "connections": r.requests,
                    "errors": r.errors,
                    "p50_ms": r.p50_ms,
                    "p99_ms": r.p99_ms,
                    "lb_verdicts_delta": verdicts,
                }),
                Err(e) => json!({ "error": format!("{e:#}") }),
            };
            eprintln!("lb-bench: conn-rate {key} rep {}: {entry}", rep + 1);
            runs.entry(*key)
                .or_insert_with(|| json!([]))
                .as_array_mut()
                .context("runs")?
                .push(entry);
        }
    }

    let mut figures = Map::new();
    let mut detail = Map::new();
    for (key, url) in &targets {
        let list = runs
            .get(*key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        // A run with an error (wrk failed, or a connection failed) gives no figure.
        let complete = !list.is_empty()
            && list
                .iter()
                .all(|r| r.get("error").is_none() && r["errors"].as_u64() == Some(0));
        let rates: Vec<f64> = list
            .iter()
            .filter_map(|r| r["connections_per_s"].as_f64())
            .collect();
        figures.insert(
            key.to_string(),
            if complete {
                json!(median(&rates).map(|v| round(v, 0)))
            } else {
                Value::Null
            },
        );
        let mut d = json!({ "url": url, "runs": list });
        if !complete {
            d["reason"] = json!("a run failed or had failed connections (see runs)");
        }
        detail.insert(key.to_string(), d);
    }
    let get = |k: &str| figures.get(k).and_then(Value::as_f64);
    let ratio = |a: &str, b: &str| match (get(a), get(b)) {
        (Some(a), Some(b)) if b > 0.0 => json!(round(a / b, 2)),
        _ => Value::Null,
    };
    detail.insert(
        "ratios".into(),
        json!({
            "xdp_dsr / direct": ratio("xdp_dsr", "direct"),
            "xdp_dsr / haproxy": ratio("xdp_dsr", "haproxy"),
            "xdp_nat / direct": ratio("xdp_nat", "direct"),
            "xdp_nat / haproxy": ratio("xdp_nat", "haproxy"),
        }),
    );
    detail.insert(
        "run".into(),
        json!({
            "wrk": cfg.wrk.describe(),
            "extra_wrk_args": "-H 'Connection: close' (each request a new TCP connection; the server closes first)",
            "figure": "wrk's Requests/sec = new connections per second, median over the repetitions",
            "repetitions": cfg.repetitions,
            "orders": orders,
            "warm_up": "one 1-second wrk run per target",
            "clients": "one client address (10.99.0.10), the kernel's ephemeral ports: wrk cannot bind source addresses",
            "haproxy": format!("HAProxy {} in the lb namespace, mode http, balance roundrobin", http::version(lab, &["haproxy", "-v"])),
            "lab": format!("namespaces {PREFIX}*: client, lb, web1, web2 (nginx 1 worker each) on one bridge; veth"),
            "quick": cfg.quick,
        }),
    );
    Ok(ConnRateResult {
        conn_rate: Value::Object(figures),
        detail: Value::Object(detail),
    })
}

/// The whole part: lab up, stack, HAProxy, runs, lab down (also on failure).
pub fn run(cfg: &Config) -> Result<ConnRateResult> {
    let (lab, _agent) = labkit::stack_lab(PREFIX, FIREWALL)?;
    let result = run_in(&lab, cfg);
    let down = lab.down();
    let result = result?;
    down?;
    Ok(result)
}

/// The part's table: connections per second, and the ratios.
pub fn table(conn_rate: &Value) -> String {
    let mut s = format!(
        "{:<10} {:>12} {:>10} {:>10}\n",
        "target", "conn/s", "x direct", "x haproxy"
    );
    let direct = conn_rate["direct"].as_f64();
    let haproxy = conn_rate["haproxy"].as_f64();
    let x = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    };
    for k in KEYS {
        let v = conn_rate[k].as_f64();
        s += &format!(
            "{k:<10} {:>12} {:>10} {:>10}\n",
            v.map_or("null".into(), |v| format!("{v:.0}")),
            x(v, direct),
            x(v, haproxy),
        );
    }
    s
}
