//! A simulated kiosk room for measuring echo cancellation without a
//! loudspeaker: the bot's voice through a soft-clipping speaker and a
//! reverberant room into the microphone, the visitor speaking over it.
//!
//! `kiosk-gateway bench` and the tests build the same conversation here,
//! so the figures they report are of one scene.

use super::super::units::{Dbfs, Millis, SampleRate, VAD_FRAME};

/// The speaker-to-microphone path.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Room {
    /// Sound travelling straight from the speaker to the microphone.
    pub direct_path: Millis,
    /// Time for the reverberation to fall by 60 dB after the direct path.
    pub decay: Millis,
    /// Gain of the direct path (a speaker close to the microphone).
    pub direct_gain: f32,
    /// The speaker's drive into saturation: 0 is linear, larger clips harder.
    pub drive: f32,
}

impl Default for Room {
    fn default() -> Self {
        Self {
            direct_path: Millis(30),
            decay: Millis(200),
            direct_gain: 0.5,
            drive: 3.0,
        }
    }
}

/// Reflections in the synthetic impulse response after the direct path.
const REFLECTIONS: usize = 600;

/// A small deterministic generator, so every run builds the same room.
struct XorShift(u32);

impl XorShift {
    fn next_unit(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        self.0 as f32 / u32::MAX as f32
    }
}

impl Room {
    /// The impulse response at 16 kHz as (delay in samples, gain) taps: the
    /// direct path, then reflections whose envelope decays by 60 dB over
    /// `decay`. Sparse, so that a long scene convolves quickly.
    pub fn impulse_response(&self) -> Vec<(usize, f32)> {
        let rate = SampleRate::VAD;
        let direct = rate.samples_in(self.direct_path);
        let tail = rate.samples_in(self.decay).max(1);
        let mut random = XorShift(0x2545_f491);
        let mut taps = vec![(direct, self.direct_gain)];
        for _ in 0..REFLECTIONS {
            let after = 1 + (random.next_unit() * (tail - 1) as f32) as usize;
            let envelope = 10f32.powf(-3.0 * after as f32 / tail as f32);
            let sign = if random.next_unit() < 0.5 { -1.0 } else { 1.0 };
            // Scaled so the reverberant energy is about that of the direct path.
            let gain = sign * envelope * self.direct_gain * 2.0 / (REFLECTIONS as f32).sqrt();
            taps.push((direct + after, gain));
        }
        taps
    }

    /// What the loudspeaker's cone does with a sample: soft saturation.
    fn speaker(&self, sample: f32) -> f32 {
        if self.drive <= 0.0 {
            sample
        } else {
            (sample * self.drive).tanh() / self.drive
        }
    }

    /// The echo at the microphone (16 kHz) of what the speaker was given.
    pub fn echo(&self, speaker16: &[f32]) -> Vec<f32> {
        let driven: Vec<f32> = speaker16.iter().map(|&s| self.speaker(s)).collect();
        let len = speaker16.len();
        let mut echo = vec![0.0; len];
        for (delay, gain) in self.impulse_response() {
            for (out, &s) in echo[delay.min(len)..].iter_mut().zip(&driven) {
                *out += gain * s;
            }
        }
        echo
    }
}

/// Frames at least this loud count as active when signal levels are compared.
const ACTIVE: Dbfs = Dbfs(-50.0);

/// Mean power of the 10 ms frames of `samples` (16 kHz) louder than [`ACTIVE`].
pub fn active_power(samples: &[f32]) -> f32 {
    let (sum, n) = samples
        .chunks_exact(VAD_FRAME)
        .filter(|f| Dbfs::rms(f) > ACTIVE)
        .fold((0.0f64, 0usize), |(sum, n), f| {
            let energy: f64 = f.iter().map(|&s| f64::from(s * s)).sum();
            (sum + energy, n + f.len())
        });
    if n == 0 { 0.0 } else { (sum / n as f64) as f32 }
}

/// A scene: the bot talking without a break, the visitor speaking over it
/// part of the time, all on one 16 kHz timeline starting with the bot.
#[derive(Clone, Debug)]
pub struct Conversation {
    /// What the speaker plays (the canceller's reference), 16 kHz.
    pub speaker: Vec<f32>,
    /// The bot's echo alone at the microphone.
    pub echo: Vec<f32>,
    /// The visitor alone at the microphone.
    pub visitor: Vec<f32>,
    /// Echo plus visitor: what the microphone records.
    pub mic: Vec<f32>,
    /// Where the visitor's recording starts on the timeline.
    pub visitor_from: Millis,
}

impl Conversation {
    /// `bot` and `visitor` are 16 kHz recordings; the bot's is repeated to
    /// cover `bot_only_before`, the visitor's clip and `bot_only_after`.
    /// The visitor is scaled so that their speech is `ser_db` louder than
    /// the bot's echo at the microphone (signal-to-echo ratio).
    pub fn new(
        room: &Room,
        bot: &[f32],
        visitor: &[f32],
        ser_db: f32,
        bot_only_before: Millis,
        bot_only_after: Millis,
    ) -> Self {
        let rate = SampleRate::VAD;
        let from = rate.samples_in(bot_only_before);
        let len = from + visitor.len() + rate.samples_in(bot_only_after);
        let speaker: Vec<f32> = bot.iter().copied().cycle().take(len).collect();
        let echo = room.echo(&speaker);
        let gain = (active_power(&echo) / active_power(visitor).max(1e-12)).sqrt()
            * 10f32.powf(ser_db / 20.0);
        let mut placed = vec![0.0; len];
        for (out, &s) in placed[from..].iter_mut().zip(visitor) {
            *out = s * gain;
        }
        let mic = echo.iter().zip(&placed).map(|(e, v)| e + v).collect();
        Self {
            speaker,
            echo,
            visitor: placed,
            mic,
            visitor_from: bot_only_before,
        }
    }

    /// How long the scene lasts.
    pub fn duration(&self) -> Millis {
        Millis((self.mic.len() / (SampleRate::VAD.hz() as usize / 1000)) as u32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_room_delays_and_reverberates_the_speaker() {
        let room = Room::default();
        let mut click = vec![0.0; 16_000];
        click[0] = 0.1;
        let echo = room.echo(&click);
        let first = echo.iter().position(|s| s.abs() > 1e-6).unwrap_or(0);
        assert_eq!(first, 16 * 30, "direct path");
        let energy = |r: std::ops::Range<usize>| echo[r].iter().map(|s| s * s).sum::<f32>();
        let early = energy(16 * 31..16 * 80);
        let late = energy(16 * 180..16 * 229);
        let drop_db = 10.0 * (early / late).log10();
        // 60 dB over 200 ms: about 45 dB between windows 150 ms apart.
        assert!((38.0..52.0).contains(&drop_db), "decay {drop_db} dB");
    }
}
