//! `kiosk-gateway call --json` against the loopback agent on 127.0.0.1:
//! any PCM WAV goes in, the stream is continuous (a packet every 40 ms for
//! the whole call), and the agent's audio comes back at the input's rate.

use crate::link_support;

use std::path::{Path, PathBuf};

use kiosk_gateway::audio::{self, SampleRate};
use kiosk_gateway::testkit::media;
use kiosk_gateway::testkit::{LoopbackAgent, LoopbackAgentConfig};
use link_support::fixture;
use serde_json::Value;

/// The visitor fixture: 16 kHz mono 16-bit, u1 ("Hello there, I would like
/// some help please", 2730 ms) from 1000 ms, u2 from 5230 ms.
fn visitor() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/audio/multi_utterance_16k.wav")
}

async fn start_agent() -> LoopbackAgent {
    let reply = media::read_wav(&fixture("reply_48k.wav")).unwrap();
    LoopbackAgent::start(LoopbackAgentConfig::new(reply))
        .await
        .unwrap()
}

/// Runs `call --json` for `seconds`; returns the summary and stderr.
async fn call(agent: &LoopbackAgent, input: &Path, output: &Path, seconds: u32) -> (Value, String) {
    let (summary, stderr) = link_support::call_json(vec![
        "--offer-url".into(),
        agent.offer_url().to_string(),
        "--input".into(),
        format!("wav:{}", input.display()),
        "--output".into(),
        format!("wav:{}", output.display()),
        "--seconds".into(),
        seconds.to_string(),
        "--bind".into(),
        "127.0.0.1:0".into(),
        "--no-stun".into(),
        "--json".into(),
    ])
    .await;
    println!("{}", serde_json::to_string_pretty(&summary).unwrap());
    (summary, stderr)
}

/// The stream never stopped: the whole call went out as audio, one packet
/// per 40 ms (the default; pauses included), and every packet reached the
/// wire.
fn assert_continuous(summary: &Value, seconds: u32) {
    assert_eq!(summary["packet_ms"], 40);
    let call_ms = u64::from(seconds) * 1000;
    let sent_ms = summary["audio_sent_ms"].as_u64().unwrap();
    assert!(
        sent_ms + 200 >= call_ms && sent_ms <= call_ms + 100,
        "{sent_ms} ms of audio sent in a {call_ms} ms call"
    );
    let packets = summary["stats"]["packets_sent"].as_u64().unwrap();
    let expected = u64::from(seconds) * 25;
    assert!(
        packets.abs_diff(expected) <= 5,
        "{packets} packets in {seconds} s, expected about {expected}"
    );
    assert!(packets.abs_diff(sent_ms / 40) <= 1, "{packets} packets");
}

/// The agent heard u1 at its real length (a wrong rate would stretch or
/// squeeze it) and answered.
fn assert_heard_u1(summary: &Value) {
    assert_eq!(summary["connected"], true);
    assert!(summary["bot_ready_ms"].as_u64().is_some());
    let transcripts = summary["transcripts"].as_array().unwrap();
    let first = transcripts[0]["text"].as_str().unwrap();
    assert_eq!(transcripts[0]["role"], "user");
    let seconds: f64 = first
        .strip_prefix("utterance 1 (")
        .and_then(|t| t.strip_suffix(" s)"))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("first transcript {first:?}"));
    assert!((seconds - 2.73).abs() <= 0.4, "u1 heard as {seconds} s");
    assert!(transcripts.iter().any(|t| t["role"] == "bot"));
    assert!(summary["audio_received_ms"].as_u64().unwrap() >= 500);
}

