//! `cargo xtask test`: every test, the kernel and namespace ones included.
//!
//! setup (unless --no-setup) -> clean stale test labs -> `cargo build --release` ->
//! `cargo test --release -- --test-threads=1 [--include-ignored as root or in CI] [extra]` ->
//! `cargo xtask demo` and `cargo xtask chaos --quick` (as root) -> clean stale test labs.
//! Kernel tests share kernel state (namespaces, XDP attachments), hence one thread.

use std::ffi::OsString;
use std::process::Command;

use anyhow::{bail, Context, Result};
use xtask::{lab, setup, util};

#[derive(clap::Args, Debug)]
pub struct TestArgs {
    /// Skip `cargo xtask setup` (packages, toolchain, bpffs).
    #[arg(long)]
    pub no_setup: bool,
    /// Passed to the test binaries, after `--test-threads=1` (e.g. a name filter, --nocapture).
    #[arg(last = true)]
    pub extra: Vec<String>,
}

const NOT_ROOT_BANNER: &str = "\
################################################################################
##  NOT ROOT: the kernel and namespace tests (BPF_PROG_TEST_RUN, network      ##
##  namespaces, XDP attach) are #[ignore = \"needs root\"]: they are reported   ##
##  as IGNORED, not run, and the demo and the chaos suite are left out.       ##
##  Only the tests that need no root really run. For the full suite:          ##
##      sudo -E env PATH=\"$PATH\" cargo xtask test                             ##
################################################################################";

const CI_NOT_ROOT_BANNER: &str = "\
################################################################################
##  NOT ROOT, under CI: the tests that need root run anyway and FAIL, each    ##
##  saying it needs root. CI must run `cargo xtask test` as root.             ##
################################################################################";

fn cargo() -> Command {
    // The rustup proxy from PATH (~/.cargo/bin is put first by main): same toolchain
    // selection as the user's own `cargo`.
    let mut cmd = Command::new("cargo");
    cmd.current_dir(util::workspace_root());
    cmd
}

fn clean_test_labs(when: &str) {
    if let Err(e) = lab::cleanup_stale(lab::TEST_PREFIX) {
        eprintln!("xtask test: WARNING: cleaning test labs {when}: {e:#}");
    }
}

/// Cleans the test labs again however the run ends.
struct CleanAfter;

impl Drop for CleanAfter {
    fn drop(&mut self) {
        clean_test_labs("after the run");
    }
}

pub fn run(args: TestArgs) -> Result<()> {
    let root = util::is_root();
    let ci = util::env_flag("CI");
    let banner = match (root, ci) {
        (true, _) => None,
        (false, false) => Some(NOT_ROOT_BANNER),
        (false, true) => Some(CI_NOT_ROOT_BANNER),
    };
    if let Some(banner) = banner {
        eprintln!("{banner}");
    }
    if !args.no_setup {
        setup::run()?;
    }

    clean_test_labs("before the run");
    let _clean_after = CleanAfter;

    util::run(cargo().args(["build", "--release"]))?;

    let mut test = cargo();
    test.args(["test", "--release", "--", "--test-threads=1"]);
    if root || ci {
        // The tests that need root are `#[ignore = "needs root"]`, so a plain `cargo test`
        // reports them as ignored instead of passing them unrun. As root they run here. In CI
        // they run even without root: there each fails, saying it needs root, where a local
        // run as a normal user only reports them ignored.
        test.arg("--include-ignored");
    }
    test.args(args.extra.iter().map(OsString::from));
    let mut tally = run_and_tally(&mut test)?;

    if root {
        // The demo (the mission's checks end to end) counts as one more test.
        println!("xtask test: == cargo xtask demo ==");
        match crate::demo::run_checks(&crate::demo::DemoArgs {
            no_setup: true,
            no_build: true,
        }) {
            Ok((passed, total)) if passed == total => tally.passed += 1,
            Ok((passed, total)) => {
                eprintln!("xtask test: demo FAILED: {passed}/{total} checks passed");
                tally.failed += 1;
            }
            Err(e) => {
                eprintln!("xtask test: demo FAILED: {e:#}");
                tally.failed += 1;
            }
        }
        // The quick chaos suite (faults under load, fuzzers) counts as one more test.
        println!("xtask test: == cargo xtask chaos --quick ==");
        match crate::chaos::run(crate::chaos::ChaosArgs {
            quick: true,
            no_setup: true,
            seed: None,
            only: Vec::new(),
        }) {
            Ok(()) => tally.passed += 1,
            Err(e) => {
                eprintln!("xtask test: chaos --quick FAILED: {e:#}");
                tally.failed += 1;
            }
        }
    }

    if let Some(banner) = banner {
        eprintln!("{banner}");
    }
    // One plain closing line for whoever reads the log (CI among them).
    println!(
        "summary: {} passed, {} failed, {} ignored",
        tally.passed, tally.failed, tally.ignored
    );
    if let Some(failure) = &tally.cargo_test_failure {
        bail!("tests failed: {failure}");
    }
    if tally.failed > 0 {
        bail!("{} tests failed", tally.failed);
    }
    println!(
        "xtask test: all tests passed{}",
        if root {
            ""
        } else {
            " (the tests that need root were IGNORED: not root)"
        }
    );
    Ok(())
}

#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    /// Tests `cargo test` reported as ignored (those needing root, when not run as root).
    ignored: u64,
    /// Why `cargo test` itself exited non-zero (a build error counts as one failure).
    cargo_test_failure: Option<String>,
}

/// Runs `cargo test`, echoing its output, and adds up the `test result:` lines of every binary
/// (a non-zero exit is recorded in the tally, not returned as an error).
fn run_and_tally(cmd: &mut Command) -> Result<Tally> {
    use std::io::{BufRead, BufReader};
    cmd.stdout(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {}", util::cmd_line(cmd)))?;
    let mut tally = Tally::default();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                tally.passed += count(rest, " passed");
                tally.failed += count(rest, " failed");
                tally.ignored += count(rest, " ignored");
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        tally.failed = tally.failed.max(1);
        tally.cargo_test_failure = Some(format!(
            "{} exited with {status} ({} passed, {} failed)",
            util::cmd_line(cmd),
            tally.passed,
            tally.failed
        ));
    }
    Ok(tally)
}

/// The number before `what` in "ok. 20 passed; 0 failed; ...".
fn count(summary: &str, what: &str) -> u64 {
    summary
        .split(';')
        .find_map(|part| {
            part.trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ")
                .strip_suffix(what.trim_start())
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}
