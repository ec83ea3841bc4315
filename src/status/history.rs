//! The last hour at 10 s resolution, kept in memory for the page's
//! pictures and `/api/history`: microphone peak and noise floor, the
//! call's quality while one is live, and the sync backlog. A sampler task
//! reads what the gateway already publishes; nothing here touches devices
//! or the network. Sessions come from the store instead (they outlive a
//! restart).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::StatusState;
use super::words::Clock;
use crate::store::SessionRecord;

/// Sessions read for the day's picture at most; a kiosk sees far fewer.
const DAY_SESSIONS_MAX: u32 = 5000;

/// One point per this long.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// The microphone level is read this often within an interval, for its
/// peak and its quietest moment.
const LEVEL_READS: u32 = 10;
/// An hour of points.
pub const CAPACITY: usize = 360;

/// Ten seconds of the kiosk.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// The end of the interval.
    pub at: Timestamp,
    /// Loudest 100 ms of the microphone, dBFS.
    pub mic_peak_dbfs: Option<f32>,
    /// Quietest 100 ms of the microphone, dBFS: the room's noise floor.
    pub mic_floor_dbfs: Option<f32>,
    /// Round-trip time while a call is live, ms.
    pub rtt_ms: Option<f64>,
    /// Jitter while a call is live, ms.
    pub jitter_ms: Option<f64>,
    /// The worse of outgoing and incoming packet loss while a call is live, %.
    pub loss_percent: Option<f64>,
    /// Transcript lines waiting for upload.
    pub backlog_lines: Option<u64>,
}

/// The ring of points, newest last; cheap to clone.
#[derive(Clone, Default)]
pub struct History(Arc<Mutex<VecDeque<Point>>>);

impl History {
    /// Adds a point, forgetting the oldest beyond an hour.
    pub fn push(&self, point: Point) {
        let mut ring = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == CAPACITY {
            ring.pop_front();
        }
        ring.push_back(point);
    }

    /// A copy of the points, oldest first.
    pub fn points(&self) -> Vec<Point> {
        let ring = self.0.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter().cloned().collect()
    }
}

/// The microphone's loudest and quietest reading within one interval.
#[derive(Default)]
struct LevelSpan {
    peak: Option<f32>,
    floor: Option<f32>,
}

impl LevelSpan {
    fn add(&mut self, dbfs: f32) {
        self.peak = Some(self.peak.map_or(dbfs, |p| p.max(dbfs)));
        self.floor = Some(self.floor.map_or(dbfs, |f| f.min(dbfs)));
    }
}

/// Samples until `cancel`: the level `LEVEL_READS` times per interval, the
/// rest once at its end.
pub async fn sample(state: StatusState, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(INTERVAL / LEVEL_READS);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut span = LevelSpan::default();
    let mut reads = 0;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(level) = state.mic_level() {
            span.add(level);
        }
        reads += 1;
        if reads < LEVEL_READS {
            continue;
        }
        reads = 0;
        let level = std::mem::take(&mut span);
        let link = state.published.borrow().link.clone().filter(|l| l.live);
        let backlog = state.read(|s| s.backlog()).await;
        state.history.push(Point {
            at: Timestamp::now(),
            mic_peak_dbfs: level.peak,
            mic_floor_dbfs: level.floor,
            rtt_ms: link.as_ref().and_then(|l| l.rtt_ms),
            jitter_ms: link.as_ref().and_then(|l| l.jitter_ms),
            loss_percent: link
                .as_ref()
                .map(|l| l.loss_out_percent.max(l.loss_in_percent)),
            backlog_lines: backlog.map(|b| b.transcripts),
        });
    }
}

/// A session on the time line.
#[derive(Debug, Clone, Serialize)]
pub struct SessionSpan {
    /// Its id.
    pub id: String,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended; `None` while running.
    pub ended_at: Option<Timestamp>,
    /// Why it ended (`idle`, `link_lost`, ...).
    pub end_reason: Option<String>,
}

/// Sessions started in one local hour.
#[derive(Debug, Clone, Serialize)]
pub struct HourCount {
    /// The start of the hour.
    pub hour_start: Timestamp,
    /// Sessions started in it.
    pub sessions: u32,
    /// Of which ended in a failure.
    pub failed: u32,
}

/// `/api/history`: the last hour and the last day.
#[derive(Debug, Serialize)]
pub struct HistoryDoc {
    /// Seconds per point.
    pub interval_s: u64,
    /// Oldest first, at most an hour's worth.
    pub points: Vec<Point>,
    /// Sessions started in the last hour, oldest first.
    pub sessions: Vec<SessionSpan>,
    /// The last 24 local hours, oldest first; `None` if the store cannot
    /// be read.
    pub sessions_per_hour: Option<Vec<HourCount>>,
}

