//! A fake of the operator's upstream, as the README documents it: POST of a
//! gzip JSON batch with a bearer token and an Idempotency-Key. It behaves as
//! an idempotent receiver should (a repeated key is answered as it was the
//! first time, a refusal included, and never counted again) and injects
//! faults per request, including a dropped connection before or after it
//! has stored the batch, and what a captive portal does.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

pub const TOKEN: &str = "upstream-test-token";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 200 and store it.
    Accept,
    /// This status, nothing stored.
    Status(u16),
    /// 429 with `Retry-After: secs`.
    TooMany(u64),
    /// Close the connection without reading or answering.
    Reset,
    /// Store the batch, then close the connection without answering.
    AcceptThenDrop,
    /// Store the batch, then answer only after this long.
    AcceptSlowly(Duration),
    /// Store the batch and answer 204 with no body.
    AcceptEmpty,
    /// 429 with this `Retry-After` value, as sent.
    RetryAfter(&'static str),
    /// What a captive portal does: 200 with its HTML page, nothing stored.
    PortalPage,
    /// 302 to this Location, nothing stored.
    Redirect(&'static str),
}

#[derive(Default)]
pub struct Received {
    /// How many distinct batches each transcript id arrived in.
    pub transcripts: HashMap<String, u32>,
    pub sessions: HashMap<String, u32>,
    /// Batches stored, by Idempotency-Key, with their body.
    pub batches: HashMap<String, serde_json::Value>,
    pub requests: u64,
    /// When each request arrived, with its Idempotency-Key (if any).
    pub log: Vec<(Instant, Option<String>)>,
    /// Keys refused for their content, with the answer (replayed on a
    /// repeat of the key, as the README asks of an upstream).
    pub refused: HashMap<String, String>,
    /// Anything that breaks the documented contract.
    pub violations: Vec<String>,
}

#[derive(Default)]
struct State {
    received: Received,
    plan: VecDeque<Fault>,
    /// Used when the plan is empty.
    default: Option<Fault>,
    /// Refuse (400) any batch containing this transcript id.
    refuse_transcript: Option<String>,
}

#[derive(Clone)]
pub struct FakeUpstream {
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl FakeUpstream {
    pub async fn start() -> FakeUpstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeUpstream {
            url: format!("http://{addr}/v1/kiosk-batches"),
            state,
        }
    }

    pub fn plan(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.lock().unwrap().plan.extend(faults);
    }

    pub fn set_default(&self, fault: Fault) {
        self.state.lock().unwrap().default = Some(fault);
    }

    pub fn refuse_transcript(&self, id: Option<String>) {
        self.state.lock().unwrap().refuse_transcript = id;
    }

    pub fn with<R>(&self, f: impl FnOnce(&Received) -> R) -> R {
        f(&self.state.lock().unwrap().received)
    }
}

type Reply = Result<Response<Full<Bytes>>, std::io::Error>;

fn reply(status: u16, body: &str) -> Reply {
    Ok(Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap())
}

/// Returning an error makes hyper close the connection without a response.
fn drop_connection() -> Reply {
    Err(std::io::Error::other("fault: connection dropped"))
}

async fn handle(state: Arc<Mutex<State>>, req: Request<Incoming>) -> Reply {
    let fault = {
        let mut s = state.lock().unwrap();
        s.received.requests += 1;
        let key = req
            .headers()
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        s.received.log.push((Instant::now(), key));
        let default = s.default.unwrap_or(Fault::Accept);
        s.plan.pop_front().unwrap_or(default)
    };
    if fault == Fault::Reset {
        return drop_connection();
    }
    let headers = req.headers().clone();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return drop_connection(),
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    if header("authorization").as_deref() != Some(&format!("Bearer {TOKEN}")) {
        return reply(401, "bad token");
    }
    let mut violations = Vec::new();
    if header("content-encoding").as_deref() != Some("gzip") {
        violations.push("body not gzip-encoded".to_string());
    }
    let mut json = String::new();
    if flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut json)
        .is_err()
    {
        return reply(400, "not gzip");
    }
    let doc: serde_json::Value = match serde_json::from_str(&json) {
        Ok(d) => d,
        Err(_) => return reply(400, "not JSON"),
    };
    let Some(key) = header("idempotency-key") else {
        return reply(400, "Idempotency-Key missing");
    };
    if doc["batch_id"].as_str() != Some(key.as_str()) {
        violations.push(format!("Idempotency-Key {key} is not the batch_id"));
    }
    match fault {
        Fault::Status(code) => return reply(code, "fault injected"),
        Fault::TooMany(secs) => {
            return Ok(Response::builder()
                .status(429)
                .header("Retry-After", secs.to_string())
                .body(Full::new(Bytes::from_static(b"slow down")))
                .unwrap());
        }
        Fault::RetryAfter(value) => {
            return Ok(Response::builder()
                .status(429)
                .header("Retry-After", value)
                .body(Full::new(Bytes::from_static(b"slow down")))
                .unwrap());
        }
        Fault::PortalPage => {
            return Ok(Response::builder()
                .status(200)
                .header("Content-Type", "text/html; charset=utf-8")
                .body(Full::new(Bytes::from_static(
                    b"<!DOCTYPE html><html><head><title>Lobby Wi-Fi</title></head>\
                      <body><form action=\"/accept\">Accept the terms</form></body></html>",
                )))
                .unwrap());
        }
        Fault::Redirect(location) => {
            return Ok(Response::builder()
                .status(302)
                .header("Location", location)
                .body(Full::new(Bytes::new()))
                .unwrap());
        }
        _ => {}
    }
    {
        let mut s = state.lock().unwrap();
        s.received.violations.extend(violations);
        // A repeated key gets the answer the first one got.
        if let Some(answer) = s.received.refused.get(&key) {
            return reply(400, &answer.clone());
        }
        if let Some(refused) = &s.refuse_transcript {
            let ids = doc["transcripts"].as_array().into_iter().flatten();
            if ids.clone().any(|t| t["id"].as_str() == Some(refused)) {
                let answer = "{\"error\":\"transcript text too long\"}".to_string();
                s.received.refused.insert(key.clone(), answer.clone());
                return reply(400, &answer);
            }
        }
        match s.received.batches.get(&key) {
            Some(previous) if *previous != doc => {
                s.received
                    .violations
                    .push(format!("batch {key} resent with different content"));
            }
            Some(_) => {}
            None => {
                for t in doc["transcripts"].as_array().into_iter().flatten() {
                    *s.received
                        .transcripts
                        .entry(t["id"].as_str().unwrap().to_string())
                        .or_default() += 1;
                }
                for t in doc["sessions"].as_array().into_iter().flatten() {
                    *s.received
                        .sessions
                        .entry(t["id"].as_str().unwrap().to_string())
                        .or_default() += 1;
                }
                s.received.batches.insert(key.clone(), doc);
            }
        }
    }
    match fault {
        Fault::AcceptThenDrop => drop_connection(),
        Fault::AcceptSlowly(d) => {
            tokio::time::sleep(d).await;
            reply(200, "{\"accepted\":true}")
        }
        Fault::AcceptEmpty => reply(204, ""),
        _ => reply(200, "{\"accepted\":true}"),
    }
}
