//! The database fault suite of `cargo xtask chaos`: each fault on a lab running the seed's whole
//! stack, with notes written through the app (one writer, one note after another) during the
//! fault, and a checker at the end: every acknowledged note is on the primary the agent ends
//! with, and on its healed replica once it caught up (histories equal).
//!
//! - [`partition`]: the primary cut off from the load balancer and the apps (nft in its
//!   namespace) while still running and replicating; then healed.
//! - [`replica_stopped`]: the replica's receiving cut (IO thread stopped, its way to the primary
//!   blocked) so the primary acknowledges writes alone, then the primary killed: safe mode must
//!   not promote, and must say why; the primary restarted takes writes again.
//! - [`diverged`]: the same, then an operator's `lb db promote db2 --force`, then the old primary
//!   back with writes the new one lacks: reported `diverged`, never behind the write VIP.
//! - [`slow_primary`]: a primary that answers ~600 ms late (frozen with SIGSTOP 600 ms out of
//!   every 700 ms: this kernel has no netem): no failover.
use std::{
    collections::BTreeSet,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::{json, Value};

use crate::{
    failover::{self, agent_status, notes_on},
    lab::{addr, host, Lab},
    stack::{self, FullStack},
    util,
};

/// What a fault showed (the keys of `target/chaos/results.json`, docs/RELIABILITY.md).
#[derive(Debug)]
pub struct FaultReport {
    pub acked_writes: u64,
    pub lost_writes: u64,
    /// From the fault to the first acknowledged write after it (`None`: writes never stopped,
    /// or never came back).
    pub recovery_ms: Option<u64>,
    /// The agent promoted a replica on its own.
    pub promoted: bool,
    pub pass: bool,
    pub summary: String,
    pub detail: Value,
}

impl FaultReport {
    pub fn value(&self) -> Value {
        json!({
            "acked_writes": self.acked_writes,
            "lost_writes": self.lost_writes,
            "recovery_ms": self.recovery_ms,
            "promoted": self.promoted,
        })
    }
}

/// Notes written through the app by a thread, one after another, until stopped.
#[derive(Default)]
struct Writes {
    /// Acknowledged (HTTP 201) notes (id, text), with when each was sent and acknowledged.
    acked: Vec<((u64, String), Instant, Instant)>,
    failed: u64,
}

struct Writer {
    writes: Mutex<Writes>,
    stop: AtomicBool,
}

impl Writer {
    fn new() -> Self {
        Writer {
            writes: Mutex::new(Writes::default()),
            stop: AtomicBool::new(false),
        }
    }

    fn run(&self, lab: &Lab, label: &str) {
        for i in 0u64.. {
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            let text = format!("{label} {i}");
            let sent = Instant::now();
            let note = failover::write_note(lab, &text);
            let mut writes = self.writes.lock().unwrap_or_else(|e| e.into_inner());
            match note {
                Some(id) => writes.acked.push(((id, text), sent, Instant::now())),
                None => writes.failed += 1,
            }
        }
    }

    fn acked(&self) -> usize {
        self.writes.lock().map_or(0, |w| w.acked.len())
    }

    /// Acknowledged writes sent after `at` (a write in flight at a fault does not count as
    /// writes being back), and when the first of them was sent.
    fn acked_after(&self, at: Instant) -> (usize, Option<Instant>) {
        let after = self.acks_after(at);
        (after.len(), after.first().copied())
    }

    /// When each write sent after `at` was acknowledged, in order.
    fn acks_after(&self, at: Instant) -> Vec<Instant> {
        let writes = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        writes
            .acked
            .iter()
            .filter(|(_, sent, _)| *sent > at)
            .map(|(_, _, acked)| *acked)
            .collect()
    }

    fn notes(&self, from: Option<Instant>) -> BTreeSet<(u64, String)> {
        let writes = self.writes.lock().unwrap_or_else(|e| e.into_inner());
        writes
            .acked
            .iter()
            .filter(|(_, sent, _)| from.is_none_or(|f| *sent > f))
            .map(|(note, _, _)| note.clone())
            .collect()
    }

    fn failed(&self) -> u64 {
        self.writes.lock().map_or(0, |w| w.failed)
    }

    /// Waits until `count` more writes were acknowledged (or `timeout`).
    fn wait_for(&self, count: usize, timeout: Duration) -> Result<()> {
        let target = self.acked() + count;
        if !util::wait_until(timeout, Duration::from_millis(50), || {
            self.acked() >= target
        }) {
            bail!(
                "only {} of {count} writes acknowledged within {timeout:?}",
                self.acked() + count - target
            );
        }
        Ok(())
    }
}

/// The checker's findings, once the writer stopped and the replica caught up (or not).
struct Checked {
    acked: BTreeSet<(u64, String)>,
    /// Acknowledged notes missing from the primary.
    lost: u64,
    missing_on_replica: u64,
    /// Both nodes hold the same notes.
    equal: bool,
}

fn check(lab: &Lab, writer: &Writer, primary: &str, replica: &str) -> Result<Checked> {
    let acked = writer.notes(None);
    let on_primary = notes_on(lab, primary)?;
    let on_replica = notes_on(lab, replica)?;
    Ok(Checked {
        lost: acked.difference(&on_primary).count() as u64,
        missing_on_replica: acked.difference(&on_replica).count() as u64,
        equal: on_primary == on_replica,
        acked,
    })
}

/// Runs `fault` while a writer writes through the app; stops the writer on every path.
fn with_writer<T>(
    lab: &Lab,
    label: &str,
    fault: impl FnOnce(&Writer) -> Result<T>,
) -> Result<(T, Writer)> {
    let writer = Writer::new();
    let outcome = std::thread::scope(|scope| {
        let writing = scope.spawn(|| writer.run(lab, label));
        let outcome = fault(&writer);
        writer.stop.store(true, Ordering::SeqCst);
        writing.join().ok();
        outcome
    });
    outcome.map(|value| (value, writer))
}

fn status_value(status: &Value, key: &str) -> Option<String> {
    status["database"][key].as_str().map(str::to_string)
}

/// nft rules in `host`'s namespace (a table of their own, removed by [`heal`]).
fn cut(lab: &Lab, host: &str, rules: &str) -> Result<()> {
    let script = format!(
        "add table inet lbchaos; \
         add chain inet lbchaos input {{ type filter hook input priority -10; }}; \
         add chain inet lbchaos output {{ type filter hook output priority -10; }}; {rules}"
    );
    lab.exec(host, &["nft", script.as_str()])
        .with_context(|| format!("nft in {host}: {script}"))?;
    Ok(())
}

fn heal(lab: &Lab, host: &str) -> Result<()> {
    lab.exec(host, &["nft", "delete table inet lbchaos"])?;
    Ok(())
}

/// `Rpl_semi_sync_master_no_tx` of `db`: commits it acknowledged without a replica.
fn async_commits(lab: &Lab, db: &str) -> u64 {
    stack::mariadb_root(
        lab,
        db,
        "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'RPL_SEMI_SYNC_MASTER_NO_TX'",
    )
    .ok()
    .and_then(|v| v.trim().parse().ok())
    .unwrap_or(0)
}

/// The agent's status every 200 ms for `duration`: whether it ever put `node` behind the write
/// VIP, and the last status seen.
fn watch_write(lab: &Lab, lb: &Path, node: &str, duration: Duration) -> (bool, Value) {
    let until = Instant::now() + duration;
    let (mut ever, mut last) = (false, Value::Null);
    while Instant::now() < until {
        if let Ok(status) = agent_status(lab, lb) {
            ever |= status_value(&status, "write").as_deref() == Some(node);
            last = status;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    (ever, last)
}

fn failovers(status: &Value) -> u64 {
    status["database"]["failovers"].as_u64().unwrap_or(0)
}

/// Cuts db2's replication from db1 (its IO thread stopped and its way to db1's port blocked,
/// so the agent's repair leaves it connecting), writes until db1 acknowledged writes without a
/// replica, then kills db1. Returns when db1 was killed, and the acknowledged count then.
fn replica_cut_then_primary_killed(
    lab: &Lab,
    stack: &FullStack,
    writer: &Writer,
) -> Result<Instant> {
    writer.wait_for(10, Duration::from_secs(20))?;
    cut(
        lab,
        host::DB2,
        &format!(
            "add rule inet lbchaos output ip daddr {} tcp dport 3306 drop",
            addr::DB1
        ),
    )?;
    stack::mariadb_root(lab, host::DB2, "STOP SLAVE IO_THREAD")?;
    let before = async_commits(lab, host::DB1);
    if !util::wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        async_commits(lab, host::DB1) > before
    }) {
        bail!("db1 never acknowledged a write without its replica (semi-sync did not time out)");
    }
    // A few more writes only db1 has.
    writer.wait_for(5, Duration::from_secs(20))?;
    if !lab.signal(stack.db1, libc::SIGKILL) {
        bail!("could not kill MariaDB on db1 (pid {})", stack.db1);
    }
    Ok(Instant::now())
}

/// Replica cut, primary killed: safe mode keeps the write VIP empty and says why; db1 restarted
/// takes writes again (it holds everything it acknowledged); db2 healed catches up.
pub fn replica_stopped(
    lab: &Lab,
    lb: &Path,
    stack: &FullStack,
    hold: Duration,
) -> Result<FaultReport> {
    let ((killed, blocked_status, ever_db2, rejoined), writer) =
        with_writer(lab, "replica-stopped", |writer| {
            let killed = replica_cut_then_primary_killed(lab, stack, writer)?;
            let (ever_db2, status) = watch_write(lab, lb, host::DB2, hold);
            // A reload restarts the watch: it must keep what it knew (the refusal stands).
            let lb_path = lb.display().to_string();
            let token = stack::api_token_file(lab).display().to_string();
            lab.exec_stdout(
                host::LB,
                &[lb_path.as_str(), "reload", "--token-file", token.as_str()],
            )?;
            let (ever_db2_after_reload, after_reload) =
                watch_write(lab, lb, host::DB2, Duration::from_secs(2));
            let reason = status_value(&after_reload, "failover_blocked");
            if reason.as_deref().is_none_or(|r| r.contains("never saw")) {
                bail!("after a reload the watch forgot the primary's ledger: {reason:?}");
            }
            let ever_db2 = ever_db2 || ever_db2_after_reload;
            stack::start_mariadb_node(lab, host::DB1)?;
            writer.wait_for(5, Duration::from_secs(30))?;
            heal(lab, host::DB2)?;
            let rejoined =
                failover::wait_for_roles(lab, lb, host::DB1, &[host::DB2], Duration::from_secs(30));
            writer.wait_for(3, Duration::from_secs(10))?;
            Ok((killed, status, ever_db2, rejoined))
        })?;
    // Compared once the writer stopped: positions of a moving primary rarely meet.
    let rejoined = rejoined
        .and_then(|_| failover::wait_caught_up(lab, host::DB2, host::DB1, Duration::from_secs(15)));
    let Checked {
        acked,
        lost,
        missing_on_replica,
        ..
    } = check(lab, &writer, host::DB1, host::DB2)?;
    let (_, back) = writer.acked_after(killed);
    let blocked = status_value(&blocked_status, "failover_blocked");
    let write_while_blocked = status_value(&blocked_status, "write");
    let promoted = ever_db2 || failovers(&blocked_status) > 0;
    let pass = lost == 0
        && missing_on_replica == 0
        && !promoted
        && blocked.is_some()
        && write_while_blocked.is_none()
        && rejoined.is_ok();
    let recovery_ms = back.map(|b| b.duration_since(killed).as_millis() as u64);
    Ok(FaultReport {
        acked_writes: acked.len() as u64,
        lost_writes: lost,
        recovery_ms,
        promoted,
        pass,
        summary: format!(
            "db2 not promoted: {}; the agent said: {}; writes back {} ms after the kill (db1 restarted); {} acknowledged, {lost} lost, {missing_on_replica} missing on db2 after it caught up",
            if promoted { "NO" } else { "yes" },
            blocked.as_deref().unwrap_or("NOTHING"),
            recovery_ms.map_or("never".into(), |r| r.to_string()),
            acked.len(),
        ),
        detail: json!({
            "failover_blocked": blocked,
            "write_vip_while_blocked": write_while_blocked,
            "failed_writes": writer.failed(),
            "missing_on_replica": missing_on_replica,
            "replica_rejoined": rejoined.is_ok(),
            "rejoin_error": rejoined.err().map(|e| format!("{e:#}")),
            "restart_of_db1_included_in_recovery": true,
            "refusal_kept_across_a_reload": true,
        }),
    })
}

/// Replica cut, primary killed, an operator forces db2; db1 returns with writes db2 lacks and
/// must be reported diverged and kept out of the write VIP.
pub fn diverged(
    lab: &Lab,
    lb: &Path,
    stack: &FullStack,
    token_file: &Path,
    hold: Duration,
) -> Result<FaultReport> {
    let ((forced_at, ever_db1, final_status, promote_out), writer) =
        with_writer(lab, "diverged", |writer| {
            replica_cut_then_primary_killed(lab, stack, writer)?;
            // The agent refuses on its own (replica_stopped shows it); the operator decides.
            let blocked =
                util::wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
                    agent_status(lab, lb)
                        .is_ok_and(|s| status_value(&s, "failover_blocked").is_some())
                });
            if !blocked {
                bail!("the agent never reported the failover as blocked");
            }
            let lb_path = lb.display().to_string();
            let token = token_file.display().to_string();
            let promote_out = lab.exec_stdout(
                host::LB,
                &[
                    lb_path.as_str(),
                    "db",
                    "promote",
                    "db2",
                    "--force",
                    "--token-file",
                    token.as_str(),
                ],
            )?;
            let forced_at = Instant::now();
            heal(lab, host::DB2)?;
            writer.wait_for(10, Duration::from_secs(20))?;
            stack::start_mariadb_node(lab, host::DB1)?;
            let (ever_db1, status) = watch_write(lab, lb, host::DB1, hold);
            Ok((forced_at, ever_db1, status, promote_out))
        })?;
    let after_fork = writer.notes(Some(forced_at));
    let on_db2 = notes_on(lab, host::DB2)?;
    let lost = after_fork.difference(&on_db2).count() as u64;
    let given_up = writer.notes(None).difference(&on_db2).count() as u64 - lost;
    let role_db1 = failover::db_role(&final_status, host::DB1);
    let read_has_db1 = final_status["database"]["read"]
        .as_array()
        .is_some_and(|r| r.iter().any(|n| n == host::DB1));
    let pass = lost == 0
        && !ever_db1
        && role_db1.as_deref() == Some("diverged")
        && !read_has_db1
        && status_value(&final_status, "write").as_deref() == Some(host::DB2);
    Ok(FaultReport {
        acked_writes: after_fork.len() as u64,
        lost_writes: lost,
        recovery_ms: None,
        promoted: false,
        pass,
        summary: format!(
            "db1 back as {}, behind the write VIP: {}; {} writes acknowledged by db2 after the forced promotion, {lost} lost; {given_up} earlier writes given up by the operator's --force",
            role_db1.as_deref().unwrap_or("?"),
            if ever_db1 { "YES" } else { "never" },
            after_fork.len()
        ),
        detail: json!({
            "db1_role": role_db1,
            "db1_ever_behind_write_vip": ever_db1,
            "db1_in_read_vip_at_end": read_has_db1,
            "writes_given_up_by_forced_promotion": given_up,
            "promote_output": promote_out.trim(),
            "db1_error": final_status["database"]["nodes"].as_array().and_then(|n| n.iter().find(|n| n["name"] == host::DB1)).map(|n| n["error"].clone()),
        }),
    })
}

