//! `cargo xtask chaos [--quick]`: faults under load and fuzzed input, into
//! `target/chaos/results.json` (its keys: docs/RELIABILITY.md; other keys in the file are kept).
//!
//! root check -> setup (unless --no-setup) -> `cargo build --release` -> the parts, in turn:
//! - backend_kill, agent_restart, upgrade, api_fuzz: on one lab (prefix `lbc-`) running the
//!   stack (nginx on web1 and web2, HTTP health checks, the agent with an API token), under a
//!   load of new connections from the client namespace (xtask/src/load.rs);
//! - flow_flood: a spoofed SYN, ACK and UDP flood against small flow tables, connections held
//!   (xtask/src/flow_flood.rs), on a lab of its own;
//! - db_failover: the database primary killed during acknowledged writes through the app;
//! - db_partition, db_replica_stopped, db_diverged, db_slow_primary, db_agent_kill: the
//!   database fault suite (xtask/src/db_faults.rs), each on a lab of its own;
//! - hardening: slowloris attackers (more connections than the lab's file-descriptor limit)
//!   against lb-web and the agent's API while health checks run, on the whole stack; then the
//!   lab's passwords and token searched in logs, `lb ... --json` and API answers;
//! - packet_fuzz: `lb-fuzz` (BPF_PROG_TEST_RUN against the reference model);
//! - config_fuzz: `cargo fuzz run config_parse` (fuzz/), bounded in time.
//!
//! `--only KEY[,KEY]` runs some parts only. One line per part with its mark and figures, then
//! `chaos: N/M parts passed`; exits non-zero when a part misses its bar (docs/RELIABILITY.md) or
//! fails to run. A part is one function returning its JSON; one that cannot run writes `null`
//! and `<key>_detail.reason`. The lab goes down on every path, Ctrl-C included.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};
use xtask::{
    db_faults, failover, flow_flood, hardening,
    lab::{self, addr, host, Lab, LabSpec},
    load::{self, KeepAlive, Load, LoadOptions, LoadReport},
    setup,
    stack::{self, AgentOptions},
    util,
};

#[derive(clap::Args, Debug)]
pub struct ChaosArgs {
    /// A smaller version of every part (a few minutes in all), as `cargo xtask test` runs it.
    #[arg(long)]
    pub quick: bool,
    /// Skip `cargo xtask setup` (packages, toolchain, fuzzers).
    #[arg(long)]
    pub no_setup: bool,
    /// Seed of the packet fuzzer (default: from the clock; printed and recorded).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Run only these parts (result keys, e.g. `--only flow_flood`; repeat or separate with
    /// commas). The other keys of the results file are kept.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
}

/// Prefix of the chaos lab (its namespaces, run directory and bpffs).
const LAB_PREFIX: &str = "lbc-";
/// Where the agent's API listens in the lb namespace.
const API: &str = "127.0.0.1:9876";
/// Issue 7's bar for detecting a dead backend.
const DETECT_BAR: Duration = Duration::from_millis(1000);
/// New connections per second of each slowloris process: a slowloris holds connections; a
/// burst of them is a connection flood (the firewall's `syn_rate`), measured elsewhere.
const SLOW_RATE: u32 = 2_000;
/// Issue 7's bar for the packet fuzzer (the full run; --quick runs fewer).
const PACKETS_BAR: u64 = 1_000_000;

/// How big each part is.
struct Sizes {
    /// Requests per second of the load (new TCP connection each).
    rate: u32,
    workers: usize,
    /// Load before a fault, and after it (or after its detection).
    before: Duration,
    after: Duration,
    /// How long no agent runs during a restart.
    agent_gap: Duration,
    packets: u64,
    /// schemathesis test cases per operation, per run.
    api_examples: u32,
    config_fuzz_seconds: u64,
    /// Half-sent requests each slowloris process holds (two per target), and for how long.
    slow_connections: usize,
    slow_seconds: u64,
}

const QUICK: Sizes = Sizes {
    rate: 200,
    workers: 8,
    before: Duration::from_secs(2),
    after: Duration::from_secs(3),
    agent_gap: Duration::from_millis(500),
    packets: 100_000,
    api_examples: 10,
    config_fuzz_seconds: 15,
    slow_connections: 2_000,
    slow_seconds: 20,
};

const FULL: Sizes = Sizes {
    rate: 400,
    workers: 16,
    before: Duration::from_secs(5),
    after: Duration::from_secs(10),
    agent_gap: Duration::from_secs(2),
    packets: PACKETS_BAR,
    api_examples: 50,
    config_fuzz_seconds: 60,
    // Two attackers per target: 24,000 half-sent requests, above the lab's limit of 20,000.
    slow_connections: 12_000,
    slow_seconds: 45,
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Sleeps `duration`, or stops early with an error on Ctrl-C.
fn pause(duration: Duration) -> Result<()> {
    let until = Instant::now() + duration;
    while Instant::now() < until {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted (Ctrl-C)");
        }
        std::thread::sleep((until - Instant::now()).min(Duration::from_millis(50)));
    }
    Ok(())
}

/// Whether a part met its bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    Pass,
    Fail,
}

/// What a part found: its key's value, details, its mark and a one-line summary.
struct Finding {
    value: Value,
    detail: Value,
    mark: Mark,
    summary: String,
}

struct Part {
    key: &'static str,
    run: fn(&mut Suite) -> Result<Finding>,
}

/// In this order: the lab parts share one lab, which goes down before the others.
const PARTS: &[Part] = &[
    Part {
        key: "backend_kill",
        run: backend_kill,
    },
    Part {
        key: "agent_restart",
        run: agent_restart,
    },
    Part {
        key: "upgrade",
        run: upgrade,
    },
    // Last on the lab: with the token it may drain, remove and add anything.
    Part {
        key: "api_fuzz",
        run: api_fuzz,
    },
    // Its own lab (the agent with small flow tables).
    Part {
        key: "flow_flood",
        run: flow_flood,
    },
    Part {
        key: "db_failover",
        run: db_failover,
    },
    // Its own lab (the whole stack: app tier, database, passwords).
    Part {
        key: "hardening",
        run: hardening,
    },
    Part {
        key: "db_partition",
        run: db_partition,
    },
    Part {
        key: "db_replica_stopped",
        run: db_replica_stopped,
    },
    Part {
        key: "db_diverged",
        run: db_diverged,
    },
    Part {
        key: "db_slow_primary",
        run: db_slow_primary,
    },
    Part {
        key: "db_agent_kill",
        run: db_agent_kill,
    },
    Part {
        key: "packet_fuzz",
        run: packet_fuzz,
    },
    Part {
        key: "config_fuzz",
        run: config_fuzz,
    },
];

