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
