//! `kiosk-gateway demo --json`, the README's main job: one whole session
//! against the built-in loopback agent, offline, with its numbers checked.

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
    for (i, t) in transcripts.iter().enumerate() {
        assert_eq!(t["seq"], i + 1);
        assert_eq!(t["session_id"], id);
    }
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
