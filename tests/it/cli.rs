//! The technician's one-shot commands: `check`, `transcripts`, and the
//! argument and file checks of `call` and `demo`.

use crate::common;

use std::path::Path;

use common::{command, write_config};
use jiff::Timestamp;
use kiosk_gateway::store::{NewSession, NewTranscript, Role, SessionId, Store};

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

#[test]
fn check_accepts_the_shipped_configs() {
    for file in ["config/kiosk-gateway.toml", "config/dev.toml"] {
        let out = command(&repo(file)).arg("check").output().unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
    }
}

#[test]
fn check_names_every_problem_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        "[kiosk]\nid = \"lobby-1\"\n\n[vad]\nhangover_ms = \"long\"\n\n[status]\nlistn = \"127.0.0.1:8080\"\n\n\
         [session]\nprovision = \"daily\"\n\n[agent]\nstart_url = \"https://agent.example/start\"\n\n\
         [store]\npath = \"kiosk.db\"\n",
    )
    .unwrap();
    let out = command(&config)
        .arg("check")
        .env("KIOSK_GATEWAY_SYNC_TOKEN", "not-a-secret-to-print")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let at = |line: u32, rest: &str| format!("error: {}:{line}: {rest}", config.display());
    for expected in [
        at(
            5,
            "vad.hangover_ms: expected an integer from 100 to 5000, found the string \"long\"",
        ),
        at(8, "status.listn: unknown key; did you mean \"listen\"?"),
        at(11, "daily.api_key: missing secret"),
    ] {
        assert!(
            stderr.contains(&expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(stderr.contains("3 problems"), "{stderr}");
    assert!(
        !dir.path().join("kiosk.db").exists(),
        "check must not create the store"
    );
}

#[test]
fn check_reads_the_configured_failure_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let prompt = dir.path().join("prompt.wav");
    common::write_wav(&prompt, 16_000, &[100; 16_000]);
    let config = write_config(
        dir.path(),
        &format!("[session]\nfailure_prompt = \"{}\"\n", prompt.display()),
    );
    let out = command(&config).arg("check").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("prompt       {}", prompt.display())),
        "{stdout}"
    );

    // Cut short: the header promises a second, the file holds 0.1 s.
    let bytes = std::fs::read(&prompt).unwrap();
    std::fs::write(&prompt, &bytes[..44 + 3_200]).unwrap();
    let out = command(&config).arg("check").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "error: {}: session.failure_prompt: cannot read the failure prompt {}: WAV file {}",
            config.display(),
            prompt.display(),
            prompt.display()
        )),
        "{stderr}"
    );
}

#[test]
fn check_reports_a_missing_file_and_syntax_errors() {
    let out = command(Path::new("/nonexistent/kiosk.toml"))
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("cannot read config file /nonexistent/kiosk.toml")
    );

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[vad]\naggressiveness = \n").unwrap();
    let out = command(&config).arg("check").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:2: not valid TOML", config.display())),
        "{stderr}"
    );
}

#[test]
fn check_never_prints_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "[sync]\nurl = \"https://upstream.example/batches\"\n",
    );
    let out = command(&config)
        .arg("check")
        .env("KIOSK_GATEWAY_SYNC_TOKEN", "s3cret-upstream-token")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("secrets set  sync.token"), "{all}");
    assert!(!all.contains("s3cret-upstream-token"));
}

