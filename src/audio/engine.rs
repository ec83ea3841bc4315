//! The running audio engine: the handle the session layer holds, and the
//! channels between it and the DSP thread (its output queues are
//! [`super::queue`]).
//!
//! Device callbacks only move samples through lock-free SPSC rings (rtrb)
//! and bump atomic counters. Everything else happens on one dedicated DSP
//! thread in 10 ms frames ([`super::dsp_thread`]). Devices are opened, and
//! reopened with backoff when they fail, by a thread of their own
//! (`backend::cpal`): the DSP thread never waits for one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use tokio::sync::mpsc::{self as async_mpsc, Sender, error::TrySendError};
use tracing::warn;

use super::backend::cpal::CaptureClock;
use super::capture::{AudioEvent, EncodedFrame};
use super::codec::{AgentDecoder, OpusPacket};
use super::dsp_thread::{ChannelSink, Control, DspThread, PanicReport};
use super::metrics::AudioMetrics;
use super::playout::IncomingPacket;
use super::queue::{EngineReceiver, queue};
use super::settings::{AudioSettings, VadSettings};
use super::sound_check::{GRACE, SoundCheckRecording, SoundCheckRequest};
use super::units::FRAME_MS;
use super::{AudioError, error_chain};

/// Events queued for the session layer before the newest are dropped (and
/// counted). The packet queue is sized from `vad.buffer_ms` instead: when
/// the link becomes ready the whole speech buffer is released at once, and
/// every packet of it must fit.
const EVENT_QUEUE: usize = 256;
/// Packets beyond the speech buffer: what is captured while the burst drains.
const FRAME_QUEUE_SPARE: usize = 100;
/// Packets from the link queued for the DSP thread. A tokio channel, as the
/// engine's other queues: it allocates its slots in blocks of 32 as they
/// fill and hands each block read back to the sender for reuse, freeing it
/// (on the DSP thread) only when three spare blocks wait already, after a
/// burst; std's bounded channel wrote all 256 inline packets up front,
/// 0.38 MiB resident for the life of the process.
const CONTROL_QUEUE: usize = 256;
/// Hands the bot's audio to the engine; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct PlayoutSender {
    control: Sender<Control>,
    metrics: Arc<AudioMetrics>,
}

impl PlayoutSender {
    /// Queues an RTP payload of the bot's voice for the jitter buffer,
    /// whatever it holds: what is not Opus is counted and concealed at
    /// playout. A payload larger than [`MAX_PACKET`](super::MAX_PACKET) is counted
    /// (`packets_oversize`) and dropped here; the jitter buffer conceals
    /// the hole it leaves. Returns whether the packet was queued.
    pub fn push_payload(&self, seq: u16, timestamp: u32, payload: &[u8]) -> bool {
        match OpusPacket::from_slice(payload) {
            Some(payload) => self.push(IncomingPacket {
                seq,
                timestamp,
                payload,
            }),
            None => {
                AudioMetrics::add(&self.metrics.packets_oversize, 1);
                false
            }
        }
    }

    /// Queues a packet for the jitter buffer. Returns false (and counts it)
    /// if the engine is not keeping up or has stopped.
    ///
    /// The DSP thread is not woken: it takes the packet at its next 10 ms
    /// frame, which is when it would play it at the earliest, and a packet
    /// is stamped with the playout clock, which moves only at frames. Not
    /// waking it saves a wake-up per packet on both sides.
    pub fn push(&self, packet: IncomingPacket) -> bool {
        let sent = self.control.try_send(Control::Packet(packet)).is_ok();
        if !sent {
            AudioMetrics::add(&self.metrics.events_dropped, 1);
        }
        sent
    }
}

/// Runs sound checks through a running engine; cheap to clone.
#[derive(Clone)]
pub struct SoundCheck {
    control: Sender<Control>,
    dsp: Thread,
}

impl SoundCheck {
    /// Plays `signal` (48 kHz) through the engine's speaker while recording
    /// its microphone for `listen`; blocks until done.
    pub fn run(
        &self,
        signal: Vec<f32>,
        listen: Duration,
    ) -> Result<SoundCheckRecording, AudioError> {
        let (reply, recording) = mpsc::sync_channel(1);
        let request = SoundCheckRequest::new(signal, listen, reply);
        match self.control.try_send(Control::SoundCheck(request)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(AudioError::Stopped("the audio engine is too busy".into()));
            }
            Err(TrySendError::Closed(_)) => {
                return Err(AudioError::Stopped("the audio engine has stopped".into()));
            }
        }
        self.dsp.unpark();
        recording.recv_timeout(listen + GRACE * 3).map_err(|_| {
            AudioError::Stopped("the audio engine did not finish the sound check".into())
        })
    }
}

/// The audio engine. Dropping it stops the DSP thread and closes devices.
pub struct AudioEngine {
    control: Sender<Control>,
    events: EngineReceiver<AudioEvent>,
    frames: EngineReceiver<EncodedFrame>,
    metrics: Arc<AudioMetrics>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), AudioError>>>,
    /// The DSP thread, to wake it when there is work for it.
    dsp: Thread,
}

