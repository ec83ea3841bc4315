//! RTP and RTCP for the SIP leg, without sockets: packets out with our
//! sequence numbers and timestamps, packets in checked and counted the way
//! RFC 3550 (appendix A) counts them, and receiver reports built from the
//! counts. Packets are `rtc`'s RTP and RTCP types.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::reception_report::ReceptionReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::rtcp::source_description::{
    SdesType, SourceDescription, SourceDescriptionChunk, SourceDescriptionItem,
};
use rtc::rtp::{Header, Packet};
use rtc::shared::marshal::{Marshal, Unmarshal};
use serde::Serialize;

/// A silence on the receive side at least this long is counted as a gap.
pub const GAP: Duration = Duration::from_secs(1);

/// Whether a datagram on a multiplexed port is RTCP (RFC 5761 section 4:
/// RTCP packet types 192 to 223 sit where RTP has its marker and PT).
pub fn is_rtcp(data: &[u8]) -> bool {
    data.len() >= 2 && (192..=223).contains(&data[1])
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RtpError {
    #[error("not an RTP packet")]
    Malformed,
    #[error("not RTP version 2")]
    Version,
    #[error("payload type {0} is not the call's codec")]
    PayloadType(u8),
    #[error("not an RTCP packet")]
    MalformedRtcp,
}

/// A packet the peer sent, ready for the decoder.
#[derive(Debug, Clone)]
pub struct Received {
    pub seq: u16,
    pub timestamp: u32,
    pub marker: bool,
    pub payload: Bytes,
}

/// What the media counters say; the `--json` summary's `rtp` object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct RtpStats {
    pub packets_sent: u64,
    pub octets_sent: u64,
    pub packets_received: u64,
    /// Payload bytes received.
    pub octets_received: u64,
    /// RFC 3550's cumulative loss: packets expected from the sequence
    /// numbers seen less packets received (never below zero).
    pub packets_lost: u64,
    /// Packets that arrived after a later one.
    pub packets_reordered: u64,
    /// Datagrams on the media ports that were not RTP or RTCP, or had
    /// another payload type (telephone events, comfort noise).
    pub packets_invalid: u64,
    /// Datagrams from an address other than the peer's media address.
    pub packets_foreign: u64,
    pub rtcp_sent: u64,
    pub rtcp_received: u64,
    /// Interarrival jitter, ms (RFC 3550 section 6.4.1).
    pub jitter_ms: f64,
    /// Silences of at least a second between two received packets.
    pub gaps: u64,
    pub longest_gap_ms: u64,
}

/// RFC 3550 appendix A.1 receiver state for the peer's stream.
struct Reception {
    ssrc: u32,
    base_seq: u32,
    max_seq: u16,
    cycles: u32,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Relative transit time of the previous packet, in RTP units.
    transit: Option<i64>,
    /// Jitter in RTP units, scaled as in A.8.
    jitter: f64,
    /// Middle 32 bits of the last sender report's NTP time, and its arrival.
    last_sr: Option<(u32, Instant)>,
}

impl Reception {
    fn new(ssrc: u32, seq: u16) -> Self {
        Self {
            ssrc,
            base_seq: u32::from(seq),
            max_seq: seq,
            cycles: 0,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            transit: None,
            jitter: 0.0,
            last_sr: None,
        }
    }

    fn extended_max(&self) -> u32 {
        self.cycles | u32::from(self.max_seq)
    }

    fn expected(&self) -> u64 {
        u64::from(self.extended_max().wrapping_sub(self.base_seq)) + 1
    }

    fn lost(&self) -> u64 {
        self.expected().saturating_sub(self.received)
    }
}

/// One call's RTP stream in each direction.
pub struct RtpSession {
    ssrc: u32,
    cname: String,
    payload_type: u8,
    clock_rate: u32,
    seq: u16,
    timestamp: u32,
    started: Instant,
    reception: Option<Reception>,
    last_arrival: Option<Instant>,
    stats: RtpStats,
}

