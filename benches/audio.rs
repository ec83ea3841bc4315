//! Criterion benchmarks of the per-frame DSP stages (`cargo bench --bench audio`).
//! `kiosk-gateway bench` gives the whole-path figures on a kiosk.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use kiosk_gateway::audio::{
    Aec3, AudioMetrics, AudioSettings, CaptureProcessor, EchoCanceller, FRAME_48K, IncomingPacket,
    Millis, NoiseSuppression, OPUS_FRAME, OpusDecoder, OpusEncoder, Playout, SampleRate,
    StockBotEncoder, VAD_FRAME, VadSettings, VoiceDetector, f32_to_i16, fill_block, push_block,
    read_wav, resample_clip,
};
use kiosk_gateway::testkit::network::{NetworkModel, NetworkProfile};

fn speech() -> (Vec<f32>, Vec<f32>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/audio/multi_utterance_16k.wav");
    let clip = read_wav(&path).unwrap();
    let s48 = resample_clip(&clip.samples, clip.rate, SampleRate::OPUS).unwrap();
    (clip.samples, s48)
}

fn stages(c: &mut Criterion) {
    let (s16, s48) = speech();
    let frames16: Vec<[f32; VAD_FRAME]> = s16
        .chunks_exact(VAD_FRAME)
        .map(|f| f.try_into().unwrap())
        .collect();
    let frames20: Vec<[f32; OPUS_FRAME]> = s48
        .chunks_exact(OPUS_FRAME)
        .map(|f| f.try_into().unwrap())
        .collect();

    let mut vad = VoiceDetector::new(VadSettings::default().aggressiveness);
    let mut i = 0;
    c.bench_function("vad_10ms", |b| {
        b.iter(|| {
            i = (i + 1) % frames16.len();
            black_box(vad.is_voiced(&frames16[i]))
        })
    });

    let mut enc = OpusEncoder::new(&AudioSettings::default()).unwrap();
    let packets: Vec<_> = frames20.iter().map(|f| enc.encode(f).unwrap()).collect();
    let mut j = 0;
    c.bench_function("opus_encode_20ms", |b| {
        b.iter(|| {
            j = (j + 1) % frames20.len();
            black_box(enc.encode(&frames20[j]).unwrap())
        })
    });

    let mut dec = OpusDecoder::new().unwrap();
    let mut pcm = [0.0; OPUS_FRAME];
    let mut k = 0;
    c.bench_function("opus_decode_20ms", |b| {
        b.iter(|| {
            k = (k + 1) % packets.len();
            black_box(dec.decode(packets[k].bytes(), &mut pcm).unwrap())
        })
    });

    // What a stock Pipecat bot sends: full band, stereo.
    let mut bot = StockBotEncoder::new().unwrap();
    let bot_packets: Vec<_> = frames20.iter().map(|f| bot.encode(f).unwrap()).collect();
    let mut bot_dec = OpusDecoder::new().unwrap();
    let mut k = 0;
    c.bench_function("opus_decode_20ms_stock_bot", |b| {
        b.iter(|| {
            k = (k + 1) % bot_packets.len();
            black_box(bot_dec.decode(bot_packets[k].bytes(), &mut pcm).unwrap())
        })
    });

    // The canceller with the speaker playing speech and the microphone
    // hearing it 30 ms later, 10 dB down.
    let frames48: Vec<[f32; FRAME_48K]> = s48
        .chunks_exact(FRAME_48K)
        .map(|f| f.try_into().unwrap())
        .collect();
    let mut aec = Aec3::new(NoiseSuppression::Off, false, Millis(30)).expect("canceller");
    let mut clean = [0.0; VAD_FRAME];
    let mut n = 0;
    c.bench_function("echo_cancel_10ms", |b| {
        b.iter(|| {
            n = (n + 1) % frames48.len();
            let mut mic = frames16[(n + frames16.len() - 3) % frames16.len()];
            mic.iter_mut().for_each(|s| *s *= 0.3);
            aec.render(&frames48[n]);
            aec.process(&mic, &mut clean);
            black_box(&clean);
        })
    });

    let mut capture = CaptureProcessor::new(
        &AudioSettings::default(),
        &VadSettings::default(),
        SampleRate::OPUS,
        FRAME_48K,
        true,
        Arc::new(AudioMetrics::default()),
    )
    .unwrap();
    struct Discard;
    impl kiosk_gateway::audio::AudioSink for Discard {
        fn event(&mut self, e: kiosk_gateway::audio::AudioEvent) {
            black_box(e);
        }
        fn frame(&mut self, f: kiosk_gateway::audio::EncodedFrame) {
            black_box(f);
        }
    }
    capture.link_ready(&mut Discard);
    let mut m = 0;
    c.bench_function("capture_path_10ms_48k", |b| {
        b.iter(|| {
            m = (m + FRAME_48K) % (s48.len() - FRAME_48K);
            let played: &[f32; FRAME_48K] = s48[m..m + FRAME_48K].try_into().unwrap();
            capture.observe_playout(played);
            capture
                .push_samples(&s48[m..m + FRAME_48K], &mut Discard)
                .unwrap()
        })
    });
}

