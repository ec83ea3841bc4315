//! Can the kiosk reach its cloud? A background prober checks the Daily API
//! and the agent's endpoint every `status.probe_interval`, and at once when
//! a session fails, so a technician sees "Daily: API key
//! refused" or "agent: unreachable" before a visitor walks up, not after.
//!
//! - Daily: one `GET /rooms?limit=1` with the API key (no retries), which
//!   also proves the key is accepted.
//! - Agent: one `HEAD` on the start or offer URL without credentials. Any
//!   HTTP answer (405 included) means the path to it works; a 5xx means
//!   something answers but is unwell.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use metrics::{counter, gauge};
use serde::Serialize;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use url::Url;

use crate::daily::{DailyClient, DailyError};
use crate::health::{ErrorNote, Health};

/// One probe's time limit: long enough for a slow mobile uplink, short
/// enough that an unreachable service shows as such within seconds.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    Daily,
    Agent,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Daily => "daily",
            Service::Agent => "agent",
        }
    }
}

/// The latest word on one service, for `/api/status` and the page.
#[derive(Clone, Debug, Serialize)]
pub struct CloudCheck {
    pub service: Service,
    /// Scheme, host and port only: paths and queries may carry tokens.
    pub target: String,
    /// `None` until the first probe has finished.
    pub health: Option<Health>,
    pub detail: String,
    pub latency_ms: Option<u64>,
    pub checked_at: Option<Timestamp>,
    pub last_ok_at: Option<Timestamp>,
    pub last_error: Option<ErrorNote>,
}

/// Asks the prober to check now (after a failed session set-up).
#[derive(Clone, Default)]
pub struct ProbeTrigger(Arc<Notify>);

impl ProbeTrigger {
    pub fn probe_now(&self) {
        self.0.notify_one();
    }
}

enum Target {
    Daily(DailyClient),
    Agent { url: Url, http: reqwest::Client },
}

pub struct Prober {
    targets: Vec<Target>,
    interval: Duration,
    trigger: ProbeTrigger,
    checks: watch::Sender<Vec<CloudCheck>>,
}

impl Prober {
    /// `interval` zero checks only when triggered. `http` is the client
    /// sessions are started with (one TLS set-up in memory, not two).
    pub fn new(
        daily: Option<DailyClient>,
        agent: Option<Url>,
        http: reqwest::Client,
        interval: Duration,
    ) -> Self {
        let mut targets = Vec::new();
        if let Some(client) = daily {
            targets.push(Target::Daily(client));
        }
        if let Some(url) = agent {
            targets.push(Target::Agent { url, http });
        }
        let initial = targets
            .iter()
            .map(|t| CloudCheck {
                service: t.service(),
                target: t.shown(),
                health: None,
                detail: "not checked yet".into(),
                latency_ms: None,
                checked_at: None,
                last_ok_at: None,
                last_error: None,
            })
            .collect();
        Self {
            targets,
            interval,
            trigger: ProbeTrigger::default(),
            checks: watch::Sender::new(initial),
        }
    }

    pub fn checks(&self) -> watch::Receiver<Vec<CloudCheck>> {
        self.checks.subscribe()
    }

    pub fn trigger(&self) -> ProbeTrigger {
        self.trigger.clone()
    }

    /// Probes at start, then every interval and whenever triggered.
    pub async fn run(self, cancel: CancellationToken) {
        if self.targets.is_empty() {
            return;
        }
        loop {
            for (i, target) in self.targets.iter().enumerate() {
                let outcome = tokio::select! {
                    o = target.probe() => o,
                    _ = cancel.cancelled() => return,
                };
                self.record(i, target.service(), outcome);
            }
            let wait = async {
                if self.interval.is_zero() {
                    std::future::pending::<()>().await;
                } else {
                    tokio::time::sleep(self.interval).await;
                }
            };
            tokio::select! {
                _ = wait => {}
                _ = self.trigger.0.notified() => {}
                _ = cancel.cancelled() => return,
            }
        }
    }

