//! Opus at 48 kHz mono (libopus through the `opus` crate): 40 or 20 ms
//! frames from the microphone; from the agent, whatever a packet holds (2.5 to
//! 120 ms). Also the stream a stock Pipecat bot sends, for `bench` and the
//! loopback agent.

use opus::{Application, Bandwidth, Bitrate, Channels, Decoder, Encoder};

use super::AudioError;
use super::settings::{AudioSettings, OPUS_FRAME_LENGTHS};
use super::units::{Millis, SampleRate};

/// Largest packet kept. The microphone's 20 ms packets stay well under 200
/// bytes, but agents do not all encode like the kiosk: Pipecat's aiortc
/// sends 96 kbit/s stereo (20 ms packets of 500 bytes and more), and a
/// legal 60 or 120 ms packet at an ordinary bitrate is larger still. This
/// holds any payload the link lets through (its receive MTU is 1460 bytes,
/// headers included); anything larger is counted and dropped
/// (`PlayoutSender::push_payload`).
pub const MAX_PACKET: usize = 1500;

/// Samples in the longest Opus packet: 120 ms at 48 kHz.
pub const MAX_DECODED: usize = 5760;
/// Opus durations are multiples of 2.5 ms; concealment comes in these steps.
pub const OPUS_QUANTUM: usize = 120;

/// The duration of `packet` in samples at 48 kHz, read from its TOC byte
/// (and frame count): `None` unless it is a legal Opus duration, 2.5 to
/// 120 ms. Says nothing of whether the frames themselves decode.
pub fn packet_samples(packet: &[u8]) -> Option<usize> {
    if packet.is_empty() {
        return None;
    }
    let n = opus::packet::get_nb_samples(packet, SampleRate::OPUS.hz()).ok()?;
    (OPUS_QUANTUM..=MAX_DECODED).contains(&n).then_some(n)
}

/// Whether `packet` carries in-band FEC (LBRR) data for the packet before
/// it: the LBRR flag of its first SILK frame (RFC 6716 section 4.2.3).
/// CELT-only packets never do; a packet with several frames of its own
/// (code 3) is not read and taken to carry none. Allocation-free.
pub fn has_fec(packet: &[u8]) -> bool {
    let Some(&toc) = packet.first() else {
        return false;
    };
    // Configurations 16 to 31 are CELT-only.
    if toc & 0x80 != 0 {
        return false;
    }
    let first_frame = match toc & 0x03 {
        0 | 1 => packet.get(1),
        // Code 2: one or two length bytes, then the first frame.
        2 => match packet.get(1) {
            Some(&len) if len < 252 => packet.get(2),
            Some(_) => packet.get(3),
            None => None,
        },
        _ => None,
    };
    let Some(&byte) = first_frame else {
        return false;
    };
    // SILK frames per Opus frame: one for 10 and 20 ms, two for 40, three
    // for 60. Only SILK-only configurations (0 to 11) last 40 or 60 ms.
    let config = toc >> 3;
    let silk_frames = match (config < 12).then_some(config & 0x03) {
        Some(2) => 2,
        Some(3) => 3,
        _ => 1,
    };
    let stereo = toc & 0x04 != 0;
    let mid = (byte >> (7 - silk_frames)) & 1 != 0;
    let side = stereo && (byte >> (6 - 2 * silk_frames)) & 1 != 0;
    mid || side
}

/// One encoded packet, held inline so passing it around never allocates.
#[derive(Clone, Copy)]
pub struct OpusPacket {
    data: [u8; MAX_PACKET],
    len: u16,
}

impl OpusPacket {
    /// A copy of `bytes`; `None` when longer than [`MAX_PACKET`].
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let len = u16::try_from(bytes.len())
            .ok()
            .filter(|&l| usize::from(l) <= MAX_PACKET)?;
        let mut data = [0; MAX_PACKET];
        data[..bytes.len()].copy_from_slice(bytes);
        Some(Self { data, len })
    }

    /// The packet an encoder writes into a fresh buffer.
    fn written(encode: impl FnOnce(&mut [u8]) -> opus::Result<usize>) -> Result<Self, AudioError> {
        let mut data = [0; MAX_PACKET];
        let len = encode(&mut data)?;
        // The buffer bounds `len`, so it fits in u16.
        Ok(Self {
            data,
            len: len as u16,
        })
    }

    /// The packet's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.data[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for OpusPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OpusPacket({} bytes)", self.len)
    }
}

