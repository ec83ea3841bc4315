//! A simulated network cut: the loopback agent's relay drops every packet
//! both ways for 3 s. The link must notice, restart the peer connection
//! (SmallWebRTC `restart_pc`) and carry the call on.

use crate::link_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kiosk_gateway::link::rtvi::BotMessage;
use kiosk_gateway::link::signaling::smallwebrtc::SmallWebRtcSignaling;
use kiosk_gateway::link::{Link, LinkEvent, LinkIo, LinkSettings, OpusFrame};
use kiosk_gateway::testkit::media::{self, Encoder, FRAME_DURATION, FRAME_SAMPLES};
use kiosk_gateway::testkit::{LoopbackAgent, LoopbackAgentConfig};
use link_support::{fixture, local_settings};

/// Says `pcm`, then a second of silence: the agent ends a turn on the
/// silence it hears, as a real bot does.
async fn speak(io: &LinkIo, pcm: &[i16]) {
    let mut pcm = pcm.to_vec();
    pcm.resize(pcm.len() + 48_000, 0);
    let mut encoder = Encoder::new().unwrap();
    let mut ticker = tokio::time::interval(FRAME_DURATION);
    for (i, chunk) in pcm.chunks(FRAME_SAMPLES).enumerate() {
        ticker.tick().await;
        let frame = OpusFrame {
            data: encoder.encode(chunk).unwrap(),
            duration: FRAME_DURATION,
            after_silence: i == 0,
        };
        io.audio_out.send(frame).await.unwrap();
    }
}

async fn wait_for(io: &mut LinkIo, want: impl Fn(&LinkEvent) -> bool) -> LinkEvent {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let e = io.events.recv().await.expect("link open");
            println!("event: {e:?}");
            if want(&e) {
                return e;
            }
        }
    })
    .await
    .expect("event in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_cut_ends_in_a_restart_and_the_call_continues() {
    let utterance = media::read_wav(&fixture("utterance_48k.wav")).unwrap();
    let reply = media::read_wav(&fixture("reply_48k.wav")).unwrap();
    let mut config = LoopbackAgentConfig::new(reply);
    config.simulate_network = true;
    let agent = LoopbackAgent::start(config).await.unwrap();
    let signaling = Arc::new(SmallWebRtcSignaling::new(
        agent.offer_url(),
        None,
        None,
        Duration::from_secs(5),
    ));
    let settings = LinkSettings {
        connect_timeout: Duration::from_secs(2),
        reconnect_timeout: Duration::from_secs(15),
        ..local_settings()
    };
    let (link, mut io) = Link::connect(settings, signaling).await.unwrap();
    wait_for(&mut io, |e| {
        matches!(e, LinkEvent::Bot(BotMessage::BotReady { .. }))
    })
    .await;

    // the call works before the cut
    speak(&io, &utterance).await;
    wait_for(&mut io, |e| {
        matches!(e, LinkEvent::Bot(BotMessage::BotStoppedSpeaking))
    })
    .await;

    let cut_at = Instant::now();
    agent.cut_network(Duration::from_secs(3));
    wait_for(&mut io, |e| matches!(e, LinkEvent::Reconnecting { .. })).await;
    let detected = cut_at.elapsed();
    let LinkEvent::Reconnected { after } =
        wait_for(&mut io, |e| matches!(e, LinkEvent::Reconnected { .. })).await
    else {
        unreachable!()
    };
    let restored = cut_at.elapsed();
    println!(
        "cut detected after {detected:?}; restart took {after:?}; call restored {restored:?} after the cut began"
    );
    assert!(
        restored >= Duration::from_secs(3),
        "cannot recover while the network is cut"
    );
    let record = agent.record();
    assert!(record.restarts >= 1, "the agent saw restart_pc offers");

    // and it carries on: a new utterance gets a new turn
    wait_for(&mut io, |e| {
        matches!(e, LinkEvent::Bot(BotMessage::BotReady { .. }))
    })
    .await;
    speak(&io, &utterance).await;
    let t = wait_for(&mut io, |e| {
        matches!(e, LinkEvent::Bot(BotMessage::UserTranscription { .. }))
    })
    .await;
    println!("after restart: {t:?}");
    let stats = link.stats().await.unwrap();
    assert_eq!(stats.restarts, 1);
    assert!(stats.last_recovery_ms.is_some());
    link.close().await;
}
