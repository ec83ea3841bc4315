//! The orchestrator: the I/O around the sans-I/O [`Machine`]. It feeds the
//! machine what the audio engine, the link and technicians report, and the
//! machine's deadlines as they pass, each with `Instant::now()`; it carries
//! out the machine's actions — provisioning, connecting, releasing buffered
//! speech, storing transcripts, each step of a teardown — and sleeps until
//! the machine's next deadline. Decisions are the machine's.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use jiff::Timestamp;
use tokio::sync::{mpsc, watch};
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::machine::{Action, EndReason, Event, Machine, State, Timing};
use super::persist::Persister;
use super::provision::{MediaTarget, ProvisionError, Provisioned, Provisioner};
use super::report::Milestones;
pub use super::report::{RunReport, Startup, Transition};
use super::spool::Write;
use crate::audio::{AudioEngine, AudioEvent, EncodedFrame, PlayoutSender, Prompt};
use crate::config::Trigger;
use crate::control::{Command, CurrentSession, Line, LinkView, Published};
use crate::error_text::error_chain;
use crate::health::{Component, Health};
use crate::link::rtvi::BotMessage;
use crate::link::signaling::smallwebrtc::SmallWebRtcSignaling;
use crate::link::transcript::{Speaker, TranscriptAssembler, TranscriptLine};
use crate::link::{
    Link, LinkError, LinkEvent, LinkIo, LinkSettings, LinkStats, OpusFrame,
    OpusPacket as LinkPacket,
};
use crate::liveness::{Liveness, Part, wedge_requested};
use crate::reachability::ProbeTrigger;
use crate::sip::leg::{self, LegSettings, SipTimeouts, Timers};
use crate::store::{FetchJob, NewSession, NewTranscript, Role, SessionEnd, SessionId, StoreHandle};
use crate::sync::SyncTrigger;
use crate::transcript_fetch;

/// Session behaviour, from `[session]` and `[agent]`.
#[derive(Clone, Debug)]
pub struct SessionSettings {
    /// This kiosk, for stored sessions and room names.
    pub kiosk_id: String,
    /// What starts a session.
    pub trigger: Trigger,
    /// A session ends after this long with nobody speaking.
    pub idle_timeout: Duration,
    /// The longest one session may last.
    pub max_duration: Duration,
    /// How long to wait for `bot-ready` before releasing buffered speech anyway.
    pub ready_timeout: Duration,
    /// How calls are set up.
    pub link: LinkSettings,
    /// How a SIP leg is dialled and watched (`provision = "daily-sip"`).
    pub sip: SipTimeouts,
    /// Played locally when a session cannot be set up.
    pub failure_prompt: Option<Prompt>,
    /// Wait before the next attempt after a failure, doubling to the max.
    pub failure_backoff_min: Duration,
    /// See `failure_backoff_min`.
    pub failure_backoff_max: Duration,
}

/// The session in progress.
struct Current {
    id: SessionId,
    started_at: Timestamp,
    onset: Instant,
    provisioned: Option<Provisioned>,
    link: Option<(Link, LinkIo)>,
    /// When its SIP call was first answered (Daily's transcript counts from here).
    sip_answered_at: Option<Timestamp>,
    user_speech_ms: u64,
    bot_speech_ms: u64,
    bot_speaking_since: Option<Instant>,
    /// The latest lines, for the page (all are stored).
    lines: VecDeque<Line>,
    /// The user's interim transcription, as last published.
    partial: Option<String>,
    /// One line per sentence, from however many RTVI messages carry it.
    transcript: TranscriptAssembler,
    first_packet_sent: bool,
    milestones: Milestones,
}

type Pending<T> = Option<tokio::task::JoinHandle<T>>;

