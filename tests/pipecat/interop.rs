//! The Pipecat bot (tests/interop/bot.py) as a child process, for the tests
//! that run the product against it (link_pipecat, interop_run).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// One test with a bot at a time: each runs a Python bot (Silero inference
/// on every frame) and the product, and the machine has two cores.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The reply the bot "synthesizes" for every sentence ("Thank you.", 48 kHz).
pub const REPLY_WAV: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/reply_48k.wav");

/// The venv's Python: KIOSK_PIPECAT_PYTHON, else `.venv-pipecat/` in the
/// repository (what `.ci/setup` makes). Fails the test when it is missing.
pub fn python() -> String {
    let python = std::env::var("KIOSK_PIPECAT_PYTHON").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/.venv-pipecat/bin/python").to_string()
    });
    assert!(
        Path::new(&python).exists(),
        "no Pipecat venv at {python}: run `bash .ci/setup` or \
         `bash tests/interop/setup-venv.sh $PWD/.venv-pipecat`, or set KIOSK_PIPECAT_PYTHON \
         to a venv made from tests/interop/requirements.txt"
    );
    python
}

/// A running bot on 127.0.0.1; killed on drop. Its stderr goes to
/// `dir/bot.log`, its request log to `dir/bot-requests.jsonl`, every
/// message it sends on the data channel to `dir/bot-rtvi.jsonl` and the
/// audio it receives to `dir/bot-received.wav`.
pub struct PipecatBot {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
}

impl PipecatBot {
    /// Starts the bot with `extra` arguments and waits until it listens.
    pub fn start(dir: &Path, extra: &[&str]) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/bot.py");
        let mut child = Command::new(python())
            .arg(script)
            .args(["--port", "0", "--log"])
            .arg(dir.join("bot-requests.jsonl"))
            .arg("--record-rtvi")
            .arg(dir.join("bot-rtvi.jsonl"))
            .arg("--record-audio")
            .arg(dir.join("bot-received.wav"))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("bot.log")).unwrap())
            .spawn()
            .expect("start the Pipecat bot");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let mut bot = Self {
            child,
            port: 0,
            dir: dir.to_path_buf(),
        };
        bot.port = line
            .strip_prefix("LISTENING ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("bot did not start: {line:?}\n{}", bot.stderr()));
        bot
    }

    /// The bot's process id (to stop and continue it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("bot.log")).unwrap_or_default()
    }

    /// The bot's log without Pipecat's start-up chatter: what it heard
    /// (transcripts, gaps in the audio) and its warnings and errors.
    pub fn notable_log(&self) -> String {
        let log = self.stderr();
        let mut lines: Vec<&str> = log
            .lines()
            .filter(|l| {
                ["STT:", "no audio frames", "WARNING", "ERROR"]
                    .iter()
                    .any(|k| l.contains(k))
                    && !l.contains("video transceiver")
            })
            .collect();
        if lines.len() > 60 {
            let skipped = lines.len() - 60;
            lines.drain(30..30 + skipped);
        }
        lines.join("\n")
    }

    /// Every HTTP request the bot served, oldest first: `{method, path,
    /// status, authorization: "absent"|"valid"|"invalid", session_id?, room_url?}`.
    pub fn requests(&self) -> Vec<Value> {
        json_lines(&self.dir.join("bot-requests.jsonl"))
    }

    /// Every message the bot sent on the data channel, as sent.
    pub fn sent(&self) -> Vec<Value> {
        json_lines(&self.dir.join("bot-rtvi.jsonl"))
    }

    /// The `type` of every RTVI message sent, in order.
    pub fn sent_types(&self) -> Vec<String> {
        self.sent()
            .iter()
            .map(|m| m["type"].as_str().unwrap_or("?").to_string())
            .collect()
    }
}

impl Drop for PipecatBot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// 48 kHz mono samples of [`REPLY_WAV`].
pub fn reply() -> Vec<i16> {
    kiosk_gateway::testkit::media::read_wav(Path::new(REPLY_WAV)).unwrap()
}

/// 10 ms frames at 48 kHz.
pub const FRAME: usize = 480;

/// The level of each 10 ms frame of `samples`, dBFS.
pub fn frame_levels(samples: &[i16]) -> Vec<f64> {
    samples
        .chunks_exact(FRAME)
        .map(|f| {
            let energy = f.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / FRAME as f64;
            10.0 * (energy / 32768f64.powi(2)).max(1e-12).log10()
        })
        .collect()
}

fn decimate(x: &[i16], factor: usize) -> Vec<f64> {
    x.chunks(factor)
        .map(|c| c.iter().map(|&s| f64::from(s)).sum::<f64>() / c.len() as f64)
        .collect()
}

/// Normalized correlation of `a` with `b[lag..]` (`b` long enough).
pub fn corr(a: &[f64], b: &[f64], lag: usize) -> f64 {
    let (mut xy, mut xx, mut yy) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(&b[lag..lag + a.len()]) {
        xy += x * y;
        xx += x * x;
        yy += y * y;
    }
    if xx == 0.0 || yy == 0.0 {
        0.0
    } else {
        xy / (xx * yy).sqrt()
    }
}

