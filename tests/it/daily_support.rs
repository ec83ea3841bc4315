//! An in-process fake of the Daily REST API (and of an agent start endpoint)
//! on 127.0.0.1. It checks auth, paths and bodies against Daily's documented
//! shapes, keeps rooms in memory, logs every request and injects faults.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde_json::{Value, json};

pub const API_KEY: &str = "test-daily-key-do-not-log";

fn fixture(name: &str) -> Value {
    let path = format!("{}/fixtures/daily/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A fault served instead of the real answer.
#[derive(Clone, Debug)]
pub enum Fault {
    RateLimited { retry_after_secs: u64 },
    ServerError,
    Slow(Duration),
    MalformedJson,
}

#[derive(Clone, Debug)]
pub struct Logged {
    pub method: Method,
    pub path: String,
}

#[derive(Default)]
pub struct FakeState {
    pub rooms: HashMap<String, Value>,
    /// Faults per path prefix (`"POST /rooms"`), consumed one per request.
    pub faults: Vec<(String, VecDeque<Fault>)>,
    pub log: Vec<Logged>,
    pub tokens_issued: Vec<Value>,
    /// What the agent start endpoint returns (status, body).
    pub agent_start_reply: Option<(StatusCode, Value)>,
    pub agent_start_bodies: Vec<(HeaderMap, Value)>,
    /// Every room created and every room deleted, in order, so a test can
    /// tell that none was left behind.
    pub created: Vec<String>,
    pub deleted: Vec<String>,
    /// What a room created with `properties.sip` gets as
    /// `config.sip_uri.endpoint` (Daily's documented shape); a made-up
    /// `sip:…@example.sip.daily.co` when unset.
    pub sip_endpoint: Option<String>,
    pub transcription: TranscriptionFake,
}

#[derive(Clone)]
pub struct FakeDaily {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<FakeState>>,
}

impl FakeDaily {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(FakeState::default()));
        let app = Router::new()
            .route("/v1/rooms", get(list_rooms).post(create_room))
            .route("/v1/rooms/{name}", get(get_room).delete(delete_room))
            .route("/v1/rooms/{name}/presence", get(presence))
            .route("/v1/meeting-tokens", post(create_token))
            .route("/agent/start", any(agent_start))
            .merge(transcription_routes())
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, state }
    }

    pub fn base_url(&self) -> url::Url {
        format!("http://{}/v1", self.addr).parse().unwrap()
    }

    pub fn agent_start_url(&self) -> url::Url {
        format!("http://{}/agent/start", self.addr).parse().unwrap()
    }

    pub fn inject(&self, route: &str, faults: impl IntoIterator<Item = Fault>) {
        self.state
            .lock()
            .unwrap()
            .faults
            .push((route.to_owned(), faults.into_iter().collect()));
    }

    pub fn count(&self, method: Method, path: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .log
            .iter()
            .filter(|l| l.method == method && l.path == path)
            .count()
    }

    /// (created, deleted) room names, in order.
    pub fn room_history(&self) -> (Vec<String>, Vec<String>) {
        let s = self.state.lock().unwrap();
        (s.created.clone(), s.deleted.clone())
    }

    pub fn room_names(&self) -> Vec<String> {
        self.state.lock().unwrap().rooms.keys().cloned().collect()
    }
}

type Shared = Arc<Mutex<FakeState>>;

fn daily_error(status: StatusCode, error: &str, info: &str) -> Response {
    (status, axum::Json(json!({"error": error, "info": info}))).into_response()
}

