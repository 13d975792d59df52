//! The publisher's side: write and sign the manifest, halt, resume, promote, and read how the
//! rollout goes.

use std::time::SystemTime;

use handover_fetcher::Store;

use super::book::Book;
use super::manifest::{Manifest, MANIFEST, SIGNATURE};
use super::plan::{halted, step_at, Tally};
use super::report::Report;
use crate::error::Error;

/// The minisign signature of a manifest's bytes, checked against the key's public half.
pub fn sign(bytes: &[u8], key: &minisign::SecretKey) -> Result<String, Error> {
    sign_document(bytes, key, "handover rollout manifest").map_err(|message| Error::Rollout {
        location: MANIFEST.into(),
        message,
    })
}

/// The minisign signature of a document's bytes, with `comment` as its trusted comment.
pub(super) fn sign_document(
    bytes: &[u8],
    key: &minisign::SecretKey,
    comment: &str,
) -> Result<String, String> {
    let public = minisign::PublicKey::from_secret_key(key)
        .map_err(|e| format!("the secret key has no usable public key: {e}"))?;
    let signature = minisign::sign(
        Some(&public),
        key,
        std::io::Cursor::new(bytes),
        Some(comment),
        Some("signature from handover rollout"),
    )
    .map_err(|e| format!("signing: {e}"))?;
    Ok(signature.into_string())
}

/// Writes `manifest` and its signature to `store`, signature first, so that a host reading
/// between the two writes sees the new signature beside the old manifest, refuses the pair,
/// and takes the new one at its next poll.
pub async fn publish(
    store: &mut dyn Store,
    manifest: &Manifest,
    key: Option<&minisign::SecretKey>,
) -> Result<(), Error> {
    manifest.validate().map_err(|message| Error::Rollout {
        location: store.locate(MANIFEST),
        message,
    })?;
    let bytes = manifest.to_json();
    if let Some(key) = key {
        store
            .put(SIGNATURE, sign(&bytes, key)?.into_bytes())
            .await?;
    }
    store.put(MANIFEST, bytes).await?;
    Ok(())
}

/// Halts the rollout (`Some(reason)`) or resumes it (`None`): resuming also stops counting the
/// failures reported so far. Raises the serial.
pub fn set_halted(manifest: &mut Manifest, reason: Option<String>, now: SystemTime) {
    if reason.is_none() {
        manifest.resumed = Some(now);
    }
    manifest.halted = reason;
    manifest.serial += 1;
}

/// Moves the rollout to the next step now, whatever the time; `false` at the last step.
pub fn promote(manifest: &mut Manifest, now: SystemTime) -> bool {
    let next = step_at(manifest, now).map_or(0, |(i, _)| i + 1);
    if next >= manifest.steps.len() {
        return false;
    }
    if now < manifest.start {
        manifest.start = now;
    }
    manifest.promoted = manifest.promoted.max(next);
    manifest.serial += 1;
    true
}

/// How a rollout goes, as `handover rollout status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
#[non_exhaustive]
pub struct Overview {
    /// The release's version and SHA-256.
    pub version: Option<String>,
    /// The release's SHA-256.
    pub sha256: String,
    /// The manifest's serial.
    pub serial: u64,
    /// The step in force (1-based), `0` before the start.
    pub step: usize,
    /// Steps in all.
    pub steps: usize,
    /// The percentage of hosts the step covers.
    pub percent: f64,
    /// When the step ends.
    #[serde(with = "humantime_serde")]
    pub step_ends: Option<SystemTime>,
    /// When the manifest expires.
    #[serde(with = "humantime_serde")]
    pub expires: SystemTime,
    /// Why the rollout is halted.
    pub halted: Option<String>,
    /// Hosts per outcome.
    pub installed: usize,
    /// Hosts serving the release.
    pub ready: usize,
    /// Hosts that rolled it back.
    pub rolled_back: usize,
    /// Hosts that refused it.
    pub refused: usize,
    /// Every report, newest first.
    pub reports: Vec<Report>,
}

