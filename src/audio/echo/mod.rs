//! Echo cancellation: removes the kiosk's own loudspeaker from the
//! microphone so the visitor can be heard while the bot talks.
//!
//! The capture path holds one [`EchoCanceller`] behind a trait so the
//! implementation can be swapped; [`Aec3`] (WebRTC's AEC3, with its noise
//! suppressor and AGC2 as options) is the one the engine builds.

mod aec3;
mod high_pass;
pub mod room;

pub use aec3::Aec3;

use super::units::{FRAME_48K, Millis, VAD_FRAME};

/// What the canceller reports about the echo it sees.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EchoStats {
    /// How far the canceller's filter brings the echo down (echo return
    /// loss enhancement), in dB; `None` if the canceller gives no figure.
    /// AEC3's starts near 0 dB and rises over the first seconds the bot
    /// talks, as its filter converges.
    pub erle_db: Option<f32>,
    /// Loss from the speaker signal to its echo at the microphone, in dB.
    pub erl_db: Option<f32>,
    /// The speaker-to-microphone delay the canceller has locked on to.
    pub delay: Option<Millis>,
}

/// An acoustic echo canceller working in 10 ms frames.
///
/// `render` takes every frame handed to the speaker (silence included);
/// `process` takes the microphone frame at 16 kHz and writes it cleaned of
/// that echo. Neither may allocate: both run on the DSP thread.
pub trait EchoCanceller: Send {
    /// Takes the 48 kHz frame just handed to the speaker.
    fn render(&mut self, speaker: &[f32; FRAME_48K]);
    /// Writes the 16 kHz microphone frame cleaned of the speaker's echo.
    fn process(&mut self, mic: &[f32; VAD_FRAME], clean: &mut [f32; VAD_FRAME]);
    /// The canceller's latest figures.
    fn stats(&self) -> EchoStats;
}
