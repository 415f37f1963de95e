//! `cargo xtask <verb>`: project automation. One module per verb; the shared parts (setup,
//! lab, helpers) are in the `xtask` library so that the `tests` crate can use them too.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use xtask::{lab, setup, util};

mod bench;
mod chaos;
mod demo;
mod run;
mod test;

#[derive(Parser, Debug)]
#[command(
    name = "cargo xtask",
    about = "Build, set up, test and demo the XDP load balancer"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Bring up the seed's stack in network namespaces with XDP load balancing, until Ctrl-C
    /// (or, with --iface and --config, run the agent on a real NIC).
    Run(run::RunArgs),
    /// Install what the project needs: Debian packages, nightly rust-src, bpf-linker, bpffs.
    Setup,
    /// Run every test, the kernel and namespace ones included (needs root for those).
    Test(test::TestArgs),
    /// Bring the network-namespace lab up or down by hand.
    Lab(lab::LabArgs),
    /// The mission end to end: the whole stack up, every check with real traffic, torn down;
    /// ends with `demo: N/N checks passed` (exit 1 when any fails).
    Demo(demo::DemoArgs),
    /// Benchmarks (needs root) into target/bench/results.json; --quick for a short run.
    Bench(bench::BenchArgs),
    /// Faults under load and fuzzed input (needs root) into target/chaos/results.json;
    /// --quick for a short run.
    Chaos(chaos::ChaosArgs),
    /// Internal to `chaos`: a bounded slowloris from this process (run inside a namespace).
    #[command(hide = true)]
    Slowloris {
        #[arg(long)]
        target: std::net::SocketAddr,
        #[arg(long)]
        connections: usize,
        /// New connections per second at most.
        #[arg(long, default_value_t = 2000)]
        rate: u32,
        #[arg(long)]
        seconds: u64,
    },
}

fn main() -> ExitCode {
    // Before anything else (and before any thread): cargo, rustup and bpf-linker live in
    // ~/.cargo/bin, which a minimal CI PATH may lack.
    util::ensure_cargo_bin_on_path();
    // `cargo xtask run -- --iface X` reaches us as `run -- --iface X`: the `--` only separates
    // cargo's arguments from ours.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(2).is_some_and(|a| a == "--") && args.get(1).is_some_and(|a| a == "run") {
        args.remove(2);
    }
    let cli = Cli::parse_from(args);
    let result = match cli.cmd {
        Cmd::Setup => setup::run(),
        Cmd::Run(args) => run::run(args),
        Cmd::Test(args) => test::run(args),
        Cmd::Lab(args) => lab::cli(args),
        Cmd::Bench(args) => bench::run(args),
        Cmd::Demo(args) => demo::run(args),
        Cmd::Chaos(args) => chaos::run(args),
        Cmd::Slowloris {
            target,
            connections,
            rate,
            seconds,
        } => {
            let report = xtask::slowloris::attack(
                target,
                connections,
                rate,
                std::time::Duration::from_secs(seconds),
            );
            println!("{}{}", xtask::slowloris::RESULT_PREFIX, report.to_json());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
