//! The kiosk loop in the daemon, end to end: a visitor speaks (a WAV as the
//! microphone), a session starts against the loopback agent, transcripts
//! are stored, and sessions end with the right reason — idle, SIGTERM, a
//! crash, a failure that plays the prompt.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Daemon, get};
use kiosk_gateway::link::agent::{LoopbackAgent, LoopbackAgentConfig};
use kiosk_gateway::link::media;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/audio/multi_utterance_16k.wav"
);

async fn agent() -> LoopbackAgent {
    let reply = media::read_wav(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/link/reply_48k.wav"
    )))
    .unwrap();
    LoopbackAgent::start(LoopbackAgentConfig::new(reply))
        .await
        .unwrap()
}

fn config(dir: &Path, offer_url: &str, extra: &str) -> std::path::PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[kiosk]\nid = \"test-kiosk\"\n\
             [audio]\ninput = \"wav:{FIXTURE}\"\noutput = \"wav:{}\"\n\
             [agent]\noffer_url = \"{offer_url}\"\nstun_urls = []\nudp_bind = \"127.0.0.1:0\"\n\
             [store]\npath = \"kiosk.db\"\n\
             [status]\nlisten = \"127.0.0.1:0\"\n\
             [log]\ntarget = \"stderr\"\nlevel = \"info\"\n{extra}",
            dir.join("speaker.wav").display()
        ),
    )
    .unwrap();
    path
}

async fn status(d: &Daemon) -> serde_json::Value {
    serde_json::from_str(&get(&format!("{}/api/status", d.url)).await.1).unwrap()
}

async fn wait_for(
    d: &Daemon,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let s = status(d).await;
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: never happened; last status {s:#}\nstderr:\n{}",
            d.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn session_row(dir: &Path) -> (String, Option<String>, i64) {
    let db = rusqlite::Connection::open(dir.join("kiosk.db")).unwrap();
    db.query_row(
        "SELECT id, end_reason, user_speech_ms FROM sessions ORDER BY started_at DESC LIMIT 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_talks_and_the_session_idles_out_with_its_transcript() {
    let agent = agent().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        agent.offer_url().as_str(),
        "[session]\nidle_timeout = \"5s\"\n",
    );
    let d = Daemon::start(dir.path(), &config, &[]);
    let s = wait_for(&d, "a session ends", Duration::from_secs(40), |s| {
        s["recent_sessions"][0]["end_reason"].is_string()
    })
    .await;
    assert_eq!(s["recent_sessions"][0]["end_reason"], "idle");
    assert_eq!(s["state"], "idle");
    let db = rusqlite::Connection::open(dir.path().join("kiosk.db")).unwrap();
    let lines: Vec<(i64, String, String)> = db
        .prepare("SELECT seq, role, text FROM transcripts ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(lines.len() >= 4, "{lines:?}");
    assert_eq!(
        (lines[0].1.as_str(), lines[1].1.as_str()),
        ("user", "bot"),
        "{lines:?}"
    );
    assert!(lines[0].2.starts_with("utterance 1"), "{lines:?}");
    let (_, _, user_ms) = session_row(dir.path());
    assert!(user_ms > 1000);
    // The agent heard the first utterance from its pre-roll on: the first
    // transcript reports about its full length (2.7 s in the fixture).
    let first: f64 = lines[0]
        .2
        .trim_start_matches("utterance 1 (")
        .trim_end_matches(" s)")
        .parse()
        .unwrap();
    assert!(
        (2.5..=3.3).contains(&first),
        "first utterance heard as {first} s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_session_ends_it_as_shutdown() {
    let agent = agent().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), agent.offer_url().as_str(), "");
    let mut d = Daemon::start(dir.path(), &config, &[]);
    wait_for(&d, "a conversation", Duration::from_secs(20), |s| {
        matches!(
            s["state"].as_str(),
            Some("user_speaking" | "bot_thinking" | "bot_speaking" | "listening")
        )
    })
    .await;
    d.signal("TERM");
    let (code, took) = d
        .wait_exit(Duration::from_secs(5))
        .expect("stops within 5 s");
    assert!(code.success(), "{}", d.stderr());
    assert!(took < Duration::from_secs(5));
    let (_, reason, _) = session_row(dir.path());
    assert_eq!(reason.as_deref(), Some("shutdown"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_session_is_recorded_at_the_next_start() {
    let agent = agent().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), agent.offer_url().as_str(), "");
    let mut d = Daemon::start(dir.path(), &config, &[]);
    wait_for(&d, "a conversation", Duration::from_secs(20), |s| {
        s["session"].is_object()
    })
    .await;
    d.signal("KILL");
    d.wait_exit(Duration::from_secs(5)).expect("killed");
    let (id, reason, _) = session_row(dir.path());
    assert_eq!(reason, None, "left open by the crash");
    drop(d);

    let d = Daemon::start(dir.path(), &config, &[]);
    let s = wait_for(
        &d,
        "the crashed session is closed",
        Duration::from_secs(10),
        |s| {
            s["recent_sessions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["id"] == id.as_str() && r["end_reason"] == "crashed")
        },
    )
    .await;
    assert!(s["recent_sessions"].is_array());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_agent_plays_the_prompt_and_ends_the_session() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 9 on loopback: the offer is refused at once.
    let config = config(dir.path(), "http://127.0.0.1:9/api/offer", "");
    let d = Daemon::start(dir.path(), &config, &[]);
    wait_for(&d, "the session fails", Duration::from_secs(20), |s| {
        s["recent_sessions"][0]["end_reason"].is_string()
    })
    .await;
    let (_, reason, _) = session_row(dir.path());
    assert_eq!(reason.as_deref(), Some("connect_failed"));
    // The prompt reached the speaker: the WAV holds sound, not silence.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // The WAV is still being written: its header's length is not final,
        // so the samples are read raw, after the 44-byte header.
        let bytes = std::fs::read(dir.path().join("speaker.wav")).unwrap_or_default();
        let loud = bytes
            .get(44..)
            .unwrap_or_default()
            .chunks_exact(2)
            .filter(|b| i16::from_le_bytes([b[0], b[1]]).unsigned_abs() > 1000)
            .count();
        // At least one second of the 4.6 s prompt, loud.
        if loud > 48_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no prompt in the speaker WAV ({loud} loud samples)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(d);
}
