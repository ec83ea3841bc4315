//! `kiosk-gateway demo`: one whole session, offline, in one process — the
//! built-in loopback agent on 127.0.0.1, a visitor speaking from a WAV (or
//! the real microphone and speaker: an on-site self-test), the status
//! server, SQLite in a state folder, and the bot's replies written to a
//! WAV. It ends when the input has ended and the session has idled out.
//!
//! With an external agent (a SmallWebRTC offer URL, or a Pipecat `/start`
//! endpoint) the same session goes to a real bot instead, provisioned as
//! the daemon does it (`session.provision = "static"` or `"pipecat"`), so
//! a technician can test that bot from the kiosk.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::RngCore;
use secrecy::SecretString;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::agent::{AgentError, LoopbackAgent, LoopbackAgentConfig, media};
use crate::agent_settings::{AgentSettings, ProvisionMode};
use crate::assets::{DEMO_REPLY, DEMO_VISITOR, FAILURE_PROMPT};
use crate::audio::{AudioEngine, AudioError, AudioSettings, DeviceSpec, Prompt, VadSettings};
use crate::config::Trigger;
use crate::control::{LinkView, Published};
use crate::link::LinkSettings;
use crate::reachability::Prober;
use crate::runtime::{self, RuntimeError};
use crate::session::orchestrator::{Orchestrator, SessionSettings, Startup, Transition};
use crate::session::provision::{ProvisionError, Provisioner};
use crate::sip::leg::SipTimeouts;
use crate::status::{self, Auth, Identity, StatusState};
use crate::store::{Store, StoreError, StoreHandle, Transcript};
use crate::telemetry::RecentEvents;

/// What the `demo` command line asks for.
pub struct DemoArgs {
    /// Visitor speech; the built-in fixture when `None`.
    pub input: Option<PathBuf>,
    /// Use the real default microphone and speaker.
    pub devices: bool,
    /// Where the database and WAV files go; a new temporary folder when `None`.
    pub state_dir: Option<PathBuf>,
    /// Who answers; the built-in loopback agent by default.
    pub agent: DemoAgent,
}

/// The agent a demo session goes to.
#[derive(Clone, Debug, Default)]
pub enum DemoAgent {
    /// The built-in loopback agent, started on 127.0.0.1 for the demo.
    #[default]
    Loopback,
    /// An agent run elsewhere, reached the way the daemon reaches it.
    External {
        /// Where it is.
        endpoint: AgentEndpoint,
        /// Local UDP address for ICE.
        udp_bind: String,
        /// Use the link's default STUN server (off for agents on the local network).
        stun: bool,
    },
}

/// How an external agent is reached.
#[derive(Clone, Debug)]
pub enum AgentEndpoint {
    /// A SmallWebRTC offer URL (`session.provision = "static"`).
    Offer(Url),
    /// A Pipecat `POST /start` endpoint (`session.provision = "pipecat"`):
    /// its reply names the offer URL (`offer_url`) or a `sessionId`. The key,
    /// if any, goes as a bearer token with the start request.
    Start {
        /// The start endpoint.
        url: Url,
        /// Bearer key for the start request.
        api_key: Option<SecretString>,
    },
}

/// The demo's result; its JSON form is the `demo --json` contract.
#[derive(Debug, Serialize)]
pub struct DemoSummary {
    /// The session's id; `None` if none started.
    pub session_id: Option<String>,
    /// How the session ended (`idle`, `connect_failed`, ... as stored).
    pub end_reason: Option<String>,
    /// The session machine's states, in order, with times.
    pub states: Vec<Transition>,
    /// Utterances the visitor spoke.
    pub utterances: u64,
    /// Milliseconds of speech sent to the agent.
    pub speech_ms_sent: u64,
    /// Speech the built-in loopback agent heard; `null` with an external
    /// agent, which reports no such figure.
    pub speech_ms_received_by_agent: Option<u64>,
    /// From the first speech onset to the first packet handed to the link,
    /// stage by stage.
    pub startup: Option<Startup>,
    /// What was said, as stored.
    pub transcripts: Vec<Transcript>,
    /// The call's final quality figures.
    pub link: Option<LinkView>,
    /// Where the bot's replies were written.
    pub output_wav: Option<PathBuf>,
    /// Where the database and files are.
    pub state_dir: PathBuf,
    /// The status page, while the demo ran.
    pub status_url: String,
}

/// Where `demo --start-url` takes its bearer key from without `--api-key-env`.
pub const API_KEY_VAR: &str = "KIOSK_GATEWAY_AGENT_API_KEY";

/// The start endpoint's bearer key: from the variable `name` (which must be
/// set), else from [`API_KEY_VAR`] when that is set.
pub fn api_key_from_env(name: Option<&str>) -> Result<Option<SecretString>, DemoError> {
    let value = std::env::var(name.unwrap_or(API_KEY_VAR))
        .ok()
        .filter(|v| !v.is_empty());
    match (value, name) {
        (Some(key), _) => Ok(Some(SecretString::from(key))),
        (None, Some(name)) => Err(DemoError::ApiKey(name.to_owned())),
        (None, None) => Ok(None),
    }
}