/// Logs the request, checks the bearer key and applies any injected fault.
async fn gate(state: &Shared, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<Response> {
    let path = uri.path().to_owned();
    let fault = {
        let mut s = state.lock().unwrap();
        s.log.push(Logged {
            method: method.clone(),
            path: path.clone(),
        });
        let key = format!("{method} {path}");
        s.faults
            .iter_mut()
            .find(|(route, q)| key.starts_with(route.as_str()) && !q.is_empty())
            .and_then(|(_, q)| q.pop_front())
    };
    match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        None => {
            return Some(daily_error(
                StatusCode::BAD_REQUEST,
                "authorization-header-error",
                "missing Authorization header",
            ));
        }
        Some(v) if v != format!("Bearer {API_KEY}") => {
            return Some(
                (
                    StatusCode::UNAUTHORIZED,
                    axum::Json(fixture("error_authentication.json")),
                )
                    .into_response(),
            );
        }
        Some(_) => {}
    }
    match fault? {
        Fault::RateLimited { retry_after_secs } => Some(
            (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", retry_after_secs.to_string())],
                axum::Json(fixture("error_rate_limit.json")),
            )
                .into_response(),
        ),
        Fault::ServerError => Some(daily_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server-error",
            "unexpected error",
        )),
        Fault::Slow(d) => {
            tokio::time::sleep(d).await;
            None
        }
        Fault::MalformedJson => Some(
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                "{\"name\": \"kiosk-",
            )
                .into_response(),
        ),
    }
}

fn room_json(name: &str, privacy: &str, properties: &Value) -> Value {
    let mut room = fixture("room.json");
    room["name"] = json!(name);
    room["url"] = json!(format!("https://example.daily.co/{name}"));
    room["privacy"] = json!(privacy);
    room["config"] = properties.clone();
    room
}

async fn create_room(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = gate(&state, &method, &uri, &headers).await {
        return r;
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return daily_error(StatusCode::BAD_REQUEST, "json-parsing-error", "bad JSON");
    };
    let name = req["name"].as_str().unwrap_or_default().to_owned();
    let privacy = req["privacy"].as_str().unwrap_or("public").to_owned();
    let props = req["properties"].clone();
    let valid = !name.is_empty()
        && matches!(privacy.as_str(), "public" | "private")
        && props["exp"].is_i64()
        && props["max_participants"].is_u64()
        && props["eject_at_room_exp"].is_boolean()
        && props["enable_chat"].is_boolean();
    let sip = &props["sip"];
    let sip_valid = sip.is_null()
        || (sip["sip_mode"] == "dial-in"
            && sip["display_name"].is_string()
            && sip["video"].is_boolean()
            && sip["num_endpoints"].as_u64().is_some_and(|n| n >= 1));
    if !valid || !sip_valid {
        return daily_error(
            StatusCode::BAD_REQUEST,
            "invalid-request-error",
            &format!("unexpected create-room body: {req}"),
        );
    }
    let mut s = state.lock().unwrap();
    if s.rooms.contains_key(&name) {
        return daily_error(
            StatusCode::BAD_REQUEST,
            "invalid-request-error",
            &format!("a room named {name} already exists"),
        );
    }
    let mut room = room_json(&name, &privacy, &props);
    if !sip.is_null() {
        let endpoint = s
            .sip_endpoint
            .clone()
            .unwrap_or_else(|| "sip:123456780@example.sip.daily.co".into());
        room["config"]["sip_uri"] = json!({ "endpoint": endpoint });
    }
    s.created.push(name.clone());
    s.rooms.insert(name, room.clone());
    axum::Json(room).into_response()
}

async fn list_rooms(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gate(&state, &method, &uri, &headers).await {
        return r;
    }
    let s = state.lock().unwrap();
    let data: Vec<Value> = s.rooms.values().cloned().collect();
    axum::Json(json!({"total_count": data.len(), "data": data})).into_response()
}

async fn get_room(
    State(state): State<Shared>,
    Path(name): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gate(&state, &method, &uri, &headers).await {
        return r;
    }
    match state.lock().unwrap().rooms.get(&name) {
        Some(room) => axum::Json(room.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(fixture("error_not_found.json")),
        )
            .into_response(),
    }
}

async fn delete_room(
    State(state): State<Shared>,
    Path(name): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gate(&state, &method, &uri, &headers).await {
        return r;
    }
    let mut s = state.lock().unwrap();
    match s.rooms.remove(&name) {
        Some(_) => {
            s.deleted.push(name.clone());
            axum::Json(json!({"deleted": true, "name": name})).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(fixture("error_not_found.json")),
        )
            .into_response(),
    }
}

