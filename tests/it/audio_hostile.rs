//! The playout path against whatever an agent may send: random bytes, and
//! packets with legal Opus framing (RFC 6716 section 3: every TOC
//! configuration, codes 0 to 3, 1 to 48 frames, CBR and VBR, padding) and
//! random frame contents, truncated or not, with sequence numbers and RTP
//! timestamps that jump, repeat and run backwards. Nothing may panic, the
//! output stays within full scale (garbage can decode to 100 times it),
//! and a clean stream afterwards is heard again.
//!
//! And the engine itself failing: the daemon with a speaker that cannot be
//! written reports its devices down with the error, restarts the DSP loop
//! with backoff, and keeps feeding the watchdog.
//!
//! `HOSTILE_CASES` sets the number of generated packet sequences: by
//! default 20 000, about 130 000 hostile packets in some 20 s of a debug
//! build (each sequence holds 1 to 12, then a clean stream follows).
//! `HOSTILE_CASES=100000` runs 100 000 sequences.

use crate::common;

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use kiosk_gateway::audio::{
    AudioMetrics, AudioSettings, FRAME_48K, IncomingPacket, MAX_PACKET, Millis, OPUS_FRAME,
    OpusEncoder, OpusPacket, Playout,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// One packet as the link hands it over.
#[derive(Clone, Debug)]
struct Wire {
    payload: Vec<u8>,
    seq_step: i16,
    ts_step: i32,
    /// 10 ms ticks played before it arrives.
    ticks_before: u8,
}

/// RFC 6716 section 3.2.1: a frame length in one or two bytes.
fn push_length(out: &mut Vec<u8>, len: usize) {
    if len < 252 {
        out.push(len as u8);
    } else {
        let first = 252 + (len - 252) % 4;
        out.push(first as u8);
        out.push(((len - first) / 4) as u8);
    }
}

/// `len` bytes from `seed` (xorshift): cheap to generate and to shrink,
/// where proptest's own byte vectors would spend the run generating.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The parts of a packet with legal framing.
#[derive(Clone, Debug)]
struct Framing {
    config: u8,
    stereo: bool,
    code: u8,
    frames: usize,
    vbr: bool,
    padding: usize,
    /// Frame lengths are up to this; contents are random.
    max_frame: usize,
    seed: u64,
    /// Cut the packet to this many bytes (at least the TOC).
    truncate: Option<usize>,
}

impl Framing {
    /// The packet: TOC (any config, mono or stereo, any code), then what
    /// the code calls for.
    fn packet(&self) -> Vec<u8> {
        let lens = bytes(self.seed ^ 0x5555, self.frames);
        let frames: Vec<Vec<u8>> = lens
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                bytes(
                    self.seed.wrapping_add(i as u64),
                    usize::from(l) % (self.max_frame + 1),
                )
            })
            .collect();
        let toc = self.config << 3 | u8::from(self.stereo) << 2 | self.code;
        let mut out = vec![toc];
        match self.code {
            0 => out.extend(&frames[0]),
            1 => {
                // Two frames of the same length.
                out.extend(&frames[0]);
                out.extend(&frames[0]);
            }
            2 => {
                let second = frames.get(1).unwrap_or(&frames[0]);
                push_length(&mut out, frames[0].len());
                out.extend(&frames[0]);
                out.extend(second);
            }
            _ => {
                let count = frames.len();
                let padded = self.padding > 0;
                out.push(u8::from(self.vbr) << 7 | u8::from(padded) << 6 | count as u8);
                if padded {
                    // 255 means 254 bytes and another length byte follows.
                    let mut left = self.padding;
                    while left >= 255 {
                        out.push(255);
                        left -= 254;
                    }
                    out.push(left as u8);
                }
                if self.vbr {
                    for f in &frames[..count - 1] {
                        push_length(&mut out, f.len());
                    }
                    for f in &frames {
                        out.extend(f);
                    }
                } else {
                    for _ in 0..count {
                        out.extend(&frames[0]);
                    }
                }
                out.resize(out.len() + self.padding, 0);
            }
        }
        if let Some(len) = self.truncate {
            out.truncate(len.max(1));
        }
        out.truncate(MAX_PACKET);
        out
    }
}

