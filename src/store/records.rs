//! Sessions and transcripts as stored, and the queries on them.

use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use uuid::Uuid;

use super::{Store, StoreError, sql};

/// A kiosk session's id: a UUIDv7, so ids sort by start time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SessionId(Uuid);

impl SessionId {
    /// A fresh id for a session starting now.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub(super) fn from_uuid(u: Uuid) -> Self {
        Self(u)
    }
}

impl Default for SessionId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for SessionId {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|_| StoreError::BadSessionId(s.to_string()))
    }
}

/// A transcript line's id: a UUIDv7, stable across sync retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct TranscriptId(Uuid);

impl TranscriptId {
    pub(super) fn from_uuid(u: Uuid) -> Self {
        Self(u)
    }
}

impl fmt::Display for TranscriptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Who spoke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The visitor, heard through the microphone.
    User,
    /// The voice agent.
    Bot,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Bot => "bot",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The one text form of times in the database: UTC, millisecond precision,
/// fixed width, so that text order is time order.
pub fn format_time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

pub(super) fn parse_time(s: String) -> rusqlite::Result<Timestamp> {
    s.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

pub(super) fn parse_uuid(s: String) -> rusqlite::Result<Uuid> {
    Uuid::parse_str(&s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// A session as it starts, before anything is known of its end.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// Its own id, made by the gateway when the session starts.
    pub id: SessionId,
    /// The kiosk it runs on, from the configuration.
    pub kiosk_id: String,
    /// When it started.
    pub started_at: Timestamp,
    /// The Daily room it uses, once provisioned.
    pub room_name: Option<String>,
    /// That room's URL.
    pub room_url: Option<String>,
    /// The agent's own id for the session, when it gives one.
    pub agent_session_id: Option<String>,
}

/// How a session ended.
#[derive(Debug, Clone)]
pub struct SessionEnd {
    /// When it ended.
    pub ended_at: Timestamp,
    /// Why it ended.
    pub reason: String,
    /// How long the visitor spoke, in milliseconds.
    pub user_speech_ms: u64,
    /// How long the agent spoke, in milliseconds.
    pub bot_speech_ms: u64,
}

/// A stored session, ended or not.
#[derive(Debug, Clone, Serialize)]
pub struct SessionRecord {
    /// Its id.
    pub id: SessionId,
    /// The kiosk it ran on.
    pub kiosk_id: String,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended; `None` while open, or if the gateway stopped first.
    pub ended_at: Option<Timestamp>,
    /// Why it ended.
    pub end_reason: Option<String>,
    /// The Daily room it used.
    pub room_name: Option<String>,
    /// That room's URL.
    pub room_url: Option<String>,
    /// The agent's own id for the session.
    pub agent_session_id: Option<String>,
    /// How long the visitor spoke, in milliseconds.
    pub user_speech_ms: u64,
    /// How long the agent spoke, in milliseconds.
    pub bot_speech_ms: u64,
}

/// Reads the columns `id, kiosk_id, started_at, ended_at, end_reason,
/// room_name, room_url, agent_session_id, user_speech_ms, bot_speech_ms`.
pub(super) fn session_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionRecord> {
    Ok(SessionRecord {
        id: SessionId(parse_uuid(r.get(0)?)?),
        kiosk_id: r.get(1)?,
        started_at: parse_time(r.get(2)?)?,
        ended_at: r.get::<_, Option<String>>(3)?.map(parse_time).transpose()?,
        end_reason: r.get(4)?,
        room_name: r.get(5)?,
        room_url: r.get(6)?,
        agent_session_id: r.get(7)?,
        user_speech_ms: r.get(8)?,
        bot_speech_ms: r.get(9)?,
    })
}

/// A transcript line as it arrives, to be stored.
#[derive(Debug, Clone)]
pub struct NewTranscript {
    /// The session it belongs to.
    pub session_id: SessionId,
    /// Who spoke.
    pub role: Role,
    /// What was said.
    pub text: String,
    /// Whether this is the utterance's final text, not an interim guess.
    pub is_final: bool,
    /// The speech recogniser's confidence, when it gives one.
    pub confidence: Option<f64>,
    /// When it was spoken.
    pub spoken_at: Timestamp,
    /// When the gateway received it.
    pub received_at: Timestamp,
}

/// A stored transcript line; its JSON form is the `transcripts --json`
/// contract.
#[derive(Debug, Clone, Serialize)]
pub struct Transcript {
    /// Its id.
    pub id: TranscriptId,
    /// The session it belongs to.
    pub session_id: SessionId,
    /// Its place in the session, from 0.
    pub seq: u32,
    /// Who spoke.
    pub role: Role,
    /// What was said.
    pub text: String,
    /// Whether this is the utterance's final text.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// When it was spoken.
    pub spoken_at: Timestamp,
}

/// Row counts for the status page and metrics.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    /// All sessions.
    pub sessions: u64,
    /// Sessions not yet ended.
    pub open_sessions: u64,
    /// All transcript lines.
    pub transcripts: u64,
    /// Transcript lines not yet uploaded.
    pub unsynced_transcripts: u64,
}

impl Store {
    /// Records a session as started; it stays open (no `ended_at`) until
    /// [`Store::end_session`], so a crash leaves a trace.
    pub fn start_session(&self, s: &NewSession) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO sessions (id, kiosk_id, started_at, room_name, room_url, agent_session_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    s.id.to_string(),
                    s.kiosk_id,
                    format_time(s.started_at),
                    s.room_name,
                    s.room_url,
                    s.agent_session_id
                ],
            )
            .map_err(sql(&self.path))?;
        Ok(())
    }

    /// Records how a session ended, closing it.
    pub fn end_session(&self, id: SessionId, end: &SessionEnd) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE sessions SET ended_at = ?2, end_reason = ?3, user_speech_ms = ?4,
                        bot_speech_ms = ?5
                 WHERE id = ?1 AND ended_at IS NULL",
                params![
                    id.to_string(),
                    format_time(end.ended_at),
                    end.reason,
                    end.user_speech_ms,
                    end.bot_speech_ms
                ],
            )
            .map_err(sql(&self.path))?;
        Ok(())
    }

    /// Appends a transcript line with the next `seq` of its session, in one
    /// transaction so the order of arrival is the order stored.
    pub fn add_transcript(&mut self, t: &NewTranscript) -> Result<Transcript, StoreError> {
        let mut stored = self.add_transcripts(std::slice::from_ref(t))?;
        Ok(stored.remove(0))
    }

    /// Appends several lines in arrival order in one transaction: one disk
    /// sync for all of them.
    pub fn add_transcripts(
        &mut self,
        lines: &[NewTranscript],
    ) -> Result<Vec<Transcript>, StoreError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(sql(&path))?;
        let stored = insert_transcripts(&tx, lines).map_err(sql(&path))?;
        tx.commit().map_err(sql(&path))?;
        Ok(stored)
    }

    /// The session with this id, if there is one.
    pub fn session(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError> {
        self.conn
            .query_row(
                "SELECT id, kiosk_id, started_at, ended_at, end_reason, room_name, room_url,
                        agent_session_id, user_speech_ms, bot_speech_ms
                 FROM sessions WHERE id = ?1",
                [id.to_string()],
                session_from_row,
            )
            .optional()
            .map_err(sql(&self.path))
    }

    /// Transcript lines in session and arrival order, of one session or all.
    pub fn transcripts(&self, session: Option<SessionId>) -> Result<Vec<Transcript>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT t.id, t.session_id, t.seq, t.role, t.text, t.final, t.spoken_at
                 FROM transcripts t JOIN sessions s ON s.id = t.session_id
                 WHERE ?1 IS NULL OR t.session_id = ?1
                 ORDER BY s.started_at, t.session_id, t.seq",
            )
            .map_err(sql(&self.path))?;
        let rows = stmt
            .query_map([session.map(|s| s.to_string())], |r| {
                let role: String = r.get(3)?;
                Ok(Transcript {
                    id: TranscriptId(parse_uuid(r.get(0)?)?),
                    session_id: SessionId(parse_uuid(r.get(1)?)?),
                    seq: r.get(2)?,
                    role: if role == "bot" { Role::Bot } else { Role::User },
                    text: r.get(4)?,
                    is_final: r.get(5)?,
                    spoken_at: parse_time(r.get(6)?)?,
                })
            })
            .and_then(Iterator::collect)
            .map_err(sql(&self.path))?;
        Ok(rows)
    }

    /// Row counts, in one query.
    pub fn counts(&self) -> Result<Counts, StoreError> {
        self.conn
            .query_row(
                "SELECT (SELECT COUNT(*) FROM sessions),
                        (SELECT COUNT(*) FROM sessions WHERE ended_at IS NULL),
                        (SELECT COUNT(*) FROM transcripts),
                        (SELECT COUNT(*) FROM transcripts WHERE synced_at IS NULL)",
                [],
                |r| {
                    Ok(Counts {
                        sessions: r.get(0)?,
                        open_sessions: r.get(1)?,
                        transcripts: r.get(2)?,
                        unsynced_transcripts: r.get(3)?,
                    })
                },
            )
            .map_err(sql(&self.path))
    }
}

