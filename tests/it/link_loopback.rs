//! The link against the built-in loopback agent over 127.0.0.1: audio both
//! ways, RTVI both ways.

use crate::link_support;

use std::sync::Arc;
use std::time::Duration;

use kiosk_gateway::link::rtvi::{BotMessage, ClientMessage};
use kiosk_gateway::link::signaling::smallwebrtc::SmallWebRtcSignaling;
use kiosk_gateway::link::{Link, LinkEvent, OpusFrame};
use kiosk_gateway::testkit::media::{self, Decoder, Encoder, FRAME_DURATION, FRAME_SAMPLES};
use kiosk_gateway::testkit::{LoopbackAgent, LoopbackAgentConfig};
use link_support::{aligned_correlation, fixture, local_settings};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speech_goes_out_reply_comes_back_and_rtvi_flows_both_ways() {
    let utterance = media::read_wav(&fixture("utterance_48k.wav")).unwrap();
    let reply = media::read_wav(&fixture("reply_48k.wav")).unwrap();
    let agent = LoopbackAgent::start(LoopbackAgentConfig::new(reply.clone()))
        .await
        .unwrap();
    let signaling = Arc::new(SmallWebRtcSignaling::new(
        agent.offer_url(),
        None,
        Some(json!({"kiosk_id": "test"})),
        Duration::from_secs(5),
    ));
    let (link, mut io) = Link::connect(local_settings(), signaling).await.unwrap();

    // bot-ready answers our client-ready
    let ready = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(e) = io.events.recv().await {
            if matches!(e, LinkEvent::Bot(BotMessage::BotReady { .. })) {
                return true;
            }
        }
        false
    })
    .await
    .unwrap();
    assert!(ready);
    link.send(ClientMessage::Custom {
        t: "kiosk-info".into(),
        d: json!({"location": "lobby"}),
    })
    .await
    .unwrap();

    // speak the utterance in real time, then go on streaming silence, as a
    // browser does: the agent ends the turn on the silence it receives
    let mut encoder = Encoder::new().unwrap();
    let mut ticker = tokio::time::interval(FRAME_DURATION);
    for (i, chunk) in utterance.chunks(FRAME_SAMPLES).enumerate() {
        ticker.tick().await;
        io.audio_out
            .send(OpusFrame {
                data: encoder.encode(chunk).unwrap(),
                duration: FRAME_DURATION,
                after_silence: i == 0,
            })
            .await
            .unwrap();
    }

    // the agent's turn: RTVI events and the reply audio
    let mut decoder = Decoder::new().unwrap();
    let mut heard = Vec::new();
    let mut events = Vec::new();
    let silence = [0i16; FRAME_SAMPLES];
    let mut silence_before = 0;
    tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let frame = OpusFrame {
                        data: encoder.encode(&silence).unwrap(),
                        duration: FRAME_DURATION,
                        after_silence: false,
                    };
                    let _ = io.audio_out.try_send(frame);
                }
                Some(p) = io.audio_in.recv() => heard.extend_from_slice(decoder.decode(&p.data).unwrap()),
                Some(e) = io.events.recv() => {
                    let done = e == LinkEvent::Bot(BotMessage::BotStoppedSpeaking);
                    if e == LinkEvent::Bot(BotMessage::BotStartedSpeaking) {
                        // Before its reply the agent streams silence, as
                        // Pipecat's transport does between answers.
                        silence_before = heard.len();
                        heard.clear();
                    }
                    events.push(e);
                    if done { break; }
                }
            }
        }
    })
    .await
    .expect("agent finished its turn");
    // packets still in flight after bot-stopped-speaking, and the silence
    // streamed after them
    let _ = tokio::time::timeout(Duration::from_millis(300), async {
        while let Some(p) = io.audio_in.recv().await {
            heard.extend_from_slice(decoder.decode(&p.data).unwrap());
        }
    })
    .await;
    let silence_ms = silence_before / 48;
    assert!(
        silence_ms >= 500,
        "{silence_ms} ms of silence streamed before the reply"
    );

    let bot: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            LinkEvent::Bot(m) => Some(m.clone()),
            _ => None,
        })
        .collect();
    let transcript = bot
        .iter()
        .find_map(|m| match m {
            BotMessage::UserTranscription {
                text,
                is_final: true,
                ..
            } => Some(text.clone()),
            _ => None,
        })
        .expect("a final user transcription");
    assert!(transcript.starts_with("utterance 1 ("), "{transcript}");
    for expected in [
        BotMessage::UserStartedSpeaking,
        BotMessage::UserStoppedSpeaking,
        BotMessage::BotStartedSpeaking,
        BotMessage::BotStoppedSpeaking,
    ] {
        assert!(bot.contains(&expected), "missing {expected:?} in {bot:?}");
    }

    let record = agent.record();
    let (corr_out, lag_out) = aligned_correlation(&utterance, &record.received, 4800);
    let (corr_back, lag_back) = aligned_correlation(&reply, &heard, 4800);
    println!(
        "kiosk->agent: {} of {} samples, corr {corr_out:.3} at lag {lag_out}; \
         agent->kiosk: {} of {} samples, corr {corr_back:.3} at lag {lag_back}",
        record.received.len(),
        utterance.len(),
        heard.len(),
        reply.len()
    );
    assert!(
        corr_out >= 0.9,
        "agent heard the utterance: corr {corr_out}"
    );
    assert!(corr_back >= 0.9, "kiosk heard the reply: corr {corr_back}");
    assert!(record.client_messages.contains(&ClientMessage::ClientReady));
    assert!(
        record
            .client_messages
            .iter()
            .any(|m| matches!(m, ClientMessage::Custom { t, .. } if t == "kiosk-info"))
    );

    let stats = link.stats().await.unwrap();
    println!("{stats:?}");
    // The utterance, then silence until the reply was over.
    assert!(
        stats.packets_sent > utterance.len().div_ceil(FRAME_SAMPLES) as u64,
        "{} packets sent",
        stats.packets_sent
    );
    assert!(stats.packets_received > 0);
    link.close().await;
}

