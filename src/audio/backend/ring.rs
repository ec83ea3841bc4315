//! Device blocks into and out of the sample rings: the whole work of the
//! cpal callbacks, which run on the device's real-time thread. No
//! allocation, lock or log in here.

use ::cpal::SizedSample;

use crate::audio::units::f32_to_i16;

/// Sample formats the devices are opened with.
pub trait DeviceSample: SizedSample + Send + 'static {
    /// The sample in [-1, 1].
    fn to_f32(self) -> f32;
    /// A sample in [-1, 1] in this format, saturated.
    fn from_f32(sample: f32) -> Self;
}

impl DeviceSample for i16 {
    fn to_f32(self) -> f32 {
        f32::from(self) / 32768.0
    }
    fn from_f32(sample: f32) -> Self {
        f32_to_i16(sample)
    }
}

impl DeviceSample for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(sample: f32) -> Self {
        sample
    }
}

/// Mixes a microphone block of `channels` interleaved channels down to
/// mono into `ring`. A full ring keeps what it holds and drops the newest;
/// returns the samples dropped.
///
/// One chunk per block: pushing sample by sample would store the ring's
/// index, a barrier on ARM, for each sample.
pub fn push_block<T: DeviceSample>(
    ring: &mut rtrb::Producer<f32>,
    block: &[T],
    channels: usize,
) -> u64 {
    let frames = block.len() / channels;
    let mono = block
        .chunks_exact(channels)
        .map(|frame| frame.iter().map(|&s| s.to_f32()).sum::<f32>() / channels as f32);
    let pushed = ring
        .write_chunk_uninit(frames.min(ring.slots()))
        .map_or(0, |chunk| chunk.fill_from_iter(mono));
    (frames - pushed) as u64
}

/// Fills a speaker block of `channels` interleaved channels from `ring`,
/// each sample on every channel; what the ring lacks is played as silence.
/// Returns the samples missing. One chunk per block, as in [`push_block`].
pub fn fill_block<T: DeviceSample>(
    ring: &mut rtrb::Consumer<f32>,
    block: &mut [T],
    channels: usize,
) -> u64 {
    let mut frames = block.chunks_exact_mut(channels);
    if let Ok(chunk) = ring.read_chunk(frames.len().min(ring.slots())) {
        let (first, second) = chunk.as_slices();
        // Samples first: `zip` takes from its left side before its right,
        // and a frame taken past the last sample would be left unfilled.
        for (&sample, frame) in first.iter().chain(second).zip(frames.by_ref()) {
            frame.fill(T::from_f32(sample));
        }
        chunk.commit_all();
    }
    let missing = frames.len() as u64;
    for frame in frames {
        frame.fill(T::from_f32(0.0));
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(capacity: usize) -> (rtrb::Producer<f32>, rtrb::Consumer<f32>) {
        rtrb::RingBuffer::new(capacity)
    }

    #[test]
    fn a_stereo_microphone_is_mixed_down_to_mono() {
        let (mut producer, mut consumer) = ring(8);
        let block: [i16; 6] = [16384, 0, -16384, -16384, 32767, 32767];
        assert_eq!(push_block(&mut producer, &block, 2), 0);
        let mut mono = [9.0; 3];
        assert_eq!(consumer.pop_partial_slice(&mut mono).0.len(), 3);
        assert_eq!(mono, [0.25, -0.5, 32767.0 / 32768.0]);
    }

    #[test]
    fn a_full_microphone_ring_keeps_the_oldest_and_counts_the_dropped() {
        let (mut producer, mut consumer) = ring(4);
        // Across the ring's wrap-around: a sample in and out first.
        assert_eq!(push_block(&mut producer, &[0.5f32], 1), 0);
        assert_eq!(consumer.pop(), Ok(0.5));
        let block: Vec<f32> = (1..=6).map(|i| i as f32 / 8.0).collect();
        assert_eq!(push_block(&mut producer, &block, 1), 2);
        let mut held = [0.0; 4];
        assert_eq!(consumer.pop_partial_slice(&mut held).0.len(), 4);
        assert_eq!(held, [0.125, 0.25, 0.375, 0.5]);
    }

    #[test]
    fn a_speaker_block_plays_each_sample_on_every_channel_then_silence() {
        let (mut producer, mut consumer) = ring(4);
        assert_eq!(producer.push_partial_slice(&[0.0, 0.0]).1.len(), 0);
        let mut skipped = [0.0f32; 2];
        assert_eq!(consumer.pop_partial_slice(&mut skipped).0.len(), 2);
        // Wraps around the ring's end.
        assert_eq!(producer.push_partial_slice(&[0.5, -0.5, 1.0]).1.len(), 0);
        let mut block = [7i16; 10];
        assert_eq!(fill_block(&mut consumer, &mut block, 2), 2);
        assert_eq!(
            block,
            [16384, 16384, -16384, -16384, 32767, 32767, 0, 0, 0, 0]
        );
        assert_eq!(fill_block(&mut consumer, &mut block, 2), 5);
        assert_eq!(block, [0; 10]);
    }
}
