//! `kiosk-gateway bench`: audio throughput on this machine.
//!
//! Pushes 60 s of the built-in speech fixture through the capture path
//! (resample, VAD, segmenter, Opus encode) and the playout path (Opus
//! decode of what a stock Pipecat bot sends, jitter buffer, resample) as
//! fast as possible on one thread, in the same 10 ms frames the engine
//! uses, and times each stage on its own as well as the whole path. The
//! capture path runs with the configured echo canceller, fed the same
//! speech as what the speaker plays.
//!
//! Then both paths again, paced as the DSP thread runs them live: one
//! packet's worth (`opus_frame_ms`) each way per wake-up, sleeping until the next.
//! The same instructions cost more when the thread sleeps between bursts
//! (caches and the core's clock go cold), so this is what the audio work
//! costs in a live session; the figure above is its floor.
//!
//! Then the echo canceller in a simulated kiosk room ([`room`]): the bot's
//! reply through a clipping speaker and a 200 ms reverberant room, the
//! visitor's four utterances over it at 0 and -6 dB signal-to-echo ratio,
//! with bot-only stretches before and after. The visitor's utterances as
//! the capture path finds them in their clean recording are the truth.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::io::Cursor;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::AudioError;
use super::capture::{AudioEvent, AudioSink, CaptureProcessor, EncodedFrame};
use super::codec::{OpusDecoder, OpusEncoder, StockBotEncoder};
use super::echo::room::{Conversation, Room};
use super::echo::{Aec3, EchoCanceller};
use super::engine::AudioEngine;
use super::metrics::AudioMetrics;
use super::offline::{SegmentReport, vad_clip};
use super::playout::{IncomingPacket, JitterBuffer, Playout};
use super::resample::{StreamResampler, resample_clip};
use super::segmenter::Segmenter;
use super::settings::{AudioSettings, DeviceSpec, VadSettings};
use super::units::{FRAME_48K, FRAME_MS, Millis, OPUS_FRAME, SampleRate, VAD_FRAME};
use super::vad::VoiceDetector;
use super::wav::PcmClip;

/// The multi-utterance fixture, built in so the benchmark runs on a kiosk.
const SPEECH_WAV: &[u8] = include_bytes!("../../fixtures/audio/multi_utterance_16k.wav");
/// The bot's reply (1 s of silence either side), for the simulated room.
const BOT_WAV: &[u8] = include_bytes!("../../fixtures/audio/bot_reference_16k.wav");

/// Signal-to-echo ratios the visitor speaks at in the simulated room.
const ROOM_SER_DB: [f32; 2] = [0.0, -6.0];
/// Where the visitor starts talking over the bot: after this much of the
/// bot alone, then `ROOM_PLACEMENT_STEP` later in each further scene, so
/// that their utterances meet the bot's speech at different phases (loud
/// vowels, pauses) rather than at one lucky or unlucky spot.
const ROOM_FIRST_PLACEMENT: Millis = Millis(10_000);
const ROOM_PLACEMENT_STEP: Millis = Millis(730);
/// Scenes per ratio.
const ROOM_PLACEMENTS: u32 = 5;
/// A detected onset this close to the true one counts as a hit.
const ONSET_TOLERANCE: Millis = Millis(100);
/// The canceller has converged by then; ERLE is measured after it.
const CONVERGED_AFTER: Millis = Millis(2_000);

/// How long the live engine runs for the latency figure.
const LATENCY_RUN: Duration = Duration::from_secs(3);

/// Audio pushed through each path.
pub const BENCH_AUDIO: Millis = Millis(60_000);

/// Audio pushed through both paths in real time for the paced figure.
const PACED_AUDIO: Millis = Millis(10_000);

/// How fast one path (capture or playout) runs.
#[derive(Clone, Debug, Serialize)]
pub struct PathReport {
    /// Seconds of audio processed per second of one core's CPU time.
    pub x_realtime: f64,
    /// CPU time per 10 ms of audio, in nanoseconds.
    pub ns_per_10ms_frame: u64,
    /// The same figure for each stage run alone.
    pub stages: BTreeMap<&'static str, u64>,
}

