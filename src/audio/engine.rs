//! The running audio engine: devices, the DSP thread and the channels the
//! session layer talks to.
//!
//! Device callbacks only move samples through lock-free SPSC rings (rtrb)
//! and bump atomic counters. Everything else happens on one dedicated DSP
//! thread in 10 ms frames. Devices are opened, and reopened with backoff
//! when they fail, by a thread of their own (`backend::cpal`): the DSP
//! thread never waits for one.
//!
//! Should the DSP loop ever fail (an error out of a stage: the encoder, a
//! resampler, a speaker WAV on a full disk), the thread does not end: it
//! reports both devices lost, waits with backoff (`audio.reopen_backoff_*`,
//! jittered), rebuilds every stage and reopens the devices, then reports
//! them open again. A stream to the link that was live carries on. Files
//! standing in for devices (`wav:`) are kept across the restart, so a
//! recording goes on where it stopped. Panics are not caught: the release
//! build aborts on panic and systemd restarts the gateway.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tracing::{error, info, warn};

use super::backend::Pacer;
use super::backend::cpal::{CaptureClock, DeviceKeeper, Opened, OpenedInput, OpenedOutput};
use super::backend::wav::{WavInput, WavOutput};
use super::capture::{AudioEvent, AudioSink, EncodedFrame};
use super::codec::OpusPacket;
use super::device::Direction;
use super::dsp::Dsp;
use super::metrics::AudioMetrics;
use super::playout::IncomingPacket;
use super::resample::StreamResampler;
use super::settings::{AudioSettings, DeviceSpec, VadSettings};
use super::units::{FRAME_48K, FRAME_MS, SampleRate};
use super::{AudioError, error_chain};
use crate::liveness::{Part, wedge_requested};

/// Events queued for the session layer before the newest are dropped (and
/// counted). The packet queue is sized from `vad.buffer_ms` instead: when
/// the link becomes ready the whole speech buffer is released at once, and
/// every packet of it must fit.
const EVENT_QUEUE: usize = 256;
/// Packets beyond the speech buffer: what is captured while the burst drains.
const FRAME_QUEUE_SPARE: usize = 100;
/// Packets from the link queued for the DSP thread.
const CONTROL_QUEUE: usize = 256;
/// The DSP thread sleeps until there is work: a device callback, a control
/// message or a paced file's next frame wakes it. This bounds the sleep so a
/// device that stops calling back is still noticed.
const MAX_WAIT: Duration = Duration::from_millis(20);
/// The wake-up interval while no microphone and no speaker is open: there is
/// no callback to keep up with, only reopen attempts and paced playout that
/// catches up in whole frames, so the kiosk costs nothing while it waits.
const IDLE_WAIT: Duration = Duration::from_millis(100);

// Packets travel inline: boxing them would make the DSP thread free memory
// for every packet.
#[expect(clippy::large_enum_variant, reason = "packets are the common case")]
enum Control {
    Packet(IncomingPacket),
    LinkReady,
    EndStream,
    /// Makes the DSP loop fail, to exercise its restart.
    #[cfg(test)]
    Fail,
}

/// A DSP loop that ran this long before failing is restarted after the
/// shortest wait again.
const HEALTHY_RUN: Duration = Duration::from_secs(30);

/// Hands the bot's audio to the engine; cheap to clone, usable from any thread.
#[derive(Clone)]
pub struct PlayoutSender {
    control: SyncSender<Control>,
    metrics: Arc<AudioMetrics>,
    dsp: Thread,
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
    pub fn push(&self, packet: IncomingPacket) -> bool {
        let sent = self.control.try_send(Control::Packet(packet)).is_ok();
        self.dsp.unpark();
        if !sent {
            AudioMetrics::add(&self.metrics.events_dropped, 1);
        }
        sent
    }
}

