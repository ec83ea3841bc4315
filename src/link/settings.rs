//! Link tuning: ICE servers, sockets and the timeouts of connecting and
//! recovering a call.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use webrtc::peer_connection::RTCIceServer;

use super::peer::PeerConfig;

/// A STUN or TURN server.
#[derive(Clone, Debug, Default)]
pub struct IceServer {
    /// `stun:` or `turn:` URLs of the server.
    pub urls: Vec<String>,
    /// TURN user name.
    pub username: Option<String>,
    /// TURN password.
    pub credential: Option<SecretString>,
}

/// Link tuning. Mapped from `[session]`/`[agent]` config keys.
#[derive(Clone, Debug)]
pub struct LinkSettings {
    /// STUN and TURN servers; empty for agents on the local network.
    pub ice_servers: Vec<IceServer>,
    /// Local UDP sockets for ICE (`host:port`, port 0 = any).
    pub udp_bind: Vec<String>,
    /// From the first offer to a connected peer.
    pub connect_timeout: Duration,
    /// How long to wait for candidates before sending the offer; the rest
    /// are trickled.
    pub gather_timeout: Duration,
    /// Give up recovering a broken call after this long (`session.reconnect_timeout`).
    pub reconnect_timeout: Duration,
    /// ICE reports a path disconnected after this long without traffic.
    pub ice_disconnected_timeout: Duration,
    /// ICE gives up a path after this long disconnected.
    pub ice_failed_timeout: Duration,
    /// How often ICE checks a quiet path.
    pub ice_keepalive_interval: Duration,
    /// Data-channel keep-alive; Pipecat drops a client silent for 3 s.
    pub ping_interval: Duration,
    /// Incoming packets buffered for the decoder before the oldest are dropped.
    pub audio_in_capacity: usize,
    /// Outgoing frames buffered; while the link is down nobody drains this,
    /// so the audio engine's own bounded buffer holds speech instead.
    pub audio_out_capacity: usize,
}

impl Default for LinkSettings {
    fn default() -> Self {
        Self {
            ice_servers: vec![IceServer {
                urls: vec!["stun:stun.l.google.com:19302".into()],
                ..IceServer::default()
            }],
            udp_bind: vec!["0.0.0.0:0".into()],
            connect_timeout: Duration::from_secs(10),
            gather_timeout: Duration::from_secs(2),
            reconnect_timeout: Duration::from_secs(15),
            ice_disconnected_timeout: Duration::from_secs(2),
            ice_failed_timeout: Duration::from_secs(6),
            ice_keepalive_interval: Duration::from_millis(500),
            ping_interval: Duration::from_secs(1),
            audio_in_capacity: 50,
            audio_out_capacity: 10,
        }
    }
}

impl LinkSettings {
    pub(super) fn peer_config(&self) -> PeerConfig {
        PeerConfig {
            ice_servers: self
                .ice_servers
                .iter()
                .map(|s| RTCIceServer {
                    urls: s.urls.clone(),
                    username: s.username.clone().unwrap_or_default(),
                    credential: s
                        .credential
                        .as_ref()
                        .map(|c| c.expose_secret().to_owned())
                        .unwrap_or_default(),
                })
                .collect(),
            udp_bind: self.udp_bind.clone(),
            ice_disconnected_timeout: self.ice_disconnected_timeout,
            ice_failed_timeout: self.ice_failed_timeout,
            ice_keepalive_interval: self.ice_keepalive_interval,
            ice_check_interval: None,
            receive_on_send_clock: true,
        }
    }
}