/// Why the demo could not run (a failed session is a result, not an error).
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The named environment variable for the key is not set.
    #[error("no API key: the environment variable {0} is not set")]
    ApiKey(String),
    /// The state folder or a file in it cannot be written.
    #[error("cannot prepare the state folder {}", path.display())]
    StateDir {
        /// The folder or file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Audio devices or files failed.
    #[error(transparent)]
    Audio(#[from] AudioError),
    /// The loopback agent failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The provisioner cannot be set up.
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    /// The status server cannot listen.
    #[error("cannot start the status server")]
    Status(#[source] std::io::Error),
    /// The async runtime cannot start.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, DemoError> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).map_err(|source| DemoError::StateDir {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// Runs the whole demo session and reports what happened.
pub fn run(args: DemoArgs, recent: RecentEvents) -> Result<DemoSummary, DemoError> {
    let state_dir = args.state_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "kiosk-gateway-demo-{}",
            jiff::Timestamp::now().strftime("%Y%m%dT%H%M%S")
        ))
    });
    std::fs::create_dir_all(&state_dir).map_err(|source| DemoError::StateDir {
        path: state_dir.clone(),
        source,
    })?;
    runtime::build()?.block_on(run_async(args, state_dir, recent))
}

async fn run_async(
    args: DemoArgs,
    state_dir: PathBuf,
    recent: RecentEvents,
) -> Result<DemoSummary, DemoError> {
    status::metrics::init();
    let loopback_link = LinkSettings {
        ice_servers: vec![],
        udp_bind: vec!["127.0.0.1:0".into()],
        ..LinkSettings::default()
    };
    let (agent, mode, agent_settings, link) = match &args.agent {
        DemoAgent::Loopback => {
            let reply = media::read_wav(&write_file(&state_dir, "agent-reply.wav", DEMO_REPLY)?)?;
            let mut agent_config = LoopbackAgentConfig::new(reply);
            agent_config.bind = ([127, 0, 0, 1], 0).into();
            let agent = LoopbackAgent::start(agent_config).await?;
            let settings = AgentSettings {
                offer_url: Some(agent.offer_url()),
                ..AgentSettings::default()
            };
            (Some(agent), ProvisionMode::Static, settings, loopback_link)
        }
        DemoAgent::External {
            endpoint,
            udp_bind,
            stun,
        } => {
            let mut link = LinkSettings {
                udp_bind: vec![udp_bind.clone()],
                ..LinkSettings::default()
            };
            if !stun {
                link.ice_servers.clear();
            }
            let (mode, settings) = match endpoint {
                AgentEndpoint::Offer(url) => (
                    ProvisionMode::Static,
                    AgentSettings {
                        offer_url: Some(url.clone()),
                        ..AgentSettings::default()
                    },
                ),
                AgentEndpoint::Start { url, api_key } => (
                    ProvisionMode::Pipecat,
                    AgentSettings {
                        start_url: Some(url.clone()),
                        api_key: api_key.clone(),
                        ..AgentSettings::default()
                    },
                ),
            };
            (None, mode, settings, link)
        }
    };
    // The reachability check looks where sessions begin, as the daemon's does.
    let probe_url = agent_settings
        .start_url
        .clone()
        .or_else(|| agent_settings.offer_url.clone());

    let (store, _) = Store::open(&state_dir.join("kiosk.db"))?;
    let (store, writer) = StoreHandle::spawn(store);

    let output_wav = (!args.devices).then(|| state_dir.join("bot-replies.wav"));
    let input = match (&args.input, args.devices) {
        (_, true) => DeviceSpec::Default,
        (Some(path), false) => DeviceSpec::Wav(path.clone()),
        (None, false) => DeviceSpec::Wav(write_file(&state_dir, "visitor.wav", DEMO_VISITOR)?),
    };
    let audio = AudioSettings {
        input,
        output: output_wav
            .clone()
            .map_or(DeviceSpec::Default, DeviceSpec::Wav),
        ..AudioSettings::default()
    };
    let engine = AudioEngine::start(&audio, &VadSettings::default())?;
    let audio_metrics = engine.metrics().clone();
    let sound_check = engine.sound_check();

    let provisioner = Provisioner::new(mode, None, agent_settings)?;

    let prober = Prober::new(None, probe_url, provisioner.http(), Duration::from_secs(60));
    let cloud_checks = prober.checks();

    let (publish, published) = watch::channel(Published {
        state: "idle",
        ..Published::default()
    });
    let listener = status::bind(([127, 0, 0, 1], 0).into())
        .await
        .map_err(DemoError::Status)?;
    let addr = listener.local_addr().map_err(DemoError::Status)?;
    let token = random_token();
    let status_url = format!("http://{addr}/");
    eprintln!("status page: {status_url} (token {token})");
    let cancel = CancellationToken::new();
    tokio::spawn(prober.run(cancel.clone()));
    let final_link = published.clone();
    let state = StatusState::new(
        Identity {
            kiosk_id: "demo".into(),
            kiosk_name: "kiosk-gateway demo".into(),
            store_path: state_dir.join("kiosk.db"),
        },
        published,
        None,
        Auth::new(Some(SecretString::from(token))),
        recent,
    )
    .with_audio(audio_metrics, audio.input.clone(), audio.output.clone())
    .with_cloud_checks(cloud_checks)
    .with_sound_check(sound_check);
    let server = tokio::spawn(status::serve(listener, state, cancel.clone()));

    let settings = SessionSettings {
        kiosk_id: "demo".into(),
        trigger: Trigger::Voice,
        idle_timeout: Duration::from_secs(4),
        max_duration: Duration::from_secs(300),
        ready_timeout: Duration::from_secs(5),
        link,
        sip: SipTimeouts::default(),
        failure_prompt: Some(Prompt::built_in(FAILURE_PROMPT, &audio)?),
        failure_backoff_min: Duration::from_secs(2),
        failure_backoff_max: Duration::from_secs(60),
    };
    let (orchestrator, _commands) =
        Orchestrator::new(settings, provisioner, store.clone(), engine, publish, None);
    let stop = cancel.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    let report = orchestrator.single_session().run(cancel.clone()).await;
    cancel.cancel();
    let _ = server.await;

    let speech_ms_received_by_agent = agent.map(|a| {
        a.record()
            .utterances
            .iter()
            .map(|d| d.as_millis() as u64)
            .sum()
    });
    let (transcripts, end_reason) = match report.sessions.first() {
        Some(id) => {
            let id = *id;
            let transcripts = store.call(move |s| s.transcripts(Some(id))).await?;
            let session = store.call(move |s| s.session(id)).await?;
            (transcripts, session.and_then(|s| s.end_reason))
        }
        None => (Vec::new(), None),
    };
    drop(store);
    tokio::task::spawn_blocking(move || writer.join())
        .await
        .ok();
    Ok(DemoSummary {
        session_id: report.sessions.first().map(ToString::to_string),
        end_reason,
        states: report.transitions,
        utterances: report.utterances,
        speech_ms_sent: report.speech_ms_sent,
        speech_ms_received_by_agent,
        startup: report.startups.first().copied(),
        transcripts,
        link: final_link.borrow().link.clone(),
        output_wav,
        state_dir,
        status_url,
    })
}

