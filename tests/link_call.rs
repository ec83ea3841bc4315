//! `kiosk-gateway call --json` against the loopback agent on 127.0.0.1.

mod link_support;

use kiosk_gateway::link::agent::{LoopbackAgent, LoopbackAgentConfig};
use kiosk_gateway::link::media;
use link_support::fixture;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_json_reports_the_conversation() {
    let reply = media::read_wav(&fixture("reply_48k.wav")).unwrap();
    let agent = LoopbackAgent::start(LoopbackAgentConfig::new(reply))
        .await
        .unwrap();
    let out_wav = std::env::temp_dir().join(format!("kiosk-call-{}.wav", std::process::id()));
    let args = vec![
        "call".to_owned(),
        "--offer-url".into(),
        agent.offer_url().to_string(),
        "--input".into(),
        format!("wav:{}", fixture("utterance_48k.wav").display()),
        "--output".into(),
        format!("wav:{}", out_wav.display()),
        "--seconds".into(),
        "7".into(),
        "--bind".into(),
        "127.0.0.1:0".into(),
        "--no-stun".into(),
        "--json".into(),
    ];
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_kiosk-gateway"))
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "call failed: {stderr}");
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    println!("{}", serde_json::to_string_pretty(&summary).unwrap());

    assert_eq!(summary["connected"], true);
    assert!(summary["bot_ready_ms"].as_u64().is_some());
    assert!(summary["audio_sent_ms"].as_u64().unwrap() >= 2700);
    assert!(summary["audio_received_ms"].as_u64().unwrap() >= 1000);
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
    // events went to stderr as JSON lines
    assert!(stderr.lines().any(|l| l.contains(r#""type":"bot-ready""#)));
    let heard = media::read_wav(&out_wav).unwrap();
    assert!(
        heard.len() >= 48_000,
        "reply audio written to the output WAV"
    );
    std::fs::remove_file(out_wav).ok();
}
