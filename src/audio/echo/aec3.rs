//! [`EchoCanceller`] on WebRTC's AEC3 (the `sonora` port), driven block by
//! block so the gateway chooses its tuning, optionally followed by sonora's
//! noise suppressor and AGC2.
//!
//! sonora's `AudioProcessing` builds AEC3 with WebRTC's default tuning only,
//! and splits every frame through per-call lists. The gateway feeds AEC3's
//! block processor itself: 16 kHz mono on both sides, no allocation per
//! frame, and a suppressor tuned for a listener that is a VAD and a speech
//! recogniser rather than a person on the far end (see [`kiosk_config`]).

use sonora::config::{AdaptiveDigital, GainController2, NoiseSuppression as NsConfig};
use sonora::config::{NoiseSuppressionLevel, TransparentModeType};
use sonora::{AudioProcessing, Config, StreamConfig};
use sonora_aec3::block::Block;
use sonora_aec3::block_processor::BlockProcessor;
use sonora_aec3::common::BLOCK_SIZE;
use sonora_aec3::config::EchoCanceller3Config;
use tracing::debug;

use super::high_pass::HighPass;
use super::{EchoCanceller, EchoStats};
use crate::audio::AudioError;
use crate::audio::resample::StreamResampler;
use crate::audio::settings::NoiseSuppression;
use crate::audio::units::{FRAME_48K, Millis, SampleRate, VAD_FRAME};

/// AEC3 works on 16-bit sample values held in floats.
const S16: f32 = 32768.0;
/// A capture sample this close to full scale means the microphone clipped.
const SATURATED: f32 = 32700.0;
/// Samples a sample queue holds at most: a frame plus a block's remainder.
const QUEUE: usize = VAD_FRAME + BLOCK_SIZE;
/// After this many speaker blocks of silence (1 s: longer than the delay
/// the canceller searches, its filter and the room's tail together) no
/// echo is left to cancel, and the canceller rests until the speaker plays
/// again: an idle kiosk listening for a visitor spends most of its audio
/// work here otherwise.
const REST_AFTER_SILENT_BLOCKS: u32 = 250;
/// A speaker block whose samples all stay under this (16-bit scale: less
/// than one step of a 16-bit sample) is silence.
const SILENCE: f32 = 1.0;
/// The most blocks of speaker-to-microphone offset made up when the
/// canceller wakes (jitter between the two sides is a few); a larger one,
/// two devices' clocks drifting over a long rest, is left to its delay
/// estimator rather than stall the thread.
const MAX_CATCH_UP_BLOCKS: i64 = 50;

/// WebRTC's AEC3 (through sonora), with its noise suppressor and AGC2 as
/// the settings ask.
pub struct Aec3 {
    processor: BlockProcessor,
    high_pass: HighPass,
    /// The speaker's 48 kHz frames brought to the capture rate.
    render_rate: StreamResampler,
    render_frame: [f32; VAD_FRAME],
    /// The capture frame in 16-bit scale, high-passed.
    capture_frame: [f32; VAD_FRAME],
    render_in: SampleQueue,
    capture_in: SampleQueue,
    /// Cleaned samples waiting to make up a frame; starts with the half
    /// block of delay that lets 10 ms frames come out of 4 ms blocks.
    capture_out: SampleQueue,
    block: Block,
    rest: Rest,
    /// Noise suppression and automatic gain, when asked for.
    post: Option<AudioProcessing>,
    post_out: [f32; VAD_FRAME],
}

/// The canceller at rest while the speaker is silent: neither side's
/// blocks reach AEC3, and the microphone's pass through as AEC3 passes
/// them with nothing to cancel, one block later. Skipping both sides in
/// step keeps the speaker's blocks as far ahead of the microphone's as they
/// were, so the delay it found still holds when the bot talks again.
struct Rest {
    /// Speaker blocks of silence after which it rests.
    after_blocks: u32,
    /// Speaker blocks of silence in a row.
    silent_blocks: u32,
    /// While resting: speaker blocks skipped less microphone blocks skipped.
    skipped: Option<i64>,
    /// The microphone block before the one in hand: what AEC3 hands out
    /// next, and what it must hold when it wakes.
    last_capture: Block,
    /// Silence, for the speaker blocks owed on waking.
    silence: Block,
    scratch: Block,
}

