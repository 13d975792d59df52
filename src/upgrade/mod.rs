//! The upgrade pipeline, the same for every fetcher, and the owner of every upgrade decision:
//! poll → download into a temporary file while hashing → unpack an archive → verify the
//! published checksum and signature → refuse downgrades and quarantined hashes → sanity-run
//! the candidate → ask the user's hook → swap it in atomically → ask the master to hand over →
//! probation → settle, or roll back.
//!
//! The master is reached through one narrow channel ([`crate::handoff`]): "hand over to the
//! binary now on disk", and reports of what workers of each binary did. A refused candidate
//! never touches the running worker or the live binary.
//!
//! What the pipeline learns that must outlive the master (quarantined hashes, the highest
//! version installed, the upgrade in probation) is kept in a [state file](state).

pub(crate) mod archive;
mod attempt;
mod delta;
mod perms;
mod probation;
mod progress;
mod sanity;
mod signed;
mod stage;
mod staged;
pub(crate) mod state;
mod status;
pub(crate) mod swap;
mod timing;
pub(crate) mod verify;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use handover_fetcher::{Fetcher, Running, Settlement};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

pub(crate) use sanity::{answer as answer_check, check as check_candidate, TARGET};

use crate::config::UpgradeConfig;
use crate::digest::{short, HashCache};
use crate::error::Error;
use crate::handoff::{PipelineCommand, ToMaster, UpgradeRecord, WorkerReport};
use crate::refusal::{Disposition, Refusal};
use attempt::Outcome;
use staged::{Gate, Staged};
use state::{State, StateFile};
use timing::{backoff, with_jitter};

/// The ends of the channels the pipeline talks through.
pub(crate) struct Channels {
    /// To the master: hand-over requests and status.
    pub(crate) to_master: mpsc::UnboundedSender<ToMaster>,
    /// From the master: what workers of each binary did.
    pub(crate) reports: mpsc::UnboundedReceiver<WorkerReport>,
    /// From the library handle and the control socket.
    pub(crate) commands: mpsc::UnboundedReceiver<PipelineCommand>,
}

/// The upgrade pipeline: one task, one candidate at a time.
pub(crate) struct Pipeline {
    fetcher: Option<Box<dyn Fetcher>>,
    config: UpgradeConfig,
    live: PathBuf,
    /// The version now running: declared by the program, then the last one installed.
    running_version: Option<semver::Version>,
    state: State,
    state_file: StateFile,
    hashes: HashCache,
    probation: Option<probation::Active>,
    channels: Channels,
    /// The last "not ready yet" message, so that a publication waited for is logged once.
    waiting: Option<String>,
    last: Option<UpgradeRecord>,
    failures: u32,
    /// The live binary is the master's own executable (library mode), so an upgrade that
    /// passes probation upgrades the master too.
    master_is_live: bool,
    /// Why the master did not take the last upgrade itself.
    master_warning: Option<String>,
    /// What the fetcher learned, as last passed to the master.
    fetcher_memory: Option<String>,
    /// The staged rollout in force, if the release store has one.
    staged: Staged,
}

impl Pipeline {
    /// Reads the state file and finishes what a master that died left half done (a rollback
    /// whose file was not restored yet); a probation in progress is resumed when its binary
    /// is the live one.
    pub(crate) fn new(
        fetcher: Option<Box<dyn Fetcher>>,
        config: UpgradeConfig,
        live: PathBuf,
        declared_version: Option<semver::Version>,
        channels: Channels,
    ) -> Self {
        swap::clean_leftovers(&live);
        let state_file = StateFile::new(&live, config.state_dir.as_deref());
        let state = state_file.load();
        let mut pipeline = Self {
            fetcher,
            config,
            live,
            running_version: declared_version,
            state,
            state_file,
            hashes: HashCache::default(),
            probation: None,
            channels,
            waiting: None,
            last: None,
            failures: 0,
            master_is_live: false,
            master_warning: None,
            fetcher_memory: None,
            staged: Staged::default(),
        };
        pipeline.resume();
        pipeline
    }

    /// Says that the live binary is the master's own executable (library mode).
    pub(crate) fn master_runs_live(&mut self) {
        self.master_is_live = true;
    }

    /// What a master that re-executed into this one had: its last attempt, and what its
    /// fetcher had learned.
    pub(crate) fn carry_on_from(&mut self, last: Option<UpgradeRecord>, memory: Option<String>) {
        self.last = last;
        if let (Some(memory), Some(fetcher)) = (&memory, self.fetcher.as_mut()) {
            fetcher.restore(memory);
        }
        self.fetcher_memory = memory;
    }

