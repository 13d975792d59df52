//! The API a program sees inside a worker: its listeners, who it is, when to stop, and how to
//! say it is ready.
//!
//! Only workers run the program's closure; the master never does. See [`Worker`].

mod env;
mod exclusive;
mod start_up;

use env::WorkerEnv;
use start_up::StartUp;

use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};

pub use exclusive::Shutdown;

use crate::error::{Error, Result};
use crate::protocol::{self, Message};

/// A worker's view of itself, handed to the program's closure.
///
/// Cheap to clone; every clone refers to the same worker.
///
/// ```no_run
/// # async fn program(worker: handover::Worker) -> std::io::Result<()> {
/// let listener = worker.tcp("http").expect("configured");
/// worker.ready(); // the `http::serve` helper does this for you
/// tokio::select! {
///     _ = worker.shutdown() => {}          // drain: stop accepting, finish, return
///     _ = listener.accept() => {}
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    started_at: SystemTime,
    binary: PathBuf,
    sha256: String,
    idle_grace: Duration,
    names: Vec<String>,
    /// Each listener's address, to find a taken listener's drain timeout by.
    addresses: Vec<Option<socket2::SockAddr>>,
    drain_timeouts: Vec<Option<Duration>>,
    stop_drain_timeout: Option<Duration>,
    fds: Mutex<Vec<Option<OwnedFd>>>,
    ready_sent: AtomicBool,
    start_up: StartUp,
    outgoing: mpsc::UnboundedSender<Outgoing>,
    shutdown: watch::Receiver<bool>,
    /// Set when the master said it stops (before its `drain`).
    stopping: watch::Receiver<bool>,
    exclusive: exclusive::Jobs,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.inner.id)
            .field("sha256", &self.inner.sha256)
            .field("listeners", &self.inner.names)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// This worker's number: 1 for the master's first worker, counting up.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// When this worker was started.
    pub fn started_at(&self) -> SystemTime {
        self.inner.started_at
    }

    /// The live binary's path, as the master sees it.
    pub fn binary_path(&self) -> &std::path::Path {
        &self.inner.binary
    }

    /// SHA-256 (hex) of the binary this worker runs.
    pub fn binary_sha256(&self) -> &str {
        &self.inner.sha256
    }

    /// How long idle keep-alive connections are kept once draining begins.
    pub fn idle_grace(&self) -> Duration {
        self.inner.idle_grace
    }

    /// The listeners' names, in fd order.
    pub fn listener_names(&self) -> &[String] {
        &self.inner.names
    }

    /// How long the connections of listener `name` may drain after a restart or an upgrade:
    /// its `[[listen]] drain_timeout`, else the top-level `drain_timeout`. None for an unknown
    /// name, or under a master too old to say.
    pub fn drain_timeout(&self, name: &str) -> Option<Duration> {
        let index = self.inner.names.iter().position(|n| n == name)?;
        self.inner.drain_timeouts.get(index).copied().flatten()
    }

    /// The drain timeout when the master stops, if it is set apart (`stop_drain_timeout`).
    pub fn stop_drain_timeout(&self) -> Option<Duration> {
        self.inner.stop_drain_timeout
    }

    /// The drain timeout of the listener bound at `address`.
    pub(crate) fn drain_timeout_of(&self, address: &socket2::SockAddr) -> Option<Duration> {
        let index = self
            .inner
            .addresses
            .iter()
            .position(|a| a.as_ref() == Some(address))?;
        self.inner.drain_timeouts.get(index).copied().flatten()
    }

    /// Becomes true when the master says it stops.
    pub(crate) fn stopping_signal(&self) -> watch::Receiver<bool> {
        self.inner.stopping.clone()
    }

    /// While draining: tells the master how many connections are still open.
    pub(crate) fn report_open(&self, open: u64) {
        let _ = self
            .inner
            .outgoing
            .send(Outgoing::Message(Message::Open(open)));
    }

    /// Takes the TCP listener called `name`. Each listener can be taken once.
    pub fn tcp(&self, name: &str) -> Result<tokio::net::TcpListener> {
        let fd = self.take(name, Kind::Tcp)?;
        let listener = std::net::TcpListener::from(fd);
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io(format!("listener {name}"), e))?;
        tokio::net::TcpListener::from_std(listener)
            .map_err(|e| Error::io(format!("listener {name}"), e))
    }

    /// Takes the TCP listener at `index` (0 is fd 3).
    pub fn tcp_at(&self, index: usize) -> Result<tokio::net::TcpListener> {
        let name = self.name_at(index)?;
        self.tcp(&name)
    }

    /// Takes the Unix stream listener called `name`.
    pub fn unix(&self, name: &str) -> Result<tokio::net::UnixListener> {
        let fd = self.take(name, Kind::Unix)?;
        let listener = std::os::unix::net::UnixListener::from(fd);
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io(format!("listener {name}"), e))?;
        tokio::net::UnixListener::from_std(listener)
            .map_err(|e| Error::io(format!("listener {name}"), e))
    }

    /// Takes the UDP socket called `name`.
    pub fn udp(&self, name: &str) -> Result<tokio::net::UdpSocket> {
        let fd = self.take(name, Kind::Udp)?;
        let socket = std::net::UdpSocket::from(fd);
        socket
            .set_nonblocking(true)
            .map_err(|e| Error::io(format!("socket {name}"), e))?;
        tokio::net::UdpSocket::from_std(socket).map_err(|e| Error::io(format!("socket {name}"), e))
    }

    /// The kind of the listener called `name`, if it exists and has not been taken.
    pub fn listener_kind(&self, name: &str) -> Option<ListenerKind> {
        let index = self.inner.names.iter().position(|n| n == name)?;
        let fds = self.inner.fds.lock().expect("listener table poisoned");
        fds[index].as_ref().and_then(ListenerKind::of)
    }

    fn name_at(&self, index: usize) -> Result<String> {
        self.inner
            .names
            .get(index)
            .cloned()
            .ok_or_else(|| Error::NoSuchListener {
                name: format!("#{index}"),
                available: self.inner.names.join(", "),
            })
    }

    /// Takes a listener of the wanted kind; a listener of another kind is left in place.
    fn take(&self, name: &str, wanted: Kind) -> Result<OwnedFd> {
        let index = self
            .inner
            .names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| Error::NoSuchListener {
                name: name.into(),
                available: self.inner.names.join(", "),
            })?;
        let mut fds = self.inner.fds.lock().expect("listener table poisoned");
        let slot = &mut fds[index];
        let fd = slot.as_ref().ok_or_else(|| Error::Listener {
            name: name.into(),
            message: "was already taken".into(),
        })?;
        match Kind::of(fd) {
            Some(kind) if kind == wanted => Ok(slot.take().expect("checked above")),
            Some(kind) => Err(Error::Listener {
                name: name.into(),
                message: format!("is a {kind:?} socket, not {wanted:?}"),
            }),
            None => Err(Error::Listener {
                name: name.into(),
                message: "is not a socket handover can serve".into(),
            }),
        }
    }

    /// Tells the master this worker is ready: the old worker starts draining. Idempotent.
    ///
    /// Call it once the program can serve (caches warm, connections to databases open). The
    /// [`http::serve`](crate::http::serve) helper calls it when it starts accepting.
    pub fn ready(&self) {
        if !self.inner.ready_sent.swap(true, Ordering::SeqCst) {
            let _ = self.inner.outgoing.send(Outgoing::Message(Message::Ready));
            self.inner.start_up.log();
        }
    }

    /// Asks the master for a hand-over to a new worker (as after SIGUSR2).
    pub fn restart(&self) {
        let _ = self
            .inner
            .outgoing
            .send(Outgoing::Message(Message::Restart));
    }

    /// Completes when draining begins: the master has a new worker serving, is stopping, or is
    /// gone. Stop accepting, finish what is in flight, then return from the program.
    pub fn shutdown(&self) -> impl Future<Output = ()> + Send + 'static {
        self.shutdown_signal().wait()
    }

    /// A clonable handle on the same signal as [`shutdown`](Worker::shutdown).
    pub fn shutdown_signal(&self) -> Shutdown {
        Shutdown::new(self.inner.shutdown.clone())
    }

    /// Whether draining has begun.
    pub fn is_draining(&self) -> bool {
        *self.inner.shutdown.borrow()
    }

    /// Runs `job` in exactly one worker at a time: a cron scheduler, a queue consumer, a
    /// leader-only task.
    ///
    /// The job starts once the master grants this worker exclusivity, which it does only after
    /// the previous worker's exclusive jobs have all returned (or that worker has exited). The
    /// job receives a [`Shutdown`] and must return soon after it fires.
    pub fn spawn_exclusive<F, Fut>(&self, name: &str, job: F)
    where
        F: FnOnce(Shutdown) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.inner
            .exclusive
            .spawn(name, self.shutdown_signal(), job);
    }
}

