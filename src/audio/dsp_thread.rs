//! The DSP thread: every 10 ms frame of capture and playout, the devices
//! the keeper opens, and the restart of the loop when a stage fails.
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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::mpsc::Receiver;
use tracing::{error, info, warn};

use super::backend::Pacer;
use super::backend::cpal::{CaptureClock, DeviceKeeper, Opened, OpenedInput, OpenedOutput};
use super::backend::wav::{WavInput, WavOutput};
use super::capture::{AudioEvent, AudioSink, EncodedFrame};
use super::codec::AgentDecoder;
use super::device::Direction;
use super::dsp::Dsp;
use super::metrics::AudioMetrics;
use super::playout::IncomingPacket;
use super::queue::Outlet;
use super::realtime::{self, RunawayGuard, Scheduling};
use super::resample::StreamResampler;
use super::settings::{AudioSettings, DeviceSpec, VadSettings};
use super::sound_check::{ActiveCheck, SoundCheckRequest};
use super::units::{FRAME_48K, FRAME_MS, SampleRate};
use super::{AudioError, error_chain};
use crate::liveness::{Part, wedge_requested};

/// The DSP thread sleeps until there is work: a device callback, a control
/// message or a paced file's next frame wakes it. This bounds the sleep so a
/// device that stops calling back is still noticed; it is longer than the
/// microphone's wake-ups, one per packet (40 or 20 ms), so it does not
/// split them.
const MAX_WAIT: Duration = Duration::from_millis(50);
/// The wake-up interval while no microphone and no speaker is open: there is
/// no callback to keep up with, only reopen attempts and paced playout that
/// catches up in whole frames, so the kiosk costs nothing while it waits.
const IDLE_WAIT: Duration = Duration::from_millis(100);

// Packets travel inline: boxing them would make the DSP thread free memory
// for every packet.
#[expect(clippy::large_enum_variant, reason = "packets are the common case")]
pub(super) enum Control {
    Packet(IncomingPacket),
    LinkReady,
    EndStream,
    /// The agent's latest loss report on our audio: its running count and
    /// the share lost.
    LossOut {
        report: u64,
        fraction: f64,
    },
    /// What the agent's decoder takes (its SDP answer).
    Agent(AgentDecoder),
    /// Plays a test signal and records the microphone (the self-test).
    SoundCheck(SoundCheckRequest),
    /// Makes the DSP loop fail, to exercise its restart.
    #[cfg(test)]
    Fail,
}

/// A DSP loop that ran this long before failing is restarted after the
/// shortest wait again.
const HEALTHY_RUN: Duration = Duration::from_secs(30);

/// Shows a DSP thread that unwinds from a panic (debug builds; release
/// builds abort) as a stopped engine instead of leaving it "ok".
pub(super) struct PanicReport(pub(super) Arc<AudioMetrics>);

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
pub(super) struct ChannelSink {
    pub(super) events: Outlet<AudioEvent>,
    pub(super) frames: Outlet<EncodedFrame>,
    pub(super) metrics: Arc<AudioMetrics>,
    pub(super) clock: CaptureClock,
}

impl AudioSink for ChannelSink {
    fn event(&mut self, event: AudioEvent) {
        self.events.send(event, &self.metrics);
    }

