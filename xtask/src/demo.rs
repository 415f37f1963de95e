//! `cargo xtask demo`: the mission end to end, non-interactive. Brings the whole stack up (the
//! same as `cargo xtask run`), runs every check against it with real traffic, prints one line
//! per check, tears the lab down, and ends with exactly `demo: N/N checks passed`.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;
use xtask::{
    failover,
    lab::{self, addr, host, Lab, LabSpec},
    netns, setup, stack, util,
};

/// The demo's lab prefix (its own, so it never touches a running `cargo xtask run`).
const PREFIX: &str = "lbd-";
/// How long a dead backend may stay in rotation: interval x fall (600 ms) plus a check and a poll.
const DETECT_BUDGET: Duration = Duration::from_millis(1500);
const FAILOVER_BUDGET: Duration = Duration::from_secs(5);

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Skip `cargo xtask setup`.
    #[arg(long)]
    pub no_setup: bool,
    /// Skip `cargo build --release` (use the binaries already built).
    #[arg(long)]
    pub no_build: bool,
}

/// The checks' outcomes, printed as they come.
#[derive(Default)]
struct Report {
    passed: usize,
    failed: usize,
}

impl Report {
    fn check(&mut self, name: &str, outcome: Result<String>) {
        match outcome {
            Ok(detail) => {
                self.passed += 1;
                println!("  ✔ {name}: {detail}");
            }
            Err(e) => {
                self.failed += 1;
                println!("  ✘ {name}: {e:#}");
            }
        }
    }
}

pub fn run(args: DemoArgs) -> Result<()> {
    let (passed, total) = run_checks(&args)?;
    if passed < total {
        std::process::exit(1);
    }
    Ok(())
}

/// Runs the demo; returns (checks passed, checks run) after printing the last line.
pub fn run_checks(args: &DemoArgs) -> Result<(usize, usize)> {
    if !util::is_root() {
        bail!("`cargo xtask demo` attaches XDP programs and creates network namespaces: run it as root");
    }
    if !args.no_setup {
        setup::run()?;
    }
    if !args.no_build {
        util::build_release()?;
    }
    let lb = stack::release_binary("lb")?;
    println!("demo: bringing up the seed's stack (lab {PREFIX}): lb-web on web1/web2, MariaDB db1 -> db2, XDP on lb");
    let lab = Lab::up(LabSpec::standard(PREFIX))?;
    let token = "demo-token-for-the-lab-api";
    let mut report = Report::default();
    let started = match stack::start_full_stack(&lab, token) {
        Ok(s) => s,
        Err(e) => {
            report.check("the stack comes up", Err(e));
            let _ = lab.down();
            return Ok(finish(&report));
        }
    };
    report.check(
        "the stack comes up",
        Ok("agent attached, db1 primary, db2 replicating".into()),
    );
    let mut running = Running {
        lab: &lab,
        lb: &lb,
        pids: started,
    };

    report.check(
        "round robin over HTTP",
        round_robin(&lab, &format!("http://{}/", addr::VIP_HTTP), &[]),
    );
    let ca = stack::app_dir(&lab)
        .join("certs")
        .join("ca.pem")
        .display()
        .to_string();
    report.check(
        "round robin over HTTPS",
        round_robin(
            &lab,
            &format!("https://{}/", addr::VIP_HTTP),
            &["--cacert", &ca],
        ),
    );
    report.check(
        "the firewall drops the denied client, lets the others in",
        firewall(&lab),
    );
    report.check(
        "the database VIPs refuse the client, take the app servers",
        database_vips(&lab),
    );
    report.check("notes written and read back through the app", notes(&lab));
    report.check(
        "status API and /metrics show both backends up",
        both_up(&running),
    );
    report.check(
        "web1 stopped: all traffic on web2 within the budget, back after restart",
        web_failover(&running),
    );
    report.check(
        "db1 killed during writes: writes on db2 within 5 s, no acknowledged note lost",
        db_failover(&running),
    );
    report.check(
        "db1 comes back as a read-only replica of db2",
        db_rejoin(&mut running),
    );
    report.check(
        "the agent killed and restarted: an open connection keeps working",
        agent_restart(&mut running),
    );
    let prefix = lab.prefix().to_string();
    let down = lab.down();
    report.check(
        "the lab torn down clean",
        down.and_then(|()| nothing_left(&prefix)),
    );
    Ok(finish(&report))
}

