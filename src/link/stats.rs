//! Link statistics for the status page and metrics: our own counters plus
//! what webrtc-rs learns from RTCP (round-trip time, jitter, loss).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use webrtc::peer_connection::{RTCStatsReportEntry, StatsSelector};

use super::peer::{OPUS_CLOCK_RATE, Peer};
use crate::audio::{AgentDecoder, Millis};

/// What the link counts as packets and messages pass; read into each
/// snapshot.
#[derive(Default)]
pub(super) struct Counters {
    /// RTP packets sent, each counted once.
    pub packets_sent: AtomicU64,
    /// Packets sent a second time, once the agent reported loss.
    pub copies_sent: AtomicU64,
    /// Bytes sent, copies included.
    pub bytes_sent: AtomicU64,
    /// RTP packets received.
    pub packets_received: AtomicU64,
    pub bytes_received: AtomicU64,
    pub audio_in_dropped: AtomicU64,
    pub rtvi_unknown: AtomicU64,
    pub rtvi_malformed: AtomicU64,
    pub rtvi_oversized: AtomicU64,
    pub restarts: AtomicU64,
}

/// A snapshot of one link. Rates are averages since the previous snapshot
/// (or the one before it, when that was under 1.5 s ago).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LinkStats {
    /// RTP packets sent, each counted once.
    pub packets_sent: u64,
    /// Of those, the ones sent again: a call starts so, and does so to its
    /// end once the agent reports losing them.
    pub copies_sent: u64,
    /// The agent reported losing our packets: each goes out twice to the
    /// end of the call.
    pub sending_twice: bool,
    /// The agent's SDP answer said its decoder uses Opus in-band FEC
    /// (`useinbandfec=1`); the encoder sends FEC only then. `None` on a
    /// link without an SDP answer of that kind.
    pub agent_decodes_fec: Option<bool>,
    /// The longest packet the agent's SDP answer asks for (`a=maxptime`,
    /// `a=ptime`), in milliseconds; `None` where it does not say.
    pub agent_max_packet_ms: Option<u32>,
    /// RTP packets received.
    pub packets_received: u64,
    /// Bytes sent, headers and copies included.
    pub bytes_sent: u64,
    /// Bytes received, headers included.
    pub bytes_received: u64,
    /// Packets the agent reported lost (report blocks of its RTCP
    /// receiver or sender reports).
    pub packets_lost_remote: i64,
    /// Share of our packets lost over the agent's latest report interval
    /// (0 to 1), once it has reported.
    pub loss_out_recent: Option<f64>,
    /// The agent's interarrival jitter of our audio, once it has reported.
    pub remote_jitter_ms: Option<f64>,
    /// Reports on our audio read from the agent.
    pub remote_reports: u64,
    /// Packets we counted as lost on the way in.
    pub packets_lost_local: i64,
    /// Round-trip time, when RTCP has measured it.
    pub rtt_ms: Option<f64>,
    /// Interarrival jitter of incoming audio, when measured.
    pub jitter_ms: Option<f64>,
    /// Outgoing bits per second.
    pub send_bitrate_bps: u64,
    /// Incoming bits per second.
    pub recv_bitrate_bps: u64,
    /// Audio packets sent per second: 50 in a live call, silences included.
    pub send_packet_rate: f64,
    /// Incoming packets dropped because the decoder fell behind.
    pub audio_in_dropped: u64,
    /// Data-channel messages of a type the gateway does not know.
    pub rtvi_unknown: u64,
    /// Data-channel messages that could not be parsed.
    pub rtvi_malformed: u64,
    /// Data-channel messages over the size limit.
    pub rtvi_oversized: u64,
    /// Times the call was restored after it dropped.
    pub restarts: u64,
    /// From `Link::connect` to the first audio packet written.
    pub first_packet_sent_ms: Option<u64>,
    /// Duration of the latest recovery from a broken media path.
    pub last_recovery_ms: Option<u64>,
}

impl LinkStats {
    /// What the agent's decoder takes, once its answer is in.
    pub fn agent_decoder(&self) -> Option<AgentDecoder> {
        self.agent_decodes_fec.map(|inband_fec| AgentDecoder {
            inband_fec,
            max_packet: self.agent_max_packet_ms.map(Millis),
        })
    }
}

/// A snapshot this soon after the previous one averages its rates over
/// the one before.
const MIN_RATE_WINDOW: Duration = Duration::from_millis(1500);

