//! `lb-bench`: per-packet benchmarks of the XDP program (needs root), normally run by
//! `cargo xtask bench`. Writes `per_packet_ns` (and its detail) into the results file, keeping
//! the file's other top-level keys, and prints a table.
//!
//! The bench code lives in `tests/src/bench/`, compiled into this binary only.
#[path = "../bench/mod.rs"]
mod bench;

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Parser;

use bench::{per_packet, report, system};

#[derive(Parser, Debug)]
#[command(name = "lb-bench", about = "Per-packet cost of the XDP load balancer through BPF_PROG_TEST_RUN")]
struct Args {
    /// Fewer repeats (1M per case, 200k new flows) for a run of well under a minute.
    #[arg(long)]
    quick: bool,
    /// Results file; other top-level keys already in it are kept.
    #[arg(long, default_value = "target/bench/results.json")]
    out: PathBuf,
    /// Total repeats per case (split over 5 rounds); default 1M with --quick, else 5M.
    #[arg(long)]
    repeat: Option<u32>,
    /// Total repeat=1 calls of each per-call cross-check; default 200k with --quick, else 1M.
    #[arg(long)]
    calls: Option<u32>,
    /// New flows for lb_new_flow (one call each); default 200k with --quick, else 1M.
    #[arg(long)]
    new_flows: Option<u32>,
    /// Flow table size of the program measured for lb_new_flow (must exceed --new-flows).
    #[arg(long)]
    flow_capacity: Option<u32>,
    /// CPU to pin the benchmark thread to (default: the last one allowed).
    #[arg(long)]
    cpu: Option<usize>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("lb-bench needs root (BPF_PROG_TEST_RUN, loading XDP programs): run it through `sudo -E cargo xtask bench`");
    }
    let mut cfg = per_packet::Config::new(args.quick);
    if let Some(n) = args.repeat {
        cfg.repeats = n;
    }
    if let Some(n) = args.calls {
        cfg.calls = n;
    }
    if let Some(n) = args.new_flows {
        cfg.new_flows = n;
    }
    if let Some(n) = args.flow_capacity {
        cfg.flow_capacity = n;
    }

    let cpu = system::pin_to_cpu(args.cpu)?;
    let busy = system::cpu_busy_percent(std::time::Duration::from_secs(1));
    if let Some(busy) = busy.filter(|b| *b > 10.0) {
        eprintln!("lb-bench: WARNING: the CPUs were {busy:.0}% busy in the second before the run: figures are noisier");
    }
    let machine = system::machine(cpu, busy);
    let stats = system::BpfStatsOff::ensure()?;
    let timestamp = system::timestamp_utc();
    eprintln!(
        "lb-bench: per-packet, pinned to CPU {cpu}, {} repeats / {} calls per case, {} new flows{}",
        cfg.repeats,
        cfg.calls,
        cfg.new_flows,
        if cfg.quick { " (quick)" } else { "" }
    );
    let others_before = system::other_cpus_jiffies(cpu);
    let result = per_packet::run(&cfg)?;
    let others_busy = system::busy_between(others_before, system::other_cpus_jiffies(cpu));
    if let Some(busy) = others_busy.filter(|b| *b > 10.0) {
        eprintln!("lb-bench: WARNING: the other CPUs were {busy:.0}% busy during the run: something else ran");
    }
    let bpf_stats = stats.describe();
    drop(stats);

    let mut machine = machine;
    machine["other_cpus_busy_percent_during_run"] = serde_json::json!(others_busy);
    let sections = report::per_packet_sections(&result, machine, bpf_stats, cfg.quick, &timestamp);
    report::merge_into(&args.out, sections)?;
    print!("{}", report::table(&result));
    if let Some(checks) = result.settings["per_call_cross_checks_ns"].as_object() {
        let shown: Vec<String> = checks
            .iter()
            .map(|(k, v)| format!("{k} {}", v.as_f64().map_or("null".into(), |v| format!("{v:.1}"))))
            .collect();
        println!("per-call cross-checks (the method of lb_new_flow; reads higher), ns: {}", shown.join(", "));
    }
    println!("results: {}", args.out.display());
    Ok(())
}
