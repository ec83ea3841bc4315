//! `run` on lobby Wi-Fi: the daemon's call to the loopback agent goes
//! through the agent's relay losing and delaying packets both ways. The
//! visitor is still heard, the agent's replies reach the speaker (after
//! concealment), and the status page reports the loss the agent suffers.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::{Daemon, VISITOR_WAV, session_config, speaker_samples, wait_session_end};
use kiosk_gateway::testkit::media;
use kiosk_gateway::testkit::network::{Bursts, NetworkProfile};
use kiosk_gateway::testkit::{LoopbackAgent, LoopbackAgentConfig};

/// 10 ms frames of the speaker louder than -40 dBFS.
fn loud_frames(samples: &[i16]) -> usize {
    samples
        .chunks_exact(480)
        .filter(|f| {
            let energy: f64 = f.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / 480.0;
            energy.sqrt() > 32768.0 * 0.01
        })
        .count()
}

struct Session {
    replies: usize,
    /// How long the agent heard each utterance.
    heard: Vec<Duration>,
    loud_frames: usize,
    status: serde_json::Value,
    relay: kiosk_gateway::testkit::network::RelayCounts,
    /// The daemon's log.
    log: String,
}

/// One session of the visitor fixture through a relay doing `network`
/// both ways (different seeds), until it idles out.
async fn session(network: NetworkProfile) -> Session {
    let reply =
        media::read_wav(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/link/reply_48k.wav"))
            .unwrap();
    let mut config = LoopbackAgentConfig::new(reply);
    config.simulate_network = true;
    config.uplink = network;
    config.downlink = NetworkProfile {
        seed: network.seed + 100,
        ..network
    };
    let agent = LoopbackAgent::start(config).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = session_config(
        dir.path(),
        Path::new(VISITOR_WAV),
        &format!("offer_url = \"{}\"", agent.offer_url()),
        "[session]\nidle_timeout = \"5s\"\n",
    );
    let d = Daemon::start(dir.path(), &config, &[]);
    let status = wait_session_end(&d, "a session ends", Duration::from_secs(60)).await;
    Session {
        replies: agent.record().utterances.len(),
        heard: agent.record().utterances,
        loud_frames: loud_frames(&speaker_samples(dir.path())),
        status,
        relay: agent.network_counts(),
        log: d.stderr(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_holds_the_call_through_5_percent_loss_and_reports_it() {
    let clean = session(NetworkProfile::default()).await;
    let lossy = session(NetworkProfile {
        loss: 0.05,
        delay: Duration::from_millis(40),
        jitter: Duration::from_millis(20),
        seed: 23,
        ..NetworkProfile::default()
    })
    .await;
    let per_reply = |s: &Session| s.loud_frames as f64 / s.replies.max(1) as f64;
    let share = per_reply(&lossy) / per_reply(&clean);
    let link = &lossy.status["link"];
    let loss_out = link["loss_out_percent"].as_f64().unwrap();
    println!(
        "clean: {} replies, {} loud 10 ms frames; 5% loss, 40 ± 20 ms: {} replies, {} loud frames, \
         {:.1}% of the reply delivered; relay lost {:.1}% out ({:.1}% of packets never got \
         through), {:.1}% in; the status page says {loss_out:.1}% out, {:.1}% in; link {link}; \
         playout {}",
        clean.replies,
        clean.loud_frames,
        lossy.replies,
        lossy.loud_frames,
        100.0 * share,
        100.0 * lossy.relay.to_agent.loss_rate(),
        100.0 * lossy.relay.to_agent.missing_rate(),
        100.0 * lossy.relay.to_kiosk.loss_rate(),
        link["loss_in_percent"].as_f64().unwrap(),
        lossy.status["playout"],
    );
    let heard: Vec<f64> = clean
        .heard
        .iter()
        .zip(&lossy.heard)
        .map(|(c, l)| l.as_secs_f64() / c.as_secs_f64())
        .collect();
    println!("each utterance as the agent heard it, against a clean network: {heard:.2?}");
    assert_eq!(lossy.status["recent_sessions"][0]["end_reason"], "idle");
    // Every utterance is heard; how much of each depends on the agent's
    // own concealment too (the loopback agent hears silence in a hole).
    assert_eq!(lossy.heard.len(), clean.heard.len(), "{heard:?}");
    assert!(lossy.replies >= clean.replies.saturating_sub(1).max(1));
    assert!(share >= 0.9, "{share:.3} of the reply delivered");
    assert_eq!(
        link["sending_twice"], true,
        "the agent reported loss: {link}"
    );
    assert_eq!(
        clean.status["link"]["sending_twice"], false,
        "nothing lost on a clean network"
    );
    assert!(
        (loss_out - 100.0 * lossy.relay.to_agent.missing_rate()).abs() <= 2.0,
        "loss out {loss_out}%, relay {}",
        lossy.relay.to_agent.missing_rate()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Bursts of 15 packets (300 ms) take a packet's copy, 60 ms behind it, as
// well: the agent still loses more than the encoder's configured 10%.
async fn at_30_percent_loss_in_long_bursts_the_call_holds_and_the_encoders_fec_follows_the_agents_reports()
 {
    let lossy = session(NetworkProfile {
        bursts: Some(Bursts::with_loss(0.3, 15.0)),
        delay: Duration::from_millis(60),
        jitter: Duration::from_millis(40),
        seed: 41,
        ..NetworkProfile::default()
    })
    .await;
    println!(
        "30% loss in bursts of 15, 60 ± 40 ms: {} replies, the agent heard {:?}; relay lost \
         {:.1}% out, {:.1}% of packets never got through; link {}",
        lossy.replies,
        lossy.heard,
        100.0 * lossy.relay.to_agent.loss_rate(),
        100.0 * lossy.relay.to_agent.missing_rate(),
        lossy.status["link"],
    );
    assert_eq!(lossy.status["recent_sessions"][0]["end_reason"], "idle");
    assert!(lossy.heard.len() >= 3, "{:?}", lossy.heard);
    // Above the configured 10%, the encoder is told what the agent loses.
    let raised = lossy
        .log
        .lines()
        .filter(|l| l.contains("encoder follows the agent's loss report"))
        .collect::<Vec<_>>();
    assert!(!raised.is_empty(), "{}", lossy.log);
    println!("{}", raised.join("\n"));
}
