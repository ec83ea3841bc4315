//! Provisioning (daily / pipecat / static) against the fake Daily API and a
//! fake agent start endpoint: the happy paths, and no room left behind when
//! a later step fails.

use crate::daily_support;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use daily_support::{API_KEY, FakeDaily, Fault};
use kiosk_gateway::agent_settings::{AgentSettings, ProvisionMode};
use kiosk_gateway::daily::{DailyClient, DailySettings};
use kiosk_gateway::session::provision::{ProvisionError, Provisioner, Step};
use kiosk_gateway::store::SessionId;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

fn daily(fake: &FakeDaily) -> DailyClient {
    DailyClient::new(&DailySettings {
        base_url: fake.base_url(),
        api_key: SecretString::from(API_KEY),
        request_timeout: Duration::from_millis(400),
        max_retries: 2,
        retry_min_delay: Duration::from_millis(10),
        retry_max_delay: Duration::from_millis(50),
        ..DailySettings::default()
    })
    .unwrap()
}

fn agent(fake: &FakeDaily) -> AgentSettings {
    AgentSettings {
        start_url: Some(fake.agent_start_url()),
        api_key: Some(SecretString::from("agent-public-key")),
        body: json!({"greeting": "welcome"}),
        ..AgentSettings::default()
    }
}

#[tokio::test]
async fn daily_mode_creates_room_tokens_and_starts_the_bot() {
    let fake = FakeDaily::start().await;
    let p = Provisioner::new(ProvisionMode::Daily, Some(daily(&fake)), agent(&fake)).unwrap();
    let session = p.provision("lobby", SessionId::new()).await.unwrap();

    let room = session.room.as_ref().unwrap();
    assert!(room.name.as_str().starts_with("kiosk-lobby-"));
    assert_eq!(fake.room_names(), vec![room.name.to_string()]);
    assert_eq!(
        room.kiosk_token.as_ref().unwrap().expose_secret(),
        "token-1-kiosk-lobby"
    );
    assert_eq!(
        session.offer_url().unwrap().as_str(),
        format!("http://{}/agent/sessions/sess-1/api/offer", fake.addr)
    );
    assert_eq!(session.agent_session_id.unwrap().0, "sess-1");

    let state = fake.state.lock().unwrap();
    assert_eq!(state.tokens_issued.len(), 2);
    assert_eq!(state.tokens_issued[0]["is_owner"], false);
    assert_eq!(state.tokens_issued[1]["is_owner"], true);
    let (headers, body) = &state.agent_start_bodies[0];
    assert_eq!(headers["authorization"], "Bearer agent-public-key");
    assert_eq!(body["room_url"], json!(room.url));
    assert_eq!(
        body["token"], "token-2-agent",
        "the bot gets the bot's token"
    );
    assert_eq!(body["kiosk_id"], "lobby");
    assert_eq!(body["greeting"], "welcome");
}

#[tokio::test]
async fn release_deletes_the_room() {
    let fake = FakeDaily::start().await;
    let p = Provisioner::new(ProvisionMode::Daily, Some(daily(&fake)), agent(&fake)).unwrap();
    let s = p.provision("k1", SessionId::new()).await.unwrap();
    assert_eq!(fake.room_names().len(), 1);
    p.release(&s).await.unwrap();
    assert!(fake.room_names().is_empty());
}

#[tokio::test]
async fn agent_start_failure_deletes_the_room() {
    let fake = FakeDaily::start().await;
    fake.state.lock().unwrap().agent_start_reply = Some((
        StatusCode::SERVICE_UNAVAILABLE,
        json!({"error": "no capacity"}),
    ));
    let p = Provisioner::new(ProvisionMode::Daily, Some(daily(&fake)), agent(&fake)).unwrap();
    let err = p.provision("k1", SessionId::new()).await.unwrap_err();
    println!("{err}");
    match &err {
        ProvisionError::Failed {
            step, leaked_room, ..
        } => {
            assert_eq!(*step, Step::StartAgent);
            assert!(leaked_room.is_none());
        }
        other => panic!("{other:?}"),
    }
    // The message names the step; the agent's answer is its cause.
    let text = format!("{:#}", anyhow::Error::new(err));
    assert!(text.contains("start agent session"), "{text}");
    assert!(text.contains("503"), "{text}");
    assert!(fake.room_names().is_empty(), "no leaked room");
    assert_eq!(fake.count(Method::POST, "/v1/rooms"), 1);
    let deletes = fake
        .state
        .lock()
        .unwrap()
        .log
        .iter()
        .filter(|l| l.method == Method::DELETE && l.path.starts_with("/v1/rooms/kiosk-k1-"))
        .count();
    assert_eq!(deletes, 1);
}

#[tokio::test]
async fn malformed_start_reply_deletes_the_room() {
    let fake = FakeDaily::start().await;
    fake.state.lock().unwrap().agent_start_reply = Some((StatusCode::OK, json!({"status": "ok"})));
    let p = Provisioner::new(ProvisionMode::Daily, Some(daily(&fake)), agent(&fake)).unwrap();
    let err = p.provision("k1", SessionId::new()).await.unwrap_err();
    assert!(
        matches!(
            err,
            ProvisionError::Failed {
                step: Step::StartAgent,
                ..
            }
        ),
        "{err}"
    );
    assert!(fake.room_names().is_empty(), "no leaked room");
}

