//! Pipecat's SmallWebRTC signaling: `POST {offer_url}` JSON offer → answer
//! with `pc_id`; `PATCH {offer_url}` to trickle candidates.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::debug;
use url::Url;

use super::{
    Candidate, OfferKind, PcId, Signaling, SignalingError, check_answer_sdp, error_for_status,
    read_answer,
};

#[derive(Serialize)]
struct OfferBody<'a> {
    sdp: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pc_id: Option<&'a PcId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restart_pc: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_data: Option<&'a Value>,
}

#[derive(Deserialize)]
struct AnswerBody {
    sdp: String,
    #[serde(rename = "type")]
    kind: String,
    pc_id: PcId,
}

#[derive(Serialize)]
struct PatchBody<'a> {
    pc_id: &'a PcId,
    candidates: &'a [Candidate],
}

/// A SmallWebRTC signaling session with one agent.
pub struct SmallWebRtcSignaling {
    http: reqwest::Client,
    offer_url: Url,
    api_key: Option<SecretString>,
    request_data: Option<Value>,
    pc_id: Mutex<Option<PcId>>,
}

impl SmallWebRtcSignaling {
    /// `api_key` is sent as a bearer token (Pipecat Cloud needs it);
    /// `request_data` goes with the first offer for the bot to read.
    pub fn new(
        offer_url: Url,
        api_key: Option<SecretString>,
        request_data: Option<Value>,
        timeout: Duration,
    ) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .expect("static reqwest configuration is valid");
        Self {
            http,
            offer_url,
            api_key,
            request_data,
            pc_id: Mutex::new(None),
        }
    }

    /// The peer connection id the agent gave, once an offer is answered.
    pub fn pc_id(&self) -> Option<PcId> {
        self.pc_id.lock().expect("pc_id lock").clone()
    }

    fn request(&self, method: reqwest::Method) -> reqwest::RequestBuilder {
        let r = self.http.request(method, self.offer_url.clone());
        match &self.api_key {
            Some(key) => r.bearer_auth(key.expose_secret()),
            None => r,
        }
    }
}

#[async_trait]
impl Signaling for SmallWebRtcSignaling {
    async fn offer(&self, sdp: &str, kind: OfferKind) -> Result<String, SignalingError> {
        const STEP: &str = "SmallWebRTC offer";
        let pc_id = self.pc_id();
        let body = OfferBody {
            sdp,
            kind: "offer",
            pc_id: pc_id.as_ref(),
            restart_pc: (kind == OfferKind::Restart).then_some(true),
            request_data: (kind == OfferKind::Initial)
                .then_some(self.request_data.as_ref())
                .flatten(),
        };
        let response = self
            .request(reqwest::Method::POST)
            .json(&body)
            .send()
            .await
            .map_err(|e| SignalingError::network(STEP, e))?;
        let response = error_for_status(STEP, response).await?;
        let body = read_answer(STEP, response).await?;
        let answer: AnswerBody =
            serde_json::from_slice(&body).map_err(|e| SignalingError::MalformedAnswer {
                step: STEP,
                detail: e.to_string(),
            })?;
        if answer.kind != "answer" {
            return Err(SignalingError::MalformedAnswer {
                step: STEP,
                detail: format!("type is {:?}, expected \"answer\"", answer.kind),
            });
        }
        check_answer_sdp(STEP, &answer.sdp)?;
        debug!(pc_id = %answer.pc_id, ?kind, "SmallWebRTC answer received");
        *self.pc_id.lock().expect("pc_id lock") = Some(answer.pc_id);
        Ok(answer.sdp)
    }

    async fn trickle(&self, candidates: &[Candidate]) -> Result<(), SignalingError> {
        const STEP: &str = "SmallWebRTC trickle";
        let pc_id = self
            .pc_id()
            .ok_or(SignalingError::NoSession { step: STEP })?;
        let response = self
            .request(reqwest::Method::PATCH)
            .json(&PatchBody {
                pc_id: &pc_id,
                candidates,
            })
            .send()
            .await
            .map_err(|e| SignalingError::network(STEP, e))?;
        error_for_status(STEP, response).await?;
        Ok(())
    }

    /// SmallWebRTC has no hang-up request: closing the peer connection (and
    /// its data channel) is how the agent learns the call ended.
    async fn hang_up(&self) -> Result<(), SignalingError> {
        Ok(())
    }
}
