//! `kiosk-gateway call`: a technician's direct call to an agent. It streams
//! a WAV the way the kiosk streams its microphone: one Opus packet every
//! 40 ms (`opus_frame_ms`; 20 ms when so configured or when the agent's
//! answer asks for it) for the whole call (the file, then a pause of
//! near-silence, over and over, like someone talking now and then), records
//! what the agent says, prints RTVI events as they arrive and ends with a
//! summary.
//!
//! The file may be any PCM WAV; like the daemon's capture path, `call`
//! encodes a 16 kHz stream with the `[audio]` Opus settings.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tracing::warn;

use super::kernel_timer::KernelTimer;
use super::rtvi::BotMessage;
use super::signaling::Signaling;
use super::transcript::TranscriptAssembler;
use super::{Link, LinkError, LinkEvent, LinkSettings, LinkStats, OpusFrame};
use crate::audio::{
    self, AudioError, AudioMetrics, AudioSettings, ExpectedLoss, FRAME_48K, FRAME_MS,
    IncomingPacket, Millis, OPUS_FRAME, OpusEncoder, OpusPacket, PcmClip, Playout, SampleRate,
    StreamResampler, resample_clip,
};

/// How often the agent's loss reports are read to tune the encoder's FEC.
const LOSS_REPORTS_EVERY: Duration = Duration::from_secs(1);
/// The rate `call` encodes at, as the daemon's capture path does.
const SEND_RATE: SampleRate = SampleRate::VAD;
/// RMS level of the noise that fills the pauses: far below any VAD's speech
/// threshold, but not the digital zero no microphone ever delivers.
const NOISE_FLOOR_DBFS: f32 = -70.0;

/// Where `call` takes audio from. Only files here: live devices belong to
/// the audio engine.
#[derive(Clone, Debug, PartialEq)]
pub enum CallInput {
    /// A WAV file, sent over and over for the call's length.
    Wav(PathBuf),
}

/// Where `call` puts the agent's audio.
#[derive(Clone, Debug, PartialEq)]
pub enum CallOutput {
    /// A WAV file, written at the input's rate.
    Wav(PathBuf),
    /// Nowhere.
    Discard,
}

/// An input or output that is not `wav:PATH` (or `none` for the output).
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

/// What `call` does.
#[derive(Clone, Debug)]
pub struct CallOptions {
    /// Audio sent.
    pub input: CallInput,
    /// Where the agent's audio goes.
    pub output: CallOutput,
    /// How long the call lasts.
    pub duration: Duration,
    /// Near-silence sent between repetitions of the input.
    pub pause: Duration,
    /// How the call is set up.
    pub link: LinkSettings,
    /// Opus bitrate, complexity and expected loss (`[audio]`).
    pub audio: AudioSettings,
}

/// A line of a call's transcript.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Transcript {
    /// `user` or `bot`.
    pub role: &'static str,
    /// What was said.
    pub text: String,
}

/// The `--json` summary. Field names are stable; times are milliseconds
/// since `call` started.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CallSummary {
    /// The peer connection came up (a failed connect is an error instead).
    pub connected: bool,
    /// When the peer connection came up.
    pub connect_ms: u64,
    /// When `bot-ready` arrived, if it did.
    pub bot_ready_ms: Option<u64>,
    /// Audio handed to the link: the whole call, pauses included, since
    /// the stream never stops (frames dropped while the link was down are
    /// not counted).
    pub audio_sent_ms: u64,
    /// Audio in each packet sent: `opus_frame_ms`, or 20 ms where the
    /// agent's answer asked for shorter packets.
    pub packet_ms: u32,
    /// Of the packets sent, those carrying in-band FEC for the one before:
    /// none when the agent's answer said its decoder cannot use it
    /// (`stats.agent_decodes_fec`).
    pub packets_sent_with_fec: u64,
    /// Audio from the agent played out: decoded, or rebuilt where packets
    /// were lost (FEC, concealment), through the kiosk's jitter buffer.
    pub audio_received_ms: u64,
    /// When the agent's first packet arrived, if one did. Pipecat's
    /// transport streams silence from the start of the call, so this says
    /// the media flows, not that the bot spoke.
    pub first_audio_received_ms: Option<u64>,
    /// Of `audio_received_ms`, the agent's voice: audio louder than a pause
    /// (-50 dBFS). A bot whose speech fails still streams silence; this
    /// then stays 0.
    pub voice_received_ms: u64,
    /// When the agent's voice first played, if it did.
    pub first_voice_received_ms: Option<u64>,
    /// Final user transcriptions and bot text, in arrival order.
    pub transcripts: Vec<Transcript>,
    /// Times the link restored the call.
    pub reconnects: u32,
    /// `duration`, `peer_left` or `lost`.
    pub ended_by: &'static str,
    /// The link's figures at the end.
    pub stats: LinkStats,
    /// What the playout path did with the agent's audio.
    pub playout: PlayoutSummary,
}

