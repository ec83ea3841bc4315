//! The agent's HTTP side: Pipecat's runner routes (`/start`, the
//! SmallWebRTC offer and trickle routes, bare and under `/sessions/{id}`),
//! WHIP, and answering an offer with a peer connection.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};
use webrtc::peer_connection::{RTCIceCandidateInit, RTCSessionDescription};

use super::{AgentPeer, CloudRequest, Shared, call};
use crate::error_text::error_chain;
use crate::link::peer::{Peer, PeerSignal};
use crate::link::signaling::{Candidate, PcId};

/// Serves the agent's routes on `listener` until the task is aborted.
pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let app = Router::new()
        .route("/start", post(start_session))
        .route("/api/offer", post(offer).patch(trickle))
        .route(
            "/sessions/{id}/api/offer",
            post(session_offer).patch(session_trickle),
        )
        .route("/whip", post(whip_create))
        .route("/whip/{id}", patch(whip_patch).delete(whip_delete))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app).await {
        warn!(error = %error_chain(&e), "loopback agent server stopped");
    }
}

#[derive(Deserialize)]
struct OfferRequest {
    sdp: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    pc_id: Option<PcId>,
    #[serde(default)]
    restart_pc: Option<bool>,
    #[serde(default, alias = "requestData")]
    request_data: Option<Value>,
}

#[derive(Serialize)]
struct Answer {
    sdp: String,
    #[serde(rename = "type")]
    kind: &'static str,
    pc_id: PcId,
}

#[derive(Deserialize)]
struct PatchRequest {
    pc_id: PcId,
    candidates: Vec<Candidate>,
}

type HttpError = (StatusCode, String);

const SDP: &str = "application/sdp";

fn internal(e: impl std::fmt::Display) -> HttpError {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// Records a Pipecat-Cloud-like request and refuses it without the key.
fn admit(
    shared: &Shared,
    method: &'static str,
    path: String,
    headers: &HeaderMap,
) -> Result<(), HttpError> {
    let authorized = shared.config.api_key.as_ref().is_none_or(|key| {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            == Some(key.as_str())
    });
    shared.record().cloud_requests.push(CloudRequest {
        method,
        path,
        authorized,
    });
    if authorized {
        Ok(())
    } else {
        Err((StatusCode::UNAUTHORIZED, "missing or wrong API key".into()))
    }
}

async fn start_session(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, HttpError> {
    admit(&shared, "POST", "/start".into(), &headers)?;
    let body = body.map(|Json(v)| v).unwrap_or(Value::Null);
    shared.record().start_requests.push(body);
    Ok(Json(
        json!({"sessionId": format!("loopback-{:08x}", rand::random::<u32>())}),
    ))
}

async fn session_offer(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    req: Json<OfferRequest>,
) -> Result<Json<Answer>, HttpError> {
    admit(
        &shared,
        "POST",
        format!("/sessions/{id}/api/offer"),
        &headers,
    )?;
    offer(State(shared), req).await
}

async fn session_trickle(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    req: Json<PatchRequest>,
) -> Result<StatusCode, HttpError> {
    admit(
        &shared,
        "PATCH",
        format!("/sessions/{id}/api/offer"),
        &headers,
    )?;
    trickle(State(shared), req).await
}

async fn offer(
    State(shared): State<Arc<Shared>>,
    Json(req): Json<OfferRequest>,
) -> Result<Json<Answer>, HttpError> {
    if req.kind != "offer" {
        return Err((StatusCode::BAD_REQUEST, "type must be \"offer\"".into()));
    }
    if let Some(data) = &req.request_data {
        debug!(%data, "request data with the offer");
    }
    let restart = req.restart_pc.unwrap_or(false);
    let (pc_id, sdp) = answer(&shared, req.pc_id, req.sdp, restart).await?;
    Ok(Json(Answer {
        sdp,
        kind: "answer",
        pc_id,
    }))
}

/// Answers an offer: renegotiates a live connection with the same id, or
/// (new id, or `restart`) replaces it with a new peer connection, as
/// Pipecat's SmallWebRTC transport does.
async fn answer(
    shared: &Arc<Shared>,
    pc_id: Option<PcId>,
    offer_sdp: String,
    restart: bool,
) -> Result<(PcId, String), HttpError> {
    {
        let mut record = shared.record();
        record.offers += 1;
        record.restarts += u32::from(restart);
    }
    #[cfg(feature = "testkit")]
    let offer_sdp = super::relay::offer_behind_relay(&shared.config, offer_sdp);
    let offer = RTCSessionDescription::offer(offer_sdp)
        .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    let mut sessions = shared.sessions.lock().await;
    if let Some(pc_id) = &pc_id
        && !restart
        && let Some(existing) = sessions.get(pc_id)
    {
        let pc = &existing.peer.pc;
        pc.set_remote_description(offer).await.map_err(internal)?;
        let answer = pc.create_answer(None).await.map_err(internal)?;
        pc.set_local_description(answer).await.map_err(internal)?;
        let sdp = pc
            .local_description()
            .await
            .ok_or_else(|| internal("no answer"))?
            .sdp;
        return Ok((pc_id.clone(), existing.public_sdp(sdp)));
    }
    let pc_id = pc_id.unwrap_or_else(|| PcId(format!("loopback-{:016x}", rand::random::<u64>())));
    if let Some(old) = sessions.remove(&pc_id) {
        old.cancel.cancel();
        old.peer.pc.close().await.ok();
    }
    let (peer, mut signals) = Peer::build(&shared.peer_config, rand::random())
        .await
        .map_err(internal)?;
    let pc = &peer.pc;
    pc.set_remote_description(offer).await.map_err(internal)?;
    let answer = pc.create_answer(None).await.map_err(internal)?;
    pc.set_local_description(answer).await.map_err(internal)?;
    let gathered = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(s) = signals.recv().await {
            if matches!(s, PeerSignal::GatheringComplete) {
                break;
            }
        }
    })
    .await;
    if gathered.is_err() {
        debug!("answer sent before ICE gathering completed");
    }
    let sdp = pc
        .local_description()
        .await
        .ok_or_else(|| internal("no answer"))?
        .sdp;
    let cancel = CancellationToken::new();
    let peer = Arc::new(peer);
    let (renegotiate, renegotiate_rx) = mpsc::channel(1);
    let session = AgentPeer {
        peer: Arc::clone(&peer),
        cancel: cancel.clone(),
        #[cfg(feature = "testkit")]
        relay: super::relay::Relay::for_answer(shared, &sdp, &cancel)
            .await
            .map_err(internal)?,
        renegotiate,
    };
    let sdp = session.public_sdp(sdp);
    // The call's logs carry its id, so a test can tell its lines from
    // those of a call before it.
    tokio::spawn(
        call::run(peer, signals, Arc::clone(shared), cancel, renegotiate_rx)
            .instrument(info_span!("call", %pc_id)),
    );
    sessions.insert(pc_id.clone(), session);
    info!(%pc_id, restart, "loopback agent answered an offer");
    Ok((pc_id, sdp))
}