async fn presence(
    State(state): State<Shared>,
    Path(name): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gate(&state, &method, &uri, &headers).await {
        return r;
    }
    if !state.lock().unwrap().rooms.contains_key(&name) {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(fixture("error_not_found.json")),
        )
            .into_response();
    }
    let mut p = fixture("presence.json");
    p["data"][0]["room"] = json!(name);
    axum::Json(p).into_response()
}

async fn create_token(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = gate(&state, &method, &uri, &headers).await {
        return r;
    }
    let req: Value = serde_json::from_slice(&body).unwrap_or_default();
    let p = &req["properties"];
    let mut s = state.lock().unwrap();
    let room_ok = p["room_name"]
        .as_str()
        .is_some_and(|n| s.rooms.contains_key(n));
    if !room_ok || !p["exp"].is_i64() || !p["is_owner"].is_boolean() || !p["user_id"].is_string() {
        return daily_error(
            StatusCode::BAD_REQUEST,
            "invalid-request-error",
            &format!("unexpected meeting-token body: {req}"),
        );
    }
    s.tokens_issued.push(p.clone());
    let n = s.tokens_issued.len();
    axum::Json(json!({"token": format!("token-{n}-{}", p["user_id"].as_str().unwrap())}))
        .into_response()
}

async fn agent_start(
    State(state): State<Shared>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Like a real start endpoint: only POST starts anything.
    if method != Method::POST {
        return StatusCode::METHOD_NOT_ALLOWED.into_response();
    }
    let mut s = state.lock().unwrap();
    s.agent_start_bodies.push((
        headers,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    ));
    match &s.agent_start_reply {
        Some((status, body)) => (*status, axum::Json(body.clone())).into_response(),
        None => (StatusCode::OK, axum::Json(json!({"sessionId": "sess-1"}))).into_response(),
    }
}

// Transcription: `/rooms/:name/transcription/{start,stop}`, `/transcript`,
// `/transcript/:id/access-link` and the pre-signed file link, which is
// served from `/files/` on the same server without the API key.

/// A stored transcript in the fake.
#[derive(Clone, Debug)]
pub struct FakeTranscript {
    pub id: String,
    pub room_id: String,
    pub status: &'static str,
}

#[derive(Default)]
pub struct TranscriptionFake {
    pub transcripts: Vec<FakeTranscript>,
    /// List calls that still see every transcript as `t_in_progress`.
    pub not_ready_polls: u32,
    /// What the file link serves instead of `transcript.vtt`.
    pub vtt: Option<Vec<u8>>,
    /// Faults of the file link (only `ServerError` and `Slow`).
    pub file_faults: VecDeque<Fault>,
    /// The Authorization header of each download, if it had one.
    pub download_auth: Vec<Option<String>>,
}

fn transcription_routes() -> Router<Shared> {
    Router::new()
        .route(
            "/v1/rooms/{name}/transcription/{action}",
            post(transcription_action),
        )
        .route("/v1/transcript", get(list_transcripts))
        .route("/v1/transcript/{id}/access-link", get(transcript_link))
        .route("/files/{file}", get(transcript_file))
}

impl FakeDaily {
    /// List calls answer "in progress" this many times first.
    pub fn transcript_not_ready_for(&self, polls: u32) {
        self.state.lock().unwrap().transcription.not_ready_polls = polls;
    }

    pub fn serve_vtt(&self, body: &[u8]) {
        self.state.lock().unwrap().transcription.vtt = Some(body.to_vec());
    }

    pub fn inject_file(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state
            .lock()
            .unwrap()
            .transcription
            .file_faults
            .extend(faults);
    }

    pub fn transcripts(&self) -> Vec<FakeTranscript> {
        self.state.lock().unwrap().transcription.transcripts.clone()
    }

