//! Store writes that must not be lost. The session loop hands every write
//! (a session's start, its cloud identity, transcript lines, its end) to
//! the spool; they reach SQLite one at a time, in order, off the loop. A
//! write that fails stays at the front and is retried with backoff while
//! later ones wait behind it, so a store that is locked, full or failing
//! loses nothing it can get back, and the page says it is failing.
//!
//! The spool is bounded by transcript lines: past the limit the oldest
//! held lines are dropped, counted and logged; session starts and ends are
//! never dropped (they are small and tell the operator what happened).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use jiff::Timestamp;

use super::backoff::Backoff;
use crate::error_text::error_chain;
use crate::store::{NewSession, NewTranscript, SessionEnd, SessionId, Store, StoreError};

/// One write to the store.
#[derive(Debug, Clone)]
pub enum Write {
    Start(NewSession),
    Cloud {
        id: SessionId,
        room_name: Option<String>,
        room_url: Option<String>,
        agent_session_id: Option<String>,
    },
    Lines(Vec<NewTranscript>),
    End(SessionId, SessionEnd),
}

impl Write {
    /// Carries the write out (on the store's writer thread).
    pub fn apply(&self, store: &mut Store) -> Result<(), StoreError> {
        match self {
            Write::Start(row) => store.start_session(row),
            Write::Cloud {
                id,
                room_name,
                room_url,
                agent_session_id,
            } => store.set_session_cloud(
                *id,
                room_name.clone(),
                room_url.clone(),
                agent_session_id.clone(),
            ),
            Write::Lines(lines) => store.add_transcripts(lines).map(|_| ()),
            Write::End(id, end) => store.end_session(*id, end),
        }
    }

    fn lines(&self) -> usize {
        match self {
            Write::Lines(lines) => lines.len(),
            _ => 0,
        }
    }
}

/// Why the store is not taking writes, for the page and logs.
#[derive(Debug, Clone, PartialEq)]
pub struct Failing {
    pub since: Timestamp,
    pub error: String,
}

/// The queue and its retry policy; the caller does the I/O.
#[derive(Debug)]
pub struct Spool {
    queue: VecDeque<Write>,
    /// Transcript lines held in `queue`.
    lines: usize,
    max_lines: usize,
    /// The front write is being carried out.
    in_flight: bool,
    retry_at: Option<Instant>,
    backoff: Backoff,
    failing: Option<Failing>,
}

const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

