//! The echo canceller's settings in `[audio]`: documented defaults, and a
//! bad value named with its file, key and problem.

use std::path::Path;

use kiosk_gateway::audio::NoiseSuppression;
use kiosk_gateway::config::{Config, Env};

fn example() -> (std::path::PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/kiosk-gateway.toml");
    let src = std::fs::read_to_string(&path).unwrap();
    (path, src)
}

#[test]
fn the_documented_example_turns_the_canceller_on_without_suppression_or_gain() {
    let (path, src) = example();
    let config =
        Config::parse(&path, &src, &Env::new(Vec::<(String, String)>::new(), None)).unwrap();
    assert!(config.audio.echo_cancel);
    assert_eq!(config.audio.noise_suppression, NoiseSuppression::Off);
    assert!(!config.audio.auto_gain);
    assert!(config.audio.echo_gate);
}

#[test]
fn a_bad_noise_suppression_level_names_the_file_the_key_and_the_choices() {
    let (path, src) = example();
    let src = src.replace(
        "noise_suppression = \"off\"",
        "noise_suppression = \"loud\"",
    );
    let env = Env::new(Vec::<(String, String)>::new(), None);
    let problems = Config::parse(&path, &src, &env).unwrap_err().problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    let p = &problems[0];
    assert!(p.contains("kiosk-gateway.toml:"), "{p}");
    assert!(p.contains("audio.noise_suppression"), "{p}");
    assert!(p.contains("\"moderate\"") && p.contains("\"loud\""), "{p}");

    let env = Env::new([("KIOSK_GATEWAY_AUDIO_ECHO_CANCEL", "maybe")], None);
    let problems = Config::parse(&path, &example().1, &env)
        .unwrap_err()
        .problems();
    assert!(
        problems.iter().any(|p| p.contains("audio.echo_cancel")),
        "{problems:?}"
    );
}