/// A session as listed on the status page.
#[derive(Debug, Clone, Serialize)]
pub struct SessionSummary {
    /// The session itself.
    #[serde(flatten)]
    pub session: SessionRecord,
    /// How many transcript lines it has.
    pub transcripts: u64,
    /// Whether all its lines are uploaded.
    pub synced: bool,
}

impl SessionSummary {
    /// Whole seconds from start to end; `None` while running.
    pub fn duration_s(&self) -> Option<i64> {
        let end = self.session.ended_at?;
        Some(end.duration_since(self.session.started_at).as_secs())
    }
}

impl Store {
    /// The most recent sessions, newest first.
    pub fn recent_sessions(&self, limit: u32) -> Result<Vec<SessionSummary>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT s.id, s.kiosk_id, s.started_at, s.ended_at, s.end_reason, s.room_name,
                        s.room_url, s.agent_session_id, s.user_speech_ms, s.bot_speech_ms,
                        (SELECT COUNT(*) FROM transcripts t WHERE t.session_id = s.id),
                        s.synced_at IS NOT NULL
                 FROM sessions s ORDER BY s.started_at DESC LIMIT ?1",
            )
            .map_err(sql(&self.path))?;
        let rows = stmt
            .query_map([limit], |r| {
                Ok(SessionSummary {
                    session: session_from_row(r)?,
                    transcripts: r.get(10)?,
                    synced: r.get(11)?,
                })
            })
            .and_then(Iterator::collect)
            .map_err(sql(&self.path))?;
        Ok(rows)
    }
}

