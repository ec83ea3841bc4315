//! The product against a Pipecat bot (see tests/interop/README.md), in a
//! binary of its own: cargo runs test binaries one after another, so these
//! real-time tests get the machine to themselves, one at a time.

// Shared with tests/it, whose tests use the rest of them.
#[allow(dead_code)]
#[path = "../it/common.rs"]
mod common;
#[allow(dead_code)]
#[path = "../it/daily_support.rs"]
mod daily_support;
#[allow(dead_code)]
#[path = "../it/link_support.rs"]
mod link_support;

mod interop;

mod interop_echo;
mod interop_loss;
mod interop_run;
mod interop_stall;
mod link_pipecat;