/// The audio engine. Dropping it stops the DSP thread and closes devices.
pub struct AudioEngine {
    control: SyncSender<Control>,
    events: Receiver<AudioEvent>,
    frames: Receiver<EncodedFrame>,
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
        let (control_tx, control_rx) = mpsc::sync_channel(CONTROL_QUEUE);
        let (event_tx, events) = mpsc::sync_channel(EVENT_QUEUE);
        // One packet per 20 ms Opus frame.
        let buffered_packets = (vad.buffer_ms.0 / (2 * FRAME_MS.0)) as usize;
        let (frame_tx, frames) = mpsc::sync_channel(buffered_packets + FRAME_QUEUE_SPARE);
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (audio, vad, metrics, stop) =
                (audio.clone(), vad.clone(), metrics.clone(), stop.clone());
            std::thread::Builder::new()
                .name("audio-dsp".into())
                .spawn(move || {
                    let sink = ChannelSink {
                        events: event_tx,
                        frames: frame_tx,
                        metrics: metrics.clone(),
                        clock: CaptureClock {
                            last_input: Arc::new(AtomicU64::new(0)),
                            epoch: Instant::now(),
                        },
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
                            let message = e.to_string();
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
    pub fn events(&self) -> &Receiver<AudioEvent> {
        &self.events
    }

    /// Encoded 20 ms microphone frames, once the link is ready (held until then).
    pub fn frames(&self) -> &Receiver<EncodedFrame> {
        &self.frames
    }

    /// Moves the event and frame streams out, to forward them to async
    /// code; afterwards [`Self::events`] and [`Self::frames`] stay empty.
    pub fn take_streams(&mut self) -> (Receiver<AudioEvent>, Receiver<EncodedFrame>) {
        let (_, no_events) = mpsc::sync_channel(0);
        let (_, no_frames) = mpsc::sync_channel(0);
        (
            std::mem::replace(&mut self.events, no_events),
            std::mem::replace(&mut self.frames, no_frames),
        )
    }

    /// Where the link delivers the bot's audio.
    pub fn playout(&self) -> PlayoutSender {
        PlayoutSender {
            control: self.control.clone(),
            metrics: self.metrics.clone(),
            dsp: self.dsp.clone(),
        }
    }

    /// The link can take audio: release buffered speech, then stream.
    pub fn link_ready(&self) {
        self.send(Control::LinkReady);
    }

    /// The conversation is over: drop unsent audio and wait for the next visitor.
    pub fn end_stream(&self) {
        self.send(Control::EndStream);
    }

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

/// Shows a DSP thread that unwinds from a panic (debug builds; release
/// builds abort) as a stopped engine instead of leaving it "ok".
struct PanicReport(Arc<AudioMetrics>);

impl Drop for PanicReport {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .record_engine_failure("DSP thread panicked".into(), None);
            self.0.input_open.store(false, Ordering::Relaxed);
            self.0.output_open.store(false, Ordering::Relaxed);
        }
    }
}

/// Delivers DSP output to the session layer without ever blocking.
struct ChannelSink {
    events: SyncSender<AudioEvent>,
    frames: SyncSender<EncodedFrame>,
    metrics: Arc<AudioMetrics>,
    clock: CaptureClock,
}

impl AudioSink for ChannelSink {
    fn event(&mut self, event: AudioEvent) {
        if self.events.try_send(event).is_err() {
            AudioMetrics::add(&self.metrics.events_dropped, 1);
        }
    }

    fn frame(&mut self, frame: EncodedFrame) {
        let now = self.clock.epoch.elapsed().as_nanos() as u64;
        let since_input = now.saturating_sub(self.clock.last_input.load(Ordering::Relaxed));
        self.metrics
            .record_capture_latency(Duration::from_nanos(since_input));
        if self.frames.try_send(frame).is_err() {
            AudioMetrics::add(&self.metrics.events_dropped, 1);
        }
    }
}

enum Input {
    Device {
        ring: rtrb::Consumer<f32>,
        failed: Arc<AtomicBool>,
    },
    Wav(WavInput),
    /// Waiting for the device keeper to (re)open it.
    Closed,
    Disabled,
}

enum Output {
    Device {
        ring: rtrb::Producer<f32>,
        failed: Arc<AtomicBool>,
        resampler: StreamResampler,
        frame: Vec<f32>,
        target_fill: usize,
        /// Largest block the callback has asked for; the ring must hold
        /// at least that much or every callback underruns.
        largest_request: Arc<AtomicUsize>,
    },
    Wav(WavOutput),
    /// No speaker (closed or disabled): playout still runs on the wall clock.
    Absent {
        pacer: Pacer,
    },
}

struct DspThread {
    audio: AudioSettings,
    vad: VadSettings,
    dsp: Dsp,
    dsp_rate: SampleRate,
    input: Input,
    output: Output,
    /// Opens the configured devices off this thread; `None` when only
    /// files (or nothing) are configured.
    devices: Option<DeviceKeeper>,
    sink: ChannelSink,
    control: Receiver<Control>,
    stop: Arc<AtomicBool>,
    metrics: Arc<AudioMetrics>,
    block: Vec<f32>,
    playout_frame: [f32; FRAME_48K],
    /// The link takes audio (between `LinkReady` and `EndStream`): a
    /// rebuilt `Dsp` must stream at once too.
    link_ready: bool,
}

impl DspThread {
    /// Sets up the stages on the DSP thread itself (device callbacks wake
    /// the thread that builds them).
    fn new(
        audio: AudioSettings,
        vad: VadSettings,
        metrics: Arc<AudioMetrics>,
        sink: ChannelSink,
        control: Receiver<Control>,
        stop: Arc<AtomicBool>,
    ) -> Result<Self, AudioError> {
        let input = match &audio.input {
            DeviceSpec::Wav(path) => Input::Wav(WavInput::open(path)?),
            DeviceSpec::Disabled => Input::Disabled,
            _ => Input::Closed,
        };
        let output = match &audio.output {
            DeviceSpec::Wav(path) => Output::Wav(WavOutput::create(path)?),
            _ => Output::Absent {
                pacer: Pacer::new(),
            },
        };
        let dsp_rate = match &input {
            Input::Wav(file) => file.rate,
            _ => SampleRate::OPUS,
        };
        let block_len = dsp_rate.samples_in(audio.input_buffer_ms);
        let devices = DeviceKeeper::start(&audio, &metrics, &sink.clock, std::thread::current())?;
        Ok(Self {
            dsp: Dsp::new(&audio, &vad, dsp_rate, block_len, metrics.clone())?,
            dsp_rate,
            input,
            output,
            devices,
            audio,
            vad,
            sink,
            control,
            stop,
            metrics,
            block: vec![0.0; block_len],
            playout_frame: [0.0; FRAME_48K],
            link_ready: false,
        })
    }

    /// Runs the DSP loop until the engine is stopped, restarting it with
    /// backoff whenever it fails.
    fn supervise(mut self) -> Result<(), AudioError> {
        let min = Duration::from_millis(u64::from(self.audio.reopen_backoff_min_ms.0));
        let max = Duration::from_millis(u64::from(self.audio.reopen_backoff_max_ms.0)).max(min);
        let backoff = || {
            ExponentialBuilder::new()
                .with_min_delay(min)
                .with_max_delay(max)
                .with_jitter()
                .without_max_times()
                .build()
        };
        let mut delays = backoff();
        let mut running_since = Instant::now();
        while let Err(e) = self.run() {
            if running_since.elapsed() >= HEALTHY_RUN {
                delays = backoff();
            }
            let mut failure = e;
            loop {
                let delay = delays.next().unwrap_or(max);
                self.failed(&failure, delay);
                if !self.wait_to_restart(delay) {
                    return self.finish();
                }
                match self.restart() {
                    Ok(()) => break,
                    Err(e) => failure = e,
                }
            }
            running_since = Instant::now();
        }
        self.finish()
    }

    fn run(&mut self) -> Result<(), AudioError> {
        let started = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            AudioMetrics::add(&self.metrics.dsp_heartbeat, 1);
            while wedge_requested(Part::Audio, started) {
                std::thread::sleep(Duration::from_secs(1));
            }
            self.drop_failed_devices();
            self.take_opened_devices()?;
            self.handle_control()?;
            self.capture()?;
            self.play()?;
            std::thread::park_timeout(self.next_wait());
        }
        Ok(())
    }

    /// The DSP loop failed: say so, and report both devices gone until it
    /// is back. An utterance in progress is closed, so the session layer
    /// does not wait for its end.
    fn failed(&mut self, e: &AudioError, restart_in: Duration) {
        let was_running = !self.metrics.is_engine_down();
        let error = error_chain(e);
        error!(
            error = %error,
            restart_in_ms = restart_in.as_millis() as u64,
            "audio engine failed; restarting it"
        );
        self.metrics.record_engine_failure(error, Some(restart_in));
        if was_running {
            self.dsp.finish(&mut self.sink);
            self.metrics.input_open.store(false, Ordering::Relaxed);
            self.metrics.output_open.store(false, Ordering::Relaxed);
            for direction in self.directions() {
                self.sink.event(AudioEvent::Device {
                    direction,
                    open: false,
                });
            }
        }
    }

    /// Directions with something configured (a device or a file).
    fn directions(&self) -> impl Iterator<Item = Direction> + use<> {
        let input = !matches!(self.audio.input, DeviceSpec::Disabled);
        let output = !matches!(self.audio.output, DeviceSpec::Disabled);
        [(input, Direction::Input), (output, Direction::Output)]
            .into_iter()
            .filter_map(|(wanted, d)| wanted.then_some(d))
    }

    /// Waits `delay` before a restart, still taking control messages (the
    /// bot's packets are dropped meanwhile). False if the engine is being
    /// stopped.
    fn wait_to_restart(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            AudioMetrics::add(&self.metrics.dsp_heartbeat, 1);
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            while let Ok(control) = self.control.try_recv() {
                match control {
                    Control::LinkReady => self.link_ready = true,
                    Control::EndStream => self.link_ready = false,
                    _ => {}
                }
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::park_timeout(left.min(IDLE_WAIT));
        }
    }

    /// Rebuilds every stage and has the devices reopened; files stay.
    fn restart(&mut self) -> Result<(), AudioError> {
        if matches!(self.input, Input::Device { .. }) {
            self.input = Input::Closed;
        }
        if matches!(self.output, Output::Device { .. }) {
            self.output = Output::Absent {
                pacer: Pacer::new(),
            };
        }
        if let Some(devices) = &mut self.devices {
            devices.reopen_all();
        }
        self.rebuild_dsp()?;
        self.metrics.record_engine_restart();
        info!(
            restarts = AudioMetrics::get(&self.metrics.engine_restarts),
            "audio engine restarted"
        );
        // Devices report themselves when they open; files are open already.
        let files: Vec<Direction> = self
            .directions()
            .filter(|d| match d {
                Direction::Input => matches!(self.input, Input::Wav(_)),
                Direction::Output => matches!(self.output, Output::Wav(_)),
            })
            .collect();
        for direction in files {
            self.sink.event(AudioEvent::Device {
                direction,
                open: true,
            });
        }
        Ok(())
    }

    /// A new `Dsp` for the current input rate, streaming at once if the
    /// link was taking audio.
    fn rebuild_dsp(&mut self) -> Result<(), AudioError> {
        self.block = vec![0.0; self.dsp_rate.samples_in(self.audio.input_buffer_ms)];
        self.dsp = Dsp::new(
            &self.audio,
            &self.vad,
            self.dsp_rate,
            self.block.len(),
            self.metrics.clone(),
        )?;
        if self.link_ready {
            self.dsp.link_ready(&mut self.sink);
        }
        Ok(())
    }

    /// The engine is stopping: closes an open utterance and the speaker file.
    fn finish(mut self) -> Result<(), AudioError> {
        self.dsp.finish(&mut self.sink);
        if let Output::Wav(file) = self.output {
            file.finalize()?;
        }
        Ok(())
    }

    /// How long to sleep unless woken: device callbacks, the device keeper
    /// and control messages wake the thread; paced files and an absent
    /// speaker need it at their next frame.
    fn next_wait(&self) -> Duration {
        if self.nothing_open() {
            return IDLE_WAIT;
        }
        let mut wait = MAX_WAIT;
        if let Input::Wav(file) = &self.input {
            wait = wait.min(file.pacer.until_next());
        }
        match &self.output {
            Output::Wav(file) => wait = wait.min(file.pacer.until_next()),
            Output::Absent { pacer } => wait = wait.min(pacer.until_next()),
            Output::Device { .. } => {}
        }
        wait
    }

    fn nothing_open(&self) -> bool {
        matches!(self.input, Input::Closed | Input::Disabled)
            && matches!(self.output, Output::Absent { .. })
    }

    fn handle_control(&mut self) -> Result<(), AudioError> {
        while let Ok(control) = self.control.try_recv() {
            match control {
                Control::Packet(p) => self.dsp.push_packet(p),
                Control::LinkReady => {
                    self.link_ready = true;
                    self.dsp.link_ready(&mut self.sink);
                }
                Control::EndStream => {
                    self.link_ready = false;
                    self.dsp.end_stream();
                }
                #[cfg(test)]
                Control::Fail => return Err(AudioError::Stopped("injected failure".into())),
            }
        }
        Ok(())
    }

    fn capture(&mut self) -> Result<(), AudioError> {
        let n = match &mut self.input {
            Input::Device { ring, .. } => {
                let n = ring.slots().min(self.block.len());
                for slot in &mut self.block[..n] {
                    // `slots()` said these are readable; pop cannot fail.
                    *slot = ring.pop().unwrap_or(0.0);
                }
                n
            }
            Input::Wav(file) => {
                let n = file.read_due(&mut self.block);
                if n > 0 {
                    let at = file
                        .pacer
                        .last_due()
                        .saturating_duration_since(self.sink.clock.epoch);
                    self.sink
                        .clock
                        .last_input
                        .store(at.as_nanos() as u64, Ordering::Relaxed);
                }
                n
            }
            Input::Closed | Input::Disabled => 0,
        };
        if n > 0 {
            self.dsp.capture(&self.block[..n], &mut self.sink)?;
        }
        Ok(())
    }

    fn play(&mut self) -> Result<(), AudioError> {
        match &mut self.output {
            Output::Device {
                ring,
                resampler,
                frame,
                target_fill,
                largest_request,
                ..
            } => {
                let capacity = ring.buffer().capacity();
                let fill = (*target_fill)
                    .max(largest_request.load(Ordering::Relaxed) + frame.len())
                    .min(capacity - frame.len());
                while capacity - ring.slots() + frame.len() <= fill {
                    self.dsp.play_frame(&mut self.playout_frame)?;
                    resampler.push(&self.playout_frame)?;
                    while resampler.pop_frame(frame) {
                        for &s in frame.iter() {
                            // Sized so a frame always fits; a full ring just drops it.
                            let _ = ring.push(s);
                        }
                    }
                }
            }
            Output::Wav(file) => {
                for _ in 0..file.pacer.due() {
                    self.dsp.play_frame(&mut self.playout_frame)?;
                    file.write(&self.playout_frame)?;
                }
            }
            Output::Absent { pacer } => {
                for _ in 0..pacer.due() {
                    self.dsp.play_frame(&mut self.playout_frame)?;
                }
            }
        }
        Ok(())
    }

    /// A device whose stream reported an error is lost: say so. The keeper
    /// drops its stream and reopens it.
    fn drop_failed_devices(&mut self) {
        if let Input::Device { failed, .. } = &self.input
            && failed.load(Ordering::Relaxed)
        {
            warn!("microphone failed; reopening");
            self.input = Input::Closed;
            self.device_changed(Direction::Input, false);
        }
        if let Output::Device { failed, .. } = &self.output
            && failed.load(Ordering::Relaxed)
        {
            warn!("speaker failed; reopening");
            self.output = Output::Absent {
                pacer: Pacer::new(),
            };
            self.device_changed(Direction::Output, false);
        }
    }

    /// Takes over the devices the keeper has opened since the last turn.
    fn take_opened_devices(&mut self) -> Result<(), AudioError> {
        while let Some(opened) = self.devices.as_mut().and_then(DeviceKeeper::try_opened) {
            match opened {
                Opened::Input(OpenedInput { ring, failed, rate }) => {
                    info!(rate = %rate, "microphone open");
                    if rate != self.dsp_rate {
                        self.dsp_rate = rate;
                        self.rebuild_dsp()?;
                    }
                    self.input = Input::Device { ring, failed };
                    self.device_changed(Direction::Input, true);
                }
                Opened::Output(OpenedOutput {
                    ring,
                    failed,
                    rate,
                    target_fill,
                    largest_request,
                }) => {
                    info!(rate = %rate, "speaker open");
                    self.output = Output::Device {
                        ring,
                        failed,
                        resampler: StreamResampler::new(SampleRate::OPUS, rate, FRAME_48K)?,
                        frame: vec![0.0; rate.samples_in(FRAME_MS)],
                        target_fill,
                        largest_request,
                    };
                    self.device_changed(Direction::Output, true);
                }
            }
        }
        Ok(())
    }

    fn device_changed(&mut self, direction: Direction, open: bool) {
        let gauge = match direction {
            Direction::Input => &self.metrics.input_open,
            Direction::Output => &self.metrics.output_open,
        };
        gauge.store(open, Ordering::Relaxed);
        if open {
            AudioMetrics::add(&self.metrics.device_reopens, 1);
        }
        self.sink.event(AudioEvent::Device { direction, open });
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::audio::Millis;
    use crate::audio::codec::OpusEncoder;
    use crate::audio::units::OPUS_FRAME;

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
        std::thread::sleep(Duration::from_millis(300));
        assert!(engine.frames().try_iter().count() >= 10, "not streaming");

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
        assert!(engine.frames().try_iter().count() >= 15, "stream stopped");
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
