//! A test tool: the relay's simulated network in front of an agent the
//! test kit did not start, such as a stock Pipecat bot. An HTTP proxy of
//! the agent's routes puts a [`relay`](super::relay) in the media path of
//! every peer connection it answers. The kiosk's candidates are taken out
//! of its offers and trickles, and the agent's answer carries the relay's
//! address in place of its own, so the only path between the two is the
//! relay: the agent learns the relay's address as a peer-reflexive
//! candidate from the kiosk's connectivity checks.
//!
//! Routes: `POST .../api/offer` (SmallWebRTC offer, bare or under
//! `/sessions/{id}`) and `PATCH .../api/offer` (trickle) are rewritten;
//! every other request is passed on as it is. The proxy can also add
//! attributes to the answer's audio section ([`NetworkProxy::with_answer_lines`]),
//! as an agent behind a media gateway might send (`a=maxptime:20`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use url::Url;

use super::netsim::NetworkProfile;
use super::relay::{self, Network, Relay, RelayCounts};
use crate::error_text::error_chain;

/// A running proxy in front of one agent; stops, with its relays, when
/// dropped.
pub struct NetworkProxy {
    addr: SocketAddr,
    network: Network,
    cancel: CancellationToken,
}

impl NetworkProxy {
    /// A proxy on 127.0.0.1 for the agent whose HTTP routes are on
    /// `agent`, its relays doing `uplink` to the agent and `downlink` back.
    pub async fn start(
        agent: SocketAddr,
        uplink: NetworkProfile,
        downlink: NetworkProfile,
    ) -> std::io::Result<Self> {
        Self::with_answer_lines(agent, uplink, downlink, "").await
    }

    /// As [`start`](Self::start), and the agent's answers carry `lines`
    /// (SDP attributes, each ending in CRLF) in their audio section.
    pub async fn with_answer_lines(
        agent: SocketAddr,
        uplink: NetworkProfile,
        downlink: NetworkProfile,
        lines: &str,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cancel = CancellationToken::new();
        let network = Network::default();
        let proxy = Arc::new(Proxy {
            agent,
            http: reqwest::Client::new(),
            networks: (uplink, downlink),
            network: network.clone(),
            relays: tokio::sync::Mutex::new(HashMap::new()),
            answer_lines: lines.to_owned(),
            cancel: cancel.clone(),
        });
        let app = Router::new().fallback(forward).with_state(proxy);
        let stop = cancel.clone();
        tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned());
            if let Err(e) = serve.await {
                warn!(error = %error_chain(&e), "network proxy stopped");
            }
        });
        info!(%addr, %agent, "network proxy listening");
        Ok(Self {
            addr,
            network,
            cancel,
        })
    }

    /// The agent's URL `path` (e.g. `/api/offer`) through the proxy.
    pub fn url(&self, path: &str) -> Url {
        Url::parse(&format!("http://{}{path}", self.addr)).expect("valid URL")
    }

    /// RTP packets the relays carried and lost each way, over every peer
    /// connection so far.
    pub fn network_counts(&self) -> RelayCounts {
        self.network.counts()
    }
}