fn finish(report: &Report) -> (usize, usize) {
    let total = report.passed + report.failed;
    println!("demo: {}/{total} checks passed", report.passed);
    (report.passed, total)
}

/// The running stack the checks act on.
struct Running<'a> {
    lab: &'a Lab,
    lb: &'a Path,
    pids: stack::FullStack,
}

impl Running<'_> {
    fn lb(&self, args: &[&str]) -> Result<String> {
        let lb = self.lb.display().to_string();
        let mut full = vec![lb.as_str()];
        full.extend_from_slice(args);
        self.lab.exec_stdout(host::LB, &full)
    }

    fn backends(&self, service: &str) -> Result<Value> {
        let text = self.lb(&["backends", service, "--json"])?;
        serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))
    }

    fn backend_state(&self, service: &str, backend: &str) -> Result<String> {
        let list = self.backends(service)?;
        // `lb backends SERVICE --json` lists one entry per service.
        let list = list
            .as_array()
            .and_then(|l| l.iter().find(|s| s["service"] == service))
            .cloned()
            .unwrap_or(list);
        let entry = list["backends"]
            .as_array()
            .and_then(|b| b.iter().find(|b| b["name"] == backend))
            .cloned();
        entry
            .and_then(|b| b["state"].as_str().map(str::to_string))
            .with_context(|| format!("no backend {backend} in {list}"))
    }
}

/// `X-Served-By` of `count` requests from the client.
fn served_by(
    lab: &Lab,
    url: &str,
    extra: &[&str],
    count: usize,
) -> Result<BTreeMap<String, usize>> {
    let mut seen = BTreeMap::new();
    for _ in 0..count {
        let mut args = vec![
            "curl",
            "-s",
            "-m",
            "3",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %header{x-served-by}",
        ];
        args.extend_from_slice(extra);
        args.push(url);
        let out = lab
            .exec_stdout(host::CLIENT, &args)
            .unwrap_or_else(|e| format!("failed {e}"));
        let who = match out.split_once(' ') {
            Some(("200", who)) => who.trim_start_matches("app=").to_string(),
            _ => format!("failed({out})"),
        };
        *seen.entry(who).or_default() += 1;
    }
    Ok(seen)
}

fn round_robin(lab: &Lab, url: &str, extra: &[&str]) -> Result<String> {
    let seen = served_by(lab, url, extra, 20)?;
    if seen.get(host::WEB1) != Some(&10) || seen.get(host::WEB2) != Some(&10) {
        bail!("20 requests answered {seen:?}, expected 10 by web1 and 10 by web2");
    }
    Ok("20 requests: 10 web1, 10 web2".into())
}

fn curl_status(lab: &Lab, on: &str, extra: &[&str], url: &str) -> String {
    let mut args = vec![
        "curl",
        "-s",
        "-m",
        "2",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
    ];
    args.extend_from_slice(extra);
    args.push(url);
    match lab.exec_unchecked(on, &args) {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Err(e) => format!("{e:#}"),
    }
}

fn firewall(lab: &Lab) -> Result<String> {
    let url = format!("http://{}/", addr::VIP_HTTP);
    let denied = curl_status(
        lab,
        host::CLIENT,
        &["--interface", stack::DENIED_CLIENT],
        &url,
    );
    if denied != "000" {
        bail!(
            "the denied address {} got HTTP {denied}",
            stack::DENIED_CLIENT
        );
    }
    let allowed = curl_status(lab, host::CLIENT, &[], &url);
    if allowed != "200" {
        bail!("the client's own address got {allowed}");
    }
    Ok(format!(
        "{} timed out, {} got 200",
        stack::DENIED_CLIENT,
        addr::CLIENT
    ))
}

/// `SELECT @@server_id` through a database VIP from `on`.
fn mysql_via(lab: &Lab, on: &str, vip: &str) -> Result<String> {
    let password = format!("-p{}", stack::APP_DB_PASSWORD);
    lab.exec_stdout(
        on,
        &[
            "mariadb",
            "--no-defaults",
            "--connect-timeout=2",
            "-h",
            vip,
            "-u",
            stack::APP_DB_USER,
            &password,
            "-N",
            "-B",
            "-e",
            "SELECT @@server_id",
        ],
    )
}

