use super::*;

fn parse(src: &str, env: &Env) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/kiosk-gateway/config.toml"), src, env)
}

fn problems(src: &str, env: &Env) -> Vec<String> {
    match parse(src, env) {
        Ok(_) => panic!("expected problems in:\n{src}"),
        Err(e) => e.problems(),
    }
}

const MINIMAL: &str = "[agent]\noffer_url = \"http://127.0.0.1:7860/api/offer\"\n";

#[test]
fn minimal_file_gets_defaults() {
    let c = parse(MINIMAL, &Env::default()).unwrap();
    assert_eq!(c.status.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.vad.aggressiveness.level(), 2);
    assert_eq!(c.session.idle_timeout, Duration::from_secs(30));
    assert_eq!(c.store.path, Path::new("/var/lib/kiosk-gateway/kiosk.db"));
    assert_eq!(c.daily.base_url.as_str(), "https://api.daily.co/v1");
}

#[test]
fn every_problem_is_reported_with_its_line() {
    let src = "\
[kiosk]
id = \"lobby-1\"

[vad]
aggresiveness = 2
hangover_ms = \"long\"

[session]
provision = \"daily\"

[agent]
start_url = \"https://agent.example/start\"
";
    let p = problems(src, &Env::default());
    assert_eq!(p.len(), 3, "{p:#?}");
    assert_eq!(
        p[0],
        "/etc/kiosk-gateway/config.toml:5: vad.aggresiveness: unknown key; did you mean \"aggressiveness\"?"
    );
    assert_eq!(
        p[1],
        "/etc/kiosk-gateway/config.toml:6: vad.hangover_ms: expected an integer from 100 to 5000, found the string \"long\""
    );
    assert!(
        p[2].starts_with("/etc/kiosk-gateway/config.toml:9: daily.api_key: missing secret"),
        "{}",
        p[2]
    );
}

#[test]
fn out_of_range_and_bad_words_are_named() {
    let src = format!(
        "{MINIMAL}[vad]\naggressiveness = 7\n[session]\ntrigger = \"voise\"\nidle_timeout = \"soon\"\n"
    );
    let p = problems(&src, &Env::default());
    assert_eq!(p.len(), 3, "{p:#?}");
    assert!(p[0].contains("vad.aggressiveness: expected an integer from 0 to 3, found 7"));
    assert!(p[1].contains("did you mean \"voice\"?"), "{}", p[1]);
    assert!(p[2].contains("session.idle_timeout: expected a duration"));
}

#[test]
fn opus_frame_ms_is_40_or_20_and_20_for_the_sip_leg() {
    let c = parse(
        &format!("{MINIMAL}[audio]\nopus_frame_ms = 20\n"),
        &Env::default(),
    )
    .unwrap();
    assert_eq!(c.audio.opus_frame_ms, Millis(20));
    assert_eq!(
        parse(MINIMAL, &Env::default()).unwrap().audio.opus_frame_ms,
        Millis(40)
    );

    let p = problems(
        &format!("{MINIMAL}[audio]\nopus_frame_ms = 30\n"),
        &Env::default(),
    );
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(
        p[0],
        "/etc/kiosk-gateway/config.toml:4: audio.opus_frame_ms: must be 20 or 40"
    );

    // The SIP leg's default is its offer's 20 ms; 40 is refused there.
    let sip = "[session]\nprovision = \"daily-sip\"\n[agent]\nstart_url = \"https://agent.example/start\"\n";
    let env = Env::new([("KIOSK_GATEWAY_DAILY_API_KEY", "k")], None);
    assert_eq!(parse(sip, &env).unwrap().audio.opus_frame_ms, Millis(20));
    let p = problems(&format!("{sip}[audio]\nopus_frame_ms = 40\n"), &env);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].ends_with("audio.opus_frame_ms: must be 20 with session.provision = \"daily-sip\": the SIP leg offers 20 ms packets"),
        "{}",
        p[0]
    );
    let env = Env::new(
        [
            ("KIOSK_GATEWAY_DAILY_API_KEY", "k"),
            ("KIOSK_GATEWAY_AUDIO_OPUS_FRAME_MS", "40"),
        ],
        None,
    );
    assert_eq!(problems(sip, &env).len(), 1);
}

#[test]
fn log_level_takes_per_target_levels_and_names_a_bad_one() {
    let src = format!("{MINIMAL}[log]\nlevel = \"warn,kiosk_gateway::link=debug\"\n");
    let c = parse(&src, &Env::default()).unwrap();
    assert_eq!(c.log.level, "warn,kiosk_gateway::link=debug");
    let src = format!("{MINIMAL}[log]\nlevel = \"kiosk_gateway=loud\"\n");
    let p = problems(&src, &Env::default());
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].contains("log.level: expected a level such as \"info\" or \"debug\""),
        "{}",
        p[0]
    );
}

