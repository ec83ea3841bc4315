//! The audio of an answered SIP call: the input file encoded 20 ms at a
//! time (Opus from 16 kHz, as the capture path encodes, or PCMU from
//! 8 kHz), and what the peer sends placed for the output file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::g711;
use super::rtp::{self, RtpSession};
use super::sdp::{Codec, RemoteMedia};
use crate::audio::{
    AudioError, AudioMetrics, AudioSettings, FRAME_48K, IncomingPacket, Millis, OpusEncoder,
    OpusPacket, PcmClip, Playout, SampleRate, f32_to_i16, resample_clip,
};

/// Receiver reports this often (RFC 3550's 5 s minimum interval).
pub const RTCP_INTERVAL: Duration = Duration::from_secs(5);
/// How far ahead of the call's clock a PCMU timestamp may place audio.
const PCMU_LEAD_MS: usize = 10_000;

/// The input as the codec wants it: 16 kHz for Opus (as the capture path
/// encodes), 8 kHz for PCMU.
struct Source {
    samples: Vec<f32>,
    position: usize,
    frame_len: usize,
}

impl Source {
    fn next_frame(&mut self, frame: &mut [f32]) {
        let start = self.position.min(self.samples.len());
        let end = (start + self.frame_len).min(self.samples.len());
        frame.fill(0.0);
        frame[..end - start].copy_from_slice(&self.samples[start..end]);
        self.position += self.frame_len;
    }
}

enum Encoder {
    Opus(OpusEncoder),
    Pcmu,
}

/// What the peer sent, placed for the output file.
pub enum Recorder {
    /// Opus through the audio engine's jitter buffer and decoder.
    Opus {
        playout: Box<Playout>,
        samples: Vec<f32>,
    },
    /// PCMU placed by RTP timestamp: reordering and loss need no buffer.
    Pcmu {
        first_ts: Option<u32>,
        samples: Vec<f32>,
    },
}

impl Recorder {
    pub fn push(&mut self, packet: &rtp::Received, arrival: Millis) {
        match self {
            Self::Opus { playout, .. } => {
                if let Some(payload) = OpusPacket::from_slice(&packet.payload) {
                    playout.push(
                        IncomingPacket {
                            seq: packet.seq,
                            timestamp: packet.timestamp,
                            payload,
                        },
                        arrival,
                    );
                }
            }
            Self::Pcmu { first_ts, samples } => {
                let first = *first_ts.get_or_insert(packet.timestamp);
                let offset = packet.timestamp.wrapping_sub(first) as usize;
                // A timestamp far ahead of the call's clock (or before the
                // first packet, which wraps) is not placed: a peer cannot
                // make the recording grow faster than time passes.
                let ahead = (arrival.0 as usize + PCMU_LEAD_MS) * 8;
                if offset > ahead {
                    return;
                }
                let end = offset + packet.payload.len();
                if samples.len() < end {
                    samples.resize(end, 0.0);
                }
                for (slot, &byte) in samples[offset..end].iter_mut().zip(packet.payload.iter()) {
                    *slot = f32::from(g711::decode(byte)) / 32768.0;
                }
            }
        }
    }

    /// Called every 20 ms: Opus audio is pulled at the playout's pace.
    pub fn tick(&mut self) {
        if let Self::Opus { playout, samples } = self {
            let mut frame = [0.0; FRAME_48K];
            for _ in 0..2 {
                playout.next_frame(&mut frame);
                samples.extend_from_slice(&frame);
            }
        }
    }

    pub fn into_clip(self) -> PcmClip {
        match self {
            Self::Opus { samples, .. } => PcmClip {
                rate: SampleRate::OPUS,
                samples,
            },
            Self::Pcmu { samples, .. } => PcmClip {
                rate: SampleRate(8000),
                samples,
            },
        }
    }
}

