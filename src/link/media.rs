//! Small audio helpers for the loopback agent and the link tests: 48 kHz
//! mono WAV files, Opus 20 ms frames and an energy VAD. The product's audio
//! path (and `call`'s) is the audio module; these exist so the link can be
//! exercised on its own.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;

/// 48 kHz mono, the link's native format.
pub const SAMPLE_RATE: u32 = 48_000;
/// 20 ms at 48 kHz.
pub const FRAME_SAMPLES: usize = 960;
pub const FRAME_DURATION: Duration = Duration::from_millis(20);
/// Largest Opus packet we produce (a 20 ms voice frame is far smaller).
const MAX_PACKET: usize = 1500;

#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("WAV {path}: {source}")]
    Wav {
        path: String,
        #[source]
        source: hound::Error,
    },
    #[error(
        "WAV {path}: need 48000 Hz mono 16-bit, got {rate} Hz, {channels} channel(s), {bits} bit"
    )]
    WavFormat {
        path: String,
        rate: u32,
        channels: u16,
        bits: u16,
    },
    #[error("Opus: {0}")]
    Opus(#[from] opus::Error),
}

/// Reads a 48 kHz mono 16-bit WAV.
pub fn read_wav(path: &Path) -> Result<Vec<i16>, MediaError> {
    let name = path.display().to_string();
    let reader = hound::WavReader::open(path).map_err(|source| MediaError::Wav {
        path: name.clone(),
        source,
    })?;
    samples_48k_mono(reader, &name)
}

/// As [`read_wav`], for a WAV held in memory (built-in prompts).
pub fn read_wav_bytes(bytes: &[u8]) -> Result<Vec<i16>, MediaError> {
    let name = "(built in)".to_string();
    let reader =
        hound::WavReader::new(std::io::Cursor::new(bytes)).map_err(|source| MediaError::Wav {
            path: name.clone(),
            source,
        })?;
    samples_48k_mono(reader, &name)
}

fn samples_48k_mono<R: std::io::Read>(
    reader: hound::WavReader<R>,
    name: &str,
) -> Result<Vec<i16>, MediaError> {
    let spec = reader.spec();
    if spec.sample_rate != SAMPLE_RATE || spec.channels != 1 || spec.bits_per_sample != 16 {
        return Err(MediaError::WavFormat {
            path: name.to_string(),
            rate: spec.sample_rate,
            channels: spec.channels,
            bits: spec.bits_per_sample,
        });
    }
    reader
        .into_samples::<i16>()
        .collect::<Result<_, _>>()
        .map_err(|source| MediaError::Wav {
            path: name.to_string(),
            source,
        })
}

/// Opus encoder for 20 ms mono voice frames.
pub struct Encoder {
    inner: opus::Encoder,
    out: Vec<u8>,
}

impl Encoder {
    pub fn new() -> Result<Self, MediaError> {
        let mut inner =
            opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)?;
        // Matches the SDP's useinbandfec=1.
        inner.set_inband_fec(true)?;
        // Half of libopus's default effort: speech stays clear and an ARM
        // kiosk keeps the headroom (encoding dominates `call`'s CPU).
        inner.set_complexity(5)?;
        Ok(Self {
            inner,
            out: vec![0; MAX_PACKET],
        })
    }

    /// Encodes one frame; a short last frame is padded with silence.
    pub fn encode(&mut self, pcm: &[i16]) -> Result<Bytes, MediaError> {
        let n = if pcm.len() == FRAME_SAMPLES {
            self.inner.encode(pcm, &mut self.out)?
        } else {
            let mut frame = [0i16; FRAME_SAMPLES];
            let len = pcm.len().min(FRAME_SAMPLES);
            frame[..len].copy_from_slice(&pcm[..len]);
            self.inner.encode(&frame, &mut self.out)?
        };
        Ok(Bytes::copy_from_slice(&self.out[..n]))
    }
}

/// Opus decoder to 48 kHz mono.
pub struct Decoder {
    inner: opus::Decoder,
    out: Vec<i16>,
}

impl Decoder {
    pub fn new() -> Result<Self, MediaError> {
        Ok(Self {
            inner: opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)?,
            // 120 ms, the longest Opus packet
            out: vec![0; SAMPLE_RATE as usize / 1000 * 120],
        })
    }

    pub fn decode(&mut self, packet: &[u8]) -> Result<&[i16], MediaError> {
        let n = self.inner.decode(packet, &mut self.out, false)?;
        Ok(&self.out[..n])
    }
}

/// Speech boundary found by [`EnergyVad`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VadEdge {
    Start,
    /// Speech ended; how long it lasted (without the trailing silence).
    End {
        speech: Duration,
    },
}

/// A frame-energy VAD with onset and hangover: enough for a test agent to
/// tell utterances apart in clean fixture speech.
pub struct EnergyVad {
    threshold: f64,
    onset_frames: u32,
    hangover_frames: u32,
    loud_run: u32,
    quiet_run: u32,
    speech_frames: u32,
    speaking: bool,
}

impl EnergyVad {
    /// `threshold_dbfs`: frame RMS above which a frame counts as speech.
    pub fn new(threshold_dbfs: f64, onset: Duration, hangover: Duration) -> Self {
        let frames = |d: Duration| (d.as_millis() / FRAME_DURATION.as_millis()).max(1) as u32;
        Self {
            threshold: 32768.0 * 10f64.powf(threshold_dbfs / 20.0),
            onset_frames: frames(onset),
            hangover_frames: frames(hangover),
            loud_run: 0,
            quiet_run: 0,
            speech_frames: 0,
            speaking: false,
        }
    }

    /// Feeds one 20 ms frame.
    pub fn push(&mut self, frame: &[i16]) -> Option<VadEdge> {
        let loud = rms(frame) > self.threshold;
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

fn rms(frame: &[i16]) -> f64 {
    if frame.is_empty() {
        return 0.0;
    }
    let sum: f64 = frame.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (sum / frame.len() as f64).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(frames: usize, amplitude: f64) -> Vec<i16> {
        (0..frames * FRAME_SAMPLES)
            .map(|i| (amplitude * (i as f64 * 0.05).sin()) as i16)
            .collect()
    }

    #[test]
    fn vad_finds_one_utterance() {
        let mut vad = EnergyVad::new(-40.0, Duration::from_millis(60), Duration::from_millis(300));
        let mut pcm = tone(10, 0.0);
        pcm.extend(tone(50, 8000.0));
        pcm.extend(tone(30, 0.0));
        let edges: Vec<_> = pcm
            .chunks(FRAME_SAMPLES)
            .filter_map(|f| vad.push(f))
            .collect();
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

    #[test]
    fn opus_round_trip_keeps_the_signal() {
        let mut enc = Encoder::new().unwrap();
        let mut dec = Decoder::new().unwrap();
        let pcm = tone(20, 8000.0);
        let mut out = Vec::new();
        for f in pcm.chunks(FRAME_SAMPLES) {
            let packet = enc.encode(f).unwrap();
            out.extend_from_slice(dec.decode(&packet).unwrap());
        }
        assert_eq!(out.len(), pcm.len());
        let energy_in = rms(&pcm[FRAME_SAMPLES * 5..]);
        let energy_out = rms(&out[FRAME_SAMPLES * 5..]);
        assert!((energy_out / energy_in - 1.0).abs() < 0.2);
    }
}
