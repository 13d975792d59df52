//! The bench's own load generator: client connections with keep-alive, HTTP/1.1 (hyper 1's
//! client) or HTTP/2 (prior knowledge, through `h2`, the HTTP/2 engine under hyper's client),
//! that never retry and time-stamp every request.
//!
//! Every request that was sent and did not get a complete 2xx answer within the timeout is a
//! failure, and so is every refused connection. A connection the server closed (after
//! `Connection: close`, or a GOAWAY) is replaced before the next request, as any keep-alive
//! client does; no request is lost by that. HTTP/2 requests that the client itself refused to
//! send because the server had already announced GOAWAY are counted apart ("refused unsent"):
//! RFC 9113 guarantees the server never processed them, and any HTTP/2 client would send them
//! again on a new connection. So are requests hyper hands back unwritten because the
//! connection closed first ("unsent").
//!
//! HTTP/2 goes through `h2` directly because hyper's client reports a stream the server refused
//! after it was sent (above the final GOAWAY's last stream id) exactly as it reports one it
//! declined to send: `h2` tells them apart, so the bench counts "sent, then refused" on its own.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::TokioIo;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Protocol {
    Http1,
    Http2,
}

impl Protocol {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
        }
    }
}

/// How one request ended.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Outcome {
    Ok,
    /// The TCP connection (or the HTTP handshake) failed; counts as one failed request.
    Connect,
    /// Sent, but the connection broke before a response head (reset, closed mid-request).
    Request,
    /// A response head arrived, but the body broke off.
    Body,
    /// No complete answer within the request timeout.
    Timeout,
    /// A complete answer that was not 2xx.
    Status,
    /// HTTP/2 only: not sent, because the server had announced GOAWAY (not a failure).
    RefusedUnsent,
    /// HTTP/2 only: sent, then refused by the server's final GOAWAY (never processed, safe to
    /// send again, but many clients and proxies surface it as an error). Counted apart.
    RefusedSent,
    /// Not sent: the connection closed before the request was written, and hyper handed the
    /// request back (not a failure: the server never saw it; hyper-util's pooled client
    /// retries exactly these by default).
    Unsent,
}

impl Outcome {
    pub(crate) fn failed(self) -> bool {
        !matches!(
            self,
            Outcome::Ok | Outcome::RefusedUnsent | Outcome::RefusedSent | Outcome::Unsent
        )
    }
}

/// One request, in microseconds since the bench's epoch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Record {
    pub(crate) start_us: u64,
    pub(crate) latency_us: u64,
    /// The worker that answered (0 if none did).
    pub(crate) pid: u32,
    /// A `/sleep` request (excluded from latency figures: it is slow on purpose).
    pub(crate) slow: bool,
    pub(crate) outcome: Outcome,
}

/// What to run.
#[derive(Clone, Debug)]
pub(crate) struct LoadSpec {
    pub(crate) addr: SocketAddr,
    pub(crate) protocol: Protocol,
    /// Connections looping on `GET /`.
    pub(crate) fast_connections: usize,
    /// Connections looping on `slow_path`, so requests are in flight whenever a worker drains.
    pub(crate) slow_connections: usize,
    pub(crate) slow_path: String,
    pub(crate) timeout: Duration,
    pub(crate) threads: usize,
}

/// Everything a finished load run saw.
pub(crate) struct LoadResult {
    pub(crate) records: Vec<Record>,
    /// The first few failure messages, for the report.
    pub(crate) errors: Vec<String>,
    pub(crate) started: Duration,
    pub(crate) stopped: Duration,
}

/// A load running on its own runtime thread until [`Load::finish`] (or drop).
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Vec<ConnectionLog>, String>>>,
    epoch: Instant,
    started: Duration,
}

#[derive(Default)]
struct ConnectionLog {
    records: Vec<Record>,
    errors: Vec<String>,
}

const ERRORS_KEPT: usize = 20;

