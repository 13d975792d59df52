//! One connection: hyper's HTTP/1.1 or HTTP/2 server on it, and its part of the drain.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION};
use hyper::service::Service;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::service::{until_draining, HttpService, ResponseBody};

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

pub(super) async fn serve_connection<I, S, B>(
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
    let mut connection = pin!(builder.serve_connection_with_upgrades(
        TokioIo::new(super::ping_ack::HoldPingAcks::new(io)),
        wrapped
    ));
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
                // Not on a 101: an upgrade accepted before the drain began goes through, and
                // the application closes it (a WebSocket with 1001) as it drains.
                if let Some(response) = response
                    .as_mut()
                    .ok()
                    .filter(|r| r.status() != StatusCode::SWITCHING_PROTOCOLS)
                {
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