fn database_vips(lab: &Lab) -> Result<String> {
    for vip in [addr::VIP_DB_WRITE, addr::VIP_DB_READ] {
        if let Ok(id) = mysql_via(lab, host::CLIENT, vip) {
            bail!("the client reached MariaDB (server {id}) through {vip}");
        }
        for web in host::WEBS {
            mysql_via(lab, web, vip).with_context(|| format!("{web} through {vip}"))?;
        }
    }
    let write = mysql_via(lab, host::WEB1, addr::VIP_DB_WRITE)?;
    let read = mysql_via(lab, host::WEB1, addr::VIP_DB_READ)?;
    if (write.as_str(), read.as_str()) != ("1", "2") {
        bail!("write VIP reached server {write}, read VIP server {read}; expected 1 (db1) and 2 (db2)");
    }
    Ok("client refused on both; web1 and web2 reach db1 (write VIP) and db2 (read VIP)".into())
}

fn notes(lab: &Lab) -> Result<String> {
    let id = failover::write_note(lab, "hello from the demo")
        .context("POST /api/notes was not acknowledged")?;
    let url = format!("http://{}/api/notes/{id}", addr::VIP_HTTP);
    // Reads go to the replica: give replication a moment.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let body = lab
            .exec_stdout(host::CLIENT, &["curl", "-s", "-m", "3", &url])
            .unwrap_or_default();
        if body.contains("hello from the demo") {
            let json: Value = serde_json::from_str(&body).unwrap_or_default();
            return Ok(format!(
                "note {id} written (via db1), read back by {} from {}",
                json["served_by"]["app"].as_str().unwrap_or("?"),
                json["served_by"]["db"]["name"].as_str().unwrap_or("?")
            ));
        }
        if Instant::now() > deadline {
            bail!("note {id} could not be read back: {body}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn both_up(stack: &Running<'_>) -> Result<String> {
    for web in host::WEBS {
        let state = stack.backend_state("web-dsr", web)?;
        if state != "active" {
            bail!("the API says web-dsr {web} is {state}");
        }
    }
    let metrics = stack.lab.exec_stdout(
        host::LB,
        &["curl", "-s", "-m", "3", "http://127.0.0.1:9876/metrics"],
    )?;
    for web in host::WEBS {
        let line = metrics.lines().find(|l| {
            l.contains("backend_state{")
                && l.contains("service=\"web-dsr\"")
                && l.contains(&format!("backend=\"{web}\""))
                && l.contains("state=\"active\"")
        });
        if !line.is_some_and(|l| l.trim_end().ends_with(" 1")) {
            bail!("/metrics has no active backend_state for web-dsr {web}");
        }
    }
    Ok("API: web1 and web2 active; /metrics: backend_state active = 1 for both".into())
}

fn web_failover(stack: &Running<'_>) -> Result<String> {
    let lab = stack.lab;
    // Found by its config file: pgrep sees every namespace's processes.
    let config = stack::app_dir(lab).join("web1.toml").display().to_string();
    let out = util::output(Command::new("pgrep").args(["-f", &config]))?;
    let pid = String::from_utf8_lossy(&out.stdout).to_string();
    let pid: u32 = pid
        .trim()
        .parse()
        .with_context(|| format!("no single lb-web on web1: {pid:?}"))?;
    let stopped = Instant::now();
    lab.signal(pid, libc::SIGKILL);
    let out = util::wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        stack
            .backend_state("web-dsr", host::WEB1)
            .is_ok_and(|s| s == "down")
    });
    let detected = stopped.elapsed();
    if !out || detected > DETECT_BUDGET {
        bail!(
            "web1 was still in rotation {} ms after it died (budget {} ms)",
            detected.as_millis(),
            DETECT_BUDGET.as_millis()
        );
    }
    let seen = served_by(lab, &format!("http://{}/", addr::VIP_HTTP), &[], 10)?;
    if seen.get(host::WEB2) != Some(&10) {
        bail!("after detection, 10 requests answered {seen:?}");
    }
    stack::start_app_server(lab, host::WEB1, &stack::AppOptions::default())?;
    let back = util::wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        stack
            .backend_state("web-dsr", host::WEB1)
            .is_ok_and(|s| s == "active")
    });
    if !back {
        bail!("web1 did not come back into rotation after its restart");
    }
    let seen = served_by(lab, &format!("http://{}/", addr::VIP_HTTP), &[], 10)?;
    if seen.get(host::WEB1) != Some(&5) || seen.get(host::WEB2) != Some(&5) {
        bail!("after web1's return, 10 requests answered {seen:?}");
    }
    Ok(format!(
        "out of rotation {} ms after the kill, 10/10 on web2; back: 5 web1, 5 web2",
        detected.as_millis()
    ))
}

