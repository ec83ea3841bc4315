//! A lossy, jittery network between the kiosk and the loopback agent (the
//! agent's relay, see `testkit::network`): the link must report the loss
//! the agent suffers as the relay counted it, and `call` must still get
//! the agent's replies through to its speaker.

use crate::link_support;

use std::sync::Arc;
use std::time::Duration;

use kiosk_gateway::link::signaling::smallwebrtc::SmallWebRtcSignaling;
use kiosk_gateway::link::{Link, LinkIo, OpusFrame};
use kiosk_gateway::testkit::media::{Encoder, FRAME_DURATION, FRAME_SAMPLES};
use kiosk_gateway::testkit::network::NetworkProfile;
use kiosk_gateway::testkit::{LoopbackAgent, LoopbackAgentConfig};
use link_support::{fixture, local_settings};
use serde_json::Value;

/// Sends `seconds` of quiet noise, one 20 ms frame at a time, as the kiosk
/// does between turns (the stream never stops).
async fn stream_for(io: &LinkIo, seconds: u64) {
    let mut encoder = Encoder::new().unwrap();
    let mut ticker = tokio::time::interval(FRAME_DURATION);
    let frames = seconds * 1000 / FRAME_DURATION.as_millis() as u64;
    let mut noise = 1u32;
    for i in 0..frames {
        ticker.tick().await;
        let pcm: Vec<i16> = (0..FRAME_SAMPLES)
            .map(|_| {
                noise = noise.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                ((noise >> 16) as i16) / 256
            })
            .collect();
        let frame = OpusFrame {
            data: encoder.encode(&pcm).unwrap(),
            duration: FRAME_DURATION,
            after_silence: i == 0,
        };
        io.audio_out.send(frame).await.unwrap();
    }
}

async fn lossy_agent(uplink: NetworkProfile, downlink: NetworkProfile) -> LoopbackAgent {
    let reply = kiosk_gateway::testkit::media::read_wav(&fixture("reply_48k.wav")).unwrap();
    let mut config = LoopbackAgentConfig::new(reply);
    config.simulate_network = true;
    config.uplink = uplink;
    config.downlink = downlink;
    LoopbackAgent::start(config).await.unwrap()
}

async fn connect(agent: &LoopbackAgent) -> (Link, LinkIo) {
    let signaling = Arc::new(SmallWebRtcSignaling::new(
        agent.offer_url(),
        None,
        None,
        Duration::from_secs(5),
    ));
    Link::connect(local_settings(), signaling).await.unwrap()
}

