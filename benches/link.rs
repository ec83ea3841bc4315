//! Criterion benchmark of the link layer (`cargo bench --bench link`): Opus
//! packets per second from the kiosk's [`Link`] through RTP, SRTP and UDP
//! on 127.0.0.1 to the loopback agent, counted where they arrive (the
//! agent's relay). The agent's own receive work runs in the same process,
//! so the figure is a floor on what the kiosk side alone manages.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kiosk_gateway::link::signaling::smallwebrtc::SmallWebRtcSignaling;
use kiosk_gateway::link::{Link, LinkSettings, OpusFrame};
use kiosk_gateway::testkit::{LoopbackAgent, LoopbackAgentConfig};

/// Packets per measured batch: five seconds of audio.
const BATCH: u64 = 250;
/// A typical 20 ms Opus packet of 16 kHz speech at 24 kbit/s.
const PACKET_BYTES: usize = 60;

fn link_packets(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (agent, link, io) = runtime.block_on(async {
        let agent = LoopbackAgent::start(LoopbackAgentConfig {
            simulate_network: true,
            ..LoopbackAgentConfig::new(Vec::new())
        })
        .await
        .unwrap();
        let signaling = Arc::new(SmallWebRtcSignaling::new(
            agent.offer_url(),
            None,
            None,
            Duration::from_secs(5),
        ));
        let settings = LinkSettings {
            ice_servers: vec![],
            udp_bind: vec!["127.0.0.1:0".into()],
            ..LinkSettings::default()
        };
        let (link, io) = Link::connect(settings, signaling).await.unwrap();
        (agent, link, io)
    });
    let packet = Bytes::from(vec![0x78; PACKET_BYTES]);
    let mut group = c.benchmark_group("link");
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("packets_to_agent", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let before = agent.network_counts().to_agent.distinct;
                    let started = Instant::now();
                    for _ in 0..BATCH {
                        let frame = OpusFrame {
                            data: packet.clone(),
                            duration: Duration::from_millis(20),
                            after_silence: false,
                        };
                        io.audio_out.send(frame).await.unwrap();
                    }
                    while agent.network_counts().to_agent.distinct < before + BATCH {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                    total += started.elapsed();
                }
                total
            })
        })
    });
    group.finish();
    runtime.block_on(link.close());
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(10));
    targets = link_packets
}
criterion_main!(benches);