/// State shared by the parts.
struct Suite {
    quick: bool,
    sizes: &'static Sizes,
    seed: u64,
    results: PathBuf,
    stack: Option<Stack>,
}

/// The lab with the stack running on it.
struct Stack {
    lab: Lab,
    lb: PathBuf,
    config: PathBuf,
    token: String,
    /// The running agent, if any.
    agent: Option<u32>,
    /// Agents started so far (each restart logs to a fresh `agent-N`).
    agents_started: u32,
}

pub fn run(args: ChaosArgs) -> Result<()> {
    if !util::is_root() {
        bail!(
            "cargo xtask chaos needs root (network namespaces, XDP, BPF_PROG_TEST_RUN): run \
             `sudo -E env PATH=\"$PATH\" cargo xtask chaos`"
        );
    }
    if !args.no_setup {
        setup::run()?;
    }
    util::build_release()?;
    lab::cleanup_stale(LAB_PREFIX).context("removing a stale chaos lab (lbc-*)")?;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }

    let results = util::target_dir().join("chaos").join("results.json");
    std::fs::create_dir_all(results.parent().unwrap_or(Path::new(".")))
        .with_context(|| format!("creating the directory of {}", results.display()))?;
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |t| t.as_secs())
    });
    let mut suite = Suite {
        quick: args.quick,
        sizes: if args.quick { &QUICK } else { &FULL },
        seed,
        results,
        stack: None,
    };
    println!(
        "xtask chaos: {} run; results into {}",
        if args.quick { "quick" } else { "full" },
        suite.results.display()
    );

    if let Some(unknown) = args
        .only
        .iter()
        .find(|k| !PARTS.iter().any(|p| p.key == k.as_str()))
    {
        let keys: Vec<&str> = PARTS.iter().map(|p| p.key).collect();
        bail!(
            "--only {unknown:?}: no such part (parts: {})",
            keys.join(", ")
        );
    }
    let mut lines = Vec::new();
    let (mut passed, mut failed) = (0, 0);
    for part in PARTS {
        if !args.only.is_empty() && !args.only.iter().any(|k| k == part.key) {
            continue;
        }
        if ["flow_flood", "hardening", "packet_fuzz"].contains(&part.key)
            || part.key.starts_with("db_")
        {
            // The remaining parts need no lab.
            suite.lab_down();
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            println!("xtask chaos: interrupted; skipping {}", part.key);
            failed += 1;
            continue;
        }
        println!("xtask chaos: == {} ==", part.key);
        let started = Instant::now();
        let finding = (part.run)(&mut suite).unwrap_or_else(|e| Finding {
            value: Value::Null,
            detail: json!({ "reason": format!("{e:#}") }),
            mark: Mark::Fail,
            summary: format!("could not run: {e:#}"),
        });
        let mut detail = finding.detail;
        if let Some(object) = detail.as_object_mut() {
            object.insert("quick".into(), json!(suite.quick));
            object.insert(
                "seconds".into(),
                json!((started.elapsed().as_secs_f64() * 10.0).round() / 10.0),
            );
            object.insert(
                "unix_time".into(),
                json!(SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |t| t.as_secs())),
            );
        }
        merge_results(&suite.results, part.key, finding.value, detail)?;
        let mark = match finding.mark {
            Mark::Pass => {
                passed += 1;
                "PASS"
            }
            Mark::Fail => {
                failed += 1;
                "FAIL"
            }
        };
        let line = format!("[{mark}] {}: {}", part.key, finding.summary);
        println!("xtask chaos: {line}");
        lines.push(line);
    }
    suite.lab_down();

    println!("xtask chaos: results in {}", suite.results.display());
    for line in &lines {
        println!("{line}");
    }
    println!("chaos: {passed}/{} parts passed", passed + failed);
    if failed > 0 {
        bail!("{failed} chaos part(s) missed their bar or could not run");
    }
    Ok(())
}

