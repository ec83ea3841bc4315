//! WAV files standing in for the microphone and the speaker (`wav:` in the
//! settings), paced by the wall clock as a device would be.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::time::Instant;

use super::Pacer;
use crate::audio::AudioError;
use crate::audio::resample::StreamResampler;
use crate::audio::units::{FRAME_48K, FRAME_MS, SampleRate, f32_to_i16};
use crate::audio::wav::WavStream;

/// A recording played as the microphone; the room is quiet after its end.
pub struct WavInput {
    source: WavStream,
    pub rate: SampleRate,
    pub pacer: Pacer,
}

impl WavInput {
    /// Opens `path`, paced on the 10 ms grid from `epoch`.
    pub fn open(path: &Path, epoch: Instant) -> Result<Self, AudioError> {
        let source = WavStream::open(path)?;
        Ok(Self {
            rate: source.rate(),
            source,
            // After the open, which reads the file through once: the file
            // starts now, with no backlog to catch up on.
            pacer: Pacer::on_grid(epoch),
        })
    }

    /// Fills the start of `block` with what is due by now (at most its
    /// length) and returns how many samples that is.
    pub fn read_due(&mut self, block: &mut [f32]) -> usize {
        let due = self.pacer.due() as usize * self.rate.samples_in(FRAME_MS);
        let n = due.min(block.len());
        let available = self.source.read(&mut block[..n]);
        block[available..n].fill(0.0);
        n
    }
}

/// A file recording what the speaker plays, at 48 kHz 16-bit mono.
pub struct WavOutput {
    writer: hound::WavWriter<BufWriter<File>>,
    pub pacer: Pacer,
    resampler: StreamResampler,
    frame: Vec<f32>,
}

impl WavOutput {
    /// Creates `path`, paced on the 10 ms grid from `epoch`.
    pub fn create(path: &Path, epoch: Instant) -> Result<Self, AudioError> {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: SampleRate::OPUS.hz(),
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let writer = hound::WavWriter::create(path, spec).map_err(|source| AudioError::Wav {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            writer,
            pacer: Pacer::on_grid(epoch),
            resampler: StreamResampler::new(SampleRate::OPUS, SampleRate::OPUS, FRAME_48K)?,
            frame: vec![0.0; FRAME_48K],
        })
    }

    /// Appends one 10 ms frame at 48 kHz.
    pub fn write(&mut self, frame: &[f32]) -> Result<(), AudioError> {
        self.resampler.push(frame)?;
        while self.resampler.pop_frame(&mut self.frame) {
            for &s in &self.frame {
                self.writer
                    .write_sample(f32_to_i16(s))
                    .map_err(|source| AudioError::Wav {
                        path: "speaker output".into(),
                        source,
                    })?;
            }
        }
        Ok(())
    }

    /// Completes the file's header.
    pub fn finalize(self) -> Result<(), AudioError> {
        self.writer.finalize().map_err(|source| AudioError::Wav {
            path: "speaker output".into(),
            source,
        })
    }
}