fn framed() -> impl Strategy<Value = Vec<u8>> {
    (
        (0u8..32, any::<bool>(), 0u8..4, 1usize..=48),
        (
            any::<bool>(),
            prop_oneof![3 => Just(0usize), 1 => 1usize..300],
        ),
        (
            prop_oneof![3 => 0usize..=24, 1 => 0usize..=300],
            any::<u64>(),
        ),
        prop_oneof![3 => Just(None), 1 => (1usize..40).prop_map(Some)],
    )
        .prop_map(
            |((config, stereo, code, frames), (vbr, padding), (max_frame, seed), truncate)| {
                Framing {
                    config,
                    stereo,
                    code,
                    frames,
                    vbr,
                    padding,
                    max_frame,
                    seed,
                    truncate,
                }
                .packet()
            },
        )
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => framed(),
        1 => (0..=MAX_PACKET, any::<u64>()).prop_map(|(len, seed)| bytes(seed, len)),
        // A TOC byte alone, or with a frame count: the shortest packets.
        1 => prop::collection::vec(any::<u8>(), 0..=2),
    ]
}

fn wire() -> impl Strategy<Value = Wire> {
    (
        payload(),
        prop_oneof![6 => Just(1i16), 1 => -3i16..=3, 1 => any::<i16>()],
        prop_oneof![
            4 => Just(960i32),
            2 => prop::sample::select(vec![120, 240, 480, 1920, 2880, 3840, 4800, 5760]),
            1 => any::<i32>(),
        ],
        prop_oneof![4 => 0u8..=2, 1 => 0u8..=12],
    )
        .prop_map(|(payload, seq_step, ts_step, ticks_before)| Wire {
            payload,
            seq_step,
            ts_step,
            ticks_before,
        })
}

/// Packets of the clean stream after the hostile ones.
const CLEAN: usize = 10;

/// A tone in 20 ms packets: the clean stream afterwards.
fn clean_packets() -> &'static [OpusPacket] {
    static PACKETS: OnceLock<Vec<OpusPacket>> = OnceLock::new();
    PACKETS.get_or_init(|| {
        let mut enc = OpusEncoder::new(&AudioSettings::default()).unwrap();
        (0..CLEAN)
            .map(|k| {
                let frame: Vec<f32> = (0..OPUS_FRAME)
                    .map(|i| {
                        let t = (k * OPUS_FRAME + i) as f32 / 48_000.0;
                        0.3 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()
                    })
                    .collect();
                enc.encode(&frame).unwrap()
            })
            .collect()
    })
}

/// Plays one hostile sequence then the clean stream; returns an error
/// (not a panic, so proptest can shrink it) when a property fails.
fn play(packets: &[Wire]) -> Result<(), TestCaseError> {
    let metrics = Arc::new(AudioMetrics::default());
    let mut playout = Playout::new(&AudioSettings::default(), metrics.clone()).unwrap();
    let mut out = [0.0f32; FRAME_48K];
    let mut now = 0u32;
    let mut tick = |playout: &mut Playout, now: &mut u32| -> Result<bool, TestCaseError> {
        let audible = playout.next_frame(&mut out);
        *now += 10;
        prop_assert!(
            out.iter().all(|s| s.is_finite() && s.abs() <= 1.0),
            "output out of range: {:?}",
            out.iter().map(|s| s.abs()).fold(0.0f32, f32::max)
        );
        Ok(audible)
    };
    let (mut seq, mut ts) = (65_000u16, u32::MAX - 100_000);
    for w in packets {
        for _ in 0..w.ticks_before {
            tick(&mut playout, &mut now)?;
        }
        seq = seq.wrapping_add_signed(w.seq_step);
        ts = ts.wrapping_add_signed(w.ts_step);
        let payload = OpusPacket::from_slice(&w.payload).expect("generated within MAX_PACKET");
        playout.push(
            IncomingPacket {
                seq,
                timestamp: ts,
                payload,
            },
            Millis(now),
        );
        tick(&mut playout, &mut now)?;
    }
    // A clean stream from where the sequence left off: one packet every
    // 20 ms, and it must be heard.
    let mut heard = 0;
    for p in clean_packets() {
        seq = seq.wrapping_add(1);
        ts = ts.wrapping_add(OPUS_FRAME as u32);
        playout.push(
            IncomingPacket {
                seq,
                timestamp: ts,
                payload: *p,
            },
            Millis(now),
        );
        for _ in 0..2 {
            heard += usize::from(tick(&mut playout, &mut now)?);
        }
    }
    // It starts after at most the 40 ms of buffering and any concealment
    // of what came before.
    prop_assert!(
        heard >= 2 * CLEAN - 8,
        "only {heard} audible frames of {} after the hostile packets",
        2 * CLEAN
    );
    Ok(())
}

