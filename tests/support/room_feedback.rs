//! A simulated room between the file-backed ALSA devices (see
//! `alsa_files.rs`): reads what the speaker plays from its FIFO at real
//! time, turns it into an echo (the clipping speaker, the 30 ms direct path
//! and the 200 ms reverberant tail of `Room::default()`), adds a visitor
//! speaking over it, and writes that to the microphone's FIFO. Shared by
//! the device test and the tests against the stock Pipecat bot and
//! baresip.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kiosk_gateway::audio::echo::room::Room;
use kiosk_gateway::audio::f32_to_i16;

/// 10 ms at 48 kHz, the room's step.
pub const STEP: usize = 480;
/// A speaker step louder than this (mean square, full scale 1) is the bot
/// talking: -50 dBFS.
const TALKING: f32 = 1e-5;

/// When a part of the visitor's speech starts.
#[derive(Clone, Copy, Debug)]
pub enum Cue {
    /// This many 48 kHz samples into the microphone's stream.
    At(usize),
    /// Once the speaker has played the bot's voice this long since the
    /// previous part ended: the visitor cutting into a reply.
    AfterBotTalked(Duration),
}

/// What the visitor says (48 kHz, already at the level wanted at the
/// microphone) and when.
pub struct Part {
    pub samples: Vec<f32>,
    pub cue: Cue,
}

/// The room's thread; runs until stopped.
pub struct RoomThread {
    speaker: PathBuf,
    mic: PathBuf,
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    /// Microphone sample at which each part started, `u64::MAX` until then.
    started: Arc<Vec<AtomicU64>>,
    handle: JoinHandle<()>,
}

/// Opens a FIFO without waiting for the other end, with the smallest pipe
/// (one page, 42 ms of 48 kHz 16-bit mono) so it adds little delay.
fn open_fifo(path: &Path) -> File {
    // Read-write: opening never blocks, and the pipe outlives ALSA's
    // probing opens and closes.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    // SAFETY: a valid open descriptor.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    file
}

impl RoomThread {
    /// Starts the room between `dir/speaker.raw` and `dir/mic.raw`; the
    /// visitor's `parts` are said in order, each at its cue.
    pub fn start(dir: &Path, parts: Vec<Part>) -> Self {
        let mut speaker = open_fifo(&dir.join("speaker.raw"));
        let mut mic = open_fifo(&dir.join("mic.raw"));
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let started: Arc<Vec<AtomicU64>> =
            Arc::new(parts.iter().map(|_| AtomicU64::new(u64::MAX)).collect());
        // The room's taps at 48 kHz (the simulated room works at 16 kHz).
        let room = Room::default();
        let taps: Vec<(usize, f32)> = room
            .impulse_response()
            .into_iter()
            .map(|(delay, gain)| (delay * 3, gain))
            .collect();
        let span = taps.iter().map(|&(d, _)| d).max().unwrap() + STEP;
        let handle = {
            let (stop, written, started) = (stop.clone(), written.clone(), started.clone());
            std::thread::spawn(move || {
                // The speaker's recent samples, after the cone's clipping.
                let mut history = vec![0.0f32; span + STEP];
                let mut bytes = [0u8; STEP * 2];
                let mut out = [0u8; STEP * 2];
                let mut t = 0usize;
                // The part being said (index, its first sample), the next
                // one due, and how long the bot has talked since the last.
                let mut saying: Option<(usize, usize)> = None;
                let mut next = 0usize;
                let mut bot_talked = 0usize;
                let start = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    if speaker.read_exact(&mut bytes).is_err() {
                        break;
                    }
                    history.copy_within(STEP.., 0);
                    let newest = history.len() - STEP;
                    let mut power = 0.0f32;
                    for (h, b) in history[newest..].iter_mut().zip(bytes.chunks_exact(2)) {
                        let s = f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0;
                        power += s * s;
                        *h = (s * room.drive).tanh() / room.drive;
                    }
                    if power / STEP as f32 > TALKING {
                        bot_talked += STEP;
                    }
                    if saying.is_none()
                        && let Some(part) = parts.get(next)
                    {
                        let due = match part.cue {
                            Cue::At(at) => t >= at,
                            Cue::AfterBotTalked(d) => bot_talked as u128 >= d.as_millis() * 48,
                        };
                        if due {
                            saying = Some((next, t));
                            started[next].store(t as u64, Ordering::Relaxed);
                            next += 1;
                        }
                    }
                    for (i, o) in out.chunks_exact_mut(2).enumerate() {
                        let now = newest + i;
                        let echo: f32 = taps.iter().map(|&(d, g)| g * history[now - d]).sum();
                        let voice = saying
                            .and_then(|(k, from)| parts[k].samples.get(t + i - from))
                            .copied()
                            .unwrap_or(0.0);
                        o.copy_from_slice(&f32_to_i16(echo + voice).to_le_bytes());
                    }
                    if let Some((k, from)) = saying
                        && t + STEP - from >= parts[k].samples.len()
                    {
                        saying = None;
                        bot_talked = 0;
                    }
                    if mic.write_all(&out).is_err() {
                        break;
                    }
                    t += STEP;
                    written.store(t as u64, Ordering::Relaxed);
                    // Real time: the file-backed devices do not pace themselves.
                    let due = start + Duration::from_micros(t as u64 * 1_000_000 / 48_000);
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                }
            })
        };
        Self {
            speaker: dir.join("speaker.raw"),
            mic: dir.join("mic.raw"),
            stop,
            written,
            started,
            handle,
        }
    }

    /// Microphone samples written so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// The microphone sample at which part `k` started, once it has.
    pub fn started(&self, k: usize) -> Option<u64> {
        let at = self.started[k].load(Ordering::Relaxed);
        (at != u64::MAX).then_some(at)
    }

    /// Stops the room and waits for its thread, which may be waiting for
    /// a speaker that has stopped playing or a microphone nobody reads any
    /// more: silence is fed to the one and the other drained until it ends.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let (speaker, mic) = (open_fifo(&self.speaker), open_fifo(&self.mic));
        for f in [&speaker, &mic] {
            // SAFETY: a valid open descriptor.
            unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        }
        let mut page = [0u8; 4096];
        while !self.handle.is_finished() {
            let _ = (&speaker).write(&[0u8; STEP * 2]);
            let _ = (&mic).read(&mut page);
            std::thread::sleep(Duration::from_millis(10));
        }
        self.handle.join().unwrap();
    }
}
