//! Audio built into the binary, so the daemon and the demo need no files
//! beside it.

/// What a visitor hears when the agent cannot be reached (48 kHz mono WAV);
/// `session.failure_prompt` replaces it.
pub const FAILURE_PROMPT: &[u8] = include_bytes!("../fixtures/audio/failure_prompt_48k.wav");

/// The demo's visitor: four utterances with known silences between them.
pub const DEMO_VISITOR: &[u8] = include_bytes!("../fixtures/audio/multi_utterance_16k.wav");

/// What the demo's loopback agent says after each utterance.
pub const DEMO_REPLY: &[u8] = include_bytes!("../fixtures/link/reply_48k.wav");