impl Rest {
    fn new() -> Self {
        Self {
            after_blocks: REST_AFTER_SILENT_BLOCKS,
            silent_blocks: 0,
            skipped: None,
            last_capture: Block::new(1, 1),
            silence: Block::new(1, 1),
            scratch: Block::new(1, 1),
        }
    }
}

impl Aec3 {
    /// `stream_delay`: how long a frame handed to the speaker takes to come
    /// back in the microphone through the device buffers alone; the
    /// canceller's own delay estimator finds the room's share.
    pub fn new(
        noise: NoiseSuppression,
        auto_gain: bool,
        stream_delay: Millis,
    ) -> Result<Self, AudioError> {
        let rate = SampleRate::VAD.hz() as usize;
        let mut processor = BlockProcessor::new(&kiosk_config(), rate, 1, 1);
        processor.set_audio_buffer_delay(i32::try_from(stream_delay.0).unwrap_or(i32::MAX));
        let mut capture_out = SampleQueue::default();
        capture_out.push(&[0.0; BLOCK_SIZE / 2]);
        Ok(Self {
            processor,
            high_pass: HighPass::new(SampleRate::VAD),
            render_rate: StreamResampler::new(SampleRate::OPUS, SampleRate::VAD, FRAME_48K)?,
            render_frame: [0.0; VAD_FRAME],
            capture_frame: [0.0; VAD_FRAME],
            render_in: SampleQueue::default(),
            capture_in: SampleQueue::default(),
            capture_out,
            block: Block::new(1, 1),
            rest: Rest::new(),
            post: post_processing(noise, auto_gain),
            post_out: [0.0; VAD_FRAME],
        })
    }

    /// Hands the speaker block in `self.block` to AEC3, unless the canceller
    /// rests.
    fn render_block(&mut self) {
        let silent = self.block.view(0, 0).iter().all(|s| s.abs() < SILENCE);
        let rest = &mut self.rest;
        rest.silent_blocks = if silent {
            rest.silent_blocks.saturating_add(1)
        } else {
            0
        };
        match rest.skipped.as_mut() {
            Some(skipped) if silent => *skipped += 1,
            Some(&mut skipped) => {
                self.wake(skipped);
                self.processor.buffer_render(&self.block);
            }
            None if rest.silent_blocks >= rest.after_blocks => {
                debug!("speaker silent for a second: echo canceller resting");
                rest.skipped = Some(1);
            }
            None => self.processor.buffer_render(&self.block),
        }
    }

    /// The speaker plays again. AEC3 is given the last microphone block,
    /// which it hands out next, and what it would have seen of the rest's
    /// offset between the sides (speaker silence owed, or microphone blocks
    /// it would have read ahead), before the new speaker block: speaker
    /// blocks given less microphone blocks read make up what was skipped.
    fn wake(&mut self, skipped: i64) {
        debug!(
            offset_blocks = skipped,
            "speaker playing: echo canceller awake"
        );
        let rest = &mut self.rest;
        rest.skipped = None;
        let owed = skipped.clamp(-MAX_CATCH_UP_BLOCKS, MAX_CATCH_UP_BLOCKS);
        let (render, capture) = if owed >= 0 { (owed + 1, 1) } else { (0, -owed) };
        for _ in 0..render {
            self.processor.buffer_render(&rest.silence);
        }
        for _ in 0..capture {
            rest.scratch
                .view_mut(0, 0)
                .copy_from_slice(rest.last_capture.view(0, 0));
            self.processor
                .process_capture(false, false, None, &mut rest.scratch);
        }
    }
}