#[derive(Clone, Copy)]
struct Snapshot {
    at: Instant,
    bytes_sent: u64,
    bytes_received: u64,
    packets_sent: u64,
}

pub(crate) struct StatsState {
    pub first_packet_sent: Option<Duration>,
    pub last_recovery: Option<Duration>,
    /// When and at which counts the previous snapshot was taken.
    previous: Snapshot,
    /// The one before it, at least [`MIN_RATE_WINDOW`] older.
    older: Snapshot,
}

impl StatsState {
    /// Rates in the first snapshot are averages since `connected`.
    pub fn new(connected: Instant) -> Self {
        let start = Snapshot {
            at: connected,
            bytes_sent: 0,
            bytes_received: 0,
            packets_sent: 0,
        };
        Self {
            first_packet_sent: None,
            last_recovery: None,
            previous: start,
            older: start,
        }
    }

    pub async fn collect(&mut self, c: &Counters, peer: &Peer) -> LinkStats {
        let now = Instant::now();
        let mut s = LinkStats {
            packets_sent: c.packets_sent.load(Ordering::Relaxed),
            copies_sent: c.copies_sent.load(Ordering::Relaxed),
            packets_received: c.packets_received.load(Ordering::Relaxed),
            bytes_sent: c.bytes_sent.load(Ordering::Relaxed),
            bytes_received: c.bytes_received.load(Ordering::Relaxed),
            audio_in_dropped: c.audio_in_dropped.load(Ordering::Relaxed),
            rtvi_unknown: c.rtvi_unknown.load(Ordering::Relaxed),
            rtvi_malformed: c.rtvi_malformed.load(Ordering::Relaxed),
            rtvi_oversized: c.rtvi_oversized.load(Ordering::Relaxed),
            restarts: c.restarts.load(Ordering::Relaxed),
            first_packet_sent_ms: self.first_packet_sent.map(|d| d.as_millis() as u64),
            last_recovery_ms: self.last_recovery.map(|d| d.as_millis() as u64),
            ..LinkStats::default()
        };
        if let Some(r) = peer.reports.latest() {
            s.packets_lost_remote = r.cumulative_lost;
            s.loss_out_recent = Some(r.fraction_lost);
            s.remote_jitter_ms = Some(f64::from(r.jitter) / f64::from(OPUS_CLOCK_RATE / 1000));
            s.remote_reports = r.reports;
            s.rtt_ms = r.rtt_ms;
        }
        for entry in peer.pc.get_stats(now, StatsSelector::None).await.iter() {
            match entry {
                RTCStatsReportEntry::InboundRtp(r) => {
                    s.packets_lost_local += r.received_rtp_stream_stats.packets_lost;
                    // webrtc-rs reports interarrival jitter in RTP timestamp
                    // units (RFC 3550), not seconds: 48 units per ms for Opus.
                    s.jitter_ms = Some(
                        r.received_rtp_stream_stats.jitter / f64::from(OPUS_CLOCK_RATE / 1000),
                    );
                }
                RTCStatsReportEntry::IceCandidatePair(p)
                    if s.rtt_ms.is_none() && p.current_round_trip_time > 0.0 =>
                {
                    s.rtt_ms = Some(p.current_round_trip_time * 1000.0);
                }
                _ => {}
            }
        }
        // Snapshots taken in quick succession (a caller polling for the
        // agent's reports, then the final figures) average over the older
        // baseline: a rate over a few milliseconds is noise.
        let fresh = now.duration_since(self.previous.at) >= MIN_RATE_WINDOW;
        let p = if fresh { self.previous } else { self.older };
        let secs = now.duration_since(p.at).as_secs_f64();
        if secs > 0.0 {
            s.send_bitrate_bps = ((s.bytes_sent - p.bytes_sent) as f64 * 8.0 / secs) as u64;
            s.recv_bitrate_bps = ((s.bytes_received - p.bytes_received) as f64 * 8.0 / secs) as u64;
            s.send_packet_rate = (s.packets_sent - p.packets_sent) as f64 / secs;
        }
        if fresh {
            self.older = self.previous;
            self.previous = Snapshot {
                at: now,
                bytes_sent: s.bytes_sent,
                bytes_received: s.bytes_received,
                packets_sent: s.packets_sent,
            };
        }
        s
    }
}
