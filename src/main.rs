use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kiosk_gateway::daily::cli::{RoomCommand, run_room_command};
use kiosk_gateway::daily::{DailyClient, DailySettings, RoomName};
use kiosk_gateway::link::agent::{LoopbackAgent, LoopbackAgentConfig};
use kiosk_gateway::link::call::{CallInput, CallOptions, CallOutput, run_call};
use kiosk_gateway::link::signaling::Signaling;
use kiosk_gateway::link::signaling::smallwebrtc::SmallWebRtcSignaling;
use kiosk_gateway::link::signaling::whip::WhipSignaling;
use kiosk_gateway::link::{LinkSettings, media};
use secrecy::SecretString;

/// Bridges an on-prem voice kiosk to a cloud voice agent.
#[derive(Parser)]
#[command(name = "kiosk-gateway", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Daily rooms, for technicians.
    Room {
        #[command(subcommand)]
        action: RoomAction,
        /// Print JSON instead of one line per room.
        #[arg(long, global = true)]
        json: bool,
        /// Daily REST API base URL.
        #[arg(long, global = true, env = "DAILY_BASE_URL", default_value = kiosk_gateway::daily::DEFAULT_BASE_URL)]
        daily_base_url: url::Url,
    },
    /// A direct call to a voice agent: sends audio, prints RTVI events and a summary.
    Call {
        /// SmallWebRTC offer URL (Pipecat).
        #[arg(
            long,
            required_unless_present = "whip_url",
            conflicts_with = "whip_url"
        )]
        offer_url: Option<url::Url>,
        /// WHIP endpoint instead of SmallWebRTC.
        #[arg(long)]
        whip_url: Option<url::Url>,
        /// Bearer key for the agent (Pipecat Cloud public key, WHIP token).
        #[arg(long, env = "AGENT_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// Audio to send, `wav:PATH` (48 kHz mono), repeated with pauses.
        #[arg(long)]
        input: CallInput,
        /// Where the agent's audio goes: `wav:PATH` or `none`.
        #[arg(long, default_value = "none")]
        output: CallOutput,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Silence between repetitions of the input.
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
    /// Run the built-in loopback agent (SmallWebRTC on 127.0.0.1) until interrupted.
    LoopbackAgent {
        #[arg(long, default_value = "127.0.0.1:7860")]
        listen: std::net::SocketAddr,
        /// Reply played after each utterance, a 48 kHz mono WAV.
        #[arg(long)]
        reply: PathBuf,
    },
}

#[derive(Subcommand)]
enum RoomAction {
    /// Create a room with the session room properties.
    Create {
        /// Room name; generated from the kiosk id when omitted.
        #[arg(long)]
        name: Option<String>,
        #[arg(long, env = "KIOSK_ID", default_value = "manual")]
        kiosk_id: String,
    },
    /// Delete a room (a room already gone is not an error).
    Delete { name: String },
    /// List recent rooms.
    List,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    // One thread is plenty for these commands, and on a 2-core kiosk it
    // spares the cross-thread wake-ups a work-stealing pool costs per packet.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    match cli.command {
        Command::Room {
            action,
            json,
            daily_base_url,
        } => {
            let api_key = std::env::var("DAILY_API_KEY")
                .context("DAILY_API_KEY must be set for `room` commands")?;
            let settings = DailySettings {
                base_url: daily_base_url,
                api_key: SecretString::from(api_key),
                ..DailySettings::default()
            };
            let command = match action {
                RoomAction::Create { name, kiosk_id } => RoomCommand::Create {
                    name: name.as_deref().map(RoomName::parse).transpose()?,
                    kiosk_id,
                },
                RoomAction::Delete { name } => RoomCommand::Delete {
                    name: RoomName::parse(&name)?,
                },
                RoomAction::List => RoomCommand::List,
            };
            let client = DailyClient::new(&settings)?;
            let out = runtime.block_on(run_room_command(&client, command, json))?;
            println!("{out}");
        }
        Command::Call {
            offer_url,
            whip_url,
            api_key,
            input,
            output,
            seconds,
            pause_ms,
            bind,
            no_stun,
            json,
        } => {
            let timeout = Duration::from_secs(10);
            let api_key = api_key.map(SecretString::from);
            let signaling: Arc<dyn Signaling> = match (offer_url, whip_url) {
                (Some(url), _) => Arc::new(SmallWebRtcSignaling::new(url, api_key, None, timeout)),
                (None, Some(url)) => Arc::new(WhipSignaling::new(url, api_key, timeout)),
                (None, None) => unreachable!("clap requires one of the URLs"),
            };
            let mut link = LinkSettings {
                udp_bind: vec![bind],
                ..LinkSettings::default()
            };
            if no_stun {
                link.ice_servers.clear();
            }
            let options = CallOptions {
                input,
                output,
                duration: Duration::from_secs_f64(seconds),
                pause: Duration::from_millis(pause_ms),
                link,
            };
            let summary = runtime.block_on(run_call(options, signaling, |event| {
                if json {
                    eprintln!("{}", serde_json::to_string(event).unwrap_or_default());
                } else {
                    println!("{event:?}");
                }
            }))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!("{summary:#?}");
            }
        }
        Command::LoopbackAgent { listen, reply } => {
            let reply = media::read_wav(&reply)?;
            runtime.block_on(async {
                let mut config = LoopbackAgentConfig::new(reply);
                config.bind = listen;
                let agent = LoopbackAgent::start(config).await?;
                println!("offer URL: {}", agent.offer_url());
                tokio::signal::ctrl_c().await?;
                anyhow::Ok(())
            })?;
        }
    }
    Ok(())
}
