//! The media link to a voice agent: one WebRTC peer connection (webrtc-rs)
//! with an Opus sendrecv track and a kiosk-created data channel carrying
//! RTVI. A transport only: it knows neither sessions nor the store.
//!
//! The caller feeds encoded 20 ms Opus frames in, gets Opus packets and
//! [`LinkEvent`]s out. When the media path breaks the link rebuilds the peer
//! connection (SmallWebRTC `restart_pc`) with jittered exponential backoff,
//! and reports [`LinkEvent::Lost`] if that does not succeed in time.

pub mod agent;
pub mod call;
pub mod cli;
pub mod media;
mod peer;
pub mod rtvi;
pub mod signaling;
mod stats;
pub mod transcript;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelInit};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{RTCIceServer, RTCPeerConnectionState, RTCSessionDescription};

use peer::{OPUS_CLOCK_RATE, Peer, PeerConfig, PeerSignal};
use rtvi::{BotMessage, ClientMessage, Ignored, Inbound, Signalling};
use signaling::{Candidate, OfferKind, Signaling, SignalingError};
pub use stats::LinkStats;

/// A STUN or TURN server.
#[derive(Clone, Debug, Default)]
pub struct IceServer {
    pub urls: Vec<String>,
    pub username: Option<String>,
    pub credential: Option<SecretString>,
}

/// Link tuning. Mapped from `[session]`/`[agent]` config keys.
#[derive(Clone, Debug)]
pub struct LinkSettings {
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
    pub ice_disconnected_timeout: Duration,
    pub ice_failed_timeout: Duration,
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
    fn peer_config(&self) -> PeerConfig {
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
        }
    }
}

/// One encoded frame from the audio engine.
#[derive(Clone, Debug)]
pub struct OpusFrame {
    pub data: Bytes,
    pub duration: Duration,
    /// First frame of a talk spurt (after DTX silence): sets the RTP marker
    /// bit and lets the timestamp jump over the silent gap.
    pub after_silence: bool,
}

/// One Opus packet received from the agent, for the decoder/jitter buffer.
#[derive(Clone, Debug)]
pub struct OpusPacket {
    pub data: Bytes,
    pub rtp_timestamp: u32,
    pub sequence: u16,
    pub marker: bool,
}

