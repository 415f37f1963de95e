//! `lb-bench`: the benchmarks behind `cargo xtask bench` (needs root). Each subcommand writes
//! its own top-level keys of the results file, keeping the others, and prints a table:
//! - `per-packet` (the default): `per_packet_ns`, BPF_PROG_TEST_RUN;
//! - `http`: `http`, wrk through HAProxy, nginx and our load balancer in a lab (`lbb-ht-`);
//! - `flood`: `flood`, legit req/s under a bounded flood (`lbb-fl-`);
//! - `conn-rate`: `conn_rate`, new TCP connections/s through each load balancer (`lbb-cr-`);
//! - `nat-churn`: `nat_churn`, distinct client tuples through the NAT VIP (`lbb-nc-`);
//! - `summary`: every part's table, the target ratios, and the chart `results.svg`;
//! - `flood-gen`: the flood generator itself, run by `flood` inside the client namespace;
//! - `latency`: HTTP latency at a fixed request rate, run by `http` inside the client namespace.
//!
//! The bench code lives in `tests/src/bench/`, compiled into this binary only.
#[path = "../bench/mod.rs"]
mod bench;

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Parser;

use bench::{conn_rate, flood, http, latency, nat_churn, per_packet, report, summary, system};
use serde_json::{json, Map, Value};

#[derive(Parser, Debug)]
#[command(
    name = "lb-bench",
    about = "Benchmarks of the XDP load balancer (run by `cargo xtask bench`)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    per_packet: Args,
}

#[derive(clap::Subcommand, Debug)]
enum Cmd {
    /// Per-packet cost through BPF_PROG_TEST_RUN (the default).
    PerPacket(Args),
    /// HTTP through web1 directly, HAProxy, nginx, XDP DSR and XDP NAT (a lab `lbb-ht-`).
    Http(LabArgs),
    /// Legit HTTP under a bounded flood: none, nftables, our XDP rule (a lab `lbb-fl-`).
    Flood(LabArgs),
    /// The kernel memory of every map, loaded (privately) for the lab's own agent config
    /// (`map_memory_bytes`: `{ "total": n, "<MAP>": n, ... }`).
    MapMemory {
        #[arg(long, default_value = "target/bench/results.json")]
        out: PathBuf,
        /// Overrides the config's agent.flow_capacity.
        #[arg(long)]
        flow_capacity: Option<u32>,
    },
    /// New TCP connections per second (wrk -c32 -H 'Connection: close') through web1 directly,
    /// HAProxy, XDP DSR and XDP NAT (a lab `lbb-cr-`).
    ConnRate(LabArgs),
    /// Distinct client tuples through the NAT VIP, one connection each (a lab `lbb-nc-`).
    NatChurn {
        #[arg(long)]
        quick: bool,
        #[arg(long, default_value = "target/bench/results.json")]
        out: PathBuf,
        /// Tuples (default 300k, 100k with --quick; 1M takes ~20 min here).
        #[arg(long)]
        count: Option<u64>,
    },
    /// The nat-churn driver, run by `nat-churn` in the client namespace; prints JSON.
    ChurnClient {
        #[arg(long)]
        first_source: std::net::Ipv4Addr,
        #[arg(long)]
        sources: u8,
        #[arg(long)]
        first_port: u16,
        #[arg(long)]
        last_port: u16,
        #[arg(long)]
        count: u64,
        #[arg(long)]
        target: std::net::SocketAddrV4,
        #[arg(long, default_value_t = 16)]
        threads: u32,
        /// Bound of connect and of each answer, seconds (a SYN retransmitted twice fits).
        #[arg(long, default_value_t = 10)]
        timeout: u64,
        /// No connection starts after this many seconds.
        #[arg(long, default_value_t = 900)]
        max_seconds: u64,
    },
    /// Print every part's table and the target ratios; write the chart (results.svg).
    Summary {
        #[arg(long, default_value = "target/bench/results.json")]
        out: PathBuf,
    },
    /// HTTP latency at a fixed request rate (open loop), printed as JSON; `http` runs it in the
    /// client namespace.
    Latency {
        #[arg(long)]
        url: String,
        /// Requests per second, all connections together.
        #[arg(long)]
        rate: u32,
        #[arg(long)]
        seconds: f64,
        #[arg(long, default_value_t = 8)]
        connections: u32,
    },
    /// The flood generator: xdp_tx through BPF_PROG_TEST_RUN in live-frames mode on IFACE.
    FloodGen {
        #[arg(long)]
        iface: String,
        #[arg(long)]
        dst_mac: String,
        #[arg(long)]
        src: std::net::Ipv4Addr,
        #[arg(long)]
        dst: std::net::Ipv4Addr,
        #[arg(long, default_value_t = 9)]
        dport: u16,
        /// At most this many packets.
        #[arg(long)]
        packets: u64,
        /// At most this many seconds.
        #[arg(long)]
        seconds: f64,
        /// Frames per live-frames batch (at most 256).
        #[arg(long, default_value_t = 64)]
        batch: u32,
        /// Target packets per second (0: as fast as the kernel takes them).
        #[arg(long, default_value_t = 0)]
        pps: u64,
        /// The frames: udp, syn (TCP SYN) or ack (TCP ACK).
        #[arg(long, default_value = "udp")]
        kind: String,
        /// Spoofed sources: this many low bits of --src, the source port and the TCP sequence
        /// number drawn at random for every frame (at most 16; 0: every frame the same).
        #[arg(long, default_value_t = 0)]
        spoof_bits: u8,
    },
}

