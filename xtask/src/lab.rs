//! The lab: real network namespaces on one machine, for the end-to-end tests, `cargo xtask run`,
//! `demo`, `bench` and `chaos`.
//!
//! Topology (standard): one switch namespace `{prefix}sw` with a bridge `br0`; every host
//! (`client`, `lb`, `web1`, `web2`, `db1`, `db2`) is a namespace `{prefix}{host}` whose `eth0`
//! is a veth whose peer, named `{host}`, is a port of `br0` in the switch namespace. Nothing is
//! created in the root namespace except the namespace files under /run/netns and the lab's
//! directory `/run/lb-lab/{prefix}` (a private bpffs + process logs). A host may instead sit
//! behind a router host ([`RouterLink`]): its `eth0` then pairs with a link in the router's
//! namespace, for paths with a hop (and a smaller MTU) between client and load balancer.
//!
//! Everything is done by shelling out to `ip`, `ethtool`, `sysctl` (inside namespaces via
//! `ip netns exec`), so errors name the command line and its stderr.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::util;

/// Prefix of the lab brought up by `cargo xtask lab up` / `run` / `demo` by default.
pub const DEFAULT_PREFIX: &str = "lbx-";
/// Every test lab prefix starts with this; `cargo xtask test` cleans `lbt-*` before and after.
pub const TEST_PREFIX: &str = "lbt-";
/// Parent of every lab's directory (`/run/lb-lab/{prefix}`): bpffs and logs.
pub const LAB_RUN_DIR: &str = "/run/lb-lab";
/// Name of the switch namespace suffix (`{prefix}sw`).
pub const SWITCH: &str = "sw";
/// The bridge inside the switch namespace.
pub const BRIDGE: &str = "br0";
/// The interface name of every host (inside its namespace).
pub const HOST_IFACE: &str = "eth0";

/// How long a lab command may run before it is killed (see [`Lab::exec_timeout`]).
pub const EXEC_TIMEOUT: Duration = util::DEFAULT_TIMEOUT;
/// Grace period between SIGTERM and SIGKILL at teardown.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// Host names of the standard lab.
pub mod host {
    pub const CLIENT: &str = "client";
    pub const LB: &str = "lb";
    pub const WEB1: &str = "web1";
    pub const WEB2: &str = "web2";
    pub const DB1: &str = "db1";
    pub const DB2: &str = "db2";
    /// Every host of the standard lab, in creation order.
    pub const ALL: [&str; 6] = [CLIENT, LB, WEB1, WEB2, DB1, DB2];
    /// The web backends.
    pub const WEBS: [&str; 2] = [WEB1, WEB2];
    /// The database backends (db1 starts as primary).
    pub const DBS: [&str; 2] = [DB1, DB2];
}

/// Addresses of the standard lab, so that tests, configs and the demo agree.
pub mod addr {
    pub const SUBNET_V4: &str = "10.99.0.0/24";
    pub const SUBNET_V6: &str = "fd99::/64";
    pub const PREFIX_LEN_V4: u8 = 24;
    pub const PREFIX_LEN_V6: u8 = 64;

    pub const CLIENT: &str = "10.99.0.10";
    pub const CLIENT_V6: &str = "fd99::10";
    /// The load balancer's own address (its XDP program sits on this NIC).
    pub const LB: &str = "10.99.0.2";
    pub const LB_V6: &str = "fd99::2";
    /// Source address of NAT-mode traffic from the load balancer to the backends.
    pub const LB_SNAT: &str = "10.99.0.3";
    pub const LB_SNAT_V6: &str = "fd99::3";
    pub const WEB1: &str = "10.99.0.11";
    pub const WEB1_V6: &str = "fd99::11";
    pub const WEB2: &str = "10.99.0.12";
    pub const WEB2_V6: &str = "fd99::12";
    pub const DB1: &str = "10.99.0.21";
    pub const DB1_V6: &str = "fd99::21";
    pub const DB2: &str = "10.99.0.22";
    pub const DB2_V6: &str = "fd99::22";

    /// HTTP service VIP (configured on the backends' `lo` for DSR).
    pub const VIP_HTTP: &str = "10.99.0.100";
    pub const VIP_HTTP_V6: &str = "fd99::100";
    /// Database writer VIP (the current primary).
    pub const VIP_DB_WRITE: &str = "10.99.0.101";
    /// Database reader VIP (the replicas).
    pub const VIP_DB_READ: &str = "10.99.0.102";

