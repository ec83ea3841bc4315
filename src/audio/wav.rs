//! WAV files as audio sources and sinks (for tools, tests and `wav:` devices).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use super::AudioError;
use super::resample::resample_clip;
use super::units::{Millis, SampleRate, f32_to_i16};

/// A mono clip held in memory, samples in [-1, 1].
#[derive(Clone, Debug, PartialEq)]
pub struct PcmClip {
    /// Its sample rate.
    pub rate: SampleRate,
    /// Its samples.
    pub samples: Vec<f32>,
}

impl PcmClip {
    /// How long it plays.
    pub fn duration(&self) -> Millis {
        let ms = self.samples.len() as u64 * 1000 / u64::from(self.rate.hz().max(1));
        Millis(u32::try_from(ms).unwrap_or(u32::MAX))
    }

    /// The same clip at `rate` (unchanged when it is already at that rate).
    pub fn resampled(&self, rate: SampleRate) -> Result<PcmClip, AudioError> {
        if self.rate.hz() == 0 {
            return Err(AudioError::Resampler(
                "the clip's sample rate is 0 Hz".into(),
            ));
        }
        Ok(PcmClip {
            rate,
            samples: resample_clip(&self.samples, self.rate, rate)?,
        })
    }
}

/// Reads a WAV file of any rate, channel count and PCM/float format and
/// downmixes it to mono, because every stage after the device is mono.
pub fn read_wav(path: &Path) -> Result<PcmClip, AudioError> {
    let wav_err = |source| AudioError::Wav {
        path: path.to_path_buf(),
        source,
    };
    let reader = hound::WavReader::open(path).map_err(wav_err)?;
    read_clip(reader).map_err(wav_err)
}

/// As [`read_wav`], for a WAV held in memory (the built-in prompts).
pub fn read_wav_bytes(bytes: &[u8]) -> Result<PcmClip, AudioError> {
    hound::WavReader::new(bytes)
        .and_then(read_clip)
        .map_err(AudioError::WavData)
}

fn read_clip<R: Read>(reader: hound::WavReader<R>) -> Result<PcmClip, hound::Error> {
    let mut mono = MonoSamples::new(reader);
    let mut samples = Vec::with_capacity(mono.len());
    while let Some(sample) = mono.next_sample() {
        samples.push(sample?);
    }
    Ok(PcmClip {
        rate: mono.rate(),
        samples,
    })
}

/// A WAV's samples as mono floats in [-1, 1], one at a time: every
/// channel of a frame averaged, integers scaled by their bit depth. An
/// incomplete last frame is dropped.
struct MonoSamples<R: Read> {
    reader: hound::WavReader<R>,
    channels: usize,
    /// What turns an integer sample into [-1, 1]; `None` for float samples.
    int_scale: Option<f32>,
}

impl<R: Read> MonoSamples<R> {
    fn new(reader: hound::WavReader<R>) -> Self {
        let spec = reader.spec();
        Self {
            channels: usize::from(spec.channels.max(1)),
            int_scale: match spec.sample_format {
                hound::SampleFormat::Float => None,
                hound::SampleFormat::Int => Some(1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32),
            },
            reader,
        }
    }

    fn rate(&self) -> SampleRate {
        SampleRate(self.reader.spec().sample_rate)
    }

    /// Mono samples in the whole file.
    fn len(&self) -> usize {
        self.reader.len() as usize / self.channels
    }

    /// The next mono sample; `None` at the end of the file.
    fn next_sample(&mut self) -> Option<Result<f32, hound::Error>> {
        let mut sum = 0.0;
        for _ in 0..self.channels {
            let sample = match self.int_scale {
                None => self.reader.samples::<f32>().next()?,
                Some(scale) => self
                    .reader
                    .samples::<i32>()
                    .next()?
                    .map(|v| v as f32 * scale),
            };
            match sample {
                Ok(v) => sum += v,
                Err(e) => return Some(Err(e)),
            }
        }
        Some(Ok(sum / self.channels as f32))
    }
}

/// A WAV decoded a block at a time, as [`read_wav`] decodes it, for a
/// `wav:` microphone and the failure prompt: it holds its reader's buffer,
/// not the recording (a minute at 16 kHz is 3.7 MiB as `f32`).
pub(crate) struct WavStream<R: Read = BufReader<File>> {
    mono: MonoSamples<R>,
}

impl<R: Read> WavStream<R> {
    /// Reads the header from `reader`; the samples are decoded as they are
    /// read, so damage past the header only ends the stream early.
    pub fn new(reader: R) -> Result<Self, hound::Error> {
        Ok(Self {
            mono: MonoSamples::new(hound::WavReader::new(reader)?),
        })
    }

    /// The file's sample rate.
    pub fn rate(&self) -> SampleRate {
        self.mono.rate()
    }

