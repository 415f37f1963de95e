//! The seed's web stack on a lab: web servers on web1 and web2, the `lb` agent on the lb host
//! with its XDP program on the lb's NIC. Shared by `cargo xtask run`, the end-to-end tests and
//! (later) the demo and benchmarks, so they all run the same thing.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{
    lab::{addr, host, Lab},
    util,
};

/// Port of the NAT-mode web service on the VIP (DSR is on port 80).
pub const NAT_PORT: u16 = 8080;

/// The agent's status API (and dashboard) in the lab: its default bind, the lb host's loopback.
pub const AGENT_API: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9876);

/// Release binaries of this workspace (`target/release/<name>`).
pub fn release_binary(name: &str) -> Result<PathBuf> {
    let path = util::target_dir().join("release").join(name);
    if !path.exists() {
        bail!(
            "{} is missing: build with `cargo build --release`",
            path.display()
        );
    }
    Ok(path)
}

/// nginx on each web host, answering every request with the host's name (the app tier of the
/// seed comes with `lb-web`; nginx stands in until then).
pub fn start_web_servers(lab: &Lab) -> Result<()> {
    for web in host::WEBS {
        start_web_server(lab, web)?;
    }
    Ok(())
}

/// Length of the body every web server sends for `/large`.
pub const LARGE_BODY_BYTES: usize = 100_000;

/// The body of `/large` on `web`: its name, then filler up to [`LARGE_BODY_BYTES`].
pub fn large_body(web: &str) -> Vec<u8> {
    let mut body = format!("{web}\n").into_bytes();
    body.resize(LARGE_BODY_BYTES, b'.');
    body
}

/// nginx on one web host (again, after a stop); returns its pid once it answers the client.
pub fn start_web_server(lab: &Lab, web: &str) -> Result<u32> {
    let dir = lab.dir().join(format!("nginx-{web}"));
    std::fs::create_dir_all(&dir)?;
    let conf = crate::template::nginx_web(&dir, web)?;
    std::fs::write(dir.join("large.bin"), large_body(web))?;
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let conf = path.display().to_string();
    let pid = lab.spawn(
        web,
        &["nginx", "-c", &conf, "-g", "daemon off;"],
        &format!("nginx-{web}"),
    )?;
    let address = lab
        .spec()
        .host(web)
        .and_then(|h| h.ipv4.first())
        .and_then(|a| a.split('/').next())
        .with_context(|| format!("lab host {web} has no IPv4 address"))?
        .to_string();
    let up = util::wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        lab.exec(
            host::CLIENT,
            &["curl", "-s", "-m", "1", &format!("http://{address}/")],
        )
        .is_ok()
    });
    if !up {
        bail!(
            "nginx did not answer on {web}:\n{}",
            lab.read_log(&format!("nginx-{web}"))
        );
    }
    Ok(pid)
}

/// What the lab's agent config has beyond the two web services.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    /// Body of `[service.health]` for both web services (e.g. `kind = "http"`); none without.
    pub web_health: Option<String>,
    /// Writes this token to `{lab}/api-token` and sets `api.token_file` to it.
    pub api_token: Option<String>,
    /// Adds the service `db` (the writer VIP, port 3306, DSR) over db1, with this
    /// `[service.health]` body.
    pub db_health: Option<String>,
    /// The seed's app tier: lb-web on web1 and web2 (HTTP and HTTPS) instead of nginx, the
    /// service `web-https` on the VIP's port 443, and `db-read` on the read VIP (needs
    /// `db_health` and MariaDB running on db1, or `database`).
    pub app_tier: bool,
    /// The replicated database: services `db` (write VIP) and `db-read` (read VIP) over db1 and
    /// db2, watched and failed over by the agent's `[database]` section (instead of
    /// `db_health`). Needs [`start_database_cluster`] first.
    pub database: bool,
    /// The lab's firewall: a drop rule for [`DENIED_CLIENT`] (a second address of the client,
    /// see [`add_denied_client_address`]) and the database VIPs open to web1 and web2 only.
    pub firewall: bool,
}

