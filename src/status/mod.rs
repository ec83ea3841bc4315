//! The technicians' window into the box: health probes, a JSON status
//! document and Prometheus metrics, served by axum. It reads snapshots
//! (the store through its own read-only handle, the published state) and
//! never touches devices.

pub mod metrics;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use crate::health::ErrorNote;
use crate::store::{Counts, Store};

/// What the rest of the gateway publishes for the status server.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// The session state's name (`idle`, `listening`, ...).
    pub state: &'static str,
    pub last_error: Option<ErrorNote>,
    /// Where a damaged database was moved at start-up.
    pub store_recovered_from: Option<PathBuf>,
}

/// Fixed facts about this gateway, for the status document.
#[derive(Debug, Clone)]
pub struct Identity {
    pub kiosk_id: String,
    pub kiosk_name: String,
    pub store_path: PathBuf,
}

#[derive(Clone)]
pub struct StatusState {
    identity: Arc<Identity>,
    started: Instant,
    published: watch::Receiver<Published>,
    /// Read-only; opened lazily so a missing database shows as not ready
    /// instead of keeping the server from starting.
    reader: Arc<Mutex<Option<Store>>>,
}

impl StatusState {
    pub fn new(identity: Identity, published: watch::Receiver<Published>) -> Self {
        metrics::init();
        Self {
            identity: Arc::new(identity),
            started: Instant::now(),
            published,
            reader: Arc::new(Mutex::new(None)),
        }
    }

    /// Row counts, read on a blocking thread; `None` if the store cannot be read.
    async fn counts(&self) -> Option<Counts> {
        let reader = self.reader.clone();
        let path = self.identity.store_path.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = reader.lock().unwrap_or_else(|p| p.into_inner());
            if guard.is_none() {
                *guard = Store::open_read_only(&path).ok();
            }
            let counts = guard.as_ref()?.counts();
            match counts {
                Ok(c) => Some(c),
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

pub fn router(state: StatusState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/status", get(api_status))
        .route("/metrics", get(metrics_text))
        .layer(axum::middleware::from_fn(metrics::count_requests))
        .with_state(state)
}

/// Binds the status address; port 0 picks a free port.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, std::io::Error> {
    TcpListener::bind(addr).await
}

/// Serves until `cancel` fires, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: StatusState,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<StatusState>) -> Response {
    match state.counts().await {
        Some(_) => (StatusCode::OK, "ready\n").into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "store not readable\n").into_response(),
    }
}

#[derive(Serialize)]
struct StatusDoc {
    version: &'static str,
    kiosk: KioskDoc,
    uptime_s: u64,
    state: &'static str,
    store: StoreDoc,
    last_error: Option<ErrorNote>,
}

#[derive(Serialize)]
struct KioskDoc {
    id: String,
    name: String,
}

#[derive(Serialize)]
struct StoreDoc {
    path: PathBuf,
    readable: bool,
    size_bytes: u64,
    #[serde(flatten)]
    counts: Counts,
    recovered_from: Option<PathBuf>,
}

async fn api_status(State(state): State<StatusState>) -> Json<StatusDoc> {
    let counts = state.counts().await;
    let published = state.published.borrow().clone();
    Json(StatusDoc {
        version: env!("CARGO_PKG_VERSION"),
        kiosk: KioskDoc {
            id: state.identity.kiosk_id.clone(),
            name: state.identity.kiosk_name.clone(),
        },
        uptime_s: state.started.elapsed().as_secs(),
        state: published.state,
        store: StoreDoc {
            path: state.identity.store_path.clone(),
            readable: counts.is_some(),
            size_bytes: state.db_bytes(),
            counts: counts.unwrap_or_default(),
            recovered_from: published.store_recovered_from,
        },
        last_error: published.last_error,
    })
}

async fn metrics_text(State(state): State<StatusState>) -> Response {
    let counts = state.counts().await;
    let body = metrics::render(
        counts,
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
