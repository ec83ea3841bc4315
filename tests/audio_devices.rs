//! Real cpal devices through ALSA's `file` plugin (fixtures/alsa/test.conf.in):
//! listing, capture, playback and reopening a device that was missing.
//!
//! ALSA reads its configuration from the environment once per process, so
//! everything runs in this single test, in order.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kiosk_gateway::audio::cli::{SegmentReport, vad_file};
use kiosk_gateway::audio::device::Direction;
use kiosk_gateway::audio::{
    AudioEngine, AudioEvent, AudioMetrics, AudioSettings, DeviceSpec, IncomingPacket, Millis,
    OPUS_FRAME, OpusDecoder, OpusEncoder, SampleRate, Scheduling, VadSettings, f32_to_i16,
    read_wav, resample_clip,
};

#[path = "support/alsa_files.rs"]
mod alsa_files;
use alsa_files::{TEMPLATE, file_devices, mkfifo};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures");

fn write_raw(path: &Path, samples: &[f32]) {
    let bytes: Vec<u8> = samples
        .iter()
        .flat_map(|&s| f32_to_i16(s).to_le_bytes())
        .collect();
    std::fs::write(path, bytes).unwrap();
}

/// Collects utterances from an engine until `count` have ended or time runs out.
fn segments(engine: &AudioEngine, count: usize, timeout: Duration) -> Vec<SegmentReport> {
    let deadline = Instant::now() + timeout;
    let mut found = Vec::new();
    while found.len() < count && Instant::now() < deadline {
        if let Ok(AudioEvent::SpeechEnded(u)) =
            engine.events().recv_timeout(Duration::from_millis(100))
        {
            found.push(SegmentReport {
                start_ms: u.start.0,
                end_ms: u.end.0,
            });
        }
    }
    found
}

/// Waits for a device event.
fn wait_for_device(engine: &AudioEngine, direction: Direction, open: bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(AudioEvent::Device {
            direction: d,
            open: o,
        }) = engine.events().recv_timeout(Duration::from_millis(100))
            && d == direction
            && o == open
        {
            return true;
        }
    }
    false
}

/// Drains the speaker's FIFO at real-time pace until `stop`, so the
/// otherwise unpaced file-backed device plays at the speed of a real one.
/// Returns what was played.
/// With a sound card the DSP thread runs `SCHED_FIFO` at priority 10 if
/// this machine allows it (root, or an rtprio limit as the packaged unit
/// sets), and reports a refusal otherwise; either way the engine runs.
fn dsp_thread_at_realtime_priority_where_allowed(engine: &AudioEngine) {
    let allowed = std::thread::spawn(|| {
        let param = libc::sched_param { sched_priority: 10 };
        // SAFETY: the calling (throwaway) thread; `param` outlives the call.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) == 0 }
    })
    .join()
    .unwrap();
    let dsp = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|t| t.unwrap().path())
        .find(|t| std::fs::read_to_string(t.join("comm")).unwrap().trim() == "audio-dsp")
        .expect("the DSP thread");
    let tid: libc::pid_t = dsp.file_name().unwrap().to_str().unwrap().parse().unwrap();
    // SAFETY: queries of a thread of this process.
    let policy = unsafe { libc::sched_getscheduler(tid) } & !libc::SCHED_RESET_ON_FORK;
    let mut param = libc::sched_param { sched_priority: -1 };
    assert_eq!(unsafe { libc::sched_getparam(tid, &mut param) }, 0);
    let reported = engine.metrics().dsp_scheduling.get();
    if allowed {
        assert_eq!((policy, param.sched_priority), (libc::SCHED_FIFO, 10));
        assert_eq!(reported, Scheduling::Realtime);
        assert_eq!(reported.priority(), 10);
    } else {
        assert_eq!(policy, libc::SCHED_OTHER);
        assert_eq!(reported, Scheduling::Denied);
    }
}