/// A second address of the client namespace that the lab's firewall drops.
pub const DENIED_CLIENT: &str = "10.99.0.66";

/// Gives the client namespace the [`DENIED_CLIENT`] address (curl `--interface` picks it).
pub fn add_denied_client_address(lab: &Lab) -> Result<()> {
    lab.exec(
        host::CLIENT,
        &[
            "ip",
            "addr",
            "replace",
            &format!("{DENIED_CLIENT}/24"),
            "dev",
            "eth0",
        ],
    )
    .context("adding the denied client address")?;
    Ok(())
}

/// The MariaDB account the lab creates for the agent's mysql health check.
pub const MYSQL_CHECK_USER: &str = "lbcheck";
pub const MYSQL_CHECK_PASSWORD: &str = "lbcheck-lab-password";
/// The account the agent promotes, fences and re-points database nodes with.
pub const MYSQL_ADMIN_USER: &str = "lbadmin";
pub const MYSQL_ADMIN_PASSWORD: &str = "lbadmin-lab-password";
/// The account replicas connect to their primary with.
pub const MYSQL_REPLICATION_USER: &str = "lbrepl";
pub const MYSQL_REPLICATION_PASSWORD: &str = "lbrepl-lab-password";

/// The agent's config for the lab: the web service on the VIP in DSR mode (port 80) and in NAT
/// mode (port 8080), both over web1 and web2.
pub fn write_agent_config(lab: &Lab) -> Result<PathBuf> {
    write_agent_config_with(lab, &AgentOptions::default())
}

/// Where the lab's API token file is (when [`AgentOptions::api_token`] is set).
pub fn api_token_file(lab: &Lab) -> PathBuf {
    lab.dir().join("api-token")
}

/// [`write_agent_config`] with health checks, an API token or the database service.
pub fn write_agent_config_with(lab: &Lab, options: &AgentOptions) -> Result<PathBuf> {
    let path = lab.dir().join("lb.toml");
    let token_file = api_token_file(lab);
    if let Some(token) = &options.api_token {
        util::write_private(&token_file, format!("{token}\n"))?;
    }
    // The config quotes the database admin's password.
    let text = agent_config_text(&pin_dir(lab), &token_file, options)?;
    util::write_private(&path, text)?;
    Ok(path)
}

/// The lab's agent config, in pieces under `xtask/templates/lb/`: the two web services, then
/// whichever of the firewall rule, database services and app-tier services the options ask for.
mod agent_template {
    pub const AGENT: &str = include_str!("../templates/lb/agent.toml");
    pub const WEB_SERVICES: &str = include_str!("../templates/lb/web-services.toml");
    pub const API: &str = include_str!("../templates/lb/api.toml");
    pub const HEALTH: &str = include_str!("../templates/lb/health.toml");
    pub const FIREWALL: &str = include_str!("../templates/lb/firewall.toml");
    pub const DATABASE: &str = include_str!("../templates/lb/database.toml");
    pub const DB_SOURCES: &str = include_str!("../templates/lb/db-sources.toml");
    pub const DB_CHECKED: &str = include_str!("../templates/lb/db-checked.toml");
    pub const DB_READ_CHECKED: &str = include_str!("../templates/lb/db-read-checked.toml");
    pub const WEB_HTTPS: &str = include_str!("../templates/lb/web-https.toml");
}

