//! The daemon in a call with an agent that misbehaves mid-reply (the
//! loopback agent's `hostile` option): a second of random bytes, packets
//! cut short, a legal 60 ms and a legal 40 ms packet, then its normal
//! audio. The kiosk must keep playing the agent's
//! later audio, keep listening to the visitor, count what it could not
//! decode, and keep its devices "ok".

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    Daemon, U1_MS, get, session_config, silence, speaker_samples, transcript_lines, visitor_clip,
    wait_for, write_wav,
};
use kiosk_gateway::testkit::media;
use kiosk_gateway::testkit::{LoopbackAgent, LoopbackAgentConfig};

/// Seconds of sound in `samples` (48 kHz): 10 ms frames above -40 dBFS.
fn seconds_of_sound(samples: &[i16]) -> f64 {
    let loud = samples
        .chunks_exact(480)
        .filter(|f| {
            let energy: f64 = f.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / 480.0;
            energy.sqrt() / 32768.0 > 0.01
        })
        .count();
    loud as f64 / 100.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_agent_mid_call_leaves_the_kiosk_playing_and_listening() {
    // A 4.6 s reply: the bad packets replace 1.0 to 2.3 s of the first one.
    let reply = media::read_wav(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/audio/failure_prompt_48k.wav"),
    )
    .unwrap();
    let mut agent_config = LoopbackAgentConfig::new(reply);
    agent_config.hostile = true;
    let agent = LoopbackAgent::start(agent_config).await.unwrap();

    // The visitor speaks, waits out the reply, speaks again and listens to
    // the second reply: both in one session.
    let dir = tempfile::tempdir().unwrap();
    let u1 = visitor_clip(U1_MS.0, U1_MS.1);
    let mut mic = silence(1000);
    mic.extend(&u1);
    mic.extend(silence(9000));
    mic.extend(&u1);
    mic.extend(silence(9000));
    let input = dir.path().join("mic.wav");
    write_wav(&input, 16_000, &mic);
    let config = session_config(
        dir.path(),
        &input,
        &format!("offer_url = \"{}\"", agent.offer_url()),
        "[session]\nidle_timeout = \"30s\"\n",
    );
    // The engine starts after this: a speaker sample index computed from
    // it is, if anything, late, never early.
    let spawned = Instant::now();
    let d = Daemon::start(dir.path(), &config, &[]);

    // Until the second reply has played (it ends about 21 s in).
    let second_u1_end_ms = 1000 + 2 * (U1_MS.1 - U1_MS.0) + 9000;
    let until = (second_u1_end_ms as usize + 6500) * 48;
    let deadline = Instant::now() + Duration::from_secs(45);
    while speaker_samples(dir.path()).len() < until {
        assert!(
            Instant::now() < deadline,
            "speaker stalled at {} s\n{}",
            speaker_samples(dir.path()).len() as f64 / 48_000.0,
            d.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let record = agent.record();
    let hostile_sent = *record
        .hostile_sent
        .first()
        .expect("the hostile packets were sent");
    let from = hostile_sent.duration_since(spawned).as_secs_f64();
    let speaker = speaker_samples(dir.path());
    let after = &speaker[((from * 48_000.0) as usize).min(speaker.len())..];
    let sound_after = seconds_of_sound(after);
    let rest_of_first_reply = seconds_of_sound(&after[..after.len().min(2 * 48_000)]);
    println!(
        "bad packets done {from:.2} s into the speaker recording; after them {sound_after:.2} s \
         of sound ({rest_of_first_reply:.2} s of it in the next 2 s, the rest of the first \
         reply), of {:.2} s recorded after them",
        after.len() as f64 / 48_000.0
    );
    assert!(
        rest_of_first_reply >= 1.0,
        "the rest of the first reply was not heard ({rest_of_first_reply:.2} s)"
    );
    assert!(
        sound_after >= 4.0,
        "only {sound_after:.2} s of the agent's later audio reached the speaker"
    );

    // The session went on: still open, the agent heard the visitor again
    // and answered, and both turns are in its transcript.
    let s = wait_for(&d, "the second turn stored", Duration::from_secs(10), |s| {
        s["session"].is_object()
    })
    .await;
    assert!(
        record.utterances.len() >= 2,
        "the agent heard {} utterances",
        record.utterances.len()
    );
    let session_id = s["session"]["id"].as_str().unwrap();
    let lines = transcript_lines(dir.path(), session_id);
    assert!(
        lines
            .iter()
            .any(|(_, role, text)| role == "bot" && text == "reply 2"),
        "{lines:?}"
    );

    // Counted, not fatal: the devices stay "ok" and say what was concealed.
    for c in s["components"].as_array().unwrap() {
        assert_eq!(c["health"], "ok", "{c}");
    }
    let detail = s["components"][1]["detail"].as_str().unwrap();
    println!("speaker: {detail}");
    let undecodable: u64 = detail
        .split("agent audio: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no undecodable count in {detail:?}"));
    // The random bytes libopus accepts decode (to noise); the rest, and
    // every cut packet that is not still valid, are counted.
    assert!(undecodable >= 5, "{detail}");
    assert!(detail.contains("and 0 oversize"), "{detail}");
    let (_, metrics) = get(&format!("{}/metrics", d.url)).await;
    let value = |name: &str| -> Option<u64> {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
    };
    assert_eq!(
        value("kiosk_audio_packets_undecodable_total "),
        Some(undecodable)
    );
    assert_eq!(value("kiosk_audio_packets_oversize_total "), Some(0));
    assert_eq!(value("kiosk_audio_engine_failures_total "), Some(0));
    println!(
        "late packets: {:?}, concealed: {:?}",
        value("kiosk_audio_packets_late_total "),
        value("kiosk_audio_packets_concealed_total ")
    );
    drop(d);
}
