//! `kiosk-gateway selftest` end to end, with files standing in for the
//! devices: the speaker file of one run, delayed and attenuated, is the
//! microphone of the next (the room). A silent microphone and a missing
//! speaker each fail with a clear verdict and a non-zero exit.

use std::path::Path;
use std::process::Output;

use kiosk_gateway::audio::{PcmClip, SampleRate, read_wav, write_wav};
use serde_json::Value;

use crate::common::{command, write_config};

fn selftest(dir: &Path, input: &str, output: &str) -> (Output, Value) {
    let config = write_config(
        dir,
        &format!("[audio]\ninput = \"{input}\"\noutput = \"{output}\"\n"),
    );
    let out = command(&config)
        .args(["selftest", "--json"])
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, report)
}

/// What the speaker played, `delay_ms` later and `gain_db` quieter, over
/// a faint steady hiss.
fn room(speaker: &Path, mic: &Path, delay_ms: usize, gain_db: f32) {
    let played = read_wav(speaker).unwrap();
    assert_eq!(played.rate, SampleRate::OPUS);
    let gain = 10f32.powf(gain_db / 20.0);
    let delay = delay_ms * 48;
    let mut seed = 0x9e37_79b9_u32;
    let samples = (0..played.samples.len() + delay)
        .map(|i| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let hiss = (seed as f32 / u32::MAX as f32 - 0.5) * 0.002;
            let echo = i
                .checked_sub(delay)
                .and_then(|j| played.samples.get(j))
                .map_or(0.0, |s| s * gain);
            echo + hiss
        })
        .collect();
    write_wav(
        mic,
        &PcmClip {
            rate: SampleRate::OPUS,
            samples,
        },
    )
    .unwrap();
}

#[test]
fn the_self_test_hears_its_sweep_through_the_room_and_fails_clearly_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let silence = dir.path().join("silence.wav");
    write_wav(
        &silence,
        &PcmClip {
            rate: SampleRate::OPUS,
            samples: vec![0.0; 4800],
        },
    )
    .unwrap();
    let speaker = dir.path().join("speaker.wav");

    // A microphone that gives only silence: the speaker played, nothing heard.
    let (out, silent) = selftest(
        dir.path(),
        &format!("wav:{}", silence.display()),
        &format!("wav:{}", speaker.display()),
    );
    println!("silent microphone: {silent:#}");
    assert!(!out.status.success());
    assert_eq!(silent["passed"], false);
    assert_eq!(silent["speaker"]["ok"], true);
    assert_eq!(silent["microphone"]["ok"], false);
    assert!(
        silent["summary"].as_str().unwrap().contains("only silence"),
        "{silent}"
    );

    // The room: what that run's speaker played comes back 150 ms later, 20 dB down.
    let mic = dir.path().join("room.wav");
    room(&speaker, &mic, 150, -20.0);
    let (out, working) = selftest(
        dir.path(),
        &format!("wav:{}", mic.display()),
        &format!("wav:{}", dir.path().join("speaker2.wav").display()),
    );
    println!("working loop: {working:#}");
    assert!(out.status.success(), "{working}");
    assert_eq!(working["passed"], true);
    // Both runs start their sweep a few ms after opening the files; the
    // difference between the two starts moves the measured delay a little.
    let delay = working["loop_delay_ms"].as_f64().unwrap();
    assert!((110.0..=190.0).contains(&delay), "{working}");
    let level = working["loop_level_dbfs"].as_f64().unwrap();
    assert!((-33.0..=-25.0).contains(&level), "{working}");
    let floor = working["noise_floor_dbfs"].as_f64().unwrap();
    assert!((-75.0..=-60.0).contains(&floor), "{working}");

    // The same room with no speaker configured: nothing played.
    let (out, dead) = selftest(dir.path(), &format!("wav:{}", mic.display()), "none");
    println!("dead speaker: {dead:#}");
    assert!(!out.status.success());
    assert_eq!(dead["speaker"]["ok"], false);
    assert!(
        dead["summary"]
            .as_str()
            .unwrap()
            .starts_with("Failed: speaker"),
        "{dead}"
    );
    // The text form names each part.
    let config = write_config(dir.path(), "[audio]\ninput = \"none\"\noutput = \"none\"\n");
    let out = command(&config).arg("selftest").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("speaker     FAILED") && text.contains("microphone  FAILED"),
        "{text}"
    );
}