    /// The VIPs the web servers carry on `lo` (DSR backends of the web service).
    pub const WEB_LOOPBACK: [&str; 2] = ["10.99.0.100/32", "fd99::100/128"];
    /// The VIPs the database servers carry on `lo` (DSR backends of the database services).
    /// Only there: a web server with a database VIP on its own loopback would talk to itself.
    pub const DB_LOOPBACK: [&str; 2] = ["10.99.0.101/32", "10.99.0.102/32"];
    /// Every VIP: the load balancer holds them all, so it answers ARP/NDP for them.
    pub const ALL_VIPS: [&str; 4] = [
        "10.99.0.100/32",
        "fd99::100/128",
        "10.99.0.101/32",
        "10.99.0.102/32",
    ];
}

/// One host of the lab: a namespace with `eth0` on the switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    /// Short name, e.g. "client", "lb", "web1" (namespace `{prefix}{name}`, switch port `{name}`).
    pub name: String,
    /// IPv4 addresses of `eth0`, CIDR, e.g. "10.99.0.10/24".
    pub ipv4: Vec<String>,
    /// IPv6 addresses of `eth0`, CIDR, e.g. "fd99::10/64" (added without DAD).
    pub ipv6: Vec<String>,
    /// Extra addresses on `lo`, CIDR, e.g. the VIP "10.99.0.100/32" of a DSR backend.
    pub loopback_addrs: Vec<String>,
    /// `ethtool -K eth0 tx off`: packets a local socket sends over veth otherwise carry a
    /// partial checksum that is wrong once XDP forwards them.
    pub tx_checksum_off: bool,
    /// `arp_ignore=1`, `arp_announce=2` on `all` and `eth0`: the host must not answer ARP
    /// for the VIPs it carries on `lo`.
    pub dsr_backend: bool,
    /// Reached through a router host instead of the switch (`None`: on the switch).
    pub via: Option<RouterLink>,
}

/// The link of a host that sits behind a router: the host's `eth0` pairs with a link named
/// after the host in the router's namespace, and the host's default routes point at the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterLink {
    /// The router: a host on the switch, listed before this one. It forwards IPv4 and IPv6.
    pub router: String,
    /// The router's addresses on this link, CIDR (e.g. "10.97.0.1/24", "fd97::1/64").
    pub router_addrs: Vec<String>,
    /// MTU of the router's end only. The host's end keeps 1500, so the host announces the
    /// larger MSS and the router must answer bigger packets with "fragmentation needed" /
    /// "packet too big": a path MTU smaller than either end's own.
    pub router_mtu: Option<u32>,
}

impl HostSpec {
    /// A host with no addresses, TX checksum offload off, not a DSR backend.
    pub fn new(name: &str) -> Self {
        HostSpec {
            name: name.to_string(),
            ipv4: Vec::new(),
            ipv6: Vec::new(),
            loopback_addrs: Vec::new(),
            tx_checksum_off: true,
            dsr_backend: false,
            via: None,
        }
    }
}

/// A lab: a namespace prefix and its hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabSpec {
    /// Prepended to every namespace name; keep it short and ending in '-' ("lbx-", "lbt-fw-").
    /// Tests must use prefixes starting with [`TEST_PREFIX`].
    pub prefix: String,
    pub hosts: Vec<HostSpec>,
}

impl LabSpec {
    /// The seed infrastructure: client, lb, web1, web2, db1, db2 on one switch.
    pub fn standard(prefix: &str) -> LabSpec {
        let plain = |name: &str, v4: &[&str], v6: &[&str], tx_off: bool| HostSpec {
            name: name.to_string(),
            ipv4: v4.iter().map(|s| s.to_string()).collect(),
            ipv6: v6.iter().map(|s| s.to_string()).collect(),
            loopback_addrs: Vec::new(),
            tx_checksum_off: tx_off,
            dsr_backend: false,
            via: None,
        };
        let backend = |name: &str, v4: &str, v6: &str, vips: &[&str]| HostSpec {
            loopback_addrs: vips.iter().map(|s| s.to_string()).collect(),
            dsr_backend: true,
            ..plain(name, &[v4], &[v6], true)
        };
        LabSpec {
            prefix: prefix.to_string(),
            hosts: vec![
                plain(host::CLIENT, &["10.99.0.10/24"], &["fd99::10/64"], true),
                // The lb keeps TX checksum offload: its XDP program forwards, its sockets
                // (health checks, NAT source) talk to the backends directly.
                // The VIPs are local to the lb too, so it answers ARP/NDP for them and clients
                // send VIP traffic to its NIC, where the XDP program takes it. Linux answers
                // ARP for an IPv4 address on `lo`, but neighbour solicitations only for the
                // NIC's own addresses: the IPv6 VIP sits on `eth0`.
                HostSpec {
                    loopback_addrs: addr::ALL_VIPS
                        .iter()
                        .filter(|a| !a.contains(':'))
                        .map(|s| s.to_string())
                        .collect(),
                    ..plain(
                        host::LB,
                        &["10.99.0.2/24", "10.99.0.3/24"],
                        &["fd99::2/64", "fd99::3/64", "fd99::100/128"],
                        false,
                    )
                },
                backend(
                    host::WEB1,
                    "10.99.0.11/24",
                    "fd99::11/64",
                    &addr::WEB_LOOPBACK,
                ),
                backend(
                    host::WEB2,
                    "10.99.0.12/24",
                    "fd99::12/64",
                    &addr::WEB_LOOPBACK,
                ),
                backend(
                    host::DB1,
                    "10.99.0.21/24",
                    "fd99::21/64",
                    &addr::DB_LOOPBACK,
                ),
                backend(
                    host::DB2,
                    "10.99.0.22/24",
                    "fd99::22/64",
                    &addr::DB_LOOPBACK,
                ),
            ],
        }
    }

