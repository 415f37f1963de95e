//! `cargo xtask setup`: make this machine able to build, run and test the project.
//! Idempotent, and fast (no network, no apt-get update) when everything is present.
//!
//! Items: Debian packages, nightly `rust-src`, `bpf-linker` 0.13.0 (built against the
//! nightly's own LLVM), bpffs at /sys/fs/bpf, a `kernel.bpf_stats_enabled` check, and the
//! fuzzers of `cargo xtask chaos`: schemathesis (PyPI, in a venv) and cargo-fuzz.
//! Without root, the toolchain items are still done and the rest is reported as skipped.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util;

/// Debian packages the project uses (tests, lab, demo, benchmarks).
pub const PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "ethtool",
    "bpftool",
    "xdp-tools",
    "tcpdump",
    "wrk",
    "haproxy",
    "nginx-light",
    "curl",
    "mariadb-server",
    "mariadb-client",
    "netsniff-ng",
    "nftables",
    "procps",
    "python3",
    // The venv of the API fuzzer (schemathesis, from PyPI).
    "python3-venv",
    "psmisc",
    // The dashboard's browser test and its README screenshot (headless, driven over WebDriver).
    "chromium",
    "chromium-driver",
    // A font for the headless browser's screenshots (chromium only recommends one).
    "fonts-dejavu-core",
];

/// The bpf-linker version the project builds with.
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// The API fuzzer of `cargo xtask chaos`, from PyPI into [`venv_dir`].
pub const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// cargo-fuzz, for the config-parser fuzz target of `cargo xtask chaos` (`fuzz/`).
pub const CARGO_FUZZ_VERSION: &str = "0.13.1";

/// Services the packages above install and may start: (service name, process names).
/// We run our own instances inside the lab namespaces, never the system ones.
const SERVICES: &[(&str, &[&str])] = &[
    ("nginx", &["nginx"]),
    ("haproxy", &["haproxy"]),
    ("mariadb", &["mariadbd", "mysqld"]),
];

const POLICY_RC: &str = "/usr/sbin/policy-rc.d";
const BPFFS: &str = "/sys/fs/bpf";

fn say(item: &str, state: &str) {
    println!("setup: {item} {state}");
}

