//! Turns per-frame voice decisions into utterances.
//!
//! The segmenter sees one 10 ms frame at a time with the VAD's verdict and
//! the audio of that frame (`N` samples: 160 at 16 kHz in the gateway). It keeps recent frames so that when speech
//! is confirmed it can hand out the pre-roll (audio from before the onset)
//! followed by everything up to the end of the utterance, and nothing is
//! clipped.

use super::settings::VadSettings;
use super::units::Millis;

/// One utterance on the input's timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Utterance {
    /// First voiced frame.
    pub start: Millis,
    /// End of the last voiced frame (the hangover is not included).
    pub end: Millis,
    /// Closed because it reached `max_utterance_ms`, not because of silence.
    pub split: bool,
}

impl Utterance {
    /// How long the utterance lasted.
    pub fn speech(&self) -> Millis {
        Millis(self.end.0 - self.start.0)
    }
}

/// What the segmenter reports, in order, for each frame pushed.
#[derive(Debug, PartialEq)]
pub enum SegmentOutput<'a, const N: usize> {
    /// Speech confirmed. `onset` is the first voiced frame; `preroll` is how
    /// much audio before it follows in `Speech` outputs.
    Started {
        /// When, in the stream, speech began.
        onset: Millis,
        /// Audio from before the onset included in the utterance.
        preroll: Millis,
    },
    /// One 10 ms frame of utterance audio (pre-roll first).
    Speech(&'a [f32; N]),
    /// The utterance is over; emitted `hangover_ms` after its last voiced frame.
    Ended(Utterance),
}

#[derive(Clone, Copy, Debug)]
enum State {
    Silence,
    /// Onset seen but fewer than `min_speech_ms` of voiced frames since:
    /// may still be a click or a burst of noise.
    Candidate {
        onset: u64,
        last_voiced: u64,
        voiced: u64,
    },
    Speaking {
        onset: u64,
        last_voiced: u64,
    },
}

/// VAD frames in, utterances out. Allocates only in `new`.
pub struct Segmenter<const N: usize> {
    onset_window: u32,
    onset_voiced: u32,
    preroll: u64,
    hangover: u64,
    min_speech: u64,
    max_utterance: u64,
    /// Last `onset_window` decisions, newest in bit 0.
    window: u64,
    history: Vec<[f32; N]>,
    /// Index of the next frame to be pushed.
    next: u64,
    /// Frames before this index were already handed out.
    emitted_until: u64,
    state: State,
    discarded: u64,
    /// First frame of the current unbroken run of frames in which either
    /// the VAD or the fainter detector heard voice.
    heard_since: Option<u64>,
}

/// How far a confirmed onset may move back to where a fainter detector
/// first heard the word: a soft first phoneme, not a stretch of noise.
const MAX_BACKDATE_FRAMES: u64 = 15;

impl<const N: usize> Segmenter<N> {
    /// A segmenter with `settings`, hearing nothing yet.
    pub fn new(settings: &VadSettings) -> Self {
        let onset_window = settings.onset_window_ms.frames().clamp(1, 64);
        let onset_voiced = settings.onset_voiced_ms.frames().clamp(1, onset_window);
        let preroll = u64::from(settings.preroll_ms.frames());
        let min_speech = u64::from(settings.min_speech_ms.frames().max(1));
        // Enough history for the pre-roll plus everything seen while a
        // candidate waits to reach the minimum length.
        let capacity = preroll + MAX_BACKDATE_FRAMES + u64::from(onset_window) + 2 * min_speech + 2;
        Self {
            onset_window,
            onset_voiced,
            preroll,
            hangover: u64::from(settings.hangover_ms.frames().max(1)),
            min_speech,
            max_utterance: u64::from(settings.max_utterance_ms.frames()).max(min_speech + 1),
            window: 0,
            history: vec![[0.0; N]; capacity as usize],
            next: 0,
            emitted_until: 0,
            state: State::Silence,
            discarded: 0,
            heard_since: None,
        }
    }

    /// Most frames one `push` can hand out (a confirmed onset with its pre-roll).
    pub fn history_len(&self) -> usize {
        self.history.len()
    }

    /// Whether an utterance is confirmed and still open.
    pub fn in_speech(&self) -> bool {
        matches!(self.state, State::Speaking { .. })
    }

    /// Onsets that never reached `min_speech_ms`.
    pub fn discarded(&self) -> u64 {
        self.discarded
    }

