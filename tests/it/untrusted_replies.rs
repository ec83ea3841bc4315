//! What a remote answer says is not trusted to build URLs that carry our
//! credentials: a WHIP `Location` on another origin is refused (PATCH and
//! DELETE would take the bearer token there), and an agent start reply's
//! `sessionId` must be a plain id before it becomes part of the offer URL.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use kiosk_gateway::agent_settings::{AgentSettings, ProvisionMode};
use kiosk_gateway::link::signaling::whip::WhipSignaling;
use kiosk_gateway::link::signaling::{OfferKind, Signaling, SignalingError};
use kiosk_gateway::session::provision::{
    AgentStartError, MediaTarget, ProvisionError, Provisioner, Step, StepError,
};
use kiosk_gateway::store::SessionId;
use secrecy::SecretString;
use serde_json::{Value, json};

const SDP_ANSWER: &str =
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n";

/// Every request a fake server saw: method, path, Authorization.
type Seen = Arc<Mutex<Vec<(Method, String, Option<String>)>>>;

#[derive(Clone)]
struct Fake {
    seen: Seen,
    /// The answer to a POST: status, Location, body.
    reply: Arc<Mutex<(StatusCode, Option<String>, String)>>,
}

async fn handle(State(f): State<Fake>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    f.seen
        .lock()
        .unwrap()
        .push((method.clone(), uri.path().to_string(), auth));
    if method != Method::POST {
        return StatusCode::NO_CONTENT.into_response();
    }
    let (status, location, body) = f.reply.lock().unwrap().clone();
    let mut r = (status, body).into_response();
    if let Some(l) = location {
        r.headers_mut().insert(header::LOCATION, l.parse().unwrap());
    }
    r
}

/// A server answering everything; its base URL and handle.
async fn server() -> (String, Fake) {
    let fake = Fake {
        seen: Seen::default(),
        reply: Arc::new(Mutex::new((StatusCode::OK, None, String::new()))),
    };
    let app = Router::new().fallback(handle).with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), fake)
}

fn set_reply(f: &Fake, status: StatusCode, location: Option<String>, body: &str) {
    *f.reply.lock().unwrap() = (status, location, body.to_string());
}

#[tokio::test]
async fn a_whip_location_on_another_origin_is_refused_and_gets_no_token() {
    let (base, whip) = server().await;
    // Another origin: another port on the same address is enough.
    let (elsewhere, other) = server().await;
    let signaling = WhipSignaling::new(
        format!("{base}/whip").parse().unwrap(),
        Some(SecretString::from("whip-token")),
        Duration::from_secs(5),
    );
    for location in [
        format!("{elsewhere}/whip/1"),
        "http://evil.example/whip/1".to_string(),
        "//evil.example/whip/1".to_string(),
        format!("{}/whip/1", base.replace("http://", "https://")),
    ] {
        set_reply(
            &whip,
            StatusCode::CREATED,
            Some(location.clone()),
            SDP_ANSWER,
        );
        let e = signaling
            .offer("v=0", OfferKind::Initial)
            .await
            .unwrap_err();
        match &e {
            SignalingError::MalformedAnswer { detail, .. } => {
                assert!(detail.contains("origin"), "{location}: {detail}")
            }
            e => panic!("{location}: {e:?}"),
        }
        assert!(signaling.resource_url().is_none(), "{location}");
        // Nothing to trickle to or delete: the foreign resource is not kept.
        assert!(matches!(
            signaling.trickle(&[]).await,
            Err(SignalingError::NoSession { .. })
        ));
        signaling.hang_up().await.unwrap();
    }
    assert!(
        other.seen.lock().unwrap().is_empty(),
        "the other origin heard nothing"
    );

    // On the endpoint's origin, relative or absolute, it is the resource.
    for location in [
        "/whip/session-1".to_string(),
        format!("{base}/whip/session-2"),
    ] {
        set_reply(
            &whip,
            StatusCode::CREATED,
            Some(location.clone()),
            SDP_ANSWER,
        );
        signaling.offer("v=0", OfferKind::Initial).await.unwrap();
        let resource = signaling.resource_url().unwrap();
        assert!(resource.as_str().starts_with(&base), "{resource}");
        signaling.hang_up().await.unwrap();
    }
    let seen = whip.seen.lock().unwrap().clone();
    let deletes: Vec<_> = seen.iter().filter(|(m, ..)| *m == Method::DELETE).collect();
    assert_eq!(deletes.len(), 2, "{seen:?}");
    for (_, _, auth) in deletes {
        assert_eq!(auth.as_deref(), Some("Bearer whip-token"));
    }
}

fn provisioner(start_url: &str) -> Provisioner {
    Provisioner::new(
        ProvisionMode::Pipecat,
        None,
        AgentSettings {
            start_url: Some(start_url.parse().unwrap()),
            api_key: Some(SecretString::from("pk_agent_key")),
            ..AgentSettings::default()
        },
    )
    .unwrap()
}

async fn start_with(
    reply: Value,
) -> (
    Result<kiosk_gateway::session::provision::Provisioned, ProvisionError>,
    String,
) {
    let (base, agent) = server().await;
    set_reply(&agent, StatusCode::OK, None, &reply.to_string());
    let start = format!("{base}/v1/public/lobby-bot/start");
    (
        provisioner(&start).provision("k1", SessionId::new()).await,
        base,
    )
}

#[tokio::test]
async fn a_session_id_that_would_move_the_offer_url_is_refused() {
    for id in [
        "../../../admin",
        "..",
        "a/b",
        "x?y=1",
        "x#y",
        "%2e%2e",
        "sess id",
        "évian",
        "@evil.example",
        "//evil.example/x",
        "",
        &"a".repeat(129),
    ] {
        let (result, _) = start_with(json!({ "sessionId": id })).await;
        match result {
            Err(ProvisionError::Failed {
                step: Step::StartAgent,
                cause: StepError::Agent(e @ AgentStartError::SessionId(_)),
                ..
            }) => assert!(e.to_string().contains("sessionId"), "{e}"),
            other => panic!("{id:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn plain_session_ids_make_the_offer_url() {
    let uuid = "0193a7b2-4c1d-7e8f-9a0b-1c2d3e4f5a6b";
    let long = "A".repeat(128);
    for id in [uuid, "sess_1-A", long.as_str()] {
        let (result, base) = start_with(json!({ "sessionId": id })).await;
        let p = result.unwrap();
        assert_eq!(
            p.offer_url().unwrap().as_str(),
            format!("{base}/v1/public/lobby-bot/sessions/{id}/api/offer")
        );
        assert_eq!(p.agent_session_id.unwrap().0, id);
        assert!(
            matches!(
                p.media,
                MediaTarget::WebRtc {
                    offer_key: Some(_),
                    ..
                }
            ),
            "same origin as start_url: the key goes"
        );
    }
    // With an explicit offer_url the id is only kept, and only if plain.
    let (result, _) = start_with(json!({
        "offer_url": "http://127.0.0.1:9/offer",
        "sessionId": "../x",
    }))
    .await;
    let p = result.unwrap();
    assert_eq!(p.offer_url().unwrap().as_str(), "http://127.0.0.1:9/offer");
    assert!(p.agent_session_id.is_none());
}
