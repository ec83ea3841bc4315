//! The kiosk loop with `session.provision = "daily"`, end to end: the real
//! daemon, the fake Daily REST API and agent start endpoint in this process
//! on 127.0.0.1, and the loopback agent over real WebRTC. A slow room
//! creation must cost the visitor no speech, and no session may leave a
//! room behind, whether it ends normally or fails to provision.

use crate::common;
use crate::daily_support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::StatusCode;
use common::{
    Daemon, SessionRow, U1_MS, U2_MS, session_config, session_rows, transcript_lines, visitor_clip,
    wait_for_prompt, wait_session_end, wait_until, write_wav,
};
use daily_support::{API_KEY, FakeDaily, Fault};
use kiosk_gateway::testkit::media;
use kiosk_gateway::testkit::{LoopbackAgent, LoopbackAgentConfig};
use serde_json::json;

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

/// A daemon provisioning each session from `fake`.
fn start(dir: &Path, fake: &FakeDaily, mic: &[i16]) -> Daemon {
    let input = dir.join("mic.wav");
    write_wav(&input, 16_000, mic);
    let config: PathBuf = session_config(
        dir,
        &input,
        &format!("start_url = \"{}\"", fake.agent_start_url()),
        &format!(
            "[daily]\nbase_url = \"{}\"\n[session]\nprovision = \"daily\"\nidle_timeout = \"5s\"\n",
            fake.base_url()
        ),
    );
    Daemon::start(dir, &config, &[("KIOSK_GATEWAY_DAILY_API_KEY", API_KEY)])
}

/// The fixture's first utterance with its room noise around it: 1 s
/// before, 1.5 s after.
fn one_utterance() -> Vec<i16> {
    visitor_clip(0, U2_MS.0)
}

/// Level of each 10 ms frame, in dBFS, floored at -60.
fn envelope(samples: &[i16], rate: usize) -> Vec<f64> {
    samples
        .chunks_exact(rate / 100)
        .map(|f| {
            let power = f.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / f.len() as f64;
            (10.0 * (power / 32768f64.powi(2)).max(1e-12).log10()).max(-60.0)
        })
        .collect()
}

fn first_loud(env: &[f64]) -> usize {
    env.iter().position(|&db| db > -44.0).expect("speech")
}