#[derive(clap::Args, Debug)]
struct LabArgs {
    /// Shorter runs (5-second wrk runs, fewer repetitions).
    #[arg(long)]
    quick: bool,
    #[arg(long, default_value = "target/bench/results.json")]
    out: PathBuf,
    /// Repetitions (default: http 3 quick / 5, and 5 of the fixed-rate latency; flood 2 quick
    /// / 3).
    #[arg(long)]
    repetitions: Option<u32>,
    /// Seconds of each wrk run (default 5 quick / 10).
    #[arg(long)]
    seconds: Option<u32>,
    /// flood only: the flood's rate in packets/s (0: as fast as the kernel takes them).
    #[arg(long)]
    pps: Option<u64>,
    /// flood only: where the flood enters: `lb-port` (the lb's switch port, so it reaches the
    /// lb's eth0 as XDP frames, like a NIC's) or `client` (across the bridge, as socket buffers).
    #[arg(long, default_value = "lb-port")]
    flood_entry: String,
    /// flood only: do not give the generator and the lb's receive path a CPU each.
    #[arg(long)]
    no_cpu_split: bool,
}

#[derive(clap::Args, Debug)]
struct Args {
    /// Fewer repeats (1M per case, 200k new flows) for a run of well under a minute.
    #[arg(long)]
    quick: bool,
    /// Results file; other top-level keys already in it are kept.
    #[arg(long, default_value = "target/bench/results.json")]
    out: PathBuf,
    /// Total repeats per case (split over the rounds); default 1M with --quick, else 5M.
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
    /// Random drop prefixes loaded for fw_drop and fw_pass_10k_prefixes.
    #[arg(long)]
    fw_prefixes: Option<u32>,
    /// Prefixes for the scale point lb_established_100k_prefixes (0: skip).
    #[arg(long)]
    fw_prefixes_scale: Option<u32>,
    /// Flows put in the flow table before lb_established_1m_flows (0: skip).
    #[arg(long)]
    prefill_flows: Option<u32>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if !xtask::util::is_root() {
        bail!("lb-bench needs root (BPF_PROG_TEST_RUN, loading XDP programs, namespaces): run it through `sudo -E cargo xtask bench`");
    }
    match cli.cmd {
        None => per_packet_main(cli.per_packet),
        Some(Cmd::PerPacket(args)) => per_packet_main(args),
        Some(Cmd::Http(args)) => http_main(args),
        Some(Cmd::Flood(args)) => flood_main(args),
        Some(Cmd::Summary { out }) => summary::run(&out),
        Some(Cmd::MapMemory { out, flow_capacity }) => map_memory_main(&out, flow_capacity),
        Some(Cmd::ConnRate(args)) => conn_rate_main(args),
        Some(Cmd::NatChurn { quick, out, count }) => nat_churn_main(quick, out, count),
        Some(Cmd::ChurnClient {
            first_source,
            sources,
            first_port,
            last_port,
            count,
            target,
            threads,
            timeout,
            max_seconds,
        }) => {
            let result = nat_churn::client(&nat_churn::ClientArgs {
                first_source,
                sources,
                first_port,
                last_port,
                count,
                target,
                threads,
                timeout: std::time::Duration::from_secs(timeout),
                max_seconds,
            })?;
            println!("{result}");
            Ok(())
        }
        Some(Cmd::Latency {
            url,
            rate,
            seconds,
            connections,
        }) => {
            let result = latency::run(&latency::Args {
                url,
                rate,
                seconds,
                connections,
            })?;
            println!("{result}");
            Ok(())
        }
        Some(Cmd::FloodGen {
            iface,
            dst_mac,
            src,
            dst,
            dport,
            packets,
            seconds,
            batch,
            pps,
            kind,
            spoof_bits,
        }) => {
            let a = flood::GenArgs {
                kind: flood::GenKind::parse(&kind)?,
                spoof_bits,
                iface,
                dst_mac: flood::parse_mac(&dst_mac)?,
                src,
                dst,
                dport,
                packets,
                seconds,
                batch,
                pps,
            };
            let result = flood::generate(&a)?;
            println!("{result}");
            Ok(())
        }
    }
}

