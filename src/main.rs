//! kiosk-gateway: bridges a voice kiosk's microphone and speaker to a cloud
//! voice agent over WebRTC. See DESIGN.md for the shared picture.
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use kiosk_gateway::audio::{
    self, Aggressiveness, AudioSettings, DeviceSpec, Millis, SampleRate, VadSettings,
};

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
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Vad {
            input,
            device,
            duration_ms,
            aggressiveness,
            json,
        }) => {
            let mut settings = VadSettings::default();
            if let Some(a) = aggressiveness {
                settings.aggressiveness = a;
            }
            let report = match (input, device) {
                (Some(path), _) => audio::cli::vad_file(&path, &settings)?,
                (None, device) => audio::cli::vad_device(
                    DeviceSpec::parse(device.as_deref().unwrap_or("default")),
                    Millis(duration_ms),
                    &settings,
                )?,
            };
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", report.to_text());
            }
        }
        Some(Command::Devices { json }) => {
            let devices = audio::device::list_devices()?;
            if json {
                println!("{}", serde_json::to_string(&devices)?);
            } else {
                print!("{}", devices.to_text());
            }
        }
        Some(Command::Bench {
            device_rate,
            opus_complexity,
            json,
        }) => {
            let mut settings = AudioSettings::default();
            if let Some(c) = opus_complexity {
                settings.opus_complexity = c;
            }
            let report = audio::bench::run(SampleRate(device_rate), &settings)?;
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
