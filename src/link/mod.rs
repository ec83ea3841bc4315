//! The media link to a voice agent: one WebRTC peer connection (webrtc-rs)
//! with an Opus sendrecv track and a kiosk-created data channel carrying
//! RTVI. A transport only: it knows neither sessions nor the store.
//!
//! The caller feeds encoded 20 ms Opus frames in, gets Opus packets and
//! [`LinkEvent`]s out. When the media path breaks the link rebuilds the peer
//! connection (SmallWebRTC `restart_pc`) with jittered exponential backoff,
//! and reports [`LinkEvent::Lost`] if that does not succeed in time.

pub mod call;
pub mod cli;
mod kernel_timer;
pub(crate) mod pacer;
pub(crate) mod peer;
mod redundancy;
mod remote_report;
mod rtp_clock;
pub mod rtvi;
mod send_clocked;
mod settings;
mod setup_flush;
pub mod signaling;
mod stats;
mod supervisor;
pub mod transcript;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use pacer::PacedFrames;
use redundancy::Redundancy;
pub(crate) use rtp_clock::RtpClock;
use rtvi::{BotMessage, ClientMessage};
pub use settings::{IceServer, LinkSettings};
use signaling::{OfferKind, Signaling, SignalingError};
use stats::Counters;
pub use stats::LinkStats;
pub(crate) use supervisor::Control;
use supervisor::{Ctx, Supervisor, establish};

/// One encoded frame from the audio engine.
#[derive(Clone, Debug)]
pub struct OpusFrame {
    /// The Opus packet.
    pub data: Bytes,
    /// The audio it holds.
    pub duration: Duration,
    /// First frame of a talk spurt (after DTX silence): sets the RTP marker
    /// bit and lets the timestamp jump over the silent gap.
    pub after_silence: bool,
}

/// One Opus packet received from the agent, for the decoder/jitter buffer.
#[derive(Clone, Debug)]
pub struct OpusPacket {
    /// The Opus packet.
    pub data: Bytes,
    /// Its RTP timestamp (48 kHz clock).
    pub rtp_timestamp: u32,
    /// Its RTP sequence number.
    pub sequence: u16,
    /// The RTP marker bit: the first packet of a talk spurt.
    pub marker: bool,
}

/// What the link tells the session.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum LinkEvent {
    /// Data channel open, `client-ready` sent.
    Ready,
    /// An RTVI message from the bot.
    Bot(BotMessage),
    /// The call dropped; the link is trying to restore it.
    Reconnecting {
        /// What broke, for logs.
        reason: String,
    },
    /// The call is back.
    Reconnected {
        /// How long it was down.
        #[serde(rename = "after_ms", serialize_with = "millis")]
        after: Duration,
    },
    /// The agent ended the call (`peerLeft`).
    PeerLeft,
    /// Recovery failed within `reconnect_timeout`; the session should re-provision.
    Lost {
        /// What broke last, for logs.
        reason: String,
    },
}

/// Why a call could not be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The WebRTC stack failed.
    #[error("WebRTC")]
    WebRtc(#[from] webrtc::error::Error),
    /// The agent's signalling endpoint failed.
    #[error(transparent)]
    Signaling(#[from] SignalingError),
    /// Not connected in time.
    #[error("peer connection not established within {0:?}")]
    ConnectTimeout(Duration),
    /// The peer connection failed or closed (its state given).
    #[error("peer connection {0} while connecting")]
    ConnectFailed(String),
    /// The link has already closed.
    #[error("the link is closed")]
    Closed,
    /// A SIP leg could not be set up (`session.provision = "daily-sip"`).
    #[error("SIP leg")]
    Sip(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The session layer's end of a link.
pub struct LinkIo {
    /// Encoded frames to send (bounded: see `audio_out_capacity`).
    pub audio_out: mpsc::Sender<OpusFrame>,
    /// Packets from the agent.
    pub audio_in: mpsc::Receiver<OpusPacket>,
    /// What happens to the call.
    pub events: mpsc::Receiver<LinkEvent>,
}

/// An open link. Dropping it closes the call too, but [`Link::close`] waits
/// for a clean hang-up.
pub struct Link {
    control: mpsc::Sender<Control>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Link {
    /// Connects to the agent behind `signaling`; returns once the peer
    /// connection is up (the data channel opens right after: watch for
    /// [`LinkEvent::Ready`]).
    pub async fn connect(
        settings: LinkSettings,
        signaling: Arc<dyn Signaling>,
    ) -> Result<(Self, LinkIo), LinkError> {
        let started = Instant::now();
        let (events_tx, events_rx) = mpsc::channel(256);
        let (audio_in_tx, audio_in_rx) = mpsc::channel(settings.audio_in_capacity);
        let (audio_out_tx, audio_out_rx) = mpsc::channel(settings.audio_out_capacity);
        let (signalling_tx, signalling_rx) = mpsc::channel(8);
        let (control_tx, control_rx) = mpsc::channel(32);
        let ctx = Arc::new(Ctx {
            peer_config: settings.peer_config(),
            settings,
            signaling,
            events: events_tx,
            audio_in: audio_in_tx,
            signalling_tx,
            counters: Arc::new(Counters::default()),
            packets_sent_total: metrics::counter!("kiosk_link_packets_sent_total"),
            ssrc: rand::random(),
            started,
        });
        let run = establish(&ctx, OfferKind::Initial).await?;
        info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "link connected"
        );
        let cancel = CancellationToken::new();
        let supervisor = Supervisor {
            ctx,
            run,
            rtp: RtpClock::new(Instant::now()),
            control: control_rx,
            audio_out: PacedFrames::new(audio_out_rx),
            signalling: signalling_rx,
            cancel: cancel.clone(),
            stats: stats::StatsState::new(Instant::now()),
            redundancy: Redundancy::default(),
        };
        let task = tokio::spawn(supervisor.run());
        Ok((
            Self {
                control: control_tx,
                cancel,
                task: Some(task),
            },
            LinkIo {
                audio_out: audio_out_tx,
                audio_in: audio_in_rx,
                events: events_rx,
            },
        ))
    }

    /// A link carried by another transport's task (a SIP leg), which answers
    /// `control` and stops when `cancel` fires.
    pub(crate) fn from_task(
        control: mpsc::Sender<Control>,
        cancel: CancellationToken,
        task: JoinHandle<()>,
    ) -> Self {
        Self {
            control,
            cancel,
            task: Some(task),
        }
    }

    /// Sends an RTVI message to the bot.
    pub async fn send(&self, message: ClientMessage) -> Result<(), LinkError> {
        self.control
            .send(Control::Send(message))
            .await
            .map_err(|_| LinkError::Closed)
    }

    /// Current statistics, for status and metrics.
    pub async fn stats(&self) -> Result<LinkStats, LinkError> {
        let (tx, rx) = oneshot::channel();
        self.control
            .send(Control::Stats(tx))
            .await
            .map_err(|_| LinkError::Closed)?;
        rx.await.map_err(|_| LinkError::Closed)
    }

    /// Hangs up and waits for the peer connection to close.
    pub async fn close(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}