/// The media of an answered call.
pub struct Media {
    pub remote: RemoteMedia,
    pub session: RtpSession,
    encoder: Encoder,
    source: Source,
    pub recorder: Recorder,
    pub frames_sent: u64,
    pub next_rtcp: Instant,
    pub metrics: Arc<AudioMetrics>,
}

impl Media {
    pub fn new(
        remote: RemoteMedia,
        input: &PcmClip,
        audio_settings: &AudioSettings,
        now: Instant,
    ) -> Result<Self, AudioError> {
        let (rate, encoder) = match remote.codec {
            Codec::Opus => (
                SampleRate::VAD,
                Encoder::Opus(OpusEncoder::with_input_rate(
                    audio_settings,
                    SampleRate::VAD,
                )?),
            ),
            Codec::Pcmu => (SampleRate(8000), Encoder::Pcmu),
        };
        let samples = resample_clip(&input.samples, input.rate, rate)?;
        let metrics = Arc::new(AudioMetrics::default());
        let recorder = match remote.codec {
            Codec::Opus => Recorder::Opus {
                playout: Box::new(Playout::new(audio_settings, metrics.clone())?),
                samples: Vec::new(),
            },
            Codec::Pcmu => Recorder::Pcmu {
                first_ts: None,
                samples: Vec::new(),
            },
        };
        Ok(Self {
            session: RtpSession::new(
                rand::random(),
                rand::random(),
                rand::random(),
                remote.payload_type,
                remote.codec.clock_rate(),
                now,
            ),
            remote,
            encoder,
            source: Source {
                samples,
                position: 0,
                frame_len: rate.samples_in(Millis(20)),
            },
            recorder,
            frames_sent: 0,
            // RFC 3550 section 6.2: the first report after half the interval.
            next_rtcp: now + RTCP_INTERVAL / 2,
            metrics,
        })
    }

    /// The next 20 ms of the input as one RTP packet.
    pub fn next_packet(&mut self) -> Result<Vec<u8>, AudioError> {
        let mut frame = vec![0.0; self.source.frame_len];
        self.source.next_frame(&mut frame);
        let marker = self.frames_sent == 0;
        self.frames_sent += 1;
        let samples = self.remote.codec.clock_rate() / 50;
        Ok(match &mut self.encoder {
            Encoder::Opus(encoder) => {
                let packet = encoder.encode(&frame)?;
                self.session.packetize(packet.bytes(), samples, marker)
            }
            Encoder::Pcmu => {
                let payload: Vec<u8> = frame.iter().map(|&s| g711::encode(f32_to_i16(s))).collect();
                self.session.packetize(&payload, samples, marker)
            }
        })
    }

    /// How long the input takes to send.
    pub fn input_duration(&self) -> Duration {
        let rate = self.source.frame_len as u64 * 50;
        Duration::from_millis(self.source.samples.len() as u64 * 1000 / rate.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcmu_is_placed_by_timestamp_whatever_the_arrival_order() {
        let mut recorder = Recorder::Pcmu {
            first_ts: None,
            samples: Vec::new(),
        };
        let packet = |ts: u32, byte: u8| rtp::Received {
            seq: 0,
            timestamp: ts,
            marker: false,
            payload: bytes::Bytes::from(vec![byte; 160]),
        };
        recorder.push(&packet(1000, 0x80), Millis(0));
        recorder.push(&packet(1320, 0x00), Millis(40));
        recorder.push(&packet(1160, 0xFF), Millis(41));
        // An hour ahead, or before the first packet: not placed.
        recorder.push(&packet(1000 + 8000 * 3600, 0x00), Millis(60));
        recorder.push(&packet(840, 0x00), Millis(61));
        let clip = recorder.into_clip();
        assert_eq!(clip.samples.len(), 480);
        assert!(clip.samples[..160].iter().all(|&s| s > 0.9));
        assert!(clip.samples[160..320].iter().all(|&s| s == 0.0));
        assert!(clip.samples[320..].iter().all(|&s| s < -0.9));
    }
}
