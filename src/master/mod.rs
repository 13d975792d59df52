//! The master: a process with a stable PID that binds the sockets once, starts workers from the
//! binary on disk, and hands over from one worker to the next.
//!
//! One event loop owns all state. Signals, the library handle, workers' control messages,
//! worker exits, timers and the upgrade task all arrive as [`Event`]s, so there is no locking
//! and every transition is logged in one place.

pub(crate) mod control;
mod listeners;
mod notify;
pub(crate) mod program;
pub(crate) mod spawn;
mod status;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};

pub use program::{ProgramConfig, ReadyMode};
pub use status::{Phase, Status, UpgradeRecord, WorkerInfo};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::protocol::Message;
use crate::upgrade::{self, InstallOutcome, Staged};
use spawn::{Launch, Protocol, WorkerProc};

/// Everything the event loop reacts to.
#[derive(Debug)]
pub(crate) enum Event {
    Signal(i32),
    Command(Command),
    Control {
        worker: u64,
        message: Message,
    },
    Exited {
        worker: u64,
        status: Option<ExitStatus>,
    },
    ReadyTimeout {
        worker: u64,
    },
    DrainTimeout {
        worker: u64,
    },
    ProbationOver {
        worker: u64,
    },
    Respawn {
        generation: u64,
    },
    Install {
        staged: Staged,
        reply: oneshot::Sender<InstallOutcome>,
    },
}

/// Requests from a [`MasterHandle`].
#[derive(Debug)]
pub(crate) enum Command {
    Restart,
    Stop,
    Rollback(oneshot::Sender<std::result::Result<(), String>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Initial,
    Recovery,
    Restart,
    Upgrade,
    Rollback,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Initial => "initial start",
            Reason::Recovery => "recovery",
            Reason::Restart => "restart",
            Reason::Upgrade => "upgrade",
            Reason::Rollback => "rollback",
        }
    }
}

struct Pending {
    worker: WorkerProc,
    reason: Reason,
}

/// An upgrade whose new worker has not yet proven itself.
struct Probation {
    staged_sha256: String,
    version: Option<semver::Version>,
    origin: String,
    worker: Option<u64>,
    reply: Option<oneshot::Sender<InstallOutcome>>,
}

/// A handle to a running master: ask for a hand-over or a stop, and watch its status.
#[derive(Debug, Clone)]
pub struct MasterHandle {
    events: mpsc::UnboundedSender<Event>,
    status: watch::Receiver<Status>,
    check_now: std::sync::Arc<tokio::sync::Notify>,
}

impl MasterHandle {
    /// Starts a hand-over to a new worker (coalesced with one already under way).
    pub fn restart(&self) -> Result<()> {
        self.send(Command::Restart)
    }

    /// Starts a graceful stop.
    pub fn stop(&self) -> Result<()> {
        self.send(Command::Stop)
    }

    /// Puts the previous binary back and hands over to it.
    pub async fn rollback(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Rollback(tx))?;
        rx.await
            .map_err(|_| Error::Master("stopped".into()))?
            .map_err(Error::Master)
    }

    /// Asks the fetcher for a new binary now instead of at the next interval.
    pub fn check_for_upgrade(&self) {
        self.check_now.notify_one();
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    fn send(&self, command: Command) -> Result<()> {
        self.events
            .send(Event::Command(command))
            .map_err(|_| Error::Master("stopped".into()))
    }

    pub(crate) fn events(&self) -> mpsc::UnboundedSender<Event> {
        self.events.clone()
    }
}

/// A master, bound and ready to run.
pub struct Master {
    config: Config,
    binary: PathBuf,
    args: Vec<OsString>,
    protocol: Protocol,
    listeners: Vec<listeners::BoundListener>,
    listener_inodes: Vec<u64>,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
    status: watch::Sender<Status>,
    version: Option<String>,
    updater: Option<upgrade::Updater>,
    check_now: std::sync::Arc<tokio::sync::Notify>,

