//! Helpers for the link tests: fixtures and signal comparison.

use std::path::PathBuf;

use kiosk_gateway::link::LinkSettings;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/link")
        .join(name)
}

/// Runs `kiosk-gateway call` with `args` (without the config file the
/// environment may name) off the async runtime, requires it to succeed, and
/// returns its `--json` summary and its stderr.
pub async fn call_json(args: Vec<String>) -> (serde_json::Value, String) {
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_kiosk-gateway"))
            .arg("call")
            .args(&args)
            .env_remove("KIOSK_GATEWAY_CONFIG")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "call failed: {stderr}");
    (serde_json::from_slice(&output.stdout).unwrap(), stderr)
}

/// The agent streamed silence from the call's start and spoke later: of
/// the audio `call`'s summary says it received, `voice_ms` was voice, at
/// least a second was not, and the voice began `voice_after_ms` or more
/// after the first packet.
pub fn assert_voice(
    summary: &serde_json::Value,
    voice_ms: std::ops::RangeInclusive<u64>,
    voice_after_ms: u64,
) {
    let voice = summary["voice_received_ms"].as_u64().unwrap();
    assert!(voice_ms.contains(&voice), "{voice} ms of the agent's voice");
    assert!(voice + 1000 <= summary["audio_received_ms"].as_u64().unwrap());
    let first_audio = summary["first_audio_received_ms"].as_u64().unwrap();
    let first_voice = summary["first_voice_received_ms"].as_u64().unwrap();
    assert!(
        first_voice >= first_audio + voice_after_ms,
        "voice at {first_voice} ms, first packet at {first_audio} ms"
    );
}

/// Link settings for 127.0.0.1 only: no STUN, loopback sockets.
pub fn local_settings() -> LinkSettings {
    LinkSettings {
        ice_servers: vec![],
        udp_bind: vec!["127.0.0.1:0".into()],
        ..LinkSettings::default()
    }
}

/// Normalized correlation of `a` with `b` shifted by `lag`; 0 unless at
/// least 90% of `a` overlaps `b`, so a sliver of overlap cannot look like a match.
fn corr_at(a: &[f64], b: &[f64], lag: isize) -> f64 {
    let (mut xy, mut xx, mut yy) = (0.0, 0.0, 0.0);
    let mut overlap = 0usize;
    for (i, &x) in a.iter().enumerate() {
        let j = i as isize + lag;
        if j < 0 || j as usize >= b.len() {
            continue;
        }
        let y = b[j as usize];
        overlap += 1;
        xy += x * y;
        xx += x * x;
        yy += y * y;
    }
    if overlap * 10 < a.len() * 9 || xx == 0.0 || yy == 0.0 {
        0.0
    } else {
        xy / (xx * yy).sqrt()
    }
}

fn decimate(x: &[i16], factor: usize) -> Vec<f64> {
    x.chunks(factor)
        .map(|c| c.iter().map(|&s| f64::from(s)).sum::<f64>() / c.len() as f64)
        .collect()
}

/// Best normalized cross-correlation of `recorded` against `reference`
/// within ±`max_lag` samples: a coarse search on 48x-decimated signals
/// (1 kHz, enough for speech below 500 Hz), then a full-rate one around the
/// best coarse lag. Returns (corr, lag).
pub fn aligned_correlation(reference: &[i16], recorded: &[i16], max_lag: usize) -> (f64, isize) {
    const F: usize = 48;
    let (ra, rb) = (decimate(reference, F), decimate(recorded, F));
    let coarse_max = (max_lag / F) as isize;
    let coarse = (-coarse_max..=coarse_max)
        .map(|lag| (corr_at(&ra, &rb, lag), lag))
        .max_by(|x, y| x.0.total_cmp(&y.0))
        .unwrap()
        .1;
    let a: Vec<f64> = reference.iter().map(|&s| f64::from(s)).collect();
    let b: Vec<f64> = recorded.iter().map(|&s| f64::from(s)).collect();
    let centre = coarse * F as isize;
    (centre - 2 * F as isize..=centre + 2 * F as isize)
        .map(|lag| (corr_at(&a, &b, lag), lag))
        .max_by(|x, y| x.0.total_cmp(&y.0))
        .unwrap()
}
