//! The database parts: the primary killed, and the fault suite of `xtask::db_faults`.
use super::*;

/// Acknowledged writes before the primary is killed (full, quick).
const DB_WRITES_BEFORE_KILL: (usize, usize) = (100, 20);
const FAILOVER_BAR: Duration = Duration::from_secs(5);

/// The primary killed (SIGKILL) during a stream of notes written through the app, one after
/// another; failover time as the client saw it; every acknowledged note looked up on the new
/// primary; the old primary brought back as a replica. Its own lab (the whole stack).
pub(super) fn db_failover(suite: &mut Suite) -> Result<Finding> {
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

pub(super) fn db_partition(_: &mut Suite) -> Result<Finding> {
    db_fault(|lab, lb, _| db_faults::partition(lab, lb))
}

pub(super) fn db_replica_stopped(suite: &mut Suite) -> Result<Finding> {
    let hold = db_hold(suite);
    db_fault(|lab, lb, started| db_faults::replica_stopped(lab, lb, started, hold))
}

pub(super) fn db_diverged(suite: &mut Suite) -> Result<Finding> {
    let hold = db_hold(suite);
    db_fault(|lab, lb, started| {
        db_faults::diverged(lab, lb, started, &stack::api_token_file(lab), hold)
    })
}

pub(super) fn db_slow_primary(suite: &mut Suite) -> Result<Finding> {
    let slow = if suite.quick {
        Duration::from_secs(8)
    } else {
        Duration::from_secs(30)
    };
    db_fault(|lab, lb, started| db_faults::slow_primary(lab, lb, started, slow))
}

pub(super) fn db_agent_kill(suite: &mut Suite) -> Result<Finding> {
    // Step 0: the promotion remembered; 1-5: the SQL steps (see lb-userspace/src/db/sql.rs).
    let steps: &[u8] = if suite.quick {
        &[1, 3, 5]
    } else {
        &[0, 1, 2, 3, 4, 5]
    };
    db_fault(|lab, lb, started| db_faults::agent_kill(lab, lb, started, steps))
}
