//! The built-in loopback agent: a SmallWebRTC endpoint on 127.0.0.1 with a
//! real WebRTC answerer. It decodes what it hears, finds utterances with an
//! energy VAD (its [`ear`]), answers each with RTVI messages and a fixture
//! reply played over its audio track, and records what it received.
//!
//! `demo` and `loopback-agent` run it in the product; integration tests
//! reach it through the `testkit` feature, which also builds its test tools:
//! a UDP relay that can cut the network or make it lossy (also in front of
//! an agent the kit did not start, through its HTTP [`proxy`]), and hostile
//! audio.
//!
//! Routes ([`http`]): `POST /start` (→ `{"sessionId"}`), `POST|PATCH
//! /api/offer` and `POST|PATCH /sessions/{id}/api/offer`, the shapes
//! Pipecat's runner uses, and WHIP on `/whip`.

mod call;
mod ear;
#[cfg(feature = "testkit")]
mod hostile;
mod http;
pub mod media;
#[cfg(feature = "testkit")]
pub mod netsim;
#[cfg(feature = "testkit")]
pub mod proxy;
#[cfg(feature = "testkit")]
pub mod relay;
pub mod voice;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;
use url::Url;

use crate::audio::AudioError;
use crate::link::peer::{Peer, PeerConfig};
use crate::link::rtvi::ClientMessage;
use crate::link::signaling::{Candidate, PcId};

/// How the loopback agent behaves.
#[derive(Clone, Debug)]
pub struct LoopbackAgentConfig {
    /// HTTP listen address.
    pub bind: SocketAddr,
    /// UDP address for the agent's ICE.
    pub udp_bind: String,
    /// What the agent says after each utterance (48 kHz mono).
    pub reply: Vec<i16>,
    /// Frames louder than this count as speech.
    pub vad_threshold_dbfs: f64,
    /// Speech this long starts an utterance.
    pub vad_onset: Duration,
    /// Silence that ends an utterance.
    pub vad_hangover: Duration,
    /// Put a UDP relay in the media path so tests can cut the network
    /// ([`LoopbackAgent::cut_network`]).
    #[cfg(feature = "testkit")]
    pub simulate_network: bool,
    /// What the relay's network does to packets from the kiosk to the
    /// agent (needs `simulate_network`; a perfect network by default).
    #[cfg(feature = "testkit")]
    pub uplink: netsim::NetworkProfile,
    /// Likewise from the agent to the kiosk.
    #[cfg(feature = "testkit")]
    pub downlink: netsim::NetworkProfile,
    /// As Pipecat Cloud: `/start` and `/sessions/{id}/api/offer` answer 401
    /// unless they carry `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// The first reply of each call slips in what a broken or hostile
    /// agent might send (see the `hostile` module).
    #[cfg(feature = "testkit")]
    pub hostile: bool,
}

impl LoopbackAgentConfig {
    /// Defaults on loopback addresses, saying `reply`.
    pub fn new(reply: Vec<i16>) -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            udp_bind: "127.0.0.1:0".into(),
            reply,
            vad_threshold_dbfs: -44.0,
            vad_onset: Duration::from_millis(200),
            vad_hangover: Duration::from_millis(400),
            #[cfg(feature = "testkit")]
            simulate_network: false,
            #[cfg(feature = "testkit")]
            uplink: netsim::NetworkProfile::default(),
            #[cfg(feature = "testkit")]
            downlink: netsim::NetworkProfile::default(),
            api_key: None,
            #[cfg(feature = "testkit")]
            hostile: false,
        }
    }
}

/// Why the loopback agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// It cannot listen.
    #[error("loopback agent cannot listen")]
    Bind(#[from] std::io::Error),
    /// Its reply audio cannot be read or encoded.
    #[error("loopback agent reply")]
    Reply(#[from] AudioError),
    /// Ctrl-C cannot be caught.
    #[error("cannot install the Ctrl-C handler")]
    Interrupt(#[source] std::io::Error),
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
    #[cfg(feature = "testkit")]
    pub hostile_sent: Vec<Instant>,
    /// When each of them arrived, in ms since the agent started.
    pub packet_arrivals_ms: Vec<u64>,
    /// RTVI messages from the kiosk.
    pub client_messages: Vec<ClientMessage>,
    /// The length of each utterance heard.
    pub utterances: Vec<Duration>,
    /// Bodies of `/start` requests.
    pub start_requests: Vec<Value>,
    /// Every request to `/start` and `/sessions/...`, in order.
    pub cloud_requests: Vec<CloudRequest>,
    /// SDP offers answered.
    pub offers: u32,
    /// Offers that restarted the peer connection.
    pub restarts: u32,
    /// ICE candidates the kiosk trickled.
    pub trickled: Vec<Candidate>,
    /// WHIP sessions deleted.
    pub whip_deleted: u32,
}

/// A request to the Pipecat-Cloud-like routes, without its secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloudRequest {
    /// `GET`, `POST`, ...
    pub method: &'static str,
    /// The path requested.
    pub path: String,
    /// It carried `Authorization: Bearer <api_key>` (always true without a key).
    pub authorized: bool,
}

/// What the routes and every call of one agent share.
struct Shared {
    config: LoopbackAgentConfig,
    started: Instant,
    peer_config: PeerConfig,
    record: Mutex<AgentRecord>,
    sessions: tokio::sync::Mutex<HashMap<PcId, AgentPeer>>,
    #[cfg(feature = "testkit")]
    network: relay::Network,
}

impl Shared {
    fn record(&self) -> std::sync::MutexGuard<'_, AgentRecord> {
        self.record.lock().expect("record lock")
    }
}

