//! The comparison server: the hello service on plain hyper 1 + hyper-util `auto` (HTTP/1.1 and
//! HTTP/2), with no master, no drain wrapper and no hand-overs.
//!
//! It is this same bench binary, started again with a hidden flag, so that like a hello worker
//! it is a process of its own, apart from the load client (no shared allocator or scheduler
//! quirks on one side only): the only difference left is handover. It runs on as many runtime threads as each hello
//! worker, and listens with a backlog of 1024 like the master's socket, so a burst of connects
//! is not refused by a shallow queue (which would be measuring the backlog, not the server).

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use socket2::{Domain, Socket, Type};
use tokio::sync::oneshot;

use crate::common;
use crate::procs::Guarded;

/// The hidden flag that makes the bench binary serve the baseline instead of benchmarking.
pub(crate) const SERVE_FLAG: &str = "--serve-baseline";

/// The baseline server in a child process (this binary with [`SERVE_FLAG`]).
pub(crate) struct BaselineProcess {
    pub(crate) addr: SocketAddr,
    /// Stopped with SIGTERM when dropped; the child also stops when its stdin closes.
    process: Guarded,
}

impl BaselineProcess {
    /// Starts the server on `port` of 127.0.0.1 (0: any free port) and waits until it listens.
    pub(crate) fn start(threads: usize, port: u16) -> anyhow::Result<Self> {
        // Spawned from the main thread, like every child (see `Guarded::spawn`).
        let me = std::env::current_exe().context("finding this binary's path")?;
        let mut command = Command::new(me);
        command
            .arg(SERVE_FLAG)
            .arg("--threads")
            .arg(threads.to_string())
            .arg("--port")
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut process = Guarded::spawn(
            &mut command,
            libc::SIGKILL,
            libc::SIGTERM,
            Duration::from_secs(2),
        )
        .context("starting the baseline server")?;
        let stdout = process
            .stdout()
            .context("the baseline server's stdout is not piped")?;
        // The child prints its address once it listens. Read on a helper thread so a child that
        // never answers cannot hang the bench.
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let read = BufReader::new(stdout.take(256)).read_line(&mut line);
            let _ = sender.send(read.map(|_| line));
        });
        let line = match receiver.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => bail!("reading the baseline server's address: {e}"),
            Err(_) => bail!("the baseline server did not report its address within 10 s"),
        };
        let Ok(addr) = line.trim().parse() else {
            bail!("the baseline server did not report its address (it printed {line:?})");
        };
        Ok(Self { addr, process })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.process.pid()
    }
}

/// The child's side: serves until its stdin closes (the bench stopped or died).
pub(crate) fn serve_until_stdin_closes(threads: usize, port: u16) -> anyhow::Result<()> {
    let server = Baseline::start(threads, port)?;
    println!("{}", server.addr);
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(server);
    Ok(())
}

pub(crate) struct Baseline {
    pub(crate) addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Baseline {
    pub(crate) fn start(threads: usize, port: u16) -> anyhow::Result<Self> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        // Binds again at once on the port a stopped server left (the naive restart).
        socket.set_reuse_address(true)?;
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())
            .with_context(|| format!("binding 127.0.0.1:{port}"))?;
        socket.listen(1024)?;
        socket.set_nonblocking(true)?;
        let listener: std::net::TcpListener = socket.into();
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .enable_all()
            .build()
            .context("starting the baseline server's runtime")?;
        // The same line the hello workers answer, so both servers send the same bytes.
        let line = format!(
            "hello from pid={} worker=0 sha256=000000000000 version={}\n",
            std::process::id(),
            env!("CARGO_PKG_VERSION")
        );
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(e) => {
                        eprintln!("baseline server: {e}");
                        return;
                    }
                };
                tokio::pin!(stopped);
                loop {
                    let stream = tokio::select! {
                        _ = &mut stopped => break,
                        accepted = listener.accept() => match accepted {
                            Ok((stream, _)) => stream,
                            Err(_) => {
                                // EMFILE and friends: back off instead of spinning.
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        },
                    };
                    let _ = stream.set_nodelay(true);
                    let line = line.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |request| {
                            // No `POST /restart`: there is no master to ask.
                            common::hello(line.clone(), None, request)
                        });
                        let mut builder =
                            hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                        builder.http1().timer(TokioTimer::new());
                        builder.http2().timer(TokioTimer::new());
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
            // Dropping the runtime here cancels the connections still open.
            drop(runtime);
        });
        Ok(Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
