use super::*;
use Action as A;
use Event as E;
use proptest::prelude::*;

const S: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

fn timing() -> Timing {
    Timing {
        idle_timeout: 10 * S,
        max_duration: 300 * S,
        ready_timeout: 3 * S,
        reconnect_timeout: 20 * S,
        failure_backoff_min: 2 * S,
        failure_backoff_max: 60 * S,
    }
}

/// The teardown steps, in order, without the prompt.
const TEARDOWN: [Action; 4] = [A::CancelSetup, A::StopAudio, A::CloseCall, A::ReleaseCloud];

fn teardown(reason: EndReason) -> Vec<Action> {
    let [cancel, stop, close, release] = TEARDOWN;
    vec![cancel, stop, A::RecordEnd(reason), close, release]
}

fn failed_teardown(reason: EndReason) -> Vec<Action> {
    let mut actions = vec![A::PlayFailurePrompt];
    actions.extend(teardown(reason));
    actions
}

/// A machine on a made-up clock, driven as the orchestrator drives it:
/// each event at `now`, every action taken, `Timeout` fed at each deadline.
struct Kiosk {
    m: Machine,
    now: Instant,
}

impl Kiosk {
    fn new(trigger: Trigger) -> Self {
        Self {
            m: Machine::new(trigger, timing()),
            now: Instant::now(),
        }
    }

    /// Feeds `event` now; returns what the machine asked for.
    fn on(&mut self, event: Event) -> Vec<Action> {
        self.m.handle(event, self.now);
        std::iter::from_fn(|| self.m.poll_action()).collect()
    }

    fn run(&mut self, events: &[Event]) -> Vec<Action> {
        events.iter().flat_map(|e| self.on(*e)).collect()
    }

    /// Lets `d` pass, feeding `Timeout` at each deadline on the way.
    fn wait(&mut self, d: Duration) -> Vec<Action> {
        let until = self.now + d;
        let mut actions = Vec::new();
        while let Some((at, _)) = self.m.poll_timeout()
            && at <= until
        {
            self.now = self.now.max(at);
            actions.extend(self.on(E::Timeout));
        }
        self.now = until;
        actions
    }

    /// How long until the next deadline, and which.
    fn next_timer(&self) -> Option<(Duration, Timer)> {
        self.m
            .poll_timeout()
            .map(|(at, timer)| (at.saturating_duration_since(self.now), timer))
    }

    fn state(&self) -> State {
        self.m.state()
    }
}

/// A voice kiosk in a call with audio released, the visitor talking.
fn in_call() -> Kiosk {
    let mut k = Kiosk::new(Trigger::Voice);
    k.run(&[E::SpeechStarted, E::Provisioned, E::Connected, E::BotReady]);
    assert_eq!(k.state(), State::UserSpeaking);
    k
}

#[test]
fn voice_onset_starts_a_session_and_speech_waits_for_the_agent() {
    let mut k = Kiosk::new(Trigger::Voice);
    assert_eq!(k.on(E::SpeechStarted), [A::BeginSession, A::Provision]);
    assert_eq!(k.state(), State::Provisioning);
    assert_eq!(k.next_timer(), Some((300 * S, Timer::MaxDuration)));
    assert_eq!(k.on(E::SpeechEnded), []);
    assert_eq!(k.on(E::Provisioned), [A::Connect]);
    assert_eq!(k.state(), State::Connecting);
    assert_eq!(k.on(E::BotReady), [], "not connected yet: nothing released");
    assert_eq!(k.on(E::Connected), []);
    assert_eq!(k.next_timer(), Some((3 * S, Timer::Ready)));
    assert!(!k.m.audio_released());
    assert_eq!(k.on(E::BotReady), [A::ReleaseAudio]);
    assert_eq!(k.state(), State::Listening);
    assert_eq!(
        k.next_timer(),
        Some((10 * S, Timer::Idle)),
        "ready timer stopped, idle clock started"
    );
}

