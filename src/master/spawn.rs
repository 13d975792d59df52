//! Where a worker is spawned: the live binary, re-resolved at every start, with the listeners at
//! fds 3, 4, … and the control channel after them.

use std::ffi::OsString;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Instant, SystemTime};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;

use super::listeners::BoundListener;
use super::Event;
use crate::protocol::{self, Message};
use crate::sys;

/// How workers are told about their sockets and how they say they are ready.
#[derive(Debug, Clone)]
pub(crate) enum Protocol {
    /// A program built on this library: `HANDOVER_*` variables and a control channel.
    Library,
    /// Any program: systemd's socket-activation variables, readiness by `sd_notify` or by
    /// watching it accept, drain by a signal.
    Program(super::program::ProgramProtocol),
}

/// What a spawn needs that does not change between spawns.
pub(crate) struct Launch<'a> {
    /// What is executed: the live binary, or a pinned generation of it.
    pub(crate) source: &'a Path,
    /// The live binary's path (told to the worker).
    pub(crate) binary: &'a Path,
    pub(crate) args: &'a [OsString],
    pub(crate) listeners: &'a [BoundListener],
    pub(crate) protocol: &'a Protocol,
    pub(crate) idle_grace_ms: u128,
    pub(crate) parent_death_signal: i32,
    /// Socket inodes of the listeners (to see a program accept on them).
    pub(crate) listener_inodes: &'a [u64],
    /// How long what a worker started may outlive it before it is killed.
    pub(crate) drain_timeout: std::time::Duration,
    /// Each listener's drain timeout, in order, and the stop's if set apart (told to workers).
    pub(crate) drain_timeouts: &'a [std::time::Duration],
    pub(crate) stop_drain_timeout: Option<std::time::Duration>,
}

/// A worker process, owned by the master's state.
#[derive(Debug)]
pub(crate) struct WorkerProc {
    pub(crate) id: u64,
    pub(crate) pid: u32,
    pub(crate) sha256: String,
    pub(crate) started: Instant,
    pub(crate) started_at: SystemTime,
    pub(crate) ready: bool,
    pub(crate) draining_since: Option<Instant>,
    /// While draining: when it is killed, and its open connections as it last said.
    pub(crate) drain_deadline: Option<SystemTime>,
    pub(crate) open: Option<u64>,
    /// The hard link to the binary it was started from (see `Master::start_worker`).
    pub(crate) pin: Option<std::path::PathBuf>,
    control: Option<OwnedWriteHalf>,
    signals: mpsc::UnboundedSender<i32>,
    /// Dropped with the worker: its notify socket (`handover run`) is closed then.
    _notify: Option<tokio::sync::oneshot::Sender<()>>,
}

impl WorkerProc {
    pub(crate) fn info(&self) -> super::status::WorkerInfo {
        super::status::WorkerInfo {
            id: self.id,
            pid: self.pid,
            sha256: self.sha256.clone(),
            started_at: self.started_at,
            open_connections: self.open,
            drain_deadline: self.drain_deadline,
        }
    }

    /// Sends a control message; a worker that cannot be reached is left to its exit event.
    pub(crate) async fn send(&mut self, message: Message) {
        if let Some(control) = &mut self.control {
            if let Err(e) = control.write_all(&message.as_line()).await {
                tracing::debug!(worker = self.id, error = %e, "control channel closed");
                self.control = None;
            }
        }
    }

    /// Whether this worker speaks the control channel.
    pub(crate) fn has_control(&self) -> bool {
        self.control.is_some()
    }

    /// The master's end of the control channel, to keep across a re-exec.
    pub(crate) fn control_fd(&self) -> Option<std::os::fd::RawFd> {
        self.control.as_ref().map(|c| c.as_ref().as_raw_fd())
    }

    /// Sends a signal through the task that owns the child, so it never reaches a reused PID.
    pub(crate) fn signal(&self, signal: i32) {
        let _ = self.signals.send(signal);
    }

    pub(crate) fn kill(&self) {
        self.signal(libc::SIGKILL);
    }

    /// SIGKILL after `grace`, unless it has exited by then (its owner task is gone).
    pub(crate) fn kill_after(&self, grace: std::time::Duration) {
        let signals = self.signals.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let _ = signals.send(libc::SIGKILL);
        });
    }
}

