//! The audio engine: microphone in, speaker out, and the voice activity
//! detection that decides what the visitor said.
//!
//! This module knows nothing of the network, storage or sessions. It takes
//! samples and settings and gives back events and encoded frames.

pub mod bench;
mod capture;
pub mod cli;
mod codec;
pub mod device;
mod dsp;
mod echo_gate;
mod engine;
mod metrics;
mod playout;
mod resample;
mod segmenter;
mod settings;
mod units;
mod vad;
mod wav;

pub use capture::{AudioEvent, AudioSink, CaptureProcessor, EncodedFrame, StreamState};
pub use codec::{MAX_PACKET, OpusDecoder, OpusEncoder, OpusPacket};
pub use dsp::Dsp;
pub use echo_gate::EchoGate;
pub use engine::{AudioEngine, PlayoutSender};
pub use metrics::AudioMetrics;
pub use playout::{IncomingPacket, JitterBuffer, NextFrame, Playout};
pub use resample::{StreamResampler, resample_clip};
pub use segmenter::{SegmentOutput, Segmenter, Utterance};
pub use settings::{AudioSettings, DeviceSpec, VadSettings};
pub use units::{Dbfs, FRAME_48K, FRAME_MS, Millis, OPUS_FRAME, SampleRate, VAD_FRAME, f32_to_i16};
pub use vad::{Aggressiveness, VoiceDetector};
pub use wav::{PcmClip, read_wav, write_wav};

use std::path::PathBuf;

/// Everything that can go wrong in the audio engine.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("WAV file {path}: {source}")]
    Wav {
        path: PathBuf,
        #[source]
        source: hound::Error,
    },
    #[error("resampler: {0}")]
    Resampler(String),
    #[error("opus: {0}")]
    Opus(#[from] opus::Error),
    #[error("audio device: {0}")]
    Device(#[source] cpal::Error),
    #[error("{direction} device not found: {detail}")]
    DeviceNotFound {
        direction: device::Direction,
        detail: String,
    },
    #[error("audio engine stopped: {0}")]
    Stopped(String),
    #[error("{direction} device offers no 16-bit or float format")]
    NoUsableFormat { direction: device::Direction },
}
