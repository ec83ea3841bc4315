//! kiosk-gateway: bridges a voice kiosk's microphone and speaker to a cloud
//! voice agent over WebRTC. See DESIGN.md for the shared picture.

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
pub mod sip;
pub mod status;
pub mod store;
pub mod sync;
pub mod systemd;
pub mod telemetry;
pub mod watchdog;
