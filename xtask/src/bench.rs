//! `cargo xtask bench [--quick]`: the benchmarks, written into `target/bench/results.json`.
//!
//! root check -> setup (unless --no-setup) -> `cargo build --release` -> each part in turn.
//! Each part owns some top-level keys of the results file (docs/BENCHMARKS.md, "Command") and
//! keeps the others, so parts can be run and rerun independently. All are `lb-bench` subcommands
//! (tests/src/bin/lb-bench.rs):
//! - per-packet: BPF_PROG_TEST_RUN -> `per_packet_ns`;
//! - http: wrk through web1, HAProxy, nginx, XDP DSR, XDP NAT in a lab `lbb-ht-` -> `http`;
//! - flood: legit req/s under a bounded flood in a lab `lbb-fl-` -> `flood`;
//! - map-memory: the kernel memory of each map for the lab's agent config -> `map_memory_bytes`;
//! - conn-rate: new TCP connections/s (wrk, `Connection: close`) in a lab `lbb-cr-` -> `conn_rate`;
//! - nat-churn: distinct client tuples through the NAT VIP in a lab `lbb-nc-` -> `nat_churn`;
//! - summary: every table, the target ratios, and the chart `target/bench/results.svg`.
//!
//! A part that fails writes nulls and its reason, and the others still run. `--only` picks parts.
//! At the end, whatever happened, the results file is rendered as a Markdown table into
//! `target/bench/results.md` (`xtask::bench_table`); `--render-only` does only that, from the
//! existing file, and `--update-docs` also puts the table into docs/BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _, Result};
use xtask::{setup, util};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Shorter runs (a few minutes in all), for a first look and CI.
    #[arg(long)]
    pub quick: bool,
    /// Skip `cargo xtask setup` (packages, toolchain, bpffs).
    #[arg(long)]
    pub no_setup: bool,
    /// Run only these parts (e.g. `--only conn-rate,nat-churn`; parts: per-packet, http, flood,
    /// conn-rate, nat-churn, summary). The other keys of the results file are kept.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Measure nothing: render the existing target/bench/results.json as a Markdown table into
    /// target/bench/results.md (no root needed).
    #[arg(long, conflicts_with_all = ["quick", "no_setup", "only"])]
    pub render_only: bool,
    /// Also put the rendered table into docs/BENCHMARKS.md, between its bench-table marks.
    #[arg(long)]
    pub update_docs: bool,
}

/// What every part gets.
struct Ctx {
    quick: bool,
    /// The results file shared by all parts.
    results: PathBuf,
}

struct Part {
    /// The `lb-bench` subcommand, and what `--only` names.
    key: &'static str,
    name: &'static str,
    run: fn(&Ctx) -> Result<()>,
}

const PARTS: &[Part] = &[
    Part {
        key: "per-packet",
        name: "per-packet (BPF_PROG_TEST_RUN)",
        run: per_packet,
    },
    Part {
        key: "http",
        name: "http (wrk: direct, HAProxy, nginx, XDP DSR, XDP NAT)",
        run: http,
    },
    Part {
        key: "flood",
        name: "flood (legit req/s under a bounded flood)",
        run: flood,
    },
    Part {
        key: "map-memory",
        name: "map memory (the lab config's maps, memlock from the kernel)",
        run: map_memory,
    },
    Part {
        key: "conn-rate",
        name: "conn-rate (new TCP connections/s: direct, HAProxy, XDP DSR, XDP NAT)",
        run: conn_rate,
    },
    Part {
        key: "nat-churn",
        name: "nat-churn (distinct client tuples through the NAT VIP)",
        run: nat_churn,
    },
    Part {
        key: "summary",
        name: "summary (targets, chart)",
        run: summary,
    },
];

fn cargo() -> Command {
    // The rustup proxy from PATH (~/.cargo/bin is put first by main).
    let mut cmd = Command::new("cargo");
    cmd.current_dir(util::workspace_root());
    cmd
}