    pub fn download_auth(&self) -> Vec<Option<String>> {
        self.state
            .lock()
            .unwrap()
            .transcription
            .download_auth
            .clone()
    }
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(fixture("error_not_found.json")),
    )
        .into_response()
}

async fn transcription_action(
    State(state): State<Shared>,
    Path((name, action)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gate(&state, &method, &uri, &headers).await {
        return r;
    }
    let mut s = state.lock().unwrap();
    let Some(room_id) = s
        .rooms
        .get(&name)
        .map(|r| r["id"].as_str().unwrap().to_owned())
    else {
        return not_found();
    };
    let t = &mut s.transcription.transcripts;
    let running = t
        .iter_mut()
        .find(|t| t.room_id == room_id && t.status == "t_in_progress");
    match (action.as_str(), running) {
        ("start", None) => {
            let n = t.len();
            t.push(FakeTranscript {
                id: format!("0cb313e1-211f-4be0-833d-{n:012}"),
                room_id,
                status: "t_in_progress",
            });
            axum::Json(json!({})).into_response()
        }
        // The reference documents no reply body for stop: send none.
        ("stop", Some(running)) => {
            running.status = "t_finished";
            StatusCode::OK.into_response()
        }
        ("start", Some(_)) => daily_error(
            StatusCode::BAD_REQUEST,
            "invalid-request-error",
            "transcription already started",
        ),
        ("stop", None) => daily_error(
            StatusCode::BAD_REQUEST,
            "invalid-request-error",
            "no transcription is running",
        ),
        _ => not_found(),
    }
}

async fn list_transcripts(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gate(&state, &method, &uri, &headers).await {
        return r;
    }
    let room_id = uri.query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "roomId")
            .map(|(_, v)| v.into_owned())
    });
    let mut s = state.lock().unwrap();
    let not_ready = s.transcription.not_ready_polls > 0;
    if not_ready {
        s.transcription.not_ready_polls -= 1;
    }
    let template = fixture("transcript_list.json")["data"][0].clone();
    let data: Vec<Value> = s
        .transcription
        .transcripts
        .iter()
        .rev()
        .filter(|t| room_id.as_ref().is_none_or(|r| *r == t.room_id))
        .map(|t| {
            let mut v = template.clone();
            v["transcriptId"] = json!(t.id);
            v["roomId"] = json!(t.room_id);
            v["status"] = json!(if not_ready { "t_in_progress" } else { t.status });
            v
        })
        .collect();
    axum::Json(json!({"total_count": data.len(), "data": data})).into_response()
}

async fn transcript_link(
    State(state): State<Shared>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gate(&state, &method, &uri, &headers).await {
        return r;
    }
    let s = state.lock().unwrap();
    if !s.transcription.transcripts.iter().any(|t| t.id == id) {
        return not_found();
    }
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let mut reply = fixture("transcript_access_link.json");
    reply["transcriptId"] = json!(id);
    reply["download_link"] = json!(format!(
        "http://{host}/files/{id}.vtt?X-Amz-Signature=presigned-secret"
    ));
    axum::Json(reply).into_response()
}

async fn transcript_file(
    State(state): State<Shared>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (fault, body) = {
        let mut s = state.lock().unwrap();
        let t = &mut s.transcription;
        t.download_auth.push(
            headers
                .get("authorization")
                .map(|v| v.to_str().unwrap_or("?").to_owned()),
        );
        let id = file.trim_end_matches(".vtt");
        if !t.transcripts.iter().any(|x| x.id == id) {
            return StatusCode::FORBIDDEN.into_response();
        }
        let body = t.vtt.clone().unwrap_or_else(|| {
            std::fs::read(format!(
                "{}/fixtures/daily/transcript.vtt",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        });
        (t.file_faults.pop_front(), body)
    };
    match fault {
        Some(Fault::Slow(d)) => tokio::time::sleep(d).await,
        Some(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        None => {}
    }
    ([("content-type", "text/vtt")], body).into_response()
}
