//! The HTTP/1 listener with the limits a box on a shared network needs:
//! bounded header size, a header read timeout, bounded request time, and
//! a graceful stop.

use std::net::SocketAddr;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::guard::Connection;
use super::{StatusState, router};

/// Request head larger than this is refused (hyper answers 431).
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// A client must send its request head within this long.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// In-flight requests get this long after the stop signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds the status address; port 0 picks a free port.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, std::io::Error> {
    TcpListener::bind(addr).await
}

/// Serves until `cancel` fires, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    state: StatusState,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    tokio::spawn(super::history::sample(state.clone(), cancel.clone()));
    let app = router(state);
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    loop {
        let (stream, remote) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, don't spin.
                    tracing::warn!(error = %e, "status server: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        // Who is asking and on which address: for the Host allowlist and
        // the sign-in rate limit (never taken from headers).
        let connection = Connection { remote, local };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
            req.extensions_mut().insert(connection);
            app.clone().oneshot(req)
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("status server: requests still open at stop");
    }
    Ok(())
}
