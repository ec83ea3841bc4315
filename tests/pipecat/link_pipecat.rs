//! Interop with a peer nobody here wrote: a Pipecat 1.14 bot
//! (tests/interop/bot.py: SmallWebRTC transport on aiortc, Silero VAD over
//! the frames it receives, Pipecat's own RTVI) that answers each user turn
//! with "Reply N. Thank you.", played from tests/interop/reply_48k.wav.
//! `kiosk-gateway call` must connect, get bot-ready, see the turn's
//! transcripts and hear the reply.
//!
//! The bot runs with Pipecat's stock `audio_idle_timeout` (1 s: a user's
//! speech ends when no audio frames arrive), because `call` sends nothing
//! between repetitions of its input; tests/pipecat/interop_run.rs holds the daemon
//! to the stricter rule that the wire never goes quiet. Its turns end 0.6 s
//! after its VAD stopped (Pipecat's smart-turn model, the default, waits
//! for more after espeak's flat "...check in please.").
//!
//! Needs the Pipecat venv that `.ci/setup` makes in `.venv-pipecat/`, or
//! KIOSK_PIPECAT_PYTHON=/path/to/venv/bin/python (see tests/interop/README.md).
//! Without either the test fails and says how to make it.

use crate::interop;
use crate::link_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use interop::PipecatBot;
use kiosk_gateway::audio::{PcmClip, SampleRate, write_wav};
use kiosk_gateway::testkit::media::{Encoder, FRAME_SAMPLES};
use link_support::{aligned_correlation, fixture};
use serde_json::Value;

/// `call` to `bot`, sending the 2.7 s utterance for 9 s with 4 s pauses;
/// returns its JSON summary and where it wrote what it heard.
fn call(bot: &PipecatBot, dir: &Path) -> (Value, PathBuf) {
    call_with(bot, dir, &[])
}

