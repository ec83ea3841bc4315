//! Provisioning a session in the cloud before the link opens
//! (`session.provision`):
//!
//! - `daily`: a Daily room plus two meeting tokens (kiosk, bot), then
//!   `POST agent.start_url` with `{room_url, token, kiosk_id}` (the bot's token);
//! - `daily-sip`: a Daily room with SIP dial-in plus the bot's token, then
//!   `POST agent.start_url` with `{room_url, token, sip_uri, kiosk_id,
//!   session_id}`; the kiosk's audio then goes to the room's SIP URI;
//! - `pipecat`: `POST agent.start_url` (Pipecat runner or Pipecat Cloud) with
//!   the configured body;
//! - `static`: a fixed `agent.offer_url`.
//!
//! The start reply names the offer URL (`offer_url`), or a `sessionId` that
//! becomes `<start_url base>/sessions/<id>/api/offer`. If anything fails after
//! the room exists, the room is deleted before the error is returned.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::{info, warn};
use url::Url;

use crate::agent_settings::{AgentSettings, ProvisionMode};
use crate::daily::{
    DailyClient, DailyError, MeetingTokenProperties, Room, RoomName, SipDialIn, unix_now,
};
use crate::error_text::error_chain;
use crate::http_body::{BodyError, read_limited};
use crate::store::SessionId;

/// An agent-side session id (Pipecat's `sessionId`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct AgentSessionId(pub String);

impl fmt::Display for AgentSessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The Daily room of a session.
#[derive(Clone, Debug)]
pub struct ProvisionedRoom {
    /// The room's name.
    pub name: RoomName,
    /// Daily's id for the room (transcripts are listed by it).
    pub id: String,
    /// Whether Daily transcribes the call (SIP dial-in with `daily.transcription`).
    pub transcribed: bool,
    /// The room's URL.
    pub url: String,
    /// The kiosk's own meeting token (for joining the room by other means,
    /// e.g. a supervisor tool); never logged. None with SIP dial-in, where
    /// the kiosk joins by calling.
    pub kiosk_token: Option<SecretString>,
}

/// Where the session's audio goes.
#[derive(Clone, Debug)]
pub enum MediaTarget {
    /// A SmallWebRTC peer connection.
    WebRtc {
        /// Where the SmallWebRTC offer goes.
        offer_url: Url,
        /// Bearer key for the offer and trickle requests: `agent.api_key`,
        /// sent only to the host that was configured with it (see
        /// `Provisioner::offer_key`).
        offer_key: Option<SecretString>,
    },
    /// A SIP call to the room's dial-in endpoint.
    Sip {
        /// The SIP URI, as Daily gave it.
        uri: String,
    },
}

/// Where the session's media goes, and what to clean up afterwards.
#[derive(Clone, Debug)]
pub struct Provisioned {
    /// Where the audio goes.
    pub media: MediaTarget,
    /// The Daily room, with `provision = "daily"` or `"daily-sip"`.
    pub room: Option<ProvisionedRoom>,
    /// The agent's id for the session, when its start reply gave one.
    pub agent_session_id: Option<AgentSessionId>,
}

impl Provisioned {
    /// The SmallWebRTC offer URL, when the audio goes over WebRTC.
    pub fn offer_url(&self) -> Option<&Url> {
        match &self.media {
            MediaTarget::WebRtc { offer_url, .. } => Some(offer_url),
            MediaTarget::Sip { .. } => None,
        }
    }
}

/// The step that failed, for errors and the status page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Creating the session's Daily room.
    CreateRoom,
    /// The kiosk's meeting token.
    KioskToken,
    /// The bot's meeting token.
    BotToken,
    /// Asking the agent's start endpoint for a session.
    StartAgent,
}

/// Daily's answer lacked what the session needs.
#[derive(Debug, thiserror::Error)]
#[error("Daily created the room without a SIP dial-in address (config.sip_uri.endpoint)")]
pub struct NoSipUri;

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::CreateRoom => "create Daily room",
            Self::KioskToken => "create kiosk meeting token",
            Self::BotToken => "create bot meeting token",
            Self::StartAgent => "start agent session",
        })
    }
}

