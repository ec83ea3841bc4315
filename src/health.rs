//! Small shared vocabulary for reporting trouble to technicians.

use jiff::Timestamp;
use serde::Serialize;

/// A problem worth showing on the status page: when, and what in words.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorNote {
    pub at: Timestamp,
    pub message: String,
}

impl ErrorNote {
    pub fn now(message: impl Into<String>) -> Self {
        Self {
            at: Timestamp::now(),
            message: message.into(),
        }
    }
}

/// One part a technician can act on (a device, the link, the store) and
/// how it is doing.
#[derive(Debug, Clone, Serialize)]
pub struct Component {
    pub name: &'static str,
    pub health: Health,
    pub detail: String,
}

/// How a part or a cloud service is doing.
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