/// Delay the engine adds from the microphone delivering samples to their
/// Opus packet leaving the DSP thread, measured on a live engine.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyReport {
    /// Collecting one packet's audio (`opus_frame_ms`): the first sample of
    /// a packet waits this long.
    pub framing_ms: u32,
    /// From the delivery of a packet's last samples to the packet.
    pub mean_us: u64,
    /// The longest, in µs.
    pub max_us: u64,
    /// Packets measured.
    pub packets: u64,
}

/// What `bench` measured; its JSON form is the `bench --json` output.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// The device rate simulated.
    pub device_rate_hz: u32,
    /// The Opus complexity used.
    pub opus_complexity: i32,
    /// Audio pushed through each path.
    pub audio_ms: u32,
    /// Microphone to Opus packets.
    pub capture: PathReport,
    /// Opus packets to the speaker, as a stock Pipecat bot sends them
    /// (48 kHz stereo, 96 kbit/s: [`StockBotEncoder`]).
    pub playout: PathReport,
    /// Both paths paced as in a live session.
    pub paced: PacedReport,
    /// Delay added on the way out.
    pub latency: LatencyReport,
    /// `null` with `[audio] echo_cancel = false`.
    pub echo: Option<EchoReport>,
    /// CPU-seconds a minute of live session spends on its audio work: the
    /// capture path (with the echo canceller when it is on) and the
    /// playout path as measured here. What the rest of the process costs
    /// is measured against it (`scripts/measure-session`).
    pub audio_work_cpu_s_per_minute: f64,
}

/// Both paths run as the DSP thread runs them: a burst of work per
/// packet, asleep in between.
#[derive(Clone, Debug, Serialize)]
pub struct PacedReport {
    /// Audio pushed through both paths, in real time.
    pub audio_ms: u32,
    /// Audio per wake-up.
    pub wake_ms: u32,
    /// Wake-ups, one per burst.
    pub wakeups: u32,
    /// CPU time of the work alone (not the sleeps) per 10 ms frame.
    pub ns_per_10ms_frame: u64,
    /// The same per minute of audio: the audio work of a live session.
    pub cpu_s_per_minute: f64,
    /// How many times the back-to-back figure the same work costs paced.
    pub x_back_to_back: f64,
}

/// CPU-seconds per minute of audio for work taking `ns` per 10 ms frame.
fn cpu_s_per_minute(ns: u64) -> f64 {
    ns as f64 * 6000.0 / 1e9
}

/// The echo canceller in the simulated room.
#[derive(Clone, Debug, Serialize)]
pub struct EchoReport {
    /// CPU time of the canceller alone (render and capture) per 10 ms frame.
    pub canceller_ns_per_10ms_frame: u64,
    /// The room at each signal-to-echo ratio.
    pub scenes: Vec<SceneReport>,
}

/// The visitor over the bot at one signal-to-echo ratio, over all the
/// placements of their speech on the bot's.
#[derive(Clone, Debug, Serialize)]
pub struct SceneReport {
    /// The visitor's level over the echo's at the microphone.
    pub ser_db: f32,
    /// Scenes run, each with the visitor starting at another point of the bot's speech.
    pub scenes: u32,
    /// The visitor's utterances over all scenes (the truth).
    pub utterances: usize,
    /// Found with their onset within 100 ms of the truth.
    pub detected: usize,
    /// Utterances that started where the visitor was silent.
    pub started_by_echo: usize,
    /// Echo power at the microphone over what is left of it in the
    /// canceller's output, over the bot-only stretches after convergence;
    /// the lowest of the scenes.
    pub erle_db: f32,
    /// The canceller's own ERLE estimate at the end of the last scene.
    pub reported_erle_db: Option<f32>,
    /// The echo delay the canceller settled on in the last scene.
    pub delay_ms: Option<u32>,
}