async fn trickle(
    State(shared): State<Arc<Shared>>,
    Json(req): Json<PatchRequest>,
) -> Result<StatusCode, HttpError> {
    add_candidates(&shared, &req.pc_id, req.candidates).await
}

async fn add_candidates(
    shared: &Shared,
    pc_id: &PcId,
    candidates: Vec<Candidate>,
) -> Result<StatusCode, HttpError> {
    let sessions = shared.sessions.lock().await;
    let session = sessions
        .get(pc_id)
        .ok_or((StatusCode::NOT_FOUND, "Peer connection not found".into()))?;
    if !session.behind_relay() {
        for c in &candidates {
            session
                .peer
                .pc
                .add_ice_candidate(RTCIceCandidateInit {
                    candidate: c.candidate.clone(),
                    sdp_mid: Some(c.sdp_mid.clone()),
                    sdp_mline_index: Some(c.sdp_mline_index),
                    ..Default::default()
                })
                .await
                .map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
        }
    }
    shared.record().trickled.extend(candidates);
    Ok(StatusCode::NO_CONTENT)
}

/// WHIP `POST`: `application/sdp` offer → `201 Created`, `Location`, answer.
async fn whip_create(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: String,
) -> Result<Response, HttpError> {
    if headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        != Some(SDP)
    {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected application/sdp".into(),
        ));
    }
    let (pc_id, sdp) = answer(&shared, None, body, false).await?;
    Ok((
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, SDP.to_owned()),
            (header::LOCATION, format!("/whip/{pc_id}")),
        ],
        sdp,
    )
        .into_response())
}

/// WHIP `PATCH`: trickled candidates as an `application/trickle-ice-sdpfrag`.
async fn whip_patch(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: String,
) -> Result<StatusCode, HttpError> {
    let mut mid = String::from("0");
    let mut candidates = Vec::new();
    for line in body.lines() {
        if let Some(m) = line.strip_prefix("a=mid:") {
            mid = m.trim().to_owned();
        } else if let Some(c) = line.strip_prefix("a=")
            && c.starts_with("candidate:")
        {
            candidates.push(Candidate {
                candidate: c.trim().to_owned(),
                sdp_mid: mid.clone(),
                sdp_mline_index: 0,
            });
        }
    }
    add_candidates(&shared, &PcId(id), candidates).await
}

/// WHIP `DELETE`: ends the session.
async fn whip_delete(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> StatusCode {
    match shared.sessions.lock().await.remove(&PcId(id)) {
        Some(session) => {
            session.cancel.cancel();
            shared.record().whip_deleted += 1;
            StatusCode::OK
        }
        None => StatusCode::NOT_FOUND,
    }
}