impl AudioEngine {
    /// Opens the devices and starts the DSP thread. A device that cannot be
    /// opened is not fatal: it is retried with backoff while the engine runs.
    pub fn start(audio: &AudioSettings, vad: &VadSettings) -> Result<Self, AudioError> {
        let metrics = Arc::new(AudioMetrics::default());
        let (control_tx, control_rx) = async_mpsc::channel(CONTROL_QUEUE);
        let (event_tx, events) = queue(EVENT_QUEUE, "events");
        // At most one packet per 20 ms (the shortest the kiosk sends).
        let buffered_packets = (vad.buffer_ms.0 / (2 * FRAME_MS.0)) as usize;
        let (frame_tx, frames) = queue(buffered_packets + FRAME_QUEUE_SPARE, "frames");
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (audio, vad, metrics, stop) =
                (audio.clone(), vad.clone(), metrics.clone(), stop.clone());
            std::thread::Builder::new()
                .name("audio-dsp".into())
                .spawn(move || {
                    super::denormals::flush_to_zero_on_this_thread();
                    let sink = ChannelSink {
                        events: event_tx,
                        frames: frame_tx,
                        metrics: metrics.clone(),
                        clock: CaptureClock::start(),
                    };
                    let _panic = PanicReport(metrics.clone());
                    let setup = DspThread::new(audio, vad, metrics, sink, control_rx, stop);
                    match setup {
                        Ok(dsp) => {
                            // The receiver only goes away if start() already returned.
                            let _ = ready_tx.send(Ok(()));
                            dsp.supervise()
                        }
                        Err(e) => {
                            let message = error_chain(&e);
                            let _ = ready_tx.send(Err(e));
                            Err(AudioError::Stopped(message))
                        }
                    }
                })
                .map_err(|e| AudioError::Stopped(e.to_string()))?
        };
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(AudioError::Stopped("DSP thread exited during setup".into())),
        }
        Ok(Self {
            control: control_tx,
            events,
            frames,
            metrics,
            stop,
            dsp: thread.thread().clone(),
            thread: Some(thread),
        })
    }

    /// Speech, level, barge-in and device events, in order.
    pub fn events(&self) -> &EngineReceiver<AudioEvent> {
        &self.events
    }

    /// Encoded 20 ms microphone frames, once the link is ready (held until then).
    pub fn frames(&self) -> &EngineReceiver<EncodedFrame> {
        &self.frames
    }

    /// Moves the event and frame streams out, for async code to await: the
    /// DSP thread sends into them directly. Afterwards [`Self::events`] and
    /// [`Self::frames`] stay empty.
    pub fn take_streams(
        &mut self,
    ) -> (
        async_mpsc::Receiver<AudioEvent>,
        async_mpsc::Receiver<EncodedFrame>,
    ) {
        let events = std::mem::replace(&mut self.events, EngineReceiver::closed());
        let frames = std::mem::replace(&mut self.frames, EngineReceiver::closed());
        (events.into_inner(), frames.into_inner())
    }

    /// Where the link delivers the bot's audio.
    pub fn playout(&self) -> PlayoutSender {
        PlayoutSender {
            control: self.control.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// The link can take audio: release buffered speech, then stream.
    pub fn link_ready(&self) {
        self.send(Control::LinkReady);
    }

    /// The agent's report number `report` (its running count) says it lost
    /// `fraction` (0 to 1) of our audio over its latest interval: the
    /// encoder's in-band FEC follows it. A report passed again is ignored.
    pub fn report_loss_out(&self, report: u64, fraction: f64) {
        self.send(Control::LossOut { report, fraction });
    }

    /// What the agent's decoder takes, as its SDP answer said: the encoder
    /// sends FEC only if it decodes it, and packets no longer than it asks
    /// for. Said again is ignored.
    pub fn follow_agent(&self, agent: AgentDecoder) {
        self.send(Control::Agent(agent));
    }

    /// The conversation is over: drop unsent audio and wait for the next visitor.
    pub fn end_stream(&self) {
        self.send(Control::EndStream);
    }

    /// Plays a test signal through the open speaker while recording the
    /// microphone (the self-test), without reopening either device.
    pub fn sound_check(&self) -> SoundCheck {
        SoundCheck {
            control: self.control.clone(),
            dsp: self.dsp.clone(),
        }
    }

    /// Counters and levels the engine keeps for the status page.
    pub fn metrics(&self) -> &Arc<AudioMetrics> {
        &self.metrics
    }

    /// Makes the DSP loop fail with an error, as a failing stage would.
    #[cfg(test)]
    fn inject_failure(&self) {
        self.send(Control::Fail);
    }

    /// Stops the DSP thread, closing an open utterance and any WAV output.
    /// Events and frames produced up to then can still be received.
    pub fn stop(&mut self) -> Result<(), AudioError> {
        self.shutdown()
    }

    fn send(&self, control: Control) {
        // Control messages are rare; a full queue means the DSP thread is gone or stuck.
        if let Err(TrySendError::Full(_)) = self.control.try_send(control) {
            warn!("audio engine control queue full");
        }
        self.dsp.unpark();
    }

    fn shutdown(&mut self) -> Result<(), AudioError> {
        self.stop.store(true, Ordering::Relaxed);
        self.dsp.unpark();
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(AudioError::Stopped("DSP thread panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for AudioEngine {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            warn!(error = %error_chain(&e), "audio engine stopped with an error");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::audio::codec::OpusEncoder;
    use crate::audio::device::Direction;
    use crate::audio::units::OPUS_FRAME;
    use crate::audio::{DeviceSpec, Millis};

    fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !done() {
            assert!(Instant::now() < deadline, "{what}: never happened");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn device_events(engine: &AudioEngine) -> Vec<(Direction, bool)> {
        engine
            .events()
            .try_iter()
            .filter_map(|e| match e {
                AudioEvent::Device { direction, open } => Some((direction, open)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_failed_dsp_loop_is_restarted_and_the_stream_and_recording_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let speaker = dir.path().join("speaker.wav");
        let audio = AudioSettings {
            input: DeviceSpec::Wav(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("fixtures/audio/multi_utterance_16k.wav"),
            ),
            output: DeviceSpec::Wav(speaker.clone()),
            reopen_backoff_min_ms: Millis(200),
            reopen_backoff_max_ms: Millis(400),
            ..AudioSettings::default()
        };
        let mut engine = AudioEngine::start(&audio, &VadSettings::default()).unwrap();
        let metrics = engine.metrics().clone();
        engine.link_ready();
        // 40 ms packets: 7 in 300 ms.
        std::thread::sleep(Duration::from_millis(300));
        assert!(engine.frames().try_iter().count() >= 5, "not streaming");

        let failed_at = Instant::now();
        engine.inject_failure();
        wait_until("engine down", Duration::from_secs(1), || {
            metrics.is_engine_down()
        });
        let failure = metrics.last_engine_failure().expect("failure recorded");
        assert!(failure.error.contains("injected failure"), "{failure:?}");
        let delay = failure.restart_in.unwrap();
        assert!(delay >= Duration::from_millis(200), "{delay:?}");
        assert_eq!(
            device_events(&engine),
            [(Direction::Input, false), (Direction::Output, false)]
        );
        wait_until("restart", Duration::from_secs(2), || {
            AudioMetrics::get(&metrics.engine_restarts) == 1
        });
        assert!(failed_at.elapsed() >= Duration::from_millis(200));
        assert!(!metrics.is_engine_down());
        assert_eq!(AudioMetrics::get(&metrics.engine_failures), 1);
        assert_eq!(
            device_events(&engine),
            [(Direction::Input, true), (Direction::Output, true)]
        );

        // The live stream carries on without a new `link_ready`, and the
        // bot's audio plays again.
        engine.frames().try_iter().count();
        let mut enc = OpusEncoder::new(&audio).unwrap();
        let tone: Vec<f32> = (0..OPUS_FRAME)
            .map(|i| 0.3 * (i as f32 * 0.0576).sin())
            .collect();
        let playout = engine.playout();
        let played_before = AudioMetrics::get(&metrics.packets_played);
        for k in 0..25u16 {
            let packet = enc.encode(&tone).unwrap();
            playout.push_payload(k, u32::from(k) * OPUS_FRAME as u32, packet.bytes());
            std::thread::sleep(Duration::from_millis(20));
        }
        // 12 packets in 500 ms.
        assert!(engine.frames().try_iter().count() >= 9, "stream stopped");
        wait_until("bot audio played", Duration::from_secs(1), || {
            AudioMetrics::get(&metrics.packets_played) >= played_before + 20
        });

        engine.stop().unwrap();
        // One recording across the restart, finalized as a valid WAV.
        let recorded = crate::audio::wav::read_wav(&speaker).unwrap();
        let seconds = recorded.samples.len() as f64 / 48_000.0;
        let ran = failed_at.elapsed().as_secs_f64() + 0.3;
        assert!(seconds > ran - 0.2, "{seconds} s recorded in {ran} s");
    }

    #[test]
    fn a_payload_too_large_to_queue_is_counted() {
        let audio = AudioSettings {
            input: DeviceSpec::Disabled,
            output: DeviceSpec::Disabled,
            ..AudioSettings::default()
        };
        let engine = AudioEngine::start(&audio, &VadSettings::default()).unwrap();
        let playout = engine.playout();
        assert!(!playout.push_payload(1, 960, &[0xfc; crate::audio::MAX_PACKET + 1]));
        assert!(playout.push_payload(2, 1920, &[0xfc; crate::audio::MAX_PACKET]));
        assert_eq!(AudioMetrics::get(&engine.metrics().packets_oversize), 1);
    }
}
