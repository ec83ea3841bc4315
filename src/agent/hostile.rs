//! A test tool (`LoopbackAgentConfig::hostile`), not agent behaviour: what
//! a broken or hostile agent might send, slipped into the first reply of
//! each call.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::Shared;
use super::voice::{Encoder, FRAME_SAMPLES, to_f32};
use crate::audio::{AudioError, StockBotEncoder};

/// What the first reply of a hostile agent sends from 1 s into its audio,
/// each in place of the audio it stands for (RTP timestamps advance as
/// for real audio): a second of random bytes, five packets cut short, one
/// legal 60 ms and one legal 40 ms packet (Opus allows them; agents rarely
/// send them), at the agent's usual bitrate; then the rest of the reply as
/// usual.
pub(super) struct HostileAudio {
    shared: Arc<Shared>,
    steps: VecDeque<HostileStep>,
    /// Encodes the long packets (the agent's usual encoder only does 20 ms).
    long: StockBotEncoder,
}

#[derive(Clone, Copy)]
enum HostileStep {
    Garbage,
    Truncated,
    /// A legal packet of this many samples.
    Long(usize),
}

/// Where in the reply (samples) the hostile packets start.
const HOSTILE_FROM: usize = 48_000;

impl HostileAudio {
    pub(super) fn new(shared: &Arc<Shared>) -> Self {
        let mut steps = VecDeque::new();
        steps.extend([HostileStep::Garbage; 50]);
        steps.extend([HostileStep::Truncated; 5]);
        steps.extend([
            HostileStep::Long(3 * FRAME_SAMPLES),
            HostileStep::Long(2 * FRAME_SAMPLES),
        ]);
        let long = StockBotEncoder::new().expect("an Opus encoder for 48 kHz stereo");
        Self {
            shared: Arc::clone(shared),
            steps,
            long,
        }
    }

    /// The packet to send at `pos` instead of the next 20 ms, and the
    /// samples of the reply it stands for; `None` to send the usual.
    pub(super) fn next(
        &mut self,
        pos: usize,
        rest: &[i16],
        encoder: &mut Encoder,
    ) -> Option<Result<(Bytes, usize), AudioError>> {
        if pos < HOSTILE_FROM {
            return None;
        }
        let step = self.steps.pop_front()?;
        if self.steps.is_empty() {
            self.shared.record().hostile_sent.push(Instant::now());
        }
        let packet = match step {
            HostileStep::Garbage => {
                let len = 1 + rand::random::<u8>() as usize;
                Ok((
                    (0..len).map(|_| rand::random::<u8>()).collect(),
                    FRAME_SAMPLES,
                ))
            }
            HostileStep::Truncated => encoder
                .encode(rest)
                .map(|full| (full.slice(..(full.len() / 3).max(1)), FRAME_SAMPLES)),
            HostileStep::Long(n) => {
                let mut pcm: Vec<f32> = rest.iter().take(n).map(|&s| to_f32(s)).collect();
                pcm.resize(n, 0.0);
                self.long
                    .encode(&pcm)
                    .map(|packet| (Bytes::copy_from_slice(packet.bytes()), n))
            }
        };
        Some(packet)
    }
}
