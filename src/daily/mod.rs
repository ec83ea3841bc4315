//! Daily REST API client (rooms, presence, meeting tokens, transcription).
//!
//! A leaf module: it knows nothing about sessions or the link. Every call has
//! a timeout and is retried with capped exponential backoff and jitter on
//! network errors, timeouts, 5xx and 429 (honouring `Retry-After`).

pub mod cli;
mod error;
mod transcription;
mod types;
pub mod webvtt;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use backon::{ExponentialBuilder, Retryable};
use reqwest::{Method, StatusCode, header};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{debug, warn};
use url::Url;

use crate::error_text::error_chain;
use crate::http_body::{BodyError, read_limited};

pub use error::DailyError;
pub use transcription::{AccessLink, DailyTranscriptId, TranscriptInfo, TranscriptStatus};
use types::{CreateMeetingToken, ErrorBody, RoomDeleted, RoomList};
pub use types::{
    CreateRoom, MeetingToken, MeetingTokenProperties, Participant, Presence, Privacy, Room,
    RoomDeletion, RoomName, RoomProperties, SipCodecs, SipDialIn, SipEndpoint,
};

/// Largest reply read: a list of 100 rooms is well under this.
const MAX_REPLY: usize = 1024 * 1024;
/// Default Daily API endpoint.
pub const DEFAULT_BASE_URL: &str = "https://api.daily.co/v1";

/// How the gateway reaches Daily. Mapped from the `[daily]` config table.
#[derive(Clone, Debug)]
pub struct DailySettings {
    /// The REST API's base URL.
    pub base_url: Url,
    /// `Authorization: Bearer` key; `SecretString` keeps it out of Debug output.
    pub api_key: SecretString,
    /// Whole-request deadline for one attempt.
    pub request_timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: usize,
    /// First backoff between attempts, doubling.
    pub retry_min_delay: Duration,
    /// Cap for backoff and for a server's `Retry-After`.
    pub retry_max_delay: Duration,
    /// Properties of the rooms created.
    pub room: RoomSettings,
}

impl Default for DailySettings {
    fn default() -> Self {
        Self {
            base_url: Url::parse(DEFAULT_BASE_URL).expect("constant URL parses"),
            api_key: SecretString::from(String::new()),
            request_timeout: Duration::from_secs(10),
            max_retries: 4,
            retry_min_delay: Duration::from_millis(250),
            retry_max_delay: Duration::from_secs(8),
            room: RoomSettings::default(),
        }
    }
}

/// Properties of the rooms the gateway creates for sessions.
#[derive(Clone, Debug)]
pub struct RoomSettings {
    /// Room (and token) lifetime: `exp = now + lifetime`. Map from `session.max_duration`.
    pub lifetime: Duration,
    /// Participants allowed at once.
    pub max_participants: u32,
    /// Whether participants are removed when the room expires.
    pub eject_at_room_exp: bool,
    /// Whether Daily's text chat is on.
    pub enable_chat: bool,
    /// Who may join without a token.
    pub privacy: Privacy,
}

impl Default for RoomSettings {
    fn default() -> Self {
        Self {
            lifetime: Duration::from_secs(30 * 60),
            // kiosk + bot + one supervisor
            max_participants: 3,
            eject_at_room_exp: true,
            enable_chat: false,
            privacy: Privacy::Private,
        }
    }
}

/// Seconds since the Unix epoch, for Daily's `exp` fields.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl RoomSettings {
    /// The `POST /rooms` body for a new session room expiring `lifetime` after `now_unix`.
    pub fn create_request(&self, name: RoomName, now_unix: i64) -> CreateRoom {
        CreateRoom {
            name,
            privacy: self.privacy,
            properties: RoomProperties {
                exp: Some(now_unix + self.lifetime.as_secs() as i64),
                max_participants: Some(self.max_participants),
                eject_at_room_exp: Some(self.eject_at_room_exp),
                enable_chat: Some(self.enable_chat),
                enable_transcription_storage: None,
                sip: None,
                sip_uri: None,
            },
        }
    }
}

/// Client for the Daily REST API.
#[derive(Clone)]
pub struct DailyClient {
    http: reqwest::Client,
    base_url: Url,
    api_key: SecretString,
    backoff: ExponentialBuilder,
    retry_max_delay: Duration,
    room: RoomSettings,
}

impl std::fmt::Debug for DailyClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DailyClient")
            .field("base_url", &self.base_url.as_str())
            .finish_non_exhaustive()
    }
}

impl DailyClient {
    /// A client for `settings`; fails only if the HTTP client cannot be built.
    pub fn new(settings: &DailySettings) -> Result<Self, DailyError> {
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .user_agent(concat!("kiosk-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| DailyError::Network {
                operation: "build client",
                source,
            })?;
        // Url::join drops the last path segment unless the base ends in '/'.
        let mut base_url = settings.base_url.clone();
        if !base_url.path().ends_with('/') {
            base_url.set_path(&format!("{}/", base_url.path()));
        }
        Ok(Self {
            http,
            base_url,
            api_key: settings.api_key.clone(),
            backoff: ExponentialBuilder::default()
                .with_min_delay(settings.retry_min_delay)
                .with_max_delay(settings.retry_max_delay)
                .with_max_times(settings.max_retries)
                .with_jitter(),
            retry_max_delay: settings.retry_max_delay,
            room: settings.room.clone(),
        })
    }

    /// The API's base URL (no secrets in it).
    pub fn base_url(&self) -> &Url {
        &self.base_url
    }

