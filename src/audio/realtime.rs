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

use tracing::{info, warn};

use super::AudioMetrics;
use super::settings::{AudioSettings, DeviceSpec};

/// The FIFO priority asked for: under the unit's ceiling of 20, and far
/// under the kernel's interrupt threads (50), which deliver the audio.
pub const DSP_PRIORITY: u8 = 10;

/// How the DSP thread is scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduling {
    /// At normal priority because nothing asked for more: the devices are
    /// files (paced by timers, no device deadline) or none.
    Normal,
    /// `SCHED_FIFO` at this priority.
    Realtime(u8),
    /// At normal priority because the system refused real-time scheduling.
    Denied,
}

impl Scheduling {
    fn code(self) -> u8 {
        match self {
            Self::Normal => 0,
            Self::Denied => 1,
            // FIFO priorities are 1 to 99.
            Self::Realtime(priority) => priority.saturating_add(1),
        }
    }

    fn from_code(code: u8) -> Self {
        match code {
            0 => Self::Normal,
            1 => Self::Denied,
            code => Self::Realtime(code - 1),
        }
    }
}

/// A [`Scheduling`] shared between the DSP thread and whoever shows it.
#[derive(Debug, Default)]
pub struct SharedScheduling(AtomicU8);

impl SharedScheduling {
    pub fn set(&self, scheduling: Scheduling) {
        self.0.store(scheduling.code(), Ordering::Relaxed);
    }

    pub fn get(&self) -> Scheduling {
        Scheduling::from_code(self.0.load(Ordering::Relaxed))
    }
}

/// Puts the calling thread, which runs the DSP, at real-time priority if
/// it serves a sound card, and records and logs how it is scheduled.
pub(super) fn schedule_dsp_thread(audio: &AudioSettings, metrics: &AudioMetrics) {
    let device = |spec: &DeviceSpec| matches!(spec, DeviceSpec::Default | DeviceSpec::Named(_));
    let scheduling = if !device(&audio.input) && !device(&audio.output) {
        Scheduling::Normal
    } else {
        match promote_this_thread(DSP_PRIORITY) {
            Ok(()) => {
                info!(
                    priority = DSP_PRIORITY,
                    "audio DSP thread at real-time priority"
                );
                Scheduling::Realtime(DSP_PRIORITY)
            }
            Err(e) => {
                warn!(
                    error = %e,
                    "audio DSP thread at normal priority: real-time scheduling refused; \
                     other work on this machine can delay the audio (the packaged \
                     unit allows it with LimitRTPRIO=20)"
                );
                Scheduling::Denied
            }
        }
    };
    metrics.dsp_scheduling.set(scheduling);
}

/// Makes the calling thread a `SCHED_FIFO` thread at `priority`. Threads
/// it starts begin at normal priority (`SCHED_RESET_ON_FORK`).
pub fn promote_this_thread(priority: u8) -> std::io::Result<()> {
    let param = libc::sched_param {
        sched_priority: libc::c_int::from(priority),
    };
    // SAFETY: pid 0 is the calling thread, and `param` outlives the call.
    let rc = unsafe {
        libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param)
    };
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
            Scheduling::Realtime(DSP_PRIORITY),
            Scheduling::Realtime(1),
            Scheduling::Realtime(99),
            Scheduling::Normal,
        ] {
            shared.set(s);
            assert_eq!(shared.get(), s);
        }
    }

    /// A thread promoted (where the system allows it) is a FIFO thread at
    /// the priority asked for; where it refuses, the thread is unchanged.
    #[test]
    fn a_promoted_thread_is_fifo_or_refused_and_unchanged() {
        std::thread::spawn(|| {
            let result = promote_this_thread(DSP_PRIORITY);
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