/// The playout path (jitter buffer, Opus decode, concealment) over 10 s
/// of the bot's audio, on a perfect network and on the lobby Wi-Fi of the
/// lossy-network tests (5% loss, 40 ± 20 ms): what loss and jitter cost.
fn playout_through_loss(c: &mut Criterion) {
    let (_, s48) = speech();
    let mut enc = OpusEncoder::new(&AudioSettings::default()).unwrap();
    let packets: Vec<IncomingPacket> = s48
        .chunks_exact(OPUS_FRAME)
        .cycle()
        .take(500)
        .enumerate()
        .map(|(k, f)| IncomingPacket {
            seq: k as u16,
            timestamp: (k * OPUS_FRAME) as u32,
            payload: enc.encode(f).unwrap(),
        })
        .collect();
    let lobby = NetworkProfile {
        loss: 0.05,
        delay: Duration::from_millis(40),
        jitter: Duration::from_millis(20),
        seed: 5,
        ..NetworkProfile::default()
    };
    for (name, profile) in [
        ("playout_10s_clean", NetworkProfile::default()),
        ("playout_10s_5pct_loss_40ms_jitter", lobby),
    ] {
        // Which 10 ms tick each packet arrives in, in order of arrival.
        let start = Instant::now();
        let mut network = NetworkModel::new(profile);
        let mut arrivals: Vec<(u32, IncomingPacket)> = Vec::new();
        for (k, p) in packets.iter().enumerate() {
            let sent = start + Duration::from_millis(20 * k as u64);
            let fate = network.offer(sent, p.payload.bytes().len());
            for at in [fate.first, fate.copy].into_iter().flatten() {
                arrivals.push(((at - start).as_millis() as u32 / 10, *p));
            }
        }
        arrivals.sort_by_key(|a| a.0);
        c.bench_function(name, |b| {
            b.iter(|| {
                let metrics = Arc::new(AudioMetrics::default());
                let mut playout = Playout::new(&AudioSettings::default(), metrics).unwrap();
                let mut frame = [0.0; FRAME_48K];
                let mut next = 0;
                for tick in 0..1_100u32 {
                    while next < arrivals.len() && arrivals[next].0 <= tick {
                        playout.push(arrivals[next].1, Millis(tick * 10));
                        next += 1;
                    }
                    black_box(playout.next_frame(&mut frame));
                }
            })
        });
    }
}

/// The device callbacks' work for one 10 ms block of a 48 kHz mono 16-bit
/// device (as the test rig's, and many USB ones), through the ring to the
/// DSP thread's side, whose one bulk copy is timed too.
fn device_blocks(c: &mut Criterion) {
    let (_, s48) = speech();
    let block: Vec<i16> = s48[..FRAME_48K].iter().map(|&s| f32_to_i16(s)).collect();
    let (mut producer, mut consumer) = rtrb::RingBuffer::new(4 * FRAME_48K);
    let mut drained = [0.0; FRAME_48K];
    c.bench_function("microphone_block_10ms", |b| {
        b.iter(|| {
            black_box(push_block(&mut producer, black_box(&block), 1));
            black_box(consumer.pop_partial_slice(&mut drained).0.len())
        })
    });
    let mut played = vec![0i16; FRAME_48K];
    let frame = &s48[..FRAME_48K];
    c.bench_function("speaker_block_10ms", |b| {
        b.iter(|| {
            black_box(producer.push_partial_slice(black_box(frame)).0.len());
            black_box(fill_block(&mut consumer, &mut played, 1))
        })
    });
}

criterion_group!(benches, stages, playout_through_loss, device_blocks);
criterion_main!(benches);