/// Run every setup item. Errors only for what should have worked (a failed install or
/// build); what needs root when not root is reported and skipped.
pub fn run() -> Result<()> {
    util::ensure_cargo_bin_on_path();
    let root = util::is_root();
    let mut skipped: Vec<String> = Vec::new();

    packages(root, &mut skipped).context("setup: Debian packages")?;
    let sysroot = nightly_sysroot()?;
    rust_src(&sysroot).context("setup: rust-src for nightly")?;
    bpf_linker(&sysroot).context("setup: bpf-linker")?;
    bpffs(root, &mut skipped).context("setup: bpffs")?;
    bpf_stats();
    schemathesis().context("setup: schemathesis (API fuzzer)")?;
    cargo_fuzz().context("setup: cargo-fuzz")?;

    if !skipped.is_empty() {
        println!("setup: NOT ROOT, could not do:");
        for s in &skipped {
            println!("setup:   - {s}");
        }
        println!("setup: run `sudo -E env PATH=\"$PATH\" cargo xtask setup` as root to finish");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Debian packages

/// Packages of `wanted` not in state "install ok installed" (one dpkg-query call).
pub fn missing_packages(wanted: &[&str]) -> Vec<String> {
    let mut cmd = Command::new("dpkg-query");
    cmd.args(["-W", "-f=${Package} ${Status}\n"]).args(wanted);
    // Exit status is 1 when some package is unknown; the known ones are still printed.
    let out = match util::output_unchecked(&mut cmd) {
        Ok(out) => out,
        Err(_) => return wanted.iter().map(|s| s.to_string()).collect(),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = text
        .lines()
        .filter(|l| l.ends_with("install ok installed"))
        .filter_map(|l| l.split_whitespace().next())
        .map(|p| p.split(':').next().unwrap_or(p)) // strip an ":amd64" arch qualifier
        .collect();
    wanted
        .iter()
        .filter(|p| !installed.contains(p))
        .map(|s| s.to_string())
        .collect()
}

fn packages(root: bool, skipped: &mut Vec<String>) -> Result<()> {
    let missing = missing_packages(PACKAGES);
    if missing.is_empty() {
        say("debian packages", "ok (present)");
        return Ok(());
    }
    if !root {
        say(
            "debian packages",
            &format!("MISSING (needs root to install): {}", missing.join(" ")),
        );
        skipped.push(format!("install packages: {}", missing.join(" ")));
        return Ok(());
    }
    say(
        "debian packages",
        &format!("installing: {}", missing.join(" ")),
    );
    let running_before: Vec<&str> = SERVICES
        .iter()
        .filter(|(_, procs)| any_process_named(procs))
        .map(|(svc, _)| *svc)
        .collect();
    {
        // Keep maintainer scripts from starting nginx/haproxy/mariadb (invoke-rc.d and
        // deb-systemd-invoke honour policy-rc.d), unless the machine already has a policy.
        let _policy = PolicyRcGuard::install()?;
        let apt = |args: &[&str]| {
            let mut cmd = Command::new("apt-get");
            cmd.args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .env("NEEDRESTART_MODE", "l")
                .stdin(std::process::Stdio::null());
            util::run(&mut cmd)
        };
        apt(&["-q", "update"])?;
        let mut args = vec!["-q", "install", "-y", "--no-install-recommends"];
        args.extend(missing.iter().map(String::as_str));
        apt(&args)?;
    }
    stop_new_services(&running_before);
    let still = missing_packages(PACKAGES);
    if !still.is_empty() {
        bail!(
            "still not installed after apt-get install: {}",
            still.join(" ")
        );
    }
    say(
        "debian packages",
        &format!("installed ({})", missing.join(" ")),
    );
    Ok(())
}

/// Writes a deny-all policy-rc.d for its lifetime if none exists.
struct PolicyRcGuard {
    created: bool,
}

impl PolicyRcGuard {
    fn install() -> Result<PolicyRcGuard> {
        if Path::new(POLICY_RC).exists() {
            return Ok(PolicyRcGuard { created: false });
        }
        fs::write(
            POLICY_RC,
            "#!/bin/sh\n# Written by `cargo xtask setup` for the duration of apt-get install:\n\
             # do not start services (the project runs its own instances in namespaces).\nexit 101\n",
        )
        .with_context(|| format!("writing {POLICY_RC}"))?;
        fs::set_permissions(POLICY_RC, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {POLICY_RC}"))?;
        Ok(PolicyRcGuard { created: true })
    }
}

impl Drop for PolicyRcGuard {
    fn drop(&mut self) {
        if self.created {
            if let Err(e) = fs::remove_file(POLICY_RC) {
                eprintln!("setup: could not remove {POLICY_RC}: {e}");
            }
        }
    }
}

/// True if a process whose command name is one of `names` runs (reads /proc: works before
/// procps is installed).
fn any_process_named(names: &[&str]) -> bool {
    let Ok(entries) = fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|e| {
        let is_pid = e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit());
        is_pid
            && fs::read_to_string(e.path().join("comm"))
                .map(|c| names.contains(&c.trim()))
                .unwrap_or(false)
    })
}

/// Stop the system services the install started (those that were not running before).
fn stop_new_services(running_before: &[&str]) {
    let systemd = Path::new("/run/systemd/system").exists();
    for (svc, procs) in SERVICES {
        if running_before.contains(svc) || !any_process_named(procs) {
            continue;
        }
        let mut cmd = if systemd {
            let mut c = Command::new("systemctl");
            c.args(["stop", svc]);
            c
        } else {
            let mut c = Command::new("service");
            c.args([*svc, "stop"]);
            c
        };
        match util::output(&mut cmd) {
            Ok(_) => say(
                &format!("system service {svc}"),
                "stopped (the lab runs its own)",
            ),
            Err(e) => eprintln!("setup: WARNING: could not stop system service {svc}: {e:#}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Rust toolchain

/// `rustc +nightly --print sysroot`.
pub fn nightly_sysroot() -> Result<PathBuf> {
    let mut cmd = Command::new("rustc");
    cmd.args(["+nightly", "--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN");
    let out = util::stdout_of(&mut cmd).context(
        "the `nightly` Rust toolchain is needed to build the XDP program \
         (install it with `rustup toolchain install nightly`)",
    )?;
    Ok(PathBuf::from(out))
}

fn rust_src(sysroot: &Path) -> Result<()> {
    let core = sysroot.join("lib/rustlib/src/rust/library/core");
    if core.is_dir() {
        say("rust-src (nightly)", "ok (present)");
        return Ok(());
    }
    util::run(
        Command::new("rustup")
            .args(["component", "add", "rust-src", "--toolchain", "nightly"])
            .env_remove("RUSTUP_TOOLCHAIN"),
    )?;
    if !core.is_dir() {
        bail!(
            "rustup added rust-src but {} is still missing",
            core.display()
        );
    }
    say("rust-src (nightly)", "installed");
    Ok(())
}

/// Where the LLVM prefix for building bpf-linker lives: stable, outside `target/`, because
/// the bpf-linker binary's RUNPATH points into it.
pub fn llvm_prefix() -> Result<PathBuf> {
    let home = util::home_dir().context("HOME is not set")?;
    Ok(home.join(".local/share/lb-toolchain/llvm"))
}

/// The bpf-linker to use and its `--version` output, if one of the right version runs.
fn working_bpf_linker() -> Option<(PathBuf, String)> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(bin) = util::cargo_bin_dir() {
        candidates.push(bin.join("bpf-linker"));
    }
    candidates.push(PathBuf::from("bpf-linker")); // from PATH
    candidates.into_iter().find_map(|c| {
        let out = util::output(Command::new(&c).arg("--version")).ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        text.split_whitespace()
            .any(|w| w == BPF_LINKER_VERSION)
            .then_some((c, text))
    })
}

/// The nightly's own LLVM shared library (`libLLVM.so.<ver>-rust-...`), not the tiny
/// `libLLVM-NN-rust-*.so` linker script next to it.
fn nightly_libllvm(sysroot: &Path) -> Result<PathBuf> {
    let lib = sysroot.join("lib");
    let mut found: Vec<PathBuf> = fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().starts_with("libLLVM.so."))
                .unwrap_or(false)
        })
        .filter(|p| is_elf(p))
        .collect();
    found.sort();
    match found.pop() {
        Some(p) => Ok(p),
        None => bail!(
            "no libLLVM.so.* shared library in {} (is the nightly toolchain complete?)",
            lib.display()
        ),
    }
}

fn is_elf(p: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    fs::File::open(p)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map(|_| &magic == b"\x7fELF")
        .unwrap_or(false)
}

/// Point `P/lib/libLLVM.so` and `P/lib/<soname>` at the nightly's libLLVM; drop stale ones.
fn llvm_symlinks(prefix: &Path, libllvm: &Path) -> Result<()> {
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let soname = libllvm
        .file_name()
        .context("libLLVM path has no file name")?;
    // Everything libLLVM* in P/lib is ours: remove it (a stale soname from an older nightly
    // included), then link both names to the current file.
    for entry in fs::read_dir(&lib)?.flatten() {
        let n = entry.file_name().to_string_lossy().into_owned();
        if n == "libLLVM.so" || n.starts_with("libLLVM.so.") {
            fs::remove_file(entry.path())
                .with_context(|| format!("removing {}", entry.path().display()))?;
        }
    }
    for name in [std::ffi::OsStr::new("libLLVM.so"), soname] {
        let link = lib.join(name);
        std::os::unix::fs::symlink(libllvm, &link)
            .with_context(|| format!("symlinking {} -> {}", link.display(), libllvm.display()))?;
    }
    Ok(())
}

fn bpf_linker(sysroot: &Path) -> Result<()> {
    if let Some((_, version)) = working_bpf_linker() {
        say("bpf-linker", &format!("ok (present: {version})"));
        return Ok(());
    }
    let prefix = llvm_prefix()?;
    let libllvm = nightly_libllvm(sysroot)?;
    llvm_symlinks(&prefix, &libllvm)?;
    say(
        "bpf-linker",
        &format!(
            "building {BPF_LINKER_VERSION} against {} (about a minute)...",
            libllvm.display()
        ),
    );
    let mut cmd = Command::new("cargo");
    cmd.args([
        "+stable",
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--no-default-features",
        "--features",
        "llvm-22",
        "--force",
    ])
    .env("LLVM_PREFIX", &prefix)
    .env_remove("RUSTUP_TOOLCHAIN")
    .stdin(std::process::Stdio::null());
    util::run(&mut cmd)?;
    match working_bpf_linker() {
        Some((path, version)) => {
            say(
                "bpf-linker",
                &format!("installed ({version}, {})", path.display()),
            );
            Ok(())
        }
        None => bail!(
            "`cargo install bpf-linker` finished but `bpf-linker --version` does not run or \
             is not {BPF_LINKER_VERSION} (LLVM prefix {})",
            prefix.display()
        ),
    }
}

// ---------------------------------------------------------------------------------------
// Fuzzers of `cargo xtask chaos`

/// The Python venv the project's Python tools are installed into (kept between runs).
pub fn venv_dir() -> Result<PathBuf> {
    let home = util::home_dir().context("HOME is not set")?;
    Ok(home.join(".local/share/lb-toolchain/venv"))
}

/// The `schemathesis` command of the venv, when the pinned version runs.
pub fn working_schemathesis() -> Option<PathBuf> {
    let bin = venv_dir().ok()?.join("bin/schemathesis");
    let out = util::output(Command::new(&bin).arg("--version")).ok()?;
    String::from_utf8_lossy(&out.stdout)
        .contains(SCHEMATHESIS_VERSION)
        .then_some(bin)
}

fn schemathesis() -> Result<()> {
    if let Some(bin) = working_schemathesis() {
        say(
            "schemathesis",
            &format!("ok (present: {SCHEMATHESIS_VERSION}, {})", bin.display()),
        );
        return Ok(());
    }
    let venv = venv_dir()?;
    // Debian's interpreter (python3-venv above) when there is one; else whatever python3 is.
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    if !venv.join("bin/pip").exists() {
        say(
            "schemathesis",
            &format!("creating the venv {}", venv.display()),
        );
        util::run(Command::new(python).args(["-m", "venv"]).arg(&venv))?;
    }
    say(
        "schemathesis",
        &format!("installing {SCHEMATHESIS_VERSION} from PyPI (about a minute)..."),
    );
    let mut pip = Command::new(venv.join("bin/pip"));
    pip.args([
        "install",
        "--disable-pip-version-check",
        "--quiet",
        &format!("schemathesis=={SCHEMATHESIS_VERSION}"),
    ])
    .stdin(std::process::Stdio::null());
    util::output_timeout(&mut pip, std::time::Duration::from_secs(600))
        .and_then(|out| util::check(&pip, out))?;
    match working_schemathesis() {
        Some(bin) => {
            say("schemathesis", &format!("installed ({})", bin.display()));
            Ok(())
        }
        None => bail!(
            "pip installed schemathesis=={SCHEMATHESIS_VERSION} into {} but it does not run",
            venv.display()
        ),
    }
}

/// True when `cargo fuzz` runs and is the pinned version.
pub fn working_cargo_fuzz() -> bool {
    util::output(Command::new("cargo").args(["fuzz", "--version"]))
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(CARGO_FUZZ_VERSION))
}

fn cargo_fuzz() -> Result<()> {
    if working_cargo_fuzz() {
        say("cargo-fuzz", &format!("ok (present: {CARGO_FUZZ_VERSION})"));
        return Ok(());
    }
    say(
        "cargo-fuzz",
        &format!("installing {CARGO_FUZZ_VERSION} (about a minute)..."),
    );
    let mut cmd = Command::new("cargo");
    cmd.args([
        "+stable",
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
        "--force",
    ])
    .env_remove("RUSTUP_TOOLCHAIN")
    .stdin(std::process::Stdio::null());
    util::run(&mut cmd)?;
    if !working_cargo_fuzz() {
        bail!("`cargo install cargo-fuzz` finished but `cargo fuzz --version` is not {CARGO_FUZZ_VERSION}");
    }
    say("cargo-fuzz", "installed");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Kernel

fn bpffs(root: bool, skipped: &mut Vec<String>) -> Result<()> {
    if util::succeeds(Command::new("mountpoint").args(["-q", BPFFS])) {
        say("bpffs", &format!("ok (present at {BPFFS})"));
        return Ok(());
    }
    if !root {
        say("bpffs", &format!("NOT MOUNTED at {BPFFS} (needs root)"));
        skipped.push(format!("mount -t bpf bpf {BPFFS}"));
        return Ok(());
    }
    fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    util::output(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    say("bpffs", &format!("mounted at {BPFFS}"));
    Ok(())
}

fn bpf_stats() {
    let v = fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    match v.trim() {
        "1" => println!(
            "setup: WARNING: kernel.bpf_stats_enabled=1: BPF run times are about 4x inflated; \
             `sysctl -w kernel.bpf_stats_enabled=0` before benchmarking (left as is)"
        ),
        "" => say("kernel.bpf_stats_enabled", "unknown (cannot read)"),
        other => say("kernel.bpf_stats_enabled", &format!("ok ({other})")),
    }
}
