use super::*;
use Action as A;
use Event as E;
use proptest::prelude::*;

fn run(m: &mut Machine, events: &[Event]) -> Vec<Action> {
    events.iter().flat_map(|e| m.handle(*e)).collect()
}

/// A voice machine in a call with audio released.
fn in_call() -> Machine {
    let mut m = Machine::new(Trigger::Voice);
    run(
        &mut m,
        &[E::SpeechStarted, E::Provisioned, E::Connected, E::BotReady],
    );
    assert_eq!(m.state(), State::UserSpeaking);
    m
}

#[test]
fn voice_onset_starts_a_session_and_speech_waits_for_the_agent() {
    let mut m = Machine::new(Trigger::Voice);
    assert_eq!(m.handle(E::SpeechStarted), [A::BeginSession, A::Provision]);
    assert_eq!(m.state(), State::Provisioning);
    assert_eq!(m.handle(E::SpeechEnded), []);
    assert_eq!(m.handle(E::Provisioned), [A::Connect]);
    assert_eq!(m.state(), State::Connecting);
    assert_eq!(
        m.handle(E::BotReady),
        [],
        "not connected yet: nothing released"
    );
    assert_eq!(m.handle(E::Connected), [A::AwaitReady]);
    assert!(!m.audio_released());
    assert_eq!(m.handle(E::BotReady), [A::ReleaseAudio, A::TouchActivity]);
    assert_eq!(m.state(), State::Listening);
}

#[test]
fn ready_timeout_releases_speech_when_the_agent_never_says_ready() {
    let mut m = Machine::new(Trigger::Voice);
    run(&mut m, &[E::SpeechStarted, E::Provisioned, E::Connected]);
    assert_eq!(
        m.handle(E::ReadyTimeout),
        [A::ReleaseAudio, A::TouchActivity]
    );
    assert_eq!(
        m.state(),
        State::UserSpeaking,
        "the visitor is still talking"
    );
}

#[test]
fn other_triggers_ignore_speech_when_idle() {
    for trigger in [Trigger::Http, Trigger::Always] {
        let mut m = Machine::new(trigger);
        assert_eq!(m.handle(E::SpeechStarted), []);
        assert_eq!(m.state(), State::Idle);
        assert_eq!(m.handle(E::StartRequested), [A::BeginSession, A::Provision]);
    }
}

#[test]
fn a_conversation_moves_through_the_talking_states() {
    let mut m = in_call();
    assert_eq!(m.handle(E::SpeechEnded), [A::TouchActivity]);
    assert_eq!(m.state(), State::BotThinking);
    m.handle(E::BotStartedSpeaking);
    assert_eq!(m.state(), State::BotSpeaking);
    m.handle(E::BotStoppedSpeaking);
    assert_eq!(m.state(), State::Listening);
    m.handle(E::SpeechStarted);
    assert_eq!(m.state(), State::UserSpeaking);
}

#[test]
fn speaking_over_the_bot_barges_in() {
    let mut m = in_call();
    run(&mut m, &[E::SpeechEnded, E::BotStartedSpeaking]);
    assert_eq!(m.handle(E::SpeechStarted), [A::BargeIn, A::TouchActivity]);
    assert_eq!(m.state(), State::UserSpeaking);
}

#[test]
fn idle_timeout_ends_only_when_nobody_is_talking() {
    let mut m = in_call();
    assert_eq!(m.handle(E::IdleTimeout), [], "the visitor is mid-sentence");
    m.handle(E::SpeechEnded);
    assert_eq!(m.handle(E::IdleTimeout), [A::Teardown(EndReason::Idle)]);
    assert_eq!(m.state(), State::Ending);
    assert_eq!(m.handle(E::TornDown), [A::SessionClosed]);
    assert_eq!(m.state(), State::Idle);
}

#[test]
fn endings_carry_their_reason() {
    for (event, reason) in [
        (E::MaxDuration, EndReason::MaxDuration),
        (E::AgentLeft, EndReason::AgentLeft),
        (E::StopRequested, EndReason::Stopped),
        (E::Shutdown, EndReason::Shutdown),
    ] {
        let mut m = in_call();
        assert_eq!(m.handle(event), [A::Teardown(reason)], "{event:?}");
    }
}

#[test]
fn failures_play_the_prompt() {
    let mut m = Machine::new(Trigger::Voice);
    m.handle(E::SpeechStarted);
    assert_eq!(
        m.handle(E::ProvisionFailed),
        [
            A::PlayFailurePrompt,
            A::Teardown(EndReason::ProvisionFailed)
        ]
    );
    let mut m = Machine::new(Trigger::Voice);
    run(&mut m, &[E::SpeechStarted, E::Provisioned]);
    assert_eq!(
        m.handle(E::ConnectFailed),
        [A::PlayFailurePrompt, A::Teardown(EndReason::ConnectFailed)]
    );
}

