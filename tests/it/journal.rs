//! Under systemd, records go to the journal with structured fields. The
//! journal here is this test: a datagram socket bind-mounted at
//! /run/systemd/journal/socket inside a private mount namespace (root and
//! util-linux's `unshare`, as on CI).

use crate::common;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Daemon, write_config};

/// Parses one native-protocol datagram: `KEY=value\n`, or for values that
/// may hold newlines `KEY\n<u64 LE length><bytes>\n`.
fn parse_entry(mut buf: &[u8]) -> HashMap<String, String> {
    let mut fields = HashMap::new();
    while !buf.is_empty() {
        let nl = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
        let line = &buf[..nl];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            fields.insert(
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            );
            buf = &buf[(nl + 1).min(buf.len())..];
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let rest = &buf[nl + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            fields.insert(key, String::from_utf8_lossy(&rest[8..8 + len]).into_owned());
            buf = &rest[(8 + len + 1).min(rest.len())..];
        }
    }
    fields
}

fn start_under_fake_journal(
    dir: &std::path::Path,
    config: &std::path::Path,
    env: &[(&str, &str)],
) -> (Daemon, UnixDatagram) {
    let journal_dir = dir.join("journal");
    std::fs::create_dir(&journal_dir).unwrap();
    let journal = UnixDatagram::bind(journal_dir.join("socket")).unwrap();
    journal
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let script = format!(
        "mount -t tmpfs tmpfs /run/systemd && mkdir /run/systemd/journal && \
         mount --bind {} /run/systemd/journal && exec {} --config {} run",
        journal_dir.display(),
        common::BIN,
        config.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    let d = Daemon::start_with(dir, &mut cmd, env);
    (d, journal)
}

fn entries_until(
    journal: &UnixDatagram,
    pred: impl Fn(&HashMap<String, String>) -> bool,
) -> Vec<HashMap<String, String>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        if let Ok(n) = journal.recv(&mut buf) {
            if n == 0 {
                continue;
            }
            let entry = parse_entry(&buf[..n]);
            let done = pred(&entry);
            seen.push(entry);
            if done {
                return seen;
            }
        }
    }
    panic!("expected journal entry never came; got {seen:#?}");
}

#[test]
fn journal_records_carry_kiosk_id_and_fields() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let config_path = dir.path().join("journal.toml");
    std::fs::write(
        &config_path,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("target = \"stderr\"", "target = \"journal\""),
    )
    .unwrap();
    let (d, journal) = start_under_fake_journal(dir.path(), &config_path, &[]);
    let seen = entries_until(&journal, |e| {
        e.get("MESSAGE").is_some_and(|m| m == "kiosk-gateway ready")
    });
    let ready = seen.last().unwrap();
    assert_eq!(ready["KIOSK_ID"], "test-kiosk");
    assert_eq!(ready["SYSLOG_IDENTIFIER"], "kiosk-gateway");
    assert_eq!(ready["PRIORITY"], "6");
    assert_eq!(ready["STATUS_ADDR"], d.url.trim_start_matches("http://"));
    assert!(ready.contains_key("STARTUP_MS"));
    assert!(
        !d.stderr().contains("kiosk-gateway ready"),
        "records went to the journal only"
    );
}

#[test]
fn auto_target_follows_journal_stream() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let config_path = dir.path().join("auto.toml");
    std::fs::write(
        &config_path,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("target = \"stderr\"", "target = \"auto\""),
    )
    .unwrap();
    // systemd sets JOURNAL_STREAM to the device and inode of the stream it
    // connects to stderr; Daemon sends stderr to stderr.log, which is
    // created before the spawn, so its identity is known here.
    let log = dir.path().join("stderr.log");
    std::fs::write(&log, "").unwrap();
    let meta = std::fs::metadata(&log).unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let (_d, journal) =
        start_under_fake_journal(dir.path(), &config_path, &[("JOURNAL_STREAM", &stream)]);
    entries_until(&journal, |e| {
        e.get("MESSAGE").is_some_and(|m| m == "kiosk-gateway ready")
    });
}
