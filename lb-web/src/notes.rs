//! The application: a small notes API. Writes go to the database's write address (the write VIP),
//! reads to the read address (the read VIP). Every answer says which app server and which
//! database node served it; a database that fails or does not answer in time is a 503, never a panic.
use std::{collections::BTreeMap, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use mysql_async::{prelude::Queryable as _, Conn, OptsBuilder, Pool, PoolConstraints, PoolOpts};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::{host_port, DatabaseConfig};

/// Longest note accepted, in characters.
pub const MAX_NOTE_CHARS: usize = 10_000;
/// Notes returned by `GET /api/notes` (newest first).
pub const LIST_LIMIT: usize = 100;
/// How long one database operation (connect included) may take before the answer is a 503.
const DB_TIMEOUT: Duration = Duration::from_secs(3);

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS notes (\
     id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY, \
     text TEXT NOT NULL, \
     created_by VARCHAR(64) NOT NULL, \
     created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP\
     ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4";

/// The name of the response header saying who served a request.
pub const SERVED_BY: &str = "x-served-by";

/// The app's state: this server's name and the two connection pools.
pub struct Notes {
    server_name: String,
    db: Option<Database>,
}

struct Database {
    write: Pool,
    read: Pool,
    /// Node names by `@@server_id`.
    nodes: BTreeMap<u64, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Note {
    pub id: u64,
    pub text: String,
    /// The app server that wrote it.
    pub created_by: String,
    /// Seconds since the epoch.
    pub created_at: i64,
}

/// The database node that answered: its configured name if `@@server_id` is listed, else the id
/// and `@@hostname`.
#[derive(Debug, Clone, Serialize)]
struct DbNode {
    name: String,
    server_id: u64,
    hostname: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewNote {
    text: String,
}

impl Notes {
    /// Pools are lazy: nothing connects until the first request, so the app starts without a database.
    pub fn new(server_name: &str, config: Option<&DatabaseConfig>) -> Result<Arc<Notes>> {
        let db = match config {
            None => None,
            Some(c) => {
                let password = c.password()?;
                let pool = |address: &str| -> Result<Pool> {
                    let (host, port) = host_port(address)?;
                    let constraints = PoolConstraints::new(0, c.pool_size).context("pool size")?;
                    let opts = OptsBuilder::default()
                        .ip_or_hostname(host)
                        .tcp_port(port)
                        // Never a local socket: the node is whatever the VIP leads to.
                        .prefer_socket(false)
                        .user(Some(c.user.clone()))
                        .pass(Some(password.clone()))
                        .db_name(Some(c.name.clone()))
                        .pool_opts(PoolOpts::default().with_constraints(constraints));
                    Ok(Pool::new(opts))
                };
                let nodes = c
                    .nodes
                    .iter()
                    .map(|(name, id)| (u64::from(*id), name.clone()))
                    .collect();
                Some(Database {
                    write: pool(&c.write)?,
                    read: pool(&c.read)?,
                    nodes,
                })
            }
        };
        Ok(Arc::new(Notes {
            server_name: server_name.to_string(),
            db,
        }))
    }

    /// Creates the table through the write address until that succeeds (the database may come
    /// up after the app).
    pub async fn ensure_table_forever(self: Arc<Self>) {
        let Some(db) = &self.db else { return };
        loop {
            match timed(async { db.write.get_conn().await?.query_drop(CREATE_TABLE).await }).await {
                Ok(()) => return,
                Err(e) => log::warn!("notes: creating the table failed, retrying in 2 s: {e:#}"),
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    fn node(&self, db: &Database, (server_id, hostname): (u64, String)) -> DbNode {
        let name = db
            .nodes
            .get(&server_id)
            .cloned()
            .unwrap_or_else(|| format!("server_id {server_id} ({hostname})"));
        DbNode {
            name,
            server_id,
            hostname,
        }
    }
}

pub fn router(notes: Arc<Notes>) -> Router {
    Router::new()
        .route("/api/notes", get(list).post(create))
        .route("/api/notes/{id}", get(one))
        .with_state(notes)
}

/// Runs a database operation within [`DB_TIMEOUT`].
async fn timed<T>(
    op: impl std::future::Future<Output = Result<T, mysql_async::Error>>,
) -> Result<T> {
    match tokio::time::timeout(DB_TIMEOUT, op).await {
        Ok(result) => Ok(result?),
        Err(_) => anyhow::bail!(
            "the database did not answer within {} s",
            DB_TIMEOUT.as_secs()
        ),
    }
}

async fn whoami(conn: &mut Conn) -> Result<(u64, String), mysql_async::Error> {
    let row: Option<(u64, String)> = conn.query_first("SELECT @@server_id, @@hostname").await?;
    Ok(row.unwrap_or_default())
}

async fn create(State(notes): State<Arc<Notes>>, body: Bytes) -> Response {
    let note: NewNote = match serde_json::from_slice(&body) {
        Ok(n) => n,
        Err(e) => {
            return error(
                &notes,
                StatusCode::BAD_REQUEST,
                "invalid_body",
                &format!("expected {{\"text\": \"...\"}}: {e}"),
            )
        }
    };
    let chars = note.text.chars().count();
    if chars == 0 || chars > MAX_NOTE_CHARS {
        return error(
            &notes,
            StatusCode::BAD_REQUEST,
            "invalid_value",
            &format!("text must be 1 to {MAX_NOTE_CHARS} characters, got {chars}"),
        );
    }
    let Some(db) = &notes.db else {
        return no_database(&notes);
    };
    let result = timed(async {
        let mut conn = db.write.get_conn().await?;
        let node = whoami(&mut conn).await?;
        // The table may not exist yet if the database came up after the app: create it here too.
        conn.query_drop(CREATE_TABLE).await?;
        conn.exec_drop("INSERT INTO notes (text, created_by) VALUES (?, ?)", (&note.text, &notes.server_name)).await?;
        let id = conn.last_insert_id().unwrap_or(0);
        let row: Option<(u64, String, String, i64)> =
            conn.exec_first("SELECT id, text, created_by, CAST(UNIX_TIMESTAMP(created_at) AS SIGNED) FROM notes WHERE id = ?", (id,)).await?;
        Ok((node, row))
    })
    .await;
    match result {
        Ok((node, Some(row))) => answer(
            &notes,
            StatusCode::CREATED,
            Some(notes.node(db, node)),
            json!({ "note": to_note(row) }),
        ),
        Ok((_, None)) => error(
            &notes,
            StatusCode::SERVICE_UNAVAILABLE,
            "database_error",
            "the note was written but could not be read back",
        ),
        Err(e) => db_error(&notes, "write", &e),
    }
}

async fn list(State(notes): State<Arc<Notes>>) -> Response {
    let Some(db) = &notes.db else {
        return no_database(&notes);
    };
    let result = timed(async {
        let mut conn = db.read.get_conn().await?;
        let node = whoami(&mut conn).await?;
        let rows: Vec<(u64, String, String, i64)> = conn
            .exec("SELECT id, text, created_by, CAST(UNIX_TIMESTAMP(created_at) AS SIGNED) FROM notes ORDER BY id DESC LIMIT ?", (LIST_LIMIT as u64,))
            .await?;
        Ok((node, rows))
    })
    .await;
    match result {
        Ok((node, rows)) => {
            let notes_json: Vec<Note> = rows.into_iter().map(to_note).collect();
            answer(
                &notes,
                StatusCode::OK,
                Some(notes.node(db, node)),
                json!({ "notes": notes_json }),
            )
        }
        Err(e) => db_error(&notes, "read", &e),
    }
}

async fn one(State(notes): State<Arc<Notes>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return error(
            &notes,
            StatusCode::BAD_REQUEST,
            "invalid_value",
            &format!("note id {id:?} is not a number"),
        );
    };
    let Some(db) = &notes.db else {
        return no_database(&notes);
    };
    let result = timed(async {
        let mut conn = db.read.get_conn().await?;
        let node = whoami(&mut conn).await?;
        let row: Option<(u64, String, String, i64)> =
            conn.exec_first("SELECT id, text, created_by, CAST(UNIX_TIMESTAMP(created_at) AS SIGNED) FROM notes WHERE id = ?", (id,)).await?;
        Ok((node, row))
    })
    .await;
    match result {
        Ok((node, Some(row))) => answer(
            &notes,
            StatusCode::OK,
            Some(notes.node(db, node)),
            json!({ "note": to_note(row) }),
        ),
        Ok((node, None)) => {
            let body = json!({ "error": { "code": "note_not_found", "message": format!("no note {id}") } });
            answer(
                &notes,
                StatusCode::NOT_FOUND,
                Some(notes.node(db, node)),
                body,
            )
        }
        Err(e) => db_error(&notes, "read", &e),
    }
}

fn to_note((id, text, created_by, created_at): (u64, String, String, i64)) -> Note {
    Note {
        id,
        text,
        created_by,
        created_at,
    }
}

/// A JSON body with `served_by` added, and the `X-Served-By` header: `app=web1 db=db1`.
fn answer(
    notes: &Notes,
    status: StatusCode,
    node: Option<DbNode>,
    mut body: serde_json::Value,
) -> Response {
    let header = match &node {
        Some(n) => format!("app={} db={}", notes.server_name, n.name),
        None => format!("app={}", notes.server_name),
    };
    body["served_by"] = json!({ "app": notes.server_name, "db": node });
    let mut response = (status, Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&header) {
        response.headers_mut().insert(SERVED_BY, value);
    }
    response
}

fn error(notes: &Notes, status: StatusCode, code: &str, message: &str) -> Response {
    answer(
        notes,
        status,
        None,
        json!({ "error": { "code": code, "message": message } }),
    )
}

fn no_database(notes: &Notes) -> Response {
    error(
        notes,
        StatusCode::SERVICE_UNAVAILABLE,
        "no_database",
        "this server has no [database] configured",
    )
}

fn db_error(notes: &Notes, what: &str, e: &anyhow::Error) -> Response {
    log::warn!("notes: database {what} failed: {e:#}");
    error(
        notes,
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
        &format!("database {what} failed: {e:#}"),
    )
}
