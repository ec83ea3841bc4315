//! Frame-level voice activity decisions (webrtc-vad).

use std::fmt;
use std::str::FromStr;

use webrtc_vad::{SampleRate as VadRate, Vad, VadMode};

use super::units::{VAD_FRAME, f32_to_i16};

/// webrtc-vad's mode: higher values reject more non-speech (noise) at the
/// cost of missing some quiet speech.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggressiveness {
    /// Mode 0: lets through most sound, speech is rarely missed.
    Quality,
    /// Mode 1.
    LowBitrate,
    /// Mode 2.
    Aggressive,
    /// Mode 3: rejects the most noise.
    VeryAggressive,
}

impl Aggressiveness {
    /// The mode number, 0 to 3, as configured.
    pub fn level(self) -> u8 {
        match self {
            Aggressiveness::Quality => 0,
            Aggressiveness::LowBitrate => 1,
            Aggressiveness::Aggressive => 2,
            Aggressiveness::VeryAggressive => 3,
        }
    }

    /// The mode for a configured number; `None` above 3.
    pub fn from_level(level: u8) -> Option<Self> {
        match level {
            0 => Some(Aggressiveness::Quality),
            1 => Some(Aggressiveness::LowBitrate),
            2 => Some(Aggressiveness::Aggressive),
            3 => Some(Aggressiveness::VeryAggressive),
            _ => None,
        }
    }

    /// One step more lenient (mode 0 stays at 0).
    pub fn more_lenient(self) -> Self {
        Self::from_level(self.level().saturating_sub(1)).unwrap_or(self)
    }

    fn mode(self) -> VadMode {
        match self {
            Aggressiveness::Quality => VadMode::Quality,
            Aggressiveness::LowBitrate => VadMode::LowBitrate,
            Aggressiveness::Aggressive => VadMode::Aggressive,
            Aggressiveness::VeryAggressive => VadMode::VeryAggressive,
        }
    }
}

impl fmt::Display for Aggressiveness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.level())
    }
}

impl FromStr for Aggressiveness {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<u8>()
            .ok()
            .and_then(Aggressiveness::from_level)
            .ok_or_else(|| format!("aggressiveness must be 0, 1, 2 or 3, not {s:?}"))
    }
}

/// Classifies 10 ms frames at 16 kHz as voiced or not.
pub struct VoiceDetector {
    vad: Vad,
    pcm: [i16; VAD_FRAME],
}

// SAFETY: `Vad` holds a pointer to a libfvad instance, a plain heap struct
// with no thread affinity or shared state. `VoiceDetector` owns it
// exclusively and only uses it through `&mut self`, so moving it to the DSP
// thread is sound.
unsafe impl Send for VoiceDetector {}

impl VoiceDetector {
    /// A detector for 16 kHz audio in 10 ms frames.
    pub fn new(aggressiveness: Aggressiveness) -> Self {
        Self {
            vad: Vad::new_with_rate_and_mode(VadRate::Rate16kHz, aggressiveness.mode()),
            pcm: [0; VAD_FRAME],
        }
    }

    /// `frame` is exactly one 10 ms frame at 16 kHz.
    pub fn is_voiced(&mut self, frame: &[f32; VAD_FRAME]) -> bool {
        for (dst, &src) in self.pcm.iter_mut().zip(frame) {
            *dst = f32_to_i16(src);
        }
        // The frame length is fixed by the type, the only input fvad rejects.
        self.vad.is_voice_segment(&self.pcm).unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_is_not_voice_and_levels_parse() {
        let mut vad = VoiceDetector::new(Aggressiveness::Aggressive);
        assert!(!vad.is_voiced(&[0.0; VAD_FRAME]));
        assert_eq!(
            "3".parse::<Aggressiveness>(),
            Ok(Aggressiveness::VeryAggressive)
        );
        assert!("4".parse::<Aggressiveness>().is_err());
        assert_eq!(
            Aggressiveness::Aggressive.more_lenient(),
            Aggressiveness::LowBitrate
        );
        assert_eq!(
            Aggressiveness::Quality.more_lenient(),
            Aggressiveness::Quality
        );
    }
}
