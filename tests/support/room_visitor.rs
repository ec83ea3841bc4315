//! The visitor in the simulated room (`room_feedback.rs`) of the daemon's
//! tests against a real peer: a question, then words said over the peer's
//! reply as loud at the microphone as the reply's echo, and waiting until
//! they have been said; and the daemon's devices in that room.

use std::time::{Duration, Instant};

use kiosk_gateway::audio::echo::room::{Room, active_power};
use kiosk_gateway::audio::{SampleRate, resample_clip};

use super::room_feedback::{Cue, Part, RoomThread};

/// 16 kHz samples at the room's 48 kHz, scaled by `gain`.
fn at_48k(samples: &[i16], gain: f32) -> Vec<f32> {
    let floats: Vec<f32> = samples.iter().map(|&s| f32::from(s) / 32768.0).collect();
    resample_clip(&floats, SampleRate::VAD, SampleRate::OPUS)
        .unwrap()
        .into_iter()
        .map(|s| s * gain)
        .collect()
}

/// The room's parts for the visitor's two utterances (16 kHz): `first` a
/// second into the microphone's stream, `second` once the speaker has
/// played the peer for `cut_in_after`; both as loud as the room's echo of
/// `reply` (16 kHz, the peer's voice) is (0 dB). Also the gain applied.
pub fn question_then_cut_in(
    reply: &[f32],
    first: &[i16],
    second: &[i16],
    cut_in_after: Duration,
) -> (Vec<Part>, f32) {
    let echo = Room::default().echo(reply);
    let gain = (active_power(&echo) / active_power(&at_48k(second, 1.0))).sqrt();
    let parts = vec![
        Part {
            samples: at_48k(first, gain),
            cue: Cue::At(48_000),
        },
        Part {
            samples: at_48k(second, gain),
            cue: Cue::AfterBotTalked(cut_in_after),
        },
    ];
    (parts, gain)
}

/// Waits until the room has said its second part (`len` long) and `then`
/// has passed since, or `timeout`; whether the visitor cut in at all.
pub async fn cut_in_said(
    room: &RoomThread,
    len: Duration,
    then: Duration,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut cut_in_at = None;
    while Instant::now() < deadline {
        if cut_in_at.is_none() && room.started(1).is_some() {
            cut_in_at = Some(Instant::now());
        }
        if cut_in_at.is_some_and(|at| at.elapsed() > len + then) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cut_in_at.is_some()
}

/// The daemon's `[audio]` table for the room's devices, with the echo
/// canceller and gate on or off.
pub fn room_audio(echo_cancel: bool) -> String {
    format!(
        "[audio]\ninput = \"test microphone\"\noutput = \"kiosk_test_speaker\"\n\
         # The pipes drain in bursts of up to 42 ms; queue enough.\n\
         device_buffer_ms = 100\n\
         echo_cancel = {echo_cancel}\necho_gate = {echo_cancel}\n"
    )
}
