//! [`EchoCanceller`] on WebRTC's audio processing module (the `sonora`
//! port): AEC3, optionally followed by its noise suppressor and AGC2.

use sonora::config::{
    AdaptiveDigital, EchoCanceller as Aec3Config, GainController2, NoiseSuppression as NsConfig,
    NoiseSuppressionLevel, TransparentModeType,
};
use sonora::{AudioProcessing, Config, StreamConfig};

use super::{EchoCanceller, EchoStats};
use crate::audio::settings::NoiseSuppression;
use crate::audio::units::{FRAME_48K, Millis, SampleRate, VAD_FRAME};

/// WebRTC's AEC3 (through sonora), with its noise suppressor and AGC2 as
/// the settings ask.
pub struct Aec3 {
    apm: AudioProcessing,
    /// Where the module writes the speaker frame back (it leaves it as is).
    render_out: [f32; FRAME_48K],
}

impl Aec3 {
    /// `stream_delay`: how long a frame handed to the speaker takes to come
    /// back in the microphone through the device buffers alone; the
    /// canceller's own delay estimator finds the room's share.
    pub fn new(noise: NoiseSuppression, auto_gain: bool, stream_delay: Millis) -> Self {
        let level = match noise {
            NoiseSuppression::Off => None,
            NoiseSuppression::Low => Some(NoiseSuppressionLevel::Low),
            NoiseSuppression::Moderate => Some(NoiseSuppressionLevel::Moderate),
            NoiseSuppression::High => Some(NoiseSuppressionLevel::High),
        };
        let config = Config {
            // The HMM notices within a second or two of the bot talking
            // that no echo is coming back (a headset, a muted speaker, `demo`
            // with files) and stops suppressing; the default heuristic
            // kept muting the visitor over the bot there.
            echo_canceller: Some(Aec3Config {
                transparent_mode: TransparentModeType::Hmm,
                ..Aec3Config::default()
            }),
            noise_suppression: level.map(|level| NsConfig {
                level,
                ..NsConfig::default()
            }),
            gain_controller2: auto_gain.then(|| GainController2 {
                adaptive_digital: Some(AdaptiveDigital::default()),
                ..GainController2::default()
            }),
            ..Config::default()
        };
        let mut apm = AudioProcessing::builder()
            .config(config)
            .capture_config(StreamConfig::new(SampleRate::VAD.hz(), 1))
            .render_config(StreamConfig::new(SampleRate::OPUS.hz(), 1))
            .build();
        // Out of range is clamped to 0..=500 ms, which is what we want.
        let _ = apm.set_stream_delay_ms(i32::try_from(stream_delay.0).unwrap_or(i32::MAX));
        Self {
            apm,
            render_out: [0.0; FRAME_48K],
        }
    }
}

impl EchoCanceller for Aec3 {
    fn render(&mut self, speaker: &[f32; FRAME_48K]) {
        // The module only fails on stream formats other than the fixed
        // ones above; a frame it did not take is one frame of reference less.
        let _ = self
            .apm
            .process_render_f32(&[&speaker[..]], &mut [&mut self.render_out[..]]);
    }

    fn process(&mut self, mic: &[f32; VAD_FRAME], clean: &mut [f32; VAD_FRAME]) {
        if self
            .apm
            .process_capture_f32(&[&mic[..]], &mut [&mut clean[..]])
            .is_err()
        {
            clean.copy_from_slice(mic);
        }
    }

    fn stats(&self) -> EchoStats {
        let s = self.apm.statistics();
        EchoStats {
            erle_db: s.echo_return_loss_enhancement.map(|v| v as f32),
            erl_db: s.echo_return_loss.map(|v| v as f32),
            delay: s.delay_ms.and_then(|d| u32::try_from(d).ok()).map(Millis),
        }
    }
}
