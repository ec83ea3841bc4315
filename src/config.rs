//! The gateway's configuration: one TOML file, overridden per key by
//! `KIOSK_GATEWAY_<SECTION>_<KEY>` environment variables, with secrets from
//! the environment, `*_file` keys or systemd credentials. Loading reports
//! every problem at once, each with file, line and key.

mod loader;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use toml_edit::Document;

use crate::agent_settings::{AgentSettings, ProvisionMode};
use crate::audio::NoiseSuppression;
use crate::audio::{
    Aggressiveness, AudioSettings, DeviceSpec, Millis, OPUS_FRAME_LENGTHS, VadSettings,
};
use crate::daily::{DailySettings, Privacy, RoomSettings};
use crate::link::{IceServer, LinkSettings};
use crate::sip::leg::SipTimeouts;

use loader::Loader;
pub use loader::{ENV_PREFIX, Env, Origin, Problem};

/// Where `run` and the other commands look when no `--config` is given.
pub const DEFAULT_PATH: &str = "/etc/kiosk-gateway/config.toml";
/// Environment variable naming the config file.
pub const PATH_VAR: &str = "KIOSK_GATEWAY_CONFIG";

/// This kiosk's identity in logs, room names and upstream sync.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KioskId(String);

impl KioskId {
    /// Letters, digits, `-` and `_`, 1 to 64 of them: the characters Daily
    /// allows in room names, which embed the id.
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(format!(
                "expected 1 to 64 letters, digits, '-' or '_', found {s:?}"
            ))
        }
    }

    /// The id as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KioskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The whole configuration, each section checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from.
    pub source: PathBuf,
    /// `[kiosk]`: who this kiosk is.
    pub kiosk: KioskConfig,
    /// `[audio]`: devices, codec and playout.
    pub audio: AudioSettings,
    /// `[vad]`: what counts as speech.
    pub vad: VadSettings,
    /// `[daily]`: the Daily REST API and the rooms made there.
    pub daily: DailyConfig,
    /// `[agent]`: where the voice agent is.
    pub agent: AgentConfig,
    /// `[session]`: what starts and ends a session.
    pub session: SessionConfig,
    /// `[sip]`: the SIP leg of `session.provision = "daily-sip"`.
    pub sip: SipTimeouts,
    /// `[store]`: the SQLite database.
    pub store: StoreConfig,
    /// `[sync]`: transcript upload.
    pub sync: SyncConfig,
    /// `[status]`: the status server.
    pub status: StatusConfig,
    /// `[log]`: logging.
    pub log: LogConfig,
}

/// `[kiosk]`.
#[derive(Debug, Clone)]
pub struct KioskConfig {
    /// Identity in logs, room names and uploads; default: the hostname.
    pub id: KioskId,
    /// Shown on the status page; default: the id.
    pub name: String,
    /// `kiosk.time_zone`: the IANA zone the status page shows times in;
    /// `None`: the system's.
    pub time_zone: Option<jiff::tz::TimeZone>,
}

/// `[daily]`.
#[derive(Debug, Clone)]
pub struct DailyConfig {
    /// The REST API's base URL.
    pub base_url: url::Url,
    /// The API key (a secret); needed to provision through Daily.
    pub api_key: Option<SecretString>,
    /// Who may join a session's room without a token.
    pub privacy: Privacy,
    /// Participants allowed in a session's room.
    pub max_participants: u32,
    /// Whether the room has Daily's text chat.
    pub enable_chat: bool,
    /// SIP mode: whether Daily transcribes the room and the transcript is
    /// fetched after the session.
    pub transcription: bool,
    /// SIP mode: the kiosk's name in the room; transcript cues by it are
    /// the visitor's. Default: the kiosk id.
    pub sip_display_name: String,
}

