//! The master's lifecycle as one value on a watch channel: logs, the `status` command, systemd
//! `STATUS=` lines and the tests all read it from here.

use std::fmt;
use std::path::PathBuf;
use std::time::SystemTime;

/// Where the master is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// The first worker is starting.
    Starting,
    /// One worker serves; nothing else is going on.
    Serving,
    /// A new worker is starting while the current one serves.
    HandingOver,
    /// A new worker serves; old ones are finishing their in-flight work.
    Draining,
    /// No worker serves (the last one crashed); a new one starts after a back-off. The sockets
    /// stay open, so clients wait in the backlog.
    Recovering,
    /// The master is re-executing itself from its new binary (same PID, sockets and workers).
    MasterUpgrade,
    /// A graceful stop is under way.
    Stopping,
    /// Every worker has exited; the master is about to exit.
    Stopped,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Starting => "starting",
            Phase::Serving => "serving",
            Phase::HandingOver => "handing-over",
            Phase::Draining => "draining",
            Phase::Recovering => "recovering",
            Phase::MasterUpgrade => "master-upgrade",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
        })
    }
}

/// A worker process as the master sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerInfo {
    /// 1 for the first worker, then counting up.
    pub id: u64,
    /// Its process id.
    pub pid: u32,
    /// SHA-256 (hex) of the binary it was started from.
    pub sha256: String,
    /// When it was started.
    pub started_at: SystemTime,
    /// While it drains: the connections it still has open, as it last said (a program under
    /// `handover run` does not say).
    pub open_connections: Option<u64>,
    /// While it drains: when it is killed if it has not exited.
    pub drain_deadline: Option<SystemTime>,
}

impl WorkerInfo {
    /// One line about a draining worker: `worker 3 (pid 812): 12 connections open, 29s left`.
    pub fn describe_draining(&self) -> String {
        let open = match self.open_connections {
            Some(1) => "1 connection open".to_string(),
            Some(n) => format!("{n} connections open"),
            None => "connections not reported".to_string(),
        };
        let left = self
            .drain_deadline
            .map(|d| d.duration_since(SystemTime::now()).unwrap_or_default())
            .map(|left| {
                let secs = std::time::Duration::from_secs(left.as_secs_f64().ceil() as u64);
                format!(", {} left", humantime::format_duration(secs))
            })
            .unwrap_or_default();
        format!("worker {} (pid {}): {open}{left}", self.id, self.pid)
    }
}

/// A snapshot of the master.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Status {
    /// The phase.
    pub phase: Phase,
    /// The master's PID, stable for its whole life.
    pub master_pid: u32,
    /// The live binary's path.
    pub binary: PathBuf,
    /// The version the program declared, if any.
    pub version: Option<String>,
    /// When the master started.
    pub started_at: SystemTime,
    /// The worker that serves.
    pub worker: Option<WorkerInfo>,
    /// The worker being started (hand-over or recovery).
    pub starting: Option<WorkerInfo>,
    /// Old workers finishing their work, oldest first.
    pub draining: Vec<WorkerInfo>,
    /// A hand-over is waiting for an old generation to exit: `max_draining` of them drain.
    pub handover_waiting: bool,
    /// Hand-overs that completed.
    pub handovers: u64,
    /// Hand-overs whose new worker failed, leaving the old one serving.
    pub failed_handovers: u64,
    /// Workers that exited without being asked to.
    pub crashes: u64,
    /// The upgrade pipeline: probation, quarantine, the last attempt.
    pub upgrade: crate::handoff::UpgradeStatus,
    /// The master itself: the code it runs and its upgrades in place.
    pub master: MasterInfo,
}

/// The master's own code.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct MasterInfo {
    /// The version it runs (the program's, or handover's for `handover run`).
    pub version: Option<String>,
    /// SHA-256 (hex) of the executable it runs.
    pub sha256: String,
    /// How many times this PID re-executed itself into new code.
    pub upgrades: u64,
    /// How long the last re-exec took, from just before `execve` to the workers adopted.
    pub last_exec: Option<std::time::Duration>,
}

impl super::Master {
    pub(super) fn phase(&self) -> Phase {
        if self.stopped {
            Phase::Stopped
        } else if self.upgrading_master {
            Phase::MasterUpgrade
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

    pub(super) fn publish(&mut self) {
        let phase = self.phase();
        let next = Status {
            phase,
            master_pid: std::process::id(),
            binary: self.binary.clone(),
            version: self
                .upgrade
                .running_version
                .clone()
                .or_else(|| self.version.clone()),
            started_at: self.started_at,
            worker: self.current.as_ref().map(|w| w.info()),
            starting: self.pending.as_ref().map(|p| p.worker.info()),
            draining: self.draining.iter().map(|w| w.info()).collect(),
            handover_waiting: self.waiting_for_drain,
            handovers: self.counters.0,
            failed_handovers: self.counters.1,
            crashes: self.counters.2,
            upgrade: self.upgrade.clone(),
            master: MasterInfo {
                version: self.own.version.clone(),
                sha256: self.own.sha256.clone(),
                upgrades: self.own.upgrades,
                last_exec: self.own.exec_took,
            },
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
