//! The capture path without threads or devices: microphone samples in,
//! speech events and Opus packets out.
//!
//! Stages per 10 ms frame: resample (device rate to 16 kHz), echo
//! cancellation (the speaker's playout as reference), VAD, echo gate,
//! segmenter, and while a conversation is active, Opus encoding of the same
//! cleaned 16 kHz audio into the buffer-until-ready.

use std::collections::VecDeque;
use std::sync::Arc;

use tracing::{info, warn};

use super::AudioError;
use super::codec::{AgentDecoder, ExpectedLoss, OpusEncoder, OpusPacket};
use super::echo::{Aec3, EchoCanceller};
use super::echo_gate::EchoGate;
use super::metrics::AudioMetrics;
use super::resample::StreamResampler;
use super::segmenter::{SegmentOutput, Segmenter, Utterance};
use super::settings::{AudioSettings, DeviceSpec, VadSettings};
use super::units::{Dbfs, FRAME_48K, FRAME_MS, Millis, SampleRate, VAD_FRAME};
use super::vad::VoiceDetector;

/// The longest Opus frame of the 16 kHz stream (`opus_frame_ms` 40).
const MAX_ENCODE_FRAME: usize = 4 * VAD_FRAME;
/// The microphone level shown on the status page is updated this often (in 10 ms frames).
const LEVEL_EVERY_FRAMES: u64 = 10;
/// With DTX on, packets of this size or smaller are Opus DTX frames.
const DTX_PACKET_MAX: usize = 2;

/// What the audio engine reports to the session layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AudioEvent {
    /// The visitor started speaking at `onset` (capture timeline); `preroll`
    /// of audio before it is included in the stream.
    SpeechStarted {
        /// When speech began.
        onset: Millis,
        /// Audio from before the onset that is included.
        preroll: Millis,
    },
    /// The visitor stopped speaking; the utterance, measured.
    SpeechEnded(Utterance),
    /// The visitor spoke over the bot: its playback was faded out and flushed.
    BargeIn,
    /// A device was lost (and will be reopened) or (re)opened.
    Device {
        /// Microphone or speaker.
        direction: super::device::Direction,
        /// Whether it is now open.
        open: bool,
    },
}

/// One Opus packet of microphone audio.
#[derive(Clone, Copy, Debug)]
pub struct EncodedFrame {
    /// The Opus packet.
    pub packet: OpusPacket,
    /// Position of the frame's first sample, in 48 kHz samples of encoded
    /// audio; continuous within a conversation, so it serves as the RTP
    /// timestamp offset (gaps are dropped overflow, or silence with
    /// `audio.dtx` on).
    pub timestamp: u32,
    /// First packet of a talkspurt: set the RTP marker bit.
    pub after_silence: bool,
    /// Audio in the packet (`opus_frame_ms`).
    pub duration: Millis,
}

/// Receives the audio engine's output.
pub trait AudioSink {
    /// Takes an event.
    fn event(&mut self, event: AudioEvent);
    /// Takes a frame of audio to send.
    fn frame(&mut self, frame: EncodedFrame);
}

/// Where encoded audio goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StreamState {
    /// No conversation: nothing is encoded until the visitor speaks.
    Idle,
    /// Speech is encoded and held until the link is ready.
    Buffering,
    /// The link takes packets as they are made.
    Streaming,
}

/// Bounded holding area for encoded speech while the link comes up.
struct SpeechBuffer {
    queue: VecDeque<EncodedFrame>,
    capacity: usize,
    dropped_since_release: u64,
}

impl SpeechBuffer {
    /// Holds `buffer` of speech in packets of `frame`.
    fn new(buffer: Millis, frame: Millis) -> Self {
        let capacity = (buffer.0 / frame.0).max(1) as usize;
        Self {
            queue: VecDeque::with_capacity(capacity),
            capacity,
            dropped_since_release: 0,
        }
    }

    fn push(&mut self, frame: EncodedFrame, metrics: &AudioMetrics) {
        if self.queue.len() == self.capacity {
            self.queue.pop_front();
            if self.dropped_since_release == 0 {
                warn!(
                    capacity_ms = self.capacity as u64 * u64::from(frame.duration.0),
                    "speech buffer full while waiting for the link; dropping the oldest audio"
                );
            }
            self.dropped_since_release += 1;
            AudioMetrics::add(&metrics.buffer_overflow_packets, 1);
            // The receiver now sees a jump in the audio: start a new talkspurt.
            if let Some(front) = self.queue.front_mut() {
                front.after_silence = true;
            }
        }
        self.queue.push_back(frame);
    }
}

