//! Signaling dialects: WHIP against the loopback agent, error handling of
//! both dialects against misbehaving servers, and the agent hanging up.

use crate::link_support;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::post;
use kiosk_gateway::link::rtvi::BotMessage;
use kiosk_gateway::link::signaling::smallwebrtc::SmallWebRtcSignaling;
use kiosk_gateway::link::signaling::whip::WhipSignaling;
use kiosk_gateway::link::signaling::{OfferKind, Signaling, SignalingError};
use kiosk_gateway::link::{Link, LinkEvent, OpusFrame};
use kiosk_gateway::testkit::media::{self, Encoder, FRAME_DURATION, FRAME_SAMPLES};
use kiosk_gateway::testkit::{LoopbackAgent, LoopbackAgentConfig};
use link_support::{fixture, local_settings};
use secrecy::SecretString;

const TIMEOUT: Duration = Duration::from_secs(5);

async fn agent() -> LoopbackAgent {
    let reply = media::read_wav(&fixture("reply_48k.wav")).unwrap();
    LoopbackAgent::start(LoopbackAgentConfig::new(reply))
        .await
        .unwrap()
}

async fn next_matching(
    events: &mut tokio::sync::mpsc::Receiver<LinkEvent>,
    want: impl Fn(&LinkEvent) -> bool,
) -> LinkEvent {
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let e = events.recv().await.expect("link still open");
            if want(&e) {
                return e;
            }
        }
    })
    .await
    .expect("event in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_call_carries_audio_and_deletes_the_session_on_hang_up() {
    let agent = agent().await;
    let signaling = Arc::new(WhipSignaling::new(
        agent.whip_url(),
        Some(SecretString::from("whip-token")),
        TIMEOUT,
    ));
    let (link, mut io) = Link::connect(local_settings(), signaling.clone())
        .await
        .unwrap();
    let resource = signaling.resource_url().unwrap();
    assert!(resource.path().starts_with("/whip/loopback-"), "{resource}");
    next_matching(&mut io.events, |e| {
        matches!(e, LinkEvent::Bot(BotMessage::BotReady { .. }))
    })
    .await;

    // The utterance, then a second of silence: the agent ends the turn on
    // the silence it hears, as a real bot does.
    let mut utterance = media::read_wav(&fixture("utterance_48k.wav")).unwrap();
    utterance.resize(utterance.len() + 48_000, 0);
    let mut encoder = Encoder::new().unwrap();
    let mut ticker = tokio::time::interval(FRAME_DURATION);
    for (i, chunk) in utterance.chunks(FRAME_SAMPLES).enumerate() {
        ticker.tick().await;
        let data = encoder.encode(chunk).unwrap();
        io.audio_out
            .send(OpusFrame {
                data,
                duration: FRAME_DURATION,
                after_silence: i == 0,
            })
            .await
            .unwrap();
    }
    let t = next_matching(&mut io.events, |e| {
        matches!(e, LinkEvent::Bot(BotMessage::UserTranscription { .. }))
    })
    .await;
    println!("{t:?}");
    link.close().await;
    assert_eq!(agent.record().whip_deleted, 1, "DELETE on hang-up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_leaving_ends_the_link() {
    let agent = agent().await;
    let signaling = Arc::new(SmallWebRtcSignaling::new(
        agent.offer_url(),
        None,
        None,
        TIMEOUT,
    ));
    let (link, mut io) = Link::connect(local_settings(), signaling).await.unwrap();
    next_matching(&mut io.events, |e| {
        matches!(e, LinkEvent::Bot(BotMessage::BotReady { .. }))
    })
    .await;
    agent.hang_up_all().await;
    next_matching(&mut io.events, |e| *e == LinkEvent::PeerLeft).await;
    link.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_requested_renegotiation_keeps_the_call() {
    let agent = agent().await;
    let signaling = Arc::new(SmallWebRtcSignaling::new(
        agent.offer_url(),
        None,
        None,
        TIMEOUT,
    ));
    let (link, mut io) = Link::connect(local_settings(), signaling.clone())
        .await
        .unwrap();
    let pc_id_before = signaling.pc_id().unwrap();
    next_matching(&mut io.events, |e| {
        matches!(e, LinkEvent::Bot(BotMessage::BotReady { .. }))
    })
    .await;
    agent.request_renegotiation().await;
    // the second offer is answered on the same connection
    tokio::time::timeout(Duration::from_secs(5), async {
        while agent.record().offers < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("a renegotiation offer");
    let record = agent.record();
    assert_eq!(record.restarts, 0, "renegotiation is not a restart");
    assert_eq!(signaling.pc_id().unwrap(), pc_id_before);
    // still alive: a stats round trip and no Reconnecting event
    link.stats().await.unwrap();
    assert!(io.events.try_recv().is_err());
    link.close().await;
}

/// A server that answers every POST with `reply`.
async fn fake(
    reply: (
        StatusCode,
        Vec<(header::HeaderName, &'static str)>,
        &'static str,
    ),
) -> url::Url {
    let app = Router::new().route(
        "/offer",
        post(move || {
            let (status, headers, body) = reply.clone();
            async move {
                let mut r = (status, body).into_response();
                for (k, v) in headers {
                    r.headers_mut().insert(k, v.parse().unwrap());
                }
                r
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/offer").parse().unwrap()
}

const SDP_ANSWER: &str =
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n";

#[tokio::test]
async fn whip_errors_are_clear() {
    let whip = |url| WhipSignaling::new(url, None, TIMEOUT);

    let unauthorized = whip(fake((StatusCode::UNAUTHORIZED, vec![], "bad token")).await);
    match unauthorized
        .offer("v=0", OfferKind::Initial)
        .await
        .unwrap_err()
    {
        e @ SignalingError::Status {
            status: StatusCode::UNAUTHORIZED,
            ..
        } => {
            assert!(!e.is_transient());
            assert!(e.to_string().contains("bad token"), "{e}");
        }
        e => panic!("{e:?}"),
    }

    let busy = whip(fake((StatusCode::SERVICE_UNAVAILABLE, vec![], "")).await);
    assert!(
        busy.offer("v=0", OfferKind::Initial)
            .await
            .unwrap_err()
            .is_transient()
    );

    let not_created = whip(fake((StatusCode::OK, vec![], SDP_ANSWER)).await);
    let e = not_created
        .offer("v=0", OfferKind::Initial)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("201"), "{e}");

    let no_location = whip(fake((StatusCode::CREATED, vec![], SDP_ANSWER)).await);
    let e = no_location
        .offer("v=0", OfferKind::Initial)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("Location"), "{e}");

    let garbage = whip(
        fake((
            StatusCode::CREATED,
            vec![(header::LOCATION, "/whip/1")],
            "<html>oops</html>",
        ))
        .await,
    );
    let e = garbage.offer("v=0", OfferKind::Initial).await.unwrap_err();
    assert!(matches!(e, SignalingError::MalformedAnswer { .. }), "{e}");

    // trickle before any session is a clear error, not a panic
    let e = garbage.trickle(&[]).await.unwrap_err();
    assert!(matches!(e, SignalingError::NoSession { .. }), "{e}");
}

#[tokio::test]
async fn smallwebrtc_errors_are_clear() {
    let small = |url| SmallWebRtcSignaling::new(url, None, None, TIMEOUT);

    let failing = small(fake((StatusCode::INTERNAL_SERVER_ERROR, vec![], "boom")).await);
    let e = failing.offer("v=0", OfferKind::Initial).await.unwrap_err();
    assert!(e.is_transient() && e.to_string().contains("500"), "{e}");

    let not_json = small(fake((StatusCode::OK, vec![], "{\"sdp\": ")).await);
    let e = not_json.offer("v=0", OfferKind::Initial).await.unwrap_err();
    assert!(matches!(e, SignalingError::MalformedAnswer { .. }), "{e}");

    let wrong_type = small(
        fake((
            StatusCode::OK,
            vec![(header::CONTENT_TYPE, "application/json")],
            r#"{"sdp":"v=0\r\nm=audio 9 x 111\r\n","type":"offer","pc_id":"x"}"#,
        ))
        .await,
    );
    let e = wrong_type
        .offer("v=0", OfferKind::Initial)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("expected \"answer\""), "{e}");

    let e = wrong_type.trickle(&[]).await.unwrap_err();
    assert!(matches!(e, SignalingError::NoSession { .. }), "{e}");
}
