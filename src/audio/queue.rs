//! The queues from the DSP thread to the session layer: bounded tokio
//! channels, so a session task awaits the engine's events and frames
//! directly, with no thread between them. The DSP thread only ever
//! `try_send`s, which needs no runtime and never blocks; what does not fit
//! is counted and logged ([`Outlet`]). Tools and tests on plain threads read
//! the same queues through [`EngineReceiver`]'s blocking methods.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::mpsc::{RecvError, RecvTimeoutError, TryRecvError};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{self, error::TrySendError};
use tracing::{info, warn};

use super::metrics::AudioMetrics;

/// A queue of `capacity` items named `what` in logs: the DSP thread's end
/// and the reader's.
pub(super) fn queue<T>(capacity: usize, what: &'static str) -> (Outlet<T>, EngineReceiver<T>) {
    let (tx, rx) = mpsc::channel(capacity);
    (
        Outlet {
            tx,
            what,
            dropping: 0,
        },
        EngineReceiver(RefCell::new(rx)),
    )
}

/// The DSP thread's end of a queue. An item that does not fit (the reader
/// is not keeping up) is dropped and counted in `events_dropped`; the first
/// of a run of drops is logged, and how many there were once items fit
/// again.
pub(super) struct Outlet<T> {
    tx: mpsc::Sender<T>,
    what: &'static str,
    /// Items dropped since the last one that fit.
    dropping: u64,
}

impl<T> Outlet<T> {
    pub(super) fn send(&mut self, item: T, metrics: &AudioMetrics) {
        match self.tx.try_send(item) {
            Ok(()) => {
                if self.dropping > 0 {
                    info!(
                        queue = self.what,
                        dropped = self.dropping,
                        "the session layer takes the audio engine's output again"
                    );
                    self.dropping = 0;
                }
            }
            Err(TrySendError::Full(_)) => {
                AudioMetrics::add(&metrics.events_dropped, 1);
                if self.dropping == 0 {
                    warn!(
                        queue = self.what,
                        "the session layer is not keeping up with the audio engine; dropping its output"
                    );
                }
                self.dropping += 1;
            }
            // Nobody reads any more: nothing to warn about.
            Err(TrySendError::Closed(_)) => AudioMetrics::add(&metrics.events_dropped, 1),
        }
    }
}

/// The reading end of one of the engine's queues, for a plain thread: the
/// methods of `std::sync::mpsc::Receiver` that the engine's users need.
/// Async code takes the tokio receiver inside with
/// [`AudioEngine::take_streams`](super::AudioEngine::take_streams).
pub struct EngineReceiver<T>(RefCell<mpsc::Receiver<T>>);

impl<T> EngineReceiver<T> {
    /// A receiver whose queue is closed and empty.
    pub(super) fn closed() -> Self {
        let (_, rx) = mpsc::channel(1);
        Self(RefCell::new(rx))
    }

    /// The tokio receiver, for async code.
    pub(super) fn into_inner(self) -> mpsc::Receiver<T> {
        self.0.into_inner()
    }

    /// The next item if one is queued.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        self.0.borrow_mut().try_recv().map_err(|e| match e {
            mpsc::error::TryRecvError::Empty => TryRecvError::Empty,
            mpsc::error::TryRecvError::Disconnected => TryRecvError::Disconnected,
        })
    }

    /// The items queued now, without waiting.
    pub fn try_iter(&self) -> impl Iterator<Item = T> + '_ {
        std::iter::from_fn(|| self.try_recv().ok())
    }

    /// Blocks until an item comes; an error once the engine has stopped
    /// and everything queued was read.
    pub fn recv(&self) -> Result<T, RecvError> {
        self.wait(None).map_err(|_| RecvError)
    }

    /// Blocks until an item comes or `timeout` passes.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.wait(Some(Instant::now() + timeout))
    }

    /// Polls the queue with a waker that unparks this thread, parking in
    /// between (tokio's own `blocking_recv` has no timeout and refuses to
    /// run on a runtime's thread).
    fn wait(&self, deadline: Option<Instant>) -> Result<T, RecvTimeoutError> {
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut rx = self.0.borrow_mut();
        loop {
            match rx.poll_recv(&mut cx) {
                Poll::Ready(Some(item)) => return Ok(item),
                Poll::Ready(None) => return Err(RecvTimeoutError::Disconnected),
                Poll::Pending => match deadline {
                    None => std::thread::park(),
                    Some(at) => {
                        let left = at.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            return Err(RecvTimeoutError::Timeout);
                        }
                        std::thread::park_timeout(left);
                    }
                },
            }
        }
    }
}

/// Wakes a thread parked in [`EngineReceiver::wait`].
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blocked_reader_gets_what_another_thread_sends_and_then_the_end() {
        let metrics = Arc::new(AudioMetrics::default());
        let (mut outlet, rx) = queue(4, "test");
        let sender = {
            let metrics = metrics.clone();
            std::thread::spawn(move || {
                for k in 0..3 {
                    std::thread::sleep(Duration::from_millis(20));
                    outlet.send(k, &metrics);
                }
            })
        };
        assert_eq!(rx.recv(), Ok(0));
        assert_eq!(rx.recv_timeout(Duration::from_secs(1)), Ok(1));
        assert_eq!(rx.recv_timeout(Duration::from_secs(1)), Ok(2));
        sender.join().unwrap();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(1)),
            Err(RecvTimeoutError::Disconnected)
        );
        assert_eq!(rx.recv(), Err(RecvError));
    }

    #[test]
    fn a_reader_that_waits_in_vain_times_out() {
        let (_outlet, rx) = queue::<u32>(4, "test");
        let started = Instant::now();
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(50)),
            Err(RecvTimeoutError::Timeout)
        );
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn what_does_not_fit_is_dropped_and_counted_and_the_rest_kept_in_order() {
        let metrics = AudioMetrics::default();
        let (mut outlet, rx) = queue(2, "test");
        for k in 0..5 {
            outlet.send(k, &metrics);
        }
        assert_eq!(AudioMetrics::get(&metrics.events_dropped), 3);
        assert_eq!(rx.try_iter().collect::<Vec<_>>(), [0, 1]);
        outlet.send(5, &metrics);
        assert_eq!(rx.try_recv(), Ok(5));
        assert_eq!(AudioMetrics::get(&metrics.events_dropped), 3);
    }
}