impl BenchReport {
    /// The report as technicians read it.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "{} s of speech, device rate {} Hz, Opus complexity {}, one thread (CPU time); \
             the playout decodes a stock Pipecat bot's stream (48 kHz stereo, 96 kbit/s)\n",
            self.audio_ms / 1000,
            self.device_rate_hz,
            self.opus_complexity
        );
        for (name, path) in [("capture", &self.capture), ("playout", &self.playout)] {
            out.push_str(&format!(
                "{name:<8} {:>8.0}x real time  {:>7} ns per 10 ms frame\n",
                path.x_realtime, path.ns_per_10ms_frame
            ));
            for (stage, ns) in &path.stages {
                out.push_str(&format!("  {stage:<14} {ns:>7} ns\n"));
            }
        }
        out.push_str(&format!(
            "audio work {:.2} CPU-s per minute of live session ({:.2}% of one core)\n",
            self.audio_work_cpu_s_per_minute,
            self.audio_work_cpu_s_per_minute * 100.0 / 60.0
        ));
        let p = &self.paced;
        out.push_str(&format!(
            "paced    {:.2} CPU-s per minute as live ({} ms per wake-up, {} s of audio), {:.1}x back to back\n",
            p.cpu_s_per_minute,
            p.wake_ms,
            p.audio_ms / 1000,
            p.x_back_to_back
        ));
        let l = &self.latency;
        out.push_str(&format!(
            "latency  {} ms framing + {} us mean, {} us max to the encoded packet ({} packets, live engine)\n",
            l.framing_ms, l.mean_us, l.max_us, l.packets
        ));
        if let Some(e) = &self.echo {
            out.push_str(&format!(
                "echo canceller {} ns per 10 ms frame; simulated room (30 ms, 200 ms decay, clipping speaker):\n",
                e.canceller_ns_per_10ms_frame
            ));
            for sc in &e.scenes {
                out.push_str(&format!(
                    "  SER {:>4.0} dB, {} scenes: {}/{} utterances within 100 ms, {} started by echo, ERLE {:.1} dB at least (canceller's estimate {}), delay {}\n",
                    sc.ser_db,
                    sc.scenes,
                    sc.detected,
                    sc.utterances,
                    sc.started_by_echo,
                    sc.erle_db,
                    sc.reported_erle_db.map_or("-".into(), |e| format!("{e:.1} dB")),
                    sc.delay_ms.map_or("-".into(), |d| format!("{d} ms")),
                ));
            }
        }
        out
    }
}

/// Counts what the capture path produced, so nothing is optimised away.
#[derive(Default)]
struct CountingSink {
    events: u64,
    bytes: u64,
}

impl AudioSink for CountingSink {
    fn event(&mut self, _event: AudioEvent) {
        self.events += 1;
    }
    fn frame(&mut self, frame: EncodedFrame) {
        self.bytes += frame.packet.bytes().len() as u64;
    }
}

/// CPU time of the calling thread. The figures are CPU time rather than
/// wall time so that other work on a shared machine does not skew them.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID
    // is supported on every Linux the gateway runs on.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn time<T>(f: impl FnOnce() -> Result<T, AudioError>) -> Result<(Duration, T), AudioError> {
    let start = thread_cpu_time();
    let value = f()?;
    Ok((thread_cpu_time().saturating_sub(start), value))
}

fn per_frame(elapsed: Duration, frames: usize) -> u64 {
    (elapsed.as_nanos() / frames.max(1) as u128) as u64
}

/// A built-in 16-bit WAV fixture.
fn built_in(bytes: &[u8], name: &str) -> Result<PcmClip, AudioError> {
    hound::WavReader::new(Cursor::new(bytes))
        .and_then(|r| {
            let rate = r.spec().sample_rate;
            let samples = r
                .into_samples::<i16>()
                .map(|s| s.map(|v| f32::from(v) / 32768.0))
                .collect::<Result<Vec<f32>, _>>()?;
            Ok(PcmClip {
                rate: SampleRate(rate),
                samples,
            })
        })
        .map_err(|source| AudioError::Wav {
            path: format!("built-in {name}").into(),
            source,
        })
}

