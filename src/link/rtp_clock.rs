//! RTP sequence numbers and timestamps of an outgoing Opus stream.

use std::time::{Duration, Instant};

use super::OpusFrame;
use super::peer::OPUS_CLOCK_RATE;

/// RTP sequence numbers and 48 kHz timestamps for the outgoing stream.
pub(crate) struct RtpClock {
    seq: u16,
    base_ts: u32,
    epoch: Instant,
    next_ts: Option<u32>,
}

impl RtpClock {
    pub(crate) fn new(epoch: Instant) -> Self {
        Self {
            seq: rand::random(),
            base_ts: rand::random(),
            epoch,
            next_ts: None,
        }
    }

    /// (sequence, timestamp, marker) for `frame` handed over at `now`.
    pub(crate) fn stamp(&mut self, frame: &OpusFrame, now: Instant) -> (u16, u32, bool) {
        let samples =
            |d: Duration| (d.as_micros() * u128::from(OPUS_CLOCK_RATE) / 1_000_000) as u32;
        let wall = self
            .base_ts
            .wrapping_add(samples(now.saturating_duration_since(self.epoch)));
        let (ts, marker) = match self.next_ts {
            None => (wall, true),
            // After silence the timestamp must cover the gap, so it follows
            // the wall clock, but never goes backwards.
            Some(next) if frame.after_silence => {
                let ahead = wall.wrapping_sub(next) as i32 > 0;
                (if ahead { wall } else { next }, true)
            }
            Some(next) => (next, false),
        };
        self.next_ts = Some(ts.wrapping_add(samples(frame.duration)));
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        (seq, ts, marker)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn frame(after_silence: bool) -> OpusFrame {
        OpusFrame {
            data: Bytes::from_static(&[0xf8]),
            duration: Duration::from_millis(20),
            after_silence,
        }
    }

    #[test]
    fn rtp_clock_counts_samples_and_marks_talk_spurts() {
        let epoch = Instant::now();
        let mut clock = RtpClock::new(epoch);
        let (s0, t0, m0) = clock.stamp(&frame(false), epoch);
        assert!(m0, "first packet starts a talk spurt");
        let (s1, t1, m1) = clock.stamp(&frame(false), epoch + Duration::from_millis(20));
        assert_eq!(s1, s0.wrapping_add(1));
        assert_eq!(t1, t0.wrapping_add(960));
        assert!(!m1);
        // one second of DTX silence, then speech again
        let (_, t2, m2) = clock.stamp(&frame(true), epoch + Duration::from_millis(1040));
        assert!(m2);
        assert_eq!(t2, t0.wrapping_add(48 * 1040));
        // an early "after silence" frame never moves the timestamp backwards
        let (_, t3, m3) = clock.stamp(&frame(true), epoch + Duration::from_millis(1040));
        assert!(m3);
        assert_eq!(t3, t2.wrapping_add(960));
    }
}