/// The primary cut off from the load balancer and the apps (not from its replica) while it
/// runs; healed after the failover. Safe mode may promote: the replica was acknowledging.
pub fn partition(lab: &Lab, lb: &Path) -> Result<FaultReport> {
    let ((cut_at, rejoined, healed_status), writer) = with_writer(lab, "partition", |writer| {
        writer.wait_for(10, Duration::from_secs(20))?;
        let peers = format!("{{ {}, {}, {} }}", addr::LB, addr::WEB1, addr::WEB2);
        cut(
            lab,
            host::DB1,
            &format!(
                "add rule inet lbchaos input ip saddr {peers} drop; \
                 add rule inet lbchaos output ip daddr {peers} drop"
            ),
        )?;
        let cut_at = Instant::now();
        if !util::wait_until(Duration::from_secs(40), Duration::from_millis(100), || {
            writer.acked_after(cut_at).0 >= 5
        }) {
            bail!("writes did not come back within 40 s of the partition");
        }
        heal(lab, host::DB1)?;
        let rejoined =
            failover::wait_for_roles(lab, lb, host::DB2, &[host::DB1], Duration::from_secs(30));
        writer.wait_for(3, Duration::from_secs(10))?;
        Ok((
            cut_at,
            rejoined,
            agent_status(lab, lb).unwrap_or(Value::Null),
        ))
    })?;
    let rejoined = rejoined
        .and_then(|_| failover::wait_caught_up(lab, host::DB1, host::DB2, Duration::from_secs(15)));
    let Checked {
        acked, lost, equal, ..
    } = check(lab, &writer, host::DB2, host::DB1)?;
    let (_, back) = writer.acked_after(cut_at);
    let recovery_ms = back.map(|b| b.duration_since(cut_at).as_millis() as u64);
    let promoted = status_value(&healed_status, "primary").as_deref() == Some(host::DB2);
    let pass = lost == 0 && equal && promoted && rejoined.is_ok();
    Ok(FaultReport {
        acked_writes: acked.len() as u64,
        lost_writes: lost,
        recovery_ms,
        promoted,
        pass,
        summary: format!(
            "writes back {} ms after the cut (db2 promoted: {}); {} acknowledged, {lost} lost; db1 healed as replica with the same notes: {}",
            recovery_ms.map_or("never".into(), |r| r.to_string()),
            if promoted { "yes" } else { "NO" },
            acked.len(),
            if rejoined.is_ok() && equal { "yes" } else { "NO" },
        ),
        detail: json!({
            "failed_writes": writer.failed(),
            "histories_equal": equal,
            "rejoin_error": rejoined.err().map(|e| format!("{e:#}")),
            "last_failover": healed_status["database"]["last_failover"],
        }),
    })
}

