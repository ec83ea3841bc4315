//! `kiosk-gateway dial`: one SIP call driven on tokio. The input WAV is
//! streamed as the kiosk's microphone, 20 ms a packet in real time; what
//! the peer sends is recorded; the call is hung up with BYE after the
//! requested time (or the input and a short tail).
//!
//! Rules a technician can rely on:
//! - 480 and 503 are tried again (`retries` times) after the peer's
//!   Retry-After (1 s without one, never more than `max_retry_wait`);
//!   every other failure ends the command at once with its status.
//! - RTP that stops is counted (`gaps`, `longest_gap_ms`); the call goes
//!   on until none has come for `media_timeout`, then it is hung up
//!   (`ended_by: "media_timeout"`).
//! - Datagrams from anyone but the peer, or that are not SIP or RTP, are
//!   counted and dropped.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{debug, info, warn};

use super::dialog::{
    CallFailure, Credentials, DialConfig, DialError, DialEvent, Dialer, Hangup, Timers,
};
use super::media::{Media, RTCP_INTERVAL};
use super::message::MAX_MESSAGE;
use super::net::{NetError, Sockets, start_line};
use super::rtp::{self, RtpStats};
use super::sdp::{Codec, Codecs};
use crate::audio::{self, AudioError, AudioSettings, Millis, PcmClip, SampleRate, resample_clip};

/// One packet's worth of audio.
const FRAME: Duration = Duration::from_millis(20);
/// Largest datagram read from a media socket (an RTP packet the audio
/// engine takes is at most `MAX_PACKET` plus headers); larger ones are
/// cut and then refused as malformed.
const MAX_MEDIA_DATAGRAM: usize = 2048;

#[derive(Clone, Debug)]
pub struct DialOptions {
    /// `sip:user@host[:port]`, `sips:` not supported; the `sip:` may be left out.
    pub target: String,
    pub input: PathBuf,
    pub output: Option<PathBuf>,
    /// Length of the call from the answer; `None`: the input plus `tail`.
    pub duration: Option<Duration>,
    pub tail: Duration,
    pub answer_timeout: Duration,
    pub media_timeout: Duration,
    pub retries: u32,
    pub max_retry_wait: Duration,
    /// Local address to use; `None`: the one the system routes to the peer from.
    pub bind: Option<IpAddr>,
    pub credentials: Option<Credentials>,
    /// Opus bitrate, complexity and jitter buffer (`[audio]`).
    pub audio: AudioSettings,
    pub timers: Timers,
}

/// The `--json` summary. Field names are stable; times are milliseconds.
#[derive(Clone, Debug, Serialize)]
pub struct DialSummary {
    pub answered: bool,
    /// INVITEs sent as new calls (retries after 480/503 included).
    pub attempts: u32,
    /// From the last INVITE to its 2xx (digest challenges included).
    pub invite_to_answer_ms: u64,
    /// From the last INVITE to its first provisional response.
    pub first_progress_ms: Option<u64>,
    pub codec: Codec,
    pub payload_type: u8,
    pub remote_rtp: String,
    pub rtcp_mux: bool,
    pub session_expires_s: Option<u64>,
    pub call_ms: u64,
    /// 20 ms for every packet sent.
    pub audio_sent_ms: u64,
    /// 20 ms for every packet received (baresip's packet time; with a
    /// peer that packs other durations this is an estimate).
    pub audio_received_ms: u64,
    pub ended_by: EndedBy,
    pub bye_sent: bool,
    /// Datagrams on the SIP port that were not SIP, not from the peer, or
    /// for no transaction of this call.
    pub sip_ignored: u64,
    /// 20 ms frames of the peer's Opus that were concealed (lost or late).
    pub frames_concealed: u64,
    pub rtp: RtpStats,
}

/// How an answered call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndedBy {
    /// We sent BYE: the call's time was up (or Ctrl-C).
    Local,
    /// The peer sent BYE.
    Peer,
    /// We sent BYE after no RTP for `media_timeout`.
    MediaTimeout,
    /// We sent BYE: the peer was to refresh the session and did not.
    SessionExpired,
    /// A session refresh was answered 481/408 or not at all.
    SessionLost,
}

impl From<Hangup> for EndedBy {
    fn from(hangup: Hangup) -> Self {
        match hangup {
            Hangup::Local => Self::Local,
            Hangup::Peer => Self::Peer,
            Hangup::SessionExpired => Self::SessionExpired,
            Hangup::SessionLost => Self::SessionLost,
        }
    }
}

