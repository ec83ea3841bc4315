//! The audio subcommands (`vad`, `bench`, `devices`); `main` only parses
//! arguments and calls these.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::AudioError;
use super::bench::{self, BenchReport};
use super::capture::{AudioEvent, AudioSink, CaptureProcessor, EncodedFrame};
use super::device::{DeviceList, list_devices};
use super::engine::AudioEngine;
use super::metrics::AudioMetrics;
use super::settings::{AudioSettings, DeviceSpec, VadSettings};
use super::units::{FRAME_MS, Millis, SampleRate};
use super::vad::Aggressiveness;
use super::wav::read_wav;

/// Arguments of `kiosk-gateway vad`.
#[derive(Clone, Debug)]
pub struct VadArgs {
    /// A WAV file, processed as fast as possible...
    pub input: Option<PathBuf>,
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
        Some(path) => vad_file(path, &settings)?,
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

/// One utterance in `vad --json` output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SegmentReport {
    /// Where it starts in the input.
    pub start_ms: u32,
    /// Where it ends.
    pub end_ms: u32,
}

/// `vad --json` output: `{"segments":[{"start_ms","end_ms"}],"speech_ms","duration_ms"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VadReport {
    /// The utterances, in order.
    pub segments: Vec<SegmentReport>,
    /// Their total length.
    pub speech_ms: u32,
    /// The input's length.
    pub duration_ms: u32,
}

impl VadReport {
    /// Human-readable table for the terminal.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for (i, s) in self.segments.iter().enumerate() {
            out.push_str(&format!(
                "{:>3}  {:>8.2} s  {:>8.2} s  {:>6} ms\n",
                i + 1,
                f64::from(s.start_ms) / 1000.0,
                f64::from(s.end_ms) / 1000.0,
                s.end_ms - s.start_ms
            ));
        }
        out.push_str(&format!(
            "{} utterance(s), {} ms of speech in {} ms\n",
            self.segments.len(),
            self.speech_ms,
            self.duration_ms
        ));
        out
    }
}

/// Collects the utterances of a capture run.
#[derive(Default)]
struct SegmentCollector {
    segments: Vec<SegmentReport>,
}

impl AudioSink for SegmentCollector {
    fn event(&mut self, event: AudioEvent) {
        if let AudioEvent::SpeechEnded(u) = event {
            self.segments.push(SegmentReport {
                start_ms: u.start.0,
                end_ms: u.end.0,
            });
        }
    }

    fn frame(&mut self, _frame: EncodedFrame) {}
}

/// Listens on a live input for `duration` and reports the utterances, as
/// `vad_file` does for a file: a technician's check of microphone and VAD.
pub fn vad_device(
    input: DeviceSpec,
    duration: Millis,
    vad: &VadSettings,
) -> Result<VadReport, AudioError> {
    let audio = AudioSettings {
        input,
        output: DeviceSpec::Disabled,
        ..AudioSettings::default()
    };
    let mut engine = AudioEngine::start(&audio, vad)?;
    let started = Instant::now();
    let limit = Duration::from_millis(u64::from(duration.0));
    let mut collector = SegmentCollector::default();
    while started.elapsed() < limit {
        if let Ok(event) = engine
            .events()
            .recv_timeout(limit - started.elapsed().min(limit))
        {
            collector.event(event);
        }
    }
    engine.stop()?;
    for event in engine.events().try_iter() {
        collector.event(event);
    }
    let speech_ms = collector
        .segments
        .iter()
        .map(|s| s.end_ms - s.start_ms)
        .sum();
    Ok(VadReport {
        segments: collector.segments,
        speech_ms,
        duration_ms: duration.0,
    })
}

/// Runs the capture-side processing over a WAV file as fast as possible
/// and reports the utterances found (`kiosk-gateway vad`).
pub fn vad_file(path: &Path, vad: &VadSettings) -> Result<VadReport, AudioError> {
    let clip = read_wav(path)?;
    let block = clip.rate.samples_in(FRAME_MS).max(1);
    let mut capture = CaptureProcessor::new(
        &AudioSettings::default(),
        vad,
        clip.rate,
        block,
        false,
        Arc::new(AudioMetrics::default()),
    )?;
    let mut collector = SegmentCollector::default();
    for chunk in clip.samples.chunks(block) {
        capture.push_samples(chunk, &mut collector)?;
    }
    capture.finish(&mut collector);
    let speech_ms = collector
        .segments
        .iter()
        .map(|s| s.end_ms - s.start_ms)
        .sum();
    Ok(VadReport {
        segments: collector.segments,
        speech_ms,
        duration_ms: clip.duration().0,
    })
}
