//! How sessions reach the cloud agent: the provisioning mode and the
//! agent's endpoints. Plain settings, low in the module graph: `config`
//! fills them in and `session::provision` acts on them.

use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use serde_json::Value;
use url::Url;

/// `session.provision`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProvisionMode {
    /// A Daily room and tokens, handed to the agent's start endpoint.
    Daily,
    /// A Daily room with SIP dial-in: the agent's start endpoint gets the
    /// room, the bot's token and the room's SIP URI, and the kiosk's audio
    /// goes into the room over a SIP call.
    DailySip,
    /// A Pipecat runner or Pipecat Cloud start endpoint.
    Pipecat,
    /// A fixed offer URL.
    #[default]
    Static,
}

/// How to reach the agent. Mapped from the `[agent]` config table.
#[derive(Clone, Debug)]
pub struct AgentSettings {
    /// Pipecat runner / Pipecat Cloud `.../start`, or an operator backend.
    pub start_url: Option<Url>,
    /// Fixed SmallWebRTC offer URL for `static`.
    pub offer_url: Option<Url>,
    /// Bearer key for the start endpoint (Pipecat Cloud public key).
    pub api_key: Option<SecretString>,
    /// JSON body for `pipecat` starts; merged into the `daily` start body.
    pub body: Value,
    /// Time limit of one start request.
    pub request_timeout: Duration,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            start_url: None,
            offer_url: None,
            api_key: None,
            body: Value::Object(Default::default()),
            request_timeout: Duration::from_secs(15),
        }
    }
}
