//! A lossy, jittery network between the kiosk and the loopback agent (the
//! agent's relay, see `testkit::network`): the link must report the loss
//! the agent suffers as the relay counted it.

use crate::link_support;

use std::sync::Arc;
use std::time::Duration;

use kiosk_gateway::link::signaling::smallwebrtc::SmallWebRtcSignaling;
use kiosk_gateway::link::{Link, LinkIo, OpusFrame};
use kiosk_gateway::testkit::media::{Encoder, FRAME_DURATION, FRAME_SAMPLES};
use kiosk_gateway::testkit::network::NetworkProfile;
use kiosk_gateway::testkit::{LoopbackAgent, LoopbackAgentConfig};
use link_support::{fixture, local_settings};

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
async fn the_loss_the_agent_reports_is_the_loss_the_network_caused() {
    let agent = lossy_agent(wifi(0.05, 17), wifi(0.0, 18)).await;
    let (link, io) = connect(&agent).await;
    stream_for(&io, 15).await;
    // The agent reports every second or so: let the last report come in.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let stats = link.stats().await.unwrap();
    let relay = agent.network_counts();
    let reported = stats.packets_lost_remote as f64 / stats.packets_sent as f64;
    println!(
        "relay lost {} of {} RTP packets to the agent ({:.2}%); the agent reported {} of {} ({:.2}%), \
         recent {:?}, RTT {:?} ms, its jitter {:?} ms, {} reports",
        relay.to_agent.lost,
        relay.to_agent.offered,
        100.0 * relay.to_agent.loss_rate(),
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
        (reported - relay.to_agent.loss_rate()).abs() < 0.02,
        "reported {reported}, relay {}",
        relay.to_agent.loss_rate()
    );
    let rtt = stats.rtt_ms.expect("RTT from the agent's reports");
    // 40 ms each way on the way out only (the way back is jittery too).
    assert!((20.0..300.0).contains(&rtt), "RTT {rtt} ms");
    link.close().await;
}
