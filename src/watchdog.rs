//! The systemd watchdog, fed only while every part of the daemon makes
//! progress ([`Liveness`]). This task probes the parts that are idle most
//! of the time (a no-op job on the store's writer thread, a request to the
//! status server's `/healthz`), watches the audio thread's tick counter,
//! and pings systemd at its interval unless a part is stale; then it logs
//! which, once, and systemd restarts the unit after `WatchdogSec`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::audio::AudioMetrics;
use crate::liveness::{Liveness, Part, wedge_requested};
use crate::store::StoreHandle;
use crate::systemd;

/// Without a systemd watchdog, parts are judged stale after this long
/// (for `/readyz` and the page).
pub const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(10);
/// Never stricter than this: a busy 2-core box may delay a beat.
const MIN_STALE_AFTER: Duration = Duration::from_secs(2);

/// How long a part may be silent: one ping interval, so the pings stop
/// within one interval of a part wedging.
pub fn stale_after(ping_every: Option<Duration>) -> Duration {
    ping_every.map_or(DEFAULT_STALE_AFTER, |p| p.max(MIN_STALE_AFTER))
}

pub struct Watchdog {
    pub liveness: Liveness,
    pub store: StoreHandle,
    pub audio: Arc<AudioMetrics>,
    /// The status server's `/healthz`.
    pub healthz: url::Url,
    /// systemd's ping interval (`WatchdogSec`/2), if it armed one.
    pub ping_every: Option<Duration>,
}

impl Watchdog {
    pub async fn run(self, cancel: CancellationToken) {
        let started = Instant::now();
        let every = self.liveness.beat_every();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(every)
            .build()
            .expect("static reqwest configuration is valid");
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut audio_ticks = None;
        let mut last_ping: Option<Instant> = None;
        let mut reported: Vec<Part> = Vec::new();
        let mut store_wedged = false;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let ticks = AudioMetrics::get(&self.audio.dsp_heartbeat);
            if audio_ticks != Some(ticks) {
                audio_ticks = Some(ticks);
                self.liveness.beat(Part::Audio);
            }
            if !store_wedged && wedge_requested(Part::Store, started) {
                store_wedged = true;
                let store = self.store.clone();
                tokio::spawn(async move {
                    let _ = store
                        .call(|_| -> Result<(), crate::store::StoreError> {
                            loop {
                                std::thread::sleep(Duration::from_secs(1));
                            }
                        })
                        .await;
                });
            }
            let (store_ok, status_ok) = tokio::join!(
                tokio::time::timeout(every, self.store.call(|_| Ok(()))),
                http.get(self.healthz.clone()).send(),
            );
            if matches!(store_ok, Ok(Ok(()))) {
                self.liveness.beat(Part::Store);
            }
            if status_ok.is_ok_and(|r| r.status().is_success()) {
                self.liveness.beat(Part::Status);
            }

            let stale = self.liveness.stale();
            if stale != reported {
                if stale.is_empty() {
                    info!("every part of the daemon is making progress again");
                } else {
                    let parts: Vec<&str> = stale.iter().map(|p| p.as_str()).collect();
                    error!(
                        stale = ?parts,
                        "part of the daemon stopped making progress; not feeding the watchdog"
                    );
                }
                reported = stale.clone();
            }
            if let Some(ping_every) = self.ping_every
                && stale.is_empty()
                && last_ping.is_none_or(|t| t.elapsed() + every / 2 >= ping_every)
            {
                systemd::watchdog_ping();
                last_ping = Some(Instant::now());
            }
        }
    }
}
