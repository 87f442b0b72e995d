//! The HTTP server's accept loop: a bounded table of connections, header and request timeouts.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;
use tower_service::Service;
use tracing::{debug, warn};

use crate::config::Config;
use crate::limits::Limits;

/// Limits of the HTTP server: the `server` config section and the HTTP sizes of [`Config::limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections held open at once.
    pub max_connections: NonZeroUsize,
    /// Time for a request's headers, from connection open or the previous response.
    pub header_timeout: Duration,
    /// Time for one request, body and handler included.
    pub request_timeout: Duration,
    /// hyper's read buffer per connection, which bounds a request's headers.
    pub header_bytes: usize,
    /// The largest request body.
    pub body_bytes: usize,
}

impl ServerLimits {
    /// The limits `config` sets for the HTTP server.
    pub fn of(config: &Config) -> ServerLimits {
        let server = &config.server;
        ServerLimits {
            max_connections: server.max_connections,
            header_timeout: server.header_timeout,
            request_timeout: server.request_timeout,
            header_bytes: Limits::DEFAULT.http_header_bytes,
            body_bytes: Limits::DEFAULT.http_body_bytes,
        }
    }
}

/// What the accept loop exports.
#[derive(Clone)]
pub struct ConnectionMetrics {
    /// Connections open now.
    pub open: Gauge<i64, AtomicI64>,
    /// Connections closed to make room for a newer one.
    pub evicted: Counter,
}

/// Pause after an accept error that is not about one connection (EMFILE, ENFILE, ENOMEM): nothing
/// frees a descriptor while the loop retries, so retrying at once would only spin a core.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until the task is aborted.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    metrics: ConnectionMetrics,
) {
    let table = Arc::new(Mutex::new(Table::default()));
    // Logged once per run of failures, not every pause: under EMFILE that would be ten lines a second.
    let mut failing = false;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // The peer gave up before we took the connection; nothing is wrong with the listener.
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                if !failing {
                    warn!(error = %e, "HTTP accept failed; retrying every 100ms");
                    failing = true;
                }
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        failing = false;
        let (registration, in_request) = {
            let mut open = lock(&table);
            if let Some(evicted) = open.make_room(limits.max_connections.get()) {
                metrics.evicted.inc();
                debug!("HTTP connection table full: closed the oldest idle connection");
                evicted.abort();
            }
            let (id, in_request) = open.insert();
            metrics.open.set(open.len());
            (
                Registration {
                    table: Arc::clone(&table),
                    id,
                    open: metrics.open.clone(),
                },
                in_request,
            )
        };
        let id = registration.id;
        let task = tokio::spawn(connection(
            stream,
            router.clone(),
            limits,
            in_request,
            registration,
        ));
        // The task may already be gone (and unregistered); then there is nothing to attach.
        lock(&table).attach(id, task.abort_handle());
    }
}

fn lock(table: &Mutex<Table>) -> std::sync::MutexGuard<'_, Table> {
    table.lock().unwrap_or_else(|p| p.into_inner())
}

fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// One connection, served until the client closes it, a timeout closes it, or it is evicted
/// (aborted, which drops the socket).
async fn connection(
    stream: TcpStream,
    router: Router,
    limits: ServerLimits,
    in_request: Arc<AtomicBool>,
    _registration: Registration,
) {
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let mut router = router.clone();
        let in_request = Arc::clone(&in_request);
        async move {
            let _busy = InRequest::enter(in_request);
            let response =
                match tokio::time::timeout(limits.request_timeout, router.call(request)).await {
                    Ok(Ok(response)) => response,
                    Ok(Err(never)) => match never {},
                    Err(_) => (
                        StatusCode::REQUEST_TIMEOUT,
                        "request not finished within server.request_timeout\n",
                    )
                        .into_response(),
                };
            Ok::<Response, Infallible>(response)
        }
    });
    // hyper starts the header timer whenever the connection waits for a request head: right after
    // accept and after each response. So it closes silent, trickling and idle keep-alive
    // connections alike.
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.header_bytes)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = result {
        debug!(error = %e, "HTTP connection closed");
    }
}

/// Marks its connection as inside a request while it lives.
struct InRequest(Arc<AtomicBool>);

impl InRequest {
    fn enter(flag: Arc<AtomicBool>) -> InRequest {
        flag.store(true, Ordering::Relaxed);
        InRequest(flag)
    }
}

impl Drop for InRequest {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// A connection's place in the table, given back when its task ends or is aborted.
struct Registration {
    table: Arc<Mutex<Table>>,
    id: u64,
    open: Gauge<i64, AtomicI64>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut table = lock(&self.table);
        table.remove(self.id);
        self.open.set(table.len());
    }
}

/// The open connections, oldest first (ids only grow).
#[derive(Default)]
struct Table {
    next_id: u64,
    open: BTreeMap<u64, Entry>,
}

struct Entry {
    in_request: Arc<AtomicBool>,
    task: Option<AbortHandle>,
}

impl Table {
    fn len(&self) -> i64 {
        self.open.len() as i64
    }

    fn insert(&mut self) -> (u64, Arc<AtomicBool>) {
        let id = self.next_id;
        self.next_id += 1;
        let in_request = Arc::new(AtomicBool::new(false));
        self.open.insert(
            id,
            Entry {
                in_request: Arc::clone(&in_request),
                task: None,
            },
        );
        (id, in_request)
    }

    fn attach(&mut self, id: u64, task: AbortHandle) {
        if let Some(entry) = self.open.get_mut(&id) {
            entry.task = Some(task);
        }
    }

    fn remove(&mut self, id: u64) {
        self.open.remove(&id);
    }

    /// When the table holds `limit` connections, takes out the one that gives way to a new
    /// connection and returns its task to abort.
    ///
    /// A new connection always gets in. Refusing it would hand the server to whoever took the
    /// slots first: a few hundred silent connections would lock `/healthz` out until their
    /// header timeout, and an attacker reopens them faster than that. Instead the oldest
    /// connection that is between requests goes (silent, trickling headers, idle keep-alive), or,
    /// when every one is inside a request, the oldest of all. A client's connection is then only
    /// cut when `limit` newer connections arrive before it has sent its request head.
    fn make_room(&mut self, limit: usize) -> Option<AbortHandle> {
        if self.open.len() < limit {
            return None;
        }
        let victim = self
            .open
            .iter()
            .find(|(_, entry)| !entry.in_request.load(Ordering::Relaxed))
            .or_else(|| self.open.iter().next())
            .map(|(id, _)| *id)?;
        self.open.remove(&victim).and_then(|entry| entry.task)
    }
}

/// The soft limit on open files of this process (`LimitNOFILE=` under systemd), when Linux says.
pub fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy(table: &Table, id: u64) {
        table.open[&id].in_request.store(true, Ordering::Relaxed);
    }

    #[test]
    fn the_oldest_idle_connection_gives_way() {
        let mut table = Table::default();
        for _ in 0..3 {
            table.insert();
        }
        assert!(table.make_room(4).is_none(), "room left: nothing evicted");
        busy(&table, 0);
        table.make_room(3);
        assert_eq!(
            table.open.keys().copied().collect::<Vec<_>>(),
            [0, 2],
            "1 is the oldest between requests; 0 is inside one"
        );
    }

    #[test]
    fn when_every_connection_is_in_a_request_the_oldest_goes() {
        let mut table = Table::default();
        for id in 0..3 {
            table.insert();
            busy(&table, id);
        }
        table.make_room(3);
        assert_eq!(table.open.keys().copied().collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn the_open_file_limit_is_read() {
        assert!(open_file_limit().is_some_and(|n| n > 0));
    }
}
