//! The technicians' window into the box: the status page, a JSON API,
//! health probes and Prometheus metrics. It reads snapshots (the store
//! through its own read-only handle, state published by the rest of the
//! gateway) and never touches devices.

mod api;
pub mod auth;
mod charts;
pub mod guard;
mod history;
pub mod metrics;
mod page;
mod server;
mod verdict;
mod view;
pub mod words;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, header};
use axum::routing::{get, post};
use tokio::sync::watch;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;

use crate::audio::{AudioMetrics, DeviceSpec, Scheduling, SoundCheck};
use crate::control::{Command as SessionCommand, Published};
use crate::error_text::error_chain;
pub use crate::health::ErrorNote;
use crate::health::{Component, Health};
use crate::liveness::{Liveness, Part};
use crate::reachability::CloudCheck;
use crate::selftest::SelfTestReport;
use crate::store::{Store, StoreError};
use crate::sync::{SyncStatus, SyncTrigger};
use crate::telemetry::RecentEvents;
pub use auth::Auth;
pub use guard::HostSettings;
pub use server::{bind, serve};
pub use words::Clock;

/// What a request has proven, as the login check (`auth`) found it; the
/// handlers show what it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A valid token or login.
    Technician,
    /// No token configured, loopback only: the page without personal data.
    Anonymous,
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

/// The audio engine as the status server sees it.
#[derive(Clone)]
struct AudioView {
    metrics: Arc<AudioMetrics>,
    input: DeviceSpec,
    output: DeviceSpec,
}

/// The echo canceller's figures for the microphone's line: empty while it
/// is off or has not reported yet.
fn echo_canceller_note(a: &AudioMetrics) -> String {
    let echo = a.echo();
    let parts: Vec<String> = [
        echo.erle_db
            .map(|e| format!("its filter removes {e:.0} dB of the speaker's echo")),
        echo.delay
            .map(|d| format!("echo {} ms behind the speaker", d.0)),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("; echo canceller: {}", parts.join(", "))
    }
}

/// The audio engine's failures in words: empty if it never failed.
fn audio_engine_note(a: &AudioMetrics) -> String {
    let Some(failure) = a.last_engine_failure() else {
        return String::new();
    };
    let at = failure.at.strftime("%Y-%m-%d %H:%M:%S UTC");
    let failures = AudioMetrics::get(&a.engine_failures);
    let restarts = AudioMetrics::get(&a.engine_restarts);
    if !a.is_engine_down() {
        return format!(
            "audio engine restarted {restarts} times; last failure at {at}: {}",
            failure.error
        );
    }
    let when = match failure.restart_in {
        Some(d) => format!("restarting in {:.1} s", d.as_secs_f64()),
        None => "not restarting".into(),
    };
    format!(
        "audio engine stopped at {at}: {}; {when} (failures so far: {failures}, restarts: {restarts})",
        failure.error
    )
}

/// For the microphone's line: a DSP thread that was refused real-time
/// scheduling, which a technician can grant (the unit's `LimitRTPRIO`).
fn scheduling_note(a: &AudioMetrics) -> &'static str {
    match a.dsp_scheduling.get() {
        Scheduling::Denied => {
            "; audio thread at normal priority: real-time scheduling refused \
             (other work here can delay the audio)"
        }
        Scheduling::Demoted => {
            "; audio thread back at normal priority: the microphone or speaker \
             woke it faster than real time"
        }
        Scheduling::Normal | Scheduling::Realtime => "",
    }
}

fn describe(spec: &DeviceSpec) -> String {
    match spec {
        DeviceSpec::Default => "default device".into(),
        DeviceSpec::Named(name) => format!("device \"{name}\""),
        DeviceSpec::Wav(path) => format!("file {}", path.display()),
        DeviceSpec::Disabled => "none".into(),
    }
}

