//! HTTP through the load balancer (`http` keys): wrk from the client namespace, identical
//! settings, against web1 directly, HAProxy and nginx as round-robin proxies in the lb
//! namespace, and our XDP load balancer in DSR (VIP:80) and NAT (VIP:8080) mode. Same lab,
//! same servers, same run; the order alternates between repetitions; medians.
use std::fs;

use anyhow::{Context as _, Result};
use serde_json::{json, Map, Value};
use xtask::lab::{addr, host, Lab};

use super::labkit::{self, median, round, CpuMeter, Wrk, WrkResult};

pub const PREFIX: &str = "lbb-ht-";
pub const KEYS: [&str; 5] = ["direct", "haproxy", "nginx", "xdp_dsr", "xdp_nat"];
pub const HAPROXY_PORT: u16 = 8001;
const NGINX_PORT: u16 = 8002;

#[derive(Clone, Debug)]
pub struct Config {
    pub quick: bool,
    pub wrk: Wrk,
    pub repetitions: u32,
    /// The latency phase (`latency`): one request rate for every target, below the slowest
    /// one's capacity (HAProxy: ~40-56k req/s under wrk here).
    pub fixed_rate: u32,
    pub fixed_rate_seconds: f64,
    pub fixed_rate_connections: u32,
    /// More than wrk's: a 3-second run is cheap, and one disturbed run moves a p99 a lot.
    pub fixed_rate_repetitions: u32,
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
            repetitions: if quick { 3 } else { 5 },
            fixed_rate: 10_000,
            fixed_rate_seconds: if quick { 3.0 } else { 6.0 },
            fixed_rate_connections: 8,
            fixed_rate_repetitions: 5,
        }
    }
}

/// The agent's host policy stays `restrict` (the default); the two proxies' ports are opened
/// next to the default ones (SSH, DHCP client).
const FIREWALL: &str = r#"
[[firewall.host.open_ports]]
port = 22

[[firewall.host.open_ports]]
port = 68
protocol = "udp"

[[firewall.host.open_ports]]
port = 8001

[[firewall.host.open_ports]]
port = 8002
"#;

/// HAProxy on the lb's address and [`HAPROXY_PORT`] (`xtask/templates/haproxy.cfg`).
pub fn haproxy_config(dir: &std::path::Path) -> Result<String> {
    xtask::template::haproxy(
        &dir.join("haproxy.pid"),
        addr::LB,
        HAPROXY_PORT,
        addr::WEB1,
        addr::WEB2,
    )
}

/// The nginx reverse proxy on the lb's address and [`NGINX_PORT`] (`xtask/templates/nginx-proxy.conf`).
fn nginx_config(dir: &std::path::Path) -> Result<String> {
    xtask::template::nginx_proxy(dir, addr::LB, NGINX_PORT, addr::WEB1, addr::WEB2)
}

struct Target {
    key: &'static str,
    url: String,
    /// Processes of the load balancer whose CPU time counts.
    pids: Vec<u32>,
    what: String,
}

pub struct HttpResult {
    pub http: Value,
    pub detail: Value,
}

