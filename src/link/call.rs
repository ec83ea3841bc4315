//! `kiosk-gateway call`: a technician's direct call to an agent. Sends a WAV
//! (looped, with pauses, like someone talking now and then), records what
//! the agent says, prints RTVI events as they arrive and ends with a summary.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::warn;

use super::media::{self, Decoder, Encoder, FRAME_DURATION, FRAME_SAMPLES, SAMPLE_RATE};
use super::rtvi::BotMessage;
use super::signaling::Signaling;
use super::transcript::TranscriptAssembler;
use super::{Link, LinkError, LinkEvent, LinkSettings, LinkStats, OpusFrame};

/// Where `call` takes audio from. Only files here: live devices belong to
/// the audio engine.
#[derive(Clone, Debug, PartialEq)]
pub enum CallInput {
    Wav(PathBuf),
}

/// Where `call` puts the agent's audio.
#[derive(Clone, Debug, PartialEq)]
pub enum CallOutput {
    Wav(PathBuf),
    Discard,
}

#[derive(Debug, thiserror::Error)]
#[error("expected wav:PATH, got {0:?}")]
pub struct BadEndpoint(String);

impl FromStr for CallInput {
    type Err = BadEndpoint;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.strip_prefix("wav:")
            .map(|p| Self::Wav(PathBuf::from(p)))
            .ok_or_else(|| BadEndpoint(s.to_owned()))
    }
}

impl FromStr for CallOutput {
    type Err = BadEndpoint;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "none" {
            return Ok(Self::Discard);
        }
        s.strip_prefix("wav:")
            .map(|p| Self::Wav(PathBuf::from(p)))
            .ok_or_else(|| BadEndpoint(s.to_owned()))
    }
}

#[derive(Clone, Debug)]
pub struct CallOptions {
    pub input: CallInput,
    pub output: CallOutput,
    pub duration: Duration,
    /// Silence between repetitions of the input.
    pub pause: Duration,
    pub link: LinkSettings,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Transcript {
    pub role: &'static str,
    pub text: String,
}

/// The `--json` summary. Field names are stable; times are milliseconds
/// since `call` started.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CallSummary {
    /// The peer connection came up (a failed connect is an error instead).
    pub connected: bool,
    pub connect_ms: u64,
    /// When `bot-ready` arrived, if it did.
    pub bot_ready_ms: Option<u64>,
    /// Audio handed to the link (talk spurts only, pauses send nothing).
    pub audio_sent_ms: u64,
    /// Audio received from the agent and decoded.
    pub audio_received_ms: u64,
    pub first_audio_received_ms: Option<u64>,
    /// Final user transcriptions and bot text, in arrival order.
    pub transcripts: Vec<Transcript>,
    pub reconnects: u32,
    /// `duration`, `peer_left` or `lost`.
    pub ended_by: &'static str,
    pub stats: LinkStats,
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Media(#[from] media::MediaError),
    #[error(transparent)]
    Link(#[from] LinkError),
}

/// Runs one call; `on_event` sees every link event as it arrives.
pub async fn run_call(
    options: CallOptions,
    signaling: Arc<dyn Signaling>,
    mut on_event: impl FnMut(&LinkEvent),
) -> Result<CallSummary, CallError> {
    let CallInput::Wav(input_path) = &options.input;
    let input = media::read_wav(input_path)?;
    let mut encoder = Encoder::new()?;
    let mut decoder = Decoder::new()?;
    let started = Instant::now();
    let ms = |d: Duration| d.as_millis() as u64;

    let (link, mut io) = Link::connect(options.link.clone(), signaling).await?;
    let connect_ms = ms(started.elapsed());

    let pause_frames = (options.pause.as_millis() / FRAME_DURATION.as_millis()) as usize;
    let speech_frames = input.len().div_ceil(FRAME_SAMPLES);
    let cycle = speech_frames + pause_frames;
    let mut frame_index = 0usize;
    let mut frames_sent = 0u64;
    // Decoded audio is kept only when it is written out.
    let mut received: Vec<i16> = Vec::new();
    let mut received_samples = 0u64;
    let mut first_audio = None;
    let mut bot_ready = None;
    let mut transcripts = Vec::new();
    let mut transcript = TranscriptAssembler::new();
    let mut reconnects = 0;
    let mut ended_by = "duration";

    let mut ticker = tokio::time::interval(FRAME_DURATION);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let end = tokio::time::sleep(options.duration);
    tokio::pin!(end);
    loop {
        tokio::select! {
            _ = &mut end => break,
            _ = ticker.tick() => {
                // Pauses send nothing at all, as a DTX sender would; the next
                // talk spurt carries the marker bit.
                let pos = frame_index % cycle;
                frame_index += 1;
                if pos < speech_frames {
                    let chunk = &input[pos * FRAME_SAMPLES..((pos + 1) * FRAME_SAMPLES).min(input.len())];
                    let frame = OpusFrame {
                        data: encoder.encode(chunk)?,
                        duration: FRAME_DURATION,
                        after_silence: pos == 0,
                    };
                    // A full queue means the link is down; the frame is
                    // dropped like the audio engine's overflow would be.
                    if io.audio_out.try_send(frame).is_ok() {
                        frames_sent += 1;
                    }
                }
            }
            Some(packet) = io.audio_in.recv() => {
                first_audio.get_or_insert_with(|| ms(started.elapsed()));
                match decoder.decode(&packet.data) {
                    Ok(pcm) => {
                        received_samples += pcm.len() as u64;
                        if options.output != CallOutput::Discard {
                            received.extend_from_slice(pcm);
                        }
                    }
                    Err(e) => warn!(error = %e, "undecodable packet from the agent"),
                }
            }
            Some(event) = io.events.recv() => {
                on_event(&event);
                match &event {
                    LinkEvent::Bot(BotMessage::BotReady { .. }) => {
                        bot_ready.get_or_insert_with(|| ms(started.elapsed()));
                    }
                    LinkEvent::Bot(message) => {
                        let lines = transcript.push(message, jiff::Timestamp::now());
                        transcripts.extend(lines.into_iter().map(|l| Transcript { role: l.role.as_str(), text: l.text }));
                    }
                    LinkEvent::Reconnected { .. } => reconnects += 1,
                    LinkEvent::PeerLeft => { ended_by = "peer_left"; break; }
                    LinkEvent::Lost { .. } => { ended_by = "lost"; break; }
                    _ => {}
                }
            }
        }
    }
    transcripts.extend(
        transcript
            .finish(jiff::Timestamp::now())
            .into_iter()
            .map(|l| Transcript {
                role: l.role.as_str(),
                text: l.text,
            }),
    );
    let stats = link.stats().await.unwrap_or_default();
    link.close().await;
    if let CallOutput::Wav(path) = &options.output {
        media::write_wav(path, &received)?;
    }
    Ok(CallSummary {
        connected: true,
        connect_ms,
        bot_ready_ms: bot_ready,
        audio_sent_ms: frames_sent * FRAME_DURATION.as_millis() as u64,
        audio_received_ms: received_samples * 1000 / u64::from(SAMPLE_RATE),
        first_audio_received_ms: first_audio,
        transcripts,
        reconnects,
        ended_by,
        stats,
    })
}
