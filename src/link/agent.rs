//! The built-in loopback agent: a SmallWebRTC endpoint on 127.0.0.1 with a
//! real WebRTC answerer. It decodes what it hears, finds utterances with an
//! energy VAD, answers each with RTVI messages and a fixture reply played
//! over its audio track, and records what it received.
//!
//! Routes: `POST /start` (→ `{"sessionId"}`), `POST|PATCH /api/offer` and
//! `POST|PATCH /sessions/{id}/api/offer`, the shapes Pipecat's runner uses.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use url::Url;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{RTCIceCandidateInit, RTCPeerConnectionState, RTCSessionDescription};

use super::media::{self, Decoder, Encoder, EnergyVad, FRAME_DURATION, FRAME_SAMPLES, VadEdge};
use super::peer::{Peer, PeerConfig, PeerSignal};
use super::rtvi::{
    self, BotMessage, BotOutput, BotTextKind, ClientMessage, Inbound, PROTOCOL_VERSION,
    SpokenStatus,
};
use super::signaling::{Candidate, PcId};
use super::{OpusFrame, RtpClock};

/// How the loopback agent behaves.
#[derive(Clone, Debug)]
pub struct LoopbackAgentConfig {
    /// HTTP listen address.
    pub bind: SocketAddr,
    /// UDP address for the agent's ICE.
    pub udp_bind: String,
    /// What the agent says after each utterance (48 kHz mono).
    pub reply: Vec<i16>,
    pub vad_threshold_dbfs: f64,
    pub vad_onset: Duration,
    /// Silence that ends an utterance.
    pub vad_hangover: Duration,
    /// Put a UDP relay in the media path so tests can cut the network
    /// ([`LoopbackAgent::cut_network`]).
    pub simulate_network: bool,
    /// As Pipecat Cloud: `/start` and `/sessions/{id}/api/offer` answer 401
    /// unless they carry `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Test tool: the first reply of each call slips in what a broken or
    /// hostile agent might send (see `HostileAudio` in this module).
    pub hostile: bool,
}

impl LoopbackAgentConfig {
    pub fn new(reply: Vec<i16>) -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            udp_bind: "127.0.0.1:0".into(),
            reply,
            vad_threshold_dbfs: -44.0,
            vad_onset: Duration::from_millis(200),
            vad_hangover: Duration::from_millis(400),
            simulate_network: false,
            api_key: None,
            hostile: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("loopback agent cannot listen: {0}")]
    Bind(#[from] std::io::Error),
}

/// What the agent observed, for tests and self-tests.
#[derive(Clone, Debug, Default)]
pub struct AgentRecord {
    /// Everything decoded from the kiosk (48 kHz mono) on the sender's
    /// timeline: gaps (lost packets, DTX) are filled with silence, up to 10 s each.
    pub received: Vec<i16>,
    /// RTP packets of the kiosk's audio that arrived and decoded.
    pub packets_received: u64,
    /// When the `hostile` packets of each call had all been sent.
    pub hostile_sent: Vec<Instant>,
    /// When each of them arrived, in ms since the agent started.
    pub packet_arrivals_ms: Vec<u64>,
    pub client_messages: Vec<ClientMessage>,
    pub utterances: Vec<Duration>,
    pub start_requests: Vec<Value>,
    /// Every request to `/start` and `/sessions/...`, in order.
    pub cloud_requests: Vec<CloudRequest>,
    pub offers: u32,
    pub restarts: u32,
    pub trickled: Vec<Candidate>,
    pub whip_deleted: u32,
}

/// A request to the Pipecat-Cloud-like routes, without its secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudRequest {
    pub method: &'static str,
    pub path: String,
    /// It carried `Authorization: Bearer <api_key>` (always true without a key).
    pub authorized: bool,
}

struct Shared {
    config: LoopbackAgentConfig,
    started: Instant,
    peer_config: PeerConfig,
    record: Mutex<AgentRecord>,
    sessions: tokio::sync::Mutex<HashMap<PcId, AgentPeer>>,
    cut_until: Arc<Mutex<Option<Instant>>>,
}