    /// Fills the start of `out` with the next mono samples and returns how
    /// many it had: fewer than `out.len()` only at the end of the file.
    pub fn read(&mut self, out: &mut [f32]) -> usize {
        for (filled, slot) in out.iter_mut().enumerate() {
            match self.mono.next_sample() {
                Some(Ok(v)) => *slot = v,
                // Checked whole at open: an error now is the file changing
                // under the gateway, and it goes quiet as at its end.
                _ => return filled,
            }
        }
        out.len()
    }
}

impl WavStream {
    /// Opens `path` and decodes it once through, so that a damaged file
    /// fails here, as reading it whole does, and not midway through.
    pub fn open(path: &Path) -> Result<Self, AudioError> {
        let wav_err = |source| AudioError::Wav {
            path: path.to_path_buf(),
            source,
        };
        let mut mono = MonoSamples::new(hound::WavReader::open(path).map_err(wav_err)?);
        while let Some(sample) = mono.next_sample() {
            sample.map_err(wav_err)?;
        }
        mono.reader
            .seek(0)
            .map_err(|e| wav_err(hound::Error::IoError(e)))?;
        Ok(Self { mono })
    }
}

/// Writes mono 16-bit PCM.
pub fn write_wav(path: &Path, clip: &PcmClip) -> Result<(), AudioError> {
    let wav_err = |source| AudioError::Wav {
        path: path.to_path_buf(),
        source,
    };
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: clip.rate.hz(),
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut writer = hound::WavWriter::create(path, spec).map_err(wav_err)?;
    for &s in &clip.samples {
        writer.write_sample(f32_to_i16(s)).map_err(wav_err)?;
    }
    writer.finalize().map_err(wav_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stereo_file_is_downmixed_and_round_trips_at_16_bit_precision() {
        let dir = tempfile::tempdir().unwrap();
        let stereo = dir.path().join("stereo.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 44_100,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&stereo, spec).unwrap();
        for _ in 0..441 {
            w.write_sample(16_384i16).unwrap();
            w.write_sample(0i16).unwrap();
        }
        w.finalize().unwrap();

        let clip = read_wav(&stereo).unwrap();
        assert_eq!(clip.rate, SampleRate(44_100));
        assert_eq!(clip.samples.len(), 441);
        assert_eq!(clip.duration(), Millis(10));
        assert!((clip.samples[0] - 0.25).abs() < 1e-4);

        let mono = dir.path().join("mono.wav");
        write_wav(&mono, &clip).unwrap();
        let back = read_wav(&mono).unwrap();
        assert!(back.samples.iter().all(|s| (s - 0.25).abs() < 1e-4));
    }

    #[test]
    fn a_wav_in_memory_reads_as_from_a_file_and_resamples() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tone.wav");
        let clip = PcmClip {
            rate: SampleRate(16_000),
            samples: (0..1600).map(|i| 0.5 * (i as f32 * 0.1).sin()).collect(),
        };
        write_wav(&path, &clip).unwrap();
        let from_memory = read_wav_bytes(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(from_memory, read_wav(&path).unwrap());
        let at_48k = from_memory.resampled(SampleRate::OPUS).unwrap();
        assert_eq!(at_48k.samples.len(), 4800);
        assert_eq!(at_48k.duration(), Millis(100));
        assert!(read_wav_bytes(b"RIFF").is_err());
        let silent_rate = PcmClip {
            rate: SampleRate(0),
            samples: vec![0.0; 10],
        };
        assert!(silent_rate.resampled(SampleRate::OPUS).is_err());
    }

    #[test]
    fn a_streamed_file_reads_as_the_whole_file_does() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stereo.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 16_000,
            bits_per_sample: 24,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for i in 0..1000 {
            w.write_sample(i * 4000).unwrap();
            w.write_sample(-i * 1000).unwrap();
        }
        w.finalize().unwrap();

        let whole = read_wav(&path).unwrap();
        let mut stream = WavStream::open(&path).unwrap();
        assert_eq!(stream.rate(), whole.rate);
        let mut streamed = Vec::new();
        let mut block = [0.0; 160];
        loop {
            let n = stream.read(&mut block);
            streamed.extend_from_slice(&block[..n]);
            if n < block.len() {
                break;
            }
        }
        assert_eq!(streamed, whole.samples);
        assert_eq!(stream.read(&mut block), 0, "stays at the end");

        // A file cut short fails at open, as reading it whole does.
        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.path().join("cut.wav");
        std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
        assert!(read_wav(&cut).is_err());
        assert!(WavStream::open(&cut).is_err());
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = read_wav(Path::new("/nonexistent/x.wav")).unwrap_err();
        let text = crate::audio::error_chain(&err);
        assert!(text.contains("/nonexistent/x.wav"), "{text}");
        assert!(text.contains("No such file"), "{text}");
    }
}
