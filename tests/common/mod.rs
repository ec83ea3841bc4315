//! Starting the real binary the way systemd would, with a notify socket
//! the test reads, and stopping it with real signals.
#![allow(dead_code)] // each test binary uses a different part of this

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
