//! What the master put in a worker's environment and at its inherited descriptors.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::protocol;

/// What the master put in the environment and at the inherited descriptors.
pub(super) struct WorkerEnv {
    pub(super) id: u64,
    pub(super) binary: PathBuf,
    pub(super) sha256: String,
    pub(super) idle_grace: Duration,
    pub(super) names: Vec<String>,
    pub(super) drain_timeouts: Vec<Option<Duration>>,
    pub(super) stop_drain_timeout: Option<Duration>,
    pub(super) fds: Vec<OwnedFd>,
    pub(super) control: std::os::unix::net::UnixStream,
    pub(super) spawned_us: Option<u64>,
}

impl WorkerEnv {
    pub(super) fn read() -> Result<Self> {
        let var = |name: &str| {
            std::env::var(name).map_err(|_| Error::WorkerEnvironment(format!("{name} is not set")))
        };
        let number = |name: &str| -> Result<u64> {
            var(name)?
                .parse()
                .map_err(|_| Error::WorkerEnvironment(format!("{name} is not a number")))
        };
        let count = number(protocol::ENV_FDS)? as usize;
        let control_fd = number(protocol::ENV_CONTROL_FD)? as i32;
        let names_var = std::env::var(protocol::ENV_FD_NAMES).unwrap_or_default();
        let mut names: Vec<String> = names_var
            .split(':')
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect();
        names.resize_with(count, String::new);
        let mut seen = HashMap::new();
        for (i, name) in names.iter_mut().enumerate() {
            if name.is_empty() || seen.insert(name.clone(), i).is_some() {
                *name = format!("fd{}", protocol::FIRST_FD as usize + i);
            }
        }
        let adopt = |fd: i32| {
            crate::sys::adopt_inherited_fd(fd)
                .map_err(|e| Error::WorkerEnvironment(format!("descriptor {fd}: {e}")))
        };
        let fds = (0..count as i32)
            .map(|i| adopt(protocol::FIRST_FD + i))
            .collect::<Result<Vec<_>>>()?;
        let control = std::os::unix::net::UnixStream::from(adopt(control_fd)?);
        let millis = |text: &str| text.parse().ok().map(Duration::from_millis);
        let mut drain_timeouts: Vec<Option<Duration>> =
            std::env::var(protocol::ENV_DRAIN_TIMEOUTS_MS)
                .unwrap_or_default()
                .split(':')
                .filter(|t| !t.is_empty())
                .map(millis)
                .collect();
        drain_timeouts.resize(count, None);
        let env = WorkerEnv {
            id: number(protocol::ENV_WORKER_ID)?,
            binary: PathBuf::from(var(protocol::ENV_BINARY)?),
            sha256: var(protocol::ENV_BINARY_SHA256)?,
            idle_grace: Duration::from_millis(number(protocol::ENV_IDLE_GRACE_MS).unwrap_or(1000)),
            names,
            drain_timeouts,
            stop_drain_timeout: std::env::var(protocol::ENV_STOP_DRAIN_TIMEOUT_MS)
                .ok()
                .and_then(|t| millis(&t)),
            fds,
            control,
            spawned_us: number(protocol::ENV_SPAWNED_AT_US).ok(),
        };
        // Children the program starts must not believe they are workers too.
        for name in protocol::ALL_ENV {
            std::env::remove_var(name);
        }
        Ok(env)
    }
}
