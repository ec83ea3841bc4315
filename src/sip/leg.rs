//! A SIP call as a session's media leg (`session.provision = "daily-sip"`):
//! the kiosk dials the room's SIP endpoint and the session sees the call
//! through the same [`Link`] and [`LinkIo`] as a WebRTC call, so its
//! states, buffering, idle end and failure prompt are unchanged.
//!
//! - The first dial is tried again on 404, 480 and 503 (after the peer's
//!   Retry-After, else with backoff) until `ready_timeout`: Daily's endpoint
//!   takes callers only once the bot is in the room and its SIP worker is
//!   ready.
//! - Opus only: the audio engine's frames go out as they are and the
//!   peer's packets go to its jitter buffer undecoded.
//! - A call the peer hangs up, whose session refresh fails, or that brings
//!   no RTP for `media_timeout` is re-dialled; the session hears
//!   [`LinkEvent::Reconnecting`], then `Reconnected`, or `Lost` once
//!   `reconnect_timeout` has passed.
//! - There is no data channel: RTVI messages the session sends are dropped.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::dial::normalize_target;
use super::dialog::{CallFailure, DialConfig, DialEvent, Dialer, Hangup};
pub use super::dialog::{Credentials, Timers};
use super::media::RTCP_INTERVAL;
use super::message::MAX_MESSAGE;
use super::net::{NetError, Sockets, start_line};
use super::rtp::{self, RtpSession};
use super::sdp::{Codec, Codecs, RemoteMedia};
use crate::link::pacer::PacedFrames;
use crate::link::{
    Control, Link, LinkError, LinkEvent, LinkIo, LinkSettings, LinkStats, OpusFrame, OpusPacket,
};

/// Largest media datagram read (an Opus packet of the engine's size plus headers).
const MAX_MEDIA_DATAGRAM: usize = 2048;
/// A hang-up waits this long for the peer's 200 to our BYE.
const BYE_WAIT: Duration = Duration::from_secs(2);
/// First wait between dial attempts without a Retry-After; doubles up to `MAX_RETRY_WAIT`.
const FIRST_RETRY_WAIT: Duration = Duration::from_millis(500);
const MAX_RETRY_WAIT: Duration = Duration::from_secs(4);
/// Opus's RTP clock.
const OPUS_CLOCK: u32 = 48_000;

/// A session's limits for its SIP leg (`[sip]`).
#[derive(Clone, Copy, Debug)]
pub struct SipTimeouts {
    /// One INVITE's time to be answered.
    pub answer_timeout: Duration,
    /// A call with no RTP for this long is hung up and re-dialled.
    pub media_timeout: Duration,
}

impl Default for SipTimeouts {
    fn default() -> Self {
        Self {
            answer_timeout: Duration::from_secs(10),
            media_timeout: Duration::from_secs(10),
        }
    }
}

/// How a session's SIP leg is dialled.
#[derive(Clone, Debug)]
pub struct LegSettings {
    /// The room's SIP URI (`sip:` may be left out).
    pub target: String,
    /// The user part of From and Contact: the kiosk's name in the room.
    pub from_user: String,
    /// Digest credentials, used only when the endpoint challenges.
    pub credentials: Option<Credentials>,
    /// One INVITE's time to be answered.
    pub answer_timeout: Duration,
    /// The first dial is retried until this long after it began.
    pub ready_timeout: Duration,
    /// A call with no RTP for this long is hung up and re-dialled.
    pub media_timeout: Duration,
    /// RFC 3261 timers.
    pub timers: Timers,
}

/// Why the leg could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LegError {
    /// The target or the sockets.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The endpoint did not take the call in time.
    #[error("the SIP endpoint did not take the call after {attempts} attempt{}: {failure}", if *attempts == 1 { "" } else { "s" })]
    Call {
        /// Why the last attempt failed.
        failure: CallFailure,
        /// INVITEs sent as new calls.
        attempts: u32,
    },
    /// The endpoint answered with a codec the leg does not carry.
    #[error("the SIP endpoint answered with {0}; a session's leg carries Opus only")]
    Codec(&'static str),
}

