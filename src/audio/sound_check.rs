//! The engine's part of the speaker and microphone self-test: it plays a
//! given signal through the speaker it has open while recording the raw
//! microphone, so the test never opens a device the engine holds. While
//! it runs the capture path hears silence, so the test tone cannot start
//! a visitor session. Judging the recording is the caller's business
//! (`crate::selftest`).

use std::sync::Arc;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use super::units::{FRAME_48K, SampleRate};

/// Beyond the listening time, how long the engine keeps recording when
/// the microphone delivers less than asked (closed, or a short file).
pub(super) const GRACE: Duration = Duration::from_secs(1);

/// What the engine heard and played.
#[derive(Debug, Clone)]
pub struct SoundCheckRecording {
    /// The raw microphone from the first frame of the signal on (before
    /// echo cancellation and every other stage).
    pub mic: Vec<f32>,
    /// The microphone's rate.
    pub mic_rate: SampleRate,
    /// 10 ms frames of the signal handed to an open speaker (device or
    /// file); 0 when no speaker was open.
    pub speaker_frames: u64,
}

/// A sound check for the DSP thread.
pub(super) struct SoundCheckRequest {
    /// At 48 kHz, played from the DSP thread's next frame on.
    signal: Arc<[f32]>,
    listen: Duration,
    reply: SyncSender<SoundCheckRecording>,
}

/// A sound check in progress on the DSP thread.
pub(super) struct ActiveCheck {
    request: SoundCheckRequest,
    played: usize,
    speaker_frames: u64,
    mic: Vec<f32>,
    started: Instant,
}

impl SoundCheckRequest {
    pub(super) fn new(
        signal: Vec<f32>,
        listen: Duration,
        reply: SyncSender<SoundCheckRecording>,
    ) -> Self {
        Self {
            signal: signal.into(),
            listen,
            reply,
        }
    }
}

impl ActiveCheck {
    /// The recording's room is taken here, once: `record` runs on the DSP
    /// thread every block and must not allocate.
    pub(super) fn new(request: SoundCheckRequest, mic_rate: SampleRate) -> Self {
        Self {
            mic: Vec::with_capacity(wanted(&request, mic_rate) + mic_rate.hz() as usize),
            request,
            played: 0,
            speaker_frames: 0,
            started: Instant::now(),
        }
    }

    /// Replaces a playout frame with the next stretch of the signal
    /// (silence once it is over).
    pub(super) fn play(&mut self, frame: &mut [f32; FRAME_48K], to_speaker: bool) {
        let signal = &self.request.signal;
        for s in frame.iter_mut() {
            *s = signal.get(self.played).copied().unwrap_or(0.0);
            self.played += 1;
        }
        if to_speaker {
            self.speaker_frames += 1;
        }
    }

    /// Keeps the raw microphone block, then blanks it for the capture path.
    pub(super) fn record(&mut self, block: &mut [f32]) {
        self.mic.extend_from_slice(block);
        block.fill(0.0);
    }

    /// The recording, once the listening time is covered (or the
    /// microphone gave up); `Err(self)` while still listening.
    pub(super) fn finish(self, mic_rate: SampleRate) -> Result<(), Self> {
        if self.mic.len() < wanted(&self.request, mic_rate)
            && self.started.elapsed() < self.request.listen + GRACE
        {
            return Err(self);
        }
        let recording = SoundCheckRecording {
            mic: self.mic,
            mic_rate,
            speaker_frames: self.speaker_frames,
        };
        // The caller may have given up waiting; nothing to do then.
        let _ = self.request.reply.try_send(recording);
        Ok(())
    }
}

/// Microphone samples the check listens for.
fn wanted(request: &SoundCheckRequest, mic_rate: SampleRate) -> usize {
    (request.listen.as_secs_f64() * f64::from(mic_rate.hz())) as usize
}
