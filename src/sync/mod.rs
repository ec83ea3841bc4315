//! Upstream transcript sync (DESIGN.md section 6): batches of unsynced rows
//! go to the operator's cloud, each retried under its own Idempotency-Key
//! until accepted, so nothing is lost and nothing is counted twice. A batch
//! the upstream refuses is parked; when the settings change or a technician
//! asks, its rows go again in a new batch under a new key (the old key would
//! only get the old answer), and the rows' own stable ids keep the upstream
//! free of duplicates.

mod upload;
mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use jiff::Timestamp;
use metrics::counter;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::error_text::error_chain;
use crate::health::ErrorNote;
use crate::store::{Batch, StoreError, StoreHandle};
pub use upload::Outcome;
use upload::Uploader;
pub use wire::Document;

/// The longest `Retry-After` obeyed; a larger one is likely a mistake.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// The shortest wait between attempts that `Retry-After` can ask for: `0`
/// or a date in the past would otherwise make a busy loop (with a store
/// write per attempt).
const MIN_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Where and how transcripts are uploaded.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// The upstream endpoint.
    pub url: url::Url,
    /// Bearer token for it.
    pub token: SecretString,
    /// This kiosk, as the upstream knows it.
    pub kiosk_id: String,
    /// Rows of each kind per batch.
    pub batch_size: u32,
    /// How often to upload when not woken.
    pub interval: Duration,
    /// One upload attempt's time limit.
    pub timeout: Duration,
    /// Synced rows older than this are deleted.
    pub retention: Duration,
    /// Backoff between retries of one batch: from `backoff_min`, doubling,
    /// with jitter, capped at `backoff_max`.
    pub backoff_min: Duration,
    /// See `backoff_min`.
    pub backoff_max: Duration,
    /// Failed attempts on one batch before a drain gives up for now;
    /// `None` (the daemon) keeps trying.
    pub max_attempts: Option<u32>,
}

impl SyncSettings {
    /// `None` when sync is off (no `sync.url`).
    pub fn from_config(c: &Config) -> Option<Self> {
        Some(Self {
            url: c.sync.url.clone()?,
            token: c.sync.token.clone()?,
            kiosk_id: c.kiosk.id.to_string(),
            batch_size: c.sync.batch_size,
            interval: c.sync.interval,
            timeout: c.sync.timeout,
            retention: Duration::from_secs(u64::from(c.store.retention_days) * 86_400),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            max_attempts: None,
        })
    }

    /// Identifies the settings a batch was refused under; different
    /// settings give parked batches another chance. It is kept in the local
    /// database across restarts and upgrades, so it must not change between
    /// builds: SHA-256 (not `DefaultHasher`, whose output Rust does not
    /// promise to keep from one release to the next), over length-prefixed
    /// fields so no two settings share an input.
    fn fingerprint(&self) -> String {
        let mut input = Vec::new();
        for field in [
            "kiosk-gateway sync settings v1",
            self.url.as_str(),
            self.token.expose_secret(),
            &self.kiosk_id,
        ] {
            input.extend_from_slice(&(field.len() as u64).to_be_bytes());
            input.extend_from_slice(field.as_bytes());
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, &input);
        digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What the status page shows about sync.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncStatus {
    /// Whether sync is configured.
    pub enabled: bool,
    /// When a batch was last accepted.
    pub last_success: Option<Timestamp>,
    /// The last failure since start, if any.
    pub last_error: Option<ErrorNote>,
    /// True while a batch is waiting out a backoff.
    pub retrying: bool,
    /// Batches accepted since start.
    pub batches_accepted: u64,
}

/// Wakes the worker: after a session ends, on `POST /api/sync`.
#[derive(Clone, Default)]
pub struct SyncTrigger {
    wake: Arc<Notify>,
    retry_parked: Arc<AtomicBool>,
}

impl SyncTrigger {
    /// Uploads what is waiting now rather than at the next interval.
    pub fn sync_now(&self) {
        self.wake.notify_one();
    }

    /// A technician asks to send parked batches again.
    pub fn retry_parked(&self) {
        self.retry_parked.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }
}

/// Counts of one drain, for `sync --once` and logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DrainReport {
    /// Batches accepted.
    pub batches: u64,
    /// Sessions in them.
    pub sessions: u64,
    /// Transcript lines in them.
    pub transcripts: u64,
    /// Batches the upstream refused, parked.
    pub parked: u64,
    /// Failed attempts retried.
    pub retries: u64,
    /// Whether the queue was emptied (false when stopped by cancellation).
    pub complete: bool,
}

/// Why sync stopped.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The local database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Uploads transcripts and sessions in batches, retrying with backoff, and reports how it goes.
pub struct SyncWorker {
    settings: SyncSettings,
    store: StoreHandle,
    uploader: Uploader,
    trigger: SyncTrigger,
    status: watch::Sender<SyncStatus>,
    /// Whether parked batches were compared with the current settings.
    settings_checked: AtomicBool,
}

impl SyncWorker {
    /// A worker for `settings`, reading and marking rows in `store`.
    pub fn new(settings: SyncSettings, store: StoreHandle) -> Self {
        let uploader = Uploader::new(
            settings.url.clone(),
            settings.token.clone(),
            settings.timeout,
        );
        let (status, _) = watch::channel(SyncStatus {
            enabled: true,
            ..SyncStatus::default()
        });
        Self {
            settings,
            store,
            uploader,
            trigger: SyncTrigger::default(),
            status,
            settings_checked: AtomicBool::new(false),
        }
    }

