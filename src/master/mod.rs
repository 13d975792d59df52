//! The master: a process with a stable PID that binds the sockets once, starts workers from the
//! binary on disk, and hands over from one worker to the next.
//!
//! One event loop owns all state. Signals, the library handle, workers' control messages,
//! worker exits, timers and the upgrade task all arrive as [`Event`]s, so there is no locking
//! and every transition is logged in one place.

mod drain;
mod idle;
mod inherit;
pub(crate) mod listeners;
mod notify;
pub(crate) mod program;
mod reexec;
pub(crate) mod spawn;
mod status;
mod workers;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};

pub(crate) use reexec::Carried;
pub use status::{MasterInfo, Phase, Status, WorkerInfo};

use crate::config::Config;
use crate::digest::HashCache;
use crate::error::{Error, Result};
use crate::handoff::{HandoverOutcome, ToMaster, UpgradeStatus, WorkerReport};
use crate::protocol::Message;
use spawn::{Protocol, WorkerProc};

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
    /// The master has been serving with nothing to do since the `Serving` phase `generation`.
    Idle {
        generation: u64,
    },
    Respawn {
        generation: u64,
    },
    Pipeline(ToMaster),
    /// The SHA-256 of this process's executable, hashed in the background.
    OwnSha256(String),
    /// The check-mode run before a manual re-exec ended.
    ReexecChecked {
        sha256: String,
        result: std::result::Result<(), String>,
    },
}

/// Requests from a handle.
#[derive(Debug)]
pub(crate) enum Command {
    Restart,
    Stop,
    Reexec {
        reply: oneshot::Sender<std::result::Result<String, String>>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Initial,
    Recovery,
    Restart,
    Upgrade,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Initial => "initial start",
            Reason::Recovery => "recovery",
            Reason::Restart => "restart",
            Reason::Upgrade => "upgrade",
        }
    }
}

struct Pending {
    worker: WorkerProc,
    reason: Reason,
    /// The pipeline's requests that this hand-over answers.
    replies: Vec<oneshot::Sender<HandoverOutcome>>,
    /// When its start began, and when the spawn returned.
    started: Instant,
    spawned: Instant,
}

/// The master's event loop, bound and ready to run: processes and sockets, nothing else.
pub(crate) struct Master {
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
    reports: Option<mpsc::UnboundedSender<WorkerReport>>,
    upgrade: UpgradeStatus,
    next_replies: Vec<oneshot::Sender<HandoverOutcome>>,

    next_id: u64,
    current: Option<WorkerProc>,
    pending: Option<Pending>,
    draining: Vec<WorkerProc>,
    again: bool,
    /// A hand-over waits for an old generation to exit (`max_draining` of them drain).
    waiting_for_drain: bool,
    stopping: bool,
    stopped: bool,
    ever_ready: bool,
    exclusive_holder: Option<u64>,
    crash_streak: u32,
    respawn_generation: u64,
    respawn_scheduled: bool,
    hash_cache: HashCache,
    counters: (u64, u64, u64),
    started_at: SystemTime,
    handover_started: Option<Instant>,

    own: reexec::Own,
    reexec: Option<reexec::Request>,
    upgrading_master: bool,
    /// Counts the times the phase became `Serving`; `None` while it is another.
    serving_since: Option<u64>,
    serving_count: u64,
    manager: Option<std::sync::Arc<notify::ServiceManager>>,
    /// The control socket's descriptor and path (kept across a re-exec).
    control_fd: Option<(std::os::fd::RawFd, PathBuf)>,
    /// What a previous master of this PID passed, until it is taken over in `run`.
    taken: Option<reexec::Taken>,
    /// Listeners changed by a re-exec's config: workers need a hand-over to get them.
    listeners_changed: bool,
    /// The hard link to the binary of the generation that serves (respawns use it).
    pin: Option<PathBuf>,
    /// What the pipeline's fetcher learned, for the code a re-exec starts.
    fetcher_memory: Option<String>,
}

impl Master {
    /// A master whose workers are this executable, with this process's arguments.
    pub(crate) fn library(config: Config) -> Result<Self> {
        Self::with_protocol(
            config,
            Protocol::Library,
            std::env::args_os().skip(1).collect(),
        )
    }

    /// A master for any program (`handover run`): workers are `config.binary` with `args`,
    /// given their sockets by systemd's socket-activation protocol.
    pub(crate) fn program(config: Config, args: Vec<OsString>) -> Result<Self> {
        let protocol = Protocol::Program(program::ProgramProtocol::new(config.program.clone())?);
        Self::with_protocol(config, protocol, args)
    }

