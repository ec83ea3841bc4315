//! `kiosk-gateway dial`: what the command line gives, and what it prints.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

use super::dial::{DialFailure, DialOptions, dial};
use super::dialog::{Credentials, Timers};
use crate::audio::AudioSettings;

pub struct DialArgs {
    pub target: String,
    pub input: PathBuf,
    pub output: Option<PathBuf>,
    pub seconds: Option<f64>,
    pub answer_timeout: Duration,
    pub media_timeout: Duration,
    pub retries: u32,
    pub bind: Option<IpAddr>,
    pub user: Option<String>,
    pub password: Option<SecretString>,
    pub audio: AudioSettings,
    pub json: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DialCliError {
    #[error(transparent)]
    Dial(#[from] DialFailure),
    #[error("--seconds must be a positive number of seconds, got {0}")]
    Seconds(f64),
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