/// Why the cloud half of a session could not be set up; logged with its
/// whole chain of causes.
#[derive(Debug, thiserror::Error)]
enum SetupError {
    #[error("provisioning failed")]
    Provision(#[from] ProvisionError),
    #[error("could not connect the call")]
    Connect(#[from] LinkError),
    #[error("the set-up task ended before it finished")]
    Task(#[from] tokio::task::JoinError),
}

/// A finished set-up task's result, its own error and the task's in one type.
fn settled<T, E: Into<SetupError>>(
    joined: Result<Result<T, E>, tokio::task::JoinError>,
) -> Result<T, SetupError> {
    joined?.map_err(Into::into)
}

/// Frames the outbox holds before dropping the oldest: 15 s of speech, as
/// the audio engine's own buffer-until-ready.
const OUTBOX_FRAMES: usize = 750;

/// Lines of the current session shown on the page, the latest ones; each
/// state change copies them, so a long session must not make that grow.
const PAGE_LINES: usize = 50;

/// How often an open call's statistics are published.
const LINK_STATS_EVERY: Duration = Duration::from_secs(2);

/// How much longer than the link the machine waits for a dropped call: the
/// link's own word (restored, or lost) should come first.
const RECONNECT_BACKSTOP: Duration = Duration::from_secs(5);

/// What the open call delivered.
enum LinkInput {
    Event(Option<LinkEvent>),
    Packet(LinkPacket),
}

/// The kiosk loop: feeds audio, link and technician events to the session [`Machine`], carries
/// out its actions, and records what happens.
pub struct Orchestrator {
    machine: Machine,
    settings: SessionSettings,
    provisioner: Arc<Provisioner>,
    store: StoreHandle,
    engine: AudioEngine,
    playout: PlayoutSender,
    events: mpsc::Receiver<AudioEvent>,
    frames: mpsc::Receiver<EncodedFrame>,
    commands: mpsc::Receiver<Command>,
    published: watch::Sender<Published>,
    sync: Option<SyncTrigger>,
    current: Option<Current>,
    provisioning: Pending<Result<Provisioned, ProvisionError>>,
    connecting: Pending<Result<(Link, LinkIo), LinkError>>,
    /// Frames waiting for the link: the speech buffered while the call
    /// came up, handed over as fast as the link takes it (the link paces
    /// what it sends), or everything said while the call is being restored.
    outbox: VecDeque<OpusFrame>,
    outbox_limit: usize,
    audio_out: Option<mpsc::Sender<OpusFrame>>,
    /// What the run did, kept only for a single-session run (the demo): a
    /// daemon running for months must not grow a list per session.
    report: Option<RunReport>,
    /// The state last published.
    noted_state: Option<State>,
    /// Asks for a cloud reachability check when a session fails.
    probe: Option<ProbeTrigger>,
    /// Store writes, carried out in order off the loop.
    persister: Persister,
    /// Told of every turn of the loop, for the watchdog.
    liveness: Option<Liveness>,
}

/// Hands the outbox's oldest frame to the link once its queue has room;
/// an error when the link has gone.
async fn send_oldest(
    link: &mpsc::Sender<OpusFrame>,
    outbox: &mut VecDeque<OpusFrame>,
) -> Result<(), mpsc::error::SendError<()>> {
    let permit = link.reserve().await?;
    if let Some(frame) = outbox.pop_front() {
        permit.send(frame);
    }
    Ok(())
}

impl Orchestrator {
    /// An orchestrator with nothing running yet.
    pub fn new(
        settings: SessionSettings,
        provisioner: Provisioner,
        store: StoreHandle,
        mut engine: AudioEngine,
        published: watch::Sender<Published>,
        sync: Option<SyncTrigger>,
    ) -> (Self, mpsc::Sender<Command>) {
        let (events, frames) = engine.take_streams();
        let (command_tx, commands) = mpsc::channel(8);
        let machine = Machine::new(
            settings.trigger,
            Timing {
                idle_timeout: settings.idle_timeout,
                max_duration: settings.max_duration,
                ready_timeout: settings.ready_timeout,
                reconnect_timeout: settings.link.reconnect_timeout + RECONNECT_BACKSTOP,
                failure_backoff_min: settings.failure_backoff_min,
                failure_backoff_max: settings.failure_backoff_max,
            },
        );
        let orchestrator = Self {
            machine,
            provisioner: Arc::new(provisioner),
            persister: Persister::new(store.clone()),
            store,
            playout: engine.playout(),
            engine,
            events,
            frames,
            commands,
            published,
            sync,
            current: None,
            provisioning: None,
            connecting: None,
            outbox: VecDeque::new(),
            outbox_limit: OUTBOX_FRAMES,
            audio_out: None,
            report: None,
            noted_state: None,
            probe: None,
            liveness: None,
            settings,
        };
        (orchestrator, command_tx)
    }

    /// Checks the cloud's reachability whenever a session fails (set-up, or
    /// a call that could not be restored).
    pub fn with_probe_trigger(mut self, probe: ProbeTrigger) -> Self {
        self.probe = Some(probe);
        self
    }

    /// Reports each turn of the loop to the watchdog.
    pub fn with_liveness(mut self, liveness: Liveness) -> Self {
        self.liveness = Some(liveness);
        self
    }

    /// Ends the run when the first session has closed (the demo).
    pub fn single_session(mut self) -> Self {
        self.report = Some(RunReport::default());
        self
    }

    /// Runs until `cancel` (ending an open session as `shutdown`).
    pub async fn run(mut self, cancel: CancellationToken) -> RunReport {
        match self.store.call(|s| s.close_crashed_sessions()).await {
            Ok(0) => {}
            Ok(n) => warn!(
                sessions = n,
                "sessions left open by a crash closed as crashed"
            ),
            Err(e) => {
                warn!(error = %error_chain(&e), "cannot close crashed sessions")
            }
        }
        self.note_state();
        self.publish_store_health();
        self.feed(Event::GatewayUp).await;
        let mut shutting_down = false;
        let mut link_stats = tokio::time::interval(LINK_STATS_EVERY);
        link_stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let started = Instant::now();
        // The loop turns at least this often, so the watchdog sees it alive.
        let mut heartbeat = tokio::time::interval(
            self.liveness
                .as_ref()
                .map_or(Duration::from_secs(3600), Liveness::beat_every),
        );
        // The loop turns 100+ times a second in a call: these two futures
        // live across its turns instead of being rebuilt (and registered
        // with the runtime) on each one. The timer moves only when the
        // machine's deadline does.
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        let timer = sleep_until(tokio::time::Instant::now());
        tokio::pin!(timer);
        let mut armed = None;
        loop {
            if let Some(l) = &self.liveness {
                l.beat(Part::Session);
                if wedge_requested(Part::Session, started) {
                    std::future::pending::<()>().await;
                }
            }
            if shutting_down && self.machine.state() == State::Idle {
                break;
            }
            if self.report.as_ref().is_some_and(|r| !r.sessions.is_empty())
                && self.machine.state() == State::Idle
            {
                break;
            }
            let deadline = self.machine.poll_timeout().map(|(at, _)| at);
            if deadline != armed {
                if let Some(at) = deadline {
                    timer.as_mut().reset(at.into());
                }
                armed = deadline;
            }
            let has_link = self.current.as_ref().is_some_and(|c| c.link.is_some());
            let sending = self.audio_out.is_some() && !self.outbox.is_empty();
            tokio::select! {
                _ = &mut cancelled, if !shutting_down => {
                    shutting_down = true;
                    self.feed(Event::Shutdown).await;
                }
                Some(e) = self.events.recv() => self.on_audio(e).await,
                Some(f) = self.frames.recv() => self.on_frame(f),
                Some(c) = self.commands.recv() => {
                    let event = match c { Command::Start => Event::StartRequested, Command::Stop => Event::StopRequested };
                    self.feed(event).await;
                }
                r = async { self.provisioning.as_mut().expect("guarded").await }, if self.provisioning.is_some() => {
                    self.provisioning = None;
                    self.on_provisioned(settled(r)).await;
                }
                r = async { self.connecting.as_mut().expect("guarded").await }, if self.connecting.is_some() => {
                    self.connecting = None;
                    self.on_connected(settled(r)).await;
                }
                input = async {
                    let io = &mut self.current.as_mut().and_then(|c| c.link.as_mut()).expect("guarded").1;
                    tokio::select! {
                        e = io.events.recv() => LinkInput::Event(e),
                        Some(p) = io.audio_in.recv() => LinkInput::Packet(p),
                    }
                }, if has_link => match input {
                    LinkInput::Event(Some(e)) => self.on_link(e).await,
                    LinkInput::Event(None) => self.feed(Event::LinkGaveUp).await,
                    LinkInput::Packet(p) => self.on_packet(p),
                },
                Ok(()) = async { send_oldest(self.audio_out.as_ref().expect("guarded"), &mut self.outbox).await }, if sending => {}
                _ = self.persister.advance() => self.publish_store_health(),
                _ = heartbeat.tick(), if self.liveness.is_some() => {}
                _ = link_stats.tick(), if has_link => self.on_link_stats().await,
                _ = &mut timer, if deadline.is_some() => self.feed(Event::Timeout).await,
            }
        }
        self.persister.drain().await;
        self.publish_store_health();
        self.report.unwrap_or_default()
    }

    async fn on_audio(&mut self, event: AudioEvent) {
        match event {
            AudioEvent::SpeechStarted { .. } => self.feed(Event::SpeechStarted).await,
            AudioEvent::SpeechEnded(utterance) => {
                let speech = u64::from(utterance.speech().0);
                if let Some(c) = &mut self.current {
                    c.user_speech_ms += speech;
                    if let Some(r) = &mut self.report {
                        r.utterances += 1;
                        r.speech_ms_sent += speech;
                    }
                }
                self.feed(Event::SpeechEnded).await;
            }
            AudioEvent::BargeIn => info!("visitor spoke over the bot; playback stopped"),
            AudioEvent::Device { direction, open } => {
                if open {
                    info!(?direction, "audio device open");
                } else {
                    warn!(?direction, "audio device lost; reopening");
                }
            }
        }
    }

    fn on_frame(&mut self, frame: EncodedFrame) {
        let Some(c) = &mut self.current else { return };
        self.outbox.push_back(OpusFrame {
            data: Bytes::copy_from_slice(frame.packet.bytes()),
            duration: frame.duration.into(),
            after_silence: frame.after_silence,
        });
        if self.outbox.len() > self.outbox_limit {
            self.outbox.pop_front();
            metrics::counter!("kiosk_link_audio_dropped_total").increment(1);
        }
        if !c.first_packet_sent && self.audio_out.is_some() {
            c.first_packet_sent = true;
            let startup = c.milestones.startup(c.onset, Instant::now());
            info!(session_id = %c.id, ?startup, "first packet handed to the link");
            if let Some(r) = &mut self.report {
                r.startups.push(startup);
            }
        }
    }

    fn on_packet(&mut self, p: LinkPacket) {
        // Whatever the agent sent: the engine counts and conceals what it cannot play.
        self.playout
            .push_payload(p.sequence, p.rtp_timestamp, &p.data);
    }

    async fn on_link(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Ready => {
                let mut sip = false;
                if let Some(c) = &mut self.current {
                    c.milestones.connected.get_or_insert_with(Instant::now);
                    sip = c
                        .provisioned
                        .as_ref()
                        .is_some_and(|p| matches!(p.media, MediaTarget::Sip { .. }));
                }
                self.feed(Event::Connected).await;
                // The agent's answer is in: the encoder follows it from the
                // call's first packets, not from the next stats tick, and
                // the page shows the link at once.
                self.on_link_stats().await;
                // A SIP leg has no RTVI: an answered call is a bot that
                // hears us (Daily's endpoint answers only once it is in the room).
                if sip {
                    self.on_sip_answered();
                    self.feed(Event::BotReady).await;
                }
            }
            LinkEvent::Reconnecting { reason } => {
                warn!(%reason, "call dropped; reconnecting");
                self.feed(Event::LinkLost).await;
            }
            LinkEvent::Reconnected { after } => {
                info!(after_ms = after.as_millis() as u64, "call restored");
                self.feed(Event::LinkRestored).await;
            }
            LinkEvent::PeerLeft => self.feed(Event::AgentLeft).await,
            LinkEvent::Lost { reason } => {
                warn!(%reason, "call lost");
                self.feed(Event::LinkGaveUp).await;
            }
            LinkEvent::Bot(message) => self.on_bot(message).await,
        }
    }

    async fn on_bot(&mut self, message: BotMessage) {
        if let Some(c) = &mut self.current {
            let lines = c.transcript.push(&message, Timestamp::now());
            let partial = c.transcript.partial().map(str::to_owned);
            let partial_changed = partial != c.partial;
            c.partial = partial;
            if !lines.is_empty() {
                self.store_lines(lines).await;
            } else if partial_changed {
                self.note_state();
            }
        }
        match message {
            BotMessage::BotReady { .. } => self.feed(Event::BotReady).await,
            BotMessage::BotStartedSpeaking => {
                if let Some(c) = &mut self.current {
                    c.bot_speaking_since = Some(Instant::now());
                }
                self.feed(Event::BotStartedSpeaking).await;
            }
            BotMessage::BotStoppedSpeaking => {
                if let Some(c) = &mut self.current
                    && let Some(since) = c.bot_speaking_since.take()
                {
                    c.bot_speech_ms += since.elapsed().as_millis() as u64;
                }
                self.feed(Event::BotStoppedSpeaking).await;
            }
            BotMessage::Error { error, fatal } => {
                warn!(%error, fatal, "the agent reported an error");
            }
            _ => {}
        }
    }

    /// Stores finished lines of the current session, in one transaction,
    /// and shows them on the status page.
    async fn store_lines(&mut self, lines: Vec<TranscriptLine>) {
        let Some(c) = &mut self.current else { return };
        if lines.is_empty() {
            return;
        }
        for l in &lines {
            if c.lines.len() == PAGE_LINES {
                c.lines.pop_front();
            }
            c.lines.push_back(Line {
                role: l.role.as_str(),
                text: l.text.clone(),
            });
        }
        let rows = transcript_rows(c.id, lines);
        self.persist(Write::Lines(rows));
        self.note_state();
    }

    /// Hands a write to the store, in order.
    fn persist(&mut self, write: Write) {
        self.persister.persist(write);
        self.publish_store_health();
    }

    /// The store as a component on the page, in `/metrics` and systemd's status.
    fn publish_store_health(&mut self) {
        let held = self.persister.spool().held_lines();
        let component = match self.persister.spool().failing() {
            None => Component {
                name: "store",
                health: Health::Ok,
                detail: "writing".into(),
            },
            Some(f) => Component {
                name: "store",
                health: Health::Down,
                detail: format!(
                    "cannot write since {}: {}; {held} transcript lines held in memory",
                    f.since, f.error
                ),
            },
        };
        metrics::gauge!("kiosk_store_writable")
            .set(f64::from(u8::from(component.health == Health::Ok)));
        metrics::gauge!("kiosk_store_spooled_lines").set(held as f64);
        let changed = self.published.send_if_modified(|p| {
            let slot = p.components.iter_mut().find(|c| c.name == "store");
            match slot {
                Some(c) if c.health == component.health && c.detail == component.detail => false,
                Some(c) => {
                    *c = component;
                    true
                }
                None => {
                    p.components.push(component);
                    true
                }
            }
        });
        if changed {
            self.systemd_status();
        }
    }

    async fn on_provisioned(&mut self, result: Result<Provisioned, SetupError>) {
        match result {
            Ok(p) => {
                if let Some(c) = &mut self.current {
                    c.milestones.provisioned = Some(Instant::now());
                    let write = Write::Cloud {
                        id: c.id,
                        room_name: p.room.as_ref().map(|r| r.name.to_string()),
                        room_url: p.room.as_ref().map(|r| r.url.clone()),
                        agent_session_id: p.agent_session_id.as_ref().map(|a| a.0.clone()),
                    };
                    c.provisioned = Some(p);
                    self.persist(write);
                }
                self.feed(Event::Provisioned).await;
            }
            Err(e) => {
                warn!(error = %error_chain(&e), "session set-up failed");
                self.feed(Event::ProvisionFailed).await;
            }
        }
    }

    async fn on_connected(&mut self, result: Result<(Link, LinkIo), SetupError>) {
        match result {
            Ok(link) => {
                if let Some(c) = &mut self.current {
                    self.audio_out = Some(link.1.audio_out.clone());
                    c.link = Some(link);
                }
            }
            Err(e) => {
                warn!(error = %error_chain(&e), "session set-up failed");
                self.feed(Event::ConnectFailed).await;
            }
        }
    }

    /// Feeds one event to the machine, which happened now, and carries out
    /// what it asks, in order. A step that reports back at once (the end of
    /// a teardown) is fed in turn; nothing re-enters this function.
    async fn feed(&mut self, event: Event) {
        let mut changed = self.handle(event);
        while let Some(action) = self.machine.poll_action() {
            if let Some(reply) = self.perform(action).await {
                changed |= self.handle(reply);
            }
        }
        if changed {
            self.note_state();
        }
    }

    /// Hands `event` to the machine; true when its state changed.
    fn handle(&mut self, event: Event) -> bool {
        let before = self.machine.state();
        self.machine.handle(event, Instant::now());
        self.machine.state() != before
    }

    /// Carries out one action; returns what the machine must be told now
    /// that it is done, if anything.
    async fn perform(&mut self, action: Action) -> Option<Event> {
        match action {
            Action::BeginSession => self.begin(),
            Action::Provision => {
                let provisioner = self.provisioner.clone();
                let kiosk = self.settings.kiosk_id.clone();
                let id = self.current.as_ref().map_or_else(SessionId::new, |c| c.id);
                self.provisioning = Some(tokio::spawn(async move {
                    provisioner.provision(&kiosk, id).await
                }));
            }
            Action::Connect => self.connect(),
            Action::ReleaseAudio => {
                if let Some(c) = &mut self.current {
                    c.milestones.ready.get_or_insert_with(Instant::now);
                }
                self.engine.link_ready();
            }
            Action::HoldAudio => {}
            Action::BargeIn => info!("barge-in"),
            Action::PlayFailurePrompt => self.play_failure_prompt(),
            Action::CancelSetup => self.cancel_setup().await,
            Action::StopAudio => {
                self.engine.end_stream();
                self.audio_out = None;
                self.outbox.clear();
            }
            Action::RecordEnd(reason) => self.record_end(reason),
            Action::CloseCall => self.close_call().await,
            Action::ReleaseCloud => {
                self.release_cloud().await;
                return Some(Event::TornDown);
            }
            Action::ProbeCloud => {
                if let Some(probe) = &self.probe {
                    probe.probe_now();
                }
            }
            Action::SyncNow => {
                if let Some(sync) = &self.sync {
                    sync.sync_now();
                }
            }
            Action::SessionClosed => {}
        }
        None
    }

    fn begin(&mut self) {
        let id = SessionId::new();
        let started_at = Timestamp::now();
        let row = NewSession {
            id,
            kiosk_id: self.settings.kiosk_id.clone(),
            started_at,
            room_name: None,
            room_url: None,
            agent_session_id: None,
        };
        self.persist(Write::Start(row));
        info!(session_id = %id, "session started");
        if let Some(r) = &mut self.report {
            r.sessions.push(id);
        }
        self.current = Some(Current {
            id,
            started_at,
            onset: Instant::now(),
            provisioned: None,
            link: None,
            sip_answered_at: None,
            user_speech_ms: 0,
            bot_speech_ms: 0,
            bot_speaking_since: None,
            lines: VecDeque::new(),
            partial: None,
            transcript: TranscriptAssembler::new(),
            first_packet_sent: false,
            milestones: Milestones::default(),
        });
    }

    fn connect(&mut self) {
        let Some(p) = self.current.as_ref().and_then(|c| c.provisioned.as_ref()) else {
            return;
        };
        let link = self.settings.link.clone();
        self.connecting = Some(match &p.media {
            MediaTarget::WebRtc {
                offer_url,
                offer_key,
            } => {
                let signaling = Arc::new(SmallWebRtcSignaling::new(
                    offer_url.clone(),
                    offer_key.clone(),
                    None,
                    Duration::from_secs(10),
                ));
                tokio::spawn(async move { Link::connect(link, signaling).await })
            }
            MediaTarget::Sip { uri } => {
                let leg = LegSettings {
                    target: uri.clone(),
                    from_user: "kiosk".into(),
                    credentials: None,
                    answer_timeout: self.settings.sip.answer_timeout,
                    ready_timeout: self.settings.ready_timeout,
                    media_timeout: self.settings.sip.media_timeout,
                    timers: Timers::default(),
                };
                tokio::spawn(async move { leg::connect(leg, &link).await })
            }
        });
    }

    /// Teardown: stops provisioning or connecting still under way.
    async fn cancel_setup(&mut self) {
        if let Some(p) = self.provisioning.take() {
            p.abort();
            // Cut short, it may have created a room: once it has stopped,
            // that room is deleted, or released with the session if it had
            // just finished.
            if let Ok(Ok(done)) = p.await
                && let Some(c) = &mut self.current
            {
                c.provisioned.get_or_insert(done);
            }
            self.provisioner.release_abandoned().await;
        }
        if let Some(c) = self.connecting.take() {
            c.abort();
        }
    }

    /// Teardown: completes the session row.
    fn record_end(&mut self, reason: EndReason) {
        let Some(c) = &mut self.current else { return };
        if let Some(since) = c.bot_speaking_since.take() {
            c.bot_speech_ms += since.elapsed().as_millis() as u64;
        }
        let end = SessionEnd {
            ended_at: Timestamp::now(),
            reason: reason.as_str().into(),
            user_speech_ms: c.user_speech_ms,
            bot_speech_ms: c.bot_speech_ms,
        };
        let id = c.id;
        let duration = c.onset.elapsed();
        self.persist(Write::End(id, end));
        info!(session_id = %id, %reason, "session ended");
        metrics::counter!("kiosk_sessions_total", "end_reason" => reason.as_str()).increment(1);
        metrics::histogram!("kiosk_session_duration_seconds").record(duration.as_secs_f64());
    }

    /// When the call connects and every couple of seconds after: its
    /// figures for the page, and for the encoder the agent's answer and
    /// its latest loss report.
    async fn on_link_stats(&mut self) {
        let Some((link, _)) = self.current.as_ref().and_then(|c| c.link.as_ref()) else {
            return;
        };
        let Some(stats) = publish_link_stats(link, &self.published, true).await else {
            return;
        };
        if let Some(fraction) = stats.loss_out_recent {
            self.engine.report_loss_out(stats.remote_reports, fraction);
        }
        if let Some(agent) = stats.agent_decoder() {
            self.engine.follow_agent(agent);
        }
    }

    /// Teardown: closes the call. What the agent said until it closed
    /// belongs to the session (its last transcription often comes as the
    /// call ends), and so does what the transcript still held: a sentence
    /// being spoken, lines waiting for the end of the bot's turn.
    async fn close_call(&mut self) {
        let Some(c) = &mut self.current else { return };
        let mut late = Vec::new();
        if let Some((link, mut io)) = c.link.take() {
            publish_link_stats(&link, &self.published, false).await;
            link.close().await;
            while let Ok(event) = io.events.try_recv() {
                if let LinkEvent::Bot(message) = event {
                    late.extend(c.transcript.push(&message, Timestamp::now()));
                }
            }
        }
        late.extend(c.transcript.finish(Timestamp::now()));
        if !late.is_empty() {
            let rows = transcript_rows(c.id, late);
            self.persist(Write::Lines(rows));
        }
    }

    /// Teardown, last step: deletes the session's room; the session is gone.
    async fn release_cloud(&mut self) {
        let Some(c) = self.current.take() else { return };
        let Some(p) = &c.provisioned else { return };
        if let Err(e) = self.provisioner.release(p).await {
            warn!(session_id = %c.id, error = %error_chain(&e), "cannot delete the session's room");
        }
        // Daily's transcript of the call is fetched once it is ready.
        if let (Some(room), Some(answered)) = (&p.room, c.sip_answered_at)
            && room.transcribed
        {
            let job = FetchJob {
                session_id: c.id,
                room_name: room.name.to_string(),
                room_id: room.id.clone(),
                display_name: self.provisioner.sip_display_name(&self.settings.kiosk_id),
                started_at: answered,
            };
            if let Err(e) = transcript_fetch::enqueue(&self.store, job).await {
                warn!(session_id = %c.id, error = %error_chain(&e), "cannot queue the Daily transcript's fetch");
            }
        }
    }

    /// The first SIP call of a session is up: Daily transcribes from here.
    fn on_sip_answered(&mut self) {
        let Some(c) = &mut self.current else { return };
        if c.sip_answered_at.is_some() {
            return;
        }
        c.sip_answered_at = Some(Timestamp::now());
        if let Some(p) = c.provisioned.clone() {
            let provisioner = self.provisioner.clone();
            // Off the session loop: audio keeps flowing while Daily answers.
            tokio::spawn(async move { provisioner.call_answered(&p).await });
        }
    }

    /// Plays the prompt through the playout path at its real pace, as the
    /// agent's audio arrives: the jitter buffer holds tens of milliseconds,
    /// not a whole sentence.
    fn play_failure_prompt(&mut self) {
        let Some(prompt) = &self.settings.failure_prompt else {
            return;
        };
        let packets = match prompt.packets() {
            Ok(packets) => packets,
            Err(e) => {
                warn!(error = %error_chain(&e), "cannot play the failure prompt");
                return;
            }
        };
        let playout = self.engine.playout();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Prompt::PACKET_DURATION);
            for packet in packets {
                match packet {
                    Ok(packet) => {
                        tick.tick().await;
                        playout.push(packet);
                    }
                    Err(e) => {
                        warn!(error = %error_chain(&e), "the failure prompt stopped");
                        return;
                    }
                }
            }
        });
    }

    /// systemd's status line: the state, and a store that is failing.
    fn systemd_status(&self) {
        let state = self.machine.state().as_str();
        match self.persister.spool().failing() {
            None => crate::systemd::status(state),
            Some(_) => crate::systemd::status(&format!(
                "{state}; store not writable, {} lines held in memory",
                self.persister.spool().held_lines()
            )),
        }
    }

    fn note_state(&mut self) {
        let state = self.machine.state();
        if self.noted_state != Some(state) {
            self.noted_state = Some(state);
            if let Some(r) = &mut self.report {
                r.transitions.push(Transition {
                    at: Timestamp::now(),
                    state,
                });
            }
            self.systemd_status();
        }
        let session = self.current.as_ref().map(|c| CurrentSession {
            id: c.id.to_string(),
            started_at: c.started_at,
            lines: c.lines.iter().cloned().collect(),
            partial: c.partial.clone(),
        });
        self.published.send_modify(|p| {
            p.state = state.as_str();
            p.session = session;
        });
    }
}

/// Store rows for finished lines of session `id`.
fn transcript_rows(id: SessionId, lines: Vec<TranscriptLine>) -> Vec<NewTranscript> {
    lines
        .into_iter()
        .map(|l| NewTranscript {
            session_id: id,
            role: match l.role {
                Speaker::User => Role::User,
                Speaker::Bot => Role::Bot,
            },
            text: l.text,
            is_final: l.is_final,
            confidence: l.confidence,
            spoken_at: l.spoken_at,
            received_at: l.received_at,
        })
        .collect()
}

/// Publishes a call's quality for the status page and metrics; `live` is
/// false for the final figures of a call being closed.
async fn publish_link_stats(
    link: &Link,
    published: &watch::Sender<Published>,
    live: bool,
) -> Option<LinkStats> {
    // The link task answers at once unless it is wedged; the session loop
    // must not wait on it.
    let Ok(Ok(stats)) = tokio::time::timeout(Duration::from_millis(500), link.stats()).await else {
        return None;
    };
    let view = LinkView::from_stats(&stats, live);
    published.send_modify(|p| p.link = Some(view));
    Some(stats)
}