/// `call` with more arguments (`--config`).
fn call_with(bot: &PipecatBot, dir: &Path, extra: &[&str]) -> (Value, PathBuf) {
    let out_wav = dir.join("heard.wav");
    let output = Command::new(env!("CARGO_BIN_EXE_kiosk-gateway"))
        .args(extra)
        .args([
            "call",
            "--offer-url",
            &bot.url("/api/offer"),
            "--input",
            &format!("wav:{}", fixture("utterance_48k.wav").display()),
            "--output",
            &format!("wav:{}", out_wav.display()),
            "--seconds",
            "9",
            // Room for the bot's turn to end (1 s without audio, then 0.6 s)
            // and its answer before the utterance comes again.
            "--pause-ms",
            "4000",
            "--bind",
            "127.0.0.1:0",
            "--no-stun",
            "--json",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "call failed: {stderr}\nbot:\n{}",
        bot.notable_log()
    );
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    println!("{}", serde_json::to_string_pretty(&summary).unwrap());
    println!("{stderr}");
    println!("bot sent: {}", bot.sent_types().join(" "));
    (summary, out_wav)
}

/// `call` connected, and its transcript has the visitor's first utterance
/// and the bot's answer to it.
fn assert_first_turn(summary: &Value, bot: &PipecatBot) {
    let said =
        |role: &str, prefix: &str| {
            summary["transcripts"].as_array().unwrap().iter().any(|t| {
                t["role"] == role && t["text"].as_str().unwrap().trim().starts_with(prefix)
            })
        };
    assert_eq!(summary["connected"], true);
    assert!(said("user", "utterance 1, "), "{}", bot.notable_log());
    assert!(said("bot", "Reply 1."));
}

/// The bot sends its voice as `StockBotEncoder` encodes it, which is what
/// `bench` times the playout on and (through the loopback agent's encoder,
/// used here) how the loopback agent speaks: the
/// call's stream (silence, and the reply once per sentence the bot said),
/// encoded that way, comes to within 20% of the bytes the bot sent. The
/// kiosk's own encoding (mono wideband, 32 kbit/s) would come to a fifth.
fn assert_sent_as_stock_bot_encoder_encodes(summary: &Value) {
    let stats = &summary["stats"];
    let packets = stats["packets_received"].as_u64().unwrap() as usize;
    let received = stats["bytes_received"].as_u64().unwrap() as f64;
    let sentences = summary["transcripts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["role"] == "bot")
        .count();
    let mut stream = interop::reply().repeat(sentences);
    stream.resize(packets * FRAME_SAMPLES, 0);
    let mut encoder = Encoder::new().unwrap();
    let modelled: usize = stream
        .chunks_exact(FRAME_SAMPLES)
        .map(|frame| encoder.encode(frame).unwrap().len())
        .sum();
    let ratio = received / modelled as f64;
    println!(
        "the bot sent {received} bytes in {packets} packets; StockBotEncoder: {modelled} \
         ({sentences} sentences), ratio {ratio:.2}"
    );
    assert!(
        (0.8..=1.2).contains(&ratio),
        "the bot sent {received} bytes, StockBotEncoder {modelled} for the same audio"
    );
}

/// The bot's arguments: turns end on Pipecat's stock 1 s audio idle timeout.
const BOT_ARGS: [&str; 4] = [
    "--audio-idle-timeout",
    "1.0",
    "--turn-stop",
    "speech-timeout",
];

#[test]
fn call_reaches_a_pipecat_bot() {
    let _serial = interop::SERIAL.blocking_lock();
    let dir = tempfile::tempdir().unwrap();
    let bot = PipecatBot::start(dir.path(), &BOT_ARGS);
    let (summary, out_wav) = call(&bot, dir.path());

    assert_first_turn(&summary, &bot);
    assert!(
        summary["bot_ready_ms"].as_u64().is_some(),
        "bot-ready from Pipecat"
    );
    // 9 s of audio in 40 ms packets, the default: 225 (a few may be
    // dropped while the link comes up). aiortc's answer asks for no
    // packet length.
    assert_eq!(summary["packet_ms"], 40, "{summary}");
    assert_eq!(summary["stats"]["agent_max_packet_ms"], Value::Null);
    let sent = summary["stats"]["packets_sent"].as_u64().unwrap();
    assert!((200..=240).contains(&sent), "{sent} packets sent");
    assert!(summary["audio_sent_ms"].as_u64().unwrap() >= 8500);
    assert!(summary["audio_received_ms"].as_u64().unwrap() >= 1000);
    // Pipecat streams silence from the start: the bot's voice is its
    // reply, which comes after the 2.7 s utterance and its turn's end, two
    // sentences each "synthesized" as the 0.43 s reply WAV.
    link_support::assert_voice(&summary, 700..=1000, 2500);
    // The bot's RTCP reports on our audio (aiortc carries them in its
    // sender reports) are read: the loss out and round trip come from them.
    let stats = &summary["stats"];
    assert!(stats["remote_reports"].as_u64().unwrap() >= 1, "{stats}");
    assert!(stats["loss_out_recent"].as_f64().is_some(), "{stats}");
    assert!(stats["rtt_ms"].as_f64().is_some(), "{stats}");
    // aiortc answers with no `useinbandfec=1` and never decodes FEC: none
    // is sent, and the bot still understood every word (above).
    assert_eq!(stats["agent_decodes_fec"], false, "{stats}");
    assert_eq!(summary["packets_sent_with_fec"], 0, "{summary}");
    assert_sent_as_stock_bot_encoder_encodes(&summary);

    // The bot's reply is in what we heard.
    let reply = interop::reply();
    let heard = kiosk_gateway::testkit::media::read_wav(&out_wav).unwrap();
    let (corr, lag) = aligned_correlation(&reply, &heard, heard.len());
    println!(
        "reply correlation {corr:.3} at {:.3} s",
        lag as f64 / 48_000.0
    );
    assert!(corr >= 0.7, "reply correlation {corr}");
}

/// With `audio.opus_frame_ms = 20` the kiosk sends twice as many packets,
/// each 20 ms long, as browsers do: the stock bot (aiortc's decoder,
/// Silero over the frames it makes of them) hears and answers the visitor
/// as at 40 ms, and its own 20 ms packets play as before.
#[test]
fn call_with_20_ms_packets_reaches_a_pipecat_bot() {
    let _serial = interop::SERIAL.blocking_lock();
    let dir = tempfile::tempdir().unwrap();
    let bot = PipecatBot::start(dir.path(), &BOT_ARGS);
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\noffer_url = \"{}\"\n[audio]\nopus_frame_ms = 20\n",
            bot.url("/api/offer")
        ),
    )
    .unwrap();
    let config_arg = config.display().to_string();
    let (summary, out_wav) = call_with(&bot, dir.path(), &["--config", &config_arg]);

    assert_first_turn(&summary, &bot);
    link_support::assert_voice(&summary, 700..=1000, 2500);
    // 9 s of audio in 20 ms packets: 450.
    assert_eq!(summary["packet_ms"], 20, "{summary}");
    let sent = summary["stats"]["packets_sent"].as_u64().unwrap();
    assert!((400..=470).contains(&sent), "{sent} packets sent");
    assert!(summary["audio_sent_ms"].as_u64().unwrap() >= 8500);

    let reply = interop::reply();
    let heard = kiosk_gateway::testkit::media::read_wav(&out_wav).unwrap();
    let (corr, _) = aligned_correlation(&reply, &heard, heard.len());
    assert!(corr >= 0.7, "reply correlation {corr}");
}

/// A stock bot whose speech fails: it answers in text and streams audio,
/// but its "synthesized" reply is silence. `call` says it heard no voice,
/// where the audio counters alone would look healthy.
#[test]
fn call_hears_no_voice_from_a_pipecat_bot_whose_speech_is_silent() {
    let _serial = interop::SERIAL.blocking_lock();
    let dir = tempfile::tempdir().unwrap();
    let silent = dir.path().join("silent_reply.wav");
    let clip = PcmClip {
        rate: SampleRate::OPUS,
        samples: vec![0.0; interop::reply().len()],
    };
    write_wav(&silent, &clip).unwrap();
    let mut args = BOT_ARGS.to_vec();
    let silent_arg = silent.display().to_string();
    args.extend(["--reply", &silent_arg]);
    let bot = PipecatBot::start(dir.path(), &args);
    let (summary, _) = call(&bot, dir.path());

    assert_first_turn(&summary, &bot);
    assert!(summary["audio_received_ms"].as_u64().unwrap() >= 5000);
    assert_eq!(summary["voice_received_ms"], 0);
    assert_eq!(summary["first_voice_received_ms"], Value::Null);
}
