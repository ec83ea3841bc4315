//! Who may see what on the status server. With `status.token` set,
//! everything but the health probes needs it, as a bearer header or as the
//! session cookie the login form sets. Transcripts and technician actions
//! always need it, even on loopback: they are personal data and changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Form;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::StatusState;

pub const COOKIE: &str = "kiosk_gateway_session";
/// A technician's login lasts a working day.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// The configured token and the logins made with it.
#[derive(Clone)]
pub struct Auth {
    token: Option<Arc<SecretString>>,
    sessions: Arc<Mutex<HashMap<String, Instant>>>,
}

/// What a request has proven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A valid token or login.
    Technician,
    /// No token configured, loopback only: the page without personal data.
    Anonymous,
}

impl Auth {
    pub fn new(token: Option<SecretString>) -> Self {
        Self {
            token: token.map(Arc::new),
            sessions: Arc::default(),
        }
    }

    pub fn token_configured(&self) -> bool {
        self.token.is_some()
    }

    fn token_matches(&self, offered: &str) -> bool {
        self.token.as_ref().is_some_and(|t| {
            // Constant time, so response timing reveals nothing of the token.
            bool::from(t.expose_secret().as_bytes().ct_eq(offered.as_bytes()))
        })
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

    /// What the request proves: `None` means refused.
    pub fn access(&self, headers: &HeaderMap) -> Option<Access> {
        if self.token.is_none() {
            return Some(Access::Anonymous);
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if bearer.is_some_and(|b| self.token_matches(b.trim()))
            || cookie(headers).is_some_and(|c| self.cookie_valid(&c))
        {
            Some(Access::Technician)
        } else {
            None
        }
    }
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
    match state.auth.access(req.headers()) {
        Some(access) => {
            req.extensions_mut().insert(access);
            next.run(req).await
        }
        None if wants_html(req.headers()) => Redirect::to("/login").into_response(),
        None => unauthorized(),
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
    match state.auth.access(req.headers()) {
        Some(Access::Technician) => next.run(req).await,
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

pub async fn login(State(state): State<StatusState>, Form(form): Form<LoginForm>) -> Response {
    if !state.auth.token_matches(form.token.trim()) {
        let mut r = super::page::login_response(
            &state.identity.kiosk_name,
            Some("That token is not right."),
        );
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        return r;
    }
    let id = state.auth.new_login();
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

pub async fn logout(State(state): State<StatusState>, headers: HeaderMap) -> Response {
    state.auth.end_login(&headers);
    let cookie = format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}
