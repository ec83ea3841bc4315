//! Reading the peer connection's UDP socket on the kiosk's own send clock.
//!
//! During a live session the kiosk sends one RTP packet every 40 ms (or
//! 20 ms, `audio.opus_frame_ms`) and the agent sends one every 20 ms back,
//! at an unrelated phase. With the stock socket each arriving datagram
//! wakes the runtime's thread through epoll, so the thread wakes once to
//! send and once or twice to receive per packet sent. Each
//! wake-up (epoll, a context switch, a turn of the WebRTC driver) costs far
//! more than the packet it brings.
//!
//! While the kiosk is streaming, the socket here is taken out of epoll and
//! read whenever the kiosk sends media: a datagram waits at most one packet
//! interval (on average half of one) in the kernel's queue, and both
//! directions are served by one wake-up. The agent's audio goes to a jitter
//! buffer of several packets, RTCP and RTVI messages are not time-critical
//! to 40 ms, and ICE consent answers have seconds of slack. When the media
//! sends stop (DTX silence, the end of a session, a lost link) a backstop
//! timer reads the queue and the socket goes back to epoll at once; during
//! set-up (ICE, DTLS), before any media is sent, it is read the stock way.
//!
//! The socket is also never registered for writing: a UDP send only blocks
//! on a full send buffer, and waiting for room would have the kernel raise
//! an edge for every datagram it frees. A send that finds the buffer full
//! is dropped and counted, as the network would drop it.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::time::Instant;
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime,
    TokioRuntime, Transmit, UdpSockRef, UdpSocketState,
};

use super::kernel_timer::{KernelTimer, in_epoll};

/// Media sends further apart than this are not a stream: the kiosk sends
/// every 20 or 40 ms (`audio.opus_frame_ms`), and a tick a loaded machine
/// makes late still belongs to the stream.
const STREAM_GAP: Duration = Duration::from_millis(50);
/// Media sends in a row, each within [`STREAM_GAP`] of the last, before the
/// socket leaves epoll: a stream, not a burst of held speech followed by
/// silence.
const STREAMING_AFTER: u32 = 10;

/// Everything but the UDP sockets is the stock tokio runtime's.
static TOKIO: TokioRuntime = TokioRuntime;

/// The tokio runtime, with UDP sockets read on the kiosk's send clock.
#[derive(Debug, Default)]
pub(crate) struct SendClockedRuntime;

impl Runtime for SendClockedRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        TOKIO.spawn(future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        Ok(Arc::new(SendClockedSocket::new(socket)?))
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        TOKIO.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        TOKIO.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        TOKIO.resolve_host(host)
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        TOKIO.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        TOKIO.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        TOKIO.block_on(future)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        TOKIO.yield_now()
    }

    fn name(&self) -> &'static str {
        "tokio (UDP read on the send clock)"
    }
}

/// A UDP socket read through epoll until the kiosk streams media, then on
/// each media send.
struct SendClockedSocket {
    socket: std::net::UdpSocket,
    /// GSO/GRO and ECN state of the socket, probed once.
    batch: UdpSocketState,
    /// Reads the queue when the media sends stop; a kernel timer, pushed
    /// later at each packet without a wake-up (see `kernel_timer`).
    backstop: KernelTimer,
    receive: Mutex<Receive>,
}

impl fmt::Debug for SendClockedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendClockedSocket")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

/// How the receiver is woken.
enum Wake {
    /// By epoll, through a duplicate of the socket's descriptor registered
    /// for reading only (dropping it takes the socket out of epoll).
    Readable(AsyncFd<OwnedFd>),
    /// By the next media send, or, if the sends stop, by the backstop,
    /// which reads the queue and hands the socket back to epoll. Armed
    /// (`true`) once a read since the last send found the queue empty:
    /// until the next send, or the backstop, the queue is not read again.
    SendClock(bool),
}

struct Receive {
    wake: Wake,
    /// The waiting receiver, woken by a media send.
    waker: Option<Waker>,
    last_media_send: Option<Instant>,
    /// Media sends in a row within [`STREAM_GAP`] of each other.
    regular_sends: u32,
}

impl SendClockedSocket {
    fn new(socket: std::net::UdpSocket) -> io::Result<Self> {
        // Epoll and the backstop timers are the runtime's; the driver always
        // binds its sockets on it, so this is a bug if it fails, not a panic.
        tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        socket.set_nonblocking(true)?;
        let batch = UdpSocketState::new(UdpSockRef::from(&socket))?;
        let readable = readable(&socket)?;
        Ok(Self {
            socket,
            batch,
            backstop: KernelTimer::new()?,
            receive: Mutex::new(Receive {
                wake: Wake::Readable(readable),
                waker: None,
                last_media_send: None,
                regular_sends: 0,
            }),
        })
    }