/// Why the agent's start endpoint gave no session.
#[derive(Debug, thiserror::Error)]
pub enum AgentStartError {
    /// The request did not get a reply.
    #[error("network error")]
    Network(#[source] reqwest::Error),
    /// The endpoint refused.
    #[error("HTTP {status}: {body}")]
    Status {
        /// Its HTTP status.
        status: reqwest::StatusCode,
        /// The start of its reply.
        body: String,
    },
    /// The reply is unusable: too large, not JSON, or naming no way to reach the session.
    #[error("reply has neither offer_url nor sessionId: {0}")]
    Reply(String),
    /// The reply's `sessionId` could not go into a URL safely.
    #[error("reply's sessionId is not a UUID or 1 to 128 of A-Z a-z 0-9 _ -: {0:?}")]
    SessionId(String),
}

/// Whether a `sessionId` can go into a URL path as it is: a UUID, or
/// 1 to 128 of `A-Z a-z 0-9 _ -` (which covers UUIDs). Anything else
/// (`/`, `..`, `?`, `%`, `@`) could move the offer URL elsewhere.
fn plain_session_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// What failed in a provisioning step.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// A Daily API call.
    #[error(transparent)]
    Daily(#[from] DailyError),
    /// The agent's start endpoint.
    #[error(transparent)]
    Agent(#[from] AgentStartError),
    /// A room without the dial-in it was created with.
    #[error(transparent)]
    NoSipUri(#[from] NoSipUri),
}

/// Why a session got no cloud side.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// A setting this provisioning mode needs is missing.
    #[error("provisioning needs {0}, which is not configured")]
    NotConfigured(&'static str),
    /// A step failed; a room already made is deleted, or named in `leaked_room`.
    #[error("provisioning failed at step \"{step}\"{}", leaked_note(.leaked_room))]
    Failed {
        /// The step.
        step: Step,
        /// What went wrong.
        #[source]
        cause: StepError,
        /// Set when deleting the room after the failure failed too.
        leaked_room: Option<RoomName>,
    },
}

fn leaked_note(room: &Option<RoomName>) -> String {
    room.as_ref()
        .map(|r| format!(" (and room {r} could not be deleted)"))
        .unwrap_or_default()
}

#[derive(Deserialize)]
struct StartReply {
    #[serde(default)]
    offer_url: Option<Url>,
    #[serde(default, rename = "sessionId")]
    session_id: Option<AgentSessionId>,
}

/// How rooms with SIP dial-in are made (`provision = "daily-sip"`).
#[derive(Clone, Debug, Default)]
pub struct SipRoomSettings {
    /// The kiosk's name in the room (`daily.sip_display_name`); the kiosk id when empty.
    pub display_name: String,
    /// Whether Daily transcribes the call (`daily.transcription`).
    pub transcription: bool,
}

/// Provisions sessions per `session.provision`.
pub struct Provisioner {
    mode: ProvisionMode,
    sip_room: SipRoomSettings,
    daily: Option<DailyClient>,
    agent: AgentSettings,
    http: reqwest::Client,
    /// Rooms of provisionings still under way. One cut short (its session
    /// ended meanwhile) leaves its room here for [`Self::release_abandoned`].
    in_flight: std::sync::Mutex<Vec<RoomName>>,
}

/// Largest start reply read: it is a small JSON object.
const MAX_START_REPLY: usize = 64 * 1024;

/// Longest part of an agent reply kept in an error: it may be a page of HTML.
const MAX_BODY_IN_ERROR: usize = 300;

impl Provisioner {
    /// The HTTP client agent starts go through, for others to share.
    pub fn http(&self) -> reqwest::Client {
        self.http.clone()
    }

    /// `daily` is needed for [`ProvisionMode::Daily`] only.
    pub fn new(
        mode: ProvisionMode,
        daily: Option<DailyClient>,
        agent: AgentSettings,
    ) -> Result<Self, ProvisionError> {
        match mode {
            ProvisionMode::Daily | ProvisionMode::DailySip if daily.is_none() => {
                return Err(ProvisionError::NotConfigured("[daily] api_key"));
            }
            ProvisionMode::Daily | ProvisionMode::DailySip | ProvisionMode::Pipecat
                if agent.start_url.is_none() =>
            {
                return Err(ProvisionError::NotConfigured("agent.start_url"));
            }
            ProvisionMode::Static if agent.offer_url.is_none() => {
                return Err(ProvisionError::NotConfigured("agent.offer_url"));
            }
            _ => {}
        }
        let http = reqwest::Client::builder()
            .timeout(agent.request_timeout)
            .build()
            .expect("static reqwest configuration is valid");
        Ok(Self {
            mode,
            sip_room: SipRoomSettings::default(),
            daily,
            agent,
            http,
            in_flight: Default::default(),
        })
    }

    /// Rooms with dial-in are made with `settings`.
    pub fn with_sip_room(mut self, settings: SipRoomSettings) -> Self {
        self.sip_room = settings;
        self
    }

    /// The kiosk's name in a room it dials into.
    pub fn sip_display_name(&self, kiosk_id: &str) -> String {
        match self.sip_room.display_name.trim() {
            "" => kiosk_id.to_owned(),
            name => name.to_owned(),
        }
    }

    /// The SIP call of a session is up: Daily starts transcribing it, if
    /// asked to. A failure is logged; the call goes on without.
    pub async fn call_answered(&self, provisioned: &Provisioned) {
        let (Some(room), Some(daily)) = (&provisioned.room, &self.daily) else {
            return;
        };
        if !room.transcribed {
            return;
        }
        match daily.start_transcription(&room.name).await {
            Ok(()) => info!(room = %room.name, "Daily transcription started"),
            Err(e) => {
                warn!(room = %room.name, error = %error_chain(&e), "cannot start Daily transcription")
            }
        }
    }

    /// Obtains the cloud side of session `session_id` for `kiosk_id`; on
    /// failure, deletes what it had made.
    pub async fn provision(
        &self,
        kiosk_id: &str,
        session_id: SessionId,
    ) -> Result<Provisioned, ProvisionError> {
        match self.mode {
            ProvisionMode::Static => Ok(Provisioned {
                media: MediaTarget::WebRtc {
                    offer_url: self.agent.offer_url.clone().expect("checked in new"),
                    offer_key: self.agent.api_key.clone(),
                },
                room: None,
                agent_session_id: None,
            }),
            ProvisionMode::Pipecat => {
                let (offer_url, agent_session_id) = self
                    .start_agent(self.agent.body.clone())
                    .await
                    .map_err(|cause| ProvisionError::Failed {
                        step: Step::StartAgent,
                        cause: cause.into(),
                        leaked_room: None,
                    })?;
                Ok(Provisioned {
                    media: self.webrtc(offer_url),
                    room: None,
                    agent_session_id,
                })
            }
            ProvisionMode::Daily => self.provision_daily(kiosk_id, None).await,
            ProvisionMode::DailySip => self.provision_daily(kiosk_id, Some(session_id)).await,
        }
    }

    fn webrtc(&self, offer_url: Url) -> MediaTarget {
        MediaTarget::WebRtc {
            offer_key: self.offer_key(&offer_url),
            offer_url,
        }
    }

    /// Deletes the session's room, if it has one (stopping its
    /// transcription first, so Daily finishes the transcript).
    pub async fn release(&self, provisioned: &Provisioned) -> Result<(), DailyError> {
        if let (Some(room), Some(daily)) = (&provisioned.room, &self.daily) {
            if room.transcribed
                && let Err(e) = daily.stop_transcription(&room.name).await
            {
                warn!(room = %room.name, error = %error_chain(&e), "cannot stop Daily transcription");
            }
            let outcome = daily.delete_room(&room.name).await?;
            info!(room = %room.name, ?outcome, "session room released");
        }
        Ok(())
    }

    /// Deletes the rooms of provisionings that were cut short. Call it once
    /// the cut-short provisioning has stopped.
    pub async fn release_abandoned(&self) {
        let rooms = std::mem::take(&mut *self.in_flight.lock().expect("in-flight lock"));
        let Some(daily) = &self.daily else { return };
        for room in rooms {
            match daily.delete_room(&room).await {
                Ok(outcome) => info!(%room, ?outcome, "room of an abandoned provisioning released"),
                Err(e) => {
                    warn!(%room, error = %error_chain(&e), "cannot delete the room of an abandoned provisioning")
                }
            }
        }
    }

    /// A session room; with `sip` (the session's id), one the kiosk dials into.
    async fn provision_daily(
        &self,
        kiosk_id: &str,
        sip: Option<SessionId>,
    ) -> Result<Provisioned, ProvisionError> {
        let daily = self.daily.as_ref().expect("checked in new");
        let mut request = daily
            .room_settings()
            .create_request(RoomName::for_kiosk(kiosk_id), unix_now());
        if sip.is_some() {
            request.properties.sip = Some(SipDialIn::for_caller(&self.sip_display_name(kiosk_id)));
            if self.sip_room.transcription {
                request.properties.enable_transcription_storage = Some(true);
            }
        }
        let exp = request.properties.exp.unwrap_or_default();
        let room = daily
            .create_room(&request)
            .await
            .map_err(|cause| ProvisionError::Failed {
                step: Step::CreateRoom,
                cause: cause.into(),
                leaked_room: None,
            })?;
        info!(room = %room.name, "session room created");
        self.in_flight
            .lock()
            .expect("in-flight lock")
            .push(room.name.clone());
        let result = match sip {
            None => {
                self.after_room(daily, &room.name, &room.id, &room.url, exp, kiosk_id)
                    .await
            }
            Some(session_id) => {
                self.after_sip_room(daily, &room, exp, kiosk_id, session_id)
                    .await
            }
        };
        // From here the room is the caller's, or deleted below.
        self.in_flight
            .lock()
            .expect("in-flight lock")
            .retain(|r| r != &room.name);
        match result {
            Ok(p) => Ok(p),
            Err((step, cause)) => {
                // No leaked rooms: a room nobody joins would still count
                // against the account until it expires.
                let leaked_room = match daily.delete_room(&room.name).await {
                    Ok(_) => None,
                    Err(e) => {
                        warn!(room = %room.name, error = %error_chain(&e), "could not delete the room of a failed provisioning");
                        Some(room.name.clone())
                    }
                };
                Err(ProvisionError::Failed {
                    step,
                    cause,
                    leaked_room,
                })
            }
        }
    }

    async fn after_room(
        &self,
        daily: &DailyClient,
        room_name: &RoomName,
        room_id: &str,
        room_url: &str,
        exp: i64,
        kiosk_id: &str,
    ) -> Result<Provisioned, (Step, StepError)> {
        let token = |user_id: String, user_name: String, is_owner: bool| MeetingTokenProperties {
            room_name: room_name.clone(),
            exp,
            user_name,
            user_id,
            is_owner,
        };
        let kiosk = daily
            .create_meeting_token(&token(
                format!("kiosk-{kiosk_id}"),
                format!("kiosk {kiosk_id}"),
                false,
            ))
            .await
            .map_err(|e| (Step::KioskToken, e.into()))?;
        let bot = daily
            .create_meeting_token(&token("agent".into(), "agent".into(), true))
            .await
            .map_err(|e| (Step::BotToken, e.into()))?;
        let mut body = json!({
            "room_url": room_url,
            "token": bot.token.expose_secret(),
            "kiosk_id": kiosk_id,
        });
        merge_extra(&mut body, &self.agent.body);
        let (offer_url, agent_session_id) = self
            .start_agent(body)
            .await
            .map_err(|e| (Step::StartAgent, e.into()))?;
        Ok(Provisioned {
            media: self.webrtc(offer_url),
            room: Some(ProvisionedRoom {
                name: room_name.clone(),
                id: room_id.to_owned(),
                transcribed: false,
                url: room_url.to_owned(),
                kiosk_token: Some(kiosk.token),
            }),
            agent_session_id,
        })
    }

    /// A room with dial-in: the bot gets the room, its token and the SIP
    /// URI, and the kiosk will call that URI.
    async fn after_sip_room(
        &self,
        daily: &DailyClient,
        room: &Room,
        exp: i64,
        kiosk_id: &str,
        session_id: SessionId,
    ) -> Result<Provisioned, (Step, StepError)> {
        let sip_uri = room
            .config
            .sip_uri
            .as_ref()
            .map(|s| s.endpoint.trim().to_owned())
            .filter(|e| !e.is_empty())
            .ok_or((Step::CreateRoom, NoSipUri.into()))?;
        let bot = daily
            .create_meeting_token(&MeetingTokenProperties {
                room_name: room.name.clone(),
                exp,
                user_name: "agent".into(),
                user_id: "agent".into(),
                is_owner: true,
            })
            .await
            .map_err(|e| (Step::BotToken, e.into()))?;
        let mut body = json!({
            "room_url": room.url,
            "token": bot.token.expose_secret(),
            "sip_uri": sip_uri,
            "kiosk_id": kiosk_id,
            "session_id": session_id.to_string(),
        });
        merge_extra(&mut body, &self.agent.body);
        let (reply, _) = self
            .start(body)
            .await
            .map_err(|e| (Step::StartAgent, e.into()))?;
        info!(room = %room.name, "bot started for SIP dial-in");
        Ok(Provisioned {
            media: MediaTarget::Sip { uri: sip_uri },
            room: Some(ProvisionedRoom {
                name: room.name.clone(),
                id: room.id.clone(),
                transcribed: self.sip_room.transcription,
                url: room.url.clone(),
                kiosk_token: None,
            }),
            agent_session_id: reply.session_id.filter(|id| plain_session_id(&id.0)),
        })
    }

    /// The agent key goes with the offer when the offer URL is on the start
    /// endpoint's origin, as Pipecat Cloud's `.../sessions/{id}/api/offer`
    /// is (it rejects offers without it). An `offer_url` that a start reply
    /// points at another host never gets the key: a secret is not handed to
    /// a host it was not configured for.
    fn offer_key(&self, offer_url: &Url) -> Option<SecretString> {
        let key = self.agent.api_key.as_ref()?;
        let start = self.agent.start_url.as_ref()?;
        if start.origin() == offer_url.origin() {
            Some(key.clone())
        } else {
            info!(
                offer_host = offer_url.host_str().unwrap_or_default(),
                "the offer URL is on another host than agent.start_url; not sending agent.api_key to it"
            );
            None
        }
    }

    /// `POST agent.start_url` with `body`; its reply, and its start for errors.
    async fn start(&self, body: Value) -> Result<(StartReply, String), AgentStartError> {
        let start_url = self.agent.start_url.clone().expect("checked in new");
        let mut request = self.http.post(start_url.clone()).json(&body);
        if let Some(key) = &self.agent.api_key {
            request = request.bearer_auth(key.expose_secret());
        }
        let response = request
            .send()
            .await
            .map_err(|e| AgentStartError::Network(e.without_url()))?;
        let status = response.status();
        let body = match read_limited(response, MAX_START_REPLY).await {
            Ok(body) => body,
            Err(BodyError::Read(e)) => return Err(AgentStartError::Network(e)),
            Err(too_large) => return Err(AgentStartError::Reply(too_large.to_string())),
        };
        let text = String::from_utf8_lossy(&body);
        let short: String = text.chars().take(MAX_BODY_IN_ERROR).collect();
        if !status.is_success() {
            return Err(AgentStartError::Status {
                status,
                body: short,
            });
        }
        let reply =
            serde_json::from_str(&text).map_err(|_| AgentStartError::Reply(short.clone()))?;
        Ok((reply, short))
    }

    /// Starts an agent session and finds its offer URL.
    async fn start_agent(
        &self,
        body: Value,
    ) -> Result<(Url, Option<AgentSessionId>), AgentStartError> {
        let start_url = self.agent.start_url.clone().expect("checked in new");
        let (reply, short) = self.start(body).await?;
        match (reply.offer_url, reply.session_id) {
            (Some(url), id) => {
                // Not put in a URL here, but stored, logged and uploaded.
                let id = id.filter(|id| {
                    let plain = plain_session_id(&id.0);
                    if !plain {
                        warn!("the agent's sessionId is not a plain id; not kept");
                    }
                    plain
                });
                Ok((url, id))
            }
            (None, Some(id)) if !plain_session_id(&id.0) => Err(AgentStartError::SessionId(
                id.0.chars().take(MAX_BODY_IN_ERROR).collect(),
            )),
            (None, Some(id)) => {
                let url = start_url
                    .join(&format!("sessions/{id}/api/offer"))
                    .map_err(|_| AgentStartError::Reply(short))?;
                info!(session = %id, offer_url = %url, "agent session started");
                Ok((url, Some(id)))
            }
            (None, None) => Err(AgentStartError::Reply(short)),
        }
    }
}

/// Adds `agent.body`'s keys to a start body, never replacing the gateway's own.
fn merge_extra(body: &mut Value, extra: &Value) {
    if let (Some(extra), Some(map)) = (extra.as_object(), body.as_object_mut()) {
        for (k, v) in extra {
            map.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
}
