//! The SIP dial-in leg: a user agent that calls one SIP URI (a Daily
//! room's dial-in endpoint, or any SIP peer) and carries the kiosk's audio
//! over RTP on one symmetric UDP socket.
//!
//! `dialog::Dialer` is the signalling, a state machine without I/O;
//! `rtp::RtpSession` is RTP and RTCP without sockets; `dial::dial` drives
//! both on tokio for the technician's `dial` command. Like `link`, this module
//! is a transport: Opus, WAV and resampling come from `audio`.

pub mod cli;
mod dial;
mod dialog;
mod g711;
pub mod leg;
mod media;
mod message;
mod net;
mod rtp;
mod sdp;

pub use sdp::OFFERED_PTIME;
