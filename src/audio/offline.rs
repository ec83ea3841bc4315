//! The capture path run offline over a recording: what `vad` reports and
//! what tests and the bench compare with the truth.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::AudioError;
use super::capture::{AudioEvent, AudioSink, CaptureProcessor, EncodedFrame};
use super::echo::EchoStats;
use super::engine::AudioEngine;
use super::metrics::AudioMetrics;
use super::resample::resample_clip;
use super::settings::{AudioSettings, DeviceSpec, VadSettings};
use super::units::{FRAME_48K, FRAME_MS, Millis, SampleRate};
use super::wav::{PcmClip, read_wav};

/// One utterance in `vad --json` output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SegmentReport {
    /// Where it starts in the input.
    pub start_ms: u32,
    /// Where it ends.
    pub end_ms: u32,
}

/// The echo canceller's figures at the end of a `vad --reference` run.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct EchoReport {
    /// Echo return loss enhancement the canceller reports, in dB.
    pub erle_db: Option<f32>,
    /// The speaker-to-microphone delay it found.
    pub delay_ms: Option<u32>,
}

impl From<EchoStats> for EchoReport {
    fn from(stats: EchoStats) -> Self {
        Self {
            erle_db: stats.erle_db,
            delay_ms: stats.delay.map(|d| d.0),
        }
    }
}

/// `vad --json` output: `{"segments":[{"start_ms","end_ms"}],"speech_ms","duration_ms"}`,
/// plus `"echo":{"erle_db","delay_ms"}` with `--reference`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VadReport {
    /// The utterances, in order.
    pub segments: Vec<SegmentReport>,
    /// Their total length.
    pub speech_ms: u32,
    /// The input's length.
    pub duration_ms: u32,
    /// The canceller's figures, when a speaker reference was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub echo: Option<EchoReport>,
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
        if let Some(echo) = &self.echo {
            let erle = echo.erle_db.map_or("-".into(), |e| format!("{e:.1} dB"));
            let delay = echo.delay_ms.map_or("-".into(), |d| format!("{d} ms"));
            out.push_str(&format!(
                "echo canceller: ERLE {erle}, echo delay {delay}\n"
            ));
        }
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
        echo: None,
    })
}

/// Runs the capture path (echo canceller, VAD, segmenter) over a
/// microphone recording as fast as possible and reports the utterances
/// found (`kiosk-gateway vad`). With `speaker`, what the speaker played
/// from the same instant (any rate), its echo is cancelled first; without
/// it, nothing was played.
pub fn vad_clip(
    mic: &PcmClip,
    speaker: Option<&PcmClip>,
    audio: &AudioSettings,
    vad: &VadSettings,
) -> Result<VadReport, AudioError> {
    let block = mic.rate.samples_in(FRAME_MS).max(1);
    let audio = AudioSettings {
        echo_cancel: audio.echo_cancel && speaker.is_some(),
        ..audio.clone()
    };
    let metrics = Arc::new(AudioMetrics::default());
    let mut capture = CaptureProcessor::new(&audio, vad, mic.rate, block, false, metrics.clone())?;
    let reference = match speaker {
        Some(clip) => resample_clip(&clip.samples, clip.rate, SampleRate::OPUS)?,
        None => Vec::new(),
    };
    let mut frames = reference.chunks(FRAME_48K);
    let mut played = [0.0; FRAME_48K];
    let mut collector = SegmentCollector::default();
    for chunk in mic.samples.chunks(block) {
        played.fill(0.0);
        if let Some(frame) = frames.next() {
            played[..frame.len()].copy_from_slice(frame);
        }
        capture.observe_playout(&played);
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
        duration_ms: mic.duration().0,
        echo: audio.echo_cancel.then(|| metrics.echo().into()),
    })
}

/// Runs the capture path over a WAV file as fast as possible and reports
/// the utterances found: [`vad_clip`] with nothing played.
pub fn vad_file(path: &Path, vad: &VadSettings) -> Result<VadReport, AudioError> {
    vad_clip(&read_wav(path)?, None, &AudioSettings::default(), vad)
}