/// Starts worker `id` and the tasks that report its messages and its exit as events.
pub(crate) fn spawn_worker(
    id: u64,
    sha256: String,
    launch: &Launch<'_>,
    events: &mpsc::UnboundedSender<Event>,
) -> io::Result<WorkerProc> {
    let mut command = match launch.protocol {
        Protocol::Library => {
            let mut command = std::process::Command::new(launch.source);
            std::os::unix::process::CommandExt::arg0(&mut command, launch.binary);
            command
        }
        Protocol::Program(program) => program.command(launch.source),
    };
    command.args(launch.args).stdin(Stdio::null());
    crate::child_env::scrub(&mut command);
    for var in protocol::ALL_ENV {
        command.env_remove(var);
    }
    command
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDNAMES");
    let names: Vec<&str> = launch.listeners.iter().map(|l| l.name.as_str()).collect();
    let mut pass: Vec<i32> = launch.listeners.iter().map(BoundListener::raw_fd).collect();

    let mut notify = None;
    let control_parent = match launch.protocol {
        Protocol::Library => {
            let (parent, child) = std::os::unix::net::UnixStream::pair()?;
            let control_fd = protocol::FIRST_FD + pass.len() as i32;
            pass.push(child.as_raw_fd());
            command
                .env(protocol::ENV_FDS, launch.listeners.len().to_string())
                .env(protocol::ENV_FD_NAMES, names.join(":"))
                .env(protocol::ENV_CONTROL_FD, control_fd.to_string())
                .env(protocol::ENV_WORKER_ID, id.to_string())
                .env(protocol::ENV_MASTER_PID, std::process::id().to_string())
                .env(protocol::ENV_BINARY, launch.binary)
                .env(protocol::ENV_BINARY_SHA256, &sha256)
                .env(
                    protocol::ENV_IDLE_GRACE_MS,
                    launch.idle_grace_ms.to_string(),
                )
                .env(
                    protocol::ENV_DRAIN_TIMEOUTS_MS,
                    launch
                        .drain_timeouts
                        .iter()
                        .map(|t| t.as_millis().to_string())
                        .collect::<Vec<_>>()
                        .join(":"),
                );
            if let Some(stop) = launch.stop_drain_timeout {
                command.env(
                    protocol::ENV_STOP_DRAIN_TIMEOUT_MS,
                    stop.as_millis().to_string(),
                );
            }
            Some((parent, child))
        }
        Protocol::Program(program) => {
            notify = Some(program.configure(&mut command, &names, id)?);
            None
        }
    };
    sys::prepare_child(
        &mut command,
        sys::ChildSetup {
            pass,
            parent_death_signal: launch.parent_death_signal,
            master_pid: std::process::id() as i32,
        },
    );
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(false);
    if matches!(launch.protocol, Protocol::Library) {
        command.env(
            protocol::ENV_SPAWNED_AT_US,
            protocol::monotonic_us().to_string(),
        );
    }
    let mut child = command.spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| io::Error::other("worker exited before its pid was read"))?;

    let control = match control_parent {
        Some((parent, child_end)) => {
            drop(child_end);
            Some(attach_control(id, parent, events)?)
        }
        None => None,
    };

    let mut notify_guard = None;
    if let (Protocol::Program(program), Some(notify)) = (launch.protocol, notify) {
        let (guard, exited) = tokio::sync::oneshot::channel();
        notify_guard = Some(guard);
        program.watch_readiness(
            id,
            pid,
            notify,
            launch.listener_inodes.to_vec(),
            events.clone(),
            exited,
        );
    }

    let (signals, mut signal_rx) = mpsc::unbounded_channel::<i32>();
    let exit_events = events.clone();
    let grace = launch.drain_timeout;
    tokio::spawn(async move {
        let status: io::Result<ExitStatus> = loop {
            tokio::select! {
                status = child.wait() => break status,
                Some(signal) = signal_rx.recv() => {
                    // The whole group: a `start.sh` that runs the server without `exec`
                    // drains and dies with it.
                    let _ = sys::signal_group(pid, signal);
                    if signal == libc::SIGKILL {
                        let _ = child.start_kill();
                    }
                }
            }
        };
        let _ = exit_events.send(Event::Exited {
            worker: id,
            status: status.ok(),
        });
        end_group(id, pid, grace).await;
    });

    Ok(WorkerProc {
        id,
        pid,
        sha256,
        started: Instant::now(),
        started_at: SystemTime::now(),
        ready: false,
        draining_since: None,
        drain_deadline: None,
        open: None,
        pin: None,
        control,
        signals,
        _notify: notify_guard,
    })
}

