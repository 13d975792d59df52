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
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::oneshot;

pub(crate) use super::inherit::{take_inherited, Carried, Taken};
use super::{Master, Phase};
use crate::digest::short;
use crate::error::{Error, Result};
use crate::master_state::{
    from_unix_ms, unix_ms, SavedListener, SavedRecord, SavedSocket, SavedState, SavedWorker,
};
use crate::protocol::{monotonic_us, ENV_MASTER_STATE, MASTER_STATE_FORMAT};

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
    /// A manual request's check-mode run: under way, or passed by the file with this SHA-256.
    pub(crate) checking: bool,
    pub(crate) checked: Option<String>,
}

impl Request {
    /// A request by hand (`handover reexec`, SIGUSR1), answered on `reply` when there is one.
    pub(crate) fn manual(
        reply: Option<oneshot::Sender<std::result::Result<String, String>>>,
    ) -> Self {
        Self {
            sha256: None,
            version: None,
            reply,
            exec_sha256: None,
            checking: false,
            checked: None,
        }
    }

    /// The pipeline's request, after the binary with `sha256` passed probation.
    pub(crate) fn upgrade(sha256: String, version: Option<String>) -> Self {
        Self {
            sha256: Some(sha256),
            version,
            reply: None,
            exec_sha256: None,
            checking: false,
            checked: None,
        }
    }
}

/// Where a re-exec stands once nothing hands over.
enum Prepared {
    /// Go: what the exec will do.
    Ready(String),
    /// The check-mode run of the binary is under way (in a task, not blocking the loop).
    Checking,
    /// Refused: why.
    Refused(String),
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
        let why = match self.prepare(&mut request) {
            Prepared::Checking => {
                self.reexec = Some(request);
                return;
            }
            Prepared::Ready(description) => {
                if let Some(reply) = request.reply.take() {
                    let _ = reply.send(Ok(description));
                    // Let the control socket's task write the answer before the exec.
                    for _ in 0..4 {
                        tokio::task::yield_now().await;
                    }
                }
                let error = self.exec(&request);
                format!("execve of {} failed: {error}", self.own.exec_path.display())
            }
            Prepared::Refused(why) => {
                if let Some(reply) = request.reply.take() {
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

    /// The check-mode run of a manual request ended: `sha256` is the file it ran.
    pub(super) fn reexec_checked(
        &mut self,
        sha256: String,
        result: std::result::Result<(), String>,
    ) {
        let Some(request) = self.reexec.as_mut() else {
            return;
        };
        request.checking = false;
        match result {
            Ok(()) => request.checked = Some(sha256),
            Err(why) => {
                let mut request = self.reexec.take().expect("checked above");
                tracing::error!("master upgrade refused; the master keeps running its code: {why}");
                if let Some(reply) = request.reply.take() {
                    let _ = reply.send(Err(why));
                }
            }
        }
    }

    /// Checks that the binary on disk may take over; says what the exec will do. A manual
    /// request runs the binary in check mode first, in a task that reports back as an event.
    fn prepare(&mut self, request: &mut Request) -> Prepared {
        let path = self.own.exec_path.clone();
        let on_disk = match self.hash_cache.hex(&path) {
            Ok(sha256) => sha256,
            Err(e) => return Prepared::Refused(format!("cannot read {}: {e}", path.display())),
        };
        match &request.sha256 {
            Some(expected) if *expected != on_disk => {
                return Prepared::Refused(format!(
                    "{} is sha256 {}, not the upgrade that passed probation ({})",
                    path.display(),
                    short(&on_disk),
                    short(expected)
                ))
            }
            Some(_) => {}
            // Checked, and still the same file.
            None if request.checked.as_deref() == Some(on_disk.as_str()) => {}
            None => {
                if !request.checking {
                    request.checking = true;
                    let (events, timeout) =
                        (self.events_tx.clone(), self.config.upgrade.check_timeout);
                    tokio::spawn(async move {
                        let result = match crate::upgrade::check_candidate(&path, timeout).await {
                            Err(refusal) => Err(format!("{}: {refusal}", path.display())),
                            Ok(reply) if reply.master_state == Some(MASTER_STATE_FORMAT) => Ok(()),
                            Ok(reply) => Err(format!(
                                "{} does not read master state format {MASTER_STATE_FORMAT} (it answered {})",
                                path.display(),
                                reply
                                    .master_state
                                    .map_or_else(|| "none".to_string(), |f| f.to_string())
                            )),
                        };
                        let _ = events.send(super::Event::ReexecChecked {
                            sha256: on_disk,
                            result,
                        });
                    });
                }
                return Prepared::Checking;
            }
        }
        request.exec_sha256 = Some(on_disk.clone());
        let to = request
            .version
            .clone()
            .map(|v| format!("version {v} (sha256 {})", short(&on_disk)))
            .unwrap_or_else(|| format!("sha256 {}", short(&on_disk)));
        Prepared::Ready(format!(
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

/// SHA-256 of the code this process runs, when it is the live binary (same inode: library
/// mode), whose digest the worker start needs anyway. `None`: another file (the `handover`
/// executable), hashed off the start-up path by [`Master::hash_own_code`].
pub(crate) fn own_sha256(
    binary: &std::path::Path,
    cache: &mut crate::digest::HashCache,
) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let exe = std::path::Path::new("/proc/self/exe");
    let same = match (std::fs::metadata(exe), std::fs::metadata(binary)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    same.then(|| cache.hex(binary).unwrap_or_else(|_| "unknown".into()))
}

impl Master {
    /// Hashes this process's executable in a blocking task; the digest arrives as an event.
    pub(super) fn hash_own_code(&self) {
        let events = self.events_tx.clone();
        tokio::task::spawn_blocking(move || {
            let digest = crate::digest::sha256_file(std::path::Path::new("/proc/self/exe"))
                .map(hex::encode)
                .unwrap_or_else(|_| "unknown".into());
            let _ = events.send(super::Event::OwnSha256(digest));
        });
    }
}