/// The output WAV is mono 16-bit at `rate` and holds what was received.
fn assert_output(path: &Path, rate: u32, summary: &Value) {
    let reader = hound::WavReader::open(path).unwrap();
    let spec = reader.spec();
    assert_eq!(
        (spec.sample_rate, spec.channels, spec.bits_per_sample),
        (rate, 1, 16),
        "{spec:?}"
    );
    let samples: Vec<i16> = reader.into_samples().map(Result::unwrap).collect();
    let received_ms = summary["audio_received_ms"].as_u64().unwrap();
    let expected = received_ms * u64::from(rate) / 1000;
    assert!(
        (samples.len() as u64).abs_diff(expected) <= u64::from(rate) / 50,
        "{} samples for {received_ms} ms at {rate} Hz",
        samples.len()
    );
    let loud = samples.iter().filter(|s| s.unsigned_abs() > 1000).count();
    assert!(
        loud > rate as usize / 10,
        "the reply is in {path:?}: {loud}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_streams_a_16_khz_mono_file() {
    let agent = start_agent().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("heard.wav");
    let (summary, _) = call(&agent, &visitor(), &out, 7).await;
    assert_heard_u1(&summary);
    assert_continuous(&summary, 7);
    assert_output(&out, 16_000, &summary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_streams_a_44_1_khz_stereo_24_bit_file() {
    // The visitor fixture at 44.1 kHz, left channel as is, right at half
    // level (the mono mix is 3/4 of it), 24-bit: the first 5 s.
    let clip = audio::read_wav(&visitor()).unwrap();
    let samples = audio::resample_clip(&clip.samples, clip.rate, SampleRate(44_100)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("visitor_44k1_stereo.wav");
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 44_100,
        bits_per_sample: 24,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&input, spec).unwrap();
    let full = f32::from(i16::MAX) * 256.0;
    for s in &samples[..44_100 * 5] {
        w.write_sample((s * full) as i32).unwrap();
        w.write_sample((s * 0.5 * full) as i32).unwrap();
    }
    w.finalize().unwrap();

    let agent = start_agent().await;
    let out = dir.path().join("heard.wav");
    let (summary, _) = call(&agent, &input, &out, 7).await;
    assert_heard_u1(&summary);
    assert_continuous(&summary, 7);
    assert_output(&out, 44_100, &summary);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_json_reports_the_conversation() {
    let agent = start_agent().await;
    let dir = tempfile::tempdir().unwrap();
    let out_wav = dir.path().join("heard.wav");
    let (summary, stderr) = call(&agent, &fixture("utterance_48k.wav"), &out_wav, 7).await;

    assert_eq!(summary["connected"], true);
    assert!(summary["bot_ready_ms"].as_u64().is_some());
    assert_continuous(&summary, 7);
    assert!(summary["audio_received_ms"].as_u64().unwrap() >= 1000);
    // The agent streams silence from the start; its voice is the 1.5 s
    // reply, after the 2.7 s utterance.
    link_support::assert_voice(&summary, 500..=1600, 2000);
    let transcripts = summary["transcripts"].as_array().unwrap();
    assert_eq!(transcripts[0]["role"], "user");
    assert!(
        transcripts[0]["text"]
            .as_str()
            .unwrap()
            .starts_with("utterance 1")
    );
    assert!(transcripts.iter().any(|t| t["role"] == "bot"));
    assert!(summary["stats"]["packets_received"].as_u64().unwrap() > 0);
    // The loopback agent's answer declares `useinbandfec=1`, and its
    // playout decodes FEC: the speech goes out with it.
    assert_eq!(summary["stats"]["agent_decodes_fec"], true);
    assert!(
        summary["packets_sent_with_fec"].as_u64().unwrap() > 20,
        "{summary}"
    );
    // events went to stderr as JSON lines
    assert!(stderr.lines().any(|l| l.contains(r#""type":"bot-ready""#)));
    // a 48 kHz input gives a 48 kHz output
    let heard = media::read_wav(&out_wav).unwrap();
    assert!(
        heard.len() >= 48_000,
        "reply audio written to the output WAV"
    );
}

/// A bot whose speech fails still answers and streams audio, all of it
/// silence: `call` says it heard no voice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_reports_no_voice_from_a_bot_that_sends_only_silence() {
    let agent = LoopbackAgent::start(LoopbackAgentConfig::new(vec![0; 48_000]))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out_wav = dir.path().join("heard.wav");
    let (summary, _) = call(&agent, &fixture("utterance_48k.wav"), &out_wav, 6).await;
    assert!(
        summary["transcripts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["role"] == "bot")
    );
    assert!(summary["audio_received_ms"].as_u64().unwrap() >= 3000);
    assert_eq!(summary["voice_received_ms"], 0);
    assert_eq!(summary["first_voice_received_ms"], Value::Null);
}