    /// Check names and lengths before anything is created.
    pub fn validate(&self) -> Result<()> {
        validate_prefix(&self.prefix)?;
        if self.hosts.is_empty() {
            bail!("lab spec {:?} has no hosts", self.prefix);
        }
        let mut seen = std::collections::HashSet::new();
        for h in &self.hosts {
            let n = &h.name;
            if n.is_empty()
                || n.len() > 15
                || !n
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                || !n.starts_with(|c: char| c.is_ascii_lowercase())
            {
                bail!("lab host name {n:?} must be 1-15 chars of [a-z0-9], starting with a letter (it names a switch port)");
            }
            if n == SWITCH || n == BRIDGE || n == "lo" {
                bail!("lab host name {n:?} is reserved");
            }
            if !seen.insert(n.clone()) {
                bail!("lab host name {n:?} appears twice");
            }
            let router_addrs = h.via.iter().flat_map(|v| &v.router_addrs);
            for a in h
                .ipv4
                .iter()
                .chain(&h.ipv6)
                .chain(&h.loopback_addrs)
                .chain(router_addrs)
            {
                if !a.contains('/') {
                    bail!("address {a:?} of lab host {n:?} must be CIDR (e.g. 10.99.0.10/24)");
                }
            }
            if let Some(via) = &h.via {
                // The router's end is created when the router exists: it must come first.
                let router = self.hosts.iter().find(|r| r.name == via.router);
                if !matches!(router, Some(r) if r.via.is_none() && seen.contains(&r.name) && r.name != *n)
                {
                    bail!(
                        "lab host {n:?} is behind router {:?}, which must be a host on the switch listed before it",
                        via.router
                    );
                }
            }
        }
        Ok(())
    }

    /// Namespace name of `host` (or of the switch for [`SWITCH`]).
    pub fn ns(&self, host: &str) -> String {
        format!("{}{}", self.prefix, host)
    }

    /// Every namespace of this lab, hosts first, switch last.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v: Vec<String> = self.hosts.iter().map(|h| self.ns(&h.name)).collect();
        v.push(self.ns(SWITCH));
        v
    }

    pub fn host(&self, name: &str) -> Option<&HostSpec> {
        self.hosts.iter().find(|h| h.name == name)
    }
}

fn validate_prefix(prefix: &str) -> Result<()> {
    if prefix.is_empty()
        || prefix.len() > 32
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("lab prefix {prefix:?} must be 1-32 chars of [A-Za-z0-9_-] (e.g. \"lbx-\")");
    }
    Ok(())
}

/// `/run/lb-lab/{prefix}`.
pub fn lab_dir(prefix: &str) -> PathBuf {
    Path::new(LAB_RUN_DIR).join(prefix)
}

struct Tracked {
    pid: u32,
    child: Child,
    host: String,
    log: PathBuf,
}

/// A running lab. Dropping it tears everything down (printing, not propagating, errors).
pub struct Lab {
    spec: LabSpec,
    dir: PathBuf,
    procs: Mutex<Vec<Tracked>>,
    torn_down: bool,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("prefix", &self.spec.prefix)
            .field("dir", &self.dir)
            .finish()
    }
}

/// `ip`, with a `PATH` that has the sbin directories (for `ip netns exec sysctl ...`) even
/// when the lab is used from a test run with a minimal `PATH`.
fn ip() -> Command {
    let mut cmd = Command::new("ip");
    cmd.env("PATH", util::path_with_cargo_bin());
    cmd
}

fn run_ok(cmd: &mut Command) -> Result<()> {
    util::output(cmd).map(|_| ())
}

