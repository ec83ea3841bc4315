//! What the kiosk says itself (the failure prompt): a clip encoded once, at
//! start-up, with the `[audio]` Opus settings, and played through the same
//! playout path as the agent's voice.

use std::sync::Arc;
use std::time::Duration;

use super::AudioError;
use super::codec::{OpusEncoder, OpusPacket};
use super::playout::IncomingPacket;
use super::settings::AudioSettings;
use super::units::{OPUS_FRAME, SampleRate};
use super::wav::PcmClip;

/// A clip as 20 ms Opus packets; cloning it shares them.
#[derive(Clone)]
pub struct Prompt {
    /// Each packet's bytes only: held for the process's life, and an
    /// [`OpusPacket`] has room for the largest packet (1.5 kB for 60 bytes
    /// of speech, 0.35 MiB for the built-in prompt).
    packets: Arc<[Box<[u8]>]>,
}

impl Prompt {
    /// How much audio each packet holds: push one per this interval.
    pub const PACKET_DURATION: Duration = Duration::from_millis(20);

    /// Encodes `clip` (any rate; converted to 48 kHz), its last frame
    /// padded with silence.
    pub fn encode(clip: &PcmClip, settings: &AudioSettings) -> Result<Self, AudioError> {
        let pcm = clip.resampled(SampleRate::OPUS)?;
        let mut encoder = OpusEncoder::new(settings)?;
        let mut frame = [0.0; OPUS_FRAME];
        let packets = pcm
            .samples
            .chunks(OPUS_FRAME)
            .map(|chunk| {
                frame[..chunk.len()].copy_from_slice(chunk);
                frame[chunk.len()..].fill(0.0);
                encoder
                    .encode(&frame)
                    .map(|packet| Box::<[u8]>::from(packet.bytes()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            packets: packets.into(),
        })
    }

    /// The packets in order, numbered and timestamped as an agent's stream.
    pub fn packets(&self) -> impl Iterator<Item = IncomingPacket> + '_ {
        self.packets.iter().enumerate().filter_map(|(i, bytes)| {
            // Never filters: every packet came from an `OpusPacket`.
            let payload = OpusPacket::from_slice(bytes)?;
            Some(IncomingPacket {
                seq: i as u16,
                timestamp: (i * OPUS_FRAME) as u32,
                payload,
            })
        })
    }
}

impl std::fmt::Debug for Prompt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Prompt({} packets)", self.packets.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::OpusDecoder;
    use crate::audio::units::Dbfs;

    #[test]
    fn a_16_khz_clip_becomes_20_ms_packets_that_decode_to_its_sound() {
        let clip = PcmClip {
            rate: SampleRate::VAD,
            // 105 ms of tone: five whole packets and a padded sixth.
            samples: (0..1680).map(|i| 0.3 * (i as f32 * 0.2).sin()).collect(),
        };
        let prompt = Prompt::encode(&clip, &AudioSettings::default()).unwrap();
        let packets: Vec<_> = prompt.packets().collect();
        assert_eq!(packets.len(), 6);
        assert_eq!((packets[5].seq, packets[5].timestamp), (5, 5 * 960));
        let mut decoder = OpusDecoder::new().unwrap();
        let mut pcm = [0.0; OPUS_FRAME];
        for p in &packets {
            let n = decoder.decode(p.payload.bytes(), &mut pcm).unwrap();
            assert_eq!(n, OPUS_FRAME);
        }
        // The tone's frames decode loud (Opus's delay shifts, not drops, it).
        decoder
            .decode(packets[3].payload.bytes(), &mut pcm)
            .unwrap();
        assert!(Dbfs::rms(&pcm).0 > -20.0);
    }
}
