//! The end of the pipeline: the swap, the hand-over, probation, and the rollback.
//!
//! Probation follows the upgraded *binary*, not a worker: any worker started from it (the one
//! the upgrade started, one a restart signal started during probation, the first one after a
//! master restart) that fails to become ready or crashes within the window puts the previous
//! binary back and quarantines the hash. The probation in progress is in the state file, so a
//! master killed mid-probation resumes it when it starts again.
//!
//! The fetcher keeps polling during probation. A newer candidate that passes every check ends
//! the probation as superseded: the superseded binary was never proven, so it raises no floor
//! and `<live>.previous` stays the binary before it, where a rollback goes.
//!
//! Order of writes, so that a SIGKILL at any point leaves something the next start can finish:
//! install writes the probation to the state file *before* the swap (a master killed between
//! the two finds the probation's binary not live and drops it); rollback writes the
//! quarantine *before* putting the previous binary back (a master killed between the two
//! finds a quarantined live binary and finishes the rollback).

use std::time::{Duration, Instant};

use handover_fetcher::Running;
use tokio::sync::oneshot;

use super::attempt::{Checked, Outcome};
use super::state::{self, Probation};
use super::{swap, Pipeline};
use crate::digest::{short, Known};
use crate::handoff::{HandoverOutcome, ToMaster, WorkerReport};
use crate::refusal::Refusal;

/// The upgrade in probation.
pub(super) struct Active {
    pub(super) sha256: String,
    pub(super) version: Option<semver::Version>,
    /// The version that ran before, put back on a rollback.
    previous_version: Option<semver::Version>,
    origin: String,
    /// When the window ends; `None` until a worker of the binary is ready.
    pub(super) deadline: Option<Instant>,
    /// The master state format it read in its sanity run (`None`: unknown, as after a restart
    /// of the master, or it cannot take the master over).
    master_state: Option<u32>,
    /// Resumed by a master started from this binary: its code is the master's already.
    resumed: bool,
    span: tracing::Span,
}

impl Pipeline {
    /// Swaps `checked` in and hands over to it; probation starts once its worker is ready.
    pub(super) async fn install(
        &mut self,
        checked: Checked,
        running: &Running,
        span: tracing::Span,
    ) -> Outcome {
        let Checked {
            download,
            sha256,
            version,
            origin,
            master_state,
            mut stages,
        } = checked;
        let hand_over = !self.config.stage_only;
        // An upgrade still in probation is not proven: the rollback point stays the binary
        // before it, and it is put back only if this swap fails.
        let superseded = self.end_probation_for(&sha256);
        let saved = self.state.probation.take();
        let (previous_sha256, previous_version) = match &superseded {
            Some(old) => (
                saved.as_ref().and_then(|p| p.previous_sha256.clone()),
                old.previous_version.clone(),
            ),
            None => (
                Some(hex::encode(running.sha256)),
                self.running_version.clone(),
            ),
        };
        if hand_over {
            self.state.probation = Some(Probation {
                sha256: sha256.clone(),
                previous_sha256,
                version: version.as_ref().map(|v| v.to_string()),
                origin: origin.clone(),
                started: state::unix_now(),
            });
            self.save();
            stages.lap("state");
        }
        // Taken before the rename, which keeps the inode: the bytes hashed while downloading.
        let known = Known::of_file(&download.path, download.sha256).ok();
        if let Err(error) = swap::install(&self.live, &download.path, superseded.is_some()) {
            swap::discard(&download.path);
            self.state.probation = saved;
            self.save();
            self.probation = superseded;
            return Outcome::Refused {
                sha256: Some(sha256),
                refusal: Refusal::transient(format!(
                    "swapping {} in: {error}; the live binary is unchanged",
                    self.live.display()
                )),
            };
        }
        stages.lap("swap");
        tracing::info!(binary = %self.live.display(), "new binary swapped in; previous kept");
        if !hand_over {
            tracing::info!("upgrade staged; the next restart runs it");
            if let Some(version) = &version {
                self.raise_floor(version);
                self.save();
            }
            self.record(&origin, &sha256, "staged".into());
            return Outcome::Installed { sha256, version };
        }
        let supersedes = superseded.is_some();
        if let Some(old) = superseded {
            old.span.in_scope(|| {
                tracing::warn!(by = %short(&sha256), "probation ended: superseded by a newer candidate; a rollback now goes to the binary before it");
            });
        }
        self.probation = Some(Active {
            sha256: sha256.clone(),
            version: version.clone(),
            previous_version,
            origin: origin.clone(),
            deadline: None,
            master_state,
            resumed: false,
            span,
        });
        match self.hand_over(&sha256, known).await {
            HandoverOutcome::Ready(times) => {
                stages.add(&[
                    ("spawn", times.spawn),
                    ("ready", times.ready),
                    ("drain", times.drain),
                ]);
                tracing::info!("upgrade installed and serving");
                tracing::info!("upgrade stages: {}", stages.line());
                self.start_window();
                self.running_version = version.clone().or(self.running_version.take());
                self.record(&origin, &sha256, "installed; in probation".into());
                Outcome::Installed { sha256, version }
            }
            HandoverOutcome::Stopping => {
                // Swapped in, not proven either way: the probation stays in the state file and
                // the next start of the master resumes it.
                self.probation = None;
                Outcome::Refused {
                    sha256: Some(sha256),
                    refusal: Refusal::transient(
                        "the master is stopping; the next start resumes the probation",
                    ),
                }
            }
            HandoverOutcome::Failed(why) => {
                let reason = format!("the new worker {why}");
                // The worker still serving runs the superseded binary, which is no longer the
                // rollback point: hand over to the one restored.
                self.roll_back(&reason, supersedes);
                Outcome::Refused {
                    sha256: Some(sha256),
                    refusal: Refusal::RolledBack { reason },
                }
            }
        }
    }