struct AgentPeer {
    peer: Arc<Peer>,
    cancel: CancellationToken,
    relay: Option<Relay>,
    /// Asks the session to send a `renegotiate` signalling message.
    renegotiate: mpsc::Sender<()>,
}

/// A running loopback agent; stops when dropped.
pub struct LoopbackAgent {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl LoopbackAgent {
    pub async fn start(config: LoopbackAgentConfig) -> Result<Self, AgentError> {
        let listener = tokio::net::TcpListener::bind(config.bind).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            peer_config: PeerConfig {
                ice_servers: vec![],
                udp_bind: vec![config.udp_bind.clone()],
                ice_disconnected_timeout: Duration::from_secs(2),
                ice_failed_timeout: Duration::from_secs(6),
                ice_keepalive_interval: Duration::from_millis(500),
            },
            config,
            started: Instant::now(),
            record: Mutex::new(AgentRecord::default()),
            sessions: tokio::sync::Mutex::new(HashMap::new()),
            cut_until: Arc::new(Mutex::new(None)),
        });
        let app = Router::new()
            .route("/start", post(start_session))
            .route("/api/offer", post(offer).patch(trickle))
            .route(
                "/sessions/{id}/api/offer",
                post(session_offer).patch(session_trickle),
            )
            .route("/whip", post(whip_create))
            .route("/whip/{id}", patch(whip_patch).delete(whip_delete))
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                warn!(error = %e, "loopback agent server stopped");
            }
        });
        info!(%addr, "loopback agent listening");
        Ok(Self {
            addr,
            shared,
            server,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn offer_url(&self) -> Url {
        Url::parse(&format!("http://{}/api/offer", self.addr)).expect("valid URL")
    }

    /// The WHIP endpoint of the same agent.
    pub fn whip_url(&self) -> Url {
        Url::parse(&format!("http://{}/whip", self.addr)).expect("valid URL")
    }

    pub fn start_url(&self) -> Url {
        Url::parse(&format!("http://{}/start", self.addr)).expect("valid URL")
    }

    /// A copy of what the agent observed so far.
    pub fn record(&self) -> AgentRecord {
        self.shared.record.lock().expect("record lock").clone()
    }

    /// Ends every call as Pipecat does when the bot leaves: `peerLeft`
    /// on the data channel, then closing the connection.
    /// Drops every media packet both ways for `duration` (needs
    /// `simulate_network`): the agent simply stops answering.
    pub fn cut_network(&self, duration: Duration) {
        *self.shared.cut_until.lock().expect("cut lock") = Some(Instant::now() + duration);
    }

    /// Asks every connected kiosk for a fresh offer on the same `pc_id`.
    pub async fn request_renegotiation(&self) {
        for s in self.shared.sessions.lock().await.values() {
            let _ = s.renegotiate.try_send(());
        }
    }

    pub async fn hang_up_all(&self) {
        for (_, s) in self.shared.sessions.lock().await.drain() {
            s.cancel.cancel();
        }
    }
}

impl Drop for LoopbackAgent {
    fn drop(&mut self) {
        self.server.abort();
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
    shared
        .record
        .lock()
        .expect("record lock")
        .cloud_requests
        .push(CloudRequest {
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
    shared
        .record
        .lock()
        .expect("record lock")
        .start_requests
        .push(body);
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
        let mut record = shared.record.lock().expect("record lock");
        record.offers += 1;
        record.restarts += u32::from(restart);
    }
    let simulate = shared.config.simulate_network;
    // Behind the relay the agent must only learn the kiosk's address from
    // packets that came through the relay.
    let offer_sdp = if simulate {
        strip_candidates(&offer_sdp)
    } else {
        offer_sdp
    };
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
        let sdp = match &existing.relay {
            Some(relay) => relay.rewrite(&sdp),
            None => sdp,
        };
        return Ok((pc_id.clone(), sdp));
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
    let relay = if simulate {
        Some(
            Relay::start(&sdp, Arc::clone(&shared.cut_until), cancel.clone())
                .await
                .map_err(internal)?,
        )
    } else {
        None
    };
    let sdp = match &relay {
        Some(relay) => relay.rewrite(&sdp),
        None => sdp,
    };
    let peer = Arc::new(peer);
    let (renegotiate, renegotiate_rx) = mpsc::channel(1);
    tokio::spawn(run_session(
        Arc::clone(&peer),
        signals,
        Arc::clone(shared),
        cancel.clone(),
        renegotiate_rx,
    ));
    sessions.insert(
        pc_id.clone(),
        AgentPeer {
            peer,
            cancel,
            relay,
            renegotiate,
        },
    );
    info!(%pc_id, restart, "loopback agent answered an offer");
    Ok((pc_id, sdp))
}

fn strip_candidates(sdp: &str) -> String {
    sdp.split("\r\n")
        .filter(|l| !l.starts_with("a=candidate:") && !l.starts_with("a=end-of-candidates"))
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// A UDP relay between the kiosk and the agent's peer connection, so a
/// network cut can be simulated: while cut, packets both ways are dropped,
/// exactly what a dead uplink looks like to ICE (no close, no error).
struct Relay {
    /// The agent's own candidate address, replaced in its answers.
    agent: SocketAddr,
    /// Where the kiosk sends to.
    public: SocketAddr,
}

impl Relay {
    async fn start(
        answer_sdp: &str,
        cut_until: Arc<Mutex<Option<Instant>>>,
        cancel: CancellationToken,
    ) -> std::io::Result<Self> {
        let agent = answer_sdp
            .lines()
            .filter(|l| {
                l.starts_with("a=candidate:") && (l.contains(" udp ") || l.contains(" UDP "))
            })
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                format!("{}:{}", f.get(4)?, f.get(5)?).parse().ok()
            })
            .ok_or_else(|| std::io::Error::other("no UDP candidate in the answer"))?;
        let outer = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let inner = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let public = outer.local_addr()?;
        tokio::spawn(async move {
            let mut kiosk: Option<SocketAddr> = None;
            let (mut a, mut b) = (vec![0u8; 2048], vec![0u8; 2048]);
            let is_cut = || {
                cut_until
                    .lock()
                    .expect("cut lock")
                    .is_some_and(|until| Instant::now() < until)
            };
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    Ok((n, from)) = outer.recv_from(&mut a) => {
                        kiosk = Some(from);
                        if !is_cut() {
                            let _ = inner.send_to(&a[..n], agent).await;
                        }
                    }
                    Ok((n, _)) = inner.recv_from(&mut b) => {
                        if let (Some(k), false) = (kiosk, is_cut()) {
                            let _ = outer.send_to(&b[..n], k).await;
                        }
                    }
                }
            }
        });
        Ok(Self { agent, public })
    }

    fn rewrite(&self, sdp: &str) -> String {
        let from = format!("{} {}", self.agent.ip(), self.agent.port());
        let to = format!("{} {}", self.public.ip(), self.public.port());
        sdp.replace(&from, &to)
    }
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
    // Behind the relay, direct candidates would bypass it.
    if session.relay.is_none() {
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
    shared
        .record
        .lock()
        .expect("record lock")
        .trickled
        .extend(candidates);
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
            shared.record.lock().expect("record lock").whip_deleted += 1;
            StatusCode::OK
        }
        None => StatusCode::NOT_FOUND,
    }
}

