//! The integration tests, one module per area, in one test binary: each
//! binary links the whole crate with its WebRTC stack, and linking one
//! instead of one per file is most of what `cargo test` costs on a small machine.
//!
//! Three stay binaries of their own, as they need a process to themselves:
//! - `tests/audio_alloc.rs` installs a counting `#[global_allocator]`;
//! - `tests/audio_devices.rs` sets `ALSA_CONFIG_PATH`, which alsa-lib reads
//!   once per process, and ends the process from a watchdog thread if a
//!   device hangs;
//! - `tests/pipecat/` runs a Python bot and the product in real time, one
//!   test at a time, and needs both cores: here another test would run
//!   beside it.
//!
//! Tests here run on parallel threads of one process: they may not change
//! its environment or other process-wide state.

mod common;
mod daily_support;
mod fake_upstream;
mod link_support;
mod sip_support;

mod audio_aec;
mod audio_aec_config;
mod audio_echo;
mod audio_engine;
mod audio_hostile;
mod audio_segmentation;
mod cli;
mod daemon;
mod daily_client;
mod daily_provision;
mod daily_transcription;
mod demo;
mod hostile_agent;
mod hostile_wav;
mod journal;
mod link_call;
mod link_loopback;
mod link_loss;
mod link_restart;
mod link_signaling;
mod selftest;
mod session;
mod session_cloud;
mod session_loss;
mod session_sip;
mod sip_dial;
mod status;
mod status_cloud;
mod status_page;
mod status_security;
mod sync;
mod systemd_unit;
mod untrusted_replies;
mod watchdog;
