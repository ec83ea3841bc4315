//! The agent's audio: 16-bit 48 kHz mono, the fixtures' format and what
//! tests compare, coded with the audio module's Opus. It decodes the
//! kiosk's track for its ear and its record, and plays replies in real time.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};

use super::Shared;
use super::ear::{Ear, Utterance};
use super::voice::{Encoder, FRAME_DURATION, FRAME_SAMPLES};
use crate::audio::{self, AudioError, MAX_DECODED, OpusDecoder, SampleRate, f32_to_i16};
use crate::link::peer::Peer;
use crate::link::{OpusFrame, RtpClock};

/// Reads any PCM WAV as 48 kHz mono 16-bit samples.
pub fn read_wav(path: &Path) -> Result<Vec<i16>, AudioError> {
    let clip = audio::read_wav(path)?.resampled(SampleRate::OPUS)?;
    Ok(clip.samples.into_iter().map(f32_to_i16).collect())
}

/// Opus decoder to 48 kHz mono 16-bit samples.
#[cfg(feature = "testkit")]
pub struct Decoder {
    inner: OpusDecoder,
    pcm: Vec<f32>,
    out: Vec<i16>,
}

#[cfg(feature = "testkit")]
impl Decoder {
    /// A 48 kHz mono decoder.
    pub fn new() -> Result<Self, AudioError> {
        Ok(Self {
            inner: OpusDecoder::new()?,
            pcm: vec![0.0; MAX_DECODED],
            out: Vec::with_capacity(MAX_DECODED),
        })
    }

    /// The 16-bit samples of one packet.
    pub fn decode(&mut self, packet: &[u8]) -> Result<&[i16], AudioError> {
        let n = self.inner.decode(packet, &mut self.pcm)?;
        self.out.clear();
        self.out
            .extend(self.pcm[..n].iter().map(|&s| f32_to_i16(s)));
        Ok(&self.out)
    }
}

/// Longest gap filled in the recording: plenty to line utterances up, and
/// a jumping timestamp cannot fill the memory.
const MAX_GAP_FRAMES: u32 = 500;

/// Decodes the kiosk's audio, records it and feeds the ear with exactly
/// the frames that arrived. Like a real bot (Pipecat hears silence only
/// through frames), a turn ends on received silence, never on missing
/// packets: a kiosk that stops streaming between utterances leaves this
/// agent stuck in "user speaking", as it would a Pipecat bot. The recording
/// is kept on the sender's timeline (gaps from lost packets or DTX are
/// filled with silence there) so tests can line it up with what was said.
pub(super) async fn decode_track(
    track: Arc<dyn TrackRemote>,
    shared: Arc<Shared>,
    out: mpsc::Sender<Utterance>,
) {
    let mut decoder = match OpusDecoder::new() {
        Ok(d) => d,
        Err(e) => {
            warn!(error = %audio::error_chain(&e), "loopback agent cannot decode");
            return;
        }
    };
    let mut ear = Ear::new(Arc::clone(&shared), out);
    let mut pcm = vec![0.0; MAX_DECODED];
    // RTP timestamp the next packet has if nothing is missing.
    let mut next_ts: Option<u32> = None;
    while let Some(event) = track.poll().await {
        let TrackRemoteEvent::OnRtpPacket(packet) = event else {
            continue;
        };
        let pcm = match decoder.decode(&packet.payload, &mut pcm) {
            Ok(n) => &pcm[..n],
            Err(e) => {
                debug!(error = %audio::error_chain(&e), "undecodable packet");
                continue;
            }
        };
        let ts = packet.header.timestamp;
        let gap_frames = next_ts.map_or(0, |next| {
            // Negative: a late packet, which adds no silence.
            let gap = (ts.wrapping_sub(next) as i32).max(0) as u32;
            (gap / FRAME_SAMPLES as u32).min(MAX_GAP_FRAMES)
        });
        next_ts = Some(ts.wrapping_add(pcm.len() as u32));
        {
            let mut record = shared.record();
            let at = record.received.len();
            record
                .received
                .resize(at + gap_frames as usize * FRAME_SAMPLES, 0);
            record.received.extend(pcm.iter().map(|&s| f32_to_i16(s)));
            record.packets_received += 1;
            let at = shared.started.elapsed().as_millis() as u64;
            record.packet_arrivals_ms.push(at);
        }
        for frame in pcm.chunks(FRAME_SAMPLES) {
            ear.hear(frame).await;
        }
    }
}

/// A reply for the call's audio track to say; `done` hears when it has
/// been sent whole.
pub(super) struct Reply {
    #[cfg(feature = "testkit")]
    pub hostile: Option<super::hostile::HostileAudio>,
    pub done: oneshot::Sender<Result<(), AudioError>>,
}

/// Has the call's audio track say the reply, and waits until it is sent.
pub(super) async fn play(
    stream: &mpsc::Sender<Reply>,
    #[cfg(feature = "testkit")] hostile: Option<super::hostile::HostileAudio>,
) -> Result<(), AudioError> {
    let (done, sent) = oneshot::channel();
    let reply = Reply {
        #[cfg(feature = "testkit")]
        hostile,
        done,
    };
    if stream.send(reply).await.is_err() {
        // The call is over.
        return Ok(());
    }
    sent.await.unwrap_or(Ok(()))
}

