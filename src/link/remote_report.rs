//! What the agent says of the audio we send: the reception report blocks
//! about our SSRC in its RTCP receiver *and* sender reports. webrtc-rs
//! reads only stand-alone receiver reports, and without a round-trip time;
//! an agent that also sends audio (Pipecat, through aiortc) puts its
//! blocks in its sender reports, so without this the loss it reports
//! never reaches the statistics.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rtc::interceptor::{Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::reception_report::ReceptionReport;
use rtc::rtcp::sender_report::SenderReport;
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

/// The agent's latest report on our audio.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct RemoteReport {
    /// Share of our packets lost since its previous report (0 to 1).
    pub fraction_lost: f64,
    /// Our packets it lost since the call began (negative with duplicates).
    pub cumulative_lost: i64,
    /// Its interarrival jitter of our audio, in RTP timestamp units.
    pub jitter: u32,
    /// From LSR and DLSR, when it had had one of our sender reports.
    pub rtt_ms: Option<f64>,
    /// Reports read so far.
    pub reports: u64,
}

/// The latest [`RemoteReport`], shared between the interceptor that reads
/// it and the link's statistics.
#[derive(Default)]
pub(crate) struct RemoteReports(Mutex<Option<RemoteReport>>);

impl RemoteReports {
    /// The latest report, if any came.
    pub fn latest(&self) -> Option<RemoteReport> {
        *self.0.lock().expect("report lock")
    }

    fn update(&self, block: &ReceptionReport, arrival_ntp: u64) {
        let mut latest = self.0.lock().expect("report lock");
        let reports = latest.map_or(0, |r| r.reports) + 1;
        *latest = Some(RemoteReport {
            fraction_lost: f64::from(block.fraction_lost) / 256.0,
            cumulative_lost: cumulative_lost(block.total_lost),
            jitter: block.jitter,
            rtt_ms: rtt(block, arrival_ntp).map(|d| d.as_secs_f64() * 1000.0),
            reports,
        });
    }
}

/// The 24-bit signed cumulative loss of a report block.
fn cumulative_lost(field: u32) -> i64 {
    let field = i64::from(field & 0x00ff_ffff);
    if field & 0x0080_0000 != 0 {
        field - 0x0100_0000
    } else {
        field
    }
}

/// Round-trip time (RFC 3550 section 6.4.1): arrival less the time our
/// sender report left (LSR) less how long the agent held it (DLSR), all in
/// the middle 32 bits of NTP time (1/65536 s). `None` until the agent has
/// had a sender report, or when the clocks make no sense.
fn rtt(block: &ReceptionReport, arrival_ntp: u64) -> Option<Duration> {
    if block.last_sender_report == 0 {
        return None;
    }
    let arrival = (arrival_ntp >> 16) as u32;
    let units = arrival
        .wrapping_sub(block.last_sender_report)
        .wrapping_sub(block.delay);
    // More than a minute is a wrapped subtraction, not a round trip.
    (units < 60 << 16).then(|| Duration::from_secs_f64(f64::from(units) / 65_536.0))
}

/// Wall-clock time in NTP format, as our sender reports carry it.
fn ntp_now() -> u64 {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rtc::shared::time::SystemInstant::unix2ntp(unix)
}

/// Reads the report blocks about `ssrc` in inbound RTCP into
/// [`RemoteReports`]; passes every packet on unchanged.
pub(crate) struct ReportReader {
    ssrc: u32,
    reports: Arc<RemoteReports>,
    read: VecDeque<TaggedPacket>,
    write: VecDeque<TaggedPacket>,
}

impl ReportReader {
    /// A reader of the blocks about our sender `ssrc`.
    pub fn new(ssrc: u32, reports: Arc<RemoteReports>) -> Self {
        Self {
            ssrc,
            reports,
            read: VecDeque::new(),
            write: VecDeque::new(),
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for ReportReader {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(packets) = &msg.message.packet {
            let arrival = ntp_now();
            for packet in packets {
                let any = packet.as_any();
                let blocks = if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                    &rr.reports
                } else if let Some(sr) = any.downcast_ref::<SenderReport>() {
                    &sr.reports
                } else {
                    continue;
                };
                for block in blocks.iter().filter(|b| b.ssrc == self.ssrc) {
                    self.reports.update(block, arrival);
                }
            }
        }
        self.read.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<Self::Rout> {
        self.read.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<Self::Wout> {
        self.write.pop_front()
    }
}

impl Interceptor for ReportReader {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cumulative_loss_is_24_bit_signed() {
        assert_eq!(cumulative_lost(5), 5);
        assert_eq!(cumulative_lost(0x00ff_ffff), -1);
        assert_eq!(cumulative_lost(0x007f_ffff), 0x007f_ffff);
    }

    #[test]
    fn rtt_is_arrival_less_lsr_less_dlsr() {
        let block = ReceptionReport {
            last_sender_report: 0x1234_0000,
            // Held for half a second.
            delay: 0x8000,
            ..ReceptionReport::default()
        };
        // Arrived 0.6 s after our report left.
        let arrival = (0x1234_0000u64 + 0x8000 + 6554) << 16;
        let rtt = rtt(&block, arrival).unwrap();
        assert!((rtt.as_secs_f64() - 0.1).abs() < 0.001, "{rtt:?}");
        let never = ReceptionReport::default();
        assert_eq!(super::rtt(&never, arrival), None);
    }

    #[test]
    fn blocks_about_our_ssrc_in_sender_reports_count() {
        let reports = Arc::new(RemoteReports::default());
        let mut reader = ReportReader::new(7, Arc::clone(&reports));
        let block = |ssrc| ReceptionReport {
            ssrc,
            fraction_lost: 64,
            total_lost: 12,
            jitter: 480,
            ..ReceptionReport::default()
        };
        let sr = SenderReport {
            ssrc: 99,
            reports: vec![block(3), block(7)],
            ..SenderReport::default()
        };
        let msg = TaggedPacket {
            now: Instant::now(),
            transport: Default::default(),
            message: Packet::Rtcp(vec![Box::new(sr)]).into(),
        };
        reader.handle_read(msg).unwrap();
        assert!(reader.poll_read().is_some(), "passed on");
        let r = reports.latest().unwrap();
        assert_eq!((r.fraction_lost, r.cumulative_lost), (0.25, 12));
        assert_eq!(r.jitter, 480);
        assert_eq!(r.reports, 1);
    }
}