impl Load {
    pub(crate) fn start(spec: LoadSpec, epoch: Instant) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let started = epoch.elapsed();
        let thread_stop = stop.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(spec.threads.max(1))
                .enable_all()
                .build()
                .map_err(|e| format!("starting the client runtime: {e}"))?;
            runtime.block_on(async move {
                let slow_path: Arc<str> = spec.slow_path.as_str().into();
                let fast_path: Arc<str> = "/".into();
                let mut tasks = Vec::new();
                for index in 0..spec.fast_connections + spec.slow_connections {
                    let slow = index >= spec.fast_connections;
                    let connection = Connection {
                        addr: spec.addr,
                        protocol: spec.protocol,
                        path: if slow {
                            slow_path.clone()
                        } else {
                            fast_path.clone()
                        },
                        slow,
                        timeout: spec.timeout,
                        epoch,
                    };
                    tasks.push(tokio::spawn(connection.run(thread_stop.clone())));
                }
                let mut logs = Vec::new();
                for task in tasks {
                    logs.push(
                        task.await
                            .map_err(|e| format!("a client task failed: {e}"))?,
                    );
                }
                Ok(logs)
            })
        });
        Load {
            stop,
            thread: Some(thread),
            epoch,
            started,
        }
    }

    /// Stops every connection (requests in flight finish or time out) and returns the records,
    /// sorted by start time.
    pub(crate) fn finish(mut self) -> anyhow::Result<LoadResult> {
        self.stop.store(true, Ordering::SeqCst);
        let stopped = self.epoch.elapsed();
        let thread = self.thread.take().expect("finish runs once");
        let logs = thread
            .join()
            .map_err(|_| anyhow::anyhow!("the client thread panicked"))?
            .map_err(anyhow::Error::msg)?;
        let mut records = Vec::new();
        let mut errors = Vec::new();
        for log in logs {
            records.extend(log.records);
            for error in log.errors {
                if errors.len() < ERRORS_KEPT {
                    errors.push(error);
                }
            }
        }
        records.sort_by_key(|r| r.start_us);
        Ok(LoadResult {
            records,
            errors,
            started: self.started,
            stopped,
        })
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(h2::client::SendRequest<Bytes>),
}

struct Connection {
    addr: SocketAddr,
    protocol: Protocol,
    path: Arc<str>,
    slow: bool,
    timeout: Duration,
    epoch: Instant,
}

impl Connection {
    async fn connect(&self) -> Result<Sender, String> {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = stream.set_nodelay(true);
        match self.protocol {
            Protocol::Http1 => {
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
                tokio::spawn(conn);
                Ok(Sender::H1(sender))
            }
            Protocol::Http2 => {
                let (sender, conn) = h2::client::handshake(stream)
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
                tokio::spawn(conn);
                Ok(Sender::H2(sender))
            }
        }
    }