/// Replaces `key` and `key_detail` in the results file, keeping every other key.
fn merge_results(path: &Path, key: &str, value: Value, detail: Value) -> Result<()> {
    let mut results: Value = match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?,
        Err(_) => json!({}),
    };
    let object = results
        .as_object_mut()
        .with_context(|| format!("{} is not a JSON object", path.display()))?;
    object.insert(key.into(), value);
    object.insert(format!("{key}_detail"), detail);
    std::fs::write(path, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

impl Suite {
    /// The lab with the stack, brought up on first use.
    fn stack(&mut self) -> Result<&mut Stack> {
        if self.stack.is_none() {
            self.stack = Some(Stack::up()?);
        }
        self.stack.as_mut().context("the chaos lab is not up")
    }

    fn load_options(&self) -> Result<LoadOptions> {
        let stack = self.stack.as_ref().context("the chaos lab is not up")?;
        Ok(LoadOptions {
            netns: stack.lab.ns(host::CLIENT),
            target: vip_http()?,
            host: addr::VIP_HTTP.to_string(),
            workers: self.sizes.workers,
            rate: self.sizes.rate,
            timeout: Duration::from_secs(2),
        })
    }

    /// Stops the agent (a clean stop: detach, unpin) and tears the lab down.
    fn lab_down(&mut self) {
        let Some(mut stack) = self.stack.take() else {
            return;
        };
        if let Some(agent) = stack.agent.take() {
            if let Err(e) = stack.lab.stop(agent) {
                eprintln!("xtask chaos: stopping the agent: {e:#}");
            }
        }
        if let Err(e) = stack.lab.down() {
            eprintln!("xtask chaos: WARNING: {e:#}");
        }
    }
}

fn vip_http() -> Result<SocketAddr> {
    format!("{}:80", addr::VIP_HTTP)
        .parse()
        .context("the lab's HTTP VIP")
}

fn api_addr() -> Result<SocketAddr> {
    API.parse().context("the agent's API address")
}

impl Stack {
    fn up() -> Result<Stack> {
        let lab = Lab::up(LabSpec::standard(LAB_PREFIX))?;
        let token = random_token()?;
        let options = AgentOptions {
            web_health: Some("kind = \"http\"\nexpect_status = 200".into()),
            api_token: Some(token.clone()),
            ..AgentOptions::default()
        };
        let agent = stack::start_with(&lab, &options)?;
        let stack = Stack {
            lb: stack::release_binary("lb")?,
            config: lab.dir().join("lb.toml"),
            lab,
            token,
            agent: Some(agent),
            agents_started: 1,
        };
        for web in host::WEBS {
            stack.wait_backend(web, "active", Duration::from_secs(5))?;
        }
        Ok(stack)
    }

    fn api(&self, path: &str) -> Result<Value> {
        load::api_json(&self.lab.ns(host::LB), api_addr()?, path)
    }

    /// The data-path state (`active`, `draining`, `down`) of a backend of `web-dsr`.
    fn backend_state(&self, backend: &str) -> Result<String> {
        let list = self.api("/api/v1/services/web-dsr/backends")?;
        list["backends"]
            .as_array()
            .and_then(|all| all.iter().find(|b| b["name"] == backend))
            .and_then(|b| b["state"].as_str())
            .map(str::to_string)
            .with_context(|| format!("no backend {backend} in {list}"))
    }

    /// Polls the API every 10 ms until the backend is in `state`. Returns when the query that
    /// first saw it was sent and when its answer came: the change happened before the answer.
    fn wait_backend(
        &self,
        backend: &str,
        state: &str,
        timeout: Duration,
    ) -> Result<(Instant, Instant)> {
        let start = Instant::now();
        loop {
            let asked = Instant::now();
            // An API that does not answer for a moment is retried until the timeout.
            if self.backend_state(backend).is_ok_and(|s| s == state) {
                return Ok((asked, Instant::now()));
            }
            if start.elapsed() > timeout {
                bail!("backend {backend} of web-dsr not {state} after {timeout:?}");
            }
            pause(Duration::from_millis(10))?;
        }
    }

    /// kill -9 of the running agent: no clean stop, the pinned link keeps XDP attached.
    fn kill_agent(&mut self) -> Result<()> {
        let agent = self.agent.take().context("no agent is running")?;
        if !self.lab.signal(agent, libc::SIGKILL) {
            bail!("could not send SIGKILL to the agent (pid {agent})");
        }
        if !util::wait_until(Duration::from_secs(3), Duration::from_millis(10), || {
            !self.lab.is_running(agent)
        }) {
            bail!("the agent (pid {agent}) survived SIGKILL");
        }
        // Reaps it and forgets it.
        let _ = self.lab.stop(agent);
        Ok(())
    }

    /// Starts `binary run` with the lab's config; returns its log name.
    fn start_agent(&mut self, binary: &Path) -> Result<String> {
        self.agents_started += 1;
        let log = format!("agent-{}", self.agents_started);
        let pid = stack::start_agent_logged(&self.lab, binary, &self.config, &log)?;
        self.agent = Some(pid);
        Ok(log)
    }

    /// The id of the XDP program attached to the lb's NIC (`ip -j link`).
    fn xdp_program_id(&self) -> Result<u64> {
        let text = self.lab.exec_stdout(
            host::LB,
            &["ip", "-j", "link", "show", "dev", lab::HOST_IFACE],
        )?;
        let links: Value = serde_json::from_str(&text)
            .with_context(|| format!("`ip -j link` is not JSON: {text}"))?;
        links[0]["xdp"]["prog"]["id"]
            .as_u64()
            .with_context(|| format!("no XDP program on the lb's {}: {text}", lab::HOST_IFACE))
    }
}

/// A token for the lab's API writes, from the kernel's random source.
fn random_token() -> Result<String> {
    let mut bytes = [0u8; 24];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// SIGKILL to every process in a lab host's namespace: the host's server crashes.
fn kill_host_processes(lab: &Lab, host: &str) -> Result<Vec<u32>> {
    let ns = lab.ns(host);
    let text = util::stdout_of(Command::new("ip").args(["netns", "pids", &ns]))?;
    let pids: Vec<u32> = text
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    if pids.is_empty() {
        bail!("no process runs in {ns}");
    }
    for pid in &pids {
        util::signal(*pid, libc::SIGKILL);
    }
    Ok(pids)
}

fn ms(duration: Duration) -> u64 {
    duration.as_millis().try_into().unwrap_or(u64::MAX)
}

/// What a load run looked like, for the details.
fn load_detail(report: &LoadReport) -> Value {
    json!({
        "served_by": { "web1": report.served_by("web1"), "web2": report.served_by("web2") },
        "first_failures": report.first_failures(5),
    })
}

// ---------------------------------------------------------------------------------------
// The parts

/// web1's server killed with SIGKILL under load: how long until the agent reports it down,
/// and the failed requests that started before and after that moment.
fn backend_kill(suite: &mut Suite) -> Result<Finding> {
    let sizes = suite.sizes;
    suite.stack()?;
    let load_options = suite.load_options()?;
    let stack = suite.stack()?;
    let load = Load::start(&load_options)?;
    let load_started = load.started();
    pause(sizes.before)?;

    let killed_at = Instant::now();
    let killed = kill_host_processes(&stack.lab, host::WEB1)?;
    let detected_at = stack.wait_backend(host::WEB1, "down", Duration::from_secs(5));
    pause(sizes.after)?;
    let report = load.finish()?;

    let (asked, answered) = detected_at?;
    // Both sides taken pessimistically: detection when the answer came, and requests classed
    // by start time from when that query was sent (perhaps a little before the change).
    let detect = answered - killed_at;
    let moment = asked - load_started;
    let failed_before = report.failed() - report.failed_from(moment);
    let failed_after = report.failed_from(moment);

    // web1 back for the next parts: a fresh nginx, in rotation again after `rise` checks.
    stack::start_web_server(&stack.lab, host::WEB1)?;
    stack.wait_backend(host::WEB1, "active", Duration::from_secs(5))?;

    let value = json!({
        "detect_ms": ms(detect),
        "failed_after_detect": failed_after,
        "failed_before_detect": failed_before,
        "requests": report.requests(),
    });
    let mut detail = load_detail(&report);
    detail["killed_pids"] = json!(killed);
    detail["rate_per_s"] = json!(sizes.rate);
    detail["health_check"] = json!("http, interval 200 ms, fall 3 (defaults)");
    let pass = detect <= DETECT_BAR && failed_after == 0 && report.requests() > 0;
    Ok(Finding {
        value,
        detail,
        mark: if pass { Mark::Pass } else { Mark::Fail },
        summary: format!(
            "detect {} ms (bar {} ms), failed after detection {failed_after} (bar 0), before {failed_before}, {} requests",
            ms(detect),
            ms(DETECT_BAR),
            report.requests()
        ),
    })
}

/// The agent killed with SIGKILL under load and started again (same binary): failed
/// requests, and whether a kept-alive connection still gets answers afterwards.
fn agent_restart(suite: &mut Suite) -> Result<Finding> {
    let sizes = suite.sizes;
    suite.stack()?;
    let load_options = suite.load_options()?;
    let stack = suite.stack()?;
    let mut long = KeepAlive::connect(
        &stack.lab.ns(host::CLIENT),
        vip_http()?,
        addr::VIP_HTTP,
        Duration::from_secs(3),
    )
    .context("opening the long-lived connection")?;
    let first = long
        .get()
        .context("the long-lived connection before the kill")?;
    let load = Load::start(&load_options)?;
    pause(sizes.before)?;

    let program_before = stack.xdp_program_id()?;
    stack.kill_agent()?;
    let with_no_agent = long.get();
    pause(sizes.agent_gap)?;
    let lb = stack.lb.clone();
    let log = stack.start_agent(&lb)?;
    let after = long.get();
    pause(sizes.after)?;
    let at_end = long.get();
    let report = load.finish()?;
    let program_after = stack.xdp_program_id()?;
    let agent_log = stack.lab.read_log(&log);

    let answers: Vec<String> = [&with_no_agent, &after, &at_end]
        .iter()
        .map(|r| match r {
            Ok(body) => body.clone(),
            Err(e) => format!("error: {e}"),
        })
        .collect();
    let survived = answers.iter().all(|a| *a == first);
    let adopted = agent_log.contains("adopted pinned maps");
    let value = json!({ "failed": report.failed(), "requests": report.requests(), "long_conn_survived": survived });
    let mut detail = load_detail(&report);
    detail["long_conn_answers"] = json!({ "before": first, "no_agent": answers[0], "after_restart": answers[1], "at_end": answers[2] });
    detail["adopted_pinned_maps"] = json!(adopted);
    detail["xdp_program_id"] = json!({ "before": program_before, "after": program_after });
    detail["no_agent_ms"] = json!(ms(sizes.agent_gap));
    let pass = report.failed() == 0 && survived && adopted && report.requests() > 0;
    Ok(Finding {
        value,
        detail,
        mark: if pass { Mark::Pass } else { Mark::Fail },
        summary: format!(
            "failed {} of {} requests (bar 0), long-lived connection survived: {survived}, maps adopted: {adopted}",
            report.failed(),
            report.requests()
        ),
    })
}

/// A new agent binary under load: the old agent is killed with SIGKILL (its clean stop,
/// SIGTERM, detaches and unpins, so a hand-over has to leave the pins) and the new one loads
/// a new instance of the program and swaps it into the pinned XDP link. The program id on
/// the NIC must change and no request may fail.
fn upgrade(suite: &mut Suite) -> Result<Finding> {
    let sizes = suite.sizes;
    suite.stack()?;
    let load_options = suite.load_options()?;
    let stack = suite.stack()?;
    // The "new version": the same build at another path (this run has only one build).
    let upgraded = stack.lab.dir().join("lb-upgraded");
    std::fs::copy(&stack.lb, &upgraded)
        .with_context(|| format!("copying the agent to {}", upgraded.display()))?;
    let program_before = stack.xdp_program_id()?;
    let load = Load::start(&load_options)?;
    pause(sizes.before)?;

    stack.kill_agent()?;
    let log = stack.start_agent(&upgraded)?;
    let program_after = stack.xdp_program_id()?;
    pause(sizes.after)?;
    let report = load.finish()?;
    let agent_log = stack.lab.read_log(&log);
    let status = stack.api("/api/v1/status")?;

    let swapped = agent_log.contains("replaced the program of the pinned XDP link");
    let attach = status["attach"].as_str().unwrap_or("").to_string();
    let changed = program_after != program_before;
    let value = json!({ "failed": report.failed(), "requests": report.requests() });
    let mut detail = load_detail(&report);
    detail["xdp_program_id"] = json!({ "before": program_before, "after": program_after });
    detail["attach"] = json!(attach);
    detail["note"] = json!(
        "the new agent is a copy of the same build at another path: it loads a new instance of the same \
         XDP object and swaps it into the pinned link; the old agent is stopped with SIGKILL"
    );
    let pass = report.failed() == 0
        && changed
        && swapped
        && attach == "replaced_pinned"
        && report.requests() > 0;
    Ok(Finding {
        value,
        detail,
        mark: if pass { Mark::Pass } else { Mark::Fail },
        summary: format!(
            "failed {} of {} requests (bar 0), XDP program id {program_before} -> {program_after}, attach {attach}",
            report.failed(),
            report.requests()
        ),
    })
}

/// A spoofed SYN, ACK and UDP flood of several times the flow tables' size (small tables,
/// `xtask/src/flow_flood.rs`), with keep-alive connections held through the VIP and new
/// connections made throughout. Its own lab.
fn flow_flood(suite: &mut Suite) -> Result<Finding> {
    let options = if suite.quick {
        flow_flood::Options::quick()
    } else {
        flow_flood::Options::full()
    };
    let lab = Lab::up(LabSpec::standard(LAB_PREFIX))?;
    let outcome = flow_flood::start(&lab, &options).and_then(|_| flow_flood::run(&lab, &options));
    let outcome = outcome
        .map_err(|e| anyhow::anyhow!("{e:#}\nagent log:\n{}", tail(&lab.read_log("agent"), 30)));
    let down = lab.down();
    let report = outcome?;
    down?;
    let (acks, syns, udp) = (
        report.sent_of("ack"),
        report.sent_of("syn"),
        report.sent_of("udp"),
    );
    let no_flow = report.verdict("drop_no_flow");
    // Every ACK that reached the lb (the rest found its ring full) must be dropped as no flow.
    let acks_arrived = acks.saturating_sub(report.ring_full);
    let table = u64::from(options.flow_capacity.max(options.unverified_capacity));
    let value = json!({
        "flood_packets": report.flood_packets(),
        "flow_capacity": options.flow_capacity,
        "established_survived": report.established_survived,
        "legit_failed": report.legit_failed,
    });
    let detail = json!({
        "unverified_capacity": options.unverified_capacity,
        "sent": report.sent.iter().map(|s| json!({ "kind": s.kind, "packets": s.packets, "seconds": s.seconds, "generator": s.generator })).collect::<Vec<_>>(),
        "sources": format!(
            "random addresses of {o}/{b} (SYN, UDP) and {a}/{b} (ACK), random ports 1024-65535",
            o = flow_flood::SPOOF_OPENING,
            a = flow_flood::SPOOF_ACK,
            b = 32 - flow_flood::SPOOF_BITS
        ),
        "held_connections": report.held.iter().map(|(s, a, b)| json!({ "service": s, "before": a, "after": b })).collect::<Vec<_>>(),
        "legit_requests": report.legit_requests,
        "legit_failed_during_flood": report.legit_failed_during_flood,
        "legit_served_by": { "web1": report.legit_served_by[0].1, "web2": report.legit_served_by[1].1 },
        "first_failures": report.first_failures,
        "verdicts_delta": report.verdicts,
        "lb_ring_full_frames": report.ring_full,
        "legit_rate_per_s": options.legit_rate,
        "spoofed_flows_listed": {
            "unverified": report.spoofed_unverified_listed,
            "connections": report.spoofed_connections_listed,
        },
    });
    let pass = report.established_survived
        && report.legit_failed == 0
        && report.legit_requests > 0
        && syns >= 2 * table
        && acks >= 2 * table
        && udp >= 2 * table
        && no_flow >= acks_arrived
        && report.spoofed_unverified_listed > 0
        && report.spoofed_connections_listed == 0;
    Ok(Finding {
        value,
        detail,
        mark: if pass { Mark::Pass } else { Mark::Fail },
        summary: format!(
            "{} spoofed packets ({syns} SYN, {acks} ACK, {udp} UDP; tables of {} connections and {} unverified), \
             held connections survived: {} (bar true), legit failed {} of {} (bar 0), drop_no_flow {no_flow} (ACKs that reached the lb: {acks_arrived}), \
             spoofed flows listed: {} unverified, {} connections (bar 0)",
            report.flood_packets(),
            options.flow_capacity,
            options.unverified_capacity,
            report.established_survived,
            report.legit_failed,
            report.legit_requests,
            report.spoofed_unverified_listed,
            report.spoofed_connections_listed,
        ),
    })
}

/// Acknowledged writes before the primary is killed (full, quick).
const DB_WRITES_BEFORE_KILL: (usize, usize) = (100, 20);
const FAILOVER_BAR: Duration = Duration::from_secs(5);

/// The primary killed (SIGKILL) during a stream of notes written through the app, one after
/// another; failover time as the client saw it; every acknowledged note looked up on the new
/// primary; the old primary brought back as a replica. Its own lab (the whole stack).
fn db_failover(suite: &mut Suite) -> Result<Finding> {
    let lab = Lab::up(LabSpec::standard(LAB_PREFIX))?;
    let outcome = db_failover_on(suite, &lab);
    let down = lab.down();
    let finding = outcome?;
    down?;
    Ok(finding)
}

fn db_failover_on(suite: &Suite, lab: &Lab) -> Result<Finding> {
    let lb = stack::release_binary("lb")?;
    let started = stack::start_full_stack(lab, &random_token()?)?;
    let before = if suite.quick {
        DB_WRITES_BEFORE_KILL.1
    } else {
        DB_WRITES_BEFORE_KILL.0
    };
    let report = failover::kill_primary_during_writes(
        lab,
        &lb,
        host::DB1,
        started.db1,
        host::DB2,
        before,
        Duration::from_secs(30),
    )
    .map_err(|e| anyhow::anyhow!("{e:#}\nagent log:\n{}", tail(&lab.read_log("agent"), 30)))?;
    let rejoined =
        failover::bring_back_as_replica(lab, &lb, host::DB1, host::DB2, Duration::from_secs(30))
            .and_then(|_| {
                failover::wait_caught_up(lab, host::DB1, host::DB2, Duration::from_secs(10))
            });
    let failover_ms = ms(report.failover);
    let pass = report.lost_writes == 0 && report.failover <= FAILOVER_BAR && rejoined.is_ok();
    Ok(Finding {
        value: json!({ "failover_ms": failover_ms, "acked_writes": report.acked_writes, "lost_writes": report.lost_writes }),
        detail: json!({
            "failed_writes": report.failed_writes,
            "agent_failover_ms": report.agent_failover_ms,
            "old_primary_rejoined_as_replica": rejoined.is_ok(),
            "rejoin_error": rejoined.as_ref().err().map(|e| format!("{e:#}")),
        }),
        mark: if pass { Mark::Pass } else { Mark::Fail },
        summary: format!(
            "writes back {failover_ms} ms after the kill (bar {} ms); {} acknowledged, {} lost, {} refused while failing over; db1 back as replica: {}",
            FAILOVER_BAR.as_millis(),
            report.acked_writes,
            report.lost_writes,
            report.failed_writes,
            if rejoined.is_ok() { "yes" } else { "NO" }
        ),
    })
}

/// One database fault ([`db_faults`]) on a lab of its own running the whole stack.
fn db_fault(
    fault: impl FnOnce(&Lab, &Path, &stack::FullStack) -> Result<db_faults::FaultReport>,
) -> Result<Finding> {
    let lab = Lab::up(LabSpec::standard(LAB_PREFIX))?;
    let outcome = stack::release_binary("lb")
        .and_then(|lb| {
            let started = stack::start_full_stack(&lab, &random_token()?)?;
            fault(&lab, &lb, &started)
        })
        .map_err(|e| anyhow::anyhow!("{e:#}\nagent log:\n{}", tail(&lab.read_log("agent"), 30)));
    let down = lab.down();
    let report = outcome?;
    down?;
    Ok(Finding {
        value: report.value(),
        detail: report.detail,
        mark: if report.pass { Mark::Pass } else { Mark::Fail },
        summary: report.summary,
    })
}

/// How long the agent's status is watched after a fault that must not promote.
fn db_hold(suite: &Suite) -> Duration {
    if suite.quick {
        Duration::from_secs(4)
    } else {
        Duration::from_secs(10)
    }
}

fn db_partition(_: &mut Suite) -> Result<Finding> {
    db_fault(|lab, lb, _| db_faults::partition(lab, lb))
}

fn db_replica_stopped(suite: &mut Suite) -> Result<Finding> {
    let hold = db_hold(suite);
    db_fault(|lab, lb, started| db_faults::replica_stopped(lab, lb, started, hold))
}

fn db_diverged(suite: &mut Suite) -> Result<Finding> {
    let hold = db_hold(suite);
    db_fault(|lab, lb, started| {
        db_faults::diverged(lab, lb, started, &stack::api_token_file(lab), hold)
    })
}

fn db_slow_primary(suite: &mut Suite) -> Result<Finding> {
    let slow = if suite.quick {
        Duration::from_secs(8)
    } else {
        Duration::from_secs(30)
    };
    db_fault(|lab, lb, started| db_faults::slow_primary(lab, lb, started, slow))
}

fn db_agent_kill(suite: &mut Suite) -> Result<Finding> {
    // Step 0: the promotion remembered; 1-5: the SQL steps (see lb-userspace/src/db/sql.rs).
    let steps: &[u8] = if suite.quick {
        &[1, 3, 5]
    } else {
        &[0, 1, 2, 3, 4, 5]
    };
    db_fault(|lab, lb, started| db_faults::agent_kill(lab, lb, started, steps))
}

/// Slowloris against lb-web (web1's port 80, from the client) and the agent's API (from the lb
/// host), two attacker processes each, while health checks run and new clients are served;
/// then the lab's secrets searched where they must never appear. Its own lab.
fn hardening(suite: &mut Suite) -> Result<Finding> {
    let lab = Lab::up(LabSpec::standard(LAB_PREFIX))?;
    let outcome = hardening_on(suite, &lab);
    let down = lab.down();
    let finding = outcome?;
    down?;
    Ok(finding)
}

fn hardening_on(suite: &Suite, lab: &Lab) -> Result<Finding> {
    let token = random_token()?;
    stack::start_full_stack(lab, &token)?;
    let attack = hardening::Attack {
        connections: suite.sizes.slow_connections,
        rate: SLOW_RATE,
        seconds: suite.sizes.slow_seconds,
    };
    let outcome = hardening::slowloris_during_health_checks(lab, &attack)?;
    let (secret_hits, sources) = hardening::secrets_in_outputs(lab, &token)?;
    let (web_closed, api_closed) = (
        outcome.closed_by_server("lb-web"),
        outcome.closed_by_server("api"),
    );
    let opened = outcome.opened();
    let failed = outcome.probe_failures.len();
    let pass = outcome.health_checks_failed == 0
        && secret_hits.is_empty()
        && failed == 0
        && web_closed > 0
        && api_closed > 0;
    Ok(Finding {
        value: json!({
            "slow_connections": opened,
            "health_checks_failed": outcome.health_checks_failed,
            "secrets_found": secret_hits.len(),
        }),
        detail: json!({
            "attackers": outcome.attackers.iter().map(|a| json!({ "target": a.target, "log": a.log, "report": a.report.to_json() })).collect::<Vec<_>>(),
            "new_client_probes": outcome.probes,
            "new_client_failures": failed,
            "first_new_client_failures": outcome.probe_failures.iter().take(10).collect::<Vec<_>>(),
            "backends_not_active": outcome.backends_not_active,
            "failed_checks": outcome.failed_checks,
            "failure_details": outcome.failure_details,
            "secrets_found_in": secret_hits,
            "searched": sources,
        }),
        mark: if pass { Mark::Pass } else { Mark::Fail },
        summary: format!(
            "{opened} half-sent requests ({} per attacker at {SLOW_RATE}/s, 2 attackers each on lb-web and the API, {} s); \
             closed by the servers: lb-web {web_closed}, API {api_closed}; health checks failed {} (bar 0); \
             new clients failed {failed}/{} (bar 0); secrets found {} (bar 0)",
            attack.connections,
            attack.seconds,
            outcome.health_checks_failed,
            outcome.probes,
            secret_hits.len()
        ),
    })
}

/// `lb-fuzz`: random and mutated packets through BPF_PROG_TEST_RUN against the reference
/// model. It writes the `packet_fuzz` key itself; this reads it back.
fn packet_fuzz(suite: &mut Suite) -> Result<Finding> {
    let packets = suite.sizes.packets;
    // A stale key from an earlier run must not stand in for this one.
    merge_results(
        &suite.results,
        "packet_fuzz",
        Value::Null,
        json!({ "reason": "running" }),
    )?;
    // Built by the `cargo build --release` above (lb-tests is a default member).
    let mut cmd = Command::new(stack::release_binary("lb-fuzz")?);
    cmd.current_dir(util::workspace_root())
        .args([
            "--packets",
            &packets.to_string(),
            "--seed",
            &suite.seed.to_string(),
            "--results",
        ])
        .arg(&suite.results);
    let outcome = util::run(&mut cmd);
    let text = std::fs::read_to_string(&suite.results)?;
    let results: Value = serde_json::from_str(&text)?;
    let value = results["packet_fuzz"].clone();
    if value.is_null() {
        bail!(
            "lb-fuzz wrote no packet_fuzz key: {}",
            outcome
                .err()
                .map_or("it exited 0".into(), |e| format!("{e:#}"))
        );
    }
    let count = |key: &str| value[key].as_u64().unwrap_or(u64::MAX);
    let (ran, aborted, mismatches) = (
        count("packets"),
        count("aborted"),
        count("model_mismatches"),
    );
    let pass = outcome.is_ok() && ran >= packets && aborted == 0 && mismatches == 0;
    let bar = if packets >= PACKETS_BAR {
        String::new()
    } else {
        format!(" (quick: the full run's bar is {PACKETS_BAR})")
    };
    Ok(Finding {
        value,
        detail: json!({ "seed": suite.seed, "command": util::cmd_line(&cmd) }),
        mark: if pass { Mark::Pass } else { Mark::Fail },
        summary: format!("{ran} packets{bar}, aborted {aborted} (bar 0), model mismatches {mismatches} (bar 0), seed {}", suite.seed),
    })
}

/// schemathesis against the running agent's OpenAPI document: first without a token and with
/// a wrong one (every write must be refused and change nothing), then with the token (no 5xx).
fn api_fuzz(suite: &mut Suite) -> Result<Finding> {
    let schemathesis = setup::working_schemathesis().with_context(|| {
        format!(
            "schemathesis {} is not installed: run `cargo xtask setup`",
            setup::SCHEMATHESIS_VERSION
        )
    })?;
    let examples = suite.sizes.api_examples;
    let seed = suite.seed;
    let stack = suite.stack()?;
    // Outside the lab's directory, which goes with the lab: the logs and reports stay.
    let dir = util::target_dir().join("chaos").join("api-fuzz");
    std::fs::create_dir_all(&dir)?;

    let before = write_visible_state(stack)?;
    let no_token = run_schemathesis(stack, &schemathesis, &dir, "no-token", None, examples, seed)?;
    let wrong_token = run_schemathesis(
        stack,
        &schemathesis,
        &dir,
        "wrong-token",
        Some("not-the-token"),
        examples,
        seed,
    )?;
    let after = write_visible_state(stack)?;
    let state_changed = before != after;
    let token = stack.token.clone();
    let with_token = run_schemathesis(
        stack,
        &schemathesis,
        &dir,
        "token",
        Some(&token),
        examples,
        seed,
    )?;
    // The agent must have lived through it all.
    stack
        .api("/api/v1/status")
        .context("the agent after the API fuzzing")?;

    let unauthorized = [&no_token, &wrong_token];
    let writes_accepted: usize = unauthorized
        .iter()
        .map(|r| r.writes_accepted)
        .sum::<usize>()
        + usize::from(state_changed);
    let requests = no_token.requests + wrong_token.requests + with_token.requests;
    let server_errors =
        no_token.server_errors + wrong_token.server_errors + with_token.server_errors;
    let value = json!({ "requests": requests, "server_errors": server_errors, "unauthorized_writes_accepted": writes_accepted });
    let detail = json!({
        "runs": { "no_token": no_token.detail(), "wrong_token": wrong_token.detail(), "token": with_token.detail() },
        "state_changed_without_token": state_changed,
        "state_compared": { "services": before["services"].as_array().map_or(0, Vec::len), "rules": before["rules"].as_array().map_or(0, Vec::len) },
        "reports": dir.display().to_string(),
        "max_examples": examples,
        "seed": seed,
        "schemathesis": setup::SCHEMATHESIS_VERSION,
    });
    // Some writes with the token must succeed: else the token (and the "refused" above) proves nothing.
    let pass = requests > 0
        && server_errors == 0
        && writes_accepted == 0
        && with_token.writes_accepted > 0;
    Ok(Finding {
        value,
        detail,
        mark: if pass { Mark::Pass } else { Mark::Fail },
        summary: format!(
            "{requests} requests ({} writes with the token, {} accepted), 5xx {server_errors} (bar 0), unauthorized writes accepted {writes_accepted} (bar 0)",
            with_token.writes, with_token.writes_accepted
        ),
    })
}

/// What API writes could change, without counters: services, backends (weight, admin
/// state), firewall rules, reloads.
fn write_visible_state(stack: &Stack) -> Result<Value> {
    let services = stack.api("/api/v1/services")?;
    let mut state = Vec::new();
    for service in services
        .as_array()
        .or_else(|| services["services"].as_array())
        .cloned()
        .unwrap_or_default()
    {
        let name = service["name"].as_str().unwrap_or("").to_string();
        let list = stack.api(&format!("/api/v1/services/{name}/backends"))?;
        let backends: Vec<Value> = list["backends"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|b| json!([b["name"], b["address"], b["port"], b["weight"], b["admin"]]))
            .collect();
        state.push(json!({ "service": name, "backends": backends }));
    }
    let rules = stack.api("/api/v1/firewall/rules")?;
    let rules: Vec<Value> = rules["rules"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|r| json!([r["name"], r["action"], r["kind"]]))
        .collect();
    let status = stack.api("/api/v1/status")?;
    Ok(json!({ "services": state, "rules": rules, "reloads": status["reloads"] }))
}

/// One schemathesis run, counted from its HAR report.
struct ApiRun {
    requests: usize,
    server_errors: usize,
    /// Write requests (POST, PUT, PATCH, DELETE) and those answered 2xx.
    writes: usize,
    writes_accepted: usize,
    exit: String,
    /// Up to 5 requests answered 5xx, or writes accepted without the token.
    examples: Vec<String>,
    /// How the writes were answered: status -> count.
    write_statuses: std::collections::BTreeMap<u64, usize>,
}

impl ApiRun {
    fn detail(&self) -> Value {
        json!({
            "requests": self.requests, "server_errors": self.server_errors, "writes": self.writes,
            "writes_2xx": self.writes_accepted, "schemathesis_exit": self.exit, "examples": self.examples,
            "write_statuses": self.write_statuses,
        })
    }
}

fn run_schemathesis(
    stack: &Stack,
    bin: &Path,
    dir: &Path,
    name: &str,
    token: Option<&str>,
    examples: u32,
    seed: u64,
) -> Result<ApiRun> {
    let har = dir.join(format!("{name}.har"));
    let _ = std::fs::remove_file(&har);
    let mut args: Vec<String> = vec![
        bin.display().to_string(),
        "run".into(),
        format!("http://{API}/api/v1/openapi.json"),
        "--checks".into(),
        "not_a_server_error".into(),
        "--phases".into(),
        "examples,coverage,fuzzing".into(),
        "--max-examples".into(),
        examples.to_string(),
        "--seed".into(),
        seed.to_string(),
        "--workers".into(),
        "1".into(),
        "--request-timeout".into(),
        "5".into(),
        "--report".into(),
        "har".into(),
        "--report-har-path".into(),
        har.display().to_string(),
        "--suppress-health-check".into(),
        "all".into(),
        "--no-color".into(),
    ];
    if let Some(token) = token {
        args.push("--header".into());
        args.push(format!("Authorization: Bearer {token}"));
    }
    // Its working directory gets its example database (.schemathesis/): keep it with the reports.
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &stack.lab.ns(host::LB)])
        .args(&args)
        .current_dir(dir);
    let out = util::output_timeout(&mut cmd, Duration::from_secs(600))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    std::fs::write(
        dir.join(format!("{name}.log")),
        format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr)),
    )?;
    let text = std::fs::read_to_string(&har).with_context(|| {
        format!(
            "schemathesis ({name}) wrote no report {}: {}",
            har.display(),
            tail(&stdout, 20)
        )
    })?;
    let har: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", har.display()))?;
    let entries = har["log"]["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut run = ApiRun {
        requests: entries.len(),
        server_errors: 0,
        writes: 0,
        writes_accepted: 0,
        exit: out.status.to_string(),
        examples: Vec::new(),
        write_statuses: Default::default(),
    };
    for entry in &entries {
        let method = entry["request"]["method"].as_str().unwrap_or("?");
        let url = entry["request"]["url"].as_str().unwrap_or("?");
        let status = entry["response"]["status"].as_u64().unwrap_or(0);
        let write = matches!(method, "POST" | "PUT" | "PATCH" | "DELETE");
        let accepted = write && token != Some(stack.token.as_str()) && (200..300).contains(&status);
        run.writes += usize::from(write);
        if write {
            *run.write_statuses.entry(status).or_default() += 1;
        }
        run.writes_accepted += usize::from(write && (200..300).contains(&status));
        if status >= 500 || accepted {
            run.server_errors += usize::from(status >= 500);
            if run.examples.len() < 5 {
                run.examples.push(format!("{method} {url} -> {status}"));
            }
        }
    }
    Ok(run)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// cargo-fuzz on the agent's config parser and validator (fuzz/fuzz_targets/config_parse.rs),
