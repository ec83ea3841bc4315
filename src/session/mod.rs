//! The kiosk loop: a pure state machine (`machine`) and the orchestrator
//! that wires audio, link, cloud provisioning and the store around it.

pub mod machine;

pub use machine::{Action, EndReason, Event, Machine, State};
