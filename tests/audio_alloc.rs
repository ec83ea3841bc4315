//! The DSP tick must not allocate in steady state: a counting global
//! allocator watches a conversation (capture at 44.1 kHz, VAD, segmentation,
//! encoding, streaming, playout with concealment) after a warm-up.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::sync::Arc;

use kiosk_gateway::audio::{
    AudioEvent, AudioMetrics, AudioSettings, AudioSink, Dsp, EncodedFrame, FRAME_48K,
    IncomingPacket, OPUS_FRAME, OpusEncoder, SampleRate, VadSettings, read_wav, resample_clip,
};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: defers every operation to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Counts output without allocating.
#[derive(Default)]
struct Tally {
    events: u64,
    frames: u64,
}

impl AudioSink for Tally {
    fn event(&mut self, _event: AudioEvent) {
        self.events += 1;
    }
    fn frame(&mut self, _frame: EncodedFrame) {
        self.frames += 1;
    }
}

#[test]
fn a_conversation_tick_does_not_allocate_after_warm_up() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/audio");
    let visitor = read_wav(&dir.join("multi_utterance_16k.wav")).unwrap();
    // Microphone at 44.1 kHz so both resamplers run.
    let mic_rate = SampleRate(44_100);
    let mic = resample_clip(&visitor.samples, visitor.rate, mic_rate).unwrap();
    let bot = read_wav(&dir.join("bot_reference_16k.wav")).unwrap();
    let bot48 = resample_clip(&bot.samples, bot.rate, SampleRate::OPUS).unwrap();
    let mut enc = OpusEncoder::new(&AudioSettings::default()).unwrap();
    let packets: Vec<IncomingPacket> = bot48
        .chunks_exact(OPUS_FRAME)
        .enumerate()
        .filter(|(k, _)| k % 17 != 5) // some loss, so concealment runs too
        .map(|(k, c)| IncomingPacket {
            seq: k as u16,
            timestamp: (k * OPUS_FRAME) as u32,
            payload: enc.encode(c).unwrap(),
        })
        .collect();

    let block = 441;
    let mut dsp = Dsp::new(
        &AudioSettings::default(),
        &VadSettings::default(),
        mic_rate,
        block,
        Arc::new(AudioMetrics::default()),
    )
    .unwrap();
    let mut sink = Tally::default();
    let mut out = [0.0; FRAME_48K];
    let mut next = 0;
    let mut during = 0;
    let ticks = mic.len() / block;
    for tick in 0..ticks {
        // Warm-up: the first utterance starts the stream and the link comes up.
        if tick == 150 {
            dsp.link_ready(&mut sink);
        }
        let before = allocations();
        // The bot replies after the visitor's first utterance.
        while next < packets.len() && 300 + packets[next].timestamp as usize / 480 <= tick {
            dsp.push_packet(packets[next]);
            next += 1;
        }
        dsp.play_frame(&mut out).unwrap();
        dsp.capture(&mic[tick * block..(tick + 1) * block], &mut sink)
            .unwrap();
        if tick > 150 {
            during += allocations() - before;
        }
    }
    assert!(sink.frames > 300, "only {} packets streamed", sink.frames);
    // Each utterance was reported as it started and ended.
    assert!(sink.events >= 4, "only {} speech events", sink.events);
    assert_eq!(during, 0, "allocations in steady state");
}
