//! kiosk-gateway: bridges a voice kiosk's microphone and speaker to a cloud
//! voice agent over WebRTC. See DESIGN.md for the shared picture.

mod agent;
pub mod audio;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod daily;
pub mod demo;
pub mod health;
pub mod http_body;
pub mod link;
pub mod liveness;
pub mod reachability;
pub mod session;
pub mod status;
pub mod store;
pub mod sync;
pub mod systemd;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod watchdog;
