//! What the lab parts (`http`, `flood`) share: the stack in a lab of its own, wrk from the
//! client namespace and its parsing, and CPU accounting of the load balancer.
//!
//! Everything runs inside the lab's namespaces; the [`Lab`] value tears the namespaces, the
//! processes started in them, the nftables tables in them and the pins on the lab's bpffs down
//! when it is dropped, also on an error or a panic.
use std::{fs, time::Duration};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};
use xtask::{
    lab::{addr, host, Lab, LabSpec},
    stack,
};

/// Every bench lab prefix starts with this (tests use `lbt-`, `cargo xtask run` `lbx-`).
pub const BENCH_PREFIX: &str = "lbb-";

/// wrk settings shared by every run of a part (identical for every target).
#[derive(Clone, Debug)]
pub struct Wrk {
    pub threads: u32,
    pub connections: u32,
    pub seconds: u32,
    /// Run wrk on this CPU only (`taskset`); `None`: wherever the scheduler puts it.
    pub cpu: Option<usize>,
}

impl Wrk {
    pub fn describe(&self) -> Value {
        json!({
            "tool": "wrk (Debian) from the client namespace",
            "threads": self.threads,
            "connections": self.connections,
            "duration_s": self.seconds,
            "timeout_s": 2,
            "flags": "--latency",
            "cpu": self.cpu,
        })
    }
}

/// What one wrk run reported.
#[derive(Clone, Debug, Default)]
pub struct WrkResult {
    pub rps: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub requests: u64,
    /// Connect/read/write/timeout socket errors plus non-2xx/3xx responses.
    pub errors: u64,
}

/// Runs wrk against `url` from the client namespace. Bounded: wrk's own duration plus 20 s.
pub fn wrk(lab: &Lab, w: &Wrk, url: &str) -> Result<WrkResult> {
    wrk_with(lab, w, &[], url)
}

/// [`wrk`] with more wrk arguments (e.g. `["-H", "Connection: close"]`).
pub fn wrk_with(lab: &Lab, w: &Wrk, extra: &[&str], url: &str) -> Result<WrkResult> {
    let (t, c, d) = (
        format!("-t{}", w.threads),
        format!("-c{}", w.connections),
        format!("-d{}s", w.seconds),
    );
    let mut args: Vec<String> = Vec::new();
    if let Some(cpu) = w.cpu {
        args.extend(["taskset".into(), "-c".into(), cpu.to_string()]);
    }
    args.extend(
        ["wrk", &t, &c, &d, "--timeout", "2s", "--latency"]
            .iter()
            .chain(extra)
            .chain(&[url])
            .map(|a| a.to_string()),
    );
    let out = lab.exec_timeout(
        host::CLIENT,
        &args,
        Duration::from_secs(u64::from(w.seconds) + 20),
    )?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    parse_wrk(&text).with_context(|| format!("parsing wrk's output:\n{text}"))
}

/// "1.23ms", "850.00us", "1.02s", "2.00m" -> milliseconds.
fn duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = text.split_at(split);
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        "m" => v * 60_000.0,
        "h" => v * 3_600_000.0,
        _ => return None,
    })
}

pub fn parse_wrk(text: &str) -> Result<WrkResult> {
    let mut r = WrkResult::default();
    let mut seen_rps = false;
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v, ..] => {
                r.rps = v.parse().context("Requests/sec")?;
                seen_rps = true;
            }
            ["50%", v, ..] => r.p50_ms = duration_ms(v),
            ["99%", v, ..] => r.p99_ms = duration_ms(v),
            [n, "requests", "in", ..] => r.requests = n.parse().unwrap_or(0),
            ["Non-2xx", "or", "3xx", "responses:", n, ..] => {
                r.errors += n.parse::<u64>().unwrap_or(0)
            }
            ["Socket", "errors:", rest @ ..] => {
                // "connect 0, read 0, write 0, timeout 0"
                r.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    if !seen_rps {
        bail!("no Requests/sec line");
    }
    Ok(r)
}

/// The lab's agent config: the stack's own (xtask/src/stack.rs: DSR on VIP:80, NAT on
/// VIP:8080, both over web1 and web2) with `firewall` appended.
pub fn agent_config(lab: &Lab, firewall: &str) -> Result<std::path::PathBuf> {
    let base = stack::write_agent_config(lab)?;
    let mut text = fs::read_to_string(&base)?;
    text.push_str("\n# Added by lb-bench.\n");
    text.push_str(firewall);
    let path = lab.dir().join("lb-bench.toml");
    xtask::util::write_private(&path, text)?;
    Ok(path)
}