/// What the agent's decoder takes, as its SDP answer says: the encoder
/// follows it for the rest of the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentDecoder {
    /// It decodes Opus in-band FEC (`useinbandfec=1`).
    pub inband_fec: bool,
    /// The longest packet it wants (`a=maxptime`, or a shorter `a=ptime`),
    /// if it says.
    pub max_packet: Option<Millis>,
}

impl AgentDecoder {
    /// The packet length to send it: `configured`, unless the agent asks
    /// for shorter packets; then the longest the kiosk sends that it
    /// takes, or the shortest the kiosk sends (20 ms). Any Opus decoder
    /// decodes any length (RFC 7587), so asking is a preference.
    pub fn packet_length(&self, configured: Millis) -> Millis {
        let limit = self.max_packet.map_or(configured, |m| m.min(configured));
        OPUS_FRAME_LENGTHS
            .into_iter()
            .rfind(|&l| l <= limit)
            .unwrap_or(OPUS_FRAME_LENGTHS[0])
    }
}

/// VoIP-tuned encoder with in-band FEC (unless the agent cannot use it),
/// and DTX when configured.
pub struct OpusEncoder {
    encoder: Encoder,
    rate: SampleRate,
    /// Samples in one frame at the input rate.
    frame_len: usize,
    inband_fec: bool,
}

impl OpusEncoder {
    /// An encoder fed 48 kHz audio.
    pub fn new(settings: &AudioSettings) -> Result<Self, AudioError> {
        Self::with_input_rate(settings, SampleRate::OPUS)
    }

    /// An encoder fed audio at `rate` (8, 12, 16, 24 or 48 kHz). The
    /// microphone path feeds it the VAD's 16 kHz stream: the coded band
    /// stops at 8 kHz anyway (see below), and giving Opus 16 kHz spares a
    /// resampler on each side of it.
    pub fn with_input_rate(settings: &AudioSettings, rate: SampleRate) -> Result<Self, AudioError> {
        Self::with_frame(settings, rate, Millis(20))
    }

    /// An encoder fed audio at `rate`, coding `frame` (20 or 40 ms) per
    /// packet: what goes to the agent, at `opus_frame_ms`.
    pub fn with_frame(
        settings: &AudioSettings,
        rate: SampleRate,
        frame: Millis,
    ) -> Result<Self, AudioError> {
        let mut encoder = Encoder::new(rate.hz(), Channels::Mono, Application::Voip)?;
        encoder.set_bitrate(Bitrate::Bits(settings.opus_bitrate_bps))?;
        encoder.set_complexity(settings.opus_complexity)?;
        encoder.set_inband_fec(true)?;
        encoder.set_packet_loss_perc(settings.opus_expected_loss_percent)?;
        encoder.set_dtx(settings.dtx)?;
        // Speech recognition on the far side works on 16 kHz audio; capping
        // the coded band at wideband keeps Opus in its SILK mode, which
        // costs far less CPU than the hybrid modes at no loss to the agent.
        encoder.set_max_bandwidth(Bandwidth::Wideband)?;
        Ok(Self {
            encoder,
            rate,
            frame_len: rate.samples_in(frame),
            inband_fec: true,
        })
    }

    /// Tells the encoder how much of what it sends will be lost (0 to 100):
    /// the share of bits in-band FEC gets follows it.
    pub fn set_expected_loss(&mut self, percent: u8) -> Result<(), AudioError> {
        self.encoder
            .set_packet_loss_perc(i32::from(percent.min(100)))?;
        Ok(())
    }

    /// In-band FEC on or off; true if that changed it. Off for an agent
    /// whose decoder cannot use it (its SDP answer lacks `useinbandfec=1`):
    /// the encoder then spends neither bits nor the CPU of a second,
    /// low-rate encoding on it.
    pub fn set_inband_fec(&mut self, on: bool) -> Result<bool, AudioError> {
        if on == self.inband_fec {
            return Ok(false);
        }
        self.encoder.set_inband_fec(on)?;
        self.inband_fec = on;
        Ok(true)
    }

