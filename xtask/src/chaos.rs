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
//! The lab parts under load are here; `chaos/floods.rs` has flow_flood and hardening,
//! `chaos/database.rs` the database parts, `chaos/fuzz.rs` the three fuzzers.
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

mod database;
mod floods;
mod fuzz;

use self::{
    database::{
        db_agent_kill, db_diverged, db_failover, db_partition, db_replica_stopped, db_slow_primary,
    },
    floods::{flow_flood, hardening},
    fuzz::{api_fuzz, config_fuzz, packet_fuzz},
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

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
