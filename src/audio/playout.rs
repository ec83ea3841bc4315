//! The playout path without devices: Opus packets from the link in,
//! 10 ms frames of 48 kHz audio for the speaker out.
//!
//! An adaptive jitter buffer reorders packets by sequence number and holds
//! enough audio to ride out network jitter (between `jitter_min_ms` and
//! `jitter_max_ms`, from an RFC 3550 interarrival jitter estimate). Packets
//! may hold any legal Opus duration (2.5 to 120 ms): the buffer counts each
//! by the duration its TOC byte gives, and sizes a lost packet's
//! concealment from the RTP timestamps around the hole. Lost packets are
//! rebuilt from the next packet's FEC or concealed. The buffer fills to its
//! target at a talkspurt's start; when the jitter, and with it the target,
//! grows while it plays, it deepens by inserting a frame of concealment
//! after a pause (decoded audio under -50 dBFS), where it goes unheard.
//! When it runs dry, the packet due is late, not lost (none after it is
//! here either): it is waited for, concealed meanwhile, and played when it
//! comes, rather than given up on and the buffer filled again from empty.
//! The time waited is the depth the path needed; only what lifts the
//! buffer past `jitter_max_ms` is given back, by dropping a packet that
//! decodes to a pause after a pause. What a stalled sender then sends at
//! once, continuing where it stopped, is not cut to catch up: the time
//! waited for it (up to half a second) is owed, and plays whole, late,
//! until a pause gives it back. A new talkspurt owes nothing.
//!
//! Whatever the agent sends, playout goes on: a packet libopus refuses (or
//! that is not Opus at all) is counted as undecodable and concealed in its
//! place, so the worst a hostile or broken agent gets is a gap of
//! concealment. On barge-in the output fades to silence within one 10 ms
//! frame and the queue is flushed.

use std::sync::Arc;

use super::AudioError;
use super::codec::{MAX_DECODED, OPUS_QUANTUM, OpusDecoder, OpusPacket, has_fec, packet_samples};
use super::metrics::AudioMetrics;
use super::settings::AudioSettings;
use super::units::{FRAME_48K, Millis, OPUS_FRAME};

/// Packets the jitter buffer can index; far more than `jitter_max_ms` needs
/// at 20 ms a packet, and still 160 ms of the shortest (2.5 ms) packets.
const SLOTS: usize = 64;
/// Buffering ends with this many packets queued whatever their duration:
/// tiny packets must not fill the slots before the target is reached.
const FULL_WINDOW: u16 = (SLOTS / 2) as u16;
/// Frames of concealment played on an empty buffer, waiting for a late
/// packet, before waiting on in silence.
const MAX_CONCEALED_RUN: u32 = 3;
/// Packets in a row from before the playout position: the sender's
/// sequence numbers went back (a restarted stream), so start over from them.
const MAX_LATE_RUN: u32 = 3;
/// Buffered audio beyond the target by this much (and beyond the time
/// owed) is dropped to catch up after a burst, rather than adding delay
/// for the rest of the turn.
const CATCH_UP_MS: u32 = 60;
/// The most time waited for late packets that is owed: a stall longer
/// than this is cut when the sender catches up, not to keep a visitor
/// waiting that long for the rest (and well inside what the slots index).
const MAX_OWED_MS: u32 = 500;
/// Decoded audio below this mean square (-50 dBFS) is a pause: a frame of
/// concealment inserted after it, to deepen the buffer, goes unheard.
const QUIET_POWER: f32 = 1e-5;
/// The bot counts as speaking until this many 10 ms frames in a row have
/// played as pauses: longer than the gaps between its words and most
/// between its sentences, so a visitor starting in one still cuts it off.
/// A stream of silence (Pipecat's transport sends it between answers) is
/// not speech, and a visitor starting over it cuts nothing off.
const SPEAKING_HANGOVER_FRAMES: u32 = 50;
/// Samples per millisecond at 48 kHz.
const PER_MS: u32 = 48;
/// What a packet of unknown duration (lost, or not Opus) is taken to hold:
/// the 20 ms every agent seen so far sends.
const DEFAULT_SPAN: u32 = OPUS_FRAME as u32;

/// An Opus packet from the link, with its RTP sequence number and timestamp.
#[derive(Clone, Copy, Debug)]
pub struct IncomingPacket {
    /// RTP sequence number.
    pub seq: u16,
    /// RTP timestamp (48 kHz clock).
    pub timestamp: u32,
    /// The Opus packet.
    pub payload: OpusPacket,
}