    fn receive(&self) -> MutexGuard<'_, Receive> {
        // The state holds no invariant a panicking holder could break.
        self.receive.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One non-blocking read; `Ok(0)` when nothing is queued.
    fn try_recv(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> io::Result<usize> {
        match self.batch.recv(UdpSockRef::from(&self.socket), bufs, meta) {
            Ok(n) => {
                // quinn-udp reports a zero-length datagram with stride 0; the
                // driver divides by the stride.
                for m in &mut meta[..n] {
                    m.stride = m.stride.max(1);
                }
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }
}

/// A duplicate of the socket's descriptor in epoll, for reading only.
fn readable(socket: &std::net::UdpSocket) -> io::Result<AsyncFd<OwnedFd>> {
    in_epoll(OwnedFd::from(socket.try_clone()?))
}

/// RTP, not RTCP, STUN or DTLS (RFC 7983, RFC 5761): what the kiosk sends
/// every packet interval while it streams.
fn is_rtp(datagram: &[u8]) -> bool {
    matches!(datagram, [first, second, ..]
        if (128..=191).contains(first) && !(192..=223).contains(second))
}

impl Receive {
    fn streaming(&self, now: Instant) -> bool {
        self.regular_sends >= STREAMING_AFTER
            && self
                .last_media_send
                .is_some_and(|last| now.saturating_duration_since(last) <= STREAM_GAP)
    }

    fn remember(&mut self, waker: &Waker) {
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            self.waker = Some(waker.clone());
        }
    }
}

impl AsyncUdpSocket for SendClockedSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    fn max_gso_segments(&self) -> usize {
        self.batch.max_gso_segments()
    }

    fn max_gro_segments(&self) -> usize {
        self.batch.gro_segments()
    }

    fn poll_send(&self, _cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        match self
            .batch
            .try_send(UdpSockRef::from(&self.socket), transmit)
        {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                metrics::counter!("kiosk_link_udp_send_buffer_full_total").increment(1);
            }
            Err(e) => return Poll::Ready(Err(e)),
        }
        if is_rtp(transmit.contents) {
            let now = Instant::now();
            let mut receive = self.receive();
            let regular = receive
                .last_media_send
                .is_some_and(|last| now.saturating_duration_since(last) <= STREAM_GAP);
            receive.regular_sends = if regular {
                receive.regular_sends.saturating_add(1)
            } else {
                0
            };
            receive.last_media_send = Some(now);
            if receive.streaming(now) {
                // Out of epoll, or the backstop disarmed: this send reads
                // the socket.
                receive.wake = Wake::SendClock(false);
                // Wake the receiver to read it.
                if let Some(waker) = receive.waker.take() {
                    waker.wake();
                }
            }
        }
        Poll::Ready(Ok(transmit.contents.len()))
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut receive = self.receive();
        loop {
            let now = Instant::now();
            if matches!(receive.wake, Wake::SendClock(_)) && !receive.streaming(now) {
                self.backstop.disarm()?;
                receive.wake = Wake::Readable(readable(&self.socket)?);
            }
            match &mut receive.wake {
                Wake::Readable(fd) => {
                    let mut guard = match fd.poll_read_ready(cx) {
                        Poll::Pending => {
                            receive.remember(cx.waker());
                            return Poll::Pending;
                        }
                        Poll::Ready(ready) => ready?,
                    };
                    let read = guard.try_io(|_| match self.try_recv(bufs, meta)? {
                        0 => Err(io::ErrorKind::WouldBlock.into()),
                        n => Ok(n),
                    });
                    if let Ok(result) = read {
                        return Poll::Ready(result);
                    }
                    // Read dry: epoll's readiness is cleared; wait for the next.
                }
                Wake::SendClock(armed) => {
                    // Armed means found empty since the last send: the driver
                    // polls again for its own reasons (about twice a packet),
                    // and asking the kernel each time is a syscall for nothing.
                    if *armed {
                        match self.backstop.poll_expired(cx) {
                            Poll::Pending => {
                                receive.remember(cx.waker());
                                return Poll::Pending;
                            }
                            Poll::Ready(expired) => {
                                expired?;
                                *armed = false;
                            }
                        }
                    }
                    let n = self.try_recv(bufs, meta)?;
                    if n > 0 {
                        return Poll::Ready(Ok(n));
                    }
                    self.backstop.arm_in(STREAM_GAP)?;
                    *armed = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::task::Wake;

    use super::*;

    const RTP: [u8; 12] = [0x80, 111, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
    const WAIT: Duration = Duration::from_secs(2);

    #[test]
    fn rtp_is_told_from_rtcp_stun_and_dtls() {
        let rtp_marker = [0x80, 111 | 0x80, 0, 1];
        let rtcp_sender_report = [0x80, 200, 0, 6];
        let stun_binding = [0x00, 0x01, 0, 0];
        let dtls_record = [22, 0xfe, 0xfd, 0];
        assert!(is_rtp(&RTP));
        assert!(is_rtp(&rtp_marker));
        assert!(!is_rtp(&rtcp_sender_report));
        assert!(!is_rtp(&stun_binding));
        assert!(!is_rtp(&dtls_record));
        assert!(!is_rtp(&[0x80]));
    }

    /// The kiosk's socket, wrapped as the driver wraps it, and the agent's.
    fn pair() -> (Arc<dyn AsyncUdpSocket>, std::net::UdpSocket) {
        let kiosk = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let agent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        agent.connect(kiosk.local_addr().unwrap()).unwrap();
        let kiosk = SendClockedRuntime.wrap_udp_socket(kiosk).unwrap();
        (kiosk, agent)
    }

    async fn stream(kiosk: &dyn AsyncUdpSocket, agent: &std::net::UdpSocket, packets: u32) {
        for _ in 0..packets {
            kiosk
                .send_to(&RTP, agent.local_addr().unwrap())
                .await
                .unwrap();
        }
    }

    async fn recv(kiosk: &dyn AsyncUdpSocket) -> Vec<u8> {
        let mut buf = [0u8; 1500];
        let (n, _) = tokio::time::timeout(WAIT, kiosk.recv_from(&mut buf))
            .await
            .expect("no datagram within 2 s")
            .unwrap();
        buf[..n].to_vec()
    }

    /// When it was first woken.
    #[derive(Default)]
    struct WokenAt(Mutex<Option<Instant>>);

    impl Wake for WokenAt {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.lock().unwrap().get_or_insert_with(Instant::now);
        }
    }

    fn poll_recv(kiosk: &dyn AsyncUdpSocket, waker: &Waker) -> Poll<io::Result<usize>> {
        let mut buf = [0u8; 1500];
        let mut meta = [RecvMeta::default()];
        kiosk.poll_recv(
            &mut Context::from_waker(waker),
            &mut [IoSliceMut::new(&mut buf)],
            &mut meta,
        )
    }

    #[tokio::test]
    async fn before_media_flows_a_datagram_is_read_when_it_arrives() {
        let (kiosk, agent) = pair();
        // STUN and DTLS during set-up, but no media yet.
        for _ in 0..20 {
            kiosk
                .send_to(&[0, 1, 0, 0], agent.local_addr().unwrap())
                .await
                .unwrap();
        }
        let reader = tokio::spawn(async move { recv(&*kiosk).await });
        tokio::time::sleep(Duration::from_millis(5)).await;
        agent.send(b"dtls flight").unwrap();
        assert_eq!(reader.await.unwrap(), b"dtls flight");
    }

    #[tokio::test]
    async fn while_media_streams_a_datagram_waits_for_the_next_send() {
        let (kiosk, agent) = pair();
        stream(&*kiosk, &agent, STREAMING_AFTER + 1).await;

        let woken = Arc::new(WokenAt::default());
        let waker = Waker::from(Arc::clone(&woken));
        let parked = Instant::now();
        assert!(poll_recv(&*kiosk, &waker).is_pending());
        agent.send(b"agent audio").unwrap();
        // Give the runtime's reactor a turn: were the socket in epoll, the
        // datagram would wake the receiver now.
        tokio::time::sleep(Duration::from_millis(5)).await;
        if let Some(at) = *woken.0.lock().unwrap() {
            // Only the backstop may have woken it, on a machine so slow
            // that the 5 ms took longer than the backstop's wait.
            assert!(at >= parked + STREAM_GAP, "woken by the datagram");
        }

        stream(&*kiosk, &agent, 1).await;
        assert!(woken.0.lock().unwrap().is_some(), "a media send wakes it");
        assert_eq!(recv(&*kiosk).await, b"agent audio");
    }

    #[tokio::test]
    async fn between_sends_an_empty_queue_is_not_read_again() {
        let (kiosk, agent) = pair();
        stream(&*kiosk, &agent, STREAMING_AFTER + 1).await;
        let waker = Waker::from(Arc::new(WokenAt::default()));
        assert!(poll_recv(&*kiosk, &waker).is_pending(), "found empty");
        agent.send(b"agent audio").unwrap();
        // The datagram is queued by now (loopback delivers it within the
        // send call), but a poll before the next send does not look.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let started = Instant::now();
        let again = poll_recv(&*kiosk, &waker);
        if started.elapsed() < STREAM_GAP / 2 {
            assert!(again.is_pending(), "read between sends");
        }
        stream(&*kiosk, &agent, 1).await;
        assert!(matches!(poll_recv(&*kiosk, &waker), Poll::Ready(Ok(1))));
    }

    #[tokio::test]
    async fn when_media_stops_the_socket_goes_back_to_epoll() {
        let (kiosk, agent) = pair();
        stream(&*kiosk, &agent, STREAMING_AFTER + 1).await;
        let backstop = Arc::new(WokenAt::default());
        assert!(poll_recv(&*kiosk, &Waker::from(Arc::clone(&backstop))).is_pending());
        // Nothing more is sent: the backstop wakes the receiver, which
        // hands the socket back to epoll.
        tokio::time::sleep(STREAM_GAP * 3).await;
        assert!(backstop.0.lock().unwrap().is_some(), "the backstop fired");

        let idle = Arc::new(WokenAt::default());
        assert!(poll_recv(&*kiosk, &Waker::from(Arc::clone(&idle))).is_pending());
        tokio::time::sleep(STREAM_GAP * 3).await;
        assert!(
            idle.0.lock().unwrap().is_none(),
            "an idle socket is not polled on a timer"
        );
        agent.send(b"after the stream").unwrap();
        assert_eq!(recv(&*kiosk).await, b"after the stream");
    }
}
