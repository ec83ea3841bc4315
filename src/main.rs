//! kiosk-gateway: bridges a voice kiosk's microphone and speaker to a cloud
//! voice agent over WebRTC. See DESIGN.md for the shared picture.
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use kiosk_gateway::audio::{self, Aggressiveness, VadSettings};

/// Bridges an on-prem voice kiosk to a cloud voice agent.
#[derive(Parser)]
#[command(name = "kiosk-gateway", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run voice activity detection over a WAV file and print the utterances
    Vad {
        /// WAV file (any rate, mono or multichannel)
        #[arg(long)]
        input: PathBuf,
        /// VAD aggressiveness, 0 (least) to 3 (most noise rejection)
        #[arg(long)]
        aggressiveness: Option<Aggressiveness>,
        /// Print {"segments":[{"start_ms","end_ms"}],"speech_ms","duration_ms"}
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Vad {
            input,
            aggressiveness,
            json,
        }) => {
            let mut settings = VadSettings::default();
            if let Some(a) = aggressiveness {
                settings.aggressiveness = a;
            }
            let report = audio::cli::vad_file(&input, &settings)?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.to_text());
            }
        }
        None => {}
    }
    Ok(())
}
