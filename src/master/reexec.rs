//! The master upgrades itself in place: `execve` of its binary on disk, same PID, same parent,
//! same children, with the listeners, the control socket and the serving worker's control
//! channel kept open across that one exec and the rest of its state in a sealed memfd (the
//! format is [`crate::master_state`]).
//!
//! It happens when nothing is handing over (one worker serves, none starts or drains):
//! after an upgrade of the master's own binary passed probation (the pipeline asks, and the
//! candidate read a sample of the state in its sanity run), on `handover reexec`, or on SIGUSR1.
//! A request made while a hand-over runs waits for it to end. A failed `execve` leaves this
//! master running as if nothing had happened.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::oneshot;

use super::listeners::Inherited;
use super::spawn::Adopted;
use super::{Master, Phase};
use crate::digest::short;
use crate::error::{Error, Result};
use crate::handoff::UpgradeRecord;
use crate::master_state::{
    from_unix_ms, unix_ms, SavedListener, SavedRecord, SavedSocket, SavedState, SavedWorker,
};
use crate::protocol::{ENV_MASTER_STATE, MASTER_STATE_FORMAT};

/// Who this master is, and how it re-executes itself.
#[derive(Debug)]
pub(crate) struct Own {
    /// What is exec'd: the live binary (library mode) or the `handover` executable.
    pub(crate) exec_path: PathBuf,
    /// This process's arguments, `argv[0]` included.
    pub(crate) argv: Vec<OsString>,
    /// SHA-256 of the code this master runs.
    pub(crate) sha256: String,
    pub(crate) version: Option<String>,
    /// How many times this PID re-executed itself.
    pub(crate) upgrades: u64,
    /// How long the last exec and adoption took.
    pub(crate) exec_took: Option<Duration>,
}

/// A re-exec asked for.
#[derive(Debug)]
pub(crate) struct Request {
    /// The pipeline's request: the binary that passed probation (checked in its sanity run).
    /// `None`: a manual request, which runs the binary in check mode first.
    pub(crate) sha256: Option<String>,
    pub(crate) version: Option<String>,
    pub(crate) reply: Option<oneshot::Sender<std::result::Result<String, String>>>,
    /// SHA-256 of the file about to be exec'd, once checked.
    pub(crate) exec_sha256: Option<String>,
}

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

/// The CLOCK_MONOTONIC time in µs (the same clock in the old and the new code).
pub(crate) fn monotonic_us() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000
}

impl Master {
    /// Asks for a re-exec; it runs once nothing is handing over.
    pub(super) fn request_reexec(&mut self, request: Request) {
        if self.stopping {
            if let Some(reply) = request.reply {
                let _ = reply.send(Err("the master is stopping".into()));
            }
            return;
        }
        if let Some(earlier) = self.reexec.replace(request) {
            if let Some(reply) = earlier.reply {
                let _ = reply.send(Err("superseded by a later request".into()));
            }
        }
        if self.phase() != Phase::Serving {
            tracing::info!(phase = %self.phase(), "master upgrade waits until the hand-over under way ends");
        }
    }

