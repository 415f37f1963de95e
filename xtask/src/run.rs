//! `cargo xtask run`: the seed's stack on this machine (lab mode), or the agent on a real NIC.
//!
//! Lab mode: setup -> build -> lab up (client, lb, web1, web2, db1, db2) -> web servers ->
//! agent with XDP on the lb's NIC -> guide -> wait for Ctrl-C -> tear everything down.
use std::{
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use xtask::{
    forward::Forwarder,
    lab::{self, addr, host, Lab, LabSpec},
    setup, stack, util,
};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Run the agent on this real interface instead of the lab (needs --config).
    #[arg(long, requires = "config")]
    pub iface: Option<String>,
    /// The agent's config file (see examples/lb.toml).
    #[arg(long, requires = "iface")]
    pub config: Option<PathBuf>,
    /// Skip `cargo xtask setup`.
    #[arg(long)]
    pub no_setup: bool,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub fn run(args: RunArgs) -> Result<()> {
    if !util::is_root() {
        bail!("`cargo xtask run` attaches XDP programs and creates network namespaces: run it as root");
    }
    if !args.no_setup {
        setup::run()?;
    }
    util::build_release()?;
    let lb = stack::release_binary("lb")?;

    if let (Some(iface), Some(config)) = (args.iface, args.config) {
        // The agent handles SIGINT itself (detaches, unpins); we only wait for it.
        ignore_signals();
        let status = Command::new(&lb)
            .args(["run", "--iface", &iface, "--config"])
            .arg(&config)
            .status()
            .with_context(|| format!("starting {}", lb.display()))?;
        if !status.success() {
            bail!("lb run exited with {status}");
        }
        return Ok(());
    }

    let lab = Lab::up(LabSpec::standard(lab::DEFAULT_PREFIX))?;
    catch_signals();
    let agent = stack::start_full_stack(&lab, &random_token()?)?.agent;
    let dashboard = forward_dashboard(&lab);
    print_guide(&lab, &lb, dashboard.as_ref());
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
        if !lab.is_running(agent) && !STOP.load(Ordering::SeqCst) {
            eprintln!("xtask run: the agent stopped:\n{}", lab.read_log("agent"));
            break;
        }
    }
    println!("\nxtask run: stopping the agent and tearing the lab down");
    if lab.is_running(agent) {
        lab.stop(agent)?;
    }
    lab.down()?;
    println!("xtask run: done, nothing left behind");
    Ok(())
}

fn catch_signals() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

fn ignore_signals() {
    // SAFETY: setting a disposition; the child gets the default one back after exec.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
    }
}

/// A token for the lab's API writes, from the kernel's random source.
fn random_token() -> Result<String> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The agent's API (dashboard at /ui) on the host's 127.0.0.1:9876, forwarded into the lb
/// namespace; when that fails (the port is taken), the run goes on without it.
fn forward_dashboard(lab: &Lab) -> Option<Forwarder> {
    let netns = std::path::Path::new("/run/netns").join(lab.ns(host::LB));
    match Forwarder::start(stack::AGENT_API, &netns, stack::AGENT_API) {
        Ok(forwarder) => Some(forwarder),
        Err(e) => {
            eprintln!("xtask run: the dashboard is not forwarded to this host: {e:#}");
            None
        }
    }
}

fn print_guide(lab: &Lab, lb: &std::path::Path, dashboard: Option<&Forwarder>) {
    let dashboard = match dashboard {
        Some(forwarder) => format!(
            "http://{}/ui   (open it in a browser on this host)",
            forwarder.local_addr()
        ),
        None => format!(
            "not on this host; inside the lab: ip netns exec {} curl http://{}/ui",
            lab.ns(host::LB),
            stack::AGENT_API
        ),
    };
    let client = lab.ns(host::CLIENT);
    let lbns = lab.ns(host::LB);
    let lb = lb.display();
    println!(
        "
The seed's stack is up, load balanced and filtered by XDP on {lbns}:eth0.

  VIP {vip}:80     the app tier (lb-web), DSR, round robin over web1 ({web1}) and web2 ({web2})
  VIP {vip}:443    the same over HTTPS (the lab's own CA: {ca})
  VIP {vip}:{nat}   port 80 again, through NAT (backends see {snat} as the client)
  VIP {db_vip}:3306 MariaDB writes: the primary (db1 at start); {read_vip}:3306 reads: the replica
                   (db2); the agent fails over when the primary dies; only web1/web2 may connect
  {denied}       a second address of the client that the firewall drops

Dashboard: {dashboard}

Try:
  ip netns exec {client} curl -si http://{vip}/api/notes | grep X-Served-By   # web1, web2, ...
  ip netns exec {client} curl -s -X POST -H 'content-type: application/json' -d '{{\"text\":\"hello\"}}' http://{vip}/api/notes
  ip netns exec {client} curl --cacert {ca} https://{vip}/api/notes
  ip netns exec {client} curl http://{vip}:{nat}/healthz
  ip netns exec {lbns} {lb} status               # the agent: attach mode, backends, traffic
  ip netns exec {lbns} {lb} backends             # health and counters per backend
  ip netns exec {client} curl -m 2 --interface {denied} http://{vip}/   # dropped by the firewall
  ip netns exec {lbns} {lb} fw list              # firewall rules and drops by reason
  kill -9 $(cat {dbdir}/mysqld.pid)   # the primary dies: see `lb status`, writes move to db2
  ip netns exec {lbns} {lb} drain web-dsr web1 --token-file {token}
  ip netns exec {lbns} curl -s localhost:9876/metrics | head

Ctrl-C stops everything and removes the lab. Logs: {logs}",
        vip = addr::VIP_HTTP,
        db_vip = addr::VIP_DB_WRITE,
        read_vip = addr::VIP_DB_READ,
        ca = stack::app_dir(lab).join("certs").join("ca.pem").display(),
        web1 = addr::WEB1,
        web2 = addr::WEB2,
        snat = addr::LB_SNAT,
        nat = stack::NAT_PORT,
        token = stack::api_token_file(lab).display(),
        logs = lab.log_dir().display(),
        denied = stack::DENIED_CLIENT,
        dbdir = lab.dir().join("mariadb-db1").display(),
    );
}
