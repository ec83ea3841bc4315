//! Streaming sample-rate conversion (rubato's synchronous FFT resampler).
//!
//! Device callbacks deliver arbitrary block sizes at the device's rate; the
//! DSP stages want exact 10 ms frames at 16 kHz (VAD) and 48 kHz (Opus,
//! playout). [`StreamResampler`] accepts any block and hands out whole frames.

use std::collections::VecDeque;

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler};

use super::AudioError;
use super::units::{FRAME_MS, SampleRate};

/// Converts a mono stream from one fixed rate to another.
///
/// The resampler's own delay is trimmed from the start of the output, so
/// output sample `n` lines up with input time `n / out_rate`; that keeps VAD
/// timestamps and the Opus stream on the same timeline as the microphone.
/// When both rates are equal, samples pass straight through.
pub struct StreamResampler {
    fft: Option<Fft<f32>>,
    chunk_in: usize,
    staged: Vec<f32>,
    scratch_out: Vec<f32>,
    ready: VecDeque<f32>,
    delay_left: usize,
}

impl StreamResampler {
    /// `max_block` is the largest block [`push`](Self::push) will be given
    /// between two [`pop_frame`](Self::pop_frame) drains; buffers are sized
    /// from it up front so steady-state processing does not allocate.
    pub fn new(from: SampleRate, to: SampleRate, max_block: usize) -> Result<Self, AudioError> {
        let frame_in = from.samples_in(FRAME_MS).max(1);
        let out_frame = to.samples_in(FRAME_MS).max(1);
        let fft = if from == to {
            None
        } else {
            Some(
                Fft::<f32>::new(
                    from.hz() as usize,
                    to.hz() as usize,
                    frame_in,
                    1,
                    FixedSync::Input,
                )
                .map_err(|e| AudioError::Resampler(e.to_string()))?,
            )
        };
        // rubato may round the chunk up to a whole block of the rate pair.
        let (chunk_in, delay_left, out_max) = fft.as_ref().map_or((frame_in, 0, frame_in), |f| {
            (
                f.input_frames_next(),
                f.output_delay(),
                f.output_frames_max(),
            )
        });
        let ratio = f64::from(to.hz()) / f64::from(from.hz());
        let ready_cap = ((max_block + chunk_in) as f64 * ratio) as usize + out_max + 2 * out_frame;
        Ok(Self {
            fft,
            chunk_in,
            staged: Vec::with_capacity(chunk_in),
            scratch_out: vec![0.0; out_max],
            ready: VecDeque::with_capacity(ready_cap),
            delay_left,
        })
    }

    /// Feeds input samples; converted samples become available to `pop_frame`.
    pub fn push(&mut self, mut input: &[f32]) -> Result<(), AudioError> {
        let Some(fft) = self.fft.as_mut() else {
            self.ready.extend(input);
            return Ok(());
        };
        while !input.is_empty() {
            let take = (self.chunk_in - self.staged.len()).min(input.len());
            self.staged.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.staged.len() < self.chunk_in {
                break;
            }
            let adapter_in = InterleavedSlice::new(&self.staged, 1, self.chunk_in)
                .map_err(|e| AudioError::Resampler(e.to_string()))?;
            let frames_out = self.scratch_out.len();
            let mut adapter_out = InterleavedSlice::new_mut(&mut self.scratch_out, 1, frames_out)
                .map_err(|e| AudioError::Resampler(e.to_string()))?;
            let (_, written) = fft
                .process_into_buffer(&adapter_in, &mut adapter_out, None)
                .map_err(|e| AudioError::Resampler(e.to_string()))?;
            let skip = self.delay_left.min(written);
            self.delay_left -= skip;
            self.ready.extend(&self.scratch_out[skip..written]);
            self.staged.clear();
        }
        Ok(())
    }

    /// Fills `frame` completely if enough converted samples are available.
    pub fn pop_frame(&mut self, frame: &mut [f32]) -> bool {
        if self.ready.len() < frame.len() {
            return false;
        }
        let len = frame.len();
        for (dst, src) in frame.iter_mut().zip(self.ready.drain(..len)) {
            *dst = src;
        }
        true
    }

    /// Converted samples waiting to be popped.
    pub fn available(&self) -> usize {
        self.ready.len()
    }
}

/// Converts a whole clip (for tools and tests), flushing the resampler's tail.
pub fn resample_clip(
    samples: &[f32],
    from: SampleRate,
    to: SampleRate,
) -> Result<Vec<f32>, AudioError> {
    let block = from.samples_in(FRAME_MS).max(1);
    let mut rs = StreamResampler::new(from, to, block)?;
    let expected = (samples.len() as u64 * u64::from(to.hz()) / u64::from(from.hz())) as usize;
    let mut out = Vec::with_capacity(expected);
    let flush = vec![0.0; block];
    let mut chunks = samples.chunks(block);
    while out.len() < expected {
        rs.push(chunks.next().unwrap_or(&flush))?;
        out.extend(rs.ready.drain(..));
    }
    out.truncate(expected);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: u32, hz: f32, len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| 0.5 * (i as f32 * 2.0 * std::f32::consts::PI * hz / rate as f32).sin())
            .collect()
    }

    #[test]
    fn tone_keeps_its_pitch_and_timing_across_rates() {
        for (from, to) in [(48_000, 16_000), (44_100, 48_000), (16_000, 48_000)] {
            let input = sine(from, 440.0, from as usize / 2);
            let out = resample_clip(&input, SampleRate(from), SampleRate(to)).unwrap();
            assert_eq!(out.len(), to as usize / 2);
            let reference = sine(to, 440.0, out.len());
            // Skip the edges, where the filter sees the clip's boundaries.
            let mid = &out[out.len() / 10..out.len() * 9 / 10];
            let refm = &reference[out.len() / 10..out.len() * 9 / 10];
            let err: f32 = mid.iter().zip(refm).map(|(a, b)| (a - b).powi(2)).sum();
            let sig: f32 = refm.iter().map(|b| b * b).sum();
            let snr_db = 10.0 * (sig / err).log10();
            assert!(
                snr_db > 30.0,
                "{from}->{to}: SNR {snr_db:.1} dB (delay not trimmed?)"
            );
        }
    }

    #[test]
    fn odd_blocks_come_out_as_whole_frames() {
        let mut rs = StreamResampler::new(SampleRate(44_100), SampleRate(16_000), 1024).unwrap();
        let input = sine(44_100, 300.0, 44_100);
        let mut frames = 0;
        let mut frame = [0.0f32; 160];
        for block in input.chunks(333) {
            rs.push(block).unwrap();
            while rs.pop_frame(&mut frame) {
                frames += 1;
            }
        }
        // One second in gives 100 frames out, less what is still in flight.
        assert!((97..=100).contains(&frames), "{frames} frames");
    }

    #[test]
    fn equal_rates_pass_through_unchanged() {
        let mut rs = StreamResampler::new(SampleRate(48_000), SampleRate(48_000), 480).unwrap();
        let input = sine(48_000, 1000.0, 480);
        rs.push(&input).unwrap();
        let mut frame = [0.0f32; 480];
        assert!(rs.pop_frame(&mut frame));
        assert_eq!(&frame[..], &input[..]);
    }
}