/// The text of the lab's agent config ([`write_agent_config_with`]) with these pins and token
/// file (used only with [`AgentOptions::api_token`]): the bench and the map memory test size
/// the maps of the lab's own config with it. An error is a template left with a placeholder.
pub fn agent_config_text(pins: &Path, token_file: &Path, options: &AgentOptions) -> Result<String> {
    use crate::template::fill;
    use agent_template as t;
    let api = match &options.api_token {
        Some(_) => fill(
            "lb/api.toml",
            t::API,
            &[("token_file", &token_file.display().to_string())],
        )?,
        None => String::new(),
    };
    let web_health = match &options.web_health {
        Some(body) => fill("lb/health.toml", t::HEALTH, &[("body", body)])?,
        None => String::new(),
    };
    let db = match &options.db_health {
        _ if options.database => {
            let db_sources = if options.firewall {
                fill(
                    "lb/db-sources.toml",
                    t::DB_SOURCES,
                    &[("web1", addr::WEB1), ("web2", addr::WEB2)],
                )?
            } else {
                String::new()
            };
            fill(
                "lb/database.toml",
                t::DATABASE,
                &[
                    ("write_vip", addr::VIP_DB_WRITE),
                    ("read_vip", addr::VIP_DB_READ),
                    ("db1", addr::DB1),
                    ("db2", addr::DB2),
                    ("db_sources", &db_sources),
                    ("admin_user", MYSQL_ADMIN_USER),
                    ("admin_password", MYSQL_ADMIN_PASSWORD),
                    ("replication_user", MYSQL_REPLICATION_USER),
                    ("replication_password", MYSQL_REPLICATION_PASSWORD),
                    // Beside the token file, in the lab's own directory (gone with the lab).
                    (
                        "state_file",
                        &token_file
                            .with_file_name("database-watch.json")
                            .display()
                            .to_string(),
                    ),
                ],
            )?
        }
        Some(health) => fill(
            "lb/db-checked.toml",
            t::DB_CHECKED,
            &[
                ("write_vip", addr::VIP_DB_WRITE),
                ("db1", addr::DB1),
                ("health", health),
            ],
        )?,
        None => String::new(),
    };
    let https = || {
        fill(
            "lb/web-https.toml",
            t::WEB_HTTPS,
            &[
                ("vip", addr::VIP_HTTP),
                ("web1", addr::WEB1),
                ("web2", addr::WEB2),
            ],
        )
    };
    let app = match (&options.db_health, options.app_tier) {
        (_, true) if options.database => https()?,
        (Some(health), true) => {
            fill(
                "lb/db-read-checked.toml",
                t::DB_READ_CHECKED,
                &[
                    ("read_vip", addr::VIP_DB_READ),
                    ("db1", addr::DB1),
                    ("health", health),
                ],
            )? + &https()?
        }
        _ => String::new(),
    };
    let firewall = if options.firewall {
        fill(
            "lb/firewall.toml",
            t::FIREWALL,
            &[("denied", DENIED_CLIENT)],
        )?
    } else {
        String::new()
    };
    fill(
        "lb/agent.toml",
        t::AGENT,
        &[
            ("pins", &pins.display().to_string()),
            ("api", &api),
            (
                "web_services",
                &web_services("", &WebAddresses::IPV4, &web_health)?,
            ),
            ("more", &(firewall + &db + &app)),
        ],
    )
}

/// The addresses of the web services: the VIP, the backends and the NAT source.
#[derive(Debug, Clone, Copy)]
pub struct WebAddresses {
    pub vip: &'static str,
    pub web1: &'static str,
    pub web2: &'static str,
    pub snat: &'static str,
}

impl WebAddresses {
    pub const IPV4: WebAddresses = WebAddresses {
        vip: addr::VIP_HTTP,
        web1: addr::WEB1,
        web2: addr::WEB2,
        snat: addr::LB_SNAT,
    };
    pub const IPV6: WebAddresses = WebAddresses {
        vip: addr::VIP_HTTP_V6,
        web1: addr::WEB1_V6,
        web2: addr::WEB2_V6,
        snat: addr::LB_SNAT_V6,
    };
}

/// The two web services, `web-dsr{suffix}` on port 80 and `web-nat{suffix}` on [`NAT_PORT`],
/// over web1 and web2 at `addresses`; `health` is their `[service.health]` table or empty.
pub fn web_services(suffix: &str, addresses: &WebAddresses, health: &str) -> Result<String> {
    crate::template::fill(
        "lb/web-services.toml",
        agent_template::WEB_SERVICES,
        &[
            ("suffix", suffix),
            ("vip", addresses.vip),
            ("web_health", health),
            ("web1", addresses.web1),
            ("web2", addresses.web2),
            ("nat_port", &NAT_PORT.to_string()),
            ("snat", addresses.snat),
        ],
    )
}