    /// Runs until every channel is closed (the master is gone).
    pub(crate) async fn run(mut self) {
        let wake = self
            .fetcher
            .as_ref()
            .and_then(|f| f.wake())
            .unwrap_or_default();
        if let Some(fetcher) = &self.fetcher {
            tracing::info!(fetcher = fetcher.name(), interval = ?self.config.interval, state = %self.state_file.path().display(), "watching for upgrades");
        }
        self.publish();
        let mut next_poll = Instant::now();
        loop {
            // Polling goes on during probation: a newer candidate ends it as superseded.
            let polling = self.fetcher.is_some();
            let deadline = self.probation.as_ref().and_then(|p| p.deadline);
            tokio::select! {
                _ = tokio::time::sleep_until(next_poll.into()), if polling => {
                    next_poll = Instant::now() + self.poll(None).await;
                }
                _ = wake.notified(), if polling => {
                    next_poll = Instant::now() + self.poll(None).await;
                }
                _ = sleep_until(deadline), if deadline.is_some() => self.probation_passed(),
                report = self.channels.reports.recv() => match report {
                    Some(report) => self.on_report(report),
                    None => break,
                },
                command = self.channels.commands.recv() => match command {
                    Some(PipelineCommand::CheckNow { reply }) => {
                        if self.fetcher.is_none() {
                            if let Some(reply) = reply {
                                let _ = reply.send(Err(Error::Master("no fetcher is configured".into())));
                            }
                        } else {
                            next_poll = Instant::now() + self.poll(reply).await;
                        }
                    }
                    Some(PipelineCommand::Rollback { reply }) => {
                        let _ = reply.send(self.rollback_on_request());
                    }
                    Some(PipelineCommand::Forget { prefix, reply }) => {
                        let _ = reply.send(self.forget(&prefix));
                    }
                    None => break,
                },
            }
            self.publish();
        }
    }

