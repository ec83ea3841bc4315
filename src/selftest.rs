//! The on-site self-test of speaker and microphone: a quiet lead-in, then
//! a one-second logarithmic sweep from 300 to 3000 Hz through the speaker
//! while the microphone records. A matched filter (the sweep correlated
//! with the recording) finds the sweep in the room, which gives the
//! acoustic loop delay and level; the lead-in gives the noise floor.
//!
//! The signal goes through the running audio engine ([`SoundCheck`]),
//! which owns the devices; `kiosk-gateway selftest` starts an engine of
//! its own for it, the daemon lends its engine while no session is live.

use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use crate::audio::{
    AudioEngine, AudioError, AudioSettings, DeviceSpec, SampleRate, SoundCheck,
    SoundCheckRecording, VadSettings,
};

/// Quiet before the sweep: the noise floor is measured here.
const LEAD_IN: Duration = Duration::from_millis(500);
const SWEEP: Duration = Duration::from_secs(1);
const SWEEP_FROM_HZ: f64 = 300.0;
const SWEEP_TO_HZ: f64 = 3000.0;
/// -6 dBFS: clearly audible in a lobby, far from clipping.
const SWEEP_AMPLITUDE: f32 = 0.5;
/// The longest loop delay looked for: output buffering, the room, input
/// buffering.
const MAX_DELAY: Duration = Duration::from_millis(500);
/// How long the microphone is recorded.
const LISTEN: Duration = Duration::from_millis(2100);
/// The matched filter works at this rate: the sweep stays below 4 kHz.
const ANALYSIS_RATE: u32 = 8000;
/// Normalised correlation above which the sweep counts as heard: noise
/// alone stays far below, a quiet but clean echo far above.
const HEARD_SCORE: f64 = 0.3;
/// Below this the microphone delivers nothing at all (muted, unplugged).
const DIGITAL_SILENCE: f32 = 1e-5;

/// One part's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartVerdict {
    /// It works.
    pub ok: bool,
    /// Why, in words.
    pub detail: String,
}

/// The self-test's result, for the page, `/api/status` and the CLI.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SelfTestReport {
    /// When it ran.
    pub at: Timestamp,
    /// Speaker and microphone both work.
    pub passed: bool,
    /// The speaker took the sweep.
    pub speaker: PartVerdict,
    /// The microphone heard the sweep.
    pub microphone: PartVerdict,
    /// From the sweep leaving the gateway to it coming back, ms.
    pub loop_delay_ms: Option<f64>,
    /// The sweep's level as heard, dBFS.
    pub loop_level_dbfs: Option<f64>,
    /// The room during the lead-in, dBFS.
    pub noise_floor_dbfs: Option<f64>,
    /// The matched filter's peak, 0 to 1.
    pub match_score: Option<f64>,
    /// One sentence for the page.
    pub summary: String,
}

/// Why the self-test could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum SelfTestError {
    /// The audio engine could not play or record.
    #[error("the audio engine could not run the sound check")]
    Audio(#[from] AudioError),
}

/// The signal to play at 48 kHz: lead-in, sweep, then silence.
pub fn signal() -> Vec<f32> {
    let rate = SampleRate::OPUS;
    let mut out = vec![0.0; samples(rate, LEAD_IN)];
    out.extend(sweep(rate.hz()));
    out
}

/// The sweep at `rate`, with 10 ms fades so it starts and ends without
/// a click.
fn sweep(rate: u32) -> Vec<f32> {
    let n = (SWEEP.as_secs_f64() * f64::from(rate)) as usize;
    let t_total = SWEEP.as_secs_f64();
    let k = (SWEEP_TO_HZ / SWEEP_FROM_HZ).ln();
    let fade = (0.01 * f64::from(rate)) as usize;
    (0..n)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            // Phase of an exponential sweep: f(t) = f0 * (f1/f0)^(t/T).
            let phase = 2.0 * std::f64::consts::PI * SWEEP_FROM_HZ * t_total / k
                * ((t / t_total * k).exp() - 1.0);
            let edge = (i.min(n - 1 - i) as f64 / fade as f64).min(1.0);
            (phase.sin() * edge) as f32 * SWEEP_AMPLITUDE
        })
        .collect()
}