impl Overview {
    /// Reads the reports about `manifest`'s release, and its failure index, from `store`.
    pub async fn read(store: &mut dyn Store, manifest: &Manifest) -> Result<Self, Error> {
        let mut book = Book::new();
        let sha = &manifest.release.sha256;
        let mut reports = book.reports(store, sha).await?;
        let failures = book.failures(store, sha).await?;
        reports.sort_by(|a, b| b.at.cmp(&a.at).then_with(|| a.host.cmp(&b.host)));
        Ok(Self::of(manifest, reports, &failures, SystemTime::now()))
    }

    /// The overview of `manifest` with `reports` and the `failures` index, at `now`. The halt
    /// rule counts a host that failed once, in either, as the hosts do.
    pub fn of(
        manifest: &Manifest,
        reports: Vec<Report>,
        failures: &[Report],
        now: SystemTime,
    ) -> Self {
        let tally = Tally::of(manifest, &reports);
        let indexed: std::collections::HashSet<&str> =
            failures.iter().map(|f| f.host.as_str()).collect();
        let failed = failures.iter().chain(
            reports
                .iter()
                .filter(|r| r.outcome.failed() && !indexed.contains(r.host.as_str())),
        );
        let halt = Tally::counted(manifest, tally.reported, failed);
        let step = step_at(manifest, now);
        Self {
            version: manifest.release.version.clone(),
            sha256: manifest.release.sha256.clone(),
            serial: manifest.serial,
            step: step.map_or(0, |(i, _)| i + 1),
            steps: manifest.steps.len(),
            percent: step.map_or(0.0, |(i, _)| manifest.steps[i].percent),
            step_ends: step.and_then(|(_, ends)| ends),
            expires: manifest.expires,
            halted: halted(manifest, &halt)
                .or_else(|| (now >= manifest.expires).then(|| "expired".to_string())),
            installed: tally.installed,
            ready: tally.ready,
            rolled_back: tally.rolled_back,
            refused: tally.refused,
            reports,
        }
    }

    /// A table a person reads at a glance.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let version = self.version.as_deref().unwrap_or("-");
        let _ = writeln!(
            out,
            "release   {version} (sha256 {})",
            &self.sha256[..12.min(self.sha256.len())]
        );
        let state = match &self.halted {
            Some(reason) => format!("HALTED — {reason}"),
            None if self.step == 0 => "not started".into(),
            None => "rolling out".into(),
        };
        let _ = writeln!(out, "state     {state}");
        let ends = self
            .step_ends
            .map(|t| format!(", until {}", humantime::format_rfc3339_seconds(t)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "step      {} of {} ({} % of hosts{ends})",
            self.step, self.steps, self.percent
        );
        let _ = writeln!(
            out,
            "expires   {}",
            humantime::format_rfc3339_seconds(self.expires)
        );
        let _ = writeln!(out, "serial    {}", self.serial);
        let _ = writeln!(out);
        let _ = writeln!(out, "{:<12} {:>6}", "outcome", "hosts");
        for (name, count) in [
            ("installed", self.installed),
            ("ready", self.ready),
            ("rolled-back", self.rolled_back),
            ("refused", self.refused),
        ] {
            let _ = writeln!(out, "{name:<12} {count:>6}");
        }
        let failures: Vec<_> = self
            .reports
            .iter()
            .filter(|r| r.outcome.failed())
            .take(10)
            .collect();
        if !failures.is_empty() {
            let _ = writeln!(out, "\nlatest failures:");
            for r in failures {
                let _ = writeln!(
                    out,
                    "  {} {} {}: {}",
                    humantime::format_rfc3339_seconds(r.at),
                    r.host,
                    r.outcome.as_str(),
                    r.reason.as_deref().unwrap_or("-")
                );
            }
        }
        out
    }
}
