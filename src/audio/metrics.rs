//! Counters shared between the audio threads and whoever reports on them.
//!
//! Plain relaxed atomics: cheap enough for the DSP thread and safe to touch
//! from device callbacks, and readable at any time as a snapshot.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

use super::echo::EchoStats;
use super::realtime::SharedScheduling;
use super::units::{Dbfs, Millis};

/// The DSP loop's last failure, for the status page.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineFailure {
    /// When it failed.
    pub at: jiff::Timestamp,
    /// The error and its causes, on one line.
    pub error: String,
    /// How long after it the engine is (or was) restarted; `None`: never
    /// (the thread panicked).
    pub restart_in: Option<Duration>,
}

/// Stored for a figure the echo canceller does not have (yet).
const NO_FIGURE: i32 = i32::MIN;

/// What the audio engine counts, shared with the status page, metrics and the watchdog; updated
/// without locks from the audio threads.
#[derive(Debug, Default)]
pub struct AudioMetrics {
    /// Input samples dropped because the DSP thread fell behind.
    pub input_overrun_samples: AtomicU64,
    /// Output samples the callback filled with silence for lack of audio.
    pub output_underrun_samples: AtomicU64,
    /// Milliseconds the microphone's callback slept because the device ran
    /// ahead of real time (it has no clock: ALSA's `null`, a broken driver).
    pub input_held_ms: AtomicU64,
    /// The same for the speaker.
    pub output_held_ms: AtomicU64,
    /// 10 ms microphone frames processed.
    pub frames_processed: AtomicU64,
    /// Frames the VAD judged voiced.
    pub voiced_frames: AtomicU64,
    /// Voiced frames ignored as the bot's own echo.
    pub echo_gated_frames: AtomicU64,
    /// Utterances ended.
    pub utterances: AtomicU64,
    /// Onsets too short to be speech.
    pub discarded_onsets: AtomicU64,
    /// Opus packets encoded from the microphone.
    pub packets_encoded: AtomicU64,
    /// Encoded packets dropped, oldest first, while waiting for the link.
    pub buffer_overflow_packets: AtomicU64,
    /// Packets of the bot's audio received.
    pub packets_received: AtomicU64,
    /// Packets of the bot's audio decoded for the speaker (2.5 to 120 ms each).
    pub packets_played: AtomicU64,
    /// Packets of the bot's audio that were not Opus or that libopus
    /// refused; each was concealed in its place.
    pub packets_undecodable: AtomicU64,
    /// Packets of the bot's audio too large to queue (over `MAX_PACKET`
    /// bytes); dropped, and concealed as lost.
    pub packets_oversize: AtomicU64,
    /// Packets of the bot's audio that came after their turn to play.
    pub packets_late: AtomicU64,
    /// Packets of the bot's audio concealed as lost.
    pub packets_concealed: AtomicU64,
    /// Of the concealed packets, those rebuilt from the next packet's
    /// in-band FEC rather than guessed by loss concealment.
    pub packets_fec_recovered: AtomicU64,
    /// 20 ms frames of concealment the jitter buffer inserted in pauses to
    /// deepen itself when the jitter grew mid-stream.
    pub frames_inserted: AtomicU64,
    /// Packets of the bot's audio the jitter buffer dropped to cut its
    /// delay: pauses, to give back time it waited for late packets beyond
    /// its ceiling, and whatever came over 60 ms past its target in a burst.
    pub frames_removed: AtomicU64,
    /// The depth the jitter buffer aims for.
    pub jitter_target_ms: AtomicU64,
    /// Audio the jitter buffer held when it last handed out a packet: the
    /// delay it adds.
    pub jitter_delay_ms: AtomicU64,
    /// Times the visitor talked over the bot and its reply was cut.
    pub barge_ins: AtomicU64,
    /// Events or packets not delivered because the consumer was not reading.
    pub events_dropped: AtomicU64,
    /// Errors reported by the audio devices.
    pub device_errors: AtomicU64,
    /// Times a failed device was reopened.
    pub device_reopens: AtomicU64,
    /// Whether the microphone is open.
    pub input_open: AtomicBool,
    /// Whether the speaker is open.
    pub output_open: AtomicBool,
    /// The DSP loop failed and is waiting to be restarted: no microphone,
    /// no speaker until it is back.
    pub engine_down: AtomicBool,
    /// Times the DSP loop failed (including restarts that failed at once).
    pub engine_failures: AtomicU64,
    /// Times it was restarted and ran again.
    pub engine_restarts: AtomicU64,
    /// Passes of the DSP thread's loop, running or waiting to restart: a
    /// thread that stops counting is stuck (the watchdog reads it).
    pub dsp_heartbeat: AtomicU64,
    /// How the DSP thread is scheduled.
    pub dsp_scheduling: SharedScheduling,
    last_failure: Mutex<Option<EngineFailure>>,
    level_centi_dbfs: AtomicI32,
    /// The echo canceller has reported at least once.
    echo_reported: AtomicBool,
    /// Its figures ([`NO_FIGURE`] for one it does not have).
    echo_erle_centi_db: AtomicI32,
    echo_erl_centi_db: AtomicI32,
    echo_delay_ms: AtomicI32,
    /// From the microphone delivering a packet's last samples to the packet
    /// leaving the DSP thread (the 20 ms of framing comes on top).
    capture_latency_max_us: AtomicU64,
    capture_latency_sum_us: AtomicU64,
    capture_latency_count: AtomicU64,
}

