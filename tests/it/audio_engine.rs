//! The running engine with `wav:` devices, in real time: a visitor's
//! utterance is held until the link is ready and then streamed, and the
//! bot's packets are played into the speaker file.

use std::path::Path;
use std::time::{Duration, Instant};

use kiosk_gateway::audio::{
    AudioEngine, AudioEvent, AudioSettings, Dbfs, DeviceSpec, IncomingPacket, Millis, OPUS_FRAME,
    OpusEncoder, PcmClip, SampleRate, Scheduling, VadSettings, read_wav, resample_clip, write_wav,
};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/audio");

#[test]
fn wav_devices_run_a_short_conversation_in_real_time() {
    let dir = tempfile::tempdir().unwrap();
    // The first 4.2 s of the multi-utterance fixture: "Hello there, ..." at 1.0-3.73 s.
    let visitor = read_wav(Path::new(&format!("{FIXTURES}/multi_utterance_16k.wav"))).unwrap();
    let mic = dir.path().join("mic.wav");
    write_wav(
        &mic,
        &PcmClip {
            rate: visitor.rate,
            samples: visitor.samples[..16 * 4200].to_vec(),
        },
    )
    .unwrap();
    let speaker = dir.path().join("speaker.wav");
    let settings = AudioSettings {
        input: DeviceSpec::parse(&format!("wav:{}", mic.display())),
        output: DeviceSpec::parse(&format!("wav:{}", speaker.display())),
        ..AudioSettings::default()
    };
    let mut engine = AudioEngine::start(&settings, &VadSettings::default()).unwrap();
    let engine_start = Instant::now();
    // Files have no device deadline: the DSP thread keeps normal priority.
    assert_eq!(engine.metrics().dsp_scheduling.get(), Scheduling::Normal);

    let started = loop {
        match engine
            .events()
            .recv_timeout(Duration::from_secs(3))
            .unwrap()
        {
            AudioEvent::SpeechStarted { onset, preroll } => break (onset, preroll),
            _ => continue,
        }
    };
    assert!(started.0.0.abs_diff(1000) <= 60, "onset {:?}", started.0);
    assert_eq!(started.1, Millis(300));
    // Nothing leaves before the link is ready...
    std::thread::sleep(Duration::from_millis(300));
    assert!(engine.frames().try_recv().is_err());
    engine.link_ready();
    // ...then the held speech comes first, marked as a new talkspurt.
    let first = engine
        .frames()
        .recv_timeout(Duration::from_secs(1))
        .unwrap();
    assert!(first.after_silence);

    // The bot answers (in real time) while the visitor's utterance ends.
    let bot = read_wav(Path::new(&format!("{FIXTURES}/bot_reference_16k.wav"))).unwrap();
    let bot48 = resample_clip(&bot.samples, bot.rate, SampleRate::OPUS).unwrap();
    let mut enc = OpusEncoder::new(&settings).unwrap();
    let sender = engine.playout();
    let begin = Instant::now();
    for (k, chunk) in bot48[48_000..48_000 + 50 * OPUS_FRAME]
        .chunks_exact(OPUS_FRAME)
        .enumerate()
    {
        let due = begin + Duration::from_millis(20 * k as u64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        assert!(sender.push(IncomingPacket {
            seq: k as u16,
            timestamp: (k * OPUS_FRAME) as u32,
            payload: enc.encode(chunk).unwrap(),
        }));
    }
    // Past the end of the utterance (3.73 s) and its 500 ms hangover.
    let done = engine_start + Duration::from_millis(4600);
    std::thread::sleep(done.saturating_duration_since(Instant::now()));
    engine.stop().unwrap();

    let events: Vec<AudioEvent> = engine.events().try_iter().collect();
    let ended = events.iter().find_map(|e| match e {
        AudioEvent::SpeechEnded(u) => Some(*u),
        _ => None,
    });
    let ended = ended.expect("utterance did not end");
    assert!(ended.end.0.abs_diff(3730) <= 560, "{ended:?}");
    let streamed = 1 + engine.frames().try_iter().count();
    // 40 ms packets.
    assert!(streamed > 50, "only {streamed} packets streamed");

    // The speaker file holds the bot's second of speech.
    let played = read_wav(&speaker).unwrap();
    assert_eq!(played.rate, SampleRate::OPUS);
    let loud = played
        .samples
        .chunks(480)
        .filter(|f| Dbfs::rms(f).0 > -40.0)
        .count();
    assert!((60..=110).contains(&loud), "{loud} loud 10 ms frames");
}