impl Lab {
    /// Bring the lab up: clean whatever a crashed lab with this prefix left, then create the
    /// switch, the hosts, their links and addresses, and the private bpffs. On failure,
    /// everything created is torn down and the error returned. Needs root.
    pub fn up(spec: LabSpec) -> Result<Lab> {
        if !util::is_root() {
            bail!(
                "the lab needs root (network namespaces, veth pairs, a bpffs mount); \
                 run as root (e.g. `sudo -E cargo xtask ...`)"
            );
        }
        spec.validate()?;
        cleanup_stale(&spec.prefix)
            .with_context(|| format!("cleaning a stale lab with prefix {:?}", spec.prefix))?;
        let mut lab = Lab {
            dir: lab_dir(&spec.prefix),
            spec,
            procs: Mutex::new(Vec::new()),
            torn_down: false,
        };
        if let Err(e) = lab.build() {
            let errs = lab.teardown();
            for err in errs {
                eprintln!("lab: while tearing down a failed lab: {err:#}");
            }
            return Err(e.context(format!(
                "bringing up lab {:?} failed (what was created has been torn down)",
                lab.spec.prefix
            )));
        }
        Ok(lab)
    }

    fn build(&mut self) -> Result<()> {
        let spec = self.spec.clone();
        // Private bpffs: /sys/fs/bpf is invisible inside `ip netns exec` (it remounts /sys).
        let bpffs = self.bpffs();
        fs::create_dir_all(&bpffs).with_context(|| format!("creating {}", bpffs.display()))?;
        fs::create_dir_all(self.log_dir())
            .with_context(|| format!("creating {}", self.log_dir().display()))?;
        if !is_mountpoint(&bpffs) {
            run_ok(
                Command::new("mount")
                    .args(["-t", "bpf", "bpf"])
                    .arg(&bpffs)
                    .env("PATH", util::path_with_cargo_bin()),
            )?;
        }

        // The switch.
        let sw = spec.ns(SWITCH);
        run_ok(ip().args(["netns", "add", &sw]))?;
        // No IPv6 on the switch ports: they must not add their own RS/MLD noise to the wire.
        self.sysctl(
            SWITCH,
            &[
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ],
        )?;
        run_ok(ip().args(["-n", &sw, "link", "set", "dev", "lo", "up"]))?;
        // Plain learning switch: no STP, no multicast snooping (no querier here, so snooping
        // could starve IPv6 neighbour discovery), no netfilter on bridged frames.
        run_ok(ip().args([
            "-n",
            &sw,
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "stp_state",
            "0",
            "mcast_snooping",
            "0",
            "nf_call_iptables",
            "0",
            "nf_call_ip6tables",
            "0",
            "nf_call_arptables",
            "0",
        ]))?;
        run_ok(ip().args(["-n", &sw, "link", "set", "dev", BRIDGE, "up"]))?;

        for h in &spec.hosts {
            self.build_host(h)
                .with_context(|| format!("setting up lab host {:?}", h.name))?;
        }
        Ok(())
    }

    fn build_host(&self, h: &HostSpec) -> Result<()> {
        let ns = self.ns(&h.name);
        let sw = self.switch_ns();
        run_ok(ip().args(["netns", "add", &ns]))?;
        // Before any address exists: no duplicate address detection, so IPv6 addresses are
        // usable at once (addresses are also added with `nodad`).
        self.sysctl(
            &h.name,
            &[
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ],
        )?;
        run_ok(ip().args(["-n", &ns, "link", "set", "dev", "lo", "up"]))?;
        // Both ends are created directly in their namespaces: nothing ever exists in the root
        // namespace, so no name clashes with the machine's own links.
        let peer_ns = match &h.via {
            Some(via) => self.ns(&via.router),
            None => sw,
        };
        run_ok(ip().args([
            "link", "add", "name", HOST_IFACE, "netns", &ns, "type", "veth", "peer", "name",
            &h.name, "netns", &peer_ns,
        ]))?;
        match &h.via {
            Some(via) => self.build_router_end(h, via)?,
            None => {
                run_ok(ip().args([
                    "-n", &peer_ns, "link", "set", "dev", &h.name, "master", BRIDGE,
                ]))?;
                run_ok(ip().args(["-n", &peer_ns, "link", "set", "dev", &h.name, "up"]))?;
            }
        }
        if h.dsr_backend {
            self.sysctl(
                &h.name,
                &[
                    "net.ipv4.conf.all.arp_ignore=1",
                    "net.ipv4.conf.all.arp_announce=2",
                    "net.ipv4.conf.eth0.arp_ignore=1",
                    "net.ipv4.conf.eth0.arp_announce=2",
                ],
            )?;
        }
        for a in &h.ipv4 {
            run_ok(ip().args(["-n", &ns, "addr", "add", a, "dev", HOST_IFACE]))?;
        }
        for a in &h.ipv6 {
            run_ok(ip().args(["-n", &ns, "addr", "add", a, "dev", HOST_IFACE, "nodad"]))?;
        }
        for a in &h.loopback_addrs {
            let mut cmd = ip();
            cmd.args(["-n", &ns, "addr", "add", a, "dev", "lo"]);
            if a.contains(':') {
                cmd.arg("nodad");
            }
            run_ok(&mut cmd)?;
        }
        run_ok(ip().args(["-n", &ns, "link", "set", "dev", HOST_IFACE, "up"]))?;
        if h.tx_checksum_off {
            self.exec(&h.name, &["ethtool", "-K", HOST_IFACE, "tx", "off"])?;
        }
        if let Some(via) = &h.via {
            for a in &via.router_addrs {
                let gateway = a.split('/').next().unwrap_or(a);
                let family = if a.contains(':') { "-6" } else { "-4" };
                run_ok(ip().args([family, "-n", &ns, "route", "add", "default", "via", gateway]))?;
            }
        }
        Ok(())
    }

