//! Capture-side segmentation against the ground truth of the speech fixtures
//! (see fixtures/audio/README.md).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiosk_gateway::audio::cli::{SegmentReport, vad_file};
use kiosk_gateway::audio::{
    AudioEvent, AudioMetrics, AudioSettings, AudioSink, CaptureProcessor, Dbfs, EncodedFrame,
    FRAME_48K, Millis, PcmClip, SampleRate, SegmentOutput, Segmenter, VAD_FRAME, VadSettings,
    VoiceDetector, read_wav, resample_clip, write_wav,
};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/audio")
        .join(name)
}

const MULTI_TRUTH: [(u32, u32); 4] = [(1000, 3730), (5230, 6697), (8697, 9912), (11112, 12421)];
const NOISY_TRUTH: [(u32, u32); 2] = [(1000, 2467), (3967, 5182)];

fn assert_matches_truth(found: &[SegmentReport], truth: &[(u32, u32)], onset_tolerance: u32) {
    let hangover = VadSettings::default().hangover_ms.0;
    assert_eq!(
        found.len(),
        truth.len(),
        "found {found:?}, expected {truth:?}"
    );
    for (seg, &(start, end)) in found.iter().zip(truth) {
        assert!(
            seg.start_ms.abs_diff(start) <= onset_tolerance,
            "onset {} vs truth {start}",
            seg.start_ms
        );
        assert!(
            seg.end_ms + 60 >= end && seg.end_ms <= end + hangover + 60,
            "end {} vs truth {end}",
            seg.end_ms
        );
    }
}

#[test]
fn every_utterance_is_found_with_accurate_bounds_and_nothing_in_the_silences() {
    let report = vad_file(&fixture("multi_utterance_16k.wav"), &VadSettings::default()).unwrap();
    assert_matches_truth(&report.segments, &MULTI_TRUTH, 60);
    assert_eq!(report.duration_ms, 13_420);
}

