//! Where samples come from and go to: sound devices through cpal, kept open
//! by a thread of their own ([`cpal`]), their callbacks moving blocks
//! through lock-free rings ([`ring`]) and held to real time when a device
//! has no clock ([`hold`]), and WAV files standing in for them ([`wav`]),
//! paced by the wall clock.

pub mod cpal;
mod hold;
pub mod ring;
pub mod wav;

use std::time::{Duration, Instant};

use super::units::FRAME_MS;

/// Counts 10 ms frames due by the wall clock, for sources and sinks that
/// have no device clock (WAV files, a missing speaker).
pub struct Pacer {
    start: Instant,
    done: u64,
}

impl Pacer {
    /// A pacer whose frames fall due on the 10 ms grid that starts at
    /// `epoch`: pacers on one grid are due together, so a `wav:` microphone
    /// and speaker wake the DSP thread together, not each on its own.
    pub fn on_grid(epoch: Instant) -> Self {
        let frame = u128::from(FRAME_MS.0) * 1_000_000;
        let since = Instant::now().saturating_duration_since(epoch).as_nanos();
        let offset = Duration::from_nanos((since / frame * frame) as u64);
        Self {
            start: epoch + offset,
            done: 0,
        }
    }

    /// Frames that became due since the last call.
    pub fn due(&mut self) -> u64 {
        let elapsed = self.start.elapsed().as_millis() as u64 / u64::from(FRAME_MS.0);
        let due = elapsed.saturating_sub(self.done);
        self.done += due;
        due
    }

    /// Time until the next frame is due.
    pub fn until_next(&self) -> Duration {
        self.until_due(1)
    }

    /// Time until `frames` more frames are due.
    pub fn until_due(&self, frames: u32) -> Duration {
        let at = self.done + u64::from(frames.max(1));
        (self.start + Duration::from_millis(at * u64::from(FRAME_MS.0)))
            .saturating_duration_since(Instant::now())
    }

    /// When the latest due frame became due: what a device callback's
    /// timestamp would have been.
    pub fn last_due(&self) -> Instant {
        self.start + Duration::from_millis(self.done * u64::from(FRAME_MS.0))
    }
}