impl AudioMetrics {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Records the microphone level.
    pub fn set_level(&self, level: Dbfs) {
        self.level_centi_dbfs
            .store((level.0 * 100.0) as i32, Ordering::Relaxed);
    }

    /// Most recent microphone level.
    pub fn level(&self) -> Dbfs {
        Dbfs(self.level_centi_dbfs.load(Ordering::Relaxed) as f32 / 100.0)
    }

    /// The echo canceller's latest figures.
    pub fn set_echo(&self, stats: EchoStats) {
        let centi = |db: Option<f32>| db.map_or(NO_FIGURE, |v| (v * 100.0) as i32);
        self.echo_erle_centi_db
            .store(centi(stats.erle_db), Ordering::Relaxed);
        self.echo_erl_centi_db
            .store(centi(stats.erl_db), Ordering::Relaxed);
        let delay = stats
            .delay
            .map_or(NO_FIGURE, |d| i32::try_from(d.0).unwrap_or(i32::MAX));
        self.echo_delay_ms.store(delay, Ordering::Relaxed);
        self.echo_reported.store(true, Ordering::Relaxed);
    }

    /// The echo canceller's latest figures; all `None` while it is off or
    /// has not run.
    pub fn echo(&self) -> EchoStats {
        if !self.echo_reported.load(Ordering::Relaxed) {
            return EchoStats::default();
        }
        let db = |a: &AtomicI32| {
            let v = a.load(Ordering::Relaxed);
            (v != NO_FIGURE).then(|| v as f32 / 100.0)
        };
        let delay = self.echo_delay_ms.load(Ordering::Relaxed);
        EchoStats {
            erle_db: db(&self.echo_erle_centi_db),
            erl_db: db(&self.echo_erl_centi_db),
            delay: u32::try_from(delay).ok().map(Millis),
        }
    }

    /// Records one packet's capture latency.
    pub fn record_capture_latency(&self, latency: std::time::Duration) {
        let us = latency.as_micros() as u64;
        self.capture_latency_max_us.fetch_max(us, Ordering::Relaxed);
        self.capture_latency_sum_us.fetch_add(us, Ordering::Relaxed);
        self.capture_latency_count.fetch_add(1, Ordering::Relaxed);
    }

    /// Mean and maximum capture latency (see `record_capture_latency`), in µs.
    pub fn capture_latency_us(&self) -> Option<(u64, u64)> {
        let count = self.capture_latency_count.load(Ordering::Relaxed);
        (count > 0).then(|| {
            (
                self.capture_latency_sum_us.load(Ordering::Relaxed) / count,
                self.capture_latency_max_us.load(Ordering::Relaxed),
            )
        })
    }

    /// Reads `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// The DSP loop failed with `error`; it is restarted in `restart_in`.
    pub fn record_engine_failure(&self, error: String, restart_in: Option<Duration>) {
        self.engine_down.store(true, Ordering::Relaxed);
        Self::add(&self.engine_failures, 1);
        let failure = EngineFailure {
            at: jiff::Timestamp::now(),
            error,
            restart_in,
        };
        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(failure);
    }

    /// The DSP loop runs again after a failure.
    pub fn record_engine_restart(&self) {
        self.engine_down.store(false, Ordering::Relaxed);
        Self::add(&self.engine_restarts, 1);
    }

    /// Whether the DSP loop is down, waiting to be restarted.
    pub fn is_engine_down(&self) -> bool {
        self.engine_down.load(Ordering::Relaxed)
    }

    /// The last failure of the DSP loop, if it ever failed.
    pub fn last_engine_failure(&self) -> Option<EngineFailure> {
        self.last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