/// Runs the test through a running engine's devices.
pub fn run(engine: &SoundCheck) -> Result<SelfTestReport, SelfTestError> {
    let recording = engine.run(signal(), LISTEN)?;
    Ok(judge(&recording))
}

/// How long `kiosk-gateway selftest` waits for its devices to open.
const DEVICE_WAIT: Duration = Duration::from_secs(3);

/// `kiosk-gateway selftest`: starts an audio engine on the configured
/// devices, runs the test through it, stops it. With the service running
/// its devices are busy: the status page's self-test runs through the
/// service's own engine instead.
pub fn run_standalone(
    audio: &AudioSettings,
    vad: &VadSettings,
) -> Result<SelfTestReport, SelfTestError> {
    let mut engine = AudioEngine::start(audio, vad)?;
    let metrics = engine.metrics().clone();
    let wanted = |spec: &DeviceSpec, open: &std::sync::atomic::AtomicBool| match spec {
        DeviceSpec::Default | DeviceSpec::Named(_) => {
            !open.load(std::sync::atomic::Ordering::Relaxed)
        }
        DeviceSpec::Wav(_) | DeviceSpec::Disabled => false,
    };
    let since = std::time::Instant::now();
    while (wanted(&audio.input, &metrics.input_open) || wanted(&audio.output, &metrics.output_open))
        && since.elapsed() < DEVICE_WAIT
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let report = run(&engine.sound_check());
    engine.stop()?;
    report
}

/// Judges a recording made while [`signal`] played.
pub fn judge(rec: &SoundCheckRecording) -> SelfTestReport {
    let at = Timestamp::now();
    let speaker = if rec.speaker_frames > 0 {
        PartVerdict {
            ok: true,
            detail: format!(
                "played the test tone ({} ms handed to the speaker)",
                rec.speaker_frames * 10
            ),
        }
    } else {
        PartVerdict {
            ok: false,
            detail: "no speaker open: nothing was played".into(),
        }
    };
    let mic = decimate(&rec.mic, rec.mic_rate.hz());
    let lead_in = (LEAD_IN.as_secs_f64() * f64::from(ANALYSIS_RATE)) as usize;
    let quiet = &mic[..mic.len().min(lead_in * 9 / 10)];
    let noise_floor_dbfs = (!quiet.is_empty()).then(|| dbfs(rms(quiet)));
    let peak_abs = rec.mic.iter().fold(0.0f32, |m, s| m.max(s.abs()));
    let found = find_sweep(&mic, lead_in);
    let (microphone, loop_delay_ms, loop_level_dbfs, match_score) = if rec.mic.is_empty() {
        (
            PartVerdict {
                ok: false,
                detail: "no microphone open: nothing was recorded".into(),
            },
            None,
            None,
            None,
        )
    } else if peak_abs < DIGITAL_SILENCE {
        (
            PartVerdict {
                ok: false,
                detail: "the microphone gives only silence (muted, unplugged or turned down?)"
                    .into(),
            },
            None,
            None,
            Some(0.0),
        )
    } else {
        match found {
            Some(m) if m.score >= HEARD_SCORE => (
                PartVerdict {
                    ok: true,
                    detail: format!(
                        "heard the test tone after {:.0} ms at {:.0} dBFS",
                        m.delay_ms, m.level_dbfs
                    ),
                },
                Some(m.delay_ms),
                Some(m.level_dbfs),
                Some(m.score),
            ),
            other => (
                PartVerdict {
                    ok: false,
                    detail: if speaker.ok {
                        "did not hear the test tone (speaker silent, turned down or far away?)"
                            .into()
                    } else {
                        "did not hear the test tone".into()
                    },
                },
                None,
                None,
                other.map(|m| m.score),
            ),
        }
    };
    let passed = speaker.ok && microphone.ok;
    let summary = if passed {
        format!(
            "Speaker and microphone work: {}",
            microphone
                .detail
                .replacen("heard", "the microphone heard", 1)
        )
    } else if !speaker.ok {
        format!("Failed: speaker: {}", speaker.detail)
    } else {
        format!("Failed: microphone: {}", microphone.detail)
    };
    SelfTestReport {
        at,
        passed,
        speaker,
        microphone,
        loop_delay_ms,
        loop_level_dbfs,
        // Digital silence has no floor worth a figure.
        noise_floor_dbfs: noise_floor_dbfs.filter(|_| peak_abs >= DIGITAL_SILENCE),
        match_score,
        summary,
    }
}

