//! What passes between the running gateway and the status server: the state
//! the session loop and the daemon publish (a `watch` of [`Published`]) and
//! the commands technicians send back ([`Command`]). Neither side depends
//! on the other, only on this.

use std::path::PathBuf;

use jiff::Timestamp;
use serde::Serialize;

use crate::health::{Component, ErrorNote};
use crate::link::LinkStats;

/// What the rest of the gateway publishes for the status server.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// The session state's name (`idle`, `listening`, ...).
    pub state: &'static str,
    pub session: Option<CurrentSession>,
    /// Health of the parts a technician can act on (devices, link, cloud).
    pub components: Vec<Component>,
    pub last_error: Option<ErrorNote>,
    /// Where a damaged database was moved at start-up.
    pub store_recovered_from: Option<PathBuf>,
    /// The current call's statistics, or the last call's once it ended.
    pub link: Option<LinkView>,
}

/// Call quality as a technician reads it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LinkView {
    /// A call is open now; false for the last call's final figures.
    pub live: bool,
    pub updated_at: Option<Timestamp>,
    pub rtt_ms: Option<f64>,
    pub jitter_ms: Option<f64>,
    /// Packets we sent that the agent reported lost.
    pub loss_out_percent: f64,
    /// Packets from the agent that never arrived.
    pub loss_in_percent: f64,
    /// Packets sent twice, the copy 60 ms after the first: a call starts
    /// so, and does so to its end once the agent reports loss; so
    /// `loss_out_percent` is what the agent still missed.
    pub copies_sent: u64,
    /// The agent reported loss: every packet goes out twice to the end of
    /// the call.
    pub sending_twice: bool,
    /// Loss out over the agent's latest report interval, once it reported.
    pub loss_out_recent_percent: Option<f64>,
    /// The agent's interarrival jitter of our audio, once it reported.
    pub agent_jitter_ms: Option<f64>,
    pub send_kbps: f64,
    pub recv_kbps: f64,
    /// 25 while a call is live (50 with 20 ms packets): the agent hears every
    /// packet, silences included.
    pub send_packets_per_second: f64,
    pub restarts: u64,
}

impl LinkView {
    pub fn from_stats(s: &LinkStats, live: bool) -> Self {
        let percent = |lost: i64, total: u64| {
            let lost = lost.max(0) as f64;
            if lost + total as f64 > 0.0 {
                100.0 * lost / (lost + total as f64)
            } else {
                0.0
            }
        };
        Self {
            live,
            updated_at: Some(Timestamp::now()),
            rtt_ms: s.rtt_ms,
            jitter_ms: s.jitter_ms,
            // The agent's count of lost packets is against what it got,
            // which is what we sent less what it lost.
            loss_out_percent: percent(
                s.packets_lost_remote,
                s.packets_sent
                    .saturating_sub(s.packets_lost_remote.max(0) as u64),
            ),
            loss_in_percent: percent(s.packets_lost_local, s.packets_received),
            copies_sent: s.copies_sent,
            sending_twice: s.sending_twice,
            loss_out_recent_percent: s.loss_out_recent.map(|f| 100.0 * f),
            agent_jitter_ms: s.remote_jitter_ms,
            send_kbps: s.send_bitrate_bps as f64 / 1000.0,
            recv_kbps: s.recv_bitrate_bps as f64 / 1000.0,
            send_packets_per_second: s.send_packet_rate,
            restarts: s.restarts,
        }
    }
}

/// The session in progress; its lines are shown to technicians only.
#[derive(Debug, Clone, Serialize)]
pub struct CurrentSession {
    pub id: String,
    pub started_at: Timestamp,
    pub lines: Vec<Line>,
    /// The visitor's words as recognised so far, not yet final.
    pub partial: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub role: &'static str,
    pub text: String,
}

/// A technician's request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Start,
    Stop,
}
