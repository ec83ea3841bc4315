//! JSON endpoints and probes. `/api/status` is also what the page polls.

use axum::Extension;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::history::{HistoryDoc, history_doc};
use super::verdict::{Parts, Verdict, verdict};
use super::{Access, StatusState, metrics, words};
use crate::audio::AudioMetrics;
use crate::control::{Command as SessionCommand, CurrentSession, LinkView};
use crate::error_text::error_chain;
use crate::health::{Component, ErrorNote};
use crate::liveness::{Part, wedge_requested};
use crate::reachability::CloudCheck;
use crate::selftest::{self, SelfTestReport};
use crate::store::{Backlog, Counts, SessionId, SessionRecord, SessionSummary, Transcript};
use crate::sync::SyncStatus;
use crate::telemetry::LogEvent;

pub async fn healthz(State(state): State<StatusState>) -> &'static str {
    if wedge_requested(Part::Status, state.started) {
        std::future::pending::<()>().await;
    }
    "ok\n"
}

/// 200 when the store is readable and every part of the daemon makes
/// progress; otherwise 503 saying what is wrong.
pub async fn readyz(State(state): State<StatusState>) -> Response {
    let stale = state.stale_parts();
    if !stale.is_empty() {
        let parts: Vec<&str> = stale.iter().map(|p| p.as_str()).collect();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not making progress: {}\n", parts.join(", ")),
        )
            .into_response();
    }
    match state.read(|s| s.counts()).await {
        Some(_) => (StatusCode::OK, "ready\n").into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "store not readable\n").into_response(),
    }
}

/// The whole status document. Field names are a documented contract
/// (README "Status server").
#[derive(Serialize)]
pub struct StatusDoc {
    pub version: &'static str,
    pub kiosk: KioskDoc,
    pub uptime_s: u64,
    pub state: &'static str,
    /// The state as a technician says it ("Assistant speaking").
    pub state_text: &'static str,
    /// Healthy, degraded or down, and why.
    pub health: Verdict,
    /// The zone the page shows times in (`kiosk.time_zone` or the system's).
    pub time_zone: String,
    /// Lines and partial text only for a technician.
    pub session: Option<CurrentSession>,
    pub components: Vec<Component>,
    /// Parts of the daemon that stopped making progress (`audio`,
    /// `session`, `store`, `status`); the watchdog is not fed meanwhile.
    pub stale_parts: Vec<Part>,
    /// Microphone level over the last 100 ms, dBFS.
    pub mic_level_dbfs: Option<f32>,
    /// Daily and agent reachability.
    pub cloud: Vec<CloudCheck>,
    /// The current call's quality, or the last call's.
    pub link: Option<LinkView>,
    /// How the agent's audio has reached the speaker since start.
    pub playout: Option<PlayoutDoc>,
    pub sync: SyncDoc,
    pub store: StoreDoc,
    pub recent_sessions: Vec<SessionSummary>,
    pub last_error: Option<ErrorNote>,
    pub recent_events: Vec<LogEvent>,
    /// The last speaker and microphone self-test since start.
    pub self_test: Option<SelfTestReport>,
    /// Whether this request may see transcripts and act.
    pub technician: bool,
    pub token_configured: bool,
}

/// The playout path's counters (the audio engine's, since start).
#[derive(Serialize)]
pub struct PlayoutDoc {
    pub packets_received: u64,
    /// Arrived after their turn to play.
    pub packets_late: u64,
    /// Lost packets filled in, by FEC or concealment.
    pub packets_concealed: u64,
    /// Of those, rebuilt from the next packet's in-band FEC.
    pub packets_fec_recovered: u64,
    /// Frames inserted in pauses to deepen the jitter buffer.
    pub frames_inserted: u64,
    /// Packets dropped to cut the jitter buffer's delay (pauses after a
    /// wait for late packets, anything after a burst).
    pub frames_removed: u64,
    /// The depth the jitter buffer aims for, and what it last held.
    pub jitter_target_ms: u64,
    pub jitter_delay_ms: u64,
}

impl PlayoutDoc {
    fn from_metrics(m: &AudioMetrics) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        Self {
            packets_received: AudioMetrics::get(&m.packets_received),
            packets_late: AudioMetrics::get(&m.packets_late),
            packets_concealed: AudioMetrics::get(&m.packets_concealed),
            packets_fec_recovered: AudioMetrics::get(&m.packets_fec_recovered),
            frames_inserted: AudioMetrics::get(&m.frames_inserted),
            frames_removed: AudioMetrics::get(&m.frames_removed),
            jitter_target_ms: m.jitter_target_ms.load(Relaxed),
            jitter_delay_ms: m.jitter_delay_ms.load(Relaxed),
        }
    }
}