#[test]
fn ready_timeout_releases_speech_when_the_agent_never_says_ready() {
    let mut k = Kiosk::new(Trigger::Voice);
    k.run(&[E::SpeechStarted, E::Provisioned]);
    k.wait(10 * S);
    assert_eq!(k.on(E::Connected), [], "the clock starts when connected");
    assert_eq!(k.wait(3 * S - MS), []);
    assert_eq!(k.wait(MS), [A::ReleaseAudio]);
    assert!(k.m.audio_released());
    assert_eq!(
        k.state(),
        State::UserSpeaking,
        "the visitor is still talking"
    );
    assert_eq!(k.on(E::BotReady), [], "already released");
}

#[test]
fn other_triggers_ignore_speech_when_idle() {
    for trigger in [Trigger::Http, Trigger::Always] {
        let mut k = Kiosk::new(trigger);
        assert_eq!(k.on(E::SpeechStarted), []);
        assert_eq!(k.state(), State::Idle);
        assert_eq!(k.on(E::StartRequested), [A::BeginSession, A::Provision]);
    }
}

#[test]
fn only_an_always_on_kiosk_starts_a_session_when_the_gateway_comes_up() {
    for (trigger, starts) in [
        (Trigger::Voice, false),
        (Trigger::Http, false),
        (Trigger::Always, true),
    ] {
        let mut k = Kiosk::new(trigger);
        assert_eq!(!k.on(E::GatewayUp).is_empty(), starts, "{trigger:?}");
    }
}

#[test]
fn a_conversation_moves_through_the_talking_states() {
    let mut k = in_call();
    assert_eq!(k.on(E::SpeechEnded), []);
    assert_eq!(k.state(), State::BotThinking);
    k.on(E::BotStartedSpeaking);
    assert_eq!(k.state(), State::BotSpeaking);
    k.on(E::BotStoppedSpeaking);
    assert_eq!(k.state(), State::Listening);
    k.on(E::SpeechStarted);
    assert_eq!(k.state(), State::UserSpeaking);
}

#[test]
fn speaking_over_the_bot_barges_in() {
    let mut k = in_call();
    k.run(&[E::SpeechEnded, E::BotStartedSpeaking]);
    assert_eq!(k.on(E::SpeechStarted), [A::BargeIn]);
    assert_eq!(k.state(), State::UserSpeaking);
    assert_eq!(k.on(E::SpeechEnded), []);
    assert_eq!(
        k.state(),
        State::BotSpeaking,
        "the bot had not said it stopped"
    );
    assert_eq!(k.on(E::SpeechStarted), [A::BargeIn]);
}

#[test]
fn idle_timeout_ends_only_when_nobody_is_talking() {
    let mut k = in_call();
    assert_eq!(k.wait(60 * S), [], "the visitor is mid-sentence");
    assert_eq!(k.next_timer(), Some((240 * S, Timer::MaxDuration)));
    k.on(E::SpeechEnded);
    assert_eq!(k.wait(10 * S), teardown(EndReason::Idle));
    assert_eq!(k.state(), State::Ending);
    assert_eq!(k.on(E::TornDown), [A::SyncNow, A::SessionClosed]);
    assert_eq!(k.state(), State::Idle);
    assert_eq!(k.next_timer(), None);
}

#[test]
fn a_bot_answering_longer_than_the_idle_timeout_is_not_cut_off() {
    let mut k = in_call();
    k.on(E::SpeechEnded);
    k.on(E::BotStartedSpeaking);
    assert_eq!(k.wait(25 * S), [], "the bot is still answering");
    assert_eq!(k.state(), State::BotSpeaking);
    k.on(E::BotStoppedSpeaking);
    assert_eq!(k.wait(10 * S - MS), []);
    assert_eq!(k.wait(MS), teardown(EndReason::Idle));
}

#[test]
fn whatever_is_said_starts_the_idle_clock_over() {
    let mut k = in_call();
    k.on(E::SpeechEnded);
    k.wait(9 * S);
    k.on(E::BotStartedSpeaking);
    k.wait(9 * S);
    k.on(E::BotStoppedSpeaking);
    assert_eq!(k.wait(10 * S - MS), []);
    assert_eq!(k.state(), State::Listening);
    assert_eq!(k.wait(MS), teardown(EndReason::Idle));
}

