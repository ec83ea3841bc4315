//! The task behind a [`Link`](super::Link): it builds peer connections,
//! sends the caller's frames as RTP, reads the agent's track and data
//! channel, and replaces a broken peer connection with a new one.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelInit};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{RTCPeerConnectionState, RTCSessionDescription};

use super::pacer::PacedFrames;
use super::peer::{Peer, PeerConfig, PeerSignal, agent_decoder};
use super::redundancy::{Change, Redundancy};
use super::rtp_clock::RtpClock;
use super::rtvi::{self, ClientMessage, Ignored, Inbound, Signalling};
use super::signaling::{Candidate, OfferKind, Signaling};
use super::stats::{self, Counters, LinkStats};
use super::{LinkError, LinkEvent, LinkSettings, OpusFrame, OpusPacket};
use crate::audio::AgentDecoder;
use crate::error_text::error_chain;

pub(crate) enum Control {
    Send(ClientMessage),
    Stats(oneshot::Sender<LinkStats>),
}

/// Shared by every peer connection of one link (they replace each other
/// on restart).
pub(super) struct Ctx {
    pub(super) settings: LinkSettings,
    pub(super) peer_config: PeerConfig,
    pub(super) signaling: Arc<dyn Signaling>,
    pub(super) events: mpsc::Sender<LinkEvent>,
    pub(super) audio_in: mpsc::Sender<OpusPacket>,
    pub(super) signalling_tx: mpsc::Sender<Signalling>,
    pub(super) counters: Arc<Counters>,
    /// `kiosk_link_packets_sent_total`, looked up once: it counts every
    /// packet, 50 a second.
    pub(super) packets_sent_total: metrics::Counter,
    pub(super) ssrc: u32,
    pub(super) started: Instant,
}

/// One live peer connection and what hangs off it.
pub(super) struct PeerRun {
    peer: Peer,
    signals: mpsc::Receiver<PeerSignal>,
    dc: Arc<dyn DataChannel>,
    /// Candidates found after the offer went out must be trickled.
    trickle: bool,
    payload_type: u8,
    /// What the agent's answer said its decoder takes.
    agent: AgentDecoder,
    /// Audio tracks the agent opened; one is read, more are ignored.
    tracks: u32,
}

/// Builds a peer connection and runs one offer/answer until it is connected.
pub(super) async fn establish(ctx: &Arc<Ctx>, kind: OfferKind) -> Result<PeerRun, LinkError> {
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
        agent: AgentDecoder {
            inband_fec: false,
            max_packet: None,
        },
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
    run.agent = agent_decoder(&answer);
    run.peer
        .pc
        .set_remote_description(RTCSessionDescription::answer(answer)?)
        .await?;
    debug!(
        ?kind,
        trickle = run.trickle,
        agent_decodes_fec = run.agent.inband_fec,
        agent_max_packet_ms = run.agent.max_packet.map(|m| m.0),
        "offer answered"
    );
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
                warn!(error = %error_chain(&e), "trickling a candidate failed");
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
                        warn!(error = %error_chain(&e), "sending client-ready failed");
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

/// How long a remote close waits for the `peerLeft` that may explain it.
const PEER_LEFT_GRACE: Duration = Duration::from_millis(500);

pub(super) struct Supervisor {
    pub(super) ctx: Arc<Ctx>,
    pub(super) run: PeerRun,
    pub(super) rtp: RtpClock,
    pub(super) control: mpsc::Receiver<Control>,
    pub(super) audio_out: PacedFrames,
    pub(super) signalling: mpsc::Receiver<Signalling>,
    pub(super) cancel: CancellationToken,
    pub(super) stats: stats::StatsState,
    pub(super) redundancy: Redundancy,
}

/// Packets sent between two looks at the agent's loss reports: a second.
const REPORT_CHECK_PACKETS: u64 = 50;

enum Next {
    Continue,
    Restart(String),
    Stop,
}

impl Supervisor {
    pub(super) async fn run(mut self) {
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
            warn!(error = %error_chain(&e), "hang-up failed");
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
                    Err(e) => Next::Restart(format!("renegotiation failed: {}", error_chain(&e))),
                }
            }
        }
    }

    async fn on_control(&mut self, control: Control) {
        match control {
            Control::Send(message) => {
                let id = message_id();
                if let Err(e) = self.run.dc.send_text(&message.to_json(&id)).await {
                    warn!(error = %error_chain(&e), "sending an RTVI message failed");
                }
            }
            Control::Stats(reply) => {
                let mut stats = self.stats.collect(&self.ctx.counters, &self.run.peer).await;
                stats.sending_twice = self.redundancy.lossy();
                stats.agent_decodes_fec = Some(self.run.agent.inband_fec);
                stats.agent_max_packet_ms = self.run.agent.max_packet.map(|m| m.0);
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
        let copy = self.redundancy.copy_along(&packet);
        let bytes = packet.payload.len() as u64;
        let c = &self.ctx.counters;
        let sent = match self.run.peer.audio.write_rtp(packet).await {
            Ok(()) => {
                let sent = c.packets_sent.fetch_add(1, Ordering::Relaxed) + 1;
                c.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
                self.ctx.packets_sent_total.increment(1);
                sent
            }
            Err(e) => {
                debug!(error = %error_chain(&e), "dropping an outgoing frame");
                0
            }
        };
        if let Some(copy) = copy {
            let bytes = copy.payload.len() as u64;
            if self.run.peer.audio.write_rtp(copy).await.is_ok() {
                c.copies_sent.fetch_add(1, Ordering::Relaxed);
                c.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
            }
        }
        if sent == 1 {
            self.stats.first_packet_sent = Some(now - self.ctx.started);
        }
        if sent > 0 && sent % REPORT_CHECK_PACKETS == 0 {
            self.consider_copies(sent);
        }
    }

    /// Turns the packet copies on or off by the agent's latest report.
    fn consider_copies(&mut self, sent: u64) {
        if self.redundancy.lossy() {
            return;
        }
        let Some(report) = self.run.peer.reports.latest() else {
            return;
        };
        match self.redundancy.consider(&report, sent) {
            Some(Change::Lossy(share)) => info!(
                loss_out_percent = format!("{:.1}", 100.0 * share),
                "the agent is losing our audio; each packet goes out twice to the end of the call"
            ),
            Some(Change::Clean) => debug!("the agent lost none of our audio; packet copies off"),
            None => {}
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
                    self.redundancy.restart();
                    let _ = old.peer.pc.close().await;
                    self.ctx.counters.restarts.fetch_add(1, Ordering::Relaxed);
                    let after = began.elapsed();
                    info!(after_ms = after.as_millis() as u64, "link restored");
                    self.stats.last_recovery = Some(after);
                    let _ = self.ctx.events.send(LinkEvent::Reconnected { after }).await;
                    return true;
                }
                Ok(Err(e)) => {
                    warn!(error = %error_chain(&e), "restart attempt failed");
                    last_error = error_chain(&e);
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

/// A message id for RTVI: unique within the call is all RTVI needs.
fn message_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}
