//! A test tool: a UDP relay between the kiosk and the agent's peer
//! connection (`LoopbackAgentConfig::simulate_network`), so tests can cut
//! the network ([`LoopbackAgent::cut_network`](super::LoopbackAgent::cut_network))
//! or make it lossy ([`LoopbackAgentConfig::uplink`](super::LoopbackAgentConfig::uplink)
//! and `downlink`, see [`netsim`](super::netsim)).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use super::netsim::{NetworkModel, NetworkProfile};
use super::{LoopbackAgentConfig, Shared};

/// RTP packets one direction of the relay carried, as it counted them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RtpTally {
    /// RTP packets offered to the simulated network.
    pub offered: u64,
    /// Of those, the ones it lost.
    pub lost: u64,
}

impl RtpTally {
    /// Share of the RTP packets lost (0 to 1).
    pub fn loss_rate(&self) -> f64 {
        if self.offered == 0 {
            0.0
        } else {
            self.lost as f64 / self.offered as f64
        }
    }
}

/// What the relays of one agent counted, both ways, over all its calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayCounts {
    /// From the kiosk to the agent.
    pub to_agent: RtpTally,
    /// From the agent to the kiosk.
    pub to_kiosk: RtpTally,
}

/// The network state every relay of one agent shares: until when it is
/// cut, and what was counted.
#[derive(Clone, Default)]
pub(super) struct Network {
    cut_until: Arc<Mutex<Option<Instant>>>,
    counts: Arc<Mutex<RelayCounts>>,
}

impl Network {
    pub(super) fn cut_for(&self, duration: Duration) {
        *self.cut_until.lock().expect("cut lock") = Some(Instant::now() + duration);
    }

    fn is_cut(&self) -> bool {
        self.cut_until
            .lock()
            .expect("cut lock")
            .is_some_and(|until| Instant::now() < until)
    }

    pub(super) fn counts(&self) -> RelayCounts {
        *self.counts.lock().expect("counts lock")
    }
}

/// Whether a datagram is SRTP or SRTCP (RFC 7983: first byte 128 to 191),
/// as opposed to STUN or DTLS.
fn is_media(packet: &[u8]) -> bool {
    packet.first().is_some_and(|b| (128..=191).contains(b))
}

/// Whether a media datagram is RTP rather than RTCP (RFC 5761: RTCP
/// packet types 192 to 223 in the second byte).
fn is_rtp(packet: &[u8]) -> bool {
    packet.get(1).is_some_and(|pt| !(192..=223).contains(pt))
}

/// One direction of the relay: the simulated network and the socket
/// packets leave by.
struct Direction {
    model: NetworkModel,
    out: Arc<UdpSocket>,
}

impl Direction {
    /// Passes `packet` on to `to` as the simulated network would. Only
    /// media is impaired: the ICE and DTLS handshakes go through as they
    /// are, so a test's timing does not hang on their retransmission timers.
    fn forward(&mut self, packet: &[u8], to: SocketAddr, tally: impl FnOnce(RtpTally)) {
        if !is_media(packet) {
            self.send_at(packet, to, None);
            return;
        }
        let d = self.model.offer(Instant::now(), packet.len());
        if is_rtp(packet) {
            tally(RtpTally {
                offered: 1,
                lost: u64::from(d.first.is_none()),
            });
        }
        for at in [d.first, d.copy].into_iter().flatten() {
            self.send_at(packet, to, Some(at));
        }
    }

    fn send_at(&self, packet: &[u8], to: SocketAddr, at: Option<Instant>) {
        let out = Arc::clone(&self.out);
        match at.filter(|&at| at > Instant::now()) {
            None => {
                let _ = out.try_send_to(packet, to);
            }
            Some(at) => {
                let packet = packet.to_vec();
                tokio::spawn(async move {
                    tokio::time::sleep_until(at.into()).await;
                    let _ = out.send_to(&packet, to).await;
                });
            }
        }
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
        Self::start(
            answer_sdp,
            &shared.config,
            shared.network.clone(),
            cancel.clone(),
        )
        .await
        .map(Some)
    }

    async fn start(
        answer_sdp: &str,
        config: &LoopbackAgentConfig,
        network: Network,
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
        let outer = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let inner = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let public = outer.local_addr()?;
        let mut to_agent = Direction {
            model: NetworkModel::new(config.uplink),
            out: Arc::clone(&inner),
        };
        let mut to_kiosk = Direction {
            // Another seed, so both ways do not lose the same packets.
            model: NetworkModel::new(NetworkProfile {
                seed: config.downlink.seed.wrapping_add(1),
                ..config.downlink
            }),
            out: Arc::clone(&outer),
        };
        tokio::spawn(async move {
            let mut kiosk: Option<SocketAddr> = None;
            let (mut a, mut b) = (vec![0u8; 2048], vec![0u8; 2048]);
            let add = |f: fn(&mut RelayCounts) -> &mut RtpTally, t: RtpTally| {
                let mut counts = network.counts.lock().expect("counts lock");
                let tally = f(&mut counts);
                tally.offered += t.offered;
                tally.lost += t.lost;
            };
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    Ok((n, from)) = outer.recv_from(&mut a) => {
                        kiosk = Some(from);
                        if !network.is_cut() {
                            to_agent.forward(&a[..n], agent, |t| add(|c| &mut c.to_agent, t));
                        }
                    }
                    Ok((n, _)) = inner.recv_from(&mut b) => {
                        if let (Some(k), false) = (kiosk, network.is_cut()) {
                            to_kiosk.forward(&b[..n], k, |t| add(|c| &mut c.to_kiosk, t));
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