#[test]
fn max_duration_ends_a_session_that_never_idles() {
    let mut k = in_call();
    for _ in 0..29 {
        k.on(E::SpeechEnded);
        k.wait(5 * S);
        k.on(E::SpeechStarted);
        k.wait(5 * S);
    }
    assert_eq!(k.state(), State::UserSpeaking);
    assert_eq!(k.wait(10 * S), teardown(EndReason::MaxDuration));
}

#[test]
fn endings_carry_their_reason() {
    for (event, reason) in [
        (E::AgentLeft, EndReason::AgentLeft),
        (E::StopRequested, EndReason::Stopped),
        (E::Shutdown, EndReason::Shutdown),
    ] {
        let mut k = in_call();
        assert_eq!(k.on(event), teardown(reason), "{event:?}");
    }
}

#[test]
fn failures_play_the_prompt() {
    let mut k = Kiosk::new(Trigger::Voice);
    k.on(E::SpeechStarted);
    assert_eq!(
        k.on(E::ProvisionFailed),
        failed_teardown(EndReason::ProvisionFailed)
    );
    let mut k = Kiosk::new(Trigger::Voice);
    k.run(&[E::SpeechStarted, E::Provisioned]);
    assert_eq!(
        k.on(E::ConnectFailed),
        failed_teardown(EndReason::ConnectFailed)
    );
}

#[test]
fn teardown_is_a_queue_of_steps_and_the_session_closes_when_they_are_done() {
    let mut k = in_call();
    k.on(E::LinkLost);
    k.m.handle(E::LinkGaveUp, k.now);
    assert_eq!(k.state(), State::Ending);
    // The steps come out one at a time, in order: the orchestrator carries
    // each out before it asks for the next.
    for step in failed_teardown(EndReason::LinkLost) {
        assert_eq!(k.m.poll_action(), Some(step));
        assert_eq!(k.state(), State::Ending);
    }
    assert_eq!(k.m.poll_action(), None);
    assert_eq!(k.next_timer(), None, "the session's clocks are stopped");
    assert_eq!(
        k.on(E::SpeechStarted),
        [],
        "nothing starts while tearing down"
    );
    assert_eq!(
        k.on(E::TornDown),
        [A::ProbeCloud, A::SyncNow, A::SessionClosed]
    );
    assert_eq!(k.state(), State::Idle);
}

#[test]
fn a_dropped_call_holds_speech_and_comes_back_or_ends() {
    let mut k = in_call();
    assert_eq!(k.on(E::LinkLost), [A::HoldAudio]);
    assert_eq!(k.state(), State::Reconnecting);
    assert_eq!(k.on(E::LinkRestored), [A::ReleaseAudio]);
    k.on(E::LinkLost);
    assert_eq!(k.on(E::LinkGaveUp), failed_teardown(EndReason::LinkLost));
}

#[test]
fn the_reconnect_window_ends_a_call_the_link_never_reports_on() {
    let mut k = in_call();
    k.on(E::SpeechEnded);
    k.on(E::LinkLost);
    assert_eq!(k.next_timer(), Some((10 * S, Timer::Idle)));
    assert_eq!(k.wait(15 * S), [], "idle does not end a dropped call");
    k.on(E::LinkRestored);
    assert_eq!(k.state(), State::Listening);
    k.wait(5 * S);
    k.on(E::LinkLost);
    assert_eq!(k.m.deadlines.get(Timer::Reconnect), Some(k.now + 20 * S));
    assert_eq!(k.wait(20 * S - MS), [], "nor does it later");
    assert_eq!(k.wait(MS), failed_teardown(EndReason::LinkLost));
}

#[test]
fn a_restored_call_stops_the_reconnect_window() {
    let mut k = in_call();
    k.on(E::LinkLost);
    k.wait(19 * S);
    k.on(E::LinkRestored);
    assert_eq!(k.wait(2 * S), []);
    assert!(k.state().in_conversation());
}

