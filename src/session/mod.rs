//! The kiosk loop: a pure state machine (`machine`), cloud provisioning
//! (`provision`), and the orchestrator that wires audio, link and store
//! around them.

mod backoff;
pub mod machine;
pub mod orchestrator;
pub mod provision;
mod spool;

pub use machine::{Action, EndReason, Event, Machine, State};