/// AEC3's tuning for a kiosk.
///
/// The defaults suit a call between people, where any echo the far end
/// hears is a fault: while the bot talks the suppressor also mutes the
/// quiet start of a visitor's word, and the VAD then hears the word late.
/// Here the listener is a VAD with an echo gate behind it, so the
/// suppressor may leave a little more residual echo.
fn kiosk_config() -> EchoCanceller3Config {
    let mut config = EchoCanceller3Config::default();
    // Notices within a second or two of the bot talking that no echo comes
    // back (a headset, a muted speaker, `demo` with files) and stops
    // suppressing; the default heuristic kept muting the visitor there.
    config.echo_removal_control.transparent_mode = TransparentModeType::Hmm;
    // The suppressor assumes the linear filter takes at most this much of
    // the echo away (linear power ratio, low and high bands; WebRTC's 4 and
    // 1.5). Measured in the simulated room, the filter does far better, and
    // trusting it more lets a visitor's quieter sounds through.
    config.erle.max_l = 10.0;
    config.erle.max_h = 2.0;
    // The delay estimator searches past the device buffers' delay, which
    // the engine hands over: 3 correlators cover about 400 ms of room and
    // of error in that figure (WebRTC's 5 cover 600 ms for a browser that
    // knows nothing of its buffers). They were the largest share of the
    // canceller's cost; in the simulated room the figures did not move.
    // Correlating every 8th sample instead of every 4th would halve their
    // work again, but on armv7 (no SIMD path) it heard the soft start of
    // a word in the room fixture 110 ms later than x86 and aarch64 did.
    config.delay.num_filters = 3;
    // How fast the suppressor's gain may rise, per 4 ms block, when the
    // echo fades under the microphone's signal (WebRTC's 2). A visitor's
    // quiet lead-in under the bot's echo is suppressed with it; at 2 the
    // gain took four frames to open for the loud vowel after it, and the
    // VAD heard the word 110 ms late. At 2.5 it opens a frame sooner, with
    // no utterance started by echo in the simulated room as it was then
    // (the stream delay at 30 ms; docs/profile.md has what 40 ms does);
    // from 3 up, residual echo joined a visitor's utterances at -6 dB.
    config.suppressor.normal_tuning.max_inc_factor = 2.5;
    config
}

/// sonora's noise suppressor and AGC2 on the cleaned signal, if any is on.
fn post_processing(noise: NoiseSuppression, auto_gain: bool) -> Option<AudioProcessing> {
    let level = match noise {
        NoiseSuppression::Off => None,
        NoiseSuppression::Low => Some(NoiseSuppressionLevel::Low),
        NoiseSuppression::Moderate => Some(NoiseSuppressionLevel::Moderate),
        NoiseSuppression::High => Some(NoiseSuppressionLevel::High),
    };
    if level.is_none() && !auto_gain {
        return None;
    }
    let config = Config {
        echo_canceller: None,
        noise_suppression: level.map(|level| NsConfig {
            level,
            ..NsConfig::default()
        }),
        gain_controller2: auto_gain.then(|| GainController2 {
            adaptive_digital: Some(AdaptiveDigital::default()),
            ..GainController2::default()
        }),
        ..Config::default()
    };
    Some(
        AudioProcessing::builder()
            .config(config)
            .capture_config(StreamConfig::new(SampleRate::VAD.hz(), 1))
            .build(),
    )
}

impl EchoCanceller for Aec3 {
    fn render(&mut self, speaker: &[f32; FRAME_48K]) {
        // Fails only if handed more than the block it was sized for.
        if self.render_rate.push(speaker).is_err() {
            return;
        }
        while self.render_rate.pop_frame(&mut self.render_frame) {
            for s in &mut self.render_frame {
                *s *= S16;
            }
            self.render_in.push(&self.render_frame);
            while self.render_in.pop_into(self.block.view_mut(0, 0)) {
                self.render_block();
            }
        }
    }