/// [`write_agent_config_with`], then `agent_keys` (lines of the `[agent]` table, e.g.
/// `flow_capacity = 4096`) put into the `[agent]` table and `extra` (whole tables, e.g. more
/// services) appended.
pub fn write_agent_config_extended(
    lab: &Lab,
    options: &AgentOptions,
    agent_keys: &str,
    extra: &str,
) -> Result<PathBuf> {
    let path = write_agent_config_with(lab, options)?;
    let text = std::fs::read_to_string(&path)?;
    let Some((head, tail)) = text.split_once("[agent]\n") else {
        bail!("no [agent] table in {}", path.display());
    };
    let text = format!("{head}[agent]\n{agent_keys}\n{tail}\n{extra}");
    util::write_private(&path, text)?;
    Ok(path)
}

/// MariaDB on a db host as a standalone writable server (see [`start_mariadb_node`]).
pub fn start_mariadb(lab: &Lab, db: &str) -> Result<u32> {
    let pid = start_mariadb_node(lab, db)?;
    mariadb_root(lab, db, "SET GLOBAL read_only = OFF").context("making MariaDB writable")?;
    Ok(pid)
}

/// Runs SQL as root on a lab MariaDB through its socket.
pub fn mariadb_root(lab: &Lab, db: &str, sql: &str) -> Result<String> {
    let socket = lab.dir().join(format!("mariadb-{db}")).join("mysqld.sock");
    let socket_arg = format!("--socket={}", socket.display());
    lab.exec_stdout(
        db,
        &[
            "mariadb",
            "--no-defaults",
            &socket_arg,
            "-uroot",
            "-N",
            "-B",
            "-e",
            sql,
        ],
    )
    .with_context(|| format!("MariaDB on {db}: {sql}"))
}

/// The lab's MariaDB server id of a db host (db1 -> 1, db2 -> 2): lb-web names nodes by it.
fn server_id(db: &str) -> u32 {
    db.trim_start_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .unwrap_or(1)
}

/// The seed's database: MariaDB on db1 and db2, db1 the writable primary holding the app's
/// database and account. db2 starts read-only and empty; the agent's `[database]` watch makes it
/// a replica of db1 (the same code that re-points a returning old primary).
/// Returns the pids of db1's and db2's servers.
pub fn start_database_cluster(lab: &Lab) -> Result<(u32, u32)> {
    let db1 = start_mariadb_node(lab, host::DB1)?;
    let db2 = start_mariadb_node(lab, host::DB2)?;
    mariadb_root(lab, host::DB1, "SET GLOBAL read_only = OFF")?;
    create_app_database(lab, host::DB1)?;
    Ok((db1, db2))
}

