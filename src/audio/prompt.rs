//! What the kiosk says itself (the failure prompt): a WAV clip, encoded
//! with the `[audio]` Opus settings while it plays, one 20 ms packet ahead,
//! and played through the same playout path as the agent's voice.
//!
//! Nothing of it is decoded or encoded at start-up and nothing of it is
//! held between plays: encoding the built-in clip whole took about 25 ms
//! before the daemon was ready, for a prompt that may never play, and
//! encoding it after READY put the whole decoded clip on top of a running
//! daemon's peak memory. Played, it costs one packet's encoding per 20 ms.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::AudioError;
use super::codec::OpusEncoder;
use super::playout::IncomingPacket;
use super::resample::StreamResampler;
use super::settings::AudioSettings;
use super::units::{FRAME_MS, OPUS_FRAME, SampleRate};
use super::wav::WavStream;

/// The rates a prompt may have: every rate a sound file is made at, and a
/// bound on what the resampler is asked to plan for.
const CLIP_RATES: std::ops::RangeInclusive<u32> = 8_000..=192_000;

/// A clip to be played as 20 ms Opus packets; cloning it is cheap.
#[derive(Clone)]
pub struct Prompt {
    inner: Arc<Inner>,
}

struct Inner {
    source: Source,
    settings: AudioSettings,
}

enum Source {
    /// Compiled into the binary.
    BuiltIn(&'static [u8]),
    /// A technician's file, read again at each play.
    File(PathBuf),
}

impl Prompt {
    /// How much audio each packet holds: push one per this interval.
    pub const PACKET_DURATION: Duration = Duration::from_millis(20);

    /// A clip compiled into the binary. Only its header is read here: the
    /// clip itself is checked by the tests, not at every start.
    pub fn built_in(wav: &'static [u8], settings: &AudioSettings) -> Result<Self, AudioError> {
        Self::checked(Source::BuiltIn(wav), settings)
    }

    /// A WAV file of any rate, channel count and PCM/float format. It is
    /// read through once here, so that a damaged file fails at start-up and
    /// not when a visitor is waiting; it is read again at each play.
    pub fn open(path: &Path, settings: &AudioSettings) -> Result<Self, AudioError> {
        WavStream::open(path)?;
        Self::checked(Source::File(path.to_path_buf()), settings)
    }

    fn checked(source: Source, settings: &AudioSettings) -> Result<Self, AudioError> {
        let prompt = Self {
            inner: Arc::new(Inner {
                source,
                settings: settings.clone(),
            }),
        };
        // Its header, its rate and the encoder's settings.
        prompt.packets()?;
        Ok(prompt)
    }

    /// The clip from its start, as packets numbered and timestamped as an
    /// agent's stream; its last packet is padded with silence.
    pub fn packets(&self) -> Result<PromptPackets, AudioError> {
        let reader: Box<dyn Read + Send> = match &self.inner.source {
            Source::BuiltIn(bytes) => Box::new(*bytes),
            Source::File(path) => Box::new(BufReader::new(
                File::open(path).map_err(|e| self.wav_error(hound::Error::IoError(e)))?,
            )),
        };
        let wav = WavStream::new(reader).map_err(|e| self.wav_error(e))?;
        PromptPackets::new(wav, &self.inner.settings)
    }

    fn wav_error(&self, source: hound::Error) -> AudioError {
        match &self.inner.source {
            Source::BuiltIn(_) => AudioError::WavData(source),
            Source::File(path) => AudioError::Wav {
                path: path.clone(),
                source,
            },
        }
    }
}

impl std::fmt::Debug for Prompt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner.source {
            Source::BuiltIn(bytes) => write!(f, "Prompt(built in, {} bytes)", bytes.len()),
            Source::File(path) => write!(f, "Prompt({})", path.display()),
        }
    }
}

/// A prompt being played: each packet is read, resampled to 48 kHz and
/// encoded when it is asked for. It holds a reader's buffer, a resampler
/// and an encoder, not the clip.
pub struct PromptPackets {
    wav: WavStream<Box<dyn Read + Send>>,
    resampler: StreamResampler,
    encoder: OpusEncoder,
    /// 10 ms at the clip's rate.
    block: Vec<f32>,
    frame: Vec<f32>,
    /// Clip samples read so far.
    read: u64,
    /// 48 kHz samples sent so far.
    sent: u64,
    /// The clip is read to its end.
    ended: bool,
    /// The last packet, or an error, was returned.
    done: bool,
}

