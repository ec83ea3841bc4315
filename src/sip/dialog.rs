//! The user agent's one outgoing call, as a state machine without I/O: fed
//! datagrams and instants, it yields datagrams to send (all to the peer's
//! SIP address, which the driver knows), events, and the next instant it
//! wants to be woken at.
//!
//! It covers what a dial-in leg meets: the INVITE client transaction over
//! UDP (retransmissions, provisional responses, CANCEL when the answer
//! takes too long), digest authentication on 401/407, ACK for every final
//! answer, BYE in both directions, re-INVITE and UPDATE from the peer
//! (answered with our same SDP), session timers (RFC 4028: we refresh when
//! the answer makes us the refresher, and hang up when a peer that should
//! refresh does not), and a typed failure for every final error.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use ezk_sip_auth::{
    ClientAuthenticator, DigestAuthenticator, DigestCredentials, DigestUser, RequestParts,
    ResponseParts,
};
use ezk_sip_types::header::typed::{Contact, Refresher, RetryAfter, SessionExpires};
use ezk_sip_types::msg::{MessageLine, RequestLine};
use ezk_sip_types::print::AppendCtx;
use ezk_sip_types::uri::SipUri;
use ezk_sip_types::{Method, Name};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use super::message::{Datagram, MessageError, Outgoing, SipMessage, reason_phrase};
use super::sdp::{self, Codecs, RemoteMedia, SdpError};

/// RFC 3261 timers; the defaults are the RFC's.
#[derive(Clone, Copy, Debug)]
pub struct Timers {
    /// Round-trip estimate: the first retransmission interval.
    pub t1: Duration,
    /// Longest retransmission interval for non-INVITE requests.
    pub t2: Duration,
    /// How long a transaction waits for a final answer (64 × T1).
    pub transaction: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            transaction: Duration::from_secs(32),
        }
    }
}

/// Digest credentials, used only when the peer challenges.
#[derive(Clone)]
pub struct Credentials {
    /// The digest user name.
    pub user: String,
    /// Its password; never logged.
    pub password: SecretString,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials {{ user: {:?}, password: [hidden] }}",
            self.user
        )
    }
}

#[derive(Clone, Debug)]
pub struct DialConfig {
    /// The request URI, `sip:user@host[:port]`.
    pub target: String,
    /// Our SIP socket's address, for Via and Contact.
    pub local: SocketAddr,
    /// Our RTP socket's address, for the SDP offer.
    pub media: SocketAddr,
    /// The user part of From and Contact.
    pub from_user: String,
    /// What the SDP offer lists.
    pub codecs: Codecs,
    pub credentials: Option<Credentials>,
    /// From the INVITE to the answer; after it the call is cancelled.
    pub answer_timeout: Duration,
    pub timers: Timers,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DialError {
    #[error("not a SIP URI: {0:?} (expected sip:user@host[:port])")]
    BadUri(String),
}

/// Why a call was not set up; the peer's answer where it gave one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallFailure {
    #[error("{code} busy")]
    Busy { code: u16 },
    #[error("480 temporarily unavailable{}", retry_text(*retry_after))]
    Unavailable { retry_after: Option<Duration> },
    #[error("404 not found: no such SIP URI at the peer")]
    NotFound,
    #[error("503 service unavailable{}", retry_text(*retry_after))]
    ServiceUnavailable { retry_after: Option<Duration> },
    #[error("{code} declined")]
    Declined { code: u16 },
    #[error("{code} authentication required and no credentials given")]
    AuthenticationRequired { code: u16 },
    #[error("{code} authentication refused")]
    AuthenticationFailed { code: u16 },
    #[error("{code} {reason}")]
    Rejected { code: u16, reason: String },
    #[error("no response from the peer")]
    NoResponse,
    #[error("not answered in time{}", if *cancelled { " (cancelled)" } else { "" })]
    NotAnswered { cancelled: bool },
    #[error("unusable SDP answer: {0}")]
    BadAnswer(SdpError),
}

fn retry_text(retry_after: Option<Duration>) -> String {
    retry_after
        .map(|d| format!(", retry after {} s", d.as_secs()))
        .unwrap_or_default()
}

impl CallFailure {
    /// The final status code, when the peer gave one.
    pub fn code(&self) -> Option<u16> {
        match self {
            Self::Busy { code }
            | Self::Declined { code }
            | Self::AuthenticationRequired { code }
            | Self::AuthenticationFailed { code }
            | Self::Rejected { code, .. } => Some(*code),
            Self::Unavailable { .. } => Some(480),
            Self::NotFound => Some(404),
            Self::ServiceUnavailable { .. } => Some(503),
            Self::NoResponse | Self::NotAnswered { .. } | Self::BadAnswer(_) => None,
        }
    }

    /// Whether the peer said to try again later, and when it asked to.
    pub fn retry_after(&self) -> Option<Option<Duration>> {
        match self {
            Self::Unavailable { retry_after } | Self::ServiceUnavailable { retry_after } => {
                Some(*retry_after)
            }
            _ => None,
        }
    }

    fn from_response(code: u16, reason: String, retry_after: Option<Duration>) -> Self {
        match code {
            486 | 600 => Self::Busy { code },
            480 => Self::Unavailable { retry_after },
            404 | 604 => Self::NotFound,
            503 => Self::ServiceUnavailable { retry_after },
            603 => Self::Declined { code },
            401 | 407 => Self::AuthenticationRequired { code },
            _ => Self::Rejected { code, reason },
        }
    }
}

/// Who ended an established call, or how.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Hangup {
    /// We sent BYE.
    Local,
    /// The peer sent BYE.
    Peer,
    /// The peer was to refresh the session and did not (RFC 4028).
    SessionExpired,
    /// A session refresh was answered 481/408: the peer has no such call.
    SessionLost,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DialEvent {
    /// 1xx from the peer.
    Progress { code: u16, reason: String },
    /// 2xx: the call is up.
    Answered {
        media: RemoteMedia,
        /// The refresh interval the answer set, if any.
        session_expires: Option<Duration>,
        /// Whether we are the one who refreshes.
        we_refresh: bool,
    },
    /// The peer moved its media (a re-INVITE or UPDATE with new SDP).
    MediaChanged(RemoteMedia),
    /// The call was not set up.
    Failed(CallFailure),
    /// The call ended: BYE sent (and answered or timed out), or received.
    Ended(Hangup),
}

/// A request we sent, retransmitted until a response (or its deadline).
struct ClientTx {
    branch: String,
    method: Method,
    cseq: u32,
    bytes: Vec<u8>,
    /// Next retransmission, while still retransmitting.
    retransmit: Option<Instant>,
    interval: Duration,
    deadline: Instant,
}

impl ClientTx {
    fn new(
        branch: String,
        method: Method,
        cseq: u32,
        bytes: Vec<u8>,
        now: Instant,
        timers: &Timers,
    ) -> Self {
        Self {
            branch,
            method,
            cseq,
            bytes,
            retransmit: Some(now + timers.t1),
            interval: timers.t1,
            deadline: now + timers.transaction,
        }
    }
}

