//! Sound devices through cpal, kept open by a thread of their own.
//!
//! Opening a device means listing ALSA's devices, probing formats and
//! starting a stream: tens of milliseconds on a good day, seconds when a USB
//! microphone is half plugged in. None of that may happen on the DSP thread,
//! which has a speaker to feed every 10 ms. The [`DeviceKeeper`] thread owns
//! the cpal streams, opens what is configured, notices a device's error
//! callback, drops the stream and retries with backoff. What it hands the
//! DSP thread is only the device's sample ring and its "failed" flag.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use ::cpal::SampleFormat;
use ::cpal::traits::{DeviceTrait, StreamTrait};
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tracing::{info, warn};

use super::hold::HoldToRealTime;
use super::ring::{DeviceSample, fill_block, push_block};
use crate::audio::device::{
    ChosenConfig, Direction, choose_config, find_device, with_alsa_messages,
};
use crate::audio::metrics::AudioMetrics;
use crate::audio::settings::{AudioSettings, DeviceSpec};
use crate::audio::units::{FRAME_MS, Millis, SampleRate};
use crate::audio::{AudioError, error_chain};

/// Speaker ring space beyond `device_buffer_ms`, used only by devices that
/// ask for larger blocks than requested.
const OUTPUT_RING_SPARE: Millis = Millis(250);
/// How long the keeper sleeps when nothing is due: error callbacks and
/// requests wake it sooner.
const KEEPER_WAIT: Duration = Duration::from_secs(1);

/// A microphone stream the keeper opened: the DSP thread reads its ring.
pub struct OpenedInput {
    pub ring: rtrb::Consumer<f32>,
    /// Set by the stream's error callback.
    pub failed: Arc<AtomicBool>,
    pub rate: SampleRate,
}

/// A speaker stream the keeper opened: the DSP thread fills its ring.
pub struct OpenedOutput {
    pub ring: rtrb::Producer<f32>,
    /// Set by the stream's error callback.
    pub failed: Arc<AtomicBool>,
    pub rate: SampleRate,
    /// Samples the DSP thread keeps queued (`device_buffer_ms`).
    pub target_fill: usize,
    /// Largest block the callback has asked for; the ring must hold at
    /// least that much or every callback underruns.
    pub largest_request: Arc<AtomicUsize>,
}

/// What the keeper hands the DSP thread.
pub enum Opened {
    Input(OpenedInput),
    Output(OpenedOutput),
}

/// What the microphone callback shares with the DSP thread.
#[derive(Clone)]
pub struct CaptureClock {
    /// When the microphone last delivered samples (ns since `epoch`).
    pub last_input: Arc<AtomicU64>,
    pub epoch: Instant,
    /// Queued microphone audio, in ms, that wakes the DSP thread: what the
    /// encoder lacks for its next packet, as the thread last said. The
    /// encoder sends nothing before it has a whole packet (40 or 20 ms), so waking
    /// for each 10 ms device period would send nothing sooner (the VAD
    /// hears the first half up to 10 ms later); it would only double the
    /// wake-ups.
    pub wake_after: Arc<AtomicU32>,
}

impl CaptureClock {
    /// A clock whose epoch is now. Until the DSP thread has captured once,
    /// every callback wakes it.
    pub fn start() -> Self {
        CaptureClock {
            last_input: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
            wake_after: Arc::new(AtomicU32::new(0)),
        }
    }
}

enum Request {
    /// Drop every stream and open them afresh (after the DSP loop restarted).
    Reopen { generation: u64 },
}