/// MariaDB on a db host, listening on all its addresses, port 3306, ready to replicate: binary
/// log with GTIDs, server id from the host name, semi-synchronous replication on both sides
/// (a commit waits, up to 1 s, until a replica has it), and read-only at start, so a node that
/// comes back after a crash never takes writes before the agent decides its role. The first
/// start creates the data directory and the agent's accounts (not replicated: each node has its
/// own); later starts reuse it. Returns the server's pid once it answers.
pub fn start_mariadb_node(lab: &Lab, db: &str) -> Result<u32> {
    let dir = lab.dir().join(format!("mariadb-{db}"));
    let data = dir.join("data");
    let socket = dir.join("mysqld.sock");
    let fresh = !data.exists();
    if fresh {
        std::fs::create_dir_all(&data)?;
        let data_arg = format!("--datadir={}", data.display());
        lab.exec(
            db,
            &[
                "mariadb-install-db",
                "--no-defaults",
                &data_arg,
                "--user=root",
                "--skip-test-db",
                "--auth-root-authentication-method=socket",
            ],
        )
        .context("mariadb-install-db")?;
    }
    let args = [
        "mariadbd".to_string(),
        "--no-defaults".into(),
        format!("--datadir={}", data.display()),
        "--user=root".into(),
        format!("--socket={}", socket.display()),
        format!("--pid-file={}", dir.join("mysqld.pid").display()),
        // All addresses: the database VIPs on the host's loopback too (DSR delivers to them).
        "--bind-address=*".into(),
        "--port=3306".into(),
        "--innodb-buffer-pool-size=16M".into(),
        format!("--server-id={}", server_id(db)),
        "--log-bin=mysql-bin".into(),
        "--log-slave-updates=ON".into(),
        "--binlog-format=ROW".into(),
        "--gtid-strict-mode=ON".into(),
        "--sync-binlog=1".into(),
        "--read-only=ON".into(),
        "--skip-name-resolve".into(),
        "--rpl-semi-sync-master-enabled=ON".into(),
        "--rpl-semi-sync-slave-enabled=ON".into(),
        "--rpl-semi-sync-master-wait-point=AFTER_SYNC".into(),
        "--rpl-semi-sync-master-timeout=1000".into(),
    ];
    let pid = lab.spawn(db, &args, &format!("mariadb-{db}"))?;
    let socket_arg = format!("--socket={}", socket.display());
    let up = util::wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        !lab.is_running(pid)
            || lab
                .exec(
                    db,
                    &[
                        "mariadb",
                        "--no-defaults",
                        &socket_arg,
                        "-uroot",
                        "-e",
                        "SELECT 1",
                    ],
                )
                .is_ok()
    });
    if !up || !lab.is_running(pid) {
        bail!(
            "MariaDB did not start on {db}:\n{}",
            lab.read_log(&format!("mariadb-{db}"))
        );
    }
    if fresh {
        let sql = format!(
            "SET sql_log_bin = 0; \
             CREATE USER '{MYSQL_CHECK_USER}'@'%' IDENTIFIED BY '{MYSQL_CHECK_PASSWORD}'; \
             GRANT SLAVE MONITOR ON *.* TO '{MYSQL_CHECK_USER}'@'%'; \
             CREATE USER '{MYSQL_ADMIN_USER}'@'%' IDENTIFIED BY '{MYSQL_ADMIN_PASSWORD}'; \
             GRANT SUPER, RELOAD, READ_ONLY ADMIN, REPLICATION SLAVE ADMIN, SLAVE MONITOR, BINLOG MONITOR ON *.* TO '{MYSQL_ADMIN_USER}'@'%'; \
             CREATE USER '{MYSQL_REPLICATION_USER}'@'%' IDENTIFIED BY '{MYSQL_REPLICATION_PASSWORD}'; \
             GRANT REPLICATION SLAVE ON *.* TO '{MYSQL_REPLICATION_USER}'@'%';"
        );
        lab.exec(
            db,
            &[
                "mariadb",
                "--no-defaults",
                &socket_arg,
                "-uroot",
                "-e",
                &sql,
            ],
        )
        .context("creating the agent's accounts")?;
    }
    Ok(pid)
}

/// Where the lab's agent pins its maps (on the lab's own bpffs, visible inside namespaces).
pub fn pin_dir(lab: &Lab) -> PathBuf {
    lab.bpffs().join("lb")
}

/// XDP_TX out of a veth only works when its peer runs an XDP program: attach the trivial pass
/// program to the switch side of the lb's veth.
pub fn attach_peer_pass(lab: &Lab, lb: &Path) -> Result<()> {
    let (switch_ns, port) = lab.switch_port(host::LB);
    let pin = lab.bpffs().join(format!("pass-{port}"));
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &switch_ns])
        .arg(lb)
        .args(["attach-pass", "--iface", &port, "--pin"])
        .arg(&pin);
    util::run(&mut cmd).context("attaching xdp_pass to the lb's switch port")
}

/// Starts `lb run` on the lb host and waits until it reports it is running. Returns its pid.
pub fn start_agent(lab: &Lab, lb: &Path, config: &Path) -> Result<u32> {
    start_agent_logged(lab, lb, config, "agent")
}