fn real_time_reader(fifo: &Path, stop: &Arc<AtomicBool>) -> std::thread::JoinHandle<Vec<u8>> {
    let (fifo, stop) = (fifo.to_path_buf(), stop.clone());
    std::thread::spawn(move || {
        let mut played = Vec::new();
        let start = Instant::now();
        let mut chunk = [0u8; 960];
        // Each open by ALSA (probing, then the stream) is one writer.
        while !stop.load(Ordering::Relaxed) {
            let mut file = std::fs::File::open(&fifo).unwrap();
            // The smallest pipe (one page, 42 ms) keeps the device's
            // bursts short.
            // SAFETY: a valid open descriptor.
            unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
            loop {
                let n = file.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break;
                }
                played.extend_from_slice(&chunk[..n]);
                // 960 bytes are 10 ms of 48 kHz 16-bit mono.
                let due = start + Duration::from_micros(played.len() as u64 * 10_000 / 960);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
            }
        }
        played
    })
}

#[test]
fn file_backed_alsa_devices_capture_play_and_come_back() {
    // FIFO-backed devices block in open() while nobody reads; if a step
    // goes wrong that way, fail after a generous deadline instead of hanging.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(180));
        eprintln!("file_backed_alsa_devices_capture_play_and_come_back: stuck for 180 s");
        std::process::exit(101);
    });
    let dir = tempfile::tempdir().unwrap();
    let (alsa_path, conf) = file_devices(dir.path());
    let speech = read_wav(Path::new(&format!(
        "{FIXTURES}/audio/multi_utterance_16k.wav"
    )))
    .unwrap();
    let mic48 = resample_clip(&speech.samples, speech.rate, SampleRate::OPUS).unwrap();
    write_raw(&dir.path().join("mic.raw"), &mic48);
    // SAFETY: this test binary has a single test; nothing else runs yet.
    unsafe { std::env::set_var("ALSA_CONFIG_PATH", &alsa_path) };

    // `devices` lists both with their formats, without alsa-lib noise on stderr.
    let out = Command::new(env!("CARGO_BIN_EXE_kiosk-gateway"))
        .args(["devices", "--json"])
        .env("ALSA_CONFIG_PATH", &alsa_path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains(r#""id":"kiosk_test_mic","name":"Kiosk test microphone""#),
        "{stdout}"
    );
    assert!(stdout.contains(r#""id":"kiosk_test_speaker""#), "{stdout}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Capture from the fixture-backed microphone gives the file path's segments.
    let expected = vad_file(
        Path::new(&format!("{FIXTURES}/audio/multi_utterance_16k.wav")),
        &VadSettings::default(),
    )
    .unwrap()
    .segments;
    let capture_settings = AudioSettings {
        input: DeviceSpec::parse("test microphone"),
        output: DeviceSpec::Disabled,
        // The null slave has no clock: the device is held to real time, a
        // quarter second ahead at most, which the default ring holds.
        ..AudioSettings::default()
    };
    let mut engine = AudioEngine::start(&capture_settings, &VadSettings::default()).unwrap();
    let found = segments(&engine, expected.len(), Duration::from_secs(20));
    engine.stop().unwrap();
    assert_eq!(found.len(), expected.len(), "{found:?} vs {expected:?}");
    for (f, e) in found.iter().zip(&expected) {
        assert!(
            f.start_ms.abs_diff(e.start_ms) <= 20 && f.end_ms.abs_diff(e.end_ms) <= 20,
            "{found:?} vs {expected:?}"
        );
    }

    // Playback to the file-backed speaker writes what was decoded.
    // (The late microphone below reuses the capture file.)
    let bot = read_wav(Path::new(&format!(
        "{FIXTURES}/audio/bot_reference_16k.wav"
    )))
    .unwrap();
    let bot48 = resample_clip(&bot.samples, bot.rate, SampleRate::OPUS).unwrap();
    let mut enc = OpusEncoder::new(&AudioSettings::default()).unwrap();
    let packets: Vec<IncomingPacket> = bot48[48_000..48_000 + 100 * OPUS_FRAME]
        .chunks_exact(OPUS_FRAME)
        .enumerate()
        .map(|(k, c)| IncomingPacket {
            seq: k as u16,
            timestamp: (k * OPUS_FRAME) as u32,
            payload: enc.encode(c).unwrap(),
        })
        .collect();
    let mut reference: Vec<i16> = Vec::new();
    let mut dec = OpusDecoder::new().unwrap();
    let mut pcm = [0.0; OPUS_FRAME];
    for p in &packets {
        dec.decode(p.payload.bytes(), &mut pcm).unwrap();
        reference.extend(pcm.iter().map(|&s| f32_to_i16(s)));
    }
    // The speaker's file is a FIFO drained at real-time pace, so the
    // otherwise unpaced device plays at the speed of a real one.
    let fifo = dir.path().join("speaker.raw");
    mkfifo(&fifo);
    let stop_reader = Arc::new(AtomicBool::new(false));
    let reader = real_time_reader(&fifo, &stop_reader);
    let playback_settings = AudioSettings {
        input: DeviceSpec::Disabled,
        output: DeviceSpec::parse("kiosk_test_speaker"),
        // The pipe still drains in bursts of up to 42 ms; queue enough.
        device_buffer_ms: Millis(100),
        // This test's own sleeps are its network: on a loaded machine they
        // jitter by far more than a LAN does.
        jitter_min_ms: Millis(200),
        jitter_max_ms: Millis(200),
        ..AudioSettings::default()
    };
    let mut engine = AudioEngine::start(&playback_settings, &VadSettings::default()).unwrap();
    dsp_thread_at_realtime_priority_where_allowed(&engine);
    let sender = engine.playout();
    let begin = Instant::now();
    for (k, p) in packets.iter().enumerate() {
        let due = begin + Duration::from_millis(20 * k as u64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        assert!(sender.push(*p));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while AudioMetrics::get(&engine.metrics().packets_played) < packets.len() as u64 {
        let m = engine.metrics();
        assert!(
            Instant::now() < deadline,
            "playout stalled: {} received, {} played, {} concealed, output open {}",
            AudioMetrics::get(&m.packets_received),
            AudioMetrics::get(&m.packets_played),
            AudioMetrics::get(&m.packets_concealed),
            m.output_open.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Let the last frames through the device and the pipe.
    std::thread::sleep(Duration::from_millis(1000));
    stop_reader.store(true, Ordering::Relaxed);
    engine.stop().unwrap();
    let underruns = AudioMetrics::get(&engine.metrics().output_underrun_samples);
    drop(engine);
    // Unblock the reader if it is waiting for a writer to open the FIFO.
    drop(std::fs::OpenOptions::new().write(true).open(&fifo));
    let played: Vec<i16> = reader
        .join()
        .unwrap()
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    // Silence before the bot spoke and any underrun gaps aside, the speaker
    // received exactly the decoded audio, in order.
    let played: Vec<i16> = played.into_iter().filter(|&s| s != 0).collect();
    let sent: Vec<i16> = reference.into_iter().filter(|&s| s != 0).collect();
    let start = played
        .windows(64)
        .position(|w| w == &sent[..64])
        .expect("decoded audio not found in the speaker's file");
    assert!(
        played[start..].starts_with(&sent),
        "speaker got {} samples, sent {} ({underruns} underrun samples)",
        played.len() - start,
        sent.len()
    );

    // A speaker that fails mid-stream (its FIFO reader goes away: EPIPE)
    // is reported lost, reopened with backoff when it can be, and plays again.
    let reader = |for_how_long: Duration| {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut chunk = [0u8; 960];
            while start.elapsed() < for_how_long {
                let mut file = std::fs::File::open(&fifo).unwrap();
                while start.elapsed() < for_how_long && file.read(&mut chunk).unwrap_or(0) > 0 {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        })
    };
    let first_reader = reader(Duration::from_millis(800));
    let flaky = AudioSettings {
        reopen_backoff_min_ms: Millis(100),
        reopen_backoff_max_ms: Millis(200),
        ..playback_settings.clone()
    };
    let mut engine = AudioEngine::start(&flaky, &VadSettings::default()).unwrap();
    assert!(wait_for_device(&engine, Direction::Output, true));
    assert!(
        wait_for_device(&engine, Direction::Output, false),
        "loss not noticed"
    );
    first_reader.join().unwrap();
    // The second reader stays until the engine has stopped: a reopen waits
    // in open() for a FIFO reader, and a slow machine must not turn that
    // into a hang.
    let keep_reading = Arc::new(AtomicBool::new(true));
    let second_reader = {
        let (fifo, keep) = (fifo.clone(), keep_reading.clone());
        std::thread::spawn(move || {
            let mut chunk = [0u8; 960];
            while keep.load(Ordering::Relaxed) {
                let mut file = std::fs::File::open(&fifo).unwrap();
                while keep.load(Ordering::Relaxed) && file.read(&mut chunk).unwrap_or(0) > 0 {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        })
    };
    assert!(
        wait_for_device(&engine, Direction::Output, true),
        "not reopened"
    );
    assert!(AudioMetrics::get(&engine.metrics().device_errors) > 0);
    let sender = engine.playout();
    for p in &packets[..20] {
        assert!(sender.push(*p));
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while AudioMetrics::get(&engine.metrics().packets_played) < 15 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(AudioMetrics::get(&engine.metrics().packets_played) >= 15);
    engine.stop().unwrap();
    keep_reading.store(false, Ordering::Relaxed);
    // Release a reader waiting in open() for a writer.
    drop(std::fs::OpenOptions::new().write(true).open(&fifo));
    second_reader.join().unwrap();

    // A microphone that cannot be opened, and whose every attempt takes
    // 300 ms (a USB device half plugged in), does not stall the speaker:
    // devices are opened off the audio thread.
    // SAFETY: this test binary has a single test; only its engines read it.
    unsafe { std::env::set_var("KIOSK_TEST_SLOW_DEVICE_OPEN_MS", "300") };
    let stop_reader = Arc::new(AtomicBool::new(false));
    let reader = real_time_reader(&fifo, &stop_reader);
    let missing_mic = AudioSettings {
        input: DeviceSpec::parse("kiosk_test_absent_mic"),
        reopen_backoff_min_ms: Millis(50),
        reopen_backoff_max_ms: Millis(50),
        ..playback_settings.clone()
    };
    let mut engine = AudioEngine::start(&missing_mic, &VadSettings::default()).unwrap();
    assert!(wait_for_device(&engine, Direction::Output, true));
    // The speaker's first fill settles; from here on it must never starve.
    std::thread::sleep(Duration::from_millis(300));
    let underruns_before = AudioMetrics::get(&engine.metrics().output_underrun_samples);
    let sender = engine.playout();
    let begin = Instant::now();
    for (k, p) in packets.iter().enumerate() {
        let due = begin + Duration::from_millis(20 * k as u64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        assert!(sender.push(*p));
    }
    std::thread::sleep(Duration::from_millis(300));
    let m = engine.metrics().clone();
    let starved = AudioMetrics::get(&m.output_underrun_samples) - underruns_before;
    let played = AudioMetrics::get(&m.packets_played);
    assert!(!m.input_open.load(Ordering::Relaxed));
    engine.stop().unwrap();
    drop(engine);
    stop_reader.store(true, Ordering::Relaxed);
    drop(std::fs::OpenOptions::new().write(true).open(&fifo));
    reader.join().unwrap();
    // SAFETY: as above.
    unsafe { std::env::remove_var("KIOSK_TEST_SLOW_DEVICE_OPEN_MS") };
    // Every attempt on the audio thread would starve the speaker for about
    // 200 ms (300 ms minus its 100 ms queue): over 2 s that is a second.
    assert!(
        starved < 48 * 150,
        "the speaker starved for {} ms while the microphone was retried",
        starved / 48
    );
    assert_eq!(played, packets.len() as u64);

    // A microphone that is missing at start is retried with backoff and
    // capture begins once it appears (a USB microphone plugged in late).
    let late = AudioSettings {
        input: DeviceSpec::parse("kiosk_test_late_mic"),
        output: DeviceSpec::Disabled,
        reopen_backoff_min_ms: Millis(100),
        reopen_backoff_max_ms: Millis(400),
        ..AudioSettings::default()
    };
    let mut engine = AudioEngine::start(&late, &VadSettings::default()).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert!(!engine.metrics().input_open.load(Ordering::Relaxed));
    let mic_pcm = &TEMPLATE
        [TEMPLATE.find("pcm.kiosk_test_mic").unwrap()..TEMPLATE.find("# A speaker").unwrap()];
    let late_pcm = mic_pcm
        .replace("@DIR@", dir.path().to_str().unwrap())
        .replace("kiosk_test_mic", "kiosk_test_late_mic");
    let mut conf_text = std::fs::read_to_string(&conf).unwrap();
    conf_text.push_str(&late_pcm);
    std::fs::write(&conf, conf_text).unwrap();
    let found = segments(&engine, 1, Duration::from_secs(10));
    assert!(engine.metrics().input_open.load(Ordering::Relaxed));
    engine.stop().unwrap();
    assert_eq!(found.first(), expected.first(), "capture did not resume");

    a_microphone_faster_than_real_time_is_held_to_real_time();
}

/// ALSA's `null` microphone hands over zeros as fast as they are read, and
/// its speaker takes them as fast. Their callbacks are held to real time,
/// so neither they nor the DSP thread they wake spin: the engine processes
/// about as many frames as the wall clock allows each way, counts the time
/// held, and the DSP thread (real-time where allowed) keeps its priority
/// under the unit's `LimitRTTIME` (set here for this process: a real-time
/// thread awake for 200 ms gets it killed).
fn a_microphone_faster_than_real_time_is_held_to_real_time() {
    let mut before = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: this process's limits, through valid pointers. The soft
    // limit alone: past it the kernel sends SIGXCPU, which kills.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_RTTIME, &mut before), 0);
        let limit = libc::rlimit {
            rlim_cur: 200_000.min(before.rlim_max),
            ..before
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_RTTIME, &limit), 0);
    }
    let null = AudioSettings {
        input: DeviceSpec::parse("null"),
        output: DeviceSpec::parse("null"),
        ..AudioSettings::default()
    };
    let mut engine = AudioEngine::start(&null, &VadSettings::default()).unwrap();
    let started = engine.metrics().dsp_scheduling.get();
    let m = engine.metrics().clone();
    // Past the lead a device may take at once.
    std::thread::sleep(Duration::from_millis(1000));
    let frames = AudioMetrics::get(&m.frames_processed);
    // The DSP thread keeps the speaker's ring 30 ms ahead; a speaker that
    // drained it faster than real time would find it empty again and again.
    let underrun = AudioMetrics::get(&m.output_underrun_samples);
    std::thread::sleep(Duration::from_millis(2000));
    let in_two_seconds = AudioMetrics::get(&m.frames_processed) - frames;
    let underrun_ms = (AudioMetrics::get(&m.output_underrun_samples) - underrun) / 48;
    let held_ms = [&m.input_held_ms, &m.output_held_ms].map(AudioMetrics::get);
    let scheduling = m.dsp_scheduling.get();
    engine.stop().unwrap();
    // SAFETY: as above.
    unsafe { assert_eq!(libc::setrlimit(libc::RLIMIT_RTTIME, &before), 0) };
    // 200 frames of 10 ms in 2 s, give or take a busy machine's wake-ups;
    // unheld, the device gives thousands.
    assert!(
        (150..=260).contains(&in_two_seconds),
        "{in_two_seconds} frames processed in 2 s"
    );
    assert!(
        underrun_ms <= 200,
        "the speaker ran short {underrun_ms} ms in 2 s"
    );
    assert!(
        held_ms.iter().all(|&ms| ms >= 1500),
        "held {held_ms:?} ms in 3 s"
    );
    assert_eq!(scheduling, started, "the DSP thread's scheduling changed");
}