pub fn run(args: BenchArgs) -> Result<()> {
    let results = util::target_dir().join("bench").join("results.json");
    if args.render_only {
        return render(&results, args.update_docs);
    }
    if !util::is_root() {
        bail!(
            "cargo xtask bench needs root (it loads XDP programs and runs them with BPF_PROG_TEST_RUN, and \
             keeps kernel.bpf_stats_enabled at 0): run `sudo -E env PATH=\"$PATH\" cargo xtask bench`"
        );
    }
    if !args.no_setup {
        setup::run()?;
    }
    util::run(cargo().args(["build", "--release"]))?;

    // Labs of the bench (lbb-*) left by a killed run go first; each part removes its own lab.
    xtask::lab::cleanup_stale("lbb-").context("removing stale bench labs (lbb-*)")?;
    std::fs::create_dir_all(results.parent().unwrap_or(Path::new(".")))
        .with_context(|| format!("creating the directory of {}", results.display()))?;
    let ctx = Ctx {
        quick: args.quick,
        results,
    };

    if let Some(unknown) = args
        .only
        .iter()
        .find(|k| !PARTS.iter().any(|p| p.key == k.as_str()))
    {
        let keys: Vec<&str> = PARTS.iter().map(|p| p.key).collect();
        bail!(
            "--only {unknown:?}: no such part (parts: {})",
            keys.join(", ")
        );
    }
    let mut failed = Vec::new();
    for part in PARTS {
        if !args.only.is_empty() && !args.only.iter().any(|k| k == part.key) {
            continue;
        }
        println!("xtask bench: == {} ==", part.name);
        if let Err(e) = (part.run)(&ctx) {
            eprintln!("xtask bench: {} FAILED: {e:#}", part.name);
            failed.push(part.name);
        }
    }
    println!("xtask bench: results in {}", ctx.results.display());
    if let Err(e) = render(&ctx.results, args.update_docs) {
        eprintln!("xtask bench: rendering the table FAILED: {e:#}");
        failed.push("render");
    }
    if !failed.is_empty() {
        bail!("benchmark part(s) failed: {}", failed.join(", "));
    }
    Ok(())
}

fn per_packet(ctx: &Ctx) -> Result<()> {
    lb_bench(ctx, "per-packet", true)
}

/// `lb-bench SUBCOMMAND [--quick] --out RESULTS`.
fn lb_bench(ctx: &Ctx, sub: &str, quick: bool) -> Result<()> {
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--release",
        "-p",
        "lb-tests",
        "--bin",
        "lb-bench",
        "--",
        sub,
    ]);
    if quick && ctx.quick {
        cmd.arg("--quick");
    }
    cmd.arg("--out").arg(&ctx.results);
    util::run(&mut cmd)
}

fn http(ctx: &Ctx) -> Result<()> {
    lb_bench(ctx, "http", true)
}

fn flood(ctx: &Ctx) -> Result<()> {
    lb_bench(ctx, "flood", true)
}

fn map_memory(ctx: &Ctx) -> Result<()> {
    lb_bench(ctx, "map-memory", false)
}

fn conn_rate(ctx: &Ctx) -> Result<()> {
    lb_bench(ctx, "conn-rate", true)
}

fn nat_churn(ctx: &Ctx) -> Result<()> {
    lb_bench(ctx, "nat-churn", true)
}

fn summary(ctx: &Ctx) -> Result<()> {
    lb_bench(ctx, "summary", false)
}

/// `results.json` -> `results.md` next to it (and into docs/BENCHMARKS.md with `update_docs`).
fn render(results: &Path, update_docs: bool) -> Result<()> {
    let text = std::fs::read_to_string(results).with_context(|| {
        format!(
            "reading {} (run `cargo xtask bench` first)",
            results.display()
        )
    })?;
    let table = xtask::bench_table::render_text(&text)
        .with_context(|| format!("rendering {}", results.display()))?;
    let md = results.with_extension("md");
    std::fs::write(&md, format!("{table}\n"))
        .with_context(|| format!("writing {}", md.display()))?;
    println!("xtask bench: table in {}", md.display());
    if update_docs {
        let doc = util::workspace_root().join("docs").join("BENCHMARKS.md");
        let old =
            std::fs::read_to_string(&doc).with_context(|| format!("reading {}", doc.display()))?;
        let new = xtask::bench_table::splice(&old, &table)
            .with_context(|| format!("putting the table into {}", doc.display()))?;
        std::fs::write(&doc, new).with_context(|| format!("writing {}", doc.display()))?;
        println!("xtask bench: table put into {}", doc.display());
    }
    Ok(())
}
