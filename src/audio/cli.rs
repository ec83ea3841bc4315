//! The audio subcommands (`vad`, `bench`, `devices`); `main` only parses
//! arguments and calls these.

use std::path::PathBuf;

use serde::Serialize;

use super::AudioError;
use super::bench::{self, BenchReport};
use super::device::{DeviceList, list_devices};
use super::settings::{AudioSettings, DeviceSpec, VadSettings};
use super::units::{Millis, SampleRate};
use super::vad::Aggressiveness;
use super::wav::read_wav;

/// Arguments of `kiosk-gateway vad`.
#[derive(Clone, Debug)]
pub struct VadArgs {
    /// A WAV file, processed as fast as possible...
    pub input: Option<PathBuf>,
    /// ...with what the speaker played meanwhile (same start), whose echo
    /// is cancelled from it.
    pub reference: Option<PathBuf>,
    /// The configured `[audio]` settings (echo canceller, noise suppression).
    pub audio: AudioSettings,
    /// ...or a live input, listened to for `duration`.
    pub device: Option<String>,
    /// How long to listen to a live input.
    pub duration: Millis,
    /// The configured VAD settings...
    pub settings: VadSettings,
    /// ...with this aggressiveness instead, if given.
    pub aggressiveness: Option<Aggressiveness>,
    /// Print JSON.
    pub json: bool,
}

fn render<T: Serialize>(
    value: &T,
    json: bool,
    text: impl FnOnce(&T) -> String,
) -> Result<String, AudioError> {
    if json {
        Ok(serde_json::to_string(value)? + "\n")
    } else {
        Ok(text(value))
    }
}

/// `kiosk-gateway vad`: what to print.
pub fn vad_command(args: &VadArgs) -> Result<String, AudioError> {
    let mut settings = args.settings.clone();
    if let Some(a) = args.aggressiveness {
        settings.aggressiveness = a;
    }
    let report = match &args.input {
        Some(path) => {
            let mic = read_wav(path)?;
            let speaker = args.reference.as_deref().map(read_wav).transpose()?;
            vad_clip(&mic, speaker.as_ref(), &args.audio, &settings)?
        }
        None => vad_device(
            DeviceSpec::parse(args.device.as_deref().unwrap_or("default")),
            args.duration,
            &settings,
        )?,
    };
    render(&report, args.json, VadReport::to_text)
}

/// `kiosk-gateway devices`: what to print.
pub fn devices_command(json: bool) -> Result<String, AudioError> {
    render(&list_devices()?, json, DeviceList::to_text)
}

/// `kiosk-gateway bench`: what to print.
pub fn bench_command(
    device_rate: SampleRate,
    settings: &AudioSettings,
    opus_complexity: Option<i32>,
    json: bool,
) -> Result<String, AudioError> {
    let mut settings = settings.clone();
    if let Some(c) = opus_complexity {
        settings.opus_complexity = c;
    }
    render(
        &bench::run(device_rate, &settings)?,
        json,
        BenchReport::to_text,
    )
}

pub use super::offline::{EchoReport, SegmentReport, VadReport, vad_clip, vad_device, vad_file};