/// Dials `settings.target` and returns once the call is answered; the call
/// then runs in its own task until the link is closed or given up.
pub async fn connect(
    settings: LegSettings,
    link: &LinkSettings,
) -> Result<(Link, LinkIo), LinkError> {
    let sip_err = |e: LegError| LinkError::Sip(Box::new(e));
    let target = normalize_target(&settings.target);
    let sockets = Sockets::open(&target, None)
        .await
        .map_err(|e| sip_err(e.into()))?;
    let config = DialConfig {
        target,
        local: sockets
            .sip
            .local_addr()
            .map_err(|e| sip_err(NetError::from(e).into()))?,
        media: sockets
            .rtp
            .local_addr()
            .map_err(|e| sip_err(NetError::from(e).into()))?,
        from_user: settings.from_user.clone(),
        codecs: Codecs::OpusOnly,
        credentials: settings.credentials.clone(),
        answer_timeout: settings.answer_timeout,
        timers: settings.timers,
    };
    let (events_tx, events_rx) = mpsc::channel(64);
    let (audio_in_tx, audio_in_rx) = mpsc::channel(link.audio_in_capacity);
    let (audio_out_tx, audio_out_rx) = mpsc::channel(link.audio_out_capacity);
    let (control_tx, control_rx) = mpsc::channel(32);
    let cancel = CancellationToken::new();
    let mut leg = Leg {
        settings,
        reconnect_timeout: link.reconnect_timeout,
        config,
        sockets,
        events: events_tx,
        audio_in: audio_in_tx,
        audio_out: PacedFrames::new(audio_out_rx),
        control: control_rx,
        cancel: cancel.clone(),
        totals: Totals::default(),
        sip_buf: vec![0; MAX_MESSAGE + 1],
        media_bufs: (vec![0; MAX_MEDIA_DATAGRAM], vec![0; MAX_MEDIA_DATAGRAM]),
    };
    let started = Instant::now();
    let call = match leg.dial(started + leg.settings.ready_timeout).await {
        Ok(call) => call,
        Err(Dialled::Cancelled) => return Err(LinkError::Closed),
        Err(Dialled::Failed(e)) => return Err(sip_err(e)),
    };
    info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "SIP leg answered"
    );
    let _ = leg.events.send(LinkEvent::Ready).await;
    let task = tokio::spawn(leg.run(call));
    Ok((
        Link::from_task(control_tx, cancel, task),
        LinkIo {
            audio_out: audio_out_tx,
            audio_in: audio_in_rx,
            events: events_rx,
        },
    ))
}

/// Counters over every call of the leg, for [`LinkStats`].
#[derive(Default)]
struct Totals {
    /// Statistics of calls that have ended.
    ended: rtp::RtpStats,
    audio_in_dropped: u64,
    restarts: u64,
    last_recovery: Option<Duration>,
}

/// An answered call.
struct Call {
    dialer: Dialer,
    remote: RemoteMedia,
    rtp: RtpSession,
    next_rtcp: Instant,
    /// When the previous frame went out, to carry the RTP timestamp over
    /// the engine's silences.
    last_sent: Option<Instant>,
}

/// How an attempt to get a call ended, when not with one.
enum Dialled {
    Failed(LegError),
    Cancelled,
}

/// How a call ended.
enum Ended {
    /// Dropped for `reason`; worth dialling again.
    Dropped(String),
    /// The link was closed: we hung up.
    Closed,
}

struct Leg {
    settings: LegSettings,
    reconnect_timeout: Duration,
    config: DialConfig,
    sockets: Sockets,
    events: mpsc::Sender<LinkEvent>,
    audio_in: mpsc::Sender<OpusPacket>,
    /// Spreads the speech held while the call was dialled over twice real
    /// time instead of one burst.
    audio_out: PacedFrames,
    control: mpsc::Receiver<Control>,
    cancel: CancellationToken,
    totals: Totals,
    sip_buf: Vec<u8>,
    /// RTP and RTCP receive buffers.
    media_bufs: (Vec<u8>, Vec<u8>),
}

