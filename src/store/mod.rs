//! SQLite storage of sessions and transcripts (DESIGN.md section 6), and
//! the queues of work on them (upload batches, transcript fetches).
//!
//! One `Store` per process writes; readers (the status server, the
//! `transcripts` command) open their own read-only handles. A database that
//! fails its integrity check is moved aside, never deleted, and a fresh one
//! takes its place so the kiosk keeps working.

mod migrations;
mod records;
mod sync_queue;
mod transcript_fetches;
mod writer;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

pub use records::{
    Counts, NewSession, NewTranscript, Role, SessionEnd, SessionId, SessionRecord, SessionSummary,
    Transcript, TranscriptId, format_time,
};
pub use sync_queue::{Backlog, Batch, BatchId, ParkedBatch, TranscriptUpload};
pub use transcript_fetches::{FetchJob, FetchRecord, FetchState};
pub use writer::{StoreHandle, WriterThread};

/// Why the store cannot do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("database {}", path.display())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The schema could not be brought up to date.
    #[error("database {}: schema migration failed", path.display())]
    Migration {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rusqlite_migration::Error,
    },
    /// The database's folder cannot be created.
    #[error("cannot create the folder for database {}", path.display())]
    CreateDir {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A damaged database could not be renamed out of the way.
    #[error("database {} is damaged and could not be moved aside", path.display())]
    MoveAside {
        /// The database file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A command that only reads found no database.
    #[error("no database at {} (the daemon creates it when it first runs)", path.display())]
    Missing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The writer thread has stopped, so writes cannot be made.
    #[error("the store's writer thread has stopped")]
    WriterGone,
    /// Not a session id.
    #[error("unknown session id {0:?}")]
    BadSessionId(String),
}

/// What happened while opening the store, for logs and the status page.
#[derive(Debug, Clone, Default)]
pub struct OpenReport {
    /// Where a damaged database was moved to, if one was found.
    pub moved_aside: Option<PathBuf>,
    /// Why it was judged damaged.
    pub damage: Option<String>,
}

/// The SQLite database: sessions, transcripts and the upload queue, over
/// one connection. The daemon writes through [`WriterThread`].
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

/// How long a statement waits for another connection's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

impl Store {
    /// Opens (creating if needed) the database at `path` for writing,
    /// migrating it to the current schema. A damaged file is moved aside to
    /// `<path>.corrupt-<time>` and a fresh database is created.
    pub fn open(path: &Path) -> Result<(Store, OpenReport), StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: path.to_path_buf(),
                source,
            })?;
        }
        let mut report = OpenReport::default();
        if let Some(damage) = damage(path)? {
            report.moved_aside = Some(move_aside(path)?);
            report.damage = Some(damage);
        }
        let mut conn = Connection::open(path).map_err(sql(path))?;
        configure(&conn, path)?;
        migrations::all()
            .to_latest(&mut conn)
            .map_err(|source| StoreError::Migration {
                path: path.to_path_buf(),
                source,
            })?;
        Ok((
            Store {
                conn,
                path: path.to_path_buf(),
            },
            report,
        ))
    }

    /// Opens an existing database without ever writing to it.
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        if !path.exists() {
            return Err(StoreError::Missing {
                path: path.to_path_buf(),
            });
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql(path))?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sql(path))?;
        Ok(Store {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Names of the tables in the database, for checks and tests.
    pub fn tables(&self) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .map_err(sql(&self.path))?;
        let rows = stmt
            .query_map([], |r| r.get(0))
            .and_then(Iterator::collect)
            .map_err(sql(&self.path))?;
        Ok(rows)
    }
}

/// Maps a rusqlite error to one that names the database.
fn sql(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

fn configure(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql(path))?;
    // WAL lets the status page read while the session writes; FULL makes
    // every committed transcript survive a power cut, which matters more
    // on a kiosk than the few writes per second it costs.
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sql(path))?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(sql(path))?;
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(sql(path))?;
    Ok(())
}

/// Runs SQLite's quick integrity check on an existing file. Returns why it
/// is damaged, `None` if it is fine (or absent), and an error for anything
/// that is not damage (permissions, a full disk, a lock): those must not
/// cause a good database to be moved aside.
fn damage(path: &Path) -> Result<Option<String>, StoreError> {
    if !path.exists() {
        return Ok(None);
    }
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(sql(path))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sql(path))?;
    let result: rusqlite::Result<Vec<String>> = conn
        .prepare("PRAGMA quick_check")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect());
    match result {
        Ok(lines) if lines == ["ok"] => Ok(None),
        Ok(lines) => Ok(Some(lines.join("; "))),
        Err(e) if is_damage(&e) => Ok(Some(e.to_string())),
        Err(e) => Err(sql(path)(e)),
    }
}

fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
    )
}

/// Renames the database and its WAL and shared-memory files to
/// `<name>.corrupt-<UTC time>`, keeping them for later inspection.
fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let aside = |p: &Path| {
        let mut name = p.as_os_str().to_owned();
        name.push(format!(".corrupt-{stamp}"));
        PathBuf::from(name)
    };
    let target = aside(path);
    std::fs::rename(path, &target).map_err(|source| StoreError::MoveAside {
        path: path.to_path_buf(),
        source,
    })?;
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let side = PathBuf::from(side);
        if side.exists() {
            std::fs::rename(&side, aside(&side)).map_err(|source| StoreError::MoveAside {
                path: side.clone(),
                source,
            })?;
        }
    }
    Ok(target)
}

#[cfg(test)]
mod tests;
