//! Holds a device that runs faster than real time to real time.
//!
//! A sound card's callbacks follow its clock: over any stretch of time it
//! hands over (or asks for) that stretch's audio, plus at most its buffer
//! when the callback thread was late. A device with no clock (ALSA's
//! `null`, a broken driver) calls back as fast as it is served, and the
//! callback thread and the DSP thread it wakes would each burn a CPU.
//! Sleeping in the callback for as long as such a device is ahead of the
//! wall clock, beyond what any card can be, holds it to real time; a card
//! never gets that far ahead, so its callbacks never sleep.

use std::time::{Duration, Instant};

use crate::audio::units::SampleRate;

/// How far ahead of the wall clock a device may get before it is held:
/// many times a card's buffer (two 10 ms periods here), so a callback
/// thread catching up after a late wake-up is never held.
const LEAD: Duration = Duration::from_millis(250);

/// Clock drift allowed on top of [`LEAD`], as a fraction of the time since
/// the stream began: a card's crystal is off by 100 parts per million at
/// worst, a hundred times less than this 1%.
const DRIFT_DIVISOR: u32 = 100;

/// Counts a stream's frames against the wall clock.
#[derive(Debug)]
pub struct HoldToRealTime {
    rate: f64,
    origin: Option<Instant>,
    frames: u64,
}

impl HoldToRealTime {
    pub fn new(rate: SampleRate) -> Self {
        Self {
            rate: f64::from(rate.hz()),
            origin: None,
            frames: 0,
        }
    }

    /// Counts a callback's `frames` at `now`; returns how long to sleep to
    /// be back within the lead: zero for any device with a clock of its
    /// own. The stream's clock starts at its first callback, whose frames
    /// are not counted: a speaker's first callback fills its whole buffer,
    /// however large, ahead of time.
    pub fn after(&mut self, frames: usize, now: Instant) -> Duration {
        let Some(origin) = self.origin else {
            self.origin = Some(now);
            return Duration::ZERO;
        };
        self.frames += frames as u64;
        let audio = Duration::from_secs_f64(self.frames as f64 / self.rate);
        let elapsed = now.saturating_duration_since(origin);
        audio.saturating_sub(elapsed + LEAD + elapsed / DRIFT_DIVISOR)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: SampleRate = SampleRate(48_000);
    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn a_card_at_its_own_pace_is_never_held() {
        let mut hold = HoldToRealTime::new(RATE);
        let t0 = Instant::now();
        // An hour of 10 ms periods from a card 100 ppm fast.
        for k in 0..360_000u64 {
            let now = t0 + Duration::from_nanos(k * 9_999_000);
            assert_eq!(hold.after(480, now), Duration::ZERO, "period {k}");
        }
    }

    /// 10 ms periods on time, the `k`th at `t0` + `k` × 10 ms: never held.
    fn assert_periods_on_time(hold: &mut HoldToRealTime, t0: Instant, ks: std::ops::Range<u64>) {
        for k in ks {
            assert_eq!(
                hold.after(480, t0 + MS(10 * k)),
                Duration::ZERO,
                "period {k}"
            );
        }
    }

    #[test]
    fn a_speaker_filling_a_large_buffer_at_start_is_not_held() {
        let mut hold = HoldToRealTime::new(RATE);
        let t0 = Instant::now();
        // A whole second of buffer, then a 10 ms period at a time.
        assert_eq!(hold.after(48_000, t0), Duration::ZERO);
        assert_periods_on_time(&mut hold, t0, 1..500);
    }

    #[test]
    fn a_late_callback_catching_up_is_not_held() {
        let mut hold = HoldToRealTime::new(RATE);
        let t0 = Instant::now();
        assert_eq!(hold.after(480, t0), Duration::ZERO);
        // Asleep for 200 ms, then the backlog at once, then on time again.
        assert_eq!(hold.after(20 * 480, t0 + MS(210)), Duration::ZERO);
        assert_periods_on_time(&mut hold, t0, 22..100);
    }

    #[test]
    fn a_device_without_a_clock_is_held_to_real_time() {
        let mut hold = HoldToRealTime::new(RATE);
        let t0 = Instant::now();
        // Served again as soon as each callback returns: time passes only
        // in the sleeps. 20 s of audio then takes close to 20 s.
        let mut now = t0;
        for _ in 0..1000 {
            now += hold.after(960, now);
        }
        let taken = now - t0;
        assert!(
            taken >= MS(19_500) && taken <= MS(20_000),
            "{taken:?} for 20 s of audio"
        );
    }
}
