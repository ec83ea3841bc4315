//! How the loopback agent speaks: 20 ms Opus packets of 16-bit audio,
//! encoded as a stock Pipecat bot encodes its TTS ([`StockBotEncoder`]).
//! Shared by its media path, its ear and (in the test kit) its hostile
//! mode.

use std::time::Duration;

use bytes::Bytes;

use crate::audio::{AudioError, OPUS_FRAME, StockBotEncoder};

/// One packet's worth of audio: 20 ms at 48 kHz.
pub const FRAME_SAMPLES: usize = OPUS_FRAME;
/// The length of one packet.
pub const FRAME_DURATION: Duration = Duration::from_millis(20);

/// A 16-bit sample on the audio module's scale (the WAV reader's).
pub(super) fn to_f32(sample: i16) -> f32 {
    f32::from(sample) / 32768.0
}

/// Opus encoder for 20 ms frames of 16-bit samples.
pub struct Encoder {
    inner: StockBotEncoder,
    frame: [f32; FRAME_SAMPLES],
}

impl Encoder {
    /// An encoder that sounds on the wire like a stock Pipecat bot.
    pub fn new() -> Result<Self, AudioError> {
        Ok(Self {
            inner: StockBotEncoder::new()?,
            frame: [0.0; FRAME_SAMPLES],
        })
    }

    /// Encodes one frame; a short last frame is padded with silence.
    pub fn encode(&mut self, pcm: &[i16]) -> Result<Bytes, AudioError> {
        let pcm = &pcm[..pcm.len().min(FRAME_SAMPLES)];
        for (dst, &src) in self.frame.iter_mut().zip(pcm) {
            *dst = to_f32(src);
        }
        self.frame[pcm.len()..].fill(0.0);
        let packet = self.inner.encode(&self.frame)?;
        Ok(Bytes::copy_from_slice(packet.bytes()))
    }
}
