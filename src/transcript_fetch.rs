//! Transcripts of SIP sessions, fetched from Daily after the session.
//!
//! A SIP caller gets no Daily app-messages, so no live transcript: the
//! session has Daily transcribe the room instead, and when it ends queues a
//! [`FetchJob`]. This worker takes due jobs, finds the room's transcript,
//! downloads its WebVTT and stores each cue as a transcript line of the
//! session (the kiosk's display name → `user`, anyone else → `bot`,
//! `spoken_at` = session start + cue start). Sync then uploads the lines
//! like any other unsynced ones.
//!
//! API for the session code:
//! - when the SIP call is answered: [`DailyClient::start_transcription`];
//!   before deleting the room: [`DailyClient::stop_transcription`];
//! - after the session has ended: [`enqueue`] with the room's id (from
//!   `Room::id`: transcripts are listed by id, and the room is gone by then).
//!
//! The daemon runs [`TranscriptFetcher::run`] when `daily.transcription`
//! is on. Jobs live in SQLite, so they survive a restart or a kill; the
//! lines and the job's removal are one transaction, so a job is stored
//! exactly once. A transcript that is not ready yet (none listed, still in
//! progress, no link yet) or a failing Daily is retried with doubling
//! delays until the job is [`FetchSettings::max_age`] old, then parked;
//! a transcript that can never be used (a failed transcription, a file that
//! is not WebVTT) is parked at once. Parked jobs stay in the database with
//! their reason, and the reason is logged.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use reqwest::StatusCode;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::daily::webvtt::{self, WebVtt};
use crate::daily::{DailyClient, DailyError, TranscriptInfo, TranscriptStatus};
use crate::error_text::error_chain;
pub use crate::store::{FetchJob, FetchRecord, FetchState};
use crate::store::{NewTranscript, Role, StoreError, StoreHandle};
use crate::sync::SyncTrigger;

/// Queues the transcript fetch of an ended session. Queuing the same
/// session twice is harmless.
pub async fn enqueue(store: &StoreHandle, job: FetchJob) -> Result<(), StoreError> {
    let session = job.session_id;
    let new = store
        .call(move |s| s.enqueue_transcript_fetch(&job))
        .await?;
    if new {
        info!(%session, "transcript fetch queued");
    }
    Ok(())
}

/// How the worker paces itself.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    /// How often due jobs are looked for.
    pub poll_interval: Duration,
    /// Wait after the first failed attempt; doubles per attempt.
    pub backoff_min: Duration,
    /// Cap on that wait.
    pub backoff_max: Duration,
    /// A job not stored this long after it was queued is parked.
    pub max_age: Duration,
    /// Largest WebVTT file downloaded.
    pub max_file_bytes: usize,
}

impl Default for FetchSettings {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(5),
            // Daily writes the final file when transcription stops: the
            // first look, right after the session, is often too early.
            backoff_min: Duration::from_secs(10),
            backoff_max: Duration::from_secs(300),
            max_age: Duration::from_secs(3600),
            max_file_bytes: webvtt::MAX_BYTES,
        }
    }
}

/// Jobs settled by one pass over the due ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Jobs whose lines were stored.
    pub stored: u32,
    /// Lines stored.
    pub lines: u32,
    /// Jobs to be tried again later.
    pub deferred: u32,
    /// Jobs given up on.
    pub parked: u32,
}

/// What one attempt at a job came to.
enum Outcome {
    /// The transcript's cues, to be stored.
    Ready(WebVtt),
    /// Not there yet, or Daily failed in a way worth another try.
    Retry(String),
    /// It never will be usable.
    Park(String),
}

/// Fetches queued transcripts from Daily into the store.
pub struct TranscriptFetcher {
    daily: DailyClient,
    store: StoreHandle,
    settings: FetchSettings,
    sync: Option<SyncTrigger>,
}

impl TranscriptFetcher {
    /// A worker taking jobs from `store` and transcripts from `daily`.
    pub fn new(daily: DailyClient, store: StoreHandle, settings: FetchSettings) -> Self {
        Self {
            daily,
            store,
            settings,
            sync: None,
        }
    }

