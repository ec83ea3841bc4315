//! One upload attempt and what its outcome means for the batch.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};

use crate::store::BatchId;

/// What to do with a batch after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream has it: mark the rows synced.
    Accepted,
    /// Try again later; the upstream may say when.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// The upstream refuses it: set it aside until settings change or a
    /// technician retries.
    Park { reason: String },
}

pub struct Uploader {
    client: reqwest::Client,
    url: url::Url,
    token: SecretString,
}

impl Uploader {
    pub fn new(url: url::Url, token: SecretString, timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            // A redirect would turn the POST into a GET; it is a
            // misconfigured URL and is reported as such.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("kiosk-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a client with only timeouts and redirect policy set builds");
        Self { client, url, token }
    }

    pub async fn send(&self, batch: BatchId, gzip_body: Vec<u8>) -> Outcome {
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", self.token.expose_secret()))
            .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid"));
        auth.set_sensitive(true);
        let response = self
            .client
            .post(self.url.clone())
            .header(AUTHORIZATION, auth)
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_ENCODING, "gzip")
            .header("Idempotency-Key", batch.to_string())
            .body(gzip_body)
            .send()
            .await;
        match response {
            Ok(r) => classify(r.status(), retry_after(r.headers()), r.text().await.ok()),
            Err(e) => Outcome::Retry {
                reason: describe_transport_error(&e),
                after: None,
            },
        }
    }
}

fn classify(status: StatusCode, after: Option<Duration>, body: Option<String>) -> Outcome {
    let detail = || {
        let body = body.as_deref().unwrap_or("").trim();
        let short: String = body.chars().take(200).collect();
        if short.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {short}")
        }
    };
    if status.is_success() {
        Outcome::Accepted
    } else if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        Outcome::Retry {
            reason: detail(),
            after,
        }
    } else if status.is_redirection() {
        Outcome::Park {
            reason: format!("{}; sync.url must be the final upload URL", detail()),
        }
    } else {
        Outcome::Park { reason: detail() }
    }
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// A transport error in words, without the URL's query (which could carry
/// credentials an operator put there).
fn describe_transport_error(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "connection broke during the response"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(e);
    let mut innermost = None;
    while let Some(s) = source {
        innermost = Some(s.to_string());
        source = s.source();
    }
    match innermost {
        Some(cause) => format!("{kind}: {cause}"),
        None => kind.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_map_to_what_the_design_says() {
        let retry = |s: u16| {
            matches!(
                classify(StatusCode::from_u16(s).unwrap(), None, None),
                Outcome::Retry { .. }
            )
        };
        let park = |s: u16| {
            matches!(
                classify(StatusCode::from_u16(s).unwrap(), None, None),
                Outcome::Park { .. }
            )
        };
        assert_eq!(classify(StatusCode::CREATED, None, None), Outcome::Accepted);
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(retry(s), "{s} retries");
        }
        for s in [400, 401, 403, 404, 409, 413, 422, 301] {
            assert!(park(s), "{s} parks");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
    }
}
