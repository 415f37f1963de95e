//! Serving an axum router to strangers, for the agent's status API and for the app tier:
//!
//! - a connection must send a complete request head within `header_read_timeout` (hyper's own
//!   timer for HTTP/1.1, a watchdog for the first request, TLS handshakes and HTTP/2);
//! - a connection with nothing in flight is closed after `idle_timeout`, one whose request
//!   takes longer than `request_timeout` (a body trickled in) is closed too;
//! - at most `max_connections` are open: a new client takes the place of the oldest connection
//!   that has no request in flight (a half-sent request, an idle keep-alive), else of the
//!   oldest whose request has been in flight longer than the header timeout (a body trickled
//!   in), so connections held open by an attacker cannot lock new clients out; only when every
//!   connection is busy with a recent request is the new one closed at once;
//! - out of file descriptors, the accept loop sheds one idle connection and waits a moment
//!   instead of spinning.
//!
//! The server so never holds more than `max_connections + 2` descriptors for its clients, and
//! a process keeps the rest of its `RLIMIT_NOFILE` for its own work (health checks, files).
pub mod tls;

use std::{
    collections::BTreeMap,
    convert::Infallible,
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::Duration,
};

use axum::{body::Body, extract::ConnectInfo, Router};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    net::{TcpListener, TcpStream},
    task::AbortHandle,
    time::Instant,
};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

/// Connections the kernel queues for `accept`: a burst waits there instead of its SYNs being
/// dropped (and retried a second later).
pub const BACKLOG: u32 = 4096;
/// How long the accept loop waits after an error such as running out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// At most one log line about accept errors in this time: an attack must not flood the log.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(5);

/// The limits one listener enforces on its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time for a request head: from accept (TLS handshake included) for the first request,
    /// from the end of the previous answer for the next HTTP/1.1 one.
    pub header_read_timeout: Duration,
    /// Time a connection that has been answered may stay open with nothing in flight.
    pub idle_timeout: Duration,
    /// Time one request may stay in flight (its body read and its answer written).
    pub request_timeout: Duration,
    /// Open connections at most.
    pub max_connections: usize,
}

/// Counters of what the limits did, for logs and tests.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted and served.
    pub accepted: AtomicU64,
    /// Connections closed to make room for a new one.
    pub shed: AtomicU64,
    /// New connections closed at once because every open one was busy.
    pub refused: AtomicU64,
    /// Connections closed by the header, idle or request timeout.
    pub timed_out: AtomicU64,
}

/// Serves `app` on `listener` for ever (TLS when `tls` is given), within `limits`. Each request
/// carries the client's address as `ConnectInfo<SocketAddr>`.
pub async fn serve(listener: TcpListener, app: Router, limits: Limits, tls: Option<TlsAcceptor>) {
    serve_with_stats(listener, app, limits, tls, Arc::default()).await;
}

/// [`serve`], counting into `stats`.
pub async fn serve_with_stats(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<TlsAcceptor>,
    stats: Arc<Stats>,
) {
    let tracker = Arc::new(Tracker {
        epoch: Instant::now(),
        limits,
        stats,
        table: Mutex::new(Table::default()),
    });
    let mut last_warning: Option<Instant> = None;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                if is_per_connection(&e) {
                    continue;
                }
                if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                    // The process is out of descriptors: free one for the next client.
                    tracker.shed_oldest_idle();
                }
                if last_warning.is_none_or(|at| at.elapsed() >= ACCEPT_WARN_EVERY) {
                    log::warn!("accept: {e} (retrying every {ACCEPT_BACKOFF:?})");
                    last_warning = Some(Instant::now());
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some((id, activity)) = tracker.admit() else {
            tracker.stats.refused.fetch_add(1, Ordering::Relaxed);
            drop(stream);
            continue;
        };
        tracker.stats.accepted.fetch_add(1, Ordering::Relaxed);
        let registration = Registration {
            tracker: tracker.clone(),
            id,
        };
        let task = tokio::spawn(connection(
            stream,
            peer,
            app.clone(),
            tls.clone(),
            activity,
            registration,
        ));
        tracker.set_abort(id, task.abort_handle());
    }
}

/// Errors of one connection that went away before it was accepted: nothing to wait for.
fn is_per_connection(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::ECONNABORTED | libc::ECONNRESET | libc::EPROTO | libc::EPERM)
    )
}

/// The authority a request was sent to: the URI's (HTTP/2, absolute form), else `Host`.
pub fn authority(request: &axum::extract::Request) -> Option<String> {
    request
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            request
                .headers()
                .get(axum::http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
        })
}

/// A listener on `address` with a backlog of [`BACKLOG`] (the kernel caps it at somaxconn).
pub fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std's bind: a restarted server can listen again while old connections linger.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(BACKLOG)
}

/// The soft `RLIMIT_NOFILE`, raised first to the hard limit when it is below: the servers'
/// limits are checked against it.
pub fn raise_fd_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct passed, which lives on this stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct passed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    Ok(limit.rlim_cur)
}

/// What one connection is doing: requests in flight, whether one was answered, and when that
/// changed (milliseconds after the tracker's epoch).
#[derive(Default)]
struct Activity {
    in_flight: AtomicUsize,
    answered: AtomicBool,
    changed_ms: AtomicU64,
}

struct Slot {
    activity: Arc<Activity>,
    abort: Option<AbortHandle>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    /// By id, so by age: the first idle one is the oldest.
    open: BTreeMap<u64, Slot>,
}