impl PromptPackets {
    fn new(
        wav: WavStream<Box<dyn Read + Send>>,
        settings: &AudioSettings,
    ) -> Result<Self, AudioError> {
        let rate = wav.rate();
        if !CLIP_RATES.contains(&rate.hz()) {
            return Err(AudioError::ClipRate(rate));
        }
        let block = rate.samples_in(FRAME_MS);
        Ok(Self {
            resampler: StreamResampler::new(rate, SampleRate::OPUS, block)?,
            encoder: OpusEncoder::new(settings)?,
            wav,
            block: vec![0.0; block],
            frame: vec![0.0; OPUS_FRAME],
            read: 0,
            sent: 0,
            ended: false,
            done: false,
        })
    }

    /// The next packet; `None` once the whole clip is sent.
    fn next_packet(&mut self) -> Result<Option<IncomingPacket>, AudioError> {
        loop {
            let clip_end =
                self.read * u64::from(SampleRate::OPUS.hz()) / u64::from(self.wav.rate().hz());
            if self.ended && self.sent >= clip_end {
                return Ok(None);
            }
            if self.resampler.pop_frame(&mut self.frame) {
                break;
            }
            let n = if self.ended {
                0
            } else {
                self.wav.read(&mut self.block)
            };
            self.read += n as u64;
            self.ended |= n < self.block.len();
            // Past the end, silence: it flushes the resampler's tail and
            // pads the last packet.
            self.block[n..].fill(0.0);
            self.resampler.push(&self.block)?;
        }
        let index = self.sent / OPUS_FRAME as u64;
        self.sent += OPUS_FRAME as u64;
        Ok(Some(IncomingPacket {
            seq: index as u16,
            timestamp: (index * OPUS_FRAME as u64) as u32,
            payload: self.encoder.encode(&self.frame)?,
        }))
    }
}

impl Iterator for PromptPackets {
    type Item = Result<IncomingPacket, AudioError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let packet = self.next_packet().transpose();
        self.done = !matches!(packet, Some(Ok(_)));
        packet
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assets::FAILURE_PROMPT;
    use crate::audio::OpusDecoder;
    use crate::audio::units::Dbfs;
    use crate::audio::wav::{PcmClip, read_wav_bytes, write_wav};

    fn all(prompt: &Prompt) -> Vec<IncomingPacket> {
        prompt.packets().unwrap().map(Result::unwrap).collect()
    }

    #[test]
    fn a_16_khz_file_becomes_20_ms_packets_that_decode_to_its_sound_at_every_play() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prompt.wav");
        let clip = PcmClip {
            rate: SampleRate::VAD,
            // 105 ms of tone: five whole packets and a padded sixth.
            samples: (0..1680).map(|i| 0.3 * (i as f32 * 0.2).sin()).collect(),
        };
        write_wav(&path, &clip).unwrap();
        let prompt = Prompt::open(&path, &AudioSettings::default()).unwrap();
        let packets = all(&prompt);
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
        // Played again, the file is read again from its start.
        let again = all(&prompt);
        assert_eq!(again.len(), 6);
        assert_eq!(again[3].payload.bytes(), packets[3].payload.bytes());
    }

    #[test]
    fn the_built_in_prompt_plays_whole() {
        let prompt = Prompt::built_in(FAILURE_PROMPT, &AudioSettings::default()).unwrap();
        let clip = read_wav_bytes(FAILURE_PROMPT).unwrap();
        assert_eq!(clip.rate, SampleRate::OPUS);
        let packets = all(&prompt);
        assert_eq!(packets.len(), clip.samples.len().div_ceil(OPUS_FRAME));
        let mut decoder = OpusDecoder::new().unwrap();
        let mut pcm = [0.0; OPUS_FRAME];
        let loud = packets
            .iter()
            .filter(|p| {
                decoder.decode(p.payload.bytes(), &mut pcm).unwrap();
                Dbfs::rms(&pcm).0 > -40.0
            })
            .count();
        // Speech with its pauses: most of it is heard.
        assert!(
            loud * 2 > packets.len(),
            "{loud} of {} packets loud",
            packets.len()
        );
    }

    #[test]
    fn a_damaged_file_or_an_odd_rate_fails_at_open_naming_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prompt.wav");
        let clip = PcmClip {
            rate: SampleRate::VAD,
            samples: vec![0.1; 1600],
        };
        write_wav(&path, &clip).unwrap();
        // Cut midway through its data: the header still claims all of it.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1001]).unwrap();
        match Prompt::open(&path, &AudioSettings::default()) {
            Err(AudioError::Wav { path: p, .. }) => assert_eq!(p, path),
            other => panic!("{other:?}"),
        }

        let clip = PcmClip {
            rate: SampleRate(4_000),
            samples: vec![0.1; 400],
        };
        write_wav(&path, &clip).unwrap();
        let err = Prompt::open(&path, &AudioSettings::default()).unwrap_err();
        assert!(
            matches!(err, AudioError::ClipRate(SampleRate(4_000))),
            "{err:?}"
        );
        assert!(err.to_string().contains("4000 Hz"), "{err}");
    }
}
