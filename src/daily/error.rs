use std::time::Duration;

use reqwest::StatusCode;

/// Errors from the Daily REST API. None of them ever carries the API key:
/// it only travels in a request header, which reqwest's errors do not print.
#[derive(Debug, thiserror::Error)]
pub enum DailyError {
    /// Daily answered with an error status; `error` and `info` are Daily's
    /// own fields (`error` is stable, `info` is for humans).
    #[error("Daily API {operation} failed: HTTP {status}: {error}: {info}")]
    Api {
        /// The call, e.g. `create room`.
        operation: &'static str,
        /// Its HTTP status.
        status: StatusCode,
        /// Daily's error type.
        error: String,
        /// Daily's explanation.
        info: String,
        /// How long Daily asked us to wait (`Retry-After`), if it did.
        retry_after: Option<Duration>,
    },
    /// No reply in time.
    #[error("Daily API {operation} timed out")]
    Timeout {
        /// The call, e.g. `create room`.
        operation: &'static str,
    },
    /// The request got no reply.
    #[error("Daily API {operation} failed: network error")]
    Network {
        /// The call.
        operation: &'static str,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The reply is not what the API documents.
    #[error("Daily API {operation}: malformed response (HTTP {status}): {detail}")]
    Malformed {
        /// The call.
        operation: &'static str,
        /// Its HTTP status.
        status: StatusCode,
        /// What is wrong with it.
        detail: String,
    },
    /// A room name Daily would refuse.
    #[error("invalid Daily room name {0:?} (letters, digits, '-' and '_' only)")]
    InvalidRoomName(String),
    /// The API base URL cannot take a request path.
    #[error("invalid Daily API URL: {0}")]
    InvalidUrl(String),
}

impl DailyError {
    pub(crate) fn from_reqwest(operation: &'static str, source: reqwest::Error) -> Self {
        if source.is_timeout() {
            Self::Timeout { operation }
        } else {
            Self::Network {
                operation,
                source: source.without_url(),
            }
        }
    }

    /// HTTP status of an API error, if Daily answered at all.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Api { status, .. } | Self::Malformed { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Daily's stable error type (`invalid-request-error`, ...), if any.
    pub fn daily_error_type(&self) -> Option<&str> {
        match self {
            Self::Api { error, .. } => Some(error),
            _ => None,
        }
    }

    /// Transient failures worth another attempt. A malformed 2xx is not
    /// retried: the request may have taken effect, and retrying a create
    /// would then fail or duplicate.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Timeout { .. } | Self::Network { .. } => true,
            Self::Api { status, .. } => {
                *status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
            }
            _ => false,
        }
    }

    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}
