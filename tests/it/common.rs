//! Starting the real binary the way systemd would, with a notify socket
//! the test reads, and stopping it with real signals.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_kiosk-gateway");

pub struct Daemon {
    pub child: Child,
    pub notify: UnixDatagram,
    pub dir: PathBuf,
    /// The status server's base URL, from the STATUS= line.
    pub url: String,
    /// Time from spawn to READY=1.
    pub startup: Duration,
    pub messages: Vec<String>,
}

/// Writes `body` (plus a loopback status listener on a free port and a
/// store in `dir`) to `dir/config.toml` and returns its path.
pub fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("config.toml");
    let src = format!(
        "[kiosk]\nid = \"test-kiosk\"\n\
         [agent]\noffer_url = \"http://127.0.0.1:9/api/offer\"\n\
         [store]\npath = \"kiosk.db\"\n\
         [status]\nlisten = \"127.0.0.1:0\"\n\
         [log]\ntarget = \"stderr\"\nlevel = \"info\"\n{body}"
    );
    std::fs::write(&path, src).unwrap();
    path
}

pub fn command(config: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(config);
    cmd.env_remove("RUST_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("KIOSK_GATEWAY_") || k == "NOTIFY_SOCKET" || k.starts_with("WATCHDOG_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// `run` as systemd starts it with `WatchdogSec=` armed: systemd sets
/// WATCHDOG_PID to the service's pid, and `exec` keeps the shell's pid, so
/// the daemon sees its own.
pub fn under_watchdog(config: &Path, watchdog_usec: &str) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "export WATCHDOG_PID=$$; exec {BIN} --config {} run",
            config.display()
        ))
        .env("WATCHDOG_USEC", watchdog_usec);
    cmd
}

impl Daemon {
    /// Starts `run` and waits for READY=1.
    pub fn start(dir: &Path, config: &Path, extra_env: &[(&str, &str)]) -> Daemon {
        Self::start_with(dir, command(config).arg("run"), extra_env)
    }

    pub fn start_with(dir: &Path, cmd: &mut Command, extra_env: &[(&str, &str)]) -> Daemon {
        let sock = dir.join("notify.sock");
        let _ = std::fs::remove_file(&sock);
        let notify = UnixDatagram::bind(&sock).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        cmd.env("NOTIFY_SOCKET", &sock)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap());
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let spawned = Instant::now();
        let child = cmd.spawn().unwrap();
        let mut d = Daemon {
            child,
            notify,
            dir: dir.to_path_buf(),
            url: String::new(),
            startup: Duration::ZERO,
            messages: Vec::new(),
        };
        let ready = d.wait_message(Duration::from_secs(10), |m| m.contains("READY=1"));
        assert!(ready.is_some(), "no READY=1; stderr:\n{}", d.stderr());
        d.startup = spawned.elapsed();
        let ready = ready.unwrap();
        let status = ready
            .lines()
            .find_map(|l| l.strip_prefix("STATUS="))
            .expect("STATUS= with READY=1");
        let start = status.find("http://").expect("status URL in STATUS=");
        d.url = status[start..].trim_end_matches('/').to_string();
        d
    }

    /// Waits for a notify message matching `pred`, keeping all it reads.
    pub fn wait_message(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.notify.recv(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).to_string();
                self.messages.push(m.clone());
                if pred(&m) {
                    return Some(m);
                }
                // Read everything already sent before judging an exit.
                continue;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "daemon exited early with {status}; stderr:\n{}",
                    self.stderr()
                );
            }
        }
        None
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit; `None` if it is still running at the deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<(ExitStatus, Duration)> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some((status, start.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

/// The visitor fixture: four utterances (see fixtures/audio/README.md).
pub const VISITOR_WAV: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/fixtures/audio/multi_utterance_16k.wav"
);

/// Where the first utterance ("Hello there, I would like some help
/// please") lies in [`VISITOR_WAV`], in ms.
pub const U1_MS: (u32, u32) = (1000, 3730);
/// The second utterance ("Where is the train station").
pub const U2_MS: (u32, u32) = (5230, 6697);

/// A daemon config for the session tests: `input` as the microphone, the
/// speaker recorded to `dir/speaker.wav`, the call on loopback UDP.
/// `agent` is the rest of the `[agent]` table; `extra` adds tables.
pub fn session_config(dir: &Path, input: &Path, agent: &str, extra: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[kiosk]\nid = \"test-kiosk\"\n\
             [audio]\ninput = \"wav:{}\"\noutput = \"wav:{}\"\n\
             [agent]\nstun_urls = []\nudp_bind = \"127.0.0.1:0\"\n{agent}\n\
             [store]\npath = \"kiosk.db\"\n\
             [status]\nlisten = \"127.0.0.1:0\"\n\
             [log]\ntarget = \"stderr\"\nlevel = \"info\"\n{extra}",
            input.display(),
            dir.join("speaker.wav").display()
        ),
    )
    .unwrap();
    path
}

