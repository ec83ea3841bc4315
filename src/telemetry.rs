//! Logging through `tracing`: to the journal with structured fields when
//! systemd runs us, human-readable to stderr otherwise.

use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;

use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{KioskId, LogConfig, LogTarget};

/// Where log records went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Journal,
    Stderr,
}

/// Installs the global subscriber. `RUST_LOG` wins over `log.level`.
///
/// Journal records carry `KIOSK_ID` on every record and the fields of the
/// enclosing spans (`SESSION_ID`, `STATE`) upper-cased, so
/// `journalctl SESSION_ID=...` finds one visitor's whole session.
pub fn init(log: &LogConfig, kiosk_id: &KioskId) -> Sink {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
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
                    .with(layer)
                    .init();
                return Sink::Journal;
            }
            Err(e) => eprintln!("kiosk-gateway: journal unavailable ({e}); logging to stderr"),
        }
    }
    tracing_subscriber::registry()
        .with(filter)
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
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .without_time(),
        )
        .init();
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