/// Where the sweep sits in a recording, and how clearly.
struct Match {
    delay_ms: f64,
    level_dbfs: f64,
    score: f64,
}

/// The matched filter: the lag (after the lead-in) where the recording
/// looks most like the sweep, by normalised correlation.
fn find_sweep(mic: &[f32], lead_in: usize) -> Option<Match> {
    let reference = sweep(ANALYSIS_RATE);
    let ref_energy: f64 = reference.iter().map(|&r| f64::from(r) * f64::from(r)).sum();
    let max_lag = (MAX_DELAY.as_secs_f64() * f64::from(ANALYSIS_RATE)) as usize;
    let mut best: Option<(usize, f64, f64)> = None;
    for lag in 0..=max_lag {
        let start = lead_in + lag;
        let Some(window) = mic.get(start..start + reference.len()) else {
            break;
        };
        let (mut dot, mut energy) = (0.0f64, 0.0f64);
        for (&r, &m) in reference.iter().zip(window) {
            dot += f64::from(r) * f64::from(m);
            energy += f64::from(m) * f64::from(m);
        }
        if energy <= 0.0 {
            continue;
        }
        let score = dot.abs() / (ref_energy * energy).sqrt();
        if best.is_none_or(|(_, s, _)| score > s) {
            best = Some((lag, score, energy));
        }
    }
    best.map(|(lag, score, energy)| Match {
        delay_ms: lag as f64 * 1000.0 / f64::from(ANALYSIS_RATE),
        level_dbfs: dbfs((energy / reference.len() as f64).sqrt() as f32),
        score,
    })
}

/// Down to the analysis rate by averaging blocks (a mild low-pass; the
/// sweep ends well below the new Nyquist frequency).
fn decimate(samples: &[f32], rate: u32) -> Vec<f32> {
    let factor = (rate / ANALYSIS_RATE).max(1) as usize;
    samples
        .chunks_exact(factor)
        .map(|c| c.iter().sum::<f32>() / factor as f32)
        .collect()
}

fn samples(rate: SampleRate, d: Duration) -> usize {
    (d.as_secs_f64() * f64::from(rate.hz())).round() as usize
}

fn rms(s: &[f32]) -> f32 {
    (s.iter().map(|x| x * x).sum::<f32>() / s.len().max(1) as f32).sqrt()
}

fn dbfs(rms: f32) -> f64 {
    // Full-scale sine is -3 dBFS RMS; dBFS here is RMS against full scale.
    20.0 * f64::from(rms.max(1e-10)).log10()
}