/// One finished utterance, from the decoder to the responder.
struct Utterance {
    speech: Duration,
}

async fn run_session(
    peer: Arc<Peer>,
    mut signals: mpsc::Receiver<PeerSignal>,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    mut renegotiate: mpsc::Receiver<()>,
) {
    let (utterance_tx, mut utterance_rx) = mpsc::channel::<Utterance>(8);
    let (dc_tx, mut dc_rx) = mpsc::channel::<Arc<dyn DataChannel>>(1);
    let mut dc: Option<Arc<dyn DataChannel>> = None;
    let mut replies = 0u32;
    // One RTP stream per call: replies continue its sequence and clock.
    let mut clock = RtpClock::new(Instant::now());
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                if let Some(dc) = &dc {
                    let _ = dc.send_text(&rtvi::signalling_json(&rtvi::Signalling::PeerLeft)).await;
                    // Let SCTP deliver it before the connection goes.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                break;
            }
            signal = signals.recv() => match signal {
                None => break,
                Some(PeerSignal::Track(track)) => {
                    tokio::spawn(decode_track(track, Arc::clone(&shared), utterance_tx.clone()));
                }
                Some(PeerSignal::DataChannel(channel)) => {
                    tokio::spawn(serve_data_channel(channel, Arc::clone(&shared), dc_tx.clone()));
                }
                Some(PeerSignal::State(s @ (RTCPeerConnectionState::Closed | RTCPeerConnectionState::Failed))) => {
                    debug!(state = %s, "loopback session ended");
                    break;
                }
                Some(_) => {}
            },
            Some(channel) = dc_rx.recv() => dc = Some(channel),
            Some(()) = renegotiate.recv() => {
                if let Some(dc) = &dc {
                    let _ = dc.send_text(&rtvi::signalling_json(&rtvi::Signalling::Renegotiate)).await;
                }
            }
            Some(utterance) = utterance_rx.recv() => {
                replies += 1;
                if let Some(dc) = &dc {
                    let hostile = (shared.config.hostile && replies == 1).then(|| HostileAudio::new(&shared));
                    reply(&peer, dc, replies, utterance, &shared.config.reply, &mut clock, hostile).await;
                }
            }
        }
    }
    peer.pc.close().await.ok();
}