/// How long the primary is frozen, and left running, in each cycle of [`slow_primary`].
const FROZEN: Duration = Duration::from_millis(600);
const THAWED: Duration = Duration::from_millis(100);

/// db1 frozen 600 ms of every 700 ms for `duration`: writes slow down, no failover.
pub fn slow_primary(
    lab: &Lab,
    lb: &Path,
    stack: &FullStack,
    duration: Duration,
) -> Result<FaultReport> {
    let failovers_before = agent_status(lab, lb).map(|s| failovers(&s)).unwrap_or(0);
    let ((acked_during, longest_gap, ever_db2, last), writer) =
        with_writer(lab, "slow", |writer| {
            writer.wait_for(10, Duration::from_secs(20))?;
            let started = Instant::now();
            let (mut ever_db2, mut last) = (false, Value::Null);
            let mut next_look = Instant::now();
            while started.elapsed() < duration {
                lab.signal(stack.db1, libc::SIGSTOP);
                std::thread::sleep(FROZEN);
                lab.signal(stack.db1, libc::SIGCONT);
                std::thread::sleep(THAWED);
                if Instant::now() >= next_look {
                    if let Ok(status) = agent_status(lab, lb) {
                        ever_db2 |= status_value(&status, "write").as_deref() == Some(host::DB2);
                        last = status;
                    }
                    next_look = Instant::now() + Duration::from_millis(500);
                }
            }
            lab.signal(stack.db1, libc::SIGCONT);
            let (acked_during, _) = writer.acked_after(started);
            let gap = writer
                .acks_after(started)
                .windows(2)
                .map(|w| w[1].duration_since(w[0]))
                .max()
                .unwrap_or_default();
            writer.wait_for(3, Duration::from_secs(10))?;
            Ok((acked_during, gap, ever_db2, last))
        })?;
    let acked = writer.notes(None);
    let lost = acked.difference(&notes_on(lab, host::DB1)?).count() as u64;
    let failovers_after = agent_status(lab, lb)
        .map(|s| failovers(&s))
        .unwrap_or(u64::MAX);
    let promoted = ever_db2 || failovers_after != failovers_before;
    let pass = !promoted && lost == 0 && acked_during > 0;
    Ok(FaultReport {
        acked_writes: acked.len() as u64,
        lost_writes: lost,
        recovery_ms: None,
        promoted,
        pass,
        summary: format!(
            "db1 answered ~600 ms late for {} s: failover {}; {acked_during} writes acknowledged meanwhile (longest gap {} ms), {lost} lost",
            duration.as_secs(),
            if promoted { "YES" } else { "none" },
            longest_gap.as_millis()
        ),
        detail: json!({
            "slow_seconds": duration.as_secs(),
            "frozen_ms": FROZEN.as_millis() as u64,
            "thawed_ms": THAWED.as_millis() as u64,
            "acked_while_slow": acked_during,
            "longest_write_gap_ms": longest_gap.as_millis() as u64,
            "failed_writes": writer.failed(),
            "db1_error_seen": last["database"]["nodes"].as_array().and_then(|n| n.iter().find(|n| n["name"] == host::DB1)).map(|n| n["error"].clone()),
        }),
    })
}