    /// Re-executes if one is asked for and nothing is handing over. Returns only if the
    /// master keeps running its code.
    pub(super) async fn maybe_reexec(&mut self) {
        if self.reexec.is_none() || self.phase() != Phase::Serving {
            return;
        }
        let mut request = self.reexec.take().expect("checked above");
        let reply = request.reply.take();
        let why = match self.prepare(&mut request).await {
            Ok(description) => {
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(description));
                    // Let the control socket's task write the answer before the exec.
                    for _ in 0..4 {
                        tokio::task::yield_now().await;
                    }
                }
                let error = self.exec(&request);
                format!("execve of {} failed: {error}", self.own.exec_path.display())
            }
            Err(why) => {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(why.clone()));
                }
                why
            }
        };
        tracing::error!("master upgrade failed; the master keeps running its code: {why}");
        self.upgrading_master = false;
        if let Some(manager) = &self.manager {
            manager.send_now(&format!("READY=1\nSTATUS=master upgrade failed: {why}"));
        }
    }

    /// Checks that the binary on disk may take over; says what the exec will do.
    async fn prepare(&mut self, request: &mut Request) -> std::result::Result<String, String> {
        let path = self.own.exec_path.clone();
        let on_disk = self
            .hash_cache
            .hex(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        match &request.sha256 {
            Some(expected) if *expected != on_disk => {
                return Err(format!(
                    "{} is sha256 {}, not the upgrade that passed probation ({})",
                    path.display(),
                    short(&on_disk),
                    short(expected)
                ))
            }
            Some(_) => {}
            None => {
                let reply =
                    crate::upgrade::check_candidate(&path, self.config.upgrade.check_timeout)
                        .await
                        .map_err(|refusal| format!("{}: {refusal}", path.display()))?;
                if reply.master_state != Some(MASTER_STATE_FORMAT) {
                    return Err(format!(
                        "{} does not read master state format {MASTER_STATE_FORMAT} (it answered {})",
                        path.display(),
                        reply
                            .master_state
                            .map_or_else(|| "none".to_string(), |f| f.to_string())
                    ));
                }
            }
        }
        request.exec_sha256 = Some(on_disk.clone());
        let to = request
            .version
            .clone()
            .map(|v| format!("version {v} (sha256 {})", short(&on_disk)))
            .unwrap_or_else(|| format!("sha256 {}", short(&on_disk)));
        Ok(format!(
            "master {} re-executes {}: {} -> {to}",
            std::process::id(),
            path.display(),
            self.describe_own()
        ))
    }

    fn describe_own(&self) -> String {
        match &self.own.version {
            Some(v) => format!("version {v} (sha256 {})", short(&self.own.sha256)),
            None => format!("sha256 {}", short(&self.own.sha256)),
        }
    }

    /// The state the new code takes over, and the descriptors it names.
    fn save(&self, request: &Request) -> (SavedState, Vec<RawFd>) {
        let mut keep = Vec::new();
        let listeners = self
            .listeners
            .iter()
            .map(|l| {
                keep.push(l.raw_fd());
                SavedListener {
                    name: l.name.clone(),
                    fd: l.raw_fd(),
                    unix_file: l.unix_file.clone(),
                    activated: l.activated,
                }
            })
            .collect();
        let control_socket = self.control_fd.as_ref().map(|(fd, path)| {
            keep.push(*fd);
            SavedSocket {
                path: path.clone(),
                fd: *fd,
            }
        });
        let worker = self.current.as_ref().map(|w| {
            let control_fd = w.control_fd();
            keep.extend(control_fd);
            SavedWorker {
                id: w.id,
                pid: w.pid,
                sha256: w.sha256.clone(),
                control_fd,
                started_at_ms: unix_ms(w.started_at),
                exclusive: self.exclusive_holder == Some(w.id),
                pin: w.pin.clone(),
            }
        });
        let state = SavedState {
            format: MASTER_STATE_FORMAT,
            master_version: self.own.version.clone(),
            master_sha256: self.own.sha256.clone(),
            exec_sha256: request.exec_sha256.clone(),
            exec_started_us: monotonic_us(),
            started_at_ms: unix_ms(self.started_at),
            next_id: self.next_id,
            counters: [self.counters.0, self.counters.1, self.counters.2],
            master_upgrades: self.own.upgrades,
            listeners,
            control_socket,
            worker,
            runtime_dir: match &self.protocol {
                super::Protocol::Program(p) => p.runtime_dir.made_here(),
                super::Protocol::Library => None,
            },
            last_upgrade: self.upgrade.last.as_ref().map(|r| SavedRecord {
                at_ms: unix_ms(r.at),
                origin: r.origin.clone(),
                sha256: r.sha256.clone(),
                outcome: r.outcome.clone(),
            }),
            fetcher_memory: self.fetcher_memory.clone(),
        };
        (state, keep)
    }

    /// `execve` with the state; returns only on failure.
    fn exec(&mut self, request: &Request) -> std::io::Error {
        self.upgrading_master = true;
        self.publish();
        let (state, mut keep) = self.save(request);
        let memfd = match crate::sys::sealed_memfd("handover-master-state", &state.to_bytes()) {
            Ok(fd) => fd,
            Err(e) => return e,
        };
        keep.push(memfd.as_raw_fd());
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(k, _)| k != ENV_MASTER_STATE && k != "NOTIFY_SOCKET")
            .collect();
        env.push((
            ENV_MASTER_STATE.into(),
            memfd.as_raw_fd().to_string().into(),
        ));
        if let Some(socket) = super::notify::original_socket() {
            env.push(("NOTIFY_SOCKET".into(), socket));
        }
        if let Some(manager) = &self.manager {
            manager.send_now(&format!(
                "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=master upgrade",
                monotonic_us()
            ));
        }
        tracing::info!(
            from = %self.describe_own(),
            to = ?request.version,
            binary = %self.own.exec_path.display(),
            "master re-executing"
        );
        crate::sys::exec_keeping(&self.own.exec_path, &self.own.argv, &env, &keep)
    }

    /// In a master that re-executed: takes over what the previous code passed.
    pub(super) fn carry_on(&mut self, taken: Taken) -> Result<()> {
        let Taken { state, worker, .. } = taken;
        self.next_id = state.next_id.max(self.next_id);
        self.counters = (state.counters[0], state.counters[1], state.counters[2]);
        self.started_at = from_unix_ms(state.started_at_ms);
        self.own.upgrades = state.master_upgrades + 1;
        if let Some(sha256) = &state.exec_sha256 {
            self.own.sha256 = sha256.clone();
        }
        if let Some(dir) = &state.runtime_dir {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                tracing::debug!(path = %dir.display(), error = %e, "previous runtime directory");
            }
        }
        if let Some(adopted) = worker {
            let exclusive = state.worker.as_ref().is_some_and(|w| w.exclusive);
            let worker =
                super::spawn::adopt_worker(adopted, self.config.drain_timeout, &self.events_tx)
                    .map_err(|e| Error::io("adopting the serving worker", e))?;
            tracing::info!(
                worker = worker.id,
                pid = worker.pid,
                "serving worker adopted"
            );
            if exclusive {
                self.exclusive_holder = Some(worker.id);
            }
            self.pin = worker.pin.clone();
            self.ever_ready = true;
            self.current = Some(worker);
        }
        let took = Duration::from_micros(monotonic_us().saturating_sub(state.exec_started_us));
        self.own.exec_took = Some(took);
        let from = match &state.master_version {
            Some(v) => format!("version {v} (sha256 {})", short(&state.master_sha256)),
            None => format!("sha256 {}", short(&state.master_sha256)),
        };
        tracing::info!(
            %from,
            to = %self.describe_own(),
            ?took,
            upgrades = self.own.upgrades,
            "master upgraded in place: {from} -> {} in {took:?}",
            self.describe_own()
        );
        Ok(())
    }
}

/// SHA-256 of the code this process runs. In library mode that is usually the live binary
/// (same inode), whose digest the worker start needs anyway.
pub(crate) fn own_sha256(binary: &std::path::Path, cache: &mut crate::digest::HashCache) -> String {
    use std::os::unix::fs::MetadataExt;
    let exe = std::path::Path::new("/proc/self/exe");
    let same = match (std::fs::metadata(exe), std::fs::metadata(binary)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    let digest = if same {
        cache.hex(binary)
    } else {
        crate::digest::sha256_file(exe).map(hex::encode)
    };
    digest.unwrap_or_else(|_| "unknown".into())
}
