//! Server-rendered HTML (askama templates in `templates/`). No external
//! assets: a kiosk may be offline. Scripts and styles are inline and
//! allowed by a per-response nonce in a strict Content-Security-Policy.

use askama::Template;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse, Response};
use rand::RngCore;

use super::api::{SessionDoc, StatusDoc, session_doc, status_doc};
use super::history::history_doc;
use super::verdict::Overall;
use super::view::PageView;
use super::words;
use super::{Access, StatusState};

#[derive(Template)]
#[template(path = "status.html")]
struct StatusPage<'a> {
    doc: &'a StatusDoc,
    view: &'a PageView,
    nonce: &'a str,
}

/// The page's body alone, which its script fetches to refresh itself.
#[derive(Template)]
#[template(path = "status_main.html")]
struct StatusPart<'a> {
    doc: &'a StatusDoc,
    view: &'a PageView,
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    kiosk_name: &'a str,
    error: Option<&'a str>,
    nonce: &'a str,
}

#[derive(Template)]
#[template(path = "session.html")]
struct SessionPage<'a> {
    kiosk_name: &'a str,
    doc: &'a SessionDoc,
    /// The session's facts in the kiosk's local time and plain words.
    started: String,
    ended: String,
    end_reason: &'static str,
    speech: String,
    /// Each line's local time, in `doc.transcripts` order.
    spoken: Vec<String>,
    nonce: &'a str,
}

fn nonce() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The page with its CSP: only this response's inline script and style
/// run, only same-origin requests are made.
fn with_csp(body: String, nonce: &str) -> Response {
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    let mut response = Html(body).into_response();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        response
            .headers_mut()
            .insert(header::CONTENT_SECURITY_POLICY, v);
    }
    response
}

fn render(t: &impl Template) -> String {
    t.render()
        .unwrap_or_else(|e| format!("<!doctype html><title>error</title><p>page error: {e}"))
}

/// What the page and its refresh both show: the status and its words.
async fn page_view(state: &StatusState, access: Access) -> (StatusDoc, PageView) {
    let doc = status_doc(state, access).await;
    let history = history_doc(state, jiff::Timestamp::now()).await;
    let view = PageView::new(&doc, &history, state.mic_level(), &state.clock);
    (doc, view)
}

pub async fn status(
    State(state): State<StatusState>,
    Extension(access): Extension<Access>,
) -> Response {
    let (doc, view) = page_view(&state, access).await;
    let nonce = nonce();
    with_csp(
        render(&StatusPage {
            doc: &doc,
            view: &view,
            nonce: &nonce,
        }),
        &nonce,
    )
}

/// `GET /part/status`: the page's body for its own refresh.
pub async fn status_part(
    State(state): State<StatusState>,
    Extension(access): Extension<Access>,
) -> Response {
    let (doc, view) = page_view(&state, access).await;
    // Inserted into the page, whose CSP governs it; it carries no script
    // and gets the server's default `default-src 'none'`.
    Html(render(&StatusPart {
        doc: &doc,
        view: &view,
    }))
    .into_response()
}

pub fn login_response(kiosk_name: &str, error: Option<&str>) -> Response {
    let nonce = nonce();
    let body = render(&LoginPage {
        kiosk_name,
        error,
        nonce: &nonce,
    });
    with_csp(body, &nonce)
}

pub async fn session(State(state): State<StatusState>, Path(id): Path<String>) -> Response {
    match session_doc(&state, &id).await {
        Ok(doc) => {
            let nonce = nonce();
            let now = jiff::Timestamp::now();
            let clock = &state.clock;
            let s = &doc.session;
            let page = SessionPage {
                kiosk_name: &state.identity.kiosk_name,
                started: clock.ago_at(s.started_at, now),
                ended: match s.ended_at {
                    Some(t) => format!(
                        "{}, after {}",
                        clock.ago_at(t, now),
                        words::duration(words::secs_between(s.started_at, t))
                    ),
                    None => "in progress".into(),
                },
                end_reason: s.end_reason.as_deref().map_or("—", words::end_reason),
                speech: format!(
                    "visitor {}, assistant {}",
                    words::duration(s.user_speech_ms / 1000),
                    words::duration(s.bot_speech_ms / 1000)
                ),
                spoken: doc
                    .transcripts
                    .iter()
                    .map(|t| clock.time(t.spoken_at, now))
                    .collect(),
                doc: &doc,
                nonce: &nonce,
            };
            with_csp(render(&page), &nonce)
        }
        Err(r) => r,
    }
}