/// A voice-triggered session whose room takes 1.5 s to create, against the
/// loopback agent: u1, 4.5 s of room noise (the agent's reply fits in it),
/// u2. Returns the microphone and the ended session.
async fn slow_daily_session(
    agent: &LoopbackAgent,
    fake: &FakeDaily,
    dir: &Path,
) -> (Daemon, Vec<i16>, SessionRow) {
    fake.inject("POST /v1/rooms", [Fault::Slow(Duration::from_millis(1500))]);
    fake.state.lock().unwrap().agent_start_reply = Some((
        StatusCode::OK,
        json!({"offer_url": agent.offer_url().as_str(), "sessionId": "agent-e2e"}),
    ));
    let noise = visitor_clip(U1_MS.1, U2_MS.0);
    let mut mic = one_utterance();
    mic.extend(&noise);
    mic.extend(&noise);
    mic.extend(visitor_clip(U2_MS.0, U2_MS.1 + 800));
    let d = start(dir, fake, &mic);
    let s = wait_session_end(&d, "the session ends", Duration::from_secs(40)).await;
    assert_eq!(s["recent_sessions"][0]["end_reason"], "idle");
    let mut rows = session_rows(dir);
    assert_eq!(rows.len(), 1, "{rows:?}");
    (d, mic, rows.remove(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowly_provisioned_daily_session_is_recorded_and_deletes_its_room() {
    let agent = agent().await;
    let fake = FakeDaily::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (d, _, row) = slow_daily_session(&agent, &fake, dir.path()).await;
    assert!(row.ended_at.is_some(), "{row:?}");
    assert!(row.user_speech_ms > 3500, "{row:?}");
    assert!(row.bot_speech_ms > 1000, "{row:?}");

    // The room: created once (slowly), handed to the agent, recorded on the
    // session, and deleted when the session ended.
    let room = row.room_name.clone().expect("the session's room");
    wait_until("the room is deleted", Duration::from_secs(10), &d, || {
        fake.room_history().1.contains(&room)
    })
    .await;
    assert_eq!(
        fake.room_history(),
        (vec![room.clone()], vec![room.clone()])
    );
    {
        let state = fake.state.lock().unwrap();
        assert!(
            state.faults.iter().all(|(_, q)| q.is_empty()),
            "the slow creation was served"
        );
        let (_, body) = &state.agent_start_bodies[0];
        assert_eq!(body["room_url"], format!("https://example.daily.co/{room}"));
    }

    // Transcripts, in order, with their roles.
    let lines = transcript_lines(dir.path(), &row.id);
    let roles: Vec<&str> = lines.iter().map(|(_, r, _)| r.as_str()).collect();
    assert_eq!(roles, ["user", "bot", "user", "bot"], "{lines:?}");
    assert!(lines.windows(2).all(|w| w[0].0 < w[1].0), "{lines:?}");
    assert!(lines[0].2.starts_with("utterance 1 "), "{lines:?}");
    assert!(lines[2].2.starts_with("utterance 2 "), "{lines:?}");
    assert_eq!(
        (lines[1].2.as_str(), lines[3].2.as_str()),
        ("reply 1", "reply 2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowly_provisioned_daily_session_loses_no_speech() {
    let agent = agent().await;
    let fake = FakeDaily::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (_d, mic, row) = slow_daily_session(&agent, &fake, dir.path()).await;
    let record = agent.record();

    // The agent heard both utterances whole: the fixture's ground truth.
    let truth = i64::from(U1_MS.1 - U1_MS.0 + U2_MS.1 - U2_MS.0);
    let heard: i64 = record.utterances.iter().map(|u| u.as_millis() as i64).sum();
    assert!(
        record.utterances.len() == 2 && (heard - truth).abs() <= 60,
        "the microphone held {truth} ms of speech, the agent heard {:?}",
        record.utterances
    );
    // The gateway's own VAD finds as much speech in what the agent
    // received as the gateway counted in what it captured.
    let received = dir.path().join("received.wav");
    write_wav(&received, 48_000, &record.received);
    let out = std::process::Command::new(common::BIN)
        .args(["vad", "--json", "--input"])
        .arg(&received)
        .output()
        .unwrap();
    let vad: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let received_ms = vad["speech_ms"].as_i64().unwrap();
    assert!(
        (received_ms - row.user_speech_ms).abs() <= 60,
        "the gateway counted {} ms of speech sent, the agent received {received_ms} ms ({vad})",
        row.user_speech_ms
    );

    // The recording starts with the pre-roll, and its speech lines up with
    // the microphone's from the very first frame: were the start of u1 lost
    // while the room was being created, the recording would match the
    // microphone only from a later point.
    let mic_env = envelope(&mic, 16_000);
    let rec_env = envelope(&record.received, 48_000);
    let (m0, r0) = (first_loud(&mic_env), first_loud(&rec_env));
    assert!(
        r0 >= 20,
        "only {} ms of audio before the speech: the pre-roll is missing",
        r0 * 10
    );
    // Mean level difference over the next 2.5 s, the microphone shifted by
    // (shift - 30) frames.
    let mismatch = |shift: usize| -> f64 {
        (0..250)
            .map(|i| (mic_env[m0 - 30 + shift + i] - rec_env[r0 + i]).abs())
            .sum::<f64>()
            / 250.0
    };
    let best = (0..=60)
        .min_by(|&a, &b| mismatch(a).total_cmp(&mismatch(b)))
        .unwrap();
    assert!(
        (28..=32).contains(&best) && mismatch(best) < 6.0,
        "the recording's speech matches the microphone {} ms after its onset, \
         off by {:.1} dB on average",
        (best as i64 - 30) * 10,
        mismatch(best)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_failing_to_create_the_room_plays_the_prompt() {
    let fake = FakeDaily::start().await;
    fake.inject("POST /v1/rooms", vec![Fault::ServerError; 50]);
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &fake, &one_utterance());
    let s = wait_session_end(&d, "the session fails", Duration::from_secs(30)).await;
    assert_eq!(s["recent_sessions"][0]["end_reason"], "provision_failed");
    wait_for_prompt(dir.path(), Duration::from_secs(15)).await;
    assert!(
        fake.count(axum::http::Method::POST, "/v1/rooms") > 1,
        "retried"
    );
    assert_eq!(fake.room_history(), (vec![], vec![]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_fails_to_start_plays_the_prompt_and_leaks_no_room() {
    let fake = FakeDaily::start().await;
    fake.state.lock().unwrap().agent_start_reply = Some((
        StatusCode::INTERNAL_SERVER_ERROR,
        json!({"error": "no bot available"}),
    ));
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &fake, &one_utterance());
    let s = wait_session_end(&d, "the session fails", Duration::from_secs(30)).await;
    assert_eq!(s["recent_sessions"][0]["end_reason"], "provision_failed");
    wait_for_prompt(dir.path(), Duration::from_secs(15)).await;
    let (created, deleted) = fake.room_history();
    assert_eq!(
        created.len(),
        1,
        "the room was created before the agent failed"
    );
    assert_eq!(deleted, created, "every room created was deleted");
    assert!(fake.room_names().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_while_provisioning_leaks_no_room() {
    let fake = FakeDaily::start().await;
    // The room exists, and the kiosk's token takes a while.
    fake.inject(
        "POST /v1/meeting-tokens",
        [Fault::Slow(Duration::from_secs(3))],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut d = start(dir.path(), &fake, &one_utterance());
    wait_until("a room is created", Duration::from_secs(20), &d, || {
        !fake.room_history().0.is_empty()
    })
    .await;
    d.signal("TERM");
    let (code, _) = d
        .wait_exit(Duration::from_secs(10))
        .expect("stops within 10 s");
    assert!(code.success(), "{}", d.stderr());
    let (created, deleted) = fake.room_history();
    assert_eq!(deleted, created, "a room was left behind\n{}", d.stderr());
    let rows = session_rows(dir.path());
    assert_eq!(rows[0].end_reason.as_deref(), Some("shutdown"), "{rows:?}");
}