/// One kiosk's peer connection.
struct AgentPeer {
    peer: Arc<Peer>,
    cancel: CancellationToken,
    #[cfg(feature = "testkit")]
    relay: Option<relay::Relay>,
    /// Asks the call to send a `renegotiate` signalling message.
    #[cfg_attr(
        not(feature = "testkit"),
        expect(dead_code, reason = "only tests ask for renegotiation")
    )]
    renegotiate: mpsc::Sender<()>,
}

impl AgentPeer {
    /// The agent's answer as the kiosk must see it: behind the relay, the
    /// relay's address in place of the agent's own.
    #[cfg(feature = "testkit")]
    fn public_sdp(&self, sdp: String) -> String {
        match &self.relay {
            Some(relay) => relay.rewrite(&sdp),
            None => sdp,
        }
    }

    #[cfg(not(feature = "testkit"))]
    fn public_sdp(&self, sdp: String) -> String {
        sdp
    }

    /// Candidates the kiosk trickles would bypass the relay.
    #[cfg(feature = "testkit")]
    fn behind_relay(&self) -> bool {
        self.relay.is_some()
    }

    #[cfg(not(feature = "testkit"))]
    fn behind_relay(&self) -> bool {
        false
    }
}

/// A running loopback agent; stops when dropped.
pub struct LoopbackAgent {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl LoopbackAgent {
    /// Starts an agent with `config`, listening until dropped.
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
                // On loopback a check is answered within a millisecond; the
                // agent is the DTLS client, whose first flight leaves at
                // the first ICE timer after connecting.
                ice_check_interval: Some(Duration::from_millis(10)),
                // A stock agent's socket wakes for every datagram.
                receive_on_send_clock: false,
            },
            config,
            started: Instant::now(),
            record: Mutex::new(AgentRecord::default()),
            sessions: tokio::sync::Mutex::new(HashMap::new()),
            #[cfg(feature = "testkit")]
            network: relay::Network::default(),
        });
        let server = tokio::spawn(http::serve(listener, Arc::clone(&shared)));
        info!(%addr, "loopback agent listening");
        Ok(Self {
            addr,
            shared,
            server,
        })
    }

    /// Its SmallWebRTC offer endpoint.
    pub fn offer_url(&self) -> Url {
        Url::parse(&format!("http://{}/api/offer", self.addr)).expect("valid URL")
    }

    /// A copy of what the agent observed so far.
    pub fn record(&self) -> AgentRecord {
        self.shared.record().clone()
    }
}

/// What tests drive and ask of a running agent.
#[cfg(feature = "testkit")]
impl LoopbackAgent {
    /// Its HTTP address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The WHIP endpoint of the same agent.
    pub fn whip_url(&self) -> Url {
        Url::parse(&format!("http://{}/whip", self.addr)).expect("valid URL")
    }

    /// Its Pipecat-like start endpoint.
    pub fn start_url(&self) -> Url {
        Url::parse(&format!("http://{}/start", self.addr)).expect("valid URL")
    }

    /// Drops every media packet both ways for `duration` (needs
    /// `simulate_network`): the agent simply stops answering.
    pub fn cut_network(&self, duration: Duration) {
        self.shared.network.cut_for(duration);
    }

    /// RTP packets the relay carried and lost each way (needs
    /// `simulate_network`), over every call so far.
    pub fn network_counts(&self) -> relay::RelayCounts {
        self.shared.network.counts()
    }

    /// Asks every connected kiosk for a fresh offer on the same `pc_id`.
    pub async fn request_renegotiation(&self) {
        for s in self.shared.sessions.lock().await.values() {
            let _ = s.renegotiate.try_send(());
        }
    }

    /// Ends every call as Pipecat does when the bot leaves: `peerLeft`
    /// on the data channel, then closing the connection.
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

/// `loopback-agent`: the agent on `listen`, saying `reply` (any WAV), until
/// Ctrl-C.
pub async fn run_until_interrupted(listen: SocketAddr, reply: &Path) -> Result<(), AgentError> {
    let mut config = LoopbackAgentConfig::new(media::read_wav(reply)?);
    config.bind = listen;
    let agent = LoopbackAgent::start(config).await?;
    println!("offer URL: {}", agent.offer_url());
    tokio::signal::ctrl_c()
        .await
        .map_err(AgentError::Interrupt)?;
    Ok(())
}