/// Runs the benchmark with microphone and speaker at `device_rate`.
pub fn run(device_rate: SampleRate, audio: &AudioSettings) -> Result<BenchReport, AudioError> {
    // As on the DSP thread, whose work this measures.
    super::denormals::flush_to_zero_on_this_thread();
    let clip = built_in(SPEECH_WAV, "speech fixture")?;
    let speech16: Vec<f32> = clip
        .samples
        .iter()
        .copied()
        .cycle()
        .take(SampleRate::VAD.samples_in(BENCH_AUDIO))
        .collect();
    let mic = resample_clip(&speech16, SampleRate::VAD, device_rate)?;
    let speech48 = resample_clip(&speech16, SampleRate::VAD, SampleRate::OPUS)?;
    let frames = BENCH_AUDIO.frames() as usize;
    let block = device_rate.samples_in(FRAME_MS);
    let vad = VadSettings::default();

    let capture = bench_capture(audio, &vad, device_rate, block, &mic, &speech48, frames)?;
    let packets = encode_packets(&speech48)?;
    let playout = bench_playout(audio, device_rate, &speech48, &packets, frames)?;
    let audio_work_ns = capture.ns_per_10ms_frame + playout.ns_per_10ms_frame;
    let streams = Streams {
        mic: &mic,
        block,
        packets: &packets,
    };
    let paced = bench_paced(
        audio,
        &vad,
        device_rate,
        &streams,
        PACED_AUDIO,
        audio_work_ns,
    )?;
    let latency = live_latency(audio)?;
    let echo = if audio.echo_cancel {
        Some(bench_echo(audio, &clip, &speech48)?)
    } else {
        None
    };
    Ok(BenchReport {
        audio_work_cpu_s_per_minute: cpu_s_per_minute(audio_work_ns),
        paced,
        latency,
        echo,
        device_rate_hz: device_rate.hz(),
        opus_complexity: audio.opus_complexity,
        audio_ms: BENCH_AUDIO.0,
        capture,
        playout,
    })
}

fn bench_capture(
    audio: &AudioSettings,
    vad_settings: &VadSettings,
    rate: SampleRate,
    block: usize,
    mic: &[f32],
    speech48: &[f32],
    frames: usize,
) -> Result<PathReport, AudioError> {
    let mut stages = BTreeMap::new();

    let (resample, voiced) = time(|| {
        let mut to_vad = StreamResampler::new(rate, SampleRate::VAD, block)?;
        let mut f16 = [0.0; VAD_FRAME];
        let mut n = 0usize;
        for chunk in mic.chunks(block) {
            to_vad.push(chunk)?;
            while to_vad.pop_frame(&mut f16) {
                n += 1;
            }
        }
        Ok(n)
    })?;
    stages.insert("resample", per_frame(resample, voiced));

    let speech16 = resample_clip(speech48, SampleRate::OPUS, SampleRate::VAD)?;
    let (vad_time, decisions) = time(|| {
        let mut detector = VoiceDetector::new(vad_settings.aggressiveness);
        Ok(speech16
            .chunks_exact(VAD_FRAME)
            .map(|f| detector.is_voiced(f.try_into().unwrap_or(&[0.0; VAD_FRAME])))
            .collect::<Vec<bool>>())
    })?;
    stages.insert("vad", per_frame(vad_time, decisions.len()));

    let (seg_time, emitted) = time(|| {
        let mut segmenter = Segmenter::new(vad_settings);
        let mut emitted = 0u64;
        for (voiced, frame) in decisions.iter().zip(speech16.chunks_exact(VAD_FRAME)) {
            let frame: &[f32; VAD_FRAME] = frame.try_into().unwrap_or(&[0.0; VAD_FRAME]);
            segmenter.push(*voiced, frame, &mut |_| emitted += 1);
        }
        Ok(emitted)
    })?;
    black_box(emitted);
    stages.insert("segmenter", per_frame(seg_time, decisions.len()));

    let (enc_time, bytes) = time(|| {
        let mut encoder = OpusEncoder::with_frame(audio, SampleRate::VAD, audio.opus_frame())?;
        let mut bytes = 0usize;
        for chunk in speech16.chunks_exact(encoder.frame_len()) {
            bytes += encoder.encode(chunk)?.bytes().len();
        }
        Ok(bytes)
    })?;
    black_box(bytes);
    stages.insert("opus_encode", per_frame(enc_time, frames));

    if audio.echo_cancel {
        let (aec_time, n) = time(|| Ok(cancel_echo(audio, speech48, &speech16)?.1))?;
        stages.insert("echo_cancel", per_frame(aec_time, n));
    }

    let (total, sink) = time(|| {
        let metrics = Arc::new(AudioMetrics::default());
        let mut capture = CaptureProcessor::new(audio, vad_settings, rate, block, true, metrics)?;
        let mut sink = CountingSink::default();
        // Stream from the start so every frame is encoded, the costly case.
        capture.link_ready(&mut sink);
        // The speaker plays speech all along: the canceller's busiest case.
        for (chunk, played) in mic.chunks(block).zip(speech48.chunks_exact(FRAME_48K)) {
            let played: &[f32; FRAME_48K] = played.try_into().unwrap_or(&[0.0; FRAME_48K]);
            capture.observe_playout(played);
            capture.push_samples(chunk, &mut sink)?;
        }
        Ok(sink)
    })?;
    black_box((sink.events, sink.bytes));
    Ok(PathReport {
        x_realtime: f64::from(BENCH_AUDIO.0) / 1000.0 / total.as_secs_f64(),
        ns_per_10ms_frame: per_frame(total, frames),
        stages,
    })
}

