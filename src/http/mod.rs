//! Serving hyper 1.x (HTTP/1.1 and HTTP/2) from a worker, with a drain that loses no request.
//!
//! When draining begins, [`serve`]:
//! 1. stops accepting (the socket stays open in the master; the new worker accepts from it);
//! 2. lets in-flight requests finish;
//! 3. answers further requests on kept-alive HTTP/1.1 connections with `Connection: close`, so
//!    clients move to a new connection (and so to the new worker) without an error;
//! 4. closes an HTTP/1.1 connection only after it has been idle for the idle grace
//!    ([`Worker::idle_grace`]), so a request a client has just sent is still answered;
//! 5. sends HTTP/2 connections a graceful GOAWAY at once (in-flight streams complete): h2's
//!    two-phase one, a GOAWAY with the highest stream id and a PING, and the real last stream id
//!    only once the PING is answered; the answer is handed to h2 20 ms after the bytes that
//!    follow it, so a stream the client queued just before it read the first GOAWAY (h2's client
//!    writes the answer ahead of it) is below the last stream id too, and no stream a client
//!    sent is refused;
//! 6. keeps counting upgraded connections (WebSockets): [`serve`] returns only once the
//!    application has dropped them. It learns that the drain began from
//!    [`Worker::shutdown`], and should close them politely (a WebSocket with close code 1001,
//!    "going away", so that clients reconnect, to the new worker);
//! 7. cuts what is still open when its listener's drain timeout passes (`[[listen]]
//!    drain_timeout`, else the top-level one; `stop_drain_timeout` when the master stops): its
//!    reads and writes fail, so hyper and the application let go of it.
//!
//! While it drains, the worker tells the master how many connections are still open:
//! `handover status` shows them.
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

mod connection;
mod ping_ack;
mod service;
mod tracked;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::worker::Worker;
use service::until_draining;
pub use service::{HttpService, ResponseBody};
use tracked::Connections;
/// A listener [`serve`] can accept from: TCP or Unix.
pub trait Accept: Send + 'static {
    /// The connection type.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Accepts one connection.
    fn accept(&mut self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;

    /// How long this listener's connections may drain, as the master configured it
    /// ([`Worker::drain_timeout`]). None: until the master's own timeout.
    fn drain_timeout(&self, worker: &Worker) -> Option<Duration> {
        let _ = worker;
        None
    }
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&mut self) -> std::io::Result<Self::Io> {
        let (stream, _) = tokio::net::TcpListener::accept(self).await?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    fn drain_timeout(&self, worker: &Worker) -> Option<Duration> {
        worker.drain_timeout_of(&socket2::SockRef::from(self).local_addr().ok()?)
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&mut self) -> std::io::Result<Self::Io> {
        tokio::net::UnixListener::accept(self)
            .await
            .map(|(stream, _)| stream)
    }

    fn drain_timeout(&self, worker: &Worker) -> Option<Duration> {
        worker.drain_timeout_of(&socket2::SockRef::from(self).local_addr().ok()?)
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
    let connections = Arc::new(Connections::default());
    let timeouts: Vec<Option<Duration>> =
        listeners.iter().map(|l| l.drain_timeout(worker)).collect();
    let mut acceptors = tokio::task::JoinSet::new();
    for (index, mut listener) in listeners.into_iter().enumerate() {
        let (service, draining, connections) =
            (service.clone(), draining.clone(), connections.clone());
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
                let io = connections.track(index, io);
                let (service, draining) = (service.clone(), draining.clone());
                tokio::spawn(connection::serve_connection(
                    io, service, draining, idle_grace,
                ));
            }
        });
    }
    worker.ready();
    worker.shutdown().await;
    let _ = draining_tx.send(true);
    while acceptors.join_next().await.is_some() {}
    tracing::info!(
        open = connections.open(),
        "stopped accepting; draining connections"
    );
    drain(worker, &connections, timeouts).await;
    Ok::<(), Error>(())
}

/// How often at most a draining worker tells the master its open connection count.
const REPORT_EVERY: Duration = Duration::from_millis(250);

/// Waits until every connection has closed, cutting a listener's connections when its drain
/// timeout passes (or the stop's, once the master says it stops), and reporting the count.
async fn drain(worker: &Worker, connections: &Connections, timeouts: Vec<Option<Duration>>) {
    let began = Instant::now();
    let mut deadlines: Vec<Option<Instant>> =
        timeouts.iter().map(|t| t.map(|t| began + t)).collect();
    let mut stopping = worker.stopping_signal();
    let mut stop_seen = false;
    let mut reported: Option<usize> = None;
    let mut next_report = Instant::now();
    loop {
        let open = connections.open();
        if reported != Some(open) && Instant::now() >= next_report {
            worker.report_open(open as u64);
            reported = Some(open);
            next_report = Instant::now() + REPORT_EVERY;
        }
        if open == 0 {
            return;
        }
        let next_deadline = deadlines.iter().flatten().min().copied();
        let report_due = (reported != Some(open)).then_some(next_report);
        tokio::select! {
            _ = connections.changed_or_zero() => {}
            _ = sleep_until_some(report_due) => {}
            _ = sleep_until_some(next_deadline) => {
                let now = Instant::now();
                for (index, deadline) in deadlines.iter_mut().enumerate() {
                    if deadline.is_some_and(|d| d <= now) {
                        *deadline = None;
                        let cut = connections.cut(index);
                        tracing::warn!(
                            listener = worker.listener_names().get(index).map(String::as_str).unwrap_or("?"),
                            connections = cut,
                            drained_for = ?began.elapsed(),
                            "the listener's drain timeout passed; closing its connections"
                        );
                    }
                }
            }
            _ = stopping.wait_for(|s| *s), if !stop_seen => {
                stop_seen = true;
                if let Some(stop) = worker.stop_drain_timeout() {
                    let cap = Instant::now() + stop;
                    for deadline in &mut deadlines {
                        *deadline = Some(deadline.map_or(cap, |d| d.min(cap)));
                    }
                }
            }
        }
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