    /// Asks the master to hand over to the live binary and waits for the outcome.
    async fn hand_over(&mut self, sha256: &str, known: Option<Known>) -> HandoverOutcome {
        let (reply, outcome) = oneshot::channel();
        let request = ToMaster::HandOver {
            sha256: sha256.to_string(),
            known,
            reply,
        };
        if self.channels.to_master.send(request).is_err() {
            return HandoverOutcome::Stopping;
        }
        outcome.await.unwrap_or(HandoverOutcome::Stopping)
    }

    /// Asks for a hand-over without waiting for it (after a rollback).
    fn hand_over_later(&self, known: Known) {
        let (reply, outcome) = oneshot::channel();
        let sha256 = known.hex();
        if self
            .channels
            .to_master
            .send(ToMaster::HandOver {
                sha256,
                known: Some(known),
                reply,
            })
            .is_ok()
        {
            tokio::spawn(async move {
                if let Ok(HandoverOutcome::Failed(why)) = outcome.await {
                    tracing::error!("the worker started from the previous binary {why}");
                }
            });
        }
    }

    fn start_window(&mut self) {
        let window = self.config.probation;
        if let Some(p) = self.probation.as_mut().filter(|p| p.deadline.is_none()) {
            p.deadline = Some(Instant::now() + window);
            p.span.in_scope(|| {
                tracing::info!(window = %humantime::format_duration(window), "worker of the new binary is ready; probation runs");
            });
        }
    }

    /// What the master says about workers: probation follows the binary.
    pub(super) fn on_report(&mut self, report: WorkerReport) {
        let Some(active) = &self.probation else {
            return;
        };
        match report {
            WorkerReport::Ready { sha256 } if sha256 == active.sha256 => self.start_window(),
            WorkerReport::Failed { sha256, why } if sha256 == active.sha256 => {
                self.roll_back(&format!("a worker of the new binary {why}"), true);
            }
            WorkerReport::Crashed { sha256, lived, how } if sha256 == active.sha256 => {
                let within = active.deadline.is_none_or(|d| Instant::now() < d);
                if within {
                    let lived = Duration::from_millis(lived.as_millis() as u64);
                    self.roll_back(
                        &format!(
                            "the new worker crashed {} after it was started ({how})",
                            humantime::format_duration(lived)
                        ),
                        true,
                    );
                }
            }
            _ => {}
        }
    }

    pub(super) fn probation_passed(&mut self) {
        if let Some(active) = self.pass_probation() {
            self.upgrade_master(&active);
        }
    }

    fn pass_probation(&mut self) -> Option<Active> {
        let active = self.probation.take()?;
        active
            .span
            .in_scope(|| tracing::info!("upgrade passed probation"));
        if let Some(version) = &active.version {
            self.raise_floor(version);
        }
        self.state.probation = None;
        self.save();
        self.record(&active.origin, &active.sha256, "installed".into());
        Some(active)
    }

    /// Before `sha256` is swapped in: a probation whose window is over passes (without a
    /// master upgrade: the newer binary brings its own); one still running is ended and
    /// returned, superseded.
    fn end_probation_for(&mut self, sha256: &str) -> Option<Active> {
        let active = self.probation.as_ref()?;
        if active.sha256 == sha256 {
            return None;
        }
        if active.deadline.is_some_and(|d| Instant::now() >= d) {
            self.pass_probation();
            return None;
        }
        self.probation.take()
    }