struct Tracker {
    epoch: Instant,
    limits: Limits,
    stats: Arc<Stats>,
    table: Mutex<Table>,
}

impl Tracker {
    fn lock(&self) -> MutexGuard<'_, Table> {
        // The table stays consistent across a panic elsewhere: every change is one call.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A place for a new connection, made by closing the oldest idle one when at the limit;
    /// `None` when every open connection is busy.
    fn admit(&self) -> Option<(u64, Arc<Activity>)> {
        let mut table = self.lock();
        if table.open.len() >= self.limits.max_connections {
            if !self.shed_one(&mut table) {
                return None;
            }
            self.stats.shed.fetch_add(1, Ordering::Relaxed);
        }
        let id = table.next_id;
        table.next_id += 1;
        let activity = Arc::new(Activity {
            changed_ms: AtomicU64::new(self.now_ms()),
            ..Activity::default()
        });
        table.open.insert(
            id,
            Slot {
                activity: activity.clone(),
                abort: None,
            },
        );
        Some((id, activity))
    }

    fn set_abort(&self, id: u64, abort: AbortHandle) {
        match self.lock().open.get_mut(&id) {
            Some(slot) => slot.abort = Some(abort),
            // Already shed or finished before its handle arrived.
            None => abort.abort(),
        }
    }

    fn shed_oldest_idle(&self) {
        if self.shed_one(&mut self.lock()) {
            self.stats.shed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Tracker {
    /// Closes the oldest connection with no request in flight, else the oldest whose request
    /// has been in flight longer than the header timeout (a body trickled in: legitimate
    /// requests are long done); false when there is neither.
    fn shed_one(&self, table: &mut Table) -> bool {
        let stale_before = self
            .now_ms()
            .saturating_sub(duration_ms(self.limits.header_read_timeout));
        let idle = |slot: &Slot| slot.activity.in_flight.load(Ordering::Acquire) == 0;
        let stale = |slot: &Slot| slot.activity.changed_ms.load(Ordering::Acquire) < stale_before;
        let victim = table
            .open
            .iter()
            .find(|(_, slot)| idle(slot))
            .or_else(|| table.open.iter().find(|(_, slot)| stale(slot)))
            .map(|(id, _)| *id);
        let Some(slot) = victim.and_then(|id| table.open.remove(&id)) else {
            return false;
        };
        if let Some(abort) = slot.abort {
            abort.abort();
        }
        true
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Removes a connection from the table when its task ends, however it ends.
struct Registration {
    tracker: Arc<Tracker>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.tracker.lock().open.remove(&self.id);
    }
}

/// One request in flight on a connection, from its head to the end of its answer's body.
struct InFlight {
    activity: Arc<Activity>,
    tracker: Arc<Tracker>,
}

impl InFlight {
    fn start(activity: Arc<Activity>, tracker: Arc<Tracker>) -> Self {
        activity
            .changed_ms
            .store(tracker.now_ms(), Ordering::Release);
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self { activity, tracker }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity.answered.store(true, Ordering::Release);
        self.activity
            .changed_ms
            .store(self.tracker.now_ms(), Ordering::Release);
        self.activity.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    tls: Option<TlsAcceptor>,
    activity: Arc<Activity>,
    registration: Registration,
) {
    let tracker = registration.tracker.clone();
    let _ = stream.set_nodelay(true);
    let service = {
        let (activity, tracker) = (activity.clone(), tracker.clone());
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let in_flight = InFlight::start(activity.clone(), tracker.clone());
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(ConnectInfo(peer));
            let app = app.clone();
            async move {
                let response = app
                    .oneshot(request)
                    .await
                    .unwrap_or_else(|never| match never {});
                // The request stays in flight until its answer's body is sent (or dropped).
                Ok::<_, Infallible>(response.map(|body| {
                    Body::new(body.map_frame(move |frame| {
                        let _ = &in_flight;
                        frame
                    }))
                }))
            }
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(tracker.limits.header_read_timeout);
    let serving = async {
        let result = match tls {
            None => {
                builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await
            }
            Some(acceptor) => match acceptor.accept(stream).await {
                Ok(stream) => {
                    builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await
                }
                Err(e) => {
                    log::debug!("TLS handshake with {peer}: {e}");
                    return;
                }
            },
        };
        if let Err(e) = result {
            // Clients hanging up mid-request, and header timeouts: a debug line only.
            log::debug!("connection from {peer}: {e}");
        }
    };
    tokio::select! {
        () = serving => {}
        () = watchdog(&activity, &tracker) => {
            tracker.stats.timed_out.fetch_add(1, Ordering::Relaxed);
            log::debug!("connection from {peer}: closed by a timeout");
        }
    }
    drop(registration);
}

/// Returns when the connection has outstayed its timeout: the header timeout before its first
/// request, the idle timeout after an answer, the request timeout while one is in flight.
async fn watchdog(activity: &Activity, tracker: &Tracker) {
    let limits = tracker.limits;
    loop {
        let limit = if activity.in_flight.load(Ordering::Acquire) > 0 {
            limits.request_timeout
        } else if activity.answered.load(Ordering::Acquire) {
            limits.idle_timeout
        } else {
            limits.header_read_timeout
        };
        let since =
            tracker.epoch + Duration::from_millis(activity.changed_ms.load(Ordering::Acquire));
        let deadline = since + limit;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

#[cfg(test)]
mod tests;
