//! `kiosk-gateway dial`: what the command line gives, and what it prints.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use super::dial::{DialFailure, DialOptions, dial};
use super::dialog::{Credentials, Timers};
use crate::audio::AudioSettings;

/// The `dial` command line, parsed.
pub struct DialArgs {
    /// `sip:user@host[:port]`, or the same without `sip:`.
    pub target: String,
    /// The WAV file sent, in real time.
    pub input: PathBuf,
    /// Where the peer's audio is written as WAV; `None`: nowhere.
    pub output: Option<PathBuf>,
    /// Length of the call from the answer; `None`: the input and 1 s.
    pub seconds: Option<f64>,
    /// How long to wait for an answer.
    pub answer_timeout: Duration,
    /// Hang up after this long without RTP from the peer.
    pub media_timeout: Duration,
    /// Tries again this many times after 480 or 503.
    pub retries: u32,
    /// Local IP address; `None`: the one routed to the peer.
    pub bind: Option<IpAddr>,
    /// Digest user name, used if the peer asks.
    pub user: Option<String>,
    /// Digest password.
    pub password: Option<SecretString>,
    /// Opus and resampling settings, from the configuration.
    pub audio: AudioSettings,
    /// Print the summary as JSON.
    pub json: bool,
}

/// Why `dial` failed.
#[derive(Debug, thiserror::Error)]
pub enum DialCliError {
    /// The call failed.
    #[error(transparent)]
    Dial(#[from] DialFailure),
    /// `--seconds` is not a usable length.
    #[error("--seconds must be a positive number of seconds, got {0}")]
    Seconds(f64),
    /// The summary cannot be written as JSON.
    #[error("cannot write JSON")]
    Json(#[from] serde_json::Error),
}

/// Runs the call and returns the summary to print.
pub async fn run(args: DialArgs) -> Result<String, DialCliError> {
    let duration = match args.seconds {
        Some(s) if s.is_finite() && s > 0.0 && s < 86_400.0 => Some(Duration::from_secs_f64(s)),
        Some(s) => return Err(DialCliError::Seconds(s)),
        None => None,
    };
    let credentials = match (args.user, args.password) {
        (Some(user), Some(password)) => Some(Credentials { user, password }),
        (Some(user), None) => Some(Credentials {
            user,
            password: SecretString::from(String::new()),
        }),
        (None, _) => None,
    };
    let summary = dial(DialOptions {
        target: args.target,
        input: args.input,
        output: args.output,
        duration,
        tail: Duration::from_secs(1),
        answer_timeout: args.answer_timeout,
        media_timeout: args.media_timeout,
        retries: args.retries,
        max_retry_wait: Duration::from_secs(10),
        bind: args.bind,
        credentials,
        audio: args.audio,
        timers: Timers::default(),
    })
    .await?;
    Ok(if args.json {
        serde_json::to_string_pretty(&summary)?
    } else {
        let r = &summary.rtp;
        format!(
            "answered in {} ms ({} attempt{}), codec {} (pt {}), remote RTP {}{}\n\
             call {} ms, ended by {}{}\n\
             RTP sent {} packets, received {}, lost {}, reordered {}, invalid {}, foreign {}; \
             jitter {:.1} ms; gaps {} (longest {} ms)\n\
             RTCP sent {}, received {}; SIP datagrams ignored {}",
            summary.invite_to_answer_ms,
            summary.attempts,
            if summary.attempts == 1 { "" } else { "s" },
            summary.codec.name(),
            summary.payload_type,
            summary.remote_rtp,
            if summary.rtcp_mux { " (rtcp-mux)" } else { "" },
            summary.call_ms,
            summary.ended_by,
            if summary.bye_sent { ", BYE sent" } else { "" },
            r.packets_sent,
            r.packets_received,
            r.packets_lost,
            r.packets_reordered,
            r.packets_invalid,
            r.packets_foreign,
            r.jitter_ms,
            r.gaps,
            r.longest_gap_ms,
            r.rtcp_sent,
            r.rtcp_received,
            summary.sip_ignored,
        )
    })
}