impl RtpSession {
    /// `ssrc`, `seq` and `timestamp` start at random values (RFC 3550
    /// section 5.1); the caller draws them.
    pub fn new(
        ssrc: u32,
        seq: u16,
        timestamp: u32,
        payload_type: u8,
        clock_rate: u32,
        now: Instant,
    ) -> Self {
        Self {
            ssrc,
            cname: format!("kiosk-gateway-{ssrc:08x}"),
            payload_type,
            clock_rate,
            seq,
            timestamp,
            started: now,
            reception: None,
            last_arrival: None,
            stats: RtpStats::default(),
        }
    }

    pub fn stats(&self) -> RtpStats {
        let mut stats = self.stats;
        if let Some(r) = &self.reception {
            stats.packets_lost = r.lost();
            stats.jitter_ms = r.jitter / f64::from(self.clock_rate) * 1000.0;
        }
        stats
    }

    /// Time since the last packet from the peer (or since the call's media
    /// started, before any).
    pub fn silent_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_arrival.unwrap_or(self.started))
    }

    /// One payload of `samples` (at the RTP clock) into a packet to send.
    pub fn packetize(&mut self, payload: &[u8], samples: u32, marker: bool) -> Vec<u8> {
        let packet = Packet {
            header: Header {
                version: 2,
                marker,
                payload_type: self.payload_type,
                sequence_number: self.seq,
                timestamp: self.timestamp,
                ssrc: self.ssrc,
                ..Header::default()
            },
            payload: Bytes::copy_from_slice(payload),
        };
        self.seq = self.seq.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(samples);
        self.stats.packets_sent += 1;
        self.stats.octets_sent += payload.len() as u64;
        // Marshalling a header we built cannot fail; an empty datagram
        // would only be counted as sent.
        packet.marshal().map(|b| b.to_vec()).unwrap_or_default()
    }

    /// Moves the next timestamp over `samples` that were not sent (a
    /// silence), so the peer plays the next packet after the gap.
    pub fn skip(&mut self, samples: u32) {
        self.timestamp = self.timestamp.wrapping_add(samples);
    }

    pub fn count_foreign(&mut self) {
        self.stats.packets_foreign += 1;
    }

    /// Takes an RTP datagram from the peer's media address.
    pub fn receive(&mut self, data: &[u8], now: Instant) -> Result<Received, RtpError> {
        let result = self.parse(data, now);
        if result.is_err() {
            self.stats.packets_invalid += 1;
        }
        result
    }

    fn parse(&mut self, data: &[u8], now: Instant) -> Result<Received, RtpError> {
        if data.len() < 12 {
            return Err(RtpError::Malformed);
        }
        if data[0] >> 6 != 2 {
            return Err(RtpError::Version);
        }
        let packet = Packet::unmarshal(&mut &data[..]).map_err(|_| RtpError::Malformed)?;
        let h = &packet.header;
        if h.payload_type != self.payload_type {
            return Err(RtpError::PayloadType(h.payload_type));
        }
        let seq = h.sequence_number;
        let reception = match &mut self.reception {
            // A new SSRC is a new stream (a peer's media restarted).
            Some(r) if r.ssrc == h.ssrc => r,
            slot => slot.insert(Reception::new(h.ssrc, seq)),
        };
        let delta = seq.wrapping_sub(reception.max_seq);
        if reception.received == 0 {
            // First packet: nothing to compare with.
        } else if delta != 0 && delta < 0x8000 {
            if seq < reception.max_seq {
                reception.cycles = reception.cycles.wrapping_add(1 << 16);
            }
            reception.max_seq = seq;
        } else if delta != 0 {
            self.stats.packets_reordered += 1;
        }
        reception.received += 1;
        // Interarrival jitter (A.8), arrival time in RTP units.
        let arrival = (now.saturating_duration_since(self.started).as_secs_f64()
            * f64::from(self.clock_rate)) as i64;
        let transit = arrival - i64::from(h.timestamp);
        if let Some(previous) = reception.transit {
            let d = (transit - previous).abs() as f64;
            reception.jitter += (d - reception.jitter) / 16.0;
        }
        reception.transit = Some(transit);
        if let Some(last) = self.last_arrival {
            let silence = now.saturating_duration_since(last);
            if silence >= GAP {
                self.stats.gaps += 1;
                self.stats.longest_gap_ms =
                    self.stats.longest_gap_ms.max(silence.as_millis() as u64);
            }
        }
        self.last_arrival = Some(now);
        self.stats.packets_received += 1;
        self.stats.octets_received += packet.payload.len() as u64;
        Ok(Received {
            seq,
            timestamp: h.timestamp,
            marker: h.marker,
            payload: packet.payload,
        })
    }

    /// Takes an RTCP datagram from the peer: its sender report times our
    /// next report's LSR/DLSR.
    pub fn receive_rtcp(&mut self, data: &[u8], now: Instant) -> Result<(), RtpError> {
        let packets = match rtc::rtcp::packet::unmarshal(&mut &data[..]) {
            Ok(p) => p,
            Err(_) => {
                self.stats.packets_invalid += 1;
                return Err(RtpError::MalformedRtcp);
            }
        };
        self.stats.rtcp_received += 1;
        for packet in &packets {
            if let Some(sr) = packet.as_any().downcast_ref::<SenderReport>()
                && let Some(r) = &mut self.reception
                && r.ssrc == sr.ssrc
            {
                r.last_sr = Some(((sr.ntp_time >> 16) as u32, now));
            }
        }
        Ok(())
    }

    /// A compound RTCP packet: a receiver report on the peer's stream (if
    /// any arrived yet) and our CNAME. Sent every few seconds.
    pub fn report(&mut self, now: Instant) -> Vec<u8> {
        let mut reports = Vec::new();
        if let Some(r) = &mut self.reception {
            let expected = r.expected();
            let expected_interval = expected.saturating_sub(r.expected_prior);
            let received_interval = r.received.saturating_sub(r.received_prior);
            r.expected_prior = expected;
            r.received_prior = r.received;
            let lost_interval = expected_interval.saturating_sub(received_interval);
            let fraction_lost = (lost_interval << 8)
                .checked_div(expected_interval)
                .map_or(0, |f| f.min(255) as u8);
            let (last_sender_report, delay) = match r.last_sr {
                Some((lsr, at)) => {
                    let since = now.saturating_duration_since(at).as_secs_f64();
                    (lsr, (since * 65_536.0) as u32)
                }
                None => (0, 0),
            };
            reports.push(ReceptionReport {
                ssrc: r.ssrc,
                fraction_lost,
                total_lost: r.lost().min(0x7F_FFFF) as u32,
                last_sequence_number: r.extended_max(),
                jitter: r.jitter as u32,
                last_sender_report,
                delay,
            });
        }
        let rr = ReceiverReport {
            ssrc: self.ssrc,
            reports,
            ..ReceiverReport::default()
        };
        let sdes = SourceDescription {
            chunks: vec![SourceDescriptionChunk {
                source: self.ssrc,
                items: vec![SourceDescriptionItem {
                    sdes_type: SdesType::SdesCname,
                    text: Bytes::from(self.cname.clone()),
                }],
            }],
        };
        let packets: Vec<Box<dyn rtc::rtcp::packet::Packet>> = vec![Box::new(rr), Box::new(sdes)];
        match rtc::rtcp::packet::marshal(&packets) {
            Ok(bytes) => {
                self.stats.rtcp_sent += 1;
                bytes.to_vec()
            }
            Err(_) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u16, ts: u32, pt: u8) -> Vec<u8> {
        let mut peer = RtpSession::new(0xABCD, seq, ts, pt, 8000, Instant::now());
        peer.packetize(&[0xFF; 160], 160, false)
    }

    #[test]
    fn packets_round_trip_with_sequence_and_timestamp() {
        let now = Instant::now();
        let mut ours = RtpSession::new(1, 65_535, 1000, 111, 48_000, now);
        let a = ours.packetize(b"abc", 960, true);
        let b = ours.packetize(b"def", 960, false);
        let mut theirs = RtpSession::new(2, 0, 0, 111, 48_000, now);
        let ra = theirs.receive(&a, now).unwrap();
        let rb = theirs.receive(&b, now).unwrap();
        assert_eq!((ra.seq, ra.timestamp, ra.marker), (65_535, 1000, true));
        assert_eq!(
            (rb.seq, rb.timestamp, &rb.payload[..]),
            (0, 1960, &b"def"[..])
        );
        let stats = theirs.stats();
        assert_eq!((stats.packets_received, stats.packets_lost), (2, 0));
        assert_eq!(ours.stats().packets_sent, 2);
    }

    #[test]
    fn loss_reordering_and_gaps_are_counted() {
        let start = Instant::now();
        let mut session = RtpSession::new(1, 0, 0, 0, 8000, start);
        let mut at = start;
        for seq in [10u16, 11, 13, 12, 14, 17] {
            at += Duration::from_millis(20);
            session
                .receive(&packet(seq, u32::from(seq) * 160, 0), at)
                .unwrap();
        }
        // 10..=17 is 8 expected, 6 received.
        let stats = session.stats();
        assert_eq!(stats.packets_lost, 2);
        assert_eq!(stats.packets_reordered, 1);
        assert_eq!(stats.gaps, 0);
        at += Duration::from_millis(5000);
        session.receive(&packet(18, 18 * 160, 0), at).unwrap();
        let stats = session.stats();
        assert_eq!((stats.gaps, stats.longest_gap_ms), (1, 5000));
        assert_eq!(
            session.silent_for(at + Duration::from_secs(2)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn garbage_and_other_payload_types_are_refused_and_counted() {
        let now = Instant::now();
        let mut session = RtpSession::new(1, 0, 0, 111, 48_000, now);
        assert_eq!(
            session.receive(b"hi", now).unwrap_err(),
            RtpError::Malformed
        );
        assert_eq!(
            session.receive(&[0u8; 40], now).unwrap_err(),
            RtpError::Version
        );
        assert_eq!(
            session.receive(&packet(1, 0, 101), now).unwrap_err(),
            RtpError::PayloadType(101)
        );
        assert!(session.receive_rtcp(&[0x80, 200, 0, 99], now).is_err());
        assert_eq!(session.stats().packets_invalid, 4);
        assert_eq!(session.stats().packets_received, 0);
    }

    #[test]
    fn a_receiver_report_carries_loss_and_the_last_sender_report() {
        let start = Instant::now();
        let mut session = RtpSession::new(7, 0, 0, 0, 8000, start);
        for seq in [1u16, 2, 4] {
            session.receive(&packet(seq, 0, 0), start).unwrap();
        }
        let sr = SenderReport {
            ssrc: 0xABCD,
            ntp_time: 0x0001_2345_6789_0000,
            ..SenderReport::default()
        };
        let sr = rtc::rtcp::packet::marshal(&[Box::new(sr) as Box<dyn rtc::rtcp::packet::Packet>])
            .unwrap();
        assert!(is_rtcp(&sr));
        session.receive_rtcp(&sr, start).unwrap();
        let report = session.report(start + Duration::from_secs(1));
        let packets = rtc::rtcp::packet::unmarshal(&mut &report[..]).unwrap();
        let rr = packets[0]
            .as_any()
            .downcast_ref::<ReceiverReport>()
            .unwrap();
        assert_eq!(rr.ssrc, 7);
        let block = &rr.reports[0];
        assert_eq!(block.ssrc, 0xABCD);
        assert_eq!(block.total_lost, 1);
        assert_eq!(block.fraction_lost, 64); // 1 of 4 = 0.25 * 256
        assert_eq!(block.last_sequence_number, 4);
        assert_eq!(block.last_sender_report, 0x2345_6789);
        assert_eq!(block.delay, 65_536);
        assert_eq!(session.stats().rtcp_sent, 1);
        assert!(!is_rtcp(&packet(1, 0, 0)));
    }

    proptest::proptest! {
        /// Any datagram on a media port is a packet or a counted error.
        #[test]
        fn hostile_media_never_panics(
            first in 0u8..=255,
            rest in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        ) {
            let now = Instant::now();
            let mut session = RtpSession::new(1, 0, 0, 0, 8000, now);
            let mut data = vec![0x80 | (first & 0x3F), first & 0x7F];
            data.extend_from_slice(&rest);
            let before = session.stats();
            let taken = session.receive(&data, now).is_ok();
            let _ = session.receive_rtcp(&data, now);
            let after = session.stats();
            proptest::prop_assert_eq!(
                after.packets_received + after.packets_invalid
                    - before.packets_received - before.packets_invalid >= 1,
                true
            );
            proptest::prop_assert_eq!(taken, after.packets_received == 1);
        }
    }
}
