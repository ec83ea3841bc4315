//! Each audio packet sent twice while the path to the agent may lose them.
//!
//! A stock Pipecat bot receives through aiortc, which negotiates neither
//! RED nor NACK for audio and never decodes Opus in-band FEC; worse, its
//! 16-packet jitter buffer throws away the packets queued before a hole
//! (about four per lost packet). A copy of the packet, sent again a few
//! packets later, fills the hole before that happens; when the original
//! did arrive, the copy fails the agent's SRTP replay check and costs it
//! nothing. Each copy rides in the same wake-up as a new packet: a second
//! encrypt and send, and 24 kbit/s more on the wire.
//!
//! A call starts with copies on: the visitor's first words, buffered while
//! the call was set up, leave in a burst before the agent has reported
//! anything. Any loss the agent reports while they are on (a packet lost
//! twice: the path loses far more) keeps them on to the end of the call;
//! three reports without loss turn them off, and reported loss of 1% or
//! more brings them back for good.

use std::collections::VecDeque;

use rtc::rtp::Packet;

use super::remote_report::RemoteReport;

/// How many packets later a copy follows its original: 60 ms, longer than
/// the mean burst of lobby Wi-Fi loss (a burst that takes the original
/// would take a copy right behind it), and well inside the 15 packets
/// aiortc waits for a missing one.
const LAG: usize = 3;

/// Loss that brings the copies back once they are off: this many of our
/// packets reported lost, and at least [`MIN_LOSS`] of all we sent. One
/// packet lost in a minute is not worth doubling the stream for.
const MIN_LOST: i64 = 3;
const MIN_LOSS: f64 = 0.01;

/// Reports without a lost packet that show a clean path (aiortc reports
/// every 0.5 to 1.5 s).
const CLEAN_REPORTS: u64 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// From the first packet until the agent's reports tell.
    Start,
    /// The agent lost our packets: copies to the end of the call.
    Lossy,
    /// A clean path so far: no copies.
    Off,
}

/// What the agent's latest report changed.
#[derive(Debug, PartialEq)]
pub(super) enum Change {
    /// Copies on for the rest of the call; the share of our packets the
    /// agent had lost.
    Lossy(f64),
    /// The path is clean: copies off.
    Clean,
}

/// Whether copies are sent, and the packets still due one.
pub(super) struct Redundancy {
    mode: Mode,
    /// The last [`LAG`] packets sent, oldest first, while copies are on.
    recent: VecDeque<Packet>,
}

impl Default for Redundancy {
    fn default() -> Self {
        Self {
            mode: Mode::Start,
            recent: VecDeque::with_capacity(LAG + 1),
        }
    }
}

impl Redundancy {
    /// Whether the agent's reports showed loss: copies to the end of the
    /// call, and no report can change that.
    pub(super) fn lossy(&self) -> bool {
        self.mode == Mode::Lossy
    }

    /// Reads the agent's latest `report` on the `sent` packets of the call.
    pub(super) fn consider(&mut self, report: &RemoteReport, sent: u64) -> Option<Change> {
        let share = report.cumulative_lost as f64 / sent.max(1) as f64;
        let lossy = match self.mode {
            Mode::Lossy => return None,
            // With the copies on, a packet lost is one lost twice: the
            // path loses far more than the agent reports.
            Mode::Start => report.cumulative_lost > 0,
            Mode::Off => report.cumulative_lost >= MIN_LOST && share >= MIN_LOSS,
        };
        if lossy {
            self.mode = Mode::Lossy;
            Some(Change::Lossy(share))
        } else if self.mode == Mode::Start && report.reports >= CLEAN_REPORTS {
            self.mode = Mode::Off;
            self.recent.clear();
            Some(Change::Clean)
        } else {
            None
        }
    }

    /// The copy to send along with `packet`: the packet sent [`LAG`]
    /// packets before it, while copies are on.
    pub(super) fn copy_along(&mut self, packet: &Packet) -> Option<Packet> {
        if self.mode == Mode::Off {
            return None;
        }
        self.recent.push_back(packet.clone());
        (self.recent.len() > LAG)
            .then(|| self.recent.pop_front())
            .flatten()
    }

    /// A new peer connection: its stream starts over, so nothing sent on
    /// the old one is copied onto it, and what was buffered while it was
    /// set up leaves in a burst again. A path found lossy stays lossy.
    pub(super) fn restart(&mut self) {
        self.recent.clear();
        if self.mode == Mode::Off {
            self.mode = Mode::Start;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u16) -> Packet {
        let mut p = Packet::default();
        p.header.sequence_number = seq;
        p
    }

    fn report(reports: u64, lost: i64) -> RemoteReport {
        RemoteReport {
            cumulative_lost: lost,
            reports,
            ..RemoteReport::default()
        }
    }

    fn copies(r: &mut Redundancy, seqs: std::ops::Range<u16>) -> Vec<Option<u16>> {
        seqs.map(|s| r.copy_along(&packet(s)).map(|p| p.header.sequence_number))
            .collect()
    }

    #[test]
    fn a_call_starts_with_each_packet_sent_again_three_packets_later() {
        let mut r = Redundancy::default();
        assert_eq!(
            copies(&mut r, 10..16),
            [None, None, None, Some(10), Some(11), Some(12)]
        );
    }

    #[test]
    fn copies_stop_once_the_agent_reports_a_clean_path() {
        let mut r = Redundancy::default();
        assert_eq!(r.consider(&report(2, 0), 100), None, "too soon to tell");
        assert_eq!(r.consider(&report(3, 0), 150), Some(Change::Clean));
        assert!(copies(&mut r, 0..10).iter().all(Option::is_none));
        assert_eq!(
            r.consider(&report(9, 2), 500),
            None,
            "two packets are not a trend"
        );
        assert_eq!(
            r.consider(&report(9, 4), 1000),
            None,
            "0.4% is not worth it"
        );
        assert!(copies(&mut r, 10..20).iter().all(Option::is_none));
    }

    #[test]
    fn reported_loss_brings_copies_back_for_the_rest_of_the_call() {
        let mut r = Redundancy::default();
        r.consider(&report(3, 0), 150);
        assert_eq!(r.consider(&report(5, 5), 250), Some(Change::Lossy(0.02)));
        assert!(r.lossy());
        assert_eq!(copies(&mut r, 0..4), [None, None, None, Some(0)]);
        assert_eq!(r.consider(&report(20, 5), 2000), None, "stays on");
        assert_eq!(copies(&mut r, 4..5), [Some(1)]);
    }

    #[test]
    fn any_loss_while_starting_keeps_the_copies_on() {
        let mut r = Redundancy::default();
        assert_eq!(r.consider(&report(1, 0), 50), None);
        assert_eq!(r.consider(&report(2, 1), 100), Some(Change::Lossy(0.01)));
        assert_eq!(r.consider(&report(5, 1), 300), None);
        assert_eq!(copies(&mut r, 0..4), [None, None, None, Some(0)]);
    }

    #[test]
    fn a_new_peer_connection_copies_only_its_own_packets_and_starts_over() {
        let mut r = Redundancy::default();
        r.consider(&report(3, 0), 150);
        r.restart();
        assert_eq!(copies(&mut r, 100..104), [None, None, None, Some(100)]);
        r.consider(&report(1, 10), 100);
        copies(&mut r, 104..110);
        r.restart();
        assert!(
            r.copy_along(&packet(200)).is_none(),
            "nothing of the old stream"
        );
        assert!(r.lossy(), "a lossy path stays lossy");
    }
}
