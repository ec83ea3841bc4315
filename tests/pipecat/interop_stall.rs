//! The bot's sender stalls mid-sentence: the daemon (`run`) against the
//! stock Pipecat bot (tests/interop/bot.py), stopped with SIGSTOP for
//! 300 ms early in its second answer, as a busy event loop or a machine
//! under load stops it. Its transport then sends what it owes at once
//! (aiortc paces by the audio clock and catches up), and the kiosk must
//! play that speech whole, late, rather than cut it to catch up: a
//! visitor would hear a word clipped.
//!
//! Needs the Pipecat venv (see tests/interop/README.md); fails without it.

use crate::common;
use crate::interop;
use crate::interop_run::{BOT_ARGS, assert_idle, diagnostics, run_session_watched};

use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use common::speaker_samples;
use interop::{FRAME, PipecatBot, SERIAL, frame_levels};
use serde_json::Value;

/// The reply's speech is followed in 20 ms chunks: those within 20 dB of
/// its loudest.
const CHUNK: usize = 960;
/// A chunk was heard where it played at this normalized correlation or
/// more (each chunk of an undisturbed play: 0.89 to 0.99).
const HEARD: f64 = 0.8;
/// The most a stall may delay an answer's speech past its schedule: the
/// stall (300 ms), the concealment before it and the buffer filled again
/// after (390 ms in all, seen).
const MAX_DELAY: usize = 600 * 48;
/// Chunks of an answer's speech a stall may leave unheard without a cut:
/// the one it split, and one the concealment before it was mixed into.
/// (The catch-up cut this guards against left 5 to 10 unheard in four
/// runs.)
const SPLIT: usize = 2;
/// How long after the daemon shows the bot speaking the stall starts, and
/// how long it lasts: longer than the deepest buffer (80 ms) and the
/// concealment before it, so the buffer runs dry and gives up waiting.
const STALL_AFTER: Duration = Duration::from_millis(100);
const STALL_FOR: Duration = Duration::from_millis(300);
/// The longest the speaker may go quiet inside an answer for the stall to
/// be the one asked for (300 ms: 200 to 290 ms quiet, seen). The bot goes
/// on only when it gets a CPU again, with the kiosk's audio of the stall
/// waiting in its socket, so on a loaded machine its silence can last far
/// longer; past the 500 ms the playout owes, the excess is cut as designed
/// (a 600 ms stall: quiet for 540 to 570 ms, and chunks cut).
const MAX_WAIT_MS: usize = 400;

/// Offsets of the reply's speech chunks.
fn speech_chunks(reply: &[i16]) -> Vec<usize> {
    let level = |c: &[i16]| frame_levels(c).iter().copied().fold(f64::MIN, f64::max);
    let levels: Vec<(usize, f64)> = (0..=reply.len() - CHUNK)
        .step_by(CHUNK)
        .map(|o| (o, level(&reply[o..o + CHUNK])))
        .collect();
    let loudest = levels.iter().map(|l| l.1).fold(f64::MIN, f64::max);
    levels
        .into_iter()
        .filter(|&(_, l)| l >= loudest - 20.0)
        .map(|(o, _)| o)
        .collect()
}

/// The first place in `lo..=hi` where `chunk` plays on `speaker` (then the
/// best within 1 ms of it).
fn first_match(chunk: &[i16], speaker: &[i16], lo: usize, hi: usize) -> Option<usize> {
    let hi = hi.min(speaker.len().checked_sub(chunk.len())?);
    let as_f64 = |x: &[i16]| x.iter().map(|&s| f64::from(s)).collect::<Vec<f64>>();
    let (chunk, window) = (as_f64(chunk), as_f64(speaker.get(lo..hi + chunk.len())?));
    let score = |pos: usize| interop::corr(&chunk, &window, pos - lo);
    let first = (lo..=hi).find(|&pos| score(pos) >= HEARD)?;
    (first..=(first + 48).min(hi)).max_by(|&a, &b| score(a).total_cmp(&score(b)))
}

/// Follows one answer of `sentences` plays of `reply` back to back, from
/// `start` on the speaker, chunk by chunk. Returns the speech chunks not
/// heard (sentence, ms into the reply) and the most any chunk was late
/// against the answer's schedule, samples.
fn follow_answer(
    reply: &[i16],
    speaker: &[i16],
    start: usize,
    sentences: usize,
) -> (Vec<(usize, usize)>, usize) {
    let chunks = speech_chunks(reply);
    let mut unheard = Vec::new();
    // (position on the speaker, place in the answer) of the first chunk
    // heard, and the position of the last.
    let mut first: Option<(usize, usize)> = None;
    let mut last: Option<usize> = None;
    let mut latest = 0;
    for sentence in 0..sentences {
        for &offset in &chunks {
            let at = sentence * reply.len() + offset;
            // After the last chunk heard (a cut brings what follows it
            // earlier), and no later than the schedule and a stall allow
            // (the next sentence's copy of the chunk comes later still).
            let (lo, hi) = match (first, last) {
                (Some((p0, a0)), Some(p)) => (p + CHUNK - 5 * 48, p0 + (at - a0) + MAX_DELAY),
                _ => (start, start + 48_000),
            };
            match first_match(&reply[offset..offset + CHUNK], speaker, lo, hi.max(lo)) {
                Some(pos) => {
                    if let Some((p0, a0)) = first {
                        latest = latest.max(pos.saturating_sub(p0 + (at - a0)));
                    } else {
                        first = Some((pos, at));
                    }
                    last = Some(pos);
                }
                None => unheard.push((sentence, offset / 48)),
            }
        }
    }
    (unheard, latest)
}