/// The capture path, device samples to events and Opus frames: resampling, voice detection,
/// segmenting, the echo gate and the encoder.
pub struct CaptureProcessor {
    to_vad: StreamResampler,
    /// The microphone's 10 ms at 16 kHz, before echo cancellation.
    mic_frame: [f32; VAD_FRAME],
    /// The same frame cleaned of the speaker's echo: what every later stage uses.
    vad_frame: [f32; VAD_FRAME],
    canceller: Option<Box<dyn EchoCanceller>>,
    vad: VoiceDetector,
    /// Behind the canceller and its gate, a VAD one step more lenient than
    /// the configured one, which dates the start of a word spoken over the
    /// bot: the canceller's suppressor thins out its first phoneme (it
    /// cannot tell the voice from the echo in the bands both fill), and the
    /// configured VAD hears it 100 ms and more late. It only moves the
    /// onset of an utterance the configured VAD confirms (see
    /// [`Segmenter::push_heard`]); left to start utterances itself it let
    /// residual echo in. Fed every frame so its noise model stays current.
    vad_over_echo: Option<VoiceDetector>,
    gate: Option<EchoGate>,
    segmenter: Segmenter<VAD_FRAME>,
    encoder: Option<OpusEncoder>,
    /// What the encoder is told to expect lost: the configured share, or
    /// the agent's reported loss when higher.
    expected_loss: ExpectedLoss,
    /// Silence goes out as nothing (`audio.dtx`); otherwise every frame is sent.
    dtx: bool,
    opus_input: [f32; MAX_ENCODE_FRAME],
    opus_filled: usize,
    /// Audio in each packet: 40 or 20 ms (`opus_frame_ms`, or shorter
    /// packets for an agent that asks for them).
    frame_ms: Millis,
    /// The configured `opus_frame_ms`, which each call starts with.
    configured_frame: Millis,
    /// A packet length the agent asked for, taken at the next packet's start.
    next_frame: Option<Millis>,
    /// Encoded audio so far, in 48 kHz samples (the RTP clock).
    encoded_samples: u64,
    state: StreamState,
    next_after_silence: bool,
    buffer: SpeechBuffer,
    /// Frames the segmenter hands out when a conversation starts, reused.
    scratch: Vec<[f32; VAD_FRAME]>,
    frames: u64,
    level_energy: f32,
    metrics: Arc<AudioMetrics>,
}

impl CaptureProcessor {
    /// `encode` is false for tools that only need the segmentation.
    /// `max_block` is the largest block of samples `push` will be given.
    pub fn new(
        audio: &AudioSettings,
        vad: &VadSettings,
        input_rate: SampleRate,
        max_block: usize,
        encode: bool,
        metrics: Arc<AudioMetrics>,
    ) -> Result<Self, AudioError> {
        let segmenter = Segmenter::new(vad);
        let scratch = Vec::with_capacity(segmenter.history_len());
        // Echo needs a room between a speaker and a live microphone: none
        // comes back without a speaker, and a `wav:` microphone was recorded
        // before anything was played.
        let echo_path =
            audio.output != DeviceSpec::Disabled && !matches!(audio.input, DeviceSpec::Wav(_));
        // A speaker frame reaches the microphone through the playout ring
        // and the capture framing at least; the canceller's own estimator
        // finds the room's share.
        let stream_delay = Millis(audio.device_buffer_ms.0 + FRAME_MS.0);
        let canceller = (audio.echo_cancel && echo_path)
            .then(|| {
                Aec3::new(audio.noise_suppression, audio.auto_gain, stream_delay)
                    .map(|aec| Box::new(aec) as Box<dyn EchoCanceller>)
            })
            .transpose()?;
        let gate = (audio.echo_gate && echo_path).then(|| {
            if canceller.is_some() {
                EchoGate::behind_canceller(vad.echo_margin_db, stream_delay)
            } else {
                EchoGate::new(vad.echo_margin_db)
            }
        });
        let vad_over_echo = (canceller.is_some() && gate.is_some())
            .then(|| VoiceDetector::new(vad.aggressiveness.more_lenient()));
        Ok(Self {
            to_vad: StreamResampler::new(input_rate, SampleRate::VAD, max_block)?,
            mic_frame: [0.0; VAD_FRAME],
            vad_frame: [0.0; VAD_FRAME],
            canceller,
            vad: VoiceDetector::new(vad.aggressiveness),
            vad_over_echo,
            gate,
            segmenter,
            encoder: if encode {
                Some(OpusEncoder::with_frame(
                    audio,
                    SampleRate::VAD,
                    audio.opus_frame(),
                )?)
            } else {
                None
            },
            expected_loss: ExpectedLoss::new(audio),
            dtx: audio.dtx,
            opus_input: [0.0; MAX_ENCODE_FRAME],
            opus_filled: 0,
            frame_ms: audio.opus_frame(),
            configured_frame: audio.opus_frame(),
            next_frame: None,
            encoded_samples: 0,
            state: StreamState::Idle,
            next_after_silence: true,
            buffer: SpeechBuffer::new(vad.buffer_ms, audio.opus_frame()),
            scratch,
            frames: 0,
            level_energy: 0.0,
            metrics,
        })
    }

