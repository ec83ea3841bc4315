//! kiosk-gateway: bridges a voice kiosk's microphone and speaker to a cloud
//! voice agent over WebRTC. See DESIGN.md for the shared picture.

pub mod daily;
pub mod link;
pub mod session;
