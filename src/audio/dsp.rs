//! One tick of the whole audio engine, without threads or devices: the
//! capture and playout paths side by side, so the playout can serve as the
//! echo reference and a visitor's onset can cut the bot off.
//!
//! The engine's DSP thread drives this; tests and the benchmark drive it
//! directly with file audio.

use std::sync::Arc;

use super::AudioError;
use super::capture::{AudioEvent, AudioSink, CaptureProcessor, EncodedFrame};
use super::codec::AgentDecoder;
use super::metrics::AudioMetrics;
use super::playout::{IncomingPacket, Playout};
use super::settings::{AudioSettings, VadSettings};
use super::units::{FRAME_48K, FRAME_MS, Millis, SampleRate};

/// The capture and playout paths of one engine, run a 10 ms frame at a time.
pub struct Dsp {
    capture: CaptureProcessor,
    playout: Playout,
    /// Advances by 10 ms per playout frame; timestamps packet arrivals.
    clock: Millis,
}

/// Passes capture output on, cutting the bot off when the visitor starts
/// speaking over it and letting it back in when they stop.
struct BargeInSink<'a> {
    playout: &'a mut Playout,
    inner: &'a mut dyn AudioSink,
}

impl AudioSink for BargeInSink<'_> {
    fn event(&mut self, event: AudioEvent) {
        match event {
            AudioEvent::SpeechStarted { .. } => {
                self.inner.event(event);
                if self.playout.barge_in() {
                    self.inner.event(AudioEvent::BargeIn);
                }
            }
            AudioEvent::SpeechEnded(_) => {
                self.playout.release();
                self.inner.event(event);
            }
            _ => self.inner.event(event),
        }
    }

    fn frame(&mut self, frame: EncodedFrame) {
        self.inner.frame(frame);
    }
}

impl Dsp {
    /// Both paths, idle, with the given settings.
    pub fn new(
        audio: &AudioSettings,
        vad: &VadSettings,
        input_rate: SampleRate,
        max_block: usize,
        metrics: Arc<AudioMetrics>,
    ) -> Result<Self, AudioError> {
        Ok(Self {
            capture: CaptureProcessor::new(
                audio,
                vad,
                input_rate,
                max_block,
                true,
                metrics.clone(),
            )?,
            playout: Playout::new(audio, metrics)?,
            clock: Millis(0),
        })
    }

    /// Microphone samples (mono, input rate).
    pub fn capture(&mut self, samples: &[f32], sink: &mut dyn AudioSink) -> Result<(), AudioError> {
        let mut sink = BargeInSink {
            playout: &mut self.playout,
            inner: sink,
        };
        self.capture.push_samples(samples, &mut sink)
    }

    /// Microphone audio the encoder lacks for its next packet.
    pub fn until_next_packet(&self) -> Millis {
        self.capture.until_next_packet()
    }

    /// The next 10 ms for the speaker, at 48 kHz; `microphone_open`: a
    /// microphone is open to hear it, and the echo canceller follows it.
    pub fn play_frame(
        &mut self,
        out: &mut [f32; FRAME_48K],
        microphone_open: bool,
    ) -> Result<(), AudioError> {
        self.playout.next_frame(out);
        if microphone_open {
            self.capture.observe_playout(out);
        } else {
            self.capture.observe_unheard_playout(out);
        }
        self.clock = Millis(self.clock.0 + FRAME_MS.0);
        Ok(())
    }

    /// A packet of the bot's voice from the link.
    pub fn push_packet(&mut self, packet: IncomingPacket) {
        self.playout.push(packet, self.clock);
    }

    /// The link can take audio: buffered speech goes out, then every frame.
    pub fn link_ready(&mut self, sink: &mut dyn AudioSink) {
        self.capture.link_ready(sink);
    }

    /// Closes an utterance still open when capture stops.
    pub fn finish(&mut self, sink: &mut dyn AudioSink) {
        self.capture.finish(sink);
    }

    /// The agent's report number `report` says it lost `fraction` (0 to 1)
    /// of our audio.
    pub fn report_loss_out(&mut self, report: u64, fraction: f64) -> Result<(), AudioError> {
        self.capture.report_loss_out(report, fraction)
    }

    /// What the agent's decoder takes (its SDP answer).
    pub fn follow_agent(&mut self, agent: AgentDecoder) -> Result<(), AudioError> {
        self.capture.follow_agent(agent)
    }

    /// The conversation is over: unsent audio is dropped.
    pub fn end_stream(&mut self) {
        self.capture.end_stream();
    }

    /// Whether the bot's voice is playing.
    pub fn bot_playing(&self) -> bool {
        self.playout.is_playing()
    }
}