#[derive(Serialize)]
pub struct KioskDoc {
    pub id: String,
    pub name: String,
}

#[derive(Serialize)]
pub struct SyncDoc {
    #[serde(flatten)]
    pub status: SyncStatus,
    pub backlog: Backlog,
}

#[derive(Serialize)]
pub struct StoreDoc {
    pub path: std::path::PathBuf,
    pub readable: bool,
    pub size_bytes: u64,
    #[serde(flatten)]
    pub counts: Counts,
    pub recovered_from: Option<std::path::PathBuf>,
}

/// Recent sessions shown on the page.
const RECENT_SESSIONS: u32 = 10;

pub async fn status_doc(state: &StatusState, access: Access) -> StatusDoc {
    let read = state
        .read(|s| {
            Ok((
                s.counts()?,
                s.backlog()?,
                s.recent_sessions(RECENT_SESSIONS)?,
            ))
        })
        .await;
    let published = state.published.borrow().clone();
    let technician = access == Access::Technician;
    let session = published.session.map(|mut s| {
        if !technician {
            s.lines.clear();
            s.partial = None;
        }
        s
    });
    let (counts, backlog, recent_sessions) = match read {
        Some((c, b, r)) => (Some(c), b, r),
        None => (None, Backlog::default(), Vec::new()),
    };
    let sync_status = state
        .sync
        .as_ref()
        .map(|s| s.status.borrow().clone())
        .unwrap_or_default();
    let mut doc = StatusDoc {
        version: env!("CARGO_PKG_VERSION"),
        kiosk: KioskDoc {
            id: state.identity.kiosk_id.clone(),
            name: state.identity.kiosk_name.clone(),
        },
        uptime_s: state.started.elapsed().as_secs(),
        state: published.state,
        state_text: words::state(published.state),
        health: Verdict::default(),
        time_zone: state.clock.zone_name().to_string(),
        session,
        components: state
            .audio_components()
            .into_iter()
            .chain(published.components)
            .collect(),
        stale_parts: state.stale_parts(),
        mic_level_dbfs: state.audio.as_ref().map(|a| a.metrics.level().0),
        cloud: state.cloud_checks(),
        link: published.link,
        playout: state
            .audio
            .as_ref()
            .map(|a| PlayoutDoc::from_metrics(&a.metrics)),
        sync: SyncDoc {
            status: sync_status,
            backlog,
        },
        store: StoreDoc {
            path: state.identity.store_path.clone(),
            readable: counts.is_some(),
            size_bytes: state.db_bytes(),
            counts: counts.unwrap_or_default(),
            recovered_from: published.store_recovered_from,
        },
        recent_sessions,
        last_error: published.last_error,
        recent_events: state.recent.snapshot(),
        self_test: state.last_self_test(),
        technician,
        token_configured: state.auth.token_configured(),
    };
    doc.health = verdict(&Parts {
        components: &doc.components,
        cloud: &doc.cloud,
        stale_parts: &doc.stale_parts,
        store_readable: doc.store.readable,
        parked_batches: doc.sync.backlog.parked.len(),
        self_test: doc.self_test.as_ref(),
    });
    doc
}

pub async fn status(
    State(state): State<StatusState>,
    Extension(access): Extension<Access>,
) -> Json<StatusDoc> {
    Json(status_doc(&state, access).await)
}

/// `GET /api/history`: the last hour at 10 s and sessions per hour over
/// the last day.
pub async fn history(State(state): State<StatusState>) -> Json<HistoryDoc> {
    Json(history_doc(&state, Timestamp::now()).await)
}

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<u32>,
}

pub async fn sessions(State(state): State<StatusState>, Query(q): Query<ListQuery>) -> Response {
    let limit = q.limit.unwrap_or(50).min(1000);
    match state.read(move |s| s.recent_sessions(limit)).await {
        Some(list) => Json(list).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "store not readable\n").into_response(),
    }
}

#[derive(Serialize)]
pub struct SessionDoc {
    #[serde(flatten)]
    pub session: SessionRecord,
    pub transcripts: Vec<Transcript>,
}