    fn frame(&mut self, frame: EncodedFrame) {
        let now = self.clock.epoch.elapsed().as_nanos() as u64;
        let since_input = now.saturating_sub(self.clock.last_input.load(Ordering::Relaxed));
        self.metrics
            .record_capture_latency(Duration::from_nanos(since_input));
        self.frames.send(frame, &self.metrics);
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

impl Output {
    /// No speaker, paced on the DSP thread's 10 ms grid from `epoch`.
    fn absent(epoch: Instant) -> Self {
        Self::Absent {
            pacer: Pacer::on_grid(epoch),
        }
    }
}

pub(super) struct DspThread {
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
    /// A self-test playing its signal and recording the microphone.
    sound_check: Option<ActiveCheck>,
    /// Set while the thread runs at real-time priority.
    runaway: Option<RunawayGuard>,
}

/// The next 10 ms for the speaker: the bot's playout, or the self-test's
/// signal while one runs (`to_speaker`: an output is open to play it).
fn next_playout_frame(
    dsp: &mut Dsp,
    sound_check: &mut Option<ActiveCheck>,
    frame: &mut [f32; FRAME_48K],
    to_speaker: bool,
    microphone_open: bool,
) -> Result<(), AudioError> {
    dsp.play_frame(frame, microphone_open)?;
    if let Some(check) = sound_check {
        check.play(frame, to_speaker);
    }
    Ok(())
}

impl DspThread {
    /// Sets up the stages on the DSP thread itself (device callbacks wake
    /// the thread that builds them), then asks for real-time scheduling.
    pub(super) fn new(
        audio: AudioSettings,
        vad: VadSettings,
        metrics: Arc<AudioMetrics>,
        sink: ChannelSink,
        control: Receiver<Control>,
        stop: Arc<AtomicBool>,
    ) -> Result<Self, AudioError> {
        let input = match &audio.input {
            DeviceSpec::Wav(path) => Input::Wav(WavInput::open(path, sink.clock.epoch)?),
            DeviceSpec::Disabled => Input::Disabled,
            _ => Input::Closed,
        };
        let output = match &audio.output {
            DeviceSpec::Wav(path) => Output::Wav(WavOutput::create(path, sink.clock.epoch)?),
            _ => Output::absent(sink.clock.epoch),
        };
        let dsp_rate = match &input {
            Input::Wav(file) => file.rate,
            _ => SampleRate::OPUS,
        };
        let block_len = dsp_rate.samples_in(audio.input_buffer_ms);
        let devices = DeviceKeeper::start(&audio, &metrics, &sink.clock, std::thread::current())?;
        let dsp = Dsp::new(&audio, &vad, dsp_rate, block_len, metrics.clone())?;
        // Once set up: the unit's `LimitRTTIME` counts a real-time thread's
        // CPU time until it sleeps, and setting up is the longest stretch.
        let scheduling = realtime::schedule_dsp_thread(&audio, &metrics);
        let runaway =
            (scheduling == Scheduling::Realtime).then(|| RunawayGuard::new(Instant::now()));
        Ok(Self {
            dsp,
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
            sound_check: None,
            runaway,
        })
    }

    /// Runs the DSP loop until the engine is stopped, restarting it with
    /// backoff whenever it fails.
    pub(super) fn supervise(mut self) -> Result<(), AudioError> {
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
            let before = Instant::now();
            std::thread::park_timeout(self.next_wait());
            self.check_runaway(before);
        }
        Ok(())
    }

    /// A real-time thread woken again and again without sleeping goes back
    /// to normal priority before the unit's `LimitRTTIME` stops it.
    fn check_runaway(&mut self, wait_began: Instant) {
        let Some(guard) = self.runaway.as_mut() else {
            return;
        };
        let now = Instant::now();
        if guard.runaway(now - wait_began, now) {
            realtime::demote_runaway_thread(&self.metrics);
            self.runaway = None;
        }
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
            self.output = Output::absent(self.sink.clock.epoch);
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
    /// and control messages other than packets wake the thread; a paced
    /// file needs it when its audio completes the next packet, and with no
    /// microphone a paced or absent speaker needs it at its next frame.
    fn next_wait(&self) -> Duration {
        // Packets from the link do not wake the thread: while a call
        // streams, it keeps the frame cadence even with nothing open.
        if self.nothing_open() && !self.link_ready {
            return IDLE_WAIT;
        }
        // An open microphone sets the pace, one wake-up per packet as a
        // device's does; a file or absent speaker catches up in whole
        // frames at each.
        match &self.input {
            Input::Wav(file) => {
                let frames = self.dsp.until_next_packet().frames();
                return MAX_WAIT.min(file.pacer.until_due(frames));
            }
            Input::Device { .. } => return MAX_WAIT,
            Input::Closed | Input::Disabled => {}
        }
        let mut wait = MAX_WAIT;
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
                Control::LossOut { report, fraction } => {
                    self.dsp.report_loss_out(report, fraction)?;
                }
                Control::Agent(agent) => self.dsp.follow_agent(agent)?,
                Control::SoundCheck(request) => {
                    self.sound_check = Some(ActiveCheck::new(request, self.dsp_rate));
                }
                #[cfg(test)]
                Control::Fail => return Err(AudioError::Stopped("injected failure".into())),
            }
        }
        Ok(())
    }

    fn capture(&mut self) -> Result<(), AudioError> {
        let n = match &mut self.input {
            // One copy for the whole block: popping sample by sample
            // stores the ring's index (a barrier on ARM) for each.
            Input::Device { ring, .. } => ring.pop_partial_slice(&mut self.block).0.len(),
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
        if let Some(mut check) = self.sound_check.take() {
            check.record(&mut self.block[..n]);
            self.sound_check = check.finish(self.dsp_rate).err();
        }
        if n > 0 {
            self.dsp.capture(&self.block[..n], &mut self.sink)?;
            self.sink
                .clock
                .wake_after
                .store(self.dsp.until_next_packet().0, Ordering::Relaxed);
        }
        Ok(())
    }

    fn play(&mut self) -> Result<(), AudioError> {
        let microphone_open = matches!(self.input, Input::Device { .. } | Input::Wav(_));
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
                    next_playout_frame(
                        &mut self.dsp,
                        &mut self.sound_check,
                        &mut self.playout_frame,
                        true,
                        microphone_open,
                    )?;
                    resampler.push(&self.playout_frame)?;
                    while resampler.pop_frame(frame) {
                        // Sized so a frame always fits; a full ring drops the rest.
                        let _ = ring.push_partial_slice(frame);
                    }
                }
            }
            Output::Wav(file) => {
                for _ in 0..file.pacer.due() {
                    next_playout_frame(
                        &mut self.dsp,
                        &mut self.sound_check,
                        &mut self.playout_frame,
                        true,
                        microphone_open,
                    )?;
                    file.write(&self.playout_frame)?;
                }
            }
            Output::Absent { pacer } => {
                for _ in 0..pacer.due() {
                    next_playout_frame(
                        &mut self.dsp,
                        &mut self.sound_check,
                        &mut self.playout_frame,
                        false,
                        microphone_open,
                    )?;
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
            self.output = Output::absent(self.sink.clock.epoch);
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