/// Whether `a` comes after `b` in RTP sequence order (with wraparound).
fn seq_after(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

/// A queued packet and its duration by its TOC (`None`: not Opus).
#[derive(Clone, Copy)]
struct Slot {
    packet: IncomingPacket,
    samples: Option<u32>,
}

impl Slot {
    fn span(&self) -> u32 {
        self.samples.unwrap_or(DEFAULT_SPAN)
    }
}

/// Reorders the agent's packets and holds enough of them to play smoothly, adapting its depth
/// between `jitter_min_ms` and `jitter_max_ms`.
pub struct JitterBuffer {
    slots: Vec<Option<Slot>>,
    /// Next sequence number to play; `None` until the first packet of a talkspurt.
    next_seq: Option<u16>,
    highest_seq: u16,
    /// RTP timestamp at which the next packet's audio starts, as far as
    /// what was played so far tells; sizes the concealment of a hole.
    next_ts: Option<u32>,
    buffering: bool,
    /// Audio played since the buffer ran empty (concealment, then
    /// silence), samples.
    waited: u32,
    /// Time waited for late packets and not yet given back in a pause,
    /// samples, at most `MAX_OWED_MS`: what the sender then sends at once
    /// plays whole rather than being cut by the catch-up.
    owed: u32,
    /// Where the stream stood when a long wait reset the buffer: a packet
    /// that continues from there is the stalled sender catching up (the
    /// time waited stays owed); one from later on starts a new talkspurt.
    resumes_at: Option<u32>,
    late_run: u32,
    /// RFC 3550 interarrival jitter, in ms.
    jitter_ms: f32,
    /// Arrival (ms) and RTP timestamp of the previous packet.
    last_arrival: Option<(Millis, u32)>,
    min_ms: u32,
    max_ms: u32,
    /// The target the buffer last filled to (at a talkspurt's start, or
    /// by inserting frames since), ms: it deepens only as the target rises
    /// above it.
    filled_to_ms: u32,
    metrics: Arc<AudioMetrics>,
}

/// What the jitter buffer has to play next.
#[derive(Debug)]
pub enum NextFrame {
    /// The next packet; `samples` is its duration by its TOC, `None` when
    /// that is not a legal Opus duration (it will not decode). Should it
    /// not decode, `conceal` is how much audio to conceal in its place:
    /// up to the next packet's RTP timestamp when that is here (a broken
    /// packet's TOC is no authority), else its TOC's duration, else 20 ms.
    Packet {
        /// The packet.
        packet: IncomingPacket,
        /// Its duration by its TOC.
        samples: Option<usize>,
        /// Audio to conceal if it does not decode.
        conceal: usize,
        /// Waiting for late packets has left the buffer deeper than
        /// `jitter_max_ms` besides this packet: should it decode to a
        /// pause after a pause, it may be dropped unheard to give that
        /// time back (see [`JitterBuffer::gave_back`]).
        droppable: bool,
    },
    /// `samples` of audio were lost, or are late and waited for (a
    /// multiple of 2.5 ms, at most 120 ms); `next` is the following packet
    /// if it is here (its FEC can rebuild the end of the lost audio).
    Lost {
        /// The packet after the loss, if here.
        next: Option<IncomingPacket>,
        /// How much audio was lost.
        samples: usize,
    },
    /// The buffer is short of its target by more than a packet (the
    /// jitter grew while it played) and what just played was a pause:
    /// play `samples` of concealment here and take no packet, so the
    /// buffer deepens where nobody hears it.
    Inserted {
        /// How much audio to insert.
        samples: usize,
    },
    /// Nothing to play.
    Silence,
}

impl JitterBuffer {
    /// An empty buffer with `settings`' bounds.
    pub fn new(settings: &AudioSettings, metrics: Arc<AudioMetrics>) -> Self {
        let min_ms = settings.jitter_min_ms.0.max(20);
        Self {
            slots: vec![None; SLOTS],
            next_seq: None,
            highest_seq: 0,
            next_ts: None,
            buffering: true,
            waited: 0,
            owed: 0,
            resumes_at: None,
            late_run: 0,
            jitter_ms: 0.0,
            last_arrival: None,
            min_ms,
            max_ms: settings.jitter_max_ms.0.max(min_ms),
            filled_to_ms: min_ms,
            metrics,
        }
    }

    /// Depth the buffer aims for before and while playing.
    pub fn target(&self) -> Millis {
        let wanted = 20.0 + 2.0 * self.jitter_ms;
        let frames = (wanted / 20.0).ceil() as u32;
        Millis((frames * 20).clamp(self.min_ms, self.max_ms))
    }

    /// Audio buffered from the next packet to play to the newest one.
    pub fn depth(&self) -> Millis {
        Millis(self.depth_samples() / PER_MS)
    }

    fn slot(&self, seq: u16) -> Option<&Slot> {
        self.slots[usize::from(seq) % SLOTS]
            .as_ref()
            .filter(|s| s.packet.seq == seq)
    }

    /// Duration of the packet at `seq`: by its TOC when it is here, else
    /// the usual 20 ms.
    fn span(&self, seq: u16) -> u32 {
        self.slot(seq).map_or(DEFAULT_SPAN, Slot::span)
    }

    /// Samples from `next_seq` to `highest_seq`, holes counted at 20 ms.
    fn depth_samples(&self) -> u32 {
        self.window().0
    }

    /// Samples from `next_seq` to `highest_seq` (holes counted at 20 ms),
    /// and the longest packet among them.
    fn window(&self) -> (u32, u32) {
        match self.next_seq {
            Some(next) if !seq_after(next, self.highest_seq) => {
                // `insert` keeps the window within SLOTS packets.
                let n = self.highest_seq.wrapping_sub(next);
                (0..=n)
                    .map(|i| self.span(next.wrapping_add(i)))
                    .fold((0, 0), |(sum, longest), s| (sum + s, longest.max(s)))
            }
            _ => (0, 0),
        }
    }

    /// What must be queued, the packet about to be decoded included, for
    /// playback to have `target` of margin: a 60 ms packet needs more
    /// behind it than a 20 ms one.
    fn needed(&self, next: u16) -> u32 {
        self.target().0 * PER_MS + self.span(next).saturating_sub(DEFAULT_SPAN)
    }

    /// Queues a packet that arrived at `arrival`; a late one is counted.
    pub fn insert(&mut self, packet: IncomingPacket, arrival: Millis) {
        AudioMetrics::add(&self.metrics.packets_received, 1);
        if let Some((last_arrival, last_ts)) = self.last_arrival {
            // Difference of relative transit times (RFC 3550 section 6.4.1),
            // in whole numbers so a large random timestamp loses no precision.
            let sent = f64::from(packet.timestamp.wrapping_sub(last_ts) as i32) / f64::from(PER_MS);
            let arrived = f64::from(arrival.0) - f64::from(last_arrival.0);
            let d = (arrived - sent).abs() as f32;
            // A large jump (a new talkspurt after a long pause) is not jitter.
            if d < 1000.0 {
                self.jitter_ms += (d - self.jitter_ms) / 16.0;
            }
        }
        self.last_arrival = Some((arrival, packet.timestamp));

        match self.next_seq {
            None => {
                let resumed = self.resumes_at.take().is_some_and(|ts| {
                    packet.timestamp.wrapping_sub(ts) <= MAX_CONCEALED_RUN * DEFAULT_SPAN
                });
                if !resumed {
                    self.owed = 0;
                }
                self.next_seq = Some(packet.seq);
                self.highest_seq = packet.seq;
            }
            Some(next) if seq_after(next, packet.seq) && self.late_run + 1 < MAX_LATE_RUN => {
                self.late_run += 1;
                AudioMetrics::add(&self.metrics.packets_late, 1);
                return;
            }
            Some(next) if seq_after(next, packet.seq) => {
                // Not late: renumbered. Drop what was queued under the old numbers.
                self.reset();
                self.next_seq = Some(packet.seq);
                self.highest_seq = packet.seq;
            }
            Some(next) => {
                if packet.seq.wrapping_sub(next) as usize >= SLOTS {
                    // Too far ahead to index: the stream jumped; restart from here.
                    self.reset();
                    self.next_seq = Some(packet.seq);
                    self.highest_seq = packet.seq;
                } else if seq_after(packet.seq, self.highest_seq) {
                    self.highest_seq = packet.seq;
                }
            }
        }
        self.late_run = 0;
        let samples = packet_samples(packet.payload.bytes()).map(|n| n as u32);
        self.slots[usize::from(packet.seq) % SLOTS] = Some(Slot { packet, samples });
        self.metrics.jitter_target_ms.store(
            u64::from(self.target().0),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Takes what should be played next; `after_pause`: the audio played
    /// last was quiet, so the buffer may deepen there (see
    /// [`NextFrame::Inserted`]).
    pub fn pop(&mut self, after_pause: bool) -> NextFrame {
        let Some(mut next) = self.next_seq else {
            // A wait that outlasted the buffer goes on being owed: if the
            // sender then continues where it stopped, it was a stall and
            // what it sends at once is its speech, not a burst to cut (a
            // talkspurt that starts later on owes nothing: `insert`).
            if self.owed > 0 {
                self.owe(FRAME_48K as u32);
            }
            return NextFrame::Silence;
        };
        if self.buffering {
            let window_full = !seq_after(next, self.highest_seq)
                && self.highest_seq.wrapping_sub(next) >= FULL_WINDOW;
            if self.depth_samples() < self.needed(next) && !window_full {
                return NextFrame::Silence;
            }
            self.buffering = false;
            self.filled_to_ms = self.target().0;
        }
        // A long packet arrives with its whole duration at once: that is
        // not excess delay to catch up on.
        let (mut depth, longest) = self.window();
        let slack = CATCH_UP_MS * PER_MS + longest.saturating_sub(DEFAULT_SPAN) + self.owed;
        let target = self.target().0 * PER_MS;
        while depth > self.needed(next) + slack && depth - self.span(next) >= target {
            AudioMetrics::add(&self.metrics.frames_removed, 1);
            let span = self.span(next);
            self.slots[usize::from(next) % SLOTS] = None;
            depth -= span;
            self.next_ts = self.next_ts.map(|t| t.wrapping_add(span));
            next = next.wrapping_add(1);
            self.next_seq = Some(next);
        }
        // While the buffer was dry, `waited` was played in place of the
        // packet due, taken for late; a later packet here and not it says
        // it was lost (or is later still): the time played covers it,
        // rather than being concealed again after the wait.
        while self.waited >= DEFAULT_SPAN
            && self.slot(next).is_none()
            && seq_after(self.highest_seq, next)
        {
            self.waited -= DEFAULT_SPAN;
            self.owed = self.owed.saturating_sub(DEFAULT_SPAN);
            depth = depth.saturating_sub(DEFAULT_SPAN);
            self.next_ts = self.next_ts.map(|t| t.wrapping_add(DEFAULT_SPAN));
            next = next.wrapping_add(1);
            self.next_seq = Some(next);
        }
        // The target grows with the measured jitter, but buffering reaches
        // it only at a talkspurt's start, and an agent that streams its
        // silences (Pipecat) makes one talkspurt of the whole call.
        let target_ms = self.target().0;
        self.filled_to_ms = self.filled_to_ms.min(target_ms);
        if after_pause && target_ms > self.filled_to_ms && depth + DEFAULT_SPAN < self.needed(next)
        {
            self.filled_to_ms += DEFAULT_SPAN / PER_MS;
            return NextFrame::Inserted {
                samples: OPUS_FRAME,
            };
        }
        let here = self.slots[usize::from(next) % SLOTS]
            .take()
            .filter(|s| s.packet.seq == next);
        let following = next.wrapping_add(1);
        let next_packet = self.slot(following).map(|s| s.packet);
        self.metrics.jitter_delay_ms.store(
            u64::from(self.depth_samples() / PER_MS),
            std::sync::atomic::Ordering::Relaxed,
        );
        if let Some(slot) = here {
            let samples = slot.samples.map(|n| n as usize);
            let until_next = gap_samples(slot.packet.timestamp, next_packet.as_ref());
            self.next_seq = Some(following);
            self.next_ts = Some(slot.packet.timestamp.wrapping_add(slot.span()));
            self.waited = 0;
            // The time waited is the depth the path needed; only what
            // lifts the buffer past its ceiling is given back.
            let ceiling = self.needed(next).max(self.max_ms * PER_MS);
            let droppable = self.owed >= slot.span() && depth >= ceiling + slot.span();
            return NextFrame::Packet {
                packet: slot.packet,
                samples,
                conceal: until_next.or(samples).unwrap_or(OPUS_FRAME),
                droppable,
            };
        }
        if seq_after(self.highest_seq, next) {
            // A hole with later packets present: the packet was lost or is very late.
            let samples = self
                .next_ts
                .and_then(|ts| gap_samples(ts, next_packet.as_ref()))
                .unwrap_or(OPUS_FRAME);
            self.next_seq = Some(following);
            self.next_ts = self.next_ts.map(|t| t.wrapping_add(samples as u32));
            AudioMetrics::add(&self.metrics.packets_concealed, 1);
            return NextFrame::Lost {
                next: next_packet,
                samples,
            };
        }
        // Empty: the next packet is late, or the stream paused. Conceal
        // in its place without giving up on it: when it comes it plays, as
        // much later as was concealed, and the packets behind it find the
        // buffer that much deeper. Past a few frames the concealment has
        // faded out; waiting goes on in silence, and past the deepest the
        // buffer may be, the talkspurt is over: what comes next is buffered
        // to the target.
        if self.waited < MAX_CONCEALED_RUN * DEFAULT_SPAN {
            self.waited += DEFAULT_SPAN;
            self.owe(DEFAULT_SPAN);
            AudioMetrics::add(&self.metrics.packets_concealed, 1);
            return NextFrame::Lost {
                next: None,
                samples: OPUS_FRAME,
            };
        }
        // Each call past the concealment is a 10 ms frame of silence.
        self.waited += FRAME_48K as u32;
        self.owe(FRAME_48K as u32);
        if self.waited > MAX_CONCEALED_RUN * DEFAULT_SPAN + self.max_ms * PER_MS {
            self.resumes_at = self.next_ts;
            self.forget_stream();
        }
        NextFrame::Silence
    }

    /// Drops everything queued and waits for a new talkspurt.
    pub fn reset(&mut self) {
        self.forget_stream();
        self.owed = 0;
        self.resumes_at = None;
    }

    /// Drops everything queued and the stream's position; what is owed
    /// stays (a wait that outlasted the buffer may yet be a stall).
    fn forget_stream(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = None);
        self.next_seq = None;
        self.next_ts = None;
        self.buffering = true;
        self.waited = 0;
        self.late_run = 0;
        self.last_arrival = None;
    }

    /// `samples` more were waited for a late packet.
    fn owe(&mut self, samples: u32) {
        self.owed = (self.owed + samples).min(MAX_OWED_MS * PER_MS);
    }

    /// A droppable packet of `samples` was dropped: that much less is owed.
    pub fn gave_back(&mut self, samples: u32) {
        self.owed = self.owed.saturating_sub(samples);
    }
}

/// Audio from RTP timestamp `from` to `following`'s, when that packet is
/// here and the gap is a legal Opus duration (a multiple of 2.5 ms up to
/// 120 ms).
fn gap_samples(from: u32, following: Option<&IncomingPacket>) -> Option<usize> {
    let gap = following?.timestamp.wrapping_sub(from) as i32;
    usize::try_from(gap)
        .ok()
        .filter(|n| (OPUS_QUANTUM..=MAX_DECODED).contains(n) && n % OPUS_QUANTUM == 0)
}

/// Decoded audio the playout holds: what is left of the last 10 ms frame
/// (less than one frame) plus one packet of the longest duration.
const PENDING: usize = FRAME_48K + MAX_DECODED;

/// Decodes the jitter buffer's output into 10 ms frames for the speaker.
pub struct Playout {
    jitter: JitterBuffer,
    decoder: OpusDecoder,
    /// Decoded audio not yet played: `pcm[pcm_start..pcm_end]`. Allocated
    /// once; packets of any duration decode into it.
    pcm: Box<[f32]>,
    pcm_start: usize,
    pcm_end: usize,
    fading: bool,
    /// After a barge-in, the bot's remaining audio is dropped until `release`.
    muted: bool,
    barge_in_enabled: bool,
    playing: bool,
    /// 10 ms frames played in a row as pauses (saturating).
    quiet_frames: u32,
    /// Whether the last audio decoded was a pause (below [`QUIET_POWER`]).
    after_pause: bool,
    metrics: Arc<AudioMetrics>,
}

impl Playout {
    /// Playout with `settings`' jitter bounds, a decoder and nothing queued.
    pub fn new(settings: &AudioSettings, metrics: Arc<AudioMetrics>) -> Result<Self, AudioError> {
        Ok(Self {
            jitter: JitterBuffer::new(settings, metrics.clone()),
            decoder: OpusDecoder::new()?,
            pcm: vec![0.0; PENDING].into_boxed_slice(),
            pcm_start: 0,
            pcm_end: 0,
            fading: false,
            muted: false,
            barge_in_enabled: settings.barge_in,
            playing: false,
            quiet_frames: SPEAKING_HANGOVER_FRAMES,
            after_pause: false,
            metrics,
        })
    }

    /// Queues a packet from the link; `now` is the DSP clock at arrival.
    pub fn push(&mut self, packet: IncomingPacket, now: Millis) {
        if !self.muted {
            self.jitter.insert(packet, now);
        }
    }

    /// Whether the bot's audio is being played.
    pub fn is_playing(&self) -> bool {
        self.playing
    }

    /// Whether the frame just played was the bot's voice: decoded audio
    /// louder than a pause, not the silence a transport streams between
    /// answers.
    pub fn played_voice(&self) -> bool {
        self.playing && self.quiet_frames == 0
    }

    /// Whether the bot is speaking: its audio is playing and was louder
    /// than a pause within the last [`SPEAKING_HANGOVER_FRAMES`].
    fn is_speaking(&self) -> bool {
        self.playing && self.quiet_frames < SPEAKING_HANGOVER_FRAMES
    }

    /// The visitor started speaking: if the bot is speaking and barge-in is
    /// enabled, fade out over the next frame, flush the queue and stay quiet
    /// until [`release`](Self::release). Returns whether playback was cut.
    pub fn barge_in(&mut self) -> bool {
        if !self.barge_in_enabled || !self.is_speaking() || self.muted {
            return false;
        }
        self.fading = true;
        self.muted = true;
        AudioMetrics::add(&self.metrics.barge_ins, 1);
        true
    }

    /// The visitor's turn is over: accept the bot's audio again.
    pub fn release(&mut self) {
        self.muted = false;
    }

    /// Produces the next 10 ms for the speaker. Returns whether it is
    /// audible. Never fails: what cannot be decoded is concealed.
    pub fn next_frame(&mut self, out: &mut [f32; FRAME_48K]) -> bool {
        if self.fading {
            // Ramp what was about to play down to zero over this one frame,
            // then drop the rest of the bot's turn.
            self.refill();
            self.copy_pending(out);
            self.jitter.reset();
            let n = FRAME_48K as f32;
            for (i, s) in out.iter_mut().enumerate() {
                *s *= 1.0 - (i as f32 + 1.0) / n;
            }
            self.fading = false;
            self.pcm_start = 0;
            self.pcm_end = 0;
            self.playing = false;
            return true;
        }
        if self.muted {
            out.fill(0.0);
            return false;
        }
        let audible = self.refill();
        self.copy_pending(out);
        self.playing = audible;
        // `refill` measured what it decoded: no second pass over the frame.
        self.quiet_frames = if audible && !self.after_pause {
            0
        } else {
            self.quiet_frames.saturating_add(1)
        };
        audible
    }

    fn pending(&self) -> usize {
        self.pcm_end - self.pcm_start
    }

    /// Hands out the next 10 ms (the tail of a talkspurt padded with silence).
    fn copy_pending(&mut self, out: &mut [f32; FRAME_48K]) {
        let n = self.pending().min(FRAME_48K);
        out[..n].copy_from_slice(&self.pcm[self.pcm_start..self.pcm_start + n]);
        out[n..].fill(0.0);
        self.pcm_start += n;
    }

    /// Decodes until a whole 10 ms frame is pending. Returns false when
    /// there is nothing at all to play.
    fn refill(&mut self) -> bool {
        while self.pending() < FRAME_48K {
            // Move the remainder (under 10 ms) to the front: room for the
            // longest packet after it.
            self.pcm.copy_within(self.pcm_start..self.pcm_end, 0);
            self.pcm_end -= self.pcm_start;
            self.pcm_start = 0;
            let free = &mut self.pcm[self.pcm_end..self.pcm_end + MAX_DECODED];
            let produced = match self.jitter.pop(self.after_pause) {
                NextFrame::Packet {
                    packet,
                    samples,
                    conceal: instead,
                    droppable,
                } => match samples.map(|_| self.decoder.decode(packet.payload.bytes(), free)) {
                    Some(Ok(n)) if droppable && self.after_pause && is_quiet(&free[..n]) => {
                        // A pause in a pause: dropped, the time waited
                        // for a late packet given back unheard.
                        self.jitter.gave_back(n as u32);
                        AudioMetrics::add(&self.metrics.frames_removed, 1);
                        continue;
                    }
                    Some(Ok(n)) => {
                        AudioMetrics::add(&self.metrics.packets_played, 1);
                        n
                    }
                    // libopus refused it, or it is not Opus at all.
                    _ => {
                        AudioMetrics::add(&self.metrics.packets_undecodable, 1);
                        conceal(&mut self.decoder, None, &mut free[..instead])
                    }
                },
                NextFrame::Lost { next, samples } => {
                    let fec = next
                        .as_ref()
                        .map(|p| p.payload.bytes())
                        .filter(|p| has_fec(p));
                    if fec.is_some() {
                        AudioMetrics::add(&self.metrics.packets_fec_recovered, 1);
                    }
                    conceal(&mut self.decoder, fec, &mut free[..samples])
                }
                NextFrame::Inserted { samples } => {
                    AudioMetrics::add(&self.metrics.frames_inserted, 1);
                    conceal(&mut self.decoder, None, &mut free[..samples])
                }
                NextFrame::Silence => {
                    if self.pending() == 0 {
                        return false;
                    }
                    break;
                }
            };
            // Garbage that libopus accepts can decode far beyond full
            // scale (over 100 times): never let it reach the speaker.
            let mut power = 0.0;
            for s in &mut self.pcm[self.pcm_end..self.pcm_end + produced] {
                *s = if s.is_nan() { 0.0 } else { s.clamp(-1.0, 1.0) };
                power += *s * *s;
            }
            self.after_pause = power < QUIET_POWER * produced as f32;
            self.pcm_end += produced;
        }
        true
    }
}

/// Whether decoded audio is a pause (below [`QUIET_POWER`]); garbage
/// (NaN) is not.
fn is_quiet(pcm: &[f32]) -> bool {
    let power: f32 = pcm.iter().map(|s| s * s).sum();
    power < QUIET_POWER * pcm.len() as f32
}

/// Fills `out` in place of lost audio: FEC from `next` when it has any,
/// else concealment, else (libopus refusing even that) silence. Returns
/// `out.len()`.
fn conceal(decoder: &mut OpusDecoder, next: Option<&[u8]>, out: &mut [f32]) -> usize {
    let done = next
        .and_then(|p| decoder.conceal(Some(p), out).ok())
        .or_else(|| decoder.conceal(None, out).ok());
    if done != Some(out.len()) {
        out.fill(0.0);
    }
    out.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::codec::OpusEncoder;
    use crate::audio::units::Dbfs;

    /// The bot's speech from the fixture at 48 kHz.
    fn speech() -> Vec<f32> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/audio/bot_reference_16k.wav");
        let clip = crate::audio::wav::read_wav(&path).unwrap();
        crate::audio::resample::resample_clip(
            &clip.samples,
            clip.rate,
            crate::audio::units::SampleRate::OPUS,
        )
        .unwrap()
    }

    /// The bot's speech from the fixture, encoded, with RTP numbering that
    /// wraps around during the clip.
    fn packets(n: usize) -> Vec<IncomingPacket> {
        // Start 1 s in, where the bot starts talking.
        encoded(speech()[48_000..].chunks_exact(OPUS_FRAME).take(n), 65_500)
    }

    /// 20 ms chunks encoded into consecutive packets from `first_seq`.
    fn encoded<'a>(chunks: impl Iterator<Item = &'a [f32]>, first_seq: u16) -> Vec<IncomingPacket> {
        let mut enc = OpusEncoder::new(&AudioSettings::default()).unwrap();
        chunks
            .enumerate()
            .map(|(k, chunk)| IncomingPacket {
                seq: first_seq.wrapping_add(k as u16),
                timestamp: (k * OPUS_FRAME) as u32,
                payload: enc.encode(chunk).unwrap(),
            })
            .collect()
    }

    /// One stream, as an agent that sends its silences makes: `talk`
    /// packets of the bot's speech, 1 s of silence, the same speech again.
    fn talk_pause_talk(talk: usize) -> Vec<IncomingPacket> {
        let speech = speech();
        let silence = [0.0; OPUS_FRAME];
        let words = || speech[48_000..].chunks_exact(OPUS_FRAME).take(talk);
        encoded(
            words()
                .chain(std::iter::repeat_n(&silence[..], 50))
                .chain(words()),
            0,
        )
    }

    /// Simulates 10 ms ticks; `arrivals[k]` is when packet k arrives (ms).
    /// Returns what `each` makes of each tick's frame (whether it was
    /// audible, and its samples).
    fn run_ticks<T>(
        playout: &mut Playout,
        pkts: &[IncomingPacket],
        arrivals: &[u32],
        ticks: u32,
        mut each: impl FnMut(bool, &[f32; FRAME_48K]) -> T,
    ) -> Vec<T> {
        let mut out = [0.0; FRAME_48K];
        (0..ticks)
            .map(|tick| {
                let now = tick * 10;
                for (p, &at) in pkts.iter().zip(arrivals) {
                    if at >= now && at < now + 10 {
                        playout.push(*p, Millis(now));
                    }
                }
                let audible = playout.next_frame(&mut out);
                each(audible, &out)
            })
            .collect()
    }

    /// Per output frame, whether it was audible and its samples.
    fn play(
        playout: &mut Playout,
        pkts: &[IncomingPacket],
        arrivals: &[u32],
        ticks: u32,
    ) -> Vec<(bool, [f32; FRAME_48K])> {
        run_ticks(playout, pkts, arrivals, ticks, |audible, out| {
            (audible, *out)
        })
    }

    /// Per tick, the buffer's delay (ms), the packets played and the
    /// frames removed so far.
    fn play_counted(
        playout: &mut Playout,
        pkts: &[IncomingPacket],
        arrivals: &[u32],
        ticks: u32,
        metrics: &AudioMetrics,
    ) -> Vec<(u64, u64, u64)> {
        run_ticks(playout, pkts, arrivals, ticks, |_, _| {
            (
                metrics
                    .jitter_delay_ms
                    .load(std::sync::atomic::Ordering::Relaxed),
                AudioMetrics::get(&metrics.packets_played),
                AudioMetrics::get(&metrics.frames_removed),
            )
        })
    }

    /// First audible frame, and silent frames between the first and last audible one.
    fn start_and_gaps(frames: &[(bool, [f32; FRAME_48K])]) -> (usize, usize) {
        let start = frames.iter().position(|f| f.0).expect("never played");
        let end = frames.iter().rposition(|f| f.0).unwrap();
        let gaps = frames[start..=end].iter().filter(|f| !f.0).count();
        (start, gaps)
    }

    #[test]
    fn jittery_reordered_stream_plays_exactly_across_seq_wraparound() {
        let metrics = Arc::new(AudioMetrics::default());
        // Deep enough from the start: a buffer that deepened mid-stream
        // would insert frames (see the next test), and this one compares
        // sample for sample.
        let settings = AudioSettings {
            jitter_min_ms: Millis(60),
            ..AudioSettings::default()
        };
        let mut playout = Playout::new(&settings, metrics.clone()).unwrap();
        let pkts = packets(100);
        // Up to 25 ms of jitter, and packets 10/11 swapped on the wire.
        let mut arrivals: Vec<u32> = (0..100u32).map(|k| k * 20 + (k * 7919) % 26).collect();
        arrivals.swap(10, 11);
        let frames = play(&mut playout, &pkts, &arrivals, 240);
        let (start, gaps) = start_and_gaps(&frames);
        assert_eq!(gaps, 0, "audible gap in playout");
        assert!(start <= 7, "first audio after {} ms", start * 10);
        // Sample for sample what an in-order decode of every packet gives.
        let mut dec = OpusDecoder::new().unwrap();
        let mut reference = Vec::new();
        let mut pcm = [0.0; OPUS_FRAME];
        for p in &pkts {
            dec.decode(p.payload.bytes(), &mut pcm).unwrap();
            reference.extend_from_slice(&pcm);
        }
        let played: Vec<f32> = frames[start..start + 200]
            .iter()
            .flat_map(|f| f.1)
            .collect();
        assert!(played == reference, "playout differs from the sent audio");
        // Only the end of the stream was concealed.
        assert_eq!(
            AudioMetrics::get(&metrics.packets_concealed),
            u64::from(MAX_CONCEALED_RUN)
        );
        assert_eq!(AudioMetrics::get(&metrics.packets_late), 0);
        let target = AudioMetrics::get(&metrics.jitter_target_ms);
        assert!((40..=60).contains(&target), "target {target}");
    }

    #[test]
    fn when_the_jitter_grows_mid_stream_the_buffer_deepens_in_the_next_pause() {
        // 2 s of speech, 1 s of silence, 2 s of speech.
        let pkts = talk_pause_talk(100);
        // Steady for the first second, then 0 to 60 ms of delay.
        let arrivals: Vec<u32> = (0..250u32)
            .map(|k| k * 20 + if k < 50 { 0 } else { (k * 7919) % 61 })
            .collect();
        // Plays the first `packets`; returns what the jitter cost (packets
        // that came after their turn, and frames concealed: lost ones, none
        // here, and those waited for while the buffer ran dry, less the
        // concealment of the stream's end) and the frames inserted.
        let run = |packets: usize, ticks: u32| {
            let metrics = Arc::new(AudioMetrics::default());
            let mut playout = Playout::new(&AudioSettings::default(), metrics.clone()).unwrap();
            play(&mut playout, &pkts[..packets], &arrivals[..packets], ticks);
            let missed = AudioMetrics::get(&metrics.packets_late)
                + AudioMetrics::get(&metrics.packets_concealed)
                - u64::from(MAX_CONCEALED_RUN);
            (missed, AudioMetrics::get(&metrics.frames_inserted))
        };
        // While the bot still talks, the buffer is as deep as it was when
        // the stream started, and the new jitter costs audio.
        let (missed_in_speech, _) = run(100, 220);
        assert!(missed_in_speech > 0, "the jitter cost nothing");
        let (missed, inserted) = run(250, 540);
        assert!(inserted > 0, "the buffer never deepened");
        // The second stretch of speech, as jittery, costs nothing: the
        // buffer deepened in the pause.
        assert_eq!(missed, missed_in_speech, "audio missed after the pause");
    }

    #[test]
    fn a_lost_packet_is_concealed_without_a_gap() {
        let metrics = Arc::new(AudioMetrics::default());
        let mut playout = Playout::new(&AudioSettings::default(), metrics.clone()).unwrap();
        let mut pkts = packets(50);
        pkts.remove(20);
        let arrivals: Vec<u32> = (0..50u32).filter(|&k| k != 20).map(|k| k * 20).collect();
        let frames = play(&mut playout, &pkts, &arrivals, 120);
        let (_, gaps) = start_and_gaps(&frames);
        assert_eq!(gaps, 0);
        // The lost packet, plus the brief concealment when the stream ends.
        assert_eq!(
            AudioMetrics::get(&metrics.packets_concealed),
            1 + u64::from(MAX_CONCEALED_RUN)
        );
        // Rebuilt from the next packet's FEC, which was here in time.
        assert_eq!(AudioMetrics::get(&metrics.packets_fec_recovered), 1);
    }

    #[test]
    fn when_the_buffer_runs_dry_the_late_packet_plays_after_concealment() {
        let metrics = Arc::new(AudioMetrics::default());
        let mut playout = Playout::new(&AudioSettings::default(), metrics.clone()).unwrap();
        let pkts = packets(60);
        // The path's delay jumps by 50 ms from packet 30 on: the buffer
        // (40 ms deep on a steady stream) runs dry with nothing behind.
        let arrivals: Vec<u32> = (0..60u32)
            .map(|k| k * 20 + if k < 30 { 0 } else { 50 })
            .collect();
        let frames = play(&mut playout, &pkts, &arrivals, 180);
        // Every packet played, none given up on as late: the wait was
        // concealed (no silence), and the stream is 40 ms longer for it.
        assert_eq!(AudioMetrics::get(&metrics.packets_played), 60);
        assert_eq!(AudioMetrics::get(&metrics.packets_late), 0);
        let (start, gaps) = start_and_gaps(&frames);
        assert_eq!(gaps, 0, "a silence in the middle of the stream");
        let concealed = AudioMetrics::get(&metrics.packets_concealed);
        let waited = concealed - u64::from(MAX_CONCEALED_RUN);
        assert!((1..=3).contains(&waited), "{waited} frames waited");
        let end = frames.iter().rposition(|f| f.0).unwrap();
        assert_eq!(
            end + 1 - start,
            2 * (60 + concealed as usize),
            "every packet and every concealed frame played once"
        );
    }

    #[test]
    fn a_loss_found_while_the_buffer_waits_is_not_concealed_twice() {
        let metrics = Arc::new(AudioMetrics::default());
        let mut playout = Playout::new(&AudioSettings::default(), metrics.clone()).unwrap();
        // A steady stream (the buffer 40 ms deep) losing packets 30 to 32:
        // the buffer runs dry waiting for 30, and packet 33 then says they
        // were lost.
        let mut pkts = packets(50);
        pkts.drain(30..33);
        let arrivals: Vec<u32> = (0..50u32)
            .filter(|k| !(30..33).contains(k))
            .map(|k| k * 20)
            .collect();
        let frames = play(&mut playout, &pkts, &arrivals, 160);
        let (start, gaps) = start_and_gaps(&frames);
        let end = frames.iter().rposition(|f| f.0).unwrap();
        assert_eq!(AudioMetrics::get(&metrics.packets_played), 47);
        // The stream plays for as long as was sent (50 packets) and the
        // concealment of its end: the time waited covered the loss.
        assert_eq!(end + 1 - start, 2 * (50 + MAX_CONCEALED_RUN as usize));
        assert!(gaps <= 2, "{gaps} silent frames in the loss");
    }

    #[test]
    fn time_waited_past_the_ceiling_is_given_back_in_the_next_pause() {
        let metrics = Arc::new(AudioMetrics::default());
        let mut playout = Playout::new(&AudioSettings::default(), metrics.clone()).unwrap();
        // 1 s of speech, 1 s of silence, 1 s of speech.
        let pkts = talk_pause_talk(50);
        // Jittery enough for the deepest buffer (80 ms), then a stall
        // while the bot talks: from packet 30 on, nothing comes before
        // 100 ms after 30 was due, and the buffer runs dry waiting for it.
        let stall_ends = 30 * 20 + 61 + 100;
        let arrivals: Vec<u32> = (0..150u32)
            .map(|k| {
                let at = k * 20 + (k * 7919) % 61;
                if k >= 30 { at.max(stall_ends) } else { at }
            })
            .collect();
        let delays: Vec<u64> = play_counted(&mut playout, &pkts, &arrivals, 400, &metrics)
            .into_iter()
            .map(|t| t.0)
            .collect();
        let removed = AudioMetrics::get(&metrics.frames_removed);
        assert!(removed > 0, "nothing given back");
        // Past the spike the buffer held the time waited on top of its
        // 80 ms ceiling (the stall's backlog plays whole, not cut); by the
        // second stretch of speech (from 2 s on) the pause has given most
        // of it back.
        assert!(delays[70..100].iter().any(|&d| d > 120), "{delays:?}");
        assert!(delays[220..300].iter().all(|&d| d <= 100), "{delays:?}");
        // Nothing else was dropped: every packet played but those removed
        // (the pauses given back, and any catch-up) and those the jitter
        // made late.
        let late = AudioMetrics::get(&metrics.packets_late);
        assert_eq!(
            AudioMetrics::get(&metrics.packets_played) + removed + late,
            150
        );
        assert!(late <= 1, "{late} late");
    }

    #[test]
    fn a_sender_that_stalls_mid_sentence_is_played_whole_and_the_delay_given_back_in_the_pause() {
        let metrics = Arc::new(AudioMetrics::default());
        let mut playout = Playout::new(&AudioSettings::default(), metrics.clone()).unwrap();
        // 1 s of speech, 1 s of silence, 1 s of speech; 400 ms into the
        // first, the sender stalls for 200 ms and then sends what it owes
        // at once (a bot's busy event loop, a Wi-Fi retransmission).
        let pkts = talk_pause_talk(50);
        let arrivals: Vec<u32> = (0..150u32)
            .map(|k| {
                if k < 20 {
                    k * 20
                } else {
                    (k * 20).max(20 * 20 + 200)
                }
            })
            .collect();
        let ticks = play_counted(&mut playout, &pkts, &arrivals, 400, &metrics);
        let delays: Vec<u64> = ticks.iter().map(|t| t.0).collect();
        let played_at_first_removal = ticks.iter().find(|t| t.2 > 0).map(|t| t.1);
        // Nothing of the first stretch of speech was cut: all 50 packets
        // played before anything was dropped, and what was dropped was
        // the pause (it gave the delay back).
        let played = played_at_first_removal.expect("the delay was never given back");
        assert!(played >= 50, "only {played} packets of speech played");
        assert!(
            delays[200..300].iter().all(|&d| d <= 80),
            "the second stretch starts with the delay still there: {delays:?}"
        );
        assert_eq!(
            AudioMetrics::get(&metrics.packets_played) + AudioMetrics::get(&metrics.frames_removed),
            150
        );
    }

    #[test]
    fn a_talkspurt_after_the_agent_fell_silent_owes_nothing_and_a_burst_is_cut() {
        let metrics = Arc::new(AudioMetrics::default());
        let mut playout = Playout::new(&AudioSettings::default(), metrics.clone()).unwrap();
        // An agent that sends nothing between sentences (DTX): 1 s of
        // speech, 1 s with no packets (sequence numbers go on, the RTP
        // clock has moved a second), then 1 s of speech whose first 400 ms
        // come at once. The buffer waited for the end of the first
        // sentence as it would for a stall; the second is not a stall.
        let mut pkts = talk_pause_talk(50);
        pkts.drain(50..100);
        for (k, p) in pkts.iter_mut().enumerate().skip(50) {
            p.seq = k as u16;
        }
        let arrivals: Vec<u32> = (0..100u32)
            .map(|k| {
                if k < 50 {
                    k * 20
                } else {
                    ((k + 50) * 20).max(2400)
                }
            })
            .collect();
        let ticks = play_counted(&mut playout, &pkts, &arrivals, 400, &metrics);
        // The burst was cut to the usual catch-up (its excess over target
        // + 60 ms), rather than played 400 ms late for the whole sentence.
        let removed = ticks.last().unwrap().2;
        assert!(removed >= 10, "{removed} frames removed");
        assert!(
            ticks[280..330].iter().all(|t| t.0 <= 160),
            "{:?}",
            ticks.iter().map(|t| t.0).collect::<Vec<_>>()
        );
    }

    #[test]
    fn barge_in_silences_playback_within_20_ms_and_flushes_the_queue() {
        let metrics = Arc::new(AudioMetrics::default());
        let mut playout = Playout::new(&AudioSettings::default(), metrics.clone()).unwrap();
        let pkts = packets(100);
        let mut out = [0.0; FRAME_48K];
        let mut fed = 0;
        // The bot is mid-word 300 ms into its turn.
        for tick in 0..30u32 {
            while fed < pkts.len() && pkts[fed].timestamp / 48 <= tick * 10 {
                playout.push(pkts[fed], Millis(tick * 10));
                fed += 1;
            }
            playout.next_frame(&mut out);
        }
        assert!(playout.is_playing());
        assert!(playout.barge_in());
        // The frame after the onset ramps down; it must end in silence.
        playout.next_frame(&mut out);
        assert!(out[FRAME_48K - 1].abs() < 1e-3, "fade did not reach zero");
        assert!(
            Dbfs::rms(&out).0 > -40.0,
            "faded frame should start audible"
        );
        // The bot's audio keeps arriving but stays flushed while the visitor talks.
        for tick in 31..60u32 {
            playout.push(pkts[fed], Millis(tick * 10));
            fed += 1;
            assert!(!playout.next_frame(&mut out));
            assert!(out.iter().all(|&s| s == 0.0));
        }
        assert_eq!(AudioMetrics::get(&metrics.barge_ins), 1);
        playout.release();
        let mut audible = false;
        for tick in 60..80u32 {
            playout.push(pkts[fed], Millis(tick * 10));
            fed += 1;
            audible |= playout.next_frame(&mut out);
        }
        assert!(audible, "playback did not resume after release");
    }

    #[test]
    fn a_visitor_starting_over_a_silent_stream_cuts_nothing_off() {
        let metrics = Arc::new(AudioMetrics::default());
        let mut playout = Playout::new(&AudioSettings::default(), metrics.clone()).unwrap();
        // Between answers the bot's transport sends silence, then speaks.
        let silence = vec![0.0; OPUS_FRAME * 40];
        let speech = speech();
        let stream: Vec<f32> = silence.iter().chain(&speech[48_000..]).copied().collect();
        let pkts = encoded(stream.chunks_exact(OPUS_FRAME).take(70), 100);
        let arrivals: Vec<u32> = (0..70u32).map(|k| k * 20).collect();
        let mut out = [0.0; FRAME_48K];
        let mut fed = 0;
        let mut cut_in_silence = false;
        let mut first_voice = None;
        for tick in 0..140u32 {
            while fed < pkts.len() && arrivals[fed] <= tick * 10 {
                playout.push(pkts[fed], Millis(tick * 10));
                fed += 1;
            }
            playout.next_frame(&mut out);
            if playout.played_voice() {
                first_voice.get_or_insert(tick);
            }
            // 650 ms in, the silence has played for over half a second.
            if tick == 65 {
                assert!(playout.is_playing(), "the stream plays");
                assert!(!playout.is_speaking(), "silence is not speech");
                cut_in_silence = playout.barge_in();
            }
        }
        assert!(!cut_in_silence, "a barge-in over silence");
        assert_eq!(AudioMetrics::get(&metrics.barge_ins), 0);
        // The voice is heard where the speech starts (the silence is 800 ms,
        // the jitter buffer holds some 40-80 ms), not where the stream does.
        let first_voice = first_voice.expect("the speech was voice") * 10;
        assert!(
            (800..=1000).contains(&first_voice),
            "voice at {first_voice} ms"
        );
        // Once the bot speaks, the visitor cuts it off.
        assert!(playout.is_speaking());
        assert!(playout.barge_in());
        assert_eq!(AudioMetrics::get(&metrics.barge_ins), 1);
    }

    #[test]
    fn barge_in_can_be_disabled() {
        let settings = AudioSettings {
            barge_in: false,
            ..AudioSettings::default()
        };
        let mut playout = Playout::new(&settings, Arc::new(AudioMetrics::default())).unwrap();
        let pkts = packets(10);
        let arrivals: Vec<u32> = (0..10u32).map(|k| k * 20).collect();
        play(&mut playout, &pkts, &arrivals, 12);
        assert!(playout.is_playing());
        assert!(!playout.barge_in());
        assert!(playout.is_playing());
    }

    /// The bot's speech (from 1 s in) in packets of `durations` (samples),
    /// RTP timestamps advancing by each packet's duration and wrapping
    /// around during the clip, as are sequence numbers.
    fn packets_lasting(durations: &[usize]) -> Vec<IncomingPacket> {
        let speech = speech();
        let mut enc =
            opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        // Low enough that 120 ms fits in an `OpusPacket`.
        enc.set_bitrate(opus::Bitrate::Bits(16_000)).unwrap();
        enc.set_inband_fec(true).unwrap();
        let mut pos = 48_000;
        let base_ts = u32::MAX - 48_000;
        durations
            .iter()
            .enumerate()
            .map(|(k, &n)| {
                let mut buf = [0u8; crate::audio::MAX_PACKET];
                let len = enc.encode_float(&speech[pos..pos + n], &mut buf).unwrap();
                let p = IncomingPacket {
                    seq: (65_530 + k) as u16,
                    timestamp: base_ts.wrapping_add((pos - 48_000) as u32),
                    payload: OpusPacket::from_slice(&buf[..len]).unwrap(),
                };
                pos += n;
                p
            })
            .collect()
    }

    /// Arrival of each packet (ms) when sent as its audio starts, with up
    /// to 9 ms of jitter.
    fn arrivals_of(pkts: &[IncomingPacket]) -> Vec<u32> {
        let base = pkts[0].timestamp;
        pkts.iter()
            .enumerate()
            .map(|(k, p)| p.timestamp.wrapping_sub(base) / 48 + (k as u32 * 7) % 10)
            .collect()
    }

    /// What an in-order decode of every packet gives.
    fn reference(pkts: &[IncomingPacket]) -> Vec<f32> {
        let mut dec = OpusDecoder::new().unwrap();
        let mut pcm = [0.0; MAX_DECODED];
        let mut out = Vec::new();
        for p in pkts {
            let n = dec.decode(p.payload.bytes(), &mut pcm).unwrap();
            out.extend_from_slice(&pcm[..n]);
        }
        out
    }

    /// Every legal Opus duration, mixed in one stream.
    const MIXED: [usize; 13] = [
        960, 2880, 1920, 120, 240, 480, 960, 5760, 3840, 4800, 960, 2880, 120,
    ];

    #[test]
    fn packets_of_every_legal_duration_play_whole_and_in_order() {
        let metrics = Arc::new(AudioMetrics::default());
        let mut playout = Playout::new(&AudioSettings::default(), metrics.clone()).unwrap();
        let durations: Vec<usize> = MIXED.iter().cycle().take(65).copied().collect();
        let pkts = packets_lasting(&durations);
        let total: usize = durations.iter().sum();
        assert_eq!(total % FRAME_48K, 0);
        let frames = play(
            &mut playout,
            &pkts,
            &arrivals_of(&pkts),
            20 + total as u32 / 480 + 10,
        );
        let (start, gaps) = start_and_gaps(&frames);
        let pattern: String = frames.iter().map(|f| if f.0 { '#' } else { '.' }).collect();
        assert_eq!(gaps, 0, "audible gap in playout: {pattern}");
        let played: Vec<f32> = frames[start..start + total / FRAME_48K]
            .iter()
            .flat_map(|f| f.1)
            .collect();
        assert!(
            played == reference(&pkts),
            "playout differs from the sent audio"
        );
        assert_eq!(AudioMetrics::get(&metrics.packets_played), 65);
        assert_eq!(AudioMetrics::get(&metrics.packets_undecodable), 0);
        assert_eq!(AudioMetrics::get(&metrics.packets_late), 0);
        // Only the end of the stream was concealed.
        assert_eq!(
            AudioMetrics::get(&metrics.packets_concealed),
            u64::from(MAX_CONCEALED_RUN)
        );
    }

    #[test]
    fn a_lost_60_ms_packet_is_concealed_for_60_ms_from_the_timestamps() {
        let metrics = Arc::new(AudioMetrics::default());
        let mut playout = Playout::new(&AudioSettings::default(), metrics.clone()).unwrap();
        let mut pkts = packets_lasting(&[2880; 40]);
        let mut arrivals = arrivals_of(&pkts);
        pkts.remove(20);
        arrivals.remove(20);
        let frames = play(&mut playout, &pkts, &arrivals, 300);
        let (start, gaps) = start_and_gaps(&frames);
        assert_eq!(gaps, 0);
        // Every packet's audio, the lost one's 60 ms of concealment, then
        // the concealment at the end: nothing shifted, nothing dropped.
        let end = frames.iter().rposition(|f| f.0).unwrap();
        assert_eq!(
            end + 1 - start,
            40 * 6 + 2 * MAX_CONCEALED_RUN as usize,
            "audible frames"
        );
        // The packet after the hole plays exactly 60 ms after the one before it.
        let reference = reference(&pkts);
        let after_hole = 20 * 2880;
        let played: Vec<f32> = frames[start + 21 * 6..start + 40 * 6]
            .iter()
            .flat_map(|f| f.1)
            .collect();
        let c = correlation(&played, &reference[after_hole..]);
        assert!(c > 0.9, "correlation after the hole {c}");
        assert_eq!(
            AudioMetrics::get(&metrics.packets_concealed),
            1 + u64::from(MAX_CONCEALED_RUN)
        );
    }

    /// Normalised correlation of two signals over their common length.
    fn correlation(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (x, y) = (&a[..n], &b[..n]);
        let xy: f32 = x.iter().zip(y).map(|(p, q)| p * q).sum();
        let xx: f32 = x.iter().map(|p| p * p).sum();
        let yy: f32 = y.iter().map(|q| q * q).sum();
        xy / (xx * yy).sqrt().max(1e-9)
    }

    #[test]
    fn undecodable_packets_are_counted_and_concealed_and_the_stream_goes_on() {
        let metrics = Arc::new(AudioMetrics::default());
        let mut playout = Playout::new(&AudioSettings::default(), metrics.clone()).unwrap();
        let mut pkts = packets(150);
        let junk: [&[u8]; 6] = [
            &[],                       // empty
            &[0x4b],                   // code 3 without its frame count
            &[0x49, 0x00],             // code 1 with an odd length
            &[0x1b, 0x03, 0, 0, 0, 0], // three 60 ms frames: 180 ms
            &[0x4a, 0xff, 0xff, 0x01], // code 2, first frame longer than the packet
            &[0xfb, 0xbf, 0, 0, 0],    // code 3, 63 frames
        ];
        for (k, bytes) in junk.iter().enumerate() {
            pkts[40 + 2 * k].payload = OpusPacket::from_slice(bytes).unwrap();
        }
        let arrivals: Vec<u32> = (0..150u32).map(|k| k * 20).collect();
        let frames = play(&mut playout, &pkts, &arrivals, 320);
        let (start, gaps) = start_and_gaps(&frames);
        assert_eq!(gaps, 0, "audible gap in playout");
        assert_eq!(AudioMetrics::get(&metrics.packets_undecodable), 6);
        assert_eq!(AudioMetrics::get(&metrics.packets_played), 144);
        // Each bad packet was replaced by 20 ms: what follows is on time.
        let end = frames.iter().rposition(|f| f.0).unwrap();
        assert_eq!(end + 1 - start, 300 + 2 * MAX_CONCEALED_RUN as usize);
        let played: Vec<f32> = frames[start + 120..start + 300]
            .iter()
            .flat_map(|f| f.1)
            .collect();
        let c = correlation(&played, &reference(&pkts[60..]));
        assert!(c > 0.9, "correlation after the bad packets {c}");
    }

    #[test]
    fn a_stream_renumbered_backwards_is_followed_after_three_packets() {
        let metrics = Arc::new(AudioMetrics::default());
        let mut playout = Playout::new(&AudioSettings::default(), metrics.clone()).unwrap();
        let mut pkts = packets(100);
        // Half way the agent restarts its numbering 1000 packets back.
        for p in &mut pkts[50..] {
            p.seq = p.seq.wrapping_sub(1000);
        }
        let arrivals: Vec<u32> = (0..100u32).map(|k| k * 20).collect();
        let frames = play(&mut playout, &pkts, &arrivals, 220);
        // Two taken for late; the third starts the stream over.
        assert_eq!(AudioMetrics::get(&metrics.packets_late), 2);
        let (start, gaps) = start_and_gaps(&frames);
        let end = frames.iter().rposition(|f| f.0).unwrap();
        assert!(gaps <= 4, "{gaps} silent frames");
        assert!(end - start > 190, "played {} frames", end - start);
    }
}
