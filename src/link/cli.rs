//! `kiosk-gateway call`: a technician's direct call to an agent.

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

use super::call::{CallError, CallInput, CallOptions, CallOutput, run_call};
use super::signaling::Signaling;
use super::signaling::smallwebrtc::SmallWebRtcSignaling;
use super::signaling::whip::WhipSignaling;
use super::{IceServer, LinkSettings};
use crate::audio::AudioSettings;

/// Where `call` sends its offer.
pub enum Endpoint {
    /// A SmallWebRTC offer URL.
    SmallWebRtc(url::Url),
    /// A WHIP endpoint.
    Whip(url::Url),
}

/// The `call` command line, parsed.
pub struct CallArgs {
    /// Where the offer goes.
    pub endpoint: Endpoint,
    /// Bearer key for the signalling requests.
    pub api_key: Option<SecretString>,
    /// Audio sent.
    pub input: CallInput,
    /// Where the agent's audio goes.
    pub output: CallOutput,
    /// How long the call lasts.
    pub duration: Duration,
    /// Near-silence sent between repetitions of the input.
    pub pause: Duration,
    /// Opus settings (`[audio]` from the config, or the defaults).
    pub audio: AudioSettings,
    /// Local UDP address for ICE.
    pub bind: String,
    /// `None`: the link's default STUN server; empty: none (local agents).
    pub ice_servers: Option<Vec<IceServer>>,
    /// Print the summary as JSON.
    pub json: bool,
}

/// Why `call` failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The call failed.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The summary cannot be written as JSON.
    #[error("cannot write JSON")]
    Json(#[from] serde_json::Error),
}

/// Runs the call, printing RTVI events as they come (JSON lines on stderr
/// with `json`), and returns the summary to print.
pub async fn call(args: CallArgs) -> Result<String, CliError> {
    let timeout = Duration::from_secs(10);
    let signaling: Arc<dyn Signaling> = match args.endpoint {
        Endpoint::SmallWebRtc(url) => {
            Arc::new(SmallWebRtcSignaling::new(url, args.api_key, None, timeout))
        }
        Endpoint::Whip(url) => Arc::new(WhipSignaling::new(url, args.api_key, timeout)),
    };
    let mut link = LinkSettings {
        udp_bind: vec![args.bind],
        ..LinkSettings::default()
    };
    if let Some(servers) = args.ice_servers {
        link.ice_servers = servers;
    }
    let options = CallOptions {
        input: args.input,
        output: args.output,
        duration: args.duration,
        pause: args.pause,
        link,
        audio: args.audio,
    };
    let json = args.json;
    let summary = run_call(options, signaling, |event| {
        if json {
            eprintln!("{}", serde_json::to_string(event).unwrap_or_default());
        } else {
            println!("{event:?}");
        }
    })
    .await?;
    Ok(if json {
        serde_json::to_string_pretty(&summary)?
    } else {
        format!("{summary:#?}")
    })
}