/// 16 kHz mono samples of `VISITOR_WAV` between `from_ms` and `to_ms`.
pub fn visitor_clip(from_ms: u32, to_ms: u32) -> Vec<i16> {
    let mut reader = hound::WavReader::open(VISITOR_WAV).unwrap();
    let all: Vec<i16> = reader.samples::<i16>().map(Result::unwrap).collect();
    all[(from_ms * 16) as usize..(to_ms * 16) as usize].to_vec()
}

/// `ms` of digital silence at 16 kHz.
pub fn silence(ms: u32) -> Vec<i16> {
    vec![0; (ms * 16) as usize]
}

/// Writes a mono WAV: a test's microphone, or audio to analyse.
pub fn write_wav(path: &Path, rate: u32, samples: &[i16]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for &s in samples {
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
}

/// What the daemon's speaker (48 kHz) has played so far. The WAV is still
/// being written, so its header's length is not final: the samples are
/// read raw after the 44-byte header.
pub fn speaker_samples(dir: &Path) -> Vec<i16> {
    let bytes = std::fs::read(dir.join("speaker.wav")).unwrap_or_default();
    bytes
        .get(44..)
        .unwrap_or_default()
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

pub fn loud_samples(samples: &[i16]) -> usize {
    samples.iter().filter(|s| s.unsigned_abs() > 1000).count()
}

/// Waits until the speaker has played at least one second of loud sound
/// (the failure prompt is 4.6 s).
pub async fn wait_for_prompt(dir: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let loud = loud_samples(&speaker_samples(dir));
        if loud > 48_000 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no prompt in the speaker WAV ({loud} loud samples)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn status(d: &Daemon) -> serde_json::Value {
    serde_json::from_str(&get(&format!("{}/api/status", d.url)).await.1).unwrap()
}

/// Polls `cond` until it holds; fails with `d`'s log after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, d: &Daemon, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what}: never happened\n{}",
            d.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls the status API until `pred` holds.
pub async fn wait_for(
    d: &Daemon,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let s = status(d).await;
        if pred(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: never happened; last status {s:#}\nstderr:\n{}",
            d.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls the status API until the latest session has ended; returns the
/// status at that moment.
pub async fn wait_session_end(d: &Daemon, what: &str, timeout: Duration) -> serde_json::Value {
    wait_session_end_watched(d, what, timeout, |_| {}).await
}

/// [`wait_session_end`], with `watch` shown every status polled meanwhile.
pub async fn wait_session_end_watched(
    d: &Daemon,
    what: &str,
    timeout: Duration,
    watch: impl Fn(&serde_json::Value),
) -> serde_json::Value {
    wait_for(d, what, timeout, |s| {
        watch(s);
        s["recent_sessions"][0]["end_reason"].is_string()
    })
    .await
}

/// One row of the `sessions` table.
#[derive(Debug)]
pub struct SessionRow {
    pub id: String,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub end_reason: Option<String>,
    pub room_name: Option<String>,
    pub user_speech_ms: i64,
    pub bot_speech_ms: i64,
}

/// Every session in the store, oldest first.
pub fn session_rows(dir: &Path) -> Vec<SessionRow> {
    let db = rusqlite::Connection::open(dir.join("kiosk.db")).unwrap();
    db.prepare(
        "SELECT id, started_at, ended_at, end_reason, room_name, user_speech_ms, bot_speech_ms
         FROM sessions ORDER BY started_at",
    )
    .unwrap()
    .query_map([], |r| {
        Ok(SessionRow {
            id: r.get(0)?,
            started_at: r.get(1)?,
            ended_at: r.get(2)?,
            end_reason: r.get(3)?,
            room_name: r.get(4)?,
            user_speech_ms: r.get(5)?,
            bot_speech_ms: r.get(6)?,
        })
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// (seq, role, text) of a session's transcript lines, in order.
pub fn transcript_lines(dir: &Path, session_id: &str) -> Vec<(i64, String, String)> {
    let db = rusqlite::Connection::open(dir.join("kiosk.db")).unwrap();
    db.prepare("SELECT seq, role, text FROM transcripts WHERE session_id = ?1 ORDER BY seq")
        .unwrap()
        .query_map([session_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}