/// `[agent]`.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where sessions start (a Pipecat runner, Pipecat Cloud or an operator backend).
    pub start_url: Option<url::Url>,
    /// A fixed SmallWebRTC offer URL, for `provision = "static"`.
    pub offer_url: Option<url::Url>,
    /// Bearer key for the start endpoint (a secret).
    pub api_key: Option<SecretString>,
    /// STUN servers (`stun:host:port`); empty for agents on the local network.
    pub stun_urls: Vec<String>,
    /// Local UDP address for the call's ICE (`host:port`, port 0 = any).
    pub udp_bind: String,
}

/// What starts a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// A visitor speaks.
    Voice,
    /// A `POST /api/session/start` on the status server.
    Http,
    /// Nothing: a session is kept up.
    Always,
}

/// `[session]`.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// What starts a session.
    pub trigger: Trigger,
    /// How its cloud side is obtained.
    pub provision: ProvisionMode,
    /// A session ends after this long with nobody speaking.
    pub idle_timeout: Duration,
    /// The longest one session may last.
    pub max_duration: Duration,
    /// How long to wait for the agent's `bot-ready` before sending the visitor's buffered
    /// speech anyway.
    pub ready_timeout: Duration,
    /// A dropped call is given up (and provisioned anew) after this long.
    pub reconnect_timeout: Duration,
    /// WAV (any rate and channel count) played when a session cannot be set up;
    /// `None`: the built-in one.
    pub failure_prompt: Option<PathBuf>,
}

/// `[store]`.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The SQLite database file.
    pub path: PathBuf,
    /// Uploaded rows older than this are deleted; rows not uploaded never are.
    pub retention_days: u32,
}

/// `[sync]`.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// Upstream endpoint; `None` leaves sync off.
    pub url: Option<url::Url>,
    /// Bearer token for the upstream (a secret).
    pub token: Option<SecretString>,
    /// How often to upload.
    pub interval: Duration,
    /// Transcript lines per upload.
    pub batch_size: u32,
    /// One upload attempt's time limit.
    pub timeout: Duration,
}

/// `[status]`.
#[derive(Debug, Clone)]
pub struct StatusConfig {
    /// Address of the status page, JSON API and metrics; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Token for the status page and API (a secret); required off loopback.
    pub token: Option<SecretString>,
    /// How often Daily and the agent are checked for the status page; zero
    /// checks only after a session failed to start.
    pub probe_interval: Duration,
    /// `Host` values the status server answers to beyond its own addresses,
    /// `localhost` and the kiosk's hostname (DNS-rebinding defence).
    pub allowed_hosts: Vec<AllowedHost>,
    /// The address technicians reach the status server at when it is not
    /// the listen address (a reverse proxy, a DNS name): its host is
    /// allowed, and with `https` the login cookie is `Secure`.
    pub public_url: Option<url::Url>,
}

/// One allowed `Host`: a name or IP address, with a port or for any port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    /// Lower case; IPv6 addresses in brackets, as in a `Host` header.
    pub host: String,
    /// `None`: any port.
    pub port: Option<u16>,
}

impl AllowedHost {
    /// Reads `name`, `name:port`, `192.0.2.7[:port]` or `[2001:db8::7][:port]`
    /// (the form of an HTTP `Host` header), nothing more.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "expected a host name or IP address with an optional port, such as \
                 \"kiosk-7.lobby.example\" or \"192.0.2.7:8080\", found {s:?}"
            )
        };
        if s.is_empty() || s.contains(['/', '@', '?', '#', '\\']) || s.contains(char::is_whitespace)
        {
            return Err(bad());
        }
        let url = url::Url::parse(&format!("http://{s}/")).map_err(|_| bad())?;
        let host = url.host_str().ok_or_else(bad)?.to_string();
        // `Url` drops a port that is the scheme's default; keep what was written.
        let port = match s.rsplit_once(':') {
            Some((_, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                Some(p.parse::<u16>().map_err(|_| bad())?)
            }
            _ => None,
        };
        Ok(Self { host, port })
    }
}

