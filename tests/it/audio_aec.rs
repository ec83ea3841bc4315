//! The visitor talking over the bot in a simulated kiosk room: the bot's
//! voice through a clipping speaker and a 200 ms reverberant room into the
//! microphone, the visitor's four utterances over it. With the echo
//! canceller the capture path finds the visitor's utterances where they
//! are and none in the bot's echo.

use std::path::{Path, PathBuf};

use kiosk_gateway::audio::cli::{SegmentReport, vad_clip, vad_file};
use kiosk_gateway::audio::echo::room::{Conversation, Room};
use kiosk_gateway::audio::{AudioSettings, Millis, PcmClip, SampleRate, VadSettings, read_wav};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/audio")
        .join(name)
}

/// The bot's reply without its leading and trailing second of silence,
/// so that the bot talks without a break when it is repeated.
fn bot_speech() -> Vec<f32> {
    let clip = read_wav(&fixture("bot_reference_16k.wav")).unwrap();
    clip.samples[16_000..clip.samples.len() - 16_000].to_vec()
}

struct Outcome {
    truth: Vec<SegmentReport>,
    found: Vec<SegmentReport>,
    conversation: Conversation,
    erle_db: Option<f32>,
}

fn talk_over_the_bot(ser_db: f32, audio: &AudioSettings) -> Outcome {
    let visitor = read_wav(&fixture("multi_utterance_16k.wav")).unwrap();
    let conversation = Conversation::new(
        &Room::default(),
        &bot_speech(),
        &visitor.samples,
        ser_db,
        Millis(10_000),
        Millis(8_000),
    );
    let shift = conversation.visitor_from.0;
    let truth = vad_file(&fixture("multi_utterance_16k.wav"), &VadSettings::default())
        .unwrap()
        .segments
        .into_iter()
        .map(|s| SegmentReport {
            start_ms: s.start_ms + shift,
            end_ms: s.end_ms + shift,
        })
        .collect();
    let clip = |samples: &[f32]| PcmClip {
        rate: SampleRate::VAD,
        samples: samples.to_vec(),
    };
    let report = vad_clip(
        &clip(&conversation.mic),
        Some(&clip(&conversation.speaker)),
        audio,
        &VadSettings::default(),
    )
    .unwrap();
    Outcome {
        truth,
        found: report.segments,
        erle_db: report.echo.and_then(|e| e.erle_db),
        conversation,
    }
}

/// Utterances whose onset is within `tolerance_ms` of a true one.
fn detected(o: &Outcome, tolerance_ms: u32) -> usize {
    o.truth
        .iter()
        .filter(|t| {
            o.found
                .iter()
                .any(|f| f.start_ms.abs_diff(t.start_ms) <= tolerance_ms)
        })
        .count()
}

/// Utterances that start where the visitor is silent: the bot's echo.
fn started_by_echo(o: &Outcome) -> Vec<SegmentReport> {
    o.found
        .iter()
        .filter(|f| {
            !o.truth
                .iter()
                .any(|t| f.start_ms + 100 >= t.start_ms && f.start_ms <= t.end_ms)
        })
        .copied()
        .collect()
}

#[test]
fn at_0_db_every_utterance_over_the_bot_is_heard_and_the_echo_never_starts_one() {
    let o = talk_over_the_bot(0.0, &AudioSettings::default());
    eprintln!(
        "truth {:?}\nfound {:?}\nERLE {:?}",
        o.truth, o.found, o.erle_db
    );
    assert!(o.conversation.duration() > Millis(30_000));
    assert_eq!(o.found.len(), o.truth.len(), "found {:?}", o.found);
    // The canceller's suppressor holds back a soft first phoneme under
    // loud echo for up to ~110 ms ("th" of "thank you" under echo 13 dB
    // louder); three of four onsets are within 100 ms.
    assert_eq!(detected(&o, 150), o.truth.len(), "found {:?}", o.found);
    assert!(detected(&o, 100) >= 3, "found {:?}", o.found);
    assert_eq!(started_by_echo(&o), vec![]);
}