/// The DSP thread's handle on the keeper thread. Dropping it stops the
/// keeper and closes the devices.
pub struct DeviceKeeper {
    requests: SyncSender<Request>,
    opened: Receiver<(u64, Opened)>,
    /// Streams opened before the latest reopen request are stale.
    generation: u64,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl DeviceKeeper {
    /// Starts the keeper if a real device is configured in either direction.
    /// Callbacks wake `dsp` when they have moved samples.
    pub fn start(
        audio: &AudioSettings,
        metrics: &Arc<AudioMetrics>,
        clock: &CaptureClock,
        dsp: Thread,
    ) -> Result<Option<Self>, AudioError> {
        let wanted: Vec<Direction> = [
            (&audio.input, Direction::Input),
            (&audio.output, Direction::Output),
        ]
        .into_iter()
        .filter(|(spec, _)| matches!(spec, DeviceSpec::Default | DeviceSpec::Named(_)))
        .map(|(_, d)| d)
        .collect();
        if wanted.is_empty() {
            return Ok(None);
        }
        // Few messages: one per device (re)open, one per DSP restart.
        let (requests, request_rx) = mpsc::sync_channel(4);
        let (opened_tx, opened) = mpsc::sync_channel(8);
        let stop = Arc::new(AtomicBool::new(false));
        let keeper = Keeper {
            audio: audio.clone(),
            metrics: metrics.clone(),
            clock: clock.clone(),
            dsp,
            requests: request_rx,
            opened: opened_tx,
            stop: stop.clone(),
            generation: 0,
            slots: wanted.into_iter().map(|d| Slot::new(d, audio)).collect(),
        };
        let thread = std::thread::Builder::new()
            .name("audio-devices".into())
            .spawn(move || keeper.run())
            .map_err(|e| AudioError::Stopped(e.to_string()))?;
        Ok(Some(Self {
            requests,
            opened,
            generation: 0,
            stop,
            thread: Some(thread),
        }))
    }

    /// A device the keeper opened since the last call, if any.
    pub fn try_opened(&mut self) -> Option<Opened> {
        while let Ok((generation, opened)) = self.opened.try_recv() {
            if generation == self.generation {
                return Some(opened);
            }
        }
        None
    }

    /// Closes every device and opens them again, as after a DSP restart.
    /// Streams opened before this call are never handed over.
    pub fn reopen_all(&mut self) {
        self.generation += 1;
        let request = Request::Reopen {
            generation: self.generation,
        };
        if self.requests.try_send(request).is_err() {
            warn!("audio device keeper is not taking requests");
        }
        self.wake();
    }

    fn wake(&self) {
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
    }
}

impl Drop for DeviceKeeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One direction the keeper looks after.
struct Slot {
    direction: Direction,
    /// The open stream; cpal stops it when dropped.
    stream: Option<(::cpal::Stream, Arc<AtomicBool>)>,
    backoff: ExponentialBackoff,
    next_attempt: Instant,
    settings: (Duration, Duration),
    /// The device's held-back count when its stream opened, or `None` once
    /// this stream has been reported running ahead of real time.
    held_at_open: Option<u64>,
}

impl Slot {
    fn new(direction: Direction, audio: &AudioSettings) -> Self {
        let min = Duration::from_millis(u64::from(audio.reopen_backoff_min_ms.0));
        let max = Duration::from_millis(u64::from(audio.reopen_backoff_max_ms.0)).max(min);
        Self {
            direction,
            stream: None,
            backoff: backoff(min, max),
            next_attempt: Instant::now(),
            settings: (min, max),
            held_at_open: None,
        }
    }

    /// Schedules the next attempt by the backoff sequence.
    fn retry_later(&mut self) -> Duration {
        let wait = self.backoff.next().unwrap_or(self.settings.1);
        self.next_attempt = Instant::now() + wait;
        wait
    }

    fn reset_backoff(&mut self) {
        self.backoff = backoff(self.settings.0, self.settings.1);
    }

    fn name(&self) -> &'static str {
        match self.direction {
            Direction::Input => "microphone",
            Direction::Output => "speaker",
        }
    }

    /// This direction's count of milliseconds held back to real time.
    fn held_ms(&self, metrics: &AudioMetrics) -> u64 {
        AudioMetrics::get(match self.direction {
            Direction::Input => &metrics.input_held_ms,
            Direction::Output => &metrics.output_held_ms,
        })
    }

