//! The decisions every host takes alone from the manifest and the reports: its bucket, the
//! step in force, whether the rollout halted, and so whether it installs now.

use std::time::{Duration, SystemTime};

use sha2::Digest;

use super::manifest::Manifest;
use super::report::{Outcome, Report};

/// Buckets hosts are spread over: a step of `p` % covers buckets below `p × 100`.
pub const BUCKETS: u32 = 10_000;

/// The host's bucket for the release with `sha256`: `hash(host_id, sha256) mod 10000`, so each
/// release draws different cohorts and no host is always first.
pub fn bucket(host_id: &str, sha256: &str) -> u32 {
    let mut hasher = sha2::Sha256::new();
    hasher.update(host_id.as_bytes());
    hasher.update([0]);
    hasher.update(sha256.trim().to_ascii_lowercase().as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % u64::from(BUCKETS)) as u32
}

/// Whether a step of `percent` covers `bucket`.
pub fn covers(percent: f64, bucket: u32) -> bool {
    f64::from(bucket) < percent * f64::from(BUCKETS) / 100.0
}

/// The step in force at `now`: its index and when it ends (`None` for the last); `None` before
/// the start.
pub fn step_at(manifest: &Manifest, now: SystemTime) -> Option<(usize, Option<SystemTime>)> {
    let elapsed = now.duration_since(manifest.start).ok()?;
    let mut end = Duration::ZERO;
    let mut by_time = manifest.steps.len() - 1;
    for (i, step) in manifest.steps.iter().enumerate() {
        match step.lasts {
            Some(lasts) => {
                end += lasts;
                if elapsed < end {
                    by_time = i;
                    break;
                }
            }
            None => {
                by_time = i;
                break;
            }
        }
    }
    let index = by_time.max(manifest.promoted);
    let ends = manifest.steps[..=index]
        .iter()
        .try_fold(Duration::ZERO, |sum, s| s.lasts.map(|d| sum + d))
        .map(|d| manifest.start + d);
    Some((index, ends))
}

/// The reports about a release, counted by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Tally {
    /// Hosts that reported at all.
    pub reported: usize,
    /// Hosts that installed it and are in probation.
    pub installed: usize,
    /// Hosts serving it.
    pub ready: usize,
    /// Hosts that rolled it back.
    pub rolled_back: usize,
    /// Hosts that refused it.
    pub refused: usize,
    /// Failures (rollbacks and refusals) that count in the halt rule: those reported after the
    /// publisher last resumed.
    pub counted_failures: usize,
}

impl Tally {
    /// Counts `reports` (one per host) for `manifest`'s release.
    pub fn of<'a>(manifest: &Manifest, reports: impl IntoIterator<Item = &'a Report>) -> Self {
        let mut tally = Self::default();
        for report in reports {
            if !report.sha256.eq_ignore_ascii_case(&manifest.release.sha256) {
                continue;
            }
            tally.reported += 1;
            tally.add(manifest, report);
        }
        tally
    }

    /// What a host counts: `reported` hosts (from a listing), and the `failures` index. A host
    /// in the index counts as failed even when its report says it installed the release since.
    pub fn counted<'a>(
        manifest: &Manifest,
        reported: usize,
        failures: impl IntoIterator<Item = &'a Report>,
    ) -> Self {
        // A host that failed twice (refused, then rolled back) counts once, as it last failed.
        let mut latest: std::collections::HashMap<&str, &Report> = Default::default();
        for report in failures {
            if report.outcome.failed()
                && report.sha256.eq_ignore_ascii_case(&manifest.release.sha256)
            {
                let kept = latest.entry(report.host.as_str()).or_insert(report);
                if report.at > kept.at {
                    *kept = report;
                }
            }
        }
        let mut tally = Self::default();
        for report in latest.into_values() {
            tally.add(manifest, report);
        }
        tally.reported = reported.max(tally.rolled_back + tally.refused);
        tally
    }

    fn add(&mut self, manifest: &Manifest, report: &Report) {
        match report.outcome {
            Outcome::Installed => self.installed += 1,
            Outcome::Ready => self.ready += 1,
            Outcome::RolledBack => self.rolled_back += 1,
            Outcome::Refused => self.refused += 1,
        }
        if report.outcome.failed() && manifest.resumed.is_none_or(|r| report.at >= r) {
            self.counted_failures += 1;
        }
    }

    /// Hosts that reported at all.
    pub fn hosts(&self) -> usize {
        self.reported
    }
}

/// Why the rollout is halted, if it is: by the publisher, or by its halt rule.
pub fn halted(manifest: &Manifest, tally: &Tally) -> Option<String> {
    if let Some(reason) = &manifest.halted {
        return Some(format!("halted by the publisher: {reason}"));
    }
    let failed = tally.counted_failures;
    if failed == 0 {
        return None;
    }
    let rule = &manifest.halt;
    if rule.hosts > 0 && failed >= rule.hosts as usize {
        return Some(format!(
            "halted: {failed} hosts rolled back or refused the release (the rule halts at {})",
            rule.hosts
        ));
    }
    let share = 100.0 * failed as f64 / tally.hosts().max(1) as f64;
    if rule.percent > 0.0 && share >= rule.percent {
        return Some(format!(
            "halted: {failed} of {} hosts ({share:.1} %) rolled back or refused the release (the rule halts at {} %)",
            tally.hosts(),
            rule.percent
        ));
    }
    None
}

/// What a host does about the manifest's release now.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Verdict {
    /// Install it: the step in force covers this host.
    Install {
        /// The step in force.
        step: usize,
    },
    /// Not this host's turn yet.
    Wait {
        /// Why, for `handover status`.
        reason: String,
    },
    /// The rollout is halted; nothing is installed.
    Halted(String),
    /// The manifest expired before this host's turn.
    Expired,
}

/// Whether the host in `bucket` installs `manifest`'s release at `now`, given the reports.
pub fn decide(manifest: &Manifest, bucket: u32, tally: &Tally, now: SystemTime) -> Verdict {
    if let Some(reason) = halted(manifest, tally) {
        return Verdict::Halted(reason);
    }
    if now >= manifest.expires {
        return Verdict::Expired;
    }
    let Some((step, ends)) = step_at(manifest, now) else {
        return Verdict::Wait {
            reason: format!(
                "the rollout starts at {}",
                humantime::format_rfc3339_seconds(manifest.start)
            ),
        };
    };
    if covers(manifest.steps[step].percent, bucket) {
        return Verdict::Install { step };
    }
    let turn = manifest
        .steps
        .iter()
        .position(|s| covers(s.percent, bucket))
        .unwrap_or(manifest.steps.len() - 1);
    Verdict::Wait {
        reason: format!(
            "step {} of {} ({} %) until {}; this host (bucket {bucket}) is in step {}",
            step + 1,
            manifest.steps.len(),
            manifest.steps[step].percent,
            ends.map(|t| humantime::format_rfc3339_seconds(t).to_string())
                .unwrap_or_else(|| "the end".into()),
            turn + 1
        ),
    }
}

#[cfg(test)]
mod tests;