    /// The router's end of a routed host's link: its addresses and MTU, and forwarding on.
    fn build_router_end(&self, h: &HostSpec, via: &RouterLink) -> Result<()> {
        let router_ns = self.ns(&via.router);
        self.sysctl(
            &via.router,
            &["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"],
        )?;
        if let Some(mtu) = via.router_mtu {
            let mtu = mtu.to_string();
            run_ok(ip().args(["-n", &router_ns, "link", "set", "dev", &h.name, "mtu", &mtu]))?;
        }
        for a in &via.router_addrs {
            let mut cmd = ip();
            cmd.args(["-n", &router_ns, "addr", "add", a, "dev", &h.name]);
            if a.contains(':') {
                cmd.arg("nodad");
            }
            run_ok(&mut cmd)?;
        }
        run_ok(ip().args(["-n", &router_ns, "link", "set", "dev", &h.name, "up"]))
    }

    fn sysctl(&self, host: &str, settings: &[&str]) -> Result<()> {
        let mut args = vec!["sysctl", "-q", "-w"];
        args.extend_from_slice(settings);
        self.exec(host, &args[..]).map(|_| ())
    }

    /// The spec the lab was built from.
    pub fn spec(&self) -> &LabSpec {
        &self.spec
    }

    pub fn prefix(&self) -> &str {
        &self.spec.prefix
    }

    /// Full namespace name of `host` (`{prefix}{host}`); `SWITCH` gives the switch namespace.
    pub fn ns(&self, host: &str) -> String {
        self.spec.ns(host)
    }

    /// The switch namespace (`{prefix}sw`).
    pub fn switch_ns(&self) -> String {
        self.spec.ns(SWITCH)
    }

    /// The switch side of `host`'s veth: (namespace, interface). XDP_TX/REDIRECT out of a veth
    /// needs an XDP program on this peer (a trivial XDP_PASS is enough).
    pub fn switch_port(&self, host: &str) -> (String, String) {
        (self.switch_ns(), host.to_string())
    }

    /// `/run/lb-lab/{prefix}`.
    pub fn dir(&self) -> PathBuf {
        self.dir.clone()
    }

    /// The lab's private bpffs (`/run/lb-lab/{prefix}/bpffs`), visible inside `ip netns exec`.
    pub fn bpffs(&self) -> PathBuf {
        self.dir.join("bpffs")
    }