/// Reads a worker's control messages as events; returns the end to write to.
fn attach_control(
    id: u64,
    stream: std::os::unix::net::UnixStream,
    events: &mpsc::UnboundedSender<Event>,
) -> io::Result<OwnedWriteHalf> {
    stream.set_nonblocking(true)?;
    let stream = tokio::net::UnixStream::from_std(stream)?;
    let (read, write) = stream.into_split();
    let events = events.clone();
    tokio::spawn(async move {
        let mut lines = BufReader::new(read).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match Message::parse(&line) {
                Some(message) => {
                    let _ = events.send(Event::Control {
                        worker: id,
                        message,
                    });
                }
                None => tracing::warn!(worker = id, line = %line, "unknown control message"),
            }
        }
    });
    Ok(write)
}

/// A running worker that a previous master of this PID started (it is still this process's
/// child: `execve` keeps children), with its control channel if it has one.
pub(crate) struct Adopted {
    pub(crate) id: u64,
    pub(crate) pid: u32,
    pub(crate) sha256: String,
    pub(crate) started_at: SystemTime,
    pub(crate) control: Option<std::os::fd::OwnedFd>,
    pub(crate) pin: Option<std::path::PathBuf>,
}

/// Takes over an adopted worker: its messages and its exit become events again. Its exit is
/// seen through a pidfd (tokio only reaps children it spawned); without pidfds, by polling.
pub(crate) fn adopt_worker(
    adopted: Adopted,
    grace: std::time::Duration,
    events: &mpsc::UnboundedSender<Event>,
) -> io::Result<WorkerProc> {
    let Adopted {
        id,
        pid,
        sha256,
        started_at,
        control,
        pin,
    } = adopted;
    let control = match control {
        Some(fd) => Some(attach_control(
            id,
            std::os::unix::net::UnixStream::from(fd),
            events,
        )?),
        None => None,
    };
    let pidfd = match sys::exit_watch(pid) {
        Ok(fd) => Some(fd),
        Err(e) => {
            tracing::debug!(worker = id, error = %e, "no pidfd; polling for the adopted worker's exit");
            None
        }
    };
    let (signals, mut signal_rx) = mpsc::unbounded_channel::<i32>();
    let exit_events = events.clone();
    tokio::spawn(async move {
        let exited = async {
            loop {
                match &pidfd {
                    Some(fd) => {
                        if let Ok(mut guard) = fd.readable().await {
                            guard.clear_ready();
                        }
                    }
                    None => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
                }
                match sys::try_reap(pid) {
                    Ok(Some(status)) => return Some(status),
                    Ok(None) => continue,
                    Err(_) => return None,
                }
            }
        };
        tokio::pin!(exited);
        let status = loop {
            tokio::select! {
                status = &mut exited => break status,
                // Not reaped yet (this task reaps it), so the PID is still this worker's.
                Some(signal) = signal_rx.recv() => { let _ = sys::signal_group(pid, signal); }
            }
        };
        let _ = exit_events.send(Event::Exited { worker: id, status });
        end_group(id, pid, grace).await;
    });
    let age = started_at.elapsed().unwrap_or_default();
    Ok(WorkerProc {
        id,
        pid,
        sha256,
        started: Instant::now().checked_sub(age).unwrap_or_else(Instant::now),
        started_at,
        ready: true,
        draining_since: None,
        drain_deadline: None,
        open: None,
        pin,
        control,
        signals,
        _notify: None,
    })
}

/// After a worker exited: what it started and left behind (in its process group) is asked to
/// stop with SIGTERM, and killed if any of it is still there after `grace` (the drain timeout):
/// it would otherwise go on accepting on the shared sockets with old code, and outlive the
/// master.
async fn end_group(id: u64, pgid: u32, grace: std::time::Duration) {
    if !sys::group_alive(pgid) {
        return;
    }
    tracing::warn!(
        worker = id,
        pgid,
        "processes the worker started outlived it; asking them to stop"
    );
    let _ = sys::signal_group(pgid, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if !sys::group_alive(pgid) {
            return;
        }
    }
    tracing::warn!(
        worker = id,
        pgid,
        "killing what is left of the worker's process group"
    );
    let _ = sys::signal_group(pgid, libc::SIGKILL);
}