/// Where each answer starts on the speaker: runs of loud frames more than
/// a second apart (the answers come 4 s apart, sentences back to back).
fn answer_starts(speaker: &[i16]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut last_loud: Option<usize> = None;
    for (i, level) in frame_levels(speaker).into_iter().enumerate() {
        if level > -45.0 {
            if last_loud.is_none_or(|l| i - l > 100) {
                starts.push((i * FRAME).saturating_sub(50 * 48));
            }
            last_loud = Some(i);
        }
    }
    starts
}

/// Quiet (10 ms frames under -45 dBFS) between the first and last loud
/// frame from `start` to `end` on the speaker: the longest stretch (how
/// long the kiosk waited for a stalled bot within that answer) and all of
/// it, ms.
fn quiet_inside(speaker: &[i16], start: usize, end: usize) -> (usize, usize) {
    let levels = frame_levels(&speaker[start..end.min(speaker.len())]);
    let loud: Vec<usize> = (0..levels.len()).filter(|&i| levels[i] > -45.0).collect();
    let gaps = loud.windows(2).map(|w| (w[1] - w[0] - 1) * 10);
    (gaps.clone().max().unwrap_or(0), gaps.sum())
}

/// Stops the bot once, early in its second answer, as the status API
/// tells it (the `bot_speaking` state, from Pipecat's
/// `bot-started-speaking`).
struct Staller {
    pid: libc::pid_t,
    state: Mutex<StallState>,
}

#[derive(Default)]
struct StallState {
    speaking: bool,
    answers: u32,
    stall: Option<JoinHandle<()>>,
    /// The most packets the daemon had concealed, as its status showed.
    concealed: u64,
}

impl Staller {
    fn new(bot: &PipecatBot) -> Self {
        Self {
            pid: libc::pid_t::try_from(bot.pid()).unwrap(),
            state: Mutex::default(),
        }
    }

    fn watch(&self, status: &Value) {
        let mut s = self.state.lock().unwrap();
        let speaking = status["state"] == "bot_speaking";
        if speaking && !s.speaking {
            s.answers += 1;
            if s.answers == 2 {
                let pid = self.pid;
                s.stall = Some(std::thread::spawn(move || {
                    std::thread::sleep(STALL_AFTER);
                    // SAFETY: kill(2) on the bot's pid, a child of this
                    // process that outlives the stall (it is killed on drop).
                    unsafe { libc::kill(pid, libc::SIGSTOP) };
                    std::thread::sleep(STALL_FOR);
                    unsafe { libc::kill(pid, libc::SIGCONT) };
                }));
            }
        }
        s.speaking = speaking;
        if let Some(n) = status["playout"]["packets_concealed"].as_u64() {
            s.concealed = s.concealed.max(n);
        }
    }

    /// Waits for the stall to be over; whether it happened, and the
    /// packets concealed.
    fn finish(&self) -> (bool, u64) {
        let mut s = self.state.lock().unwrap();
        let stalled = s.stall.take().map(|t| t.join().is_ok()).unwrap_or(false);
        (stalled, s.concealed)
    }
}

/// One session with a stalled bot, as the speaker played it.
struct StalledSession {
    /// Each answer's unheard chunks (sentence, ms) and how late it played
    /// at most, samples.
    answers: Vec<(Vec<(usize, usize)>, usize)>,
    /// The most packets the daemon had concealed.
    concealed: u64,
    /// The longest the speaker went quiet inside an answer, ms.
    waited_ms: usize,
    /// The daemon's playout counters and log.
    diagnostics: String,
}

impl StalledSession {
    /// Chunks of the bot's speech unheard, all answers.
    fn unheard(&self) -> usize {
        self.answers.iter().map(|a| a.0.len()).sum()
    }

    /// Why this session does not show the playout under the stall asked
    /// for with nothing lost, if it does not.
    fn flaw(&self) -> Option<String> {
        if self.waited_ms > MAX_WAIT_MS {
            Some(format!(
                "the bot stayed silent longer than the stall asked for: the speaker waited {} ms",
                self.waited_ms
            ))
        } else if self.unheard() > SPLIT {
            Some(format!(
                "{} chunks of 20 ms of the bot's speech unheard ({} packets concealed)",
                self.unheard(),
                self.concealed
            ))
        } else {
            None
        }
    }
}

