//! Small value types that keep sample rates, durations and levels apart.

use std::fmt;

/// Frames per second of a mono PCM stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SampleRate(pub u32);

impl SampleRate {
    /// The rate webrtc-vad analyses.
    pub const VAD: SampleRate = SampleRate(16_000);
    /// The rate Opus runs at on the wire and the playout path works in.
    pub const OPUS: SampleRate = SampleRate(48_000);

    /// Samples per second.
    pub fn hz(self) -> u32 {
        self.0
    }

    /// Samples in `ms` milliseconds at this rate (rounded down).
    pub fn samples_in(self, ms: Millis) -> usize {
        (u64::from(self.0) * u64::from(ms.0) / 1000) as usize
    }
}

impl fmt::Display for SampleRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} Hz", self.0)
    }
}

/// A duration or a position on an audio timeline, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub u32);

impl Millis {
    /// Whole 10 ms DSP frames in this duration, rounded up so that a
    /// configured minimum is never undercut.
    pub fn frames(self) -> u32 {
        self.0.div_ceil(FRAME_MS.0)
    }

    /// The length of `frames` 10 ms frames.
    pub fn from_frames(frames: u64) -> Millis {
        Millis(u32::try_from(frames * u64::from(FRAME_MS.0)).unwrap_or(u32::MAX))
    }
}

impl From<Millis> for std::time::Duration {
    fn from(ms: Millis) -> Self {
        Self::from_millis(u64::from(ms.0))
    }
}

impl fmt::Display for Millis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ms", self.0)
    }
}

/// The DSP tick: every stage works on frames of this length.
pub const FRAME_MS: Millis = Millis(10);
/// Samples in one 10 ms frame at 16 kHz (the VAD's input).
pub const VAD_FRAME: usize = 160;
/// Samples in one 10 ms frame at 48 kHz (capture frames handed to Opus, playout frames).
pub const FRAME_48K: usize = 480;
/// Samples in one 20 ms Opus frame at 48 kHz.
pub const OPUS_FRAME: usize = 960;

/// Level of a frame relative to digital full scale.
///
/// Silence is reported as [`Dbfs::FLOOR`] rather than minus infinity so that
/// levels can be averaged, compared and serialised.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Dbfs(pub f32);

impl Dbfs {
    /// The quietest level reported: digital silence reads as this.
    pub const FLOOR: Dbfs = Dbfs(-100.0);

    /// RMS level of samples in [-1, 1].
    pub fn rms(samples: &[f32]) -> Dbfs {
        if samples.is_empty() {
            return Dbfs::FLOOR;
        }
        let energy: f32 = samples.iter().map(|s| s * s).sum::<f32>() / samples.len() as f32;
        if energy <= 1e-10 {
            Dbfs::FLOOR
        } else {
            Dbfs((10.0 * energy.log10()).max(Dbfs::FLOOR.0))
        }
    }
}

/// Converts a float sample in [-1, 1] to i16, rounding half away from
/// zero, with saturation (NaN gives 0).
///
/// Not `f32::round`: without SSE4.1 (baseline x86-64) or ARMv8 (armhf) it
/// is a call into libm for every sample the speaker plays. `as` truncates
/// toward zero and saturates in a few inline instructions.
pub fn f32_to_i16(sample: f32) -> i16 {
    let scaled = sample * 32767.0;
    (scaled + 0.5f32.copysign(scaled)) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_scale_sine_is_about_minus_three_dbfs() {
        let sine: Vec<f32> = (0..480)
            .map(|i| (i as f32 * 2.0 * std::f32::consts::PI * 1000.0 / 48_000.0).sin())
            .collect();
        let level = Dbfs::rms(&sine).0;
        assert!((level + 3.01).abs() < 0.05, "level {level}");
        assert_eq!(Dbfs::rms(&[0.0; 160]), Dbfs::FLOOR);
    }

    #[test]
    fn float_samples_round_to_the_nearest_i16_and_saturate() {
        for k in [-32767i16, -12345, -2, -1, 0, 1, 2, 12345, 32767] {
            assert_eq!(f32_to_i16(f32::from(k) / 32767.0), k);
        }
        // Halves round away from zero, as `f32::round` did.
        assert_eq!(f32_to_i16(2.5 / 32767.0), 3);
        assert_eq!(f32_to_i16(-2.5 / 32767.0), -3);
        assert_eq!(f32_to_i16(2.4 / 32767.0), 2);
        assert_eq!(f32_to_i16(-2.4 / 32767.0), -2);
        assert_eq!(f32_to_i16(1.5), 32767);
        assert_eq!(f32_to_i16(-1.5), -32768);
        assert_eq!(f32_to_i16(f32::INFINITY), 32767);
        assert_eq!(f32_to_i16(f32::NAN), 0);
    }

    #[test]
    fn durations_round_up_to_whole_frames() {
        assert_eq!(Millis(300).frames(), 30);
        assert_eq!(Millis(305).frames(), 31);
        assert_eq!(SampleRate(44_100).samples_in(Millis(10)), 441);
    }
}
