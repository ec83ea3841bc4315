//! The playout path without devices: Opus packets from the link in,
//! 10 ms frames of 48 kHz audio for the speaker out.
//!
//! An adaptive jitter buffer reorders packets by sequence number and holds
//! enough audio to ride out network jitter (between `jitter_min_ms` and
//! `jitter_max_ms`, from an RFC 3550 interarrival jitter estimate). Lost
//! packets are rebuilt from the next packet's FEC or concealed. On barge-in
//! the output fades to silence within one 10 ms frame and the queue is
//! flushed.

use std::sync::Arc;

use super::AudioError;
use super::codec::{OpusDecoder, OpusPacket};
use super::metrics::AudioMetrics;
use super::settings::AudioSettings;
use super::units::{FRAME_48K, Millis, OPUS_FRAME};

/// Packets the jitter buffer can index; far more than `jitter_max_ms` needs.
const SLOTS: usize = 64;
/// Concealed frames played on an empty buffer before going quiet to rebuffer.
const MAX_CONCEALED_RUN: u32 = 3;
/// Buffered audio beyond the target by this much is dropped to catch up
/// after a burst, rather than adding delay for the rest of the turn.
const CATCH_UP_MS: u32 = 60;

/// An Opus packet from the link, with its RTP sequence number and timestamp.
#[derive(Clone, Copy, Debug)]
pub struct IncomingPacket {
    pub seq: u16,
    /// RTP timestamp (48 kHz clock).
    pub timestamp: u32,
    pub payload: OpusPacket,
}