    /// Takes one frame and the VAD's verdict on it, and reports what follows from it to `out`.
    pub fn push(
        &mut self,
        voiced: bool,
        frame: &[f32; N],
        out: &mut dyn FnMut(SegmentOutput<'_, N>),
    ) {
        self.push_heard(voiced, false, frame, out);
    }

    /// As [`push`](Self::push), with a second, fainter verdict: voice
    /// heard by a more sensitive detector. It never starts or holds an
    /// utterance; when the VAD confirms one, its onset moves back (by at
    /// most [`MAX_BACKDATE_FRAMES`]) to where the unbroken run of voice
    /// that either heard began, so a soft first phoneme the VAD missed
    /// counts as the start of the word.
    pub fn push_heard(
        &mut self,
        voiced: bool,
        faint: bool,
        frame: &[f32; N],
        out: &mut dyn FnMut(SegmentOutput<'_, N>),
    ) {
        let idx = self.next;
        self.heard_since = if voiced || faint {
            Some(self.heard_since.unwrap_or(idx))
        } else {
            None
        };
        let slot = (idx % self.history.len() as u64) as usize;
        self.history[slot] = *frame;
        self.next += 1;
        let mask = if self.onset_window == 64 {
            u64::MAX
        } else {
            (1u64 << self.onset_window) - 1
        };
        self.window = ((self.window << 1) | u64::from(voiced)) & mask;

        self.state = match self.state {
            State::Silence => {
                if self.window.count_ones() >= self.onset_voiced {
                    // The oldest voiced frame in the window is where speech began.
                    let age = u64::from(63 - self.window.leading_zeros());
                    let onset = self.backdated(idx - age);
                    let voiced = u64::from(self.window.count_ones());
                    self.confirm_or_wait(onset, idx, voiced, idx, out)
                } else {
                    State::Silence
                }
            }
            State::Candidate {
                onset,
                last_voiced,
                voiced: count,
            } => {
                let gap = idx - last_voiced;
                let last_voiced = if voiced { idx } else { last_voiced };
                if idx - last_voiced >= self.min_speech {
                    self.discarded += 1;
                    State::Silence
                } else if voiced
                    && gap > 2 * u64::from(self.onset_window)
                    && count <= u64::from(self.onset_window)
                {
                    // Voice again after a pause of more than twice the
                    // onset window, the candidate so far a blip no longer
                    // than that window: the blip (a click, a burst of the
                    // bot's residual echo) was not the start of this
                    // speech, which starts here. A longer first fragment
                    // is kept: it may be the visitor's first syllable.
                    self.discarded += 1;
                    let onset = self.backdated(idx);
                    self.confirm_or_wait(onset, idx, 1, idx, out)
                } else {
                    self.confirm_or_wait(onset, last_voiced, count + u64::from(voiced), idx, out)
                }
            }
            State::Speaking { onset, last_voiced } => {
                out(SegmentOutput::Speech(&self.history[slot]));
                self.emitted_until = idx + 1;
                let last_voiced = if voiced { idx } else { last_voiced };
                if idx - last_voiced >= self.hangover {
                    out(SegmentOutput::Ended(Utterance {
                        start: Millis::from_frames(onset),
                        end: Millis::from_frames(last_voiced + 1),
                        split: false,
                    }));
                    self.window = 0;
                    State::Silence
                } else if idx + 1 - onset >= self.max_utterance {
                    out(SegmentOutput::Ended(Utterance {
                        start: Millis::from_frames(onset),
                        end: Millis::from_frames(idx + 1),
                        split: true,
                    }));
                    out(SegmentOutput::Started {
                        onset: Millis::from_frames(idx + 1),
                        preroll: Millis(0),
                    });
                    State::Speaking {
                        onset: idx + 1,
                        last_voiced: idx,
                    }
                } else {
                    State::Speaking { onset, last_voiced }
                }
            }
        };
    }

    /// Closes an open utterance at the end of the input.
    pub fn finish(&mut self, out: &mut dyn FnMut(SegmentOutput<'_, N>)) {
        if let State::Speaking { onset, last_voiced } = self.state {
            out(SegmentOutput::Ended(Utterance {
                start: Millis::from_frames(onset),
                end: Millis::from_frames(last_voiced + 1),
                split: false,
            }));
        }
        self.state = State::Silence;
    }

    /// `onset` moved back to the start of the unbroken run of voice heard
    /// through it, within [`MAX_BACKDATE_FRAMES`] and never into audio
    /// already handed out.
    fn backdated(&self, onset: u64) -> u64 {
        match self.heard_since {
            Some(since) if since < onset => since
                .max(onset.saturating_sub(MAX_BACKDATE_FRAMES))
                .max(self.emitted_until),
            _ => onset,
        }
    }

    fn confirm_or_wait(
        &mut self,
        onset: u64,
        last_voiced: u64,
        voiced: u64,
        idx: u64,
        out: &mut dyn FnMut(SegmentOutput<'_, N>),
    ) -> State {
        // Counting voiced frames rather than the span keeps sparse bursts
        // of noise from adding up to an utterance.
        if voiced < self.min_speech {
            return State::Candidate {
                onset,
                last_voiced,
                voiced,
            };
        }
        let oldest_kept = self.next.saturating_sub(self.history.len() as u64);
        let first = onset
            .saturating_sub(self.preroll)
            .max(oldest_kept)
            .max(self.emitted_until);
        out(SegmentOutput::Started {
            onset: Millis::from_frames(onset),
            preroll: Millis::from_frames(onset.saturating_sub(first)),
        });
        for i in first..=idx {
            let slot = (i % self.history.len() as u64) as usize;
            out(SegmentOutput::Speech(&self.history[slot]));
        }
        self.emitted_until = idx + 1;
        State::Speaking { onset, last_voiced }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::units::FRAME_48K;

    /// Runs a voiced/unvoiced pattern through the segmenter; each frame's
    /// audio is filled with its index so the output order can be checked.
    fn run(settings: &VadSettings, pattern: &[bool]) -> (Vec<Utterance>, Vec<u64>, u64) {
        let mut seg = Segmenter::new(settings);
        let mut utterances = Vec::new();
        let mut frames = Vec::new();
        let mut sink = |o: SegmentOutput<'_, FRAME_48K>| match o {
            SegmentOutput::Speech(f) => frames.push(f[0] as u64),
            SegmentOutput::Ended(u) => utterances.push(u),
            SegmentOutput::Started { .. } => {}
        };
        for (i, &v) in pattern.iter().enumerate() {
            seg.push(v, &[i as f32; FRAME_48K], &mut sink);
        }
        seg.finish(&mut sink);
        let discarded = seg.discarded();
        (utterances, frames, discarded)
    }

    fn pattern(runs: &[(bool, usize)]) -> Vec<bool> {
        runs.iter()
            .flat_map(|&(v, n)| std::iter::repeat_n(v, n))
            .collect()
    }

    #[test]
    fn utterance_has_preroll_hangover_and_exact_bounds() {
        let s = VadSettings::default();
        let (utts, frames, _) = run(&s, &pattern(&[(false, 100), (true, 80), (false, 100)]));
        assert_eq!(
            utts,
            vec![Utterance {
                start: Millis(1000),
                end: Millis(1800),
                split: false
            }]
        );
        // 300 ms pre-roll (frames 70..100), the speech, then the 500 ms hangover.
        let expected: Vec<u64> = (70..230).collect();
        assert_eq!(frames, expected);
    }

    /// Onsets found when `faint` frames (heard only by the fainter
    /// detector) run into `voiced` ones: `(faint, voiced)` per frame.
    fn onsets_heard(frames: &[(bool, bool)]) -> Vec<Millis> {
        let mut seg = Segmenter::<FRAME_48K>::new(&VadSettings::default());
        let mut onsets = Vec::new();
        for &(faint, voiced) in frames {
            seg.push_heard(voiced, faint, &[0.0; FRAME_48K], &mut |o| {
                if let SegmentOutput::Started { onset, .. } = o {
                    onsets.push(onset);
                }
            });
        }
        onsets
    }

    fn heard(runs: &[((bool, bool), usize)]) -> Vec<(bool, bool)> {
        runs.iter()
            .flat_map(|&(v, n)| std::iter::repeat_n(v, n))
            .collect()
    }

    #[test]
    fn a_fainter_detector_dates_the_onset_but_never_starts_speech() {
        const SILENT: (bool, bool) = (false, false);
        const FAINT: (bool, bool) = (true, false);
        const VOICED: (bool, bool) = (true, true);
        // A soft first phoneme heard only faintly for 80 ms, then the word.
        let word = heard(&[(SILENT, 100), (FAINT, 8), (VOICED, 40), (SILENT, 100)]);
        assert_eq!(onsets_heard(&word), vec![Millis(1000)]);
        // At most 150 ms back: a long faint stretch is not the word.
        let long = heard(&[(SILENT, 100), (FAINT, 40), (VOICED, 40), (SILENT, 100)]);
        assert_eq!(onsets_heard(&long), vec![Millis(1250)]);
        // Only an unbroken run counts.
        let broken = heard(&[(SILENT, 100), (FAINT, 5), (SILENT, 1), (VOICED, 40)]);
        assert_eq!(onsets_heard(&broken), vec![Millis(1060)]);
        // Faint voice alone starts nothing.
        assert!(onsets_heard(&heard(&[(SILENT, 10), (FAINT, 200)])).is_empty());
    }

    #[test]
    fn clicks_shorter_than_min_speech_are_discarded() {
        let s = VadSettings::default();
        let (utts, frames, discarded) = run(&s, &pattern(&[(false, 50), (true, 5), (false, 100)]));
        assert!(utts.is_empty());
        assert!(frames.is_empty());
        assert_eq!(discarded, 1);
    }

    #[test]
    fn sparse_noise_bursts_do_not_add_up_to_speech() {
        let s = VadSettings::default();
        let burst = [(true, 7), (false, 15)];
        let runs: Vec<(bool, usize)> = std::iter::once((false, 50))
            .chain(burst.iter().copied().cycle().take(4))
            .chain([(false, 60)])
            .collect();
        // 2 x 70 ms voiced spread over 290 ms: a span longer than
        // min_speech_ms, but not that much speech.
        let (utts, frames, discarded) = run(&s, &pattern(&runs));
        assert!(utts.is_empty(), "{utts:?}");
        assert!(frames.is_empty());
        assert_eq!(discarded, 1);
    }

    #[test]
    fn a_blip_before_speech_does_not_become_its_onset() {
        let s = VadSettings::default();
        // 40 ms of something voiced (residual echo), 150 ms of nothing, then speech.
        let (utts, _, discarded) = run(
            &s,
            &pattern(&[(false, 50), (true, 4), (false, 15), (true, 60), (false, 60)]),
        );
        assert_eq!(utts.len(), 1, "{utts:?}");
        assert_eq!(utts[0].start, Millis(690));
        assert_eq!(discarded, 1);
        // A pause under 100 ms inside the first syllables is speech.
        let (utts, _, _) = run(
            &s,
            &pattern(&[(false, 50), (true, 4), (false, 9), (true, 60), (false, 60)]),
        );
        assert_eq!(utts[0].start, Millis(500));
    }

    #[test]
    fn short_pauses_stay_inside_one_utterance() {
        let s = VadSettings::default();
        let (utts, _, _) = run(
            &s,
            &pattern(&[
                (false, 40),
                (true, 30),
                (false, 30),
                (true, 30),
                (false, 60),
            ]),
        );
        assert_eq!(utts.len(), 1);
        assert_eq!(utts[0].start, Millis(400));
        assert_eq!(utts[0].end, Millis(1300));
    }

    #[test]
    fn long_speech_is_split_without_losing_frames() {
        let s = VadSettings {
            max_utterance_ms: Millis(1000),
            ..VadSettings::default()
        };
        let (utts, frames, _) = run(&s, &pattern(&[(false, 40), (true, 250), (false, 60)]));
        let bounds: Vec<(u32, u32, bool)> =
            utts.iter().map(|u| (u.start.0, u.end.0, u.split)).collect();
        assert_eq!(
            bounds,
            vec![(400, 1400, true), (1400, 2400, true), (2400, 2900, false)]
        );
        // Contiguous audio: pre-roll from frame 10, no gaps or repeats.
        let expected: Vec<u64> = (10..(290 + 50)).collect();
        assert_eq!(frames, expected);
    }

    #[test]
    fn preroll_never_repeats_the_previous_utterances_tail() {
        let s = VadSettings::default();
        let (utts, frames, _) = run(
            &s,
            &pattern(&[
                (false, 40),
                (true, 30),
                (false, 55),
                (true, 30),
                (false, 60),
            ]),
        );
        assert_eq!(utts.len(), 2);
        let mut sorted = frames.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), frames.len(), "a frame was handed out twice");
    }
}