impl Store {
    /// Sessions started at or after `since`, oldest first; at most
    /// `limit`, the latest if there are more. For the status page's time
    /// lines.
    pub fn sessions_since(
        &self,
        since: Timestamp,
        limit: u32,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, kiosk_id, started_at, ended_at, end_reason, room_name,
                        room_url, agent_session_id, user_speech_ms, bot_speech_ms
                 FROM sessions WHERE started_at >= ?1 ORDER BY started_at DESC LIMIT ?2",
            )
            .map_err(sql(&self.path))?;
        let mut rows: Vec<SessionRecord> = stmt
            .query_map(
                rusqlite::params![format_time(since), limit],
                session_from_row,
            )
            .and_then(Iterator::collect)
            .map_err(sql(&self.path))?;
        rows.reverse();
        Ok(rows)
    }
}

impl Store {
    /// Sessions left open by a process that died (power cut, kill -9) are
    /// closed as `crashed`, ending at their last stored line. Returns how many.
    pub fn close_crashed_sessions(&self) -> Result<usize, StoreError> {
        self.conn
            .execute(
                "UPDATE sessions SET end_reason = 'crashed',
                     ended_at = COALESCE(
                         (SELECT MAX(received_at) FROM transcripts t WHERE t.session_id = sessions.id),
                         started_at)
                 WHERE ended_at IS NULL",
                [],
            )
            .map_err(sql(&self.path))
    }
}

impl Store {
    /// Records where a session's cloud side is, once provisioned.
    pub fn set_session_cloud(
        &self,
        id: SessionId,
        room_name: Option<String>,
        room_url: Option<String>,
        agent_session_id: Option<String>,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE sessions SET room_name = ?2, room_url = ?3, agent_session_id = ?4
                 WHERE id = ?1",
                params![id.to_string(), room_name, room_url, agent_session_id],
            )
            .map(drop)
            .map_err(sql(&self.path))
    }
}

/// Appends lines, each with the next `seq` of its session, inside the
/// caller's transaction.
pub(super) fn insert_transcripts(
    tx: &rusqlite::Transaction<'_>,
    lines: &[NewTranscript],
) -> rusqlite::Result<Vec<Transcript>> {
    let mut stored = Vec::with_capacity(lines.len());
    let mut next_seq = tx.prepare_cached(
        "SELECT COALESCE(MAX(seq), 0) + 1 FROM transcripts WHERE session_id = ?1",
    )?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO transcripts (id, session_id, seq, role, text, final, confidence,
                                  spoken_at, received_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for t in lines {
        let session = t.session_id.to_string();
        let seq: u32 = next_seq.query_row([&session], |r| r.get(0))?;
        let id = TranscriptId(Uuid::now_v7());
        insert.execute(params![
            id.to_string(),
            session,
            seq,
            t.role.as_str(),
            t.text,
            t.is_final,
            t.confidence,
            format_time(t.spoken_at),
            format_time(t.received_at)
        ])?;
        stored.push(Transcript {
            id,
            session_id: t.session_id,
            seq,
            role: t.role,
            text: t.text.clone(),
            is_final: t.is_final,
            spoken_at: t.spoken_at,
        });
    }
    Ok(stored)
}