    /// Wakes sync after lines are stored, so they go up without waiting
    /// for its next interval.
    pub fn with_sync_trigger(mut self, trigger: SyncTrigger) -> Self {
        self.sync = Some(trigger);
        self
    }

    /// Works through due jobs every `poll_interval` until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let pass = tokio::select! {
                _ = cancel.cancelled() => return,
                pass = self.run_due() => pass,
            };
            if let Err(e) = pass {
                warn!(error = %error_chain(&e), "transcript fetch stopped by a store error");
            }
        }
    }

    /// One pass: every job due now is tried once.
    pub async fn run_due(&self) -> Result<PassReport, StoreError> {
        let now = Timestamp::now();
        let due = self
            .store
            .call(move |s| s.due_transcript_fetches(now, 20))
            .await?;
        let mut report = PassReport::default();
        for record in due {
            let session = record.job.session_id;
            match self.attempt(&record.job).await {
                Outcome::Ready(vtt) => {
                    let lines = lines_of(&record.job, &vtt, Timestamp::now());
                    let count = lines.len();
                    let stored = self
                        .store
                        .call(move |s| s.complete_transcript_fetch(session, &lines))
                        .await?;
                    if stored.is_some() {
                        report.stored += 1;
                        report.lines += count as u32;
                        info!(
                            %session,
                            room = %record.job.room_name,
                            lines = count,
                            skipped_blocks = vtt.skipped,
                            "transcript fetched from Daily and stored"
                        );
                        if let Some(sync) = &self.sync {
                            sync.sync_now();
                        }
                    }
                }
                Outcome::Retry(reason) => {
                    let age = now.duration_since(record.enqueued_at);
                    if age
                        >= SignedDuration::try_from(self.settings.max_age)
                            .unwrap_or(SignedDuration::MAX)
                    {
                        let why = format!(
                            "gave up after {} attempts over {}: {reason}",
                            record.attempts + 1,
                            humantime::format_duration(self.settings.max_age)
                        );
                        self.park(&record, why).await?;
                        report.parked += 1;
                    } else {
                        let delay = self.delay(record.attempts);
                        let next = now + SignedDuration::try_from(delay).unwrap_or_default();
                        debug!(%session, %reason, retry_in_s = delay.as_secs(), "transcript not fetched yet");
                        self.store
                            .call(move |s| s.defer_transcript_fetch(session, next, &reason))
                            .await?;
                        report.deferred += 1;
                    }
                }
                Outcome::Park(reason) => {
                    self.park(&record, reason).await?;
                    report.parked += 1;
                }
            }
        }
        Ok(report)
    }

    async fn park(&self, record: &FetchRecord, reason: String) -> Result<(), StoreError> {
        let session = record.job.session_id;
        warn!(
            %session,
            room = %record.job.room_name,
            attempts = record.attempts + 1,
            %reason,
            "transcript fetch parked; the session keeps no transcript from Daily"
        );
        self.store
            .call(move |s| s.park_transcript_fetch(session, &reason))
            .await
    }

    /// `backoff_min · 2^attempts`, capped at `backoff_max`.
    fn delay(&self, attempts: u32) -> Duration {
        self.settings
            .backoff_min
            .saturating_mul(2u32.saturating_pow(attempts))
            .min(self.settings.backoff_max)
    }

    async fn attempt(&self, job: &FetchJob) -> Outcome {
        let transcripts = match self.daily.list_transcripts(&job.room_id).await {
            Ok(t) => t,
            Err(e) => return daily_failure(&e),
        };
        let chosen = match choose(&transcripts) {
            Ok(t) => t,
            Err(outcome) => return outcome,
        };
        let link = match self.daily.transcript_link(&chosen.id).await {
            Ok(link) => link,
            // The file may not be written yet.
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => {
                return Outcome::Retry(format!("transcript {} has no file yet", chosen.id));
            }
            Err(e) => return daily_failure(&e),
        };
        let bytes = match self
            .daily
            .download_transcript(&link, self.settings.max_file_bytes)
            .await
        {
            Ok(b) => b,
            Err(e) => return daily_failure(&e),
        };
        match webvtt::parse(&bytes) {
            Ok(vtt) => Outcome::Ready(vtt),
            Err(e) => Outcome::Park(format!("transcript {} is unusable: {e}", chosen.id)),
        }
    }
}

