//! Real-time scheduling for the thread that runs the DSP.
//!
//! On a kiosk the DSP thread shares the CPU with whatever else runs there
//! (a browser showing the kiosk's UI, an update). At normal priority any
//! of them can hold it past a device period, and a late period is audio
//! lost or a click. As a `SCHED_FIFO` thread it runs as soon as it wakes.
//! The packaged unit allows it without any capability (`LimitRTPRIO=20`)
//! and bounds a runaway thread (`LimitRTTIME`: the kernel stops a
//! real-time thread that computes 200 ms without sleeping).
//!
//! The call is `sched_setscheduler` on the calling thread, through `libc`;
//! `audio_thread_priority` does the same without D-Bus, but would add a
//! crate and a logger for one system call.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::AudioMetrics;
use super::settings::{AudioSettings, DeviceSpec};

/// The FIFO priority asked for: under the unit's ceiling of 20, and far
/// under the kernel's interrupt threads (50), which deliver the audio.
pub(super) const DSP_PRIORITY: u8 = 10;

/// A real-time thread that has not waited for this long is stopped by
/// the unit's `LimitRTTIME` (200 ms) soon after; before that it goes back
/// to normal priority.
const MAX_AWAKE: Duration = Duration::from_millis(100);

/// A wait at least this long slept; a shorter one may have returned at
/// once, its wake-up already given.
const SLEPT: Duration = Duration::from_millis(1);

/// How the DSP thread is scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Scheduling {
    /// At normal priority because nothing asked for more: the devices are
    /// files (paced by timers, no device deadline) or none.
    Normal,
    /// `SCHED_FIFO` at [`DSP_PRIORITY`].
    Realtime,
    /// At normal priority because the system refused real-time scheduling.
    Denied,
    /// Put back at normal priority after running [`MAX_AWAKE`] without
    /// waiting: a device that wakes it faster than real time.
    Demoted,
}

impl Scheduling {
    /// The real-time priority it runs at: 0 for normal priority.
    pub fn priority(self) -> u8 {
        match self {
            Self::Realtime => DSP_PRIORITY,
            Self::Normal | Self::Denied | Self::Demoted => 0,
        }
    }
}

/// A [`Scheduling`] shared between the DSP thread and whoever shows it.
#[derive(Debug, Default)]
pub struct SharedScheduling(AtomicU8);

impl SharedScheduling {
    pub fn set(&self, scheduling: Scheduling) {
        self.0.store(scheduling as u8, Ordering::Relaxed);
    }

    pub fn get(&self) -> Scheduling {
        [
            Scheduling::Normal,
            Scheduling::Realtime,
            Scheduling::Denied,
            Scheduling::Demoted,
        ]
        .into_iter()
        .find(|s| *s as u8 == self.0.load(Ordering::Relaxed))
        .unwrap_or(Scheduling::Normal)
    }
}

/// Puts the calling thread, which runs the DSP, at real-time priority if
/// it serves a sound card, and records and logs how it is scheduled.
pub(super) fn schedule_dsp_thread(audio: &AudioSettings, metrics: &AudioMetrics) -> Scheduling {
    let device = |spec: &DeviceSpec| matches!(spec, DeviceSpec::Default | DeviceSpec::Named(_));
    let scheduling = if !device(&audio.input) && !device(&audio.output) {
        Scheduling::Normal
    } else {
        match set_scheduler(libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, DSP_PRIORITY) {
            Ok(()) => {
                info!(
                    priority = DSP_PRIORITY,
                    "audio DSP thread at real-time priority"
                );
                Scheduling::Realtime
            }
            Err(e) => {
                warn!(
                    error = %e,
                    "audio DSP thread at normal priority: real-time scheduling refused \
                     ({}); other work on this machine can delay the audio",
                    refusal_reason()
                );
                Scheduling::Denied
            }
        }
    };
    metrics.dsp_scheduling.set(scheduling);
    scheduling
}

/// Why the kernel refused, in terms an operator can act on: an rtprio
/// limit under the priority asked for (the packaged unit sets
/// `LimitRTPRIO=20`; a container that may not raise limits keeps 0), or,
/// with a high enough limit, a kernel with real-time group scheduling
/// (`CONFIG_RT_GROUP_SCHED`) that gives this process's cgroup no budget.
fn refusal_reason() -> String {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: this process's limit, into a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_RTPRIO, &mut limit) } != 0 {
        return "the rtprio limit could not be read".into();
    }
    if limit.rlim_cur >= libc::rlim_t::from(DSP_PRIORITY) {
        "the rtprio limit allows it, so the kernel's real-time group scheduling \
         gives this cgroup no real-time budget"
            .into()
    } else {
        format!(
            "rtprio limit {}, under the {DSP_PRIORITY} asked for; the packaged unit \
             sets LimitRTPRIO=20",
            limit.rlim_cur
        )
    }
}

