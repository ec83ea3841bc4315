//! `kiosk-gateway run`: the long-lived service. It opens the store, starts
//! the status server and the sync worker, tells systemd it is ready, feeds
//! the watchdog while every part makes progress (`watchdog`) and stops
//! everything through one cancellation token on SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::agent_settings::ProvisionMode;
use crate::assets;
use crate::audio::{AudioEngine, Prompt};
use crate::config::Config;
use crate::control::Published;
use crate::daily::DailyClient;
use crate::error_text::error_chain;
use crate::liveness::Liveness;
use crate::reachability::Prober;
use crate::runtime::{self, RuntimeError};
use crate::session::orchestrator::{Orchestrator, SessionSettings};
use crate::session::provision::{Provisioner, SipRoomSettings};
use crate::status::{self, Auth, Clock, ErrorNote, Identity, StatusState, SyncView};
use crate::store::{Store, StoreError, StoreHandle};
use crate::sync::{SyncSettings, SyncWorker};
use crate::systemd;
use crate::telemetry::RecentEvents;
use crate::transcript_fetch::{FetchSettings, TranscriptFetcher};
use crate::watchdog::{self, Watchdog};

/// How long tasks get to finish after a stop signal; well inside systemd's
/// stop timeout, so we are never killed mid-write.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(4);

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The database cannot be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The status server's address is taken or not allowed.
    #[error("cannot listen on {addr} for the status server")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The async runtime cannot start.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A signal handler cannot be installed.
    #[error("cannot install the {0} handler")]
    Signal(&'static str, #[source] std::io::Error),
    /// The audio engine cannot start.
    #[error(transparent)]
    Audio(#[from] crate::audio::AudioError),
    /// The Daily client cannot be built.
    #[error(transparent)]
    Daily(#[from] crate::daily::DailyError),
    /// Provisioning is not configured for the chosen mode.
    #[error(transparent)]
    Provision(#[from] crate::session::provision::ProvisionError),
    /// The configured failure prompt is unusable.
    #[error("cannot read the failure prompt {}", path.display())]
    Prompt {
        /// The WAV file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: crate::audio::AudioError,
    },
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(config: Config, recent: RecentEvents) -> Result<(), DaemonError> {
    runtime::build()?.block_on(serve(config, recent))
}

async fn serve(config: Config, recent: RecentEvents) -> Result<(), DaemonError> {
    let started = Instant::now();
    // Before anything records a metric, or the record would be lost.
    status::metrics::init();
    let cancel = CancellationToken::new();
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|e| DaemonError::Signal("SIGTERM", e))?;
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|e| DaemonError::Signal("SIGINT", e))?;

    let (store, report) = Store::open(&config.store.path)?;
    let store_path = store.path().to_path_buf();
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
    let (store, writer) = StoreHandle::spawn(store);
    let (publish, published_rx) = watch::channel(published);
    let mut tasks = JoinSet::new();

    let sync = SyncSettings::from_config(&config).map(|settings| {
        let worker = SyncWorker::new(settings, store.clone());
        let view = SyncView {
            status: worker.status(),
            trigger: worker.trigger(),
        };
        tasks.spawn(worker.run(cancel.clone()));
        view
    });
    if sync.is_none() {
        info!("sync is off (no sync.url)");
    }

    // Devices that are missing now are retried by the engine: the kiosk
    // comes up, and says so on the status page, even without a microphone.
    let engine = AudioEngine::start(&config.audio, &config.vad)?;
    let audio_metrics = engine.metrics().clone();
    let sound_check = engine.sound_check();
    let audio_metrics_for_watchdog = audio_metrics.clone();
    let daily = config
        .daily_settings()
        .map(|d| DailyClient::new(&d))
        .transpose()?;
    // SIP mode's transcripts: fetched from Daily after each session.
    // (The config loader refuses `daily.transcription` without an API key.)
    if let Some(client) = daily.as_ref().filter(|_| config.daily.transcription) {
        let mut fetcher =
            TranscriptFetcher::new(client.clone(), store.clone(), FetchSettings::default());
        if let Some(view) = &sync {
            fetcher = fetcher.with_sync_trigger(view.trigger.clone());
        }
        tasks.spawn(fetcher.run(cancel.clone()));
    }
    let provisioner = Provisioner::new(
        config.session.provision,
        daily.clone(),
        config.agent_settings(),
    )?
    .with_sip_room(SipRoomSettings {
        display_name: config.daily.sip_display_name.clone(),
        transcription: config.daily.transcription,
    });
    let prober = Prober::new(
        daily.filter(|_| {
            matches!(
                config.session.provision,
                ProvisionMode::Daily | ProvisionMode::DailySip
            )
        }),
        config.agent_probe_url(),
        provisioner.http(),
        config.status.probe_interval,
    );
    let cloud_checks = prober.checks();
    let probe_trigger = prober.trigger();
    tasks.spawn(prober.run(cancel.clone()));
    let (orchestrator, session_commands) = Orchestrator::new(
        session_settings(&config)?,
        provisioner,
        store.clone(),
        engine,
        publish,
        sync.as_ref().map(|s| s.trigger.clone()),
    );
    let ping_every = systemd::watchdog_interval();
    let liveness = Liveness::new(watchdog::stale_after(ping_every));
    let orchestrator = orchestrator
        .with_probe_trigger(probe_trigger)
        .with_liveness(liveness.clone());
    let session_cancel = cancel.clone();
    tasks.spawn(async move {
        orchestrator.run(session_cancel).await;
    });

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
            store_path: store_path.clone(),
        },
        published_rx,
        sync,
        Auth::new(config.status.token.clone()),
        recent,
    )
    .with_hosts(&status::HostSettings::from_config(&config.status))
    .with_clock(
        config
            .kiosk
            .time_zone
            .clone()
            .map_or_else(Clock::system, Clock::new),
    )
    .with_session_commands(session_commands)
    .with_audio(
        audio_metrics,
        config.audio.input.clone(),
        config.audio.output.clone(),
    )
    .with_cloud_checks(cloud_checks)
    .with_sound_check(sound_check)
    .with_liveness(liveness.clone());
    let server_cancel = cancel.clone();
    tasks.spawn(async move {
        if let Err(e) = status::serve(listener, state, server_cancel).await {
            warn!(error = %error_chain(&e), "status server ended with an error");
        }
    });

    let watchdog = Watchdog {
        liveness,
        store: store.clone(),
        audio: audio_metrics_for_watchdog,
        healthz: url::Url::parse(&format!("http://{}/healthz", loopback(addr)))
            .expect("a socket address makes a valid URL"),
        ping_every,
    };
    tasks.spawn(watchdog.run(cancel.clone()));

    let status_line = format!("idle; status page http://{addr}/");
    systemd::ready(&status_line);
    info!(
        kiosk_id = %config.kiosk.id,
        status_addr = %addr,
        store = %store_path.display(),
        startup_ms = started.elapsed().as_millis() as u64,
        "kiosk-gateway ready"
    );

    let reason = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };

    info!(signal = reason, "stopping");
    systemd::stopping();
    cancel.cancel();
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!("tasks did not stop in time");
        tasks.abort_all();
    }
    drop(store);
    writer.join();
    info!("stopped");
    Ok(())
}

/// Where the daemon itself reaches its status server: the listen address,
/// with an unspecified one (`0.0.0.0`, `::`) replaced by loopback.
fn loopback(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let ip = match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        };
        SocketAddr::new(ip, addr.port())
    } else {
        addr
    }
}

/// The orchestrator's settings from the config.
pub fn session_settings(config: &Config) -> Result<SessionSettings, DaemonError> {
    let (path, prompt) = match &config.session.failure_prompt {
        Some(path) => (path.clone(), Prompt::open(path, &config.audio)),
        None => (
            "(built in)".into(),
            Prompt::built_in(assets::FAILURE_PROMPT, &config.audio),
        ),
    };
    let failure_prompt = prompt.map_err(|source| DaemonError::Prompt { path, source })?;
    Ok(SessionSettings {
        kiosk_id: config.kiosk.id.to_string(),
        trigger: config.session.trigger,
        idle_timeout: config.session.idle_timeout,
        max_duration: config.session.max_duration,
        ready_timeout: config.session.ready_timeout,
        link: config.link_settings(),
        sip: config.sip,
        failure_prompt: Some(failure_prompt),
        failure_backoff_min: Duration::from_secs(2),
        failure_backoff_max: Duration::from_secs(60),
    })
}
