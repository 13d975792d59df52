//! The rollout manifest: which release, from when, in which steps, when to halt, until when.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// The manifest's name in the release store; its signature is `rollout.json.minisig`.
pub const MANIFEST: &str = "rollout.json";
/// The detached minisign signature of [`MANIFEST`].
pub const SIGNATURE: &str = "rollout.json.minisig";

/// A staged rollout of one release, as the publisher signed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Manifest {
    /// The release being rolled out.
    pub release: Release,
    /// When the first step begins.
    #[serde(with = "humantime_serde")]
    pub start: SystemTime,
    /// The steps, in order; the percentage of hosts each covers only grows, and the last one,
    /// which has no duration, covers 100 %.
    pub steps: Vec<Step>,
    /// When the rollout stops itself.
    #[serde(default)]
    pub halt: HaltRule,
    /// After this, hosts that have not installed the release do not install it.
    #[serde(with = "humantime_serde")]
    pub expires: SystemTime,
    /// Raised each time the publisher changes the manifest: a host that has seen one serial
    /// refuses a lower one for the same release (an old manifest replayed).
    #[serde(default)]
    pub serial: u64,
    /// Halted by the publisher, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted: Option<String>,
    /// Steps before this index are over, whatever the time (`handover rollout promote`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub promoted: usize,
    /// Resumed by the publisher at this time: failures reported before it no longer halt.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub resumed: Option<SystemTime>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The release a manifest rolls out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Release {
    /// Its version, for people and for the version floor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The SHA-256 (hex) of the file as published: hosts install only these bytes.
    pub sha256: String,
}

/// One step: the share of hosts it covers, and how long it lasts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Step {
    /// Hosts covered, in percent (`0.5` to `100`).
    pub percent: f64,
    /// How long the step lasts before the next one; absent on the last step.
    #[serde(
        default,
        rename = "for",
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub lasts: Option<Duration>,
}

impl Step {
    /// A step covering `percent` of the hosts for `lasts` (`None`: the last step).
    pub fn new(percent: f64, lasts: Option<Duration>) -> Self {
        Self { percent, lasts }
    }
}

/// When a rollout halts itself: once this many hosts, or this share of the hosts that took the
/// release, rolled it back or refused it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HaltRule {
    /// Halt at this many failed hosts (0: never by count).
    pub hosts: u32,
    /// Halt when at least this percentage of the hosts that reported failed (0: never by share).
    pub percent: f64,
}

impl Default for HaltRule {
    fn default() -> Self {
        Self {
            hosts: 3,
            percent: 1.0,
        }
    }
}

impl HaltRule {
    /// Halts at `hosts` failed hosts or `percent` of the hosts that reported.
    pub fn new(hosts: u32, percent: f64) -> Self {
        Self { hosts, percent }
    }
}

impl Manifest {
    /// A rollout of `release` starting at `start` in `steps`, expiring at `expires`, with the
    /// default halt rule.
    pub fn new(release: Release, start: SystemTime, steps: Vec<Step>, expires: SystemTime) -> Self {
        Self {
            release,
            start,
            steps,
            halt: HaltRule::default(),
            expires,
            serial: 1,
            halted: None,
            promoted: 0,
            resumed: None,
        }
    }

    /// Reads a manifest and checks that it makes sense.
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        let manifest: Self =
            serde_json::from_slice(bytes).map_err(|e| format!("not a rollout manifest: {e}"))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The manifest as the publisher writes it.
    pub fn to_json(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// Checks what the format cannot: a release digest, growing steps ending at 100 %.
    pub fn validate(&self) -> Result<(), String> {
        if handover_fetcher::parse_sha256(&self.release.sha256).is_none() {
            return Err(format!(
                "release.sha256 {:?} is not a hex SHA-256",
                self.release.sha256
            ));
        }
        if let Some(version) = &self.release.version {
            semver::Version::parse(version)
                .map_err(|e| format!("release.version {version:?}: {e}"))?;
        }
        let Some(last) = self.steps.last() else {
            return Err("steps: at least one step is needed".into());
        };
        let mut previous = 0.0;
        for (i, step) in self.steps.iter().enumerate() {
            if !(step.percent > 0.0 && step.percent <= 100.0) {
                return Err(format!(
                    "steps[{i}].percent must be above 0 and at most 100"
                ));
            }
            if step.percent < previous {
                return Err(format!("steps[{i}].percent is lower than the step before"));
            }
            previous = step.percent;
            if i + 1 < self.steps.len() && step.lasts.is_none_or(|d| d.is_zero()) {
                return Err(format!(
                    "steps[{i}] needs a duration (`for`): only the last step has none"
                ));
            }
        }
        if last.percent != 100.0 || last.lasts.is_some() {
            return Err("the last step must cover 100 % and have no duration".into());
        }
        if self.expires <= self.start {
            return Err("expires must be after start".into());
        }
        if self.promoted >= self.steps.len() {
            return Err("promoted is past the last step".into());
        }
        if !(0.0..=100.0).contains(&self.halt.percent) {
            return Err("halt.percent must be between 0 and 100".into());
        }
        Ok(())
    }
}

/// Checks a manifest's minisign `signature` against `keys` (base64 public keys); without keys,
/// a manifest is trusted as the binaries are, unsigned.
pub fn verify(bytes: &[u8], signature: Option<&[u8]>, keys: &[String]) -> Result<(), String> {
    if keys.is_empty() {
        return Ok(());
    }
    let Some(signature) = signature else {
        return Err(format!(
            "{SIGNATURE} is missing, and upgrade.public_keys is set"
        ));
    };
    let text = std::str::from_utf8(signature).map_err(|_| format!("{SIGNATURE} is not text"))?;
    let signature = minisign_verify::Signature::decode(text)
        .map_err(|e| format!("{SIGNATURE} cannot be read: {e}"))?;
    let mut last = String::from("no key matched");
    for key in keys {
        let key = minisign_verify::PublicKey::from_base64(key.trim())
            .map_err(|e| format!("a configured public key is invalid: {e}"))?;
        match key.verify(bytes, &signature, false) {
            Ok(()) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!("bad signature: {last}"))
}