/// How a secret is taken from wherever it comes from (environment, file,
/// credential, or a technician's sign-in): surrounding whitespace, the
/// newline an editor or `echo` leaves included, is not part of it.
pub fn secret_text(raw: &str) -> &str {
    raw.trim()
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// The journal when started by systemd, stderr otherwise.
    Auto,
    /// The systemd journal.
    Journal,
    /// Standard error.
    Stderr,
}

/// `[log]`.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// A level, or levels per target: `"info"`, `"info,kiosk_gateway::link=debug"`.
    pub level: String,
    /// Where log lines go.
    pub target: LogTarget,
}

/// Parses a log filter: a level, or levels per target
/// ("info,kiosk_gateway::link=debug"). The one statement of what `log.level`
/// and `RUST_LOG` accept, so `check` cannot drift from the logger. `Targets`,
/// not `EnvFilter`: per-target levels are all a technician needs, and
/// `EnvFilter`'s span and field matching would bring a regex engine into the
/// binary for nothing.
pub fn parse_log_filter(
    filter: &str,
) -> Result<tracing_subscriber::filter::Targets, tracing_subscriber::filter::ParseError> {
    filter.parse()
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("{}: not valid TOML: {message}", location(path, *line))]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Where, when the parser says.
        line: Option<usize>,
        /// The parser's complaint.
        message: String,
    },
    /// Values that are missing, malformed or at odds, all of them.
    #[error("{}", problems_text(.0))]
    Invalid(Vec<Problem>),
}

fn location(path: &Path, line: Option<usize>) -> String {
    match line {
        Some(l) => format!("{}:{l}", path.display()),
        None => path.display().to_string(),
    }
}

fn problems_text(problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(ToString::to_string).collect();
    lines.join("\n")
}

impl ConfigError {
    /// Every problem, one per line, for printing.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid(p) => p.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

impl Config {
    /// Loads and validates the file at `path`, applying `env`.
    pub fn load(path: &Path, env: &Env) -> Result<Config, ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &src, env)
    }

    /// Validates `src` as if it had been read from `path`.
    pub fn parse(path: &Path, src: &str, env: &Env) -> Result<Config, ConfigError> {
        let doc = Document::parse(src).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            line: e
                .span()
                .map(|s| src[..s.start.min(src.len())].matches('\n').count() + 1),
            message: e.message().trim().to_string(),
        })?;
        let mut l = Loader::new(path, src, doc.as_table(), env);
        let config = read(&mut l, path, env);
        let problems = l.finish();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

impl Config {
    /// The Daily client's settings; `None` without an API key.
    pub fn daily_settings(&self) -> Option<DailySettings> {
        Some(DailySettings {
            base_url: self.daily.base_url.clone(),
            api_key: self.daily.api_key.clone()?,
            room: RoomSettings {
                lifetime: self.session.max_duration,
                max_participants: self.daily.max_participants,
                eject_at_room_exp: true,
                enable_chat: self.daily.enable_chat,
                privacy: self.daily.privacy,
            },
            ..DailySettings::default()
        })
    }

    /// How sessions reach the agent.
    pub fn agent_settings(&self) -> AgentSettings {
        AgentSettings {
            start_url: self.agent.start_url.clone(),
            offer_url: self.agent.offer_url.clone(),
            api_key: self.agent.api_key.clone(),
            ..AgentSettings::default()
        }
    }

    /// The call's settings.
    pub fn link_settings(&self) -> LinkSettings {
        LinkSettings {
            ice_servers: self
                .agent
                .stun_urls
                .iter()
                .map(|u| IceServer {
                    urls: vec![u.clone()],
                    ..IceServer::default()
                })
                .collect(),
            udp_bind: vec![self.agent.udp_bind.clone()],
            reconnect_timeout: self.session.reconnect_timeout,
            ..LinkSettings::default()
        }
    }

