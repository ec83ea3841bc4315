//! kiosk-gateway: bridges a voice kiosk's microphone and speaker to a cloud
//! voice agent over WebRTC. See DESIGN.md for the shared picture.
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use kiosk_gateway::audio::{self, Aggressiveness, Millis, SampleRate};

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
        #[arg(long, required_unless_present = "device", conflicts_with = "device")]
        input: Option<PathBuf>,
        /// Listen on a live input instead ("default" or a device name)
        #[arg(long)]
        device: Option<String>,
        /// How long to listen on --device
        #[arg(long, default_value_t = 10_000)]
        duration_ms: u32,
        /// VAD aggressiveness, 0 (least) to 3 (most noise rejection)
        #[arg(long)]
        aggressiveness: Option<Aggressiveness>,
        /// Print {"segments":[{"start_ms","end_ms"}],"speech_ms","duration_ms"}
        #[arg(long)]
        json: bool,
    },
    /// List audio inputs and outputs with their rates and channel counts
    Devices {
        /// Print {"inputs":[...],"outputs":[...]}
        #[arg(long)]
        json: bool,
    },
    /// Measure audio pipeline throughput (capture and playout paths)
    Bench {
        /// Microphone and speaker rate to simulate
        #[arg(long, default_value_t = 48_000)]
        device_rate: u32,
        /// Opus encoder complexity, 0-10
        #[arg(long)]
        opus_complexity: Option<i32>,
        /// Print {"capture":{"x_realtime","ns_per_10ms_frame","stages"},"playout":{...}}
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let output = match Cli::parse().command {
        Some(Command::Vad {
            input,
            device,
            duration_ms,
            aggressiveness,
            json,
        }) => audio::cli::vad_command(&audio::cli::VadArgs {
            input,
            device,
            duration: Millis(duration_ms),
            aggressiveness,
            json,
        })?,
        Some(Command::Devices { json }) => audio::cli::devices_command(json)?,
        Some(Command::Bench {
            device_rate,
            opus_complexity,
            json,
        }) => audio::cli::bench_command(SampleRate(device_rate), opus_complexity, json)?,
        None => String::new(),
    };
    print!("{output}");
    Ok(())
}
