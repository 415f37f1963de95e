//! `web.toml`, the configuration of one `lb-web` server. Unknown keys are errors; every error
//! names the file (and, for syntax and type errors, the line and column) and what to do.
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// This app server's name, reported in every answer (`X-Served-By`) and the access log.
    pub server_name: String,
    #[serde(default)]
    pub http: Option<HttpConfig>,
    #[serde(default)]
    pub https: Option<HttpsConfig>,
    /// Directory of static files served under `/` (none: only the API and `/healthz`).
    #[serde(default)]
    pub static_dir: Option<PathBuf>,
    /// Access log in the combined format: a file path, or `-` for stdout (the default).
    #[serde(default = "stdout")]
    pub access_log: String,
    #[serde(default)]
    pub database: Option<DatabaseConfig>,
    /// Timeouts and the connection limit of every listener.
    #[serde(default)]
    pub limits: LimitsConfig,
}

fn stdout() -> String {
    "-".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Plain HTTP addresses, e.g. `["[::]:80"]` (HTTP/1.1, and HTTP/2 with prior knowledge).
    pub listen: Vec<SocketAddr>,
    /// Answer every plain-HTTP request except `/healthz` with a redirect to HTTPS.
    #[serde(default)]
    pub redirect_to_https: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpsConfig {
    /// HTTPS addresses, e.g. `["[::]:443"]` (HTTP/2 and HTTP/1.1 by ALPN).
    pub listen: Vec<SocketAddr>,
    /// PEM certificate chain, server certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// `Debug` is written by hand: it must not print the password.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `host:port` of the write VIP (the current primary).
    pub write: String,
    /// `host:port` of the read VIP (replicas, or the primary).
    pub read: String,
    pub user: String,
    #[serde(default)]
    pub password: Option<String>,
    /// File whose first line is the password (instead of `password`).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Database (schema) name; the `notes` table is created in it when missing.
    pub name: String,
    /// Names of the database nodes by `@@server_id`, e.g. `{ db1 = 1, db2 = 2 }`, so answers
    /// can name the node; without an entry the server id and `@@hostname` are reported.
    #[serde(default)]
    pub nodes: BTreeMap<String, u32>,
    /// Connections per pool (one pool for writes, one for reads).
    #[serde(default = "default_pool")]
    pub pool_size: usize,
}

fn default_pool() -> usize {
    4
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("write", &self.write)
            .field("read", &self.read)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "(redacted)"))
            .field("password_file", &self.password_file)
            .field("name", &self.name)
            .field("nodes", &self.nodes)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

impl DatabaseConfig {
    /// The password, read from `password_file` when that is set.
    pub fn password(&self) -> Result<String> {
        match (&self.password, &self.password_file) {
            (Some(p), None) => Ok(p.clone()),
            // As the agent reads its secret files: the first line, trimmed, not empty.
            (None, Some(file)) => {
                let text = std::fs::read_to_string(file).with_context(|| {
                    format!("reading database.password_file {}", file.display())
                })?;
                let password = text.lines().next().unwrap_or_default().trim();
                if password.is_empty() {
                    bail!(
                        "database.password_file {} is empty: put the password on its first line",
                        file.display()
                    );
                }
                Ok(password.to_string())
            }
            (None, None) => Ok(String::new()),
            (Some(_), Some(_)) => bail!("database: set either password or password_file, not both"),
        }
    }
}

/// `[limits]`: what one client may hold (see docs/LB-WEB.md, "Limits").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Open connections per listener at most; default: the file-descriptor limit less
    /// [`FD_RESERVE`], up to [`DEFAULT_MAX_CONNECTIONS`].
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Time for a request head (and the TLS handshake before the first one).
    #[serde(default = "default_header_read_timeout_ms")]
    pub header_read_timeout_ms: u64,
    /// Time an answered connection may stay open with nothing in flight.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Time one request may take, its body and its answer included.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_connections: None,
            header_read_timeout_ms: default_header_read_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            request_timeout_ms: default_request_timeout_ms(),
        }
    }
}

