//! The SIP dial-in leg: a user agent that calls one SIP URI (a Daily
//! room's dial-in endpoint, or any SIP peer) and carries the kiosk's audio
//! over RTP on one symmetric UDP socket.
//!
//! [`Dialer`] is the signalling, a state machine without I/O;
//! [`RtpSession`] is RTP and RTCP without sockets; [`dial`] drives both
//! on tokio for the technician's `dial` command. Like `link`, this module
//! is a transport: Opus, WAV and resampling come from `audio`.

pub mod cli;
mod dial;
mod dialog;
mod g711;
mod media;
mod message;
mod rtp;
mod sdp;

pub use dial::{DialFailure, DialOptions, DialSummary, EndedBy, dial};
pub use dialog::{
    CallFailure, Credentials, DialConfig, DialError, DialEvent, Dialer, Hangup, Timers,
};
pub use message::{MAX_MESSAGE, MessageError};
pub use rtp::{RtpSession, RtpStats};
pub use sdp::{Codec, RemoteMedia, SdpError};
