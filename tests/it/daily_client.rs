//! DailyClient against the in-process fake Daily API: documented shapes,
//! retries with backoff, typed errors, and secrecy of the API key.

use crate::daily_support;

use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use daily_support::{API_KEY, FakeDaily, Fault};
use kiosk_gateway::daily::cli::{RoomCommand, run_room_command};
use kiosk_gateway::daily::{
    DailyClient, DailyError, DailySettings, MeetingTokenProperties, RoomDeletion, RoomName,
    unix_now,
};
use secrecy::{ExposeSecret, SecretString};

fn settings(fake: &FakeDaily) -> DailySettings {
    DailySettings {
        base_url: fake.base_url(),
        api_key: SecretString::from(API_KEY),
        request_timeout: Duration::from_millis(400),
        max_retries: 3,
        retry_min_delay: Duration::from_millis(10),
        retry_max_delay: Duration::from_secs(2),
        ..DailySettings::default()
    }
}

async fn client(fake: &FakeDaily) -> DailyClient {
    DailyClient::new(&settings(fake)).unwrap()
}

async fn create(
    client: &DailyClient,
    kiosk: &str,
) -> Result<kiosk_gateway::daily::Room, DailyError> {
    let req = client
        .room_settings()
        .create_request(RoomName::for_kiosk(kiosk), unix_now());
    client.create_room(&req).await
}

#[tokio::test]
async fn room_lifecycle_follows_documented_shapes() {
    let fake = FakeDaily::start().await;
    let client = client(&fake).await;

    let room = create(&client, "lobby").await.unwrap();
    assert!(room.name.as_str().starts_with("kiosk-lobby-"));
    assert_eq!(room.url, format!("https://example.daily.co/{}", room.name));
    let exp = room.config.exp.unwrap();
    assert!((exp - unix_now() - 1800).abs() <= 2, "exp = now + 30 min");
    assert_eq!(room.config.max_participants, Some(3));

    let fetched = client.get_room(&room.name).await.unwrap();
    assert_eq!(fetched, room);

    let presence = client.presence(&room.name).await.unwrap();
    assert_eq!(presence.total_count, 1);
    assert_eq!(presence.data[0].user_id.as_deref(), Some("bot"));

    let token = client
        .create_meeting_token(&MeetingTokenProperties {
            room_name: room.name.clone(),
            exp,
            user_name: "kiosk".into(),
            user_id: "kiosk-lobby".into(),
            is_owner: false,
        })
        .await
        .unwrap();
    assert_eq!(token.token.expose_secret(), "token-1-kiosk-lobby");

    let listed = client.list_rooms().await.unwrap();
    assert_eq!(listed.len(), 1);

    assert_eq!(
        client.delete_room(&room.name).await.unwrap(),
        RoomDeletion::Deleted
    );
    assert_eq!(
        client.delete_room(&room.name).await.unwrap(),
        RoomDeletion::AlreadyGone
    );
    let err = client.get_room(&room.name).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::NOT_FOUND));
    assert_eq!(err.daily_error_type(), Some("not-found"));
}

#[tokio::test]
async fn rate_limit_honours_retry_after() {
    let fake = FakeDaily::start().await;
    fake.inject(
        "POST /v1/rooms",
        [Fault::RateLimited {
            retry_after_secs: 1,
        }],
    );
    let client = client(&fake).await;
    let started = Instant::now();
    create(&client, "k").await.unwrap();
    // Our own backoff starts at 10 ms; only Retry-After explains a 1 s wait.
    assert!(started.elapsed() >= Duration::from_millis(950));
    assert_eq!(fake.count(Method::POST, "/v1/rooms"), 2);
}

#[tokio::test]
async fn server_errors_are_retried_until_success() {
    let fake = FakeDaily::start().await;
    fake.inject("GET /v1/rooms", [Fault::ServerError, Fault::ServerError]);
    let client = client(&fake).await;
    client.list_rooms().await.unwrap();
    assert_eq!(fake.count(Method::GET, "/v1/rooms"), 3);
}

#[tokio::test]
async fn persistent_server_errors_give_up_with_daily_fields() {
    let fake = FakeDaily::start().await;
    fake.inject("GET /v1/rooms", std::iter::repeat_n(Fault::ServerError, 10));
    let client = client(&fake).await;
    let err = client.list_rooms().await.unwrap_err();
    match &err {
        DailyError::Api {
            status,
            error,
            info,
            ..
        } => {
            assert_eq!(*status, StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(error, "server-error");
            assert_eq!(info, "unexpected error");
        }
        other => panic!("unexpected error {other:?}"),
    }
    // first attempt + max_retries
    assert_eq!(fake.count(Method::GET, "/v1/rooms"), 4);
}

#[tokio::test]
async fn slow_responses_time_out_and_are_retried() {
    let fake = FakeDaily::start().await;
    fake.inject(
        "GET /v1/rooms",
        std::iter::repeat_n(Fault::Slow(Duration::from_secs(3)), 10),
    );
    let client = client(&fake).await;
    let err = client.list_rooms().await.unwrap_err();
    assert!(matches!(err, DailyError::Timeout { .. }), "{err:?}");
    assert_eq!(fake.count(Method::GET, "/v1/rooms"), 4);
}

#[tokio::test]
async fn one_slow_response_then_success() {
    let fake = FakeDaily::start().await;
    fake.inject("GET /v1/rooms", [Fault::Slow(Duration::from_secs(3))]);
    let client = client(&fake).await;
    client.list_rooms().await.unwrap();
    assert_eq!(fake.count(Method::GET, "/v1/rooms"), 2);
}

#[tokio::test]
async fn malformed_json_is_a_typed_error_and_not_retried() {
    let fake = FakeDaily::start().await;
    fake.inject("POST /v1/rooms", [Fault::MalformedJson]);
    let client = client(&fake).await;
    let err = create(&client, "k").await.unwrap_err();
    assert!(matches!(err, DailyError::Malformed { .. }), "{err:?}");
    assert_eq!(fake.count(Method::POST, "/v1/rooms"), 1);
}

#[tokio::test]
async fn bad_key_is_not_retried_and_never_printed() {
    let fake = FakeDaily::start().await;
    let mut s = settings(&fake);
    s.api_key = SecretString::from("wrong-secret-key-123");
    let client = DailyClient::new(&s).unwrap();
    let err = client.list_rooms().await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
    assert_eq!(err.daily_error_type(), Some("authentication-error"));
    assert_eq!(fake.count(Method::GET, "/v1/rooms"), 1);
    for text in [
        err.to_string(),
        format!("{err:?}"),
        format!("{s:?}"),
        format!("{client:?}"),
    ] {
        assert!(!text.contains("wrong-secret-key-123"), "{text}");
    }
}

#[tokio::test]
async fn room_command_prints_json() {
    let fake = FakeDaily::start().await;
    let client = client(&fake).await;
    let out = run_room_command(
        &client,
        RoomCommand::Create {
            name: Some(RoomName::parse("tech-test").unwrap()),
            kiosk_id: "unused".into(),
        },
        true,
    )
    .await
    .unwrap();
    let room: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(room["name"], "tech-test");

    let out = run_room_command(&client, RoomCommand::List, true)
        .await
        .unwrap();
    let rooms: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rooms.len(), 1);

    let name = RoomName::parse("tech-test").unwrap();
    let out = run_room_command(&client, RoomCommand::Delete { name }, true)
        .await
        .unwrap();
    let deleted: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(deleted["result"], "deleted");
    assert!(fake.room_names().is_empty());
}
