//! Keeps the bot's own voice, coming back from the speaker into the
//! microphone, from counting as the visitor speaking.
//!
//! The playout signal is the reference. While it is active, a microphone
//! frame only counts as speech if it is louder than the estimated echo
//! (reference envelope plus the learned speaker-to-microphone coupling) by
//! a margin. The coupling is learned while the bot plays and the visitor is
//! silent, so a loud speaker or a quiet one both settle to a usable gate.
//!
//! Behind the echo canceller the gate is a fallback: it sees the cleaned
//! signal, so what it learns is the residual the canceller leaves (its
//! echo return loss and enhancement together, as achieved in this room),
//! typically 30 dB or more below the raw echo. A visitor far quieter than
//! the bot then gets through, while residual echo, which the VAD alone
//! would take for speech, neither starts an utterance nor keeps one open.
//! While the bot talks the canceller's suppressor also turns the room's own
//! noise down; a frame no louder than that noise was when the bot was
//! silent is suppressed echo whatever the VAD makes of its shape, never a
//! visitor, whose voice only adds to the room.

use super::units::{Dbfs, Millis};

/// Reference frames considered when estimating the echo: the playout queue,
/// the device buffers and the room's reverberation delay the echo by up to
/// this many 10 ms frames after the reference.
const ECHO_SPAN_FRAMES: usize = 25;
/// A reference quieter than this is not audible in the room.
const REFERENCE_ACTIVE: Dbfs = Dbfs(-60.0);
/// Before anything is learned, assume the echo is this far below the
/// reference: a speaker close to the microphone.
const INITIAL_COUPLING_DB: f32 = -6.0;
/// Couplings are learned within these bounds so one odd frame can't open
/// or shut the gate for good.
const COUPLING_RANGE_DB: (f32, f32) = (-40.0, 0.0);
/// Behind the canceller the residual can sit much further down.
const RESIDUAL_RANGE_DB: (f32, f32) = (-80.0, 0.0);
/// Per-frame weights of a new coupling observation. The echo estimate has
/// to cover the loudest echo, not the average one, so it rises quickly
/// and falls back over several seconds.
const COUPLING_ATTACK: f32 = 0.2;
const COUPLING_RELEASE: f32 = 0.002;
/// The residual falls quickly once the canceller has converged (within a
/// second); following it as fast lets the visitor in early.
const RESIDUAL_RELEASE: f32 = 0.02;
const RESIDUAL_ATTACK: f32 = 0.05;
/// Behind the canceller, while the bot plays, a frame inside the visitor's
/// utterance only keeps it open if it is within this much of the
/// utterance's loudest frame: the canceller's filter, disturbed by double
/// talk, lets bursts of residual echo through far below the visitor's
/// voice, and each would otherwise hold the utterance open for another
/// hangover.
const IN_SPEECH_RANGE_DB: f32 = 25.0;
/// How fast that loudest level falls back (per admitted voiced frame), so
/// a shout early in an utterance does not shut out the rest of it; it holds
/// through the visitor's pauses, where residual echo would otherwise creep
/// in under a falling threshold and hold the utterance open.
const IN_SPEECH_PEAK_RELEASE_DB: f32 = 0.1;
/// Weight of each frame of room noise (bot silent, nothing voiced) in the
/// room's noise level.
const ROOM_NOISE_WEIGHT: f32 = 0.05;
/// While the bot talks, a frame must be this far above the room's noise
/// level to be a visitor. Below it is the suppressor at work; at it, the
/// VAD's own hangover after a burst of residual echo still calls frames
/// voiced, and they would join the next burst into an utterance.
const ABOVE_ROOM_NOISE_DB: f32 = 6.0;
/// When the bot starts talking after a pause the canceller lets more
/// through for a moment (bursts of residual echo 30 to 40 dB under the bot
/// in its first 100 ms, where it leaves 60 dB later on): for this many
/// frames after the talkspurt's echo reaches the microphone, the gate
/// assumes the residual at least this high.
const TALKSPURT_SETTLE_FRAMES: u32 = 15;
const TALKSPURT_RESIDUAL_DB: f32 = -35.0;