/// A lab part's top-level keys: its figures and detail, or nulls and the reason.
fn lab_sections(
    name: &str,
    keys: &[&str],
    outcome: Result<(Value, Value)>,
    quick: bool,
) -> Map<String, Value> {
    let mut sections = Map::new();
    match outcome {
        Ok((figures, detail)) => {
            sections.insert(name.into(), figures);
            let mut detail = detail;
            detail["timestamp"] = json!(system::timestamp_utc());
            detail["source"] = system::source_version();
            sections.insert(format!("{name}_detail"), detail);
        }
        Err(e) => {
            eprintln!("lb-bench: {name} FAILED: {e:#}");
            let nulls: Map<String, Value> =
                keys.iter().map(|k| (k.to_string(), Value::Null)).collect();
            sections.insert(name.into(), Value::Object(nulls));
            sections.insert(
                format!("{name}_detail"),
                json!({ "reason": format!("{e:#}"), "timestamp": system::timestamp_utc(), "quick": quick }),
            );
        }
    }
    sections
}

fn http_main(args: LabArgs) -> Result<()> {
    let mut cfg = http::Config::new(args.quick);
    if let Some(n) = args.repetitions {
        cfg.repetitions = n;
        cfg.fixed_rate_repetitions = n;
    }
    if let Some(n) = args.seconds {
        cfg.wrk.seconds = n;
    }
    let outcome = http::run(&cfg).map(|r| (r.http, r.detail));
    let failed = outcome.is_err();
    let sections = lab_sections("http", &http::KEYS, outcome, cfg.quick);
    print!("{}", http::table(&sections["http"]));
    report::merge_into(&args.out, sections)?;
    if failed {
        bail!("the http part failed (null + reason written)");
    }
    Ok(())
}

fn flood_main(args: LabArgs) -> Result<()> {
    let mut cfg = flood::Config::new(args.quick);
    if let Some(n) = args.repetitions {
        cfg.repetitions = n;
    }
    if let Some(n) = args.seconds {
        cfg.wrk.seconds = n;
    }
    cfg.entry = flood::FloodEntry::parse(&args.flood_entry)?;
    cfg.split_cpus = !args.no_cpu_split;
    if let Some(n) = args.pps {
        cfg.pps = n;
    }
    let outcome = flood::run(&cfg).map(|r| (r.flood, r.detail));
    let failed = outcome.is_err();
    let sections = lab_sections("flood", &flood::KEYS, outcome, cfg.quick);
    print!("{}", flood::table(&sections["flood"]));
    report::merge_into(&args.out, sections)?;
    if failed {
        bail!("the flood part failed (null + reason written)");
    }
    Ok(())
}