/// Our 200 OK to a re-INVITE, resent until the peer's ACK.
struct ServerInvite {
    cseq: u32,
    bytes: Vec<u8>,
    retransmit: Instant,
    interval: Duration,
    deadline: Instant,
}

/// What the dialog remembers once established (RFC 3261 section 12).
struct Dialog {
    /// The To header of the 2xx as sent (with the peer's tag).
    to: String,
    remote_tag: String,
    remote_target: String,
    /// Route headers for in-dialog requests: the 2xx's Record-Route, reversed.
    routes: Vec<String>,
    /// Whether the peer accepts UPDATE (else refreshes are re-INVITEs).
    peer_allows_update: bool,
}

/// RFC 4028 state once the answer set an interval.
enum SessionTimer {
    /// We refresh at `at`.
    Refresh { interval: Duration, at: Instant },
    /// The peer refreshes; without one by `at` we hang up.
    Expire { interval: Duration, at: Instant },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Inviting,
    Cancelling,
    Established,
    Ending,
    Done,
}

pub struct Dialer {
    config: DialConfig,
    request_line: RequestLine,
    call_id: String,
    local_tag: String,
    cseq: u32,
    offer: String,
    phase: Phase,
    invite: ClientTx,
    /// The INVITE as last sent, for the digest computation.
    invite_message: Outgoing,
    invite_started: Instant,
    provisional: bool,
    /// Hang up was asked before the peer answered anything: CANCEL on the
    /// first provisional, BYE on a 2xx.
    hangup_wanted: bool,
    auth: Option<DigestAuthenticator>,
    auth_attempts: u32,
    cancel: Option<ClientTx>,
    /// What `cancel` ends in: a timeout or a hang-up.
    cancel_failure: CallFailure,
    dialog: Option<Dialog>,
    /// ACK for the INVITE's 2xx, resent when the 2xx is.
    ack: Option<Vec<u8>>,
    in_dialog: Option<ClientTx>,
    server_invite: Option<ServerInvite>,
    /// Responses already sent, by (branch, CSeq), for retransmitted requests.
    answered: VecDeque<(String, u32, Vec<u8>)>,
    timer: Option<SessionTimer>,
    ended_by: Option<Hangup>,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<DialEvent>,
    /// Datagrams that were not SIP, or were SIP for no transaction of ours.
    ignored: u64,
}

fn random_token() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn branch() -> String {
    // The magic cookie marks an RFC 3261 branch.
    format!("z9hG4bK{}", random_token())
}

impl Dialer {
    /// Builds the INVITE; it is the first datagram [`poll_transmit`](Self::poll_transmit) gives.
    pub fn new(config: DialConfig, now: Instant) -> Result<Self, DialError> {
        let uri = SipUri::from_str(&config.target)
            .map_err(|_| DialError::BadUri(config.target.clone()))?;
        let session_id = rand::random::<u32>();
        let offer = sdp::offer(config.media, u64::from(session_id), 1, config.codecs);
        let call_id = format!("{}@{}", random_token(), config.local.ip());
        let auth = config.credentials.as_ref().map(|c| {
            let mut credentials = DigestCredentials::new();
            credentials.set_default(DigestUser::new(
                c.user.clone(),
                c.password.expose_secret().as_bytes().to_vec(),
            ));
            DigestAuthenticator::new(credentials)
        });
        let mut dialer = Self {
            request_line: RequestLine {
                method: Method::INVITE,
                uri,
            },
            call_id,
            local_tag: random_token(),
            cseq: 0,
            offer,
            phase: Phase::Inviting,
            invite: ClientTx::new(
                String::new(),
                Method::INVITE,
                0,
                Vec::new(),
                now,
                &config.timers,
            ),
            invite_message: Outgoing::request(&Method::INVITE, &config.target),
            invite_started: now,
            provisional: false,
            hangup_wanted: false,
            auth,
            auth_attempts: 0,
            cancel: None,
            cancel_failure: CallFailure::NotAnswered { cancelled: true },
            dialog: None,
            ack: None,
            in_dialog: None,
            server_invite: None,
            answered: VecDeque::new(),
            timer: None,
            ended_by: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            ignored: 0,
            config,
        };
        dialer.send_invite(now);
        Ok(dialer)
    }

    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    pub fn is_established(&self) -> bool {
        self.phase == Phase::Established
    }

