//! The seed's web stack on a lab: web servers on web1 and web2, the `lb` agent on the lb host
//! with its XDP program on the lb's NIC. Shared by `cargo xtask run`, the end-to-end tests and
//! (later) the demo and benchmarks, so they all run the same thing.
use std::{
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

/// Release binaries of this workspace (`target/release/<name>`).
pub fn release_binary(name: &str) -> Result<PathBuf> {
    let path = util::target_dir().join("release").join(name);
    if !path.exists() {
        bail!("{} is missing: build with `cargo build --release`", path.display());
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

/// nginx on one web host (again, after a stop); returns its pid once it answers the client.
pub fn start_web_server(lab: &Lab, web: &str) -> Result<u32> {
    let dir = lab.dir().join(format!("nginx-{web}"));
    std::fs::create_dir_all(&dir)?;
    let d = dir.display();
    let conf = format!(
        "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};\n  \
         uwsgi_temp_path {d}; scgi_temp_path {d};\n  \
         server {{ listen 80; listen [::]:80; location / {{ return 200 \"{web}\\n\"; }} }}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let conf = path.display().to_string();
    let pid = lab.spawn(web, &["nginx", "-c", &conf, "-g", "daemon off;"], &format!("nginx-{web}"))?;
    let address = lab
        .spec()
        .host(web)
        .and_then(|h| h.ipv4.first())
        .and_then(|a| a.split('/').next())
        .with_context(|| format!("lab host {web} has no IPv4 address"))?
        .to_string();
    let up = util::wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        lab.exec(host::CLIENT, &["curl", "-s", "-m", "1", &format!("http://{address}/")]).is_ok()
    });
    if !up {
        bail!("nginx did not answer on {web}:\n{}", lab.read_log(&format!("nginx-{web}")));
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
}

/// The MariaDB account the lab creates for the agent's mysql health check.
pub const MYSQL_CHECK_USER: &str = "lbcheck";
pub const MYSQL_CHECK_PASSWORD: &str = "lbcheck-lab-password";

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
    let api = match &options.api_token {
        Some(token) => {
            let file = api_token_file(lab);
            std::fs::write(&file, format!("{token}\n"))?;
            format!("\n[api]\ntoken_file = \"{}\"\n", file.display())
        }
        None => String::new(),
    };
    let web_health = options.web_health.as_ref().map_or_else(String::new, |h| format!("\n[service.health]\n{h}\n"));
    let db = match &options.db_health {
        Some(health) => format!(
            "\n[[service]]\nname = \"db\"\nvip = \"{vip}\"\nport = 3306\nmode = \"dsr\"\n\n[service.health]\n{health}\n\n\
             [[service.backend]]\nname = \"db1\"\naddress = \"{db1}\"\n",
            vip = addr::VIP_DB_WRITE,
            db1 = addr::DB1,
        ),
        None => String::new(),
    };
    let text = format!(
        r#"# Written by the lab (xtask/src/stack.rs).
[agent]
interface = "eth0"
pin_path = "{pins}"
{api}
[[service]]
name = "web-dsr"
vip = "{vip}"
port = 80
mode = "dsr"
{web_health}
[[service.backend]]
name = "web1"
address = "{web1}"

[[service.backend]]
name = "web2"
address = "{web2}"

[[service]]
name = "web-nat"
vip = "{vip}"
port = {nat_port}
mode = "nat"
snat_address = "{snat}"
{web_health}
[[service.backend]]
name = "web1"
address = "{web1}"
port = 80

[[service.backend]]
name = "web2"
address = "{web2}"
port = 80
{db}"#,
        pins = pin_dir(lab).display(),
        vip = addr::VIP_HTTP,
        web1 = addr::WEB1,
        web2 = addr::WEB2,
        snat = addr::LB_SNAT,
        nat_port = NAT_PORT,
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

/// MariaDB on a db host, listening on all its addresses, port 3306. The first start creates the
/// data directory and the health-check account; later starts (after a stop) reuse it.
/// Returns the server's pid once it answers.
pub fn start_mariadb(lab: &Lab, db: &str) -> Result<u32> {
    let dir = lab.dir().join(format!("mariadb-{db}"));
    let data = dir.join("data");
    let socket = dir.join("mysqld.sock");
    let fresh = !data.exists();
    if fresh {
        std::fs::create_dir_all(&data)?;
        let data_arg = format!("--datadir={}", data.display());
        lab.exec(db, &["mariadb-install-db", "--no-defaults", &data_arg, "--user=root", "--skip-test-db", "--auth-root-authentication-method=socket"])
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
        "--skip-log-bin".into(),
        "--innodb-buffer-pool-size=16M".into(),
    ];
    let pid = lab.spawn(db, &args, &format!("mariadb-{db}"))?;
    let socket_arg = format!("--socket={}", socket.display());
    let up = util::wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
        !lab.is_running(pid) || lab.exec(db, &["mariadb", "--no-defaults", &socket_arg, "-uroot", "-e", "SELECT 1"]).is_ok()
    });
    if !up || !lab.is_running(pid) {
        bail!("MariaDB did not start on {db}:\n{}", lab.read_log(&format!("mariadb-{db}")));
    }
    if fresh {
        let sql = format!(
            "CREATE USER '{MYSQL_CHECK_USER}'@'%' IDENTIFIED BY '{MYSQL_CHECK_PASSWORD}'; \
             GRANT SLAVE MONITOR ON *.* TO '{MYSQL_CHECK_USER}'@'%';"
        );
        lab.exec(db, &["mariadb", "--no-defaults", &socket_arg, "-uroot", "-e", &sql]).context("creating the health-check account")?;
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
    cmd.args(["netns", "exec", &switch_ns]).arg(lb).args(["attach-pass", "--iface", &port, "--pin"]).arg(&pin);
    util::run(&mut cmd).context("attaching xdp_pass to the lb's switch port")
}

/// Starts `lb run` on the lb host and waits until it reports it is running. Returns its pid.
pub fn start_agent(lab: &Lab, lb: &Path, config: &Path) -> Result<u32> {
    start_agent_logged(lab, lb, config, "agent")
}

/// [`start_agent`] writing to log `log` (a restarted agent needs a fresh log to be waited on).
pub fn start_agent_logged(lab: &Lab, lb: &Path, config: &Path, log: &str) -> Result<u32> {
    let lb = lb.display().to_string();
    let config = config.display().to_string();
    let pid = lab.spawn(host::LB, &[lb.as_str(), "run", "--config", &config], log)?;
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

/// [`start`] with an agent config written by [`write_agent_config_with`].
pub fn start_with(lab: &Lab, options: &AgentOptions) -> Result<u32> {
    let lb = release_binary("lb")?;
    start_web_servers(lab)?;
    attach_peer_pass(lab, &lb)?;
    let config = write_agent_config_with(lab, options)?;
    start_agent(lab, &lb, &config)
}