#[test]
fn device_rates_give_the_same_segments() {
    let clip = read_wav(&fixture("multi_utterance_16k.wav")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for rate in [48_000, 44_100] {
        let samples = resample_clip(&clip.samples, clip.rate, SampleRate(rate)).unwrap();
        let path = dir.path().join(format!("multi_{rate}.wav"));
        write_wav(
            &path,
            &PcmClip {
                rate: SampleRate(rate),
                samples,
            },
        )
        .unwrap();
        let report = vad_file(&path, &VadSettings::default()).unwrap();
        assert_matches_truth(&report.segments, &MULTI_TRUTH, 60);
    }
}

#[test]
fn background_noise_does_not_make_or_hide_utterances() {
    let report = vad_file(&fixture("noisy_speech_16k.wav"), &VadSettings::default()).unwrap();
    // The soft "th" of "Thank you" drowns in the noise, so the VAD hears the
    // second utterance up to ~90 ms late; the pre-roll still carries it.
    assert_matches_truth(&report.segments, &NOISY_TRUTH, 100);
}

#[test]
fn preroll_hands_out_the_audio_from_before_the_onset() {
    let clip = read_wav(&fixture("multi_utterance_16k.wav")).unwrap();
    let clip48 = resample_clip(&clip.samples, clip.rate, SampleRate::OPUS).unwrap();
    let settings = VadSettings::default();
    let mut vad = VoiceDetector::new(settings.aggressiveness);
    let mut segmenter = Segmenter::<FRAME_48K>::new(&settings);
    let mut first_start: Option<(Millis, Millis)> = None;
    let mut audio: Vec<f32> = Vec::new();
    let mut ended = false;
    for (f16, f48) in clip
        .samples
        .chunks_exact(VAD_FRAME)
        .zip(clip48.chunks_exact(FRAME_48K))
    {
        let voiced = vad.is_voiced(f16.try_into().unwrap());
        segmenter.push(voiced, f48.try_into().unwrap(), &mut |o| match o {
            SegmentOutput::Started { onset, preroll } => {
                first_start.get_or_insert((onset, preroll));
            }
            SegmentOutput::Speech(f) if !ended => audio.extend_from_slice(f),
            SegmentOutput::Speech(_) => {}
            SegmentOutput::Ended(_) => ended = true,
        });
        if ended {
            break;
        }
    }
    let (onset, preroll) = first_start.expect("no utterance");
    assert_eq!(preroll, settings.preroll_ms);
    let first = SampleRate::OPUS.samples_in(Millis(onset.0 - preroll.0));
    // The handed-out audio is the input, unaltered, from 300 ms before the onset...
    assert_eq!(&audio[..], &clip48[first..first + audio.len()]);
    // ...so it includes the first phoneme: the 50 ms after the true start are in it and loud.
    let truth_start = SampleRate::OPUS.samples_in(Millis(MULTI_TRUTH[0].0));
    assert!(first + 4800 <= truth_start, "pre-roll starts too late");
    let phoneme = &audio[truth_start - first..truth_start - first + 2400];
    assert!(Dbfs::rms(phoneme).0 > -40.0);
}

#[derive(Default)]
struct Recorder {
    events: Vec<AudioEvent>,
    frames: Vec<EncodedFrame>,
    /// Frames handed out by `link_ready`.
    released: usize,
}

impl AudioSink for Recorder {
    fn event(&mut self, event: AudioEvent) {
        self.events.push(event);
    }
    fn frame(&mut self, frame: EncodedFrame) {
        self.frames.push(frame);
    }
}

fn capture(vad: &VadSettings, rate: SampleRate, metrics: Arc<AudioMetrics>) -> CaptureProcessor {
    capture_with(&AudioSettings::default(), vad, rate, metrics)
}

fn capture_with(
    audio: &AudioSettings,
    vad: &VadSettings,
    rate: SampleRate,
    metrics: Arc<AudioMetrics>,
) -> CaptureProcessor {
    CaptureProcessor::new(audio, vad, rate, rate.samples_in(Millis(10)), true, metrics).unwrap()
}

/// Plays the fixture with the link coming up 2.5 s in, during the first utterance.
fn stream_fixture(audio: &AudioSettings, metrics: Arc<AudioMetrics>) -> Recorder {
    let clip = read_wav(&fixture("multi_utterance_16k.wav")).unwrap();
    let mut cap = capture_with(audio, &VadSettings::default(), clip.rate, metrics);
    let mut rec = Recorder::default();
    let (before, after) = clip.samples.split_at(40_000);
    for chunk in before.chunks(160) {
        cap.push_samples(chunk, &mut rec).unwrap();
    }
    assert!(
        rec.frames.is_empty(),
        "packets left before the link was ready"
    );
    assert!(matches!(
        rec.events[0],
        AudioEvent::SpeechStarted {
            onset: Millis(1000),
            ..
        }
    ));
    cap.link_ready(&mut rec);
    rec.released = rec.frames.len();
    for chunk in after.chunks(160) {
        cap.push_samples(chunk, &mut rec).unwrap();
    }
    rec
}

#[test]
fn speech_is_held_until_the_link_is_ready_then_every_frame_is_streamed() {
    let metrics = Arc::new(AudioMetrics::default());
    let rec = stream_fixture(&AudioSettings::default(), metrics.clone());
    // Everything from the pre-roll (0.7 s) to 2.5 s: 45 packets of 40 ms
    // (the default).
    assert_eq!(rec.released, 45, "packets released");
    assert!(rec.frames[0].after_silence);
    let last = rec.frames[rec.released - 1].timestamp / 1920;
    assert_eq!(last, 44, "last released frame");
    // From then on one packet per 40 ms, silences included, up to the end
    // of the file (13.42 s): the agent hears the pauses between utterances
    // as audio, which is how its VAD ends a turn.
    assert_eq!(rec.frames.len(), (13_420 - 700) / 40);
    let timestamps: Vec<u32> = rec.frames.iter().map(|f| f.timestamp).collect();
    assert!(
        timestamps.windows(2).all(|w| w[1] == w[0] + 1920),
        "a gap or reordering in the stream"
    );
    let talkspurts = rec.frames.iter().filter(|f| f.after_silence).count();
    assert_eq!(talkspurts, 1, "one talkspurt for the whole call");
    assert_eq!(AudioMetrics::get(&metrics.buffer_overflow_packets), 0);
    assert_eq!(AudioMetrics::get(&metrics.utterances), 4);
}

/// A device's DSP thread wakes when the microphone has delivered what the
/// engine asked for: each such wake-up must send exactly one packet, so
/// no packet waits for a later wake-up.
#[test]
fn each_wake_up_for_the_audio_asked_for_sends_one_packet() {
    let clip = read_wav(&fixture("multi_utterance_16k.wav")).unwrap();
    let mut cap = capture_with(
        &AudioSettings::default(),
        &VadSettings::default(),
        clip.rate,
        Arc::new(AudioMetrics::default()),
    );
    let mut rec = Recorder::default();
    let (before, after) = clip.samples.split_at(40_000);
    for chunk in before.chunks(160) {
        cap.push_samples(chunk, &mut rec).unwrap();
    }
    assert_eq!(cap.until_next_packet(), Millis(40), "nothing encoded yet");
    cap.link_ready(&mut rec);
    // A quarter of a packet in (a wake-up for another reason took 10 ms):
    // the next wake-up comes 30 ms later.
    let (quarter, mut rest) = after.split_at(160);
    cap.push_samples(quarter, &mut rec).unwrap();
    assert_eq!(cap.until_next_packet(), Millis(30));
    let mut wake_ups = 0;
    while !rest.is_empty() {
        let want = clip
            .rate
            .samples_in(cap.until_next_packet())
            .min(rest.len());
        let sent = rec.frames.len();
        let (now, later) = rest.split_at(want);
        cap.push_samples(now, &mut rec).unwrap();
        rest = later;
        if !rest.is_empty() {
            assert_eq!(rec.frames.len(), sent + 1, "wake-up {wake_ups}");
            assert_eq!(cap.until_next_packet(), Millis(40));
        }
        wake_ups += 1;
    }
    assert!(wake_ups > 250, "{wake_ups} wake-ups");
}

#[test]
fn with_dtx_on_silences_send_nothing_and_speech_opens_talkspurts() {
    let metrics = Arc::new(AudioMetrics::default());
    let audio = AudioSettings {
        dtx: true,
        ..AudioSettings::default()
    };
    let rec = stream_fixture(&audio, metrics.clone());
    // DTX frames of the pauses are never sent.
    assert!(
        rec.frames.len() < (13_420 - 700) / 40 - 50,
        "{} packets with DTX on",
        rec.frames.len()
    );
    let timestamps: Vec<u32> = rec.frames.iter().map(|f| f.timestamp).collect();
    assert!(timestamps.windows(2).all(|w| w[1] > w[0]), "out of order");
    let talkspurts = rec.frames.iter().filter(|f| f.after_silence).count();
    assert!(talkspurts >= 4, "{talkspurts} talkspurts");
    assert_eq!(AudioMetrics::get(&metrics.utterances), 4);
}

#[test]
fn buffer_overflow_drops_the_oldest_audio_and_counts_it() {
    let clip = read_wav(&fixture("multi_utterance_16k.wav")).unwrap();
    let metrics = Arc::new(AudioMetrics::default());
    let vad = VadSettings {
        buffer_ms: Millis(1000),
        ..VadSettings::default()
    };
    let mut cap = capture(&vad, clip.rate, metrics.clone());
    let mut rec = Recorder::default();
    for chunk in clip.samples[..48_000].chunks(160) {
        cap.push_samples(chunk, &mut rec).unwrap();
    }
    cap.link_ready(&mut rec);
    // 25 packets of 40 ms.
    assert_eq!(rec.frames.len(), 25, "buffer holds 1 s");
    // 0.7 s .. 3.0 s were encoded (57 packets); the newest second survived.
    let dropped = AudioMetrics::get(&metrics.buffer_overflow_packets);
    let dtx = AudioMetrics::get(&metrics.packets_encoded) - dropped - 25;
    assert!(dropped >= 27 && dtx < 5, "{dropped} dropped, {dtx} DTX");
    let last = rec.frames[24].timestamp / 1920;
    assert!((56..=57).contains(&last), "last released frame {last}");
    assert!(rec.frames[0].timestamp / 1920 >= last - 25);
    assert!(rec.frames[0].after_silence, "the jump is marked");
}
