//! Staged rollouts in the pipeline: before asking the fetcher for a candidate, read the
//! release store's rollout manifest (when there is one), write this host's report, and decide
//! from the step in force and the other hosts' reports whether to install now.

use std::time::SystemTime;

use handover_fetcher::{Artifact, FetchError, Settlement};

use crate::digest::short;
use crate::rollout::{self, Follower, Manifest, Outcome, Verdict};

use super::state::SeenRollout;
use super::Pipeline;

/// What the pipeline knows of the rollout in force.
#[derive(Debug, Default)]
pub(super) struct Staged {
    /// This host's view of the store, once its id is resolved.
    follower: Option<Follower>,
    /// The release this host refused (it failed a check), and why.
    refused: Option<(String, String)>,
    /// What the status shows.
    pub(super) status: Option<String>,
    /// What was last logged: the status without the counts.
    gist: Option<String>,
}

/// Whether the fetcher is asked for a candidate.
pub(super) enum Gate {
    /// No manifest: upgrades as without staging.
    Free,
    /// This host's turn: install the manifest's release, and only it.
    Release(Manifest),
    /// Not now, and why.
    Closed(String),
    /// The manifest or the reports cannot be used: nothing is installed until they can.
    Broken(crate::error::Error),
    /// The store did not answer (down, rate limited): backed off like a failed fetch.
    Unreachable(FetchError),
}

impl Pipeline {
    /// Reads the manifest (and, when needed, the reports), reports this host's outcome, and
    /// decides.
    pub(super) async fn staged_gate(&mut self, running_sha: &str) -> Gate {
        if self.fetcher.as_mut().and_then(|f| f.store()).is_none() {
            return Gate::Free;
        }
        if self.staged.follower.is_none() {
            match rollout::host_id(self.config.host_id.as_deref()) {
                Ok(host) => self.staged.follower = Some(Follower::new(host)),
                Err(e) => return self.broken(e),
            }
        }
        let keys = self.config.public_keys.clone();
        let (Some(store), Some(follower)) = (
            self.fetcher.as_mut().and_then(|f| f.store()),
            self.staged.follower.as_mut(),
        ) else {
            return Gate::Free;
        };
        let manifest = match follower.manifest(store, &keys).await {
            Ok(Some(manifest)) => manifest,
            Ok(None) => {
                self.staged.status = None;
                self.staged.gist = None;
                return Gate::Free;
            }
            Err(crate::error::Error::Fetch(e)) => return self.unreadable(e),
            Err(e) => return self.broken(e),
        };
        let sha = manifest.release.sha256.clone();
        match &self.state.rollout {
            Some(seen) if seen.sha256 == sha && seen.serial > manifest.serial => {
                let location = store.locate(rollout::MANIFEST);
                let message = format!(
                    "serial {} is older than serial {} seen before (an old manifest replayed?)",
                    manifest.serial, seen.serial
                );
                return self.broken(crate::error::Error::Rollout { location, message });
            }
            Some(seen) if seen.sha256 == sha && seen.serial == manifest.serial => {}
            _ => {
                self.state.rollout = Some(SeenRollout {
                    sha256: sha.clone(),
                    serial: manifest.serial,
                });
                self.save();
            }
        }
        let mine = self.own_outcome(&sha, running_sha);
        let (Some(store), Some(follower)) = (
            self.fetcher.as_mut().and_then(|f| f.store()),
            self.staged.follower.as_mut(),
        ) else {
            return Gate::Free;
        };
        let now = SystemTime::now();
        let view = match follower.look(store, &manifest, mine, now).await {
            Ok(view) => view,
            Err(crate::error::Error::Fetch(e)) if transient(&e) => return Gate::Unreachable(e),
            Err(e) => return self.broken(e),
        };
        let (bucket, tally) = (view.bucket, &view.tally);
        let release = match &manifest.release.version {
            Some(v) => format!("{v} (sha256 {})", short(&sha)),
            None => format!("sha256 {}", short(&sha)),
        };
        let counts = format!(
            "{} hosts reported, {} rolled back, {} refused (counted {})",
            tally.hosts(),
            tally.rolled_back,
            tally.refused,
            humantime::format_rfc3339_seconds(view.counted_at)
        );
        let halt = rollout::halted(&manifest, tally)
            .map(|r| format!(" (HALTED: {r})"))
            .unwrap_or_default();
        let (gist, gate) = if running_sha == sha {
            (format!("release {release} runs here{halt}"), None)
        } else if let Some(q) = self.state.quarantined(&sha) {
            (
                format!(
                    "this host rolled release {release} back ({}); it is not installed again{halt}",
                    q.reason
                ),
                None,
            )
        } else {
            match view.verdict {
                Verdict::Install { step } => (
                    format!("release {release}: step {} of {} covers this host (bucket {bucket}); installing", step + 1, manifest.steps.len()),
                    Some(manifest),
                ),
                Verdict::Wait { reason } => (format!("release {release}: {reason}"), None),
                Verdict::Halted(reason) => (format!("release {release} HALTED: {reason}"), None),
                Verdict::Expired => (
                    format!("release {release}: the rollout expired at {} before this host's turn", humantime::format_rfc3339_seconds(manifest.expires)),
                    None,
                ),
            }
        };
        // Logged when the gist changes, not on every new report.
        if self.staged.gist.as_deref() != Some(gist.as_str()) {
            tracing::info!("rollout: {gist}");
        }
        self.staged.status = Some(format!("{gist}; {counts}"));
        let gate = match gate {
            Some(manifest) => Gate::Release(manifest),
            None => Gate::Closed(gist.clone()),
        };
        self.staged.gist = Some(gist);
        gate
    }