#[tokio::test]
async fn token_failure_deletes_the_room() {
    let fake = FakeDaily::start().await;
    // first token succeeds, the bot's fails on every retry
    fake.inject("POST /v1/meeting-tokens", [Fault::Slow(Duration::ZERO)]);
    fake.inject(
        "POST /v1/meeting-tokens",
        std::iter::repeat_n(Fault::ServerError, 5),
    );
    let p = Provisioner::new(ProvisionMode::Daily, Some(daily(&fake)), agent(&fake)).unwrap();
    let err = p.provision("k1", SessionId::new()).await.unwrap_err();
    assert!(
        matches!(
            err,
            ProvisionError::Failed {
                step: Step::BotToken,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        fake.count(Method::POST, "/v1/meeting-tokens"),
        4,
        "1 ok + 3 failed attempts"
    );
    assert!(fake.room_names().is_empty(), "no leaked room");
    assert!(fake.state.lock().unwrap().agent_start_bodies.is_empty());
}

#[tokio::test]
async fn a_room_that_cannot_be_deleted_is_reported() {
    let fake = FakeDaily::start().await;
    fake.state.lock().unwrap().agent_start_reply =
        Some((StatusCode::INTERNAL_SERVER_ERROR, json!({})));
    fake.inject(
        "DELETE /v1/rooms/",
        std::iter::repeat_n(Fault::ServerError, 5),
    );
    let p = Provisioner::new(ProvisionMode::Daily, Some(daily(&fake)), agent(&fake)).unwrap();
    let err = p.provision("k1", SessionId::new()).await.unwrap_err();
    let ProvisionError::Failed { leaked_room, .. } = &err else {
        panic!("{err:?}")
    };
    let leaked = leaked_room.clone().expect("the leak is reported");
    assert_eq!(fake.room_names(), vec![leaked.to_string()]);
    assert!(err.to_string().contains("could not be deleted"), "{err}");
}

#[tokio::test]
async fn room_creation_failure_is_a_typed_error() {
    let fake = FakeDaily::start().await;
    fake.inject("POST /v1/rooms", std::iter::repeat_n(Fault::ServerError, 5));
    let p = Provisioner::new(ProvisionMode::Daily, Some(daily(&fake)), agent(&fake)).unwrap();
    let err = p.provision("k1", SessionId::new()).await.unwrap_err();
    assert!(
        matches!(
            err,
            ProvisionError::Failed {
                step: Step::CreateRoom,
                ..
            }
        ),
        "{err}"
    );
    assert!(fake.state.lock().unwrap().agent_start_bodies.is_empty());
}

#[tokio::test]
async fn pipecat_mode_posts_the_body_and_derives_the_offer_url() {
    let fake = FakeDaily::start().await;
    let p = Provisioner::new(ProvisionMode::Pipecat, None, agent(&fake)).unwrap();
    let s = p.provision("k1", SessionId::new()).await.unwrap();
    assert!(s.room.is_none());
    assert!(
        s.offer_url()
            .unwrap()
            .as_str()
            .ends_with("/agent/sessions/sess-1/api/offer")
    );
    let state = fake.state.lock().unwrap();
    assert_eq!(
        state.agent_start_bodies[0].1,
        json!({"greeting": "welcome"})
    );
    assert!(state.rooms.is_empty());
}

#[tokio::test]
async fn start_reply_may_name_the_offer_url() {
    let fake = FakeDaily::start().await;
    fake.state.lock().unwrap().agent_start_reply = Some((
        StatusCode::OK,
        json!({"offer_url": "http://127.0.0.1:9/custom/offer"}),
    ));
    let p = Provisioner::new(ProvisionMode::Pipecat, None, agent(&fake)).unwrap();
    let s = p.provision("k1", SessionId::new()).await.unwrap();
    assert_eq!(
        s.offer_url().unwrap().as_str(),
        "http://127.0.0.1:9/custom/offer"
    );
}

#[tokio::test]
async fn static_mode_needs_no_network_and_checks_config() {
    let url: url::Url = "http://127.0.0.1:9/api/offer".parse().unwrap();
    let p = Provisioner::new(
        ProvisionMode::Static,
        None,
        AgentSettings {
            offer_url: Some(url.clone()),
            ..AgentSettings::default()
        },
    )
    .unwrap();
    assert_eq!(
        p.provision("k", SessionId::new())
            .await
            .unwrap()
            .offer_url(),
        Some(&url)
    );
    assert!(matches!(
        Provisioner::new(ProvisionMode::Static, None, AgentSettings::default()),
        Err(ProvisionError::NotConfigured("agent.offer_url"))
    ));
    assert!(matches!(
        Provisioner::new(ProvisionMode::Daily, None, AgentSettings::default()),
        Err(ProvisionError::NotConfigured(_))
    ));
}

#[tokio::test]
async fn a_provisioning_cut_short_leaves_its_room_to_release_abandoned() {
    let fake = FakeDaily::start().await;
    fake.inject(
        "POST /v1/meeting-tokens",
        [Fault::Slow(Duration::from_secs(5))],
    );
    let p = Provisioner::new(ProvisionMode::Daily, Some(daily(&fake)), agent(&fake)).unwrap();
    // Dropped while the kiosk's token is being made: the room exists.
    let cut = tokio::time::timeout(
        Duration::from_millis(200),
        p.provision("k1", SessionId::new()),
    )
    .await;
    assert!(cut.is_err());
    assert_eq!(fake.room_names().len(), 1);
    p.release_abandoned().await;
    let (created, deleted) = fake.room_history();
    assert_eq!((created.len(), deleted), (1, created));
}
