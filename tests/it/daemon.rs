//! `kiosk-gateway run` as systemd runs it: READY, watchdog, status server,
//! clean stop on SIGTERM, and a damaged database kept aside.

use crate::common;

use std::time::Duration;

use common::{Daemon, get, write_config};

#[tokio::test]
async fn serves_status_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let mut d = Daemon::start(dir.path(), &config, &[]);

    let (code, body) = get(&format!("{}/healthz", d.url)).await;
    assert_eq!(code, 200);
    assert_eq!(body.trim(), "ok");
    let (code, _) = get(&format!("{}/readyz", d.url)).await;
    assert_eq!(code, 200);

    let (code, body) = get(&format!("{}/api/status", d.url)).await;
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["kiosk"]["id"], "test-kiosk");
    assert_eq!(status["state"], "idle");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["store"]["sessions"], 0);
    assert_eq!(status["store"]["readable"], true);
    assert!(status["last_error"].is_null());
    let components: Vec<&str> = status["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(components, ["microphone", "speaker", "store"]);

    let (code, metrics) = get(&format!("{}/metrics", d.url)).await;
    assert_eq!(code, 200);
    for name in [
        "kiosk_store_sessions 0",
        "kiosk_store_transcripts 0",
        "process_resident_memory_bytes",
        "kiosk_audio_input_open",
        "kiosk_audio_output_underrun_samples_total",
        "kiosk_http_requests_total{route=\"/readyz\",status=\"200\"} 1",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }

    d.signal("TERM");
    let (status, took) = d
        .wait_exit(Duration::from_secs(5))
        .expect("stopped within 5 s");
    assert!(status.success(), "exit {status}; stderr:\n{}", d.stderr());
    assert!(took < Duration::from_secs(5));
    // alsa-lib's own stderr chatter about missing cards is folded into the
    // daemon's log records instead of interleaving with them.
    assert!(
        !d.stderr().contains("ALSA lib"),
        "raw alsa-lib output on stderr:\n{}",
        d.stderr()
    );
    d.wait_message(Duration::from_millis(200), |m| m.contains("STOPPING=1"));
    assert!(
        d.messages.iter().any(|m| m.contains("STOPPING=1")),
        "{:?}",
        d.messages
    );

    let db = rusqlite::Connection::open(dir.path().join("kiosk.db")).unwrap();
    let tables: Vec<String> = db
        .prepare("SELECT name FROM sqlite_schema WHERE type='table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(tables.contains(&"sessions".into()) && tables.contains(&"transcripts".into()));
}

#[tokio::test]
async fn sigint_stops_it_too() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let mut d = Daemon::start(dir.path(), &config, &[]);
    d.signal("INT");
    let (status, _) = d
        .wait_exit(Duration::from_secs(5))
        .expect("stopped within 5 s");
    assert!(status.success());
}

#[tokio::test]
async fn damaged_database_is_kept_aside_and_the_daemon_still_starts() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let garbage = b"SQLite format 3\0 but then the power went out".repeat(100);
    std::fs::write(dir.path().join("kiosk.db"), &garbage).unwrap();

    let d = Daemon::start(dir.path(), &config, &[]);
    let (_, body) = get(&format!("{}/api/status", d.url)).await;
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    let aside = status["store"]["recovered_from"]
        .as_str()
        .expect("recovered_from set");
    assert_eq!(
        std::fs::read(aside).unwrap(),
        garbage,
        "the damaged file is kept as it was"
    );
    let error = status["last_error"]["message"].as_str().unwrap();
    assert!(error.contains("damaged"), "{error}");
    assert_eq!(status["store"]["readable"], true);
    assert!(d.stderr().contains("database was damaged"));
    let (_, metrics) = get(&format!("{}/metrics", d.url)).await;
    assert!(
        metrics.contains("kiosk_store_recoveries_total 1"),
        "{metrics}"
    );
}

#[test]
fn watchdog_is_fed_when_systemd_asks() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let mut cmd = common::under_watchdog(&config, "200000");
    let mut d = Daemon::start_with(dir.path(), &mut cmd, &[]);
    let mut pings = 0;
    while pings < 3 {
        d.wait_message(Duration::from_secs(2), |m| m.contains("WATCHDOG=1"))
            .expect("watchdog pings every 100 ms");
        pings += 1;
    }
}

#[test]
fn a_damaged_failure_prompt_is_a_clear_error_at_start() {
    let dir = tempfile::tempdir().unwrap();
    // A WAV whose header promises a second of audio and holds 0.1 s.
    let prompt = dir.path().join("prompt.wav");
    common::write_wav(&prompt, 16_000, &[100; 16_000]);
    let bytes = std::fs::read(&prompt).unwrap();
    std::fs::write(&prompt, &bytes[..44 + 3_200]).unwrap();
    let config = write_config(
        dir.path(),
        &format!("[session]\nfailure_prompt = \"{}\"\n", prompt.display()),
    );
    let out = common::command(&config).arg("run").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot read the failure prompt {}",
            prompt.display()
        )),
        "{stderr}"
    );
}

#[test]
fn a_busy_status_port_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let config = write_config(dir.path(), "");
    let out = common::command(&config)
        .arg("run")
        .env("KIOSK_GATEWAY_STATUS_LISTEN", addr.to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr} for the status server")),
        "{stderr}"
    );
}
