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
        Command::AttachPass { iface, pin } => dataplane::Dataplane::load(&dataplane::LoadOptions {
            flow_capacity: 1024,
            nat_capacity: 1024,
            unverified_capacity: 1024,
            ..Default::default()
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
