//! The SQL side of the watch: probing a node, and promoting, fencing and re-pointing one.
use anyhow::{bail, Context as _, Result};
use mysql_async::{prelude::Queryable as _, Conn, OptsBuilder, Row};

use super::{
    decision::{IoThread, Node, Observation, ReplicaLink},
    gtid::GtidPosition,
};

/// Accounts the agent uses.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
    pub replication_user: String,
    pub replication_password: String,
}

/// How long promoting a replica may wait for it to apply the relay log it already received.
const APPLY_TIMEOUT_S: u64 = 5;

/// A new connection to `node` as the agent's account.
pub(super) async fn login(node: &Node, credentials: &Credentials) -> Result<Conn> {
    let opts = OptsBuilder::default()
        .ip_or_hostname(node.addr.ip().to_string())
        .tcp_port(node.addr.port())
        .user(Some(&credentials.user))
        .pass(Some(&credentials.password))
        .prefer_socket(false);
    Conn::new(opts).await.context("login")
}

/// The `SHOW SLAVE STATUS` row of a node that replicates from somebody.
fn replication_source(status: &[Row]) -> Option<&Row> {
    status
        .first()
        .filter(|row| text(row, "Master_Host").is_some_and(|h| !h.is_empty()))
}

fn text(row: &Row, column: &str) -> Option<String> {
    row.get_opt::<Option<String>, &str>(column)
        .and_then(Result::ok)
        .flatten()
}

fn number<T: std::str::FromStr>(row: &Row, column: &str) -> Option<T> {
    text(row, column).and_then(|v| v.trim().parse().ok())
}

/// One probe on a node's connection (made when there is none).
pub(super) async fn probe(
    conn: Option<Conn>,
    node: &Node,
    credentials: &Credentials,
) -> Result<(Conn, Observation)> {
    let mut conn = match conn {
        Some(conn) => conn,
        None => login(node, credentials).await?,
    };
    // The async-commit counter is read before the position, so every commit it counts is inside
    // the position read with it.
    let row: Option<Variables> = conn
        .query_first(
            "SELECT \
             (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'RPL_SEMI_SYNC_MASTER_NO_TX'), \
             (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'RPL_SEMI_SYNC_MASTER_STATUS'), \
             (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'RPL_SEMI_SYNC_SLAVE_STATUS'), \
             (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'UPTIME'), \
             @@read_only, @@server_id, @@gtid_current_pos",
        )
        .await?;
    let (async_commits, master_semi, slave_semi, uptime, read_only, server_id, gtid) =
        row.context("no answer to the probe's SELECT")?;
    let on = |v: &Option<String>| v.as_deref().is_some_and(|v| v.eq_ignore_ascii_case("on"));
    let count = |v: &Option<String>| {
        v.as_deref()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let gtid = GtidPosition::parse(&gtid).map_err(anyhow::Error::msg)?;
    let status: Vec<Row> = conn.query("SHOW SLAVE STATUS").await?;
    let replica = match replication_source(&status) {
        None => None,
        Some(row) => {
            let error = [text(row, "Last_IO_Error"), text(row, "Last_SQL_Error")]
                .into_iter()
                .flatten()
                .find(|e| !e.is_empty());
            let io = match text(row, "Slave_IO_Running").as_deref() {
                Some(v) if v.eq_ignore_ascii_case("yes") => IoThread::Running,
                Some(v)
                    if v.eq_ignore_ascii_case("connecting")
                        || v.eq_ignore_ascii_case("preparing") =>
                {
                    IoThread::Connecting
                }
                _ => IoThread::Stopped,
            };
            let received = text(row, "Gtid_IO_Pos").unwrap_or_default();
            Some(ReplicaLink {
                source_host: text(row, "Master_Host").unwrap_or_default(),
                source_port: number(row, "Master_Port").unwrap_or(0),
                io,
                sql_running: text(row, "Slave_SQL_Running")
                    .is_some_and(|v| v.eq_ignore_ascii_case("yes")),
                semi_sync: on(&slave_semi),
                lag_s: number(row, "Seconds_Behind_Master"),
                gtid_io_pos: GtidPosition::parse(&received).map_err(anyhow::Error::msg)?,
                io_errno: number(row, "Last_IO_Errno").unwrap_or(0),
                sql_errno: number(row, "Last_SQL_Errno").unwrap_or(0),
                error,
            })
        }
    };
    Ok((
        conn,
        Observation {
            read_only: read_only != 0,
            server_id,
            gtid,
            replica,
            semi_sync: on(&master_semi),
            async_commits: count(&async_commits),
            uptime_s: count(&uptime),
        },
    ))
}

/// The probe's one SELECT: semi-sync counters and state, uptime, read_only, server id, position.
type Variables = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    u64,
    String,
);