/// Connections per listener when `max_connections` is not set and descriptors allow.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// Descriptors kept for everything but client connections: listeners, the database pools,
/// static files being sent, the access log.
pub const FD_RESERVE: u64 = 256;

fn default_header_read_timeout_ms() -> u64 {
    10_000
}
fn default_idle_timeout_ms() -> u64 {
    60_000
}
fn default_request_timeout_ms() -> u64 {
    300_000
}

impl LimitsConfig {
    /// The limits of each of `listeners` listeners, given the process's file-descriptor limit:
    /// together they stay below it, so a flood of connections never takes the descriptors
    /// the database pools and static files need.
    pub fn for_listeners(&self, listeners: usize, fd_limit: u64) -> Result<lb_serve::Limits> {
        let listeners = listeners.max(1) as u64;
        let available = fd_limit.saturating_sub(FD_RESERVE) / listeners;
        let max_connections = match self.max_connections {
            Some(wanted) if wanted as u64 > available => bail!(
                "limits.max_connections = {wanted} on {listeners} listener(s) does not fit the \
                 file-descriptor limit {fd_limit} (less {FD_RESERVE} kept for files and the \
                 database): lower it to at most {available}, or raise the limit (ulimit -n, \
                 LimitNOFILE= in the systemd unit)"
            ),
            Some(wanted) => wanted,
            None => usize::try_from(available)
                .unwrap_or(usize::MAX)
                .min(DEFAULT_MAX_CONNECTIONS),
        };
        if max_connections == 0 {
            bail!("the file-descriptor limit {fd_limit} leaves no room for connections: raise it (ulimit -n)");
        }
        Ok(lb_serve::Limits {
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            max_connections,
        })
    }
}

