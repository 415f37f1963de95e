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
    util::run(Command::new("cargo").current_dir(util::workspace_root()).args(["build", "--release"]))
        .context("building the workspace")?;
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
    let agent = stack::start(&lab)?;
    print_guide(&lab);
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

fn print_guide(lab: &Lab) {
    let client = lab.ns(host::CLIENT);
    let lbns = lab.ns(host::LB);
    let pins = stack::pin_dir(lab);
    let pins = pins.display();
    println!(
        "
The seed's web stack is up, load balanced by XDP on {lbns}:eth0.

  VIP {vip}:80    DSR mode, round robin over web1 ({web1}) and web2 ({web2})
  VIP {vip}:{nat}  NAT mode, same backends (they see {snat} as the client)

Try:
  ip netns exec {client} curl http://{vip}/            # alternates web1 / web2
  ip netns exec {client} curl http://{vip}:{nat}/
  ip netns exec {lbns} ip -d link show eth0   # the XDP program
  ls {pins}             # the pinned maps (bpftool map dump pinned {pins}/BACKENDS)
  cat {log}             # the agent's log

Not there yet: the status API and `lb status` (issue 4), HTTPS, the database tier and the
dashboard (issue 5).

Ctrl-C stops everything and removes the lab.",
        vip = addr::VIP_HTTP,
        web1 = addr::WEB1,
        web2 = addr::WEB2,
        snat = addr::LB_SNAT,
        nat = stack::NAT_PORT,
        log = lab.log_path("agent").display(),
    );
}