    fn record(&self, index: usize, service: Service, outcome: Outcome) {
        let now = Timestamp::now();
        record_metrics(service, outcome.health, outcome.latency);
        self.checks.send_modify(|checks| {
            let check = &mut checks[index];
            let was = check.health;
            check.health = Some(outcome.health);
            check.latency_ms = Some(outcome.latency.as_millis() as u64);
            check.checked_at = Some(now);
            if outcome.health == Health::Ok {
                check.last_ok_at = Some(now);
            } else {
                check.last_error = Some(ErrorNote {
                    at: now,
                    message: outcome.detail.clone(),
                });
            }
            // Log changes only: a kiosk offline for a day must not write a
            // warning every minute.
            if was != Some(outcome.health) {
                if outcome.health == Health::Ok {
                    info!(service = service.name(), detail = %outcome.detail, "cloud service reachable");
                } else {
                    warn!(service = service.name(), health = %outcome.health, detail = %outcome.detail, "cloud service check failed");
                }
            }
            check.detail = outcome.detail;
        });
    }
}

/// One check's outcome in `/metrics` (described there).
fn record_metrics(service: Service, health: Health, took: Duration) {
    let service = service.name();
    gauge!("kiosk_cloud_up", "service" => service).set(f64::from(u8::from(health == Health::Ok)));
    gauge!("kiosk_cloud_probe_seconds", "service" => service).set(took.as_secs_f64());
    counter!("kiosk_cloud_probes_total", "service" => service, "result" => health.to_string())
        .increment(1);
}

struct Outcome {
    health: Health,
    detail: String,
    latency: Duration,
}

impl Target {
    fn service(&self) -> Service {
        match self {
            Target::Daily(_) => Service::Daily,
            Target::Agent { .. } => Service::Agent,
        }
    }

    fn shown(&self) -> String {
        match self {
            Target::Daily(client) => origin(client.base_url()),
            Target::Agent { url, .. } => origin(url),
        }
    }

    async fn probe(&self) -> Outcome {
        let started = Instant::now();
        let (health, detail) = match self {
            Target::Daily(client) => {
                match tokio::time::timeout(PROBE_TIMEOUT, client.check()).await {
                    Ok(Ok(())) => (Health::Ok, "API answers and accepts the key".to_string()),
                    Ok(Err(e)) => daily_failure(&e),
                    Err(_) => (
                        Health::Down,
                        format!("no answer within {} s", PROBE_TIMEOUT.as_secs()),
                    ),
                }
            }
            Target::Agent { url, http } => {
                match http.head(url.clone()).timeout(PROBE_TIMEOUT).send().await {
                    Ok(r) if r.status().is_server_error() => (
                        Health::Degraded,
                        format!("answers with HTTP {}", r.status().as_u16()),
                    ),
                    Ok(r) => (
                        Health::Ok,
                        format!("answers (HTTP {})", r.status().as_u16()),
                    ),
                    Err(e) if e.is_timeout() => (
                        Health::Down,
                        format!("no answer within {} s", PROBE_TIMEOUT.as_secs()),
                    ),
                    Err(e) => (Health::Down, format!("unreachable: {}", root_cause(&e))),
                }
            }
        };
        Outcome {
            health,
            detail,
            latency: started.elapsed(),
        }
    }
}

fn daily_failure(e: &DailyError) -> (Health, String) {
    match e.status().map(|s| s.as_u16()) {
        Some(401 | 403) => (Health::Down, "API key refused (HTTP 401/403)".into()),
        Some(429) => (Health::Degraded, "rate limited (HTTP 429)".into()),
        Some(s) if s >= 500 => (Health::Degraded, format!("API unwell (HTTP {s})")),
        Some(s) => (Health::Degraded, format!("unexpected answer (HTTP {s})")),
        None => (Health::Down, format!("unreachable: {}", root_cause(e))),
    }
}

/// The innermost cause ("Connection refused"), which is what a technician
/// can act on; reqwest's outer messages repeat the URL.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_shown_without_path_or_query() {
        let url = Url::parse("https://agent.example:8443/start?token=secret").unwrap();
        assert_eq!(origin(&url), "https://agent.example:8443");
    }
}