    /// Datagrams on the SIP port that were garbage or for nothing of ours.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<DialEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Done {
            return None;
        }
        let mut due: Vec<Instant> = Vec::new();
        if self.phase == Phase::Inviting {
            due.push(self.invite_started + self.config.answer_timeout);
            due.extend(self.invite.retransmit);
            if !self.provisional {
                due.push(self.invite.deadline);
            }
        }
        for tx in [&self.cancel, &self.in_dialog].into_iter().flatten() {
            due.push(tx.deadline);
            due.extend(tx.retransmit);
        }
        if let Some(s) = &self.server_invite {
            due.push(s.retransmit.min(s.deadline));
        }
        match &self.timer {
            Some(SessionTimer::Refresh { at, .. } | SessionTimer::Expire { at, .. })
                if self.phase == Phase::Established =>
            {
                due.push(*at)
            }
            _ => {}
        }
        due.into_iter().min()
    }

    /// Ends the call: BYE once established, CANCEL while it rings.
    pub fn hang_up(&mut self, now: Instant) {
        match self.phase {
            Phase::Established => self.send_bye(Hangup::Local, now),
            Phase::Inviting if self.provisional => {
                self.send_cancel(CallFailure::NotAnswered { cancelled: true }, now)
            }
            Phase::Inviting => self.hangup_wanted = true,
            Phase::Cancelling | Phase::Ending | Phase::Done => {}
        }
    }

    /// A datagram from the peer's SIP address. Garbage is counted and
    /// returned as an error; the call is not affected by it.
    pub fn handle_datagram(&mut self, data: &[u8], now: Instant) -> Result<(), MessageError> {
        let message = match SipMessage::parse(data) {
            Ok(Datagram::Message(m)) => *m,
            Ok(Datagram::KeepAlive) => return Ok(()),
            Err(e) => {
                self.ignored += 1;
                return Err(e);
            }
        };
        let result = match &message.line {
            MessageLine::Response(_) => self.handle_response(&message, now),
            MessageLine::Request(_) => self.handle_request(&message, now),
        };
        if result.is_err() {
            self.ignored += 1;
        }
        result
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let timers = self.config.timers;
        if self.phase == Phase::Inviting {
            if let Some(at) = self.invite.retransmit
                && now >= at
            {
                self.transmits.push_back(self.invite.bytes.clone());
                self.invite.interval *= 2;
                self.invite.retransmit = Some(now + self.invite.interval);
            }
            if now >= self.invite_started + self.config.answer_timeout {
                if self.provisional {
                    self.send_cancel(CallFailure::NotAnswered { cancelled: true }, now);
                } else {
                    self.fail(CallFailure::NoResponse);
                }
            } else if !self.provisional && now >= self.invite.deadline {
                self.fail(CallFailure::NoResponse);
            }
        }
        if let Some(tx) = &mut self.cancel {
            if now >= tx.deadline {
                // No 487 came: the INVITE transaction is given up.
                self.cancel = None;
                let failure = self.cancel_failure.clone();
                self.fail(failure);
            } else {
                retransmit_non_invite(tx, now, &timers, &mut self.transmits);
            }
        }
        if let Some(tx) = &mut self.in_dialog {
            if now >= tx.deadline {
                let method = tx.method.clone();
                self.in_dialog = None;
                if method == Method::BYE {
                    self.finish();
                } else {
                    // A refresh nobody answers: the peer is gone.
                    self.ended_by = Some(Hangup::SessionLost);
                    self.finish();
                }
            } else if tx.method == Method::INVITE {
                if let Some(at) = tx.retransmit
                    && now >= at
                {
                    self.transmits.push_back(tx.bytes.clone());
                    tx.interval *= 2;
                    tx.retransmit = Some(now + tx.interval);
                }
            } else {
                retransmit_non_invite(tx, now, &timers, &mut self.transmits);
            }
        }
        if let Some(s) = &mut self.server_invite {
            if now >= s.deadline {
                self.server_invite = None;
            } else if now >= s.retransmit {
                self.transmits.push_back(s.bytes.clone());
                s.interval = (s.interval * 2).min(timers.t2);
                s.retransmit = now + s.interval;
            }
        }
        if self.phase == Phase::Established {
            match self.timer {
                Some(SessionTimer::Refresh { interval, at }) if now >= at => {
                    self.timer = Some(SessionTimer::Refresh {
                        interval,
                        at: now + interval / 2,
                    });
                    if self.in_dialog.is_none() {
                        self.send_refresh(interval, now);
                    }
                }
                Some(SessionTimer::Expire { at, .. }) if now >= at => {
                    self.send_bye(Hangup::SessionExpired, now);
                }
                _ => {}
            }
        }
    }

    fn fail(&mut self, failure: CallFailure) {
        self.events.push_back(DialEvent::Failed(failure));
        self.phase = Phase::Done;
    }

    fn finish(&mut self) {
        self.phase = Phase::Done;
        self.events
            .push_back(DialEvent::Ended(self.ended_by.unwrap_or(Hangup::Local)));
    }

    // ----- building requests -----

    fn via(&self, branch: &str) -> String {
        format!("SIP/2.0/UDP {};rport;branch={branch}", self.config.local)
    }

    fn from(&self) -> String {
        format!(
            "<sip:{}@{}>;tag={}",
            self.config.from_user,
            self.config.local.ip(),
            self.local_tag
        )
    }

    fn contact(&self) -> String {
        format!("<sip:{}@{}>", self.config.from_user, self.config.local)
    }

    fn common(&self, mut message: Outgoing, branch: &str, cseq: u32, method: &Method) -> Outgoing {
        message = message
            .header(Name::VIA, self.via(branch))
            .header(Name::MAX_FORWARDS, "70");
        message = match &self.dialog {
            Some(d) => message
                .header(Name::FROM, self.from())
                .header(Name::TO, d.to.clone()),
            None => message
                .header(Name::FROM, self.from())
                .header(Name::TO, format!("<{}>", self.config.target)),
        };
        message
            .header(Name::CALL_ID, self.call_id.clone())
            .header(Name::CSEQ, format!("{cseq} {method}"))
    }

    fn send_invite(&mut self, now: Instant) {
        self.cseq += 1;
        let branch = branch();
        let mut message = self
            .common(
                Outgoing::request(&Method::INVITE, &self.config.target),
                &branch,
                self.cseq,
                &Method::INVITE,
            )
            .header(Name::CONTACT, self.contact())
            .header(Name::ALLOW, "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE")
            .header(Name::SUPPORTED, "timer")
            .header(Name::USER_AGENT, user_agent());
        if let Some(auth) = &mut self.auth {
            let mut headers = ezk_sip_types::Headers::new();
            auth.authorize_request(&mut headers);
            for (name, value) in headers.iter() {
                message = message.header(name.clone(), value.as_str());
            }
        }
        let message = message.with_body("application/sdp", self.offer.clone());
        let bytes = message.to_bytes();
        self.transmits.push_back(bytes.clone());
        self.invite = ClientTx::new(
            branch,
            Method::INVITE,
            self.cseq,
            bytes,
            now,
            &self.config.timers,
        );
        self.invite_message = message;
    }

    /// ACK for a non-2xx final answer: part of the INVITE transaction, so
    /// same branch, and the To of the response.
    fn ack_failure(&mut self, response: &SipMessage) {
        let to = response.raw(&Name::TO).unwrap_or_default().to_owned();
        let message = Outgoing::request(&Method::ACK, &self.config.target)
            .header(Name::VIA, self.via(&self.invite.branch))
            .header(Name::MAX_FORWARDS, "70")
            .header(Name::FROM, self.from())
            .header(Name::TO, to)
            .header(Name::CALL_ID, self.call_id.clone())
            .header(Name::CSEQ, format!("{} ACK", self.invite.cseq));
        self.transmits.push_back(message.to_bytes());
    }

    fn in_dialog_request(&self, method: &Method, cseq: u32, branch: &str) -> Outgoing {
        let target = self
            .dialog
            .as_ref()
            .map_or(self.config.target.clone(), |d| d.remote_target.clone());
        let mut message = self.common(Outgoing::request(method, &target), branch, cseq, method);
        if let Some(d) = &self.dialog {
            for route in &d.routes {
                message = message.header(Name::ROUTE, route.clone());
            }
        }
        message
    }

    fn send_cancel(&mut self, failure: CallFailure, now: Instant) {
        // CANCEL copies the INVITE's branch, Request-URI and CSeq number.
        let message = Outgoing::request(&Method::CANCEL, &self.config.target)
            .header(Name::VIA, self.via(&self.invite.branch))
            .header(Name::MAX_FORWARDS, "70")
            .header(Name::FROM, self.from())
            .header(Name::TO, format!("<{}>", self.config.target))
            .header(Name::CALL_ID, self.call_id.clone())
            .header(Name::CSEQ, format!("{} CANCEL", self.invite.cseq));
        let bytes = message.to_bytes();
        self.transmits.push_back(bytes.clone());
        self.cancel = Some(ClientTx::new(
            self.invite.branch.clone(),
            Method::CANCEL,
            self.invite.cseq,
            bytes,
            now,
            &self.config.timers,
        ));
        self.cancel_failure = failure;
        self.invite.retransmit = None;
        self.phase = Phase::Cancelling;
    }

    fn send_bye(&mut self, hangup: Hangup, now: Instant) {
        self.cseq += 1;
        let branch = branch();
        let bytes = self
            .in_dialog_request(&Method::BYE, self.cseq, &branch)
            .header(Name::USER_AGENT, user_agent())
            .to_bytes();
        self.transmits.push_back(bytes.clone());
        self.in_dialog = Some(ClientTx::new(
            branch,
            Method::BYE,
            self.cseq,
            bytes,
            now,
            &self.config.timers,
        ));
        self.server_invite = None;
        self.ended_by = Some(hangup);
        self.phase = Phase::Ending;
    }

    fn send_refresh(&mut self, interval: Duration, now: Instant) {
        let Some(dialog) = &self.dialog else { return };
        let method = if dialog.peer_allows_update {
            Method::UPDATE
        } else {
            Method::INVITE
        };
        self.cseq += 1;
        let branch = branch();
        let mut message = self
            .in_dialog_request(&method, self.cseq, &branch)
            .header(Name::CONTACT, self.contact())
            .header(Name::SUPPORTED, "timer")
            .header(
                Name::SESSION_EXPIRES,
                format!("{};refresher=uac", interval.as_secs()),
            );
        if method == Method::INVITE {
            message = message.with_body("application/sdp", self.offer.clone());
        }
        let bytes = message.to_bytes();
        self.transmits.push_back(bytes.clone());
        self.in_dialog = Some(ClientTx::new(
            branch,
            method,
            self.cseq,
            bytes,
            now,
            &self.config.timers,
        ));
    }

    // ----- responses -----

    fn handle_response(&mut self, response: &SipMessage, now: Instant) -> Result<(), MessageError> {
        let code = response.status().unwrap_or(0);
        let branch = response.branch()?;
        let cseq = response.cseq()?;
        if response.call_id()? != self.call_id {
            return Err(MessageError::Header("Call-ID"));
        }
        if branch == self.invite.branch && cseq.method == Method::INVITE {
            self.invite_response(response, code, now);
        } else if self.cancel.as_ref().is_some_and(|c| c.branch == branch)
            && cseq.method == Method::CANCEL
        {
            if code >= 200 {
                // Only retransmissions stop: the 487 to the INVITE ends it.
                if let Some(c) = &mut self.cancel {
                    c.retransmit = None;
                }
            }
        } else if self
            .in_dialog
            .as_ref()
            .is_some_and(|t| t.branch == branch && t.cseq == cseq.cseq)
        {
            self.in_dialog_response(response, code, now);
        } else {
            return Err(MessageError::Header("Via"));
        }
        Ok(())
    }

    fn invite_response(&mut self, response: &SipMessage, code: u16, now: Instant) {
        match code {
            100..=199 => {
                if matches!(self.phase, Phase::Inviting | Phase::Cancelling) {
                    self.invite.retransmit = None;
                    let first = !self.provisional;
                    self.provisional = true;
                    self.events.push_back(DialEvent::Progress {
                        code,
                        reason: response.reason(),
                    });
                    if first && self.hangup_wanted && self.phase == Phase::Inviting {
                        self.send_cancel(CallFailure::NotAnswered { cancelled: true }, now);
                    }
                }
            }
            200..=299 => match self.phase {
                Phase::Inviting | Phase::Cancelling => self.answered(response, now),
                // A retransmitted 2xx: our ACK was lost.
                _ => {
                    if let Some(ack) = &self.ack {
                        self.transmits.push_back(ack.clone());
                    }
                }
            },
            _ => {
                if !matches!(self.phase, Phase::Inviting | Phase::Cancelling) {
                    return;
                }
                self.ack_failure(response);
                if self.phase == Phase::Cancelling {
                    self.cancel = None;
                    let failure = self.cancel_failure.clone();
                    self.fail(failure);
                    return;
                }
                if matches!(code, 401 | 407) && self.auth.is_some() {
                    if self.auth_attempts >= 2 {
                        self.fail(CallFailure::AuthenticationFailed { code });
                        return;
                    }
                    self.auth_attempts += 1;
                    let headers = self.invite_message.ezk_headers();
                    let body = self.offer.clone();
                    let MessageLine::Response(status) = &response.line else {
                        return;
                    };
                    let accepted = self.auth.as_mut().is_some_and(|auth| {
                        auth.handle_rejection(
                            RequestParts {
                                line: &self.request_line,
                                headers: &headers,
                                body: body.as_bytes(),
                            },
                            ResponseParts {
                                line: status,
                                headers: &response.headers,
                                body: &response.body,
                            },
                        )
                        .is_ok()
                    });
                    if accepted {
                        self.provisional = false;
                        self.send_invite(now);
                    } else {
                        self.fail(CallFailure::AuthenticationFailed { code });
                    }
                    return;
                }
                let retry_after = response
                    .headers
                    .get_named::<RetryAfter>()
                    .ok()
                    .map(|r| Duration::from_secs(u64::from(r.value)));
                self.fail(CallFailure::from_response(
                    code,
                    response.reason(),
                    retry_after,
                ));
            }
        }
    }

    fn answered(&mut self, response: &SipMessage, now: Instant) {
        let was_cancelling = self.phase == Phase::Cancelling;
        let remote_tag = response.to_tag().ok().flatten().unwrap_or_default();
        let remote_target = response
            .headers
            .get_named::<Contact>()
            .ok()
            .map(|c| c.uri.uri.default_print_ctx().to_string())
            .unwrap_or_else(|| self.config.target.clone());
        let mut routes = response.raw_all(&Name::RECORD_ROUTE);
        routes.reverse();
        let peer_allows_update = response
            .raw_all(&Name::ALLOW)
            .iter()
            .any(|m| m.eq_ignore_ascii_case("UPDATE"));
        self.dialog = Some(Dialog {
            to: response.raw(&Name::TO).unwrap_or_default().to_owned(),
            remote_tag,
            remote_target,
            routes,
            peer_allows_update,
        });
        // ACK for a 2xx is its own transaction: a new branch, in the dialog.
        let ack = self
            .in_dialog_request(&Method::ACK, self.invite.cseq, &branch())
            .to_bytes();
        self.transmits.push_back(ack.clone());
        self.ack = Some(ack);
        self.invite.retransmit = None;
        self.cancel = None;
        self.phase = Phase::Established;
        if self.hangup_wanted || was_cancelling {
            // Answered while being cancelled: end it at once.
            self.send_bye(Hangup::Local, now);
            let failure = self.cancel_failure.clone();
            self.events.push_back(DialEvent::Failed(failure));
            return;
        }
        match sdp::parse_remote(&response.body) {
            Ok(media) => {
                let (session_expires, we_refresh) = self.start_session_timer(response, now);
                self.events.push_back(DialEvent::Answered {
                    media,
                    session_expires,
                    we_refresh,
                });
            }
            Err(e) => {
                self.send_bye(Hangup::Local, now);
                self.events
                    .push_back(DialEvent::Failed(CallFailure::BadAnswer(e)));
            }
        }
    }

    fn start_session_timer(
        &mut self,
        response: &SipMessage,
        now: Instant,
    ) -> (Option<Duration>, bool) {
        let Ok(se) = response.headers.get_named::<SessionExpires>() else {
            return (None, false);
        };
        // Below RFC 4028's 90 s minimum is not a session timer to honour.
        let interval = Duration::from_secs(u64::from(se.delta_secs.max(90)));
        // A 2xx without a refresher names none; we asked as UAC, so we do it.
        let we_refresh = se.refresher != Refresher::Uas;
        self.timer = Some(if we_refresh {
            SessionTimer::Refresh {
                interval,
                at: now + interval / 2,
            }
        } else {
            SessionTimer::Expire {
                interval,
                at: now + expiry_margin(interval),
            }
        });
        (Some(interval), we_refresh)
    }

    fn in_dialog_response(&mut self, response: &SipMessage, code: u16, now: Instant) {
        if code < 200 {
            if let Some(tx) = &mut self.in_dialog {
                tx.retransmit = None;
            }
            return;
        }
        let Some(tx) = self.in_dialog.take() else {
            return;
        };
        if tx.method == Method::BYE {
            self.finish();
            return;
        }
        match code {
            200..=299 => {
                if tx.method == Method::INVITE {
                    let ack = self
                        .in_dialog_request(&Method::ACK, tx.cseq, &branch())
                        .to_bytes();
                    self.transmits.push_back(ack);
                }
                if let Ok(se) = response.headers.get_named::<SessionExpires>() {
                    let interval = Duration::from_secs(u64::from(se.delta_secs.max(90)));
                    self.timer = Some(SessionTimer::Refresh {
                        interval,
                        at: now + interval / 2,
                    });
                }
            }
            481 | 408 => {
                self.ended_by = Some(Hangup::SessionLost);
                self.finish();
            }
            _ => {
                if tx.method == Method::INVITE {
                    let ack = self
                        .in_dialog_request(&Method::ACK, tx.cseq, &tx.branch)
                        .to_bytes();
                    self.transmits.push_back(ack);
                }
                // The peer does not take UPDATE: refresh with re-INVITE next time.
                if tx.method == Method::UPDATE
                    && let Some(d) = &mut self.dialog
                {
                    d.peer_allows_update = false;
                }
            }
        }
    }

    // ----- requests from the peer -----

    fn handle_request(&mut self, request: &SipMessage, now: Instant) -> Result<(), MessageError> {
        let method = request.method().cloned().unwrap_or(Method::ACK);
        let cseq = request.cseq()?;
        let branch = request.branch()?;
        let call_id = request.call_id()?;
        if method == Method::ACK {
            if self
                .server_invite
                .as_ref()
                .is_some_and(|s| s.cseq == cseq.cseq)
            {
                self.server_invite = None;
            }
            return Ok(());
        }
        if let Some((_, _, bytes)) = self
            .answered
            .iter()
            .find(|(b, c, _)| *b == branch && *c == cseq.cseq)
        {
            self.transmits.push_back(bytes.clone());
            return Ok(());
        }
        let in_dialog = call_id == self.call_id
            && self.dialog.as_ref().is_some_and(|d| {
                request.sender_tag().ok().flatten().as_deref() == Some(d.remote_tag.as_str())
            });
        if !in_dialog || !matches!(self.phase, Phase::Established | Phase::Ending) {
            self.respond(request, 481, None, Vec::new());
            return Ok(());
        }
        if method == Method::BYE {
            self.respond(request, 200, None, Vec::new());
            self.in_dialog = None;
            self.server_invite = None;
            self.ended_by = Some(Hangup::Peer);
            self.finish();
        } else if method == Method::INVITE || method == Method::UPDATE {
            self.session_refresh(request, &method, cseq.cseq, now);
        } else if method == Method::OPTIONS {
            let headers = vec![(
                Name::ALLOW,
                "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE".to_owned(),
            )];
            self.respond(request, 200, None, headers);
        } else {
            self.respond(request, 501, None, Vec::new());
        }
        Ok(())
    }

    /// A re-INVITE or UPDATE from the peer: a media change, a session
    /// refresh, or both. Answered 200 with our unchanged SDP.
    fn session_refresh(&mut self, request: &SipMessage, method: &Method, cseq: u32, now: Instant) {
        if self.phase != Phase::Established {
            self.respond(request, 481, None, Vec::new());
            return;
        }
        if self.in_dialog.is_some() || self.server_invite.is_some() {
            // RFC 3261 section 14.2: one offer/answer at a time.
            self.respond(request, 491, None, Vec::new());
            return;
        }
        let offered = !request.body.is_empty();
        if offered {
            match sdp::parse_remote(&request.body) {
                Ok(media) => self.events.push_back(DialEvent::MediaChanged(media)),
                Err(_) => {
                    self.respond(request, 488, None, Vec::new());
                    return;
                }
            }
        }
        let mut headers = vec![(Name::CONTACT, self.contact())];
        if let Ok(se) = request.headers.get_named::<SessionExpires>() {
            let interval = Duration::from_secs(u64::from(se.delta_secs.max(90)));
            // Whoever the request names refreshes; the peer by default, as
            // the request's sender.
            let (refresher, timer) = if se.refresher == Refresher::Uas {
                (
                    "uas",
                    SessionTimer::Refresh {
                        interval,
                        at: now + interval / 2,
                    },
                )
            } else {
                (
                    "uac",
                    SessionTimer::Expire {
                        interval,
                        at: now + expiry_margin(interval),
                    },
                )
            };
            self.timer = Some(timer);
            headers.push((Name::REQUIRE, "timer".to_owned()));
            headers.push((
                Name::SESSION_EXPIRES,
                format!("{};refresher={refresher}", interval.as_secs()),
            ));
        } else if let Some(SessionTimer::Expire { interval, .. }) = self.timer {
            self.timer = Some(SessionTimer::Expire {
                interval,
                at: now + expiry_margin(interval),
            });
        }
        // An offer, or a re-INVITE without one (we offer then), gets our SDP.
        let body = (offered || *method == Method::INVITE).then(|| self.offer.clone());
        let bytes = self.respond(request, 200, body, headers);
        if *method == Method::INVITE {
            let t1 = self.config.timers.t1;
            self.server_invite = Some(ServerInvite {
                cseq,
                bytes,
                retransmit: now + t1,
                interval: t1,
                deadline: now + self.config.timers.transaction,
            });
        }
    }

    /// Sends a response to `request` and remembers it for retransmissions.
    fn respond(
        &mut self,
        request: &SipMessage,
        code: u16,
        sdp: Option<String>,
        extra: Vec<(Name, String)>,
    ) -> Vec<u8> {
        let mut message = Outgoing::response(code, reason_phrase(code));
        for via in request.raw_all(&Name::VIA) {
            message = message.header(Name::VIA, via);
        }
        for name in [Name::FROM, Name::TO, Name::CALL_ID, Name::CSEQ] {
            let value = request.raw(&name).unwrap_or_default().to_owned();
            let value = if name == Name::TO && request.to_tag().ok().flatten().is_none() {
                format!("{value};tag={}", self.local_tag)
            } else {
                value
            };
            message = message.header(name, value);
        }
        message = message.header(Name::USER_AGENT, user_agent());
        for (name, value) in extra {
            message = message.header(name, value);
        }
        if let Some(sdp) = sdp {
            message = message.with_body("application/sdp", sdp);
        }
        let bytes = message.to_bytes();
        self.transmits.push_back(bytes.clone());
        if let (Ok(branch), Ok(cseq)) = (request.branch(), request.cseq()) {
            if self.answered.len() >= 16 {
                self.answered.pop_front();
            }
            self.answered.push_back((branch, cseq.cseq, bytes.clone()));
        }
        bytes
    }
}