pub async fn session_doc(state: &StatusState, id: &str) -> Result<SessionDoc, Response> {
    let id: SessionId = id
        .parse()
        .map_err(|_| (StatusCode::NOT_FOUND, "no such session\n").into_response())?;
    let found = state
        .read(move |s| Ok((s.session(id)?, s.transcripts(Some(id))?)))
        .await
        .ok_or_else(|| (StatusCode::SERVICE_UNAVAILABLE, "store not readable\n").into_response())?;
    match found {
        (Some(session), transcripts) => Ok(SessionDoc {
            session,
            transcripts,
        }),
        (None, _) => Err((StatusCode::NOT_FOUND, "no such session\n").into_response()),
    }
}

pub async fn session(State(state): State<StatusState>, Path(id): Path<String>) -> Response {
    match session_doc(&state, &id).await {
        Ok(doc) => Json(doc).into_response(),
        Err(r) => r,
    }
}

#[derive(Deserialize)]
pub struct SyncQuery {
    #[serde(default)]
    retry_parked: bool,
}

#[derive(Serialize)]
struct Accepted {
    accepted: bool,
    at: Timestamp,
}

pub async fn sync_now(State(state): State<StatusState>, Query(q): Query<SyncQuery>) -> Response {
    let Some(sync) = &state.sync else {
        return (StatusCode::CONFLICT, "sync is off (no sync.url)\n").into_response();
    };
    if q.retry_parked {
        sync.trigger.retry_parked();
    } else {
        sync.trigger.sync_now();
    }
    (
        StatusCode::ACCEPTED,
        Json(Accepted {
            accepted: true,
            at: Timestamp::now(),
        }),
    )
        .into_response()
}

pub async fn metrics_text(State(state): State<StatusState>) -> Response {
    let read = state.read(|s| Ok((s.counts()?, s.backlog()?))).await;
    if let Some(audio) = state.audio.as_ref().map(|a| &a.metrics) {
        metrics::record_audio(audio);
    }
    if let Some(link) = &state.published.borrow().link {
        metrics::record_link(link);
    }
    let body = metrics::render(
        read.as_ref().map(|(c, _)| *c),
        read.as_ref().map(|(_, b)| b),
        state.db_bytes(),
        state.started.elapsed().as_secs_f64(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

pub async fn session_start(State(state): State<StatusState>) -> Response {
    session_command(&state, SessionCommand::Start).await
}

pub async fn session_stop(State(state): State<StatusState>) -> Response {
    session_command(&state, SessionCommand::Stop).await
}

async fn session_command(state: &StatusState, command: SessionCommand) -> Response {
    let Some(commands) = &state.session_commands else {
        return (StatusCode::CONFLICT, "no session control here\n").into_response();
    };
    match commands.send(command).await {
        Ok(()) => (
            StatusCode::ACCEPTED,
            Json(Accepted {
                accepted: true,
                at: Timestamp::now(),
            }),
        )
            .into_response(),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the session loop has stopped\n",
        )
            .into_response(),
    }
}

/// `POST /api/selftest`: plays the test sweep and records the microphone
/// through the running audio engine, then answers with the verdict (also
/// kept for `/api/status`). Refused while a visitor session is live or
/// another self-test runs: the test tone would be in the call, and the
/// engine plays one signal at a time.
pub async fn self_test(State(state): State<StatusState>) -> Response {
    let Some(engine) = state.sound_check.clone() else {
        return (
            StatusCode::CONFLICT,
            "No audio engine here to test the speaker and microphone with.\n",
        )
            .into_response();
    };
    let busy = || {
        let published = state.published.borrow();
        published.session.is_some() || published.state != "idle"
    };
    if busy() {
        return (
            StatusCode::CONFLICT,
            "A visitor session is live; run the self-test when the kiosk is idle.\n",
        )
            .into_response();
    }
    let Ok(_running) = state.self_test_running.try_lock() else {
        return (StatusCode::CONFLICT, "A self-test is already running.\n").into_response();
    };
    tracing::info!("self-test started");
    let outcome = tokio::task::spawn_blocking(move || selftest::run(&engine)).await;
    match outcome {
        Ok(Ok(report)) => {
            tracing::info!(passed = report.passed, summary = %report.summary, "self-test finished");
            *state.self_test.lock().unwrap_or_else(|p| p.into_inner()) = Some(report.clone());
            Json(report).into_response()
        }
        Ok(Err(e)) => {
            let message = error_chain(&e);
            tracing::warn!(error = %message, "self-test could not run");
            (StatusCode::SERVICE_UNAVAILABLE, format!("{message}\n")).into_response()
        }
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "the self-test stopped unexpectedly\n",
        )
            .into_response(),
    }
}
