//! The store's side of fetching transcripts after a session (SIP mode): a
//! durable queue of jobs, one per session, that survives a restart or a
//! kill, and the one transaction that stores a job's lines and removes it.

use jiff::Timestamp;
use rusqlite::{OptionalExtension, params};

use super::records::{insert_transcripts, parse_time, parse_uuid};
use super::{NewTranscript, SessionId, Store, StoreError, format_time, sql};

/// What to fetch for one ended session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchJob {
    /// The session the lines belong to.
    pub session_id: SessionId,
    /// The Daily room it used (for logs).
    pub room_name: String,
    /// Daily's id for that room (`Room::id`): transcripts are listed by it,
    /// and the room is usually deleted by the time they are.
    pub room_id: String,
    /// The kiosk's display name in the room: cues by it are the visitor's.
    pub display_name: String,
    /// When the session started: cue times count from here.
    pub started_at: Timestamp,
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchState {
    /// Waiting for its next attempt.
    Pending,
    /// Given up on; `last_error` says why.
    Parked,
}

/// A queued job with its bookkeeping.
#[derive(Debug, Clone)]
pub struct FetchRecord {
    /// The job.
    pub job: FetchJob,
    /// When it was queued.
    pub enqueued_at: Timestamp,
    /// Where it is.
    pub state: FetchState,
    /// Attempts made.
    pub attempts: u32,
    /// When it is next tried.
    pub next_attempt_at: Timestamp,
    /// Why the last attempt did not store anything.
    pub last_error: Option<String>,
}

const COLUMNS: &str = "session_id, room_name, room_id, display_name, started_at, enqueued_at, \
     state, attempts, next_attempt_at, last_error";

fn record_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FetchRecord> {
    let state: String = r.get(6)?;
    Ok(FetchRecord {
        job: FetchJob {
            session_id: SessionId::from_uuid(parse_uuid(r.get(0)?)?),
            room_name: r.get(1)?,
            room_id: r.get(2)?,
            display_name: r.get(3)?,
            started_at: parse_time(r.get(4)?)?,
        },
        enqueued_at: parse_time(r.get(5)?)?,
        state: if state == "parked" {
            FetchState::Parked
        } else {
            FetchState::Pending
        },
        attempts: r.get(7)?,
        next_attempt_at: parse_time(r.get(8)?)?,
        last_error: r.get(9)?,
    })
}

impl Store {
    /// Queues a job, due at once. A session has at most one job: queuing it
    /// again changes nothing. Returns whether it was new.
    pub fn enqueue_transcript_fetch(&self, job: &FetchJob) -> Result<bool, StoreError> {
        let now = format_time(Timestamp::now());
        self.conn
            .execute(
                "INSERT OR IGNORE INTO transcript_fetches
                     (session_id, room_name, room_id, display_name, started_at, enqueued_at,
                      state, next_attempt_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?6)",
                params![
                    job.session_id.to_string(),
                    job.room_name,
                    job.room_id,
                    job.display_name,
                    format_time(job.started_at),
                    now
                ],
            )
            .map(|n| n == 1)
            .map_err(sql(&self.path))
    }

