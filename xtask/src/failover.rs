//! The database failover scenario on a running lab stack (app tier + replicated database):
//! notes written through the app while the primary is killed, the failover time as the client
//! sees it, and every acknowledged note looked up on the new primary. Shared by the end-to-end
//! test, `cargo xtask demo` and `cargo xtask chaos`.
use std::{
    collections::BTreeSet,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::{
    lab::{addr, host, Lab},
    stack, util,
};

/// `lb status --json` from inside the lab's lb namespace.
pub fn agent_status(lab: &Lab, lb: &Path) -> Result<Value> {
    let text = lab.exec_stdout(
        host::LB,
        &[lb.display().to_string().as_str(), "status", "--json"],
    )?;
    serde_json::from_str(&text).with_context(|| format!("`lb status --json` is not JSON: {text}"))
}

/// The role the agent reports for database node `name`.
pub fn db_role(status: &Value, name: &str) -> Option<String> {
    status["database"]["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["name"] == name)
        .and_then(|n| n["role"].as_str())
        .map(str::to_string)
}

/// Waits until the agent reports `primary` as the primary and every one of `replicas` as a
/// replica in the read service; returns the status that showed it.
pub fn wait_for_roles(
    lab: &Lab,
    lb: &Path,
    primary: &str,
    replicas: &[&str],
    timeout: Duration,
) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = agent_status(lab, lb);
        if let Ok(status) = &status {
            let db = &status["database"];
            let read: Vec<&str> = db["read"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if db["primary"] == primary
                && db["write"] == primary
                && replicas
                    .iter()
                    .all(|r| db_role(status, r).as_deref() == Some("replica") && read.contains(r))
            {
                return Ok(status.clone());
            }
        }
        if Instant::now() > deadline {
            let seen = status
                .map(|s| s["database"].to_string())
                .unwrap_or_else(|e| format!("{e:#}"));
            bail!("the agent did not report primary {primary} with replicas {replicas:?} within {timeout:?}; last: {seen}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One note POSTed through the HTTP VIP from the client: its id when acknowledged (201).
pub fn write_note(lab: &Lab, text: &str) -> Option<u64> {
    let body = format!("{{\"text\":\"{text}\"}}");
    let url = format!("http://{}/api/notes", addr::VIP_HTTP);
    let out = lab
        .exec_unchecked(
            host::CLIENT,
            &[
                "curl",
                "-s",
                "-m",
                "3",
                "-w",
                "\n%{http_code}",
                "-X",
                "POST",
                "-H",
                "content-type: application/json",
                "-d",
                &body,
                &url,
            ],
        )
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (json, code) = text.trim_end().rsplit_once('\n')?;
    if code != "201" {
        return None;
    }
    serde_json::from_str::<Value>(json).ok()?["note"]["id"].as_u64()
}

/// Which database node answered a write through the app (`served_by.db.name`).
pub fn write_served_by(lab: &Lab) -> Result<String> {
    let url = format!("http://{}/api/notes", addr::VIP_HTTP);
    let out = lab.exec_stdout(
        host::CLIENT,
        &[
            "curl",
            "-sf",
            "-m",
            "3",
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            "{\"text\":\"who writes\"}",
            &url,
        ],
    )?;
    let json: Value = serde_json::from_str(&out).with_context(|| format!("not JSON: {out}"))?;
    json["served_by"]["db"]["name"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no served_by.db.name in {out}"))
}

/// The notes on database node `db`, as (id, text): an id alone is no proof, since a new
/// primary that lacks a note hands its id out again.
pub fn notes_on(lab: &Lab, db: &str) -> Result<BTreeSet<(u64, String)>> {
    let rows = stack::mariadb_root(lab, db, "SELECT id, text FROM notes.notes")?;
    Ok(rows
        .lines()
        .filter_map(|line| {
            let (id, text) = line.split_once('\t')?;
            Some((id.trim().parse().ok()?, text.to_string()))
        })
        .collect())
}

/// What the primary kill showed.
#[derive(Debug, Clone)]
pub struct FailoverReport {
    /// From the kill to the first acknowledged write after it.
    pub failover: Duration,
    /// Writes acknowledged (HTTP 201) before and after the kill.
    pub acked_writes: u64,
    /// Acknowledged writes missing from the new primary.
    pub lost_writes: u64,
    /// Writes refused or failed (not acknowledged: the client knows to retry them).
    pub failed_writes: u64,
    /// What the agent reported about the failover.
    pub agent_failover_ms: Option<u64>,
}

/// Writes notes one after another through the app; after `before` acknowledged ones, kills
/// (SIGKILL) the primary `victim` (`victim_pid`), keeps writing until writes have succeeded for
/// a second again (or `give_up` passed), then looks every acknowledged note up on `survivor`.
pub fn kill_primary_during_writes(
    lab: &Lab,
    lb: &Path,
    victim: &str,
    victim_pid: u32,
    survivor: &str,
    before: usize,
    give_up: Duration,
) -> Result<FailoverReport> {
    let mut acked = BTreeSet::new();
    let mut failed = 0u64;
    let mut killed_at: Option<Instant> = None;
    let mut back_at: Option<Instant> = None;
    let started = Instant::now();
    for i in 0u64.. {
        let text = format!("failover write {i}");
        match write_note(lab, &text) {
            Some(id) => {
                acked.insert((id, text));
                if let Some(killed) = killed_at {
                    back_at.get_or_insert_with(Instant::now);
                    if back_at.is_some_and(|b| b.elapsed() > Duration::from_secs(1))
                        && killed.elapsed() > Duration::from_secs(1)
                    {
                        break;
                    }
                }
            }
            None => failed += 1,
        }
        if killed_at.is_none() && acked.len() >= before {
            if !lab.signal(victim_pid, libc::SIGKILL) {
                bail!("could not kill MariaDB on {victim} (pid {victim_pid})");
            }
            killed_at = Some(Instant::now());
        }
        let waited = killed_at.map_or(started.elapsed(), |k| k.elapsed());
        if back_at.is_none() && waited > give_up {
            bail!("no write was acknowledged within {give_up:?} (of the kill of {victim}); {failed} failed");
        }
    }
    let (Some(killed), Some(back)) = (killed_at, back_at) else {
        bail!("the write stream ended before the failover")
    };
    let present = notes_on(lab, survivor)?;
    let lost = acked.difference(&present).count() as u64;
    let agent_failover_ms = agent_status(lab, lb)
        .ok()
        .and_then(|s| s["database"]["last_failover"]["duration_ms"].as_u64());
    Ok(FailoverReport {
        failover: back.duration_since(killed),
        acked_writes: acked.len() as u64,
        lost_writes: lost,
        failed_writes: failed,
        agent_failover_ms,
    })
}

/// Restarts the killed node and waits until the agent has made it a replica of `primary`.
pub fn bring_back_as_replica(
    lab: &Lab,
    lb: &Path,
    node: &str,
    primary: &str,
    timeout: Duration,
) -> Result<u32> {
    let pid = stack::start_mariadb_node(lab, node)?;
    wait_for_roles(lab, lb, primary, &[node], timeout)?;
    let read_only = stack::mariadb_root(lab, node, "SELECT @@read_only")?;
    if read_only.trim() != "1" {
        bail!("{node} came back as a replica but read_only is {read_only}");
    }
    Ok(pid)
}

/// Waits until `node` has applied everything `primary` has (same `@@gtid_current_pos`).
pub fn wait_caught_up(lab: &Lab, node: &str, primary: &str, timeout: Duration) -> Result<()> {
    let ok = util::wait_until(timeout, Duration::from_millis(100), || {
        let a = stack::mariadb_root(lab, primary, "SELECT @@gtid_binlog_pos");
        let b = stack::mariadb_root(lab, node, "SELECT @@gtid_slave_pos");
        matches!((a, b), (Ok(a), Ok(b)) if a == b)
    });
    if !ok {
        bail!("{node} did not catch up with {primary} within {timeout:?}");
    }
    Ok(())
}