#[test]
fn at_minus_6_db_the_visitor_is_still_heard() {
    let o = talk_over_the_bot(-6.0, &AudioSettings::default());
    eprintln!(
        "truth {:?}\nfound {:?}\nERLE {:?}",
        o.truth, o.found, o.erle_db
    );
    // As at 0 dB, the suppressor holds back a soft first phoneme ("th")
    // under loud echo; `bench` gives the rate over more placements.
    assert_eq!(detected(&o, 150), o.truth.len(), "found {:?}", o.found);
    assert!(detected(&o, 100) >= 3, "found {:?}", o.found);
    assert_eq!(started_by_echo(&o), vec![]);
}

#[test]
fn without_the_level_gate_residual_echo_starts_utterances() {
    // The gate behind the canceller is what keeps the residual out: the
    // VAD alone takes it for speech in the bot-only stretches.
    let audio = AudioSettings {
        echo_gate: false,
        ..AudioSettings::default()
    };
    let o = talk_over_the_bot(0.0, &audio);
    assert!(!started_by_echo(&o).is_empty(), "found {:?}", o.found);
}

#[test]
fn without_the_canceller_the_level_gate_misses_a_visitor_as_loud_as_the_echo() {
    let audio = AudioSettings {
        echo_cancel: false,
        ..AudioSettings::default()
    };
    let o = talk_over_the_bot(0.0, &audio);
    eprintln!("truth {:?}\nfound {:?}", o.truth, o.found);
    assert!(detected(&o, 100) < o.truth.len(), "found {:?}", o.found);
}

/// `kiosk-gateway vad --json` over the fixture `mic`, with the fixture
/// `reference` as what the speaker played when given.
fn vad_cli(mic: &str, reference: Option<&str>) -> serde_json::Value {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kiosk-gateway"));
    cmd.args(["vad", "--json", "--input"]).arg(fixture(mic));
    if let Some(reference) = reference {
        cmd.arg("--reference").arg(fixture(reference));
    }
    let out = cmd.env_remove("KIOSK_GATEWAY_CONFIG").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
}

#[test]
fn vad_with_the_speaker_reference_finds_no_visitor_in_the_bots_echo() {
    let run = |reference: bool| {
        vad_cli(
            "echo_mic_16k.wav",
            reference.then_some("bot_reference_16k.wav"),
        )
    };
    // Alone, the VAD takes the bot's echo for a visitor.
    let alone = run(false);
    assert_eq!(alone["segments"].as_array().unwrap().len(), 1, "{alone}");
    assert!(alone.get("echo").is_none(), "{alone}");
    let cleaned = run(true);
    assert_eq!(cleaned["segments"], serde_json::json!([]), "{cleaned}");
    // The fixture's echo comes back 40 ms after the reference.
    let delay = cleaned["echo"]["delay_ms"].as_u64().unwrap();
    assert!((20..=60).contains(&delay), "{cleaned}");
    assert!(
        cleaned["echo"]["erle_db"].as_f64().unwrap() > 3.0,
        "{cleaned}"
    );
}

#[test]
fn vad_with_the_speaker_reference_hears_the_visitor_over_the_bot() {
    // fixtures/audio/room_mic_16k.wav: the visitor's four utterances at
    // 0 dB over the bot's echo in the simulated room, 6 s into it.
    let run = |reference: bool| {
        vad_cli(
            "room_mic_16k.wav",
            reference.then_some("room_speaker_16k.wav"),
        )
    };
    // Alone, the VAD hears one utterance from the first echo to the end.
    let alone = run(false);
    assert_eq!(alone["segments"].as_array().unwrap().len(), 1, "{alone}");
    let cleaned = run(true);
    let said = [7000, 11230, 14690, 17110];
    let heard = cleaned["segments"].as_array().unwrap();
    assert_eq!(heard.len(), said.len(), "{cleaned}");
    for (h, s) in heard.iter().zip(said) {
        let start = h["start_ms"].as_i64().unwrap();
        assert!((start - s).abs() <= 200, "{cleaned}");
    }
    assert!(
        cleaned["echo"]["erle_db"].as_f64().unwrap() > 3.0,
        "{cleaned}"
    );
}
