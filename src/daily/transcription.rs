//! Daily's REST transcription: starting and stopping it in a room, finding
//! a room's stored transcripts and downloading one as WebVTT.
//!
//! A SIP caller gets no Daily app-messages, so in SIP mode the transcript
//! comes from here, after the session. Shapes, from Daily's REST reference
//! (docs.daily.co/reference/rest-api):
//!
//! - `POST /rooms/:name/transcription/start` and `.../stop`: documented;
//!   the body holds optional Deepgram settings (we send `{}`, so the room's
//!   or domain's defaults apply). The reply body is not documented: any
//!   JSON, or none, is accepted.
//! - `GET /transcript?roomId=<room id>`: documented. The filter is the
//!   room's **id** (`Room::id`), not its name. Reply `{total_count, data:
//!   [{transcriptId, roomId, status, isVttAvailable, duration, ...}]}`,
//!   `status` one of `t_finished`, `t_in_progress`, `t_error`, `t_deleted`.
//! - `GET /transcript/:id/access-link`: documented, but the reference's
//!   example names the field `download_link` and its prose `link`; both are
//!   accepted. The link is a pre-signed S3 URL valid for an hour; Daily
//!   warns it may be a plain string instead of a URL when access is denied.
//! - Transcripts are only stored when `enable_transcription_storage` is
//!   set on the room or the domain; the file is rewritten every two
//!   minutes while transcription runs and finished when it stops.
//!
//! None of this has been checked against a live Daily account: the tests
//! run against the fake in `tests/it/daily_support.rs`, built from the
//! same reference.

use std::fmt;

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use tracing::debug;
use url::Url;

use super::{DailyClient, DailyError, RoomName};
use crate::http_body::{BodyError, read_limited};

/// Daily's id for a stored transcript. Checked like a room name, since it
/// becomes part of a request path.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DailyTranscriptId(String);

impl DailyTranscriptId {
    /// Checks an id from Daily's reply: letters, digits, `-` and `_`.
    pub fn parse(id: &str) -> Result<Self, DailyError> {
        let ok = !id.is_empty()
            && id.len() <= 128
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Self(id.to_owned()))
        } else {
            Err(DailyError::Malformed {
                operation: "list transcripts",
                status: StatusCode::OK,
                detail: format!("unusable transcript id {id:?}"),
            })
        }
    }

    /// The id as Daily knows it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DailyTranscriptId {
    type Error = DailyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<DailyTranscriptId> for String {
    fn from(value: DailyTranscriptId) -> Self {
        value.0
    }
}

impl fmt::Display for DailyTranscriptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a stored transcript is in its life.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub enum TranscriptStatus {
    /// `t_finished`: the file is complete.
    Finished,
    /// `t_in_progress`: transcription still runs (the file may be partial).
    InProgress,
    /// `t_error`: transcription failed.
    Error,
    /// `t_deleted`.
    Deleted,
    /// A status the reference does not list.
    Other(String),
}

impl From<String> for TranscriptStatus {
    fn from(s: String) -> Self {
        match s.as_str() {
            "t_finished" => Self::Finished,
            "t_in_progress" => Self::InProgress,
            "t_error" => Self::Error,
            "t_deleted" => Self::Deleted,
            _ => Self::Other(s),
        }
    }
}

/// One entry of `GET /transcript`.
#[derive(Clone, Debug, Deserialize)]
pub struct TranscriptInfo {
    /// Its id.
    #[serde(rename = "transcriptId")]
    pub id: DailyTranscriptId,
    /// The id (not the name) of the room it was made in.
    #[serde(rename = "roomId", default)]
    pub room_id: Option<String>,
    /// Where it is in its life.
    pub status: TranscriptStatus,
    /// Whether a WebVTT file was stored; absent in some documented examples.
    #[serde(rename = "isVttAvailable", default)]
    pub vtt_available: Option<bool>,
    /// When it was made, as Daily wrote it.
    #[serde(default)]
    pub created_at: Option<String>,
}

#[derive(Debug, Deserialize)]
struct TranscriptList {
    data: Vec<TranscriptInfo>,
}

#[derive(Deserialize)]
struct AccessLinkReply {
    #[serde(alias = "download_link")]
    link: String,
}

/// A pre-signed download link; it grants access by itself, so it is kept
/// out of Debug output and logs.
#[derive(Clone)]
pub struct AccessLink(Url);

impl fmt::Debug for AccessLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AccessLink({}://{}/[redacted])",
            self.0.scheme(),
            self.0.host_str().unwrap_or("")
        )
    }
}

#[derive(Serialize)]
struct StartTranscription {}

impl DailyClient {
    /// Starts transcription in a room (`POST /rooms/:name/transcription/start`)
    /// with the room's or domain's settings. Daily refuses while one runs.
    pub async fn start_transcription(&self, room: &RoomName) -> Result<(), DailyError> {
        self.call::<IgnoredAny, _>(
            "start transcription",
            Method::POST,
            &format!("rooms/{room}/transcription/start"),
            Some(&StartTranscription {}),
        )
        .await
        .map(drop)
    }

