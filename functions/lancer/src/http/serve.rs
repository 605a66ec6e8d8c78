//! The listening loop: every connection's life is bounded, whatever the peer sends or
//! withholds, and whichever protocol it speaks.
//!
//! - A connection that has not sent a whole request head within `HEADER_READ_TIMEOUT` of
//!   its accept is dropped (a silent socket, an HTTP/2 preface and nothing else, a slow
//!   loris on its first request).
//! - A connection with no request in flight for `IDLE_TIMEOUT` is closed (HTTP/1
//!   keep-alive and HTTP/2 alike), so pings or an open idle session hold nothing.
//! - At most `max_connections` are open. Past that, the connection that has gone longest
//!   without a request in flight makes room for the new one; only when every connection
//!   is busy does a new one wait in the kernel's queue. A flood of silent sockets thus
//!   never keeps a real client out.
//! - HTTP/2 gets bounded concurrent streams and keep-alive pings.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;
use tracing::{debug, warn};

/// How long a client has to send a request's headers, from its accept or (for HTTP/1's
/// next request) from the end of the last answer.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may stay open with no request in flight.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most HTTP/2 streams one connection may have open at once.
pub const MAX_STREAMS: u32 = 64;
/// How often an HTTP/2 connection is pinged, and how long the peer has to answer.
const PING_EVERY: Duration = Duration::from_secs(20);
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open requests get to finish once the server is asked to stop.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing connection gets to say goodbye (HTTP/2's GOAWAY) before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// One connection's life as the listening loop sees it.
struct Tracked {
    accepted: Instant,
    /// Requests started on it so far.
    requests: AtomicU64,
    /// Requests whose answer has not been sent whole yet.
    in_flight: AtomicUsize,
    /// When the last answer ended (milliseconds after `accepted`).
    idle_since_ms: AtomicU64,
    /// Set when the loop needs its slot for a newer connection.
    evicted: AtomicBool,
    wake: Notify,
}

impl Tracked {
    fn new() -> Self {
        Self {
            accepted: Instant::now(),
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    /// When it went idle, or `None` while a request is in flight.
    fn idle_since(&self) -> Option<Instant> {
        (self.in_flight.load(Ordering::Acquire) == 0).then(|| {
            self.accepted + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire))
        })
    }

    /// When it is to be closed if nothing changes: a connection that never sent a request
    /// has the header timeout, any other the idle timeout.
    fn deadline(&self) -> Option<Instant> {
        let since = self.idle_since()?;
        Some(if self.requests.load(Ordering::Acquire) == 0 {
            since + HEADER_READ_TIMEOUT
        } else {
            since + IDLE_TIMEOUT
        })
    }

    fn start_request(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    fn evict(&self) {
        self.evicted.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

/// A request in flight, until its answer's body is sent whole (or dropped).
struct InFlight(Arc<Tracked>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let elapsed = self.0.accepted.elapsed().as_millis() as u64;
        self.0.idle_since_ms.store(elapsed, Ordering::Release);
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The watchdog may be sleeping on "in flight"; it has a deadline again.
            self.0.wake.notify_one();
        }
    }
}

/// An answer's body that keeps its request counted as in flight until it is done: an
/// event stream is a request in flight for as long as it runs.
struct Counted {
    inner: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The open connections, for eviction.
#[derive(Default)]
struct Connections {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Tracked>>>,
}

impl Connections {
    fn add(&self, tracked: Arc<Tracked>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, tracked);
        id
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Asks the connection idle the longest to close; false when every one is busy.
    fn evict_the_idlest(&self) -> bool {
        let open = self.lock();
        let idlest = open
            .values()
            .filter(|tracked| !tracked.evicted.load(Ordering::Acquire))
            .filter_map(|tracked| tracked.idle_since().map(|since| (since, tracked)))
            .min_by_key(|(since, _)| *since);
        match idlest {
            Some((_, tracked)) => {
                tracked.evict();
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Tracked>>> {
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, under the rules in this module's
/// header; then lets open requests finish for up to `DRAIN_TIMEOUT`.
pub async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    max_connections: usize,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let builder = Arc::new(protocols());
    let slots = Arc::new(Semaphore::new(max_connections));
    let connections = Arc::new(Connections::default());
    let (stop, stopping) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    warn!(%err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Room is made for a connection that has arrived, never ahead of one: the newest
        // connection may not have sent its request yet.
        let permit = tokio::select! {
            permit = make_room(&slots, &connections) => permit,
            _ = &mut shutdown => break,
        };
        let tracked = Arc::new(Tracked::new());
        let id = connections.add(tracked.clone());
        let (builder, app, connections, stopping) = (
            builder.clone(),
            app.clone(),
            connections.clone(),
            stopping.clone(),
        );
        tokio::spawn(async move {
            run_connection(&builder, stream, app, tracked, stopping).await;
            debug!(%peer, "connection closed");
            connections.remove(id);
            drop(permit);
        });
    }
    let _ = stop.send(true);
    let all = u32::try_from(max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN_TIMEOUT, slots.acquire_many(all))
        .await
        .is_err()
    {
        warn!("requests still open after the drain timeout were dropped");
    }
}

/// HTTP/1 and HTTP/2, as the first bytes say, each with its own bounds.
fn protocols() -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_STREAMS)
        .keep_alive_interval(PING_EVERY)
        .keep_alive_timeout(PING_TIMEOUT);
    builder
}

/// A free connection slot for a connection just accepted: at once, after evicting the
/// idlest connection, or once a busy one ends.
async fn make_room(
    slots: &Arc<Semaphore>,
    connections: &Connections,
) -> tokio::sync::OwnedSemaphorePermit {
    if let Ok(permit) = slots.clone().try_acquire_owned() {
        return permit;
    }
    connections.evict_the_idlest();
    slots
        .clone()
        .acquire_owned()
        .await
        .expect("the slots are never closed")
}

/// Serves one connection until it ends, times out, is evicted or the server stops.
async fn run_connection(
    builder: &Builder<TokioExecutor>,
    stream: tokio::net::TcpStream,
    app: axum::Router,
    tracked: Arc<Tracked>,
    mut stopping: watch::Receiver<bool>,
) {
    let counter = tracked.clone();
    let service = tower::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let in_flight = counter.start_request();
        let app = app.clone();
        async move {
            let response = tower::ServiceExt::oneshot(app, request).await?;
            Ok::<_, std::convert::Infallible>(response.map(|inner| {
                Body::new(Counted {
                    inner,
                    _in_flight: in_flight,
                })
            }))
        }
    });
    let service = hyper_util::service::TowerToHyperService::new(service);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let closing = tokio::select! {
        ended = connection.as_mut() => {
            if let Err(err) = ended {
                debug!(%err, "connection ended with an error");
            }
            return;
        }
        _ = watchdog(&tracked) => "timed out or evicted",
        _ = stopping.wait_for(|stop| *stop) => "server stopping",
    };
    debug!(closing, "closing a connection");
    if tracked.requests.load(Ordering::Acquire) == 0 {
        // Nothing was ever asked on it: there is nobody to say goodbye to.
        return;
    }
    connection.as_mut().graceful_shutdown();
    let grace = if *stopping.borrow() {
        DRAIN_TIMEOUT
    } else {
        CLOSE_GRACE
    };
    let _ = tokio::time::timeout(grace, connection).await;
}

/// Resolves when the connection is past its deadline or evicted.
async fn watchdog(tracked: &Tracked) {
    loop {
        if tracked.evicted.load(Ordering::Acquire) {
            return;
        }
        match tracked.deadline() {
            Some(deadline) if deadline <= Instant::now() => return,
            Some(deadline) => {
                let _ = tokio::time::timeout_at(deadline, tracked.wake.notified()).await;
            }
            // A request is in flight: its end (or an eviction) wakes the watchdog.
            None => tracked.wake.notified().await,
        }
    }
}
