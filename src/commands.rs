//! One-shot commands for technicians: what they print is written for
//! people, and `--json` output is a stable contract.

use std::io::Write;
use std::path::Path;

use crate::config::{Config, ConfigError, Env};
use crate::error_text::error_chain;
use tokio_util::sync::CancellationToken;

use crate::runtime::{self, RuntimeError};
use crate::store::{SessionId, Store, StoreError, StoreHandle};
use crate::sync::{SyncSettings, SyncWorker};

/// `loopback-agent`: the built-in agent on its own, until Ctrl-C.
pub use crate::agent::run_until_interrupted as loopback_agent;

/// `check`: loads and validates the config, printing every problem.
/// Returns whether it is valid. Nothing on disk is touched.
pub fn check(path: &Path, out: &mut impl Write, err: &mut impl Write) -> std::io::Result<bool> {
    match Config::load(path, &Env::from_process()) {
        Ok(c) => {
            // The one file the config names that `run` reads at start-up.
            if let Err(e) = crate::daemon::session_settings(&c) {
                writeln!(
                    err,
                    "error: {}: session.failure_prompt: {}",
                    path.display(),
                    error_chain(&e)
                )?;
                writeln!(err, "{}: 1 problem", path.display())?;
                return Ok(false);
            }
            writeln!(out, "{}: ok", path.display())?;
            writeln!(out, "  kiosk        {} ({})", c.kiosk.id, c.kiosk.name)?;
            writeln!(
                out,
                "  session      trigger {:?}, provision {:?}",
                c.session.trigger, c.session.provision
            )?;
            writeln!(
                out,
                "  audio        in {:?}, out {:?}, VAD aggressiveness {}",
                c.audio.input,
                c.audio.output,
                c.vad.aggressiveness.level()
            )?;
            let prompt = c
                .session
                .failure_prompt
                .as_ref()
                .map_or("built in".to_string(), |p| p.display().to_string());
            writeln!(out, "  prompt       {prompt}")?;
            writeln!(out, "  store        {}", c.store.path.display())?;
            writeln!(out, "  status       http://{}/", c.status.listen)?;
            let sync = c
                .sync
                .url
                .as_ref()
                .map_or("off".to_string(), |u| u.to_string());
            writeln!(out, "  sync         {sync}")?;
            let secrets = [
                ("daily.api_key", c.daily.api_key.is_some()),
                ("agent.api_key", c.agent.api_key.is_some()),
                ("sync.token", c.sync.token.is_some()),
                ("status.token", c.status.token.is_some()),
            ];
            let set: Vec<&str> = secrets
                .iter()
                .filter(|(_, present)| *present)
                .map(|(name, _)| *name)
                .collect();
            let set = if set.is_empty() {
                "none".to_string()
            } else {
                set.join(", ")
            };
            writeln!(out, "  secrets set  {set}")?;
            Ok(true)
        }
        Err(e @ ConfigError::Invalid(_)) => {
            let problems = e.problems();
            for p in &problems {
                writeln!(err, "error: {p}")?;
            }
            writeln!(
                err,
                "{}: {} problem{}",
                path.display(),
                problems.len(),
                if problems.len() == 1 { "" } else { "s" }
            )?;
            Ok(false)
        }
        Err(e) => {
            writeln!(err, "error: {}", error_chain(&e))?;
            Ok(false)
        }
    }
}

/// `transcripts`: prints stored transcripts, of one session or all.
pub fn transcripts(
    db: &Path,
    session: Option<&str>,
    json: bool,
    out: &mut impl Write,
) -> Result<(), TranscriptsError> {
    let session: Option<SessionId> = session.map(str::parse).transpose()?;
    let store = Store::open_read_only(db)?;
    let lines = store.transcripts(session)?;
    if json {
        serde_json::to_writer_pretty(&mut *out, &lines)?;
        writeln!(out)?;
        return Ok(());
    }
    if lines.is_empty() {
        writeln!(out, "no transcripts in {}", db.display())?;
        return Ok(());
    }
    let mut current = None;
    for t in &lines {
        if current != Some(t.session_id) {
            writeln!(out, "session {}", t.session_id)?;
            current = Some(t.session_id);
        }
        let time = t.spoken_at.strftime("%Y-%m-%d %H:%M:%S");
        let partial = if t.is_final { "" } else { " (partial)" };
        writeln!(out, "  {time}  {:>4}: {}{partial}", t.role, t.text)?;
    }
    Ok(())
}

/// `sync`: uploads until the queue is empty (`once`) or until Ctrl-C.
/// Returns whether everything waiting was accepted.
pub fn sync(
    config: &Config,
    once: bool,
    retry_parked: bool,
    out: &mut impl Write,
) -> Result<bool, SyncCommandError> {
    let mut settings = SyncSettings::from_config(config).ok_or(SyncCommandError::Off)?;
    if once {
        // A technician waits at the terminal: a few tries, then report.
        settings.max_attempts = Some(4);
    }
    let (store, _) = Store::open(&config.store.path)?;
    let (store, writer) = StoreHandle::spawn(store);
    let worker = SyncWorker::new(settings, store.clone());
    if retry_parked {
        worker.trigger().retry_parked();
    }
    let runtime = runtime::build()?;
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let outcome = runtime.block_on(async move {
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
        });
        if once {
            let report = worker.drain(&cancel).await?;
            let backlog = store.call(|s| s.backlog()).await?;
            Ok::<_, SyncCommandError>(Some((report, backlog)))
        } else {
            worker.run(cancel).await;
            Ok(None)
        }
    })?;
    writer.join();
    let Some((report, backlog)) = outcome else {
        return Ok(true);
    };
    writeln!(
        out,
        "uploaded {} batches ({} sessions, {} lines) after {} retries; {} batches parked",
        report.batches, report.sessions, report.transcripts, report.retries, report.parked
    )?;
    writeln!(
        out,
        "waiting: {} lines, {} sessions; parked batches: {}",
        backlog.transcripts,
        backlog.sessions,
        backlog.parked.len()
    )?;
    for p in &backlog.parked {
        writeln!(
            out,
            "  parked {} ({} lines): {}",
            p.id,
            p.transcripts,
            p.error.as_deref().unwrap_or("?")
        )?;
    }
    Ok(report.complete && backlog.transcripts == 0 && backlog.sessions == 0)
}

/// Why `sync --once` failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncCommandError {
    /// Sync is not configured.
    #[error("sync is off: set sync.url (and the sync.token secret)")]
    Off,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The upload stopped on a database error.
    #[error(transparent)]
    Sync(#[from] crate::sync::SyncError),
    /// The async runtime cannot start.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The report cannot be printed.
    #[error("cannot write output")]
    Io(#[from] std::io::Error),
}

/// Why `transcripts` failed.
#[derive(Debug, thiserror::Error)]
pub enum TranscriptsError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The output cannot be written.
    #[error("cannot write output")]
    Io(#[from] std::io::Error),
    /// The output cannot be written as JSON.
    #[error("cannot write JSON")]
    Json(#[from] serde_json::Error),
}
