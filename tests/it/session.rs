//! The kiosk loop in the daemon, end to end: a visitor speaks (a WAV as the
//! microphone), a session starts against the loopback agent, transcripts
//! are stored, and sessions end with the right reason — idle, SIGTERM, a
//! crash, a failure that plays the prompt, the session's time limit, the
//! agent leaving — and the visitor can talk over the bot.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    Daemon, U1_MS, VISITOR_WAV, get, loud_samples, session_config, session_rows, silence,
    speaker_samples, transcript_lines, visitor_clip, wait_for, wait_for_prompt, wait_session_end,
    write_wav,
};
use kiosk_gateway::testkit::media;
use kiosk_gateway::testkit::{LoopbackAgent, LoopbackAgentConfig};

fn fixture_48k(name: &str) -> Vec<i16> {
    media::read_wav(&Path::new(env!("CARGO_MANIFEST_DIR")).join(name)).unwrap()
}

async fn agent_replying(reply: Vec<i16>) -> LoopbackAgent {
    LoopbackAgent::start(LoopbackAgentConfig::new(reply))
        .await
        .unwrap()
}

async fn agent() -> LoopbackAgent {
    agent_replying(fixture_48k("fixtures/link/reply_48k.wav")).await
}

/// The visitor fixture against a static offer URL.
fn config(dir: &Path, offer_url: &str, extra: &str) -> std::path::PathBuf {
    session_config(
        dir,
        Path::new(VISITOR_WAV),
        &format!("offer_url = \"{offer_url}\""),
        extra,
    )
}