/// Whether an end reason counts as a failure on the pictures.
pub fn failed(reason: Option<&str>) -> bool {
    reason.is_some_and(super::words::end_reason_failed)
}

/// Gathers the ring and the store's last day.
pub async fn history_doc(state: &StatusState, now: Timestamp) -> HistoryDoc {
    let (hours, day_start) = local_hours(&state.clock, now);
    let day = state
        .read(move |s| s.sessions_since(day_start, DAY_SESSIONS_MAX))
        .await;
    let hour_ago = now
        .checked_sub(jiff::SignedDuration::from_hours(1))
        .unwrap_or(now);
    let sessions = day
        .iter()
        .flatten()
        .filter(|s| s.started_at >= hour_ago)
        .map(|s| SessionSpan {
            id: s.id.to_string(),
            started_at: s.started_at,
            ended_at: s.ended_at,
            end_reason: s.end_reason.clone(),
        })
        .collect();
    HistoryDoc {
        interval_s: INTERVAL.as_secs(),
        points: state.history.points(),
        sessions,
        sessions_per_hour: day.map(|day| count_per_hour(&hours, &day)),
    }
}

/// The starts of the last 24 local hours, oldest first, and the first.
fn local_hours(clock: &Clock, now: Timestamp) -> (Vec<Timestamp>, Timestamp) {
    let local = now.to_zoned(clock.zone().clone());
    let into_hour = i64::from(local.minute()) * 60 + i64::from(local.second());
    let this_hour = now
        .checked_sub(jiff::SignedDuration::from_secs(into_hour))
        .unwrap_or(now);
    let hours: Vec<Timestamp> = (0..24)
        .rev()
        .filter_map(|k| {
            this_hour
                .checked_sub(jiff::SignedDuration::from_hours(k))
                .ok()
        })
        .collect();
    let first = hours.first().copied().unwrap_or(this_hour);
    (hours, first)
}

fn count_per_hour(hours: &[Timestamp], sessions: &[SessionRecord]) -> Vec<HourCount> {
    let mut counts: Vec<HourCount> = hours
        .iter()
        .map(|h| HourCount {
            hour_start: *h,
            sessions: 0,
            failed: 0,
        })
        .collect();
    for s in sessions {
        if let Some(c) = counts
            .iter_mut()
            .rev()
            .find(|c| c.hour_start <= s.started_at)
        {
            c.sessions += 1;
            c.failed += u32::from(failed(s.end_reason.as_deref()));
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_one_hour() {
        let history = History::default();
        for k in 0..CAPACITY + 5 {
            history.push(Point {
                at: Timestamp::from_second(k as i64).unwrap(),
                mic_peak_dbfs: None,
                mic_floor_dbfs: None,
                rtt_ms: None,
                jitter_ms: None,
                loss_percent: None,
                backlog_lines: Some(k as u64),
            });
        }
        let points = history.points();
        assert_eq!(points.len(), CAPACITY);
        assert_eq!(points[0].backlog_lines, Some(5));
        assert_eq!(
            points[CAPACITY - 1].backlog_lines,
            Some(CAPACITY as u64 + 4)
        );
    }

    #[test]
    fn sessions_are_counted_in_local_hours() {
        let clock = Clock::new(jiff::tz::TimeZone::get("Asia/Kolkata").unwrap());
        let now: Timestamp = "2026-12-01T13:20:00Z".parse().unwrap(); // 18:50 local
        let (hours, first) = local_hours(&clock, now);
        assert_eq!(hours.len(), 24);
        assert_eq!(hours[23].to_string(), "2026-12-01T12:30:00Z"); // 18:00 local
        assert_eq!(first, hours[0]);
        let session = |at: &str, reason: &str| SessionRecord {
            id: crate::store::SessionId::new(),
            kiosk_id: "k".into(),
            started_at: at.parse().unwrap(),
            ended_at: None,
            end_reason: Some(reason.into()),
            room_name: None,
            room_url: None,
            agent_session_id: None,
            user_speech_ms: 0,
            bot_speech_ms: 0,
        };
        let counts = count_per_hour(
            &hours,
            &[
                session("2026-12-01T12:29:59Z", "idle"),
                session("2026-12-01T12:30:00Z", "idle"),
                session("2026-12-01T13:19:00Z", "link_lost"),
            ],
        );
        assert_eq!((counts[22].sessions, counts[22].failed), (1, 0));
        assert_eq!((counts[23].sessions, counts[23].failed), (2, 1));
    }

    #[test]
    fn a_span_keeps_peak_and_floor() {
        let mut span = LevelSpan::default();
        for l in [-50.0, -20.0, -70.0, -40.0] {
            span.add(l);
        }
        assert_eq!((span.peak, span.floor), (Some(-20.0), Some(-70.0)));
    }
}