fn random_token() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl DemoSummary {
    /// Why the session failed, if it did: the agent could not be
    /// provisioned or reached, or the call was lost.
    pub fn failure(&self) -> Option<&str> {
        self.end_reason
            .as_deref()
            .filter(|r| ["provision_failed", "connect_failed", "link_lost"].contains(r))
    }

    /// The summary as technicians read it.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "session      {}\n",
            self.session_id.as_deref().unwrap_or("none")
        ));
        for t in &self.states {
            out.push_str(&format!(
                "  {}  {}\n",
                t.at.strftime("%H:%M:%S%.3f"),
                t.state
            ));
        }
        if let Some(reason) = &self.end_reason {
            out.push_str(&format!("ended        {reason}\n"));
        }
        out.push_str(&format!("utterances   {}\n", self.utterances));
        match self.speech_ms_received_by_agent {
            Some(heard) => out.push_str(&format!(
                "speech       {} ms sent, {heard} ms heard by the agent\n",
                self.speech_ms_sent
            )),
            None => out.push_str(&format!("speech       {} ms sent\n", self.speech_ms_sent)),
        }
        if let Some(s) = &self.startup {
            out.push_str(&format!(
                "start-up     onset to first packet {} ms: provisioning {} ms, call set-up {} ms, \
                 agent ready {} ms, gateway release {} ms\n",
                s.onset_to_first_packet_ms,
                s.provisioning_ms,
                s.call_setup_ms,
                s.agent_ready_ms,
                s.release_ms
            ));
        }
        if let Some(l) = &self.link {
            let rtt = l.rtt_ms.map_or("-".into(), |r| format!("{r:.1} ms"));
            out.push_str(&format!(
                "call         RTT {rtt}, loss {:.1}% out / {:.1}% in, {} restarts\n",
                l.loss_out_percent, l.loss_in_percent, l.restarts
            ));
        }
        out.push_str(&format!("transcripts  {}\n", self.transcripts.len()));
        for t in &self.transcripts {
            out.push_str(&format!("  {:>4}: {}\n", t.role, t.text));
        }
        if let Some(w) = &self.output_wav {
            out.push_str(&format!("bot audio    {}\n", w.display()));
        }
        out.push_str(&format!("state        {}\n", self.state_dir.display()));
        out
    }
}