/// The playout path's counters over one call.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PlayoutSummary {
    /// Packets that arrived after their turn to play.
    pub packets_late: u64,
    /// Lost packets filled in, by FEC or concealment (the few frames
    /// concealed at the end of each of the agent's turns included).
    pub packets_concealed: u64,
    /// Of those, rebuilt from the next packet's in-band FEC.
    pub packets_fec_recovered: u64,
    /// Frames of concealment inserted in pauses to deepen the jitter buffer.
    pub frames_inserted: u64,
    /// Packets dropped to cut the jitter buffer's delay (pauses after a
    /// wait for late packets, anything after a burst).
    pub frames_removed: u64,
    /// Median audio held by the jitter buffer while the agent's audio played.
    pub jitter_delay_median_ms: Option<u64>,
    /// The loss the encoder was told to expect at the end (percent).
    pub expected_loss_percent: u8,
}

/// Why `call` failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The input file cannot be read.
    #[error("input WAV {}: {problem}", path.display())]
    Input {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The output file cannot be written.
    #[error("output WAV {}: {problem}", path.display())]
    Output {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The Opus codec failed.
    #[error("Opus: {0}")]
    Codec(String),
    /// The call could not be made.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The frame clock (a kernel timer) could not be made or read.
    #[error("the 20 ms frame clock failed")]
    Clock(#[source] std::io::Error),
}

/// What went wrong with a file, without repeating its path.
fn problem(e: &AudioError) -> String {
    match e {
        AudioError::Wav { source, .. } => source.to_string(),
        other => audio::error_chain(other),
    }
}

fn codec(e: AudioError) -> CallError {
    CallError::Codec(audio::error_chain(&e))
}

/// Reads the input file and converts it to the sending rate.
fn read_input(path: &Path) -> Result<(SampleRate, Vec<f32>), CallError> {
    let input_err = |problem: String| CallError::Input {
        path: path.to_path_buf(),
        problem,
    };
    let clip = audio::read_wav(path).map_err(|e| {
        let hint = match &e {
            AudioError::Wav {
                source: hound::Error::IoError(_),
                ..
            } => "",
            _ => " (call reads PCM WAV: 8, 16, 24 or 32-bit integer, or 32-bit float)",
        };
        input_err(format!("{}{hint}", problem(&e)))
    })?;
    if clip.rate.hz() == 0 {
        return Err(input_err("the header gives a sample rate of 0 Hz".into()));
    }
    if clip.samples.is_empty() {
        return Err(input_err("no audio in the file".into()));
    }
    let samples = resample_clip(&clip.samples, clip.rate, SEND_RATE).map_err(|e| {
        input_err(format!(
            "cannot convert {} to {SEND_RATE}: {}",
            clip.rate,
            problem(&e)
        ))
    })?;
    Ok((clip.rate, samples))
}

/// The audio `call` sends, 20 ms at a time at 16 kHz: the input, then
/// `pause` of near-silence, then the input again. It never runs dry, so
/// the stream has no gaps: an agent's VAD hears the pauses as silence only
/// if silence arrives.
pub struct CallSource {
    /// The input, padded with near-silence to whole frames.
    speech: Vec<f32>,
    speech_frames: usize,
    pause_frames: usize,
    frame_len: usize,
    /// Frame index within the current repetition.
    position: usize,
    noise: NoiseFloor,
}

impl CallSource {
    /// `speech` is at 16 kHz, sent `frame` at a time.
    pub fn new(mut speech: Vec<f32>, pause: Duration, frame: Millis) -> Self {
        let frame_len = SEND_RATE.samples_in(frame);
        let speech_frames = speech.len().div_ceil(frame_len);
        let mut noise = NoiseFloor::new(NOISE_FLOOR_DBFS);
        let padded = speech_frames * frame_len;
        speech.extend((speech.len()..padded).map(|_| noise.sample()));
        Self {
            speech,
            speech_frames,
            pause_frames: (pause.as_millis() / u128::from(frame.0.max(1))) as usize,
            frame_len,
            position: 0,
            noise,
        }
    }

    /// Samples in one frame.
    pub fn frame_len(&self) -> usize {
        self.frame_len
    }

    /// Fills `frame` (`frame_len` samples) with the next frame's audio.
    pub fn next_frame(&mut self, frame: &mut [f32]) {
        let pos = self.position;
        // An empty input with no pause is all near-silence.
        self.position = (pos + 1) % (self.speech_frames + self.pause_frames).max(1);
        if pos < self.speech_frames {
            frame.copy_from_slice(&self.speech[pos * self.frame_len..(pos + 1) * self.frame_len]);
        } else {
            frame.iter_mut().for_each(|s| *s = self.noise.sample());
        }
    }
}

/// White noise at a fixed RMS level, from a seeded generator so a call's
/// pauses are the same every run.
struct NoiseFloor {
    rng: SmallRng,
    amplitude: f32,
}

impl NoiseFloor {
    fn new(rms_dbfs: f32) -> Self {
        // Uniform noise in [-a, a] has an RMS of a / sqrt(3).
        let rms = 10f32.powf(rms_dbfs / 20.0);
        Self {
            rng: SmallRng::seed_from_u64(0x9E37_79B9),
            amplitude: rms * 3f32.sqrt(),
        }
    }

    fn sample(&mut self) -> f32 {
        self.rng.random_range(-self.amplitude..=self.amplitude)
    }
}

/// The agent's audio, converted from the link's 48 kHz to the rate of the
/// input file as it arrives.
struct Recording {
    path: PathBuf,
    rate: SampleRate,
    resampler: StreamResampler,
    samples: Vec<f32>,
    /// 48 kHz samples pushed, to know how much the flush must yield.
    pushed: u64,
}

impl Recording {
    /// Writes an empty WAV at once, so a path that cannot be written fails
    /// before the call rather than after it.
    fn create(path: &Path, rate: SampleRate) -> Result<Self, CallError> {
        let output_err = |e: AudioError| CallError::Output {
            path: path.to_path_buf(),
            problem: problem(&e),
        };
        audio::write_wav(
            path,
            &PcmClip {
                rate,
                samples: Vec::new(),
            },
        )
        .map_err(output_err)?;
        Ok(Self {
            path: path.to_path_buf(),
            rate,
            resampler: StreamResampler::new(SampleRate::OPUS, rate, OPUS_FRAME)
                .map_err(output_err)?,
            samples: Vec::new(),
            pushed: 0,
        })
    }

    fn push(&mut self, pcm: &[f32]) -> Result<(), AudioError> {
        self.pushed += pcm.len() as u64;
        self.resampler.push(pcm)?;
        self.drain();
        Ok(())
    }

    fn drain(&mut self) {
        let start = self.samples.len();
        self.samples.resize(start + self.resampler.available(), 0.0);
        self.resampler.pop_frame(&mut self.samples[start..]);
    }

    /// Flushes the resampler's tail and writes the file.
    fn finish(mut self) -> Result<(), CallError> {
        let path = self.path.clone();
        let output_err = |e: AudioError| CallError::Output {
            path: path.clone(),
            problem: problem(&e),
        };
        let expected =
            (self.pushed * u64::from(self.rate.hz()) / u64::from(SampleRate::OPUS.hz())) as usize;
        let silence = [0.0; OPUS_FRAME];
        // The resampler holds back less than a few frames.
        for _ in 0..8 {
            if self.samples.len() >= expected {
                break;
            }
            self.resampler.push(&silence).map_err(output_err)?;
            self.drain();
        }
        self.samples.truncate(expected);
        audio::write_wav(
            &path,
            &PcmClip {
                rate: self.rate,
                samples: self.samples,
            },
        )
        .map_err(output_err)
    }
}

/// Runs one call; `on_event` sees every link event as it arrives.
pub async fn run_call(
    options: CallOptions,
    signaling: Arc<dyn Signaling>,
    mut on_event: impl FnMut(&LinkEvent),
) -> Result<CallSummary, CallError> {
    let CallInput::Wav(input_path) = &options.input;
    let (input_rate, speech) = read_input(input_path)?;
    let mut recording = match &options.output {
        CallOutput::Wav(path) => Some(Recording::create(path, input_rate)?),
        CallOutput::Discard => None,
    };
    let mut expected_loss = ExpectedLoss::new(&options.audio);
    // The same playout path as the kiosk's speaker: jitter buffer, FEC,
    // concealment.
    let metrics = Arc::new(AudioMetrics::default());
    let mut playout = Playout::new(&options.audio, Arc::clone(&metrics)).map_err(codec)?;
    let mut speaker = [0.0; FRAME_48K];
    let mut jitter_delays = Vec::new();
    let started = Instant::now();
    let ms = |d: Duration| d.as_millis() as u64;

    let (link, mut io) = Link::connect(options.link.clone(), signaling).await?;
    let connect_ms = ms(started.elapsed());

    // One packet's audio, as the kiosk sends it to this agent: its answer
    // is in, and may ask for shorter packets than configured.
    let configured = options.audio.opus_frame();
    let frame_ms = link
        .stats()
        .await
        .ok()
        .and_then(|stats| stats.agent_decoder())
        .map_or(configured, |agent| agent.packet_length(configured));
    let frame_duration = Duration::from(frame_ms);
    // The speaker's 10 ms frames played on each packet's tick.
    let speaker_frames_per_tick = frame_ms.frames() as usize;
    let mut source = CallSource::new(speech, options.pause, frame_ms);
    let mut encoder =
        OpusEncoder::with_frame(&options.audio, SEND_RATE, frame_ms).map_err(codec)?;
    let mut pcm_out = vec![0.0; source.frame_len()];

    let mut frames_sent = 0u64;
    let mut frames_sent_with_fec = 0u64;
    let mut received_samples = 0u64;
    let mut first_audio = None;
    let mut voice_frames = 0u64;
    let mut first_voice = None;
    let mut bot_ready = None;
    let mut transcripts = Vec::new();
    let mut transcript = TranscriptAssembler::new();
    let mut reconnects = 0;
    let mut ended_by = "duration";

    // The frame clock is the kernel's (see `kernel_timer`): one wake-up per
    // packet, none between. Late ticks are made up at once, so the stream
    // keeps pace with the RTP clock: one frame per frame's length of call.
    let ticker = KernelTimer::periodic(frame_duration).map_err(CallError::Clock)?;
    let mut reports = tokio::time::interval(LOSS_REPORTS_EVERY);
    let end = tokio::time::sleep(options.duration);
    tokio::pin!(end);
    loop {
        tokio::select! {
            _ = &mut end => break,
            ticks = ticker.expired() => {
                for _ in 0..ticks.map_err(CallError::Clock)? {
                    source.next_frame(&mut pcm_out);
                    let packet = encoder.encode(&pcm_out).map_err(codec)?;
                    // Every frame goes out, DTX or not: only the first packet
                    // of the call starts a talk spurt (the RTP marker bit).
                    let frame = OpusFrame {
                        data: Bytes::copy_from_slice(packet.bytes()),
                        duration: frame_duration,
                        after_silence: frames_sent == 0,
                    };
                    // A full queue means the link is down; the frame is
                    // dropped like the audio engine's overflow would be.
                    let fec = audio::has_fec(&frame.data);
                    if io.audio_out.try_send(frame).is_ok() {
                        frames_sent += 1;
                        frames_sent_with_fec += u64::from(fec);
                    }
                    // The speaker's frames on the same tick: no device waits
                    // for them, and one wake-up per packet costs less than one
                    // per 10 ms frame.
                    for _ in 0..speaker_frames_per_tick {
                        if playout.next_frame(&mut speaker) {
                            received_samples += FRAME_48K as u64;
                            if playout.played_voice() {
                                voice_frames += 1;
                                first_voice.get_or_insert_with(|| ms(started.elapsed()));
                            }
                            jitter_delays.push(metrics.jitter_delay_ms.load(std::sync::atomic::Ordering::Relaxed));
                            if let Some(recording) = &mut recording {
                                recording.push(&speaker).map_err(|e| CallError::Output {
                                    path: recording.path.clone(),
                                    problem: problem(&e),
                                })?;
                            }
                        }
                    }
                }
            }
            Some(packet) = io.audio_in.recv() => {
                first_audio.get_or_insert_with(|| ms(started.elapsed()));
                match OpusPacket::from_slice(&packet.data) {
                    Some(payload) => playout.push(
                        IncomingPacket {
                            seq: packet.sequence,
                            timestamp: packet.rtp_timestamp,
                            payload,
                        },
                        Millis(started.elapsed().as_millis() as u32),
                    ),
                    None => {
                        AudioMetrics::add(&metrics.packets_oversize, 1);
                        warn!(bytes = packet.data.len(), "oversized packet from the agent");
                    }
                }
            }
            _ = reports.tick() => {
                let Ok(stats) = link.stats().await else { continue };
                // The first tick comes at once, so FEC follows the agent's
                // answer from the call's first packets.
                if let Some(fec) = stats.agent_decodes_fec {
                    encoder.set_inband_fec(fec).map_err(codec)?;
                }
                if let Some(fraction) = stats.loss_out_recent
                    && let Some(percent) = expected_loss.report(stats.remote_reports, fraction)
                {
                    encoder.set_expected_loss(percent).map_err(codec)?;
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
    jitter_delays.sort_unstable();
    let playout = PlayoutSummary {
        packets_late: AudioMetrics::get(&metrics.packets_late),
        packets_concealed: AudioMetrics::get(&metrics.packets_concealed),
        packets_fec_recovered: AudioMetrics::get(&metrics.packets_fec_recovered),
        frames_inserted: AudioMetrics::get(&metrics.frames_inserted),
        frames_removed: AudioMetrics::get(&metrics.frames_removed),
        jitter_delay_median_ms: jitter_delays.get(jitter_delays.len() / 2).copied(),
        expected_loss_percent: expected_loss.percent(),
    };
    if let Some(recording) = recording {
        recording.finish()?;
    }
    Ok(CallSummary {
        connected: true,
        connect_ms,
        bot_ready_ms: bot_ready,
        audio_sent_ms: frames_sent * u64::from(frame_ms.0),
        packet_ms: frame_ms.0,
        packets_sent_with_fec: frames_sent_with_fec,
        audio_received_ms: received_samples * 1000 / u64::from(SampleRate::OPUS.hz()),
        first_audio_received_ms: first_audio,
        voice_received_ms: voice_frames * u64::from(FRAME_MS.0),
        first_voice_received_ms: first_voice,
        transcripts,
        reconnects,
        ended_by,
        stats,
        playout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::{Dbfs, OpusDecoder};

    #[test]
    fn source_repeats_the_input_after_a_pause_and_never_runs_dry() {
        // 3 frames and a bit of "speech", then 100 ms (5 frames) of pause.
        let mut source = CallSource::new(
            vec![0.5; 320 * 3 + 100],
            Duration::from_millis(100),
            Millis(20),
        );
        assert_eq!(source.frame_len(), 320);
        let mut frame = vec![0.0; 320];
        let mut frames = Vec::new();
        for _ in 0..20 {
            source.next_frame(&mut frame);
            frames.push(frame.clone());
        }
        let is_speech = |f: &[f32]| f.iter().all(|&s| s == 0.5);
        let level = |f: &[f32]| Dbfs::rms(f).0;
        for cycle in [0, 9] {
            for f in &frames[cycle..cycle + 3] {
                assert!(is_speech(f));
            }
            let tail = &frames[cycle + 3];
            assert!(is_speech(&tail[..100]) && level(&tail[100..]) < -65.0);
            for f in &frames[cycle + 4..cycle + 9] {
                let db = level(f);
                assert!((db + 70.0).abs() < 2.0, "pause at {db} dBFS");
            }
        }
        assert!(is_speech(&frames[18]));

        let mut empty = CallSource::new(Vec::new(), Duration::ZERO, Millis(20));
        empty.next_frame(&mut frame);
        empty.next_frame(&mut frame);
        assert!(Dbfs::rms(&frame).0 < -65.0);
    }

    #[test]
    fn every_pause_packet_decodes_to_a_near_silent_frame() {
        let mut source = CallSource::new(vec![0.0; 320], Duration::from_secs(3), Millis(20));
        let mut encoder =
            OpusEncoder::with_input_rate(&AudioSettings::default(), SEND_RATE).unwrap();
        let mut decoder = OpusDecoder::new().unwrap();
        let mut frame = vec![0.0; 320];
        let mut pcm = [0.0; OPUS_FRAME];
        let mut dtx = 0;
        for i in 0..150 {
            source.next_frame(&mut frame);
            let packet = encoder.encode(&frame).unwrap();
            // With DTX the encoder gives 1-byte packets for most of a
            // pause: they still go out, and the agent's decoder makes a
            // 20 ms frame of comfort noise of each.
            dtx += usize::from(packet.bytes().len() <= 2);
            assert_eq!(
                decoder.decode(packet.bytes(), &mut pcm).unwrap(),
                OPUS_FRAME
            );
            if i >= 5 {
                let db = Dbfs::rms(&pcm).0;
                assert!(db < -60.0, "frame {i} decodes at {db} dBFS");
            }
        }
        println!("{dtx} of 150 pause packets were DTX frames");
    }

    #[test]
    fn recording_is_written_at_the_input_rate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.wav");
        let mut recording = Recording::create(&path, SampleRate(44_100)).unwrap();
        // Already there, empty, before anything arrived.
        assert!(audio::read_wav(&path).unwrap().samples.is_empty());
        let tone: Vec<f32> = (0..48_000)
            .map(|i| 0.5 * (i as f32 * 2.0 * std::f32::consts::PI * 440.0 / 48_000.0).sin())
            .collect();
        for chunk in tone.chunks(OPUS_FRAME) {
            recording.push(chunk).unwrap();
        }
        recording.finish().unwrap();
        let clip = audio::read_wav(&path).unwrap();
        assert_eq!(clip.rate, SampleRate(44_100));
        assert_eq!(clip.samples.len(), 44_100);
        let db = Dbfs::rms(&clip.samples[4410..39_690]).0;
        assert!((db + 9.0).abs() < 0.5, "{db} dBFS");
    }

    #[test]
    fn bad_input_and_output_files_are_named_with_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("notes.wav");
        std::fs::write(&text, "not a WAV").unwrap();
        let err = read_input(&text).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("input WAV {}: ", text.display())),
            "{err}"
        );
        let err = read_input(&dir.path().join("missing.wav"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.wav: No such file"), "{err}");

        let empty = dir.path().join("empty.wav");
        audio::write_wav(
            &empty,
            &PcmClip {
                rate: SampleRate(16_000),
                samples: vec![],
            },
        )
        .unwrap();
        let err = read_input(&empty).unwrap_err().to_string();
        assert!(err.ends_with("empty.wav: no audio in the file"), "{err}");

        let err = Recording::create(&dir.path().join("no/such/dir/out.wav"), SampleRate(16_000))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with("output WAV ") && err.contains("no/such/dir/out.wav: "),
            "{err}"
        );
    }
}