/// Where `clip` plays in `recorded` (both 48 kHz): (start in samples,
/// normalized correlation) of each stretch that looks like the clip. A
/// coarse search on 1 kHz decimated signals finds candidates (peaks of at
/// least 0.3, each the highest within half a clip's length either side, so
/// plays back to back are told apart); each is then aligned at full rate
/// within ±16 ms (the decimated signals alias, and a clip cut mid-word can
/// peak there several ms off), where a whole play correlates above 0.9 (a
/// play with packets concealed less).
pub fn plays(clip: &[i16], recorded: &[i16]) -> Vec<(usize, f64)> {
    const F: usize = 48;
    let (a, b) = (decimate(clip, F), decimate(recorded, F));
    if b.len() <= a.len() + 2 {
        return vec![];
    }
    let coarse: Vec<f64> = (0..=b.len() - a.len())
        .map(|lag| corr(&a, &b, lag))
        .collect();
    let radius = a.len() / 2;
    let is_peak = |lag: usize| {
        coarse[lag] >= 0.3
            && coarse[lag.saturating_sub(radius)..lag]
                .iter()
                .all(|&c| c < coarse[lag])
            && coarse[lag + 1..(lag + radius + 1).min(coarse.len())]
                .iter()
                .all(|&c| c <= coarse[lag])
    };
    let full_a: Vec<f64> = clip.iter().map(|&s| f64::from(s)).collect();
    let full_b: Vec<f64> = recorded.iter().map(|&s| f64::from(s)).collect();
    (0..coarse.len())
        .filter(|&lag| is_peak(lag))
        .filter_map(|best| {
            let align = |around: usize, reach: usize, step: usize| {
                (around.saturating_sub(reach)..=around + reach)
                    .step_by(step)
                    .filter(|&l| l + full_a.len() <= full_b.len())
                    .map(|l| (l, corr(&full_a, &full_b, l)))
                    .max_by(|x, y| x.1.total_cmp(&y.1))
            };
            let (near, _) = align(best * F, 16 * F, 8)?;
            align(near, 8, 1)
        })
        .collect()
}

/// Where each play of `reply` starts on the speaker, with the better of
/// its two halves' correlations. A play is found by either half of the
/// reply, so one the jitter buffer stretched (a stalled sender: concealment
/// and a wait inserted in the middle) is still found by its intact half,
/// and two plays back to back are not taken for one; a play found twice
/// keeps its best match. Halves matching below `min_corr` are not plays.
pub fn find_plays(reply: &[i16], speaker: &[i16], min_corr: f64) -> Vec<(usize, f64)> {
    let half = reply.len() / 2;
    let mut found: Vec<(usize, f64)> = plays(&reply[..half], speaker)
        .into_iter()
        .chain(
            plays(&reply[half..], speaker)
                .into_iter()
                .filter_map(|(at, corr)| Some((at.checked_sub(half)?, corr))),
        )
        .filter(|&(_, corr)| corr >= min_corr)
        .collect();
    found.sort_by_key(|&(at, _)| at);
    let mut merged: Vec<(usize, f64)> = Vec::new();
    for (at, corr) in found {
        match merged.last_mut() {
            Some(last) if at < last.0 + reply.len() * 3 / 4 => {
                if corr > last.1 {
                    *last = (at, corr);
                }
            }
            _ => merged.push((at, corr)),
        }
    }
    merged
}

/// Polls until `cond` holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while !cond() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// The play finder against what a stall does to a play (no bot needed).
#[test]
fn a_play_stretched_by_a_stall_is_found_once_and_a_missing_one_not_at_all() {
    let reply = reply();
    let pause = vec![0i16; 48_000 / 2];
    // Four sentences: the third with its loudest 100 ms (0.05 to 0.15 s)
    // silent, as after a stalled sender, the fourth missing.
    let mut stalled = reply.clone();
    stalled[2_400..7_200].fill(0);
    let speaker: Vec<i16> = [&pause[..], &reply, &reply, &stalled, &pause].concat();
    let found: Vec<usize> = find_plays(&reply, &speaker, 0.7)
        .into_iter()
        .map(|(at, _)| at)
        .collect();
    let starts = [
        pause.len(),
        pause.len() + reply.len(),
        pause.len() + 2 * reply.len(),
    ];
    assert_eq!(found.len(), 3, "{found:?}, plays start at {starts:?}");
    for (at, start) in found.iter().zip(starts) {
        assert!(at.abs_diff(start) <= 48 * 100, "{found:?} vs {starts:?}");
    }
    // The first half alone misses the stalled play.
    let by_first_half = plays(&reply[..reply.len() / 2], &speaker)
        .into_iter()
        .filter(|&(_, corr)| corr >= 0.7)
        .count();
    assert_eq!(by_first_half, 2);
}