/// Speech held back while a call came up reaches the link all at once; it
/// must reach the agent spread out (no faster than twice real time), its
/// first packet at once: a shuffled burst is what a short jitter buffer,
/// such as the Pipecat bot's, throws away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_speech_reaches_the_agent_paced_not_in_one_burst() {
    let utterance = media::read_wav(&fixture("utterance_48k.wav")).unwrap();
    let reply = media::read_wav(&fixture("reply_48k.wav")).unwrap();
    let agent = LoopbackAgent::start(LoopbackAgentConfig::new(reply))
        .await
        .unwrap();
    let signaling = Arc::new(SmallWebRtcSignaling::new(
        agent.offer_url(),
        None,
        None,
        Duration::from_secs(5),
    ));
    let (link, mut io) = Link::connect(local_settings(), signaling).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(e) = io.events.recv().await {
            if e == LinkEvent::Ready {
                return;
            }
        }
    })
    .await
    .expect("the data channel opened");

    // One second of speech, handed over at once.
    const HELD: usize = 50;
    let mut encoder = Encoder::new().unwrap();
    let frames: Vec<OpusFrame> = utterance
        .chunks_exact(FRAME_SAMPLES)
        .take(HELD)
        .enumerate()
        .map(|(i, chunk)| OpusFrame {
            data: encoder.encode(chunk).unwrap(),
            duration: FRAME_DURATION,
            after_silence: i == 0,
        })
        .collect();
    let audio_out = io.audio_out.clone();
    let handed = std::time::Instant::now();
    tokio::spawn(async move {
        for frame in frames {
            audio_out.send(frame).await.unwrap();
        }
    });
    let arrived = |count: u64| {
        let agent = &agent;
        async move {
            tokio::time::timeout(Duration::from_secs(5), async {
                while agent.record().packets_received < count {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("{count} packets did not arrive"));
        }
    };
    arrived(1).await;
    let first = handed.elapsed();
    arrived(HELD as u64).await;
    let arrivals = agent.record().packet_arrivals_ms;
    let span = arrivals[HELD - 1] - arrivals[0];
    println!("first packet after {first:?}; {HELD} packets over {span} ms: {arrivals:?}");
    assert!(
        first < Duration::from_millis(250),
        "the first packet arrived after {first:?}"
    );
    // 49 gaps of at least 10 ms; faster than real time (980 ms), so the
    // call catches up with the visitor.
    assert!(
        (450..900).contains(&span),
        "{HELD} held packets arrived over {span} ms"
    );
    link.close().await;
}
