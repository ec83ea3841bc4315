//! The pace of outgoing audio when frames come faster than real time.
//!
//! The speech held while a call is set up (or restored) reaches the link
//! all at once: a second or more of frames. Sent as they come they would
//! leave as one burst, which network jitter shuffles, and a receiver whose
//! jitter buffer orders packets by sequence number alone throws most of a
//! shuffled burst away: aiortc (the Pipecat bot's WebRTC stack) starts its
//! 16-packet buffer at whichever packet arrives first, drops every packet
//! older than that, and gives up on a missing packet once 16 newer ones
//! are in. So a frame leaves no sooner than a fraction of its duration
//! after the one before: a backlog drains at [`BACKLOG_SPEEDUP`] times real
//! time, and live frames, each a whole frame after the last, are never
//! held. The first frame leaves at once. The WebRTC link's send task and
//! the SIP leg (whose peer's jitter buffer a burst floods the same way)
//! both take their frames through [`PacedFrames`].

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::OpusFrame;

/// How much faster than real time a backlog of frames leaves. Through
/// aiortc's jitter buffer at 40 ± 20 ms of jitter and no loss, packets
/// 10 ms apart (twice real time) pass 99% of a first utterance held at
/// set-up, as live packets 20 ms apart do; at four times real time 89%
/// pass, in one burst 59%. The price: a backlog takes twice its length to
/// drain, so after a slow set-up the agent hears the end of a short first
/// utterance later than it would have in a burst.
const BACKLOG_SPEEDUP: u32 = 2;

/// The audio engine's outgoing frames, handed out no faster than the pace.
pub(crate) struct PacedFrames {
    frames: mpsc::Receiver<OpusFrame>,
    /// A frame taken from the queue that waits for its slot.
    held: Option<OpusFrame>,
    pacer: Pacer,
}

impl PacedFrames {
    pub(crate) fn new(frames: mpsc::Receiver<OpusFrame>) -> Self {
        Self {
            frames,
            held: None,
            pacer: Pacer::default(),
        }
    }

    /// The next frame, once its slot has come; the caller sends it at
    /// once. Cancel-safe: a frame waiting for its slot is kept.
    ///
    /// The frame is awaited first and the slot after: a live frame, a
    /// whole frame after the last, is past its slot when it comes, so no
    /// timer is armed for it (waiting for the slot first would wake the
    /// task once more per frame, for nothing).
    pub(crate) async fn recv(&mut self) -> Option<OpusFrame> {
        if self.held.is_none() {
            self.held = Some(self.frames.recv().await?);
        }
        if let Some(at) = self.pacer.hold_until(Instant::now()) {
            tokio::time::sleep_until(at.into()).await;
        }
        let frame = self.held.take()?;
        self.pacer.sent(frame.duration, Instant::now());
        Some(frame)
    }

    /// The next frame, at once and unpaced: for a caller that drops it.
    pub(crate) async fn discard(&mut self) -> Option<OpusFrame> {
        match self.held.take() {
            Some(frame) => Some(frame),
            None => self.frames.recv().await,
        }
    }
}

/// When the next outgoing frame may leave.
#[derive(Debug, Default)]
struct Pacer {
    next: Option<Instant>,
}

impl Pacer {
    /// When the next frame may leave, if that is later than `now`.
    fn hold_until(&self, now: Instant) -> Option<Instant> {
        self.next.filter(|&next| next > now)
    }

    /// Notes that a frame holding `duration` of audio left at `now`.
    fn sent(&mut self, duration: Duration, now: Instant) {
        let interval = duration / BACKLOG_SPEEDUP;
        // A frame held for its slot leaves when the timer wakes, a little
        // after it: the schedule, not the wake-up, sets the next slot, or
        // every late wake-up would slow the pace.
        let slot = self
            .next
            .filter(|&slot| now.saturating_duration_since(slot) < interval)
            .unwrap_or(now);
        self.next = Some(slot + interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: Duration = Duration::from_millis(20);
    /// How late a timer may wake.
    const LATE: Duration = Duration::from_micros(1_500);

    /// When each of `count` frames, all handed over at `at`, leaves.
    fn drain(pacer: &mut Pacer, at: Instant, count: usize) -> Vec<Instant> {
        let mut now = at;
        (0..count)
            .map(|_| {
                now = pacer.hold_until(now).unwrap_or(now);
                pacer.sent(FRAME, now);
                now
            })
            .collect()
    }

    #[test]
    fn a_backlog_leaves_at_twice_real_time_its_first_frame_at_once() {
        let mut pacer = Pacer::default();
        let start = Instant::now();
        let left = drain(&mut pacer, start, 50);
        assert_eq!(left[0], start);
        for pair in left.windows(2) {
            assert_eq!(pair[1] - pair[0], Duration::from_millis(10));
        }
        // A second of speech over half a second.
        assert_eq!(left[49] - left[0], Duration::from_millis(490));
    }

    #[test]
    fn late_wake_ups_do_not_slow_the_pace() {
        let mut pacer = Pacer::default();
        let start = Instant::now();
        let mut now = start;
        for _ in 0..50 {
            now = pacer.hold_until(now).map_or(now, |slot| slot + LATE);
            pacer.sent(FRAME, now);
        }
        assert_eq!(now - start, Duration::from_millis(490) + LATE);
    }

    #[tokio::test]
    async fn a_frame_waiting_for_its_slot_survives_a_cancelled_receive() {
        // Long frames, so their slots are far apart on a loaded machine.
        const LONG: Duration = Duration::from_millis(400);
        let (tx, rx) = mpsc::channel(4);
        let mut paced = PacedFrames::new(rx);
        for byte in [1, 2] {
            let frame = OpusFrame {
                data: bytes::Bytes::from(vec![byte]),
                duration: LONG,
                after_silence: false,
            };
            tx.send(frame).await.unwrap();
        }
        assert_eq!(paced.recv().await.unwrap().data[..], [1]);
        // The second frame is taken and waits 200 ms for its slot: a caller
        // that gives up sooner (a `select!` with another branch) loses nothing.
        let gave_up = tokio::time::timeout(Duration::from_millis(20), paced.recv()).await;
        assert!(gave_up.is_err(), "the second frame left before its slot");
        let second = tokio::time::timeout(Duration::from_secs(2), paced.recv())
            .await
            .expect("the frame that waited for its slot was lost");
        assert_eq!(second.unwrap().data[..], [2]);
    }

    #[test]
    fn live_frames_are_never_held() {
        let mut pacer = Pacer::default();
        let start = Instant::now();
        for i in 0..100 {
            // Live frames come a frame apart, give or take the scheduler.
            let jitter = Duration::from_millis([0, 3, 7][i % 3]);
            let now = start + FRAME * i as u32 + jitter;
            assert_eq!(pacer.hold_until(now), None, "frame {i}");
            pacer.sent(FRAME, now);
        }
    }

    #[test]
    fn a_backlog_after_a_pause_leaves_paced_again() {
        let mut pacer = Pacer::default();
        let start = Instant::now();
        pacer.sent(FRAME, start);
        // The link was down for two seconds: what was said meanwhile.
        let back = start + Duration::from_secs(2);
        let left = drain(&mut pacer, back, 10);
        assert_eq!(left[0], back);
        assert_eq!(left[9] - back, Duration::from_millis(90));
    }
}