    fn with_protocol(config: Config, protocol: Protocol, args: Vec<OsString>) -> Result<Self> {
        config
            .validate()
            .map_err(|(field, message)| Error::config("config", format!("{field} {message}")))?;
        let binary = config
            .live_binary()
            .map_err(|e| Error::io("resolving the live binary's path", e))?;
        let mut taken = reexec::take_inherited()?;
        let (listeners, listeners_changed) = match taken.as_mut() {
            Some(taken) => {
                listeners::adopt_all(&config.listen, std::mem::take(&mut taken.listeners))
            }
            None => (listeners::bind_all(&config.listen)?, false),
        };
        if taken.is_none() {
            workers::remove_stale_pins(&binary);
        }
        let exec_path = match &protocol {
            Protocol::Library => binary.clone(),
            Protocol::Program(program) => program.shim.clone(),
        };
        let mut hash_cache = HashCache::default();
        let own = reexec::Own {
            sha256: match &taken {
                // The previous master checked the file it exec'd: no need to hash it again.
                Some(t) if t.state.exec_sha256.is_some() => String::new(),
                _ => reexec::own_sha256(&binary, &mut hash_cache).unwrap_or_default(),
            },
            exec_path,
            argv: std::env::args_os().collect(),
            version: match &protocol {
                Protocol::Library => None,
                Protocol::Program(_) => Some(env!("CARGO_PKG_VERSION").to_string()),
            },
            upgrades: 0,
            exec_took: None,
        };
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
            handover_waiting: false,
            handovers: 0,
            failed_handovers: 0,
            crashes: 0,
            upgrade: UpgradeStatus::default(),
            master: MasterInfo::default(),
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
            reports: None,
            upgrade: UpgradeStatus::default(),
            next_replies: Vec::new(),
            next_id: 1,
            current: None,
            pending: None,
            draining: Vec::new(),
            again: false,
            waiting_for_drain: false,
            stopping: false,
            stopped: false,
            ever_ready: false,
            exclusive_holder: None,
            crash_streak: 0,
            respawn_generation: 0,
            respawn_scheduled: false,
            hash_cache,
            counters: (0, 0, 0),
            started_at: SystemTime::now(),
            handover_started: None,
            own,
            reexec: None,
            upgrading_master: false,
            serving_since: None,
            serving_count: 0,
            manager: None,
            control_fd: None,
            taken,
            listeners_changed,
            pin: None,
            fetcher_memory: None,
        })
    }

    /// The version the running program declares (shown in status).
    pub(crate) fn set_version(&mut self, version: Option<String>) {
        if matches!(self.protocol, Protocol::Library) {
            self.own.version = version.clone();
        }
        self.version = version;
    }

    /// What a previous master of this PID passed to the service layer (empty after a fresh
    /// start).
    pub(crate) fn take_carried(&mut self) -> Carried {
        self.taken
            .as_mut()
            .map(|t| std::mem::take(&mut t.carried))
            .unwrap_or_default()
    }

    /// Records the control socket, to keep it across a re-exec.
    pub(crate) fn set_control_socket(&mut self, fd: std::os::fd::RawFd, path: PathBuf) {
        self.control_fd = Some((fd, path));
    }

    /// Where reports of what workers did go (the upgrade pipeline).
    pub(crate) fn report_to(&mut self, reports: mpsc::UnboundedSender<WorkerReport>) {
        self.reports = Some(reports);
    }

    /// Where events for the loop are sent (signals, commands, the pipeline).
    pub(crate) fn events(&self) -> mpsc::UnboundedSender<Event> {
        self.events_tx.clone()
    }

    /// A receiver of every status change.
    pub(crate) fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// The live binary's path.
    pub(crate) fn binary(&self) -> &std::path::Path {
        &self.binary
    }

    /// The control socket's path, if one is configured.
    pub(crate) fn control_socket(&self) -> Option<&std::path::Path> {
        self.config.control_socket.as_deref()
    }

    /// Runs until a graceful stop completes (returns `Ok`) or a forced stop (returns `Err`).
    /// Must run on a current-thread runtime on the thread that created the master: workers'
    /// parent-death signal is tied to the spawning thread.
    pub(crate) async fn run(mut self) -> Result<()> {
        self.listen_for_signals()?;
        // Signals a previous master blocked across its exec are delivered from here on.
        crate::sys::unblock_master_signals();
        if let Some(manager) = notify::ServiceManager::from_env() {
            let manager = std::sync::Arc::new(manager);
            self.manager = Some(manager.clone());
            tokio::spawn(manager.follow(self.status.subscribe()));
        }
        let inherited_hash = self
            .taken
            .as_ref()
            .is_some_and(|t| t.state.exec_sha256.is_some());
        if self.own.sha256.is_empty() && !inherited_hash {
            self.hash_own_code();
        }
        match self.taken.take() {
            Some(taken) => {
                self.carry_on(taken)?;
                // A probation that a manual re-exec interrupted runs its window from here.
                if let Some(current) = &self.current {
                    self.report(crate::handoff::WorkerReport::Ready {
                        sha256: current.sha256.clone(),
                    });
                }
                if self.current.is_none() {
                    self.start_worker(Reason::Recovery).await;
                } else if std::mem::take(&mut self.listeners_changed) {
                    tracing::info!("the listeners changed: handing over so the workers get them");
                    self.start_worker(Reason::Restart).await;
                }
            }
            None => self.start_worker(Reason::Initial).await,
        }
        self.publish();
        while let Some(event) = self.events.recv().await {
            if let Some(result) = self.handle_event(event).await {
                self.publish();
                for listener in &self.listeners {
                    listener.remove_socket_file();
                }
                workers::remove_generation_pin(self.pin.as_deref());
                return result;
            }
            self.publish();
        }
        Ok(())
    }

    fn listen_for_signals(&self) -> Result<()> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut wanted: Vec<i32> = vec![libc::SIGTERM, libc::SIGINT, libc::SIGUSR1];
        for name in &self.config.restart_signals {
            wanted.extend(crate::signals::signal_number(name));
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
                        let _ = crate::sys::signal_group(worker.pid, libc::SIGKILL);
                    }
                    return Some(Err(Error::Master("forced stop".into())));
                }
                tracing::info!(signal = number, "stop requested");
                self.begin_stop().await;
            }
            Event::Signal(number) if number == libc::SIGUSR1 && !self.restarts_on(number) => {
                tracing::info!("master upgrade requested by SIGUSR1");
                self.request_reexec(reexec::Request::manual(None));
            }
            Event::Signal(number) => {
                tracing::info!(signal = number, "hand-over requested by signal");
                self.request_handover(Reason::Restart).await;
            }
            Event::Command(Command::Restart) => self.request_handover(Reason::Restart).await,
            Event::Command(Command::Stop) => self.begin_stop().await,
            Event::Command(Command::Reexec { reply }) => {
                self.request_reexec(reexec::Request::manual(Some(reply)))
            }
            Event::ReexecChecked { sha256, result } => self.reexec_checked(sha256, result),
            Event::OwnSha256(sha256) => self.own.sha256 = sha256,
            Event::Pipeline(ToMaster::UpgradeMaster { sha256, version }) => {
                self.request_reexec(reexec::Request::upgrade(sha256, version))
            }
            Event::Pipeline(ToMaster::Status(upgrade)) => self.upgrade = *upgrade,
            Event::Pipeline(ToMaster::FetcherMemory(memory)) => self.fetcher_memory = memory,
            Event::Pipeline(ToMaster::HandOver {
                sha256,
                known,
                reply,
            }) => {
                if let Some(known) = known {
                    self.hash_cache.remember(known);
                }
                self.hand_over_for_pipeline(sha256, reply).await
            }
            Event::Control { worker, message } => self.on_control(worker, message).await,
            Event::Exited { worker, status } => self.on_exit(worker, status).await,
            Event::ReadyTimeout { worker } => self.on_ready_timeout(worker).await,
            Event::DrainTimeout { worker } => self.on_drain_timeout(worker),
            Event::Idle { generation } => self.on_idle(generation),
            Event::Respawn { generation } => {
                if generation == self.respawn_generation && self.respawn_scheduled {
                    self.respawn_scheduled = false;
                    if self.current.is_none() && self.pending.is_none() && !self.stopping {
                        self.start_worker(Reason::Recovery).await;
                    }
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
        self.maybe_reexec().await;
        self.trim_when_idle();
        None
    }

    /// Whether `signal` is one of the configured restart signals.
    fn restarts_on(&self, signal: i32) -> bool {
        self.config
            .restart_signals
            .iter()
            .any(|name| crate::signals::signal_number(name) == Some(signal))
    }

    fn all_workers(&self) -> impl Iterator<Item = &WorkerProc> {
        self.current
            .iter()
            .chain(self.pending.as_ref().map(|p| &p.worker))
            .chain(self.draining.iter())
    }
}