    next_id: u64,
    current: Option<WorkerProc>,
    pending: Option<Pending>,
    draining: Vec<WorkerProc>,
    again: bool,
    stopping: bool,
    stopped: bool,
    ever_ready: bool,
    exclusive_holder: Option<u64>,
    crash_streak: u32,
    respawn_generation: u64,
    respawn_scheduled: bool,
    probation: Option<Probation>,
    queued_install: Option<(Staged, oneshot::Sender<InstallOutcome>)>,
    hash_cache: upgrade::HashCache,
    counters: (u64, u64, u64),
    last_upgrade: Option<UpgradeRecord>,
    started_at: SystemTime,
    handover_started: Option<Instant>,
}

impl Master {
    /// Binds the configured listeners (or adopts systemd's) and prepares to start workers from
    /// `config.binary` (default: this executable) with this process's arguments.
    pub fn new(config: Config) -> Result<Self> {
        Self::with_protocol(
            config,
            Protocol::Library,
            std::env::args_os().skip(1).collect(),
        )
    }

    /// A master for any program (`handover run`): workers are `program` with `args`, given
    /// their sockets by systemd's socket-activation protocol.
    pub fn for_program(mut config: Config, program: PathBuf, args: Vec<OsString>) -> Result<Self> {
        config.binary = Some(program);
        if config.upgrade.sanity == crate::config::Sanity::Handover {
            config.upgrade.sanity = crate::config::Sanity::ExitZero;
        }
        let protocol = Protocol::Program(program::ProgramProtocol::new(config.program.clone())?);
        Self::with_protocol(config, protocol, args)
    }

    pub(crate) fn with_protocol(
        config: Config,
        protocol: Protocol,
        args: Vec<OsString>,
    ) -> Result<Self> {
        config
            .validate()
            .map_err(|(field, message)| Error::config("config", format!("{field} {message}")))?;
        let binary = spawn::resolve_binary(config.binary.as_deref())
            .map_err(|e| Error::io("resolving the live binary's path", e))?;
        upgrade::swap::clean_leftovers(&binary);
        let listeners = listeners::bind_all(&config.listen)?;
        let listener_inodes = listeners.iter().filter_map(|l| l.inode()).collect();
        let (events_tx, events) = mpsc::unbounded_channel();
        let status = Status {
            phase: Phase::Starting,
            master_pid: std::process::id(),
            binary: binary.clone(),
            version: None,
            started_at: SystemTime::now(),
            worker: None,
            starting: None,
            draining: Vec::new(),
            handovers: 0,
            failed_handovers: 0,
            crashes: 0,
            last_upgrade: None,
        };
        let (status, _) = watch::channel(status);
        Ok(Self {
            config,
            binary,
            args,
            protocol,
            listeners,
            listener_inodes,
            events_tx,
            events,
            status,
            version: None,
            updater: None,
            check_now: Default::default(),
            next_id: 1,
            current: None,
            pending: None,
            draining: Vec::new(),
            again: false,
            stopping: false,
            stopped: false,
            ever_ready: false,
            exclusive_holder: None,
            crash_streak: 0,
            respawn_generation: 0,
            respawn_scheduled: false,
            probation: None,
            queued_install: None,
            hash_cache: upgrade::HashCache::default(),
            counters: (0, 0, 0),
            last_upgrade: None,
            started_at: SystemTime::now(),
            handover_started: None,
        })
    }

    /// The version the running program declares (shown in status, compared by fetchers).
    pub fn set_version(&mut self, version: Option<String>) {
        self.version = version;
    }

    /// Polls `fetcher` for new binaries and installs them through the upgrade pipeline.
    pub fn set_fetcher(&mut self, fetcher: Box<dyn handover_fetcher::Fetcher>) {
        self.updater = Some(upgrade::Updater::new(
            fetcher,
            self.config.upgrade.clone(),
            self.binary.clone(),
            self.check_now.clone(),
        ));
    }

    /// A handle for restarts, stops and status.
    pub fn handle(&self) -> MasterHandle {
        MasterHandle {
            events: self.events_tx.clone(),
            status: self.status.subscribe(),
            check_now: self.check_now.clone(),
        }
    }