    fn process(&mut self, mic: &[f32; VAD_FRAME], clean: &mut [f32; VAD_FRAME]) {
        let frame = &mut self.capture_frame;
        for (dst, &src) in frame.iter_mut().zip(mic) {
            *dst = src * S16;
        }
        let saturated = frame.iter().any(|s| s.abs() >= SATURATED);
        self.high_pass.process(frame);
        self.capture_in.push(frame);
        while self.capture_in.pop_into(self.block.view_mut(0, 0)) {
            let rest = &mut self.rest;
            if let Some(skipped) = rest.skipped.as_mut() {
                *skipped -= 1;
                std::mem::swap(&mut self.block, &mut rest.last_capture);
            } else {
                rest.last_capture
                    .view_mut(0, 0)
                    .copy_from_slice(self.block.view(0, 0));
                self.processor
                    .process_capture(false, saturated, None, &mut self.block);
            }
            self.capture_out.push(self.block.view(0, 0));
        }
        if !self.capture_out.pop_into(clean) {
            // Cannot happen with the half block queued up front; never hand
            // out stale audio if it did.
            clean.fill(0.0);
        }

        for s in clean.iter_mut() {
            *s = (*s / S16).clamp(-1.0, 1.0);
        }
        if let Some(post) = self.post.as_mut()
            && post
                .process_capture_f32(&[&clean[..]], &mut [&mut self.post_out[..]])
                .is_ok()
        {
            clean.copy_from_slice(&self.post_out);
        }
    }

    fn stats(&self) -> EchoStats {
        let m = self.processor.get_metrics();
        EchoStats {
            erle_db: Some(m.echo_return_loss_enhancement as f32),
            erl_db: Some(m.echo_return_loss as f32),
            // AEC3 reports 0 until it has aligned the two sides.
            delay: u32::try_from(m.delay_ms)
                .ok()
                .filter(|&d| d > 0)
                .map(Millis),
        }
    }
}

/// A fixed queue of samples between 10 ms frames and AEC3's 4 ms blocks.
struct SampleQueue {
    samples: [f32; QUEUE],
    len: usize,
}

impl Default for SampleQueue {
    fn default() -> Self {
        Self {
            samples: [0.0; QUEUE],
            len: 0,
        }
    }
}

impl SampleQueue {
    /// Appends `input`; what does not fit is dropped (never, with frames
    /// and blocks taken in turn).
    fn push(&mut self, input: &[f32]) {
        let take = input.len().min(QUEUE - self.len);
        self.samples[self.len..self.len + take].copy_from_slice(&input[..take]);
        self.len += take;
    }

    /// Moves the oldest `out.len()` samples into `out`, if there are that many.
    fn pop_into(&mut self, out: &mut [f32]) -> bool {
        let n = out.len();
        if self.len < n {
            return false;
        }
        out.copy_from_slice(&self.samples[..n]);
        self.samples.copy_within(n..self.len, 0);
        self.len -= n;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::echo::room::Room;
    use crate::audio::{read_wav, resample_clip};

    const SILENCE_MS: usize = 3_000;

    /// The bot's reply, three seconds of silence, the reply again, at 16
    /// kHz: the speaker's signal and its echo in the room.
    fn scene() -> (Vec<f32>, Vec<f32>, usize) {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fixtures/audio/bot_reference_16k.wav"
        );
        let reply = read_wav(std::path::Path::new(path)).unwrap().samples;
        let reply = &reply[16_000..reply.len() - 16_000];
        let mut speaker = reply.to_vec();
        speaker.extend(std::iter::repeat_n(0.0, 16 * SILENCE_MS));
        let wake = speaker.len();
        speaker.extend_from_slice(reply);
        // The room's own noise, about -60 dBFS, in the silence only, so
        // that what is left of the echo after it can be measured.
        let silence = wake - 16 * SILENCE_MS..wake;
        let mut noise = 0x2545_f491_u32;
        let mut echo = Room::default().echo(&speaker);
        for s in &mut echo[silence] {
            noise ^= noise << 13;
            noise ^= noise >> 17;
            noise ^= noise << 5;
            *s += (noise as f32 / u32::MAX as f32 - 0.5) * 0.003;
        }
        (speaker, echo, wake)
    }