/// [`start_agent`] writing to log `log` (a restarted agent needs a fresh log to be waited on).
pub fn start_agent_logged(lab: &Lab, lb: &Path, config: &Path, log: &str) -> Result<u32> {
    start_agent_with_env(lab, lb, config, log, &[])
}

/// [`start_agent_logged`] with these environment variables (test hooks).
pub fn start_agent_with_env(
    lab: &Lab,
    lb: &Path,
    config: &Path,
    log: &str,
    envs: &[(&str, &str)],
) -> Result<u32> {
    let lb = lb.display().to_string();
    let config = config.display().to_string();
    let pid = lab.spawn_env(
        host::LB,
        &[lb.as_str(), "run", "--config", &config],
        envs,
        log,
    )?;
    let ready = util::wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
        lab.read_log(log).contains("lb: running") || !lab.is_running(pid)
    });
    if !ready || !lab.is_running(pid) {
        bail!("the agent did not start:\n{}", lab.read_log(log));
    }
    Ok(pid)
}

/// Web servers, the pass program on the peer, the agent: the whole stack on an up lab.
pub fn start(lab: &Lab) -> Result<u32> {
    start_with(lab, &AgentOptions::default())
}

/// The pids of what [`start_full_stack`] started.
#[derive(Debug, Clone, Copy)]
pub struct FullStack {
    pub agent: u32,
    pub db1: u32,
    pub db2: u32,
}

/// The options of the seed's whole stack: lb-web over HTTP and HTTPS behind the VIP with health
/// checks, the replicated database with failover, the lab firewall, an API token.
pub fn full_stack_options(api_token: &str) -> AgentOptions {
    AgentOptions {
        web_health: Some("kind = \"http\"\npath = \"/healthz\"\nexpect_status = 200".into()),
        api_token: Some(api_token.to_string()),
        db_health: None,
        app_tier: true,
        database: true,
        firewall: true,
    }
}

/// What `cargo xtask run` and the demo bring up: MariaDB db1 (primary) and db2, the denied
/// client address, then [`full_stack_options`]; returns once the agent reports db2 replicating.
pub fn start_full_stack(lab: &Lab, api_token: &str) -> Result<FullStack> {
    let (db1, db2) = start_database_cluster(lab)?;
    add_denied_client_address(lab)?;
    let agent = start_with(lab, &full_stack_options(api_token))?;
    let lb = release_binary("lb")?;
    crate::failover::wait_for_roles(lab, &lb, host::DB1, &[host::DB2], Duration::from_secs(30))
        .with_context(|| format!("the database did not come up:\n{}", lab.read_log("agent")))?;
    Ok(FullStack { agent, db1, db2 })
}

/// [`start`] with an agent config written by [`write_agent_config_with`].
pub fn start_with(lab: &Lab, options: &AgentOptions) -> Result<u32> {
    let lb = release_binary("lb")?;
    if options.app_tier {
        if !options.database {
            create_app_database(lab, host::DB1)?;
        }
        start_app_servers(lab, &AppOptions::default())?;
    } else {
        start_web_servers(lab)?;
    }
    attach_peer_pass(lab, &lb)?;
    let config = write_agent_config_with(lab, options)?;
    start_agent(lab, &lb, &config)
}

/// The database and account the lab creates for the app tier (`lb-web`'s notes).
pub const APP_DB_NAME: &str = "notes";
pub const APP_DB_USER: &str = "lbapp";
pub const APP_DB_PASSWORD: &str = "lbapp-lab-password";

/// Creates the app's database and account (all privileges on it, from anywhere) on a running
/// MariaDB started by [`start_mariadb`], through its socket as root. Idempotent.
pub fn create_app_database(lab: &Lab, db: &str) -> Result<()> {
    let socket = lab.dir().join(format!("mariadb-{db}")).join("mysqld.sock");
    let socket_arg = format!("--socket={}", socket.display());
    let sql = format!(
        "CREATE DATABASE IF NOT EXISTS {APP_DB_NAME}; \
         CREATE USER IF NOT EXISTS '{APP_DB_USER}'@'%' IDENTIFIED BY '{APP_DB_PASSWORD}'; \
         GRANT ALL PRIVILEGES ON {APP_DB_NAME}.* TO '{APP_DB_USER}'@'%';"
    );
    lab.exec(
        db,
        &[
            "mariadb",
            "--no-defaults",
            &socket_arg,
            "-uroot",
            "-e",
            &sql,
        ],
    )
    .with_context(|| format!("creating the app database on {db}"))?;
    Ok(())
}

