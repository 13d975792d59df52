//! What the pipeline shows in `handover status`, and hands to the master.

use std::time::{Instant, SystemTime};

use crate::handoff::{ProbationInfo, QuarantineEntry, ToMaster, UpgradeStatus};

use super::{signed, state, Pipeline};

impl Pipeline {
    /// Sends the master the pipeline's status and what the fetcher learned.
    pub(super) fn publish(&mut self) {
        let memory = self.fetcher.as_ref().and_then(|f| f.memory());
        if memory != self.fetcher_memory {
            self.fetcher_memory = memory.clone();
            let _ = self
                .channels
                .to_master
                .send(ToMaster::FetcherMemory(memory));
        }
        let status = UpgradeStatus {
            running_version: self.running_version.as_ref().map(|v| v.to_string()),
            highest_installed: self.state.highest_installed.clone(),
            probation: self.probation.as_ref().map(|p| ProbationInfo {
                sha256: p.sha256.clone(),
                version: p.version.as_ref().map(|v| v.to_string()),
                until: p
                    .deadline
                    .map(|d| SystemTime::now() + d.saturating_duration_since(Instant::now())),
            }),
            quarantine: self
                .state
                .quarantine
                .iter()
                .map(|q| QuarantineEntry {
                    sha256: q.sha256.clone(),
                    reason: q.reason.clone(),
                    at: state::from_unix(q.at),
                })
                .collect(),
            waiting: self.waiting.clone(),
            last: self.last.clone(),
            newest_signed_release: self.state.newest_release.as_ref().map(|seen| {
                format!(
                    "{}, signed {}",
                    seen.version,
                    humantime::format_rfc3339_seconds(state::from_unix(seen.released))
                )
            }),
            rollout: self.staged.status.clone(),
            warnings: signed::staleness(
                self.state
                    .newest_release
                    .as_ref()
                    .map(|seen| (seen.version.as_str(), state::from_unix(seen.released))),
                self.config.max_signature_age,
                SystemTime::now(),
            )
            .into_iter()
            .chain(self.master_warning.clone())
            .collect(),
        };
        let _ = self
            .channels
            .to_master
            .send(ToMaster::Status(Box::new(status)));
    }
}
