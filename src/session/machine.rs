//! The session state machine, sans-I/O in the manner of str0m: events and
//! the current time in, actions and the next deadline out. The
//! orchestrator feeds it what audio, link and technicians report, with
//! `Instant::now()`; carries out each action from
//! [`poll_action`](Machine::poll_action); and sleeps until
//! [`poll_timeout`](Machine::poll_timeout), then feeds [`Event::Timeout`].
//! Every rule about when a session starts, when speech may flow, how long
//! anything may take, how long to back off after a failure and in which
//! order a session is torn down lives here, and is tested on made-up
//! instants without a sound card, a network or a wall clock.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{debug, info};

use super::backoff::Backoff;
use crate::config::Trigger;

/// What a kiosk is doing, as shown on the status page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// No session; listening for a visitor.
    Idle,
    /// Getting a room and an agent from the cloud; speech is buffered.
    Provisioning,
    /// Setting up the call; speech is buffered.
    Connecting,
    /// In a call, nobody speaking.
    Listening,
    /// In a call, the visitor speaking.
    UserSpeaking,
    /// The visitor finished; the agent is working out a reply.
    BotThinking,
    /// In a call, the agent speaking.
    BotSpeaking,
    /// The call dropped; trying to get it back. Speech is buffered.
    Reconnecting,
    /// Tearing down; back to idle when done.
    Ending,
}

impl State {
    /// The name in logs, the status page and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::Provisioning => "provisioning",
            State::Connecting => "connecting",
            State::Listening => "listening",
            State::UserSpeaking => "user_speaking",
            State::BotThinking => "bot_thinking",
            State::BotSpeaking => "bot_speaking",
            State::Reconnecting => "reconnecting",
            State::Ending => "ending",
        }
    }

    /// In a call with audio flowing.
    pub fn in_conversation(self) -> bool {
        matches!(
            self,
            State::Listening | State::UserSpeaking | State::BotThinking | State::BotSpeaking
        )
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a session ended; stored as `sessions.end_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Nobody spoke for `session.idle_timeout`.
    Idle,
    /// The session reached `session.max_duration`.
    MaxDuration,
    /// The agent left the call.
    AgentLeft,
    /// SIGTERM: the service is stopping.
    Shutdown,
    /// A technician stopped it.
    Stopped,
    /// No room or agent could be had from the cloud.
    ProvisionFailed,
    /// The call could not be set up.
    ConnectFailed,
    /// The call dropped and did not come back within `session.reconnect_timeout`.
    LinkLost,
    /// Found open at start-up: the process died mid-session.
    Crashed,
}

impl EndReason {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Idle => "idle",
            EndReason::MaxDuration => "max_duration",
            EndReason::AgentLeft => "agent_left",
            EndReason::Shutdown => "shutdown",
            EndReason::Stopped => "stopped",
            EndReason::ProvisionFailed => "provision_failed",
            EndReason::ConnectFailed => "connect_failed",
            EndReason::LinkLost => "link_lost",
            EndReason::Crashed => "crashed",
        }
    }

    /// Failures the visitor should hear about (a short local prompt).
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            EndReason::ProvisionFailed | EndReason::ConnectFailed | EndReason::LinkLost
        )
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the machine is told: things heard, asked for or done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// The gateway is up (sessions left by a crash closed): an always-on
    /// kiosk opens its first session.
    GatewayUp,
    /// The VAD heard speech start (pre-roll included in what it buffers).
    SpeechStarted,
    /// The VAD heard speech end.
    SpeechEnded,
    /// `POST /api/session/start`.
    StartRequested,
    /// A technician's stop.
    StopRequested,
    /// The cloud side is ready.
    Provisioned,
    /// The cloud side could not be had.
    ProvisionFailed,
    /// The peer connection and its data channel are up.
    Connected,
    /// The call could not be set up.
    ConnectFailed,
    /// The agent said `bot-ready`.
    BotReady,
    /// The agent's audio began.
    BotStartedSpeaking,
    /// The agent's audio ended.
    BotStoppedSpeaking,
    /// The call dropped; the link is trying to restore it.
    LinkLost,
    /// The link restored the call.
    LinkRestored,
    /// The link could not restore the call within `session.reconnect_timeout`.
    LinkGaveUp,
    /// The agent left the call.
    AgentLeft,
    /// The service is stopping.
    Shutdown,
    /// The last teardown step ([`Action::ReleaseCloud`]) is done.
    TornDown,
    /// The deadline from [`Machine::poll_timeout`] has passed.
    Timeout,
}

/// What the orchestrator is asked to do. A session's teardown is the run
/// from [`CancelSetup`](Action::CancelSetup) to
/// [`ReleaseCloud`](Action::ReleaseCloud), in that order; then, once told
/// [`Event::TornDown`], the machine asks for what follows a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Create the session row.
    BeginSession,
    /// Get a room and/or an agent session; answered with `Provisioned` or
    /// `ProvisionFailed`.
    Provision,
    /// Open the call; answered with `Connected` or `ConnectFailed`.
    Connect,
    /// Send the buffered speech, then stream live.
    ReleaseAudio,
    /// Hold speech in the bounded buffer (the link is not there).
    HoldAudio,
    /// The visitor spoke over the bot: stop playback at once.
    BargeIn,
    /// Tell the visitor something went wrong.
    PlayFailurePrompt,
    /// Stop provisioning or connecting still under way; what they already
    /// made is kept, to be released with the rest.
    CancelSetup,
    /// End the stream to the link and drop what was waiting for it.
    StopAudio,
    /// Complete the session row with its reason. Before the slow steps, so
    /// a stop deadline cutting them short cannot leave the session open.
    RecordEnd(EndReason),
    /// Close the call, storing what the agent said until it closed and
    /// what the transcript still held.
    CloseCall,
    /// Delete the room and whatever else the cloud holds for the session;
    /// the last teardown step, answered with [`Event::TornDown`].
    ReleaseCloud,
    /// Check the cloud's reachability: a session failed.
    ProbeCloud,
    /// Send what was stored upstream.
    SyncNow,
    /// The session is over; the next may start.
    SessionClosed,
}

/// The machine's deadlines, as named by [`Machine::poll_timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// Connected, waiting for `bot-ready`: past it speech is released anyway.
    Ready,
    /// Nobody has said anything for `session.idle_timeout`.
    Idle,
    /// The session has lasted `session.max_duration`.
    MaxDuration,
    /// A dropped call has not come back.
    Reconnect,
    /// The wait after a failed session is over: an always-on kiosk starts
    /// the next, and speech may start one again.
    Backoff,
}