/// RFC 4028 section 10: without a refresh, the session ends this long after
/// the last one (the interval less a third, or less 32 s if that is less).
fn expiry_margin(interval: Duration) -> Duration {
    interval - (interval / 3).min(Duration::from_secs(32))
}

fn retransmit_non_invite(
    tx: &mut ClientTx,
    now: Instant,
    timers: &Timers,
    out: &mut VecDeque<Vec<u8>>,
) {
    if let Some(at) = tx.retransmit
        && now >= at
    {
        out.push_back(tx.bytes.clone());
        tx.interval = (tx.interval * 2).min(timers.t2);
        tx.retransmit = Some(now + tx.interval);
    }
}

fn user_agent() -> String {
    format!("kiosk-gateway/{}", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER_SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                            m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

    fn config() -> DialConfig {
        DialConfig {
            target: "sip:room@127.0.0.1:5060".into(),
            local: "127.0.0.1:5070".parse().unwrap(),
            media: "127.0.0.1:40000".parse().unwrap(),
            from_user: "kiosk".into(),
            codecs: Codecs::OpusOrPcmu,
            credentials: None,
            answer_timeout: Duration::from_secs(10),
            timers: Timers::default(),
        }
    }

    fn header<'a>(message: &'a str, name: &str) -> &'a str {
        message
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim())
            })
            .unwrap_or("")
    }

    /// The peer's response to one of our requests.
    fn reply(request: &str, code: u16, extra: &str, body: &str) -> Vec<u8> {
        let to = header(request, "To");
        let to = if to.contains("tag=") {
            to.to_owned()
        } else {
            format!("{to};tag=peer")
        };
        format!(
            "SIP/2.0 {code} Whatever\r\nVia: {}\r\nFrom: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\n\
             Contact: <sip:room@127.0.0.1:5060;transport=udp>\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            header(request, "Via"),
            header(request, "From"),
            header(request, "Call-ID"),
            header(request, "CSeq"),
            body.len()
        )
        .into_bytes()
    }

    /// A request from the peer inside the dialog.
    fn peer_request(invite: &str, method: &str, cseq: u32, extra: &str, body: &str) -> Vec<u8> {
        format!(
            "{method} sip:kiosk@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKp{cseq}{method}\r\n\
             From: {};tag=peer\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            header(invite, "To"),
            header(invite, "From"),
            header(invite, "Call-ID"),
            body.len()
        )
        .into_bytes()
    }

    fn sent(dialer: &mut Dialer) -> Vec<String> {
        std::iter::from_fn(|| dialer.poll_transmit())
            .map(|b| String::from_utf8(b).unwrap())
            .collect()
    }

    fn events(dialer: &mut Dialer) -> Vec<DialEvent> {
        std::iter::from_fn(|| dialer.poll_event()).collect()
    }

    /// A dialer whose call was answered at `t0` with `extra` headers on the 200.
    fn established(t0: Instant, extra: &str) -> (Dialer, String) {
        let mut dialer = Dialer::new(config(), t0).unwrap();
        let invite = sent(&mut dialer).remove(0);
        dialer
            .handle_datagram(&reply(&invite, 200, extra, PEER_SDP), t0)
            .unwrap();
        let out = sent(&mut dialer);
        assert!(
            out[0].starts_with("ACK sip:room@127.0.0.1:5060;transport=udp SIP/2.0"),
            "{out:?}"
        );
        assert!(matches!(
            events(&mut dialer)[..],
            [DialEvent::Answered { .. }]
        ));
        (dialer, invite)
    }

    #[test]
    fn the_invite_carries_rport_our_offer_and_timer_support() {
        let mut dialer = Dialer::new(config(), Instant::now()).unwrap();
        let invite = sent(&mut dialer).remove(0);
        assert!(invite.starts_with("INVITE sip:room@127.0.0.1:5060 SIP/2.0\r\n"));
        assert!(
            header(&invite, "Via").starts_with("SIP/2.0/UDP 127.0.0.1:5070;rport;branch=z9hG4bK")
        );
        assert_eq!(header(&invite, "CSeq"), "1 INVITE");
        assert_eq!(header(&invite, "Supported"), "timer");
        assert!(invite.contains("m=audio 40000 RTP/AVP 111 0\r\n"));
        assert_eq!(
            Dialer::new(
                DialConfig {
                    target: "not a uri".into(),
                    ..config()
                },
                Instant::now()
            )
            .err(),
            Some(DialError::BadUri("not a uri".into()))
        );
    }

    #[test]
    fn an_unanswered_invite_is_retransmitted_then_cancelled_after_ringing() {
        let t0 = Instant::now();
        let mut dialer = Dialer::new(config(), t0).unwrap();
        let invite = sent(&mut dialer).remove(0);
        assert_eq!(dialer.poll_timeout(), Some(t0 + Duration::from_millis(500)));
        dialer.handle_timeout(t0 + Duration::from_millis(500));
        assert_eq!(sent(&mut dialer), std::slice::from_ref(&invite));
        dialer.handle_timeout(t0 + Duration::from_millis(1500));
        assert_eq!(sent(&mut dialer), std::slice::from_ref(&invite));
        dialer
            .handle_datagram(&reply(&invite, 180, "", ""), t0 + Duration::from_secs(2))
            .unwrap();
        assert_eq!(
            events(&mut dialer),
            [DialEvent::Progress {
                code: 180,
                reason: "Whatever".into()
            }]
        );
        // Ringing stops retransmissions; only the answer deadline is left.
        assert_eq!(dialer.poll_timeout(), Some(t0 + Duration::from_secs(10)));
        dialer.handle_timeout(t0 + Duration::from_secs(10));
        let cancel = sent(&mut dialer).remove(0);
        assert!(cancel.starts_with("CANCEL sip:room@127.0.0.1:5060 SIP/2.0"));
        assert_eq!(header(&cancel, "Via"), header(&invite, "Via"));
        assert_eq!(header(&cancel, "CSeq"), "1 CANCEL");
        let later = t0 + Duration::from_millis(10_100);
        dialer
            .handle_datagram(&reply(&cancel, 200, "", ""), later)
            .unwrap();
        dialer
            .handle_datagram(&reply(&invite, 487, "", ""), later)
            .unwrap();
        let ack = sent(&mut dialer).remove(0);
        assert!(ack.starts_with("ACK ") && header(&ack, "CSeq") == "1 ACK");
        assert_eq!(header(&ack, "Via"), header(&invite, "Via"));
        assert_eq!(
            events(&mut dialer),
            [DialEvent::Failed(CallFailure::NotAnswered {
                cancelled: true
            })]
        );
        assert!(dialer.is_done());
    }

    #[test]
    fn final_errors_are_acknowledged_and_typed() {
        for (code, extra, failure) in [
            (486, "", CallFailure::Busy { code: 486 }),
            (404, "", CallFailure::NotFound),
            (
                503,
                "Retry-After: 30\r\n",
                CallFailure::ServiceUnavailable {
                    retry_after: Some(Duration::from_secs(30)),
                },
            ),
            (603, "", CallFailure::Declined { code: 603 }),
            (
                401,
                "WWW-Authenticate: Digest realm=\"r\", nonce=\"n\"\r\n",
                CallFailure::AuthenticationRequired { code: 401 },
            ),
        ] {
            let t0 = Instant::now();
            let mut dialer = Dialer::new(config(), t0).unwrap();
            let invite = sent(&mut dialer).remove(0);
            dialer
                .handle_datagram(&reply(&invite, code, extra, ""), t0)
                .unwrap();
            let ack = sent(&mut dialer).remove(0);
            assert!(ack.starts_with("ACK "), "{code}");
            assert_eq!(events(&mut dialer), [DialEvent::Failed(failure)], "{code}");
            assert!(dialer.is_done());
        }
    }

    #[test]
    fn a_challenge_is_answered_once_with_a_new_invite() {
        let t0 = Instant::now();
        let mut dialer = Dialer::new(
            DialConfig {
                credentials: Some(Credentials {
                    user: "kiosk".into(),
                    password: SecretString::from("pw".to_owned()),
                }),
                ..config()
            },
            t0,
        )
        .unwrap();
        let invite = sent(&mut dialer).remove(0);
        let challenge = "Proxy-Authenticate: Digest realm=\"daily\", nonce=\"n1\"\r\n";
        dialer
            .handle_datagram(&reply(&invite, 407, challenge, ""), t0)
            .unwrap();
        let out = sent(&mut dialer);
        assert!(out[0].starts_with("ACK "));
        let second = &out[1];
        assert_eq!(header(second, "CSeq"), "2 INVITE");
        assert_ne!(header(second, "Via"), header(&invite, "Via"));
        assert!(header(second, "Proxy-Authorization").starts_with("Digest "));
        assert!(!second.contains("pw"));
        // Refused again with the same nonce: the credentials are wrong;
        // give up rather than loop.
        dialer
            .handle_datagram(&reply(second, 407, challenge, ""), t0)
            .unwrap();
        let out = sent(&mut dialer);
        assert_eq!(out.len(), 1);
        assert!(out[0].starts_with("ACK "));
        assert_eq!(
            events(&mut dialer),
            [DialEvent::Failed(CallFailure::AuthenticationFailed {
                code: 407
            })]
        );
        assert_eq!(
            format!(
                "{:?}",
                config().credentials.or(Some(Credentials {
                    user: "u".into(),
                    password: SecretString::from("pw".to_owned())
                }))
            ),
            "Some(Credentials { user: \"u\", password: [hidden] })"
        );
    }

    #[test]
    fn a_retransmitted_200_is_acknowledged_again() {
        let t0 = Instant::now();
        let (mut dialer, invite) = established(t0, "");
        dialer
            .handle_datagram(&reply(&invite, 200, "", PEER_SDP), t0)
            .unwrap();
        let again = sent(&mut dialer);
        assert_eq!(again.len(), 1);
        assert!(again[0].starts_with("ACK "));
        assert!(events(&mut dialer).is_empty());
    }

    #[test]
    fn a_peer_re_invite_gets_our_same_sdp_until_it_acknowledges() {
        let t0 = Instant::now();
        let (mut dialer, invite) = established(t0, "");
        let moved = PEER_SDP.replace("6000", "7000");
        dialer
            .handle_datagram(&peer_request(&invite, "INVITE", 5, "", &moved), t0)
            .unwrap();
        let ok = sent(&mut dialer).remove(0);
        assert!(ok.starts_with("SIP/2.0 200 OK"));
        assert_eq!(ok.split("\r\n\r\n").nth(1), invite.split("\r\n\r\n").nth(1));
        match &events(&mut dialer)[..] {
            [DialEvent::MediaChanged(media)] => assert_eq!(media.rtp.port(), 7000),
            other => panic!("{other:?}"),
        }
        dialer.handle_timeout(t0 + Duration::from_millis(500));
        assert_eq!(sent(&mut dialer), std::slice::from_ref(&ok));
        dialer
            .handle_datagram(
                &peer_request(&invite, "ACK", 5, "", ""),
                t0 + Duration::from_millis(600),
            )
            .unwrap();
        dialer.handle_timeout(t0 + Duration::from_millis(1500));
        assert!(sent(&mut dialer).is_empty());
        // UPDATE without SDP: 200 without SDP. The same UPDATE again: the same 200.
        let update = peer_request(&invite, "UPDATE", 6, "", "");
        dialer.handle_datagram(&update, t0).unwrap();
        let ok = sent(&mut dialer).remove(0);
        assert!(ok.starts_with("SIP/2.0 200 OK") && ok.ends_with("Content-Length: 0\r\n\r\n"));
        dialer.handle_datagram(&update, t0).unwrap();
        assert_eq!(sent(&mut dialer), [ok]);
        assert!(dialer.is_established());
    }

    #[test]
    fn requests_for_other_calls_get_481_and_overlapping_offers_491() {
        let t0 = Instant::now();
        let (mut dialer, invite) = established(t0, "");
        let stranger = String::from_utf8(peer_request(&invite, "BYE", 9, "", ""))
            .unwrap()
            .replace(header(&invite, "Call-ID"), "someone-else");
        dialer.handle_datagram(stranger.as_bytes(), t0).unwrap();
        assert!(sent(&mut dialer)[0].starts_with("SIP/2.0 481 "));
        assert!(dialer.is_established());
        dialer
            .handle_datagram(&peer_request(&invite, "INVITE", 5, "", PEER_SDP), t0)
            .unwrap();
        dialer
            .handle_datagram(&peer_request(&invite, "INVITE", 6, "", PEER_SDP), t0)
            .unwrap();
        let out = sent(&mut dialer);
        assert!(out[0].starts_with("SIP/2.0 200 ") && out[1].starts_with("SIP/2.0 491 "));
    }

    #[test]
    fn bye_in_both_directions() {
        let t0 = Instant::now();
        let (mut dialer, invite) = established(t0, "");
        dialer.hang_up(t0);
        let bye = sent(&mut dialer).remove(0);
        assert!(bye.starts_with("BYE sip:room@127.0.0.1:5060;transport=udp SIP/2.0"));
        assert_eq!(header(&bye, "CSeq"), "2 BYE");
        assert!(header(&bye, "To").ends_with(";tag=peer"));
        dialer
            .handle_datagram(&reply(&bye, 200, "", ""), t0)
            .unwrap();
        assert_eq!(events(&mut dialer), [DialEvent::Ended(Hangup::Local)]);
        assert!(dialer.is_done());

        let (mut dialer, invite2) = established(t0, "");
        assert_ne!(header(&invite, "Call-ID"), header(&invite2, "Call-ID"));
        dialer
            .handle_datagram(&peer_request(&invite2, "BYE", 7, "", ""), t0)
            .unwrap();
        assert!(sent(&mut dialer)[0].starts_with("SIP/2.0 200 OK"));
        assert_eq!(events(&mut dialer), [DialEvent::Ended(Hangup::Peer)]);
        assert!(dialer.is_done());
    }

    #[test]
    fn we_refresh_the_session_when_the_answer_makes_us_the_refresher() {
        let t0 = Instant::now();
        let (mut dialer, _) = established(
            t0,
            "Session-Expires: 120;refresher=uac\r\nAllow: INVITE, ACK, BYE, UPDATE\r\n",
        );
        assert_eq!(dialer.poll_timeout(), Some(t0 + Duration::from_secs(60)));
        dialer.handle_timeout(t0 + Duration::from_secs(60));
        let update = sent(&mut dialer).remove(0);
        assert!(update.starts_with("UPDATE "), "{update}");
        assert_eq!(header(&update, "Session-Expires"), "120;refresher=uac");
        let t1 = t0 + Duration::from_secs(61);
        dialer
            .handle_datagram(
                &reply(&update, 200, "Session-Expires: 120;refresher=uac\r\n", ""),
                t1,
            )
            .unwrap();
        assert_eq!(dialer.poll_timeout(), Some(t1 + Duration::from_secs(60)));

        // A peer that takes no UPDATE is refreshed with a re-INVITE (and our SDP).
        let (mut dialer, _) = established(t0, "Session-Expires: 90\r\nAllow: INVITE, ACK, BYE\r\n");
        dialer.handle_timeout(t0 + Duration::from_secs(45));
        let reinvite = sent(&mut dialer).remove(0);
        assert!(reinvite.starts_with("INVITE ") && reinvite.contains("m=audio 40000"));
        dialer
            .handle_datagram(
                &reply(&reinvite, 200, "", PEER_SDP),
                t0 + Duration::from_secs(46),
            )
            .unwrap();
        assert!(sent(&mut dialer)[0].starts_with("ACK "));
        assert!(dialer.is_established());
    }

    #[test]
    fn a_peer_that_should_refresh_and_does_not_is_hung_up_on() {
        let t0 = Instant::now();
        let (mut dialer, invite) = established(t0, "Session-Expires: 120;refresher=uas\r\n");
        // 120 s less a third (40 s), capped at 32 s: 88 s.
        assert_eq!(dialer.poll_timeout(), Some(t0 + Duration::from_secs(88)));
        // A refresh from the peer moves the deadline.
        let t1 = t0 + Duration::from_secs(50);
        dialer
            .handle_datagram(
                &peer_request(
                    &invite,
                    "UPDATE",
                    3,
                    "Session-Expires: 120;refresher=uac\r\n",
                    "",
                ),
                t1,
            )
            .unwrap();
        let ok = sent(&mut dialer).remove(0);
        assert_eq!(header(&ok, "Session-Expires"), "120;refresher=uac");
        assert_eq!(dialer.poll_timeout(), Some(t1 + Duration::from_secs(88)));
        dialer.handle_timeout(t1 + Duration::from_secs(88));
        let bye = sent(&mut dialer).remove(0);
        assert!(bye.starts_with("BYE "));
        dialer
            .handle_datagram(&reply(&bye, 200, "", ""), t1 + Duration::from_secs(89))
            .unwrap();
        assert_eq!(
            events(&mut dialer),
            [DialEvent::Ended(Hangup::SessionExpired)]
        );
    }

    #[test]
    fn an_answer_without_usable_sdp_is_hung_up() {
        let t0 = Instant::now();
        let mut dialer = Dialer::new(config(), t0).unwrap();
        let invite = sent(&mut dialer).remove(0);
        let refused = PEER_SDP.replace("6000", "0");
        dialer
            .handle_datagram(&reply(&invite, 200, "", &refused), t0)
            .unwrap();
        let out = sent(&mut dialer);
        assert!(out[0].starts_with("ACK ") && out[1].starts_with("BYE "));
        assert_eq!(
            events(&mut dialer),
            [DialEvent::Failed(CallFailure::BadAnswer(
                SdpError::AudioRefused
            ))]
        );
    }

    #[test]
    fn garbage_is_counted_and_changes_nothing() {
        let t0 = Instant::now();
        let (mut dialer, invite) = established(t0, "");
        for junk in [
            &b"\x00\xff"[..],
            b"SIP/2.0 200 OK\r\n\r\n",
            b"NOTIFY x SIP/2.0\r\n\r\n",
        ] {
            assert!(dialer.handle_datagram(junk, t0).is_err());
        }
        // A response for a transaction we never started.
        let stray = String::from_utf8(reply(&invite, 200, "", ""))
            .unwrap()
            .replace("CSeq: 1 INVITE", "CSeq: 77 BYE");
        assert!(dialer.handle_datagram(stray.as_bytes(), t0).is_err());
        assert_eq!(dialer.ignored(), 4);
        assert!(sent(&mut dialer).is_empty());
        assert!(dialer.is_established());
    }

    proptest::proptest! {
        /// Whatever bytes arrive on the SIP port, in any call state, the
        /// dialog neither panics nor stops being a call.
        #[test]
        fn hostile_datagrams_never_panic(
            datagrams in proptest::collection::vec(
                proptest::collection::vec(proptest::num::u8::ANY, 0..600), 1..8),
            prefix in proptest::sample::select(vec![
                "", "SIP/2.0 200 OK\r\n", "SIP/2.0 180 x\r\nCSeq: 1 INVITE\r\n",
                "BYE sip:k@h SIP/2.0\r\n", "INVITE sip:k@h SIP/2.0\r\nContent-Length: 9999\r\n",
            ]),
        ) {
            let t0 = Instant::now();
            let (mut dialer, _) = established(t0, "");
            for data in &datagrams {
                let mut bytes = prefix.as_bytes().to_vec();
                bytes.extend_from_slice(data);
                let _ = dialer.handle_datagram(&bytes, t0);
            }
            let mut fresh = Dialer::new(config(), t0).unwrap();
            for data in &datagrams {
                let _ = fresh.handle_datagram(data, t0);
            }
            proptest::prop_assert!(dialer.is_established());
        }
    }
}