    /// After an upgrade of the master's own binary passed probation, the master's code is
    /// upgraded too, when the new build can take over its state.
    fn upgrade_master(&mut self, active: &Active) {
        if !self.master_is_live || !self.config.upgrade_master || active.resumed {
            return;
        }
        if active.master_state == Some(crate::protocol::MASTER_STATE_FORMAT) {
            self.master_warning = None;
            // The status first: the master passes it on to the code it re-executes.
            self.publish();
            let _ = self.channels.to_master.send(ToMaster::UpgradeMaster {
                sha256: active.sha256.clone(),
                version: active.version.as_ref().map(|v| v.to_string()),
            });
            return;
        }
        let why = match active.master_state {
            Some(format) => format!(
                "it reads master state format {format}, this master writes {}",
                crate::protocol::MASTER_STATE_FORMAT
            ),
            None => {
                "it did not read this master's state in its sanity run (an older build?)".into()
            }
        };
        let warning = format!(
            "sha256 {} is installed for workers only; the master keeps running its own code: {why}",
            short(&active.sha256)
        );
        tracing::warn!("{warning}");
        self.master_warning = Some(warning);
    }

    /// `version` runs now (a trusted one: signed, or the binary's own answer), and nothing
    /// older is installed from now on, across restarts.
    fn raise_floor(&mut self, version: &semver::Version) {
        let higher = self
            .state
            .highest_installed
            .as_deref()
            .and_then(|v| semver::Version::parse(v).ok())
            .is_none_or(|h| *version > h);
        if higher {
            self.state.highest_installed = Some(version.to_string());
        }
        self.running_version = Some(version.clone());
    }

    /// Puts the previous binary back after the probation's binary failed when run, and
    /// quarantines it. `restart`: no worker of the previous binary serves any more, so ask
    /// for one.
    fn roll_back(&mut self, reason: &str, restart: bool) {
        let Some(active) = self.probation.take() else {
            return;
        };
        let _enter = active.span.enter();
        self.state.probation = None;
        self.state.quarantine(&active.sha256, reason);
        self.save();
        match swap::restore_previous(&self.live) {
            Ok(()) => {
                tracing::error!(%reason, "upgrade rolled back; previous binary restored and the new one quarantined")
            }
            Err(e) => {
                tracing::error!(%reason, error = %e, "upgrade failed and the previous binary could not be restored")
            }
        }
        self.running_version = active.previous_version;
        self.record(
            &active.origin,
            &active.sha256,
            format!("rolled back: {reason}"),
        );
        if restart {
            match self.hashes.known(&self.live) {
                Ok(known) => self.hand_over_later(known),
                Err(e) => tracing::error!(error = %e, "cannot read the restored binary"),
            }
        }
    }

    pub(super) fn rollback_on_request(&mut self) -> Result<(), String> {
        swap::restore_previous(&self.live).map_err(|e| e.to_string())?;
        // The version that ran before is known only for an upgrade still in probation.
        self.running_version = match self.probation.take() {
            Some(active) => {
                self.record(
                    &active.origin,
                    &active.sha256,
                    "rolled back by request".into(),
                );
                active.previous_version
            }
            None => None,
        };
        self.state.probation = None;
        self.save();
        tracing::info!("previous binary restored by request; handing over to it");
        let known = self.hashes.known(&self.live).map_err(|e| e.to_string())?;
        self.hand_over_later(known);
        Ok(())
    }

    /// At start: resume a probation whose binary is live, finish a rollback a dead master left
    /// half done, drop a probation whose swap never happened.
    pub(super) fn resume(&mut self) {
        let live = match self.hashes.hex(&self.live) {
            Ok(live) => live,
            Err(e) => {
                tracing::warn!(binary = %self.live.display(), error = %e, "cannot hash the live binary at start");
                return;
            }
        };
        if let Some(q) = self.state.quarantined(&live) {
            let reason = q.reason.clone();
            match swap::restore_previous(&self.live) {
                Ok(()) => {
                    tracing::warn!(sha256 = %short(&live), %reason, "the live binary is quarantined (a rollback was interrupted); previous binary restored")
                }
                Err(e) => {
                    tracing::error!(sha256 = %short(&live), %reason, error = %e, "the live binary is quarantined and the previous one cannot be restored; running it")
                }
            }
            self.state.probation = None;
            self.save();
            return;
        }
        let Some(saved) = self.state.probation.clone() else {
            return;
        };
        if saved.sha256 != live {
            tracing::warn!(probation = %short(&saved.sha256), live = %short(&live), "the binary that was in probation is not the live one; probation dropped");
            self.state.probation = None;
            self.save();
            return;
        }
        let version = saved
            .version
            .as_deref()
            .and_then(|v| semver::Version::parse(v).ok());
        let span = tracing::info_span!("upgrade", origin = %saved.origin, sha256 = short(&saved.sha256), version = saved.version.as_deref());
        span.in_scope(|| tracing::info!("resuming the probation a previous master started"));
        self.probation = Some(Active {
            sha256: saved.sha256,
            previous_version: None,
            version: version.clone(),
            origin: saved.origin,
            deadline: None,
            master_state: None,
            resumed: true,
            span,
        });
        if version.is_some() {
            self.running_version = version;
        }
    }
}