/// seeded with examples/*.toml, bounded in time; any crash (panic, overflow, timeout) fails.
fn config_fuzz(suite: &mut Suite) -> Result<Finding> {
    if !setup::working_cargo_fuzz() {
        bail!(
            "cargo-fuzz {} is not installed: run `cargo xtask setup`",
            setup::CARGO_FUZZ_VERSION
        );
    }
    let seconds = suite.sizes.config_fuzz_seconds;
    let root = util::workspace_root();
    let fuzz_dir = root.join("fuzz");
    let corpus = util::target_dir().join("chaos").join("config-corpus");
    std::fs::create_dir_all(&corpus)?;
    let artifacts = fuzz_dir.join("artifacts").join("config_parse");
    let crashes_before = crash_files(&artifacts);
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&fuzz_dir)
        .args(["+nightly", "fuzz", "run", "config_parse"])
        .arg(&corpus)
        .arg(root.join("examples"))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        // A single input taking seconds is a hang: bounded time is part of the bar.
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg(format!("-seed={}", suite.seed % u64::from(u32::MAX)))
        .env_remove("RUSTUP_TOOLCHAIN");
    // Building the target the first time takes minutes; the run itself is bounded.
    let out = util::output_timeout(&mut cmd, Duration::from_secs(seconds + 1200))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    std::fs::write(
        util::target_dir().join("chaos").join("config-fuzz.log"),
        &stderr,
    )?;
    let runs = stderr.lines().rev().find_map(|l| {
        l.strip_prefix("Done ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    });
    let new_crashes: Vec<String> = crash_files(&artifacts)
        .into_iter()
        .filter(|c| !crashes_before.contains(c))
        .collect();
    let Some(runs) = runs else {
        if new_crashes.is_empty() {
            bail!(
                "cargo fuzz did not finish a run ({}):\n{}",
                out.status,
                tail(&stderr, 30)
            );
        }
        let value = json!({ "runs": Value::Null, "crashes": new_crashes.len() });
        return Ok(Finding {
            value,
            detail: json!({ "crash_files": new_crashes, "log_tail": tail(&stderr, 40) }),
            mark: Mark::Fail,
            summary: format!(
                "{} crash(es), e.g. {} (see target/chaos/config-fuzz.log)",
                new_crashes.len(),
                new_crashes[0]
            ),
        });
    };
    let corpus_files = std::fs::read_dir(&corpus).map_or(0, |d| d.count());
    let value = json!({ "runs": runs, "crashes": new_crashes.len(), "seconds": seconds });
    let pass = out.status.success() && new_crashes.is_empty() && runs > 0;
    Ok(Finding {
        value,
        detail: json!({ "corpus_files": corpus_files, "crash_files": new_crashes, "exit": out.status.to_string() }),
        mark: if pass { Mark::Pass } else { Mark::Fail },
        summary: format!(
            "{runs} inputs in {seconds} s, crashes {} (bar 0), corpus {corpus_files} files",
            new_crashes.len()
        ),
    })
}

/// Files libFuzzer leaves for a failing input (crash-, timeout-, oom-, leak-).
fn crash_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| {
                    ["crash-", "timeout-", "oom-", "leak-"]
                        .iter()
                        .any(|p| n.starts_with(p))
                })
                .collect()
        })
        .unwrap_or_default()
}
