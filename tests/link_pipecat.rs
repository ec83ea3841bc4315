//! Interop with a peer nobody here wrote: a Pipecat bot (SmallWebRTC
//! transport on aiortc, tests/interop/bot.py) that echoes audio and speaks
//! RTVI. `kiosk-gateway call` must connect, get bot-ready and hear the echo.
//!
//! Needs the Pipecat venv that `.ci/setup` makes in `.venv-pipecat/`, or
//! KIOSK_PIPECAT_PYTHON=/path/to/venv/bin/python (see tests/interop/README.md).
//! Without either the test fails and says how to make it.

mod link_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use kiosk_gateway::link::media;
use link_support::{aligned_correlation, fixture};
use serde_json::Value;

/// Kills the bot even when an assertion fails.
struct Bot(Child);

impl Drop for Bot {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn call_reaches_a_pipecat_bot() {
    let python = std::env::var("KIOSK_PIPECAT_PYTHON").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/.venv-pipecat/bin/python").to_string()
    });
    assert!(
        std::path::Path::new(&python).exists(),
        "no Pipecat venv at {python}: run `bash .ci/setup` or set KIOSK_PIPECAT_PYTHON \
         to a venv made from tests/interop/requirements.txt"
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/bot.py");
    let mut bot = Bot(Command::new(python)
        .args([script, "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the Pipecat bot"));
    let mut line = String::new();
    BufReader::new(bot.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line
        .strip_prefix("LISTENING ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("bot did not start: {line:?}"));

    let out_wav = std::env::temp_dir().join(format!("kiosk-pipecat-{}.wav", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_kiosk-gateway"))
        .args([
            "call",
            "--offer-url",
            &format!("http://127.0.0.1:{port}/api/offer"),
            "--input",
            &format!("wav:{}", fixture("utterance_48k.wav").display()),
            "--output",
            &format!("wav:{}", out_wav.display()),
            "--seconds",
            "9",
            "--bind",
            "127.0.0.1:0",
            "--no-stun",
            "--json",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "call failed: {stderr}");
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    println!("{}", serde_json::to_string_pretty(&summary).unwrap());
    println!("{stderr}");

    assert_eq!(summary["connected"], true);
    assert!(
        summary["bot_ready_ms"].as_u64().is_some(),
        "bot-ready from Pipecat"
    );
    assert!(stderr.contains(r#""type":"server-message""#));
    assert!(summary["audio_received_ms"].as_u64().unwrap() >= 3000);

    // The echo of (a later repetition of) the utterance is in what we heard.
    let utterance = media::read_wav(&fixture("utterance_48k.wav")).unwrap();
    let heard = media::read_wav(&out_wav).unwrap();
    std::fs::remove_file(&out_wav).ok();
    let (corr, lag) = aligned_correlation(&utterance, &heard, heard.len());
    println!(
        "echo correlation {corr:.3} at {:.3} s",
        lag as f64 / 48_000.0
    );
    assert!(corr >= 0.7, "echo correlation {corr}");
}
