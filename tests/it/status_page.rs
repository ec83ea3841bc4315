//! The status page in a real browser (Debian's headless Chromium driven by
//! playwright-core, installed by .ci/setup): login, state, session list,
//! a transcript, and no script blocked by the Content-Security-Policy; in
//! each state (idle, live session, degraded cloud, failed self-test) at a
//! phone's width and a desktop's, without horizontal scrolling and with
//! readable contrast. Screenshots land in target/tmp/status-page/.

use crate::common;
use crate::daily_support::{API_KEY, FakeDaily, Fault};

use std::path::Path;
use std::process::Command;

use common::{Daemon, write_config};
use jiff::Timestamp;
use kiosk_gateway::store::{NewSession, NewTranscript, Role, SessionEnd, SessionId, Store};

const TOKEN: &str = "page-test-token";

#[test]
fn a_technician_signs_in_and_reads_a_transcript() {
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").exists(),
        "playwright-core missing: run `bash .ci/setup` (it runs npm ci in tests/browser)"
    );
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut store, _) = Store::open(&dir.path().join("kiosk.db")).unwrap();
        let id = SessionId::new();
        let t = Timestamp::now();
        store
            .start_session(&NewSession {
                id,
                kiosk_id: "test-kiosk".into(),
                started_at: t,
                room_name: None,
                room_url: None,
                agent_session_id: None,
            })
            .unwrap();
        for (role, text) in [
            (Role::User, "where is the cloakroom?"),
            (Role::Bot, "downstairs, next to the café"),
        ] {
            store
                .add_transcript(&NewTranscript {
                    session_id: id,
                    role,
                    text: text.into(),
                    is_final: true,
                    confidence: None,
                    spoken_at: t,
                    received_at: t,
                })
                .unwrap();
        }
        store
            .end_session(
                id,
                &SessionEnd {
                    ended_at: t.checked_add(jiff::SignedDuration::from_secs(42)).unwrap(),
                    reason: "idle".into(),
                    user_speech_ms: 2000,
                    bot_speech_ms: 1500,
                },
            )
            .unwrap();
    }
    let config = write_config(dir.path(), "");
    let d = Daemon::start(
        dir.path(),
        &config,
        &[("KIOSK_GATEWAY_STATUS_TOKEN", TOKEN)],
    );
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page");
    std::fs::create_dir_all(&shots).unwrap();

    let out = Command::new("node")
        .arg(browser_dir.join("status_page.mjs"))
        .arg(&d.url)
        .arg(TOKEN)
        .arg(&shots)
        .output()
        .expect("node is installed");
    assert!(
        out.status.success(),
        "browser run failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["redirected_to"], "/login");
    assert_eq!(seen["wrong_token_message"], "That token is not right.");
    assert_eq!(seen["state"], "Idle");
    let sessions = seen["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1);
    let row = sessions[0].as_str().unwrap();
    assert!(
        row.contains("42 s") && row.contains("visitor went quiet"),
        "{row}"
    );
    // Each line: its local time ("14:02:13"), the speaker, the words.
    let transcript: Vec<(&str, &str)> = seen["transcript"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().split_once(' ').unwrap())
        .collect();
    assert!(
        transcript
            .iter()
            .all(|(at, _)| at.len() == 8 && at.as_bytes()[2] == b':'),
        "{transcript:?}"
    );
    assert_eq!(
        transcript.iter().map(|(_, line)| *line).collect::<Vec<_>>(),
        [
            "user where is the cloakroom?",
            "bot downstairs, next to the café"
        ]
    );
    assert_eq!(
        seen["console_errors"].as_array().unwrap().len(),
        0,
        "{seen}"
    );
    assert!(shots.join("status-page.png").exists());
    eprintln!("screenshots in {}", shots.display());
}

/// A technician watching the demo's session live: the state, the visitor's
/// words as they are stored, the call's quality and the agent's
/// reachability, with a screenshot of the moment.
#[test]
fn the_page_follows_a_live_demo_session() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::Stdio;

    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page");
    std::fs::create_dir_all(&shots).unwrap();
    // The browser first: on a loaded machine Chromium can take longer to
    // start than the demo's whole session lasts.
    let mut browser = Command::new("node")
        .arg(browser_dir.join("live_session.mjs"))
        .arg(&shots)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node is installed");
    let mut browser_err = BufReader::new(browser.stderr.take().unwrap());
    let mut ready = String::new();
    browser_err.read_line(&mut ready).unwrap();
    assert_eq!(
        ready.trim(),
        "browser ready",
        "the browser did not start: {ready}"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_kiosk-gateway"))
        .args(["demo", "--state-dir"])
        .arg(dir.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (found, announced) = std::sync::mpsc::channel();
    let stderr = demo.stderr.take().unwrap();
    // Reads the announcement, then keeps draining so the demo never blocks.
    let drain = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("status page: ") {
                let _ = found.send(rest.to_string());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let line = announced
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the demo announces its status page");
    // "http://127.0.0.1:PORT/ (token TOKEN)"
    let (url, token) = line.split_once(" (token ").unwrap();
    let (url, token) = (url.trim_end_matches('/'), token.trim_end_matches(')'));
    writeln!(browser.stdin.take().unwrap(), "{url} {token}").unwrap();
    let browser_drain = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = browser_err.read_to_string(&mut rest);
        rest
    });
    let out = browser.wait_with_output().unwrap();
    let browser_log = browser_drain.join().unwrap();
    let status = demo.wait().unwrap();
    let log = drain.join().unwrap();
    assert!(
        out.status.success(),
        "browser run failed:\n{}\n{browser_log}\ndemo:\n{log}",
        String::from_utf8_lossy(&out.stdout),
    );
    assert!(status.success(), "demo failed:\n{log}");
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("{seen:#}");
    let state = seen["state"].as_str().unwrap();
    assert!(
        [
            "Listening",
            "Visitor speaking",
            "Assistant thinking",
            "Assistant speaking"
        ]
        .contains(&state),
        "{seen}"
    );
    let lines = seen["lines"].as_array().unwrap();
    assert!(
        lines[0].as_str().unwrap().starts_with("user: utterance 1"),
        "{seen}"
    );
    assert!(
        seen["link_rtt"].as_str().unwrap().ends_with(" ms"),
        "{seen}"
    );
    assert_eq!(seen["link_loss"], "0.0 % / 0.0 %", "{seen}");
    // "0 concealed (0 by FEC, 0 inserted, 0 removed) / 40 ms (target 40 ms)"
    let playout = seen["link_playout"].as_str().unwrap();
    let figures: Vec<u64> = playout
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(
        playout.contains(" concealed (")
            && playout.contains(" by FEC, ")
            && playout.contains(" inserted, ")
            && playout.contains(" removed) / ")
            && playout.ends_with(" ms)")
            && figures.len() == 6
            && figures[1] <= figures[0],
        "{seen}"
    );
    let cloud = seen["cloud"].as_array().unwrap();
    assert!(
        cloud[0].as_str().unwrap().starts_with("agent: reachable, "),
        "{seen}"
    );
    assert_eq!(
        seen["console_errors"].as_array().unwrap().len(),
        0,
        "{seen}"
    );
    let components: Vec<&str> = seen["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert!(
        components[0].starts_with("microphone: working")
            && components[0].contains("file ")
            && components[1].starts_with("speaker: working"),
        "{seen}"
    );
    // The WebRTC stack's routine warnings stay in the log, off the page.
    for event in seen["events"].as_array().unwrap() {
        assert!(!event.as_str().unwrap().contains("log.target"), "{seen}");
    }
    assert!(shots.join("live-session.png").exists());
    assert_eq!(
        seen["self_test_note"],
        "A visitor session is live; run the self-test when the kiosk is idle.",
        "{seen}"
    );
    assert_reads_well(&seen, "live");
}

/// Checks one state's measurements from inspect.mjs at every width: no
/// CSP violation, no horizontal scrolling, all text at 4.5:1 or better.
fn assert_reads_well(seen: &serde_json::Value, state: &str) {
    for width in ["360", "1280"] {
        let m = &seen["states"][state][width];
        assert_eq!(m["horizontal_scroll"], false, "{state} at {width} px: {m}");
        assert_eq!(m["csp"].as_array().unwrap().len(), 0, "{state}: {m}");
        let contrast = &m["contrast"];
        assert!(
            contrast["lowest"].as_f64().unwrap() >= 4.5
                && contrast["checked"].as_u64().unwrap() > 20,
            "{state} at {width} px: {contrast}"
        );
    }
}

/// Sessions over the last day, one of them failed, for the pictures.
fn seed_day(db: &Path) {
    let (store, _) = Store::open(db).unwrap();
    let now = Timestamp::now();
    for (ago_min, length_s, reason) in [
        (20 * 60, 95, "idle"),
        (5 * 60, 40, "idle"),
        (130, 72, "link_lost"),
        (42, 130, "idle"),
        (12, 64, "agent_left"),
    ] {
        let id = SessionId::new();
        let started_at = now
            .checked_sub(jiff::SignedDuration::from_mins(ago_min))
            .unwrap();
        store
            .start_session(&NewSession {
                id,
                kiosk_id: "test-kiosk".into(),
                started_at,
                room_name: None,
                room_url: None,
                agent_session_id: None,
            })
            .unwrap();
        store
            .end_session(
                id,
                &SessionEnd {
                    ended_at: started_at
                        .checked_add(jiff::SignedDuration::from_secs(length_s))
                        .unwrap(),
                    reason: reason.into(),
                    user_speech_ms: 1000,
                    bot_speech_ms: 1000,
                },
            )
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_reads_well_on_a_phone_and_a_desktop_in_each_state() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;

    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page");
    std::fs::create_dir_all(&shots).unwrap();
    let daily = FakeDaily::start().await;
    let dir = tempfile::tempdir().unwrap();
    seed_day(&dir.path().join("kiosk.db"));
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[kiosk]\nid = \"lobby-1\"\nname = \"Lobby kiosk\"\ntime_zone = \"Europe/Paris\"\n\
             [session]\ntrigger = \"http\"\nprovision = \"daily\"\n\
             [daily]\nbase_url = \"{}\"\n\
             [agent]\nstart_url = \"{}\"\n\
             [audio]\ninput = \"none\"\noutput = \"none\"\n\
             [store]\npath = \"kiosk.db\"\n\
             [status]\nlisten = \"127.0.0.1:0\"\nprobe_interval = \"1s\"\n\
             [log]\ntarget = \"stderr\"\nlevel = \"info\"\n",
            daily.base_url(),
            daily.agent_start_url()
        ),
    )
    .unwrap();
    let d = Daemon::start(
        dir.path(),
        &config,
        &[
            ("KIOSK_GATEWAY_STATUS_TOKEN", TOKEN),
            ("KIOSK_GATEWAY_DAILY_API_KEY", API_KEY),
        ],
    );
    let mut browser = Command::new("node")
        .arg(browser_dir.join("page_states.mjs"))
        .arg(&d.url)
        .arg(TOKEN)
        .arg(&shots)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node is installed");
    let mut stdin = browser.stdin.take().unwrap();
    let stderr = browser.stderr.take().unwrap();
    let (idle_done, idle_seen) = std::sync::mpsc::channel();
    let browser_log = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line == "idle done" {
                let _ = idle_done.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    // Once the healthy page is shot: the Daily API fails for a few probes.
    if idle_seen
        .recv_timeout(std::time::Duration::from_secs(60))
        .is_ok()
    {
        daily.inject("GET /v1/rooms", std::iter::repeat_n(Fault::ServerError, 4));
        writeln!(stdin, "degrade").unwrap();
    }
    drop(stdin);
    let out = tokio::task::spawn_blocking(move || browser.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let log = browser_log.join().unwrap();
    assert!(
        out.status.success(),
        "browser run failed:\n{}\n{log}\ndaemon:\n{}",
        String::from_utf8_lossy(&out.stdout),
        d.stderr()
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("{seen:#}");
    for state in ["idle", "degraded", "selftest"] {
        assert_reads_well(&seen, state);
    }
    assert_eq!(
        seen["console_errors"].as_array().unwrap().len(),
        0,
        "{seen}"
    );
    assert!(
        seen["idle_banner"].as_str().unwrap().contains("Healthy"),
        "{seen}"
    );
    assert!(
        seen["degraded_banner"]
            .as_str()
            .unwrap()
            .contains("Needs a look daily: answers, but reports trouble"),
        "{seen}"
    );
    assert_eq!(
        seen["self_test"],
        "Failed: speaker: no speaker open: nothing was played"
    );
    assert_eq!(seen["pictures"].as_array().unwrap().len(), 6, "{seen}");
    for state in ["idle", "degraded", "selftest-failed"] {
        for width in [360, 1280] {
            assert!(shots.join(format!("{state}-{width}.png")).exists());
        }
    }
    eprintln!("screenshots in {}", shots.display());
}