/// The room's transcript to fetch: the newest finished one, once none is
/// still running.
fn choose(transcripts: &[TranscriptInfo]) -> Result<&TranscriptInfo, Outcome> {
    if transcripts.is_empty() {
        return Err(Outcome::Retry(
            "Daily lists no transcript for the room yet".into(),
        ));
    }
    if let Some(running) = transcripts
        .iter()
        .find(|t| t.status == TranscriptStatus::InProgress)
    {
        return Err(Outcome::Retry(format!(
            "transcript {} is still in progress",
            running.id
        )));
    }
    let finished: Vec<&TranscriptInfo> = transcripts
        .iter()
        .filter(|t| t.status == TranscriptStatus::Finished)
        .collect();
    match finished.as_slice() {
        [] => Err(Outcome::Park(format!(
            "no usable transcript for the room (statuses: {})",
            transcripts
                .iter()
                .map(|t| format!("{:?}", t.status))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
        [first, ..] if first.vtt_available == Some(false) => Err(Outcome::Park(format!(
            "transcript {} was not stored as WebVTT (is transcription storage on?)",
            first.id
        ))),
        [first, ..] => Ok(first),
    }
}

fn daily_failure(e: &DailyError) -> Outcome {
    let status = e.status();
    let why = error_chain(e);
    if e.is_retryable()
        || status == Some(StatusCode::NOT_FOUND)
        || status == Some(StatusCode::FORBIDDEN)
    {
        Outcome::Retry(why)
    } else {
        Outcome::Park(why)
    }
}

/// The transcript lines of a job's cues.
fn lines_of(job: &FetchJob, vtt: &WebVtt, received_at: Timestamp) -> Vec<NewTranscript> {
    let kiosk = job.display_name.trim();
    vtt.cues
        .iter()
        .map(|cue| {
            let role = match &cue.speaker {
                Some(name) if name.trim().eq_ignore_ascii_case(kiosk) => Role::User,
                _ => Role::Bot,
            };
            let offset = SignedDuration::try_from(cue.start).unwrap_or_default();
            NewTranscript {
                session_id: job.session_id,
                role,
                text: cue.text.clone(),
                is_final: true,
                confidence: None,
                spoken_at: job.started_at.checked_add(offset).unwrap_or(job.started_at),
                received_at,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SessionId;

    fn job() -> FetchJob {
        FetchJob {
            session_id: SessionId::new(),
            room_name: "kiosk-a-1".into(),
            room_id: "rid".into(),
            display_name: "Lobby Kiosk".into(),
            started_at: "2026-01-01T10:00:00Z".parse().unwrap(),
        }
    }

    #[test]
    fn speakers_map_to_roles_and_times_to_the_session() {
        let vtt = webvtt::parse(
            b"WEBVTT\n\n00:01.500 --> 00:02.000\n<v lobby kiosk >hello\n\n\
              00:03.000 --> 00:04.000\nAssistant: hi\n\n00:05.000 --> 00:06.000\nno speaker\n",
        )
        .unwrap();
        let lines = lines_of(&job(), &vtt, Timestamp::now());
        let roles: Vec<Role> = lines.iter().map(|l| l.role).collect();
        assert_eq!(roles, [Role::User, Role::Bot, Role::Bot]);
        assert_eq!(
            lines[0].spoken_at,
            "2026-01-01T10:00:01.500Z".parse::<Timestamp>().unwrap()
        );
    }

    fn info(id: &str, status: &str) -> TranscriptInfo {
        serde_json::from_value(serde_json::json!({
            "transcriptId": id, "roomId": "rid", "status": status
        }))
        .unwrap()
    }

    #[test]
    fn waits_while_a_transcript_runs_and_parks_failed_ones() {
        assert!(matches!(choose(&[]), Err(Outcome::Retry(_))));
        assert!(matches!(
            choose(&[info("a", "t_finished"), info("b", "t_in_progress")]),
            Err(Outcome::Retry(_))
        ));
        assert!(matches!(
            choose(&[info("a", "t_error")]),
            Err(Outcome::Park(_))
        ));
        let list = [info("new", "t_finished"), info("old", "t_finished")];
        assert_eq!(choose(&list).ok().unwrap().id.as_str(), "new");
    }
}