/// The bot's side: `speech48` as the Opus packets the link delivers from
/// a stock Pipecat bot. They cost more to decode than the kiosk's own
/// wideband packets (full band, stereo), so timing those would understate
/// the playout path.
fn encode_packets(speech48: &[f32]) -> Result<Vec<IncomingPacket>, AudioError> {
    let mut encoder = StockBotEncoder::new()?;
    speech48
        .chunks_exact(OPUS_FRAME)
        .enumerate()
        .map(|(k, c)| {
            let frame: &[f32; OPUS_FRAME] = c.try_into().unwrap_or(&[0.0; OPUS_FRAME]);
            Ok(IncomingPacket {
                seq: k as u16,
                timestamp: (k * OPUS_FRAME) as u32,
                payload: encoder.encode(frame)?,
            })
        })
        .collect()
}

fn bench_playout(
    audio: &AudioSettings,
    rate: SampleRate,
    speech48: &[f32],
    packets: &[IncomingPacket],
    frames: usize,
) -> Result<PathReport, AudioError> {
    let mut stages = BTreeMap::new();

    let (dec_time, samples) = time(|| {
        let mut decoder = OpusDecoder::new()?;
        let mut pcm = [0.0; OPUS_FRAME];
        let mut n = 0;
        for p in packets {
            n += decoder.decode(p.payload.bytes(), &mut pcm)?;
        }
        Ok(n)
    })?;
    stages.insert("opus_decode", per_frame(dec_time, samples / FRAME_48K));

    let (jb_time, popped) = time(|| {
        let mut jitter = JitterBuffer::new(audio, Arc::new(AudioMetrics::default()));
        let mut popped = 0usize;
        for (k, p) in packets.iter().enumerate() {
            jitter.insert(*p, Millis(k as u32 * 20));
            popped += usize::from(!matches!(
                jitter.pop(false),
                super::playout::NextFrame::Silence
            ));
        }
        Ok(popped)
    })?;
    black_box(popped);
    stages.insert("jitter_buffer", per_frame(jb_time, frames));

    let (rs_time, out_frames) = time(|| {
        let out_block = rate.samples_in(FRAME_MS);
        let mut to_device = StreamResampler::new(SampleRate::OPUS, rate, FRAME_48K)?;
        let mut out = vec![0.0; out_block];
        let mut n = 0;
        for f in speech48.chunks_exact(FRAME_48K) {
            to_device.push(f)?;
            while to_device.pop_frame(&mut out) {
                n += 1;
            }
        }
        Ok(n)
    })?;
    stages.insert("resample", per_frame(rs_time, out_frames));

    let (total, played) = time(|| {
        let mut playout = Playout::new(audio, Arc::new(AudioMetrics::default()))?;
        let out_block = rate.samples_in(FRAME_MS);
        let mut to_device = StreamResampler::new(SampleRate::OPUS, rate, FRAME_48K)?;
        let mut frame = [0.0; FRAME_48K];
        let mut out = vec![0.0; out_block];
        let mut played = 0usize;
        let mut next = 0;
        for tick in 0..frames as u32 {
            push_due(&mut playout, packets, &mut next, Millis(tick * FRAME_MS.0));
            played += usize::from(playout.next_frame(&mut frame));
            to_device.push(&frame)?;
            while to_device.pop_frame(&mut out) {}
        }
        Ok(played)
    })?;
    black_box(played);
    Ok(PathReport {
        x_realtime: f64::from(BENCH_AUDIO.0) / 1000.0 / total.as_secs_f64(),
        ns_per_10ms_frame: per_frame(total, frames),
        stages,
    })
}

