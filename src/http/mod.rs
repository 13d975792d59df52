//! Serving hyper 1.x (HTTP/1.1 and HTTP/2) from a worker, with a drain that loses no request.
//!
//! When draining begins, [`serve`]:
//! 1. stops accepting (the socket stays open in the master; the new worker accepts from it);
//! 2. lets in-flight requests finish;
//! 3. answers further requests on kept-alive HTTP/1.1 connections with `Connection: close`, so
//!    clients move to a new connection (and so to the new worker) without an error;
//! 4. closes an HTTP/1.1 connection only after it has been idle for the idle grace
//!    ([`Worker::idle_grace`]), so a request a client has just sent is still answered;
//! 5. sends HTTP/2 connections a graceful GOAWAY at once (in-flight streams complete).
//!
//! Closing idle connections at once, as most servers do on shutdown, races with clients that
//! are sending on them: those clients see a reset with no response.
//!
//! ```no_run
//! use http_body_util::Full;
//! use hyper::{body::Bytes, Request, Response};
//!
//! fn main() -> Result<(), handover::Error> {
//!     let config = handover::Config::builder()
//!         .listen_tcp("http", "127.0.0.1:8080".parse().unwrap())
//!         .build()?;
//!     handover::Handover::new(config).run(|worker| async move {
//!         let listener = worker.tcp("http")?;
//!         let hello = hyper::service::service_fn(|_req: Request<hyper::body::Incoming>| async {
//!             Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("hello\n"))))
//!         });
//!         handover::http::serve(&worker, listener, hello).await?;
//!         Ok::<_, handover::Error>(())
//!     })
//! }
//! ```

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::{Body, Incoming};
use hyper::header::{HeaderValue, CONNECTION};
use hyper::service::Service;
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::worker::Worker;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A hyper service [`serve`] can run: any `Service<Request<Incoming>>` answering with a
/// [`ResponseBody`], shareable across connections. Implemented for every such type
/// (`hyper::service::service_fn(...)`, an axum router through `TowerToHyperService`).
pub trait HttpService<B>:
    Service<
        Request<Incoming>,
        Response = Response<B>,
        Future: Send + 'static,
        Error: Into<BoxError>,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S, B> HttpService<B> for S where
    S: Service<
            Request<Incoming>,
            Response = Response<B>,
            Future: Send + 'static,
            Error: Into<BoxError>,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// A response body [`serve`] can send.
pub trait ResponseBody: Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

impl<B> ResponseBody for B where B: Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

/// A listener [`serve`] can accept from: TCP or Unix.
pub trait Accept: Send + 'static {
    /// The connection type.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Accepts one connection.
    fn accept(&mut self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&mut self) -> std::io::Result<Self::Io> {
        let (stream, _) = tokio::net::TcpListener::accept(self).await?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&mut self) -> std::io::Result<Self::Io> {
        tokio::net::UnixListener::accept(self)
            .await
            .map(|(stream, _)| stream)
    }
}

/// Serves `service` on `listener` until the worker drains, then drains as described in the
/// [module docs](self). Calls [`Worker::ready`] once accepting. Returns once every connection
/// has closed.
pub async fn serve<L, S, B>(worker: &Worker, listener: L, service: S) -> Result<()>
where
    L: Accept,
    S: HttpService<B>,
    B: ResponseBody,
{
    serve_many(worker, vec![listener], service).await
}