fn run_in(lab: &Lab, agent: u32, cfg: &Config) -> Result<HttpResult> {
    let dir = lab.dir().join("bench-proxies");
    fs::create_dir_all(&dir)?;
    let haproxy_cfg = dir.join("haproxy.cfg");
    fs::write(&haproxy_cfg, haproxy_config(&dir)?)?;
    let haproxy = lab.spawn(
        host::LB,
        &["haproxy", "-db", "-f", &haproxy_cfg.display().to_string()],
        "haproxy",
    )?;
    let nginx_cfg = dir.join("nginx-proxy.conf");
    fs::write(&nginx_cfg, nginx_config(&dir)?)?;
    let nginx = lab.spawn(
        host::LB,
        &[
            "nginx",
            "-c",
            &nginx_cfg.display().to_string(),
            "-g",
            "daemon off;",
        ],
        "nginx-proxy",
    )?;

    let targets = vec![
        Target { key: "direct", url: format!("http://{}/", addr::WEB1), pids: vec![], what: "web1's nginx, no load balancer".into() },
        Target {
            key: "haproxy",
            url: format!("http://{}:{HAPROXY_PORT}/", addr::LB),
            pids: vec![haproxy],
            what: format!("HAProxy {} in the lb namespace, mode http, balance roundrobin, web1 + web2", version(lab, &["haproxy", "-v"])),
        },
        Target {
            key: "nginx",
            url: format!("http://{}:{NGINX_PORT}/", addr::LB),
            pids: vec![nginx],
            what: format!(
                "nginx {} in the lb namespace as a reverse proxy: upstream web1 + web2 (round robin, keepalive 64), worker_processes auto",
                version(lab, &["nginx", "-v"])
            ),
        },
        Target {
            key: "xdp_dsr",
            url: format!("http://{}/", addr::VIP_HTTP),
            pids: vec![agent],
            what: "our XDP program on the lb's NIC, service web-dsr (VIP:80, DSR): replies go from the servers straight to the client".into(),
        },
        Target {
            key: "xdp_nat",
            url: format!("http://{}:{}/", addr::VIP_HTTP, xtask::stack::NAT_PORT),
            pids: vec![agent],
            what: "our XDP program, service web-nat (VIP:8080, NAT to web1/web2:80, SNAT 10.99.0.3): both directions through the lb".into(),
        },
    ];
    // Every target answers before anything is timed; a one-second warm-up each.
    for t in &targets {
        let ok = xtask::util::wait_until(
            std::time::Duration::from_secs(10),
            std::time::Duration::from_millis(200),
            || {
                lab.exec(host::CLIENT, &["curl", "-sf", "-m", "1", &t.url])
                    .is_ok()
            },
        );
        if !ok {
            anyhow::bail!(
                "{} ({}) does not answer:\n{}\n{}",
                t.key,
                t.url,
                lab.read_log("haproxy"),
                lab.read_log("nginx-proxy")
            );
        }
        labkit::wrk(
            lab,
            &Wrk {
                seconds: 1,
                ..cfg.wrk.clone()
            },
            &t.url,
        )?;
    }

    let mut runs: Map<String, Value> = Map::new();
    let mut orders = Vec::new();
    for rep in 0..cfg.repetitions {
        let order = labkit::alternating(&(0..targets.len()).collect::<Vec<_>>(), rep);
        orders.push(order.iter().map(|&i| targets[i].key).collect::<Vec<_>>());
        for &i in &order {
            let t = &targets[i];
            let meter = CpuMeter::start(&t.pids);
            let r = labkit::wrk(lab, &cfg.wrk, &t.url);
            let (proc_s, softirq_s) = meter.stop();
            let entry = match r {
                Ok(r) => run_json(&r, proc_s, softirq_s),
                Err(e) => json!({ "error": format!("{e:#}") }),
            };
            eprintln!("lb-bench: http {} rep {}: {}", t.key, rep + 1, entry);
            runs.entry(t.key)
                .or_insert_with(|| json!([]))
                .as_array_mut()
                .context("runs")?
                .push(entry);
        }
    }

    // The same load on every target: latency at a fixed rate, order alternated as above.
    let mut at_rate: Map<String, Value> = Map::new();
    // Let the last wrk run's connections and softirq work drain first.
    std::thread::sleep(std::time::Duration::from_secs(2));
    for rep in 0..cfg.fixed_rate_repetitions {
        for i in labkit::alternating(&(0..targets.len()).collect::<Vec<_>>(), rep) {
            let t = &targets[i];
            let measure = || {
                fixed_rate(lab, cfg, &t.url)
                    .unwrap_or_else(|e| json!({ "error": format!("{e:#}") }))
            };
            let mut entry = measure();
            if disturbed(&entry) {
                // Something else held the CPUs (the client could not keep its schedule): once more.
                let mut again = measure();
                again["first_try"] = entry;
                entry = again;
            }
            eprintln!(
                "lb-bench: http {} fixed rate rep {}: {}",
                t.key,
                rep + 1,
                entry
            );
            at_rate
                .entry(t.key)
                .or_insert_with(|| json!([]))
                .as_array_mut()
                .context("fixed-rate runs")?
                .push(entry);
        }
    }

    let mut http = Map::new();
    let mut detail = Map::new();
    for t in &targets {
        let list = runs
            .get(t.key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let col = |k: &str| -> Vec<f64> { list.iter().filter_map(|r| r[k].as_f64()).collect() };
        let complete = list.iter().all(|r| r.get("error").is_none()) && !list.is_empty();
        let rate_runs = at_rate
            .get(t.key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let rate_col =
            |k: &str| -> Vec<f64> { rate_runs.iter().filter_map(|r| r[k].as_f64()).collect() };
        // A run with a failed request or a load it could not hold gives no latency figure.
        let rate_complete = !rate_runs.is_empty()
            && rate_runs
                .iter()
                .all(|r| r["errors"].as_u64() == Some(0) && held(r));
        let value = if complete {
            let mut v = json!({
                "rps": median(&col("rps")).map(|v| round(v, 0)),
                "p50_ms": median(&col("p50_ms")).map(|v| round(v, 3)),
                "p99_ms": median(&col("p99_ms")).map(|v| round(v, 3)),
                "lb_cpu_s": median(&col("lb_cpu_s")).map(|v| round(v, 2)),
            });
            if rate_complete {
                v["p50_ms_fixed_rate"] = json!(median(&rate_col("p50_ms")).map(|v| round(v, 3)));
                v["p99_ms_fixed_rate"] = json!(median(&rate_col("p99_ms")).map(|v| round(v, 3)));
            }
            v
        } else {
            Value::Null
        };
        http.insert(t.key.into(), value);
        let mut d = json!({
            "what": t.what,
            "url": t.url,
            "runs": list,
            "lb_process_cpu_s_median": median(&col("lb_process_cpu_s")).map(|v| round(v, 2)),
            "softirq_s_median": median(&col("softirq_s")).map(|v| round(v, 2)),
        });
        d["fixed_rate_runs"] = json!(rate_runs);
        if !complete {
            d["reason"] = json!("a run failed (see runs)");
        } else if !rate_complete {
            d["fixed_rate_reason"] = json!("a fixed-rate run failed a request or could not hold the rate (see fixed_rate_runs)");
        }
        detail.insert(t.key.into(), d);
    }
    let get = |k: &str, f: &str| http.get(k).and_then(|v| v[f].as_f64());
    let ratio = |a: &str, b: &str| match (get(a, "rps"), get(b, "rps")) {
        (Some(a), Some(b)) if b > 0.0 => json!(round(a / b, 2)),
        _ => Value::Null,
    };
    detail.insert(
        "ratios".into(),
        json!({
            "xdp_dsr / haproxy": ratio("xdp_dsr", "haproxy"),
            "xdp_dsr / direct": ratio("xdp_dsr", "direct"),
            "xdp_nat / haproxy": ratio("xdp_nat", "haproxy"),
            "xdp_dsr / nginx": ratio("xdp_dsr", "nginx"),
            "xdp_dsr p99 <= haproxy p99 (wrk, each at its own saturation)": match (get("xdp_dsr", "p99_ms"), get("haproxy", "p99_ms")) {
                (Some(a), Some(b)) => json!(a <= b),
                _ => Value::Null,
            },
            "xdp_dsr p99 <= haproxy p99 (same fixed rate)": match (get("xdp_dsr", "p99_ms_fixed_rate"), get("haproxy", "p99_ms_fixed_rate")) {
                (Some(a), Some(b)) => json!(a <= b),
                _ => Value::Null,
            },
        }),
    );
    detail.insert(
        "run".into(),
        json!({
            "wrk": cfg.wrk.describe(),
            "repetitions": cfg.repetitions,
            "orders": orders,
            "warm_up": "one 1-second wrk run per target before the repetitions",
            "figure": "median over the repetitions of each field separately",
            "fixed_rate": {
                "rate": cfg.fixed_rate,
                "seconds": cfg.fixed_rate_seconds,
                "connections": cfg.fixed_rate_connections,
                "repetitions": cfg.fixed_rate_repetitions,
                "disturbed": "a run where over 5% of the client's sends left more than 1 ms late (the machine was busy \
                              elsewhere) is run once more; the first try is kept in the run's first_try",
                "what": "p50_ms_fixed_rate / p99_ms_fixed_rate: `lb-bench latency` from the client namespace, HTTP/1.1 GETs over \
                         keep-alive connections, each sending on its own schedule (open loop) so that every target carries the \
                         same load; latency from the write of a request to the end of its response (a send that its \
                         thread's wake-up made late is counted in late_sends and measured from when it left); a run \
                         with a failed request, or that answered under 99% of the rate, gives no figure",
            },
            "lab": format!("namespaces {PREFIX}*: client, lb, web1, web2 (nginx 1 worker each, answering its host name), db1, db2 on one bridge; veth"),
            "lb_cpu_s": "CPU seconds spent on the load balancer during one wrk run: user+sys of its processes \
                         (HAProxy; the nginx proxy's master and workers; the lb agent for xdp_*; none for direct) from \
                         /proc/PID/stat, plus the softirq time of /proc/stat over the run. The softirq time is \
                         SYSTEM-WIDE: on this one machine it also holds the softirq work of the client and the web \
                         servers (their TCP stacks, veth and bridge), not only the lb's; the XDP program runs in \
                         softirq, so it is only visible there",
            "quick": cfg.quick,
        }),
    );
    Ok(HttpResult {
        http: Value::Object(http),
        detail: Value::Object(detail),
    })
}

/// One fixed-rate latency run (`lb-bench latency`) from the client namespace.
fn fixed_rate(lab: &Lab, cfg: &Config, url: &str) -> Result<Value> {
    let exe = labkit::self_exe()?;
    let args = [
        exe.display().to_string(),
        "latency".into(),
        "--url".into(),
        url.into(),
        "--rate".into(),
        cfg.fixed_rate.to_string(),
        "--seconds".into(),
        cfg.fixed_rate_seconds.to_string(),
        "--connections".into(),
        cfg.fixed_rate_connections.to_string(),
    ];
    let out = lab.exec_timeout(
        host::CLIENT,
        &args,
        std::time::Duration::from_secs_f64(cfg.fixed_rate_seconds + 20.0),
    )?;
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "lb-bench latency printed no JSON: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The client itself was held up: over 5% of its sends left more than 1 ms after their slot
/// (with 8 connections at 10k req/s a quiet machine has under 1%).
fn disturbed(run: &Value) -> bool {
    match (run["late_sends"].as_u64(), run["requests"].as_u64()) {
        (Some(late), Some(requests)) => late * 20 > requests,
        _ => false,
    }
}

/// The run held its rate: at least 99% of the requests it was to send were answered.
fn held(run: &Value) -> bool {
    match (run["achieved_rps"].as_f64(), run["rate"].as_f64()) {
        (Some(achieved), Some(rate)) => achieved >= 0.99 * rate,
        _ => false,
    }
}

fn run_json(r: &WrkResult, proc_s: f64, softirq_s: f64) -> Value {
    json!({
        "rps": round(r.rps, 1),
        "p50_ms": r.p50_ms.map(|v| round(v, 3)),
        "p99_ms": r.p99_ms.map(|v| round(v, 3)),
        "requests": r.requests,
        "errors": r.errors,
        "lb_process_cpu_s": round(proc_s, 2),
        "softirq_s": round(softirq_s, 2),
        "lb_cpu_s": round(proc_s + softirq_s, 2),
    })
}

pub fn version(lab: &Lab, args: &[&str]) -> String {
    lab.exec_unchecked(host::LB, args)
        .map(|o| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            text.lines()
                .next()
                .and_then(|l| {
                    l.split_whitespace().find(|w| {
                        w.chars().next().is_some_and(|c| c.is_ascii_digit()) || w.contains('/')
                    })
                })
                .map(|w| w.rsplit('/').next().unwrap_or(w).to_string())
                .unwrap_or_default()
        })
        .unwrap_or_default()
}

/// The whole part: lab up, stack, proxies, runs, lab down (also on failure).
pub fn run(cfg: &Config) -> Result<HttpResult> {
    let (lab, agent) = labkit::stack_lab(PREFIX, FIREWALL)?;
    let result = run_in(&lab, agent, cfg);
    let down = lab.down();
    let result = result?;
    down?;
    Ok(result)
}

/// Table rows for the http part.
pub fn table(http: &Value) -> String {
    let mut s = format!(
        "{:<10} {:>10} {:>9} {:>9} {:>10} {:>10} {:>13} {:>13}\n",
        "target",
        "req/s",
        "p50 ms",
        "p99 ms",
        "lb cpu s",
        "x haproxy",
        "p50 ms @rate",
        "p99 ms @rate"
    );
    let base = http["haproxy"]["rps"].as_f64();
    for k in KEYS {
        let v = &http[k];
        if v.is_null() {
            s += &format!("{k:<10} {:>10}\n", "null");
            continue;
        }
        let f = |n: &str, d: usize| v[n].as_f64().map_or("null".into(), |x| format!("{x:.d$}"));
        let x = match (v["rps"].as_f64(), base) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "-".into(),
        };
        s += &format!(
            "{k:<10} {:>10} {:>9} {:>9} {:>10} {:>10} {:>13} {:>13}\n",
            f("rps", 0),
            f("p50_ms", 3),
            f("p99_ms", 3),
            f("lb_cpu_s", 2),
            x,
            f("p50_ms_fixed_rate", 3),
            f("p99_ms_fixed_rate", 3),
        );
    }
    s
}