async fn serve_data_channel(
    dc: Arc<dyn DataChannel>,
    shared: Arc<Shared>,
    announce: mpsc::Sender<Arc<dyn DataChannel>>,
) {
    let _ = announce.send(Arc::clone(&dc)).await;
    while let Some(event) = dc.poll().await {
        let DataChannelEvent::OnMessage(msg) = event else {
            if matches!(event, DataChannelEvent::OnClose) {
                break;
            }
            continue;
        };
        match rtvi::parse(&msg.data) {
            Inbound::Client(message) => {
                if message == ClientMessage::ClientReady {
                    let ready = BotMessage::BotReady {
                        version: PROTOCOL_VERSION.into(),
                    };
                    let _ = dc.send_text(&ready.to_json("bot-ready")).await;
                }
                shared
                    .record
                    .lock()
                    .expect("record lock")
                    .client_messages
                    .push(message);
            }
            Inbound::Ping => {}
            other => debug!(?other, "loopback agent ignored a message"),
        }
    }
}

/// Decodes the kiosk's audio, records it and feeds the VAD with exactly
/// the frames that arrived. Like a real bot (Pipecat hears silence only
/// through frames), a turn ends on received silence, never on missing
/// packets: a kiosk that stops streaming between utterances leaves this
/// agent stuck in "user speaking", as it would a Pipecat bot. The recording
/// is kept on the sender's timeline (gaps from lost packets or DTX are
/// filled with silence there) so tests can line it up with what was said.
async fn decode_track(
    track: Arc<dyn TrackRemote>,
    shared: Arc<Shared>,
    out: mpsc::Sender<Utterance>,
) {
    let config = &shared.config;
    let mut decoder = match Decoder::new() {
        Ok(d) => d,
        Err(e) => {
            warn!(error = %e, "loopback agent cannot decode");
            return;
        }
    };
    let mut ear = Ear {
        vad: EnergyVad::new(
            config.vad_threshold_dbfs,
            config.vad_onset,
            config.vad_hangover,
        ),
        shared: Arc::clone(&shared),
        out,
    };
    // RTP timestamp the next packet has if nothing is missing.
    let mut next_ts: Option<u32> = None;
    while let Some(event) = track.poll().await {
        let TrackRemoteEvent::OnRtpPacket(packet) = event else {
            continue;
        };
        let pcm = match decoder.decode(&packet.payload) {
            Ok(pcm) => pcm,
            Err(e) => {
                debug!(error = %e, "undecodable packet");
                continue;
            }
        };
        let ts = packet.header.timestamp;
        let gap_frames = next_ts.map_or(0, |next| {
            // Negative: a late packet, which adds no silence.
            let gap = (ts.wrapping_sub(next) as i32).max(0) as u32;
            (gap / FRAME_SAMPLES as u32).min(MAX_GAP_FRAMES)
        });
        next_ts = Some(ts.wrapping_add(pcm.len() as u32));
        {
            let mut record = shared.record.lock().expect("record lock");
            let at = record.received.len();
            record
                .received
                .resize(at + gap_frames as usize * FRAME_SAMPLES, 0);
            record.received.extend_from_slice(pcm);
            record.packets_received += 1;
            let at = shared.started.elapsed().as_millis() as u64;
            record.packet_arrivals_ms.push(at);
        }
        for frame in pcm.chunks(FRAME_SAMPLES) {
            ear.hear(frame).await;
        }
    }
}

