//! What a master hands to the code it re-executes into: the state format.
//!
//! Before `execve` of the new binary (same PID, same children), the master writes this JSON
//! document into a sealed `memfd`, clears close-on-exec on that descriptor, the listeners, the
//! control socket and each worker's control channel (only for that one exec), and names the
//! memfd in `HANDOVER_MASTER_STATE`. The new master reads it once, takes every descriptor it
//! names, and carries on with the same workers.
//!
//! Format 1 (every field is required unless marked optional; unknown fields are ignored):
//!
//! | field | meaning |
//! |---|---|
//! | `format` | `1` |
//! | `master_version` | optional: the version of the master that wrote it |
//! | `master_sha256` | SHA-256 of that master's executable |
//! | `exec_sha256` | optional: SHA-256 of the file it exec'd (checked just before), so the new code need not hash itself |
//! | `exec_started_us` | `CLOCK_MONOTONIC` in µs just before the exec (to time it) |
//! | `started_at_ms` | when the first master of this PID started (Unix ms) |
//! | `next_id` | the next worker id |
//! | `counters` | `[hand-overs, failed hand-overs, crashes]` |
//! | `master_upgrades` | how many times this PID re-executed itself before |
//! | `listeners` | `[{name, fd, unix_file: optional [path, inode], activated}]`, in fd order (`activated`: passed by systemd) |
//! | `control_socket` | optional `{path, fd}`: the bound control socket |
//! | `worker` | optional `{id, pid, sha256, control_fd: optional, started_at_ms, exclusive, pin: optional}`: the serving worker, a child of this PID |
//! | `runtime_dir` | optional: the runtime directory a `handover run` master made (removed by the new one) |
//! | `last_upgrade` | optional `{at_ms, origin, sha256, outcome}`: the pipeline's last attempt |
//! | `fetcher_memory` | optional: what the fetcher learned (`Fetcher::memory`), given back to the new one |
//!
//! A master re-executes only when one worker serves and none starts or drains, so the state
//! holds at most one worker. The upgrade pipeline's lasting state is in its state file already.
//!
//! Before an upgrade re-executes the master, the candidate's sanity run gets a sample of this
//! document in `HANDOVER_MASTER_STATE_SAMPLE` and must answer `master-state=1`: a build that
//! reads another format is installed for workers only.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::protocol::MASTER_STATE_FORMAT;

/// The state, as written and read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SavedState {
    pub(crate) format: u32,
    #[serde(default)]
    pub(crate) master_version: Option<String>,
    pub(crate) master_sha256: String,
    #[serde(default)]
    pub(crate) exec_sha256: Option<String>,
    pub(crate) exec_started_us: u64,
    pub(crate) started_at_ms: u64,
    pub(crate) next_id: u64,
    pub(crate) counters: [u64; 3],
    pub(crate) master_upgrades: u64,
    pub(crate) listeners: Vec<SavedListener>,
    #[serde(default)]
    pub(crate) control_socket: Option<SavedSocket>,
    #[serde(default)]
    pub(crate) worker: Option<SavedWorker>,
    #[serde(default)]
    pub(crate) runtime_dir: Option<PathBuf>,
    #[serde(default)]
    pub(crate) last_upgrade: Option<SavedRecord>,
    #[serde(default)]
    pub(crate) fetcher_memory: Option<String>,
}

/// A listening socket, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SavedListener {
    pub(crate) name: String,
    pub(crate) fd: i32,
    #[serde(default)]
    pub(crate) unix_file: Option<(PathBuf, u64)>,
    #[serde(default)]
    pub(crate) activated: bool,
}

/// The control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SavedSocket {
    pub(crate) path: PathBuf,
    pub(crate) fd: i32,
}

/// The serving worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SavedWorker {
    pub(crate) id: u64,
    pub(crate) pid: u32,
    pub(crate) sha256: String,
    #[serde(default)]
    pub(crate) control_fd: Option<i32>,
    pub(crate) started_at_ms: u64,
    pub(crate) exclusive: bool,
    #[serde(default)]
    pub(crate) pin: Option<PathBuf>,
}

/// The pipeline's last attempt, for `handover status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SavedRecord {
    pub(crate) at_ms: u64,
    pub(crate) origin: String,
    pub(crate) sha256: String,
    pub(crate) outcome: String,
}

impl SavedState {
    /// The document as bytes.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("plain data serializes")
    }

    /// Reads a document of this build's format.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, String> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        let format = value.get("format").and_then(serde_json::Value::as_u64);
        if format != Some(u64::from(MASTER_STATE_FORMAT)) {
            return Err(format!(
                "state format {}, this build reads {MASTER_STATE_FORMAT}",
                format.map_or_else(|| "missing".to_string(), |f| f.to_string())
            ));
        }
        serde_json::from_value(value).map_err(|e| format!("malformed state: {e}"))
    }

    /// A sample with every field set, for a candidate's sanity run to parse.
    pub(crate) fn sample() -> Self {
        Self {
            format: MASTER_STATE_FORMAT,
            master_version: Some("1.0.0".into()),
            master_sha256: "0".repeat(64),
            exec_sha256: Some("0".repeat(64)),
            exec_started_us: 1,
            started_at_ms: 1,
            next_id: 3,
            counters: [1, 0, 0],
            master_upgrades: 0,
            listeners: vec![SavedListener {
                name: "http".into(),
                fd: 3,
                unix_file: Some(("/run/app.sock".into(), 7)),
                activated: false,
            }],
            control_socket: Some(SavedSocket {
                path: "/run/app.control".into(),
                fd: 4,
            }),
            worker: Some(SavedWorker {
                id: 2,
                pid: 2,
                sha256: "0".repeat(64),
                control_fd: Some(5),
                started_at_ms: 1,
                exclusive: true,
                pin: Some("/srv/.app.handover-gen-2".into()),
            }),
            runtime_dir: Some("/run/user/0/handover-x".into()),
            last_upgrade: Some(SavedRecord {
                at_ms: 1,
                origin: "/srv/app.next".into(),
                sha256: "0".repeat(64),
                outcome: "installed".into(),
            }),
            fetcher_memory: Some("\"etag\"\n-\n-".into()),
        }
    }

    /// The sanity run's answer to a sample: `Some(format)` when it parses.
    pub(crate) fn answer(sample: &str) -> Option<u32> {
        Self::parse(sample.as_bytes()).ok().map(|s| s.format)
    }
}

/// Unix milliseconds of `t`.
pub(crate) fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// `t` from Unix milliseconds.
pub(crate) fn from_unix_ms(ms: u64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_round_trips_and_other_formats_are_refused() {
        let sample = SavedState::sample();
        let bytes = sample.to_bytes();
        assert_eq!(SavedState::parse(&bytes).unwrap(), sample);
        assert_eq!(
            SavedState::answer(std::str::from_utf8(&bytes).unwrap()),
            Some(1)
        );
        let mut value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        value["format"] = 2.into();
        let err = SavedState::parse(value.to_string().as_bytes()).unwrap_err();
        assert!(err.contains("state format 2, this build reads 1"), "{err}");
        value["format"] = 1.into();
        value.as_object_mut().unwrap().remove("listeners");
        let err = SavedState::parse(value.to_string().as_bytes()).unwrap_err();
        assert!(err.contains("listeners"), "{err}");
        assert!(SavedState::parse(b"{").is_err());
        assert_eq!(SavedState::answer("{}"), None);
    }
}
