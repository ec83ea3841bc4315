//! The high-pass filter in front of the echo canceller: takes DC and
//! rumble (handling noise, a fan, the kiosk's own hum) out of the
//! microphone, which the canceller's linear filter cannot model and would
//! otherwise chase.
//!
//! A second-order Butterworth section (RBJ's audio-EQ cookbook) in
//! transposed direct form. sonora has one too, but it computes every sample
//! with `f32::mul_add`, which on x86-64 builds without FMA in the baseline
//! is a library call per multiply; this one is plain arithmetic and costs a
//! small fraction of it.

use std::f32::consts::{FRAC_1_SQRT_2, PI};

use crate::audio::units::SampleRate;

/// Below this, sound is rumble rather than speech.
const CUTOFF_HZ: f32 = 80.0;

/// One biquad section with its state.
pub(super) struct HighPass {
    b0: f32,
    b1: f32,
    b2: f32,
    a1: f32,
    a2: f32,
    s1: f32,
    s2: f32,
}

impl HighPass {
    /// A Butterworth high-pass at [`CUTOFF_HZ`] for audio at `rate`.
    pub(super) fn new(rate: SampleRate) -> Self {
        let w0 = 2.0 * PI * CUTOFF_HZ / rate.hz() as f32;
        let alpha = w0.sin() / (2.0 * FRAC_1_SQRT_2);
        let cos = w0.cos();
        let a0 = 1.0 + alpha;
        Self {
            b0: (1.0 + cos) / 2.0 / a0,
            b1: -(1.0 + cos) / a0,
            b2: (1.0 + cos) / 2.0 / a0,
            a1: -2.0 * cos / a0,
            a2: (1.0 - alpha) / a0,
            s1: 0.0,
            s2: 0.0,
        }
    }

    /// Filters `samples` in place.
    pub(super) fn process(&mut self, samples: &mut [f32]) {
        for x in samples {
            let y = self.b0 * *x + self.s1;
            self.s1 = self.b1 * *x - self.a1 * y + self.s2;
            self.s2 = self.b2 * *x - self.a2 * y;
            *x = y;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root-mean-square level of a tone at `hz` after the filter has settled.
    fn gain_db(hz: f32) -> f32 {
        let rate = SampleRate::VAD;
        let mut filter = HighPass::new(rate);
        let mut tone: Vec<f32> = (0..rate.hz() as usize)
            .map(|n| (2.0 * PI * hz * n as f32 / rate.hz() as f32).sin())
            .collect();
        filter.process(&mut tone);
        let settled = &tone[tone.len() / 2..];
        let rms = (settled.iter().map(|s| s * s).sum::<f32>() / settled.len() as f32).sqrt();
        20.0 * (rms * 2f32.sqrt()).log10()
    }

    #[test]
    fn speech_passes_and_rumble_and_dc_do_not() {
        assert!(
            gain_db(1_000.0).abs() < 0.1,
            "1 kHz: {} dB",
            gain_db(1_000.0)
        );
        assert!(gain_db(300.0).abs() < 0.5, "300 Hz: {} dB", gain_db(300.0));
        assert!(
            (gain_db(CUTOFF_HZ) + 3.0).abs() < 0.3,
            "cutoff: {} dB",
            gain_db(CUTOFF_HZ)
        );
        assert!(gain_db(20.0) < -20.0, "20 Hz: {} dB", gain_db(20.0));

        let mut dc = vec![0.5f32; SampleRate::VAD.hz() as usize];
        HighPass::new(SampleRate::VAD).process(&mut dc);
        assert!(
            dc[dc.len() - 1].abs() < 1e-4,
            "DC left: {}",
            dc[dc.len() - 1]
        );
    }
}
