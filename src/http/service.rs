//! What [`serve`](super::serve) accepts as a service and a body, and the drain flag's wait.

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use tokio::sync::watch;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A hyper service [`serve`](super::serve) can run: any `Service<Request<Incoming>>` answering with a
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

/// A response body [`serve`](super::serve) can send.
pub trait ResponseBody: Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

impl<B> ResponseBody for B where B: Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

/// Completes once the drain flag is set.
pub(super) async fn until_draining(mut draining: watch::Receiver<bool>) {
    let _ = draining.wait_for(|d| *d).await;
}