/// HTTPS port of `lb-web` in the lab (HTTP is on 80).
pub const APP_HTTPS_PORT: u16 = 443;

/// How the lab runs `lb-web` on web1 and web2.
#[derive(Debug, Clone)]
pub struct AppOptions {
    /// `host:port` the notes API writes to (the write VIP by default).
    pub db_write: String,
    /// `host:port` the notes API reads from (the read VIP by default).
    pub db_read: String,
    /// Plain HTTP answers with a redirect to HTTPS (except `/healthz`).
    pub redirect_to_https: bool,
}

impl Default for AppOptions {
    fn default() -> Self {
        AppOptions {
            db_write: format!("{}:3306", addr::VIP_DB_WRITE),
            db_read: format!("{}:3306", addr::VIP_DB_READ),
            redirect_to_https: false,
        }
    }
}

/// What [`start_app_servers`] made: where the CA, the shared static files and the logs are.
#[derive(Debug, Clone)]
pub struct AppServers {
    /// `(host, pid)` of each `lb-web`.
    pub pids: Vec<(String, u32)>,
    /// The lab CA's certificate (`curl --cacert`).
    pub ca: PathBuf,
    /// The static files both servers serve.
    pub static_dir: PathBuf,
}

/// The app tier's directory in the lab: certificates, static files, configs, access logs.
pub fn app_dir(lab: &Lab) -> PathBuf {
    lab.dir().join("app")
}

/// The access log (combined format) of `lb-web` on `web`.
pub fn app_access_log(lab: &Lab, web: &str) -> PathBuf {
    app_dir(lab).join(format!("{web}-access.log"))
}

/// `lb-web` on web1 and web2, the same binary and the same static files and certificate (the
/// lab CA's, made once with `lb-web gen-certs` for the web hosts and the HTTP VIP), HTTP on 80
/// and HTTPS on 443. Returns once both answer `/healthz` from the client.
pub fn start_app_servers(lab: &Lab, options: &AppOptions) -> Result<AppServers> {
    let bin = release_binary("lb-web")?;
    let dir = app_dir(lab);
    let certs = dir.join("certs");
    if !certs.join("server.pem").exists() {
        let mut cmd = Command::new(&bin);
        cmd.arg("gen-certs").arg("--out").arg(&certs);
        for ip in [
            addr::WEB1,
            addr::WEB2,
            addr::VIP_HTTP,
            addr::WEB1_V6,
            addr::WEB2_V6,
            addr::VIP_HTTP_V6,
        ] {
            cmd.args(["--ip", ip]);
        }
        util::output(&mut cmd).context("making the lab's certificates")?;
    }
    let static_dir = dir.join("static");
    std::fs::create_dir_all(&static_dir)?;
    std::fs::write(
        static_dir.join("index.html"),
        "<!doctype html>\n<title>lb lab</title>\n<h1>The lb lab</h1>\n<p>Served by lb-web; the header X-Served-By names the server.</p>\n",
    )?;
    // Big and compressible: range and compression have something to work on.
    std::fs::write(
        static_dir.join("lorem.txt"),
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit.\n".repeat(200),
    )?;
    let mut pids = Vec::new();
    for web in host::WEBS {
        pids.push((web.to_string(), start_app_server(lab, web, options)?));
    }
    Ok(AppServers {
        pids,
        ca: certs.join("ca.pem"),
        static_dir,
    })
}