    /// Says once per stream that its device runs ahead of real time, which
    /// only a device without a clock does: a technician sees why it plays
    /// or records nothing useful.
    fn report_held(&mut self, metrics: &AudioMetrics) {
        if let Some(at_open) = self.held_at_open
            && self.stream.is_some()
            && self.held_ms(metrics) > at_open
        {
            self.held_at_open = None;
            warn!(
                device = self.name(),
                "device runs faster than real time: it has no clock (as ALSA's \"null\" \
                 device); held to real time"
            );
        }
    }
}

fn backoff(min: Duration, max: Duration) -> ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(min)
        .with_max_delay(max)
        .without_max_times()
        .build()
}

struct Keeper {
    audio: AudioSettings,
    metrics: Arc<AudioMetrics>,
    clock: CaptureClock,
    dsp: Thread,
    requests: Receiver<Request>,
    opened: SyncSender<(u64, Opened)>,
    stop: Arc<AtomicBool>,
    generation: u64,
    slots: Vec<Slot>,
}

impl Keeper {
    fn run(mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            while let Ok(Request::Reopen { generation }) = self.requests.try_recv() {
                self.generation = generation;
                for slot in &mut self.slots {
                    slot.stream = None;
                    slot.reset_backoff();
                    slot.next_attempt = Instant::now();
                }
            }
            let mut wait = KEEPER_WAIT;
            for k in 0..self.slots.len() {
                self.keep_open(k);
                self.slots[k].report_held(&self.metrics);
                let slot = &self.slots[k];
                if slot.stream.is_none() {
                    wait = wait.min(slot.next_attempt.saturating_duration_since(Instant::now()));
                }
            }
            std::thread::park_timeout(wait);
        }
    }

    /// Drops a failed stream and opens a closed one when its backoff allows.
    fn keep_open(&mut self, k: usize) {
        let slot = &mut self.slots[k];
        if let Some((_, failed)) = &slot.stream
            && failed.load(Ordering::Relaxed)
        {
            // The DSP thread reports the loss; here the stream goes, and
            // a device that fails again at once is not reopened in a loop.
            slot.stream = None;
            slot.retry_later();
        }
        if slot.stream.is_some() || Instant::now() < slot.next_attempt {
            return;
        }
        let direction = slot.direction;
        let (opened, alsa_lib) = with_alsa_messages(|| self.open(direction));
        let slot = &mut self.slots[k];
        match opened {
            Ok((stream, failed, opened)) => {
                slot.reset_backoff();
                if self.opened.try_send((self.generation, opened)).is_ok() {
                    info!(device = slot.name(), "device open");
                    slot.stream = Some((stream, failed));
                    slot.held_at_open = Some(slot.held_ms(&self.metrics));
                    self.dsp.unpark();
                } else {
                    // The DSP thread has not taken the last ones: it is
                    // stuck or restarting. Try again later rather than keep
                    // a stream nobody reads.
                    let wait = slot.retry_later();
                    warn!(
                        device = slot.name(),
                        retry_in_ms = wait.as_millis() as u64,
                        "audio thread not taking devices"
                    );
                }
            }
            Err(e) => {
                let wait = slot.retry_later();
                warn!(
                    device = slot.name(),
                    error = %error_chain(&e),
                    alsa_lib,
                    retry_in_ms = wait.as_millis() as u64,
                    "cannot open device"
                );
            }
        }
    }

    fn open(
        &self,
        direction: Direction,
    ) -> Result<(::cpal::Stream, Arc<AtomicBool>, Opened), AudioError> {
        slow_open_for_tests();
        let failed = Arc::new(AtomicBool::new(false));
        let wake = Wake {
            dsp: self.dsp.clone(),
            keeper: std::thread::current(),
        };
        let (stream, opened) = match direction {
            Direction::Input => {
                let (stream, input) =
                    open_input(&self.audio, &self.metrics, &self.clock, &failed, wake)?;
                (stream, Opened::Input(input))
            }
            Direction::Output => {
                let (stream, output) = open_output(&self.audio, &self.metrics, &failed, wake)?;
                (stream, Opened::Output(output))
            }
        };
        Ok((stream, failed, opened))
    }
}