    /// Asks the fetcher once and takes what it offers through the pipeline; returns how long
    /// to wait before the next poll.
    async fn poll(&mut self, reply: Option<oneshot::Sender<Result<String, Error>>>) -> Duration {
        let interval = with_jitter(self.config.interval, self.config.jitter);
        let answer = |result: Result<String, Error>| {
            if let Some(reply) = reply {
                let _ = reply.send(result);
            }
        };
        let sha256 = match self.hashes.digest(&self.live) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(binary = %self.live.display(), error = %e, "cannot read the live binary; upgrades paused");
                answer(Err(Error::io("reading the live binary", e)));
                return interval;
            }
        };
        let running = Running::new(sha256, self.running_version.clone());
        let Some(fetcher) = self.fetcher.as_mut() else {
            return interval;
        };
        let name = fetcher.name().to_string();
        let (release, unreachable) = match self.staged_gate(&hex::encode(sha256)).await {
            Gate::Free => (None, None),
            Gate::Release(manifest) => (Some(manifest.release), None),
            Gate::Unreachable(error) => (None, Some(error)),
            Gate::Closed(why) => {
                answer(Ok(why));
                return interval;
            }
            Gate::Broken(error) => {
                answer(Err(error));
                return interval;
            }
        };
        let Some(fetcher) = self.fetcher.as_mut() else {
            return interval;
        };
        let fetched = match unreachable {
            Some(error) => Err(error),
            None => fetcher.fetch(&running).await,
        };
        let artifact = match fetched {
            Ok(Some(artifact)) => artifact,
            Ok(None) => {
                self.failures = 0;
                answer(Ok("nothing new".into()));
                return interval;
            }
            Err(error) if error.is_not_published() => {
                self.failures = 0;
                self.wait_for(error.to_string());
                answer(Err(Error::Fetch(error)));
                return interval;
            }
            Err(error) => {
                self.failures += 1;
                let wait = backoff(self.config.interval, self.failures, self.config.max_backoff)
                    .max(error.retry_after().unwrap_or_default());
                tracing::warn!(fetcher = %name, %error, retry_in = ?wait, "fetch failed; still serving the running version");
                answer(Err(Error::Fetch(error)));
                return wait;
            }
        };
        self.failures = 0;
        let artifact = match self.only_the_release(artifact, release.as_ref()) {
            Ok(artifact) => artifact,
            Err(why) => {
                self.wait_for(why.clone());
                answer(Ok(why));
                return interval;
            }
        };
        let id = artifact.id().map(str::to_string);
        let origin = artifact.origin().to_string();
        let span = tracing::info_span!(
            "upgrade",
            origin = %origin,
            sha256 = tracing::field::Empty,
            version = artifact.claimed_version().map(|v| v.to_string()),
        );
        let kept = self.describe_running(&running);
        let outcome = self
            .attempt(artifact, &running, span.clone())
            .instrument(span.clone())
            .await;
        let _enter = span.enter();
        let (settlement, wait, result) = match outcome {
            Outcome::Installed { sha256, version } => {
                self.waiting = None;
                let what = match &version {
                    Some(v) => format!("version {v} (sha256 {})", short(&sha256)),
                    None => format!("sha256 {}", short(&sha256)),
                };
                let message = if self.probation.is_some() {
                    format!("installed {what}; in probation")
                } else {
                    format!("staged {what}; the next restart runs it")
                };
                (Some(Settlement::Installed), interval, Ok(message))
            }
            Outcome::Unchanged => {
                self.waiting = None;
                (
                    Some(Settlement::Rejected),
                    interval,
                    Ok("the candidate is what runs".into()),
                )
            }
            Outcome::Refused { sha256, refusal } => {
                let error = Error::Rejected {
                    origin: origin.clone(),
                    refusal: refusal.clone(),
                    kept: kept.clone(),
                };
                self.record(
                    &origin,
                    sha256.as_deref().unwrap_or("-"),
                    refusal_outcome(&refusal),
                );
                let staged = release.as_ref().map(|r| r.sha256.as_str());
                if matches!(
                    refusal.disposition(),
                    Disposition::Rejected | Disposition::Quarantine
                ) && staged.is_some()
                    && staged == sha256.as_deref()
                {
                    self.staged_refused(staged.unwrap_or_default(), refusal.to_string());
                }
                match refusal.disposition() {
                    Disposition::NotReady => {
                        self.wait_for(error.to_string());
                        // Nothing about the publication is wrong with a shared directory: the
                        // fetcher offers the same candidate again, and it is installed once
                        // the directory is put right (checked before any download).
                        let settlement = match refusal {
                            Refusal::UnsafeDirectory { .. } => None,
                            _ => Some(Settlement::NotReady),
                        };
                        (settlement, interval, Err(error))
                    }
                    Disposition::Rejected => {
                        self.waiting = None;
                        tracing::error!("{error}");
                        (Some(Settlement::Rejected), interval, Err(error))
                    }
                    Disposition::Quarantine => {
                        self.waiting = None;
                        tracing::error!("{error}");
                        if let Some(sha256) = &sha256 {
                            self.quarantine(sha256, &refusal.to_string());
                        }
                        (Some(Settlement::Rejected), interval, Err(error))
                    }
                    _ => {
                        self.failures += 1;
                        let wait =
                            backoff(self.config.interval, self.failures, self.config.max_backoff);
                        tracing::warn!(retry_in = ?wait, "{error}");
                        (None, wait, Err(error))
                    }
                }
            }
        };
        if let (Some(id), Some(settlement), Some(fetcher)) = (id, settlement, self.fetcher.as_mut())
        {
            fetcher.settled(&id, settlement);
        }
        answer(result);
        wait
    }

    /// Logs a publication that is not complete yet once (then at debug level until it changes).
    fn wait_for(&mut self, message: String) {
        if self.waiting.as_deref() == Some(message.as_str()) {
            tracing::debug!("still not ready: {message}");
        } else {
            tracing::warn!(
                "not ready yet, looking again every {}: {message}",
                humantime::format_duration(self.config.interval)
            );
            self.waiting = Some(message);
        }
    }

    fn quarantine(&mut self, sha256: &str, reason: &str) {
        tracing::error!(sha256 = %short(sha256), %reason, "quarantined: this binary is not installed again until `handover forget {}`", short(sha256));
        self.state.quarantine(sha256, reason);
        self.save();
    }

    fn forget(&mut self, prefix: &str) -> Result<Vec<String>, String> {
        let prefix = prefix.trim();
        if prefix.is_empty() {
            return Err("name a sha256 (or a prefix of one), or `all`".into());
        }
        let released = self.state.forget(prefix);
        if released.is_empty() {
            return Err(format!("no quarantined sha256 starts with {prefix:?}"));
        }
        for sha256 in &released {
            tracing::info!(sha256 = %short(sha256), "released from quarantine");
        }
        self.save();
        Ok(released)
    }

    fn save(&self) {
        if let Err(e) = self.state_file.save(&self.state) {
            tracing::error!(path = %self.state_file.path().display(), error = %e, "cannot write the upgrade state file; the state is kept in memory only");
        }
    }

    fn record(&mut self, origin: &str, sha256: &str, outcome: String) {
        self.last = Some(UpgradeRecord {
            at: SystemTime::now(),
            origin: origin.into(),
            sha256: sha256.into(),
            outcome,
        });
    }

    fn describe_running(&self, running: &Running) -> String {
        match &running.version {
            Some(v) => format!("version {v}"),
            None => format!("sha256 {}", short(&hex::encode(running.sha256))),
        }
    }

    /// Remembers the most recently signed release seen, for the staleness warning.
    fn saw_release(&mut self, metadata: &crate::release::ReleaseMetadata) {
        let released = metadata
            .released
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        if self
            .state
            .newest_release
            .as_ref()
            .is_none_or(|seen| released > seen.released)
        {
            self.state.newest_release = Some(state::SeenRelease {
                version: metadata.version.to_string(),
                released,
            });
            self.save();
        }
    }

    /// The lowest version that may be installed: the running one or the highest ever installed.
    fn floor(&self) -> Option<semver::Version> {
        let highest = self
            .state
            .highest_installed
            .as_deref()
            .and_then(|v| semver::Version::parse(v).ok());
        match (self.running_version.clone(), highest) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

fn refusal_outcome(refusal: &Refusal) -> String {
    match refusal.disposition() {
        Disposition::NotReady => format!("not ready: {refusal}"),
        Disposition::Quarantine => format!("quarantined: {refusal}"),
        _ => format!("rejected: {refusal}"),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}