    /// One unretried `GET /rooms?limit=1`: is the API reachable, and does it
    /// accept the key? For the reachability prober.
    pub async fn check(&self) -> Result<(), DailyError> {
        let url = self
            .base_url
            .join("rooms?limit=1")
            .map_err(|e| DailyError::InvalidUrl(e.to_string()))?;
        self.attempt::<RoomList, ()>("check API", Method::GET, url, None)
            .await
            .map(|_| ())
    }

    /// Properties used for rooms this client creates for sessions.
    pub fn room_settings(&self) -> &RoomSettings {
        &self.room
    }

    /// Creates a room (`POST /rooms`).
    pub async fn create_room(&self, request: &CreateRoom) -> Result<Room, DailyError> {
        self.call("create room", Method::POST, "rooms", Some(request))
            .await
    }

    /// One room (`GET /rooms/:name`).
    pub async fn get_room(&self, name: &RoomName) -> Result<Room, DailyError> {
        self.call::<_, ()>("get room", Method::GET, &format!("rooms/{name}"), None)
            .await
    }

    /// The most recent rooms (Daily returns up to 100 per page).
    pub async fn list_rooms(&self) -> Result<Vec<Room>, DailyError> {
        let list: RoomList = self
            .call::<_, ()>("list rooms", Method::GET, "rooms", None)
            .await?;
        debug!(
            total = list.total_count,
            returned = list.data.len(),
            "listed Daily rooms"
        );
        Ok(list.data)
    }

    /// Deletes a room; a room that is already gone (404) is not an error.
    pub async fn delete_room(&self, name: &RoomName) -> Result<RoomDeletion, DailyError> {
        let result: Result<RoomDeleted, _> = self
            .call::<_, ()>(
                "delete room",
                Method::DELETE,
                &format!("rooms/{name}"),
                None,
            )
            .await;
        match result {
            Ok(body) if body.deleted => Ok(RoomDeletion::Deleted),
            Ok(_) => Err(DailyError::Malformed {
                operation: "delete room",
                status: StatusCode::OK,
                detail: "response says deleted=false".into(),
            }),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(RoomDeletion::AlreadyGone),
            Err(e) => Err(e),
        }
    }

    /// Who is in a room now (`GET /rooms/:name/presence`).
    pub async fn presence(&self, name: &RoomName) -> Result<Presence, DailyError> {
        self.call::<_, ()>(
            "get presence",
            Method::GET,
            &format!("rooms/{name}/presence"),
            None,
        )
        .await
    }

    /// A meeting token for one room (`POST /meeting-tokens`).
    pub async fn create_meeting_token(
        &self,
        properties: &MeetingTokenProperties,
    ) -> Result<MeetingToken, DailyError> {
        self.call(
            "create meeting token",
            Method::POST,
            "meeting-tokens",
            Some(&CreateMeetingToken { properties }),
        )
        .await
    }

    /// One logical call, retried per the backoff policy.
    async fn call<T, B>(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, DailyError>
    where
        T: DeserializeOwned,
        B: Serialize + ?Sized,
    {
        let url = self
            .base_url
            .join(path)
            .map_err(|e| DailyError::InvalidUrl(e.to_string()))?;
        let max_delay = self.retry_max_delay;
        let attempt = || self.attempt::<T, B>(operation, method.clone(), url.clone(), body);
        attempt
            .retry(self.backoff)
            .sleep(tokio::time::sleep)
            .when(DailyError::is_retryable)
            // A server's Retry-After replaces our own delay, capped so a
            // hostile or confused value cannot stall a session for hours.
            .adjust(move |err, planned| {
                planned.map(|d| err.retry_after().map_or(d, |ra| ra.min(max_delay)))
            })
            .notify(|err, delay| {
                warn!(operation, error = %error_chain(&err), retry_in_ms = delay.as_millis() as u64, "Daily API call failed, retrying");
            })
            .await
    }

    async fn attempt<T, B>(
        &self,
        operation: &'static str,
        method: Method,
        url: Url,
        body: Option<&B>,
    ) -> Result<T, DailyError>
    where
        T: DeserializeOwned,
        B: Serialize + ?Sized,
    {
        let mut request = self
            .http
            .request(method.clone(), url)
            .bearer_auth(self.api_key.expose_secret());
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| DailyError::from_reqwest(operation, e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = match read_limited(response, MAX_REPLY).await {
            Ok(bytes) => bytes,
            Err(BodyError::Read(e)) => return Err(DailyError::from_reqwest(operation, e)),
            Err(too_large) => {
                return Err(DailyError::Malformed {
                    operation,
                    status,
                    detail: too_large.to_string(),
                });
            }
        };
        debug!(operation, %method, status = status.as_u16(), bytes = bytes.len(), "Daily API response");
        if status.is_success() {
            // Some calls (transcription start/stop) document no reply body.
            let body: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
            serde_json::from_slice(body).map_err(|e| DailyError::Malformed {
                operation,
                status,
                detail: e.to_string(),
            })
        } else {
            // Daily's error body is documented, but a proxy in between may
            // answer with HTML; keep the status either way.
            let body: ErrorBody = serde_json::from_slice(&bytes).unwrap_or_default();
            Err(DailyError::Api {
                operation,
                status,
                error: body.error.unwrap_or_else(|| "unknown".into()),
                info: body.info.unwrap_or_default(),
                retry_after,
            })
        }
    }
}