impl Drop for NetworkProxy {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// What the proxy's requests share.
struct Proxy {
    /// The agent's HTTP address.
    agent: SocketAddr,
    http: reqwest::Client,
    /// The relays' networks: (to the agent, to the kiosk).
    networks: (NetworkProfile, NetworkProfile),
    network: Network,
    /// One relay per candidate address of the agent: a renegotiation on
    /// the same peer connection keeps its relay.
    relays: tokio::sync::Mutex<HashMap<SocketAddr, Relay>>,
    /// Added to each answer's audio section.
    answer_lines: String,
    cancel: CancellationToken,
}

type HttpError = (StatusCode, String);

fn bad_gateway(e: impl std::fmt::Display) -> HttpError {
    (StatusCode::BAD_GATEWAY, e.to_string())
}

/// Passes any request on to the agent, the offer routes rewritten.
async fn forward(
    State(proxy): State<Arc<Proxy>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, HttpError> {
    let offer_route = uri.path().ends_with("/api/offer");
    let body = match method {
        Method::POST if offer_route => edit_json(&body, offer_without_candidates)?,
        Method::PATCH if offer_route => edit_json(&body, drop_trickled)?,
        _ => body,
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = proxy
        .http
        .request(method.clone(), format!("http://{}{path}", proxy.agent))
        .body(body);
    for (name, value) in &headers {
        if name != header::HOST && name != header::CONTENT_LENGTH {
            request = request.header(name, value);
        }
    }
    let response = request.send().await.map_err(bad_gateway)?;
    let status = response.status();
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let mut body = response.bytes().await.map_err(bad_gateway)?;
    if method == Method::POST && offer_route && status.is_success() {
        body = proxy.answer_behind_relay(&body).await?;
    }
    let mut out = (status, body).into_response();
    if let Some(content_type) = content_type {
        out.headers_mut().insert(header::CONTENT_TYPE, content_type);
    }
    Ok(out)
}

/// `body` as JSON, changed by `edit`.
fn edit_json(body: &[u8], edit: impl FnOnce(&mut Value)) -> Result<Bytes, HttpError> {
    let mut json: Value =
        serde_json::from_slice(body).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    edit(&mut json);
    Ok(Bytes::from(json.to_string()))
}

/// The kiosk's offer without its candidates: the agent may only learn its
/// address from checks that came through the relay.
fn offer_without_candidates(offer: &mut Value) {
    if let Some(sdp) = offer["sdp"].as_str() {
        offer["sdp"] = relay::without_candidates(sdp).into();
    }
}

/// A trickle PATCH with nothing to add. The end-of-candidates mark goes
/// too: an agent told that before any check reached it would give up.
fn drop_trickled(patch: &mut Value) {
    if patch.get("candidates").is_some() {
        patch["candidates"] = Value::Array(vec![]);
    }
}

impl Proxy {
    /// The agent's answer (`{sdp, type, pc_id}`) with the relay in front
    /// of its candidate, started on the first answer for that address.
    async fn answer_behind_relay(&self, body: &[u8]) -> Result<Bytes, HttpError> {
        let mut answer: Value = serde_json::from_slice(body).map_err(bad_gateway)?;
        let sdp = answer["sdp"]
            .as_str()
            .ok_or_else(|| bad_gateway("the agent's answer has no SDP"))?;
        let agent = relay::agent_candidate(sdp)
            .ok_or_else(|| bad_gateway("no UDP IPv4 candidate in the agent's answer"))?;
        let mut relays = self.relays.lock().await;
        let relay = match relays.entry(agent) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let relay = Relay::start(
                    agent,
                    self.networks,
                    self.network.clone(),
                    self.cancel.child_token(),
                )
                .await
                .map_err(bad_gateway)?;
                info!(%agent, relay = %relay.public(), "relay in front of the agent's peer connection");
                e.insert(relay)
            }
        };
        answer["sdp"] = with_audio_lines(&relay.rewrite(sdp), &self.answer_lines).into();
        Ok(Bytes::from(answer.to_string()))
    }
}

/// `sdp` with `lines` before the first attribute of its audio section.
fn with_audio_lines(sdp: &str, lines: &str) -> String {
    let Some(audio) = sdp.find("m=audio") else {
        return sdp.to_owned();
    };
    let at = sdp[audio..]
        .find("\na=")
        .map_or(sdp.len(), |i| audio + i + 1);
    format!("{}{lines}{}", &sdp[..at], &sdp[at..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn offers_and_trickles_lose_the_kiosks_candidates() {
        let mut offer = json!({
            "sdp": "v=0\r\na=ice-ufrag:x\r\na=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\na=end-of-candidates\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n",
            "type": "offer",
            "pc_id": "abc",
        });
        offer_without_candidates(&mut offer);
        assert_eq!(
            offer,
            json!({
                "sdp": "v=0\r\na=ice-ufrag:x\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n",
                "type": "offer",
                "pc_id": "abc",
            })
        );
        let mut patch = json!({"pc_id": "abc", "candidates": [{"candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host", "sdp_mid": "0", "sdp_mline_index": 0}]});
        drop_trickled(&mut patch);
        assert_eq!(patch, json!({"pc_id": "abc", "candidates": []}));
    }

    #[test]
    fn answer_lines_go_into_the_audio_section() {
        let sdp = "v=0\r\na=group:BUNDLE 0 1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:1\r\n";
        assert_eq!(
            with_audio_lines(sdp, "a=maxptime:20\r\n"),
            "v=0\r\na=group:BUNDLE 0 1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=maxptime:20\r\na=mid:0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:1\r\n"
        );
        assert_eq!(with_audio_lines(sdp, ""), sdp);
    }
}