    /// The 10 ms of playout just handed to the speaker (the echo
    /// reference), silence included.
    pub fn observe_playout(&mut self, speaker: &[f32; FRAME_48K]) {
        if let Some(canceller) = self.canceller.as_mut() {
            canceller.render(speaker);
        }
        self.observe_unheard_playout(speaker);
    }

    /// As [`observe_playout`](Self::observe_playout), while no microphone
    /// is open: only the echo gate's level follows it, so that it is right
    /// the moment a microphone opens. The canceller's analysis of the
    /// speaker would be most of an idle kiosk's CPU, for nothing to cancel
    /// from; it picks the speaker up again with the microphone.
    pub fn observe_unheard_playout(&mut self, speaker: &[f32; FRAME_48K]) {
        if let Some(gate) = self.gate.as_mut() {
            gate.observe_reference(Dbfs::rms(speaker));
        }
    }

    /// The link can take audio: release the buffer in order, then stream
    /// every frame until [`end_stream`](Self::end_stream).
    pub fn link_ready(&mut self, sink: &mut dyn AudioSink) {
        if self.buffer.dropped_since_release > 0 {
            info!(
                dropped_ms = self.buffer.dropped_since_release * u64::from(self.frame_ms.0),
                "released speech buffer after dropping its oldest audio"
            );
        }
        for frame in self.buffer.queue.drain(..) {
            sink.frame(frame);
        }
        self.buffer.dropped_since_release = 0;
        self.state = StreamState::Streaming;
    }

    /// The agent's report number `report` says it lost `fraction` (0 to 1)
    /// of what it was sent: the encoder's in-band FEC follows it (see
    /// [`ExpectedLoss`]).
    pub fn report_loss_out(&mut self, report: u64, fraction: f64) -> Result<(), AudioError> {
        match (
            self.expected_loss.report(report, fraction),
            self.encoder.as_mut(),
        ) {
            (Some(percent), Some(encoder)) => {
                info!(
                    expected_loss_percent = percent,
                    "encoder follows the agent's loss report"
                );
                encoder.set_expected_loss(percent)
            }
            _ => Ok(()),
        }
    }

    /// What the agent's decoder takes (its SDP answer): the encoder sends
    /// FEC only if it decodes it, and packets no longer than it asks for.
    pub fn follow_agent(&mut self, agent: AgentDecoder) -> Result<(), AudioError> {
        let Some(encoder) = self.encoder.as_mut() else {
            return Ok(());
        };
        if encoder.set_inband_fec(agent.inband_fec)? {
            info!(
                inband_fec = agent.inband_fec,
                "encoder follows the agent's answer"
            );
        }
        let length = agent.packet_length(self.configured_frame);
        if length != self.next_frame.unwrap_or(self.frame_ms) {
            info!(packet_ms = length.0, "packets follow the agent's answer");
            self.next_frame = Some(length);
            self.adopt_next_frame();
        }
        Ok(())
    }

    /// Takes up a new packet length between packets, never inside one.
    fn adopt_next_frame(&mut self) {
        if self.opus_filled == 0
            && let (Some(length), Some(encoder)) = (self.next_frame, self.encoder.as_mut())
        {
            self.frame_ms = length;
            encoder.set_frame(length);
            self.next_frame = None;
        }
    }

