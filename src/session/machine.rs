//! The session state machine: events in, actions out, no I/O. The
//! orchestrator feeds it what audio, link, timers and technicians report
//! and carries out what it asks for, so every rule about when a session
//! starts, when speech may flow and how it ends lives here and is tested
//! without a sound card or a network.

use std::fmt;

use serde::Serialize;

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
    UserSpeaking,
    /// The visitor finished; the agent is working out a reply.
    BotThinking,
    BotSpeaking,
    /// The call dropped; trying to get it back. Speech is buffered.
    Reconnecting,
    /// Tearing down; back to idle when done.
    Ending,
}

impl State {
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
    MaxDuration,
    AgentLeft,
    /// SIGTERM: the service is stopping.
    Shutdown,
    /// A technician stopped it.
    Stopped,
    ProvisionFailed,
    ConnectFailed,
    /// The call dropped and did not come back within `session.reconnect_timeout`.
    LinkLost,
    /// Found open at start-up: the process died mid-session.
    Crashed,
}

impl EndReason {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// The VAD heard speech start (pre-roll included in what it buffers).
    SpeechStarted,
    SpeechEnded,
    /// `POST /api/session/start`, or the `always` trigger wanting a session.
    StartRequested,
    /// A technician's stop.
    StopRequested,
    Provisioned,
    ProvisionFailed,
    /// The peer connection and its data channel are up.
    Connected,
    ConnectFailed,
    /// The agent said `bot-ready`.
    BotReady,
    /// `session.ready_timeout` passed after connecting without `bot-ready`.
    ReadyTimeout,
    BotStartedSpeaking,
    BotStoppedSpeaking,
    LinkLost,
    LinkRestored,
    ReconnectTimeout,
    AgentLeft,
    IdleTimeout,
    MaxDuration,
    Shutdown,
    /// Teardown finished (call closed, room deleted, session row completed).
    TornDown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Create the session row and start its clocks (max duration).
    BeginSession,
    /// Get a room and/or an agent session.
    Provision,
    /// Open the call.
    Connect,
    /// Arm the ready timeout.
    AwaitReady,
    /// Send the buffered speech, then stream live.
    ReleaseAudio,
    /// Hold speech in the bounded buffer (the link is not there).
    HoldAudio,
    /// The visitor spoke over the bot: stop playback at once.
    BargeIn,
    /// (Re)start the idle timer: something was said.
    TouchActivity,
    /// Close the call, delete the room, complete the session row.
    Teardown(EndReason),
    /// Tell the visitor something went wrong.
    PlayFailurePrompt,
    /// The session is over; the next may start.
    SessionClosed,
}

/// The machine. `trigger` decides what starts a session from idle.
#[derive(Debug, Clone)]
pub struct Machine {
    state: State,
    trigger: Trigger,
    connected: bool,
    released: bool,
    user_speaking: bool,
    bot_speaking: bool,
    stopping: bool,
    /// The session being torn down failed: the next waits for a backoff.
    failed: bool,
}

