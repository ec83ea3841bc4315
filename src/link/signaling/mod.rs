//! How an SDP offer reaches the agent: one trait, two dialects.

pub mod smallwebrtc;
pub mod whip;

use std::fmt;

use async_trait::async_trait;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

/// Pipecat's peer-connection id, returned with the first answer and sent
/// back with every renegotiation and trickle PATCH.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PcId(pub String);

impl fmt::Display for PcId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A local ICE candidate to trickle to the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// The candidate line.
    pub candidate: String,
    /// The media stream it is for.
    pub sdp_mid: String,
    /// That stream's index in the SDP.
    pub sdp_mline_index: u16,
}

/// What kind of offer this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OfferKind {
    /// The first offer of a call.
    Initial,
    /// The agent asked for renegotiation on the same connection.
    Renegotiate,
    /// Recovery after the media path broke: the agent should replace its
    /// peer connection (SmallWebRTC `restart_pc`).
    Restart,
}

/// Why an offer, trickle or hang-up to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum SignalingError {
    /// The request got no reply.
    #[error("signaling {step} failed: network error")]
    Network {
        /// The request.
        step: &'static str,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The agent refused.
    #[error("signaling {step} failed: HTTP {status}: {body}")]
    Status {
        /// The request.
        step: &'static str,
        /// Its HTTP status.
        status: StatusCode,
        /// The start of its reply.
        body: String,
    },
    /// The answer is not usable.
    #[error("signaling {step}: malformed answer: {detail}")]
    MalformedAnswer {
        /// The request.
        step: &'static str,
        /// What is wrong with the answer.
        detail: String,
    },
    /// Trickle or hang-up before an offer was answered.
    #[error("signaling {step} needs an established session first")]
    NoSession {
        /// The request.
        step: &'static str,
    },
}

impl SignalingError {
    pub(crate) fn network(step: &'static str, source: reqwest::Error) -> Self {
        Self::Network {
            step,
            source: source.without_url(),
        }
    }

    /// Whether trying again later could help (network trouble, 5xx, 429).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Network { .. } => true,
            Self::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            _ => false,
        }
    }
}

/// Longest error body kept in an error message.
const MAX_ERROR_BODY: usize = 512;

/// Largest answer read: an SDP answer is a few kilobytes.
pub(crate) const MAX_ANSWER: usize = 256 * 1024;

/// The body of a successful answer, bounded by [`MAX_ANSWER`].
pub(crate) async fn read_answer(
    step: &'static str,
    response: reqwest::Response,
) -> Result<bytes::Bytes, SignalingError> {
    crate::http_body::read_limited(response, MAX_ANSWER)
        .await
        .map_err(|e| match e {
            crate::http_body::BodyError::Read(source) => SignalingError::Network { step, source },
            too_large => SignalingError::MalformedAnswer {
                step,
                detail: too_large.to_string(),
            },
        })
}

pub(crate) async fn error_for_status(
    step: &'static str,
    response: reqwest::Response,
) -> Result<reqwest::Response, SignalingError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = crate::http_body::read_prefix(response, MAX_ERROR_BODY).await;
    Err(SignalingError::Status { step, status, body })
}

/// Offer/answer exchange with an agent.
#[async_trait]
pub trait Signaling: Send + Sync {
    /// Sends an SDP offer, returns the agent's SDP answer.
    async fn offer(&self, sdp: &str, kind: OfferKind) -> Result<String, SignalingError>;
    /// Sends local candidates found after the offer went out.
    async fn trickle(&self, candidates: &[Candidate]) -> Result<(), SignalingError>;
    /// Ends the session on the agent's side, where the dialect has a way to.
    async fn hang_up(&self) -> Result<(), SignalingError>;
}

/// SDP must at least look like a session description with an audio section.
pub(crate) fn check_answer_sdp(step: &'static str, sdp: &str) -> Result<(), SignalingError> {
    if sdp.starts_with("v=0") && sdp.contains("m=audio") {
        Ok(())
    } else {
        Err(SignalingError::MalformedAnswer {
            step,
            detail: "answer SDP lacks v=0 or an audio section".into(),
        })
    }
}

#[cfg(test)]
mod proptests;