/// Longest gap filled in the recording: plenty to line utterances up, and
/// a jumping timestamp cannot fill the memory.
const MAX_GAP_FRAMES: u32 = 500;

/// The agent's VAD; every utterance it closes is recorded and answered.
struct Ear {
    vad: EnergyVad,
    shared: Arc<Shared>,
    out: mpsc::Sender<Utterance>,
}

impl Ear {
    async fn hear(&mut self, frame: &[i16]) {
        if let Some(VadEdge::End { speech }) = self.vad.push(frame) {
            self.shared
                .record
                .lock()
                .expect("record lock")
                .utterances
                .push(speech);
            let _ = self.out.send(Utterance { speech }).await;
        }
    }
}

/// The RTVI sequence a voice bot sends for one turn, with the reply audio
/// played in real time between bot-started and bot-stopped speaking.
async fn reply(
    peer: &Peer,
    dc: &Arc<dyn DataChannel>,
    n: u32,
    utterance: Utterance,
    reply: &[i16],
    clock: &mut RtpClock,
    hostile: Option<HostileAudio>,
) {
    let send = |m: BotMessage| {
        let dc = Arc::clone(dc);
        async move {
            let _ = dc
                .send_text(&m.to_json(&format!("{:x}", rand::random::<u32>())))
                .await;
        }
    };
    // The sequence Pipecat 1.14 sends for one turn with a TTS that has no
    // word timestamps (fixtures/rtvi/pipecat-1.14/): an interim and a final
    // transcription, the sentence as the LLM wrote it (bot-transcription),
    // bot-output "new" before the audio, then bot-output "completed" and
    // bot-tts-text after it. A kiosk that stores one line per sentence
    // stores exactly one "reply N".
    let heard = format!("utterance {n} ({:.1} s)", utterance.speech.as_secs_f64());
    let sentence = format!("reply {n}");
    let transcription = |text: String, is_final: bool| BotMessage::UserTranscription {
        text,
        is_final,
        timestamp: Some(jiff::Timestamp::now().to_string()),
        user_id: Some("kiosk".into()),
        confidence: None,
    };
    send(BotMessage::UserStartedSpeaking).await;
    send(transcription(format!("utterance {n}"), false)).await;
    send(BotMessage::UserStoppedSpeaking).await;
    send(transcription(heard, true)).await;
    send(BotMessage::BotText {
        kind: BotTextKind::BotTranscription,
        text: sentence.clone(),
    })
    .await;
    send(BotMessage::BotStartedSpeaking).await;
    send(BotMessage::BotOutput(BotOutput {
        text: sentence.clone(),
        output_type: Some("sentence".into()),
        spoken: Some(false),
        will_be_spoken: Some(true),
        spoken_status: Some(SpokenStatus::New),
        ..BotOutput::default()
    }))
    .await;
    if let Err(e) = play(peer, reply, clock, hostile).await {
        warn!(error = %e, "loopback agent could not play its reply");
    }
    send(BotMessage::BotOutput(BotOutput::spoken_sentence(
        sentence.clone(),
    )))
    .await;
    send(BotMessage::BotText {
        kind: BotTextKind::BotTtsText,
        text: sentence,
    })
    .await;
    send(BotMessage::BotStoppedSpeaking).await;
}

