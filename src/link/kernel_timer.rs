//! Timers the kernel keeps (timerfd), for the ones armed every packet.
//!
//! tokio's timer wheel keeps a timer due after the current 64 ms block one
//! level up, and wakes its thread when that block ends to move the timer
//! down. A timer armed 20 or 30 ms ahead every 20 ms (the frame clock of
//! `call`, the socket's backstop in [`send_clocked`](super::send_clocked))
//! is due in the next block about every third time: at almost every block's
//! end the thread wakes to move it, does nothing else and sleeps again,
//! some 15 times a second. A timerfd in epoll wakes the thread only when it
//! expires, and re-arming it before then costs one syscall and no wake-up.

use std::io;
use std::os::fd::OwnedFd;
use std::task::{Context, Poll};
use std::time::Duration;

use rustix::time::{
    Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
    timerfd_settime,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// A monotonic timerfd registered with the runtime's epoll.
pub(crate) struct KernelTimer {
    fd: AsyncFd<OwnedFd>,
}

/// `fd` in the runtime's epoll, for reading only.
pub(super) fn in_epoll(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `AsyncFd` owns `fd`, an open descriptor that stays open
    // and the same until the `AsyncFd` drops it.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs() as _,
        tv_nsec: d.subsec_nanos() as _,
    }
}

impl KernelTimer {
    /// A disarmed timer. Needs a tokio runtime with I/O enabled.
    pub(crate) fn new() -> io::Result<Self> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
        )?;
        Ok(Self { fd: in_epoll(fd)? })
    }

    /// A timer that expires every `period`, the first time one period from
    /// now. Expirations the owner was too late for are counted, not lost.
    pub(crate) fn periodic(period: Duration) -> io::Result<Self> {
        let timer = Self::new()?;
        timer.set(period, period)?;
        Ok(timer)
    }

    /// Arms the timer to expire once, `after` from now, in place of any
    /// expiry it was armed for.
    pub(crate) fn arm_in(&self, after: Duration) -> io::Result<()> {
        // A zero `it_value` would disarm it: the shortest wait is 1 ns.
        self.set(after.max(Duration::from_nanos(1)), Duration::ZERO)
    }

    /// Disarms the timer; an expiry not yet taken is forgotten.
    pub(crate) fn disarm(&self) -> io::Result<()> {
        self.set(Duration::ZERO, Duration::ZERO)
    }

    fn set(&self, value: Duration, interval: Duration) -> io::Result<()> {
        let spec = Itimerspec {
            it_interval: timespec(interval),
            it_value: timespec(value),
        };
        timerfd_settime(self.fd.get_ref(), TimerfdTimerFlags::empty(), &spec)?;
        Ok(())
    }

    /// How many times the timer expired since the last call that returned
    /// `Ready`; `Pending` (with `cx` woken at the next expiry) if none.
    pub(crate) fn poll_expired(&self, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        loop {
            let mut guard = match self.fd.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(ready) => ready?,
            };
            let mut count = [0u8; 8];
            // A timerfd read gives the expiry count, or fails with
            // `WouldBlock` when there is none: readiness is then cleared
            // and the loop waits for the next.
            match guard.try_io(|fd| rustix::io::read(fd.get_ref(), &mut count).map_err(Into::into))
            {
                Ok(Ok(_)) => return Poll::Ready(Ok(u64::from_ne_bytes(count))),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }

    /// Waits for the next expiry; returns how many there were since the
    /// last. Cancel-safe: an expiry is only taken when this returns.
    pub(crate) async fn expired(&self) -> io::Result<u64> {
        std::future::poll_fn(|cx| self.poll_expired(cx)).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::Wake;

    use tokio::time::{Instant, timeout};

    use super::*;

    const WAIT: Duration = Duration::from_secs(2);

    struct Noop;
    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }

    fn poll_now(timer: &KernelTimer) -> Poll<io::Result<u64>> {
        let waker = Arc::new(Noop).into();
        timer.poll_expired(&mut Context::from_waker(&waker))
    }

    #[tokio::test]
    async fn a_periodic_timer_expires_every_period_and_counts_missed_ones() {
        let timer = KernelTimer::periodic(Duration::from_millis(20)).unwrap();
        let start = Instant::now();
        assert_eq!(timeout(WAIT, timer.expired()).await.unwrap().unwrap(), 1);
        assert!(start.elapsed() >= Duration::from_millis(20));
        // The owner was busy for five periods: they come out at once, counted.
        let busy = Instant::now();
        std::thread::sleep(Duration::from_millis(100));
        let missed = timeout(WAIT, timer.expired()).await.unwrap().unwrap();
        // A loaded machine may oversleep: at most one more per 20 ms taken.
        let taken = busy.elapsed();
        let most = taken.as_millis() as u64 / 20 + 1;
        assert!(
            (4..=most).contains(&missed),
            "{missed} expiries in {taken:?}"
        );
        assert!(
            poll_now(&timer).is_pending(),
            "none left until the next period"
        );
    }

    #[tokio::test]
    async fn re_arming_replaces_the_earlier_expiry() {
        let timer = KernelTimer::new().unwrap();
        assert!(poll_now(&timer).is_pending(), "a new timer is disarmed");
        timer.arm_in(Duration::from_millis(30)).unwrap();
        let start = Instant::now();
        // Pushed later before it expires, as each packet's send pushes the
        // backstop: it expires once, at the later time.
        let mut armed = Instant::now();
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let early = poll_now(&timer);
            // Unless a loaded machine slept past the expiry itself.
            if armed.elapsed() < Duration::from_millis(30) {
                assert!(early.is_pending(), "expired before its time");
            }
            timer.arm_in(Duration::from_millis(30)).unwrap();
            armed = Instant::now();
        }
        assert_eq!(timeout(WAIT, timer.expired()).await.unwrap().unwrap(), 1);
        assert!(start.elapsed() >= Duration::from_millis(80));
        assert!(
            poll_now(&timer).is_pending(),
            "a one-shot timer expires once"
        );
    }

    #[tokio::test]
    async fn a_disarmed_timer_never_expires() {
        let timer = KernelTimer::new().unwrap();
        timer.arm_in(Duration::from_millis(10)).unwrap();
        timer.disarm().unwrap();
        assert!(
            timeout(Duration::from_millis(50), timer.expired())
                .await
                .is_err()
        );
    }
}