    /// Pending jobs due at `now`, oldest first.
    pub fn due_transcript_fetches(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<FetchRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM transcript_fetches
                 WHERE state = 'pending' AND next_attempt_at <= ?1
                 ORDER BY next_attempt_at, session_id LIMIT ?2"
            ))
            .map_err(sql(&self.path))?;
        stmt.query_map(params![format_time(now), limit], record_from_row)
            .and_then(Iterator::collect)
            .map_err(sql(&self.path))
    }

    /// Notes a failed attempt and when to try again.
    pub fn defer_transcript_fetch(
        &self,
        session: SessionId,
        next_attempt_at: Timestamp,
        error: &str,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE transcript_fetches SET attempts = attempts + 1, next_attempt_at = ?2,
                        last_error = ?3
                 WHERE session_id = ?1 AND state = 'pending'",
                params![session.to_string(), format_time(next_attempt_at), error],
            )
            .map(drop)
            .map_err(sql(&self.path))
    }

    /// Gives up on a job; it stays, parked, with the reason.
    pub fn park_transcript_fetch(
        &self,
        session: SessionId,
        reason: &str,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE transcript_fetches SET state = 'parked', attempts = attempts + 1,
                        last_error = ?2
                 WHERE session_id = ?1 AND state = 'pending'",
                params![session.to_string(), reason],
            )
            .map(drop)
            .map_err(sql(&self.path))
    }

    /// Stores a job's lines and removes the job in one transaction, so a
    /// kill at any point leaves either both or neither. A job no longer
    /// pending (already stored, or parked meanwhile) stores nothing: returns
    /// `None`, else how many lines were stored.
    pub fn complete_transcript_fetch(
        &mut self,
        session: SessionId,
        lines: &[NewTranscript],
    ) -> Result<Option<usize>, StoreError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(sql(&path))?;
        let removed = tx
            .execute(
                "DELETE FROM transcript_fetches WHERE session_id = ?1 AND state = 'pending'",
                [session.to_string()],
            )
            .map_err(sql(&path))?;
        if removed == 0 {
            return Ok(None);
        }
        let stored = insert_transcripts(&tx, lines).map_err(sql(&path))?;
        tx.commit().map_err(sql(&path))?;
        Ok(Some(stored.len()))
    }

    /// The job of one session, if it is queued or parked.
    pub fn transcript_fetch(&self, session: SessionId) -> Result<Option<FetchRecord>, StoreError> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM transcript_fetches WHERE session_id = ?1"),
                [session.to_string()],
                record_from_row,
            )
            .optional()
            .map_err(sql(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewSession, Role};

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("k.db")).unwrap();
        (dir, store)
    }

    fn job(store: &Store) -> FetchJob {
        let id = SessionId::new();
        // Times are stored to the millisecond.
        let started_at = Timestamp::from_millisecond(Timestamp::now().as_millisecond()).unwrap();
        store
            .start_session(&NewSession {
                id,
                kiosk_id: "k".into(),
                started_at,
                room_name: Some("kiosk-k-1".into()),
                room_url: None,
                agent_session_id: None,
            })
            .unwrap();
        FetchJob {
            session_id: id,
            room_name: "kiosk-k-1".into(),
            room_id: "room-id-1".into(),
            display_name: "k".into(),
            started_at,
        }
    }

    fn line(session: SessionId, text: &str) -> NewTranscript {
        NewTranscript {
            session_id: session,
            role: Role::User,
            text: text.into(),
            is_final: true,
            confidence: None,
            spoken_at: Timestamp::now(),
            received_at: Timestamp::now(),
        }
    }

    #[test]
    fn a_job_is_stored_once_and_then_gone() {
        let (_dir, mut store) = store();
        let job = job(&store);
        assert!(store.enqueue_transcript_fetch(&job).unwrap());
        assert!(!store.enqueue_transcript_fetch(&job).unwrap());
        let due = store.due_transcript_fetches(Timestamp::now(), 10).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].job, job);
        let lines = [line(job.session_id, "a"), line(job.session_id, "b")];
        assert_eq!(
            store
                .complete_transcript_fetch(job.session_id, &lines)
                .unwrap(),
            Some(2)
        );
        assert_eq!(
            store
                .complete_transcript_fetch(job.session_id, &lines)
                .unwrap(),
            None
        );
        assert_eq!(store.transcripts(Some(job.session_id)).unwrap().len(), 2);
        assert!(store.transcript_fetch(job.session_id).unwrap().is_none());
    }

    #[test]
    fn deferred_jobs_wait_and_parked_jobs_store_nothing() {
        let (_dir, mut store) = store();
        let job = job(&store);
        store.enqueue_transcript_fetch(&job).unwrap();
        let later = Timestamp::now() + jiff::SignedDuration::from_secs(60);
        store
            .defer_transcript_fetch(job.session_id, later, "not ready")
            .unwrap();
        assert!(
            store
                .due_transcript_fetches(Timestamp::now(), 10)
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.due_transcript_fetches(later, 10).unwrap().len(), 1);
        store
            .park_transcript_fetch(job.session_id, "garbage")
            .unwrap();
        let rec = store.transcript_fetch(job.session_id).unwrap().unwrap();
        assert_eq!(rec.state, FetchState::Parked);
        assert_eq!(rec.attempts, 2);
        assert_eq!(rec.last_error.as_deref(), Some("garbage"));
        assert_eq!(
            store
                .complete_transcript_fetch(job.session_id, &[line(job.session_id, "x")])
                .unwrap(),
            None
        );
        assert!(store.transcripts(Some(job.session_id)).unwrap().is_empty());
    }
}
