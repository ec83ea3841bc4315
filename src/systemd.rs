//! sd_notify: readiness, status line, watchdog. Every call is a no-op when
//! not started by systemd (`NOTIFY_SOCKET` unset), and a failure to notify
//! is logged rather than fatal: the kiosk must keep serving visitors.

use std::sync::OnceLock;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// Start-up is complete; `status` is shown by `systemctl status`.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Updates the status line. It changes with every session state, so it is
/// sent from a thread of its own: a notify socket nobody reads must never
/// stall the session loop. When updates pile up, the newest wins.
pub fn status(status: &str) {
    static STATUS: OnceLock<SyncSender<String>> = OnceLock::new();
    let tx = STATUS.get_or_init(|| {
        let (tx, rx) = sync_channel::<String>(8);
        let spawned = std::thread::Builder::new()
            .name("sd-notify".into())
            .spawn(move || {
                for line in rx {
                    send(&[NotifyState::Status(&line)]);
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the systemd status thread");
        }
        tx
    });
    let _ = tx.try_send(status.to_string());
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

pub fn watchdog_ping() {
    send(&[NotifyState::Watchdog]);
}

/// How often to ping the watchdog: half of systemd's `WatchdogSec=`, as
/// sd_watchdog_enabled(3) advises; `None` when no watchdog is armed.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2))
}
