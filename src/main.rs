use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kiosk_gateway::audio::{self, Aggressiveness, Millis, SampleRate};
use kiosk_gateway::config::{self, Config, Env};
use kiosk_gateway::telemetry::RecentEvents;
use kiosk_gateway::{commands, daemon, telemetry};

/// Bridges an on-prem voice kiosk's microphone and speaker to a cloud voice agent.
#[derive(Parser)]
#[command(name = "kiosk-gateway", version, about)]
struct Cli {
    /// Config file [default: /etc/kiosk-gateway/config.toml]
    #[arg(long, global = true, env = config::PATH_VAR)]
    config: Option<PathBuf>,
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
    /// Run voice activity detection over a WAV file (or a live input) and print the utterances.
    Vad {
        /// WAV file (any rate, mono or multichannel)
        #[arg(long, required_unless_present = "device", conflicts_with = "device")]
        input: Option<PathBuf>,
        /// Listen on a live input instead ("default" or a device name)
        #[arg(long)]
        device: Option<String>,
        /// How long to listen on --device
        #[arg(long, default_value_t = 10_000)]
        duration_ms: u32,
        /// VAD aggressiveness, 0 (least) to 3 (most noise rejection); default from the config
        #[arg(long)]
        aggressiveness: Option<Aggressiveness>,
        /// Print {"segments":[{"start_ms","end_ms"}],"speech_ms","duration_ms"}
        #[arg(long)]
        json: bool,
    },
    /// List audio inputs and outputs with their rates and channel counts.
    Devices {
        /// Print {"inputs":[...],"outputs":[...]}
        #[arg(long)]
        json: bool,
    },
    /// Measure audio pipeline throughput (capture and playout paths).
    Bench {
        /// Microphone and speaker rate to simulate
        #[arg(long, default_value_t = 48_000)]
        device_rate: u32,
        /// Opus encoder complexity, 0-10; default from the config
        #[arg(long)]
        opus_complexity: Option<i32>,
        /// Print {"capture":{"x_realtime","ns_per_10ms_frame","stages"},"playout":{...}}
        #[arg(long)]
        json: bool,
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
    let explicit = cli.config.is_some();
    let path = cli
        .config
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
    match cli.command {
        Command::Run => {
            let config = load(&path)?;
            let recent = RecentEvents::default();
            telemetry::init(&config.log, &config.kiosk.id, &recent);
            daemon::run(config, recent)?;
        }
        Command::Check => {
            if !commands::check(&path, &mut std::io::stdout(), &mut std::io::stderr())? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Transcripts { session, json } => {
            telemetry::init_for_command();
            let config = load(&path)?;
            commands::transcripts(
                &config.store.path,
                session.as_deref(),
                json,
                &mut std::io::stdout(),
            )
            .context("cannot list transcripts")?;
        }
        Command::Sync { once, retry_parked } => {
            let config = load(&path)?;
            let recent = RecentEvents::default();
            telemetry::init(&config.log, &config.kiosk.id, &recent);
            if !commands::sync(&config, once, retry_parked, &mut std::io::stdout())? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Vad {
            input,
            device,
            duration_ms,
            aggressiveness,
            json,
        } => {
            telemetry::init_for_command();
            let settings = tool_config(&path, explicit)?
                .map(|c| c.vad)
                .unwrap_or_default();
            print!(
                "{}",
                audio::cli::vad_command(&audio::cli::VadArgs {
                    input,
                    device,
                    duration: Millis(duration_ms),
                    settings,
                    aggressiveness,
                    json,
                })?
            );
        }
        Command::Devices { json } => {
            telemetry::init_for_command();
            print!("{}", audio::cli::devices_command(json)?);
        }
        Command::Bench {
            device_rate,
            opus_complexity,
            json,
        } => {
            telemetry::init_for_command();
            let settings = tool_config(&path, explicit)?
                .map(|c| c.audio)
                .unwrap_or_default();
            print!(
                "{}",
                audio::cli::bench_command(
                    SampleRate(device_rate),
                    &settings,
                    opus_complexity,
                    json
                )?
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Config::load(path, &Env::from_process()).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Audio tools work on a laptop without any config: the default file is
/// used when present, defaults otherwise; a named file must load.
fn tool_config(path: &Path, explicit: bool) -> anyhow::Result<Option<Config>> {
    if explicit || path.exists() {
        load(path).map(Some)
    } else {
        Ok(None)
    }
}