    /// The conversation is over: drop anything unsent and go back to idle;
    /// the next call starts from the configured expected loss and packet
    /// length again.
    pub fn end_stream(&mut self) {
        let configured_loss = self.expected_loss.reset();
        if let Some(encoder) = self.encoder.as_mut() {
            // Neither fails but for a value out of range, which `reset`
            // never gives. The next call's agent says anew whether it
            // decodes FEC; until then, FEC as configured.
            if let Some(percent) = configured_loss {
                let _ = encoder.set_expected_loss(percent);
            }
            let _ = encoder.set_inband_fec(true);
            encoder.set_frame(self.configured_frame);
        }
        self.frame_ms = self.configured_frame;
        self.next_frame = None;
        self.buffer.queue.clear();
        self.buffer.dropped_since_release = 0;
        self.state = StreamState::Idle;
        self.opus_filled = 0;
        self.next_after_silence = true;
    }

    /// Microphone audio the encoder lacks for its next packet: what a
    /// packet holds less what it has (a whole packet also while nothing
    /// is encoded).
    pub fn until_next_packet(&self) -> Millis {
        Millis::from_frames(((self.encode_frame() - self.opus_filled) / VAD_FRAME) as u64)
    }

    /// Samples of the 16 kHz stream in one packet.
    fn encode_frame(&self) -> usize {
        SampleRate::VAD.samples_in(self.frame_ms)
    }

    /// Processes microphone samples (mono, at the input rate).
    pub fn push_samples(
        &mut self,
        samples: &[f32],
        sink: &mut dyn AudioSink,
    ) -> Result<(), AudioError> {
        self.to_vad.push(samples)?;
        while self.to_vad.pop_frame(&mut self.mic_frame) {
            match self.canceller.as_mut() {
                Some(canceller) => canceller.process(&self.mic_frame, &mut self.vad_frame),
                None => self.vad_frame = self.mic_frame,
            }
            self.process_frame(sink)?;
        }
        Ok(())
    }

    /// Closes an utterance still open at the end of a file.
    pub fn finish(&mut self, sink: &mut dyn AudioSink) {
        let mut pending = None;
        self.segmenter.finish(&mut |o| {
            if let SegmentOutput::Ended(u) = o {
                pending = Some(u);
            }
        });
        if let Some(u) = pending {
            AudioMetrics::add(&self.metrics.utterances, 1);
            sink.event(AudioEvent::SpeechEnded(u));
        }
    }

    fn process_frame(&mut self, sink: &mut dyn AudioSink) -> Result<(), AudioError> {
        self.frames += 1;
        AudioMetrics::add(&self.metrics.frames_processed, 1);
        let level = Dbfs::rms(&self.vad_frame);
        self.level_energy += 10f32.powf(level.0 / 10.0);
        if self.frames.is_multiple_of(LEVEL_EVERY_FRAMES) {
            let avg = self.level_energy / LEVEL_EVERY_FRAMES as f32;
            let avg = Dbfs((10.0 * avg.max(1e-10).log10()).max(Dbfs::FLOOR.0));
            self.level_energy = 0.0;
            // Read from the metrics by whoever shows it: an event ten times
            // a second would wake the session layer for nothing.
            self.metrics.set_level(avg);
            if let Some(canceller) = &self.canceller {
                let stats = canceller.stats();
                if let (Some(gate), Some(delay)) = (self.gate.as_mut(), stats.delay) {
                    gate.set_echo_delay(delay);
                }
                self.metrics.set_echo(stats);
            }
        }

        let raw_voiced = self.vad.is_voiced(&self.vad_frame);
        let faint_raw = self
            .vad_over_echo
            .as_mut()
            .is_some_and(|vad| vad.is_voiced(&self.vad_frame));
        let in_speech = self.segmenter.in_speech();
        let (voiced, faint) = match self.gate.as_mut() {
            Some(gate) => {
                let voiced = gate.admits(level, raw_voiced, in_speech);
                (voiced, faint_raw && gate.loud_over_bot())
            }
            None => (raw_voiced, false),
        };
        if raw_voiced {
            AudioMetrics::add(&self.metrics.voiced_frames, 1);
        }
        if raw_voiced && !voiced {
            AudioMetrics::add(&self.metrics.echo_gated_frames, 1);
        }

        // While streaming or buffering every frame is encoded in order, so
        // the segmenter's copy of the audio is only needed to start a
        // conversation with its pre-roll.
        let streaming = self.state != StreamState::Idle;
        let discarded_before = self.segmenter.discarded();
        let frame = self.vad_frame;
        let mut starts: [Option<(Millis, Millis)>; 2] = [None, None];
        let mut ended: [Option<Utterance>; 2] = [None, None];
        // Split borrows: the segmenter's callback fills the reused scratch list.
        let Self {
            segmenter, scratch, ..
        } = self;
        scratch.clear();
        segmenter.push_heard(voiced, faint, &frame, &mut |o| match o {
            SegmentOutput::Started { onset, preroll } => {
                let slot = usize::from(starts[0].is_some());
                starts[slot] = Some((onset, preroll));
            }
            SegmentOutput::Speech(f) => {
                if !streaming {
                    scratch.push(*f);
                }
            }
            SegmentOutput::Ended(u) => {
                let slot = usize::from(ended[0].is_some());
                ended[slot] = Some(u);
            }
        });
        AudioMetrics::add(
            &self.metrics.discarded_onsets,
            self.segmenter.discarded() - discarded_before,
        );

        // Order matters for a split: the old utterance ends, then the next starts.
        for u in ended.into_iter().flatten() {
            AudioMetrics::add(&self.metrics.utterances, 1);
            sink.event(AudioEvent::SpeechEnded(u));
        }
        for (onset, preroll) in starts.into_iter().flatten() {
            sink.event(AudioEvent::SpeechStarted { onset, preroll });
        }
        if streaming {
            self.encode(&frame, sink)?;
        } else if !self.scratch.is_empty() {
            self.state = StreamState::Buffering;
            self.next_after_silence = true;
            for i in 0..self.scratch.len() {
                let f = self.scratch[i];
                self.encode(&f, sink)?;
            }
        }
        Ok(())
    }