impl SelfTestReport {
    /// The CLI's text: one line per part, then the figures.
    pub fn to_text(&self) -> String {
        let mark = |ok| if ok { "ok    " } else { "FAILED" };
        let figure =
            |v: Option<f64>, unit: &str| v.map_or("—".to_string(), |v| format!("{v:.0} {unit}"));
        format!(
            "{}\nspeaker     {} {}\nmicrophone  {} {}\nloop delay  {}\nloop level  {}\nnoise floor {}\n",
            self.summary,
            mark(self.speaker.ok),
            self.speaker.detail,
            mark(self.microphone.ok),
            self.microphone.detail,
            figure(self.loop_delay_ms, "ms"),
            figure(self.loop_level_dbfs, "dBFS"),
            figure(self.noise_floor_dbfs, "dBFS"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A room for tests and trials without devices: what the speaker plays
    /// comes back `delay` later, `gain_db` quieter, over a little noise.
    #[derive(Debug, Clone, Copy)]
    struct SimulatedRoom {
        /// From speaker to microphone.
        delay: Duration,
        /// Loss on the way, dB (negative).
        gain_db: f32,
        /// The speaker plays (false: a dead speaker).
        speaker: bool,
        /// The microphone delivers sound (false: digital silence).
        microphone: bool,
    }

    impl SimulatedRoom {
        /// What the engine would have recorded in this room at 16 kHz.
        fn record(&self, signal: &[f32]) -> SoundCheckRecording {
            let rate = SampleRate::VAD;
            let played =
                crate::audio::resample_clip(signal, SampleRate::OPUS, rate).unwrap_or_default();
            let n = samples(rate, LISTEN);
            let delay = samples(rate, self.delay);
            let gain = 10f32.powf(self.gain_db / 20.0);
            // A fixed pseudo-random hiss at about -66 dBFS, so runs compare.
            let mut seed = 0x2545_f491_u32;
            let mut noise = || {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                (seed as f32 / u32::MAX as f32 - 0.5) * 0.002
            };
            let mic = (0..n)
                .map(|i| {
                    if !self.microphone {
                        return 0.0;
                    }
                    let echo = match (self.speaker, i.checked_sub(delay)) {
                        (true, Some(j)) => played.get(j).copied().unwrap_or(0.0) * gain,
                        _ => 0.0,
                    };
                    echo + noise()
                })
                .collect();
            SoundCheckRecording {
                mic,
                mic_rate: rate,
                speaker_frames: if self.speaker {
                    (signal.len() / crate::audio::FRAME_48K) as u64
                } else {
                    0
                },
            }
        }
    }

    fn room(delay_ms: u64, gain_db: f32) -> SimulatedRoom {
        SimulatedRoom {
            delay: Duration::from_millis(delay_ms),
            gain_db,
            speaker: true,
            microphone: true,
        }
    }

    #[test]
    fn a_working_loop_is_found_with_its_delay_and_level() {
        let report = judge(&room(37, -20.0).record(&signal()));
        assert!(report.passed, "{report:#?}");
        let delay = report.loop_delay_ms.unwrap();
        assert!((delay - 37.0).abs() <= 1.0, "{delay}");
        let level = report.loop_level_dbfs.unwrap();
        // -6 dBFS peak sweep is -9 dBFS RMS, 20 dB down: about -29.
        assert!((-32.0..=-26.0).contains(&level), "{level}");
        let floor = report.noise_floor_dbfs.unwrap();
        assert!((-75.0..=-60.0).contains(&floor), "{floor}");
    }

    #[test]
    fn a_silent_microphone_and_a_dead_speaker_fail_clearly() {
        let silent = judge(
            &SimulatedRoom {
                microphone: false,
                ..room(20, -20.0)
            }
            .record(&signal()),
        );
        assert!(!silent.passed && silent.speaker.ok && !silent.microphone.ok);
        assert!(
            silent.summary.contains("only silence"),
            "{}",
            silent.summary
        );

        let dead = judge(
            &SimulatedRoom {
                speaker: false,
                ..room(20, -20.0)
            }
            .record(&signal()),
        );
        assert!(!dead.passed && !dead.speaker.ok && !dead.microphone.ok);
        assert!(
            dead.summary.starts_with("Failed: speaker"),
            "{}",
            dead.summary
        );
        assert!(dead.match_score.unwrap() < HEARD_SCORE);
    }

    #[test]
    fn a_speaker_that_takes_the_tone_but_makes_no_sound_fails_on_hearing() {
        let report = judge(&room(20, -200.0).record(&signal()));
        assert!(!report.passed && report.speaker.ok && !report.microphone.ok);
        assert!(
            report.summary.contains("did not hear"),
            "{}",
            report.summary
        );
        assert!(report.noise_floor_dbfs.is_some());
    }

    #[test]
    fn a_faint_echo_under_the_noise_is_still_found() {
        let report = judge(&room(120, -50.0).record(&signal()));
        assert!(report.passed, "{report:#?}");
        assert!((report.loop_delay_ms.unwrap() - 120.0).abs() <= 1.0);
    }
}
