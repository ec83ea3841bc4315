//! The audio engine: microphone in, speaker out, and the voice activity
//! detection that decides what the visitor said.
//!
//! This module knows nothing of the network, storage or sessions. It takes
//! samples and settings and gives back events and encoded frames.
//!
//! # What the session layer uses
//!
//! ```no_run
//! use kiosk_gateway::audio::{AudioEngine, AudioEvent, AudioSettings, VadSettings};
//! # fn main() -> Result<(), kiosk_gateway::audio::AudioError> {
//! let mut engine = AudioEngine::start(&AudioSettings::default(), &VadSettings::default())?;
//! let bot_audio = engine.playout(); // clone into the link task
//! loop {
//!     match engine.events().recv() {
//!         // The visitor spoke: their speech, pre-roll first, is now being
//!         // encoded and held (up to `vad.buffer_ms`). Provision a session.
//!         Ok(AudioEvent::SpeechStarted { onset, preroll }) => {}
//!         Ok(AudioEvent::SpeechEnded(utterance)) => {} // utterance.speech()
//!         Ok(AudioEvent::BargeIn) => {}          // bot audio was cut off
//!         // A device was lost or (re)opened; both at once when the
//!         // engine's DSP loop failed and when it is back (see below).
//!         Ok(AudioEvent::Device { direction, open }) => {}
//!         Err(_) => break,
//!     }
//!     # let peer_connected = true;
//!     // Once the peer connection can take audio: release the buffer in
//!     // order, then stream every frame until `end_stream`.
//!     if peer_connected {
//!         engine.link_ready();
//!     }
//!     while let Ok(frame) = engine.frames().try_recv() {
//!         // RTP: payload frame.packet.bytes(), timestamp base + frame.timestamp,
//!         // marker bit = frame.after_silence.
//!     }
//!     # let (seq, timestamp, payload) = (0u16, 0u32, [0u8; 3]);
//!     // From the link, each incoming RTP payload of the bot's voice, as
//!     // it came: the engine counts and conceals what it cannot play.
//!     bot_audio.push_payload(seq, timestamp, &payload);
//! }
//! engine.end_stream(); // conversation over: back to waiting for a visitor
//! engine.stop()?;
//! # Ok(()) }
//! ```
//!
//! The queues are bounded tokio channels: the engine never blocks on them,
//! and counts and logs what it had to drop. A plain thread reads them as
//! above ([`EngineReceiver`]); a tokio task takes them with
//! [`AudioEngine::take_streams`] and awaits them. [`AudioMetrics`] (from
//! [`AudioEngine::metrics`]) holds counters and gauges for the status page.
//!
//! # What the agent may send, and when the engine fails
//!
//! Playout takes any payload: every legal Opus duration (2.5 to 120 ms) is
//! played whole and in order; what is not Opus or does not decode is
//! counted (`packets_undecodable`) and concealed, a payload over
//! [`MAX_PACKET`] is counted (`packets_oversize`) and concealed as lost,
//! and decoded audio never leaves full scale. Nothing an agent sends
//! stops the engine.
//!
//! Should the DSP loop fail anyway (an error from a stage: a resampler,
//! the encoder, a speaker file on a full disk), the engine restarts it
//! itself, with backoff. The session layer learns of it through the one
//! event it already handles: `Device { open: false }` for each configured
//! direction when the loop fails, `Device { open: true }` when each is back
//! (devices as they reopen, `wav:` files at the restart). It need not act:
//! a stream released with [`AudioEngine::link_ready`] carries on after the
//! restart without being released again, and an utterance in progress at
//! the failure is closed with `SpeechEnded`. Meanwhile both devices are
//! down on the status page, with the error; [`AudioMetrics`] has the
//! failure, its time and the restart counts.
//!
//! # Building blocks
//!
//! [`Dsp`] is one engine tick without threads or devices (capture,
//! playout, echo gate, barge-in); [`CaptureProcessor`], [`Playout`],
//! [`Segmenter`], [`VoiceDetector`], [`StreamResampler`] and the Opus
//! wrappers are its stages. Tools, tests and benchmarks drive these directly.

