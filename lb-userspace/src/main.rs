//! `lb`: the load balancer agent and its command line.
use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use lb_userspace::{agent, cli, config, dataplane};

#[derive(Parser)]
#[command(name = "lb", version, about = "XDP load balancer and firewall agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    api: cli::ApiArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Load the XDP program, program it from the config and run until SIGINT/SIGTERM.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Interface to attach to (overrides agent.interface).
        #[arg(long)]
        iface: Option<String>,
        /// bpffs directory for pins (overrides agent.pin_path).
        #[arg(long)]
        pin_path: Option<PathBuf>,
    },
    /// Validate a config file; every error names file, line, column and the fix.
    CheckConfig { file: PathBuf },
    /// Load the data path's maps sized for a config (private: nothing pinned or attached) and
    /// print the kernel memory of each, as the kernel reports it.
    MapMemory {
        #[arg(long, short)]
        config: PathBuf,
        /// Overrides agent.flow_capacity.
        #[arg(long)]
        flow_capacity: Option<u32>,
        /// Print JSON (`{ "total": n, "<MAP>": n, ... }`) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Attach the trivial XDP_PASS program to an interface and pin its link at PIN.
    /// XDP_TX out of a veth only works when its peer runs an XDP program.
    AttachPass {
        #[arg(long)]
        iface: String,
        #[arg(long)]
        pin: PathBuf,
    },
    #[command(flatten)]
    Client(cli::ClientCommand),
}

#[tokio::main]
async fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run {
            config,
            iface,
            pin_path,
        } => {
            agent::run(agent::RunOptions {
                config_path: config,
                iface,
                pin_path,
            })
            .await
        }
        Command::CheckConfig { file } => match config::load(&file) {
            Ok(config) => {
                let backends: usize = config.services.iter().map(|s| s.backends.len()).sum();
                println!(
                    "{}: ok ({} services, {backends} backends)",
                    file.display(),
                    config.services.len()
                );
                Ok(())
            }
            Err(errors) => {
                eprintln!("{errors}");
                eprintln!("{}: {} error(s)", file.display(), errors.0.len());
                return ExitCode::FAILURE;
            }
        },
        Command::MapMemory {
            config,
            flow_capacity,
            json,
        } => map_memory(&config, flow_capacity, json),
        Command::AttachPass { iface, pin } => dataplane::Dataplane::load(&dataplane::LoadOptions {
            flow_capacity: 1024,
            flow_v6_capacity: None,
            nat_capacity: 1024,
            unverified_capacity: 1024,
            rate_capacity: 1024,
            fw_v4_half_groups: lb_common::maps::V4_ROOT_GROUPS,
            pin_dir: None,
            resize_pins: false,
        })
        .and_then(|mut dp| dp.attach_pass(&iface, &pin)),
        Command::Client(command) => cli::run(command, cli.api).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `lb map-memory`: what the maps of a config take, measured in the kernel.
fn map_memory(
    path: &std::path::Path,
    flow_capacity: Option<u32>,
    json: bool,
) -> anyhow::Result<()> {
    let mut config = config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(capacity) = flow_capacity {
        config.agent.set_flow_capacity(capacity);
    }
    let sizes = config.map_sizes();
    let dataplane = dataplane::Dataplane::load(&dataplane::LoadOptions::for_sizes(&sizes, None))?;
    let report = dataplane.map_memory(&sizes, config.agent.map_memory_budget_bytes())?;
    if json {
        let mut object = serde_json::Map::new();
        object.insert("total".into(), report.total_bytes.into());
        for map in &report.maps {
            object.insert(map.name.clone(), map.bytes.into());
        }
        println!("{}", serde_json::Value::Object(object));
    } else {
        println!(
            "{}: flow_capacity {}",
            path.display(),
            config.agent.flow_capacity
        );
        cli::print_map_memory(&report);
    }
    Ok(())
}