    /// Where [`Lab::spawn`] writes process logs.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// Path of the log file `name` (as given to [`Lab::spawn`]).
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir().join(name)
    }

    /// The contents of log `name` ("" if missing).
    pub fn read_log(&self, name: &str) -> String {
        fs::read(self.log_path(name))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn netns_exec(&self, host: &str, args: &[impl AsRef<OsStr>]) -> Command {
        let mut cmd = ip();
        cmd.args(["netns", "exec"]).arg(self.ns(host)).args(args);
        cmd
    }

    /// Run `args` inside `host`'s namespace and wait; error (with the command line and its
    /// stderr) unless it exits 0. Bounded by [`EXEC_TIMEOUT`].
    pub fn exec(&self, host: &str, args: &[impl AsRef<OsStr>]) -> Result<Output> {
        self.exec_timeout(host, args, EXEC_TIMEOUT)
    }

    /// Like [`Lab::exec`] with an explicit time bound.
    pub fn exec_timeout(
        &self,
        host: &str,
        args: &[impl AsRef<OsStr>],
        timeout: Duration,
    ) -> Result<Output> {
        let mut cmd = self.netns_exec(host, args);
        let out = util::output_timeout(&mut cmd, timeout)?;
        util::check(&cmd, out)
    }

    /// Run `args` inside `host`'s namespace; returns the output whatever the exit status
    /// (fails only if it cannot be started or exceeds [`EXEC_TIMEOUT`]).
    pub fn exec_unchecked(&self, host: &str, args: &[impl AsRef<OsStr>]) -> Result<Output> {
        let mut cmd = self.netns_exec(host, args);
        util::output_timeout(&mut cmd, EXEC_TIMEOUT)
    }

    /// stdout of [`Lab::exec`], trimmed.
    pub fn exec_stdout(&self, host: &str, args: &[impl AsRef<OsStr>]) -> Result<String> {
        let out = self.exec(host, args)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Start `args` in the background inside `host`'s namespace, stdout and stderr appended
    /// to `log_dir()/log`. The process is tracked: teardown stops it (SIGTERM, up to 3 s,
    /// SIGKILL). Returns its pid (`ip netns exec` execs the program, so it is the program's).
    pub fn spawn(&self, host: &str, args: &[impl AsRef<OsStr>], log: &str) -> Result<u32> {
        self.spawn_env(host, args, &[] as &[(&str, &str)], log)
    }

    /// [`Lab::spawn`] with extra environment variables.
    pub fn spawn_env(
        &self,
        host: &str,
        args: &[impl AsRef<OsStr>],
        envs: &[(impl AsRef<OsStr>, impl AsRef<OsStr>)],
        log: &str,
    ) -> Result<u32> {
        if self.torn_down {
            bail!("lab {:?} is down", self.spec.prefix);
        }
        if args.is_empty() {
            bail!("Lab::spawn: empty command");
        }
        if log.is_empty() || log.contains('/') {
            bail!("Lab::spawn: log name {log:?} must be a plain file name");
        }
        if self.spec.host(host).is_none() && host != SWITCH {
            bail!("Lab::spawn: no host {host:?} in lab {:?}", self.spec.prefix);
        }
        let path = self.log_path(log);
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening log {}", path.display()))?;
        let mut cmd = self.netns_exec(host, args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let line = util::cmd_line(&cmd);
        let _ = writeln!(file, "=== lab spawn: {line}");
        let err_file = file.try_clone().context("duplicating a log file handle")?;
        cmd.stdin(Stdio::null()).stdout(file).stderr(err_file);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{line}`"))?;
        let pid = child.id();
        self.procs().push(Tracked {
            pid,
            child,
            host: host.to_string(),
            log: path,
        });
        Ok(pid)
    }

    fn procs(&self) -> MutexGuard<'_, Vec<Tracked>> {
        self.procs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pids of the tracked processes still running.
    pub fn running(&self) -> Vec<u32> {
        let mut procs = self.procs();
        procs
            .iter_mut()
            .filter_map(|t| matches!(t.child.try_wait(), Ok(None)).then_some(t.pid))
            .collect()
    }

    /// True while `pid` runs (tracked processes are reaped here; others checked in /proc).
    pub fn is_running(&self, pid: u32) -> bool {
        let mut procs = self.procs();
        match procs.iter_mut().find(|t| t.pid == pid) {
            Some(t) => matches!(t.child.try_wait(), Ok(None)),
            None => util::process_alive(pid),
        }
    }

    /// Send a signal (e.g. `libc::SIGKILL` for a crash, `libc::SIGHUP`) to a process without
    /// untracking it. False if the signal could not be sent.
    pub fn signal(&self, pid: u32, signal: i32) -> bool {
        util::signal(pid, signal)
    }

    /// Stop a process started by [`Lab::spawn`]: SIGTERM, wait up to 3 s, SIGKILL; untrack it.
    /// Returns its exit status as text (for messages).
    pub fn stop(&self, pid: u32) -> Result<String> {
        let tracked = {
            let mut procs = self.procs();
            let Some(i) = procs.iter().position(|t| t.pid == pid) else {
                bail!("Lab::stop: pid {pid} was not started by this lab");
            };
            procs.remove(i)
        };
        let mut remaining = stop_children(vec![tracked]);
        match remaining.pop() {
            Some((_, status)) => Ok(status),
            None => Ok("stopped".to_string()),
        }
    }

    /// MAC address of `host`'s eth0.
    pub fn mac(&self, host: &str) -> Result<String> {
        self.exec_stdout(
            host,
            &["cat", &format!("/sys/class/net/{HOST_IFACE}/address")],
        )
    }

    /// Tear everything down; returns an error summarising what failed (all steps are tried).
    pub fn down(mut self) -> Result<()> {
        let errs = self.teardown();
        if errs.is_empty() {
            Ok(())
        } else {
            let msgs: Vec<String> = errs.iter().map(|e| format!("{e:#}")).collect();
            bail!("lab {:?} teardown: {}", self.spec.prefix, msgs.join("; "))
        }
    }

    /// Leave the lab running after this value is gone (for `cargo xtask lab up`); tracked
    /// processes keep running. `cleanup_stale(prefix)` / `cargo xtask lab down` removes it.
    pub fn detach(mut self) {
        // Dropping a `Child` neither kills nor waits for it.
        self.procs().clear();
        self.torn_down = true;
    }

    fn dump_logs(&self) {
        let Ok(entries) = fs::read_dir(self.log_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let text = fs::read(e.path())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!(
                "----- lab log {} (last {} lines) -----",
                e.path().display(),
                tail.len()
            );
            for l in tail {
                eprintln!("{l}");
            }
        }
    }

    /// Idempotent teardown; never panics. Returns the errors met.
    fn teardown(&mut self) -> Vec<anyhow::Error> {
        if self.torn_down {
            return Vec::new();
        }
        self.torn_down = true;
        if std::thread::panicking() {
            self.dump_logs();
        }
        let mut errs = Vec::new();
        let procs = std::mem::take(&mut *self.procs());
        for (pid, status) in stop_children(procs) {
            if status == "still running" {
                errs.push(anyhow::anyhow!(
                    "process {pid} of lab {:?} survived SIGKILL",
                    self.prefix()
                ));
            }
        }
        let wanted = self.spec.namespaces();
        match list_namespaces() {
            Ok(existing) => {
                let ours: Vec<String> = wanted
                    .into_iter()
                    .filter(|n| existing.contains(n))
                    .collect();
                errs.extend(remove_namespaces(&ours));
            }
            Err(e) => {
                errs.push(e);
                errs.extend(remove_namespaces(&wanted));
            }
        }
        if let Err(e) = remove_lab_dir(&self.dir) {
            errs.push(e);
        }
        errs
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for e in self.teardown() {
            eprintln!("lab: teardown of {:?}: {e:#}", self.spec.prefix);
        }
    }
}

/// Stop tracked children: SIGTERM, wait up to [`STOP_GRACE`], SIGKILL, reap. Returns
/// (pid, exit status text) for each.
fn stop_children(mut procs: Vec<Tracked>) -> Vec<(u32, String)> {
    for t in procs.iter_mut() {
        if matches!(t.child.try_wait(), Ok(None)) {
            util::signal(t.pid, libc::SIGTERM);
        }
    }
    let all_done = |procs: &mut Vec<Tracked>| {
        procs
            .iter_mut()
            .all(|t| !matches!(t.child.try_wait(), Ok(None)))
    };
    if !util::wait_until(STOP_GRACE, Duration::from_millis(10), || {
        all_done(&mut procs)
    }) {
        for t in procs.iter_mut() {
            if matches!(t.child.try_wait(), Ok(None)) {
                eprintln!(
                    "lab: pid {} on {} ignored SIGTERM for {STOP_GRACE:?}; SIGKILL (log {})",
                    t.pid,
                    t.host,
                    t.log.display()
                );
                let _ = t.child.kill();
            }
        }
        util::wait_until(Duration::from_secs(2), Duration::from_millis(10), || {
            all_done(&mut procs)
        });
    }
    procs
        .iter_mut()
        .map(|t| {
            let status = match t.child.try_wait() {
                Ok(Some(s)) => s.to_string(),
                _ => "still running".to_string(),
            };
            (t.pid, status)
        })
        .collect()
}

/// Names of all named network namespaces (`ip netns list`).
pub fn list_namespaces() -> Result<Vec<String>> {
    let text = util::stdout_of(ip().args(["netns", "list"]))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Named network namespaces whose name starts with `prefix`.
pub fn namespaces_with_prefix(prefix: &str) -> Result<Vec<String>> {
    Ok(list_namespaces()?
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect())
}

/// Kill every process in the namespaces, then delete them. Returns the errors met.
fn remove_namespaces(names: &[String]) -> Vec<anyhow::Error> {
    let mut errs = Vec::new();
    let mut pids = Vec::new();
    for ns in names {
        match util::stdout_of(ip().args(["netns", "pids", ns])) {
            Ok(text) => pids.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            ),
            Err(e) => errs.push(e),
        }
    }
    let left = util::terminate_pids(&pids, STOP_GRACE);
    if !left.is_empty() {
        errs.push(anyhow::anyhow!(
            "processes {left:?} in lab namespaces survived SIGKILL"
        ));
    }
    for ns in names {
        if let Err(e) = run_ok(ip().args(["netns", "del", ns])) {
            errs.push(e);
        }
    }
    errs
}

/// Mount points at or below `dir` (from /proc/self/mountinfo), deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mount(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    v.dedup();
    v
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn is_mountpoint(dir: &Path) -> bool {
    mounts_under(dir).iter().any(|m| m == dir)
}

/// Unmount everything under `dir`, then remove it (and /run/lb-lab if it is then empty).
fn remove_lab_dir(dir: &Path) -> Result<()> {
    for m in mounts_under(dir) {
        let mut cmd = Command::new("umount");
        cmd.arg(&m).env("PATH", util::path_with_cargo_bin());
        if let Err(e) = run_ok(&mut cmd) {
            // Still busy (a process we could not kill): detach it lazily.
            run_ok(
                Command::new("umount")
                    .arg("-l")
                    .arg(&m)
                    .env("PATH", util::path_with_cargo_bin()),
            )
            .with_context(|| format!("after: {e:#}"))?;
        }
    }
    if !mounts_under(dir).is_empty() {
        bail!("{} still has mounts; not removing it", dir.display());
    }
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let _ = fs::remove_dir(LAB_RUN_DIR); // only succeeds when empty
    Ok(())
}

/// Remove everything a killed lab with this prefix left behind: the processes in and the
/// namespaces whose name starts with `prefix`, and `/run/lb-lab/{prefix}*` (bpffs mounts
/// included). Idempotent. `cleanup_stale("lbt-")` removes every test lab.
pub fn cleanup_stale(prefix: &str) -> Result<()> {
    validate_prefix(prefix)?;
    let namespaces = namespaces_with_prefix(prefix)?;
    let dirs: Vec<PathBuf> = match fs::read_dir(LAB_RUN_DIR) {
        Ok(entries) => entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .map(|e| e.path())
            .collect(),
        Err(_) => Vec::new(),
    };
    if namespaces.is_empty() && dirs.is_empty() {
        return Ok(());
    }
    if !util::is_root() {
        bail!(
            "a stale lab with prefix {prefix:?} exists (namespaces {namespaces:?}, dirs {dirs:?}) \
             and removing it needs root"
        );
    }
    let mut errs: Vec<String> = remove_namespaces(&namespaces)
        .iter()
        .map(|e| format!("{e:#}"))
        .collect();
    for d in &dirs {
        if let Err(e) = remove_lab_dir(d) {
            errs.push(format!("{e:#}"));
        }
    }
    if !errs.is_empty() {
        bail!("cleaning stale lab {prefix:?}: {}", errs.join("; "));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// `cargo xtask lab up|down|status`

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

fn print_lab(lab: &Lab) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_spec_is_valid_and_matches_addr_consts() {
        let spec = LabSpec::standard(DEFAULT_PREFIX);
        spec.validate().expect("standard spec validates");
        let names: Vec<&str> = spec.hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, host::ALL);
        let lb = spec.host(host::LB).expect("lb");
        assert!(!lb.tx_checksum_off);
        assert!(lb.ipv4.contains(&format!("{}/24", addr::LB_SNAT)));
        let web1 = spec.host(host::WEB1).expect("web1");
        assert!(web1.dsr_backend && web1.tx_checksum_off);
        assert!(web1
            .loopback_addrs
            .contains(&format!("{}/32", addr::VIP_HTTP)));
        assert!(web1.ipv6.contains(&format!("{}/64", addr::WEB1_V6)));
        for ns in spec.namespaces() {
            assert!(ns.starts_with(DEFAULT_PREFIX));
        }
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(validate_prefix("").is_err());
        assert!(validate_prefix("a/b").is_err());
        let mut spec = LabSpec::standard("lbt-x-");
        spec.hosts.push(HostSpec::new("web1"));
        assert!(spec.validate().is_err());
        let mut spec = LabSpec::standard("lbt-x-");
        spec.hosts[0].name = "averyveryverylongname".into();
        assert!(spec.validate().is_err());
        assert!(cleanup_stale("").is_err());
        // A routed host's router must be a switch host listed before it.
        let mut spec = LabSpec::standard("lbt-x-");
        let mut far = HostSpec::new("far");
        far.via = Some(RouterLink {
            router: "router".into(),
            router_addrs: vec!["10.97.0.1/24".into()],
            router_mtu: None,
        });
        spec.hosts.push(far.clone());
        assert!(spec.validate().is_err(), "router missing");
        spec.hosts.push(HostSpec::new("router"));
        assert!(spec.validate().is_err(), "router listed after");
        spec.hosts.retain(|h| h.name != "far");
        spec.hosts.push(far);
        assert!(spec.validate().is_ok());
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mount(r"/run/a\040b"), "/run/a b");
        assert_eq!(unescape_mount(r"/plain"), "/plain");
        assert_eq!(unescape_mount(r"/x\\"), r"/x\\");
    }
}
