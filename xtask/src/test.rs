//! `cargo xtask test`: every test, the kernel and namespace ones included.
//!
//! setup (unless --no-setup) -> clean stale test labs -> `cargo build --release` ->
//! `cargo test --release -- --test-threads=1 [extra]` -> clean stale test labs.
//! Kernel tests share kernel state (namespaces, XDP attachments), hence one thread.

use std::ffi::OsString;
use std::process::Command;

use anyhow::{bail, Result};
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
##  NOT ROOT: the kernel tests (BPF_PROG_TEST_RUN, network namespaces,        ##
##  XDP attach) will be SKIPPED.                                              ##
##  Only the pure user-space tests really run. For the full suite:            ##
##      sudo -E env PATH=\"$PATH\" cargo xtask test                             ##
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
    if !root {
        eprintln!("{NOT_ROOT_BANNER}");
    }
    if !args.no_setup {
        setup::run()?;
    }

    clean_test_labs("before the run");
    let _clean_after = CleanAfter;

    util::run(cargo().args(["build", "--release"]))?;

    let mut test = cargo();
    test.args(["test", "--release", "--", "--test-threads=1"]);
    test.args(args.extra.iter().map(OsString::from));
    if root && ci {
        // In CI as root, a kernel test that cannot run must fail, not skip.
        test.env("LB_REQUIRE_ROOT_TESTS", "1");
    }
    let result = util::run(&mut test);

    if !root {
        eprintln!("{NOT_ROOT_BANNER}");
    }
    if let Err(e) = result {
        bail!("tests failed: {e:#}");
    }
    println!(
        "xtask test: all tests passed{}",
        if root {
            ""
        } else {
            " (kernel tests SKIPPED: not root)"
        }
    );
    Ok(())
}
