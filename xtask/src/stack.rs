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
        lab.spawn(web, &["nginx", "-c", &conf, "-g", "daemon off;"], &format!("nginx-{web}"))?;
    }
    let up = util::wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        [addr::WEB1, addr::WEB2]
            .iter()
            .all(|a| lab.exec(host::CLIENT, &["curl", "-s", "-m", "1", &format!("http://{a}/")]).is_ok())
    });
    if !up {
        bail!("nginx did not answer on web1/web2:\n{}\n{}", lab.read_log("nginx-web1"), lab.read_log("nginx-web2"));
    }
    Ok(())
}

/// The agent's config for the lab: the web service on the VIP in DSR mode (port 80) and in NAT
/// mode (port 8080), both over web1 and web2.
pub fn write_agent_config(lab: &Lab) -> Result<PathBuf> {
    let path = lab.dir().join("lb.toml");
    let text = format!(
        r#"# Written by the lab (xtask/src/stack.rs).
[agent]
interface = "eth0"
pin_path = "{pins}"

[[service]]
name = "web-dsr"
vip = "{vip}"
port = 80
mode = "dsr"

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

[[service.backend]]
name = "web1"
address = "{web1}"
port = 80

[[service.backend]]
name = "web2"
address = "{web2}"
port = 80
"#,
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
    let lb = lb.display().to_string();
    let config = config.display().to_string();
    let pid = lab.spawn(host::LB, &[lb.as_str(), "run", "--config", &config], "agent")?;
    let ready = util::wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        lab.read_log("agent").contains("lb: running") || !lab.is_running(pid)
    });
    if !ready || !lab.is_running(pid) {
        bail!("the agent did not start:\n{}", lab.read_log("agent"));
    }
    Ok(pid)
}

/// Web servers, the pass program on the peer, the agent: the whole stack on an up lab.
pub fn start(lab: &Lab) -> Result<u32> {
    let lb = release_binary("lb")?;
    start_web_servers(lab)?;
    attach_peer_pass(lab, &lb)?;
    let config = write_agent_config(lab)?;
    start_agent(lab, &lb, &config)
}

/// A MariaDB server on `host` (datadir under the lab's directory), listening on all its
/// addresses (the VIPs on its loopback included). Grant tables are skipped: the lab's database
/// has no secrets, and tests only need the real server and protocol. Returns its pid.
pub fn start_mariadb(lab: &Lab, host: &str) -> Result<u32> {
    let dir = lab.dir().join(format!("mariadb-{host}"));
    let data = dir.join("data");
    std::fs::create_dir_all(&dir)?;
    let datadir = format!("--datadir={}", data.display());
    if !data.join("mysql").exists() {
        let mut install = Command::new("mariadb-install-db");
        install.args(["--user=root", "--auth-root-authentication-method=normal", "--skip-test-db", &datadir]);
        util::output(&mut install).context("mariadb-install-db")?;
    }
    let socket = format!("--socket={}", dir.join("mysqld.sock").display());
    let pid_file = format!("--pid-file={}", dir.join("mysqld.pid").display());
    let pid = lab.spawn(
        host,
        &["mariadbd", "--no-defaults", "--user=root", &datadir, &socket, &pid_file, "--port=3306", "--bind-address=*", "--skip-grant-tables", "--skip-name-resolve"],
        &format!("mariadb-{host}"),
    )?;
    let sock = dir.join("mysqld.sock");
    let ready = util::wait_until(Duration::from_secs(30), Duration::from_millis(100), || sock.exists());
    if !ready {
        bail!("MariaDB on {host} did not start:\n{}", lab.read_log(&format!("mariadb-{host}")));
    }
    Ok(pid)
}
