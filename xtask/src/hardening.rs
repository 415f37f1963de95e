//! The hardening checks on a running lab stack: slowloris attackers against lb-web and the
//! agent's API while health checks run and new clients come, and the lab's secrets searched
//! where they must never appear. Used by `cargo xtask chaos` (`hardening`) and the lab test
//! `tests/tests/lab/hardening.rs`.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{
    lab::{addr, host, Lab},
    load,
    slowloris::Report,
    stack, util,
};

/// The agent's API in the lb namespace (the lab's default bind).
const API: SocketAddr = stack::AGENT_API;

/// How big the attack is: per attacker process (two per target), how fast its connections
/// open, and how long it lasts.
#[derive(Debug, Clone, Copy)]
pub struct Attack {
    pub connections: usize,
    pub rate: u32,
    pub seconds: u64,
}

/// One attacker process and what it saw.
#[derive(Debug, Clone)]
pub struct Attacker {
    /// `lb-web` or `api`.
    pub target: &'static str,
    pub log: String,
    pub report: Report,
}

/// What happened during an attack.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub attackers: Vec<Attacker>,
    /// New-client requests made during the attack, and those that failed (why).
    pub probes: u64,
    pub probe_failures: Vec<String>,
    /// Failed health checks the agent counted, over every backend, during the attack.
    pub health_checks_failed: u64,
    /// `service/backend: failures` of each backend with failed checks.
    pub failed_checks: Vec<String>,
    /// Failed checks seen while polling every 0.5 s: `service/backend: detail`.
    pub failure_details: BTreeSet<String>,
    /// `service/backend state` of backends not active after the attack.
    pub backends_not_active: Vec<String>,
}

impl Outcome {
    pub fn opened(&self) -> u64 {
        self.attackers.iter().map(|a| a.report.opened).sum()
    }

    pub fn closed_by_server(&self, target: &str) -> u64 {
        self.attackers
            .iter()
            .filter(|a| a.target == target)
            .map(|a| a.report.closed_by_server)
            .sum()
    }
}

/// Two slowloris processes from the client against lb-web on web1's port 80 and two from the
/// lb host against the API, while every 0.5 s new clients ask web1 and the VIP for `/healthz`
/// and the API for its status. The lab runs the stack (lb-web, the agent with health checks).
pub fn slowloris_during_health_checks(lab: &Lab, attack: &Attack) -> Result<Outcome> {
    let lbns = lab.ns(host::LB);
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let watcher = scope.spawn(|| watch_checks(&lbns, &stop, started));
        let outcome = attack_and_probe(lab, attack, &lbns);
        stop.store(true, Ordering::Relaxed);
        let details = watcher.join().unwrap_or_default();
        outcome.map(|outcome| Outcome {
            failure_details: details,
            ..outcome
        })
    })
}

