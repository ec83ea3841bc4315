//! The store's side of upstream sync: building batches whose rows never
//! change, marking them synced in one transaction, parking refused ones,
//! and deleting only what is synced and old.

use std::fmt;

use jiff::Timestamp;
use rusqlite::{OptionalExtension, Transaction, TransactionBehavior, params};
use serde::Serialize;
use uuid::Uuid;

use super::records::{parse_time, parse_uuid};
use super::{SessionId, SessionRecord, Store, StoreError, TranscriptId, format_time, sql};

/// A batch's id, sent as the `Idempotency-Key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct BatchId(Uuid);

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A transcript row as uploaded: everything stored but sync bookkeeping.
#[derive(Debug, Clone, Serialize)]
pub struct TranscriptUpload {
    /// Its id.
    pub id: TranscriptId,
    /// The session it belongs to.
    pub session_id: SessionId,
    /// Its place in the session, from 0.
    pub seq: u32,
    /// Who spoke: `user` or `bot`.
    pub role: String,
    /// What was said.
    pub text: String,
    /// Whether this is the utterance's final text.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// The speech recogniser's confidence, when it gave one.
    pub confidence: Option<f64>,
    /// When it was spoken.
    pub spoken_at: Timestamp,
    /// When the gateway received it.
    pub received_at: Timestamp,
}

/// The rows of one upload batch.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The batch's id, stable across retries so the upstream can drop repeats.
    pub id: BatchId,
    /// Upload attempts made before this one.
    pub attempts: u32,
    /// Sessions in the batch.
    pub sessions: Vec<SessionRecord>,
    /// Transcript lines in the batch.
    pub transcripts: Vec<TranscriptUpload>,
}

/// A batch the upstream refused; kept until settings change or a technician
/// retries, when its rows go out again in a new batch.
#[derive(Debug, Clone, Serialize)]
pub struct ParkedBatch {
    /// The batch's id.
    pub id: BatchId,
    /// When the batch was made.
    pub created_at: Timestamp,
    /// Upload attempts made.
    pub attempts: u32,
    /// The upstream's last refusal.
    pub error: Option<String>,
    /// Sessions in it.
    pub sessions: u64,
    /// Transcript lines in it.
    pub transcripts: u64,
}

/// What is waiting to go upstream.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Backlog {
    /// Transcript lines not yet uploaded.
    pub transcripts: u64,
    /// Ended sessions not yet synced (open ones are sent when they end).
    pub sessions: u64,
    /// When the oldest of them was received.
    pub oldest: Option<Timestamp>,
    /// Batches the upstream refused.
    pub parked: Vec<ParkedBatch>,
}

const SESSION_COLUMNS: &str = "id, kiosk_id, started_at, ended_at, end_reason, room_name, \
     room_url, agent_session_id, user_speech_ms, bot_speech_ms";