    /// The live binary's path.
    pub fn binary(&self) -> &std::path::Path {
        &self.binary
    }

    /// Runs until a graceful stop completes (returns `Ok`) or a forced stop (returns `Err`).
    /// Must run on a current-thread runtime on the thread that created the master: workers'
    /// parent-death signal is tied to the spawning thread.
    pub async fn run(mut self) -> Result<()> {
        self.listen_for_signals()?;
        let _control_file = match self.config.control_socket.clone() {
            Some(path) => {
                let (listener, file) = control::bind(&path).map_err(|e| Error::Bind {
                    address: format!("control socket {}", path.display()),
                    source: e,
                })?;
                tracing::info!(path = %path.display(), "control socket ready");
                tokio::spawn(control::serve(listener, self.handle()));
                Some(file)
            }
            None => None,
        };
        if let Some(manager) = notify::ServiceManager::from_env() {
            tokio::spawn(manager.follow(self.status.subscribe()));
        }
        let version = self
            .version
            .clone()
            .and_then(|v| semver::Version::parse(&v).ok());
        if let Some(updater) = self.updater.take() {
            tokio::spawn(updater.run(self.handle(), version));
        }
        self.start_worker(Reason::Initial).await;
        self.publish();
        while let Some(event) = self.events.recv().await {
            if let Some(result) = self.handle_event(event).await {
                self.publish();
                for listener in &self.listeners {
                    listener.remove_socket_file();
                }
                return result;
            }
            self.publish();
        }
        Ok(())
    }

