//! Small process helpers: run commands with errors that name the command line, its exit status
//! and its stderr; root check; workspace paths; signals.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// The workspace root (the directory holding the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// `target/` of the workspace (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// Writes a file holding a secret (a password, a token, a key, a config quoting one) with mode
/// 0600 from its creation: a new temporary file renamed over `path`, so neither a moment after
/// the write nor an older file's wider mode ever shows the content to other users.
pub fn write_private(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".tmp{}", std::process::id()));
    let temporary = PathBuf::from(temporary);
    let _ = std::fs::remove_file(&temporary);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .and_then(|mut file| file.write_all(contents.as_ref()))
        .and_then(|()| std::fs::rename(&temporary, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written.with_context(|| format!("writing {} (mode 0600)", path.display()))
}

/// True when running with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `$HOME`, or `/root` for root when `HOME` is unset (minimal CI environments).
pub fn home_dir() -> Option<PathBuf> {
    match std::env::var_os("HOME") {
        Some(h) if !h.is_empty() => Some(PathBuf::from(h)),
        _ if is_root() => Some(PathBuf::from("/root")),
        _ => None,
    }
}

/// `$CARGO_HOME/bin`, else `~/.cargo/bin`: where rustup's proxies and `bpf-linker` live.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    match std::env::var_os("CARGO_HOME") {
        Some(h) if !h.is_empty() => Some(PathBuf::from(h).join("bin")),
        _ => home_dir().map(|h| h.join(".cargo").join("bin")),
    }
}

/// Directories system tools live in (`ip`, `sysctl`, `ethtool` are in sbin); appended to
/// `PATH` when missing, so that a minimal CI or sudo `PATH` still finds them.
const SYSTEM_DIRS: [&str; 6] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// `PATH` with the cargo bin directory in front and the system (s)bin directories at the end
/// (each only if missing).
pub fn path_with_cargo_bin() -> OsString {
    let current = std::env::var_os("PATH").unwrap_or_default();
    let mut parts: Vec<PathBuf> = std::env::split_paths(&current).collect();
    if let Some(bin) = cargo_bin_dir() {
        if !parts.contains(&bin) {
            parts.insert(0, bin);
        }
    }
    for dir in SYSTEM_DIRS.map(PathBuf::from) {
        if !parts.contains(&dir) {
            parts.push(dir);
        }
    }
    std::env::join_paths(parts).unwrap_or(current)
}

/// Put `~/.cargo/bin` (and the sbin directories) on this process's `PATH` so that child
/// processes (cargo, rustup, bpf-linker, ip, sysctl) are found even from a minimal CI `PATH`.
/// Call it early in `main`, before any thread is started (it uses `std::env::set_var`).
pub fn ensure_cargo_bin_on_path() {
    let path = path_with_cargo_bin();
    if std::env::var_os("PATH").as_deref() != Some(path.as_os_str()) {
        std::env::set_var("PATH", path);
    }
}

/// Quote one argument for display (copy-pasteable into a shell in the common cases).
fn quote(arg: &OsStr) -> String {
    let s = arg.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The command line of `cmd`, for messages.
pub fn cmd_line(cmd: &Command) -> String {
    let mut parts = vec![quote(cmd.get_program())];
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

fn spawn_error(line: &str, program: &OsStr, err: std::io::Error) -> anyhow::Error {
    if err.kind() == std::io::ErrorKind::NotFound {
        anyhow!(
            "cannot run `{line}`: program `{}` not found (is it installed? `cargo xtask setup` installs what the project uses)",
            program.to_string_lossy()
        )
    } else {
        anyhow!("cannot run `{line}`: {err}")
    }
}

fn describe_failure(line: &str, status: ExitStatus, out: &Output) -> String {
    let mut msg = format!("command failed ({status}): `{line}`");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !stderr.trim().is_empty() {
        msg.push_str(&format!(
            "\n  stderr: {}",
            stderr.trim().replace('\n', "\n          ")
        ));
    }
    if !stdout.trim().is_empty() {
        let stdout = stdout.trim();
        let tail: String = if stdout.len() > 2000 {
            let start = stdout.len() - 2000;
            let start = (start..stdout.len())
                .find(|i| stdout.is_char_boundary(*i))
                .unwrap_or(0);
            format!("...{}", &stdout[start..])
        } else {
            stdout.to_string()
        };
        msg.push_str(&format!(
            "\n  stdout: {}",
            tail.replace('\n', "\n          ")
        ));
    }
    msg
}

/// Run with inherited stdio (output goes to the terminal); error if it does not exit 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = cmd_line(cmd);
    let status = cmd
        .status()
        .map_err(|e| spawn_error(&line, cmd.get_program(), e))?;
    if !status.success() {
        bail!("command failed ({status}): `{line}`");
    }
    Ok(())
}

/// Run capturing stdout/stderr; error (with stderr) if it does not exit 0.
pub fn output(cmd: &mut Command) -> Result<Output> {
    output_timeout(cmd, DEFAULT_TIMEOUT).and_then(|out| check(cmd, out))
}

/// Run capturing stdout/stderr; only fails if the command cannot be started (or times out).
pub fn output_unchecked(cmd: &mut Command) -> Result<Output> {
    output_timeout(cmd, DEFAULT_TIMEOUT)
}

/// Default bound on captured commands, so that a hung tool cannot hang CI.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Turn a non-zero exit into an error naming the command and its stderr.
pub fn check(cmd: &Command, out: Output) -> Result<Output> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(anyhow!(describe_failure(&cmd_line(cmd), out.status, &out)))
    }
}