impl Timer {
    const ALL: [Timer; 5] = [
        Timer::Ready,
        Timer::Idle,
        Timer::MaxDuration,
        Timer::Reconnect,
        Timer::Backoff,
    ];

    /// The timers that belong to one session, stopped when it ends.
    const SESSION: [Timer; 4] = [
        Timer::Ready,
        Timer::Idle,
        Timer::MaxDuration,
        Timer::Reconnect,
    ];
}

/// How long things may take, from `[session]`.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A session ends after this long with nobody speaking.
    pub idle_timeout: Duration,
    /// The longest one session may last.
    pub max_duration: Duration,
    /// How long to wait for `bot-ready` before releasing the visitor's speech anyway.
    pub ready_timeout: Duration,
    /// How long the machine waits for a dropped call. The link gives up on
    /// its own and says so ([`Event::LinkGaveUp`]); this is the backstop
    /// should that word never come, so it is set a little longer.
    pub reconnect_timeout: Duration,
    /// Wait before the next session after a failed one, doubling with
    /// each failure in a row up to the max.
    pub failure_backoff_min: Duration,
    /// See `failure_backoff_min`.
    pub failure_backoff_max: Duration,
}

/// When each [`Timer`] is due, if armed.
#[derive(Debug, Default)]
struct Deadlines([Option<Instant>; Timer::ALL.len()]);

impl Deadlines {
    fn arm(&mut self, timer: Timer, at: Instant) {
        self.0[timer as usize] = Some(at);
    }

    fn stop(&mut self, timer: Timer) {
        self.0[timer as usize] = None;
    }

    fn get(&self, timer: Timer) -> Option<Instant> {
        self.0[timer as usize]
    }

    /// The earliest armed deadline.
    fn next(&self) -> Option<(Instant, Timer)> {
        Timer::ALL
            .into_iter()
            .filter_map(|t| self.get(t).map(|at| (at, t)))
            .min_by_key(|(at, _)| *at)
    }
}

/// The machine. `trigger` decides what starts a session from idle.
#[derive(Debug)]
pub struct Machine {
    state: State,
    trigger: Trigger,
    timing: Timing,
    connected: bool,
    released: bool,
    user_speaking: bool,
    bot_speaking: bool,
    stopping: bool,
    /// Why the session being torn down ended.
    ending: Option<EndReason>,
    deadlines: Deadlines,
    backoff: Backoff,
    actions: VecDeque<Action>,
}

