use anyhow::Context;
use clap::{Parser, Subcommand};
use kiosk_gateway::daily::cli::{RoomCommand, run_room_command};
use kiosk_gateway::daily::{DailyClient, DailySettings, RoomName};
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
    let runtime = tokio::runtime::Runtime::new().context("starting tokio")?;
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
    }
    Ok(())
}
