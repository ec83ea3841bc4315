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

fn decimate(x: &[i16], factor: usize) -> Vec<f64> {
    x.chunks(factor)
        .map(|c| c.iter().map(|&s| f64::from(s)).sum::<f64>() / c.len() as f64)
        .collect()
}

/// Normalized correlation of `a` with `b[lag..]` (`b` long enough).
fn corr(a: &[f64], b: &[f64], lag: usize) -> f64 {
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
/// least 0.3, a clip's length apart); each is then aligned at full rate
/// within ±2 ms, where a whole play correlates above 0.9 (a play with
/// packets concealed less).
pub fn plays(clip: &[i16], recorded: &[i16]) -> Vec<(usize, f64)> {
    const F: usize = 48;
    let (a, b) = (decimate(clip, F), decimate(recorded, F));
    if b.len() <= a.len() + 2 {
        return vec![];
    }
    let coarse: Vec<f64> = (0..b.len() - a.len())
        .map(|lag| corr(&a, &b, lag))
        .collect();
    let full_a: Vec<f64> = clip.iter().map(|&s| f64::from(s)).collect();
    let full_b: Vec<f64> = recorded.iter().map(|&s| f64::from(s)).collect();
    let mut found = Vec::new();
    let mut lag = 0;
    while lag < coarse.len() {
        if coarse[lag] < 0.3 {
            lag += 1;
            continue;
        }
        let end = (lag + a.len()).min(coarse.len());
        let best = (lag..end)
            .max_by(|&x, &y| coarse[x].total_cmp(&coarse[y]))
            .unwrap();
        let centre = best * F;
        let fine = (centre.saturating_sub(2 * F)..=centre + 2 * F)
            .filter(|&l| l + full_a.len() <= full_b.len())
            .map(|l| (l, corr(&full_a, &full_b, l)))
            .max_by(|x, y| x.1.total_cmp(&y.1));
        if let Some(play) = fine {
            found.push(play);
        }
        lag = best + a.len();
    }
    found
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