/// The agent's test hook: it waits this long after each logged step of a promotion, so the
/// agent can be killed between any two (lb-userspace/src/db/sql.rs).
const PROMOTION_PAUSE_ENV: &str = "LB_DB_PROMOTION_PAUSE_MS";
const PROMOTION_PAUSE_MS: &str = "800";

/// Starts the agent with the promotion pause, logging to `log`.
fn start_paused_agent(lab: &Lab, lb: &Path, log: &str) -> Result<u32> {
    stack::start_agent_with_env(
        lab,
        lb,
        &lab.dir().join("lb.toml"),
        log,
        &[(PROMOTION_PAUSE_ENV, PROMOTION_PAUSE_MS)],
    )
}

fn kill_agent(lab: &Lab, pid: u32) -> Result<()> {
    if !lab.signal(pid, libc::SIGKILL) {
        bail!("could not kill the agent (pid {pid})");
    }
    util::wait_until(Duration::from_secs(3), Duration::from_millis(10), || {
        !lab.is_running(pid)
    });
    let _ = lab.stop(pid);
    Ok(())
}

/// For each promotion step in `steps` (0: the promotion remembered, 1-5: the SQL steps of
/// `sql::promote`), one failover during writes with the agent SIGKILLed right after that step
/// and started again; it must finish the promotion with no acknowledged write lost. The
/// failovers alternate between the two nodes (the killed one comes back as replica each time).
pub fn agent_kill(lab: &Lab, lb: &Path, stack: &FullStack, steps: &[u8]) -> Result<FaultReport> {
    kill_agent(lab, stack.agent)?;
    let mut agent = start_paused_agent(lab, lb, "agent-paused-0")?;
    let (mut primary, mut replica) = ((host::DB1, stack.db1), (host::DB2, stack.db2));
    let mut rounds = Vec::new();
    let mut worst_recovery: Option<u64> = Some(0);
    let ((), writer) = with_writer(lab, "agent-kill", |writer| {
        for (n, &step) in steps.iter().enumerate() {
            writer.wait_for(5, Duration::from_secs(30))?;
            let log = format!("agent-paused-{n}");
            if !lab.signal(primary.1, libc::SIGKILL) {
                bail!("could not kill MariaDB on {}", primary.0);
            }
            let killed = Instant::now();
            let marker = format!("promoting {}: step {step} done", replica.0);
            if !util::wait_until(Duration::from_secs(20), Duration::from_millis(20), || {
                lab.read_log(&log).contains(&marker)
            }) {
                bail!("the agent never logged `{marker}`:\n{}", lab.read_log(&log));
            }
            kill_agent(lab, agent)?;
            agent = start_paused_agent(lab, lb, &format!("agent-paused-{}", n + 1))?;
            let back = util::wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
                writer.acked_after(killed).0 > 0
            });
            let recovery = writer
                .acked_after(killed)
                .1
                .map(|t| t.duration_since(killed).as_millis() as u64);
            worst_recovery = match (worst_recovery, recovery) {
                (Some(w), Some(r)) if back => Some(w.max(r)),
                _ => None,
            };
            failover::wait_for_roles(lab, lb, replica.0, &[], Duration::from_secs(30))?;
            // The old primary back as the new one's replica, for the next round.
            let pid = stack::start_mariadb_node(lab, primary.0)?;
            failover::wait_for_roles(lab, lb, replica.0, &[primary.0], Duration::from_secs(30))?;
            rounds.push(json!({ "killed_after_step": step, "new_primary": replica.0, "recovery_ms": recovery }));
            let old = primary;
            primary = replica;
            replica = (old.0, pid);
        }
        writer.wait_for(3, Duration::from_secs(10))?;
        Ok(())
    })?;
    failover::wait_caught_up(lab, replica.0, primary.0, Duration::from_secs(15))?;
    let Checked {
        acked, lost, equal, ..
    } = check(lab, &writer, primary.0, replica.0)?;
    let pass = lost == 0 && equal && rounds.len() == steps.len() && worst_recovery.is_some();
    Ok(FaultReport {
        acked_writes: acked.len() as u64,
        lost_writes: lost,
        recovery_ms: worst_recovery,
        promoted: true,
        pass,
        summary: format!(
            "the agent killed after promotion steps {steps:?} and restarted: every promotion finished, writes back within {} ms at worst; {} acknowledged, {lost} lost; replica equal: {}",
            worst_recovery.map_or("never".into(), |r| r.to_string()),
            acked.len(),
            if equal { "yes" } else { "NO" },
        ),
        detail: json!({
            "rounds": rounds,
            "promotion_pause_ms": PROMOTION_PAUSE_MS,
            "failed_writes": writer.failed(),
            "histories_equal": equal,
        }),
    })
}
