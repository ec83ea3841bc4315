//! `kiosk-gateway run`: the long-lived service. It opens the store, starts
//! the status server, tells systemd it is ready, keeps the watchdog fed and
//! stops everything through one cancellation token on SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::status::{self, ErrorNote, Identity, Published, StatusState};
use crate::store::{Store, StoreError};
use crate::systemd;

/// How long tasks get to finish after a stop signal; well inside systemd's
/// default stop timeout, so we are never killed mid-write.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr} for the status server: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot install the {0} handler: {1}")]
    Signal(&'static str, #[source] std::io::Error),
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<(), DaemonError> {
    // Two workers are plenty for a kiosk's I/O and keep idle memory low.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(DaemonError::Runtime)?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> Result<(), DaemonError> {
    let started = Instant::now();
    // Before anything records a metric, or the record would be lost.
    status::metrics::init();
    let cancel = CancellationToken::new();
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|e| DaemonError::Signal("SIGTERM", e))?;
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|e| DaemonError::Signal("SIGINT", e))?;

    let (store, report) = Store::open(&config.store.path)?;
    let mut published = Published {
        state: "idle",
        ..Published::default()
    };
    if let Some(aside) = &report.moved_aside {
        let damage = report
            .damage
            .as_deref()
            .unwrap_or("failed its integrity check");
        error!(
            path = %config.store.path.display(),
            moved_to = %aside.display(),
            damage,
            "database was damaged; kept it aside and started a fresh one"
        );
        status::metrics::record_store_recovery();
        published.last_error = Some(ErrorNote::now(format!(
            "database was damaged ({damage}); kept as {} and replaced",
            aside.display()
        )));
        published.store_recovered_from = Some(aside.clone());
    }
    let (_publish, published_rx) = watch::channel(published);

    let listener =
        status::bind(config.status.listen)
            .await
            .map_err(|source| DaemonError::Bind {
                addr: config.status.listen,
                source,
            })?;
    let addr = listener.local_addr().map_err(|source| DaemonError::Bind {
        addr: config.status.listen,
        source,
    })?;
    let state = StatusState::new(
        Identity {
            kiosk_id: config.kiosk.id.to_string(),
            kiosk_name: config.kiosk.name.clone(),
            store_path: config.store.path.clone(),
        },
        published_rx,
    );
    let server = tokio::spawn(status::serve(listener, state, cancel.clone()));

    let status_line = format!("idle; status page http://{addr}/");
    systemd::ready(&status_line);
    info!(
        kiosk_id = %config.kiosk.id,
        status_addr = %addr,
        store = %store.path().display(),
        startup_ms = started.elapsed().as_millis() as u64,
        "kiosk-gateway ready"
    );

    let mut watchdog = systemd::watchdog_interval().map(tokio::time::interval);
    let reason = loop {
        tokio::select! {
            _ = terminate.recv() => break "SIGTERM",
            _ = interrupt.recv() => break "SIGINT",
            _ = async { watchdog.as_mut().expect("guarded").tick().await }, if watchdog.is_some() => {
                systemd::watchdog_ping();
            }
        }
    };

    info!(signal = reason, "stopping");
    systemd::stopping();
    cancel.cancel();
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => warn!(error = %e, "status server ended with an error"),
        Ok(Err(e)) => warn!(error = %e, "status server task failed"),
        Err(_) => warn!("status server did not stop in time"),
    }
    drop(store);
    info!("stopped");
    Ok(())
}
