//! `lb-web`: the app tier (static files, the notes API, HTTPS), and `lb-web gen-certs` for the lab.
use std::{net::IpAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "lb-web",
    version,
    about = "The app tier: static files, the notes API, HTTP/1.1 + HTTP/2, HTTPS"
)]
struct Cli {
    /// The server's config file (web.toml).
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Make a CA and a server certificate signed by it (ca.pem, ca-key.pem, server.pem, server-key.pem).
    GenCerts {
        /// Directory to write the files into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// IP address the server certificate is valid for (repeat for more).
        #[arg(long = "ip")]
        ips: Vec<IpAddr>,
        /// DNS name the server certificate is valid for (repeat for more).
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// Validate a config file and exit.
    CheckConfig { file: PathBuf },
}

#[tokio::main]
async fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let result = match (cli.command, cli.config) {
        (Some(Command::GenCerts { out, ips, names }), _) => {
            lb_web::tls::gen_certs(&out, &ips, &names).map(|files| {
                for file in files {
                    println!("{}", file.display());
                }
            })
        }
        (Some(Command::CheckConfig { file }), _) => {
            lb_web::config::load(&file).map(|_| println!("{}: ok", file.display()))
        }
        (None, Some(config)) => match lb_web::config::load(&config) {
            Ok(config) => lb_web::run(config).await,
            Err(e) => Err(e),
        },
        (None, None) => Err(anyhow::anyhow!(
            "nothing to do: give --config web.toml, or a subcommand (see --help)"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb-web: {e:#}");
            ExitCode::FAILURE
        }
    }
}
