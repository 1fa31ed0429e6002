//! The HTTP/1.1 connection layer: accepts connections up to a limit, and closes those that
//! take too long to send their request headers, sit idle between requests, or trickle a body.
//!
//! Each connection has a phase, kept by the socket wrapper (first byte of a request: `Head`)
//! and by the service (headers parsed: `Request`; answer produced: `Idle`). A watchdog closes
//! the connection when the phase's deadline passes: `--http-header-timeout-secs` from the first
//! byte of a request head, `--http-idle-timeout-secs` from the end of the last answer (or from
//! accept). The body of a request must arrive within `--http-body-timeout-secs` of its headers
//! (a deadline on the body itself: readers get an error, the handler answers 408).
//! Over `--max-connections`, a new connection gets a 503 and is closed, counted in
//! `shiftserve_connections_refused_total`.

use crate::metrics::Metrics;
use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tower::ServiceExt;

/// Connection limits and timeouts.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

const IDLE: u64 = 0;
const HEAD: u64 = 1;
const REQUEST: u64 = 2;

/// Phase and the time it began (ms since the connection's epoch), in one word: phase in the
/// low 2 bits.
struct ConnState {
    word: AtomicU64,
    epoch: Instant,
    changed: Notify,
}

impl ConnState {
    fn new() -> ConnState {
        ConnState {
            word: AtomicU64::new(IDLE),
            epoch: Instant::now(),
            changed: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn set(&self, phase: u64) {
        self.word
            .store((self.now_ms() << 2) | phase, Ordering::SeqCst);
        self.changed.notify_one();
    }

    /// Idle -> Head on the first byte of a request.
    fn bytes_arrived(&self) {
        let w = self.word.load(Ordering::SeqCst);
        if w & 3 == IDLE {
            let new = (self.now_ms() << 2) | HEAD;
            if self
                .word
                .compare_exchange(w, new, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                self.changed.notify_one();
            }
        }
    }

    fn load(&self) -> (u64, Instant) {
        let w = self.word.load(Ordering::SeqCst);
        (w & 3, self.epoch + Duration::from_millis(w >> 2))
    }
}

/// Resolves when the connection overstays its phase; the reason for the metric.
async fn watchdog(st: Arc<ConnState>, limits: ConnLimits) -> &'static str {
    loop {
        let changed = st.changed.notified();
        let (phase, since) = st.load();
        let (deadline, why) = match phase {
            IDLE => (since + limits.idle_timeout, "idle_timeout"),
            HEAD => (since + limits.header_timeout, "header_timeout"),
            _ => {
                changed.await;
                continue;
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {
                if st.load() == (phase, since) {
                    return why;
                }
            }
            _ = changed => {}
        }
    }
}

/// The socket, telling the connection state when bytes arrive.
struct Tracked {
    io: TcpStream,
    st: Arc<ConnState>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.st.bytes_arrived();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The error a request body yields once its deadline has passed.
#[derive(Debug)]
pub struct BodyTimeout;

impl std::fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not arrive in time")
    }
}

impl std::error::Error for BodyTimeout {}

/// True if `e` (or what it wraps) is a [`BodyTimeout`].
pub fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<BodyTimeout>() {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A request body that must arrive before a deadline.
pub struct DeadlineBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(r) => Poll::Ready(r.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                if self.deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Connection counters shared with the accept loop.
pub struct ConnCounters {
    pub open: AtomicUsize,
}

/// Soft limit on open files of this process (`/proc/self/limits`), if known.
pub fn open_files_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The default `--max-connections`: 4096, or less when the open-files limit is lower (64 files
/// are left for models, logs and the listener).
pub fn default_max_connections() -> usize {
    match open_files_limit() {
        Some(n) => n.saturating_sub(64).clamp(16, 4096),
        None => 4096,
    }
}

const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\nretry-after: 1\r\ncontent-length: 52\r\n\r\n{\"error\":\"too many open connections, retry shortly\"}";

/// Accepts and serves connections until `shutdown` resolves, then lets open connections finish
/// their current request (graceful) and returns when all are closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    metrics: Arc<Metrics>,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let counters = Arc::new(ConnCounters {
        open: AtomicUsize::new(0),
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .keep_alive(true)
        .header_read_timeout(None::<Duration>);
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    let mut last_accept_error: Option<Instant> = None;
    loop {
        let (stream, _peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: log (at most once a second), back off.
                    if last_accept_error.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                        tracing::warn!(error = %e, "accept failed");
                        last_accept_error = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        if counters.open.load(Ordering::SeqCst) >= limits.max_connections {
            metrics.connections_refused.inc();
            tokio::spawn(async move {
                let stream = stream;
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    let mut rest = REFUSED;
                    while !rest.is_empty() && stream.writable().await.is_ok() {
                        match stream.try_write(rest) {
                            Ok(n) => rest = &rest[n..],
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(_) => break,
                        }
                    }
                })
                .await;
                if let Ok(s) = stream.into_std() {
                    let _ = s.shutdown(std::net::Shutdown::Write);
                }
            });
            continue;
        }
        counters.open.fetch_add(1, Ordering::SeqCst);
        metrics.open_connections.inc();
        let st = Arc::new(ConnState::new());
        let io = TokioIo::new(Tracked {
            io: stream,
            st: st.clone(),
        });
        let svc_state = st.clone();
        let router = router.clone();
        let body_timeout = limits.body_timeout;
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            svc_state.set(REQUEST);
            let deadline = Box::pin(tokio::time::sleep(body_timeout));
            let req = req.map(|inner| Body::new(DeadlineBody { inner, deadline }));
            let router = router.clone();
            let st = svc_state.clone();
            async move {
                let resp = router.oneshot(req).await;
                st.set(IDLE);
                resp
            }
        });
        let conn = graceful.watch(builder.serve_connection(io, service));
        let counters = counters.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            tokio::select! {
                r = conn => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                }
                why = watchdog(st, limits) => {
                    metrics.connections_closed.with_label_values(&[why]).inc();
                    tracing::debug!(reason = why, "connection closed");
                }
            }
            counters.open.fetch_sub(1, Ordering::SeqCst);
            metrics.open_connections.dec();
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