/// Test builds only: `KIOSK_TEST_SLOW_DEVICE_OPEN_MS=<ms>` makes every
/// device open take that much longer, as a flaky USB device does, so tests
/// can check that playout does not wait for it. Read at each attempt
/// (attempts are rare); release builds ignore it.
fn slow_open_for_tests() {
    if cfg!(debug_assertions)
        && let Some(ms) = std::env::var("KIOSK_TEST_SLOW_DEVICE_OPEN_MS")
            .ok()
            .and_then(|v| v.parse().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

/// Whom a callback wakes: the DSP thread for samples, and the keeper too
/// when the device fails.
#[derive(Clone)]
struct Wake {
    dsp: Thread,
    keeper: Thread,
}

fn open_input(
    audio: &AudioSettings,
    metrics: &Arc<AudioMetrics>,
    clock: &CaptureClock,
    failed: &Arc<AtomicBool>,
    wake: Wake,
) -> Result<(::cpal::Stream, OpenedInput), AudioError> {
    let device = find_device(&audio.input, Direction::Input)?;
    let chosen = choose_config(&device, Direction::Input)?;
    let rate = chosen.rate();
    let (producer, consumer) = rtrb::RingBuffer::new(rate.samples_in(audio.input_buffer_ms).max(1));
    let stream = match chosen.format {
        SampleFormat::I16 => {
            build_input::<i16>(&device, &chosen, producer, metrics, clock, failed, wake)
        }
        _ => build_input::<f32>(&device, &chosen, producer, metrics, clock, failed, wake),
    }?;
    stream.play().map_err(AudioError::Device)?;
    Ok((
        stream,
        OpenedInput {
            ring: consumer,
            failed: failed.clone(),
            rate,
        },
    ))
}

fn build_input<T: DeviceSample>(
    device: &::cpal::Device,
    chosen: &ChosenConfig,
    mut producer: rtrb::Producer<f32>,
    metrics: &Arc<AudioMetrics>,
    clock: &CaptureClock,
    failed: &Arc<AtomicBool>,
    wake: Wake,
) -> Result<::cpal::Stream, AudioError> {
    let channels = usize::from(chosen.config.channels.max(1));
    let data_metrics = metrics.clone();
    let clock = clock.clone();
    let dsp = wake.dsp.clone();
    let capacity = producer.buffer().capacity();
    let rate = chosen.rate();
    let mut hold = HoldToRealTime::new(rate);
    device
        .build_input_stream::<T, _, _>(
            chosen.config,
            // Real-time: no allocation, locks or logging in here. Waking the
            // DSP thread is an atomic swap plus, when it sleeps, one futex
            // wake: bounded, and it saves the thread from polling. It sleeps
            // only for a device with no clock (`hold`).
            move |data: &[T], _| {
                let overrun = push_block(&mut producer, data, channels);
                if overrun > 0 {
                    AudioMetrics::add(&data_metrics.input_overrun_samples, overrun);
                }
                let now = Instant::now();
                clock.last_input.store(
                    now.saturating_duration_since(clock.epoch).as_nanos() as u64,
                    Ordering::Relaxed,
                );
                let wake_after = Millis(clock.wake_after.load(Ordering::Relaxed));
                if capacity - producer.slots() >= rate.samples_in(wake_after) {
                    dsp.unpark();
                }
                hold_back(
                    hold.after(data.len() / channels, now),
                    &data_metrics.input_held_ms,
                );
            },
            on_error(metrics, failed, wake),
            None,
        )
        .map_err(AudioError::Device)
}

fn open_output(
    audio: &AudioSettings,
    metrics: &Arc<AudioMetrics>,
    failed: &Arc<AtomicBool>,
    wake: Wake,
) -> Result<(::cpal::Stream, OpenedOutput), AudioError> {
    let device = find_device(&audio.output, Direction::Output)?;
    let chosen = choose_config(&device, Direction::Output)?;
    let rate = chosen.rate();
    let frame_len = rate.samples_in(FRAME_MS);
    // The DSP thread keeps about `device_buffer_ms` queued: enough to ride
    // over its own wake-ups, little enough that a barge-in fade is heard at once.
    let target_fill = rate.samples_in(audio.device_buffer_ms).max(2 * frame_len);
    // Room for devices that insist on large blocks despite the 10 ms request.
    let (producer, consumer) =
        rtrb::RingBuffer::new(target_fill + rate.samples_in(OUTPUT_RING_SPARE));
    let largest_request = Arc::new(AtomicUsize::new(0));
    let stream = match chosen.format {
        SampleFormat::I16 => build_output::<i16>(
            &device,
            &chosen,
            consumer,
            metrics,
            failed,
            &largest_request,
            wake,
        ),
        _ => build_output::<f32>(
            &device,
            &chosen,
            consumer,
            metrics,
            failed,
            &largest_request,
            wake,
        ),
    }?;
    stream.play().map_err(AudioError::Device)?;
    Ok((
        stream,
        OpenedOutput {
            ring: producer,
            failed: failed.clone(),
            rate,
            target_fill,
            largest_request,
        },
    ))
}

fn build_output<T: DeviceSample>(
    device: &::cpal::Device,
    chosen: &ChosenConfig,
    mut consumer: rtrb::Consumer<f32>,
    metrics: &Arc<AudioMetrics>,
    failed: &Arc<AtomicBool>,
    largest_request: &Arc<AtomicUsize>,
    wake: Wake,
) -> Result<::cpal::Stream, AudioError> {
    let channels = usize::from(chosen.config.channels.max(1));
    let data_metrics = metrics.clone();
    let largest_request = largest_request.clone();
    let dsp = wake.dsp.clone();
    let mut hold = HoldToRealTime::new(chosen.rate());
    device
        .build_output_stream::<T, _, _>(
            chosen.config,
            // Real-time: no allocation, locks or logging in here (the wake-up
            // and the sleep are as in the input callback: the DSP thread
            // refills the ring).
            move |data: &mut [T], _| {
                let request = data.len() / channels;
                let largest = largest_request
                    .fetch_max(request, Ordering::Relaxed)
                    .max(request);
                let underrun = fill_block(&mut consumer, data, channels);
                if underrun > 0 {
                    AudioMetrics::add(&data_metrics.output_underrun_samples, underrun);
                }
                // The DSP thread tops the ring up whenever it wakes, which a
                // microphone does every block: woken only when what is left
                // cannot serve another callback, it wakes once per block
                // instead of twice, and still has a whole callback's time.
                if consumer.slots() < largest {
                    dsp.unpark();
                }
                hold_back(
                    hold.after(request, Instant::now()),
                    &data_metrics.output_held_ms,
                );
            },
            on_error(metrics, failed, wake),
            None,
        )
        .map_err(AudioError::Device)
}

/// Sleeps a callback for `sleep` (zero but for a device with no clock of
/// its own, see [`HoldToRealTime`]) and counts it in `held_ms`.
fn hold_back(sleep: Duration, held_ms: &AtomicU64) {
    if !sleep.is_zero() {
        AudioMetrics::add(held_ms, sleep.as_millis() as u64);
        std::thread::sleep(sleep);
    }
}

/// A stream's error callback: the device is lost. It counts the error,
/// flags the stream failed and wakes the DSP thread (to report the loss)
/// and the keeper (to reopen it).
fn on_error(
    metrics: &Arc<AudioMetrics>,
    failed: &Arc<AtomicBool>,
    wake: Wake,
) -> impl FnMut(::cpal::Error) + Send + 'static {
    let (metrics, failed) = (metrics.clone(), failed.clone());
    move |_err| {
        AudioMetrics::add(&metrics.device_errors, 1);
        failed.store(true, Ordering::Relaxed);
        wake.dsp.unpark();
        wake.keeper.unpark();
    }
}