impl Machine {
    /// An idle machine.
    pub fn new(trigger: Trigger, timing: Timing) -> Self {
        Self {
            state: State::Idle,
            trigger,
            timing,
            connected: false,
            released: false,
            user_speaking: false,
            bot_speaking: false,
            stopping: false,
            ending: None,
            deadlines: Deadlines::default(),
            backoff: Backoff::new(timing.failure_backoff_min, timing.failure_backoff_max),
            actions: VecDeque::new(),
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether speech has been released to the link in this session.
    pub fn audio_released(&self) -> bool {
        self.released
    }

    /// The next thing to do, in order; `None` when there is nothing left.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When to feed [`Event::Timeout`] next, and what for; `None` while no
    /// deadline is armed.
    pub fn poll_timeout(&self) -> Option<(Instant, Timer)> {
        self.deadlines.next()
    }

    /// Applies `event`, which happened at `now`; what to do is queued for
    /// [`poll_action`](Self::poll_action).
    pub fn handle(&mut self, event: Event, now: Instant) {
        use Event as E;
        use State as S;
        if event == E::SpeechStarted && self.state == S::Idle && self.backing_off(now) {
            // Not a visitor to serve yet: the cloud just failed.
            info!("speech while backing off after a failure; not starting a session yet");
            return;
        }
        match event {
            E::SpeechStarted => self.user_speaking = true,
            E::SpeechEnded => self.user_speaking = false,
            E::BotStartedSpeaking => self.bot_speaking = true,
            E::BotStoppedSpeaking => self.bot_speaking = false,
            _ => {}
        }
        match (self.state, event) {
            (_, E::Timeout) => self.fire_due(now),
            (S::Idle | S::Ending, E::Shutdown) => self.stopping = true,
            (_, E::Shutdown) => {
                self.stopping = true;
                self.end(EndReason::Shutdown);
            }

            (S::Idle, E::GatewayUp) if self.trigger == Trigger::Always && !self.stopping => {
                self.begin(now)
            }
            (S::Idle, E::SpeechStarted) if self.trigger == Trigger::Voice && !self.stopping => {
                self.begin(now)
            }
            (S::Idle, E::StartRequested) if !self.stopping => self.begin(now),

            (S::Provisioning, E::Provisioned) => {
                self.state = S::Connecting;
                self.actions.push_back(Action::Connect);
            }
            (S::Provisioning, E::ProvisionFailed) => self.end(EndReason::ProvisionFailed),
            (S::Connecting, E::Connected) => {
                self.connected = true;
                self.deadlines
                    .arm(Timer::Ready, now + self.timing.ready_timeout);
            }
            (S::Connecting, E::ConnectFailed) => self.end(EndReason::ConnectFailed),
            (S::Connecting, E::BotReady) if self.connected => self.release(now),

            (s, E::SpeechStarted) if s.in_conversation() => {
                if s == S::BotSpeaking {
                    self.actions.push_back(Action::BargeIn);
                }
                self.state = S::UserSpeaking;
                self.touch(now);
            }
            (S::UserSpeaking, E::SpeechEnded) => {
                self.state = if self.bot_speaking {
                    S::BotSpeaking
                } else {
                    S::BotThinking
                };
                self.touch(now);
            }
            (s, E::BotStartedSpeaking) if s.in_conversation() => {
                if s != S::UserSpeaking {
                    self.state = S::BotSpeaking;
                }
                self.touch(now);
            }
            (s, E::BotStoppedSpeaking) if s.in_conversation() => {
                if s == S::BotSpeaking {
                    self.state = S::Listening;
                }
                self.touch(now);
            }
            (s, E::LinkLost) if s.in_conversation() => {
                self.state = S::Reconnecting;
                self.deadlines
                    .arm(Timer::Reconnect, now + self.timing.reconnect_timeout);
                self.actions.push_back(Action::HoldAudio);
            }
            (S::Reconnecting, E::LinkRestored) => {
                self.deadlines.stop(Timer::Reconnect);
                self.state = self.talk_state();
                self.actions.push_back(Action::ReleaseAudio);
                self.touch(now);
            }
            (S::Reconnecting, E::LinkGaveUp) => self.end(EndReason::LinkLost),

            (s, E::AgentLeft) if s.in_conversation() || s == S::Reconnecting => {
                self.end(EndReason::AgentLeft)
            }
            (s, E::StopRequested) if s != S::Idle && s != S::Ending => self.end(EndReason::Stopped),

            (S::Ending, E::TornDown) => self.closed(now),

            _ => {}
        }
    }

    /// Acts on every deadline that has passed by `now`, earliest first.
    fn fire_due(&mut self, now: Instant) {
        while let Some((at, timer)) = self.deadlines.next()
            && at <= now
        {
            self.deadlines.stop(timer);
            debug!(?timer, state = %self.state, "deadline passed");
            self.fire(timer, now);
        }
    }

    fn fire(&mut self, timer: Timer, now: Instant) {
        let s = self.state;
        match timer {
            Timer::Ready if s == State::Connecting && self.connected => self.release(now),
            // Re-armed by whatever the visitor or the bot says next. A long
            // answer is not idleness: the bot's `bot-stopped-speaking`
            // starts the clock again (and `max_duration` still bounds a
            // bot that never says it stopped).
            Timer::Idle if s.in_conversation() && !self.user_speaking && !self.bot_speaking => {
                self.end(EndReason::Idle)
            }
            Timer::MaxDuration if s != State::Idle && s != State::Ending => {
                self.end(EndReason::MaxDuration)
            }
            Timer::Reconnect if s == State::Reconnecting => self.end(EndReason::LinkLost),
            Timer::Backoff
                if s == State::Idle && self.trigger == Trigger::Always && !self.stopping =>
            {
                self.begin(now)
            }
            _ => {}
        }
    }

    /// Still waiting after a failed session.
    fn backing_off(&self, now: Instant) -> bool {
        self.deadlines.get(Timer::Backoff).is_some_and(|t| now < t)
    }

    fn begin(&mut self, now: Instant) {
        self.state = State::Provisioning;
        self.connected = false;
        self.released = false;
        self.deadlines
            .arm(Timer::MaxDuration, now + self.timing.max_duration);
        self.actions
            .extend([Action::BeginSession, Action::Provision]);
    }

    /// The agent is ready (or the ready timeout passed): speech flows.
    fn release(&mut self, now: Instant) {
        self.released = true;
        self.deadlines.stop(Timer::Ready);
        self.state = self.talk_state();
        self.actions.push_back(Action::ReleaseAudio);
        self.touch(now);
    }

    /// Something was said: the idle clock starts over.
    fn touch(&mut self, now: Instant) {
        self.deadlines
            .arm(Timer::Idle, now + self.timing.idle_timeout);
    }

    /// Queues the teardown, in order.
    fn end(&mut self, reason: EndReason) {
        self.state = State::Ending;
        self.ending = Some(reason);
        for timer in Timer::SESSION {
            self.deadlines.stop(timer);
        }
        if reason.is_failure() && !self.stopping {
            self.actions.push_back(Action::PlayFailurePrompt);
        }
        self.actions.extend([
            Action::CancelSetup,
            Action::StopAudio,
            Action::RecordEnd(reason),
            Action::CloseCall,
            Action::ReleaseCloud,
        ]);
    }

    /// Teardown is done at `now`: back off after a failure, then close the
    /// session and maybe start the next.
    fn closed(&mut self, now: Instant) {
        let failed = self.ending.take().is_some_and(EndReason::is_failure);
        self.state = State::Idle;
        self.connected = false;
        self.released = false;
        self.bot_speaking = false;
        if failed {
            let wait = self.backoff.next_delay();
            self.deadlines.arm(Timer::Backoff, now + wait);
            info!(
                retry_in_ms = wait.as_millis() as u64,
                "backing off before the next session"
            );
            self.actions.push_back(Action::ProbeCloud);
        } else {
            self.backoff.reset();
        }
        self.actions
            .extend([Action::SyncNow, Action::SessionClosed]);
        // A visitor still talking when the last session ended (or an
        // always-on kiosk) gets a new one at once, unless it failed: then
        // the next waits for the backoff.
        let restart = !self.stopping
            && !failed
            && (self.trigger == Trigger::Always
                || (self.trigger == Trigger::Voice && self.user_speaking));
        if restart {
            self.begin(now);
        }
    }

    /// Where a call settles when audio starts flowing.
    fn talk_state(&self) -> State {
        if self.user_speaking {
            State::UserSpeaking
        } else if self.bot_speaking {
            State::BotSpeaking
        } else {
            State::Listening
        }
    }
}

#[cfg(test)]
mod tests;