impl std::fmt::Display for EndedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Local => "local",
            Self::Peer => "peer",
            Self::MediaTimeout => "media_timeout",
            Self::SessionExpired => "session_expired",
            Self::SessionLost => "session_lost",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DialFailure {
    #[error(transparent)]
    Target(#[from] DialError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("input WAV {}: {problem}", path.display())]
    Input { path: PathBuf, problem: String },
    #[error("output WAV {}: {problem}", path.display())]
    Output { path: PathBuf, problem: String },
    #[error("Opus: {0}")]
    Codec(String),
    #[error("network")]
    Io(#[from] std::io::Error),
    #[error("call failed after {attempts} attempt{}: {failure}", if *attempts == 1 { "" } else { "s" })]
    Call { failure: CallFailure, attempts: u32 },
}

fn codec_err(e: AudioError) -> DialFailure {
    DialFailure::Codec(audio::error_chain(&e))
}

fn problem(e: &AudioError) -> String {
    match e {
        AudioError::Wav { source, .. } => source.to_string(),
        other => audio::error_chain(other),
    }
}

/// `sip:` added when missing; the rest is checked by the dialog.
pub fn normalize_target(target: &str) -> String {
    let target = target.trim();
    if target.starts_with("sip:") || target.starts_with("sips:") {
        target.to_owned()
    } else {
        format!("sip:{target}")
    }
}

/// Runs one call to its end; `Err` when it was never answered.
pub async fn dial(options: DialOptions) -> Result<DialSummary, DialFailure> {
    let target = normalize_target(&options.target);
    let input = read_input(&options.input)?;
    if let Some(path) = &options.output {
        // Fail on an unwritable path before calling anyone.
        audio::write_wav(
            path,
            &PcmClip {
                rate: input.rate,
                samples: Vec::new(),
            },
        )
        .map_err(|e| DialFailure::Output {
            path: path.clone(),
            problem: problem(&e),
        })?;
    }
    let sockets = Sockets::open(&target, options.bind).await?;
    let config = DialConfig {
        target,
        local: sockets.sip.local_addr()?,
        media: sockets.rtp.local_addr()?,
        from_user: "kiosk".into(),
        codecs: Codecs::OpusOrPcmu,
        credentials: options.credentials.clone(),
        answer_timeout: options.answer_timeout,
        timers: options.timers,
    };
    let mut attempts = 0;
    loop {
        attempts += 1;
        match run_attempt(&options, &config, &sockets, &input).await? {
            Attempt::Answered(call) => {
                let mut summary = call.summary;
                summary.attempts = attempts;
                if let Some(path) = &options.output {
                    write_recording(path, call.recording, input.rate)?;
                }
                return Ok(summary);
            }
            Attempt::Failed(failure) => {
                let retry = failure.retry_after();
                match retry {
                    Some(wait) if attempts <= options.retries => {
                        let wait = wait
                            .unwrap_or(Duration::from_secs(1))
                            .min(options.max_retry_wait);
                        info!(%failure, wait_ms = wait.as_millis() as u64, attempts, "peer asks to try again");
                        tokio::time::sleep(wait).await;
                    }
                    _ => return Err(DialFailure::Call { failure, attempts }),
                }
            }
        }
    }
}

fn read_input(path: &Path) -> Result<PcmClip, DialFailure> {
    let input_err = |problem: String| DialFailure::Input {
        path: path.to_path_buf(),
        problem,
    };
    let clip = audio::read_wav(path).map_err(|e| input_err(problem(&e)))?;
    if clip.rate.hz() == 0 {
        return Err(input_err("the header gives a sample rate of 0 Hz".into()));
    }
    if clip.samples.is_empty() {
        return Err(input_err("no audio in the file".into()));
    }
    Ok(clip)
}

fn write_recording(path: &Path, clip: PcmClip, rate: SampleRate) -> Result<(), DialFailure> {
    let output_err = |e: AudioError| DialFailure::Output {
        path: path.to_path_buf(),
        problem: problem(&e),
    };
    let samples = resample_clip(&clip.samples, clip.rate, rate).map_err(output_err)?;
    audio::write_wav(path, &PcmClip { rate, samples }).map_err(output_err)
}

struct AnsweredCall {
    summary: DialSummary,
    recording: PcmClip,
}

enum Attempt {
    Answered(Box<AnsweredCall>),
    Failed(CallFailure),
}

async fn run_attempt(
    options: &DialOptions,
    config: &DialConfig,
    sockets: &Sockets,
    input: &PcmClip,
) -> Result<Attempt, DialFailure> {
    let started = Instant::now();
    let mut dialer = Dialer::new(config.clone(), started)?;
    info!(target = %config.target, peer = %sockets.peer, call_id = dialer.call_id(), "dialing");
    let ms = |d: Duration| d.as_millis() as u64;
    let mut media: Option<Media> = None;
    let mut answered_at: Option<Instant> = None;
    let mut invite_to_answer_ms = 0;
    let mut first_progress_ms = None;
    let mut session_expires = None;
    let mut failure: Option<CallFailure> = None;
    let mut ended_by: Option<EndedBy> = None;
    let mut bye_sent = false;
    let mut hung_up = false;
    // An error of ours once the call is up: reported after hanging up.
    let mut fatal: Option<DialFailure> = None;
    let mut sip_foreign = 0u64;
    let mut last_invite = started;
    // One byte over the limit, so an oversized message is seen as such.
    let mut sip_buf = vec![0u8; MAX_MESSAGE + 1];
    let mut rtp_buf = vec![0u8; MAX_MEDIA_DATAGRAM];
    let mut rtcp_buf = vec![0u8; MAX_MEDIA_DATAGRAM];
    let mut ticker = tokio::time::interval(FRAME);
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);

    loop {
        // Send what the dialog wants sent, then act on its events.
        while let Some(datagram) = dialer.poll_transmit() {
            if datagram.starts_with(b"INVITE ") && answered_at.is_none() {
                last_invite = Instant::now();
            }
            if datagram.starts_with(b"BYE ") {
                bye_sent = true;
            }
            debug!(line = start_line(&datagram), "SIP out");
            if let Err(e) = sockets.sip.send_to(&datagram, sockets.peer).await {
                warn!(error = %e, "cannot send SIP");
            }
        }
        while let Some(event) = dialer.poll_event() {
            let now = Instant::now();
            match event {
                DialEvent::Progress { code, reason } => {
                    first_progress_ms.get_or_insert(ms(now - last_invite));
                    info!(code, reason, "progress");
                }
                DialEvent::Answered {
                    media: remote,
                    session_expires: expires,
                    we_refresh,
                } => {
                    invite_to_answer_ms = ms(now - last_invite);
                    session_expires = expires.map(|d| d.as_secs());
                    info!(
                        codec = remote.codec.name(),
                        remote_rtp = %remote.rtp,
                        rtcp_mux = remote.rtcp_mux,
                        invite_to_answer_ms,
                        session_expires_s = session_expires,
                        we_refresh,
                        "answered"
                    );
                    answered_at = Some(now);
                    match Media::new(remote, input, &options.audio, now) {
                        Ok(m) => media = Some(m),
                        Err(e) => {
                            // The call is up: end it before reporting.
                            fatal = Some(codec_err(e));
                            hung_up = true;
                            dialer.hang_up(now);
                        }
                    }
                }
                DialEvent::MediaChanged(remote) => {
                    if let Some(m) = &mut media {
                        info!(remote_rtp = %remote.rtp, "peer moved its media");
                        m.remote.rtp = remote.rtp;
                        m.remote.rtcp = remote.rtcp;
                        m.remote.rtcp_mux = remote.rtcp_mux;
                    }
                }
                DialEvent::Failed(f) => {
                    warn!(failure = %f, "call failed");
                    failure = Some(f);
                }
                DialEvent::Ended(hangup) => {
                    info!(?hangup, "call ended");
                    ended_by.get_or_insert(hangup.into());
                }
            }
        }
        if dialer.is_done() {
            break;
        }
        let wake = dialer.poll_timeout();
        let deadline = tokio::time::sleep_until(
            wake.map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600)),
        );
        tokio::select! {
            received = sockets.sip.recv_from(&mut sip_buf) => {
                let (n, from) = received?;
                debug!(%from, line = start_line(&sip_buf[..n]), "SIP in");
                if from != sockets.peer {
                    sip_foreign += 1;
                    debug!(%from, "SIP datagram from a stranger dropped");
                } else if let Err(e) = dialer.handle_datagram(&sip_buf[..n], Instant::now()) {
                    debug!(error = %e, bytes = n, "SIP datagram dropped");
                }
            }
            received = sockets.rtp.recv_from(&mut rtp_buf) => {
                let (n, from) = received?;
                if let (Some(m), Some(at)) = (&mut media, answered_at) {
                    let now = Instant::now();
                    if from != m.remote.rtp {
                        m.session.count_foreign();
                    } else if rtp::is_rtcp(&rtp_buf[..n]) {
                        let _ = m.session.receive_rtcp(&rtp_buf[..n], now);
                    } else if let Ok(packet) = m.session.receive(&rtp_buf[..n], now) {
                        m.recorder.push(&packet, Millis(ms(now - at) as u32));
                    }
                }
            }
            received = sockets.rtcp.recv_from(&mut rtcp_buf) => {
                let (n, from) = received?;
                if let Some(m) = &mut media {
                    if from.ip() != m.remote.rtcp.ip() {
                        m.session.count_foreign();
                    } else {
                        let _ = m.session.receive_rtcp(&rtcp_buf[..n], Instant::now());
                    }
                }
            }
            _ = ticker.tick() => {
                let now = Instant::now();
                if let (Some(m), Some(at), true) = (&mut media, answered_at, dialer.is_established()) {
                    match m.next_packet() {
                        Ok(packet) => {
                            if let Err(e) = sockets.rtp.send_to(&packet, m.remote.rtp).await {
                                warn!(error = %e, "cannot send RTP");
                            }
                        }
                        Err(e) if !hung_up => {
                            fatal = Some(codec_err(e));
                            hung_up = true;
                            dialer.hang_up(now);
                        }
                        Err(_) => {}
                    }
                    m.recorder.tick();
                    if now >= m.next_rtcp {
                        m.next_rtcp = now + RTCP_INTERVAL;
                        let report = m.session.report(now);
                        let socket = if m.remote.rtcp_mux { &sockets.rtp } else { &sockets.rtcp };
                        if let Err(e) = socket.send_to(&report, m.remote.rtcp).await {
                            warn!(error = %e, "cannot send RTCP");
                        }
                    }
                    let call_over = match options.duration {
                        Some(d) => now - at >= d,
                        None => now - at >= m.input_duration() + options.tail,
                    };
                    if !hung_up && m.session.silent_for(now) >= options.media_timeout {
                        warn!(silent_ms = ms(m.session.silent_for(now)), "no RTP from the peer: hanging up");
                        ended_by = Some(EndedBy::MediaTimeout);
                        hung_up = true;
                        dialer.hang_up(now);
                    } else if !hung_up && call_over {
                        hung_up = true;
                        dialer.hang_up(now);
                    }
                }
            }
            _ = deadline => dialer.handle_timeout(Instant::now()),
            _ = &mut interrupt, if !hung_up => {
                hung_up = true;
                dialer.hang_up(Instant::now());
            }
        }
    }

    if let Some(e) = fatal {
        return Err(e);
    }
    let (Some(media), Some(at)) = (media, answered_at) else {
        return Ok(Attempt::Failed(failure.unwrap_or(CallFailure::NoResponse)));
    };
    if let Some(f @ CallFailure::BadAnswer(_)) = failure {
        return Ok(Attempt::Failed(f));
    }
    let call_ms = ms(Instant::now() - at);
    let stats = media.session.stats();
    let frames_concealed = media
        .metrics
        .packets_concealed
        .load(std::sync::atomic::Ordering::Relaxed);
    let clip = media.recorder.into_clip();
    let audio_received_ms = stats.packets_received * FRAME.as_millis() as u64;
    let summary = DialSummary {
        answered: true,
        attempts: 1,
        invite_to_answer_ms,
        first_progress_ms,
        codec: media.remote.codec,
        payload_type: media.remote.payload_type,
        remote_rtp: media.remote.rtp.to_string(),
        rtcp_mux: media.remote.rtcp_mux,
        session_expires_s: session_expires,
        call_ms,
        audio_sent_ms: media.frames_sent * FRAME.as_millis() as u64,
        audio_received_ms,
        ended_by: ended_by.unwrap_or(EndedBy::Local),
        bye_sent,
        sip_ignored: dialer.ignored() + sip_foreign,
        frames_concealed,
        rtp: stats,
    };
    Ok(Attempt::Answered(Box::new(AnsweredCall {
        summary,
        recording: clip,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_endpoint_gets_the_sip_scheme() {
        assert_eq!(normalize_target("abc@sip.daily.co"), "sip:abc@sip.daily.co");
        assert_eq!(
            normalize_target(" sip:abc@1.2.3.4:5070 "),
            "sip:abc@1.2.3.4:5070"
        );
    }
}