impl Leg {
    async fn run(mut self, mut call: Call) {
        loop {
            match self.in_call(&mut call).await {
                Ended::Closed => return,
                Ended::Dropped(reason) => {
                    self.totals.ended = add(self.totals.ended, call.rtp.stats());
                    warn!(%reason, "SIP call dropped; dialling again");
                    let _ = self
                        .events
                        .send(LinkEvent::Reconnecting {
                            reason: reason.clone(),
                        })
                        .await;
                    let since = Instant::now();
                    match self.dial(since + self.reconnect_timeout).await {
                        Ok(next) => {
                            let after = since.elapsed();
                            self.totals.restarts += 1;
                            self.totals.last_recovery = Some(after);
                            let _ = self.events.send(LinkEvent::Reconnected { after }).await;
                            call = next;
                        }
                        Err(Dialled::Cancelled) => return,
                        Err(Dialled::Failed(e)) => {
                            let reason = format!("{reason}; then {e}");
                            let _ = self.events.send(LinkEvent::Lost { reason }).await;
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Dials until answered, retrying what the endpoint says may work
    /// later, until `deadline`.
    async fn dial(&mut self, deadline: Instant) -> Result<Call, Dialled> {
        let mut attempts = 0;
        let mut backoff = FIRST_RETRY_WAIT;
        loop {
            attempts += 1;
            let failure = match self.attempt(deadline).await? {
                Ok(call) => return Ok(call),
                Err(failure) => failure,
            };
            let retryable = matches!(
                failure,
                CallFailure::NotFound
                    | CallFailure::Unavailable { .. }
                    | CallFailure::ServiceUnavailable { .. }
                    | CallFailure::NoResponse
                    | CallFailure::NotAnswered { .. }
            );
            let wait = failure
                .retry_after()
                .flatten()
                .unwrap_or(backoff)
                .min(MAX_RETRY_WAIT);
            backoff = (backoff * 2).min(MAX_RETRY_WAIT);
            if !retryable || Instant::now() + wait >= deadline {
                return Err(Dialled::Failed(LegError::Call { failure, attempts }));
            }
            info!(%failure, attempts, wait_ms = wait.as_millis() as u64, "SIP endpoint not ready; trying again");
            let until = tokio::time::Instant::now() + wait;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    _ = self.cancel.cancelled() => return Err(Dialled::Cancelled),
                    Some(control) = self.control.recv() => self.on_control(control, None),
                    Some(_) = self.audio_out.discard() => {}
                }
            }
        }
    }

    /// One INVITE, to its answer or failure.
    async fn attempt(&mut self, deadline: Instant) -> Result<Result<Call, CallFailure>, Dialled> {
        let now = Instant::now();
        let mut config = self.config.clone();
        config.answer_timeout = config.answer_timeout.min(
            deadline
                .saturating_duration_since(now)
                .max(Duration::from_millis(100)),
        );
        let mut dialer =
            Dialer::new(config, now).map_err(|e| Dialled::Failed(LegError::Net(e.into())))?;
        info!(call_id = dialer.call_id(), peer = %self.sockets.peer, "dialling");
        loop {
            self.transmit(&mut dialer).await;
            while let Some(event) = dialer.poll_event() {
                match event {
                    DialEvent::Progress { code, reason } => debug!(code, reason, "SIP progress"),
                    DialEvent::Answered { media, .. } if media.codec != Codec::Opus => {
                        dialer.hang_up(Instant::now());
                        self.transmit(&mut dialer).await;
                        return Err(Dialled::Failed(LegError::Codec(media.codec.name())));
                    }
                    DialEvent::Answered {
                        media,
                        session_expires,
                        ..
                    } => {
                        info!(remote_rtp = %media.rtp, session_expires_s = session_expires.map(|d| d.as_secs()), "SIP call answered");
                        let now = Instant::now();
                        let rtp = RtpSession::new(
                            rand::random(),
                            rand::random(),
                            rand::random(),
                            media.payload_type,
                            OPUS_CLOCK,
                            now,
                        );
                        return Ok(Ok(Call {
                            dialer,
                            remote: media,
                            rtp,
                            next_rtcp: now + RTCP_INTERVAL,
                            last_sent: None,
                        }));
                    }
                    DialEvent::Failed(failure) => return Ok(Err(failure)),
                    DialEvent::MediaChanged(_) | DialEvent::Ended(_) => {}
                }
            }
            if dialer.is_done() {
                return Ok(Err(CallFailure::NoResponse));
            }
            let wake = sleep_until(dialer.poll_timeout());
            tokio::select! {
                received = self.sockets.sip.recv_from(&mut self.sip_buf) => self.on_sip(&mut dialer, received),
                _ = wake => dialer.handle_timeout(Instant::now()),
                _ = self.cancel.cancelled() => {
                    // Cancels an INVITE still ringing; the wait is bounded.
                    dialer.hang_up(Instant::now());
                    self.finish(&mut dialer).await;
                    return Err(Dialled::Cancelled);
                }
                Some(control) = self.control.recv() => self.on_control(control, None),
                Some(_) = self.audio_out.discard() => {}
            }
        }
    }

    /// Carries one answered call until it ends.
    async fn in_call(&mut self, call: &mut Call) -> Ended {
        let mut check = tokio::time::interval(Duration::from_millis(500));
        let (mut rtp_buf, mut rtcp_buf) = std::mem::take(&mut self.media_bufs);
        let ended = loop {
            self.transmit(&mut call.dialer).await;
            let mut dropped = None;
            while let Some(event) = call.dialer.poll_event() {
                match event {
                    DialEvent::MediaChanged(remote) if remote.codec == Codec::Opus => {
                        info!(remote_rtp = %remote.rtp, "SIP peer moved its media");
                        call.remote = remote;
                    }
                    DialEvent::Ended(hangup) => {
                        dropped = Some(match hangup {
                            Hangup::Peer => "the SIP peer hung up".to_owned(),
                            Hangup::SessionExpired => {
                                "the SIP session was not refreshed".to_owned()
                            }
                            Hangup::SessionLost => "the SIP session refresh failed".to_owned(),
                            Hangup::Local => "the call was hung up".to_owned(),
                        });
                    }
                    other => debug!(?other, "SIP event in call"),
                }
            }
            if let Some(reason) = dropped {
                break Ended::Dropped(reason);
            }
            let wake = sleep_until(call.dialer.poll_timeout());
            tokio::select! {
                received = self.sockets.sip.recv_from(&mut self.sip_buf) => self.on_sip(&mut call.dialer, received),
                received = self.sockets.rtp.recv_from(&mut rtp_buf) => {
                    if let Ok((n, from)) = received {
                        self.on_rtp(call, &rtp_buf[..n], from);
                    }
                }
                received = self.sockets.rtcp.recv_from(&mut rtcp_buf) => {
                    if let Ok((n, from)) = received {
                        if from.ip() == call.remote.rtcp.ip() {
                            let _ = call.rtp.receive_rtcp(&rtcp_buf[..n], Instant::now());
                        } else {
                            call.rtp.count_foreign();
                        }
                    }
                }
                Some(frame) = self.audio_out.recv() => self.send_frame(call, &frame).await,
                Some(control) = self.control.recv() => self.on_control(control, Some(&call.rtp)),
                _ = wake => call.dialer.handle_timeout(Instant::now()),
                _ = check.tick() => {
                    let now = Instant::now();
                    if now >= call.next_rtcp {
                        call.next_rtcp = now + RTCP_INTERVAL;
                        let report = call.rtp.report(now);
                        let socket = if call.remote.rtcp_mux { &self.sockets.rtp } else { &self.sockets.rtcp };
                        if let Err(e) = socket.send_to(&report, call.remote.rtcp).await {
                            debug!(error = %e, "cannot send RTCP");
                        }
                    }
                    let silent = call.rtp.silent_for(now);
                    if silent >= self.settings.media_timeout {
                        call.dialer.hang_up(now);
                        self.finish(&mut call.dialer).await;
                        break Ended::Dropped(format!("no audio from the SIP peer for {} s", silent.as_secs()));
                    }
                }
                _ = self.cancel.cancelled() => {
                    call.dialer.hang_up(Instant::now());
                    self.finish(&mut call.dialer).await;
                    break Ended::Closed;
                }
            }
        };
        self.media_bufs = (rtp_buf, rtcp_buf);
        ended
    }

    /// Hands a datagram from the SIP socket to `dialer` if the peer sent it.
    fn on_sip(&self, dialer: &mut Dialer, received: std::io::Result<(usize, SocketAddr)>) {
        match received {
            Ok((n, from)) if from == self.sockets.peer => {
                if let Err(e) = dialer.handle_datagram(&self.sip_buf[..n], Instant::now()) {
                    debug!(error = %e, bytes = n, "SIP datagram dropped");
                }
            }
            Ok((_, from)) => debug!(%from, "SIP datagram from a stranger dropped"),
            Err(e) => debug!(error = %e, "cannot read the SIP socket"),
        }
    }

    fn on_rtp(&mut self, call: &mut Call, data: &[u8], from: SocketAddr) {
        let now = Instant::now();
        if from != call.remote.rtp {
            call.rtp.count_foreign();
        } else if rtp::is_rtcp(data) {
            let _ = call.rtp.receive_rtcp(data, now);
        } else if let Ok(packet) = call.rtp.receive(data, now) {
            let packet = OpusPacket {
                data: packet.payload,
                rtp_timestamp: packet.timestamp,
                sequence: packet.seq,
                marker: packet.marker,
            };
            if self.audio_in.try_send(packet).is_err() {
                self.totals.audio_in_dropped += 1;
            }
        }
    }

    async fn send_frame(&mut self, call: &mut Call, frame: &OpusFrame) {
        let now = Instant::now();
        let samples = samples_in(frame.duration);
        let marker = match call.last_sent {
            None => true,
            Some(last) if frame.after_silence => {
                // The timestamp covers the silence the engine did not send.
                let gap = now
                    .saturating_duration_since(last)
                    .saturating_sub(frame.duration);
                call.rtp.skip(samples_in(gap));
                true
            }
            Some(_) => false,
        };
        call.last_sent = Some(now);
        let packet = call.rtp.packetize(&frame.data, samples, marker);
        if let Err(e) = self.sockets.rtp.send_to(&packet, call.remote.rtp).await {
            debug!(error = %e, "cannot send RTP");
        }
    }

    fn on_control(&mut self, control: Control, rtp: Option<&RtpSession>) {
        match control {
            Control::Send(message) => {
                debug!(
                    ?message,
                    "no data channel on a SIP leg; RTVI message dropped"
                );
            }
            Control::Stats(reply) => {
                let _ = reply.send(self.stats(rtp));
            }
        }
    }

    fn stats(&self, rtp: Option<&RtpSession>) -> LinkStats {
        let live = rtp.map(RtpSession::stats).unwrap_or_default();
        let all = add(self.totals.ended, live);
        // 12 bytes of RTP header a packet, as WebRTC's byte counts include them.
        LinkStats {
            packets_sent: all.packets_sent,
            packets_received: all.packets_received,
            bytes_sent: all.octets_sent + 12 * all.packets_sent,
            bytes_received: all.octets_received + 12 * all.packets_received,
            packets_lost_local: all.packets_lost as i64,
            jitter_ms: rtp.map(|_| live.jitter_ms),
            audio_in_dropped: self.totals.audio_in_dropped,
            restarts: self.totals.restarts,
            last_recovery_ms: self.totals.last_recovery.map(|d| d.as_millis() as u64),
            ..LinkStats::default()
        }
    }

    async fn transmit(&self, dialer: &mut Dialer) {
        while let Some(datagram) = dialer.poll_transmit() {
            debug!(line = start_line(&datagram), "SIP out");
            if let Err(e) = self.sockets.sip.send_to(&datagram, self.sockets.peer).await {
                warn!(error = %e, "cannot send SIP");
            }
        }
    }

    /// After a hang-up: sends the BYE (or CANCEL) and waits, bounded, for
    /// the dialog to finish.
    async fn finish(&mut self, dialer: &mut Dialer) {
        let give_up = tokio::time::Instant::now() + BYE_WAIT;
        loop {
            self.transmit(dialer).await;
            while dialer.poll_event().is_some() {}
            if dialer.is_done() {
                return;
            }
            let wake = sleep_until(dialer.poll_timeout());
            tokio::select! {
                received = self.sockets.sip.recv_from(&mut self.sip_buf) => self.on_sip(dialer, received),
                _ = wake => dialer.handle_timeout(Instant::now()),
                _ = tokio::time::sleep_until(give_up) => return,
            }
        }
    }
}

fn sleep_until(at: Option<Instant>) -> tokio::time::Sleep {
    tokio::time::sleep_until(
        at.map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600)),
    )
}

fn samples_in(d: Duration) -> u32 {
    (d.as_micros() * u128::from(OPUS_CLOCK) / 1_000_000) as u32
}

/// Counters of two calls added up (jitter is the latest call's).
fn add(a: rtp::RtpStats, b: rtp::RtpStats) -> rtp::RtpStats {
    rtp::RtpStats {
        packets_sent: a.packets_sent + b.packets_sent,
        octets_sent: a.octets_sent + b.octets_sent,
        packets_received: a.packets_received + b.packets_received,
        octets_received: a.octets_received + b.octets_received,
        packets_lost: a.packets_lost + b.packets_lost,
        ..b
    }
}