/// Split `host:port` (IPv6 in brackets) into its parts.
pub fn host_port(text: &str) -> Result<(String, u16)> {
    let (host, port) = text
        .rsplit_once(':')
        .with_context(|| format!("{text:?} is not host:port (e.g. \"10.99.0.101:3306\")"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("{text:?}: port {port:?} is not a number 1-65535"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || port == 0 {
        bail!("{text:?} is not host:port (e.g. \"10.99.0.101:3306\")");
    }
    Ok((host.to_string(), port))
}

/// Read and validate a config file.
pub fn load(path: &Path) -> Result<WebConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text).with_context(|| format!("in {}", path.display()))
}

/// Parse and validate config text.
pub fn parse(text: &str) -> Result<WebConfig> {
    let config: WebConfig = toml::from_str(text)?;
    validate(&config)?;
    Ok(config)
}

fn validate(config: &WebConfig) -> Result<()> {
    let name = &config.server_name;
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!("server_name {name:?} must be 1-64 characters of letters, digits, '-', '_', '.'");
    }
    let http = config.http.as_ref().map_or(0, |h| h.listen.len());
    let https = config.https.as_ref().map_or(0, |h| h.listen.len());
    if http + https == 0 {
        bail!("nothing to listen on: set [http] listen and/or [https] listen (e.g. listen = [\"[::]:80\"])");
    }
    if config.http.as_ref().is_some_and(|h| h.redirect_to_https) && https == 0 {
        bail!("[http] redirect_to_https = true needs an [https] section with listen addresses");
    }
    if let Some(dir) = &config.static_dir {
        if !dir.is_dir() {
            bail!("static_dir {} is not a directory", dir.display());
        }
    }
    if config.access_log.is_empty() {
        bail!("access_log must be a file path or \"-\" (stdout)");
    }
    let limits = &config.limits;
    if limits.max_connections == Some(0) {
        bail!("limits.max_connections = 0 would refuse every client: remove it for the default");
    }
    for (name, value) in [
        ("header_read_timeout_ms", limits.header_read_timeout_ms),
        ("idle_timeout_ms", limits.idle_timeout_ms),
        ("request_timeout_ms", limits.request_timeout_ms),
    ] {
        if !(10..=3_600_000).contains(&value) {
            bail!("limits.{name} = {value} must be 10..3600000 (milliseconds)");
        }
    }
    if let Some(db) = &config.database {
        host_port(&db.write).context("database.write")?;
        host_port(&db.read).context("database.read")?;
        if db.user.is_empty() {
            bail!("database.user is empty");
        }
        if db.name.is_empty()
            || !db
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            bail!(
                "database.name {:?} must be letters, digits and '_'",
                db.name
            );
        }
        if db.password.is_some() && db.password_file.is_some() {
            bail!("database: set either password or password_file, not both");
        }
        if db.pool_size == 0 || db.pool_size > 64 {
            bail!("database.pool_size {} must be 1..64", db.pool_size);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
server_name = "web1"
[http]
listen = ["127.0.0.1:8080"]
[database]
write = "10.99.0.101:3306"
read = "10.99.0.102:3306"
user = "app"
password = "x"
name = "notes"
nodes = { db1 = 1, db2 = 2 }
"#;

    #[track_caller]
    fn error(text: &str) -> String {
        match parse(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn a_good_config_parses() {
        let config = parse(GOOD).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(config.server_name, "web1");
        assert_eq!(config.access_log, "-");
        let db = config.database.unwrap_or_else(|| panic!("no database"));
        assert_eq!(db.nodes.get("db2"), Some(&2));
        assert_eq!(db.pool_size, 4);
        let shown = format!("{db:?}");
        assert!(
            !shown.contains("\"x\"") && shown.contains("(redacted)"),
            "{shown}"
        );
        assert_eq!(
            host_port("[fd99::21]:3306").ok(),
            Some(("fd99::21".to_string(), 3306))
        );
    }

    #[test]
    fn connection_limits_fit_the_descriptor_limit() {
        let config = parse(GOOD).unwrap_or_else(|e| panic!("{e:#}"));
        let defaults = config.limits.for_listeners(2, 1024).ok();
        assert_eq!(defaults.map(|l| l.max_connections), Some(384));
        let roomy = config.limits.for_listeners(2, 1 << 20).ok();
        assert_eq!(
            roomy.map(|l| l.max_connections),
            Some(DEFAULT_MAX_CONNECTIONS)
        );
        let wanted = LimitsConfig {
            max_connections: Some(5000),
            ..LimitsConfig::default()
        };
        let error = wanted.for_listeners(4, 20_000).err().map(|e| e.to_string());
        assert!(
            error.as_deref().is_some_and(|e| e.contains("at most 4936")),
            "{error:?}"
        );
        assert!(config.limits.for_listeners(1, 100).is_err());
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        for (text, expect) in [
            (
                GOOD.replace("server_name", "server_nam"),
                "unknown field `server_nam`",
            ),
            (GOOD.replace("\"127.0.0.1:8080\"", "\"nowhere\""), "line 4"),
            (GOOD.replace("\"web1\"", "\"web 1\""), "server_name"),
            (
                GOOD.replace("listen = [\"127.0.0.1:8080\"]", "listen = []"),
                "nothing to listen on",
            ),
            (
                GOOD.replace("listen = [", "redirect_to_https = true\nlisten = ["),
                "needs an [https] section",
            ),
            (
                GOOD.replace("10.99.0.101:3306", "10.99.0.101"),
                "database.write",
            ),
            (
                GOOD.replace(
                    "password = \"x\"",
                    "password = \"x\"\npassword_file = \"/p\"",
                ),
                "not both",
            ),
            (
                GOOD.replace("name = \"notes\"", "name = \"no;tes\""),
                "database.name",
            ),
            (
                format!("{GOOD}static_dir = \"/nonexistent-dir\"\n"),
                "unknown field `static_dir`",
            ),
            (
                GOOD.replace("[http]", "static_dir = \"/nonexistent-dir\"\n[http]"),
                "not a directory",
            ),
            (
                format!("{GOOD}[limits]\nheader_read_timeout_ms = 0\n"),
                "limits.header_read_timeout_ms",
            ),
            (
                format!("{GOOD}[limits]\nmax_connections = 0\n"),
                "refuse every client",
            ),
            (format!("{GOOD}[limits]\nmax_conns = 5\n"), "unknown field"),
        ] {
            let got = error(&text);
            assert!(got.contains(expect), "expected {expect:?} in:\n{got}");
        }
    }
}
