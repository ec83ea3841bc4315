use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kiosk_gateway::config::{self, Config, Env};
use kiosk_gateway::telemetry::RecentEvents;
use kiosk_gateway::{commands, daemon, telemetry};

/// Bridges an on-prem voice kiosk's microphone and speaker to a cloud voice agent.
#[derive(Parser)]
#[command(name = "kiosk-gateway", version, about)]
struct Cli {
    /// Config file.
    #[arg(long, global = true, env = config::PATH_VAR, default_value = config::DEFAULT_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway daemon (systemd's ExecStart).
    Run,
    /// Validate the config file and print every problem.
    Check,
    /// Print stored transcripts.
    Transcripts {
        /// Only this session (its id).
        #[arg(long)]
        session: Option<String>,
        /// JSON: an array of {id, session_id, seq, role, text, final, spoken_at}.
        #[arg(long)]
        json: bool,
    },
    /// Upload unsynced transcripts to `sync.url` (Ctrl-C stops).
    Sync {
        /// Upload what is waiting, then exit (non-zero if anything is left).
        #[arg(long)]
        once: bool,
        /// Also send batches the upstream refused before.
        #[arg(long)]
        retry_parked: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run => {
            let config = load(&cli.config)?;
            let recent = RecentEvents::default();
            telemetry::init(&config.log, &config.kiosk.id, &recent);
            daemon::run(config, recent)?;
        }
        Command::Check => {
            let ok = commands::check(&cli.config, &mut std::io::stdout(), &mut std::io::stderr())?;
            if !ok {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Transcripts { session, json } => {
            telemetry::init_for_command();
            let config = load(&cli.config)?;
            commands::transcripts(
                &config.store.path,
                session.as_deref(),
                json,
                &mut std::io::stdout(),
            )
            .context("cannot list transcripts")?;
        }
        Command::Sync { once, retry_parked } => {
            let config = load(&cli.config)?;
            let recent = RecentEvents::default();
            telemetry::init(&config.log, &config.kiosk.id, &recent);
            let complete = commands::sync(&config, once, retry_parked, &mut std::io::stdout())?;
            if !complete {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Config::load(path, &Env::from_process()).map_err(|e| anyhow::anyhow!("{e}"))
}