/// Watches a real-time thread for a stretch of work without a wait, which
/// would get it stopped, so that it can go back to normal priority first.
#[derive(Debug)]
pub(super) struct RunawayGuard {
    awake_since: Instant,
}

impl RunawayGuard {
    pub(super) fn new(now: Instant) -> Self {
        Self { awake_since: now }
    }

    /// After each wait, which took `waited`: whether the thread has now
    /// gone [`MAX_AWAKE`] without sleeping.
    pub(super) fn runaway(&mut self, waited: Duration, now: Instant) -> bool {
        if waited >= SLEPT {
            self.awake_since = now;
        }
        now.saturating_duration_since(self.awake_since) >= MAX_AWAKE
    }
}

/// Takes the calling real-time thread back to normal priority, records it
/// and says why.
pub(super) fn demote_runaway_thread(metrics: &AudioMetrics) {
    let result = set_scheduler(libc::SCHED_OTHER, 0);
    warn!(
        error = result.err().map(|e| e.to_string()),
        awake_ms = MAX_AWAKE.as_millis() as u64,
        "audio DSP thread back at normal priority: it ran without waiting, \
         so a device wakes it faster than real time (ALSA's \"null\" device does)"
    );
    metrics.dsp_scheduling.set(Scheduling::Demoted);
}

/// Sets the calling thread's scheduling policy and priority. With
/// `SCHED_RESET_ON_FORK`, threads it starts begin at normal priority.
fn set_scheduler(policy: libc::c_int, priority: u8) -> std::io::Result<()> {
    let param = libc::sched_param {
        sched_priority: libc::c_int::from(priority),
    };
    // SAFETY: pid 0 is the calling thread, and `param` outlives the call.
    let rc = unsafe { libc::sched_setscheduler(0, policy, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduling_survives_the_shared_cell() {
        let shared = SharedScheduling::default();
        assert_eq!(shared.get(), Scheduling::Normal);
        for s in [
            Scheduling::Denied,
            Scheduling::Demoted,
            Scheduling::Realtime,
            Scheduling::Normal,
        ] {
            shared.set(s);
            assert_eq!(shared.get(), s);
        }
    }

    #[test]
    fn a_thread_that_stops_sleeping_is_a_runaway_after_max_awake() {
        let t0 = Instant::now();
        let mut guard = RunawayGuard::new(t0);
        let ms = Duration::from_millis;
        // Device cadence: each wait sleeps until the next period.
        for k in 1..=20 {
            assert!(!guard.runaway(ms(19), t0 + ms(20 * k)));
        }
        // A backlog worked off without sleeping, shorter than the limit.
        assert!(!guard.runaway(Duration::ZERO, t0 + ms(400 + 99)));
        assert!(!guard.runaway(ms(5), t0 + ms(505)));
        // A device that wakes it at once, every time.
        let mut now = t0 + ms(505);
        while now < t0 + ms(604) {
            now += Duration::from_micros(300);
            assert!(!guard.runaway(Duration::from_micros(10), now));
        }
        assert!(guard.runaway(Duration::from_micros(10), t0 + ms(605)));
    }

    /// A thread promoted (where the system allows it) is a FIFO thread at
    /// the priority asked for; where it refuses, the thread is unchanged.
    #[test]
    fn a_promoted_thread_is_fifo_or_refused_and_unchanged() {
        std::thread::spawn(|| {
            let result = set_scheduler(libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, DSP_PRIORITY);
            // SAFETY: queries of the calling thread.
            let policy = unsafe { libc::sched_getscheduler(0) };
            let mut param = libc::sched_param { sched_priority: -1 };
            assert_eq!(unsafe { libc::sched_getparam(0, &mut param) }, 0);
            match result {
                Ok(()) => {
                    assert_eq!(policy & !libc::SCHED_RESET_ON_FORK, libc::SCHED_FIFO);
                    assert_eq!(param.sched_priority, i32::from(DSP_PRIORITY));
                }
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
                    assert_eq!(policy, libc::SCHED_OTHER);
                }
            }
        })
        .join()
        .unwrap();
    }
}
