//! The one narrow channel between the upgrade pipeline and the master.
//!
//! The pipeline decides (download, verify, swap, probation, rollback); the master owns the
//! processes and the sockets. The pipeline asks the master for exactly one thing, "hand over
//! to the binary now on disk", and hears back how that went; the master reports every worker
//! that becomes ready, fails to, or crashes, with the hash of the binary it runs, so that
//! probation can follow a binary rather than a worker. Neither side imports the other.

use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;

/// From the pipeline to the master.
#[derive(Debug)]
pub(crate) enum ToMaster {
    /// Start a new worker from the live binary (just swapped in, or put back) and hand over
    /// to it; `reply` says how that went.
    HandOver {
        sha256: String,
        /// The digest with the file it is of, so the master need not hash it again.
        known: Option<crate::digest::Known>,
        reply: oneshot::Sender<HandoverOutcome>,
    },
    /// The pipeline's part of the status changed.
    Status(Box<UpgradeStatus>),
    /// What the fetcher learned (see `Fetcher::memory`), kept by the master for the code it
    /// re-executes into.
    FetcherMemory(Option<String>),
    /// The binary with `sha256` passed probation and can take over the master's state: the
    /// master re-executes it (once it is the live binary and nothing is handing over).
    UpgradeMaster {
        sha256: String,
        version: Option<String>,
    },
}

/// Where a hand-over's time went, as the master saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HandoverTimes {
    /// From the start of the worker to `fork`/`exec` done (the pin, the hash, the spawn).
    pub(crate) spawn: std::time::Duration,
    /// From the spawn to the worker's ready message (its start-up: loading, runtime, sockets).
    pub(crate) ready: std::time::Duration,
    /// From the ready message to the old worker told to drain.
    pub(crate) drain: std::time::Duration,
}

/// How a requested hand-over ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HandoverOutcome {
    /// A worker from the requested binary is ready and serving; how long each step took.
    Ready(HandoverTimes),
    /// A worker of it ran and failed: why (spawn error, not ready in time, exited).
    Failed(String),
    /// The master is stopping: nothing was proven either way.
    Stopping,
}

/// From the master to the pipeline: what workers of a binary did.
#[derive(Debug, Clone)]
pub(crate) enum WorkerReport {
    /// A worker of this binary became ready.
    Ready { sha256: String },
    /// A worker of this binary never became ready (not started, not ready in time, exited).
    Failed { sha256: String, why: String },
    /// A ready worker of this binary exited without being asked to, after `lived`.
    Crashed {
        sha256: String,
        lived: Duration,
        how: String,
    },
}

/// Requests to the pipeline, from the library handle and the control socket.
#[derive(Debug)]
pub(crate) enum PipelineCommand {
    /// Ask the fetcher now; the reply (if asked for) tells what came of it.
    CheckNow {
        reply: Option<oneshot::Sender<Result<String, crate::error::Error>>>,
    },
    /// Put the previous binary back and hand over to it.
    Rollback {
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Release quarantined hashes starting with `prefix` (`all`: every one); replies with
    /// the hashes released.
    Forget {
        prefix: String,
        reply: oneshot::Sender<Result<Vec<String>, String>>,
    },
}

/// How the last upgrade attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpgradeRecord {
    /// When it ended.
    pub at: SystemTime,
    /// Where the candidate came from.
    pub origin: String,
    /// SHA-256 (hex) of the candidate.
    pub sha256: String,
    /// `installed`, `staged`, `rolled back: …`, `rejected: …` or `not ready: …`.
    pub outcome: String,
}

/// A hash that failed when it was run, refused until released with `handover forget`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuarantineEntry {
    /// SHA-256 (hex) of the bytes.
    pub sha256: String,
    /// What happened when they were run.
    pub reason: String,
    /// When they were quarantined.
    pub at: SystemTime,
}

/// An upgrade whose new binary has not yet proven itself.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProbationInfo {
    /// SHA-256 (hex) of the binary on probation.
    pub sha256: String,
    /// Its version, when known.
    pub version: Option<String>,
    /// When its window ends, once a worker of it is ready.
    pub until: Option<SystemTime>,
}

/// The upgrade pipeline's part of the status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpgradeStatus {
    /// The version now running, when known (declared, or the last one installed).
    pub running_version: Option<String>,
    /// The highest version ever installed (it passed probation): no older one is installed.
    pub highest_installed: Option<String>,
    /// The upgrade in probation.
    pub probation: Option<ProbationInfo>,
    /// Quarantined hashes.
    pub quarantine: Vec<QuarantineEntry>,
    /// The publication the pipeline is waiting to become complete, and why.
    pub waiting: Option<String>,
    /// The last upgrade attempt.
    pub last: Option<UpgradeRecord>,
    /// The most recently signed release seen (its version and when it was signed), when
    /// releases carry signed metadata.
    pub newest_signed_release: Option<String>,
    /// What needs a person's attention (a release source that serves only stale releases).
    pub warnings: Vec<String>,
    /// The staged rollout in force, when the release store has one: its step, its reports,
    /// whether it halted, and what this host does about it.
    pub rollout: Option<String>,
}
