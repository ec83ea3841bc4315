//! Plain parameter structs for the audio engine.
//!
//! The configuration layer maps the TOML sections `[audio]` and `[vad]` onto
//! these; the defaults here are the documented defaults.

use super::units::Millis;
use super::vad::Aggressiveness;

/// Where audio comes from or goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The host's default device.
    Default,
    /// A device whose name equals this, or uniquely contains it.
    Named(String),
    /// `wav:<path>`: input plays the file in real time; output records to it.
    Wav(std::path::PathBuf),
    /// `none`: no device in this direction (tools, or a kiosk without a speaker).
    Disabled,
}

impl DeviceSpec {
    /// Parses the config form: `"default"`, `"wav:<path>"` or a device name.
    pub fn parse(spec: &str) -> DeviceSpec {
        match spec {
            "" | "default" => DeviceSpec::Default,
            "none" => DeviceSpec::Disabled,
            _ => match spec.strip_prefix("wav:") {
                Some(path) => DeviceSpec::Wav(path.into()),
                None => DeviceSpec::Named(spec.to_owned()),
            },
        }
    }
}

/// How hard the capture path's noise suppressor works (`[audio] noise_suppression`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NoiseSuppression {
    /// Steady noise reaches the VAD and the agent as it is.
    #[default]
    Off,
    /// WebRTC's mildest level: about 6 dB off steady noise.
    Low,
    /// About 12 dB.
    Moderate,
    /// About 18 dB; speech may start to sound processed.
    High,
}

impl NoiseSuppression {
    /// The config spellings, in order of strength.
    pub const NAMES: [&'static str; 4] = ["off", "low", "moderate", "high"];

    /// The level a config spelling names, if any.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "off" => Some(Self::Off),
            "low" => Some(Self::Low),
            "moderate" => Some(Self::Moderate),
            "high" => Some(Self::High),
            _ => None,
        }
    }
}

/// The packet lengths `opus_frame_ms` may take.
pub const OPUS_FRAME_LENGTHS: [Millis; 2] = [Millis(20), Millis(40)];

/// `[audio]`: devices, codec and playout.
#[derive(Clone, Debug, PartialEq)]
pub struct AudioSettings {
    /// The microphone.
    pub input: DeviceSpec,
    /// The speaker.
    pub output: DeviceSpec,
    /// Fade out and flush the bot's audio when the visitor starts speaking.
    pub barge_in: bool,
    /// Opus bitrate, bits per second.
    pub opus_bitrate_bps: i32,
    /// 0 (cheapest) to 10 (best). The default, 1, skips SILK's delayed-decision
    /// quantiser: half the encoder's CPU of 5 for 0.4 dB less segmental SNR on
    /// the speech fixture, a difference speech recognition does not notice.
    pub opus_complexity: i32,
    /// Loss the encoder should expect, which sizes its in-band FEC.
    pub opus_expected_loss_percent: i32,
    /// Audio in each packet to the agent: 40 ms (the default) or 20 ms (as
    /// browsers send). 40 ms halves the packets and with them a third of
    /// the call's CPU (docs/profile.md), for 20 ms more delay to the agent
    /// and 40 ms of speech lost with each lost packet. An agent whose SDP
    /// answer asks for shorter packets (`a=maxptime`, `a=ptime`) gets 20 ms;
    /// the SIP leg offers 20 ms, so the config makes that its default.
    pub opus_frame_ms: Millis,
    /// Opus DTX towards the agent: silence inside a live call is sent as
    /// nothing at all. Off by default because an agent such as Pipecat hears
    /// silence only through frames: with no packets its VAD never sees the
    /// end of a turn. Only for agents known to conceal gaps as silence.
    pub dtx: bool,
    /// The playout jitter buffer adapts its depth between these bounds.
    pub jitter_min_ms: Millis,
    /// See `jitter_min_ms`.
    pub jitter_max_ms: Millis,
    /// Playout queued between the DSP thread and the speaker callback:
    /// enough to ride over the thread's wake-ups, small enough that a
    /// barge-in fade is heard at once. The microphone wakes the thread once
    /// per packet; at 20 ms packets 30 ms lasts from one wake-up to the
    /// next with a 10 ms speaker period to spare, and at 40 ms the speaker
    /// wakes the thread once in between when its queue runs low. Less makes
    /// the speaker wake the thread more often: 10 ms less delay for more
    /// wake-ups.
    pub device_buffer_ms: Millis,
    /// Microphone samples the ring between callback and DSP thread holds.
    /// It adds no delay (the DSP thread drains it as each packet's audio
    /// comes in); it absorbs bursts from devices that deliver faster than
    /// real time. Overflow is dropped and counted.
    pub input_buffer_ms: Millis,
    /// Backoff for reopening a device that failed, doubling up to the max.
    pub reopen_backoff_min_ms: Millis,
    /// See `reopen_backoff_min_ms`.
    pub reopen_backoff_max_ms: Millis,
    /// Cancel the speaker's echo in the microphone before the VAD and the
    /// encoder, so the visitor can talk over the bot. Ignored, like
    /// `echo_gate`, without a speaker or with a `wav:` microphone.
    pub echo_cancel: bool,
    /// Noise suppression after echo cancellation (only with `echo_cancel`).
    pub noise_suppression: NoiseSuppression,
    /// Automatic gain after echo cancellation (only with `echo_cancel`).
    pub auto_gain: bool,
    /// Keep the bot's echo from starting an utterance by level: on its own
    /// it needs the visitor louder than the echo by `vad.echo_margin_db`;
    /// behind the canceller it only guards against what is left of the echo.
    pub echo_gate: bool,
}

