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

/// Updates the status line. It changes with every session state.
pub fn status(status: &str) {
    notify_later(Note::Status(status.to_string()));
}

pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Tells systemd the service is alive. Sent from the notifier thread like
/// the status line: the watchdog runs on the async runtime, which must
/// never block on a socket.
pub fn watchdog_ping() {
    notify_later(Note::Watchdog);
}

enum Note {
    Status(String),
    Watchdog,
}

/// Hands a notification to a thread of its own: a notify socket nobody
/// reads (a full buffer blocks the send) must never stall the session loop
/// or the runtime. When notifications pile up, the newest are dropped.
fn notify_later(note: Note) {
    static NOTIFIER: OnceLock<SyncSender<Note>> = OnceLock::new();
    let tx = NOTIFIER.get_or_init(|| {
        let (tx, rx) = sync_channel::<Note>(8);
        let spawned = std::thread::Builder::new()
            .name("sd-notify".into())
            .spawn(move || {
                for note in rx {
                    match note {
                        Note::Status(line) => send(&[NotifyState::Status(&line)]),
                        Note::Watchdog => send(&[NotifyState::Watchdog]),
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the systemd notifier thread");
        }
        tx
    });
    let _ = tx.try_send(note);
}

/// How often to ping the watchdog: half of systemd's `WatchdogSec=`, as
/// sd_watchdog_enabled(3) advises; `None` when no watchdog is armed.
pub fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2))
}