mod backend;
pub mod bench;
mod capture;
pub mod cli;
mod codec;
mod denormals;
pub mod device;
mod dsp;
mod dsp_thread;
pub mod echo;
mod echo_gate;
mod engine;
mod metrics;
mod offline;
mod playout;
mod prompt;
mod queue;
mod realtime;
mod resample;
mod segmenter;
mod settings;
mod sound_check;
mod units;
mod vad;
mod wav;

pub use backend::ring::{DeviceSample, fill_block, push_block};
pub use capture::{AudioEvent, AudioSink, CaptureProcessor, EncodedFrame};
pub use codec::{
    AgentDecoder, ExpectedLoss, MAX_DECODED, MAX_EXPECTED_LOSS, MAX_PACKET, OpusDecoder,
    OpusEncoder, OpusPacket, StockBotEncoder, has_fec,
};
pub use dsp::Dsp;
pub use echo::{Aec3, EchoCanceller, EchoStats};
pub use echo_gate::EchoGate;
pub use engine::{AudioEngine, PlayoutSender, SoundCheck};
pub use metrics::{AudioMetrics, EngineFailure};
pub use playout::{IncomingPacket, JitterBuffer, NextFrame, Playout};
pub use prompt::{Prompt, PromptPackets};
pub use queue::EngineReceiver;
pub use realtime::Scheduling;
pub use resample::{StreamResampler, resample_clip};
pub use segmenter::{SegmentOutput, Segmenter, Utterance};
pub use settings::NoiseSuppression;
pub use settings::{AudioSettings, DeviceSpec, OPUS_FRAME_LENGTHS, VadSettings};
pub use sound_check::SoundCheckRecording;
pub use units::{Dbfs, FRAME_48K, FRAME_MS, Millis, OPUS_FRAME, SampleRate, VAD_FRAME, f32_to_i16};
pub use vad::{Aggressiveness, VoiceDetector};
pub use wav::{PcmClip, read_wav, read_wav_bytes, write_wav};

use std::path::PathBuf;

pub(crate) use crate::error_text::error_chain;

/// Everything that can go wrong in the audio engine. Causes are kept as
/// sources, not repeated in the message.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    /// A WAV file cannot be read or written.
    #[error("WAV file {path}")]
    Wav {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: hound::Error,
    },
    /// WAV data in memory is unusable.
    #[error("WAV data")]
    WavData(#[source] hound::Error),
    /// A clip's sample rate is not one a kiosk plays.
    #[error("the clip's sample rate, {0}, is outside 8 to 192 kHz")]
    ClipRate(units::SampleRate),
    /// The resampler failed.
    #[error("resampler: {0}")]
    Resampler(String),
    /// The Opus codec failed.
    #[error("Opus codec")]
    Opus(#[from] opus::Error),
    /// Bytes that are not an Opus packet.
    #[error("not an Opus packet: {0}")]
    InvalidPacket(&'static str),
    /// The audio device failed.
    #[error("audio device")]
    Device(#[source] cpal::Error),
    /// No device matches the configured one.
    #[error("{direction} device not found: {detail}")]
    DeviceNotFound {
        /// Microphone or speaker.
        direction: device::Direction,
        /// What was asked for and what there is.
        detail: String,
    },
    /// Output cannot be written as JSON.
    #[error("JSON output")]
    Json(#[from] serde_json::Error),
    /// The engine stopped.
    #[error("audio engine stopped: {0}")]
    Stopped(String),
    #[error("{direction} device offers no 16-bit or float format")]
    /// The device offers no sample format the engine can use.
    NoUsableFormat {
        /// Microphone or speaker.
        direction: device::Direction,
    },
}