/// The echo gate: see the module's description.
pub struct EchoGate {
    margin_db: f32,
    coupling_db: f32,
    range_db: (f32, f32),
    attack: f32,
    release: f32,
    /// Behind the canceller: also judge frames inside the visitor's
    /// utterance (the residual is far below any visitor) and frames below
    /// the room's noise.
    behind_canceller: bool,
    /// The room's noise level as the microphone path passes it while the
    /// bot is silent; the floor until learned.
    room_noise_db: f32,
    /// Frames since the bot started talking after a pause.
    talkspurt_frames: u32,
    /// Frames from a reference frame to its echo in the microphone frames
    /// the gate judges: the device buffers, and the room once the
    /// canceller has measured it.
    echo_delay_frames: u32,
    recent_reference: [f32; ECHO_SPAN_FRAMES],
    next: usize,
    /// Loudest admitted level of the visitor's current utterance (decaying).
    speech_peak_db: f32,
    /// Whether the last frame came while the bot was audible and was loud
    /// enough to be the visitor over its echo, voiced or not.
    loud_over_bot: bool,
}

impl EchoGate {
    /// A gate that admits the microphone only `margin_db` above the estimated echo.
    pub fn new(margin_db: f32) -> Self {
        Self {
            margin_db,
            coupling_db: INITIAL_COUPLING_DB,
            range_db: COUPLING_RANGE_DB,
            attack: COUPLING_ATTACK,
            release: COUPLING_RELEASE,
            behind_canceller: false,
            room_noise_db: Dbfs::FLOOR.0,
            talkspurt_frames: 0,
            echo_delay_frames: 0,
            recent_reference: [Dbfs::FLOOR.0; ECHO_SPAN_FRAMES],
            next: 0,
            speech_peak_db: Dbfs::FLOOR.0,
            loud_over_bot: false,
        }
    }

    /// The gate behind an echo canceller, given the cleaned signal's
    /// levels: it learns the residual echo, and with it known so well a
    /// smaller margin does. `echo_delay`: how long a reference frame takes
    /// to come back in the microphone, as far as known before the
    /// canceller has measured it (see [`set_echo_delay`](Self::set_echo_delay)).
    pub fn behind_canceller(margin_db: f32, echo_delay: Millis) -> Self {
        let mut gate = Self {
            range_db: RESIDUAL_RANGE_DB,
            attack: RESIDUAL_ATTACK,
            release: RESIDUAL_RELEASE,
            behind_canceller: true,
            ..Self::new(margin_db / 2.0)
        };
        gate.set_echo_delay(echo_delay);
        gate
    }

    /// The delay from a reference frame to its echo in the microphone, as
    /// the canceller measured it. The canceller's burst at the start of
    /// the bot's talkspurt comes this much after the talkspurt's first
    /// reference frame: with 100 ms device buffers, a settling time
    /// counted from the reference was over before the burst came. The
    /// settling lasts from the reference on: a measured delay can be a
    /// frame or two short, and a visitor who starts then only needs to
    /// be louder than the burst, not than the echo.
    pub fn set_echo_delay(&mut self, delay: Millis) {
        self.echo_delay_frames = delay.frames();
    }

    /// Records the level of the 10 ms of playout handed to the speaker this tick.
    pub fn observe_reference(&mut self, level: Dbfs) {
        self.recent_reference[self.next] = level.0;
        self.next = (self.next + 1) % ECHO_SPAN_FRAMES;
    }

    /// Whether a voiced microphone frame at `mic` may count as the visitor.
    ///
    /// On its own the gate guards onsets only: once the visitor's
    /// utterance is open (`visitor_speaking`), a bot that starts talking
    /// must not cut them off mid-sentence, so their frames pass; at worst
    /// the echo prolongs the utterance's hangover. Behind the canceller it
    /// guards every frame. The coupling is learned only from frames that
    /// are then surely echo.
    pub fn admits(&mut self, mic: Dbfs, voiced: bool, visitor_speaking: bool) -> bool {
        self.loud_over_bot = false;
        if visitor_speaking && !self.behind_canceller {
            return voiced;
        }
        let envelope = self
            .recent_reference
            .iter()
            .copied()
            .fold(Dbfs::FLOOR.0, f32::max);
        if envelope < REFERENCE_ACTIVE.0 {
            if !voiced && !visitor_speaking {
                self.room_noise_db += ROOM_NOISE_WEIGHT * (mic.0 - self.room_noise_db);
            }
            self.talkspurt_frames = 0;
            return voiced;
        }
        self.talkspurt_frames = self.talkspurt_frames.saturating_add(1);
        let settling = self.talkspurt_frames <= self.echo_delay_frames + TALKSPURT_SETTLE_FRAMES;
        let coupling = if self.behind_canceller && settling {
            self.coupling_db.max(TALKSPURT_RESIDUAL_DB)
        } else {
            self.coupling_db
        };
        let echo_estimate = envelope + coupling;
        let mut admitted = mic.0 > echo_estimate + self.margin_db;
        if self.behind_canceller {
            admitted &= mic.0 > self.room_noise_db + ABOVE_ROOM_NOISE_DB;
            if visitor_speaking {
                admitted &= mic.0 > self.speech_peak_db - IN_SPEECH_RANGE_DB;
            } else {
                self.speech_peak_db = Dbfs::FLOOR.0;
            }
            if admitted && voiced {
                self.speech_peak_db = (self.speech_peak_db - IN_SPEECH_PEAK_RELEASE_DB).max(mic.0);
            }
        }
        self.loud_over_bot = admitted;
        if !admitted {
            let observed = (mic.0 - envelope).clamp(self.range_db.0, self.range_db.1);
            let rate = if observed > self.coupling_db {
                self.attack
            } else {
                self.release
            };
            self.coupling_db += rate * (observed - self.coupling_db);
        }
        voiced && admitted
    }