    /// Codes `frame` per packet from the next [`encode`](Self::encode) on.
    pub fn set_frame(&mut self, frame: Millis) {
        self.frame_len = self.rate.samples_in(frame);
    }

    /// Samples [`encode`](Self::encode) takes: one frame at the input rate.
    pub fn frame_len(&self) -> usize {
        self.frame_len
    }

    /// Encodes exactly one frame ([`frame_len`](Self::frame_len) samples).
    pub fn encode(&mut self, frame: &[f32]) -> Result<OpusPacket, AudioError> {
        debug_assert_eq!(frame.len(), self.frame_len, "one frame");
        OpusPacket::written(|data| self.encoder.encode_float(frame, data))
    }
}

/// Encodes as a stock Pipecat bot speaks over SmallWebRTC: aiortc's Opus
/// encoder (libopus through PyAV) sends 48 kHz stereo at 96 kbit/s,
/// unconstrained VBR, VoIP, at libav's default complexity (10), with no
/// in-band FEC; the TTS voice is mono, so both channels carry it. Its
/// full-band packets cost the kiosk more to decode than its own wideband
/// ones, so `bench` measures the playout path on these, and the loopback
/// agent speaks this way.
pub struct StockBotEncoder {
    encoder: Encoder,
    /// The frame in both channels, interleaved; kept to spare an allocation per packet.
    stereo: Vec<f32>,
}

impl StockBotEncoder {
    /// An encoder set up as aiortc sets up its own.
    pub fn new() -> Result<Self, AudioError> {
        let mut encoder = Encoder::new(SampleRate::OPUS.hz(), Channels::Stereo, Application::Voip)?;
        encoder.set_bitrate(Bitrate::Bits(96_000))?;
        encoder.set_vbr_constraint(false)?;
        encoder.set_complexity(10)?;
        Ok(Self {
            encoder,
            stereo: Vec::with_capacity(2 * MAX_DECODED),
        })
    }

    /// Encodes a frame of 48 kHz mono audio, sent in both channels, into
    /// one packet: 20 ms as Pipecat sends, or any other duration Opus
    /// allows (2.5 to 120 ms).
    pub fn encode(&mut self, frame: &[f32]) -> Result<OpusPacket, AudioError> {
        self.stereo.clear();
        self.stereo.extend(frame.iter().flat_map(|&s| [s, s]));
        OpusPacket::written(|data| self.encoder.encode_float(&self.stereo, data))
    }
}

/// The loss the encoder should expect, from what the far end reports:
/// never below the configured `opus_expected_loss_percent`, raised to the
/// reported loss (smoothed over a few reports, so one bad second does not
/// swing it) when that is higher, and at most [`MAX_EXPECTED_LOSS`].
/// Callers poll the link faster than the far end reports; each report
/// counts once.
#[derive(Clone, Copy, Debug)]
pub struct ExpectedLoss {
    floor: u8,
    smoothed: f64,
    current: u8,
    /// The far end's report count at the report last taken in.
    last_report: Option<u64>,
}

/// Beyond this, more FEC only takes bits from the speech itself.
pub const MAX_EXPECTED_LOSS: u8 = 30;

impl ExpectedLoss {
    /// Starting from `settings`' expected loss.
    pub fn new(settings: &AudioSettings) -> Self {
        let floor = settings.opus_expected_loss_percent.clamp(0, 100) as u8;
        Self {
            floor,
            smoothed: 0.0,
            current: floor,
            last_report: None,
        }
    }

    /// What the encoder is told now.
    pub fn percent(&self) -> u8 {
        self.current
    }

    /// Forgets the reports (a new call); returns the configured percentage
    /// when that is a change.
    pub fn reset(&mut self) -> Option<u8> {
        self.smoothed = 0.0;
        self.last_report = None;
        (self.current != self.floor).then(|| {
            self.current = self.floor;
            self.floor
        })
    }