    fn encode(
        &mut self,
        frame: &[f32; VAD_FRAME],
        sink: &mut dyn AudioSink,
    ) -> Result<(), AudioError> {
        self.adopt_next_frame();
        let Some(encoder) = self.encoder.as_mut() else {
            return Ok(());
        };
        self.opus_input[self.opus_filled..self.opus_filled + VAD_FRAME].copy_from_slice(frame);
        self.opus_filled += VAD_FRAME;
        // The encoder was made for packets of `frame_ms`.
        let packet_len = encoder.frame_len();
        if self.opus_filled < packet_len {
            return Ok(());
        }
        self.opus_filled = 0;
        let packet = encoder.encode(&self.opus_input[..packet_len])?;
        let timestamp = self.encoded_samples as u32;
        self.encoded_samples += SampleRate::OPUS.samples_in(self.frame_ms) as u64;
        AudioMetrics::add(&self.metrics.packets_encoded, 1);
        if self.dtx && packet.bytes().len() <= DTX_PACKET_MAX {
            // Nothing to send for DTX silence; the next real packet opens a talkspurt.
            self.next_after_silence = true;
            return Ok(());
        }
        let frame = EncodedFrame {
            packet,
            timestamp,
            after_silence: std::mem::take(&mut self.next_after_silence),
            duration: self.frame_ms,
        };
        match self.state {
            StreamState::Streaming => sink.frame(frame),
            StreamState::Buffering | StreamState::Idle => self.buffer.push(frame, &self.metrics),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::{AgentDecoder, OPUS_FRAME, has_fec, read_wav};

    /// Counts the frames sent and those carrying in-band FEC.
    #[derive(Default)]
    struct FecCount {
        frames: usize,
        with_fec: usize,
    }

    impl AudioSink for FecCount {
        fn event(&mut self, _event: AudioEvent) {}
        fn frame(&mut self, frame: EncodedFrame) {
            self.frames += 1;
            self.with_fec += usize::from(has_fec(frame.packet.bytes()));
        }
    }

    /// The speech fixture (16 kHz) and an encoding capture path for it,
    /// with no speaker.
    fn fixture_capture(frame: Millis) -> (Vec<f32>, CaptureProcessor) {
        let speech = read_wav(std::path::Path::new(
            "fixtures/audio/multi_utterance_16k.wav",
        ))
        .unwrap()
        .samples;
        let audio = AudioSettings {
            output: DeviceSpec::Disabled,
            opus_frame_ms: frame,
            ..AudioSettings::default()
        };
        let capture = CaptureProcessor::new(
            &audio,
            &VadSettings::default(),
            SampleRate::VAD,
            speech.len(),
            true,
            Arc::default(),
        )
        .unwrap();
        (speech, capture)
    }

    #[test]
    fn fec_follows_the_agents_answer_and_is_back_for_the_next_call() {
        let (speech, mut capture) = fixture_capture(Millis(20));
        let call = |capture: &mut CaptureProcessor| {
            let mut sink = FecCount::default();
            capture.link_ready(&mut sink);
            capture.push_samples(&speech, &mut sink).unwrap();
            sink
        };
        let declared = call(&mut capture);
        assert!(
            declared.with_fec > 50,
            "{} of {}",
            declared.with_fec,
            declared.frames
        );
        // An agent whose answer lacks `useinbandfec=1`.
        capture
            .follow_agent(AgentDecoder {
                inband_fec: false,
                max_packet: None,
            })
            .unwrap();
        let undeclared = call(&mut capture);
        assert!(undeclared.frames > 600);
        assert_eq!(undeclared.with_fec, 0);
        // The next call starts as configured, before its agent answers.
        capture.end_stream();
        let next = call(&mut capture);
        assert!(next.with_fec > 50, "{} of {}", next.with_fec, next.frames);
    }

    /// Keeps every frame sent.
    #[derive(Default)]
    struct Frames(Vec<EncodedFrame>);

    impl AudioSink for Frames {
        fn event(&mut self, _event: AudioEvent) {}
        fn frame(&mut self, frame: EncodedFrame) {
            self.0.push(frame);
        }
    }

    #[test]
    fn packets_carry_opus_frame_ms_of_audio_on_an_unbroken_rtp_clock() {
        for frame_ms in [20, 40] {
            let (speech, mut capture) = fixture_capture(Millis(frame_ms));
            assert_eq!(capture.until_next_packet(), Millis(frame_ms));
            let mut sink = Frames::default();
            capture.link_ready(&mut sink);
            capture.push_samples(&speech, &mut sink).unwrap();
            let frames = &sink.0;
            // The whole fixture, in packets of the configured length.
            let expected = speech.len() / SampleRate::VAD.samples_in(Millis(frame_ms));
            assert_eq!(frames.len(), expected, "{frame_ms} ms");
            let step = SampleRate::OPUS.samples_in(Millis(frame_ms)) as u32;
            let mut decoder = crate::audio::OpusDecoder::new().unwrap();
            let mut pcm = vec![0.0; 2 * OPUS_FRAME];
            for (i, f) in frames.iter().enumerate() {
                assert_eq!(f.duration, Millis(frame_ms));
                assert_eq!(f.timestamp, i as u32 * step);
                let decoded = decoder.decode(f.packet.bytes(), &mut pcm).unwrap();
                assert_eq!(decoded, step as usize, "packet {i} of {frame_ms} ms");
            }
        }
    }

    #[test]
    fn packets_shorten_for_an_agent_that_asks_and_lengthen_for_the_next_call() {
        let (speech, mut capture) = fixture_capture(Millis(40));
        // 100 packets and 10 ms of the next.
        let split = VAD_FRAME * (4 * 100 + 1);
        let mut sink = Frames::default();
        capture.link_ready(&mut sink);
        capture.push_samples(&speech[..split], &mut sink).unwrap();
        let before = sink.0.len();
        assert_eq!(before, 100);
        // The answer arrives mid-packet (`a=maxptime:20`): that packet is
        // finished at 40 ms, the rest are 20 ms.
        capture
            .follow_agent(AgentDecoder {
                inband_fec: true,
                max_packet: Some(Millis(20)),
            })
            .unwrap();
        assert_eq!(capture.until_next_packet(), Millis(30));
        capture.push_samples(&speech[split..], &mut sink).unwrap();
        let lengths: Vec<u32> = sink.0.iter().map(|f| f.duration.0).collect();
        assert!(lengths[..=before].iter().all(|&l| l == 40), "{lengths:?}");
        assert!(
            lengths[before + 1..].iter().all(|&l| l == 20),
            "{lengths:?}"
        );
        assert!(lengths.len() > before + 100, "{lengths:?}");
        // The RTP clock runs on unbroken across the change.
        let mut next = 0;
        for f in &sink.0 {
            assert_eq!(f.timestamp, next);
            next += SampleRate::OPUS.samples_in(f.duration) as u32;
        }
        // The next call starts at the configured 40 ms.
        capture.end_stream();
        assert_eq!(capture.until_next_packet(), Millis(40));
        let mut next_call = Frames::default();
        capture.link_ready(&mut next_call);
        capture.push_samples(&speech, &mut next_call).unwrap();
        assert!(next_call.0.iter().all(|f| f.duration == Millis(40)));
    }
}
