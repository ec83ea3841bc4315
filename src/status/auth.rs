//! Who may see what on the status server. With `status.token` set,
//! everything but the health probes needs it, as a bearer header or as the
//! session cookie the login form sets. Transcripts and technician actions
//! always need it, even on loopback: they are personal data and changes.
//!
//! Guessing is slow: after [`MAX_FAILURES`] wrong tokens within
//! [`FAILURE_WINDOW`] from one client (by form or by header), that client
//! gets 429 with `Retry-After` until the oldest failure is a window old,
//! whatever it sends. Tokens are compared as SHA-256 digests in constant
//! time, so neither their content nor their length shows in timing.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Form;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::guard::Connection;
use super::{Access, StatusState};
use crate::config::secret_text;

pub const COOKIE: &str = "kiosk_gateway_session";
/// A technician's login lasts a working day.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// The configured token and the logins made with it.
#[derive(Clone)]
pub struct Auth {
    /// SHA-256 of the configured token.
    token: Option<Arc<[u8; 32]>>,
    sessions: Arc<Mutex<HashMap<String, Instant>>>,
    failures: Arc<Mutex<Failures>>,
}

/// Wrong tokens per client before it must wait.
pub const MAX_FAILURES: usize = 5;
/// The window [`MAX_FAILURES`] are counted in.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Clients tracked at most; the stalest are forgotten first.
const MAX_CLIENTS: usize = 4096;

/// Recent wrong tokens, per client.
#[derive(Default)]
struct Failures {
    by_client: HashMap<IpAddr, VecDeque<Instant>>,
}

impl Failures {
    /// How long `client` must wait before its next try, if it must.
    fn wait(&mut self, client: IpAddr, now: Instant) -> Option<Duration> {
        let times = self.by_client.get_mut(&client)?;
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= FAILURE_WINDOW)
        {
            times.pop_front();
        }
        if times.is_empty() {
            self.by_client.remove(&client);
            return None;
        }
        (times.len() >= MAX_FAILURES)
            .then(|| FAILURE_WINDOW.saturating_sub(now.duration_since(times[0])))
    }

    fn record(&mut self, client: IpAddr, now: Instant) {
        if self.by_client.len() >= MAX_CLIENTS && !self.by_client.contains_key(&client) {
            self.by_client.retain(|_, t| {
                t.back()
                    .is_some_and(|l| now.duration_since(*l) < FAILURE_WINDOW)
            });
            if self.by_client.len() >= MAX_CLIENTS
                && let Some(stalest) = self
                    .by_client
                    .iter()
                    .min_by_key(|(_, t)| t.back().copied())
                    .map(|(k, _)| *k)
            {
                self.by_client.remove(&stalest);
            }
        }
        let times = self.by_client.entry(client).or_default();
        times.push_back(now);
        // Only the last few matter.
        while times.len() > MAX_FAILURES {
            times.pop_front();
        }
    }
}

/// A client as the failure count knows it: its IP address, an IPv6 one by
/// its /64 (one host usually holds a whole /64).
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// The client's address, from the connection (never from a header a
/// client could write); unspecified when the server did not say.
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(client_ip(&parts.extensions)))
    }
}

fn client_ip(extensions: &axum::http::Extensions) -> IpAddr {
    extensions
        .get::<Connection>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.remote.ip())
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Why a token was not taken.
enum Refusal {
    Wrong,
    /// Too many wrong ones lately: wait this long.
    Wait(Duration),
}

impl Auth {
    pub fn new(token: Option<SecretString>) -> Self {
        Self {
            token: token.map(|t| Arc::new(sha256(secret_text(t.expose_secret()).as_bytes()))),
            sessions: Arc::default(),
            failures: Arc::default(),
        }
    }

    pub fn token_configured(&self) -> bool {
        self.token.is_some()
    }

    /// Trimmed as configured secrets are; compared digest to digest, in
    /// constant time: timing tells neither content nor length.
    fn token_matches(&self, offered: &str) -> bool {
        self.token.as_ref().is_some_and(|t| {
            let offered = sha256(secret_text(offered).as_bytes());
            bool::from(t.as_slice().ct_eq(offered.as_slice()))
        })
    }

    /// Checks a token offered by `client`, counting wrong ones; refuses
    /// without looking while the client has to wait.
    fn try_token(&self, client: IpAddr, offered: &str) -> Result<(), Refusal> {
        let client = client_key(client);
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(wait) = failures.wait(client, now) {
            return Err(Refusal::Wait(wait));
        }
        if self.token_matches(offered) {
            failures.by_client.remove(&client);
            Ok(())
        } else {
            failures.record(client, now);
            if let Some(wait) = failures.wait(client, now) {
                // Once per lock, not per refused request: a flood must not
                // flood the journal too.
                tracing::warn!(
                    %client,
                    wait_s = wait.as_secs(),
                    "status: {MAX_FAILURES} wrong tokens within a minute; refusing this client for now"
                );
            }
            Err(Refusal::Wrong)
        }
    }

