//! The technicians' window into the box: the status page, a JSON API,
//! health probes and Prometheus metrics. It reads snapshots (the store
//! through its own read-only handle, state published by the rest of the
//! gateway) and never touches devices.

mod api;
pub mod auth;
pub mod metrics;
mod page;
mod server;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, header};
use axum::routing::{get, post};
use jiff::Timestamp;
use serde::Serialize;
use tokio::sync::watch;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;

use crate::audio::AudioMetrics;
pub use crate::health::ErrorNote;
use crate::session::orchestrator::Command as SessionCommand;
use crate::store::{Store, StoreError};
use crate::sync::{SyncStatus, SyncTrigger};
use crate::telemetry::RecentEvents;
pub use auth::Auth;
pub use server::{bind, serve};

/// What the rest of the gateway publishes for the status server.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// The session state's name (`idle`, `listening`, ...).
    pub state: &'static str,
    pub session: Option<CurrentSession>,
    /// Health of the parts a technician can act on (devices, link, cloud).
    pub components: Vec<Component>,
    pub last_error: Option<ErrorNote>,
    /// Where a damaged database was moved at start-up.
    pub store_recovered_from: Option<PathBuf>,
}

/// The session in progress; its lines are shown to technicians only.
#[derive(Debug, Clone, Serialize)]
pub struct CurrentSession {
    pub id: String,
    pub started_at: Timestamp,
    pub lines: Vec<Line>,
    /// The visitor's words as recognised so far, not yet final.
    pub partial: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub role: &'static str,
    pub text: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Component {
    pub name: &'static str,
    pub health: Health,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Ok,
    Degraded,
    Down,
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Health::Ok => "ok",
            Health::Degraded => "degraded",
            Health::Down => "down",
        })
    }
}

/// Fixed facts about this gateway, for the status document.
#[derive(Debug, Clone)]
pub struct Identity {
    pub kiosk_id: String,
    pub kiosk_name: String,
    pub store_path: PathBuf,
}

/// The sync worker as the status server sees it.
#[derive(Clone)]
pub struct SyncView {
    pub status: watch::Receiver<SyncStatus>,
    pub trigger: SyncTrigger,
}

#[derive(Clone)]
pub struct StatusState {
    identity: Arc<Identity>,
    started: Instant,
    published: watch::Receiver<Published>,
    sync: Option<SyncView>,
    auth: Auth,
    recent: RecentEvents,
    session_commands: Option<tokio::sync::mpsc::Sender<SessionCommand>>,
    audio: Option<Arc<AudioMetrics>>,
    /// Read-only; opened lazily so a missing database shows as not ready
    /// instead of keeping the server from starting.
    reader: Arc<Mutex<Option<Store>>>,
}

impl StatusState {
    pub fn new(
        identity: Identity,
        published: watch::Receiver<Published>,
        sync: Option<SyncView>,
        auth: Auth,
        recent: RecentEvents,
    ) -> Self {
        metrics::init();
        Self {
            identity: Arc::new(identity),
            started: Instant::now(),
            published,
            sync,
            auth,
            recent,
            session_commands: None,
            audio: None,
            reader: Arc::new(Mutex::new(None)),
        }
    }

    /// Shows the audio engine's counters, device health and level.
    pub fn with_audio_metrics(mut self, audio: Arc<AudioMetrics>) -> Self {
        self.audio = Some(audio);
        self
    }

    /// Devices as components, from the audio engine's counters.
    fn audio_components(&self) -> Vec<Component> {
        let Some(a) = &self.audio else {
            return Vec::new();
        };
        let device = |name, open: bool| Component {
            name,
            health: if open { Health::Ok } else { Health::Down },
            detail: if open {
                "open".to_string()
            } else {
                format!(
                    "not available; retrying ({} errors, {} reopens so far)",
                    AudioMetrics::get(&a.device_errors),
                    AudioMetrics::get(&a.device_reopens)
                )
            },
        };
        use std::sync::atomic::Ordering::Relaxed;
        vec![
            device("microphone", a.input_open.load(Relaxed)),
            device("speaker", a.output_open.load(Relaxed)),
        ]
    }

    /// Lets technicians start and stop sessions (`POST /api/session/...`).
    pub fn with_session_commands(
        mut self,
        commands: tokio::sync::mpsc::Sender<SessionCommand>,
    ) -> Self {
        self.session_commands = Some(commands);
        self
    }

    /// Runs a read on a blocking thread; `None` if the store cannot be read.
    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<R, StoreError> + Send + 'static,
    ) -> Option<R> {
        let reader = self.reader.clone();
        let path = self.identity.store_path.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = reader.lock().unwrap_or_else(|p| p.into_inner());
            if guard.is_none() {
                *guard = Store::open_read_only(&path).ok();
            }
            match f(guard.as_ref()?) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::warn!(error = %e, "status: cannot read the store");
                    *guard = None;
                    None
                }
            }
        })
        .await
        .ok()
        .flatten()
    }

    fn db_bytes(&self) -> u64 {
        let main = self.identity.store_path.as_os_str().to_owned();
        let mut wal = main.clone();
        wal.push("-wal");
        [PathBuf::from(main), PathBuf::from(wal)]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }
}

/// No request here takes long; a stuck one is cut off.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Request bodies are tiny here (a login form); anything larger is refused.
const MAX_BODY: usize = 16 * 1024;

pub fn router(state: StatusState) -> Router {
    let technician = Router::new()
        .route("/api/sessions/{id}", get(api::session))
        .route("/sessions/{id}", get(page::session))
        .route("/api/sync", post(api::sync_now))
        .route("/api/session/start", post(api::session_start))
        .route("/api/session/stop", post(api::session_stop))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_technician,
        ));
    let protected = Router::new()
        .route("/", get(page::status))
        .route("/api/status", get(api::status))
        .route("/api/sessions", get(api::sessions))
        .route("/metrics", get(api::metrics_text))
        .merge(technician)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_login,
        ));
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/logout", post(auth::logout))
        .merge(protected)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        ))
        .layer(axum::middleware::from_fn(metrics::count_requests))
        .with_state(state)
}