#[test]
fn any_packets_play_without_panic_or_error_and_a_clean_stream_is_heard_after() {
    let cases: u32 = std::env::var("HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let started = Instant::now();
    let packets = std::sync::atomic::AtomicU64::new(0);
    runner
        .run(&prop::collection::vec(wire(), 1..=12), |seq| {
            packets.fetch_add(seq.len() as u64, std::sync::atomic::Ordering::Relaxed);
            play(&seq)
        })
        .unwrap();
    let packets = packets.into_inner();
    println!(
        "{cases} generated sequences, {packets} hostile packets, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The gateway with its speaker recording to a full disk: every write
/// fails, so the DSP loop fails, again after each restart. The devices are
/// reported down with the error while it waits, /metrics counts the
/// failures and restarts, the watchdog is still fed (the thread is not
/// stuck), and the gateway still stops cleanly.
#[tokio::test]
async fn a_failing_audio_engine_is_reported_down_and_restarted_with_backoff() {
    use common::{Daemon, get, silence, write_config, write_wav};
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let mic = dir.path().join("mic.wav");
    write_wav(&mic, 16_000, &silence(20_000));
    let config = write_config(
        dir.path(),
        &format!(
            "[audio]\ninput = \"wav:{}\"\noutput = \"wav:/dev/full\"\n\
             reopen_backoff_min_ms = 200\nreopen_backoff_max_ms = 1000\n",
            mic.display()
        ),
    );
    let mut cmd = common::under_watchdog(&config, "400000");
    let mut d = Daemon::start_with(dir.path(), &mut cmd, &[]);

    let down = common::wait_for(&d, "devices down", Duration::from_secs(10), |s| {
        s["components"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["name"] == "microphone" || c["name"] == "speaker")
            .all(|c| c["health"] == "down")
    })
    .await;
    let speaker = &down["components"][1];
    let detail = speaker["detail"].as_str().unwrap();
    println!("speaker while the engine is down: {detail}");
    assert!(
        detail.contains("audio engine stopped") && detail.contains("No space left on device"),
        "{speaker}"
    );
    let (_, page) = get(&format!("{}/", d.url)).await;
    assert!(page.contains("audio engine stopped"), "not on the page");

    // Restarted (and failing again) with backoff: a few in some seconds,
    // not a busy loop.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (failures, restarts) = loop {
        let (_, metrics) = get(&format!("{}/metrics", d.url)).await;
        let value = |name: &str| -> u64 {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                .unwrap_or(0)
        };
        let (failures, restarts) = (
            value("kiosk_audio_engine_failures_total "),
            value("kiosk_audio_engine_restarts_total "),
        );
        if restarts >= 2 {
            assert!(metrics.contains("kiosk_audio_engine_last_failure_timestamp_seconds"));
            break (failures, restarts);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no restarts:\n{metrics}\n{}",
            d.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("{failures} failures, {restarts} restarts");
    assert!(
        failures <= 20,
        "{failures} failures: restarts without backoff?"
    );
    assert!(d.stderr().contains("audio engine failed; restarting it"));

    // The thread waiting to restart is alive: the watchdog keeps being fed.
    d.messages.clear();
    d.wait_message(Duration::from_secs(2), |m| m.contains("WATCHDOG=1"))
        .expect("watchdog fed while the engine restarts");

    d.signal("TERM");
    let (status, _) = d
        .wait_exit(Duration::from_secs(5))
        .expect("stopped within 5 s");
    assert!(status.success(), "exit {status}; stderr:\n{}", d.stderr());
}