    /// Takes in the far end's report number `report` (its running count)
    /// of `fraction` lost (0 to 1), unless that report was already taken
    /// in; returns the new percentage when it changed.
    pub fn report(&mut self, report: u64, fraction: f64) -> Option<u8> {
        if self.last_report.replace(report) == Some(report) {
            return None;
        }
        self.smoothed += (fraction.clamp(0.0, 1.0) * 100.0 - self.smoothed) / 4.0;
        let wanted = (self.smoothed.ceil() as u8)
            .min(MAX_EXPECTED_LOSS)
            .max(self.floor);
        (wanted != self.current).then(|| {
            self.current = wanted;
            wanted
        })
    }
}

/// Decoder with packet-loss concealment and FEC recovery.
pub struct OpusDecoder {
    decoder: Decoder,
}

impl OpusDecoder {
    /// A 48 kHz mono decoder.
    pub fn new() -> Result<Self, AudioError> {
        Ok(Self {
            decoder: Decoder::new(SampleRate::OPUS.hz(), Channels::Mono)?,
        })
    }

    /// Decodes one packet into the start of `out`; returns the samples
    /// decoded. `out` must hold the packet's duration: [`MAX_DECODED`]
    /// holds any packet. An empty packet is an error here (libopus would
    /// take it for a lost one).
    pub fn decode(&mut self, packet: &[u8], out: &mut [f32]) -> Result<usize, AudioError> {
        if packet.is_empty() {
            return Err(AudioError::InvalidPacket("empty"));
        }
        Ok(self.decoder.decode_float(packet, out, false)?)
    }