/// What the link tells the session.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum LinkEvent {
    /// Data channel open, `client-ready` sent.
    Ready,
    Bot(BotMessage),
    Reconnecting {
        reason: String,
    },
    Reconnected {
        #[serde(rename = "after_ms", serialize_with = "millis")]
        after: Duration,
    },
    /// The agent ended the call (`peerLeft`).
    PeerLeft,
    /// Recovery failed within `reconnect_timeout`; the session should re-provision.
    Lost {
        reason: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("WebRTC: {0}")]
    WebRtc(#[from] webrtc::error::Error),
    #[error(transparent)]
    Signaling(#[from] SignalingError),
    #[error("peer connection not established within {0:?}")]
    ConnectTimeout(Duration),
    #[error("peer connection {0} while connecting")]
    ConnectFailed(String),
    #[error("the link is closed")]
    Closed,
}

/// The session layer's end of a link.
pub struct LinkIo {
    /// Encoded frames to send (bounded: see `audio_out_capacity`).
    pub audio_out: mpsc::Sender<OpusFrame>,
    pub audio_in: mpsc::Receiver<OpusPacket>,
    pub events: mpsc::Receiver<LinkEvent>,
}

enum Control {
    Send(ClientMessage),
    Stats(oneshot::Sender<LinkStats>),
}

/// An open link. Dropping it closes the call too, but [`Link::close`] waits
/// for a clean hang-up.
pub struct Link {
    control: mpsc::Sender<Control>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub packets_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub packets_received: AtomicU64,
    pub bytes_received: AtomicU64,
    pub audio_in_dropped: AtomicU64,
    pub rtvi_unknown: AtomicU64,
    pub rtvi_malformed: AtomicU64,
    pub rtvi_oversized: AtomicU64,
    pub restarts: AtomicU64,
}

/// Shared by every peer connection of one link (they replace each other
/// on restart).
struct Ctx {
    settings: LinkSettings,
    peer_config: PeerConfig,
    signaling: Arc<dyn Signaling>,
    events: mpsc::Sender<LinkEvent>,
    audio_in: mpsc::Sender<OpusPacket>,
    signalling_tx: mpsc::Sender<Signalling>,
    counters: Arc<Counters>,
    /// `kiosk_link_packets_sent_total`, looked up once: it counts every
    /// packet, 50 a second.
    packets_sent_total: metrics::Counter,
    ssrc: u32,
    started: Instant,
}

/// One live peer connection and what hangs off it.
struct PeerRun {
    peer: Peer,
    signals: mpsc::Receiver<PeerSignal>,
    dc: Arc<dyn DataChannel>,
    /// Candidates found after the offer went out must be trickled.
    trickle: bool,
    payload_type: u8,
    /// Audio tracks the agent opened; one is read, more are ignored.
    tracks: u32,
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
            audio_out: audio_out_rx,
            signalling: signalling_rx,
            cancel: cancel.clone(),
            stats: stats::StatsState::new(Instant::now()),
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

/// Builds a peer connection and runs one offer/answer until it is connected.
async fn establish(ctx: &Arc<Ctx>, kind: OfferKind) -> Result<PeerRun, LinkError> {
    let (peer, signals) = Peer::build(&ctx.peer_config, ctx.ssrc).await?;
    let dc = peer
        .pc
        .create_data_channel(
            "rtvi",
            Some(RTCDataChannelInit {
                ordered: true,
                ..Default::default()
            }),
        )
        .await?;
    let mut run = PeerRun {
        peer,
        signals,
        dc,
        trickle: false,
        payload_type: 0,
        tracks: 0,
    };
    let result = async {
        negotiate(ctx, &mut run, kind).await?;
        wait_connected(ctx, &mut run).await
    }
    .await;
    if let Err(e) = result {
        let _ = run.peer.pc.close().await;
        return Err(e);
    }
    run.payload_type = run.peer.payload_type().await;
    tokio::spawn(run_data_channel(Arc::clone(&run.dc), Arc::clone(ctx)));
    Ok(run)
}

/// One offer/answer round on an existing peer connection.
async fn negotiate(ctx: &Ctx, run: &mut PeerRun, kind: OfferKind) -> Result<(), LinkError> {
    let offer = run.peer.pc.create_offer(None).await?;
    run.peer.pc.set_local_description(offer).await?;
    // Candidates gathered by now are in the local description; a bounded
    // wait keeps a slow STUN server from delaying the call.
    let gathered = tokio::time::timeout(ctx.settings.gather_timeout, async {
        while let Some(signal) = run.signals.recv().await {
            if matches!(signal, PeerSignal::GatheringComplete) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    run.trickle = !gathered;
    let sdp = run
        .peer
        .pc
        .local_description()
        .await
        .ok_or(LinkError::ConnectFailed(
            "without a local description".into(),
        ))?
        .sdp;
    let answer = ctx.signaling.offer(&sdp, kind).await?;
    run.peer
        .pc
        .set_remote_description(RTCSessionDescription::answer(answer)?)
        .await?;
    debug!(?kind, trickle = run.trickle, "offer answered");
    Ok(())
}

async fn wait_connected(ctx: &Arc<Ctx>, run: &mut PeerRun) -> Result<(), LinkError> {
    let timeout = ctx.settings.connect_timeout;
    tokio::time::timeout(timeout, async {
        loop {
            let Some(signal) = run.signals.recv().await else {
                return Err(LinkError::Closed);
            };
            match signal {
                PeerSignal::State(RTCPeerConnectionState::Connected) => return Ok(()),
                PeerSignal::State(
                    s @ (RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed),
                ) => return Err(LinkError::ConnectFailed(s.to_string())),
                other => handle_signal(ctx, run, other).await,
            }
        }
    })
    .await
    .map_err(|_| LinkError::ConnectTimeout(timeout))?
}

/// Signals that need the same handling whatever the link is doing.
async fn handle_signal(ctx: &Arc<Ctx>, run: &mut PeerRun, signal: PeerSignal) {
    match signal {
        PeerSignal::Candidate(c) if run.trickle => {
            let candidate = Candidate {
                candidate: c.candidate,
                sdp_mid: c.sdp_mid.unwrap_or_else(|| "0".into()),
                sdp_mline_index: c.sdp_mline_index.unwrap_or(0),
            };
            if let Err(e) = ctx.signaling.trickle(&[candidate]).await {
                warn!(error = %e, "trickling a candidate failed");
            }
        }
        PeerSignal::Track(track) => {
            run.tracks += 1;
            if run.tracks == 1 {
                tokio::spawn(read_track(track, Arc::clone(ctx)));
            } else {
                warn!(
                    tracks = run.tracks,
                    "the agent opened another audio track; only the first is played"
                );
            }
        }
        _ => {}
    }
}

async fn read_track(track: Arc<dyn TrackRemote>, ctx: Arc<Ctx>) {
    while let Some(event) = track.poll().await {
        let TrackRemoteEvent::OnRtpPacket(packet) = event else {
            continue;
        };
        if packet.payload.is_empty() {
            continue;
        }
        let c = &ctx.counters;
        c.packets_received.fetch_add(1, Ordering::Relaxed);
        c.bytes_received
            .fetch_add(packet.payload.len() as u64, Ordering::Relaxed);
        let out = OpusPacket {
            data: packet.payload,
            rtp_timestamp: packet.header.timestamp,
            sequence: packet.header.sequence_number,
            marker: packet.header.marker,
        };
        // A decoder that falls behind loses the newest audio rather than
        // stalling the peer connection's driver.
        if ctx.audio_in.try_send(out).is_err() {
            c.audio_in_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn run_data_channel(dc: Arc<dyn DataChannel>, ctx: Arc<Ctx>) {
    let mut ping = tokio::time::interval(ctx.settings.ping_interval);
    let mut open = false;
    let mut next_id: u64 = 0;
    loop {
        tokio::select! {
            event = dc.poll() => match event {
                None | Some(DataChannelEvent::OnClose) => break,
                Some(DataChannelEvent::OnOpen) => {
                    open = true;
                    next_id += 1;
                    let ready = ClientMessage::ClientReady.to_json(&next_id.to_string());
                    if let Err(e) = dc.send_text(&ready).await {
                        warn!(error = %e, "sending client-ready failed");
                    }
                    let _ = ctx.events.send(LinkEvent::Ready).await;
                }
                Some(DataChannelEvent::OnMessage(msg)) => handle_inbound(&ctx, &msg.data).await,
                Some(_) => {}
            },
            _ = ping.tick(), if open => {
                if dc.send_text(rtvi::PING).await.is_err() {
                    break;
                }
            }
        }
    }
    debug!("data channel closed");
}

async fn handle_inbound(ctx: &Ctx, bytes: &[u8]) {
    let c = &ctx.counters;
    match rtvi::parse(bytes) {
        Inbound::Bot(message) => {
            debug!(kind = message.wire_type(), "RTVI message");
            let _ = ctx.events.send(LinkEvent::Bot(message)).await;
        }
        Inbound::Signalling(s) => {
            let _ = ctx.signalling_tx.send(s).await;
        }
        Inbound::Ping | Inbound::Ignored(Ignored::Unused) => {}
        Inbound::Client(_) | Inbound::Ignored(Ignored::UnknownType) => {
            c.rtvi_unknown.fetch_add(1, Ordering::Relaxed);
        }
        Inbound::Ignored(Ignored::Malformed) => {
            c.rtvi_malformed.fetch_add(1, Ordering::Relaxed);
            warn!(
                bytes = bytes.len(),
                "malformed data-channel message ignored"
            );
        }
        Inbound::Ignored(Ignored::Oversized) => {
            c.rtvi_oversized.fetch_add(1, Ordering::Relaxed);
            warn!(
                bytes = bytes.len(),
                "oversized data-channel message ignored"
            );
        }
    }
}

/// RTP sequence numbers and 48 kHz timestamps for the outgoing stream.
struct RtpClock {
    seq: u16,
    base_ts: u32,
    epoch: Instant,
    next_ts: Option<u32>,
}

impl RtpClock {
    fn new(epoch: Instant) -> Self {
        Self {
            seq: rand::random(),
            base_ts: rand::random(),
            epoch,
            next_ts: None,
        }
    }

    /// (sequence, timestamp, marker) for `frame` handed over at `now`.
    fn stamp(&mut self, frame: &OpusFrame, now: Instant) -> (u16, u32, bool) {
        let samples =
            |d: Duration| (d.as_micros() * u128::from(OPUS_CLOCK_RATE) / 1_000_000) as u32;
        let wall = self
            .base_ts
            .wrapping_add(samples(now.saturating_duration_since(self.epoch)));
        let (ts, marker) = match self.next_ts {
            None => (wall, true),
            // After silence the timestamp must cover the gap, so it follows
            // the wall clock, but never goes backwards.
            Some(next) if frame.after_silence => {
                let ahead = wall.wrapping_sub(next) as i32 > 0;
                (if ahead { wall } else { next }, true)
            }
            Some(next) => (next, false),
        };
        self.next_ts = Some(ts.wrapping_add(samples(frame.duration)));
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        (seq, ts, marker)
    }
}

/// How long a remote close waits for the `peerLeft` that may explain it.
const PEER_LEFT_GRACE: Duration = Duration::from_millis(500);

struct Supervisor {
    ctx: Arc<Ctx>,
    run: PeerRun,
    rtp: RtpClock,
    control: mpsc::Receiver<Control>,
    audio_out: mpsc::Receiver<OpusFrame>,
    signalling: mpsc::Receiver<Signalling>,
    cancel: CancellationToken,
    stats: stats::StatsState,
}

enum Next {
    Continue,
    Restart(String),
    Stop,
}

impl Supervisor {
    async fn run(mut self) {
        loop {
            let next = tokio::select! {
                _ = self.cancel.cancelled() => Next::Stop,
                signal = self.run.signals.recv() => self.on_signal(signal).await,
                Some(s) = self.signalling.recv() => self.on_signalling(s).await,
                control = self.control.recv() => match control {
                    Some(c) => { self.on_control(c).await; Next::Continue }
                    None => Next::Stop,
                },
                Some(frame) = self.audio_out.recv() => { self.send_frame(frame).await; Next::Continue }
            };
            match next {
                Next::Continue => {}
                Next::Stop => break,
                Next::Restart(reason) => {
                    if !self.restart(reason).await {
                        break;
                    }
                }
            }
        }
        if let Err(e) = self.ctx.signaling.hang_up().await {
            warn!(error = %e, "hang-up failed");
        }
        let _ = self.run.peer.pc.close().await;
        info!("link closed");
    }

    async fn on_signal(&mut self, signal: Option<PeerSignal>) -> Next {
        match signal {
            None => Next::Restart("peer connection driver ended".into()),
            Some(PeerSignal::State(RTCPeerConnectionState::Closed)) => {
                // A bot that leaves sends `peerLeft` and closes at once; the
                // close can overtake the message on its way to us, and a
                // deliberate hang-up must not be "repaired" by a restart.
                match tokio::time::timeout(PEER_LEFT_GRACE, self.signalling.recv()).await {
                    Ok(Some(message)) => self.on_signalling(message).await,
                    _ => Next::Restart("peer connection closed by the agent".into()),
                }
            }
            Some(PeerSignal::State(
                s @ (RTCPeerConnectionState::Disconnected | RTCPeerConnectionState::Failed),
            )) => Next::Restart(format!("peer connection {s}")),
            Some(other) => {
                handle_signal(&self.ctx, &mut self.run, other).await;
                Next::Continue
            }
        }
    }

    async fn on_signalling(&mut self, message: Signalling) -> Next {
        match message {
            Signalling::PeerLeft => {
                info!("agent left the call");
                let _ = self.ctx.events.send(LinkEvent::PeerLeft).await;
                Next::Stop
            }
            Signalling::Renegotiate => {
                match negotiate(&self.ctx, &mut self.run, OfferKind::Renegotiate).await {
                    Ok(()) => Next::Continue,
                    Err(e) => Next::Restart(format!("renegotiation failed: {e}")),
                }
            }
        }
    }

    async fn on_control(&mut self, control: Control) {
        match control {
            Control::Send(message) => {
                let id = message_id();
                if let Err(e) = self.run.dc.send_text(&message.to_json(&id)).await {
                    warn!(error = %e, "sending an RTVI message failed");
                }
            }
            Control::Stats(reply) => {
                let stats = self
                    .stats
                    .collect(&self.ctx.counters, &*self.run.peer.pc)
                    .await;
                let _ = reply.send(stats);
            }
        }
    }

    async fn send_frame(&mut self, frame: OpusFrame) {
        let now = Instant::now();
        let (seq, ts, marker) = self.rtp.stamp(&frame, now);
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::Header {
                version: 2,
                marker,
                payload_type: self.run.payload_type,
                sequence_number: seq,
                timestamp: ts,
                ssrc: self.run.peer.ssrc,
                ..Default::default()
            },
            payload: frame.data,
        };
        let bytes = packet.payload.len() as u64;
        match self.run.peer.audio.write_rtp(packet).await {
            Ok(()) => {
                let c = &self.ctx.counters;
                if c.packets_sent.fetch_add(1, Ordering::Relaxed) == 0 {
                    self.stats.first_packet_sent = Some(now - self.ctx.started);
                }
                c.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
                self.ctx.packets_sent_total.increment(1);
            }
            Err(e) => debug!(error = %e, "dropping an outgoing frame"),
        }
    }

    /// Replaces the broken peer connection; false when the call is lost or
    /// the link was closed meanwhile.
    async fn restart(&mut self, reason: String) -> bool {
        warn!(%reason, "media path broken, restarting the peer connection");
        let _ = self
            .ctx
            .events
            .send(LinkEvent::Reconnecting {
                reason: reason.clone(),
            })
            .await;
        let began = Instant::now();
        let deadline = tokio::time::Instant::now() + self.ctx.settings.reconnect_timeout;
        // Jittered exponential backoff between attempts (backon's policy, so
        // retry timing is not hand-rolled here and in the Daily client).
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(2))
            .with_jitter()
            .without_max_times()
            .build();
        let mut last_error = reason;
        loop {
            let attempt = tokio::select! {
                _ = self.cancel.cancelled() => return false,
                r = tokio::time::timeout_at(deadline, establish(&self.ctx, OfferKind::Restart)) => r,
            };
            match attempt {
                Ok(Ok(run)) => {
                    let old = std::mem::replace(&mut self.run, run);
                    let _ = old.peer.pc.close().await;
                    self.ctx.counters.restarts.fetch_add(1, Ordering::Relaxed);
                    let after = began.elapsed();
                    info!(after_ms = after.as_millis() as u64, "link restored");
                    self.stats.last_recovery = Some(after);
                    let _ = self.ctx.events.send(LinkEvent::Reconnected { after }).await;
                    return true;
                }
                Ok(Err(e)) => {
                    warn!(error = %e, "restart attempt failed");
                    last_error = e.to_string();
                }
                Err(_) => break,
            }
            let delay = delays.next().unwrap_or(Duration::from_secs(2));
            tokio::select! {
                _ = self.cancel.cancelled() => return false,
                _ = tokio::time::sleep_until((tokio::time::Instant::now() + delay).min(deadline)) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        let reason = format!(
            "not recovered within {:?}: {last_error}",
            self.ctx.settings.reconnect_timeout
        );
        warn!(%reason, "link lost");
        let _ = self.ctx.events.send(LinkEvent::Lost { reason }).await;
        false
    }
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

/// A message id for RTVI: unique within the call is all RTVI needs.
fn message_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(after_silence: bool) -> OpusFrame {
        OpusFrame {
            data: Bytes::from_static(&[0xf8]),
            duration: Duration::from_millis(20),
            after_silence,
        }
    }

    #[test]
    fn rtp_clock_counts_samples_and_marks_talk_spurts() {
        let epoch = Instant::now();
        let mut clock = RtpClock::new(epoch);
        let (s0, t0, m0) = clock.stamp(&frame(false), epoch);
        assert!(m0, "first packet starts a talk spurt");
        let (s1, t1, m1) = clock.stamp(&frame(false), epoch + Duration::from_millis(20));
        assert_eq!(s1, s0.wrapping_add(1));
        assert_eq!(t1, t0.wrapping_add(960));
        assert!(!m1);
        // one second of DTX silence, then speech again
        let (_, t2, m2) = clock.stamp(&frame(true), epoch + Duration::from_millis(1040));
        assert!(m2);
        assert_eq!(t2, t0.wrapping_add(48 * 1040));
        // an early "after silence" frame never moves the timestamp backwards
        let (_, t3, m3) = clock.stamp(&frame(true), epoch + Duration::from_millis(1040));
        assert!(m3);
        assert_eq!(t3, t2.wrapping_add(960));
    }
}