/// What lobby Wi-Fi does: loss at `loss`, 40 ± 20 ms delay.
fn wifi(loss: f64, seed: u64) -> NetworkProfile {
    NetworkProfile {
        loss,
        delay: Duration::from_millis(40),
        jitter: Duration::from_millis(20),
        seed,
        ..NetworkProfile::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reports_the_loss_it_suffers_and_copies_make_it_up() {
    let agent = lossy_agent(wifi(0.05, 17), wifi(0.0, 18)).await;
    let (link, io) = connect(&agent).await;
    stream_for(&io, 15).await;
    // The agent reports every second or so: let the last report come in.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let stats = link.stats().await.unwrap();
    let relay = agent.network_counts();
    let reported = stats.packets_lost_remote as f64 / stats.packets_sent as f64;
    println!(
        "relay lost {} of {} RTP packets to the agent ({:.2}%), {} of {} distinct ones never \
         got through ({:.2}%, {} copies sent); the agent reported {} of {} ({:.2}%), \
         recent {:?}, RTT {:?} ms, its jitter {:?} ms, {} reports",
        relay.to_agent.lost,
        relay.to_agent.offered,
        100.0 * relay.to_agent.loss_rate(),
        relay.to_agent.missing,
        relay.to_agent.distinct,
        100.0 * relay.to_agent.missing_rate(),
        stats.copies_sent,
        stats.packets_lost_remote,
        stats.packets_sent,
        100.0 * reported,
        stats.loss_out_recent,
        stats.rtt_ms,
        stats.remote_jitter_ms,
        stats.remote_reports,
    );
    assert!(stats.remote_reports >= 5, "the agent's reports are read");
    assert!(
        (reported - relay.to_agent.missing_rate()).abs() < 0.02,
        "reported {reported}, relay {}",
        relay.to_agent.missing_rate()
    );
    // Once the agent reported loss, every packet went out twice, and the
    // agent missed far fewer than the network lost.
    assert!(stats.copies_sent > 250, "{} copies", stats.copies_sent);
    assert!(
        relay.to_agent.missing_rate() < relay.to_agent.loss_rate() / 2.0,
        "{relay:?}"
    );
    let rtt = stats.rtt_ms.expect("RTT from the agent's reports");
    // 40 ms each way on the way out only (the way back is jittery too).
    assert!((20.0..300.0).contains(&rtt), "RTT {rtt} ms");
    link.close().await;
}

/// One `call --json` through `agent` for `seconds`, saying the link
/// fixture utterance every 5.2 s; returns the summary, the agent's
/// replies, and what reached the speaker (48 kHz, the input's rate).
async fn call_through(agent: &LoopbackAgent, name: &str, seconds: u32) -> (Value, usize, Vec<i16>) {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join(format!("{name}.wav"));
    let (summary, _) = link_support::call_json(vec![
        "--offer-url".into(),
        agent.offer_url().to_string(),
        "--input".into(),
        format!("wav:{}", fixture("utterance_48k.wav").display()),
        "--output".into(),
        format!("wav:{}", output.display()),
        "--seconds".into(),
        seconds.to_string(),
        "--pause-ms".into(),
        "2500".into(),
        "--bind".into(),
        "127.0.0.1:0".into(),
        "--no-stun".into(),
        "--json".into(),
    ])
    .await;
    let speaker: Vec<i16> = hound::WavReader::open(&output)
        .unwrap()
        .into_samples()
        .map(Result::unwrap)
        .collect();
    (summary, agent.record().utterances.len(), speaker)
}

/// Per reply: what reached the speaker of the agent's replies (after
/// concealment) against a clean network, and how like the reply the
/// best-matching stretch of it is.
struct Delivery {
    share: f64,
    correlation: f64,
}

fn delivery(reply: &[i16], clean: (&Value, usize), lossy: (&Value, usize, &[i16])) -> Delivery {
    let per_reply = |summary: &Value, replies: usize| {
        summary["audio_received_ms"].as_u64().unwrap() as f64 / replies.max(1) as f64
    };
    let share = per_reply(lossy.0, lossy.1) / per_reply(clean.0, clean.1);
    let max_lag = lossy.2.len().saturating_sub(reply.len());
    let (correlation, _) = link_support::aligned_correlation(reply, lossy.2, max_lag);
    Delivery { share, correlation }
}

/// Both ways at `loss`, `delay` ± `jitter`.
fn lossy(loss: f64, delay_ms: u64, jitter_ms: u64, seed: u64) -> (NetworkProfile, NetworkProfile) {
    let profile = |seed| NetworkProfile {
        loss,
        delay: Duration::from_millis(delay_ms),
        jitter: Duration::from_millis(jitter_ms),
        seed,
        ..NetworkProfile::default()
    };
    (profile(seed), profile(seed + 10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_delivers_the_agents_replies_through_loss_and_jitter() {
    const SECONDS: u32 = 16;
    let reply = kiosk_gateway::testkit::media::read_wav(&fixture("reply_48k.wav")).unwrap();
    let clean_agent = lossy_agent(NetworkProfile::default(), NetworkProfile::default()).await;
    let (clean, clean_replies, clean_speaker) = call_through(&clean_agent, "clean", SECONDS).await;
    let clean_corr = link_support::aligned_correlation(
        &reply,
        &clean_speaker,
        clean_speaker.len().saturating_sub(reply.len()),
    )
    .0;
    println!(
        "clean: {clean_replies} replies, {} ms played, correlation {clean_corr:.3}, playout {}",
        clean["audio_received_ms"], clean["playout"]
    );
    assert!(clean_replies >= 2, "the agent answered on a clean network");
    for (loss, delay, jitter, min_share) in [(0.05, 40, 20, 0.95), (0.15, 60, 40, 0.85)] {
        let (up, down) = lossy(loss, delay, jitter, 5);
        let agent = lossy_agent(up, down).await;
        let (summary, replies, speaker) =
            call_through(&agent, &format!("loss{loss}"), SECONDS).await;
        let relay = agent.network_counts();
        let d = delivery(
            &reply,
            (&clean, clean_replies),
            (&summary, replies, &speaker),
        );
        let stats = &summary["stats"];
        let reported = stats["packets_lost_remote"].as_f64().unwrap()
            / stats["packets_sent"].as_f64().unwrap();
        println!(
            "{:.0}% loss, {delay} ± {jitter} ms: {replies} replies, {:.1}% of the reply time delivered, \
             best correlation {:.3}; relay lost {:.1}% out ({:.1}% of packets never got through) / \
             {:.1}% in, the agent reported {:.1}% out, we counted {} lost in; playout {}; stats {}",
            loss * 100.0,
            100.0 * d.share,
            d.correlation,
            100.0 * relay.to_agent.loss_rate(),
            100.0 * relay.to_agent.missing_rate(),
            100.0 * relay.to_kiosk.loss_rate(),
            100.0 * reported,
            stats["packets_lost_local"],
            summary["playout"],
            stats,
        );
        assert_eq!(summary["ended_by"], "duration", "the call held");
        let rate = stats["send_packet_rate"].as_f64().unwrap();
        // 40 ms packets: 25 a second.
        assert!((20.0..=30.0).contains(&rate), "{rate} packets a second");
        assert!(replies >= 2, "the agent heard the kiosk");
        assert!(
            d.share >= min_share,
            "{:.3} of the reply delivered",
            d.share
        );
        assert!(
            (reported - relay.to_agent.missing_rate()).abs() < 0.02,
            "loss out reported {reported}, relay {}",
            relay.to_agent.missing_rate()
        );
    }
}