/// Hands `playout` the packets from `next` on that are due at `now`, as
/// the link would have delivered them (their timestamps count 48 kHz
/// samples from the first).
fn push_due(playout: &mut Playout, packets: &[IncomingPacket], next: &mut usize, now: Millis) {
    while let Some(p) = packets.get(*next)
        && p.timestamp / 48 <= now.0
    {
        playout.push(*p, now);
        *next += 1;
    }
}

/// What both paths are fed: the microphone at the device rate in device
/// blocks, and the bot's packets.
struct Streams<'a> {
    mic: &'a [f32],
    block: usize,
    packets: &'a [IncomingPacket],
}

/// Both paths together for `length` of audio in real time: per wake-up,
/// one packet's frames (`opus_frame_ms`) each way as the DSP thread
/// handles them (`CaptureClock` wakes it once per packet), then
/// asleep until the next is due. Times the work alone, and compares it
/// with the same work back to back (`back_to_back_ns` per frame).
fn bench_paced(
    audio: &AudioSettings,
    vad: &VadSettings,
    rate: SampleRate,
    streams: &Streams,
    length: Millis,
    back_to_back_ns: u64,
) -> Result<PacedReport, AudioError> {
    let metrics = Arc::new(AudioMetrics::default());
    let mut capture =
        CaptureProcessor::new(audio, vad, rate, streams.block, true, metrics.clone())?;
    let mut sink = CountingSink::default();
    capture.link_ready(&mut sink);
    let mut playout = Playout::new(audio, metrics)?;
    let mut to_device = StreamResampler::new(SampleRate::OPUS, rate, FRAME_48K)?;
    let mut frame = [0.0; FRAME_48K];
    let mut out = vec![0.0; streams.block];
    let mut mic = streams.mic.chunks_exact(streams.block).cycle();
    let wake = audio.opus_frame();
    let per_wake = wake.frames() as usize;
    let wakeups = length.0 / wake.0;
    let mut next_packet = 0;
    let mut work = Duration::ZERO;
    let start = Instant::now();
    for woken in 0..wakeups {
        let began = thread_cpu_time();
        for k in 0..per_wake {
            let now = Millis((woken * per_wake as u32 + k as u32) * FRAME_MS.0);
            push_due(&mut playout, streams.packets, &mut next_packet, now);
            playout.next_frame(&mut frame);
            to_device.push(&frame)?;
            while to_device.pop_frame(&mut out) {}
            capture.observe_playout(&frame);
            capture.push_samples(mic.next().unwrap_or(&[]), &mut sink)?;
        }
        work += thread_cpu_time().saturating_sub(began);
        let due = start + Duration::from(Millis((woken + 1) * wake.0));
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
    black_box((sink.events, sink.bytes, out));
    let frames = (wakeups as usize * per_wake).max(1);
    let ns = per_frame(work, frames);
    Ok(PacedReport {
        audio_ms: wakeups * wake.0,
        wake_ms: wake.0,
        wakeups,
        ns_per_10ms_frame: ns,
        cpu_s_per_minute: cpu_s_per_minute(ns),
        x_back_to_back: ns as f64 / back_to_back_ns.max(1) as f64,
    })
}

/// Runs the real engine for a few seconds with the speech fixture as a
/// real-time WAV microphone and reads its capture-latency metric.
fn live_latency(audio: &AudioSettings) -> Result<LatencyReport, AudioError> {
    let path = std::env::temp_dir().join(format!("kiosk-gateway-bench-{}.wav", std::process::id()));
    let wav_err = |source| AudioError::Wav {
        path: path.clone(),
        source: hound::Error::IoError(source),
    };
    std::fs::write(&path, SPEECH_WAV).map_err(wav_err)?;
    let settings = AudioSettings {
        input: DeviceSpec::Wav(path.clone()),
        output: DeviceSpec::Disabled,
        ..audio.clone()
    };
    let result = (|| {
        let mut engine = AudioEngine::start(&settings, &VadSettings::default())?;
        engine.link_ready();
        std::thread::sleep(LATENCY_RUN);
        engine.stop()?;
        let packets = engine.frames().try_iter().count() as u64;
        let (mean_us, max_us) = engine.metrics().capture_latency_us().unwrap_or((0, 0));
        Ok(LatencyReport {
            framing_ms: audio.opus_frame().0,
            mean_us,
            max_us,
            packets,
        })
    })();
    std::fs::remove_file(&path).map_err(wav_err)?;
    result
}

/// Runs the canceller alone over `mic` (16 kHz) with `speaker` (48 kHz)
/// as reference; the cleaned signal and the frames processed.
fn cancel_echo(
    audio: &AudioSettings,
    speaker: &[f32],
    mic: &[f32],
) -> Result<(Vec<f32>, usize), AudioError> {
    let mut canceller = Aec3::new(
        audio.noise_suppression,
        audio.auto_gain,
        Millis(audio.device_buffer_ms.0 + FRAME_MS.0),
    )?;
    let mut clean = vec![0.0; mic.len()];
    let mut frames = 0;
    for ((m, out), s) in mic
        .chunks_exact(VAD_FRAME)
        .zip(clean.chunks_exact_mut(VAD_FRAME))
        .zip(speaker.chunks_exact(FRAME_48K))
    {
        let (Ok(m), Ok(out), Ok(s)) = (
            <&[f32; VAD_FRAME]>::try_from(m),
            <&mut [f32; VAD_FRAME]>::try_from(out),
            <&[f32; FRAME_48K]>::try_from(s),
        ) else {
            continue;
        };
        canceller.render(s);
        canceller.process(m, out);
        frames += 1;
    }
    Ok((clean, frames))
}

/// The echo canceller's cost, and the simulated room at each ratio.
fn bench_echo(
    audio: &AudioSettings,
    visitor: &PcmClip,
    speech48: &[f32],
) -> Result<EchoReport, AudioError> {
    let speech16 = resample_clip(speech48, SampleRate::OPUS, SampleRate::VAD)?;
    let (aec_time, n) = time(|| Ok(cancel_echo(audio, speech48, &speech16)?.1))?;
    let bot = built_in(BOT_WAV, "bot reply")?;
    // Without its silences, so that the bot talks all the time.
    let second = SampleRate::VAD.samples_in(Millis(1_000));
    let bot = bot
        .samples
        .get(second..bot.samples.len().saturating_sub(second))
        .unwrap_or(&bot.samples);
    let vad = VadSettings::default();
    let truth = vad_clip(visitor, None, audio, &vad)?.segments;
    let scenes = ROOM_SER_DB
        .iter()
        .map(|&ser_db| {
            let mut total = room_scene(
                audio,
                &vad,
                bot,
                visitor,
                &truth,
                ser_db,
                ROOM_FIRST_PLACEMENT,
            )?;
            for k in 1..ROOM_PLACEMENTS {
                let before = Millis(ROOM_FIRST_PLACEMENT.0 + k * ROOM_PLACEMENT_STEP.0);
                let scene = room_scene(audio, &vad, bot, visitor, &truth, ser_db, before)?;
                total = SceneReport {
                    scenes: total.scenes + 1,
                    utterances: total.utterances + scene.utterances,
                    detected: total.detected + scene.detected,
                    started_by_echo: total.started_by_echo + scene.started_by_echo,
                    erle_db: total.erle_db.min(scene.erle_db),
                    ..scene
                };
            }
            Ok(total)
        })
        .collect::<Result<_, AudioError>>()?;
    Ok(EchoReport {
        canceller_ns_per_10ms_frame: per_frame(aec_time, n),
        scenes,
    })
}

fn room_scene(
    audio: &AudioSettings,
    vad: &VadSettings,
    bot: &[f32],
    visitor: &PcmClip,
    truth: &[SegmentReport],
    ser_db: f32,
    before: Millis,
) -> Result<SceneReport, AudioError> {
    let conversation = Conversation::new(
        &Room::default(),
        bot,
        &visitor.samples,
        ser_db,
        before,
        Millis(8_000),
    );
    let truth: Vec<SegmentReport> = truth
        .iter()
        .map(|t| SegmentReport {
            start_ms: t.start_ms + before.0,
            end_ms: t.end_ms + before.0,
        })
        .collect();
    let clip = |samples: &[f32]| PcmClip {
        rate: SampleRate::VAD,
        samples: samples.to_vec(),
    };
    let found = vad_clip(
        &clip(&conversation.mic),
        Some(&clip(&conversation.speaker)),
        audio,
        vad,
    )?;
    let detected = truth
        .iter()
        .filter(|t| {
            found
                .segments
                .iter()
                .any(|f| f.start_ms.abs_diff(t.start_ms) <= ONSET_TOLERANCE.0)
        })
        .count();
    let started_by_echo = found
        .segments
        .iter()
        .filter(|f| {
            !truth
                .iter()
                .any(|t| f.start_ms + ONSET_TOLERANCE.0 >= t.start_ms && f.start_ms <= t.end_ms)
        })
        .count();
    // Measured on the canceller alone, where echo and output line up.
    let speaker48 = resample_clip(&conversation.speaker, SampleRate::VAD, SampleRate::OPUS)?;
    let (clean, _) = cancel_echo(audio, &speaker48, &conversation.mic)?;
    let from = SampleRate::VAD.samples_in(CONVERGED_AFTER);
    let visitor_at = SampleRate::VAD.samples_in(before);
    let after = visitor_at + visitor.samples.len();
    let stretches = [from..visitor_at, after..conversation.mic.len()];
    let power = |x: &[f32]| {
        stretches
            .iter()
            .flat_map(|r| &x[r.clone()])
            .map(|&s| f64::from(s * s))
            .sum::<f64>()
    };
    let erle_db = (10.0 * (power(&conversation.echo) / power(&clean).max(1e-12)).log10()) as f32;
    let echo = found.echo.unwrap_or(super::offline::EchoReport {
        erle_db: None,
        delay_ms: None,
    });
    Ok(SceneReport {
        ser_db,
        scenes: 1,
        utterances: truth.len(),
        detected,
        started_by_echo,
        erle_db,
        reported_erle_db: echo.erle_db,
        delay_ms: echo.delay_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_frame_costs_add_up_to_cpu_seconds_per_minute() {
        // 6000 frames a minute: 50 us each is 0.3 s, half a per cent of a core.
        assert!((cpu_s_per_minute(50_000) - 0.3).abs() < 1e-9);
        assert_eq!(cpu_s_per_minute(0), 0.0);
    }

    #[test]
    fn the_paced_run_keeps_real_time_one_packet_per_wake_up() {
        let audio = AudioSettings::default();
        let clip = built_in(SPEECH_WAV, "speech fixture").unwrap();
        let speech48 = resample_clip(&clip.samples, SampleRate::VAD, SampleRate::OPUS).unwrap();
        let packets = encode_packets(&speech48).unwrap();
        let streams = Streams {
            mic: &speech48,
            block: FRAME_48K,
            packets: &packets,
        };
        let began = Instant::now();
        let report = bench_paced(
            &audio,
            &VadSettings::default(),
            SampleRate::OPUS,
            &streams,
            Millis(300),
            1_000,
        )
        .unwrap();
        // Run as fast as it can, 280 ms of audio (seven 40 ms packets)
        // takes a few milliseconds.
        assert!(began.elapsed() >= Duration::from_millis(280));
        assert_eq!(
            (report.wakeups, report.audio_ms, report.wake_ms),
            (7, 280, 40)
        );
        assert!(report.ns_per_10ms_frame > 0);
        let expected = report.ns_per_10ms_frame as f64 / 1_000.0;
        assert!((report.x_back_to_back - expected).abs() < 1e-9);
    }
}