    /// Whether the last frame given to [`admits`](Self::admits) came while
    /// the bot was audible and was loud enough to be the visitor over its
    /// echo, whatever the VAD said of it.
    pub fn loud_over_bot(&self) -> bool {
        self.loud_over_bot
    }

    /// Current estimate of the speaker-to-microphone coupling.
    pub fn coupling_db(&self) -> f32 {
        self.coupling_db
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_playout_the_vad_decides_alone() {
        let mut gate = EchoGate::new(10.0);
        assert!(gate.admits(Dbfs(-50.0), true, false));
        assert!(!gate.admits(Dbfs(-10.0), false, false));
    }

    #[test]
    fn echo_is_gated_and_a_louder_visitor_gets_through() {
        let mut gate = EchoGate::new(10.0);
        // Echo 12 dB below the reference, varying by a few dB frame to frame.
        for i in 0..500 {
            gate.observe_reference(Dbfs(-20.0));
            let echo = -32.0 + [0.0, -6.0, 3.0, -9.0][i % 4];
            assert!(!gate.admits(Dbfs(echo), true, false), "frame {i}");
        }
        let learned = gate.coupling_db();
        assert!((-13.0..=-8.0).contains(&learned), "learned {learned}");
        gate.observe_reference(Dbfs(-20.0));
        assert!(gate.admits(Dbfs(-12.0), true, false));
        // A visitor already speaking is not cut off when the bot starts.
        assert!(gate.admits(Dbfs(-30.0), true, true));
    }

    #[test]
    fn behind_the_canceller_a_quiet_visitor_gets_through_and_residual_echo_does_not() {
        let mut gate = EchoGate::behind_canceller(6.0, Millis(0));
        // The canceller leaves the echo 50 dB below the reference, varying
        // frame to frame. A lone loud frame may pass, but never the three
        // in a row that an onset takes.
        let mut run = 0;
        for i in 0..300 {
            gate.observe_reference(Dbfs(-20.0));
            let residual = -70.0 + [0.0, -6.0, 3.0, -9.0][i % 4];
            run = if gate.admits(Dbfs(residual), true, false) {
                run + 1
            } else {
                0
            };
            assert!(run < 3, "frame {i}: {run} residual frames in a row");
        }
        gate.observe_reference(Dbfs(-20.0));
        // A visitor 15 dB quieter than the bot's signal.
        assert!(gate.admits(Dbfs(-35.0), true, false));
        // Residual echo does not keep an utterance open either.
        assert!(!gate.admits(Dbfs(-76.0), true, true));

        // A frame the VAD did not call voiced is still judged by its level,
        // for the fainter detector that dates onsets.
        gate.observe_reference(Dbfs(-20.0));
        gate.admits(Dbfs(-35.0), false, false);
        assert!(gate.loud_over_bot());
        gate.observe_reference(Dbfs(-20.0));
        gate.admits(Dbfs(-76.0), false, false);
        assert!(!gate.loud_over_bot());
        // With the bot silent there is no echo to be loud over.
        for _ in 0..ECHO_SPAN_FRAMES {
            gate.observe_reference(Dbfs::FLOOR);
        }
        gate.admits(Dbfs(-35.0), false, false);
        assert!(!gate.loud_over_bot());
    }

    #[test]
    fn behind_the_canceller_residual_bursts_far_below_the_visitor_do_not_hold_their_utterance_open()
    {
        let mut gate = EchoGate::behind_canceller(6.0, Millis(0));
        for i in 0..300 {
            gate.observe_reference(Dbfs(-15.0));
            let residual = -80.0 + [0.0, -6.0, 3.0, -9.0][i % 4];
            gate.admits(Dbfs(residual), true, false);
        }
        // The visitor talks at about -25 dBFS over the bot.
        for _ in 0..50 {
            gate.observe_reference(Dbfs(-15.0));
            assert!(gate.admits(Dbfs(-25.0), true, true));
        }
        // A burst of residual echo 25 dB below them, well above the
        // learned residual, does not count as their speech...
        gate.observe_reference(Dbfs(-15.0));
        assert!(!gate.admits(Dbfs(-52.0), true, true));
        // ...but their own softer speech still does.
        assert!(gate.admits(Dbfs(-40.0), true, true));
        // A new utterance starts afresh.
        gate.observe_reference(Dbfs(-15.0));
        assert!(gate.admits(Dbfs(-52.0), true, false));
    }

    #[test]
    fn behind_the_canceller_frames_not_above_the_rooms_noise_are_not_the_visitor() {
        let mut gate = EchoGate::behind_canceller(6.0, Millis(0));
        // The room at -70 dBFS while the bot is silent.
        for _ in 0..100 {
            gate.observe_reference(Dbfs::FLOOR);
            assert!(!gate.admits(Dbfs(-70.0), false, false));
        }
        // The bot talks; the canceller has it 60 dB down and its
        // suppressor takes the room's noise down with it.
        for _ in 0..200 {
            gate.observe_reference(Dbfs(-20.0));
            gate.admits(Dbfs(-85.0), false, false);
        }
        // A voiced-looking frame under the room's noise, or no louder than
        // it, is suppressed echo; a visitor adds to the room.
        gate.observe_reference(Dbfs(-20.0));
        assert!(!gate.admits(Dbfs(-76.0), true, false));
        assert!(!gate.admits(Dbfs(-68.0), true, false));
        assert!(gate.admits(Dbfs(-60.0), true, false));
        assert!(gate.admits(Dbfs(-50.0), true, false));
    }

    /// The canceller converged on a residual 60 dB under the bot, then a
    /// pause in the bot's speech.
    fn converge_then_pause(gate: &mut EchoGate) {
        for _ in 0..300 {
            gate.observe_reference(Dbfs(-20.0));
            gate.admits(Dbfs(-80.0), false, false);
        }
        for _ in 0..40 {
            gate.observe_reference(Dbfs::FLOOR);
            gate.admits(Dbfs(-80.0), false, false);
        }
    }

    #[test]
    fn behind_the_canceller_the_start_of_the_bots_talkspurt_needs_a_louder_visitor() {
        let mut gate = EchoGate::behind_canceller(6.0, Millis(0));
        converge_then_pause(&mut gate);
        // The bot starts again: the canceller leaks a burst 35 dB under it.
        gate.observe_reference(Dbfs(-20.0));
        assert!(!gate.admits(Dbfs(-56.0), true, false));
        // A visitor talking as loud as the bot's echo still gets through.
        assert!(gate.admits(Dbfs(-30.0), true, false));
        // Once the canceller has settled, the quieter level passes again.
        for _ in 0..TALKSPURT_SETTLE_FRAMES {
            gate.observe_reference(Dbfs(-20.0));
            gate.admits(Dbfs(-80.0), false, false);
        }
        gate.observe_reference(Dbfs(-20.0));
        assert!(gate.admits(Dbfs(-56.0), true, false));
    }

    #[test]
    fn behind_the_canceller_the_talkspurts_burst_is_judged_when_its_echo_arrives() {
        // The speaker's buffers and the room put the echo 150 ms behind
        // the reference, as the canceller measured it.
        let mut gate = EchoGate::behind_canceller(6.0, Millis(110));
        gate.set_echo_delay(Millis(150));
        converge_then_pause(&mut gate);
        // The bot talks again; for 150 ms the microphone still hears the
        // pause, then the canceller's burst comes, 35 dB under the bot,
        // for 100 ms: none of it is the visitor.
        for _ in 0..15 {
            gate.observe_reference(Dbfs(-20.0));
            gate.admits(Dbfs(-80.0), false, false);
        }
        for frame in 0..10 {
            gate.observe_reference(Dbfs(-20.0));
            assert!(
                !gate.admits(Dbfs(-56.0), true, false),
                "burst frame {frame}"
            );
        }
        // 150 ms after the echo came, the quieter level passes again.
        for _ in 0..5 {
            gate.observe_reference(Dbfs(-20.0));
            gate.admits(Dbfs(-80.0), false, false);
        }
        gate.observe_reference(Dbfs(-20.0));
        assert!(gate.admits(Dbfs(-56.0), true, false));
    }
}
