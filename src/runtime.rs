//! The async runtime the daemon and the other long commands run on.

/// The runtime could not be built (no threads or file descriptors left).
#[derive(Debug, thiserror::Error)]
#[error("cannot start the async runtime")]
pub struct RuntimeError(#[source] std::io::Error);

pub fn build() -> Result<tokio::runtime::Runtime, RuntimeError> {
    // One worker: everything async here waits on sockets and timers (the
    // DSP, the store writer and status reads have threads of their own),
    // and a second worker only adds cross-thread wake-ups: the gateway's
    // CPU in a long session went from 3.40% to 3.09% of a core.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(RuntimeError)
}