/// Every failed check seen by polling the API every 100 ms until `stop`: `service/backend:
/// detail (first seen at N s)`.
fn watch_checks(ns: &str, stop: &AtomicBool, started: Instant) -> BTreeSet<String> {
    let mut first_seen: BTreeMap<String, f64> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        for (service, backend) in backends(ns).unwrap_or_default() {
            if backend["health"]["last_ok"] == false {
                let name = backend["name"].as_str().unwrap_or("?");
                let detail = backend["health"]["last_detail"].as_str().unwrap_or("?");
                first_seen
                    .entry(format!("{service}/{name}: {detail}"))
                    .or_insert_with(|| started.elapsed().as_secs_f64());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    first_seen
        .into_iter()
        .map(|(what, at)| format!("{what} (first seen at {at:.1} s)"))
        .collect()
}

fn attack_and_probe(lab: &Lab, attack: &Attack, lbns: &str) -> Result<Outcome> {
    let lbns = lbns.to_string();
    let failures_before = health_failures(&lbns)?;
    let xtask = stack::release_binary("xtask")?;
    let web1: SocketAddr = format!("{}:80", addr::WEB1)
        .parse()
        .context("web1's address")?;
    let mut spawned = Vec::new();
    for (from, target, name) in [(host::CLIENT, web1, "lb-web"), (host::LB, API, "api")] {
        for i in 1..=2 {
            let log = format!("slowloris-{name}-{i}");
            let args = [
                xtask.display().to_string(),
                "slowloris".into(),
                "--target".into(),
                target.to_string(),
                "--connections".into(),
                attack.connections.to_string(),
                "--rate".into(),
                attack.rate.to_string(),
                "--seconds".into(),
                attack.seconds.to_string(),
            ];
            spawned.push((lab.spawn(from, &args, &log)?, log, name));
        }
    }
    // Probes from the first second on, while the attackers still open connections.
    std::thread::sleep(Duration::from_secs(1));
    let (mut probes, mut probe_failures) = (0u64, Vec::new());
    let probe_until = Instant::now() + Duration::from_secs(attack.seconds.saturating_sub(4));
    while Instant::now() < probe_until {
        for ip in [addr::WEB1, addr::VIP_HTTP] {
            let url = format!("http://{ip}/healthz");
            probes += 1;
            let code = lab.exec_stdout(
                host::CLIENT,
                &[
                    "curl",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "2",
                    &url,
                ],
            );
            match code {
                Ok(code) if code.trim() == "200" => {}
                Ok(code) => probe_failures.push(format!("{url}: HTTP {}", code.trim())),
                Err(e) => probe_failures.push(format!("{url}: {e:#}")),
            }
        }
        probes += 1;
        match load::api_get(&lbns, API, "/api/v1/status", Duration::from_secs(2)) {
            Ok((200, _)) => {}
            Ok((status, body)) => probe_failures.push(format!("API: HTTP {status}: {body}")),
            Err(e) => probe_failures.push(format!("API: {e:#}")),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut attackers = Vec::new();
    for (pid, log, target) in spawned {
        util::wait_until(
            Duration::from_secs(attack.seconds + 60),
            Duration::from_millis(200),
            || !lab.is_running(pid),
        );
        let _ = lab.stop(pid);
        let text = lab.read_log(&log);
        let report = Report::from_output(&text).with_context(|| {
            let last: Vec<&str> = text.lines().rev().take(5).collect();
            format!("{log} wrote no report: {}", last.join(" | "))
        })?;
        attackers.push(Attacker {
            target,
            log,
            report,
        });
    }
    let failures_after = health_failures(&lbns)?;
    let mut failed_checks = Vec::new();
    let mut health_checks_failed = 0;
    for (backend, after) in &failures_after {
        let failed = after.saturating_sub(failures_before.get(backend).copied().unwrap_or(0));
        if failed > 0 {
            health_checks_failed += failed;
            failed_checks.push(format!("{backend}: {failed}"));
        }
    }
    Ok(Outcome {
        attackers,
        probes,
        probe_failures,
        health_checks_failed,
        failed_checks,
        failure_details: BTreeSet::new(),
        backends_not_active: backends_not_active(&lbns)?,
    })
}

/// Names of the services the agent reports.
fn service_names(ns: &str) -> Result<Vec<String>> {
    let services = load::api_json(ns, API, "/api/v1/services")?;
    Ok(services
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect())
}

/// Every backend of every service, as the API lists them.
fn backends(ns: &str) -> Result<Vec<(String, serde_json::Value)>> {
    let mut all = Vec::new();
    for name in service_names(ns)? {
        let list = load::api_json(ns, API, &format!("/api/v1/services/{name}/backends"))?;
        for backend in list["backends"].as_array().into_iter().flatten() {
            all.push((name.clone(), backend.clone()));
        }
    }
    Ok(all)
}

/// Failed health checks the agent has counted, by `service/backend`.
fn health_failures(ns: &str) -> Result<BTreeMap<String, u64>> {
    Ok(backends(ns)?
        .iter()
        .filter_map(|(service, b)| {
            let failures = b["health"]["failures"].as_u64()?;
            let name = b["name"].as_str().unwrap_or("?");
            Some((format!("{service}/{name}"), failures))
        })
        .collect())
}

fn backends_not_active(ns: &str) -> Result<Vec<String>> {
    Ok(backends(ns)?
        .iter()
        .filter(|(_, b)| b["state"] != "active")
        .map(|(service, b)| {
            let text = |key: &str| b[key].as_str().unwrap_or("?").to_string();
            format!("{service}/{} {}", text("name"), text("state"))
        })
        .collect())
}

/// Where each of the lab's passwords and the API token appears: the agent's and lb-web's logs,
/// the access logs, `lb status/services/backends --json` and the API's answers. Returns the
/// hits (`SECRET in SOURCE`, never the secret itself) and the sources searched.
pub fn secrets_in_outputs(lab: &Lab, token: &str) -> Result<(Vec<String>, Vec<String>)> {
    let ns = lab.ns(host::LB);
    let secrets = [
        ("the database admin password", stack::MYSQL_ADMIN_PASSWORD),
        (
            "the replication password",
            stack::MYSQL_REPLICATION_PASSWORD,
        ),
        ("the health-check password", stack::MYSQL_CHECK_PASSWORD),
        ("the app's database password", stack::APP_DB_PASSWORD),
        ("the API token", token),
    ];
    let mut texts: Vec<(String, String)> = Vec::new();
    for entry in std::fs::read_dir(lab.log_dir())?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("agent") || name.starts_with("lb-web") {
            texts.push((format!("log {name}"), lab.read_log(&name)));
        }
    }
    for web in host::WEBS {
        let path = stack::app_access_log(lab, web);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        texts.push((format!("access log {}", path.display()), text));
    }
    let lb = stack::release_binary("lb")?.display().to_string();
    for command in ["status", "services", "backends"] {
        let text = lab
            .exec_stdout(host::LB, &[lb.as_str(), command, "--json"])
            .unwrap_or_else(|e| format!("{e:#}"));
        texts.push((format!("lb {command} --json"), text));
    }
    let mut paths: Vec<String> = [
        "/api/v1/status",
        "/api/v1/services",
        "/api/v1/firewall/rules",
        "/api/v1/flows",
        "/api/v1/openapi.json",
        "/metrics",
        "/ui",
    ]
    .iter()
    .map(|p| p.to_string())
    .collect();
    for name in service_names(&ns).unwrap_or_default() {
        paths.push(format!("/api/v1/services/{name}/backends"));
    }
    for path in paths {
        let text = load::api_get(&ns, API, &path, Duration::from_secs(2))
            .map(|(_, body)| body)
            .unwrap_or_else(|e| format!("{e:#}"));
        texts.push((format!("GET {path}"), text));
    }
    let mut hits = Vec::new();
    for (source, text) in &texts {
        for (what, secret) in secrets {
            if !secret.is_empty() && text.contains(secret) {
                hits.push(format!("{what} in {source}"));
            }
        }
    }
    Ok((hits, texts.into_iter().map(|(source, _)| source).collect()))
}