impl Spool {
    pub fn new(max_lines: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            lines: 0,
            max_lines,
            in_flight: false,
            retry_at: None,
            backoff: Backoff::new(BACKOFF_MIN, BACKOFF_MAX),
            failing: None,
        }
    }

    /// Queues a write; past the line limit the oldest held lines (not the
    /// write in flight) are dropped. Returns how many lines were dropped.
    pub fn push(&mut self, write: Write) -> usize {
        self.lines += write.lines();
        self.queue.push_back(write);
        let mut dropped = 0;
        while self.lines > self.max_lines {
            let Some(i) = self.queue.iter().position(|w| matches!(w, Write::Lines(_))) else {
                break;
            };
            let gone = self.queue.remove(i).map_or(0, |w| w.lines());
            self.lines -= gone;
            dropped += gone;
        }
        dropped
    }

    /// The next write to carry out, if one may start now. It stays queued
    /// (and counted) until [`done`](Self::done) or [`failed`](Self::failed).
    pub fn take(&mut self, now: Instant) -> Option<Write> {
        if self.in_flight || self.retry_at.is_some_and(|t| now < t) {
            return None;
        }
        let write = self.queue.pop_front()?;
        self.lines -= write.lines();
        self.in_flight = true;
        self.retry_at = None;
        Some(write)
    }

    /// The write from [`take`](Self::take) is stored. Returns true when
    /// this ends a failure.
    pub fn done(&mut self) -> bool {
        self.in_flight = false;
        self.backoff.reset();
        self.failing.take().is_some()
    }

    /// The write from [`take`](Self::take) failed: it goes back to the
    /// front and is retried after a backoff. Returns true when this starts
    /// a failure.
    pub fn failed(&mut self, write: Write, error: &StoreError, now: Instant) -> bool {
        self.in_flight = false;
        self.lines += write.lines();
        self.queue.push_front(write);
        self.retry_at = Some(now + self.backoff.next_delay());
        let starts = self.failing.is_none();
        if starts {
            self.failing = Some(Failing {
                since: Timestamp::now(),
                error: error_chain(error),
            });
        }
        starts
    }

    /// When a failed write is due again.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at.filter(|_| !self.in_flight)
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty() && !self.in_flight
    }

    pub fn held_writes(&self) -> usize {
        self.queue.len()
    }

    pub fn held_lines(&self) -> usize {
        self.lines
    }

    pub fn failing(&self) -> Option<&Failing> {
        self.failing.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Role;

    fn lines(session: SessionId, n: usize) -> Write {
        Write::Lines(
            (0..n)
                .map(|i| NewTranscript {
                    session_id: session,
                    role: Role::User,
                    text: format!("line {i}"),
                    is_final: true,
                    confidence: None,
                    spoken_at: Timestamp::now(),
                    received_at: Timestamp::now(),
                })
                .collect(),
        )
    }

    fn end(session: SessionId) -> Write {
        Write::End(
            session,
            SessionEnd {
                ended_at: Timestamp::now(),
                reason: "idle".into(),
                user_speech_ms: 0,
                bot_speech_ms: 0,
            },
        )
    }

    #[test]
    fn writes_go_out_one_at_a_time_in_order() {
        let id = SessionId::new();
        let mut spool = Spool::new(100);
        let now = Instant::now();
        spool.push(lines(id, 2));
        spool.push(end(id));
        assert!(matches!(spool.take(now), Some(Write::Lines(_))));
        assert!(spool.take(now).is_none(), "one write in flight at a time");
        assert!(!spool.done());
        assert!(matches!(spool.take(now), Some(Write::End(..))));
        spool.done();
        assert!(spool.is_empty());
    }

    #[test]
    fn a_failed_write_is_retried_first_with_growing_backoff() {
        let id = SessionId::new();
        let mut spool = Spool::new(100);
        let t0 = Instant::now();
        spool.push(lines(id, 3));
        spool.push(end(id));
        let error = StoreError::WriterGone;
        let w = spool.take(t0).unwrap();
        assert!(spool.failed(w, &error, t0), "a failure starts");
        assert_eq!(spool.held_lines(), 3);
        assert!(spool.failing().is_some());
        assert!(spool.take(t0 + Duration::from_millis(500)).is_none());
        let w = spool.take(t0 + BACKOFF_MIN).unwrap();
        assert!(
            matches!(&w, Write::Lines(l) if l.len() == 3),
            "same write again"
        );
        assert!(
            !spool.failed(w, &error, t0 + BACKOFF_MIN),
            "still the same failure"
        );
        // 2 s after the second attempt, not 1 s.
        assert!(spool.take(t0 + BACKOFF_MIN * 2).is_none());
        assert!(spool.take(t0 + BACKOFF_MIN * 3).is_some());
        assert!(spool.done(), "the failure is over");
        assert!(spool.failing().is_none());
        assert!(matches!(
            spool.take(t0 + BACKOFF_MIN * 3),
            Some(Write::End(..))
        ));
    }

    #[test]
    fn a_write_that_succeeds_brings_the_backoff_back_to_the_minimum() {
        let id = SessionId::new();
        let mut spool = Spool::new(100);
        let error = StoreError::WriterGone;
        let mut now = Instant::now();
        spool.push(lines(id, 1));
        for _ in 0..3 {
            let w = spool.take(now).unwrap();
            spool.failed(w, &error, now);
            now = spool.retry_at().unwrap();
        }
        spool.take(now).unwrap();
        spool.done();
        spool.push(end(id));
        let w = spool.take(now).unwrap();
        spool.failed(w, &error, now);
        assert_eq!(spool.retry_at(), Some(now + BACKOFF_MIN));
    }

    #[test]
    fn past_its_limit_the_spool_drops_the_oldest_lines_but_never_a_session_end() {
        let id = SessionId::new();
        let mut spool = Spool::new(5);
        spool.push(lines(id, 3));
        spool.push(end(id));
        assert_eq!(spool.push(lines(id, 3)), 3, "the oldest three go");
        assert_eq!(spool.held_lines(), 3);
        assert!(matches!(spool.take(Instant::now()), Some(Write::End(..))));
    }
}