/// Runs the program in a worker process. Called by [`Handover::run`](crate::Handover::run)
/// when the environment says this process is a worker.
pub(crate) fn run_worker<F, Fut, E>(
    threads: Option<usize>,
    master_signals: &[String],
    program: F,
) -> Result<()>
where
    F: FnOnce(Worker) -> Fut,
    Fut: Future<Output = std::result::Result<(), E>>,
    E: std::fmt::Display,
{
    let main_us = protocol::monotonic_us();
    let env = WorkerEnv::read()?;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = threads {
        builder.worker_threads(threads.max(1));
    }
    let runtime = builder
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the worker runtime", e))?;
    let start_up = StartUp {
        spawned_us: env.spawned_us,
        main_us,
        runtime_us: protocol::monotonic_us(),
    };
    let master_signals: Vec<i32> = master_signals
        .iter()
        .filter_map(|name| crate::signals::signal_number(name))
        .chain([libc::SIGUSR1])
        .filter(|&n| n != libc::SIGTERM && n != libc::SIGINT && n != libc::SIGKILL)
        .collect();
    let result = runtime.block_on(async move {
        ignore_master_signals(&master_signals);
        let control = env.control;
        control
            .set_nonblocking(true)
            .map_err(|e| Error::io("control channel", e))?;
        let control = tokio::net::UnixStream::from_std(control)
            .map_err(|e| Error::io("control channel", e))?;
        let (read, mut write) = control.into_split();
        let (outgoing, mut outgoing_rx) = mpsc::unbounded_channel::<Outgoing>();
        let (shutdown_tx, shutdown) = watch::channel(false);
        let (stopping_tx, stopping) = watch::channel(false);
        let exclusive = exclusive::Jobs::new(outgoing.clone(), Shutdown::new(shutdown.clone()));
        let worker = Worker {
            inner: Arc::new(Inner {
                id: env.id,
                started_at: SystemTime::now(),
                binary: env.binary,
                sha256: env.sha256,
                idle_grace: env.idle_grace,
                addresses: env
                    .fds
                    .iter()
                    .map(|fd| socket2::SockRef::from(fd).local_addr().ok())
                    .collect(),
                drain_timeouts: env.drain_timeouts,
                stop_drain_timeout: env.stop_drain_timeout,
                names: env.names,
                fds: Mutex::new(env.fds.into_iter().map(Some).collect()),
                ready_sent: AtomicBool::new(false),
                start_up,
                outgoing,
                shutdown,
                stopping,
                exclusive: exclusive.clone(),
            }),
        };
        let writer = tokio::spawn(async move {
            while let Some(item) = outgoing_rx.recv().await {
                match item {
                    Outgoing::Message(message) => {
                        if write.write_all(&message.as_line()).await.is_err() {
                            break;
                        }
                    }
                    Outgoing::Flushed(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        let shutdown_tx = Arc::new(shutdown_tx);
        let reader_shutdown = shutdown_tx.clone();
        let grants = exclusive.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(read).lines();
            loop {
                match lines.next_line().await {
                    Ok(Some(line)) => match Message::parse(&line) {
                        Some(Message::Drain) => {
                            let _ = reader_shutdown.send(true);
                        }
                        Some(Message::Stopping) => {
                            let _ = stopping_tx.send(true);
                        }
                        Some(Message::Grant) => grants.grant(),
                        _ => tracing::warn!(line = %line, "unexpected control message"),
                    },
                    _ => {
                        tracing::warn!("master is gone; draining");
                        let _ = reader_shutdown.send(true);
                        break;
                    }
                }
            }
        });
        // The master's parent-death signal and a plain `kill` both mean: drain.
        let signal_shutdown = shutdown_tx.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            if let Ok(mut term) = signal(SignalKind::terminate()) {
                term.recv().await;
                let _ = signal_shutdown.send(true);
            }
        });
        let result = program(worker.clone()).await;
        // The program is done: stop the exclusive jobs too, let them finish, and say so.
        let _ = shutdown_tx.send(true);
        exclusive.finish().await;
        // Everything queued before this point (ready, released) reaches the master.
        let (flushed, done) = tokio::sync::oneshot::channel();
        let _ = worker.inner.outgoing.send(Outgoing::Flushed(flushed));
        let _ = tokio::time::timeout(Duration::from_secs(1), done).await;
        drop(worker);
        writer.abort();
        result.map_err(|e| Error::Master(format!("the program returned an error: {e}")))
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// The kinds of socket a worker can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ListenerKind {
    /// A TCP listener: [`Worker::tcp`].
    Tcp,
    /// A Unix stream listener: [`Worker::unix`].
    Unix,
    /// A UDP socket: [`Worker::udp`].
    Udp,
}

use ListenerKind as Kind;

impl ListenerKind {
    fn of(fd: &OwnedFd) -> Option<Kind> {
        let socket = socket2::SockRef::from(fd);
        let unix = socket.local_addr().ok()?.is_unix();
        match (socket.r#type().ok()?, unix) {
            (socket2::Type::STREAM, false) => Some(Kind::Tcp),
            (socket2::Type::STREAM, true) => Some(Kind::Unix),
            (socket2::Type::DGRAM, false) => Some(Kind::Udp),
            _ => None,
        }
    }
}

/// What the worker's control writer sends, in order.
pub(crate) enum Outgoing {
    Message(Message),
    /// Answered once every earlier message has been written.
    Flushed(tokio::sync::oneshot::Sender<()>),
}

/// Whether this process was started by a master as a worker.
pub(crate) fn is_worker() -> bool {
    std::env::var_os(protocol::ENV_CONTROL_FD).is_some()
}

/// The master's restart and re-exec signals, when they reach a worker (`systemctl kill -s USR2`
/// signals every process of the unit, `pkill` every process of the name): caught and logged,
/// so they do not kill it. A worker hands over only when its master says so. Caught, not
/// ignored: an ignored disposition would be inherited by the programs the worker runs.
fn ignore_master_signals(numbers: &[i32]) {
    use tokio::signal::unix::{signal, SignalKind};
    for &number in numbers {
        match signal(SignalKind::from_raw(number)) {
            Ok(mut stream) => {
                tokio::spawn(async move {
                    while stream.recv().await.is_some() {
                        tracing::info!(
                            signal = number,
                            "the master's signal reached this worker; ignored (send it to the master)"
                        );
                    }
                });
            }
            Err(e) => {
                tracing::warn!(signal = number, error = %e, "cannot catch the master's signal")
            }
        }
    }
}
