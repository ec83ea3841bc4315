//! `kiosk-gateway demo --json`, the README's main job: one whole session
//! against the built-in loopback agent, offline, with its numbers checked;
//! and the same against an external agent (a loopback agent in a process
//! of its own), reached at its offer URL or through its `/start` endpoint.

use std::process::Command;

#[test]
fn demo_runs_a_whole_session_offline() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kiosk-gateway"))
        .args(["demo", "--json", "--state-dir"])
        .arg(dir.path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stderr}");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("{}", serde_json::to_string_pretty(&s).unwrap());

    let id = s["session_id"].as_str().expect("a session took place");
    let states: Vec<&str> = s["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.first(), Some(&"idle"));
    assert_eq!(states.last(), Some(&"idle"), "the session idled out");
    for expected in [
        "provisioning",
        "connecting",
        "user_speaking",
        "bot_speaking",
    ] {
        assert!(
            states.contains(&expected),
            "{expected} missing from {states:?}"
        );
    }
    let pos = |name: &str| states.iter().position(|s| *s == name).unwrap();
    assert!(pos("provisioning") < pos("connecting") && pos("connecting") < pos("user_speaking"));

    // The agent heard the visitor and answered each utterance; both sides
    // are stored in order.
    let transcripts = s["transcripts"].as_array().unwrap();
    assert!(transcripts.len() >= 2, "{transcripts:?}");
    assert_eq!(transcripts[0]["role"], "user");
    assert!(
        transcripts[0]["text"]
            .as_str()
            .unwrap()
            .starts_with("utterance 1")
    );
    assert_eq!(transcripts[1]["role"], "bot");
    // The agent sends each reply sentence three ways (bot-transcription,
    // bot-output, bot-tts-text), as Pipecat does: each is stored once, after
    // its turn's user line.
    let bot: Vec<&str> = transcripts
        .iter()
        .filter(|t| t["role"] == "bot")
        .map(|t| t["text"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (1..=bot.len()).map(|n| format!("reply {n}")).collect();
    assert_eq!(bot, expected, "{transcripts:?}");
    for pair in transcripts.chunks(2) {
        assert_eq!(pair[0]["role"], "user", "{transcripts:?}");
    }
    for (i, t) in transcripts.iter().enumerate() {
        assert_eq!(t["seq"], i + 1);
        assert_eq!(t["session_id"], id);
    }
    assert_eq!(s["end_reason"], "idle");
    assert!(s["utterances"].as_u64().unwrap() >= 1);
    assert!(s["speech_ms_sent"].as_u64().unwrap() >= 2000);
    // The agent's count is the speech in its transcripts ("utterance n
    // (x.y s)", rounded to 0.1 s), and the fixture's 6721 ms of speech.
    let received = s["speech_ms_received_by_agent"].as_u64().unwrap() as f64;
    let heard: Vec<f64> = transcripts
        .iter()
        .filter_map(|t| {
            t["text"]
                .as_str()?
                .split_once(" (")?
                .1
                .strip_suffix(" s)")?
                .parse()
                .ok()
        })
        .collect();
    let in_transcripts = heard.iter().sum::<f64>() * 1000.0;
    assert!(
        (received - in_transcripts).abs() <= 50.0 * heard.len() as f64,
        "the agent counted {received} ms, its transcripts say {heard:?}"
    );
    assert!((received - 6721.0).abs() <= 150.0, "{received} ms");
    // The start-up stages add up to the whole, and the gateway's own share
    // (agent ready to first packet) is small.
    let st = &s["startup"];
    let part = |k: &str| st[k].as_u64().unwrap_or_else(|| panic!("{k} in {st}"));
    let stages = part("provisioning_ms")
        + part("call_setup_ms")
        + part("agent_ready_ms")
        + part("release_ms");
    // Each stage is rounded down to whole milliseconds.
    assert!(
        stages.abs_diff(part("onset_to_first_packet_ms")) <= 3,
        "{st}"
    );
    assert!(part("release_ms") < 500, "{st}");
    // Call set-up on loopback is a few round trips: no step waits for a
    // timer of the WebRTC stack (each such wait was 200 ms, 600 in all).
    assert!(part("call_setup_ms") < 150, "{st}");

    // The call's quality was measured over RTCP: a round trip on loopback,
    // nothing lost either way.
    let link = &s["link"];
    assert_eq!(
        link["live"], false,
        "final figures of a closed call: {link}"
    );
    let rtt = link["rtt_ms"].as_f64().expect("a round-trip time");
    assert!(rtt > 0.0 && rtt < 200.0, "{link}");
    assert_eq!(link["loss_out_percent"], 0.0, "{link}");
    assert_eq!(link["loss_in_percent"], 0.0, "{link}");

    // The bot's replies were played: the output WAV holds sound.
    let wav = s["output_wav"].as_str().unwrap();
    let mut reader = hound::WavReader::open(wav).unwrap();
    let samples: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
    let loud = samples.iter().filter(|v| v.unsigned_abs() > 1000).count();
    assert!(
        loud > 4800,
        "the bot's reply is in {wav} ({loud} loud samples)"
    );

    // The session row is complete.
    let db = rusqlite::Connection::open(dir.path().join("kiosk.db")).unwrap();
    let (reason, user_ms, ended): (String, i64, Option<String>) = db
        .query_row(
            "SELECT end_reason, user_speech_ms, ended_at FROM sessions WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(reason, "idle");
    assert!(user_ms > 0);
    assert!(ended.is_some());
}

/// A loopback agent in a process of its own (`kiosk-gateway loopback-agent`),
/// answering with a different clip than the demo's built-in agent would;
/// killed when dropped.
struct ExternalAgent {
    child: std::process::Child,
    addr: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl ExternalAgent {
    fn start() -> ExternalAgent {
        use std::io::{BufRead, BufReader, Read};
        let reply = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/link/utterance_48k.wav"
        );
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiosk-gateway"))
            .args([
                "loopback-agent",
                "--listen",
                "127.0.0.1:0",
                "--reply",
                reply,
            ])
            .env("RUST_LOG", "kiosk_gateway=info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("offer URL: ")
            .unwrap_or_else(|| panic!("agent did not start: {line:?}"));
        let addr = url
            .strip_prefix("http://")
            .and_then(|u| u.strip_suffix("/api/offer"))
            .unwrap()
            .to_owned();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        ExternalAgent { child, addr, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for ExternalAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The visitor fixture's first 4.5 s: silence, then u1 ("Hello there, I
/// would like some help please", 1000–3730 ms), then silence.
fn first_utterance(dir: &std::path::Path) -> std::path::PathBuf {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/audio/multi_utterance_16k.wav"
    );
    let mut reader = hound::WavReader::open(fixture).unwrap();
    let spec = reader.spec();
    let path = dir.join("u1.wav");
    let mut writer = hound::WavWriter::create(&path, spec).unwrap();
    for s in reader.samples::<i16>().take(16_000 * 45 / 10) {
        writer.write_sample(s.unwrap()).unwrap();
    }
    writer.finalize().unwrap();
    path
}

/// Runs `demo --json` against an external agent with `agent_args`.
fn external_demo(
    dir: &std::path::Path,
    agent_args: &[&str],
    env: &[(&str, &str)],
) -> serde_json::Value {
    let input = first_utterance(dir);
    let state = dir.join("state");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiosk-gateway"));
    cmd.args([
        "demo",
        "--json",
        "--bind",
        "127.0.0.1:0",
        "--no-stun",
        "--input",
    ])
    .arg(&input)
    .arg("--state-dir")
    .arg(&state)
    .args(agent_args)
    .env_remove("RUST_LOG")
    .env_remove("KIOSK_GATEWAY_AGENT_API_KEY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stderr}");
    for (_, secret) in env {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "key printed"
        );
    }
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("{}", serde_json::to_string_pretty(&s).unwrap());

    // Only the built-in agent can say what it heard.
    assert!(s["speech_ms_received_by_agent"].is_null(), "{s}");
    // The external agent heard u1 and answered it, and its answer (its
    // own reply clip, "Hello, I would like to check in please", 2.7 s) was
    // played: longer than the built-in agent's reply (1.5 s).
    let transcripts = s["transcripts"].as_array().unwrap();
    assert_eq!(transcripts[0]["role"], "user");
    assert!(
        transcripts[0]["text"]
            .as_str()
            .unwrap()
            .starts_with("utterance 1"),
        "{transcripts:?}"
    );
    assert_eq!(transcripts[1]["role"], "bot");
    let states: Vec<&str> = s["states"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["state"].as_str().unwrap())
        .collect();
    assert!(states.contains(&"bot_speaking"), "{states:?}");
    assert_eq!(states.last(), Some(&"idle"));
    let mut reader = hound::WavReader::open(s["output_wav"].as_str().unwrap()).unwrap();
    let rate = reader.spec().sample_rate as usize;
    let loud: Vec<usize> = reader
        .samples::<i16>()
        .map(Result::unwrap)
        .enumerate()
        .filter_map(|(i, v)| (v.unsigned_abs() > 1000).then_some(i))
        .collect();
    let span = (loud.last().unwrap() - loud[0]) as f64 / rate as f64;
    assert!(span > 2.0 && span < 3.0, "the reply sounds for {span:.2} s");
    s
}

#[test]
fn demo_talks_to_an_external_agent_at_its_offer_url() {
    let agent = ExternalAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{}/api/offer", agent.addr);
    external_demo(dir.path(), &["--offer-url", &url], &[]);
    // The call went to the other process.
    assert!(
        agent.log().contains("loopback agent answered an offer"),
        "{}",
        agent.log()
    );
}

#[test]
fn demo_starts_an_external_agent_session_at_its_start_url() {
    let agent = ExternalAgent::start();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{}/start", agent.addr);
    let s = external_demo(
        dir.path(),
        &["--start-url", &url, "--api-key-env", "DEMO_AGENT_KEY"],
        &[("DEMO_AGENT_KEY", "pk-demo-not-to-be-printed")],
    );
    assert!(agent.log().contains("loopback agent answered an offer"));
    // The session is the one `/start` created (its sessionId is stored).
    let db = rusqlite::Connection::open(dir.path().join("state/kiosk.db")).unwrap();
    let agent_session: String = db
        .query_row(
            "SELECT agent_session_id FROM sessions WHERE id = ?1",
            [s["session_id"].as_str().unwrap()],
            |r| r.get(0),
        )
        .unwrap();
    assert!(agent_session.starts_with("loopback-"), "{agent_session}");
}

#[test]
fn demo_names_a_missing_api_key_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_kiosk-gateway"))
        .args([
            "demo",
            "--start-url",
            "http://127.0.0.1:9/start",
            "--api-key-env",
            "DEMO_AGENT_KEY_UNSET",
        ])
        .env_remove("DEMO_AGENT_KEY_UNSET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("DEMO_AGENT_KEY_UNSET is not set"),
        "{stderr}"
    );
}

#[test]
fn demo_fails_when_the_external_agent_cannot_be_reached() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kiosk-gateway"))
        .args(["demo", "--json", "--no-stun", "--bind", "127.0.0.1:0"])
        .args(["--offer-url", "http://127.0.0.1:9/api/offer", "--state-dir"])
        .arg(dir.path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["end_reason"], "connect_failed", "{s}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("could not connect the call"), "{stderr}");
    assert!(
        stderr.contains("error: the session failed (connect_failed)"),
        "{stderr}"
    );
}