/// A string literal for SQL text (`CHANGE MASTER` takes no placeholders), for a session in
/// [`LITERAL_SQL_MODE`]: there a quote is doubled and a backslash is an ordinary character, so
/// the literal means the same whatever the server's own `sql_mode`.
fn sql_string(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// The session mode [`sql_string`] literals are written for.
const LITERAL_SQL_MODE: &str = "SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES'";

/// Makes a replica the primary without losing what it acknowledged: stop receiving, apply
/// everything received, forget the source, become writable.
pub(super) async fn promote(node: &Node, credentials: &Credentials) -> Result<()> {
    let mut conn = login(node, credentials).await?;
    let status: Vec<Row> = conn.query("SHOW SLAVE STATUS").await?;
    if replication_source(&status).is_some() {
        conn.query_drop("STOP SLAVE IO_THREAD").await?;
        step(node, 1, "stopped receiving").await;
        let status: Vec<Row> = conn.query("SHOW SLAVE STATUS").await?;
        let received = status
            .first()
            .and_then(|row| text(row, "Gtid_IO_Pos"))
            .unwrap_or_default();
        if !received.is_empty() {
            let applied: Option<i64> = conn
                .exec_first(
                    "SELECT MASTER_GTID_WAIT(?, ?)",
                    (&received, APPLY_TIMEOUT_S),
                )
                .await?;
            if applied != Some(0) {
                conn.query_drop("START SLAVE IO_THREAD").await.ok();
                bail!("it did not apply its relay log (up to {received}) within {APPLY_TIMEOUT_S} s; not promoted");
            }
        }
        step(node, 2, "applied what it received").await;
        conn.query_drop("STOP SLAVE").await?;
        step(node, 3, "stopped replicating").await;
        conn.query_drop("RESET SLAVE ALL").await?;
        step(node, 4, "forgot its source").await;
    }
    conn.query_drop("SET GLOBAL read_only = OFF").await?;
    step(node, 5, "writable").await;
    conn.disconnect().await.ok();
    Ok(())
}

/// The fault suite's hook (`cargo xtask chaos`, `db_agent_kill`): with this variable set, the
/// agent waits that many milliseconds after each step of a promotion, so that it can be killed
/// between any two. Unset in production: no wait.
const PROMOTION_PAUSE_ENV: &str = "LB_DB_PROMOTION_PAUSE_MS";

/// Logs one step of a promotion (every step is idempotent; a restarted agent redoes what is left).
pub(super) async fn step(node: &Node, number: u8, what: &str) {
    log::info!(
        "database: promoting {}: step {number} done: {what}",
        node.name
    );
    let pause = std::env::var(PROMOTION_PAUSE_ENV)
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(std::time::Duration::from_millis);
    if let Some(pause) = pause {
        tokio::time::sleep(pause).await;
    }
}

pub(super) async fn fence(node: &Node, credentials: &Credentials) -> Result<()> {
    let mut conn = login(node, credentials).await?;
    conn.query_drop("SET GLOBAL read_only = ON").await?;
    conn.disconnect().await.ok();
    Ok(())
}

/// Makes a node a read-only replica of `primary`, from where its own history ends.
pub(super) async fn rejoin(node: &Node, primary: &Node, credentials: &Credentials) -> Result<()> {
    let mut conn = login(node, credentials).await?;
    conn.query_drop("SET GLOBAL read_only = ON").await?;
    conn.query_drop("STOP SLAVE").await?;
    conn.query_drop(LITERAL_SQL_MODE).await?;
    let change = format!(
        "CHANGE MASTER TO MASTER_HOST = {host}, MASTER_PORT = {port}, MASTER_USER = {user}, MASTER_PASSWORD = {password}, \
         MASTER_USE_GTID = current_pos, MASTER_CONNECT_RETRY = 1",
        host = sql_string(&primary.addr.ip().to_string()),
        port = primary.addr.port(),
        user = sql_string(&credentials.replication_user),
        password = sql_string(&credentials.replication_password),
    );
    conn.query_drop(change).await?;
    conn.query_drop("START SLAVE").await?;
    conn.disconnect().await.ok();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_strings_double_quotes_and_keep_backslashes() {
        assert_eq!(sql_string("a'b\\c"), "'a''b\\c'");
    }
}