    fn cookie_valid(&self, value: &str) -> bool {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|_, created| created.elapsed() < SESSION_TTL);
        sessions.contains_key(value)
    }

    fn new_login(&self) -> String {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), Instant::now());
        id
    }

    fn end_login(&self, headers: &HeaderMap) {
        if let Some(v) = cookie(headers) {
            self.sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&v);
        }
    }

    /// What the request proves: `Err` is the answer refusing it.
    fn access(&self, headers: &HeaderMap, client: IpAddr) -> Result<Access, Refusal> {
        if self.token.is_none() {
            return Ok(Access::Anonymous);
        }
        if cookie(headers).is_some_and(|c| self.cookie_valid(&c)) {
            return Ok(Access::Technician);
        }
        match bearer(headers) {
            Some(offered) => self.try_token(client, offered).map(|()| Access::Technician),
            None => Err(Refusal::Wrong),
        }
    }
}

/// The token of an `Authorization: Bearer` header (scheme in any case).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token)
}

fn too_many(wait: Duration) -> Response {
    // Whole seconds, rounded up: waiting what was said always suffices.
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, secs.max(1).to_string())],
        "too many wrong tokens; wait before trying again\n",
    )
        .into_response()
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// Refuses requests without a token when one is configured; records the
/// access level for the handlers.
pub async fn require_login(
    State(state): State<StatusState>,
    mut req: Request,
    next: Next,
) -> Response {
    let client = client_ip(req.extensions());
    match state.auth.access(req.headers(), client) {
        Ok(access) => {
            req.extensions_mut().insert(access);
            next.run(req).await
        }
        Err(Refusal::Wait(wait)) => too_many(wait),
        Err(Refusal::Wrong) if wants_html(req.headers()) => Redirect::to("/login").into_response(),
        Err(Refusal::Wrong) => unauthorized(),
    }
}

/// For personal data and actions: a technician, whatever the configuration.
pub async fn require_technician(
    State(state): State<StatusState>,
    req: Request,
    next: Next,
) -> Response {
    if !state.auth.token_configured() {
        return (
            StatusCode::FORBIDDEN,
            "transcripts and actions need status.token to be configured\n",
        )
            .into_response();
    }
    let client = client_ip(req.extensions());
    match state.auth.access(req.headers(), client) {
        Ok(Access::Technician) => next.run(req).await,
        Err(Refusal::Wait(wait)) => too_many(wait),
        _ => unauthorized(),
    }
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"kiosk-gateway\"")],
        "a valid status token is needed\n",
    )
        .into_response()
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

pub async fn login_page(State(state): State<StatusState>) -> Response {
    super::page::login_response(&state.identity.kiosk_name, None)
}

pub async fn login(
    State(state): State<StatusState>,
    ClientIp(client): ClientIp,
    Form(form): Form<LoginForm>,
) -> Response {
    match state.auth.try_token(client, &form.token) {
        Ok(()) => {}
        Err(Refusal::Wait(wait)) => return too_many(wait),
        Err(Refusal::Wrong) => {
            let mut r = super::page::login_response(
                &state.identity.kiosk_name,
                Some("That token is not right."),
            );
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            return r;
        }
    }
    let id = state.auth.new_login();
    let cookie = session_cookie(&state, &id, SESSION_TTL.as_secs());
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

pub async fn logout(State(state): State<StatusState>, headers: HeaderMap) -> Response {
    state.auth.end_login(&headers);
    let cookie = session_cookie(&state, "", 0);
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}

/// The login cookie: `Secure` when technicians come over https
/// (`status.public_url`); the value is random hex, so the header is valid.
fn session_cookie(state: &StatusState, value: &str, max_age: u64) -> HeaderValue {
    let secure = if state.guard.secure_cookies() {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}{secure}"
    ))
    .expect("cookie made of hex and fixed text")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_after_the_same_trimming_as_configured_secrets() {
        let auth = Auth::new(Some(SecretString::from("s3cret-token\n")));
        assert!(auth.token_matches("s3cret-token"));
        assert!(auth.token_matches(" s3cret-token \r\n"));
        assert!(!auth.token_matches("s3cret-toke"));
        assert!(!auth.token_matches("s3cret-token-and-more"));
        assert!(!auth.token_matches(""));
        assert!(!Auth::new(None).token_matches(""));
    }

    #[test]
    fn five_wrong_tokens_make_a_client_wait_a_minute_and_others_do_not() {
        let mut f = Failures::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        for i in 0..MAX_FAILURES as u64 {
            assert_eq!(f.wait(a, t0 + Duration::from_secs(i)), None);
            f.record(a, t0 + Duration::from_secs(i));
        }
        let wait = f.wait(a, t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(wait, Duration::from_secs(50));
        assert_eq!(f.wait(b, t0 + Duration::from_secs(10)), None);
        // A window after the first failure, one more try is allowed.
        assert_eq!(f.wait(a, t0 + Duration::from_secs(60)), None);
    }

    #[test]
    fn an_ipv6_client_is_its_64_and_a_mapped_ipv4_one_is_itself() {
        assert_eq!(
            client_key("2001:db8:1:2:aaaa::1".parse().unwrap()),
            client_key("2001:db8:1:2:bbbb::9".parse().unwrap())
        );
        assert_ne!(
            client_key("2001:db8:1:2::1".parse().unwrap()),
            client_key("2001:db8:1:3::1".parse().unwrap())
        );
        assert_eq!(
            client_key("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn the_client_table_stays_bounded() {
        let mut f = Failures::default();
        let now = Instant::now();
        for n in 0..(MAX_CLIENTS as u32 + 100) {
            f.record(IpAddr::from(n.to_be_bytes()), now);
        }
        assert!(f.by_client.len() <= MAX_CLIENTS);
    }
}