impl Store {
    /// The next batch to upload: the oldest pending one if an earlier
    /// attempt was cut short, else a new one of up to `max_rows` unsynced
    /// transcripts and `max_rows` ended sessions. `None` when all is synced.
    pub fn next_batch(&mut self, max_rows: u32) -> Result<Option<Batch>, StoreError> {
        let path = self.path.clone();
        let tx =
            Transaction::new(&mut self.conn, TransactionBehavior::Immediate).map_err(sql(&path))?;
        let pending: Option<(String, u32)> = tx
            .query_row(
                "SELECT id, attempts FROM sync_batches WHERE state = 'pending'
                 ORDER BY created_at, id LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(sql(&path))?;
        let (id, attempts) = match pending {
            Some((id, attempts)) => (id, attempts),
            None => {
                let id = Uuid::now_v7().to_string();
                let sessions = tx
                    .execute(
                        "UPDATE sessions SET batch_id = ?1 WHERE id IN (
                             SELECT id FROM sessions
                             WHERE synced_at IS NULL AND batch_id IS NULL AND ended_at IS NOT NULL
                             ORDER BY started_at LIMIT ?2)",
                        params![id, max_rows],
                    )
                    .map_err(sql(&path))?;
                let transcripts = tx
                    .execute(
                        "UPDATE transcripts SET batch_id = ?1 WHERE id IN (
                             SELECT id FROM transcripts
                             WHERE synced_at IS NULL AND batch_id IS NULL
                             ORDER BY received_at, id LIMIT ?2)",
                        params![id, max_rows],
                    )
                    .map_err(sql(&path))?;
                if sessions + transcripts == 0 {
                    return Ok(None);
                }
                tx.execute(
                    "INSERT INTO sync_batches (id, created_at, state) VALUES (?1, ?2, 'pending')",
                    params![id, format_time(Timestamp::now())],
                )
                .map_err(sql(&path))?;
                (id, 0)
            }
        };
        let batch = read_batch(&tx, &id, attempts).map_err(sql(&path))?;
        tx.commit().map_err(sql(&path))?;
        Ok(Some(batch))
    }

    /// Marks every row of the batch synced and forgets the batch, atomically.
    pub fn mark_synced(&mut self, id: BatchId, at: Timestamp) -> Result<(), StoreError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(sql(&path))?;
        let at = format_time(at);
        let id = id.to_string();
        for table in ["sessions", "transcripts"] {
            tx.execute(
                &format!("UPDATE {table} SET synced_at = ?2 WHERE batch_id = ?1"),
                params![id, at],
            )
            .map_err(sql(&path))?;
        }
        tx.execute("DELETE FROM sync_batches WHERE id = ?1", [&id])
            .map_err(sql(&path))?;
        tx.commit().map_err(sql(&path))
    }

    /// Notes a failed attempt that will be retried.
    pub fn record_attempt(&self, id: BatchId, error: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE sync_batches SET attempts = attempts + 1, last_attempt_at = ?2,
                        last_error = ?3 WHERE id = ?1",
                params![id.to_string(), format_time(Timestamp::now()), error],
            )
            .map(drop)
            .map_err(sql(&self.path))
    }

    /// Sets a refused batch aside; its rows stay unsynced and are not sent
    /// again until [`Store::unpark`].
    pub fn park(&self, id: BatchId, error: &str, fingerprint: &str) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE sync_batches SET state = 'parked', attempts = attempts + 1,
                        last_attempt_at = ?2, last_error = ?3, parked_fingerprint = ?4
                 WHERE id = ?1",
                params![
                    id.to_string(),
                    format_time(Timestamp::now()),
                    error,
                    fingerprint
                ],
            )
            .map(drop)
            .map_err(sql(&self.path))
    }

    /// Gives parked batches another chance: all of them (`None`, a
    /// technician asked), or those parked under other settings than
    /// `current_fingerprint`. Returns how many.
    ///
    /// A parked batch is not resent under its old id: an upstream that
    /// honours `Idempotency-Key` would answer the same key with the same
    /// refusal forever. Its rows are released instead (and the batch
    /// forgotten) so the next [`Store::next_batch`] builds them into a new
    /// batch under a new id; the rows keep their own stable ids, which is
    /// what keeps the upstream free of duplicates.
    pub fn unpark(&mut self, current_fingerprint: Option<&str>) -> Result<usize, StoreError> {
        let path = self.path.clone();
        let tx =
            Transaction::new(&mut self.conn, TransactionBehavior::Immediate).map_err(sql(&path))?;
        let ids: Vec<String> = tx
            .prepare(
                "SELECT id FROM sync_batches
                 WHERE state = 'parked' AND (?1 IS NULL OR parked_fingerprint IS NOT ?1)",
            )
            .and_then(|mut stmt| {
                stmt.query_map([current_fingerprint], |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()
            })
            .map_err(sql(&path))?;
        for id in &ids {
            for table in ["sessions", "transcripts"] {
                tx.execute(
                    &format!("UPDATE {table} SET batch_id = NULL WHERE batch_id = ?1"),
                    [id],
                )
                .map_err(sql(&path))?;
            }
            tx.execute("DELETE FROM sync_batches WHERE id = ?1", [id])
                .map_err(sql(&path))?;
        }
        tx.commit().map_err(sql(&path))?;
        Ok(ids.len())
    }

    /// What is waiting to go upstream.
    pub fn backlog(&self) -> Result<Backlog, StoreError> {
        let (transcripts, sessions, oldest): (u64, u64, Option<String>) = self
            .conn
            .query_row(
                "SELECT (SELECT COUNT(*) FROM transcripts WHERE synced_at IS NULL),
                        (SELECT COUNT(*) FROM sessions
                         WHERE synced_at IS NULL AND ended_at IS NOT NULL),
                        (SELECT MIN(received_at) FROM transcripts WHERE synced_at IS NULL)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(sql(&self.path))?;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT b.id, b.created_at, b.attempts, b.last_error,
                        (SELECT COUNT(*) FROM sessions WHERE batch_id = b.id),
                        (SELECT COUNT(*) FROM transcripts WHERE batch_id = b.id)
                 FROM sync_batches b WHERE b.state = 'parked' ORDER BY b.created_at",
            )
            .map_err(sql(&self.path))?;
        let parked = stmt
            .query_map([], |r| {
                Ok(ParkedBatch {
                    id: BatchId(parse_uuid(r.get(0)?)?),
                    created_at: parse_time(r.get(1)?)?,
                    attempts: r.get(2)?,
                    error: r.get(3)?,
                    sessions: r.get(4)?,
                    transcripts: r.get(5)?,
                })
            })
            .and_then(Iterator::collect)
            .map_err(sql(&self.path))?;
        Ok(Backlog {
            transcripts,
            sessions,
            oldest: oldest
                .map(parse_time)
                .transpose()
                .map_err(sql(&self.path))?,
            parked,
        })
    }

    /// Deletes synced rows received before `cutoff`, and synced sessions
    /// that started before it and have no transcripts left. Unsynced rows
    /// are never deleted. Returns (sessions, transcripts) deleted.
    pub fn purge_synced_before(&mut self, cutoff: Timestamp) -> Result<(usize, usize), StoreError> {
        let path = self.path.clone();
        let cutoff = format_time(cutoff);
        let tx = self.conn.transaction().map_err(sql(&path))?;
        let transcripts = tx
            .execute(
                "DELETE FROM transcripts WHERE synced_at IS NOT NULL AND received_at < ?1",
                [&cutoff],
            )
            .map_err(sql(&path))?;
        let sessions = tx
            .execute(
                "DELETE FROM sessions WHERE synced_at IS NOT NULL AND started_at < ?1
                 AND NOT EXISTS (SELECT 1 FROM transcripts t WHERE t.session_id = sessions.id)",
                [&cutoff],
            )
            .map_err(sql(&path))?;
        tx.commit().map_err(sql(&path))?;
        Ok((sessions, transcripts))
    }
}

fn read_batch(tx: &Transaction<'_>, id: &str, attempts: u32) -> rusqlite::Result<Batch> {
    let sessions = tx
        .prepare(&format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE batch_id = ?1 ORDER BY started_at"
        ))?
        .query_map([id], super::records::session_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let transcripts = tx
        .prepare(
            "SELECT id, session_id, seq, role, text, final, confidence, spoken_at, received_at
             FROM transcripts WHERE batch_id = ?1 ORDER BY received_at, id",
        )?
        .query_map([id], |r| {
            Ok(TranscriptUpload {
                id: TranscriptId::from_uuid(parse_uuid(r.get(0)?)?),
                session_id: SessionId::from_uuid(parse_uuid(r.get(1)?)?),
                seq: r.get(2)?,
                role: r.get(3)?,
                text: r.get(4)?,
                is_final: r.get(5)?,
                confidence: r.get(6)?,
                spoken_at: parse_time(r.get(7)?)?,
                received_at: parse_time(r.get(8)?)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Batch {
        id: BatchId(parse_uuid(id.to_string())?),
        attempts,
        sessions,
        transcripts,
    })
}
