//! The new code's side of a master upgrade: the state the previous master of this PID passed
//! (format in [`crate::master_state`]), with the descriptors it names taken over.

use std::os::fd::{OwnedFd, RawFd};
use std::path::PathBuf;

use super::listeners::Inherited;
use super::spawn::Adopted;
use crate::error::{Error, Result};
use crate::handoff::UpgradeRecord;
use crate::master_state::{from_unix_ms, SavedState};
use crate::protocol::ENV_MASTER_STATE;

/// What the previous master passed that the service layer takes (the control socket, the
/// pipeline's last attempt).
#[derive(Debug, Default)]
pub(crate) struct Carried {
    pub(crate) control: Option<(OwnedFd, PathBuf)>,
    pub(crate) last_upgrade: Option<UpgradeRecord>,
    pub(crate) fetcher_memory: Option<String>,
}

/// The state a previous master of this PID passed, with the descriptors it names taken over.
pub(crate) struct Taken {
    pub(crate) state: SavedState,
    pub(crate) listeners: Vec<Inherited>,
    pub(crate) worker: Option<Adopted>,
    pub(crate) carried: Carried,
}

/// Reads `HANDOVER_MASTER_STATE` (and unsets it): `None` for a master started afresh.
pub(crate) fn take_inherited() -> Result<Option<Taken>> {
    let Some(value) = std::env::var_os(ENV_MASTER_STATE) else {
        return Ok(None);
    };
    std::env::remove_var(ENV_MASTER_STATE);
    let fail =
        |what: String| Error::Master(format!("taking over from the previous master: {what}"));
    let fd: RawFd = value
        .to_str()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| fail(format!("{ENV_MASTER_STATE}={value:?} is not a descriptor")))?;
    let memfd = crate::sys::adopt_inherited_fd(fd).map_err(|e| fail(e.to_string()))?;
    let bytes = read_all(memfd).map_err(|e| fail(format!("reading the state: {e}")))?;
    let state = SavedState::parse(&bytes).map_err(fail)?;
    let adopt = |fd: i32, what: &str| {
        crate::sys::adopt_inherited_fd(fd).map_err(|e| fail(format!("{what}: {e}")))
    };
    let mut listeners = Vec::new();
    for l in &state.listeners {
        listeners.push(Inherited {
            name: l.name.clone(),
            fd: adopt(l.fd, &format!("listener {:?}", l.name))?,
            unix_file: l.unix_file.clone(),
            activated: l.activated,
        });
    }
    let control = match &state.control_socket {
        Some(c) => Some((adopt(c.fd, "the control socket")?, c.path.clone())),
        None => None,
    };
    let worker = match &state.worker {
        Some(w) => Some(Adopted {
            id: w.id,
            pid: w.pid,
            sha256: w.sha256.clone(),
            started_at: from_unix_ms(w.started_at_ms),
            control: match w.control_fd {
                Some(fd) => Some(adopt(fd, "the worker's control channel")?),
                None => None,
            },
            pin: w.pin.clone(),
        }),
        None => None,
    };
    let last_upgrade = state.last_upgrade.as_ref().map(|r| UpgradeRecord {
        at: from_unix_ms(r.at_ms),
        origin: r.origin.clone(),
        sha256: r.sha256.clone(),
        outcome: r.outcome.clone(),
    });
    let fetcher_memory = state.fetcher_memory.clone();
    Ok(Some(Taken {
        state,
        listeners,
        worker,
        carried: Carried {
            control,
            last_upgrade,
            fetcher_memory,
        },
    }))
}

fn read_all(fd: OwnedFd) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek};
    let mut file = std::fs::File::from(fd);
    file.rewind()?;
    let mut bytes = Vec::new();
    file.take(16 * 1024 * 1024).read_to_end(&mut bytes)?;
    Ok(bytes)
}
