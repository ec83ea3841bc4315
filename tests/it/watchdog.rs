//! The systemd watchdog is fed only while every part of the daemon makes
//! progress: a wedged audio thread, session loop, store writer or status
//! server stops the pings within one interval, and `/readyz` and
//! `/api/status` name the part. Test builds wedge a part two seconds after
//! start-up when `KIOSK_TEST_WEDGE` names it.

use crate::common;

use std::time::{Duration, Instant};

use common::{Daemon, get, write_config};

/// systemd's `WatchdogSec=2s`: a ping every second, a part stale after one.
const WATCHDOG_USEC: &str = "2000000";
const WEDGE_AT: Duration = Duration::from_secs(2);
const PING_EVERY: Duration = Duration::from_secs(1);

async fn wedge(part: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let mut cmd = common::under_watchdog(&config, WATCHDOG_USEC);
    cmd.env("KIOSK_TEST_WEDGE", part);
    let mut d = Daemon::start_with(dir.path(), &mut cmd, &[]);
    let ready = Instant::now();
    // Ping times from the daemon's start.
    let mut pings = Vec::new();
    let watch_until = Duration::from_secs(9);
    while d.startup + ready.elapsed() < watch_until {
        let left = watch_until.saturating_sub(d.startup + ready.elapsed());
        if d.wait_message(left, |m| m.contains("WATCHDOG=1")).is_some() {
            pings.push(d.startup + ready.elapsed());
        }
    }
    println!("{part} wedged at {WEDGE_AT:?}: pings at {pings:?}");
    assert!(
        pings.iter().any(|&t| t < WEDGE_AT),
        "no ping before the wedge: {pings:?}"
    );
    let last = *pings.last().unwrap();
    // Stale one ping interval after the wedge; the check runs four times
    // per interval; a second's slack for a busy machine.
    assert!(
        last <= WEDGE_AT + PING_EVERY * 2 + Duration::from_secs(1),
        "pings went on after the {part} part wedged: {pings:?}\n{}",
        d.stderr()
    );

    let (code, body) = get(&format!("{}/readyz", d.url)).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains(part), "{body}");
    let (_, status) = get(&format!("{}/api/status", d.url)).await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert!(
        status["stale_parts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == part),
        "{:#}",
        status["stale_parts"]
    );
    assert!(d.stderr().contains("not feeding the watchdog"));
}

#[tokio::test]
async fn a_wedged_audio_thread_stops_the_watchdog() {
    wedge("audio").await;
}

#[tokio::test]
async fn a_wedged_session_loop_stops_the_watchdog() {
    wedge("session").await;
}

#[tokio::test]
async fn a_wedged_store_writer_stops_the_watchdog() {
    wedge("store").await;
}

#[tokio::test]
async fn a_wedged_status_server_stops_the_watchdog() {
    wedge("status").await;
}
