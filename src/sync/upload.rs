//! One upload attempt and what its outcome means for the batch.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{
    AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue, LOCATION, RETRY_AFTER,
};
use secrecy::{ExposeSecret, SecretString};

use crate::http_body::{BodyError, read_limited};
use crate::store::BatchId;

/// What to do with a batch after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream has it: mark the rows synced.
    Accepted,
    /// Try again later; the upstream may say when.
    Retry {
        /// What went wrong.
        reason: String,
        /// When the upstream asked us to retry (`Retry-After`), if it did.
        after: Option<Duration>,
    },
    /// The upstream refuses it: set it aside until settings change or a
    /// technician retries.
    Park {
        /// Why, in the upstream's words.
        reason: String,
    },
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
            Ok(r) => {
                let status = r.status();
                let after = retry_after(r.headers());
                let location = r
                    .headers()
                    .get(LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|l| self.url.join(l).ok());
                let body = read_answer(r).await;
                classify(&self.url, status, after, location.as_ref(), body.as_deref())
            }
            Err(e) => Outcome::Retry {
                reason: describe_transport_error(&e),
                after: None,
            },
        }
    }
}

/// The most of an answer read. An acknowledgement is small; a larger
/// answer is not the upload endpoint's (it is taken as not JSON).
const MAX_ANSWER: usize = 1024 * 1024;

/// The answer's body; `None` when the connection broke before it was read.
async fn read_answer(r: reqwest::Response) -> Option<String> {
    match read_limited(r, MAX_ANSWER).await {
        Ok(body) => Some(String::from_utf8_lossy(&body).into_owned()),
        Err(BodyError::Read(_)) => None,
        Err(too_large) => Some(format!("({too_large})")),
    }
}

/// What an answer means for the batch. `body` is `None` when it could not
/// be read; `location` is a redirect's target, resolved against `sync_url`.
fn classify(
    sync_url: &url::Url,
    status: StatusCode,
    after: Option<Duration>,
    location: Option<&url::Url>,
    body: Option<&str>,
) -> Outcome {
    let detail = || {
        let body = body.unwrap_or("").trim();
        let short: String = body.chars().take(200).collect();
        if short.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {short}")
        }
    };
    if status.is_success() {
        // Only the upload endpoint's own answer counts: JSON, or nothing.
        // A captive portal (lobby Wi-Fi) or a proxy's HTML page also comes
        // with 200, and taking it for an acceptance would lose the rows.
        match body {
            None => Outcome::Retry {
                reason: format!("HTTP {status}, but the connection broke during the answer"),
                after: None,
            },
            Some(b)
                if b.trim().is_empty()
                    || serde_json::from_str::<serde::de::IgnoredAny>(b).is_ok() =>
            {
                Outcome::Accepted
            }
            Some(_) => Outcome::Retry {
                reason: format!(
                    "{} (a 2xx answer that is not JSON: a captive portal or proxy in the way?)",
                    detail()
                ),
                after: None,
            },
        }
    } else if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        Outcome::Retry {
            reason: detail(),
            after,
        }
    } else if status.is_redirection() {
        let same_host = location.is_some_and(|l| l.host_str() == sync_url.host_str());
        match location {
            // Sent elsewhere: something in the way (a captive portal
            // catching all traffic), not a wrong URL. It may go away.
            Some(l) if !same_host => Outcome::Retry {
                reason: format!(
                    "HTTP {status} to another host ({}): a captive portal or proxy in the way?",
                    l.host_str().unwrap_or("?")
                ),
                after: None,
            },
            _ => Outcome::Park {
                reason: format!("{}; sync.url must be the final upload URL", detail()),
            },
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

    fn url() -> url::Url {
        "https://up.example/v1/batches".parse().unwrap()
    }

    fn answer(status: u16, body: Option<&str>) -> Outcome {
        classify(
            &url(),
            StatusCode::from_u16(status).unwrap(),
            None,
            None,
            body,
        )
    }

    #[test]
    fn status_codes_map_to_what_the_design_says() {
        let retry = |s: u16| matches!(answer(s, Some("")), Outcome::Retry { .. });
        let park = |s: u16| matches!(answer(s, Some("")), Outcome::Park { .. });
        assert_eq!(answer(201, Some("")), Outcome::Accepted);
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(retry(s), "{s} retries");
        }
        for s in [400, 401, 403, 404, 409, 413, 422, 301] {
            assert!(park(s), "{s} parks");
        }
    }

    #[test]
    fn only_json_or_nothing_is_an_acceptance() {
        for body in ["", " \n", "{\"accepted\":true}", "[]", "null"] {
            assert_eq!(answer(200, Some(body)), Outcome::Accepted, "{body:?}");
        }
        for body in [
            "<html><body>Welcome to Lobby Wi-Fi</body></html>",
            "OK",
            "{",
        ] {
            match answer(200, Some(body)) {
                Outcome::Retry { reason, .. } => {
                    assert!(reason.contains("captive portal"), "{reason}")
                }
                o => panic!("{body:?}: {o:?}"),
            }
        }
        assert!(matches!(answer(200, None), Outcome::Retry { .. }));
    }

    #[test]
    fn a_redirect_elsewhere_retries_and_one_on_the_same_host_parks() {
        let redirect = |to: &str| {
            classify(
                &url(),
                StatusCode::FOUND,
                None,
                Some(&url().join(to).unwrap()),
                Some(""),
            )
        };
        assert!(matches!(
            redirect("http://portal.lobby.example/login"),
            Outcome::Retry { .. }
        ));
        assert!(matches!(redirect("/v2/batches"), Outcome::Park { .. }));
        // Another scheme or path on the same host: the URL is wrong.
        assert!(matches!(
            redirect("http://up.example/v1/batches"),
            Outcome::Park { .. }
        ));
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

    proptest::proptest! {
        /// Whatever an upstream answers (any status, `Retry-After`,
        /// redirect target and body), the worker gets an outcome and never
        /// a panic, and an acceptance is only ever a 2xx with JSON or
        /// nothing. Cases: 256 by default, `PROPTEST_CASES=100000` for the
        /// full run.
        #[test]
        fn any_answer_gets_an_outcome(
            status in 100u16..1000,
            retry in proptest::option::of(".{0,40}"),
            location in proptest::option::of("(https?://)?[a-z./:0-9?#%-]{0,40}"),
            body in proptest::option::of(".{0,300}"),
        ) {
            let Ok(status) = StatusCode::from_u16(status) else { return Ok(()); };
            let mut headers = reqwest::header::HeaderMap::new();
            if let Some(value) = retry.as_deref().and_then(|r| r.parse().ok()) {
                headers.insert(RETRY_AFTER, value);
            }
            let after = retry_after(&headers);
            let location = location.and_then(|l| url().join(&l).ok());
            let outcome = classify(&url(), status, after, location.as_ref(), body.as_deref());
            if outcome == Outcome::Accepted {
                proptest::prop_assert!(status.is_success());
                let b = body.unwrap_or_default();
                proptest::prop_assert!(
                    b.trim().is_empty()
                        || serde_json::from_str::<serde::de::IgnoredAny>(&b).is_ok()
                );
            }
        }
    }
}