    /// Runs a canceller over the scene: the speaker's frames handed over
    /// in step with the microphone's until the silence, and two frames
    /// ahead of them from its middle on, as the two devices' callbacks
    /// drift apart. `rests`: whether it may rest.
    fn cancel(speaker16: &[f32], mic: &[f32], wake: usize, rests: bool) -> Vec<f32> {
        let speaker = resample_clip(speaker16, SampleRate::VAD, SampleRate::OPUS).unwrap();
        let frames: Vec<&[f32; FRAME_48K]> = speaker
            .chunks_exact(FRAME_48K)
            .map(|f| f.try_into().unwrap())
            .collect();
        let mut aec = Aec3::new(NoiseSuppression::Off, false, Millis(10)).unwrap();
        if !rests {
            aec.rest.after_blocks = u32::MAX;
        }
        let mut clean = vec![0.0; mic.len()];
        let drift_from = (wake - 16 * SILENCE_MS / 2) / VAD_FRAME;
        let mut rendered = 0;
        for (k, (m, out)) in mic
            .chunks_exact(VAD_FRAME)
            .zip(clean.chunks_exact_mut(VAD_FRAME))
            .enumerate()
        {
            let lead = if k < drift_from { 1 } else { 3 };
            while rendered < (k + lead).min(frames.len()) {
                aec.render(frames[rendered]);
                rendered += 1;
            }
            aec.process(m.try_into().unwrap(), out.try_into().unwrap());
        }
        clean
    }

    fn power_db(x: &[f32]) -> f32 {
        let p: f64 = x.iter().map(|&s| f64::from(s * s)).sum::<f64>() / x.len() as f64;
        (10.0 * p.max(1e-20).log10()) as f32
    }

    #[test]
    fn resting_through_a_silence_changes_nothing_that_comes_out() {
        let (speaker, echo, wake) = scene();
        let rested = cancel(&speaker, &echo, wake, true);
        let awake = cancel(&speaker, &echo, wake, false);
        let silence = wake - 16 * SILENCE_MS..wake;

        // Through the silence, the rest's start and its end, the room's
        // noise comes out as AEC3 hands it out: the microphone high-passed,
        // half a block and a block later.
        let mut high_pass = HighPass::new(SampleRate::VAD);
        let mut expect: Vec<f32> = echo.iter().map(|s| s * S16).collect();
        for frame in expect.chunks_exact_mut(VAD_FRAME) {
            high_pass.process(frame);
        }
        let delayed = |i: usize| (expect[i - BLOCK_SIZE / 2 - BLOCK_SIZE] / S16).clamp(-1.0, 1.0);
        let quiet = silence.start + 16 * 500..wake;
        let worst = |clean: &[f32]| {
            quiet
                .clone()
                .map(|i| (clean[i] - delayed(i)).abs())
                .fold(0.0f32, f32::max)
        };
        assert!(worst(&awake) < 1e-5, "AEC3 itself: {}", worst(&awake));
        assert!(worst(&rested) < 1e-5, "resting: {}", worst(&rested));

        // After it, the bot's echo is taken out as well as by a canceller
        // that never rested: out of step by the drift, it let the echo
        // through 30 dB under itself.
        let after = wake..wake + 16_000;
        let (echo_db, rested_db, awake_db) = (
            power_db(&echo[after.clone()]),
            power_db(&rested[after.clone()]),
            power_db(&awake[after]),
        );
        eprintln!("echo {echo_db:.1} dB, rested {rested_db:.1} dB, awake {awake_db:.1} dB");
        assert!(rested_db < echo_db - 40.0);
        assert!(rested_db < awake_db + 3.0);
    }
}