/// Whether `a` comes after `b` in RTP sequence order (with wraparound).
fn seq_after(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

pub struct JitterBuffer {
    slots: Vec<Option<IncomingPacket>>,
    /// Next sequence number to play; `None` until the first packet of a talkspurt.
    next_seq: Option<u16>,
    highest_seq: u16,
    buffering: bool,
    concealed_run: u32,
    /// RFC 3550 interarrival jitter, in ms.
    jitter_ms: f32,
    last_transit_ms: Option<f32>,
    min_ms: u32,
    max_ms: u32,
    metrics: Arc<AudioMetrics>,
}

/// What the jitter buffer has for the next 20 ms.
#[derive(Debug)]
pub enum NextFrame {
    Packet(IncomingPacket),
    /// The packet was lost; `next` is the following one if it is here (its FEC
    /// can rebuild the lost one).
    Lost {
        next: Option<IncomingPacket>,
    },
    /// Nothing to play.
    Silence,
}

impl JitterBuffer {
    pub fn new(settings: &AudioSettings, metrics: Arc<AudioMetrics>) -> Self {
        let min_ms = settings.jitter_min_ms.0.max(20);
        Self {
            slots: vec![None; SLOTS],
            next_seq: None,
            highest_seq: 0,
            buffering: true,
            concealed_run: 0,
            jitter_ms: 0.0,
            last_transit_ms: None,
            min_ms,
            max_ms: settings.jitter_max_ms.0.max(min_ms),
            metrics,
        }
    }

    /// Depth the buffer aims for before and while playing.
    pub fn target(&self) -> Millis {
        let wanted = 20.0 + 2.0 * self.jitter_ms;
        let frames = (wanted / 20.0).ceil() as u32;
        Millis((frames * 20).clamp(self.min_ms, self.max_ms))
    }

    /// Audio buffered from the next frame to play to the newest packet.
    pub fn depth(&self) -> Millis {
        match self.next_seq {
            Some(next) if !seq_after(next, self.highest_seq) => {
                Millis((u32::from(self.highest_seq.wrapping_sub(next)) + 1) * 20)
            }
            _ => Millis(0),
        }
    }

    pub fn insert(&mut self, packet: IncomingPacket, arrival: Millis) {
        AudioMetrics::add(&self.metrics.packets_received, 1);
        let transit = arrival.0 as f32 - packet.timestamp as f32 / 48.0;
        if let Some(last) = self.last_transit_ms {
            let d = (transit - last).abs();
            // RFC 3550 section 6.4.1 smoothing; a large jump (a new talkspurt
            // after a long pause) is not jitter.
            if d < 1000.0 {
                self.jitter_ms += (d - self.jitter_ms) / 16.0;
            }
        }
        self.last_transit_ms = Some(transit);

        match self.next_seq {
            None => {
                self.next_seq = Some(packet.seq);
                self.highest_seq = packet.seq;
            }
            Some(next) if seq_after(next, packet.seq) => {
                AudioMetrics::add(&self.metrics.packets_late, 1);
                return;
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
        self.slots[usize::from(packet.seq) % SLOTS] = Some(packet);
        self.metrics.jitter_target_ms.store(
            u64::from(self.target().0),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Takes what should be played for the next 20 ms.
    pub fn pop(&mut self) -> NextFrame {
        let Some(mut next) = self.next_seq else {
            return NextFrame::Silence;
        };
        if self.buffering {
            if self.depth() < self.target() {
                return NextFrame::Silence;
            }
            self.buffering = false;
        }
        while self.depth().0 > self.target().0 + CATCH_UP_MS {
            self.slots[usize::from(next) % SLOTS] = None;
            next = next.wrapping_add(1);
            self.next_seq = Some(next);
        }
        let slot = usize::from(next) % SLOTS;
        let here = self.slots[slot].take().filter(|p| p.seq == next);
        if let Some(packet) = here {
            self.next_seq = Some(next.wrapping_add(1));
            self.concealed_run = 0;
            return NextFrame::Packet(packet);
        }
        if seq_after(self.highest_seq, next) {
            // A hole with later packets present: the packet was lost or is very late.
            let following = next.wrapping_add(1);
            let next_packet =
                self.slots[usize::from(following) % SLOTS].filter(|p| p.seq == following);
            self.next_seq = Some(following);
            AudioMetrics::add(&self.metrics.packets_concealed, 1);
            return NextFrame::Lost { next: next_packet };
        }
        // Empty: conceal briefly, then wait for the buffer to refill.
        if self.concealed_run < MAX_CONCEALED_RUN {
            self.concealed_run += 1;
            self.next_seq = Some(next.wrapping_add(1));
            self.highest_seq = next;
            AudioMetrics::add(&self.metrics.packets_concealed, 1);
            return NextFrame::Lost { next: None };
        }
        self.reset();
        NextFrame::Silence
    }

    /// Drops everything queued and waits for a new talkspurt.
    pub fn reset(&mut self) {
        self.slots.iter_mut().for_each(|s| *s = None);
        self.next_seq = None;
        self.buffering = true;
        self.concealed_run = 0;
        self.last_transit_ms = None;
    }
}

/// Decodes the jitter buffer's output into 10 ms frames for the speaker.
pub struct Playout {
    jitter: JitterBuffer,
    decoder: OpusDecoder,
    pcm: [f32; OPUS_FRAME],
    /// Samples of `pcm` already handed out; `OPUS_FRAME` when it is used up.
    pcm_pos: usize,
    pcm_audible: bool,
    fading: bool,
    /// After a barge-in, the bot's remaining audio is dropped until `release`.
    muted: bool,
    barge_in_enabled: bool,
    playing: bool,
    metrics: Arc<AudioMetrics>,
}

impl Playout {
    pub fn new(settings: &AudioSettings, metrics: Arc<AudioMetrics>) -> Result<Self, AudioError> {
        Ok(Self {
            jitter: JitterBuffer::new(settings, metrics.clone()),
            decoder: OpusDecoder::new()?,
            pcm: [0.0; OPUS_FRAME],
            pcm_pos: OPUS_FRAME,
            pcm_audible: false,
            fading: false,
            muted: false,
            barge_in_enabled: settings.barge_in,
            playing: false,
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

    /// The visitor started speaking: if the bot is playing and barge-in is
    /// enabled, fade out over the next frame, flush the queue and stay quiet
    /// until [`release`](Self::release). Returns whether playback was cut.
    pub fn barge_in(&mut self) -> bool {
        if !self.barge_in_enabled || !self.playing || self.muted {
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

    /// Produces the next 10 ms for the speaker. Returns whether it is audible.
    pub fn next_frame(&mut self, out: &mut [f32; FRAME_48K]) -> Result<bool, AudioError> {
        if self.fading {
            // Ramp what was about to play down to zero over this one frame,
            // then drop the rest of the bot's turn.
            if self.pcm_pos == OPUS_FRAME {
                self.refill()?;
            }
            self.copy_pending(out);
            self.jitter.reset();
            let n = FRAME_48K as f32;
            for (i, s) in out.iter_mut().enumerate() {
                *s *= 1.0 - (i as f32 + 1.0) / n;
            }
            self.fading = false;
            self.pcm_pos = OPUS_FRAME;
            self.playing = false;
            return Ok(true);
        }
        if self.muted {
            out.fill(0.0);
            return Ok(false);
        }
        if self.pcm_pos == OPUS_FRAME {
            self.refill()?;
        }
        self.copy_pending(out);
        self.playing = self.pcm_audible;
        Ok(self.pcm_audible)
    }

    fn copy_pending(&mut self, out: &mut [f32; FRAME_48K]) {
        if self.pcm_pos == OPUS_FRAME {
            out.fill(0.0);
            return;
        }
        out.copy_from_slice(&self.pcm[self.pcm_pos..self.pcm_pos + FRAME_48K]);
        self.pcm_pos += FRAME_48K;
    }

    fn refill(&mut self) -> Result<(), AudioError> {
        self.pcm_audible = true;
        match self.jitter.pop() {
            NextFrame::Packet(p) => {
                self.decoder.decode(p.payload.bytes(), &mut self.pcm)?;
                AudioMetrics::add(&self.metrics.packets_played, 1);
            }
            NextFrame::Lost { next } => {
                let fec = next.as_ref().map(|p| p.payload.bytes());
                self.decoder.conceal(fec, &mut self.pcm)?;
            }
            NextFrame::Silence => {
                self.pcm.fill(0.0);
                self.pcm_audible = false;
            }
        }
        self.pcm_pos = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::codec::OpusEncoder;
    use crate::audio::units::Dbfs;

    /// The bot's speech from the fixture, encoded, with RTP numbering that
    /// wraps around during the clip.
    fn packets(n: usize) -> Vec<IncomingPacket> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/audio/bot_reference_16k.wav");
        let clip = crate::audio::wav::read_wav(&path).unwrap();
        let speech = crate::audio::resample::resample_clip(
            &clip.samples,
            clip.rate,
            crate::audio::units::SampleRate::OPUS,
        )
        .unwrap();
        let mut enc = OpusEncoder::new(&AudioSettings::default()).unwrap();
        // Start 1 s in, where the bot starts talking.
        speech[48_000..]
            .chunks_exact(OPUS_FRAME)
            .take(n)
            .enumerate()
            .map(|(k, chunk)| IncomingPacket {
                seq: (65_500 + k) as u16,
                timestamp: (k * OPUS_FRAME) as u32,
                payload: enc.encode(chunk).unwrap(),
            })
            .collect()
    }

    /// Simulates 10 ms ticks; `arrivals[k]` is when packet k arrives (ms).
    /// Returns, per output frame, whether it was audible and its samples.
    fn play(
        playout: &mut Playout,
        pkts: &[IncomingPacket],
        arrivals: &[u32],
        ticks: u32,
    ) -> Vec<(bool, [f32; FRAME_48K])> {
        let mut out = [0.0; FRAME_48K];
        (0..ticks)
            .map(|tick| {
                let now = tick * 10;
                for (p, &at) in pkts.iter().zip(arrivals) {
                    if at >= now && at < now + 10 {
                        playout.push(*p, Millis(now));
                    }
                }
                let audible = playout.next_frame(&mut out).unwrap();
                (audible, out)
            })
            .collect()
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
        let mut playout = Playout::new(&AudioSettings::default(), metrics.clone()).unwrap();
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
            playout.next_frame(&mut out).unwrap();
        }
        assert!(playout.is_playing());
        assert!(playout.barge_in());
        // The frame after the onset ramps down; it must end in silence.
        playout.next_frame(&mut out).unwrap();
        assert!(out[FRAME_48K - 1].abs() < 1e-3, "fade did not reach zero");
        assert!(
            Dbfs::rms(&out).0 > -40.0,
            "faded frame should start audible"
        );
        // The bot's audio keeps arriving but stays flushed while the visitor talks.
        for tick in 31..60u32 {
            playout.push(pkts[fed], Millis(tick * 10));
            fed += 1;
            assert!(!playout.next_frame(&mut out).unwrap());
            assert!(out.iter().all(|&s| s == 0.0));
        }
        assert_eq!(AudioMetrics::get(&metrics.barge_ins), 1);
        playout.release();
        let mut audible = false;
        for tick in 60..80u32 {
            playout.push(pkts[fed], Millis(tick * 10));
            fed += 1;
            audible |= playout.next_frame(&mut out).unwrap();
        }
        assert!(audible, "playback did not resume after release");
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
}