async fn stalled_session() -> StalledSession {
    let dir = tempfile::tempdir().unwrap();
    let bot = PipecatBot::start(dir.path(), &BOT_ARGS);
    let staller = Staller::new(&bot);
    let agent = format!("offer_url = \"{}\"", bot.url("/api/offer"));
    let (d, row) =
        run_session_watched(dir.path(), &bot, &agent, "", &[], |s| staller.watch(s)).await;
    let (stalled, concealed) = staller.finish();
    assert!(stalled, "the bot never answered twice; {row:?}");
    assert_idle(&row, &bot, &d);
    let spoken = bot
        .sent()
        .iter()
        .filter(|m| m["type"] == "bot-output" && m["data"]["spoken"] == true)
        .count();
    assert_eq!(spoken, 8, "sentences the bot said");
    let reply = interop::reply();
    let speaker = speaker_samples(dir.path());
    let starts = answer_starts(&speaker);
    assert_eq!(
        starts.len(),
        spoken / 2,
        "answers on the speaker at {:?} s",
        starts
            .iter()
            .map(|&s| s as f64 / 48_000.0)
            .collect::<Vec<_>>()
    );
    let answers: Vec<(Vec<(usize, usize)>, usize)> = starts
        .iter()
        .map(|&start| follow_answer(&reply, &speaker, start, 2))
        .collect();
    let ends = starts.iter().skip(1).copied().chain([speaker.len()]);
    let quiet: Vec<(usize, usize)> = starts
        .iter()
        .zip(ends)
        .map(|(&start, end)| quiet_inside(&speaker, start, end))
        .collect();
    for (k, (unheard, late)) in answers.iter().enumerate() {
        println!(
            "answer {}: at most {} ms late; chunks unheard (sentence, ms): {unheard:?}",
            k + 1,
            late / 48
        );
    }
    println!("quiet inside each answer (longest, all), ms: {quiet:?}");
    StalledSession {
        answers,
        concealed,
        waited_ms: quiet.iter().map(|q| q.0).max().unwrap_or(0),
        diagnostics: diagnostics(&d).await,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_that_stalls_mid_sentence_is_heard_whole() {
    let _serial = SERIAL.lock().await;
    // Run again once when the session shows something else than the
    // playout under the stall asked for: in CI, twice, an answer lost the
    // last 120 ms of its first sentence after the stall with the speaker's
    // wait and the daemon's drops as usual (220 ms quiet, 11 frames
    // removed), and never in 42 runs here, alone, in the suite, after
    // `tests/it` or beside busy loops. A fault of the playout, which is
    // deterministic for a stall, fails both sessions.
    let mut run = stalled_session().await;
    let mut first_flaw = None;
    if let Some(flaw) = run.flaw() {
        println!("{flaw}\n{}\nrun again", run.diagnostics);
        first_flaw = Some(flaw);
        run = stalled_session().await;
    }
    let flaw = run.flaw();
    let StalledSession {
        answers,
        concealed,
        diagnostics,
        ..
    } = run;
    // Nothing was lost: every 20 ms of the bot's speech was heard but the
    // chunk the stall split (`flaw`).
    if let (Some(first), Some(second)) = (first_flaw, flaw) {
        panic!("twice: {first}; then {second}\n{diagnostics}");
    }
    // The stall ran the buffer dry mid-speech: it concealed while waiting.
    assert!(
        concealed >= 3,
        "{concealed} packets concealed: no stall heard"
    );
    // The stall fell in an answer's speech (the second, unless the bot
    // paused between sentences), which played late.
    let late = answers.iter().map(|a| a.1).max().unwrap_or(0);
    assert!(
        late >= 150 * 48,
        "the answers were at most {} ms late: the stall missed the bot's speech",
        late / 48
    );
}

/// The measure against what a stall does to an answer (no bot needed).
#[test]
fn an_answer_delayed_by_a_stall_is_heard_whole_and_a_cut_one_is_not() {
    let reply = interop::reply();
    let pause = vec![0i16; 2 * 48_000];
    let answer = [&reply[..], &reply[..]].concat();
    let stall = 150 * 48;
    // Stopped 150 ms into the first sentence for 300 ms: all of it plays.
    let delayed = [&answer[..stall], &[0; 300 * 48], &answer[stall..]].concat();
    // The same, with the 120 ms after the stall cut to catch up.
    let cut = [
        &answer[..stall],
        &[0; 300 * 48],
        &answer[stall + 120 * 48..],
    ]
    .concat();
    for (played, lost) in [(&delayed, false), (&cut, true)] {
        let speaker = [&pause[..], &answer, &pause, played, &pause].concat();
        let starts = answer_starts(&speaker);
        assert_eq!(starts.len(), 2, "{starts:?}");
        assert_eq!(follow_answer(&reply, &speaker, starts[0], 2), (vec![], 0));
        let (unheard, late) = follow_answer(&reply, &speaker, starts[1], 2);
        assert!(late >= 290 * 48, "{} ms late", late / 48);
        if lost {
            assert!(unheard.len() >= 5, "{unheard:?}");
        } else {
            assert!(unheard.len() <= SPLIT, "{unheard:?}");
        }
    }
}