async fn play(
    peer: &Peer,
    pcm: &[i16],
    clock: &mut RtpClock,
    mut hostile: Option<HostileAudio>,
) -> Result<(), media::MediaError> {
    let mut encoder = Encoder::new()?;
    let payload_type = peer.payload_type().await;
    let mut ticker = tokio::time::interval(FRAME_DURATION);
    let (mut pos, mut first) = (0, true);
    while pos < pcm.len() {
        ticker.tick().await;
        let rest = &pcm[pos..];
        let (data, samples) = match hostile
            .as_mut()
            .and_then(|h| h.next(pos, rest, &mut encoder))
        {
            Some(bad) => bad?,
            None => {
                let chunk = &rest[..rest.len().min(FRAME_SAMPLES)];
                (encoder.encode(chunk)?, FRAME_SAMPLES)
            }
        };
        pos += samples;
        let frame = OpusFrame {
            data,
            duration: FRAME_DURATION * (samples / FRAME_SAMPLES) as u32,
            after_silence: std::mem::take(&mut first),
        };
        let (seq, ts, marker) = clock.stamp(&frame, Instant::now());
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::Header {
                version: 2,
                marker,
                payload_type,
                sequence_number: seq,
                timestamp: ts,
                ssrc: peer.ssrc,
                ..Default::default()
            },
            payload: frame.data,
        };
        if peer.audio.write_rtp(packet).await.is_err() {
            break;
        }
        // A packet of 40 or 60 ms holds the next ticks' audio too.
        for _ in 1..samples / FRAME_SAMPLES {
            ticker.tick().await;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Hostile audio: a test tool (`LoopbackAgentConfig::hostile`), not agent behaviour.

/// What the first reply of a hostile agent sends from 1 s into its audio,
/// each in place of the audio it stands for (RTP timestamps advance as
/// for real audio): a second of random bytes, five packets cut short, one
/// legal 60 ms and one legal 40 ms packet (Opus allows them; agents rarely
/// send them), at libopus's default bitrate; then the rest of the reply as
/// usual.
struct HostileAudio {
    shared: Arc<Shared>,
    steps: std::collections::VecDeque<HostileStep>,
    /// Encodes the long packets (the agent's usual encoder only does 20 ms).
    long: opus::Encoder,
}

#[derive(Clone, Copy)]
enum HostileStep {
    Garbage,
    Truncated,
    /// A legal packet of this many samples.
    Long(usize),
}

/// Where in the reply (samples) the hostile packets start.
const HOSTILE_FROM: usize = 48_000;

impl HostileAudio {
    fn new(shared: &Arc<Shared>) -> Self {
        let mut steps = std::collections::VecDeque::new();
        steps.extend([HostileStep::Garbage; 50]);
        steps.extend([HostileStep::Truncated; 5]);
        steps.extend([
            HostileStep::Long(3 * FRAME_SAMPLES),
            HostileStep::Long(2 * FRAME_SAMPLES),
        ]);
        let long = opus::Encoder::new(
            media::SAMPLE_RATE,
            opus::Channels::Mono,
            opus::Application::Voip,
        )
        .expect("an Opus encoder for 48 kHz mono");
        Self {
            shared: Arc::clone(shared),
            steps,
            long,
        }
    }

    /// The packet to send at `pos` instead of the next 20 ms, and the
    /// samples of the reply it stands for; `None` to send the usual.
    fn next(
        &mut self,
        pos: usize,
        rest: &[i16],
        encoder: &mut Encoder,
    ) -> Option<Result<(bytes::Bytes, usize), media::MediaError>> {
        if pos < HOSTILE_FROM {
            return None;
        }
        let step = self.steps.pop_front()?;
        if self.steps.is_empty() {
            let record = &mut self.shared.record.lock().expect("record lock");
            record.hostile_sent.push(Instant::now());
        }
        let packet = match step {
            HostileStep::Garbage => {
                let len = 1 + rand::random::<u8>() as usize;
                Ok((
                    (0..len).map(|_| rand::random::<u8>()).collect(),
                    FRAME_SAMPLES,
                ))
            }
            HostileStep::Truncated => encoder
                .encode(&rest[..rest.len().min(FRAME_SAMPLES)])
                .map(|full| (full.slice(..(full.len() / 3).max(1)), FRAME_SAMPLES)),
            HostileStep::Long(n) => {
                let mut pcm = rest[..rest.len().min(n)].to_vec();
                pcm.resize(n, 0);
                self.long
                    .encode_vec(&pcm, 1500)
                    .map(|data| (data.into(), n))
                    .map_err(media::MediaError::Opus)
            }
        };
        Some(packet)
    }
}
