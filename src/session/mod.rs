//! The kiosk loop: a sans-I/O state machine (`machine`) holding every
//! rule, timer and backoff (`backoff`), cloud provisioning (`provision`),
//! the queue of store writes (`spool`) and its I/O (`persist`), what a run
//! did (`report`), and the orchestrator that wires audio, link and store
//! around them.

mod backoff;
pub mod machine;
pub mod orchestrator;
mod persist;
pub mod provision;
mod report;
mod spool;

pub use machine::{Action, EndReason, Event, Machine, State, Timer, Timing};
