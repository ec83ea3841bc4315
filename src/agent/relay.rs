//! A test tool: a UDP relay between the kiosk and the agent's peer
//! connection (`LoopbackAgentConfig::simulate_network`, or any agent
//! behind the [`proxy`](super::proxy)), so tests can cut
//! the network ([`LoopbackAgent::cut_network`](super::LoopbackAgent::cut_network))
//! or make it lossy ([`LoopbackAgentConfig::uplink`](super::LoopbackAgentConfig::uplink)
//! and `downlink`, see [`netsim`](super::netsim)).

use std::collections::{HashMap, VecDeque};
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
    /// Distinct packets offered (by SSRC and sequence number): a packet
    /// the sender sent twice counts once.
    pub distinct: u64,
    /// Distinct packets none of whose copies got through: what the
    /// receiver never had.
    pub missing: u64,
}

impl RtpTally {
    /// Share of the RTP packets lost (0 to 1): the network's loss.
    pub fn loss_rate(&self) -> f64 {
        ratio(self.lost, self.offered)
    }

    /// Share of the distinct packets the receiver never had (0 to 1): the
    /// loss left after the sender's copies.
    pub fn missing_rate(&self) -> f64 {
        ratio(self.missing, self.distinct)
    }

    fn add(&mut self, arrival: Arrival) {
        self.offered += 1;
        self.lost += u64::from(arrival.lost);
        match arrival.packet {
            PacketSeen::First => {
                self.distinct += 1;
                self.missing += u64::from(arrival.lost);
            }
            PacketSeen::FillsAHole => self.missing -= 1,
            PacketSeen::Again => {}
        }
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// One RTP packet offered to the simulated network.
struct Arrival {
    lost: bool,
    packet: PacketSeen,
}

enum PacketSeen {
    /// The first copy of its packet.
    First,
    /// A copy that got through where every earlier one was lost.
    FillsAHole,
    /// Any other copy.
    Again,
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

/// An RTP packet's SSRC and sequence number (in the clear in SRTP too).
fn rtp_key(packet: &[u8]) -> Option<(u32, u16)> {
    if !is_rtp(packet) || packet.len() < 12 {
        return None;
    }
    let seq = u16::from_be_bytes([packet[2], packet[3]]);
    let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
    Some((ssrc, seq))
}

/// One direction of the relay: the simulated network and the socket
/// packets leave by.
struct Direction {
    model: NetworkModel,
    out: Arc<UdpSocket>,
    seen: SeenPackets,
}

/// Packets a direction remembers to tell a copy from a new packet: over a
/// minute of audio, far longer than any copy lags its original.
const REMEMBERED: usize = 4096;

/// Whether a copy of each recent RTP packet (by SSRC and sequence number)
/// got through so far.
#[derive(Default)]
struct SeenPackets {
    through: HashMap<(u32, u16), bool>,
    /// The keys of `through`, oldest first, to forget all but the last
    /// [`REMEMBERED`].
    order: VecDeque<(u32, u16)>,
}

impl SeenPackets {
    /// Records a copy of packet `key` and whether it got through.
    fn offer(&mut self, key: (u32, u16), got_through: bool) -> PacketSeen {
        match self.through.insert(key, got_through) {
            None => {
                self.order.push_back(key);
                if self.order.len() > REMEMBERED
                    && let Some(old) = self.order.pop_front()
                {
                    self.through.remove(&old);
                }
                PacketSeen::First
            }
            Some(false) if got_through => PacketSeen::FillsAHole,
            Some(before) => {
                self.through.insert(key, before || got_through);
                PacketSeen::Again
            }
        }
    }
}

impl Direction {
    /// Passes `packet` on to `to` as the simulated network would. Only
    /// media is impaired: the ICE and DTLS handshakes go through as they
    /// are, so a test's timing does not hang on their retransmission timers.
    fn forward(&mut self, packet: &[u8], to: SocketAddr, tally: impl FnOnce(Arrival)) {
        if !is_media(packet) {
            self.send_at(packet, to, None);
            return;
        }
        let d = self.model.offer(Instant::now(), packet.len());
        if let Some(key) = rtp_key(packet) {
            let lost = d.first.is_none();
            let packet = self.seen.offer(key, !lost);
            tally(Arrival { lost, packet });
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
    without_candidates(&sdp)
}

/// `sdp` without its ICE candidates: the peer it goes to learns the
/// sender's address from the checks that reach it (peer-reflexive), which
/// behind a relay is the relay's.
pub(super) fn without_candidates(sdp: &str) -> String {
    sdp.split("\r\n")
        .filter(|l| !l.starts_with("a=candidate:") && !l.starts_with("a=end-of-candidates"))
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// The address of the first UDP IPv4 candidate in `sdp`: where the relay
/// sends the kiosk's packets.
pub(super) fn agent_candidate(sdp: &str) -> Option<SocketAddr> {
    sdp.lines()
        .filter_map(|l| l.strip_prefix("a=candidate:"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.get(2).is_some_and(|t| t.eq_ignore_ascii_case("udp")))
        .find_map(|f| {
            let addr: SocketAddr = format!("{}:{}", f.get(4)?, f.get(5)?).parse().ok()?;
            addr.is_ipv4().then_some(addr)
        })
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
        let agent = agent_candidate(answer_sdp)
            .ok_or_else(|| std::io::Error::other("no UDP candidate in the answer"))?;
        Self::start(
            agent,
            (shared.config.uplink, shared.config.downlink),
            shared.network.clone(),
            cancel.clone(),
        )
        .await
        .map(Some)
    }

    /// A relay to the agent's candidate `agent` doing the `(uplink,
    /// downlink)` networks, until `cancel`.
    pub(super) async fn start(
        agent: SocketAddr,
        (uplink, downlink): (NetworkProfile, NetworkProfile),
        network: Network,
        cancel: CancellationToken,
    ) -> std::io::Result<Self> {
        let outer = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        // On the agent's interface, so its packets to the relay take the
        // same route as its packets to a kiosk would.
        let inner = Arc::new(UdpSocket::bind(SocketAddr::new(agent.ip(), 0)).await?);
        let public = outer.local_addr()?;
        let mut to_agent = Direction {
            model: NetworkModel::new(uplink),
            out: Arc::clone(&inner),
            seen: SeenPackets::default(),
        };
        let mut to_kiosk = Direction {
            // Another seed, so both ways do not lose the same packets.
            model: NetworkModel::new(NetworkProfile {
                seed: downlink.seed.wrapping_add(1),
                ..downlink
            }),
            out: Arc::clone(&outer),
            seen: SeenPackets::default(),
        };
        tokio::spawn(async move {
            let mut kiosk: Option<SocketAddr> = None;
            let (mut a, mut b) = (vec![0u8; 2048], vec![0u8; 2048]);
            let add = |f: fn(&mut RelayCounts) -> &mut RtpTally, arrival: Arrival| {
                f(&mut network.counts.lock().expect("counts lock")).add(arrival);
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

    /// Where the kiosk sends to.
    pub(super) fn public(&self) -> SocketAddr {
        self.public
    }

    /// The agent's answer `sdp` as the kiosk must see it: the relay's
    /// address in place of the agent's, and no other candidate of the
    /// agent's (another interface, IPv6, TCP) the kiosk could reach it by.
    pub(super) fn rewrite(&self, sdp: &str) -> String {
        let from = format!(" {} {} ", self.agent.ip(), self.agent.port());
        let to = format!(" {} {} ", self.public.ip(), self.public.port());
        sdp.split("\r\n")
            .filter(|l| !l.starts_with("a=candidate:") || l.contains(&from))
            .map(|l| l.replace(&from, &to))
            .collect::<Vec<_>>()
            .join("\r\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER: &str = "v=0\r\n\
        a=candidate:1 1 tcp 1518280447 192.0.2.2 9 typ host tcptype passive\r\n\
        a=candidate:2 1 udp 2122262783 2001:db8::2 40001 typ host\r\n\
        a=candidate:3 1 udp 2130706431 192.0.2.2 40000 typ host\r\n\
        a=candidate:4 1 udp 2130706431 198.51.100.7 40002 typ host\r\n\
        a=end-of-candidates\r\n";

    #[test]
    fn the_relay_goes_in_front_of_the_agents_first_udp_ipv4_candidate_only() {
        let agent = agent_candidate(ANSWER).unwrap();
        assert_eq!(agent, "192.0.2.2:40000".parse::<SocketAddr>().unwrap());
        let relay = Relay {
            agent,
            public: "127.0.0.1:5555".parse().unwrap(),
        };
        assert_eq!(
            relay.rewrite(ANSWER),
            "v=0\r\n\
             a=candidate:3 1 udp 2130706431 127.0.0.1 5555 typ host\r\n\
             a=end-of-candidates\r\n"
        );
        assert_eq!(without_candidates(ANSWER), "v=0\r\n");
    }

    #[test]
    fn a_packet_sent_twice_is_missing_only_when_both_copies_are_lost() {
        let mut seen = SeenPackets::default();
        let mut tally = RtpTally::default();
        let mut offer = |key, got_through| {
            let packet = seen.offer(key, got_through);
            tally.add(Arrival {
                lost: !got_through,
                packet,
            });
            tally
        };
        offer((7, 1), true);
        offer((7, 1), false);
        offer((7, 2), false);
        offer((7, 2), true);
        offer((7, 3), false);
        let t = offer((7, 3), false);
        assert_eq!((t.offered, t.lost), (6, 4), "the network lost 4 of 6");
        assert_eq!(
            (t.distinct, t.missing),
            (3, 1),
            "only packet 3 never got through"
        );
        assert_eq!(offer((8, 3), true).distinct, 4, "another stream's packet");
    }
}
