//! A gRPC service (tonic) under handover: served by `handover::http::serve`, so a restart or an
//! upgrade breaks no call. The draining worker sends its HTTP/2 connections a graceful GOAWAY
//! and keeps serving every stream in flight until it ends; clients send new calls to a new
//! connection, which the new worker accepts.
//!
//! The service, `handover.example.Counter` (messages in `examples/common/counter.rs`, routed
//! by hand here: no protoc, no build script):
//! - `Whoami(Empty) -> Worker { pid }`;
//! - `Count(CountRequest { n, interval_ms }) -> stream Tick { seq, pid }`: n ticks,
//!   `interval_ms` apart;
//! - `Echo(stream Tick) -> stream Tick`: each tick back, with this worker's pid, until the
//!   client ends its side (a draining worker waits for that, up to the drain timeout).
//!
//! Any other path answers `UNIMPLEMENTED`; a plain `GET /` answers
//! `pid=<pid> worker=<id> sha256=<hash>` like `hello`. With arguments, the binary is a client.
//!
//! ```text
//! PORT=8080 cargo run --example grpc             # serves 127.0.0.1:8080 (h2c)
//! curl 127.0.0.1:8080/                           # pid=… worker=1 sha256=…
//! PORT=8080 cargo run --example grpc -- whoami   # pid=…
//! PORT=8080 cargo run --example grpc -- count 100 100 &
//! kill -USR2 <master pid>                        # the count goes on from the old pid to its end
//! PORT=8080 cargo run --example grpc -- whoami   # the new worker's pid
//! ```

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::service::TowerToHyperService;
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture, Service, StdError};
use tonic::{Request, Response, Status, Streaming};
use tonic_prost::ProstCodec;

use counter::{CountRequest, Empty, Tick, Worker};

#[path = "common/mod.rs"]
#[allow(dead_code)]
mod common;

#[path = "common/counter.rs"]
mod counter;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.is_empty() {
        return client(&args);
    }
    common::init_logging();
    let result = common::config_from_env().and_then(|config| {
        handover::Handover::new(config)
            .version(env!("CARGO_PKG_VERSION"))
            .run(|worker| async move {
                let listener = worker.tcp("http")?;
                let line = format!(
                    "pid={} worker={} sha256={}\n",
                    std::process::id(),
                    worker.id(),
                    &worker.binary_sha256()[..12.min(worker.binary_sha256().len())]
                );
                let service = Counter {
                    pid: std::process::id(),
                    line: Arc::from(line),
                };
                // A tower service, as tonic's generated servers are; hyper-util adapts it.
                handover::http::serve(&worker, listener, TowerToHyperService::new(service)).await
            })
    });
    common::exit_code("grpc", result)
}

/// The `Counter` service and `GET /`, routed by path.
#[derive(Clone)]
struct Counter {
    pid: u32,
    /// What `GET /` answers.
    line: Arc<str>,
}

impl<B> Service<http::Request<B>> for Counter
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (pid, line) = (self.pid, self.line.clone());
        Box::pin(async move {
            let response = match request.uri().path() {
                counter::WHOAMI => grpc().unary(Whoami(pid), request).await,
                counter::COUNT => grpc().server_streaming(Count(pid), request).await,
                counter::ECHO => grpc().streaming(Echo(pid), request).await,
                "/" if request.method() == http::Method::GET => {
                    http::Response::new(Body::new(Full::new(Bytes::from(line.to_string()))))
                }
                path => Status::unimplemented(format!("no method {path}")).into_http(),
            };
            Ok(response)
        })
    }
}

/// A method's gRPC framing, with a codec that encodes its answer and decodes its request.
fn grpc<T, U>() -> tonic::server::Grpc<ProstCodec<T, U>>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    tonic::server::Grpc::new(ProstCodec::default())
}

/// `Whoami`: answers with this worker's pid.
struct Whoami(u32);

impl tonic::server::UnaryService<Empty> for Whoami {
    type Response = Worker;
    type Future = std::future::Ready<Result<Response<Worker>, Status>>;

    fn call(&mut self, _: Request<Empty>) -> Self::Future {
        std::future::ready(Ok(Response::new(Worker { pid: self.0 })))
    }
}

/// A stream of ticks the client reads.
type TickStream = Pin<Box<dyn Stream<Item = Result<Tick, Status>> + Send>>;

/// `Count`: `n` ticks, the first at once, then one every `interval_ms`.
struct Count(u32);

impl tonic::server::ServerStreamingService<CountRequest> for Count {
    type Response = Tick;
    type ResponseStream = TickStream;
    type Future = std::future::Ready<Result<Response<TickStream>, Status>>;

    fn call(&mut self, request: Request<CountRequest>) -> Self::Future {
        let pid = self.0;
        let CountRequest { n, interval_ms } = request.into_inner();
        let interval = Duration::from_millis(interval_ms.into());
        let ticks = futures_util::stream::iter(0..n).then(move |seq| async move {
            if seq > 0 {
                tokio::time::sleep(interval).await;
            }
            Ok(Tick { seq, pid })
        });
        std::future::ready(Ok(Response::new(Box::pin(ticks) as TickStream)))
    }
}

/// `Echo`: every tick the client sends, back with this worker's pid, until the client ends
/// its side.
struct Echo(u32);

impl tonic::server::StreamingService<Tick> for Echo {
    type Response = Tick;
    type ResponseStream = TickStream;
    type Future = std::future::Ready<Result<Response<TickStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<Tick>>) -> Self::Future {
        let pid = self.0;
        let echoed = request
            .into_inner()
            .map(move |tick| tick.map(|tick| Tick { seq: tick.seq, pid }));
        std::future::ready(Ok(Response::new(Box::pin(echoed) as TickStream)))
    }
}

/// `whoami`, `count [N] [INTERVAL_MS]` or `echo [N]` against 127.0.0.1:$PORT.
fn client(args: &[String]) -> std::process::ExitCode {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let number = |index: usize, default: u32| {
        args.get(index)
            .and_then(|a| a.parse().ok())
            .unwrap_or(default)
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let result: Result<(), Box<dyn std::error::Error>> = runtime.block_on(async {
        let channel = counter::connect(port).await?;
        match args[0].as_str() {
            "whoami" => println!("pid={}", counter::whoami(channel).await?),
            "count" => {
                let request = CountRequest {
                    n: number(1, 10),
                    interval_ms: number(2, 500),
                };
                counter::count(channel, request, |t| {
                    println!("seq={} pid={}", t.seq, t.pid)
                })
                .await?;
            }
            "echo" => {
                let echoed = counter::echo(channel, number(1, 10), Duration::from_millis(200));
                for tick in echoed.await? {
                    println!("seq={} pid={}", tick.seq, tick.pid);
                }
            }
            other => return Err(format!("unknown command {other:?}: whoami, count, echo").into()),
        }
        Ok(())
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("grpc: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