impl AudioSettings {
    /// `opus_frame_ms`, or 20 ms for a length the config would have
    /// refused (settings built in code).
    pub fn opus_frame(&self) -> Millis {
        if OPUS_FRAME_LENGTHS.contains(&self.opus_frame_ms) {
            self.opus_frame_ms
        } else {
            OPUS_FRAME_LENGTHS[0]
        }
    }
}

impl Default for AudioSettings {
    fn default() -> Self {
        Self {
            input: DeviceSpec::Default,
            output: DeviceSpec::Default,
            barge_in: true,
            opus_bitrate_bps: 32_000,
            opus_complexity: 1,
            opus_expected_loss_percent: 10,
            opus_frame_ms: Millis(40),
            dtx: false,
            jitter_min_ms: Millis(40),
            jitter_max_ms: Millis(80),
            device_buffer_ms: Millis(30),
            input_buffer_ms: Millis(500),
            reopen_backoff_min_ms: Millis(500),
            reopen_backoff_max_ms: Millis(10_000),
            echo_cancel: true,
            noise_suppression: NoiseSuppression::Off,
            auto_gain: false,
            echo_gate: true,
        }
    }
}

/// `[vad]`: what counts as the visitor speaking.
#[derive(Clone, Debug, PartialEq)]
pub struct VadSettings {
    /// How strict the voice detector is about what counts as speech
    /// (behind the echo canceller and its gate, one step less strict dates
    /// the start of a word spoken over the bot).
    pub aggressiveness: Aggressiveness,
    /// Onset: at least `onset_voiced_ms` of voiced frames within the last
    /// `onset_window_ms`.
    pub onset_window_ms: Millis,
    /// See `onset_window_ms`.
    pub onset_voiced_ms: Millis,
    /// Audio kept from before the onset so the first phoneme is not clipped.
    pub preroll_ms: Millis,
    /// Silence that ends an utterance.
    pub hangover_ms: Millis,
    /// Shorter bursts are clicks and bumps, not speech; they are discarded.
    pub min_speech_ms: Millis,
    /// Longer utterances are split so downstream consumers see bounded pieces.
    pub max_utterance_ms: Millis,
    /// Speech held while the link is not ready; the oldest goes first on overflow.
    pub buffer_ms: Millis,
    /// While the bot plays, the microphone must be this far above the
    /// estimated echo of the bot's voice for the VAD to count it.
    pub echo_margin_db: f32,
}

impl Default for VadSettings {
    fn default() -> Self {
        Self {
            aggressiveness: Aggressiveness::Aggressive,
            onset_window_ms: Millis(50),
            onset_voiced_ms: Millis(30),
            preroll_ms: Millis(300),
            hangover_ms: Millis(500),
            min_speech_ms: Millis(200),
            max_utterance_ms: Millis(30_000),
            buffer_ms: Millis(15_000),
            echo_margin_db: 6.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_specs_parse_from_config_strings() {
        assert_eq!(DeviceSpec::parse("default"), DeviceSpec::Default);
        assert_eq!(
            DeviceSpec::parse("wav:/tmp/in.wav"),
            DeviceSpec::Wav("/tmp/in.wav".into())
        );
        assert_eq!(
            DeviceSpec::parse("USB Audio"),
            DeviceSpec::Named("USB Audio".into())
        );
    }
}