/// `lb-web` on one web host (again, after a stop, possibly with other options); its pid once it
/// answers `/healthz` from the client. [`start_app_servers`] must have run once before.
pub fn start_app_server(lab: &Lab, web: &str, options: &AppOptions) -> Result<u32> {
    let bin = release_binary("lb-web")?;
    let dir = app_dir(lab);
    let address = lab
        .spec()
        .host(web)
        .and_then(|h| h.ipv4.first())
        .and_then(|a| a.split('/').next())
        .with_context(|| format!("lab host {web} has no IPv4 address"))?
        .to_string();
    let static_dir = dir.join("static");
    let access_log = app_access_log(lab, web);
    let certs = dir.join("certs");
    let config = crate::template::lb_web(&crate::template::LbWeb {
        web,
        static_dir: &static_dir,
        access_log: &access_log,
        redirect_to_https: options.redirect_to_https,
        https_port: APP_HTTPS_PORT,
        certs: &certs,
        db_write: &options.db_write,
        db_read: &options.db_read,
        db_user: APP_DB_USER,
        db_password: APP_DB_PASSWORD,
        db_name: APP_DB_NAME,
    })?;
    let path = dir.join(format!("{web}.toml"));
    // It quotes the app's database password.
    util::write_private(&path, config)?;
    let log = format!("lb-web-{web}");
    let pid = lab.spawn(
        web,
        &[
            bin.display().to_string(),
            "--config".into(),
            path.display().to_string(),
        ],
        &log,
    )?;
    let url = format!("http://{address}/healthz");
    let up = util::wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        !lab.is_running(pid)
            || lab
                .exec(host::CLIENT, &["curl", "-sf", "-m", "1", &url])
                .is_ok()
    });
    if !up || !lab.is_running(pid) {
        bail!("lb-web did not answer on {web}:\n{}", lab.read_log(&log));
    }
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every combination of the options that pick pieces of the agent config.
    fn every_option_set() -> Vec<AgentOptions> {
        (0..64u32)
            .map(|bits| {
                let on = |i: u32| bits & (1 << i) != 0;
                AgentOptions {
                    web_health: on(0).then(|| "kind = \"http\"\npath = \"/healthz\"".into()),
                    api_token: on(1).then(|| "token".into()),
                    db_health: on(2).then(|| "kind = \"mysql\"".into()),
                    app_tier: on(3),
                    database: on(4),
                    firewall: on(5),
                }
            })
            .collect()
    }

    #[test]
    fn every_agent_config_fills_its_templates() {
        for options in every_option_set() {
            let text = agent_config_text(Path::new("/pins"), Path::new("/token"), &options)
                .unwrap_or_else(|e| panic!("{options:?}: {e:#}"));
            assert!(!text.contains("{{"), "{options:?}:\n{text}");
            assert!(text.contains("pin_path = \"/pins\"\n"));
            assert_eq!(
                text.contains("token_file = \"/token\""),
                options.api_token.is_some()
            );
            assert_eq!(text.contains("name = \"denied-client\""), options.firewall);
            assert_eq!(text.contains("[database]"), options.database);
            assert_eq!(
                text.contains("name = \"web-https\""),
                options.app_tier && (options.database || options.db_health.is_some())
            );
        }
    }

    #[test]
    fn the_full_stack_config_has_every_service() {
        let text = agent_config_text(
            Path::new("/sys/fs/bpf/lb"),
            Path::new("/run/token"),
            &full_stack_options("t"),
        )
        .expect("renders");
        for service in ["web-dsr", "web-nat", "db", "db-read", "web-https"] {
            assert!(
                text.contains(&format!("name = \"{service}\"\n")),
                "{service}:\n{text}"
            );
        }
        assert!(text.contains(&format!("snat_address = \"{}\"\n", addr::LB_SNAT)));
        assert!(text.contains(&format!("port = {NAT_PORT}\nmode = \"nat\"\n")));
        assert!(text.contains(&format!(
            "allow_sources = [\"{}/32\", \"{}/32\"]\n",
            addr::WEB1,
            addr::WEB2
        )));
        assert!(text.contains(&format!(
            "replication_user = \"{MYSQL_REPLICATION_USER}\"\n"
        )));
    }
}
