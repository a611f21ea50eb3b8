//! Serving an axum router over TLS (or plain HTTP on loopback) with hyper, HTTP/1.1
//! only: the one bounded server of the manager's API and of the daemon's `/metrics`.
//!
//! Every connection is bounded: a cap on how many are open at once
//! ([`ServerLimits::max_connections`]), a TLS handshake timeout, a header-read
//! timeout (from the connection's start, and from the first byte of each later
//! request) and an idle timeout (a kept-alive connection with no request in flight,
//! or a response nobody reads). A request in flight (a 55 s long-poll) is never cut
//! by these; its body is bounded by the HTTP layer's own timeout.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;
use tracing::{debug, info, warn};

/// The limits every connection is held to. The defaults suit a manager facing the
/// internet; `serve`'s flags set each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections open at once (TLS handshakes included). Over it, a new connection
    /// is accepted and closed at once, so that it holds no file descriptor and the
    /// kernel's backlog keeps moving. See [`connection_cap`] for how the file
    /// descriptor limit lowers it.
    pub max_connections: usize,
    /// How long a client may take to finish its TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// How long a client may take to send a whole request head: counted from the
    /// connection's start (after the handshake) for its first request, from the
    /// first byte of a later one. A client dribbling a header byte by byte is cut
    /// when it runs out, whatever its pace.
    pub header_read_timeout: Duration,
    /// How long a kept-alive connection may sit with no request in flight and no
    /// byte moving before it is closed (also a response whose reader has stopped).
    /// A request in flight, such as one of the manager's long-polls,
    /// is never cut by it.
    pub idle_timeout: Duration,
}

impl Default for ServerLimits {
    /// 4,096 connections (each costs a file descriptor and a few KiB: a fleet of
    /// thousands of daemons, each with a long-poll and a report connection, fits
    /// behind a balancer of a few managers); 10 s for a handshake or a request head
    /// (a slow mobile link needs well under 1 s; Go's and nginx's defaults are of
    /// this order); 60 s idle (longer than a daemon's 10 s report interval, so its
    /// report connection is reused rather than re-handshaken).
    fn default() -> Self {
        Self {
            max_connections: 4096,
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// File descriptors kept back from connections for everything else the process
/// opens: the listener, the store (database, WAL, shared memory, journal), the
/// runtime's epoll and event fds, the topology file, standard streams, logs. 64 is
/// several times what a running manager holds besides its connections (counted in
/// /proc/<pid>/fd: about 15).
pub const RESERVED_FDS: u64 = 64;

/// The connection cap in force: `requested`, lowered so that connections can never
/// take the file descriptors the process needs for anything else (`fd_limit` is the
/// soft RLIMIT_NOFILE, `None` when unknown). At least 1.
pub fn connection_cap(requested: usize, fd_limit: Option<u64>) -> usize {
    let by_fds = fd_limit.map_or(usize::MAX, |limit| {
        usize::try_from(limit.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX)
    });
    requested.min(by_fds).max(1)
}

/// How long [`serve`] waits, once shutdown is asked for, for requests being
/// answered to finish before it returns anyway (long-polls in flight are dropped;
/// idle connections are closed at once).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The largest read buffer of a connection, hence the largest request head:
/// 64 KiB, well over any head a client of this API sends (a few hundred bytes), and
/// small enough that thousands of clients flooding heads hold little memory.
const MAX_BUF: usize = 64 * 1024;

/// At most one line per this period for each kind of repeated warning (refused
/// connections, accept errors), with a count of what it stands for.
const WARN_EVERY: Duration = Duration::from_secs(5);

/// Serves `router` on `listener` until `shutdown` completes, holding every
/// connection to `limits`. With `tls` `None` the listener must be on loopback
/// (checked by the caller's flags). After `shutdown` it stops accepting, closes idle
/// connections, and returns once the connections in flight have finished or after
/// [`SHUTDOWN_GRACE`], whichever comes first.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut refused = RateLimited::new(WARN_EVERY);
    let mut accept_errors = RateLimited::new(WARN_EVERY);
    let mut backoff = Duration::ZERO;
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors (EMFILE, ENFILE) and the like: the
                    // connection stays in the backlog; pause, growing the pause while
                    // it lasts, rather than spin.
                    if let Some(count) = accept_errors.hit(Instant::now()) {
                        warn!(error = %e, count, "accept failed");
                    }
                    backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(backoff) => continue,
                    }
                }
            },
        };
        backoff = Duration::ZERO;
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Over the cap: close it now (the client sees the connection end) rather
            // than leave it to time out in the backlog.
            drop(tcp);
            if let Some(count) = refused.hit(Instant::now()) {
                warn!(
                    count,
                    max_connections = max,
                    "connections refused: at the connection cap"
                );
            }
            continue;
        };
        let router = router.clone();
        let acceptor = acceptor.clone();
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            connection(tcp, peer, acceptor, router, limits, stop).await;
            drop(slot);
        });
    }
    drop(listener);
    info!("stopped accepting connections");
    let _ = stop_tx.send(true);
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(SHUTDOWN_GRACE, slots.acquire_many(all))
        .await
        .is_err()
    {
        info!(
            open = max.saturating_sub(slots.available_permits()),
            "connections still open after the grace period: dropped"
        );
    }
}

