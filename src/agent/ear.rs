//! The agent's ear: a frame-energy VAD with onset and hangover over the
//! frames it receives, enough to tell utterances apart in clean fixture
//! speech. Every utterance it closes is recorded and answered.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::Shared;
use super::voice::FRAME_DURATION;
use crate::audio::Dbfs;

/// One finished utterance, from the ear to the responder.
pub(super) struct Utterance {
    pub(super) speech: Duration,
}

/// Speech boundary found by [`EnergyVad`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VadEdge {
    Start,
    /// Speech ended; how long it lasted (without the trailing silence).
    End {
        speech: Duration,
    },
}

/// Counts 20 ms frames above a level: `onset` of them start speech,
/// `hangover` of silence end it.
struct EnergyVad {
    threshold: Dbfs,
    onset_frames: u32,
    hangover_frames: u32,
    loud_run: u32,
    quiet_run: u32,
    speech_frames: u32,
    speaking: bool,
}

impl EnergyVad {
    fn new(threshold: Dbfs, onset: Duration, hangover: Duration) -> Self {
        let frames = |d: Duration| (d.as_millis() / FRAME_DURATION.as_millis()).max(1) as u32;
        Self {
            threshold,
            onset_frames: frames(onset),
            hangover_frames: frames(hangover),
            loud_run: 0,
            quiet_run: 0,
            speech_frames: 0,
            speaking: false,
        }
    }

    /// Feeds one 20 ms frame.
    fn push(&mut self, frame: &[f32]) -> Option<VadEdge> {
        let loud = Dbfs::rms(frame) > self.threshold;
        if self.speaking {
            self.speech_frames += 1;
            if loud {
                self.quiet_run = 0;
                return None;
            }
            self.quiet_run += 1;
            if self.quiet_run < self.hangover_frames {
                return None;
            }
            self.speaking = false;
            let frames = self.speech_frames - self.quiet_run;
            self.speech_frames = 0;
            self.loud_run = 0;
            return Some(VadEdge::End {
                speech: FRAME_DURATION * frames,
            });
        }
        self.loud_run = if loud { self.loud_run + 1 } else { 0 };
        if self.loud_run >= self.onset_frames {
            self.speaking = true;
            self.quiet_run = 0;
            self.speech_frames = self.loud_run;
            return Some(VadEdge::Start);
        }
        None
    }
}

/// The VAD of one call, and where its utterances go.
pub(super) struct Ear {
    vad: EnergyVad,
    shared: Arc<Shared>,
    out: mpsc::Sender<Utterance>,
}

impl Ear {
    pub(super) fn new(shared: Arc<Shared>, out: mpsc::Sender<Utterance>) -> Self {
        let config = &shared.config;
        Self {
            vad: EnergyVad::new(
                Dbfs(config.vad_threshold_dbfs as f32),
                config.vad_onset,
                config.vad_hangover,
            ),
            shared,
            out,
        }
    }

    /// Hears one 20 ms frame (48 kHz).
    pub(super) async fn hear(&mut self, frame: &[f32]) {
        if let Some(VadEdge::End { speech }) = self.vad.push(frame) {
            self.shared.record().utterances.push(speech);
            let _ = self.out.send(Utterance { speech }).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::OPUS_FRAME;

    fn tone(frames: usize, amplitude: f32) -> Vec<f32> {
        (0..frames * OPUS_FRAME)
            .map(|i| amplitude * (i as f32 * 0.05).sin())
            .collect()
    }

    #[test]
    fn vad_finds_one_utterance() {
        let mut vad = EnergyVad::new(
            Dbfs(-40.0),
            Duration::from_millis(60),
            Duration::from_millis(300),
        );
        let mut pcm = tone(10, 0.0);
        pcm.extend(tone(50, 0.25));
        pcm.extend(tone(30, 0.0));
        let edges: Vec<_> = pcm.chunks(OPUS_FRAME).filter_map(|f| vad.push(f)).collect();
        assert_eq!(
            edges,
            vec![
                VadEdge::Start,
                VadEdge::End {
                    speech: Duration::from_millis(1000)
                }
            ]
        );
    }
}