    /// With a rollout in force, only its release is taken: a candidate the store publishes
    /// with another SHA-256 waits (a publication half done), and one published without any is
    /// checked against the manifest's.
    pub(super) fn only_the_release(
        &mut self,
        artifact: Artifact,
        release: Option<&rollout::Release>,
    ) -> Result<Artifact, String> {
        let Some(release) = release else {
            return Ok(artifact);
        };
        let Some(named) = handover_fetcher::parse_sha256(&release.sha256) else {
            return Err(format!(
                "the rollout names no valid sha256: {:?}",
                release.sha256
            ));
        };
        match artifact.claimed_sha256() {
            Some(claimed) if *claimed != named => {
                let why = format!(
                    "{} publishes sha256 {} but the rollout names {}; waiting until they agree",
                    artifact.origin(),
                    short(&hex::encode(claimed)),
                    short(&release.sha256)
                );
                if let (Some(id), Some(fetcher)) = (artifact.id(), self.fetcher.as_mut()) {
                    fetcher.settled(id, Settlement::NotReady);
                }
                Err(why)
            }
            Some(_) => Ok(artifact),
            None => Ok(artifact.with_sha256(named)),
        }
    }

    /// Remembers that this host refused the release with `sha256` (it failed a check).
    pub(super) fn staged_refused(&mut self, sha256: &str, reason: String) {
        self.staged.refused = Some((sha256.to_string(), reason));
    }

    /// What this host has to report about the release with `sha`, derived from what it runs
    /// and what it remembers, so that a report lost to a crash is written again.
    fn own_outcome(&self, sha: &str, running_sha: &str) -> Option<(Outcome, Option<String>)> {
        if running_sha == sha {
            let in_probation = self.probation.as_ref().is_some_and(|p| p.sha256 == sha);
            return Some((
                if in_probation {
                    Outcome::Installed
                } else {
                    Outcome::Ready
                },
                None,
            ));
        }
        if let Some((refused, reason)) = &self.staged.refused {
            if refused == sha {
                return Some((Outcome::Refused, Some(reason.clone())));
            }
        }
        self.state
            .quarantined(sha)
            .map(|q| (Outcome::RolledBack, Some(q.reason.clone())))
    }

    /// The manifest could not be read. A store that is down is backed off from like a failed
    /// fetch. One that refuses (S3 answers 403 for a missing key to a reader that may not list
    /// the bucket) on a host that has never seen a manifest leaves upgrades unstaged, as
    /// before rollouts existed, and says so; once a manifest was seen, nothing is installed
    /// until it can be read again.
    fn unreadable(&mut self, error: FetchError) -> Gate {
        if transient(&error) {
            return Gate::Unreachable(error);
        }
        if matches!(error, FetchError::Refused { .. }) && self.state.rollout.is_none() {
            let why = format!(
                "cannot read {} ({error}); upgrades are not staged on this host",
                rollout::MANIFEST
            );
            if self.staged.gist.as_deref() != Some(why.as_str()) {
                tracing::warn!("rollout: {why}");
            }
            self.staged.status = Some(why.clone());
            self.staged.gist = Some(why);
            return Gate::Free;
        }
        self.broken(error.into())
    }

    fn broken(&mut self, error: crate::error::Error) -> Gate {
        let why = format!("{error}; nothing is installed until it is put right");
        if self.staged.gist.as_deref() != Some(why.as_str()) {
            tracing::warn!("rollout: {why}");
        }
        self.staged.status = Some(why.clone());
        self.staged.gist = Some(why);
        Gate::Broken(error)
    }
}

/// Whether `error` says only that the store is unreachable for now.
fn transient(error: &FetchError) -> bool {
    matches!(
        error,
        FetchError::Unreachable { .. } | FetchError::RateLimited { .. }
    )
}