/// stdout of a successful command, trimmed.
pub fn stdout_of(cmd: &mut Command) -> Result<String> {
    let out = output(cmd)?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// True if the command runs and exits 0 (all output discarded).
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn reader<R: Read + Send + 'static>(src: Option<R>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut src) = src {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = src.read_to_end(&mut buf);
            let _ = tx.send(buf);
        });
    } else {
        let _ = tx.send(Vec::new());
    }
    rx
}

/// Run capturing stdout/stderr (stdin is /dev/null), killing it after `timeout`. Does not
/// check the exit status (see [`check`]). A grandchild that keeps the pipes open (a daemon
/// started by the command) does not block this beyond a short grace period.
pub fn output_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let line = cmd_line(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| spawn_error(&line, cmd.get_program(), e))?;
    let out_rx = reader(child.stdout.take());
    let err_rx = reader(child.stderr.take());
    let status = match wait_timeout(&mut child, timeout)? {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err_rx
                .recv_timeout(Duration::from_millis(200))
                .unwrap_or_default();
            bail!(
                "command timed out after {timeout:?} and was killed: `{line}`\n  stderr: {}",
                String::from_utf8_lossy(&stderr).trim()
            );
        }
    };
    let grace = Duration::from_secs(2);
    let stdout = out_rx.recv_timeout(grace).unwrap_or_default();
    let stderr = err_rx.recv_timeout(grace).unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Wait for a child up to `timeout`; `None` if it is still running.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait().context("waiting for a child process")? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Poll `cond` every `every` until it is true or `timeout` passes; returns its last value.
pub fn wait_until(timeout: Duration, every: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(every);
    }
}

/// Send `signal` to `pid`; false if it failed (no such process, or not permitted).
pub fn signal(pid: u32, signal: i32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) with a positive pid only signals that one process.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// True if the process exists and is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(_) => false,
    }
}

/// SIGTERM every pid, wait up to `grace` for all to exit, SIGKILL the rest and wait a little
/// more. Returns the pids still alive at the end (normally none).
pub fn terminate_pids(pids: &[u32], grace: Duration) -> Vec<u32> {
    let me = std::process::id();
    let pids: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|p| *p != me && *p > 1)
        .collect();
    for pid in &pids {
        signal(*pid, libc::SIGTERM);
    }
    let all_gone = |pids: &[u32]| pids.iter().all(|p| !process_alive(*p));
    if wait_until(grace, Duration::from_millis(20), || all_gone(&pids)) {
        return Vec::new();
    }
    for pid in pids.iter().filter(|p| process_alive(**p)) {
        signal(*pid, libc::SIGKILL);
    }
    wait_until(Duration::from_secs(2), Duration::from_millis(20), || {
        all_gone(&pids)
    });
    pids.into_iter().filter(|p| process_alive(*p)).collect()
}

/// The value of a boolean-ish environment variable such as `CI` (`true`, `1`, `yes`).
pub fn env_flag(name: &str) -> bool {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim().to_ascii_lowercase();
            !(v.is_empty() || v == "0" || v == "false" || v == "no")
        }
        Err(_) => false,
    }
}

/// `cargo build --release` of the whole workspace (the agent, lb-web, the test binaries).
pub fn build_release() -> Result<()> {
    run(Command::new("cargo")
        .current_dir(workspace_root())
        .args(["build", "--release"]))
    .context("building the workspace")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_0600_even_over_an_older_world_readable_one() {
        use std::os::unix::fs::PermissionsExt as _;
        let path = std::env::temp_dir().join(format!("xtask-private-{}", std::process::id()));
        std::fs::write(&path, "old").unwrap_or_else(|e| panic!("{e}"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("{e}"));
        write_private(&path, "password = \"x\"\n").unwrap_or_else(|e| panic!("{e:#}"));
        let meta = std::fs::metadata(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::read_to_string(&path).ok().as_deref(),
            Some("password = \"x\"\n")
        );
        let _ = std::fs::remove_file(&path);
    }
}
