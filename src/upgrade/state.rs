//! The pipeline's memory across master restarts: quarantined hashes, the highest version ever
//! installed (the floor), the upgrade in probation, and the newest signed release seen.
//!
//! One small JSON file, by default beside the live binary as `<bin>.handover-state` (or in
//! `upgrade.state_dir`), written atomically (a temporary file, fsync, rename, fsync of the
//! directory), so a SIGKILL at any moment leaves either the old or the new state. The format
//! is versioned:
//!
//! ```json
//! {
//!   "format": 1,
//!   "highest_installed": "1.4.2",
//!   "quarantine": [{"sha256": "3fa1…", "reason": "the new worker crashed …", "at": 1764583200}],
//!   "probation": {"sha256": "9b0c…", "previous_sha256": "3fa1…", "version": "1.4.2",
//!                 "origin": "/srv/app/app.next", "started": 1764583100},
//!   "newest_release": {"version": "1.4.2", "released": 1764583000}
//! }
//! ```
//!
//! A file that cannot be read, is not valid JSON or has another `format` is reported and
//! ignored, never fatal: the master serves, and the next change writes a good file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The version of the file format this code writes and reads.
pub(crate) const FORMAT: u32 = 1;

/// Everything the pipeline remembers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct State {
    #[serde(default)]
    pub(crate) highest_installed: Option<String>,
    #[serde(default)]
    pub(crate) quarantine: Vec<Quarantined>,
    #[serde(default)]
    pub(crate) probation: Option<Probation>,
    /// The most recently signed release seen (installed or not), for the staleness warning.
    #[serde(default)]
    pub(crate) newest_release: Option<SeenRelease>,
    /// The highest serial seen of a staged rollout's manifest, per release: a lower one is an
    /// old manifest replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rollout: Option<SeenRollout>,
}

/// The newest rollout manifest seen for a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SeenRollout {
    pub(crate) sha256: String,
    pub(crate) serial: u64,
}

/// A validly signed release, as its metadata said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SeenRelease {
    pub(crate) version: String,
    /// When it was signed, in seconds since the epoch.
    pub(crate) released: u64,
}

/// A hash that failed when run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Quarantined {
    pub(crate) sha256: String,
    pub(crate) reason: String,
    /// Seconds since the epoch.
    pub(crate) at: u64,
}

/// The upgrade in probation when the state was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Probation {
    pub(crate) sha256: String,
    pub(crate) previous_sha256: Option<String>,
    pub(crate) version: Option<String>,
    pub(crate) origin: String,
    /// Seconds since the epoch.
    pub(crate) started: u64,
}

#[derive(Serialize, Deserialize)]
struct OnDisk {
    format: u32,
    #[serde(flatten)]
    state: State,
}

impl State {
    pub(crate) fn quarantined(&self, sha256: &str) -> Option<&Quarantined> {
        self.quarantine.iter().find(|q| q.sha256 == sha256)
    }

    pub(crate) fn quarantine(&mut self, sha256: &str, reason: &str) {
        if self.quarantined(sha256).is_none() {
            self.quarantine.push(Quarantined {
                sha256: sha256.to_string(),
                reason: reason.to_string(),
                at: unix_now(),
            });
        }
    }

    /// Releases the hashes starting with `prefix` (`all`: every one); returns them.
    pub(crate) fn forget(&mut self, prefix: &str) -> Vec<String> {
        let prefix = prefix.trim().to_ascii_lowercase();
        let (gone, kept) = std::mem::take(&mut self.quarantine)
            .into_iter()
            .partition(|q: &Quarantined| prefix == "all" || q.sha256.starts_with(&prefix));
        self.quarantine = kept;
        gone.into_iter().map(|q| q.sha256).collect()
    }
}

/// Where the state lives.
#[derive(Debug, Clone)]
pub(crate) struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// `<dir>/<bin>.handover-state`, `dir` being `state_dir` or the live binary's directory.
    pub(crate) fn new(live: &Path, state_dir: Option<&Path>) -> Self {
        let mut name = live.file_name().unwrap_or_default().to_os_string();
        name.push(".handover-state");
        let path = match state_dir {
            Some(dir) => dir.join(name),
            None => live.with_file_name(name),
        };
        Self { path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The state on disk; an empty one when there is none or it cannot be used (reported).
    pub(crate) fn load(&self) -> State {
        let text = match std::fs::read(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return State::default(),
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "cannot read the upgrade state file; starting without it");
                return State::default();
            }
        };
        match serde_json::from_slice::<serde_json::Value>(&text) {
            Ok(value) => match value.get("format").and_then(|f| f.as_u64()) {
                Some(f) if f == u64::from(FORMAT) => {
                    match serde_json::from_value::<OnDisk>(value) {
                        Ok(on_disk) => on_disk.state,
                        Err(e) => {
                            tracing::error!(path = %self.path.display(), error = %e, "upgrade state file is malformed; ignoring it");
                            State::default()
                        }
                    }
                }
                other => {
                    tracing::error!(path = %self.path.display(), format = ?other, supported = FORMAT, "upgrade state file has an unknown format; ignoring it");
                    State::default()
                }
            },
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "upgrade state file is not valid JSON; ignoring it");
                State::default()
            }
        }
    }

    /// Writes `state` atomically.
    pub(crate) fn save(&self, state: &State) -> std::io::Result<()> {
        let on_disk = OnDisk {
            format: FORMAT,
            state: state.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&on_disk).map_err(std::io::Error::other)?;
        let mut tmp_name = self.path.file_name().unwrap_or_default().to_os_string();
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = self.path.with_file_name(tmp_name);
        let result = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            file.write_all(&bytes)?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            super::swap::sync_dir(&self.path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

pub(crate) fn from_unix(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> State {
        let mut state = State {
            highest_installed: Some("1.4.2".into()),
            ..State::default()
        };
        state.quarantine("ab".repeat(32).as_str(), "crashed");
        state.probation = Some(Probation {
            sha256: "cd".repeat(32),
            previous_sha256: Some("ef".repeat(32)),
            version: Some("1.4.2".into()),
            origin: "/srv/app.next".into(),
            started: 1,
        });
        state.newest_release = Some(SeenRelease {
            version: "1.4.2".into(),
            released: 1_764_583_000,
        });
        state
    }

    #[test]
    fn round_trips_and_lives_beside_the_binary_or_in_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(&dir.path().join("app"), None);
        assert_eq!(file.path(), dir.path().join("app.handover-state"));
        assert_eq!(file.load(), State::default());
        file.save(&sample()).unwrap();
        assert_eq!(file.load(), sample());
        let elsewhere = StateFile::new(Path::new("/srv/app"), Some(dir.path()));
        assert_eq!(elsewhere.path(), dir.path().join("app.handover-state"));
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert!(text.contains("\"format\": 1"), "{text}");
    }

    #[test]
    fn corrupt_or_unknown_files_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(&dir.path().join("app"), None);
        for bad in [
            &b"{not json"[..],
            br#"{"format": 99, "highest_installed": "9.9.9"}"#,
            br#"{"format": 1, "quarantine": "no"}"#,
            b"",
        ] {
            std::fs::write(file.path(), bad).unwrap();
            assert_eq!(
                file.load(),
                State::default(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn forget_releases_by_prefix_or_all() {
        let mut state = sample();
        state.quarantine(&"12".repeat(32), "sanity");
        assert_eq!(state.forget("abab"), vec!["ab".repeat(32)]);
        assert_eq!(state.quarantine.len(), 1);
        assert_eq!(state.forget("all").len(), 1);
        assert!(state.quarantine.is_empty());
    }
}
