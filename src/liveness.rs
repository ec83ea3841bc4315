//! Which parts of the daemon are making progress. The systemd watchdog is
//! fed only while every part is, so a wedged or dead part gets the unit
//! restarted instead of a kiosk that looks alive and serves nobody;
//! `/readyz` and `/api/status` name the part that stopped.
//!
//! The audio thread and the session loop beat as they run; the store's
//! writer thread and the status server are probed by the watchdog itself
//! (a no-op job, a request to `/healthz`), since they are idle most of the
//! time.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

/// A part whose progress is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    Audio,
    Session,
    Store,
    Status,
}

impl Part {
    pub const ALL: [Part; 4] = [Part::Audio, Part::Session, Part::Store, Part::Status];

    pub fn as_str(self) -> &'static str {
        match self {
            Part::Audio => "audio",
            Part::Session => "session",
            Part::Store => "store",
            Part::Status => "status",
        }
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Shared record of each part's last progress.
#[derive(Clone)]
pub struct Liveness {
    inner: Arc<Inner>,
}

struct Inner {
    epoch: Instant,
    /// Milliseconds since `epoch` of each part's last beat, plus one (0: never).
    beats: [AtomicU64; 4],
    /// A part silent for longer is stale.
    stale_after: Duration,
}

impl Liveness {
    pub fn new(stale_after: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                epoch: Instant::now(),
                beats: Default::default(),
                stale_after,
            }),
        }
    }

    /// `part` made progress just now. Lock-free: the audio thread calls it.
    pub fn beat(&self, part: Part) {
        self.beat_at(part, Instant::now());
    }

    fn beat_at(&self, part: Part, at: Instant) {
        let ms = at.saturating_duration_since(self.inner.epoch).as_millis() as u64 + 1;
        self.inner.beats[part as usize].store(ms, Ordering::Relaxed);
    }

    /// Parts that have not beaten within `stale_after` of `now` (a part
    /// that never beat counts from start-up).
    pub fn stale_at(&self, now: Instant) -> Vec<Part> {
        let now_ms = now.saturating_duration_since(self.inner.epoch).as_millis() as u64 + 1;
        let limit = self.inner.stale_after.as_millis() as u64;
        Part::ALL
            .into_iter()
            .filter(|&p| {
                let last = self.inner.beats[p as usize].load(Ordering::Relaxed).max(1);
                now_ms.saturating_sub(last) > limit
            })
            .collect()
    }

    pub fn stale(&self) -> Vec<Part> {
        self.stale_at(Instant::now())
    }

    pub fn stale_after(&self) -> Duration {
        self.inner.stale_after
    }

    /// How often a part should beat (or be probed) to stay well clear of stale.
    pub fn beat_every(&self) -> Duration {
        (self.inner.stale_after / 4).max(Duration::from_millis(100))
    }
}

/// Test builds only: `KIOSK_TEST_WEDGE=<part>` makes that part stop making
/// progress two seconds after it `started`, so tests can check that the
/// watchdog notices. Release builds ignore it. Cheap enough for every turn
/// of the audio loop: the variable is read once per process.
pub fn wedge_requested(part: Part, started: Instant) -> bool {
    static WEDGE: OnceLock<Option<String>> = OnceLock::new();
    cfg!(debug_assertions)
        && WEDGE
            .get_or_init(|| std::env::var("KIOSK_TEST_WEDGE").ok())
            .as_deref()
            == Some(part.as_str())
        && started.elapsed() >= Duration::from_secs(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_is_stale_once_silent_for_longer_than_the_limit() {
        let l = Liveness::new(Duration::from_secs(3));
        let t0 = l.inner.epoch;
        for p in Part::ALL {
            l.beat_at(p, t0);
        }
        assert!(l.stale_at(t0 + Duration::from_secs(3)).is_empty());
        l.beat_at(Part::Session, t0 + Duration::from_secs(2));
        assert_eq!(
            l.stale_at(t0 + Duration::from_millis(4_500)),
            [Part::Audio, Part::Store, Part::Status]
        );
    }

    #[test]
    fn a_part_that_never_beat_is_stale_after_the_limit_from_start_up() {
        let l = Liveness::new(Duration::from_secs(3));
        let t0 = l.inner.epoch;
        assert!(l.stale_at(t0 + Duration::from_secs(1)).is_empty());
        assert_eq!(l.stale_at(t0 + Duration::from_secs(4)).len(), 4);
    }
}