/// A standard lab with the stack (web servers, xdp_pass on the lb's switch port, the agent
/// with `firewall` appended to the stack's config). Returns the lab and the agent's pid.
pub fn stack_lab(prefix: &str, firewall: &str) -> Result<(Lab, u32)> {
    if !prefix.starts_with(BENCH_PREFIX) {
        bail!("bench lab prefixes start with {BENCH_PREFIX:?}, not {prefix:?}");
    }
    let lab = Lab::up(LabSpec::standard(prefix))?;
    let lb = stack::release_binary("lb")?;
    stack::start_web_servers(&lab)?;
    stack::attach_peer_pass(&lab, &lb)?;
    let config = agent_config(&lab, firewall)?;
    let agent = stack::start_agent(&lab, &lb, &config)?;
    // The service answers through the VIP before anything is measured.
    let url = format!("http://{}/", addr::VIP_HTTP);
    let up = xtask::util::wait_until(Duration::from_secs(10), Duration::from_millis(200), || {
        lab.exec(host::CLIENT, &["curl", "-sf", "-m", "1", &url])
            .is_ok()
    });
    if !up {
        bail!(
            "the VIP does not answer through the agent:\n{}",
            lab.read_log("agent")
        );
    }
    Ok((lab, agent))
}

/// Clock ticks per second of /proc/*/stat and /proc/stat.
fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// (ppid, utime + stime in ticks) of a process.
fn proc_stat(pid: u32) -> Option<(u32, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    Some((
        f.get(1)?.parse().ok()?,
        f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
    ))
}

/// CPU seconds (user + sys) of `pids` and all their descendants (nginx's and haproxy's
/// workers), as of now.
pub fn tree_cpu_s(pids: &[u32]) -> f64 {
    let mut all: Vec<(u32, u32, u64)> = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for e in entries.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) {
                if let Some((ppid, ticks)) = proc_stat(pid) {
                    all.push((pid, ppid, ticks));
                }
            }
        }
    }
    let mut members: Vec<u32> = pids.to_vec();
    let mut grew = true;
    while grew {
        grew = false;
        for (pid, ppid, _) in &all {
            if members.contains(ppid) && !members.contains(pid) {
                members.push(*pid);
                grew = true;
            }
        }
    }
    let ticks: u64 = all
        .iter()
        .filter(|(pid, _, _)| members.contains(pid))
        .map(|(_, _, t)| t)
        .sum();
    ticks as f64 / clk_tck()
}

/// Softirq time of all CPUs so far, seconds (/proc/stat, system-wide).
pub fn softirq_s() -> f64 {
    let ticks = fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines().next().and_then(|l| {
                l.split_whitespace()
                    .nth(7)
                    .and_then(|v| v.parse::<u64>().ok())
            })
        })
        .unwrap_or(0);
    ticks as f64 / clk_tck()
}

/// CPU spent on the load balancer over a run: its processes' user+sys and the softirq delta.
pub struct CpuMeter {
    pids: Vec<u32>,
    proc0: f64,
    softirq0: f64,
}

impl CpuMeter {
    pub fn start(pids: &[u32]) -> Self {
        CpuMeter {
            pids: pids.to_vec(),
            proc0: tree_cpu_s(pids),
            softirq0: softirq_s(),
        }
    }

    /// (process seconds, softirq seconds).
    pub fn stop(&self) -> (f64, f64) {
        (
            (tree_cpu_s(&self.pids) - self.proc0).max(0.0),
            (softirq_s() - self.softirq0).max(0.0),
        )
    }
}

/// The order of repetition `rep` over `items`: as given, then reversed, and so on, so that no
/// item always runs first or right after the same neighbour.
pub fn alternating<T: Copy>(items: &[T], rep: u32) -> Vec<T> {
    if rep.is_multiple_of(2) {
        items.to_vec()
    } else {
        items.iter().rev().copied().collect()
    }
}

pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

pub fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// `ip netns exec` path of this binary (the flood generator runs it in the client namespace).
pub fn self_exe() -> Result<std::path::PathBuf> {
    std::env::current_exe().context("finding lb-bench's own path")
}
