//! Request and response shapes of the Daily REST API (rooms, presence,
//! meeting tokens), as documented in Daily's public OpenAPI reference.

use std::fmt;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::DailyError;

/// A Daily room name. Daily accepts letters, digits, `-` and `_`; checking
/// here keeps a bad name from ever becoming part of a request path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RoomName(String);

impl RoomName {
    /// Longest name Daily accepts.
    const MAX_LEN: usize = 128;

    /// Checks a name from outside (configuration, Daily's replies).
    pub fn parse(name: &str) -> Result<Self, DailyError> {
        let ok = !name.is_empty()
            && name.len() <= Self::MAX_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(DailyError::InvalidRoomName(name.to_owned()))
        }
    }

    /// `kiosk-<kiosk id>-<short id>`: recognisable in Daily's dashboard as
    /// belonging to one kiosk, unique per session. Characters Daily rejects in
    /// the kiosk id are replaced rather than failing the session.
    pub fn for_kiosk(kiosk_id: &str) -> Self {
        let kiosk: String = kiosk_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        let short: u32 = rand::random();
        Self(format!("kiosk-{kiosk}-{short:08x}"))
    }

    /// The name as Daily knows it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RoomName {
    type Error = DailyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<RoomName> for String {
    fn from(value: RoomName) -> Self {
        value.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who may join a room without a token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Privacy {
    /// Anyone with the room URL may join.
    Public,
    /// Kiosk rooms default to private: only holders of a meeting token join.
    #[default]
    Private,
}

/// Room properties the gateway sets (`POST /rooms` `properties`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoomProperties {
    /// Unix time (seconds) after which the room stops accepting joins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// Most participants at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_participants: Option<u32>,
    /// Whether participants are removed when the room expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eject_at_room_exp: Option<bool>,
    /// Whether Daily's text chat is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_chat: Option<bool>,
    /// Whether Daily keeps the room's transcripts (needed to fetch them
    /// after the session, `daily.transcription`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_transcription_storage: Option<bool>,
    /// SIP dial-in into the room (`session.provision = "daily-sip"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sip: Option<SipDialIn>,
    /// Read-only, in Daily's answer for a room with `sip`: the address to dial.
    #[serde(default, skip_serializing)]
    pub sip_uri: Option<SipEndpoint>,
}

/// The `sip` room property: one audio-only dial-in endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SipDialIn {
    /// The caller's name in the room.
    pub display_name: String,
    /// Audio only.
    pub video: bool,
    /// Always `"dial-in"` here.
    pub sip_mode: String,
    /// One caller: the kiosk.
    pub num_endpoints: u32,
    /// Opus, which the kiosk's leg carries end to end (Daily would
    /// transcode another codec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub codecs: Option<SipCodecs>,
}

impl SipDialIn {
    /// Dial-in for one audio caller named `display_name`, Opus only.
    pub fn for_caller(display_name: &str) -> Self {
        Self {
            display_name: display_name.to_owned(),
            video: false,
            sip_mode: "dial-in".into(),
            num_endpoints: 1,
            codecs: Some(SipCodecs {
                audio: vec!["OPUS".into()],
            }),
        }
    }
}

/// The `sip.codecs` room property.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SipCodecs {
    /// Audio codecs by name (`"OPUS"`, `"PCMU"`, ...).
    pub audio: Vec<String>,
}

/// `config.sip_uri` in a room with dial-in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SipEndpoint {
    /// The SIP URI to dial, with or without `sip:`.
    pub endpoint: String,
}

/// Body of `POST /rooms`.
#[derive(Clone, Debug, Serialize)]
pub struct CreateRoom {
    /// The room's name.
    pub name: RoomName,
    /// Who may join without a token.
    pub privacy: Privacy,
    /// Expiry and limits.
    pub properties: RoomProperties,
}

/// A room object as Daily returns it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Room {
    /// Daily's id for the room.
    pub id: String,
    /// Its name.
    pub name: RoomName,
    /// The URL participants join.
    pub url: String,
    /// Who may join without a token, when Daily says.
    #[serde(default)]
    pub privacy: Option<Privacy>,
    /// Whether it was created through the REST API.
    #[serde(default)]
    pub api_created: bool,
    /// When it was created, as Daily wrote it.
    #[serde(default)]
    pub created_at: Option<String>,
    /// Its properties.
    #[serde(default)]
    pub config: RoomProperties,
}

/// `GET /rooms` page.
#[derive(Debug, Deserialize)]
pub(crate) struct RoomList {
    #[serde(default)]
    pub total_count: u64,
    pub data: Vec<Room>,
}

/// `DELETE /rooms/:name` answer.
#[derive(Debug, Deserialize)]
pub(crate) struct RoomDeleted {
    pub deleted: bool,
}

/// What happened to a room we asked Daily to delete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomDeletion {
    /// Daily deleted it.
    Deleted,
    /// Daily answered 404: the room expired or someone else removed it,
    /// which is the outcome the caller wanted.
    AlreadyGone,
}

/// One participant in `GET /rooms/:name/presence`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Participant {
    /// The room's name.
    pub room: String,
    /// Daily's id for the participant.
    pub id: String,
    /// The id the participant joined with.
    #[serde(rename = "userId", default)]
    pub user_id: Option<String>,
    /// The name the participant joined with.
    #[serde(rename = "userName", default)]
    pub user_name: Option<String>,
    /// When it joined, as Daily wrote it.
    #[serde(rename = "joinTime", default)]
    pub join_time: Option<String>,
    /// Seconds in the room so far.
    #[serde(default)]
    pub duration: Option<u64>,
}

/// `GET /rooms/:name/presence`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    /// How many participants are in the room.
    pub total_count: u64,
    /// The participants.
    pub data: Vec<Participant>,
}

/// Properties of `POST /meeting-tokens`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MeetingTokenProperties {
    /// The one room the token opens.
    pub room_name: RoomName,
    /// Unix time (seconds) the token stops being valid.
    pub exp: i64,
    /// The name shown for its holder.
    pub user_name: String,
    /// The id its holder joins with.
    pub user_id: String,
    /// Whether its holder may manage the room.
    pub is_owner: bool,
}

#[derive(Serialize)]
pub(crate) struct CreateMeetingToken<'a> {
    pub properties: &'a MeetingTokenProperties,
}

/// A meeting token: a credential, so it is kept secret.
#[derive(Deserialize)]
pub struct MeetingToken {
    /// The token itself.
    pub token: SecretString,
}

impl fmt::Debug for MeetingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MeetingToken([redacted])")
    }
}

/// Daily's error body: `{"error": "<type>", "info": "<details>"}`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub info: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_reject_path_characters() {
        assert!(RoomName::parse("kiosk-a_1").is_ok());
        assert!(RoomName::parse("../rooms").is_err());
        assert!(RoomName::parse("").is_err());
        assert!(RoomName::parse(&"a".repeat(129)).is_err());
    }

    #[test]
    fn kiosk_room_names_are_valid_and_unique() {
        let a = RoomName::for_kiosk("lobby/2 east");
        let b = RoomName::for_kiosk("lobby/2 east");
        assert!(a.as_str().starts_with("kiosk-lobby_2_east-"));
        assert!(RoomName::parse(a.as_str()).is_ok());
        assert_ne!(a, b);
    }

    #[test]
    fn meeting_token_debug_is_redacted() {
        let t: MeetingToken = serde_json::from_str(r#"{"token":"eyJsecret"}"#).unwrap();
        assert!(!format!("{t:?}").contains("eyJsecret"));
    }
}
