//! A keep-alive load generator that never retries: every request that was sent and did not get
//! a complete 2xx response counts as failed, and so does every refused connection.
//!
//! A connection the server closed (after `Connection: close`, or a GOAWAY) is replaced before
//! the next request; that is what any keep-alive client does, and no request is lost by it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub ok: u64,
    pub failed: u64,
    pub errors: Vec<String>,
    pub pids: HashSet<u32>,
    /// Requests that never left the client: refused after the server's GOAWAY, or handed back
    /// by hyper because the connection closed while they were queued.
    pub refused_before_sending: u64,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Stats>>,
    live: Arc<Mutex<Stats>>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Protocol {
    Http1,
    Http2,
}

impl Load {
    pub fn start(
        addr: SocketAddr,
        connections: usize,
        protocol: Protocol,
        path: &'static str,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let live = Arc::new(Mutex::new(Stats::default()));
        let (stop2, live2) = (stop.clone(), live.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let tasks_live = live2.clone();
            runtime.block_on(async move {
                let live2 = tasks_live;
                let mut tasks = Vec::new();
                for _ in 0..connections {
                    tasks.push(tokio::spawn(connection(
                        addr,
                        protocol,
                        path,
                        stop2.clone(),
                        live2.clone(),
                    )));
                }
                for task in tasks {
                    let _ = task.await;
                }
            });
            let stats = live2.lock().unwrap().clone();
            stats
        });
        Load {
            stop,
            thread: Some(thread),
            live,
        }
    }

    /// Successful requests so far.
    pub fn ok(&self) -> u64 {
        self.live.lock().unwrap().ok
    }

    /// Every pid that answered a request of the load so far.
    pub fn pids(&self) -> HashSet<u32> {
        self.live.lock().unwrap().pids.clone()
    }

    /// Waits until a request of the load was answered by the worker `pid`.
    pub fn wait_served_by(&self, pid: u32) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !self.live.lock().unwrap().pids.contains(&pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "the load never reached worker {pid}: {:?}",
                self.live.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until at least `n` more requests succeeded than now.
    pub fn wait_progress(&self, n: u64) {
        let target = self.ok() + n;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.ok() < target {
            assert!(
                std::time::Instant::now() < deadline,
                "load made no progress: {:?}",
                self.live.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn finish(mut self) -> Stats {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
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
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

async fn connect(addr: SocketAddr, protocol: Protocol) -> Result<Sender, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(stream);
    match protocol {
        Protocol::Http1 => {
            let (sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            Ok(Sender::H1(sender))
        }
        Protocol::Http2 => {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            Ok(Sender::H2(sender))
        }
    }
}

async fn connection(
    addr: SocketAddr,
    protocol: Protocol,
    path: &'static str,
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<Stats>>,
) {
    let mut sender: Option<Sender> = None;
    let fail = |why: String| {
        let mut s = stats.lock().unwrap();
        s.failed += 1;
        if s.errors.len() < 20 {
            s.errors.push(why);
        }
    };
    while !stop.load(Ordering::SeqCst) {
        let mut current = match sender.take() {
            Some(s) => s,
            None => match connect(addr, protocol).await {
                Ok(s) => s,
                Err(e) => {
                    fail(e);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        // A connection the server has closed is replaced before anything is sent on it.
        let ready = match &mut current {
            Sender::H1(s) => s.ready().await.is_ok(),
            Sender::H2(s) => s.ready().await.is_ok() && !s.is_closed(),
        };
        if !ready {
            continue;
        }
        let request = Request::get(path)
            .header("host", "127.0.0.1")
            .body(Empty::new())
            .unwrap();
        let response = match &mut current {
            Sender::H1(s) => s.try_send_request(request).await,
            Sender::H2(s) => s.try_send_request(request).await,
        };
        match response {
            Ok(response) => {
                let status = response.status();
                let close = response
                    .headers()
                    .get("connection")
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                match response.into_body().collect().await {
                    Ok(body) if status.is_success() => {
                        let body = String::from_utf8_lossy(&body.to_bytes()).to_string();
                        let pid = body
                            .split_whitespace()
                            .find_map(|w| w.strip_prefix("pid="))
                            .and_then(|p| p.parse().ok());
                        let mut s = stats.lock().unwrap();
                        s.ok += 1;
                        if let Some(pid) = pid {
                            s.pids.insert(pid);
                        }
                    }
                    Ok(_) => fail(format!("status {status}")),
                    Err(e) => {
                        fail(format!("body: {e}"));
                        continue;
                    }
                }
                if !close {
                    sender = Some(current);
                }
            }
            Err(mut e) => {
                // hyper hands the request back when it never left the client: the connection
                // closed while the request waited in its queue. And h2 refuses, without sending
                // them, requests opened after the server's GOAWAY (RFC 9113: not processed).
                // Nothing reached the server in either case; the next request uses a new
                // connection, as in any client. The request is not sent again.
                if e.take_message().is_some() || refused_by_goaway(e.error()) {
                    stats.lock().unwrap().refused_before_sending += 1;
                } else {
                    fail(format!("request: {:?}", e.into_error()));
                }
            }
        }
    }
}

/// A graceful (NO_ERROR) GOAWAY from the server, surfacing on a request the client had not sent.
fn refused_by_goaway(error: &hyper::Error) -> bool {
    let Some(h2) = std::error::Error::source(error).and_then(|s| s.downcast_ref::<h2::Error>())
    else {
        return false;
    };
    h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR)
}