    /// The endpoint the reachability prober checks for the agent: where
    /// sessions are started, or the fixed offer URL.
    pub fn agent_probe_url(&self) -> Option<url::Url> {
        match self.session.provision {
            ProvisionMode::Static => self.agent.offer_url.clone(),
            ProvisionMode::Daily | ProvisionMode::DailySip | ProvisionMode::Pipecat => {
                self.agent.start_url.clone()
            }
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "kiosk".to_string())
}

fn default_store_path(env: &Env) -> PathBuf {
    env.state_dir()
        .unwrap_or_else(|| PathBuf::from("/var/lib/kiosk-gateway"))
        .join("kiosk.db")
}

fn read(l: &mut Loader<'_>, path: &Path, env: &Env) -> Config {
    let kiosk = read_kiosk(l);
    let mut audio = read_audio(l);
    let vad = read_vad(l);
    let daily = DailyConfig {
        base_url: l
            .url("daily", "base_url")
            .unwrap_or_else(|| url::Url::parse("https://api.daily.co/v1").expect("valid URL")),
        api_key: l.secret("daily", "api_key"),
        privacy: match l.choice("daily", "privacy", "private", &["private", "public"]) {
            "public" => Privacy::Public,
            _ => Privacy::Private,
        },
        max_participants: l.integer("daily", "max_participants", 3, 2..=200) as u32,
        enable_chat: l.boolean("daily", "enable_chat", false),
        transcription: l.boolean("daily", "transcription", false),
        sip_display_name: l.string("daily", "sip_display_name", kiosk.id.as_str()),
    };
    let agent = AgentConfig {
        start_url: l.url("agent", "start_url"),
        offer_url: l.url("agent", "offer_url"),
        api_key: l.secret("agent", "api_key"),
        stun_urls: l.strings("agent", "stun_urls", &["stun:stun.l.google.com:19302"]),
        udp_bind: l.string("agent", "udp_bind", "0.0.0.0:0"),
    };
    let session = read_session(l);
    if session.provision == ProvisionMode::DailySip && !l.is_set("audio", "opus_frame_ms") {
        audio.opus_frame_ms = crate::sip::OFFERED_PTIME;
    }
    let secs = Duration::from_secs;
    let sip = SipTimeouts {
        answer_timeout: l.duration("sip", "answer_timeout", secs(10), secs(1)..=secs(120)),
        media_timeout: l.duration("sip", "media_timeout", secs(10), secs(2)..=secs(600)),
    };
    let store = StoreConfig {
        path: l.path("store", "path", default_store_path(env)),
        retention_days: l.integer("store", "retention_days", 30, 1..=3_650) as u32,
    };
    let sync = SyncConfig {
        url: l.url("sync", "url"),
        token: l.secret("sync", "token"),
        interval: l.duration(
            "sync",
            "interval",
            Duration::from_secs(60),
            Duration::from_secs(1)..=Duration::from_secs(86_400),
        ),
        batch_size: l.integer("sync", "batch_size", 500, 1..=10_000) as u32,
        timeout: l.duration(
            "sync",
            "timeout",
            Duration::from_secs(30),
            Duration::from_secs(1)..=Duration::from_secs(600),
        ),
    };
    let status = StatusConfig {
        listen: l.socket_addr("status", "listen", SocketAddr::from(([127, 0, 0, 1], 8080))),
        token: l.secret("status", "token"),
        probe_interval: l.duration(
            "status",
            "probe_interval",
            Duration::from_secs(60),
            Duration::ZERO..=Duration::from_secs(86_400),
        ),
        allowed_hosts: read_allowed_hosts(l),
        public_url: l.url("status", "public_url"),
    };
    let log = read_log(l);
    let config = Config {
        source: path.to_path_buf(),
        kiosk,
        audio,
        vad,
        daily,
        agent,
        session,
        sip,
        store,
        sync,
        status,
        log,
    };
    check_requirements(l, &config);
    config
}

fn read_allowed_hosts(l: &mut Loader<'_>) -> Vec<AllowedHost> {
    let mut hosts = Vec::new();
    for entry in l.strings("status", "allowed_hosts", &[]) {
        match AllowedHost::parse(&entry) {
            Ok(h) => hosts.push(h),
            Err(message) => l.problem_at("status", "allowed_hosts", message),
        }
    }
    hosts
}

fn read_kiosk(l: &mut Loader<'_>) -> KioskConfig {
    let raw_id = l.string("kiosk", "id", &hostname());
    let id = KioskId::parse(&raw_id).unwrap_or_else(|message| {
        l.problem_at("kiosk", "id", message);
        KioskId("invalid".to_string())
    });
    let name = l.string("kiosk", "name", id.as_str());
    let zone = l.string("kiosk", "time_zone", "");
    let time_zone = if zone.is_empty() {
        None
    } else {
        match jiff::tz::TimeZone::get(&zone) {
            Ok(tz) => Some(tz),
            Err(_) => {
                l.problem_at(
                    "kiosk",
                    "time_zone",
                    format!(
                        "unknown time zone {zone:?}; expected an IANA name such as \"Europe/Paris\""
                    ),
                );
                None
            }
        }
    };
    KioskConfig {
        id,
        name,
        time_zone,
    }
}

/// Milliseconds within `range`, for the audio engine's settings.
fn millis(
    l: &mut Loader<'_>,
    section: &'static str,
    key: &'static str,
    default: Millis,
    range: std::ops::RangeInclusive<u32>,
) -> Millis {
    let range = i64::from(*range.start())..=i64::from(*range.end());
    Millis(l.integer(section, key, i64::from(default.0), range) as u32)
}

fn read_audio(l: &mut Loader<'_>) -> AudioSettings {
    let d = AudioSettings::default();
    let a = AudioSettings {
        input: DeviceSpec::parse(&l.string("audio", "input", "default")),
        output: DeviceSpec::parse(&l.string("audio", "output", "default")),
        barge_in: l.boolean("audio", "barge_in", d.barge_in),
        opus_bitrate_bps: l.integer(
            "audio",
            "opus_bitrate_bps",
            d.opus_bitrate_bps.into(),
            6_000..=128_000,
        ) as i32,
        opus_complexity: l.integer("audio", "opus_complexity", d.opus_complexity.into(), 0..=10)
            as i32,
        opus_expected_loss_percent: l.integer(
            "audio",
            "opus_expected_loss_percent",
            d.opus_expected_loss_percent.into(),
            0..=100,
        ) as i32,
        opus_frame_ms: millis(l, "audio", "opus_frame_ms", d.opus_frame_ms, 20..=40),
        dtx: l.boolean("audio", "dtx", d.dtx),
        jitter_min_ms: millis(l, "audio", "jitter_min_ms", d.jitter_min_ms, 20..=500),
        jitter_max_ms: millis(l, "audio", "jitter_max_ms", d.jitter_max_ms, 20..=1_000),
        device_buffer_ms: millis(l, "audio", "device_buffer_ms", d.device_buffer_ms, 5..=200),
        input_buffer_ms: millis(l, "audio", "input_buffer_ms", d.input_buffer_ms, 50..=5_000),
        reopen_backoff_min_ms: millis(
            l,
            "audio",
            "reopen_backoff_min_ms",
            d.reopen_backoff_min_ms,
            100..=60_000,
        ),
        reopen_backoff_max_ms: millis(
            l,
            "audio",
            "reopen_backoff_max_ms",
            d.reopen_backoff_max_ms,
            100..=600_000,
        ),
        echo_cancel: l.boolean("audio", "echo_cancel", d.echo_cancel),
        noise_suppression: NoiseSuppression::parse(l.choice(
            "audio",
            "noise_suppression",
            NoiseSuppression::NAMES[0],
            &NoiseSuppression::NAMES,
        ))
        .unwrap_or_default(),
        auto_gain: l.boolean("audio", "auto_gain", d.auto_gain),
        echo_gate: l.boolean("audio", "echo_gate", d.echo_gate),
    };
    if !OPUS_FRAME_LENGTHS.contains(&a.opus_frame_ms) {
        l.problem_at("audio", "opus_frame_ms", "must be 20 or 40");
    }
    if a.jitter_max_ms < a.jitter_min_ms {
        l.problem_at(
            "audio",
            "jitter_max_ms",
            "must not be less than audio.jitter_min_ms",
        );
    }
    if a.reopen_backoff_max_ms < a.reopen_backoff_min_ms {
        l.problem_at(
            "audio",
            "reopen_backoff_max_ms",
            "must not be less than audio.reopen_backoff_min_ms",
        );
    }
    a
}

fn read_vad(l: &mut Loader<'_>) -> VadSettings {
    let d = VadSettings::default();
    let level = l.integer(
        "vad",
        "aggressiveness",
        d.aggressiveness.level().into(),
        0..=3,
    ) as u8;
    let v = VadSettings {
        aggressiveness: Aggressiveness::from_level(level).unwrap_or(d.aggressiveness),
        onset_window_ms: millis(l, "vad", "onset_window_ms", d.onset_window_ms, 10..=1_000),
        onset_voiced_ms: millis(l, "vad", "onset_voiced_ms", d.onset_voiced_ms, 10..=1_000),
        preroll_ms: millis(l, "vad", "preroll_ms", d.preroll_ms, 0..=2_000),
        hangover_ms: millis(l, "vad", "hangover_ms", d.hangover_ms, 100..=5_000),
        min_speech_ms: millis(l, "vad", "min_speech_ms", d.min_speech_ms, 0..=5_000),
        max_utterance_ms: millis(
            l,
            "vad",
            "max_utterance_ms",
            d.max_utterance_ms,
            1_000..=300_000,
        ),
        buffer_ms: millis(l, "vad", "buffer_ms", d.buffer_ms, 1_000..=120_000),
        echo_margin_db: l.number("vad", "echo_margin_db", d.echo_margin_db.into(), 0.0..=40.0)
            as f32,
    };
    if v.onset_voiced_ms > v.onset_window_ms {
        l.problem_at(
            "vad",
            "onset_voiced_ms",
            "must not be more than vad.onset_window_ms",
        );
    }
    v
}

fn read_session(l: &mut Loader<'_>) -> SessionConfig {
    let trigger = match l.choice("session", "trigger", "voice", &["voice", "http", "always"]) {
        "http" => Trigger::Http,
        "always" => Trigger::Always,
        _ => Trigger::Voice,
    };
    let provision = match l.choice(
        "session",
        "provision",
        "static",
        &["static", "daily", "daily-sip", "pipecat"],
    ) {
        "daily" => ProvisionMode::Daily,
        "daily-sip" => ProvisionMode::DailySip,
        "pipecat" => ProvisionMode::Pipecat,
        _ => ProvisionMode::Static,
    };
    let secs = Duration::from_secs;
    SessionConfig {
        trigger,
        provision,
        idle_timeout: l.duration("session", "idle_timeout", secs(30), secs(5)..=secs(3_600)),
        max_duration: l.duration(
            "session",
            "max_duration",
            secs(15 * 60),
            secs(60)..=secs(24 * 3_600),
        ),
        // Daily's SIP endpoint takes callers only once the bot has joined
        // the room, which takes longer than a WebRTC agent's bot-ready.
        ready_timeout: l.duration(
            "session",
            "ready_timeout",
            secs(if provision == ProvisionMode::DailySip {
                30
            } else {
                5
            }),
            secs(1)..=secs(120),
        ),
        reconnect_timeout: l.duration(
            "session",
            "reconnect_timeout",
            secs(15),
            secs(1)..=secs(600),
        ),
        failure_prompt: Some(l.path("session", "failure_prompt", PathBuf::new()))
            .filter(|p| !p.as_os_str().is_empty()),
    }
}

fn read_log(l: &mut Loader<'_>) -> LogConfig {
    let level = l.string("log", "level", "info");
    if let Err(e) = parse_log_filter(&level) {
        l.problem_at(
            "log",
            "level",
            format!("expected a level such as \"info\" or \"debug\" ({e})"),
        );
    }
    let target = match l.choice("log", "target", "auto", &["auto", "journal", "stderr"]) {
        "journal" => LogTarget::Journal,
        "stderr" => LogTarget::Stderr,
        _ => LogTarget::Auto,
    };
    LogConfig { level, target }
}

/// Keys that are only required because of another key's value.
fn check_requirements(l: &mut Loader<'_>, c: &Config) {
    let provision_line = l.line("session", Some("provision"));
    let require = |l: &mut Loader<'_>, missing: bool, key: &str, why: &str| {
        if missing {
            let origin = l.file_origin(provision_line);
            l.problem(origin, key.to_string(), why.to_string());
        }
    };
    match c.session.provision {
        ProvisionMode::Static => require(
            l,
            c.agent.offer_url.is_none(),
            "agent.offer_url",
            "missing: session.provision = \"static\" needs the agent's offer URL",
        ),
        ProvisionMode::Daily | ProvisionMode::DailySip => {
            let mode = if c.session.provision == ProvisionMode::Daily {
                "daily"
            } else {
                "daily-sip"
            };
            require(
                l,
                c.daily.api_key.is_none(),
                "daily.api_key",
                &format!(
                    "missing secret: session.provision = \"{mode}\" needs a Daily API key \
                     (KIOSK_GATEWAY_DAILY_API_KEY, daily.api_key_file or credential daily_api_key)"
                ),
            );
            require(
                l,
                c.agent.start_url.is_none(),
                "agent.start_url",
                &format!("missing: session.provision = \"{mode}\" needs the agent's start URL"),
            );
        }
        ProvisionMode::Pipecat => require(
            l,
            c.agent.start_url.is_none(),
            "agent.start_url",
            "missing: session.provision = \"pipecat\" needs the agent's start URL",
        ),
    }
    if c.session.provision == ProvisionMode::DailySip
        && c.audio.opus_frame_ms != crate::sip::OFFERED_PTIME
    {
        l.problem_at(
            "audio",
            "opus_frame_ms",
            "must be 20 with session.provision = \"daily-sip\": the SIP leg offers 20 ms packets",
        );
    }
    if c.daily.transcription && c.daily.api_key.is_none() {
        l.problem_at(
            "daily",
            "transcription",
            "missing secret daily.api_key: fetching transcripts from Daily needs the API key \
             (KIOSK_GATEWAY_DAILY_API_KEY, daily.api_key_file or credential daily_api_key)",
        );
    }
    if c.daily.sip_display_name.trim().is_empty() {
        l.problem_at("daily", "sip_display_name", "must not be empty");
    }
    if c.sync.url.is_some() && c.sync.token.is_none() {
        l.problem_at(
            "sync",
            "url",
            "missing secret sync.token: uploading needs a bearer token \
             (KIOSK_GATEWAY_SYNC_TOKEN, sync.token_file or credential sync_token)",
        );
    }
    if !c.status.listen.ip().is_loopback() && c.status.token.is_none() {
        l.problem_at(
            "status",
            "listen",
            format!(
                "missing secret status.token: the status page serves transcripts, so \
                 listening on {} (beyond this machine) needs a token \
                 (KIOSK_GATEWAY_STATUS_TOKEN, status.token_file or credential status_token)",
                c.status.listen
            ),
        );
    }
}

#[cfg(test)]
mod tests;