fn db_failover(stack: &Running<'_>) -> Result<String> {
    let report = failover::kill_primary_during_writes(
        stack.lab,
        stack.lb,
        host::DB1,
        stack.pids.db1,
        host::DB2,
        20,
        Duration::from_secs(20),
    )?;
    if report.lost_writes > 0 {
        bail!(
            "{} of {} acknowledged notes are missing on db2",
            report.lost_writes,
            report.acked_writes
        );
    }
    if report.failover > FAILOVER_BUDGET {
        bail!(
            "writes failed for {} ms after the kill",
            report.failover.as_millis()
        );
    }
    let writer = failover::write_served_by(stack.lab)?;
    if writer != host::DB2 {
        bail!("writes now reach {writer}, not db2");
    }
    Ok(format!(
        "writes back after {} ms (agent: promoted {} ms after its first failed probe); {} acknowledged notes all on db2",
        report.failover.as_millis(),
        report.agent_failover_ms.map_or("?".into(), |m| m.to_string()),
        report.acked_writes
    ))
}

fn db_rejoin(stack: &mut Running<'_>) -> Result<String> {
    let pid = failover::bring_back_as_replica(
        stack.lab,
        stack.lb,
        host::DB1,
        host::DB2,
        Duration::from_secs(30),
    )?;
    stack.pids.db1 = pid;
    failover::wait_caught_up(stack.lab, host::DB1, host::DB2, Duration::from_secs(10))?;
    for _ in 0..5 {
        let writer = failover::write_served_by(stack.lab)?;
        if writer != host::DB2 {
            bail!("a write reached {writer}: two writable nodes behind the write VIP");
        }
    }
    Ok("db1 read-only, replicating from db2 and caught up; 5 more writes all on db2".into())
}

fn agent_restart(stack: &mut Running<'_>) -> Result<String> {
    let lab = stack.lab;
    let vip: SocketAddr = format!("{}:80", addr::VIP_HTTP).parse()?;
    let mut connection = netns::connect_in(&lab.ns(host::CLIENT), vip, Duration::from_secs(3))?;
    let first = netns::keep_alive_get_path(&mut connection, addr::VIP_HTTP, "/healthz")?;
    lab.signal(stack.pids.agent, libc::SIGKILL);
    let died = util::wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
        !lab.is_running(stack.pids.agent)
    });
    if !died {
        bail!("the agent survived SIGKILL");
    }
    let during = netns::keep_alive_get_path(&mut connection, addr::VIP_HTTP, "/healthz")
        .context("while the agent was dead")?;
    let config = lab.dir().join("lb.toml");
    stack.pids.agent = stack::start_agent_logged(lab, stack.lb, &config, "agent-restarted")?;
    let after = netns::keep_alive_get_path(&mut connection, addr::VIP_HTTP, "/healthz")
        .context("after the restart")?;
    let status = failover::agent_status(lab, stack.lb)?;
    if status["adopted"] != true {
        bail!("the new agent did not adopt the pinned maps: {status}");
    }
    if [&first, &during, &after]
        .iter()
        .any(|body| body.trim() != "ok")
    {
        bail!("/healthz answered {first:?}, {during:?}, {after:?}");
    }
    Ok("one keep-alive connection answered before, while the agent was dead, and after; maps and flows adopted".into())
}

/// No namespace, lab directory or process of the demo's lab remains.
fn nothing_left(prefix: &str) -> Result<String> {
    let out = util::output(Command::new("ip").args(["netns", "list"]))?;
    let namespaces = String::from_utf8_lossy(&out.stdout).to_string();
    let left: Vec<&str> = namespaces
        .lines()
        .filter(|l| l.starts_with(prefix))
        .collect();
    if !left.is_empty() {
        bail!("namespaces left: {left:?}");
    }
    let dir = lab::lab_dir(prefix);
    if dir.exists() {
        bail!("{} is still there", dir.display());
    }
    // pgrep exits 1 when nothing matches.
    let processes = Command::new("pgrep")
        .args(["-f", &dir.display().to_string()])
        .output()?;
    if processes.status.success() {
        bail!(
            "processes of the lab still run: {}",
            String::from_utf8_lossy(&processes.stdout).trim()
        );
    }
    Ok("no namespace, pin, log directory or process left".into())
}