#[derive(Clone)]
pub struct StatusState {
    identity: Arc<Identity>,
    started: Instant,
    published: watch::Receiver<Published>,
    sync: Option<SyncView>,
    auth: Auth,
    /// Which `Host` and `Origin` values are this server's.
    guard: Arc<guard::Guard>,
    recent: RecentEvents,
    session_commands: Option<tokio::sync::mpsc::Sender<SessionCommand>>,
    audio: Option<AudioView>,
    cloud: Option<watch::Receiver<Vec<CloudCheck>>>,
    /// Which parts of the daemon make progress (not set in tools and tests
    /// that run the server alone).
    liveness: Option<Liveness>,
    /// Read-only; opened lazily so a missing database shows as not ready
    /// instead of keeping the server from starting.
    reader: Arc<Mutex<Option<Store>>>,
    /// The kiosk's time zone, for times on the page.
    clock: Clock,
    /// The last hour, filled by [`history::sample`] while the server runs.
    history: history::History,
    /// The self-test through the audio engine (not in tools and tests
    /// without one).
    sound_check: Option<SoundCheck>,
    /// Held while a self-test runs: one at a time.
    self_test_running: Arc<tokio::sync::Mutex<()>>,
    /// The last self-test's result.
    self_test: Arc<Mutex<Option<SelfTestReport>>>,
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
            guard: Arc::new(guard::Guard::new(&HostSettings::default())),
            recent,
            session_commands: None,
            audio: None,
            cloud: None,
            liveness: None,
            reader: Arc::new(Mutex::new(None)),
            clock: Clock::system(),
            history: history::History::default(),
            sound_check: None,
            self_test_running: Arc::default(),
            self_test: Arc::default(),
        }
    }

    /// Shows times in `clock`'s zone (`kiosk.time_zone`) rather than the
    /// system's.
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Where technicians reach the server (`status.listen`,
    /// `status.allowed_hosts`, `status.public_url`). Without it only the
    /// address a request came in on, `localhost`, 127.0.0.1, [::1] and the
    /// kiosk's hostname (with the server's port) are answered.
    pub fn with_hosts(mut self, settings: &HostSettings) -> Self {
        self.guard = Arc::new(guard::Guard::new(settings));
        self
    }

    /// Shows the audio engine's counters, device health and level, and
    /// which devices are configured.
    pub fn with_audio(
        mut self,
        metrics: Arc<AudioMetrics>,
        input: DeviceSpec,
        output: DeviceSpec,
    ) -> Self {
        self.audio = Some(AudioView {
            metrics,
            input,
            output,
        });
        self
    }

    /// Lets technicians run the speaker and microphone self-test
    /// (`POST /api/selftest`) through the running audio engine.
    pub fn with_sound_check(mut self, sound_check: SoundCheck) -> Self {
        self.sound_check = Some(sound_check);
        self
    }

    /// Shows the Daily and agent reachability checks.
    pub fn with_cloud_checks(mut self, checks: watch::Receiver<Vec<CloudCheck>>) -> Self {
        self.cloud = Some(checks);
        self
    }

    pub fn with_liveness(mut self, liveness: Liveness) -> Self {
        self.liveness = Some(liveness);
        self
    }

    /// Parts of the daemon that stopped making progress.
    fn stale_parts(&self) -> Vec<Part> {
        self.liveness
            .as_ref()
            .map(Liveness::stale)
            .unwrap_or_default()
    }

    /// The microphone's level now, dBFS; `None` while no microphone
    /// delivers audio.
    fn mic_level(&self) -> Option<f32> {
        let view = self.audio.as_ref()?;
        let a = &view.metrics;
        let delivering = match view.input {
            DeviceSpec::Disabled => false,
            DeviceSpec::Wav(_) => true,
            _ => a.input_open.load(std::sync::atomic::Ordering::Relaxed),
        };
        (delivering && !a.is_engine_down()).then(|| a.level().0)
    }

    fn last_self_test(&self) -> Option<SelfTestReport> {
        self.self_test
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn cloud_checks(&self) -> Vec<CloudCheck> {
        self.cloud
            .as_ref()
            .map(|c| c.borrow().clone())
            .unwrap_or_default()
    }

    /// Devices as components, from the audio engine's counters. While the
    /// engine is down (its DSP loop failed and waits to be restarted) every
    /// configured device is down, files included; afterwards its last
    /// failure stays in their detail.
    fn audio_components(&self) -> Vec<Component> {
        let Some(view) = &self.audio else {
            return Vec::new();
        };
        let a = &view.metrics;
        let engine = audio_engine_note(a);
        let device = |name, spec: &DeviceSpec, open: bool| {
            if a.is_engine_down() && *spec != DeviceSpec::Disabled {
                return Component {
                    name,
                    health: Health::Down,
                    detail: format!("{}: {engine}", describe(spec)),
                };
            }
            let (health, mut detail) = match spec {
                DeviceSpec::Disabled => (Health::Ok, "off (configured \"none\")".to_string()),
                DeviceSpec::Wav(path) => (Health::Ok, format!("file {}", path.display())),
                _ if open => (Health::Ok, format!("open: {}", describe(spec))),
                _ => (
                    Health::Down,
                    format!(
                        "{} not available; retrying ({} errors, {} reopens so far)",
                        describe(spec),
                        AudioMetrics::get(&a.device_errors),
                        AudioMetrics::get(&a.device_reopens)
                    ),
                ),
            };
            if !engine.is_empty() {
                detail.push_str(&format!(" ({engine})"));
            }
            Component {
                name,
                health,
                detail,
            }
        };
        use std::sync::atomic::Ordering::Relaxed;
        let mut speaker = device("speaker", &view.output, a.output_open.load(Relaxed));
        let (undecodable, oversize) = (
            AudioMetrics::get(&a.packets_undecodable),
            AudioMetrics::get(&a.packets_oversize),
        );
        if undecodable + oversize > 0 {
            speaker.detail.push_str(&format!(
                "; agent audio: {undecodable} undecodable and {oversize} oversize packets concealed"
            ));
        }
        let mut microphone = device("microphone", &view.input, a.input_open.load(Relaxed));
        microphone.detail.push_str(&echo_canceller_note(a));
        microphone.detail.push_str(scheduling_note(a));
        vec![microphone, speaker]
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
                    tracing::warn!(error = %error_chain(&e), "status: cannot read the store");
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
        .route("/api/selftest", post(api::self_test))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_technician,
        ));
    let protected = Router::new()
        .route("/", get(page::status))
        .route("/part/status", get(page::status_part))
        .route("/api/status", get(api::status))
        .route("/api/history", get(api::history))
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
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::check_origin,
        ))
        // Outside the origin check: a foreign Host is refused first.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::check_host,
        ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::{EchoStats, Millis};

    #[test]
    fn the_microphone_line_gives_the_echo_cancellers_figures_once_it_has_them() {
        let metrics = AudioMetrics::default();
        assert_eq!(echo_canceller_note(&metrics), "");
        metrics.set_echo(EchoStats {
            erle_db: Some(14.4),
            erl_db: Some(20.0),
            delay: Some(Millis(172)),
        });
        assert_eq!(
            echo_canceller_note(&metrics),
            "; echo canceller: its filter removes 14 dB of the speaker's echo, echo 172 ms behind the speaker"
        );
    }

    #[test]
    fn the_microphone_line_says_when_the_audio_thread_is_not_real_time() {
        let metrics = AudioMetrics::default();
        assert_eq!(scheduling_note(&metrics), "");
        metrics.dsp_scheduling.set(Scheduling::Realtime);
        assert_eq!(scheduling_note(&metrics), "");
        metrics.dsp_scheduling.set(Scheduling::Denied);
        assert!(
            scheduling_note(&metrics).starts_with("; audio thread at normal priority"),
            "{}",
            scheduling_note(&metrics)
        );
        metrics.dsp_scheduling.set(Scheduling::Demoted);
        assert!(
            scheduling_note(&metrics).starts_with("; audio thread back at normal priority"),
            "{}",
            scheduling_note(&metrics)
        );
    }
}
