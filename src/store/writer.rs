//! The one writer: a thread that owns the writing connection and runs jobs
//! sent from async code in order, so SQLite never blocks the runtime and
//! writes never contend for the lock within the process.

use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use super::{Store, StoreError};

type Job = Box<dyn FnOnce(&mut Store) + Send>;

/// Jobs queued for the writer before callers wait for room: a stuck
/// writer makes its callers wait (and the watchdog notice), not the queue
/// grow.
const JOBS: usize = 64;

/// A cheap, cloneable handle to the writer thread.
#[derive(Clone)]
pub struct StoreHandle {
    jobs: mpsc::Sender<Job>,
}

/// Joins the writer thread once every handle is gone.
pub struct WriterThread(JoinHandle<()>);

impl WriterThread {
    /// Waits for the writer thread to finish its queued writes and end.
    pub fn join(self) {
        let _ = self.0.join();
    }
}

impl StoreHandle {
    /// Moves `store` onto its own thread; it closes when the last handle drops.
    pub fn spawn(mut store: Store) -> (StoreHandle, WriterThread) {
        let (jobs, mut rx) = mpsc::channel::<Job>(JOBS);
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                while let Some(job) = rx.blocking_recv() {
                    job(&mut store);
                }
            })
            .expect("spawning the store thread");
        (StoreHandle { jobs }, WriterThread(thread))
    }

    /// Runs `f` on the writer thread and returns its result.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Store) -> Result<R, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move |store| {
                let _ = tx.send(f(store));
            }))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        rx.await.map_err(|_| StoreError::WriterGone)?
    }
}