/// `map_memory_bytes`: the maps of the lab's agent config (xtask `stack::full_stack_options`,
/// what `cargo xtask run` writes), loaded without pins, their memory read from the kernel.
fn map_memory_main(out: &std::path::Path, flow_capacity: Option<u32>) -> Result<()> {
    use lb_userspace::{config, dataplane, sizing};
    let text = xtask::stack::agent_config_text(
        std::path::Path::new("/sys/fs/bpf/lb"),
        std::path::Path::new("/run/lb-api-token"),
        &xtask::stack::full_stack_options("token"),
    )?;
    let mut config = config::parse(std::path::Path::new("lab lb.toml"), &text)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(capacity) = flow_capacity {
        config.agent.set_flow_capacity(capacity);
    }
    let sizes = config.map_sizes();
    let dataplane = dataplane::Dataplane::load(&dataplane::LoadOptions::for_sizes(&sizes, None))?;
    let report = dataplane.map_memory(&sizes, config.agent.map_memory_budget_bytes())?;
    let mut bytes = Map::new();
    bytes.insert("total".into(), json!(report.total_bytes));
    for map in &report.maps {
        bytes.insert(map.name.clone(), json!(map.bytes));
        println!(
            "{:<18} {:>10}  {:>9} entries",
            map.name,
            sizing::mib(map.bytes),
            map.max_entries
        );
    }
    println!(
        "total {} (flow_capacity {})",
        sizing::mib(report.total_bytes),
        config.agent.flow_capacity
    );
    let mut sections = Map::new();
    sections.insert("map_memory_bytes".into(), Value::Object(bytes));
    sections.insert(
        "map_memory_detail".into(),
        json!({
            "config": "the lab's agent config (xtask stack::full_stack_options)",
            "flow_capacity": config.agent.flow_capacity,
            "source": "memlock of each map's /proc/self/fdinfo",
            "max_entries": report.maps.iter().map(|m| (m.name.clone(), json!(m.max_entries))).collect::<Map<String, Value>>(),
            "timestamp": system::timestamp_utc(),
        }),
    );
    report::merge_into(out, sections)?;
    println!("results: {}", out.display());
    Ok(())
}

fn conn_rate_main(args: LabArgs) -> Result<()> {
    let mut cfg = conn_rate::Config::new(args.quick);
    if let Some(n) = args.repetitions {
        cfg.repetitions = n;
    }
    if let Some(n) = args.seconds {
        cfg.wrk.seconds = n;
    }
    let outcome = conn_rate::run(&cfg).map(|r| (r.conn_rate, r.detail));
    let failed = outcome.is_err();
    let sections = lab_sections("conn_rate", &conn_rate::KEYS, outcome, cfg.quick);
    print!("{}", conn_rate::table(&sections["conn_rate"]));
    report::merge_into(&args.out, sections)?;
    if failed {
        bail!("the conn_rate part failed (null + reason written)");
    }
    Ok(())
}

fn nat_churn_main(quick: bool, out: PathBuf, count: Option<u64>) -> Result<()> {
    let mut cfg = nat_churn::Config::new(quick);
    if let Some(n) = count {
        cfg.count = n;
    }
    let outcome = nat_churn::run(&cfg).map(|r| (r.nat_churn, r.detail));
    let failed = outcome.is_err();
    let sections = lab_sections("nat_churn", &nat_churn::KEYS, outcome, cfg.quick);
    print!(
        "{}",
        nat_churn::table(&sections["nat_churn"], &sections["nat_churn_detail"])
    );
    report::merge_into(&out, sections)?;
    if failed {
        bail!("the nat_churn part failed (null + reason written)");
    }
    Ok(())
}

fn per_packet_main(args: Args) -> Result<()> {
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
    if let Some(n) = args.fw_prefixes {
        cfg.fw_prefixes = n;
    }
    if let Some(n) = args.fw_prefixes_scale {
        cfg.fw_prefixes_scale = n;
    }
    if let Some(n) = args.prefill_flows {
        cfg.prefill_flows = n;
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
            .map(|(k, v)| {
                format!(
                    "{k} {}",
                    v.as_f64().map_or("null".into(), |v| format!("{v:.1}"))
                )
            })
            .collect();
        println!(
            "per-call cross-checks (the method of lb_new_flow; reads higher), ns: {}",
            shown.join(", ")
        );
    }
    println!("results: {}", args.out.display());
    Ok(())
}