/// A reply being sent: how far, and whether its first packet went.
struct Saying {
    reply: Reply,
    pos: usize,
    first: bool,
}

/// The call's audio track, in real time: a packet every 20 ms, the replies
/// asked for through `replies` and silence between them, as Pipecat's
/// transport sends (its output track gives a frame every 20 ms whether the
/// bot talks or not). Ends when the call drops `replies` or the track
/// fails.
pub(super) async fn stream(
    peer: Arc<Peer>,
    shared: Arc<Shared>,
    mut replies: mpsc::Receiver<Reply>,
) {
    let mut encoder = match Encoder::new() {
        Ok(encoder) => encoder,
        Err(e) => {
            warn!(error = %audio::error_chain(&e), "loopback agent has no encoder");
            return;
        }
    };
    let payload_type = peer.payload_type().await;
    // One RTP stream per call: replies continue its sequence and clock.
    let mut clock = RtpClock::new(Instant::now());
    let mut ticker = tokio::time::interval(FRAME_DURATION);
    let silence = [0i16; FRAME_SAMPLES];
    let mut saying: Option<Saying> = None;
    loop {
        ticker.tick().await;
        if saying.is_none() {
            match replies.try_recv() {
                Ok(reply) => {
                    saying = Some(Saying {
                        reply,
                        pos: 0,
                        first: true,
                    });
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {}
            }
        }
        let next = match &mut saying {
            Some(s) => next_reply_packet(s, &shared.config.reply, &mut encoder),
            None => encoder
                .encode(&silence)
                .map(|data| (data, FRAME_SAMPLES, false)),
        };
        let (data, samples, after_silence) = match next {
            Ok(packet) => packet,
            Err(e) => {
                if let Some(s) = saying.take() {
                    let _ = s.reply.done.send(Err(e));
                    continue;
                }
                warn!(error = %audio::error_chain(&e), "loopback agent could not encode silence");
                break;
            }
        };
        let frame = OpusFrame {
            data,
            duration: FRAME_DURATION * (samples / FRAME_SAMPLES) as u32,
            after_silence,
        };
        let (seq, ts, marker) = clock.stamp(&frame, Instant::now());
        let packet = rtc::rtp::Packet {
            header: rtc::rtp::Header {
                version: 2,
                marker,
                payload_type,
                sequence_number: seq,
                timestamp: ts,
                ssrc: peer.ssrc,
                ..Default::default()
            },
            payload: frame.data,
        };
        if peer.audio.write_rtp(packet).await.is_err() {
            break;
        }
        if let Some(said) = saying.take_if(|s| s.pos >= shared.config.reply.len()) {
            let _ = said.reply.done.send(Ok(()));
        }
        // A packet of 40 or 60 ms holds the next ticks' audio too.
        for _ in 1..samples / FRAME_SAMPLES {
            ticker.tick().await;
        }
    }
}

/// The reply's next packet: its data, the samples it holds and whether it
/// starts the reply.
fn next_reply_packet(
    saying: &mut Saying,
    pcm: &[i16],
    encoder: &mut Encoder,
) -> Result<(bytes::Bytes, usize, bool), AudioError> {
    let rest = &pcm[saying.pos.min(pcm.len())..];
    #[cfg(feature = "testkit")]
    let substitute = saying
        .reply
        .hostile
        .as_mut()
        .and_then(|h| h.next(saying.pos, rest, encoder));
    #[cfg(not(feature = "testkit"))]
    let substitute: Option<Result<(bytes::Bytes, usize), AudioError>> = None;
    let (data, samples) = match substitute {
        Some(packet) => packet?,
        None => (encoder.encode(rest)?, FRAME_SAMPLES),
    };
    saying.pos += samples;
    Ok((data, samples, std::mem::take(&mut saying.first)))
}

#[cfg(all(test, feature = "testkit"))]
mod tests {
    use super::*;
    use crate::agent::voice::to_f32;
    use crate::audio::Dbfs;

    #[test]
    fn opus_round_trip_keeps_the_signal() {
        let mut enc = Encoder::new().unwrap();
        let mut dec = Decoder::new().unwrap();
        let pcm: Vec<i16> = (0..20 * FRAME_SAMPLES)
            .map(|i| (8000.0 * (i as f64 * 0.05).sin()) as i16)
            .collect();
        let mut out = Vec::new();
        for f in pcm.chunks(FRAME_SAMPLES) {
            let packet = enc.encode(f).unwrap();
            out.extend_from_slice(dec.decode(&packet).unwrap());
        }
        assert_eq!(out.len(), pcm.len());
        let level = |x: &[i16]| Dbfs::rms(&x.iter().map(|&s| to_f32(s)).collect::<Vec<_>>()).0;
        let (level_in, level_out) = (
            level(&pcm[FRAME_SAMPLES * 5..]),
            level(&out[FRAME_SAMPLES * 5..]),
        );
        assert!(
            (level_out - level_in).abs() < 2.0,
            "{level_in} dBFS in, {level_out} out"
        );
    }
}
