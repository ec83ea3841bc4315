//! An interceptor that only keeps call set-up moving.
//!
//! rtc 0.21 queues what a state change sends (the SCTP INIT once DTLS is
//! up, the data channel's open message once SCTP is) until its next timer
//! fires, and after ICE has connected that timer is the 200 ms ICE tick:
//! each step of set-up waited up to 200 ms for it. While a call is being set
//! up this asks for a timer every few milliseconds, which sends what is
//! queued; from the first RTP packet either way (or a short while after
//! DTLS, whichever comes first) it asks for none and costs nothing.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rtc::interceptor::{Interceptor, Packet, StreamInfo, TaggedPacket};
use rtc::sansio::Protocol;
use rtc::shared::error::Error;

/// How soon a queued set-up message leaves.
const TICK: Duration = Duration::from_millis(5);
/// Set-up is over by then in any call that works.
const LIMIT: Duration = Duration::from_secs(5);

/// See the module documentation. Packets pass through untouched.
#[derive(Default)]
pub(crate) struct SetupFlush {
    /// When ticking began (the rtc core asks only once DTLS is up).
    since: Option<Instant>,
    next: Option<Instant>,
    done: bool,
    reads: VecDeque<TaggedPacket>,
    writes: VecDeque<TaggedPacket>,
}

impl SetupFlush {
    fn saw(&mut self, packet: &TaggedPacket) {
        if matches!(packet.message.packet, Packet::Rtp(_)) {
            self.done = true;
        }
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for SetupFlush {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = Error;
    type Time = Instant;

    fn handle_read(&mut self, msg: TaggedPacket) -> Result<(), Error> {
        self.saw(&msg);
        self.reads.push_back(msg);
        Ok(())
    }

    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.reads.pop_front()
    }

    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Error> {
        self.saw(&msg);
        self.writes.push_back(msg);
        Ok(())
    }

    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.writes.pop_front()
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), Error> {
        let since = *self.since.get_or_insert(now);
        if now.saturating_duration_since(since) >= LIMIT {
            self.done = true;
        }
        if self.next.is_none_or(|next| now >= next) {
            self.next = Some(now + TICK);
        }
        Ok(())
    }

    fn poll_timeout(&mut self) -> Option<Instant> {
        if self.done {
            return None;
        }
        // The first ask (right after DTLS) is answered at once.
        Some(*self.next.get_or_insert_with(Instant::now))
    }
}

impl Interceptor for SetupFlush {
    fn bind_local_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _info: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _info: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _info: &StreamInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::interceptor::AttributedPacket;
    use rtc::shared::TransportContext;

    fn packet(packet: Packet) -> TaggedPacket {
        TaggedPacket {
            now: Instant::now(),
            transport: TransportContext::default(),
            message: AttributedPacket::new(packet),
        }
    }

    #[test]
    fn ticks_until_the_first_rtp_packet_and_passes_packets_through() {
        let mut flush = SetupFlush::default();
        let first = flush.poll_timeout().expect("a timer while setting up");
        flush.handle_timeout(first).unwrap();
        assert_eq!(flush.poll_timeout(), Some(first + TICK));
        // RTCP is not media: still setting up.
        flush.handle_read(packet(Packet::Rtcp(vec![]))).unwrap();
        assert!(flush.poll_timeout().is_some());
        assert!(flush.poll_read().is_some());
        flush
            .handle_write(packet(Packet::Rtp(rtc::rtp::Packet::default())))
            .unwrap();
        assert_eq!(flush.poll_timeout(), None);
        assert!(flush.poll_write().is_some());
    }

    #[test]
    fn gives_up_ticking_after_the_limit() {
        let mut flush = SetupFlush::default();
        let start = flush.poll_timeout().unwrap();
        flush.handle_timeout(start).unwrap();
        flush.handle_timeout(start + LIMIT).unwrap();
        assert_eq!(flush.poll_timeout(), None);
    }
}