    /// A handle that wakes the worker.
    pub fn trigger(&self) -> SyncTrigger {
        self.trigger.clone()
    }

    /// What the status page shows, kept up to date.
    pub fn status(&self) -> watch::Receiver<SyncStatus> {
        self.status.subscribe()
    }

    /// Syncs every `interval` and whenever triggered, until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
                _ = self.trigger.wake.notified() => {}
            }
            if let Err(e) = self.drain(&cancel).await {
                warn!(error = %error_chain(&e), "sync stopped by a store error");
                self.note_error(error_chain(&e));
            }
        }
    }

    /// Uploads batches until none is left (or `cancel`), waiting out
    /// retryable failures; refused batches are parked and skipped.
    pub async fn drain(&self, cancel: &CancellationToken) -> Result<DrainReport, SyncError> {
        // Once per worker (a daemon start, a `sync` command): batches
        // parked under other settings get another chance.
        if !self.settings_checked.load(Ordering::SeqCst) {
            let fingerprint = self.settings.fingerprint();
            let n = self
                .store
                .call(move |s| s.unpark(Some(&fingerprint)))
                .await?;
            self.settings_checked.store(true, Ordering::SeqCst);
            if n > 0 {
                info!(
                    batches = n,
                    "sync settings changed; the rows of parked batches go again in new batches"
                );
            }
        }
        if self.trigger.retry_parked.swap(false, Ordering::SeqCst) {
            let n = self.store.call(|s| s.unpark(None)).await?;
            info!(
                batches = n,
                "on request, the rows of parked batches go again in new batches"
            );
        }
        let mut report = DrainReport::default();
        let max = self.settings.batch_size;
        while let Some(batch) = self.store.call(move |s| s.next_batch(max)).await? {
            if !self.send_until_settled(&batch, cancel, &mut report).await? {
                return Ok(report);
            }
        }
        report.complete = true;
        if report.batches > 0 {
            let cutoff = Timestamp::now()
                .checked_sub(
                    jiff::SignedDuration::try_from(self.settings.retention).unwrap_or_default(),
                )
                .unwrap_or(Timestamp::MIN);
            let (sessions, transcripts) = self
                .store
                .call(move |s| s.purge_synced_before(cutoff))
                .await?;
            if sessions + transcripts > 0 {
                info!(sessions, transcripts, "deleted synced rows past retention");
            }
        }
        Ok(report)
    }

    /// Sends one batch until it is accepted or parked. Returns false if
    /// cancelled or out of attempts first (the batch stays pending and is
    /// resent later under the same key).
    async fn send_until_settled(
        &self,
        batch: &Batch,
        cancel: &CancellationToken,
        report: &mut DrainReport,
    ) -> Result<bool, SyncError> {
        let body = Document::new(&self.settings.kiosk_id, batch).to_gzip();
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(self.settings.backoff_min)
            .with_max_delay(self.settings.backoff_max)
            .with_jitter()
            .without_max_times()
            .build();
        let id = batch.id;
        let mut failures = 0;
        loop {
            let outcome = tokio::select! {
                _ = cancel.cancelled() => return Ok(false),
                o = self.uploader.send(id, body.clone()) => o,
            };
            match outcome {
                Outcome::Accepted => {
                    counter!("kiosk_sync_attempts_total", "result" => "accepted").increment(1);
                    self.store
                        .call(move |s| s.mark_synced(id, Timestamp::now()))
                        .await?;
                    report.batches += 1;
                    report.sessions += batch.sessions.len() as u64;
                    report.transcripts += batch.transcripts.len() as u64;
                    info!(
                        batch = %id,
                        sessions = batch.sessions.len(),
                        transcripts = batch.transcripts.len(),
                        "batch accepted upstream"
                    );
                    self.status.send_modify(|s| {
                        s.last_success = Some(Timestamp::now());
                        s.retrying = false;
                        s.batches_accepted += 1;
                    });
                    return Ok(true);
                }
                Outcome::Park { reason } => {
                    counter!("kiosk_sync_attempts_total", "result" => "parked").increment(1);
                    warn!(batch = %id, %reason, "upstream refused the batch; parked until settings change or a retry is asked for (then its rows go in a new batch)");
                    let fingerprint = self.settings.fingerprint();
                    let why = reason.clone();
                    self.store
                        .call(move |s| s.park(id, &why, &fingerprint))
                        .await?;
                    report.parked += 1;
                    self.note_error(format!("batch {id} parked: {reason}"));
                    return Ok(true);
                }
                Outcome::Retry { reason, after } => {
                    counter!("kiosk_sync_attempts_total", "result" => "retry").increment(1);
                    report.retries += 1;
                    failures += 1;
                    let planned = backoff.next().unwrap_or(self.settings.backoff_max);
                    // The upstream knows its load best: its Retry-After wins, within reason.
                    let delay =
                        after.map_or(planned, |a| a.clamp(MIN_RETRY_AFTER, MAX_RETRY_AFTER));
                    warn!(batch = %id, %reason, retry_in_ms = delay.as_millis() as u64, "upload failed; will retry");
                    let why = reason.clone();
                    self.store.call(move |s| s.record_attempt(id, &why)).await?;
                    self.note_error(format!("upload failed: {reason}"));
                    if self
                        .settings
                        .max_attempts
                        .is_some_and(|max| failures >= max)
                    {
                        return Ok(false);
                    }
                    self.status.send_modify(|s| s.retrying = true);
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(false),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    fn note_error(&self, message: String) {
        self.status
            .send_modify(|s| s.last_error = Some(ErrorNote::now(message)));
    }
}

#[cfg(test)]
mod tests;