/// (id, end_reason, user_speech_ms) of the latest session.
fn session_row(dir: &Path) -> (String, Option<String>, i64) {
    let row = session_rows(dir).pop().expect("a session");
    (row.id, row.end_reason, row.user_speech_ms)
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
    let s = wait_session_end(&d, "a session ends", Duration::from_secs(40)).await;
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
    wait_session_end(&d, "the session fails", Duration::from_secs(20)).await;
    let (_, reason, _) = session_row(dir.path());
    assert_eq!(reason.as_deref(), Some("connect_failed"));
    // The prompt reached the speaker: the WAV holds sound, not silence.
    wait_for_prompt(dir.path(), Duration::from_secs(10)).await;
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_prompt_file_is_played_in_place_of_the_built_in_one() {
    let dir = tempfile::tempdir().unwrap();
    // 2 s of a 440 Hz tone at 16 kHz: neither the built-in prompt's length,
    // pitch nor rate.
    let prompt = dir.path().join("prompt.wav");
    let tone: Vec<i16> = (0..32_000)
        .map(|i| {
            (12_000.0 * (i as f32 * 2.0 * std::f32::consts::PI * 440.0 / 16_000.0).sin()) as i16
        })
        .collect();
    write_wav(&prompt, 16_000, &tone);
    // One utterance, so one failed session and one prompt: the fixture's
    // second utterance would start another 4.2 s after the first.
    let mut mic = silence(1000);
    mic.extend(visitor_clip(U1_MS.0, U1_MS.1));
    mic.extend(silence(12_000));
    let input = dir.path().join("mic.wav");
    write_wav(&input, 16_000, &mic);
    let config = session_config(
        dir.path(),
        &input,
        "offer_url = \"http://127.0.0.1:9/api/offer\"",
        &format!("[session]\nfailure_prompt = \"{}\"\n", prompt.display()),
    );
    let d = Daemon::start(dir.path(), &config, &[]);
    wait_session_end(&d, "the session fails", Duration::from_secs(20)).await;
    wait_for_prompt(dir.path(), Duration::from_secs(10)).await;
    // Past its end: the speaker holds the tone, whole, and nothing else.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let played = speaker_samples(dir.path());
    let loud: Vec<usize> = (0..played.len())
        .filter(|&i| played[i].unsigned_abs() > 1000)
        .collect();
    let (first, last) = (loud[0], loud[loud.len() - 1]);
    let seconds = (last - first) as f64 / 48_000.0;
    assert!((1.9..2.1).contains(&seconds), "{seconds:.2} s of sound");
    let crossings = played[first..last]
        .windows(2)
        .filter(|w| (w[0] < 0) != (w[1] < 0))
        .count();
    let hz = crossings as f64 / 2.0 / seconds;
    assert!((430.0..450.0).contains(&hz), "played at {hz:.0} Hz");
    drop(d);
}

/// Milliseconds between two stored RFC 3339 timestamps.
fn ms_between(from: &str, to: &str) -> i64 {
    let (a, b): (jiff::Timestamp, jiff::Timestamp) = (from.parse().unwrap(), to.parse().unwrap());
    b.duration_since(a).as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_talking_over_the_bot_stops_its_playback() {
    // A long reply (the prompt twice, at half level: a bot quieter at the
    // microphone than a visitor standing at it) that the visitor interrupts.
    let prompt = fixture_48k("fixtures/audio/failure_prompt_48k.wav");
    let reply: Vec<i16> = prompt.iter().chain(&prompt).map(|s| s / 2).collect();
    let agent = agent_replying(reply).await;
    let dir = tempfile::tempdir().unwrap();
    // u1, then u1 again, louder, 3.5 s after it ended: the agent answers u1
    // within about a second and its 9 s reply is still playing then.
    let u1 = visitor_clip(U1_MS.0, U1_MS.1);
    let talk_over_ms = 1000 + (U1_MS.1 - U1_MS.0) + 3500;
    let mut mic = silence(1000);
    mic.extend(&u1);
    mic.extend(silence(3500));
    mic.extend(u1.iter().map(|s| s.saturating_mul(2)));
    mic.extend(silence(8000));
    let input = dir.path().join("mic.wav");
    write_wav(&input, 16_000, &mic);
    let config = session_config(
        dir.path(),
        &input,
        &format!("offer_url = \"{}\"", agent.offer_url()),
        "[session]\nidle_timeout = \"5s\"\n",
    );
    let d = Daemon::start(dir.path(), &config, &[]);
    let talk_over_end = talk_over_ms + (U1_MS.1 - U1_MS.0);
    // The speaker WAV and the microphone WAV run on the same clock from
    // the engine's start, so the speaker's sample n is mic time n / 48 ms.
    let deadline = Instant::now() + Duration::from_secs(40);
    while speaker_samples(dir.path()).len() < (talk_over_end as usize) * 48 {
        assert!(Instant::now() < deadline, "speaker stalled: {}", d.stderr());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let speaker = speaker_samples(dir.path());
    let window = |from_ms: u32, to_ms: u32| &speaker[from_ms as usize * 48..to_ms as usize * 48];
    let before = loud_samples(window(talk_over_ms - 1000, talk_over_ms));
    assert!(
        before > 4800,
        "the bot was not speaking when the visitor started ({before} loud samples)\n{}",
        d.stderr()
    );
    // Onset detection and the 20 ms fade take well under 300 ms; the
    // playback stays off until the visitor stops.
    let during = loud_samples(window(talk_over_ms + 300, talk_over_end - 100));
    assert!(
        during < 480,
        "the bot kept playing over the visitor ({during} loud samples)\n{}",
        d.stderr()
    );
    let (_, metrics) = get(&format!("{}/metrics", d.url)).await;
    let barge_ins: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kiosk_audio_barge_ins_total "))
        .expect("barge-in metric")
        .parse()
        .unwrap();
    assert!(barge_ins >= 1.0, "{metrics}");
    assert!(
        d.stderr().contains("visitor spoke over the bot"),
        "{}",
        d.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_duration_ends_a_session_that_never_idles() {
    let agent = agent().await;
    let dir = tempfile::tempdir().unwrap();
    // The shortest limit the config allows, and an idle timeout past it.
    let config = config(
        dir.path(),
        agent.offer_url().as_str(),
        "[session]\nmax_duration = \"60s\"\nidle_timeout = \"120s\"\n",
    );
    let d = Daemon::start(dir.path(), &config, &[]);
    let s = wait_session_end(&d, "the session ends", Duration::from_secs(120)).await;
    assert_eq!(s["recent_sessions"][0]["end_reason"], "max_duration");
    let rows = session_rows(dir.path());
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    let lasted = ms_between(&row.started_at, row.ended_at.as_deref().unwrap());
    assert!((60_000..65_000).contains(&lasted), "lasted {lasted} ms");
    assert!(row.user_speech_ms > 1000, "{row:?}");
    wait_for(&d, "back to idle", Duration::from_secs(10), |s| {
        s["state"] == "idle"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_leaving_ends_the_session_and_the_next_visitor_gets_a_new_one() {
    let agent = agent().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        agent.offer_url().as_str(),
        "[session]\nidle_timeout = \"5s\"\n",
    );
    let d = Daemon::start(dir.path(), &config, &[]);
    // Hang up once the agent has answered the first utterance; the
    // fixture's later utterances are the next visitor.
    wait_for(&d, "a first transcript", Duration::from_secs(30), |s| {
        let open = &s["recent_sessions"][0];
        open["end_reason"].is_null() && open["transcripts"].as_u64() >= Some(1)
    })
    .await;
    agent.hang_up_all().await;
    let s = wait_for(&d, "two sessions ended", Duration::from_secs(40), |s| {
        let recent = s["recent_sessions"].as_array().unwrap();
        recent.len() >= 2 && recent.iter().all(|r| r["end_reason"].is_string())
    })
    .await;
    assert_eq!(s["state"], "idle");
    let rows = session_rows(dir.path());
    assert_eq!(
        rows[0].end_reason.as_deref(),
        Some("agent_left"),
        "{rows:?}"
    );
    assert!(
        rows[0].user_speech_ms > 0 && rows[0].ended_at.is_some(),
        "{rows:?}"
    );
    let next = &rows[1];
    assert!(
        ms_between(rows[0].ended_at.as_deref().unwrap(), &next.started_at) >= 0,
        "{rows:?}"
    );
    assert_eq!(next.end_reason.as_deref(), Some("idle"), "{rows:?}");
    // The new session reached the agent again: it heard and answered.
    let lines = transcript_lines(dir.path(), &next.id);
    assert!(
        lines.iter().any(|(_, role, _)| role == "user")
            && lines.iter().any(|(_, role, _)| role == "bot"),
        "{lines:?}\n{}",
        d.stderr()
    );
}

/// Inside a live call the kiosk sends a packet every 40 ms (the default),
/// the pauses between utterances included, as a browser does every 20 ms:
/// an agent such as Pipecat
/// hears the end of a turn only through silent frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_call_streams_every_40_ms_through_the_pauses() {
    let agent = agent().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        agent.offer_url().as_str(),
        "[session]\nidle_timeout = \"5s\"\n",
    );
    let d = Daemon::start(dir.path(), &config, &[]);
    // Mid-call, the pace is on /metrics.
    wait_for(&d, "the call is live", Duration::from_secs(20), |s| {
        s["link"]["live"] == true && s["link"]["send_packets_per_second"].as_f64() > Some(0.0)
    })
    .await;
    let (_, metrics) = get(&format!("{}/metrics", d.url)).await;
    let sent_total = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kiosk_link_packets_sent_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no packet counter on /metrics:\n{metrics}"));
    assert!(sent_total > 0.0);
    let s = wait_session_end(&d, "the session idles out", Duration::from_secs(40)).await;
    assert_eq!(s["recent_sessions"][0]["end_reason"], "idle");

    let arrivals = agent.record().packet_arrivals_ms;
    let span = arrivals.last().unwrap() - arrivals[0];
    // Speech and pauses: the fixture's 12.7 s from the first pre-roll, the
    // silence after it until the idle timeout.
    assert!(span > 15_000, "packets over {span} ms only");
    // The speech held while the call came up arrives at twice real time
    // until it has caught up (well within 3 s); after it, the live pace.
    let live: Vec<u64> = arrivals
        .iter()
        .copied()
        .filter(|&t| t >= arrivals[0] + 3_000)
        .collect();
    let live_span = live.last().unwrap() - live[0];
    let rate = (live.len() - 1) as f64 * 1000.0 / live_span as f64;
    let longest_gap = live.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    println!(
        "{} packets over {span} ms; after the first 3 s {rate:.1}/s, longest gap {longest_gap} ms",
        arrivals.len()
    );
    assert!((23.5..=25.5).contains(&rate), "{rate:.1} packets/s");
    // A sender that goes quiet between utterances leaves gaps of a second
    // or more; scheduling on a busy machine may delay a packet, not skip many.
    assert!(longest_gap < 400, "a {longest_gap} ms gap in the stream");
    // The agent's turns ended on the silence it received: all four heard.
    assert_eq!(
        agent.record().utterances.len(),
        4,
        "{:?}",
        agent.record().utterances
    );
}

/// Pipecat Cloud wants the agent key on `/start` and on every offer and
/// trickle request of the session (`sessions/{id}/api/offer`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipecat_session_carries_the_agent_key_on_every_request() {
    let mut agent_config = LoopbackAgentConfig::new(fixture_48k("fixtures/link/reply_48k.wav"));
    agent_config.api_key = Some("pk-test-agent-key".into());
    let agent = LoopbackAgent::start(agent_config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = session_config(
        dir.path(),
        Path::new(VISITOR_WAV),
        &format!("start_url = \"{}\"", agent.start_url()),
        "[session]\nprovision = \"pipecat\"\nidle_timeout = \"5s\"\n",
    );
    let d = Daemon::start(
        dir.path(),
        &config,
        &[("KIOSK_GATEWAY_AGENT_API_KEY", "pk-test-agent-key")],
    );
    let s = wait_session_end(&d, "a session ends", Duration::from_secs(40)).await;
    assert_eq!(s["recent_sessions"][0]["end_reason"], "idle", "{s:#}");
    let requests = agent.record().cloud_requests;
    assert!(
        requests
            .iter()
            .any(|r| r.method == "POST" && r.path.ends_with("/api/offer")),
        "no offer to the session's offer URL: {requests:?}"
    );
    assert!(
        requests.iter().all(|r| r.authorized),
        "a request without the key: {requests:?}"
    );
    let id = session_rows(dir.path()).pop().unwrap().id;
    assert!(!transcript_lines(dir.path(), &id).is_empty());
    assert!(
        !d.stderr().contains("pk-test-agent-key"),
        "the key was logged"
    );
}

/// A store that cannot be written (here: another process holds its write
/// lock, as a technician's `sqlite3` shell can) loses nothing: the session
/// goes on, the page says the store is down, and every line is written,
/// once, when the store is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_store_holds_lines_in_memory_and_writes_them_later() {
    let agent = agent().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        agent.offer_url().as_str(),
        "[session]\nidle_timeout = \"5s\"\n",
    );
    let d = Daemon::start(dir.path(), &config, &[]);
    wait_for(&d, "a session starts", Duration::from_secs(20), |s| {
        s["session"].is_object()
    })
    .await;
    let db = rusqlite::Connection::open(dir.path().join("kiosk.db")).unwrap();
    db.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let store_down = wait_for(
        &d,
        "the store is reported down",
        Duration::from_secs(20),
        |s| {
            s["components"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"] == "store" && c["health"] == "down")
        },
    )
    .await;
    println!("{:#}", store_down["components"]);
    // The conversation goes on while the store is locked.
    tokio::time::sleep(Duration::from_secs(6)).await;
    db.execute_batch("COMMIT").unwrap();
    drop(db);
    let s = wait_session_end(&d, "the session ends", Duration::from_secs(60)).await;
    assert_eq!(s["recent_sessions"][0]["end_reason"], "idle");
    wait_for(
        &d,
        "the store is writable again",
        Duration::from_secs(20),
        |s| {
            s["components"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"] == "store" && c["health"] == "ok")
        },
    )
    .await;
    let id = session_rows(dir.path()).pop().unwrap().id;
    let lines = transcript_lines(dir.path(), &id);
    let heard = agent.record().utterances.len();
    let user = lines.iter().filter(|l| l.1 == "user").count();
    let bot = lines.iter().filter(|l| l.1 == "bot").count();
    assert_eq!((user, bot), (heard, heard), "{lines:?}");
    let mut texts: Vec<&String> = lines.iter().map(|l| &l.2).collect();
    texts.dedup();
    assert_eq!(texts.len(), lines.len(), "a line stored twice: {lines:?}");
    assert!(d.stderr().contains("holding writes in memory"));
}