    fn listen_for_signals(&self) -> Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut wanted: Vec<i32> = vec![libc::SIGTERM, libc::SIGINT];
        for name in &self.config.restart_signals {
            wanted.extend(crate::sys::signal_number(name));
        }
        wanted.sort_unstable();
        wanted.dedup();
        for number in wanted {
            let mut stream = signal(SignalKind::from_raw(number))
                .map_err(|e| Error::io(format!("installing a handler for signal {number}"), e))?;
            let events = self.events_tx.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if events.send(Event::Signal(number)).is_err() {
                        break;
                    }
                }
            });
        }
        Ok(())
    }

    async fn handle_event(&mut self, event: Event) -> Option<Result<()>> {
        match event {
            Event::Signal(number) if number == libc::SIGINT || number == libc::SIGTERM => {
                if self.stopping && number == libc::SIGINT {
                    tracing::warn!("second SIGINT: killing every worker now");
                    // Directly, not through the child-owner tasks: the runtime stops as soon as
                    // this returns, before those tasks would run. The children are not reaped
                    // yet, so their PIDs cannot have been reused.
                    for worker in self.all_workers() {
                        let _ = crate::sys::send_signal(worker.pid, libc::SIGKILL);
                    }
                    return Some(Err(Error::Master("forced stop".into())));
                }
                tracing::info!(signal = number, "stop requested");
                self.begin_stop().await;
            }
            Event::Signal(number) => {
                tracing::info!(signal = number, "hand-over requested by signal");
                self.request_handover(Reason::Restart).await;
            }
            Event::Command(Command::Restart) => self.request_handover(Reason::Restart).await,
            Event::Command(Command::Stop) => self.begin_stop().await,
            Event::Command(Command::Rollback(reply)) => {
                let result = self.rollback_on_request().await;
                let _ = reply.send(result);
            }
            Event::Control { worker, message } => self.on_control(worker, message).await,
            Event::Exited { worker, status } => self.on_exit(worker, status).await,
            Event::ReadyTimeout { worker } => {
                if self
                    .pending
                    .as_ref()
                    .is_some_and(|p| p.worker.id == worker && !p.worker.ready)
                {
                    let timeout = self.config.ready_timeout;
                    tracing::error!(
                        worker,
                        ?timeout,
                        "new worker was not ready in time; killing it"
                    );
                    if let Some(pending) = &self.pending {
                        pending.worker.kill();
                    }
                    let pending = self.pending.take().expect("checked above");
                    self.handover_failed(
                        pending,
                        format!("not ready within {}", humantime::format_duration(timeout)),
                    )
                    .await;
                }
            }
            Event::DrainTimeout { worker } => {
                if let Some(w) = self.draining.iter().find(|w| w.id == worker) {
                    tracing::warn!(
                        worker,
                        pid = w.pid,
                        "drain timeout passed; killing the old worker"
                    );
                    w.kill();
                }
            }
            Event::ProbationOver { worker } => {
                if self
                    .probation
                    .as_ref()
                    .is_some_and(|p| p.worker == Some(worker))
                {
                    let probation = self.probation.take().expect("checked above");
                    tracing::info!(worker, sha256 = %short(&probation.staged_sha256), "upgrade passed probation");
                    self.record_upgrade(
                        &probation.origin,
                        &probation.staged_sha256,
                        "installed".into(),
                    );
                    if let Some(version) = probation.version {
                        self.version = Some(version.to_string());
                    }
                    if let Some(reply) = probation.reply {
                        let _ = reply.send(InstallOutcome::Installed);
                    }
                }
            }
            Event::Respawn { generation } => {
                if generation == self.respawn_generation && self.respawn_scheduled {
                    self.respawn_scheduled = false;
                    if self.current.is_none() && self.pending.is_none() && !self.stopping {
                        self.start_worker(Reason::Recovery).await;
                    }
                }
            }
            Event::Install { staged, reply } => {
                if self.stopping {
                    let _ = reply.send(InstallOutcome::Failed("the master is stopping".into()));
                } else if self.pending.is_some() || self.probation.is_some() {
                    if let Some((old, old_reply)) = self.queued_install.replace((staged, reply)) {
                        upgrade::swap::discard(&old.path);
                        let _ = old_reply.send(InstallOutcome::Failed(
                            "superseded by a newer candidate".into(),
                        ));
                    }
                } else {
                    self.install(staged, reply).await;
                }
            }
        }
        if self.stopping
            && self.pending.is_none()
            && self.current.is_none()
            && self.draining.is_empty()
        {
            tracing::info!("every worker has exited; master stops");
            self.stopped = true;
            return Some(Ok(()));
        }
        None
    }

    async fn request_handover(&mut self, reason: Reason) {
        if self.stopping {
            tracing::info!("hand-over ignored: the master is stopping");
        } else if self.pending.is_some() {
            tracing::info!("hand-over already under way; one more will follow it");
            self.again = true;
        } else {
            if self.current.is_none() {
                // A manual request while recovering starts at once instead of after the back-off.
                self.respawn_scheduled = false;
                self.respawn_generation += 1;
            }
            self.start_worker(reason).await;
        }
    }

    async fn start_worker(&mut self, reason: Reason) {
        let id = self.next_id;
        self.next_id += 1;
        let sha256 = self.hash_cache.hex(&self.binary).unwrap_or_else(|e| {
            tracing::warn!(binary = %self.binary.display(), error = %e, "cannot hash the live binary");
            String::from("unknown")
        });
        let launch = Launch {
            binary: &self.binary,
            args: &self.args,
            listeners: &self.listeners,
            protocol: &self.protocol,
            idle_grace_ms: self.config.idle_grace.as_millis(),
            parent_death_signal: crate::sys::signal_number(&self.config.parent_death_signal)
                .unwrap_or(libc::SIGTERM),
            listener_inodes: &self.listener_inodes,
        };
        match spawn::spawn_worker(id, sha256.clone(), &launch, &self.events_tx) {
            Ok(worker) => {
                tracing::info!(worker = id, pid = worker.pid, reason = reason.as_str(), sha256 = %short(&sha256), "worker started");
                self.handover_started = Some(Instant::now());
                let events = self.events_tx.clone();
                let timeout = self.config.ready_timeout;
                tokio::spawn(async move {
                    tokio::time::sleep(timeout).await;
                    let _ = events.send(Event::ReadyTimeout { worker: id });
                });
                if reason == Reason::Upgrade {
                    if let Some(p) = &mut self.probation {
                        p.worker = Some(id);
                    }
                }
                self.pending = Some(Pending { worker, reason });
            }
            Err(source) => {
                let error = Error::Spawn {
                    binary: self.binary.clone(),
                    source,
                };
                tracing::error!(%error, "worker could not be started");
                self.counters.1 += u64::from(self.current.is_some());
                if reason == Reason::Upgrade {
                    self.roll_back(format!("the new binary could not be started: {error}"));
                }
                if self.current.is_none() {
                    self.schedule_respawn();
                }
            }
        }
    }

    async fn on_control(&mut self, worker: u64, message: Message) {
        match message {
            Message::Ready => self.on_ready(worker).await,
            Message::Restart => {
                tracing::info!(worker, "hand-over requested by the worker");
                self.request_handover(Reason::Restart).await;
            }
            Message::Released => {
                if self.exclusive_holder == Some(worker) {
                    tracing::debug!(worker, "exclusive jobs released");
                    self.exclusive_holder = None;
                    self.grant_exclusive().await;
                }
            }
            Message::Drain | Message::Grant => {
                tracing::warn!(worker, ?message, "unexpected message from a worker")
            }
        }
    }

    /// The pending worker is ready: it becomes current and the old one drains.
    pub(crate) async fn on_ready(&mut self, worker: u64) {
        let Some(pending) = self.pending.take_if(|p| p.worker.id == worker) else {
            return;
        };
        let Pending {
            worker: mut new,
            reason,
        } = pending;
        new.ready = true;
        let took = self
            .handover_started
            .map(|t| t.elapsed())
            .unwrap_or_default();
        if let Some(mut old) = self.current.take() {
            tracing::info!(
                old = old.id,
                old_pid = old.pid,
                new = new.id,
                new_pid = new.pid,
                ?took,
                "hand-over complete; old worker drains"
            );
            self.counters.0 += 1;
            self.drain(&mut old).await;
            self.draining.push(old);
        } else {
            tracing::info!(
                worker = new.id,
                pid = new.pid,
                reason = reason.as_str(),
                ?took,
                "worker ready; serving"
            );
        }
        self.ever_ready = true;
        if let Some(p) = &self.probation {
            if p.worker == Some(new.id) {
                let events = self.events_tx.clone();
                let (id, window) = (new.id, self.config.upgrade.probation);
                tokio::spawn(async move {
                    tokio::time::sleep(window).await;
                    let _ = events.send(Event::ProbationOver { worker: id });
                });
            }
        }
        self.current = Some(new);
        if self.stopping {
            self.begin_stop().await;
            return;
        }
        self.grant_exclusive().await;
        self.after_handover().await;
    }

    async fn drain(&mut self, worker: &mut WorkerProc) {
        worker.draining_since = Some(Instant::now());
        match &self.protocol {
            Protocol::Library => worker.send(Message::Drain).await,
            Protocol::Program(program) => worker.signal(program.drain_signal),
        }
        let events = self.events_tx.clone();
        let (id, timeout) = (worker.id, self.config.drain_timeout);
        tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let _ = events.send(Event::DrainTimeout { worker: id });
        });
    }

    async fn grant_exclusive(&mut self) {
        if self.exclusive_holder.is_some() || self.stopping {
            return;
        }
        if let Some(current) = self.current.as_mut().filter(|c| c.ready && c.has_control()) {
            current.send(Message::Grant).await;
            self.exclusive_holder = Some(current.id);
        }
    }

    /// After a hand-over ends (either way): a queued upgrade or a coalesced request runs next.
    async fn after_handover(&mut self) {
        if self.pending.is_some() || self.stopping {
            return;
        }
        if self.probation.is_none() {
            if let Some((staged, reply)) = self.queued_install.take() {
                self.install(staged, reply).await;
                return;
            }
        }
        if std::mem::take(&mut self.again) {
            self.start_worker(Reason::Restart).await;
        }
    }

    async fn on_exit(&mut self, worker: u64, status: Option<ExitStatus>) {
        let how = spawn::describe_exit(status);
        if self.exclusive_holder == Some(worker) {
            self.exclusive_holder = None;
        }
        if let Some(index) = self.draining.iter().position(|w| w.id == worker) {
            let old = self.draining.remove(index);
            let drained_in = old.draining_since.map(|t| t.elapsed()).unwrap_or_default();
            tracing::info!(worker, pid = old.pid, status = %how, ?drained_in, "old worker exited");
            self.grant_exclusive().await;
            return;
        }
        if self.pending.as_ref().is_some_and(|p| p.worker.id == worker) {
            let pending = self.pending.take().expect("checked above");
            tracing::error!(worker, pid = pending.worker.pid, status = %how, "new worker exited before it was ready");
            self.handover_failed(pending, format!("exited before it was ready ({how})"))
                .await;
            return;
        }
        if self.current.as_ref().is_some_and(|c| c.id == worker) {
            let current = self.current.take().expect("checked above");
            if self.stopping {
                tracing::info!(worker, pid = current.pid, status = %how, "worker exited");
                return;
            }
            self.counters.2 += 1;
            let lived = current.started.elapsed();
            tracing::error!(worker, pid = current.pid, status = %how, ?lived, "worker crashed; sockets stay open");
            if self
                .probation
                .as_ref()
                .is_some_and(|p| p.worker == Some(worker))
            {
                self.roll_back(format!(
                    "the new worker crashed {} after it was ready ({how})",
                    humantime::format_duration(round(lived))
                ));
                self.crash_streak = 0;
            } else if lived > Duration::from_secs(10) {
                self.crash_streak = 0;
            }
            if self.pending.is_none() {
                self.schedule_respawn();
            }
        }
    }

    async fn handover_failed(&mut self, pending: Pending, why: String) {
        if self.current.is_some() {
            self.counters.1 += 1;
            tracing::error!(worker = pending.worker.id, reason = %why, "hand-over failed; the old worker keeps serving");
        }
        if pending.reason == Reason::Upgrade {
            self.roll_back(format!("the new worker {why}"));
        }
        if self.current.is_none() && !self.stopping {
            self.schedule_respawn();
        }
        self.after_handover().await;
    }

    fn schedule_respawn(&mut self) {
        if self.stopping || self.respawn_scheduled {
            return;
        }
        let base = self.config.restart_backoff.as_millis() as u64;
        let delay = Duration::from_millis(base.saturating_mul(1 << self.crash_streak.min(16)))
            .min(self.config.restart_backoff_max);
        self.crash_streak += 1;
        self.respawn_generation += 1;
        self.respawn_scheduled = true;
        tracing::info!(
            ?delay,
            attempt = self.crash_streak,
            "next worker starts after back-off"
        );
        let (events, generation) = (self.events_tx.clone(), self.respawn_generation);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = events.send(Event::Respawn { generation });
        });
    }

    async fn begin_stop(&mut self) {
        self.stopping = true;
        self.respawn_scheduled = false;
        if let Some(mut current) = self.current.take() {
            tracing::info!(worker = current.id, pid = current.pid, "draining for stop");
            self.drain(&mut current).await;
            self.draining.push(current);
        }
        if let Some(mut pending) = self.pending.take() {
            self.drain(&mut pending.worker).await;
            self.draining.push(pending.worker);
        }
        if let Some((staged, reply)) = self.queued_install.take() {
            upgrade::swap::discard(&staged.path);
            let _ = reply.send(InstallOutcome::Failed("the master is stopping".into()));
        }
    }

    async fn install(&mut self, staged: Staged, reply: oneshot::Sender<InstallOutcome>) {
        let sha256 = hex::encode(staged.sha256);
        if let Err(error) = upgrade::swap::install(&self.binary, &staged.path) {
            tracing::error!(origin = %staged.origin, %error, "swap failed; the live binary is unchanged");
            upgrade::swap::discard(&staged.path);
            let _ = reply.send(InstallOutcome::Failed(error.to_string()));
            return;
        }
        self.hash_cache.forget();
        tracing::info!(binary = %self.binary.display(), sha256 = %short(&sha256), origin = %staged.origin, "new binary swapped in; previous kept");
        if self.config.upgrade.stage_only {
            self.record_upgrade(&staged.origin, &sha256, "staged".into());
            let _ = reply.send(InstallOutcome::Staged);
            return;
        }
        self.probation = Some(Probation {
            staged_sha256: sha256,
            version: staged.version,
            origin: staged.origin,
            worker: None,
            reply: Some(reply),
        });
        if self.pending.is_none() {
            self.start_worker(Reason::Upgrade).await;
        }
    }

    /// Puts the previous binary back after a failed upgrade.
    fn roll_back(&mut self, why: String) {
        let Some(probation) = self.probation.take() else {
            return;
        };
        match upgrade::swap::restore_previous(&self.binary) {
            Ok(()) => {
                tracing::error!(sha256 = %short(&probation.staged_sha256), reason = %why, "upgrade rolled back; previous binary restored")
            }
            Err(e) => {
                tracing::error!(sha256 = %short(&probation.staged_sha256), reason = %why, error = %e, "upgrade failed and the previous binary could not be restored")
            }
        }
        self.hash_cache.forget();
        self.record_upgrade(
            &probation.origin,
            &probation.staged_sha256,
            format!("rolled back: {why}"),
        );
        if let Some(reply) = probation.reply {
            let _ = reply.send(InstallOutcome::RolledBack(why));
        }
    }

    async fn rollback_on_request(&mut self) -> std::result::Result<(), String> {
        if self.stopping {
            return Err("the master is stopping".into());
        }
        upgrade::swap::restore_previous(&self.binary).map_err(|e| e.to_string())?;
        self.hash_cache.forget();
        if let Some(probation) = self.probation.take() {
            if let Some(reply) = probation.reply {
                let _ = reply.send(InstallOutcome::RolledBack("rolled back by request".into()));
            }
        }
        tracing::info!("previous binary restored by request; handing over to it");
        self.request_handover(Reason::Rollback).await;
        Ok(())
    }

    fn record_upgrade(&mut self, origin: &str, sha256: &str, outcome: String) {
        self.last_upgrade = Some(UpgradeRecord {
            at: SystemTime::now(),
            origin: origin.into(),
            sha256: sha256.into(),
            outcome,
        });
    }

    fn all_workers(&self) -> impl Iterator<Item = &WorkerProc> {
        self.current
            .iter()
            .chain(self.pending.as_ref().map(|p| &p.worker))
            .chain(self.draining.iter())
    }

    fn phase(&self) -> Phase {
        if self.stopped {
            Phase::Stopped
        } else if self.stopping {
            Phase::Stopping
        } else if self.pending.is_some() && self.current.is_some() {
            Phase::HandingOver
        } else if self.current.is_none() {
            if self.ever_ready {
                Phase::Recovering
            } else {
                Phase::Starting
            }
        } else if !self.draining.is_empty() {
            Phase::Draining
        } else {
            Phase::Serving
        }
    }

    fn publish(&mut self) {
        let phase = self.phase();
        let next = Status {
            phase,
            master_pid: std::process::id(),
            binary: self.binary.clone(),
            version: self.version.clone(),
            started_at: self.started_at,
            worker: self.current.as_ref().map(WorkerProc::info),
            starting: self.pending.as_ref().map(|p| p.worker.info()),
            draining: self.draining.iter().map(WorkerProc::info).collect(),
            handovers: self.counters.0,
            failed_handovers: self.counters.1,
            crashes: self.counters.2,
            last_upgrade: self.last_upgrade.clone(),
        };
        self.status.send_if_modified(|status| {
            if *status == next {
                return false;
            }
            if status.phase != next.phase {
                tracing::info!(from = %status.phase, to = %next.phase, "phase");
            }
            *status = next;
            true
        });
    }
}

fn short(hex: &str) -> &str {
    &hex[..hex.len().min(12)]
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}
