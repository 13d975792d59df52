//! What a host reports about a release: one small document per host and release, rewritten as
//! the host's outcome changes, at `reports/<release sha256>/<host id>.json`; a rollback or a
//! refusal is also written to `failures/<release sha256>/<host id>.json` (written first).

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Where the reports about the release with `sha256` are kept.
pub fn prefix(sha256: &str) -> String {
    format!("reports/{sha256}/")
}

/// Where `host_id`'s report about the release with `sha256` is kept.
pub fn name(sha256: &str, host_id: &str) -> String {
    format!("{}{host_id}.json", prefix(sha256))
}

/// Where the failure index of the release with `sha256` is kept: a copy of each rollback or
/// refusal, named after its host, time and outcome, so that a host checks the halt rule from
/// the listing alone, without reading a report.
pub fn failures_prefix(sha256: &str) -> String {
    format!("failures/{sha256}/")
}

/// Where `report`, a failure, is indexed: `failures/<sha256>/<host>.<unix seconds>.<outcome>.json`.
pub fn failure_name(report: &Report) -> String {
    let secs = report
        .at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "{}{}.{secs}.{}.json",
        failures_prefix(&report.sha256),
        report.host,
        report.outcome.as_str()
    )
}

/// The failure a [`failure_name`] names, without its reason; `None` for another name.
pub(super) fn parse_failure_name(sha256: &str, name: &str) -> Option<Report> {
    let rest = name.strip_prefix(&failures_prefix(sha256))?;
    let mut parts = rest.strip_suffix(".json")?.rsplitn(3, '.');
    let outcome = Outcome::parse(parts.next()?)?;
    let secs: u64 = parts.next()?.parse().ok()?;
    let host = parts.next()?;
    if host.is_empty() || host.contains('/') || !outcome.failed() {
        return None;
    }
    Some(Report {
        host: host.to_string(),
        sha256: sha256.to_string(),
        outcome,
        reason: None,
        at: SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs),
    })
}

/// How a host's upgrade to the release went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Outcome {
    /// Swapped in; a worker of it is starting or in probation.
    Installed,
    /// Passed probation: serving.
    Ready,
    /// Crashed or failed in probation, and the previous binary was restored.
    RolledBack,
    /// Failed a check before it was installed (a signature, a checksum, its sanity run).
    Refused,
}

impl Outcome {
    /// Whether the outcome counts against the release in the halt rule.
    pub fn failed(self) -> bool {
        matches!(self, Self::RolledBack | Self::Refused)
    }

    /// The outcome written as [`as_str`](Self::as_str) writes it.
    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Installed,
            Self::Ready,
            Self::RolledBack,
            Self::Refused,
        ]
        .into_iter()
        .find(|o| o.as_str() == text)
    }

    /// The outcome as written in reports and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Installed => "installed",
            Self::Ready => "ready",
            Self::RolledBack => "rolled-back",
            Self::Refused => "refused",
        }
    }
}

/// One host's report about one release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Report {
    /// The host.
    pub host: String,
    /// The release's SHA-256 (hex), as the manifest names it.
    pub sha256: String,
    /// How it went.
    pub outcome: Outcome,
    /// Why, for a rollback or a refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the host wrote it.
    #[serde(with = "humantime_serde")]
    pub at: SystemTime,
}

impl Report {
    /// `host`'s report of `outcome` for the release with `sha256`, written now.
    pub fn new(host: &str, sha256: &str, outcome: Outcome, reason: Option<String>) -> Self {
        Self {
            host: host.into(),
            sha256: sha256.into(),
            outcome,
            reason,
            at: SystemTime::now(),
        }
    }

    /// Reads a report; `None` for bytes that are not one.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    /// The report as stored.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}
