//! The visitor talking over the stock Pipecat bot while the kiosk's
//! microphone hears its own loudspeaker: the daemon (`run`) on file-backed
//! ALSA devices with a simulated room between them
//! (tests/support/room_feedback.rs: a clipping speaker, a 30 ms direct path,
//! a 200 ms reverberant tail), against the stock bot (tests/interop/bot.py),
//! whose Silero VAD decides from the frames the gateway sends what the
//! visitor said.
//!
//! The visitor asks something; the bot answers at length (its reply is a
//! 10 s recording, said twice); four seconds into the answer the visitor
//! speaks again, as loud at the microphone as the bot's echo. With the
//! echo canceller the bot hears exactly the visitor's two utterances, the
//! second whole, and nothing of its own voice. Without it (canceller and
//! gate off) the bot hears itself: the echo really reaches the microphone.

use crate::common;
use crate::interop;

use std::path::Path;
use std::time::Duration;

use common::{Daemon, U1_MS, U2_MS, visitor_clip};
use interop::{PipecatBot, SERIAL};

#[path = "../support/alsa_files.rs"]
mod alsa_files;
#[path = "../support/room_feedback.rs"]
mod room_feedback;
#[path = "../support/room_visitor.rs"]
mod room_visitor;
use alsa_files::{file_devices, mkfifo};
use room_feedback::RoomThread;
use room_visitor::{cut_in_said, question_then_cut_in, room_audio};

const BOT_REPLY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/audio/bot_reference_16k.wav"
);
/// How long the bot has been answering when the visitor cuts in: long
/// enough for the canceller to have converged on the room.
const CUT_IN_AFTER: Duration = Duration::from_secs(4);
/// How long the test listens after the visitor's second utterance.
const AFTER_CUT_IN: Duration = Duration::from_secs(4);

/// Lengths in seconds of the segments the bot's speech recogniser was
/// given, in order: one per utterance its VAD heard.
fn heard_by_bot(bot: &PipecatBot) -> Vec<f64> {
    bot.stderr()
        .lines()
        .filter(|l| l.contains("STT:"))
        .filter_map(|l| {
            let secs = l.rsplit_once("(segment ")?.1.strip_suffix(" s)")?;
            secs.parse().ok()
        })
        .collect()
}

/// One conversation in the room; what the bot heard, and the log to show
/// when that is wrong.
async fn converse(echo_cancel: bool) -> (Vec<f64>, String) {
    let dir = tempfile::tempdir().unwrap();
    let (alsa_path, _) = file_devices(dir.path());
    mkfifo(&dir.path().join("mic.raw"));
    mkfifo(&dir.path().join("speaker.raw"));

    let reply = kiosk_gateway::audio::read_wav(Path::new(BOT_REPLY)).unwrap();
    let (parts, _) = question_then_cut_in(
        &reply.samples,
        &visitor_clip(U1_MS.0, U1_MS.1),
        &visitor_clip(U2_MS.0, U2_MS.1),
        CUT_IN_AFTER,
    );
    let room = RoomThread::start(dir.path(), parts);

    let bot = PipecatBot::start(
        dir.path(),
        &[&crate::interop_run::BOT_ARGS[..], &["--reply", BOT_REPLY]].concat(),
    );
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[kiosk]\nid = \"test-kiosk\"\n{}\
             [agent]\noffer_url = \"{}\"\nstun_urls = []\nudp_bind = \"127.0.0.1:0\"\n\
             [session]\nidle_timeout = \"5s\"\n\
             [store]\npath = \"kiosk.db\"\n\
             [status]\nlisten = \"127.0.0.1:0\"\n\
             [log]\ntarget = \"stderr\"\nlevel = \"info\"\n",
            room_audio(echo_cancel),
            bot.url("/api/offer")
        ),
    )
    .unwrap();
    let d = Daemon::start(dir.path(), &config, &[("ALSA_CONFIG_PATH", &alsa_path)]);

    let u2_len = Duration::from_millis(u64::from(U2_MS.1 - U2_MS.0));
    let cut_in = cut_in_said(&room, u2_len, AFTER_CUT_IN, Duration::from_secs(60)).await;
    let heard = heard_by_bot(&bot);
    let log = format!(
        "echo_cancel {echo_cancel}: the visitor cut in: {}; room wrote {} s\n\
         bot heard {heard:?}\nbot log:\n{}\ndaemon:\n{}",
        cut_in,
        room.written() / 48_000,
        bot.notable_log(),
        d.stderr()
    );
    drop(d);
    room.stop();
    (heard, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_its_own_echo_the_bot_hears_the_visitor_and_not_itself() {
    let _serial = SERIAL.lock().await;
    let u2_secs = f64::from(U2_MS.1 - U2_MS.0) / 1000.0;

    let (heard, log) = converse(true).await;
    println!("{log}");
    // The visitor's question and the words said over the answer, each
    // once; a segment of the bot's own voice would be a third, or would
    // run into the second and make it far longer than what was said.
    assert_eq!(heard.len(), 2, "{log}");
    assert!(heard[1] >= 0.8 * u2_secs, "{log}");
    assert!(heard[1] <= u2_secs + 1.5, "{log}");

    let (heard, log) = converse(false).await;
    println!("{log}");
    assert!(
        heard.len() > 2 || heard.get(1).is_some_and(|&s| s > u2_secs + 1.5),
        "without the canceller the bot should have heard itself: {log}"
    );
}
