//! What integration tests use of the product beyond its public API (the
//! `testkit` feature, which `cargo test` turns on): the built-in loopback
//! agent with its test tools, and its 16-bit PCM helpers.

pub use crate::agent::{AgentError, AgentRecord, CloudRequest, LoopbackAgent, LoopbackAgentConfig};

/// A lossy, jittery network for the loopback agent's relay, or in front
/// of another agent through [`NetworkProxy`](network::NetworkProxy).
pub mod network {
    pub use crate::agent::netsim::{
        Bursts, Deliveries, NetworkCounts, NetworkModel, NetworkProfile,
    };
    pub use crate::agent::proxy::NetworkProxy;
    pub use crate::agent::relay::{RelayCounts, RtpTally};
}

/// 48 kHz mono 16-bit audio, as the loopback agent hears and speaks it.
pub mod media {
    pub use crate::agent::media::{Decoder, read_wav};
    pub use crate::agent::voice::{Encoder, FRAME_DURATION, FRAME_SAMPLES};
}
