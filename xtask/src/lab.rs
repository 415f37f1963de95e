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
//!
//! `lab/spec.rs` describes a lab (hosts, addresses, links), this file brings one up, runs
//! commands and processes in it and tears it down, `lab/cleanup.rs` removes what a crashed run
//! left, `lab/cli.rs` is `cargo xtask lab`.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::util;

mod cleanup;
mod cli;
mod spec;

use self::cleanup::{is_mountpoint, remove_lab_dir, remove_namespaces};
pub use self::{
    cleanup::{cleanup_stale, list_namespaces, namespaces_with_prefix},
    cli::{cli, LabArgs, LabCmd},
    spec::*,
};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::cleanup::unescape_mount;

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
