//! Logging through `tracing`: to the journal with structured fields when
//! systemd runs us, human-readable to stderr otherwise.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

use tracing::Level;
use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{KioskId, LogConfig, LogTarget, parse_log_filter};

/// Where log records went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// The systemd journal.
    Journal,
    /// Standard error.
    Stderr,
}

/// Installs the global subscriber. `RUST_LOG` wins over `log.level`.
/// Warnings and errors are also kept in `recent` for the status page.
///
/// Journal records carry `KIOSK_ID` on every record and the fields of the
/// enclosing spans (`SESSION_ID`, `STATE`) upper-cased, so
/// `journalctl SESSION_ID=...` finds one visitor's whole session.
pub fn init(log: &LogConfig, kiosk_id: &KioskId, recent: &RecentEvents) -> Sink {
    let filter = from_rust_log()
        .or_else(|| parse_log_filter(&log.level).ok())
        .unwrap_or_else(|| Targets::new().with_default(Level::INFO));
    let want_journal = match log.target {
        LogTarget::Journal => true,
        LogTarget::Stderr => false,
        LogTarget::Auto => stderr_is_journal(),
    };
    if want_journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                // syslog's meaning of the levels, so `journalctl -p info`
                // shows routine records and hides debug ones.
                let priorities = PriorityMappings {
                    info: Priority::Informational,
                    debug: Priority::Debug,
                    ..PriorityMappings::new()
                };
                let layer = layer
                    .with_field_prefix(None)
                    .with_priority_mappings(priorities)
                    .with_syslog_identifier("kiosk-gateway".into())
                    .with_custom_fields([("KIOSK_ID", kiosk_id.as_str())]);
                tracing_subscriber::registry()
                    .with(filter)
                    .with(recent.layer())
                    .with(layer)
                    .init();
                return Sink::Journal;
            }
            Err(e) => eprintln!("kiosk-gateway: journal unavailable ({e}); logging to stderr"),
        }
    }
    tracing_subscriber::registry()
        .with(filter)
        .with(recent.layer())
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .init();
    Sink::Stderr
}

/// Simple logging for one-shot commands: warnings and errors to stderr.
pub fn init_for_command() {
    init_for_command_with(&RecentEvents::default());
}

/// As [`init_for_command`], keeping warnings and errors in `recent` too.
pub fn init_for_command_with(recent: &RecentEvents) {
    let filter = from_rust_log().unwrap_or_else(|| Targets::new().with_default(Level::WARN));
    tracing_subscriber::registry()
        .with(filter)
        .with(recent.layer())
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .without_time(),
        )
        .init();
}

/// The filter `RUST_LOG` asks for, if it is set and parses.
fn from_rust_log() -> Option<Targets> {
    parse_log_filter(&std::env::var("RUST_LOG").ok()?).ok()
}

/// systemd sets `JOURNAL_STREAM=<dev>:<inode>` for a service whose stderr
/// is connected to the journal; a child that inherited the variable but
/// not the stream must not be fooled, so the pair is compared with stderr.
fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// A warning or error kept for the status page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogEvent {
    /// When it was logged.
    pub at: jiff::Timestamp,
    /// `warn` or `error`.
    pub level: &'static str,
    /// The module that logged it.
    pub target: String,
    /// The message followed by its fields, as `key=value`.
    pub message: String,
}

/// The last warnings and errors, newest last; filled by [`RecentLayer`].
#[derive(Clone, Default)]
pub struct RecentEvents(Arc<Mutex<VecDeque<LogEvent>>>);

/// How many warnings and errors the status page keeps.
const RECENT_CAPACITY: usize = 50;

impl RecentEvents {
    /// The events kept now, oldest first.
    pub fn snapshot(&self) -> Vec<LogEvent> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    fn push(&self, event: LogEvent) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == RECENT_CAPACITY {
            q.pop_front();
        }
        q.push_back(event);
    }

    /// A layer that records WARN and ERROR events here.
    pub fn layer(&self) -> RecentLayer {
        RecentLayer(self.clone())
    }
}

/// The `tracing` layer that fills [`RecentEvents`].
pub struct RecentLayer(RecentEvents);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RecentLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let level = *event.metadata().level();
        // Only the gateway's own records: the WebRTC stack warns about
        // routine ICE and DTLS events on every call, which would bury what
        // a technician can act on (those still reach the journal).
        if level > tracing::Level::WARN || !event.metadata().target().starts_with("kiosk_gateway") {
            return;
        }
        let mut text = MessageText::default();
        event.record(&mut text);
        self.0.push(LogEvent {
            at: jiff::Timestamp::now(),
            level: if level == tracing::Level::ERROR {
                "error"
            } else {
                "warn"
            },
            target: event.metadata().target().to_string(),
            message: text.0,
        });
    }
}

#[derive(Default)]
struct MessageText(String);

impl tracing::field::Visit for MessageText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            self.0.push_str(&format!(" {}={value}", field.name()));
        }
    }
}
