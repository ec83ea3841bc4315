//! A test tool: a UDP relay between the kiosk and the agent's peer
//! connection (`LoopbackAgentConfig::simulate_network`), so tests can cut
//! the network ([`LoopbackAgent::cut_network`](super::LoopbackAgent::cut_network)).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{LoopbackAgentConfig, Shared};

/// Until when the network is cut, shared by every relay of one agent.
#[derive(Clone, Default)]
pub(super) struct NetworkCut(Arc<Mutex<Option<Instant>>>);

impl NetworkCut {
    pub(super) fn cut_for(&self, duration: Duration) {
        *self.0.lock().expect("cut lock") = Some(Instant::now() + duration);
    }

    fn is_cut(&self) -> bool {
        self.0
            .lock()
            .expect("cut lock")
            .is_some_and(|until| Instant::now() < until)
    }
}

/// The kiosk's offer as the agent may see it: behind the relay the agent
/// must only learn the kiosk's address from packets that came through it.
pub(super) fn offer_behind_relay(config: &LoopbackAgentConfig, sdp: String) -> String {
    if !config.simulate_network {
        return sdp;
    }
    sdp.split("\r\n")
        .filter(|l| !l.starts_with("a=candidate:") && !l.starts_with("a=end-of-candidates"))
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// A UDP relay between the kiosk and the agent's peer connection, so a
/// network cut can be simulated: while cut, packets both ways are dropped,
/// exactly what a dead uplink looks like to ICE (no close, no error).
pub(super) struct Relay {
    /// The agent's own candidate address, replaced in its answers.
    agent: SocketAddr,
    /// Where the kiosk sends to.
    public: SocketAddr,
}

impl Relay {
    /// The relay in front of a new peer connection whose answer is
    /// `answer_sdp`, if the agent simulates the network.
    pub(super) async fn for_answer(
        shared: &Shared,
        answer_sdp: &str,
        cancel: &CancellationToken,
    ) -> std::io::Result<Option<Self>> {
        if !shared.config.simulate_network {
            return Ok(None);
        }
        Self::start(answer_sdp, shared.network.clone(), cancel.clone())
            .await
            .map(Some)
    }

    async fn start(
        answer_sdp: &str,
        network: NetworkCut,
        cancel: CancellationToken,
    ) -> std::io::Result<Self> {
        let agent = answer_sdp
            .lines()
            .filter(|l| {
                l.starts_with("a=candidate:") && (l.contains(" udp ") || l.contains(" UDP "))
            })
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                format!("{}:{}", f.get(4)?, f.get(5)?).parse().ok()
            })
            .ok_or_else(|| std::io::Error::other("no UDP candidate in the answer"))?;
        let outer = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let inner = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        let public = outer.local_addr()?;
        tokio::spawn(async move {
            let mut kiosk: Option<SocketAddr> = None;
            let (mut a, mut b) = (vec![0u8; 2048], vec![0u8; 2048]);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    Ok((n, from)) = outer.recv_from(&mut a) => {
                        kiosk = Some(from);
                        if !network.is_cut() {
                            let _ = inner.send_to(&a[..n], agent).await;
                        }
                    }
                    Ok((n, _)) = inner.recv_from(&mut b) => {
                        if let (Some(k), false) = (kiosk, network.is_cut()) {
                            let _ = outer.send_to(&b[..n], k).await;
                        }
                    }
                }
            }
        });
        Ok(Self { agent, public })
    }

    pub(super) fn rewrite(&self, sdp: &str) -> String {
        let from = format!("{} {}", self.agent.ip(), self.agent.port());
        let to = format!("{} {}", self.public.ip(), self.public.port());
        sdp.replace(&from, &to)
    }
}