#[test]
fn a_visitor_still_talking_at_the_end_gets_a_new_session() {
    let mut k = in_call();
    k.wait(300 * S);
    assert_eq!(
        k.on(E::TornDown),
        [A::SyncNow, A::SessionClosed, A::BeginSession, A::Provision]
    );
    assert_eq!(k.next_timer(), Some((300 * S, Timer::MaxDuration)));
}

#[test]
fn the_failure_backoff_doubles_and_a_healthy_session_resets_it() {
    let mut k = Kiosk::new(Trigger::Voice);
    for wait in [2 * S, 4 * S, 8 * S, 16 * S, 32 * S, 60 * S, 60 * S] {
        k.run(&[E::SpeechStarted, E::ProvisionFailed, E::SpeechEnded]);
        k.on(E::TornDown);
        assert_eq!(k.next_timer(), Some((wait, Timer::Backoff)));
        k.wait(wait - MS);
        assert_eq!(k.on(E::SpeechStarted), [], "still backing off");
        k.on(E::SpeechEnded);
        k.wait(MS);
        assert_eq!(k.next_timer(), None);
    }
    k.run(&[E::SpeechStarted, E::Provisioned, E::Connected, E::BotReady]);
    k.run(&[E::SpeechEnded]);
    k.wait(10 * S);
    k.on(E::TornDown);
    k.run(&[E::SpeechStarted, E::ProvisionFailed]);
    k.on(E::TornDown);
    k.on(E::SpeechEnded);
    assert_eq!(
        k.next_timer(),
        Some((2 * S, Timer::Backoff)),
        "back to the minimum"
    );
}

#[test]
fn speech_heard_while_backing_off_is_not_a_visitor() {
    let mut k = Kiosk::new(Trigger::Voice);
    k.run(&[
        E::SpeechStarted,
        E::ProvisionFailed,
        E::SpeechEnded,
        E::TornDown,
    ]);
    k.wait(S);
    assert_eq!(k.on(E::SpeechStarted), []);
    k.wait(2 * S);
    assert_eq!(
        k.on(E::StartRequested),
        [A::BeginSession, A::Provision],
        "a technician's start is not held back"
    );
    k.run(&[E::Provisioned, E::Connected, E::BotReady]);
    assert_eq!(
        k.state(),
        State::Listening,
        "the speech while backing off was not taken as a visitor talking"
    );
}

#[test]
fn a_technicians_start_does_not_wait_for_the_backoff() {
    let mut k = Kiosk::new(Trigger::Http);
    k.run(&[E::StartRequested, E::ProvisionFailed, E::TornDown]);
    assert_eq!(k.on(E::StartRequested), [A::BeginSession, A::Provision]);
}

#[test]
fn always_on_reopens_at_once_after_a_healthy_session_and_after_the_backoff_after_a_failure() {
    let mut k = Kiosk::new(Trigger::Always);
    assert_eq!(k.on(E::GatewayUp), [A::BeginSession, A::Provision]);
    k.run(&[E::Provisioned, E::Connected, E::BotReady]);
    assert_eq!(k.wait(10 * S), teardown(EndReason::Idle));
    assert_eq!(
        k.on(E::TornDown),
        [A::SyncNow, A::SessionClosed, A::BeginSession, A::Provision]
    );
    for wait in [2 * S, 4 * S, 8 * S] {
        k.on(E::ProvisionFailed);
        assert_eq!(
            k.on(E::TornDown),
            [A::ProbeCloud, A::SyncNow, A::SessionClosed],
            "after a failure the next waits for the backoff"
        );
        assert_eq!(k.wait(wait - MS), []);
        assert_eq!(k.wait(MS), [A::BeginSession, A::Provision]);
    }
    k.run(&[E::Provisioned, E::Connected, E::BotReady, E::AgentLeft]);
    k.on(E::TornDown);
    k.on(E::Provisioned);
    assert_eq!(
        k.on(E::ConnectFailed),
        failed_teardown(EndReason::ConnectFailed)
    );
    k.on(E::TornDown);
    assert_eq!(
        k.next_timer(),
        Some((2 * S, Timer::Backoff)),
        "the healthy session reset the backoff"
    );
}

