//! Finding and removing what a lab left behind (namespaces, mounts, its directory), on a
//! crash too.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util;

use super::*;

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
pub(super) fn remove_namespaces(names: &[String]) -> Vec<anyhow::Error> {
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
pub(super) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
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
pub(super) fn unescape_mount(s: &str) -> String {
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

pub(super) fn is_mountpoint(dir: &Path) -> bool {
    mounts_under(dir).iter().any(|m| m == dir)
}

/// Unmount everything under `dir`, then remove it (and /run/lb-lab if it is then empty).
pub(super) fn remove_lab_dir(dir: &Path) -> Result<()> {
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