/// One connection, from its TLS handshake to its end.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: Option<TlsAcceptor>,
    router: Router,
    limits: ServerLimits,
    mut stop: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    match acceptor {
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(tcp));
            let stream = tokio::select! {
                r = handshake => r,
                _ = stop.wait_for(|s| *s) => return,
            };
            match stream {
                Ok(Ok(stream)) => http(stream, peer, router, limits, stop).await,
                Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => debug!(%peer, "TLS handshake timed out"),
            }
        }
        None => http(tcp, peer, router, limits, stop).await,
    }
}

/// Serves HTTP/1.1 on `io` under the header-read and idle timeouts, until the
/// client leaves, a timeout cuts it, or shutdown.
async fn http<IO>(
    io: IO,
    peer: SocketAddr,
    router: Router,
    limits: ServerLimits,
    mut stop: watch::Receiver<bool>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new(Instant::now()));
    let io = Watched {
        inner: io,
        activity: activity.clone(),
    };
    let in_service = activity.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let busy = in_service.begin();
        let answer = router.clone().oneshot(request);
        async move {
            let response = answer.await;
            drop(busy);
            response
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // hyper's own header timer starts when it waits for a head, including on a
        // kept-alive connection (hyper ≥ 1.6), so it cannot tell idle from slow; the
        // watchdog below applies both. hyper's, at their sum, is only a backstop.
        .header_read_timeout(limits.header_read_timeout + limits.idle_timeout)
        .max_buf_size(MAX_BUF);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut stopping = false;
    loop {
        let deadline = activity.deadline(&limits);
        let changed = activity.changed.notified();
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    debug!(%peer, error = %e, "connection ended");
                }
                return;
            }
            () = sleep_until(deadline) => {
                if let Some(cut) = activity.expired(&limits, Instant::now()) {
                    debug!(%peer, reason = cut, "connection closed");
                    return;
                }
            }
            () = changed => {}
            _ = stop.wait_for(|s| *s), if !stopping => {
                if !activity.busy() {
                    return;
                }
                // Finish the request in flight (bounded by `serve`'s grace), then close.
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// What a connection is doing, as its watchdog sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request head since this instant (the connection's start, or
    /// the first byte of a later request).
    Head(Instant),
    /// No request in flight and no byte of the next one, since this instant.
    Idle(Instant),
    /// This many requests are being answered (1: HTTP/1.1 has no multiplexing).
    Busy(usize),
}

/// A connection's activity, shared by its IO wrapper, its service and its watchdog.
#[derive(Debug)]
struct Activity {
    phase: Mutex<Phase>,
    /// The last time a byte was written, in ms since `start`: a response being
    /// read, however slowly, is not idle.
    last_write_ms: AtomicU64,
    start: Instant,
    /// Woken when the phase changes in a way that moves the deadline.
    changed: Notify,
}

impl Activity {
    fn new(now: Instant) -> Self {
        Self {
            phase: Mutex::new(Phase::Head(now)),
            last_write_ms: AtomicU64::new(0),
            start: now,
            changed: Notify::new(),
        }
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        // A poisoned lock only means a panic elsewhere while holding it; the phase
        // itself is always a valid value.
        self.phase
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn busy(&self) -> bool {
        matches!(*self.phase(), Phase::Busy(_))
    }

    /// A request's head is in: it is in flight until the returned guard drops.
    fn begin(self: &Arc<Self>) -> Busy {
        let mut phase = self.phase();
        *phase = match *phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            Phase::Head(_) | Phase::Idle(_) => Phase::Busy(1),
        };
        drop(phase);
        self.changed.notify_one();
        Busy(self.clone())
    }

