//! Carries the session's store writes out, one at a time and in order,
//! off the session loop, so a slow or failing store never stalls the call.
//! The [`Spool`] decides what goes next and when a failed write is due
//! again; this is its I/O.

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio::time::sleep_until;
use tracing::{error, info, warn};

use super::spool::{Spool, Write};
use crate::error_text::error_chain;
use crate::store::{StoreError, StoreHandle};

/// Transcript lines held in memory while the store cannot take them
/// (a few MB at most); past it the oldest are dropped and counted.
const SPOOL_MAX_LINES: usize = 10_000;

/// How long the end of a run waits for held writes to reach the store:
/// inside the daemon's stop grace (4 s), itself inside systemd's.
const SPOOL_DRAIN: Duration = Duration::from_secs(2);

pub struct Persister {
    store: StoreHandle,
    spool: Spool,
    /// The write under way.
    storing: Option<JoinHandle<(Write, Result<(), StoreError>)>>,
}

impl Persister {
    pub fn new(store: StoreHandle) -> Self {
        Self {
            store,
            spool: Spool::new(SPOOL_MAX_LINES),
            storing: None,
        }
    }

    /// What is held, and whether the store is failing.
    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// Queues a write; it reaches the store in order.
    pub fn persist(&mut self, write: Write) {
        let dropped = self.spool.push(write);
        if dropped > 0 {
            error!(
                lines = dropped,
                held = self.spool.held_lines(),
                "the store has not taken writes for a long time; the oldest transcript lines held in memory were dropped"
            );
            metrics::counter!("kiosk_store_spool_dropped_lines_total").increment(dropped as u64);
        }
        self.kick();
    }

    /// Waits for the write under way to finish, or for a failed one to be
    /// due again, and goes on with the next. Cancel-safe, for a `select!`.
    pub async fn advance(&mut self) {
        if let Some(task) = &mut self.storing {
            let finished = task.await;
            self.storing = None;
            match finished {
                Ok((write, result)) => self.on_stored(write, result),
                Err(e) => {
                    warn!(error = %error_chain(&e), "a store write task failed")
                }
            }
        } else {
            match self.spool.retry_at() {
                Some(at) => sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
            self.kick();
        }
    }

    /// At the end of a run: waits a little for held writes, and says what
    /// could not be stored.
    pub async fn drain(&mut self) {
        let deadline = tokio::time::Instant::now() + SPOOL_DRAIN;
        while !self.spool.is_empty() {
            if let Some(task) = self.storing.take() {
                match tokio::time::timeout_at(deadline, task).await {
                    Ok(Ok((write, result))) => self.on_stored(write, result),
                    Ok(Err(_)) | Err(_) => break,
                }
            } else if let Some(at) = self.spool.retry_at() {
                if tokio::time::Instant::from(at) > deadline {
                    break;
                }
                sleep_until(at.into()).await;
                self.kick();
            } else {
                self.kick();
            }
        }
        if !self.spool.is_empty() {
            error!(
                writes = self.spool.held_writes(),
                lines = self.spool.held_lines(),
                "stopping with writes the store did not take; they are lost"
            );
        }
    }

    /// Starts the next held write, unless one is under way or backing off.
    fn kick(&mut self) {
        if self.storing.is_some() {
            return;
        }
        if let Some(write) = self.spool.take(Instant::now()) {
            let store = self.store.clone();
            self.storing = Some(tokio::spawn(async move {
                let attempt = write.clone();
                let result = store.call(move |s| attempt.apply(s)).await;
                (write, result)
            }));
        }
    }

    fn on_stored(&mut self, write: Write, result: Result<(), StoreError>) {
        match result {
            Ok(()) => {
                if self.spool.done() {
                    info!("the store takes writes again; held lines written");
                }
            }
            Err(e) => {
                if self.spool.failed(write, &e, Instant::now()) {
                    error!(error = %error_chain(&e), "cannot write to the store; holding writes in memory and retrying");
                } else {
                    warn!(error = %error_chain(&e), held = self.spool.held_writes(), "store write failed again");
                }
            }
        }
        self.kick();
    }
}
