//! The wait after a failure, for the whole session layer: the machine's
//! pause before the next session after a failed one, and the spool's
//! pause before retrying a failed store write. It doubles with each
//! failure in a row up to a cap and is back at the minimum after a
//! success. No jitter: one kiosk has nobody to fall out of step with.
//!
//! The delays come from backon's exponential policy. Its iterator reads no
//! clock and sleeps nowhere, so it fits a sans-I/O caller as is: the caller
//! adds each delay to its own `now`.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

#[derive(Debug)]
pub struct Backoff {
    policy: ExponentialBuilder,
    delays: <ExponentialBuilder as BackoffBuilder>::Backoff,
    max: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        let policy = ExponentialBuilder::new()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_factor(2.0)
            .without_max_times();
        Self {
            policy,
            delays: policy.build(),
            max,
        }
    }

    /// The wait after one more failure in a row: min, 2·min, 4·min … max.
    pub fn next_delay(&mut self) -> Duration {
        // Without a limit on attempts the policy never runs out.
        self.delays.next().unwrap_or(self.max)
    }

    /// A success: the next failure waits the minimum again.
    pub fn reset(&mut self) {
        self.delays = self.policy.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn doubles_to_the_cap_and_starts_over_after_a_success() {
        let mut b = Backoff::new(2 * S, 60 * S);
        let delays: Vec<_> = (0..7).map(|_| b.next_delay()).collect();
        assert_eq!(
            delays,
            [2 * S, 4 * S, 8 * S, 16 * S, 32 * S, 60 * S, 60 * S]
        );
        b.reset();
        assert_eq!(b.next_delay(), 2 * S);
    }
}
