//! The kiosk at a glance: healthy, degraded or down, and why, from the
//! health of its parts. On top of the page and in `/api/status`.

use jiff::Timestamp;
use serde::Serialize;

use super::words;
use crate::health::{Component, Health};
use crate::liveness::Part;
use crate::reachability::CloudCheck;
use crate::selftest::SelfTestReport;

/// The kiosk at a glance, worst part first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Overall {
    /// Everything a visitor needs works.
    #[default]
    Healthy,
    /// Visitors are served, but something needs a look.
    Degraded,
    /// A visitor would not be served.
    Down,
}

impl Overall {
    /// The banner's headline.
    pub fn headline(self) -> &'static str {
        match self {
            Overall::Healthy => "Healthy",
            Overall::Degraded => "Needs a look",
            Overall::Down => "Not working",
        }
    }

    /// CSS class and JSON name.
    pub fn as_str(self) -> &'static str {
        match self {
            Overall::Healthy => "healthy",
            Overall::Degraded => "degraded",
            Overall::Down => "down",
        }
    }

    fn worst(self, other: Overall) -> Overall {
        match (self, other) {
            (Overall::Down, _) | (_, Overall::Down) => Overall::Down,
            (Overall::Degraded, _) | (_, Overall::Degraded) => Overall::Degraded,
            _ => Overall::Healthy,
        }
    }
}

impl From<Health> for Overall {
    fn from(h: Health) -> Self {
        match h {
            Health::Ok => Overall::Healthy,
            Health::Degraded => Overall::Degraded,
            Health::Down => Overall::Down,
        }
    }
}

/// The verdict and the reasons for it, in words.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verdict {
    /// Worst of all parts.
    pub overall: Overall,
    /// One short sentence per part that is not fine.
    pub reasons: Vec<String>,
}

/// What the verdict is drawn from.
pub struct Parts<'a> {
    /// Devices and the store.
    pub components: &'a [Component],
    /// Daily and the agent.
    pub cloud: &'a [CloudCheck],
    /// Parts of the daemon that stopped making progress.
    pub stale_parts: &'a [Part],
    /// The store can be read.
    pub store_readable: bool,
    /// Upload batches the server refused.
    pub parked_batches: usize,
    /// The last self-test.
    pub self_test: Option<&'a SelfTestReport>,
}

/// Judges the whole kiosk from its parts: devices, cloud, stalled parts
/// of the daemon, the store and sync, the last self-test.
pub fn verdict(parts: &Parts<'_>) -> Verdict {
    let mut overall = Overall::Healthy;
    let mut reasons = Vec::new();
    let mut note = |level: Overall, reason: String| {
        overall = overall.worst(level);
        reasons.push(reason);
    };
    for c in parts.components {
        if c.health != Health::Ok {
            note(
                c.health.into(),
                format!("{}: {}", c.name, health_word(c.health)),
            );
        }
    }
    for c in parts.cloud {
        if let Some(h) = c.health.filter(|h| *h != Health::Ok) {
            let now = Timestamp::now();
            note(
                h.into(),
                format!("{}: {}", c.service.name(), words::cloud(c, now)),
            );
        }
    }
    if !parts.stale_parts.is_empty() {
        let parts: Vec<&str> = parts.stale_parts.iter().map(|p| p.as_str()).collect();
        note(Overall::Down, format!("stuck: {}", parts.join(", ")));
    }
    if !parts.store_readable {
        note(Overall::Degraded, "the database cannot be read".into());
    }
    if parts.parked_batches > 0 {
        note(
            Overall::Degraded,
            format!(
                "{} upload batches refused by the server",
                parts.parked_batches
            ),
        );
    }
    if let Some(test) = parts.self_test.filter(|t| !t.passed) {
        note(Overall::Degraded, format!("self-test: {}", test.summary));
    }
    Verdict { overall, reasons }
}

/// A part's health in one word or two.
pub fn health_word(h: Health) -> &'static str {
    match h {
        Health::Ok => "working",
        Health::Degraded => "has trouble",
        Health::Down => "not working",
    }
}