#[test]
fn shutdown_stops_everything() {
    let mut k = Kiosk::new(Trigger::Always);
    k.run(&[E::GatewayUp, E::ProvisionFailed, E::TornDown]);
    assert_eq!(k.on(E::Shutdown), []);
    assert_eq!(k.wait(60 * S), [], "no restart after the backoff");
    assert_eq!(k.on(E::StartRequested), []);

    let mut k = Kiosk::new(Trigger::Always);
    k.on(E::GatewayUp);
    assert_eq!(
        k.on(E::Shutdown),
        teardown(EndReason::Shutdown),
        "no prompt while the service stops"
    );
    assert_eq!(k.on(E::TornDown), [A::SyncNow, A::SessionClosed]);
    assert_eq!(k.on(E::StartRequested), []);
    assert_eq!(k.on(E::SpeechStarted), []);
}

fn any_event() -> impl Strategy<Value = Event> {
    prop::sample::select(vec![
        E::GatewayUp,
        E::SpeechStarted,
        E::SpeechEnded,
        E::StartRequested,
        E::StopRequested,
        E::Provisioned,
        E::ProvisionFailed,
        E::Connected,
        E::ConnectFailed,
        E::BotReady,
        E::BotStartedSpeaking,
        E::BotStoppedSpeaking,
        E::LinkLost,
        E::LinkRestored,
        E::LinkGaveUp,
        E::AgentLeft,
        E::TornDown,
        E::Timeout,
    ])
}

fn any_trigger() -> impl Strategy<Value = Trigger> {
    prop::sample::select(vec![Trigger::Voice, Trigger::Http, Trigger::Always])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Random event orders and pauses keep the invariants the orchestrator
    /// relies on: one session at a time, every session ends once with a
    /// reason before it closes, no speech is released before the call is
    /// up and the agent ready (or the ready timeout passed), no deadline is
    /// left behind once it has passed, and no session clock runs outside a
    /// session.
    #[test]
    fn invariants_hold_for_any_event_order(
        trigger in any_trigger(),
        events in prop::collection::vec((any_event(), 0..15_000u64), 0..200),
    ) {
        let mut m = Machine::new(trigger, timing());
        let mut now = Instant::now();
        let mut open = false;
        let mut ended = false;
        let mut connected_at = None;
        let mut bot_ready = false;
        let tail = [(E::Shutdown, 0), (E::TornDown, 0)];
        for &(e, pause) in events.iter().chain(tail.iter()) {
            now += Duration::from_millis(pause);
            let was = m.state();
            if was == State::Connecting && e == E::Connected { connected_at = Some(now); }
            if connected_at.is_some() && e == E::BotReady { bot_ready = true; }
            m.handle(e, now);
            while let Some(a) = m.poll_action() {
                match a {
                    A::BeginSession => {
                        prop_assert!(!open, "a second session began while one was open");
                        open = true; ended = false; connected_at = None; bot_ready = false;
                    }
                    A::RecordEnd(_) => {
                        prop_assert!(open, "teardown without a session");
                        prop_assert!(!ended, "a session ended twice");
                        ended = true;
                    }
                    A::SessionClosed => {
                        prop_assert!(open && ended, "closed without an end reason");
                        open = false;
                    }
                    A::ReleaseAudio => {
                        let ready = connected_at
                            .is_some_and(|t| bot_ready || now >= t + timing().ready_timeout);
                        prop_assert!(ready, "speech released before the agent was ready");
                    }
                    _ => {}
                }
            }
            prop_assert_eq!(m.state() == State::Idle, !open, "state {:?} vs open {}", m.state(), open);
            if e == E::Timeout {
                prop_assert!(m.poll_timeout().is_none_or(|(at, _)| at > now), "a passed deadline is left");
            }
            if matches!(m.state(), State::Idle | State::Ending) {
                for t in Timer::SESSION {
                    prop_assert!(m.deadlines.get(t).is_none(), "{:?} armed in {:?}", t, m.state());
                }
            }
        }
        prop_assert!(!open, "shutdown and teardown leave no session open");
    }
}