    fn end(&self) {
        let mut phase = self.phase();
        *phase = match *phase {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            Phase::Busy(_) | Phase::Head(_) | Phase::Idle(_) => Phase::Idle(Instant::now()),
        };
        drop(phase);
        self.changed.notify_one();
    }

    fn read(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let mut phase = self.phase();
        if let Phase::Idle(_) = *phase {
            *phase = Phase::Head(Instant::now());
            drop(phase);
            self.changed.notify_one();
        }
    }

    fn wrote(&self, bytes: usize) {
        if bytes > 0 {
            let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last_write_ms.store(ms, Ordering::Relaxed);
        }
    }

    /// When the connection is cut unless something happens first.
    fn deadline(&self, limits: &ServerLimits) -> Option<Instant> {
        match *self.phase() {
            Phase::Head(since) => Some(since + limits.header_read_timeout),
            Phase::Idle(since) => {
                let wrote =
                    self.start + Duration::from_millis(self.last_write_ms.load(Ordering::Relaxed));
                Some(since.max(wrote) + limits.idle_timeout)
            }
            Phase::Busy(_) => None,
        }
    }

    /// Why the connection must be cut at `now`, if it must.
    fn expired(&self, limits: &ServerLimits, now: Instant) -> Option<&'static str> {
        let deadline = self.deadline(limits)?;
        if now < deadline {
            return None;
        }
        Some(match *self.phase() {
            Phase::Head(_) => "header read timeout",
            Phase::Idle(_) | Phase::Busy(_) => "idle timeout",
        })
    }
}

/// A request in flight; ends it when dropped (answered, or dropped with its
/// connection).
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// The connection's byte stream, reporting reads and writes to its [`Activity`].
struct Watched<IO> {
    inner: IO,
    activity: Arc<Activity>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            self.activity.read(buf.filled().len() - before);
        }
        poll
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            self.activity.wrote(n);
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = poll {
            self.activity.wrote(n);
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A warning repeated at most once per period: [`RateLimited::hit`] counts an
/// event and says, when it is time for a line, how many events it stands for.
#[derive(Debug)]
struct RateLimited {
    every: Duration,
    last: Option<Instant>,
    count: u64,
}

impl RateLimited {
    fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            count: 0,
        }
    }

    /// Counts one event at `now`; `Some(events since the last line)` when a line is due.
    fn hit(&mut self, now: Instant) -> Option<u64> {
        self.count += 1;
        match self.last {
            Some(last) if now.duration_since(last) < self.every => None,
            Some(_) | None => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.count))
            }
        }
    }
}

/// Whether plain HTTP may be served on `addr` (loopback only).
pub fn plain_http_allowed(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_file_descriptors_for_the_rest() {
        assert_eq!(connection_cap(4096, Some(1024)), 960);
        assert_eq!(connection_cap(4096, Some(65536)), 4096);
        assert_eq!(connection_cap(100, None), 100);
        assert_eq!(connection_cap(4096, Some(10)), 1);
    }

    #[test]
    fn a_repeated_warning_is_one_line_per_period_with_its_count() {
        let t0 = Instant::now();
        let mut w = RateLimited::new(Duration::from_secs(5));
        assert_eq!(w.hit(t0), Some(1));
        for i in 1..1000 {
            assert_eq!(w.hit(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(w.hit(t0 + Duration::from_secs(5)), Some(1000));
    }

    #[test]
    fn deadlines_follow_the_phase() {
        let limits = ServerLimits {
            max_connections: 1,
            tls_handshake_timeout: Duration::from_secs(1),
            header_read_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(3),
        };
        let t0 = Instant::now();
        let a = Arc::new(Activity::new(t0));
        // A new connection has the header timeout from its start.
        assert_eq!(a.deadline(&limits), Some(t0 + limits.header_read_timeout));
        // A request in flight is never cut.
        let busy = a.begin();
        assert_eq!(a.deadline(&limits), None);
        assert_eq!(a.expired(&limits, t0 + Duration::from_secs(3600)), None);
        drop(busy);
        // Then idle: the idle timeout, until a byte of the next request.
        let idle = a.deadline(&limits).unwrap();
        assert!(idle >= t0 + limits.idle_timeout);
        assert_eq!(a.expired(&limits, idle), Some("idle timeout"));
        a.read(1);
        let head = a.deadline(&limits).unwrap();
        assert!(head >= t0 + limits.header_read_timeout && head < idle);
        // More bytes of the same head do not move its deadline.
        a.read(1);
        assert_eq!(a.deadline(&limits), Some(head));
        assert_eq!(a.expired(&limits, head), Some("header read timeout"));
    }
}