    /// Fills `out` (a multiple of 2.5 ms, at most 120 ms) in place of lost
    /// audio: from `next`'s in-band FEC data when the following packet has
    /// arrived, otherwise by concealment.
    pub fn conceal(&mut self, next: Option<&[u8]>, out: &mut [f32]) -> Result<usize, AudioError> {
        let n = match next {
            Some(packet) if !packet.is_empty() => self.decoder.decode_float(packet, out, true)?,
            _ => self.decoder.decode_float(&[], out, false)?,
        };
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::super::units::OPUS_FRAME;
    use super::*;

    fn tone(len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let t = i as f32 / 48_000.0;
                0.3 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()
                    + 0.1 * (2.0 * std::f32::consts::PI * 1320.0 * t).sin()
            })
            .collect()
    }

    fn frame(samples: &[f32]) -> [f32; OPUS_FRAME] {
        samples.try_into().unwrap()
    }

    /// Best normalised correlation over small lags (Opus adds a few ms of delay).
    fn correlation(a: &[f32], b: &[f32], max_lag: usize) -> f32 {
        (0..max_lag)
            .map(|lag| {
                let n = a.len().min(b.len() - lag);
                let (x, y) = (&a[..n], &b[lag..lag + n]);
                let xy: f32 = x.iter().zip(y).map(|(p, q)| p * q).sum();
                let xx: f32 = x.iter().map(|p| p * p).sum();
                let yy: f32 = y.iter().map(|q| q * q).sum();
                xy / (xx * yy).sqrt().max(1e-9)
            })
            .fold(f32::MIN, f32::max)
    }

    #[test]
    fn expected_loss_follows_reports_above_the_configured_floor() {
        let mut loss = ExpectedLoss::new(&AudioSettings {
            opus_expected_loss_percent: 5,
            ..AudioSettings::default()
        });
        assert_eq!(loss.percent(), 5);
        assert_eq!(loss.report(1, 0.0), None);
        let mut last = None;
        for n in 2..22 {
            last = loss.report(n, 0.15).or(last);
        }
        assert_eq!(last, Some(15));
        // The same report polled again counts once.
        assert_eq!(loss.report(21, 0.9), None);
        assert_eq!(
            loss.report(22, 0.9).map(|p| p <= MAX_EXPECTED_LOSS),
            Some(true)
        );
        for n in 23..63 {
            loss.report(n, 0.0);
        }
        assert_eq!(loss.percent(), 5);
        // A new call starts from the floor, forgetting the last one's reports.
        assert_eq!(loss.reset(), None);
        loss.report(1, 0.3);
        assert_eq!(loss.reset(), Some(5));
        assert_eq!(loss.report(1, 0.0), None);
    }

    #[test]
    fn fec_is_seen_in_packets_that_carry_it() {
        let settings = AudioSettings {
            opus_expected_loss_percent: 20,
            ..AudioSettings::default()
        };
        let mut enc = OpusEncoder::new(&settings).unwrap();
        let input = tone(OPUS_FRAME * 50);
        let with: Vec<bool> = input
            .chunks(OPUS_FRAME)
            .map(|f| has_fec(enc.encode(f).unwrap().bytes()))
            .collect();
        // The first packet has nothing before it to protect; libopus then
        // spends LBRR where it judges it worth the bits.
        assert!(!with[0] && with[1..10].iter().all(|&f| f), "{with:?}");
        // Off (an agent that cannot use it): none; on again mid-stream (the
        // next call's agent can), back from the next packet. A fresh
        // encoder: libopus's VAD takes a steady tone for noise after a
        // while, and codes no FEC for noise.
        let mut enc = OpusEncoder::new(&settings).unwrap();
        assert!(enc.set_inband_fec(false).unwrap(), "a change");
        assert!(!enc.set_inband_fec(false).unwrap(), "said again: none");
        let mut frames = input.chunks(OPUS_FRAME);
        assert!(
            frames
                .by_ref()
                .take(10)
                .all(|f| !has_fec(enc.encode(f).unwrap().bytes()))
        );
        enc.set_inband_fec(true).unwrap();
        let again: Vec<bool> = frames
            .take(10)
            .map(|f| has_fec(enc.encode(f).unwrap().bytes()))
            .collect();
        assert!(again[1..].iter().all(|&f| f), "{again:?}");
        assert!(!has_fec(&[]));
    }

    #[test]
    fn round_trip_keeps_the_signal() {
        let mut enc = OpusEncoder::new(&AudioSettings::default()).unwrap();
        let mut dec = OpusDecoder::new().unwrap();
        let input = tone(OPUS_FRAME * 50);
        let mut output = Vec::new();
        let mut pcm = [0.0; OPUS_FRAME];
        for chunk in input.chunks_exact(OPUS_FRAME) {
            let packet = enc.encode(&frame(chunk)).unwrap();
            assert!(packet.bytes().len() < 200, "{packet:?}");
            assert_eq!(dec.decode(packet.bytes(), &mut pcm).unwrap(), OPUS_FRAME);
            output.extend_from_slice(&pcm);
        }
        // Skip the first frames while the codec settles.
        let c = correlation(&input[4800..], &output[4800..], 480);
        assert!(c > 0.9, "correlation {c}");
    }

    #[test]
    fn a_16_khz_fed_encoder_decodes_to_the_same_signal_at_48_khz() {
        let tone_at = |rate: f32, len: usize| -> Vec<f32> {
            (0..len)
                .map(|i| {
                    let t = i as f32 / rate;
                    0.3 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()
                        + 0.1 * (2.0 * std::f32::consts::PI * 1320.0 * t).sin()
                })
                .collect()
        };
        let mut enc =
            OpusEncoder::with_input_rate(&AudioSettings::default(), SampleRate::VAD).unwrap();
        assert_eq!(enc.frame_len(), 320);
        let mut dec = OpusDecoder::new().unwrap();
        let mut output = Vec::new();
        let mut pcm = [0.0; OPUS_FRAME];
        for chunk in tone_at(16_000.0, 320 * 50).chunks_exact(320) {
            let packet = enc.encode(chunk).unwrap();
            assert_eq!(dec.decode(packet.bytes(), &mut pcm).unwrap(), OPUS_FRAME);
            output.extend_from_slice(&pcm);
        }
        let expected = tone_at(48_000.0, OPUS_FRAME * 50);
        let c = correlation(&expected[4800..], &output[4800..], 480);
        assert!(c > 0.9, "correlation {c}");
    }

    #[test]
    fn concealment_fills_a_dropped_packet_with_sound() {
        let mut enc = OpusEncoder::new(&AudioSettings::default()).unwrap();
        let mut dec = OpusDecoder::new().unwrap();
        let input = tone(OPUS_FRAME * 30);
        let packets: Vec<OpusPacket> = input
            .chunks_exact(OPUS_FRAME)
            .map(|c| enc.encode(&frame(c)).unwrap())
            .collect();
        let mut pcm = [0.0; OPUS_FRAME];
        for p in &packets[..20] {
            dec.decode(p.bytes(), &mut pcm).unwrap();
        }
        // Packet 20 is lost; without FEC data the decoder must conceal.
        assert_eq!(dec.conceal(None, &mut pcm).unwrap(), OPUS_FRAME);
        let level = super::super::units::Dbfs::rms(&pcm).0;
        assert!(
            level > -25.0,
            "concealed frame is near silent: {level} dBFS"
        );
        // Decoded audio lags the input by the encoder's lookahead (< 480 samples).
        let lost = &input[20 * OPUS_FRAME - 480..21 * OPUS_FRAME];
        let c = correlation(lost, &pcm, 480);
        assert!(c > 0.5, "concealed frame does not continue the tone: {c}");
        // Packet 21 arrives; FEC in it can also rebuild a lost predecessor.
        assert_eq!(
            dec.conceal(Some(packets[21].bytes()), &mut pcm).unwrap(),
            OPUS_FRAME
        );
    }

    /// A tone encoded in packets of `ms`.
    fn packets_of(ms: f32, count: usize) -> (Vec<f32>, Vec<Vec<u8>>) {
        let len = (48.0 * ms) as usize;
        let mut enc =
            opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        let input = tone(len * count);
        let packets = input
            .chunks_exact(len)
            .map(|c| enc.encode_vec_float(c, 4000).unwrap())
            .collect();
        (input, packets)
    }

    #[test]
    fn every_legal_duration_is_read_from_the_toc_and_decoded_whole() {
        let mut dec = OpusDecoder::new().unwrap();
        let mut pcm = [0.0; MAX_DECODED];
        for ms in [2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 120.0] {
            let (_, packets) = packets_of(ms, 3);
            for p in &packets {
                let samples = (48.0 * ms) as usize;
                assert_eq!(packet_samples(p), Some(samples), "{ms} ms");
                assert_eq!(dec.decode(p, &mut pcm).unwrap(), samples, "{ms} ms");
            }
        }
        // Three 60 ms frames (TOC config 3, code 3) would be 180 ms: not Opus.
        assert_eq!(packet_samples(&[3 << 3 | 3, 3, 0, 0, 0]), None);
        assert_eq!(packet_samples(&[]), None);
        assert!(dec.decode(&[], &mut pcm).is_err());
    }

    #[test]
    fn a_60_ms_packet_decodes_to_the_same_audio_as_its_encoder_input() {
        let (input, packets) = packets_of(60.0, 20);
        let mut dec = OpusDecoder::new().unwrap();
        let mut pcm = [0.0; MAX_DECODED];
        let mut output = Vec::new();
        for p in &packets {
            let n = dec.decode(p, &mut pcm).unwrap();
            output.extend_from_slice(&pcm[..n]);
        }
        assert_eq!(output.len(), input.len());
        let c = correlation(&input[4800..], &output[4800..], 480);
        assert!(c > 0.9, "correlation {c}");
    }

    #[test]
    fn a_stock_bots_stereo_full_band_stream_decodes_to_its_mono_voice() {
        let input = tone(50 * OPUS_FRAME);
        let mut enc = StockBotEncoder::new().unwrap();
        let mut dec = OpusDecoder::new().unwrap();
        let mut pcm = [0.0; MAX_DECODED];
        let mut output = Vec::new();
        for c in input.chunks_exact(OPUS_FRAME) {
            let packet = enc.encode(c).unwrap();
            // TOC config 31 (CELT, full band, 20 ms) with the stereo flag.
            assert_eq!(packet.bytes()[0] & 0xfc, 31 << 3 | 0x04);
            let n = dec.decode(packet.bytes(), &mut pcm).unwrap();
            output.extend_from_slice(&pcm[..n]);
        }
        assert_eq!(output.len(), input.len());
        let c = correlation(&input[4800..], &output[4800..], 480);
        assert!(c > 0.9, "correlation {c}");
    }

    #[test]
    fn concealment_fills_any_multiple_of_2_5_ms() {
        let mut dec = OpusDecoder::new().unwrap();
        let mut pcm = [0.0; MAX_DECODED];
        for n in [OPUS_QUANTUM, OPUS_FRAME, 2880, MAX_DECODED] {
            assert_eq!(dec.conceal(None, &mut pcm[..n]).unwrap(), n);
        }
    }
}