#[test]
fn unknown_section_is_an_error() {
    let p = problems(
        &format!("{MINIMAL}[stauts]\nlisten = \"x\"\n"),
        &Env::default(),
    );
    assert_eq!(p.len(), 1);
    assert!(
        p[0].contains(":3: stauts: unknown section; did you mean \"status\"?"),
        "{}",
        p[0]
    );
}

#[test]
fn syntax_errors_name_the_line() {
    let err = parse("[vad]\naggressiveness = = 2\n", &Env::default()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("/etc/kiosk-gateway/config.toml:2: not valid TOML"),
        "{text}"
    );
}

#[test]
fn environment_overrides_the_file() {
    let env = Env::new(
        [
            ("KIOSK_GATEWAY_STATUS_LISTEN", "127.0.0.1:0"),
            ("KIOSK_GATEWAY_VAD_AGGRESSIVENESS", "3"),
            ("KIOSK_GATEWAY_AUDIO_BARGE_IN", "false"),
        ],
        None,
    );
    let c = parse(&format!("{MINIMAL}[vad]\naggressiveness = 1\n"), &env).unwrap();
    assert_eq!(c.status.listen.port(), 0);
    assert_eq!(c.vad.aggressiveness.level(), 3);
    assert!(!c.audio.barge_in);
}

#[test]
fn bad_environment_values_name_the_variable() {
    let env = Env::new(
        [
            ("KIOSK_GATEWAY_VAD_AGGRESSIVENESS", "high"),
            ("KIOSK_GATEWAY_STATUS_LISTN", "0.0.0.0:80"),
        ],
        None,
    );
    let p = problems(MINIMAL, &env);
    assert_eq!(p.len(), 2, "{p:#?}");
    assert!(p.iter().any(|l| l.starts_with(
        "environment variable KIOSK_GATEWAY_VAD_AGGRESSIVENESS: vad.aggressiveness: expected an integer"
    )));
    assert!(p.iter().any(|l| l.contains("KIOSK_GATEWAY_STATUS_LISTN")
        && l.contains("did you mean \"KIOSK_GATEWAY_STATUS_LISTEN\"?")));
}

#[test]
fn secrets_come_from_env_file_or_credentials_and_never_from_the_file_itself() {
    use secrecy::ExposeSecret;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("daily.key"), "from-file\n").unwrap();
    std::fs::write(dir.path().join("sync_token"), "from-credential").unwrap();
    std::fs::write(dir.path().join("kiosk-gateway_status_token"), "from-folder").unwrap();
    let config_path = dir.path().join("config.toml");
    let src = format!(
        "{MINIMAL}[daily]\napi_key_file = \"daily.key\"\n[sync]\nurl = \"https://up.example/v1/batches\"\n"
    );
    let env = Env::new(
        [("KIOSK_GATEWAY_AGENT_API_KEY", "from-env")],
        Some(dir.path().to_path_buf()),
    );
    let c = Config::parse(&config_path, &src, &env).unwrap();
    assert_eq!(
        c.daily.api_key.as_ref().unwrap().expose_secret(),
        "from-file"
    );
    assert_eq!(
        c.agent.api_key.as_ref().unwrap().expose_secret(),
        "from-env"
    );
    assert_eq!(
        c.sync.token.as_ref().unwrap().expose_secret(),
        "from-credential"
    );
    let debug = format!("{c:?}");
    for secret in ["from-file", "from-env", "from-credential"] {
        assert!(
            !debug.contains(secret),
            "secret {secret} leaked into Debug output"
        );
    }

    let inline = format!("{MINIMAL}[daily]\napi_key = \"sk-live-123\"\n");
    let p = problems(&inline, &Env::default());
    assert_eq!(p.len(), 1);
    assert!(p[0].contains(":4: daily.api_key: secrets are not read from the config file"));
    assert!(!p[0].contains("sk-live-123"));
}

#[test]
fn unreadable_secret_file_is_reported_without_its_content() {
    let p = problems(
        &format!("{MINIMAL}[status]\ntoken_file = \"/nonexistent/status-token\"\n"),
        &Env::default(),
    );
    assert_eq!(p.len(), 1);
    assert!(p[0].contains("status.token_file: cannot read /nonexistent/status-token"));
}

#[test]
fn listening_beyond_loopback_needs_a_token() {
    let p = problems(
        &format!("{MINIMAL}[status]\nlisten = \"0.0.0.0:8080\"\n"),
        &Env::default(),
    );
    assert_eq!(p.len(), 1);
    assert!(
        p[0].contains(":4: status.listen: missing secret status.token"),
        "{}",
        p[0]
    );
    let env = Env::new([("KIOSK_GATEWAY_STATUS_TOKEN", "t0ken")], None);
    assert!(
        parse(
            &format!("{MINIMAL}[status]\nlisten = \"0.0.0.0:8080\"\n"),
            &env
        )
        .is_ok()
    );
}