    /// Stops transcription in a room (`POST /rooms/:name/transcription/stop`),
    /// which writes the final transcript file.
    pub async fn stop_transcription(&self, room: &RoomName) -> Result<(), DailyError> {
        self.call::<IgnoredAny, _>(
            "stop transcription",
            Method::POST,
            &format!("rooms/{room}/transcription/stop"),
            Some(&StartTranscription {}),
        )
        .await
        .map(drop)
    }

    /// The stored transcripts of the room with this **id** (`Room::id`),
    /// newest first as Daily lists them. Entries of other rooms are dropped
    /// in case the filter is ignored.
    pub async fn list_transcripts(&self, room_id: &str) -> Result<Vec<TranscriptInfo>, DailyError> {
        let query: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("roomId", room_id)
            .append_pair("limit", "100")
            .finish();
        let list: TranscriptList = self
            .call::<_, ()>(
                "list transcripts",
                Method::GET,
                &format!("transcript?{query}"),
                None,
            )
            .await?;
        let total = list.data.len();
        let data: Vec<_> = list
            .data
            .into_iter()
            .filter(|t| t.room_id.as_deref().is_none_or(|r| r == room_id))
            .collect();
        debug!(
            returned = total,
            for_room = data.len(),
            "listed Daily transcripts"
        );
        Ok(data)
    }

    /// A download link for one transcript's WebVTT file
    /// (`GET /transcript/:id/access-link`).
    pub async fn transcript_link(&self, id: &DailyTranscriptId) -> Result<AccessLink, DailyError> {
        const OPERATION: &str = "get transcript link";
        let reply: AccessLinkReply = self
            .call::<_, ()>(
                OPERATION,
                Method::GET,
                &format!("transcript/{id}/access-link"),
                None,
            )
            .await?;
        // Daily may answer with an explanation instead of a URL.
        match Url::parse(&reply.link) {
            Ok(url) if matches!(url.scheme(), "https" | "http") => Ok(AccessLink(url)),
            _ => Err(DailyError::Malformed {
                operation: OPERATION,
                status: StatusCode::OK,
                detail: "the access link is not a URL (is API access to transcripts allowed?)"
                    .into(),
            }),
        }
    }

    /// Downloads a transcript file through its access link: once, at most
    /// `limit` bytes, and without the API key (the link is on another host
    /// and carries its own signature).
    pub async fn download_transcript(
        &self,
        link: &AccessLink,
        limit: usize,
    ) -> Result<Bytes, DailyError> {
        const OPERATION: &str = "download transcript";
        let response = self
            .http
            .get(link.0.clone())
            .send()
            .await
            .map_err(|e| DailyError::from_reqwest(OPERATION, e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(DailyError::Api {
                operation: OPERATION,
                status,
                error: "download failed".into(),
                info: String::new(),
                retry_after: None,
            });
        }
        read_limited(response, limit).await.map_err(|e| match e {
            BodyError::Read(e) => DailyError::from_reqwest(OPERATION, e),
            too_large => DailyError::Malformed {
                operation: OPERATION,
                status,
                detail: too_large.to_string(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_documented_list_shape() {
        let list: TranscriptList = serde_json::from_str(
            r#"{"total_count": 2, "data": [
                {"transcriptId": "0cb313e1-211f", "domainId": "d", "roomId": "r1",
                 "mtgSessionId": "m", "status": "t_finished", "duration": 277,
                 "isVttAvailable": true, "created_at": "2024-01-15T10:30:00.000Z"},
                {"transcriptId": "257764e6", "roomId": "r1", "status": "t_queued"}]}"#,
        )
        .unwrap();
        assert_eq!(list.data[0].status, TranscriptStatus::Finished);
        assert_eq!(list.data[0].vtt_available, Some(true));
        assert_eq!(
            list.data[1].status,
            TranscriptStatus::Other("t_queued".into())
        );
    }

    #[test]
    fn access_link_field_has_two_documented_names() {
        for body in [
            r#"{"link": "https://x/a"}"#,
            r#"{"transcriptId": "t", "download_link": "https://x/a"}"#,
        ] {
            let reply: AccessLinkReply = serde_json::from_str(body).unwrap();
            assert_eq!(reply.link, "https://x/a");
        }
    }

    #[test]
    fn transcript_ids_cannot_change_the_path() {
        assert!(DailyTranscriptId::parse("0cb313e1-211f-4be0").is_ok());
        assert!(DailyTranscriptId::parse("../rooms").is_err());
        assert!(DailyTranscriptId::parse("").is_err());
    }

    #[test]
    fn access_link_debug_hides_the_signature() {
        let link = AccessLink(Url::parse("https://bucket.s3.example/t.vtt?Signature=abc").unwrap());
        assert!(!format!("{link:?}").contains("Signature"));
    }
}
