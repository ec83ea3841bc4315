//! kiosk-gateway: bridges a voice kiosk's microphone and speaker to a cloud
//! voice agent over WebRTC, keeps what was said in SQLite, ships it to the
//! operator's cloud and shows technicians a status page. It runs as one
//! systemd service on the kiosk (`kiosk-gateway run`).
//!
//! The modules, listed bottom-up: each uses only modules listed before it
//! (the unit tests in `layout_tests` fail on any import cycle).
//!
//! - Foundations: `health` (how a part is doing, in words for
//!   technicians), `http_body` (bounded reads of untrusted replies),
//!   `liveness` (which parts make progress), `systemd` (sd_notify),
//!   `runtime` (the async runtime), `assets` (audio built into the
//!   binary), [`agent_settings`] (how sessions reach the agent), [`store`]
//!   (SQLite: sessions, transcripts, sync batches).
//! - The kiosk's parts: [`audio`] (devices, echo cancelling, voice
//!   detection, Opus), [`daily`] (Daily REST client), [`link`] (the WebRTC
//!   call to the agent and its RTVI data channel).
//! - Around them: [`config`] (TOML and environment into each part's
//!   settings), `control` (state published for the status server, and
//!   technicians' commands), [`telemetry`] (logging), [`sync`] (transcript
//!   upload), `reachability` (probes of Daily and the agent),
//!   [`transcript_fetch`] (SIP sessions' transcripts, fetched from Daily),
//!   [`selftest`] (the speaker and microphone self-test).
//! - The running gateway: [`session`] (the kiosk loop: state machine,
//!   provisioning, orchestrator), `status` (status page, JSON API,
//!   metrics), `watchdog` (the systemd watchdog).
//! - Entry points: [`daemon`] (`run`), [`demo`] (`demo`), [`commands`]
//!   (one-shot technician commands); `main.rs` parses the command line.

#![warn(missing_docs)]

mod agent;
pub mod agent_settings;
pub(crate) mod assets;
pub mod audio;
pub mod commands;
pub mod config;
pub(crate) mod control;
pub mod daemon;
pub mod daily;
pub mod demo;
mod error_text;
pub(crate) mod health;
pub(crate) mod http_body;
pub mod link;
pub(crate) mod liveness;
pub(crate) mod reachability;
pub(crate) mod runtime;
pub mod selftest;
pub mod session;
pub mod sip;
pub(crate) mod status;
pub mod store;
pub mod sync;
pub(crate) mod systemd;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod transcript_fetch;
pub(crate) mod watchdog;

#[cfg(test)]
mod layout_tests;
