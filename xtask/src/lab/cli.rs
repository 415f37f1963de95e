//! `cargo xtask lab up / down / status`: a lab by hand.

use anyhow::Result;

use super::*;

/// `cargo xtask lab ...`: bring the standard lab up or down by hand.
#[derive(clap::Args, Debug)]
pub struct LabArgs {
    #[command(subcommand)]
    pub cmd: LabCmd,
}

#[derive(clap::Subcommand, Debug)]
pub enum LabCmd {
    /// Create the standard lab (client, lb, web1, web2, db1, db2) and leave it running.
    Up {
        #[arg(long, default_value = DEFAULT_PREFIX)]
        prefix: String,
    },
    /// Remove the lab (processes, namespaces, bpffs).
    Down {
        #[arg(long, default_value = DEFAULT_PREFIX)]
        prefix: String,
    },
    /// List the lab's namespaces.
    Status {
        #[arg(long, default_value = DEFAULT_PREFIX)]
        prefix: String,
    },
}

pub fn cli(args: LabArgs) -> Result<()> {
    match args.cmd {
        LabCmd::Up { prefix } => {
            let lab = Lab::up(LabSpec::standard(&prefix))?;
            print_lab(&lab);
            lab.detach();
            Ok(())
        }
        LabCmd::Down { prefix } => {
            cleanup_stale(&prefix)?;
            println!("lab {prefix:?}: down (no namespace, process or mount left)");
            Ok(())
        }
        LabCmd::Status { prefix } => {
            let ns = namespaces_with_prefix(&prefix)?;
            if ns.is_empty() {
                println!("lab {prefix:?}: not up");
            } else {
                println!("lab {prefix:?}: namespaces {}", ns.join(" "));
            }
            Ok(())
        }
    }
}

pub(super) fn print_lab(lab: &Lab) {
    let p = lab.prefix();
    println!("lab {p:?} is up.");
    println!("  {:<14} {:<8} addresses", "namespace", "iface");
    for h in &lab.spec().hosts {
        let mut addrs: Vec<String> = h.ipv4.iter().chain(&h.ipv6).cloned().collect();
        if !h.loopback_addrs.is_empty() {
            addrs.push(format!("lo: {}", h.loopback_addrs.join(" ")));
        }
        let mut notes = Vec::new();
        if h.tx_checksum_off {
            notes.push("tx-csum off");
        }
        if h.dsr_backend {
            notes.push("dsr arp");
        }
        let notes = if notes.is_empty() {
            String::new()
        } else {
            format!("  [{}]", notes.join(", "))
        };
        println!(
            "  {:<14} {:<8} {}{notes}",
            lab.ns(&h.name),
            HOST_IFACE,
            addrs.join(" ")
        );
    }
    let ports: Vec<&str> = lab.spec().hosts.iter().map(|h| h.name.as_str()).collect();
    println!(
        "  {:<14} {:<8} ports {}",
        lab.switch_ns(),
        BRIDGE,
        ports.join(" ")
    );
    println!(
        "  bpffs: {}   logs: {}",
        lab.bpffs().display(),
        lab.log_dir().display()
    );
    println!("try:  ip netns exec {p}client ping -c1 {}", addr::WEB1);
    println!("      ip netns exec {p}lb bash");
    println!("down: cargo xtask lab down --prefix {p}");
}