    async fn run(self, stop: Arc<AtomicBool>) -> ConnectionLog {
        let mut log = ConnectionLog::default();
        let mut sender: Option<Sender> = None;
        while !stop.load(Ordering::Relaxed) {
            let start = Instant::now();
            let mut record = Record {
                start_us: (start - self.epoch).as_micros() as u64,
                latency_us: 0,
                pid: 0,
                slow: self.slow,
                outcome: Outcome::Ok,
            };
            let mut current = match sender.take() {
                Some(s) => s,
                None => match tokio::time::timeout(self.timeout, self.connect()).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(why)) => {
                        record.outcome = Outcome::Connect;
                        log.fail(record, start, why);
                        // Do not spin on a refused port.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                    Err(_) => {
                        record.outcome = Outcome::Connect;
                        log.fail(record, start, "connect: timed out".into());
                        continue;
                    }
                },
            };
            // A connection the server has closed is replaced before anything is sent on it.
            let ready = tokio::time::timeout(self.timeout, async {
                match &mut current {
                    Sender::H1(s) => s.ready().await.is_ok(),
                    // After a GOAWAY h2 refuses new streams here: the connection is replaced.
                    Sender::H2(s) => match s.clone().ready().await {
                        Ok(ready) => {
                            *s = ready;
                            true
                        }
                        Err(_) => false,
                    },
                }
            })
            .await
            .unwrap_or(false);
            if !ready {
                continue;
            }
            // The request's own clock starts here, so latency excludes connection set-up.
            let start = Instant::now();
            record.start_us = (start - self.epoch).as_micros() as u64;
            let exchange = async {
                match &mut current {
                    Sender::H1(s) => self.exchange_h1(s).await,
                    Sender::H2(s) => self.exchange_h2(s).await,
                }
            };
            let (outcome, body, why, close) =
                match tokio::time::timeout(self.timeout, exchange).await {
                    Ok(result) => result,
                    Err(_) => (
                        Outcome::Timeout,
                        None,
                        format!("no answer within {:?}", self.timeout),
                        true,
                    ),
                };
            record.outcome = outcome;
            record.pid = body.as_deref().and_then(pid_of).unwrap_or(0);
            if outcome.failed() {
                log.fail(record, start, why);
            } else {
                record.latency_us = start.elapsed().as_micros() as u64;
                log.records.push(record);
            }
            if !close {
                sender = Some(current);
            }
        }
        log
    }
    /// One request on an HTTP/1.1 connection: (outcome, body, why it failed, connection closes).
    async fn exchange_h1(
        &self,
        sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    ) -> Exchange {
        let request = match Request::get(&*self.path)
            .header("host", "127.0.0.1")
            .body(Empty::new())
        {
            Ok(request) => request,
            Err(e) => {
                return (
                    Outcome::Request,
                    None,
                    format!("building the request: {e}"),
                    true,
                )
            }
        };
        // try_send_request hands a request back when it was never written to the connection,
        // which proves the server never saw it.
        let response = match sender.try_send_request(request).await {
            Ok(response) => response,
            Err(e) if e.message().is_some() => return (Outcome::Unsent, None, String::new(), true),
            Err(e) => {
                return (
                    Outcome::Request,
                    None,
                    format!("request: {:?}", e.error()),
                    true,
                )
            }
        };
        let status = response.status();
        let close = response
            .headers()
            .get("connection")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        match response.into_body().collect().await {
            Ok(_) if !status.is_success() => {
                (Outcome::Status, None, format!("status {status}"), close)
            }
            Ok(body) => (Outcome::Ok, Some(body.to_bytes()), String::new(), close),
            Err(e) => (Outcome::Body, None, format!("body: {e}"), true),
        }
    }

    /// One stream on an HTTP/2 connection, telling a stream h2 declined to open after a GOAWAY
    /// (never sent) from one the server refused after it was sent.
    async fn exchange_h2(&self, sender: &mut h2::client::SendRequest<Bytes>) -> Exchange {
        let request = match Request::get(format!("http://127.0.0.1{}", self.path)).body(()) {
            Ok(request) => request,
            Err(e) => {
                return (
                    Outcome::Request,
                    None,
                    format!("building the request: {e}"),
                    true,
                )
            }
        };
        let response = match sender.send_request(request, true) {
            Ok((response, _)) => response,
            Err(e) if graceful_goaway(&e) => {
                return (Outcome::RefusedUnsent, None, String::new(), true)
            }
            Err(e) => return (Outcome::Request, None, format!("send: {e}"), true),
        };
        let response = match response.await {
            Ok(response) => response,
            // Above the final GOAWAY's last stream id (RFC 9113 6.8): sent, never processed.
            Err(e) if graceful_goaway(&e) => {
                return (Outcome::RefusedSent, None, format!("refused: {e}"), true)
            }
            Err(e) => return (Outcome::Request, None, format!("request: {e}"), true),
        };
        let status = response.status();
        let mut body = response.into_body();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            match chunk {
                Ok(chunk) => {
                    let _ = body.flow_control().release_capacity(chunk.len());
                    bytes.extend_from_slice(&chunk);
                }
                Err(e) => return (Outcome::Body, None, format!("body: {e}"), true),
            }
        }
        if !status.is_success() {
            return (Outcome::Status, None, format!("status {status}"), false);
        }
        (Outcome::Ok, Some(Bytes::from(bytes)), String::new(), false)
    }
}

/// How one exchange ended: the outcome, the body, why it failed, whether the connection closes.
type Exchange = (Outcome, Option<Bytes>, String, bool);

impl ConnectionLog {
    fn fail(&mut self, mut record: Record, start: Instant, why: String) {
        record.latency_us = start.elapsed().as_micros() as u64;
        self.records.push(record);
        if self.errors.len() < ERRORS_KEPT {
            self.errors.push(why);
        }
    }
}

/// The `pid=` of a hello answer.
fn pid_of(body: &[u8]) -> Option<u32> {
    std::str::from_utf8(body)
        .ok()?
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))?
        .parse()
        .ok()
}

/// A graceful (NO_ERROR) GOAWAY from the server.
fn graceful_goaway(error: &h2::Error) -> bool {
    error.is_go_away() && error.is_remote() && error.reason() == Some(h2::Reason::NO_ERROR)
}