#[test]
fn relative_paths_are_taken_from_the_config_folder() {
    let c = Config::parse(
        Path::new("/srv/kiosk/config.toml"),
        &format!("{MINIMAL}[store]\npath = \"state/kiosk.db\"\n"),
        &Env::default(),
    )
    .unwrap();
    assert_eq!(c.store.path, Path::new("/srv/kiosk/state/kiosk.db"));
}

#[test]
fn kiosk_id_is_checked() {
    let p = problems(
        &format!("{MINIMAL}[kiosk]\nid = \"lobby 1\"\n"),
        &Env::default(),
    );
    assert_eq!(p.len(), 1);
    assert!(p[0].contains("kiosk.id: expected 1 to 64 letters"));
}

#[test]
fn kiosk_time_zone_is_an_iana_name() {
    let c = parse(
        &format!("{MINIMAL}[kiosk]\ntime_zone = \"Europe/Paris\"\n"),
        &Env::default(),
    )
    .unwrap();
    assert_eq!(
        c.kiosk
            .time_zone
            .and_then(|z| z.iana_name().map(str::to_string)),
        Some("Europe/Paris".to_string())
    );
    let p = problems(
        &format!("{MINIMAL}[kiosk]\ntime_zone = \"Europe/Pariss\"\n"),
        &Env::default(),
    );
    assert_eq!(p.len(), 1);
    assert!(
        p[0].contains("config.toml:4")
            && p[0].contains("kiosk.time_zone: unknown time zone \"Europe/Pariss\""),
        "{p:?}"
    );
}

proptest::proptest! {
    /// Any config text, TOML-shaped or not, gives a config or errors that
    /// each name a line, never a panic. Cases: 256 by default,
    /// `PROPTEST_CASES=100000` for the full run.
    #[test]
    fn any_config_text_is_parsed_or_refused_with_located_errors(
        lines in proptest::collection::vec(config_line(), 0..30)
    ) {
        let src = lines.join("\n");
        if let Err(e) = Config::parse(std::path::Path::new("fuzz.toml"), &src, &Env::default()) {
            proptest::prop_assert!(e.to_string().contains("fuzz.toml"), "{e}");
        }
    }
}

fn config_line() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let sections = prop::sample::select(vec![
        "[kiosk]",
        "[audio]",
        "[vad]",
        "[daily]",
        "[agent]",
        "[session]",
        "[store]",
        "[sync]",
        "[status]",
        "[log]",
        "[[x]]",
        "[",
        "[audio.x]",
    ]);
    let keys = prop::sample::select(vec![
        "id",
        "input",
        "output",
        "dtx",
        "opus_complexity",
        "jitter_min_ms",
        "aggressiveness",
        "hangover_ms",
        "api_key",
        "api_key_file",
        "offer_url",
        "start_url",
        "stun_urls",
        "trigger",
        "provision",
        "idle_timeout",
        "path",
        "url",
        "token",
        "listen",
        "level",
        "allowed_hosts",
        "public_url",
        "bogus",
    ]);
    let values = prop_oneof![
        Just("\"x\"".to_string()),
        Just("\"wav:/tmp/a.wav\"".to_string()),
        Just("\"http://127.0.0.1:7860/api/offer\"".to_string()),
        Just("\"5s\"".to_string()),
        Just("true".to_string()),
        Just("[]".to_string()),
        Just("[\"a\", 1]".to_string()),
        Just("{ a = 1 }".to_string()),
        any::<i64>().prop_map(|i| i.to_string()),
        any::<f64>().prop_map(|f| f.to_string()),
        ".{0,30}",
    ];
    prop_oneof![
        sections.prop_map(str::to_string),
        (keys, values).prop_map(|(k, v)| format!("{k} = {v}")),
        ".{0,40}",
    ]
}

#[test]
fn daily_transcription_is_off_by_default_and_needs_the_api_key() {
    let c = parse(
        &format!("{MINIMAL}[kiosk]\nid = \"lobby-1\"\n"),
        &Env::default(),
    )
    .unwrap();
    assert!(!c.daily.transcription);
    assert_eq!(c.daily.sip_display_name, "lobby-1");

    let src = format!("{MINIMAL}[daily]\ntranscription = true\nsip_display_name = \"Lobby\"\n");
    let p = problems(&src, &Env::default());
    assert_eq!(p.len(), 1, "{p:#?}");
    assert!(
        p[0].starts_with("/etc/kiosk-gateway/config.toml:4: daily.transcription: missing secret"),
        "{}",
        p[0]
    );
    let env = Env::new([("KIOSK_GATEWAY_DAILY_API_KEY", "k")], None);
    let c = parse(&src, &env).unwrap();
    assert!(c.daily.transcription);
    assert_eq!(c.daily.sip_display_name, "Lobby");

    let p = problems(
        &format!("{MINIMAL}[daily]\nsip_display_name = \" \"\n"),
        &Env::default(),
    );
    assert!(
        p[0].contains("daily.sip_display_name: must not be empty"),
        "{p:#?}"
    );
}