/// Like [`serve`], on several listeners of the same kind at once.
pub async fn serve_many<L, S, B>(worker: &Worker, listeners: Vec<L>, service: S) -> Result<()>
where
    L: Accept,
    S: HttpService<B>,
    B: ResponseBody,
{
    let idle_grace = worker.idle_grace();
    let (draining_tx, draining) = watch::channel(false);
    let open = Arc::new(AtomicUsize::new(0));
    let all_closed = Arc::new(tokio::sync::Notify::new());
    let mut acceptors = tokio::task::JoinSet::new();
    for mut listener in listeners {
        let (service, draining, open, all_closed) = (
            service.clone(),
            draining.clone(),
            open.clone(),
            all_closed.clone(),
        );
        acceptors.spawn(async move {
            loop {
                let io = tokio::select! {
                    biased;
                    _ = until_draining(draining.clone()) => break,
                    accepted = listener.accept() => match accepted {
                        Ok(io) => io,
                        Err(e) => {
                            // EMFILE and friends: back off instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                open.fetch_add(1, Ordering::SeqCst);
                let (service, draining, open, all_closed) = (
                    service.clone(),
                    draining.clone(),
                    open.clone(),
                    all_closed.clone(),
                );
                tokio::spawn(async move {
                    serve_connection(io, service, draining, idle_grace).await;
                    if open.fetch_sub(1, Ordering::SeqCst) == 1 {
                        all_closed.notify_waiters();
                    }
                });
            }
        });
    }
    worker.ready();
    worker.shutdown().await;
    let _ = draining_tx.send(true);
    while acceptors.join_next().await.is_some() {}
    tracing::info!(
        open = open.load(Ordering::SeqCst),
        "stopped accepting; draining connections"
    );
    loop {
        let notified = all_closed.notified();
        if open.load(Ordering::SeqCst) == 0 {
            break;
        }
        notified.await;
    }
    Ok::<(), Error>(())
}

/// One connection's activity, shared between the service wrapper and the drain logic.
#[derive(Default)]
struct Activity {
    in_flight: AtomicUsize,
    last_change_ms: AtomicU64,
    http2: AtomicBool,
}

impl Activity {
    fn touch(&self, epoch: Instant) {
        self.last_change_ms
            .store(epoch.elapsed().as_millis() as u64, Ordering::SeqCst);
    }

    fn idle_for(&self, epoch: Instant) -> Option<Duration> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_change_ms.load(Ordering::SeqCst));
        Some(epoch.elapsed().saturating_sub(last))
    }
}

async fn until_draining(mut draining: watch::Receiver<bool>) {
    let _ = draining.wait_for(|d| *d).await;
}

async fn serve_connection<I, S, B>(
    io: I,
    service: S,
    draining: watch::Receiver<bool>,
    idle_grace: Duration,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<B>,
    B: ResponseBody,
{
    let epoch = Instant::now();
    let activity = Arc::new(Activity::default());
    let wrapped = Draining {
        inner: service,
        draining: draining.clone(),
        activity: activity.clone(),
        epoch,
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    builder.http2().timer(TokioTimer::new());
    let mut connection = pin!(builder.serve_connection_with_upgrades(TokioIo::new(io), wrapped));
    let mut drain_seen = *draining.borrow();
    let draining = draining;
    let mut closing = false;
    loop {
        let idle_check = async {
            if drain_seen && !closing {
                tokio::time::sleep(Duration::from_millis(25)).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            _ = until_draining(draining.clone()), if !drain_seen => {
                drain_seen = true;
                if activity.http2.load(Ordering::SeqCst) {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            _ = idle_check => {
                // HTTP/2 gets its GOAWAY as soon as it is known to be HTTP/2: a connection whose
                // first request came after draining began, and that never goes idle, would
                // otherwise keep the old worker alive until the drain timeout.
                // regression: h2 connection first seen during drain was never told to go away.
                let http2 = activity.http2.load(Ordering::SeqCst);
                if http2 || activity.idle_for(epoch).is_some_and(|idle| idle >= idle_grace) {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// Wraps the user's service: counts requests in flight and, once draining, asks HTTP/1.1
/// clients to close the connection after the response.
#[derive(Clone)]
struct Draining<S> {
    inner: S,
    draining: watch::Receiver<bool>,
    activity: Arc<Activity>,
    epoch: Instant,
}

impl<S, B> Service<Request<Incoming>> for Draining<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = std::result::Result<Response<B>, S::Error>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let activity = self.activity.clone();
        if request.version() == Version::HTTP_2 {
            activity.http2.store(true, Ordering::SeqCst);
        }
        let http1 = request.version() < Version::HTTP_2;
        activity.in_flight.fetch_add(1, Ordering::SeqCst);
        activity.touch(self.epoch);
        let guard = InFlight {
            activity,
            epoch: self.epoch,
        };
        let future = self.inner.call(request);
        let draining = self.draining.clone();
        Box::pin(async move {
            let mut response = future.await;
            if http1 && *draining.borrow() {
                if let Ok(response) = &mut response {
                    response
                        .headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
            }
            drop(guard);
            response
        })
    }
}

/// Decrements the in-flight count even when the request future is dropped (client went away).
struct InFlight {
    activity: Arc<Activity>,
    epoch: Instant,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.activity.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.activity.touch(self.epoch);
    }
}