#[test]
fn the_config_path_comes_from_the_environment_too() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let out = std::process::Command::new(common::BIN)
        .arg("check")
        .env("KIOSK_GATEWAY_CONFIG", &config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn seed(db: &Path) -> (SessionId, SessionId) {
    let (mut store, _) = Store::open(db).unwrap();
    let mut ids = Vec::new();
    for (n, lines) in [
        vec![
            (Role::User, "where is the pharmacy?"),
            (Role::Bot, "second floor, on the left"),
        ],
        vec![(Role::User, "thanks")],
    ]
    .into_iter()
    .enumerate()
    {
        let id = SessionId::new();
        let t0: Timestamp = format!("2026-11-22T10:0{n}:00Z").parse().unwrap();
        store
            .start_session(&NewSession {
                id,
                kiosk_id: "test-kiosk".into(),
                started_at: t0,
                room_name: None,
                room_url: None,
                agent_session_id: None,
            })
            .unwrap();
        for (role, text) in lines {
            store
                .add_transcript(&NewTranscript {
                    session_id: id,
                    role,
                    text: text.into(),
                    is_final: true,
                    confidence: Some(0.9),
                    spoken_at: t0,
                    received_at: t0,
                })
                .unwrap();
        }
        ids.push(id);
    }
    (ids[0], ids[1])
}

#[test]
fn transcripts_json_is_the_documented_shape() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let (first, second) = seed(&dir.path().join("kiosk.db"));

    let out = command(&config)
        .args(["transcripts", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 3);
    let mut keys: Vec<&str> = rows[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "final",
            "id",
            "role",
            "seq",
            "session_id",
            "spoken_at",
            "text"
        ]
    );
    assert_eq!(rows[0]["session_id"], first.to_string());
    assert_eq!(rows[0]["role"], "user");
    assert_eq!(rows[1]["role"], "bot");
    assert_eq!(rows[1]["seq"], 2);
    assert_eq!(rows[1]["final"], true);
    assert_eq!(rows[2]["spoken_at"], "2026-11-22T10:01:00Z");

    let out = command(&config)
        .args(["transcripts", "--json", "--session", &second.to_string()])
        .output()
        .unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["text"], "thanks");

    let out = command(&config).arg("transcripts").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("session {first}")), "{text}");
    assert!(text.contains(" bot: second floor, on the left"), "{text}");
}

#[test]
fn transcripts_explains_a_missing_database_and_a_bad_id() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), "");
    let out = command(&config).arg("transcripts").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no database at"));

    seed(&dir.path().join("kiosk.db"));
    let out = command(&config)
        .args(["transcripts", "--session", "yesterday"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown session id \"yesterday\""));
}

/// The binary with no config (`call` and `demo` need none) and no
/// `KIOSK_GATEWAY_*` variables from the environment.
fn without_config() -> std::process::Command {
    let mut cmd = std::process::Command::new(common::BIN);
    cmd.env_remove("RUST_LOG");
    for (k, _) in std::env::vars() {
        if k.starts_with("KIOSK_GATEWAY_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

#[test]
fn call_names_an_unreadable_input_or_output_before_calling() {
    let dir = tempfile::tempdir().unwrap();
    let notes = dir.path().join("notes.wav");
    std::fs::write(&notes, "not a WAV").unwrap();
    let good = repo("fixtures/audio/multi_utterance_16k.wav");
    // Nothing listens at the offer URL: the files are checked first.
    let call = |input: &Path, output: &str| {
        let out = without_config()
            .args([
                "call",
                "--offer-url",
                "http://127.0.0.1:9/api/offer",
                "--input",
            ])
            .arg(format!("wav:{}", input.display()))
            .args(["--output", output, "--seconds", "1"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let missing = dir.path().join("missing.wav");
    let stderr = call(&missing, "none");
    assert!(
        stderr.contains(&format!(
            "error: input WAV {}: No such file",
            missing.display()
        )),
        "{stderr}"
    );
    let stderr = call(&notes, "none");
    assert!(
        stderr.contains(&format!("error: input WAV {}: ", notes.display()))
            && stderr.contains("call reads PCM WAV"),
        "{stderr}"
    );
    let stderr = call(&good, "wav:/nonexistent/dir/heard.wav");
    assert!(
        stderr.contains("error: output WAV /nonexistent/dir/heard.wav: No such file"),
        "{stderr}"
    );
}

#[test]
fn demo_network_options_need_an_external_agent() {
    for args in [
        &["demo", "--no-stun"][..],
        &["demo", "--bind", "127.0.0.1:0"],
        &[
            "demo",
            "--offer-url",
            "http://a/api/offer",
            "--api-key-env",
            "X",
        ],
        &[
            "demo",
            "--offer-url",
            "http://a/api/offer",
            "--start-url",
            "http://a/start",
        ],
    ] {
        let out = without_config().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?} was accepted");
    }
}
