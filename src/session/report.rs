//! What a run did, for `demo` and tests: its sessions, state changes and
//! how each session's first packet came to be sent.

use std::time::Instant;

use jiff::Timestamp;

use super::machine::State;
use crate::store::SessionId;

/// One state change, for `demo` and tests.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Transition {
    /// When the machine entered the state.
    pub at: Timestamp,
    /// The state entered.
    pub state: State,
}

/// What a run did, for `demo` and tests.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    /// Sessions started, in order.
    pub sessions: Vec<SessionId>,
    /// Every state change.
    pub transitions: Vec<Transition>,
    /// Utterances sent to the agent.
    pub utterances: u64,
    /// Milliseconds of speech sent to the agent.
    pub speech_ms_sent: u64,
    /// How each session's first packet came to be sent.
    pub startups: Vec<Startup>,
}

/// From the speech onset that starts a session to its first packet handed
/// to the link, in consecutive stages that add up to the whole. Only
/// `release_ms` is the gateway's alone; the others wait on the cloud.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Startup {
    /// Onset to the room and agent being provisioned.
    pub provisioning_ms: u64,
    /// Provisioned to the call being up (signalling, ICE, DTLS).
    pub call_setup_ms: u64,
    /// Call up to the agent saying `bot-ready` (or the ready timeout).
    pub agent_ready_ms: u64,
    /// Agent ready to the first buffered packet handed to the link.
    pub release_ms: u64,
    /// The whole: the sum of the stages.
    pub onset_to_first_packet_ms: u64,
}

/// When a starting session passed each stage (see [`Startup`]).
#[derive(Debug, Default)]
pub(super) struct Milestones {
    pub provisioned: Option<Instant>,
    pub connected: Option<Instant>,
    pub ready: Option<Instant>,
}

impl Milestones {
    pub fn startup(&self, onset: Instant, first_packet: Instant) -> Startup {
        let ms = |from: Instant, to: Option<Instant>| {
            to.map_or(0, |t| t.saturating_duration_since(from).as_millis() as u64)
        };
        let provisioned = self.provisioned.unwrap_or(onset);
        let connected = self.connected.unwrap_or(provisioned);
        let ready = self.ready.unwrap_or(connected);
        Startup {
            provisioning_ms: ms(onset, self.provisioned),
            call_setup_ms: ms(provisioned, self.connected),
            agent_ready_ms: ms(connected, self.ready),
            release_ms: ms(ready, Some(first_packet)),
            onset_to_first_packet_ms: ms(onset, Some(first_packet)),
        }
    }
}