#[test]
fn a_dropped_call_holds_speech_and_comes_back_or_ends() {
    let mut m = in_call();
    assert_eq!(m.handle(E::LinkLost), [A::HoldAudio]);
    assert_eq!(m.state(), State::Reconnecting);
    assert_eq!(
        m.handle(E::LinkRestored),
        [A::ReleaseAudio, A::TouchActivity]
    );
    m.handle(E::LinkLost);
    assert_eq!(
        m.handle(E::ReconnectTimeout),
        [A::PlayFailurePrompt, A::Teardown(EndReason::LinkLost)]
    );
}

#[test]
fn a_visitor_still_talking_at_the_end_gets_a_new_session() {
    let mut m = in_call();
    m.handle(E::MaxDuration);
    assert_eq!(
        m.handle(E::TornDown),
        [A::SessionClosed, A::BeginSession, A::Provision]
    );
}

#[test]
fn always_on_reopens_and_shutdown_stops_everything() {
    let mut m = Machine::new(Trigger::Always);
    m.handle(E::StartRequested);
    run(
        &mut m,
        &[E::Provisioned, E::Connected, E::BotReady, E::IdleTimeout],
    );
    assert_eq!(
        m.handle(E::TornDown),
        [A::SessionClosed, A::BeginSession, A::Provision]
    );
    m.handle(E::ProvisionFailed);
    assert_eq!(
        m.handle(E::TornDown),
        [A::SessionClosed],
        "after a failure the orchestrator retries after a backoff"
    );
    m.handle(E::StartRequested);
    assert_eq!(
        m.handle(E::Shutdown),
        [A::Teardown(EndReason::Shutdown)],
        "no prompt while the service stops"
    );
    assert_eq!(m.handle(E::TornDown), [A::SessionClosed]);
    assert_eq!(m.handle(E::StartRequested), []);
}

fn any_event() -> impl Strategy<Value = Event> {
    prop::sample::select(vec![
        E::SpeechStarted,
        E::SpeechEnded,
        E::StartRequested,
        E::StopRequested,
        E::Provisioned,
        E::ProvisionFailed,
        E::Connected,
        E::ConnectFailed,
        E::BotReady,
        E::ReadyTimeout,
        E::BotStartedSpeaking,
        E::BotStoppedSpeaking,
        E::LinkLost,
        E::LinkRestored,
        E::ReconnectTimeout,
        E::AgentLeft,
        E::IdleTimeout,
        E::MaxDuration,
        E::TornDown,
    ])
}

fn any_trigger() -> impl Strategy<Value = Trigger> {
    prop::sample::select(vec![Trigger::Voice, Trigger::Http, Trigger::Always])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Random event orders keep the invariants the orchestrator relies on:
    /// one session at a time, every session ends once with a reason before
    /// it closes, and no speech is released before the call is up and the
    /// agent ready (or the ready timeout passed).
    #[test]
    fn invariants_hold_for_any_event_order(trigger in any_trigger(), events in prop::collection::vec(any_event(), 0..200)) {
        let mut m = Machine::new(trigger);
        let mut open = false;
        let mut ended = false;
        let mut connected = false;
        let mut ready = false;
        let tail = [E::Shutdown, E::TornDown];
        for e in events.iter().chain(tail.iter()) {
            let was = m.state();
            if was == State::Connecting && *e == E::Connected { connected = true; }
            if connected && matches!(e, E::BotReady | E::ReadyTimeout) { ready = true; }
            for a in m.handle(*e) {
                match a {
                    A::BeginSession => {
                        prop_assert!(!open, "a second session began while one was open");
                        open = true; ended = false; connected = false; ready = false;
                    }
                    A::Teardown(_) => {
                        prop_assert!(open, "teardown without a session");
                        prop_assert!(!ended, "a session ended twice");
                        ended = true;
                    }
                    A::SessionClosed => {
                        prop_assert!(open && ended, "closed without an end reason");
                        open = false;
                    }
                    A::ReleaseAudio => {
                        prop_assert!(connected && ready, "speech released before the agent was ready");
                    }
                    _ => {}
                }
            }
            prop_assert_eq!(m.state() == State::Idle, !open, "state {:?} vs open {}", m.state(), open);
        }
        prop_assert!(!open, "shutdown and teardown leave no session open");
    }
}
