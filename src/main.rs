use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kiosk_gateway::audio::{self, Aggressiveness, Millis, SampleRate};
use kiosk_gateway::config::{self, Config, Env};
use kiosk_gateway::daily::cli::{RoomCommand, run_room_command};
use kiosk_gateway::daily::{DailyClient, RoomName};
use kiosk_gateway::demo::{AgentEndpoint, DemoAgent};
use kiosk_gateway::link::call::{CallInput, CallOutput};
use kiosk_gateway::link::cli::{CallArgs, Endpoint};
use kiosk_gateway::telemetry::RecentEvents;
use kiosk_gateway::{commands, daemon, telemetry};

/// Bridges an on-prem voice kiosk's microphone and speaker to a cloud voice agent.
#[derive(Parser)]
#[command(name = "kiosk-gateway", version, about)]
struct Cli {
    /// Config file [default: /etc/kiosk-gateway/config.toml]
    #[arg(long, global = true, env = config::PATH_VAR)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once; boxing would only add noise
enum Command {
    /// Run the gateway daemon (systemd's ExecStart).
    Run,
    /// One full session, offline against the built-in loopback agent, or against an external agent.
    Demo {
        /// Visitor speech (WAV); default: the built-in four-utterance fixture.
        #[arg(long, conflicts_with = "devices")]
        input: Option<PathBuf>,
        /// Use the real default microphone and speaker (an on-site self-test).
        #[arg(long)]
        devices: bool,
        /// Where SQLite and the WAVs go; default: a new folder under the temp dir.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// An external agent's SmallWebRTC offer URL instead of the built-in agent.
        #[arg(long, group = "external")]
        offer_url: Option<url::Url>,
        /// An external agent's Pipecat `POST /start` endpoint (its reply gives
        /// `sessionId` or `offer_url`) instead of the built-in agent.
        #[arg(long, group = "external")]
        start_url: Option<url::Url>,
        /// Environment variable holding the start endpoint's bearer key
        /// [default: KIOSK_GATEWAY_AGENT_API_KEY, when set].
        #[arg(long, requires = "start_url", conflicts_with = "offer_url")]
        api_key_env: Option<String>,
        /// Local UDP address for ICE with an external agent.
        #[arg(long, default_value = "0.0.0.0:0", requires = "external")]
        bind: String,
        /// Use no STUN server with an external agent (agents on the local network).
        #[arg(long, requires = "external")]
        no_stun: bool,
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Validate the config file and print every problem.
    Check,
    /// Test the configured speaker and microphone: plays a 1 s tone sweep,
    /// listens for it, and reports loop delay, level and noise floor
    /// (stop the service first; its page runs the same test through it).
    Selftest {
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Print stored transcripts.
    Transcripts {
        /// Only this session (its id).
        #[arg(long)]
        session: Option<String>,
        /// JSON: an array of {id, session_id, seq, role, text, final, spoken_at}.
        #[arg(long)]
        json: bool,
    },
    /// Upload unsynced transcripts to `sync.url` (Ctrl-C stops).
    Sync {
        /// Upload what is waiting, then exit (non-zero if anything is left).
        #[arg(long)]
        once: bool,
        /// Also send batches the upstream refused before.
        #[arg(long)]
        retry_parked: bool,
    },
    /// Run voice activity detection over a WAV file (or a live input) and print the utterances.
    Vad {
        /// WAV file (any rate, mono or multichannel)
        #[arg(long, required_unless_present = "device", conflicts_with = "device")]
        input: Option<PathBuf>,
        /// What the speaker played meanwhile (WAV, same start, any rate):
        /// its echo is cancelled from --input first
        #[arg(long, requires = "input")]
        reference: Option<PathBuf>,
        /// Listen on a live input instead ("default" or a device name)
        #[arg(long)]
        device: Option<String>,
        /// How long to listen on --device
        #[arg(long, default_value_t = 10_000)]
        duration_ms: u32,
        /// VAD aggressiveness, 0 (least) to 3 (most noise rejection); default from the config
        #[arg(long)]
        aggressiveness: Option<Aggressiveness>,
        /// Print {"segments":[{"start_ms","end_ms"}],"speech_ms","duration_ms"}, with
        /// --reference also "echo":{"erle_db","delay_ms"}
        #[arg(long)]
        json: bool,
    },
    /// Daily rooms, for technicians (uses daily.api_key and daily.base_url).
    Room {
        #[command(subcommand)]
        action: RoomAction,
        /// Print JSON instead of one line per room.
        #[arg(long, global = true)]
        json: bool,
    },
    /// A direct call to a voice agent: sends audio, prints RTVI events and a summary.
    Call {
        /// SmallWebRTC offer URL (Pipecat); default: agent.offer_url from the config.
        #[arg(long, conflicts_with = "whip_url")]
        offer_url: Option<url::Url>,
        /// WHIP endpoint instead of SmallWebRTC.
        #[arg(long)]
        whip_url: Option<url::Url>,
        /// Audio to send, `wav:PATH`: any PCM WAV (any rate, mono or
        /// multichannel, 16/24/32-bit integer or float), repeated with pauses.
        #[arg(long)]
        input: CallInput,
        /// Where the agent's audio goes: `wav:PATH` (mono 16-bit at the
        /// input file's rate) or `none`.
        #[arg(long, default_value = "none")]
        output: CallOutput,
        /// Length of the call; a packet of audio is sent every 40 ms (`audio.opus_frame_ms`) throughout.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Near-silence sent between repetitions of the input.
        #[arg(long, default_value_t = 1500)]
        pause_ms: u64,
        /// Local UDP address for ICE.
        #[arg(long, default_value = "0.0.0.0:0")]
        bind: String,
        /// Use no STUN server (agents on the local network).
        #[arg(long)]
        no_stun: bool,
        /// Print events as JSON lines on stderr and the summary as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// A SIP call (e.g. a Daily room's dial-in URI): sends a WAV, records the peer, prints a summary.
    Dial {
        /// `sip:user@host[:port]` (the `sip:` may be left out); UDP only.
        uri: String,
        /// Audio to send, `wav:PATH` (any PCM WAV), streamed in real time.
        #[arg(long)]
        input: CallInput,
        /// Where the peer's audio goes: `wav:PATH` (at the input's rate) or `none`.
        #[arg(long, default_value = "none")]
        output: CallOutput,
        /// Length of the call from the answer; default: the input and 1 s.
        #[arg(long)]
        seconds: Option<f64>,
        /// Seconds to wait for an answer before giving up (CANCEL if ringing).
        #[arg(long, default_value_t = 30)]
        answer_timeout: u64,
        /// Hang up after this many seconds without RTP from the peer.
        #[arg(long, default_value_t = 10)]
        media_timeout: u64,
        /// Tries again after 480 or 503 (honouring Retry-After, at most 10 s).
        #[arg(long, default_value_t = 2)]
        retries: u32,
        /// Local IP address to use [default: the one routed to the peer].
        #[arg(long)]
        bind: Option<std::net::IpAddr>,
        /// Digest user name, used if the peer asks (401/407).
        #[arg(long)]
        user: Option<String>,
        /// Environment variable holding the digest password.
        #[arg(long, default_value = "KIOSK_GATEWAY_SIP_PASSWORD", requires = "user")]
        password_env: String,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the built-in loopback agent (SmallWebRTC on 127.0.0.1) until interrupted.
    LoopbackAgent {
        #[arg(long, default_value = "127.0.0.1:7860")]
        listen: std::net::SocketAddr,
        /// Reply played after each utterance, a 48 kHz mono WAV.
        #[arg(long)]
        reply: PathBuf,
    },
    /// List audio inputs and outputs with their rates and channel counts.
    Devices {
        /// Print {"inputs":[...],"outputs":[...]}
        #[arg(long)]
        json: bool,
    },
    /// Measure audio pipeline throughput (capture and playout paths).
    Bench {
        /// Microphone and speaker rate to simulate
        #[arg(long, default_value_t = 48_000)]
        device_rate: u32,
        /// Opus encoder complexity, 0-10; default from the config
        #[arg(long)]
        opus_complexity: Option<i32>,
        /// Print {"capture":{"x_realtime","ns_per_10ms_frame","stages"},"playout":{...},
        /// "audio_work_cpu_s_per_minute",...}
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum RoomAction {
    /// Create a room with the session room properties.
    Create {
        /// Room name; generated from the kiosk id when omitted.
        #[arg(long)]
        name: Option<String>,
    },
    /// Delete a room (a room already gone is not an error).
    Delete { name: String },
    /// List recent rooms.
    List,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let explicit = cli.config.is_some();
    let path = cli
        .config
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH));
    match cli.command {
        Command::Run => {
            let config = load(&path)?;
            let recent = RecentEvents::default();
            telemetry::init(&config.log, &config.kiosk.id, &recent);
            daemon::run(config, recent)?;
        }
        Command::Demo {
            input,
            devices,
            state_dir,
            offer_url,
            start_url,
            api_key_env,
            bind,
            no_stun,
            json,
        } => {
            let recent = RecentEvents::default();
            telemetry::init_for_command_with(&recent);
            let endpoint = match (offer_url, start_url) {
                (Some(url), _) => Some(AgentEndpoint::Offer(url)),
                (None, Some(url)) => Some(AgentEndpoint::Start {
                    url,
                    api_key: kiosk_gateway::demo::api_key_from_env(api_key_env.as_deref())?,
                }),
                (None, None) => None,
            };
            let agent = match endpoint {
                Some(endpoint) => DemoAgent::External {
                    endpoint,
                    udp_bind: bind,
                    stun: !no_stun,
                },
                None => DemoAgent::Loopback,
            };
            let summary = kiosk_gateway::demo::run(
                kiosk_gateway::demo::DemoArgs {
                    input,
                    devices,
                    state_dir,
                    agent,
                },
                recent,
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{}", summary.to_text());
            }
            if summary.session_id.is_none() {
                eprintln!("error: no session took place (no speech heard?)");
                return Ok(ExitCode::FAILURE);
            }
            if let Some(reason) = summary.failure() {
                eprintln!("error: the session failed ({reason}); the log above says why");
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Check => {
            if !commands::check(&path, &mut std::io::stdout(), &mut std::io::stderr())? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Selftest { json } => {
            telemetry::init_for_command();
            let config = tool_config(&path, explicit)?;
            let (audio, vad) = config.map(|c| (c.audio, c.vad)).unwrap_or_default();
            let report = kiosk_gateway::selftest::run_standalone(&audio, &vad)
                .context("the self-test could not run")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_text());
            }
            if !report.passed {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Transcripts { session, json } => {
            telemetry::init_for_command();
            let config = load(&path)?;
            commands::transcripts(
                &config.store.path,
                session.as_deref(),
                json,
                &mut std::io::stdout(),
            )
            .context("cannot list transcripts")?;
        }
        Command::Sync { once, retry_parked } => {
            let config = load(&path)?;
            let recent = RecentEvents::default();
            telemetry::init(&config.log, &config.kiosk.id, &recent);
            if !commands::sync(&config, once, retry_parked, &mut std::io::stdout())? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Vad {
            input,
            reference,
            device,
            duration_ms,
            aggressiveness,
            json,
        } => {
            telemetry::init_for_command();
            let (settings, audio) = tool_config(&path, explicit)?
                .map(|c| (c.vad, c.audio))
                .unwrap_or_default();
            print!(
                "{}",
                audio::cli::vad_command(&audio::cli::VadArgs {
                    input,
                    reference,
                    audio,
                    device,
                    duration: Millis(duration_ms),
                    settings,
                    aggressiveness,
                    json,
                })?
            );
        }
        Command::Room { action, json } => {
            telemetry::init_for_command();
            let config = load(&path)?;
            let settings = config
                .daily_settings()
                .context("no Daily API key: set KIOSK_GATEWAY_DAILY_API_KEY, daily.api_key_file or the daily_api_key credential")?;
            let command = match action {
                RoomAction::Create { name } => RoomCommand::Create {
                    name: name.as_deref().map(RoomName::parse).transpose()?,
                    kiosk_id: config.kiosk.id.to_string(),
                },
                RoomAction::Delete { name } => RoomCommand::Delete {
                    name: RoomName::parse(&name)?,
                },
                RoomAction::List => RoomCommand::List,
            };
            let client = DailyClient::new(&settings)?;
            println!(
                "{}",
                small_runtime()?.block_on(run_room_command(&client, command, json))?
            );
        }
        Command::Call {
            offer_url,
            whip_url,
            input,
            output,
            seconds,
            pause_ms,
            bind,
            no_stun,
            json,
        } => {
            telemetry::init_for_command();
            let config = tool_config(&path, explicit)?;
            let endpoint = match (offer_url, whip_url) {
                (_, Some(url)) => Endpoint::Whip(url),
                (Some(url), None) => Endpoint::SmallWebRtc(url),
                (None, None) => Endpoint::SmallWebRtc(
                    config
                        .as_ref()
                        .and_then(|c| c.agent.offer_url.clone())
                        .context("give --offer-url or --whip-url, or set agent.offer_url")?,
                ),
            };
            let (api_key, audio) = match config {
                Some(c) => (c.agent.api_key, c.audio),
                None => (None, audio::AudioSettings::default()),
            };
            let args = CallArgs {
                endpoint,
                api_key,
                input,
                output,
                duration: Duration::from_secs_f64(seconds),
                pause: Duration::from_millis(pause_ms),
                audio,
                bind,
                ice_servers: no_stun.then(Vec::new),
                json,
            };
            println!(
                "{}",
                small_runtime()?.block_on(kiosk_gateway::link::cli::call(args))?
            );
        }
        Command::Dial {
            uri,
            input,
            output,
            seconds,
            answer_timeout,
            media_timeout,
            retries,
            bind,
            user,
            password_env,
            json,
        } => {
            telemetry::init_for_command();
            let audio = tool_config(&path, explicit)?
                .map(|c| c.audio)
                .unwrap_or_default();
            let CallInput::Wav(input) = input;
            let output = match output {
                CallOutput::Wav(path) => Some(path),
                CallOutput::Discard => None,
            };
            let password = user
                .as_ref()
                .and_then(|_| std::env::var(&password_env).ok())
                .map(secrecy::SecretString::from);
            let args = kiosk_gateway::sip::cli::DialArgs {
                target: uri,
                input,
                output,
                seconds,
                answer_timeout: Duration::from_secs(answer_timeout),
                media_timeout: Duration::from_secs(media_timeout),
                retries,
                bind,
                user,
                password,
                audio,
                json,
            };
            println!(
                "{}",
                small_runtime()?.block_on(kiosk_gateway::sip::cli::run(args))?
            );
        }
        Command::LoopbackAgent { listen, reply } => {
            telemetry::init_for_command();
            small_runtime()?.block_on(kiosk_gateway::commands::loopback_agent(listen, &reply))?;
        }
        Command::Devices { json } => {
            telemetry::init_for_command();
            print!("{}", audio::cli::devices_command(json)?);
        }
        Command::Bench {
            device_rate,
            opus_complexity,
            json,
        } => {
            telemetry::init_for_command();
            let settings = tool_config(&path, explicit)?
                .map(|c| c.audio)
                .unwrap_or_default();
            print!(
                "{}",
                audio::cli::bench_command(
                    SampleRate(device_rate),
                    &settings,
                    opus_complexity,
                    json
                )?
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One thread is plenty for the one-shot network commands, and on a 2-core
/// kiosk it spares the cross-thread wake-ups a work-stealing pool costs per packet.
fn small_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting tokio")
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Config::load(path, &Env::from_process()).map_err(anyhow::Error::new)
}

/// Audio tools work on a laptop without any config: the default file is
/// used when present, defaults otherwise; a named file must load.
fn tool_config(path: &Path, explicit: bool) -> anyhow::Result<Option<Config>> {
    if explicit || path.exists() {
        load(path).map(Some)
    } else {
        Ok(None)
    }
}
