//! The audio engine: microphone in, speaker out, and the voice activity
//! detection that decides what the visitor said.
//!
//! This module knows nothing of the network, storage or sessions. It takes
//! samples and settings and gives back events and encoded frames.

pub mod bench;
mod capture;
pub mod cli;
mod codec;
mod dsp;
mod echo_gate;
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
pub use metrics::AudioMetrics;
pub use playout::{IncomingPacket, JitterBuffer, NextFrame, Playout};
pub use resample::{StreamResampler, resample_clip};
pub use segmenter::{SegmentOutput, Segmenter, Utterance};
pub use settings::{AudioSettings, DeviceSpec, VadSettings};
pub use units::{Dbfs, FRAME_48K, FRAME_MS, Millis, OPUS_FRAME, SampleRate, VAD_FRAME};
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
}
