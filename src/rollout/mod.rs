//! Staged rollouts: a fleet takes a release in steps, and halts it by itself when hosts roll it
//! back, coordinated through the store that holds the releases (no server of its own).
//!
//! The publisher writes a signed [`Manifest`] (`rollout.json` and `rollout.json.minisig`)
//! beside the releases: the release's SHA-256, a start time, steps (`1 %` for 10 minutes,
//! `10 %` for 30 minutes, …, `100 %`), a [halt rule](HaltRule) and an expiry. Every host has a
//! stable id and a [bucket] per release; it downloads the release only once the step in force
//! covers its bucket, and after each outcome writes a [`Report`] to
//! `reports/<sha256>/<host>.json` in the same store (a rollback or refusal also to
//! `failures/`). Before installing, a host counts the reports and the failures (from their
//! listings); once the halt rule is met, no further host installs the
//! release: a bad release stops itself after its first cohort, with nobody watching. A
//! [`Follower`] is what a host keeps between polls, so that a poll costs one request.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use handover::rollout::{bucket, decide, Manifest, Release, Step, Tally, Verdict};
//!
//! let start = SystemTime::now() - Duration::from_secs(60);
//! let manifest = Manifest::new(
//!     Release::new(Some("1.2.0".into()), "ab".repeat(32)),
//!     start,
//!     vec![Step::new(10.0, Some(Duration::from_secs(600))), Step::new(100.0, None)],
//!     start + Duration::from_secs(7 * 86_400),
//! );
//! // One minute into the first step, a host installs when its bucket is among the first 10 %.
//! let mine = bucket("web-042", &manifest.release.sha256);
//! let verdict = decide(&manifest, mine, &Tally::default(), SystemTime::now());
//! assert_eq!(matches!(verdict, Verdict::Install { .. }), mine < 1_000);
//! ```

mod book;
pub mod delta;
mod follow;
mod manifest;
mod plan;
mod publish;
mod report;

use handover_fetcher::Store;

pub use book::{Book, Count};
pub use follow::{Follower, View, RECOUNT};
pub use manifest::{verify, HaltRule, Manifest, Release, Step, MANIFEST, SIGNATURE};
pub use plan::{bucket, covers, decide, halted, step_at, Tally, Verdict, BUCKETS};
pub use publish::{promote, publish, set_halted, sign, Overview};
pub use report::{Outcome, Report};

/// Where reports about a release go (see [`report`](Report)).
pub use report::{failure_name, failures_prefix, name as report_name, prefix as reports_prefix};

use crate::error::Error;

impl Release {
    /// The release with `sha256` (hex), and its version when known.
    pub fn new(version: Option<String>, sha256: impl Into<String>) -> Self {
        Self {
            version,
            sha256: sha256.into().to_ascii_lowercase(),
        }
    }
}

/// Reads and checks the manifest in `store`: `Ok(None)` when there is none (upgrades are not
/// staged). With `keys`, its signature must verify.
pub async fn read(store: &mut dyn Store, keys: &[String]) -> Result<Option<Manifest>, Error> {
    let Some(bytes) = store.get(MANIFEST).await? else {
        return Ok(None);
    };
    let signature = store.get(SIGNATURE).await?;
    checked(store, &bytes, signature.as_deref(), keys).map(Some)
}

/// The manifest in `bytes`, once its `signature` verifies with `keys` (when there are keys).
fn checked(
    store: &dyn Store,
    bytes: &[u8],
    signature: Option<&[u8]>,
    keys: &[String],
) -> Result<Manifest, Error> {
    let bad = |message: String| Error::Rollout {
        location: store.locate(MANIFEST),
        message,
    };
    verify(bytes, signature, keys).map_err(bad)?;
    Manifest::parse(bytes).map_err(bad)
}

/// This host's id: `configured`, else the machine id (`/etc/machine-id`), else the host name.
pub fn host_id(configured: Option<&str>) -> Result<String, Error> {
    if let Some(id) = configured {
        return valid_host_id(id.trim());
    }
    for path in ["/etc/machine-id", "/var/lib/dbus/machine-id"] {
        if let Ok(id) = std::fs::read_to_string(path) {
            if !id.trim().is_empty() {
                return valid_host_id(id.trim());
            }
        }
    }
    match std::fs::read_to_string("/proc/sys/kernel/hostname") {
        Ok(name) if !name.trim().is_empty() => valid_host_id(name.trim()),
        _ => Err(Error::config(
            "upgrade.host_id",
            "no machine id (/etc/machine-id) or host name to identify this host: set upgrade.host_id",
        )),
    }
}

fn valid_host_id(id: &str) -> Result<String, Error> {
    let fine = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !id.starts_with('.');
    if fine {
        Ok(id.to_string())
    } else {
        Err(Error::config(
            "upgrade.host_id",
            format!("{id:?}: use 1 to 128 letters, digits, `-`, `_` or `.`, not starting with `.`"),
        ))
    }
}