impl Machine {
    pub fn new(trigger: Trigger) -> Self {
        Self {
            state: State::Idle,
            trigger,
            connected: false,
            released: false,
            user_speaking: false,
            bot_speaking: false,
            stopping: false,
            failed: false,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Whether speech has been released to the link in this session.
    pub fn audio_released(&self) -> bool {
        self.released
    }

    /// Applies `event`; returns what to do, in order.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        use Action as A;
        use Event as E;
        use State as S;
        match event {
            E::SpeechStarted => self.user_speaking = true,
            E::SpeechEnded => self.user_speaking = false,
            E::BotStartedSpeaking => self.bot_speaking = true,
            E::BotStoppedSpeaking => self.bot_speaking = false,
            _ => {}
        }
        match (self.state, event) {
            (_, E::Shutdown) if self.state != S::Idle && self.state != S::Ending => {
                self.stopping = true;
                self.end(EndReason::Shutdown)
            }
            (_, E::Shutdown) => {
                self.stopping = true;
                vec![]
            }

            (S::Idle, E::SpeechStarted) if self.trigger == Trigger::Voice && !self.stopping => {
                self.begin()
            }
            (S::Idle, E::StartRequested) if !self.stopping => self.begin(),

            (S::Provisioning, E::Provisioned) => {
                self.state = S::Connecting;
                vec![A::Connect]
            }
            (S::Provisioning, E::ProvisionFailed) => self.end(EndReason::ProvisionFailed),
            (S::Connecting, E::Connected) => {
                self.connected = true;
                vec![A::AwaitReady]
            }
            (S::Connecting, E::ConnectFailed) => self.end(EndReason::ConnectFailed),
            (S::Connecting, E::BotReady | E::ReadyTimeout) if self.connected => {
                self.released = true;
                self.state = self.talk_state();
                vec![A::ReleaseAudio, A::TouchActivity]
            }

            (s, E::SpeechStarted) if s.in_conversation() => {
                let barge_in = s == S::BotSpeaking;
                self.state = S::UserSpeaking;
                let mut actions = vec![A::TouchActivity];
                if barge_in {
                    actions.insert(0, A::BargeIn);
                }
                actions
            }
            (S::UserSpeaking, E::SpeechEnded) => {
                self.state = if self.bot_speaking {
                    S::BotSpeaking
                } else {
                    S::BotThinking
                };
                vec![A::TouchActivity]
            }
            (s, E::BotStartedSpeaking) if s.in_conversation() => {
                if s != S::UserSpeaking {
                    self.state = S::BotSpeaking;
                }
                vec![A::TouchActivity]
            }
            (s, E::BotStoppedSpeaking) if s.in_conversation() => {
                if s == S::BotSpeaking {
                    self.state = S::Listening;
                }
                vec![A::TouchActivity]
            }
            (s, E::LinkLost) if s.in_conversation() => {
                self.state = S::Reconnecting;
                vec![A::HoldAudio]
            }
            (S::Reconnecting, E::LinkRestored) => {
                self.state = self.talk_state();
                vec![A::ReleaseAudio, A::TouchActivity]
            }
            (S::Reconnecting, E::ReconnectTimeout) => self.end(EndReason::LinkLost),

            (s, E::AgentLeft) if s.in_conversation() || s == S::Reconnecting => {
                self.end(EndReason::AgentLeft)
            }
            (s, E::IdleTimeout) if s.in_conversation() && !self.user_speaking => {
                self.end(EndReason::Idle)
            }
            (s, E::MaxDuration) if is_session(s) && s != S::Ending => {
                self.end(EndReason::MaxDuration)
            }
            (s, E::StopRequested) if is_session(s) && s != S::Ending => {
                self.end(EndReason::Stopped)
            }

            (S::Ending, E::TornDown) => {
                self.state = S::Idle;
                self.connected = false;
                self.released = false;
                self.bot_speaking = false;
                let mut actions = vec![A::SessionClosed];
                // A visitor still talking when the last session ended (or
                // an always-on kiosk) gets a new one at once, unless it
                // failed: then the orchestrator retries after a backoff.
                let restart = !self.stopping
                    && !self.failed
                    && (self.trigger == Trigger::Always
                        || (self.trigger == Trigger::Voice && self.user_speaking));
                if restart {
                    actions.extend(self.begin());
                }
                actions
            }

            _ => vec![],
        }
    }

    fn begin(&mut self) -> Vec<Action> {
        self.state = State::Provisioning;
        self.connected = false;
        self.released = false;
        vec![Action::BeginSession, Action::Provision]
    }

    fn end(&mut self, reason: EndReason) -> Vec<Action> {
        self.state = State::Ending;
        self.failed = reason.is_failure();
        let mut actions = vec![Action::Teardown(reason)];
        if reason.is_failure() && !self.stopping {
            actions.insert(0, Action::PlayFailurePrompt);
        }
        actions
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

fn is_session(s: State) -> bool {
    s != State::Idle
}

#[cfg(test)]
mod tests;
