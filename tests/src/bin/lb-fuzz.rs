//! The full packet-fuzzing run: `cargo run --release -p lb-tests --bin lb-fuzz -- --packets
//! 1000000 --seed 7`. Needs root (BPF_PROG_TEST_RUN). Prints coverage and any disagreement
//! (shrunk, as a Rust array) and writes the `packet_fuzz` key of `target/chaos/results.json`,
//! keeping the other keys. Exits 1 on any abort or disagreement.
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::Parser;
use lb_tests::fuzz::{self, Options};

#[derive(Parser)]
#[command(about = "Fuzz the XDP program against the reference model")]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    packets: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Packets per freshly loaded program and state.
    #[arg(long, default_value_t = 25_000)]
    chunk: u64,
    /// Draw IPv6 sources whose first bytes spell allowed IPv4 prefixes (and the reverse): they
    /// once slipped through scoped source rules. `--cross-family false` leaves them out.
    #[arg(long, action = clap::ArgAction::Set, default_value_t = true)]
    cross_family: bool,
    /// Results file (the `packet_fuzz` key is replaced, the rest kept).
    #[arg(long)]
    results: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !xtask::util::is_root() {
        anyhow::bail!("lb-fuzz needs root (BPF_PROG_TEST_RUN): run it as root");
    }
    let options = Options {
        packets: args.packets,
        seed: args.seed,
        chunk: args.chunk.max(1),
        cross_family: args.cross_family,
        shrink_max: 3,
        ..Options::default()
    };
    let report = fuzz::run(&options);
    println!("{}", report.summary());

    let path = args.results.unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/chaos/results.json")
    });
    let mut results: serde_json::Value = match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{} is not JSON", path.display()))?,
        Err(_) => serde_json::json!({}),
    };
    let object = results
        .as_object_mut()
        .context("results.json is not an object")?;
    object.insert(
        "packet_fuzz".into(),
        serde_json::json!({
            "packets": report.packets,
            "aborted": report.aborted,
            "model_mismatches": report.model_mismatches,
            "seed": args.seed,
            "cross_family_sources": args.cross_family,
            "seconds": (report.seconds * 10.0).round() / 10.0,
        }),
    );
    std::fs::create_dir_all(path.parent().context("results path")?)?;
    std::fs::write(&path, serde_json::to_string_pretty(&results)? + "\n")?;
    println!("wrote {}", path.display());
    if report.aborted > 0 || report.model_mismatches > 0 {
        std::process::exit(1);
    }
    Ok(())
}
