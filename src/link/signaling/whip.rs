//! WHIP (RFC 9725): `POST` the SDP offer as `application/sdp` with a bearer
//! token, get `201 Created` + `Location` and the answer; trickle with `PATCH`
//! (`application/trickle-ice-sdpfrag`) and end with `DELETE` on that resource.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::{StatusCode, header};
use secrecy::{ExposeSecret, SecretString};
use tracing::{debug, warn};
use url::Url;

use super::{
    Candidate, OfferKind, Signaling, SignalingError, check_answer_sdp, error_for_status,
    read_answer,
};
use crate::error_text::error_chain;

const SDP: &str = "application/sdp";
const SDP_FRAG: &str = "application/trickle-ice-sdpfrag";

struct Resource {
    url: Url,
    /// ICE credentials of the offer the resource was created with; an
    /// sdpfrag must name them so the server can tell restarts apart.
    ice_ufrag: String,
    ice_pwd: String,
}

/// [`Signaling`] to a WHIP endpoint; remembers the session resource it created.
pub struct WhipSignaling {
    http: reqwest::Client,
    endpoint: Url,
    token: Option<SecretString>,
    resource: Mutex<Option<Resource>>,
}

impl WhipSignaling {
    /// A client for `endpoint`, with an optional bearer token and a per-request time limit.
    pub fn new(endpoint: Url, token: Option<SecretString>, timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .expect("static reqwest configuration is valid");
        Self {
            http,
            endpoint,
            token,
            resource: Mutex::new(None),
        }
    }

    fn authed(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => r.bearer_auth(t.expose_secret()),
            None => r,
        }
    }

    /// The session resource URL, once an offer was accepted.
    pub fn resource_url(&self) -> Option<Url> {
        self.resource
            .lock()
            .expect("resource lock")
            .as_ref()
            .map(|r| r.url.clone())
    }

    async fn delete_resource(&self, url: Url) -> Result<(), SignalingError> {
        const STEP: &str = "WHIP DELETE";
        let response = self
            .authed(self.http.delete(url))
            .send()
            .await
            .map_err(|e| SignalingError::network(STEP, e))?;
        // The session may already have ended on the server.
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(());
        }
        error_for_status(STEP, response).await.map(|_| ())
    }
}

fn sdp_attribute<'a>(sdp: &'a str, name: &str) -> Option<&'a str> {
    sdp.lines()
        .find_map(|l| l.strip_prefix("a=")?.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

#[async_trait]
impl Signaling for WhipSignaling {
    async fn offer(&self, sdp: &str, kind: OfferKind) -> Result<String, SignalingError> {
        const STEP: &str = "WHIP offer";
        // A WHIP restart is a new session: RFC 9725's in-place ICE restart
        // (PATCH with new credentials) is optional for servers, a fresh POST
        // works everywhere.
        if kind != OfferKind::Initial {
            let old = self.resource.lock().expect("resource lock").take();
            if let Some(old) = old
                && let Err(e) = self.delete_resource(old.url).await
            {
                warn!(error = %error_chain(&e), "could not delete the previous WHIP session");
            }
        }
        let response = self
            .authed(self.http.post(self.endpoint.clone()))
            .header(header::CONTENT_TYPE, SDP)
            .body(sdp.to_owned())
            .send()
            .await
            .map_err(|e| SignalingError::network(STEP, e))?;
        let response = error_for_status(STEP, response).await?;
        if response.status() != StatusCode::CREATED {
            return Err(SignalingError::MalformedAnswer {
                step: STEP,
                detail: format!("expected 201 Created, got {}", response.status()),
            });
        }
        let location = response
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(SignalingError::MalformedAnswer {
                step: STEP,
                detail: "201 without a Location header".into(),
            })?;
        let url = self
            .endpoint
            .join(location)
            .map_err(|e| SignalingError::MalformedAnswer {
                step: STEP,
                detail: format!("bad Location {location:?}: {e}"),
            })?;
        // PATCH and DELETE go to the resource with the bearer token: it
        // must be on the endpoint's own origin, or the token would go to
        // whatever host the answer names.
        if url.origin() != self.endpoint.origin() {
            return Err(SignalingError::MalformedAnswer {
                step: STEP,
                detail: format!(
                    "Location {location:?} is not on the endpoint's origin {}",
                    self.endpoint.origin().ascii_serialization()
                ),
            });
        }
        let answer =
            String::from_utf8(read_answer(STEP, response).await?.to_vec()).map_err(|_| {
                SignalingError::MalformedAnswer {
                    step: STEP,
                    detail: "the SDP answer is not UTF-8".into(),
                }
            })?;
        check_answer_sdp(STEP, &answer)?;
        debug!(resource = %url, "WHIP session created");
        *self.resource.lock().expect("resource lock") = Some(Resource {
            url,
            ice_ufrag: sdp_attribute(sdp, "ice-ufrag")
                .unwrap_or_default()
                .to_owned(),
            ice_pwd: sdp_attribute(sdp, "ice-pwd").unwrap_or_default().to_owned(),
        });
        Ok(answer)
    }

    async fn trickle(&self, candidates: &[Candidate]) -> Result<(), SignalingError> {
        const STEP: &str = "WHIP trickle";
        let (url, frag) = {
            let guard = self.resource.lock().expect("resource lock");
            let r = guard
                .as_ref()
                .ok_or(SignalingError::NoSession { step: STEP })?;
            let mut frag = format!("a=ice-ufrag:{}\r\na=ice-pwd:{}\r\n", r.ice_ufrag, r.ice_pwd);
            let mut mid = None;
            for c in candidates {
                if mid != Some(&c.sdp_mid) {
                    frag.push_str(&format!(
                        "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:{}\r\n",
                        c.sdp_mid
                    ));
                    mid = Some(&c.sdp_mid);
                }
                let line = c
                    .candidate
                    .strip_prefix("candidate:")
                    .unwrap_or(&c.candidate);
                frag.push_str(&format!("a=candidate:{line}\r\n"));
            }
            (r.url.clone(), frag)
        };
        let response = self
            .authed(self.http.patch(url))
            .header(header::CONTENT_TYPE, SDP_FRAG)
            .body(frag)
            .send()
            .await
            .map_err(|e| SignalingError::network(STEP, e))?;
        error_for_status(STEP, response).await?;
        Ok(())
    }

    async fn hang_up(&self) -> Result<(), SignalingError> {
        let resource = self.resource.lock().expect("resource lock").take();
        match resource {
            Some(r) => self.delete_resource(r.url).await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ice_credentials_from_sdp() {
        let sdp =
            "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ice-ufrag:abcd\r\na=ice-pwd:secretpwd\r\n";
        assert_eq!(sdp_attribute(sdp, "ice-ufrag"), Some("abcd"));
        assert_eq!(sdp_attribute(sdp, "ice-pwd"), Some("secretpwd"));
        assert_eq!(sdp_attribute(sdp, "mid"), None);
    }
}
