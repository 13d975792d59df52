//! Workers through their lives: start, readiness, hand-over, drain, crash and back-off, stop.
//! Every worker that becomes ready, fails to, or crashes is reported to the upgrade pipeline
//! with the hash of the binary it runs.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::spawn::{self, Launch};
use super::{Event, Master, Pending, Protocol, Reason};
use crate::digest::short;
use crate::error::Error;
use crate::handoff::{HandoverOutcome, HandoverTimes, WorkerReport};
use crate::protocol::Message;

impl Master {
    pub(super) fn report(&self, report: WorkerReport) {
        if let Some(reports) = &self.reports {
            let _ = reports.send(report);
        }
    }

    pub(super) async fn request_handover(&mut self, reason: Reason) {
        if self.stopping {
            tracing::info!("hand-over ignored: the master is stopping");
        } else if self.pending.is_some() {
            tracing::info!("hand-over already under way; one more will follow it");
            self.again = true;
        } else if self.draining_is_full() {
            self.again = true;
            self.wait_for_drain();
        } else {
            if self.current.is_none() {
                // A manual request while recovering starts at once instead of after the back-off.
                self.respawn_scheduled = false;
                self.respawn_generation += 1;
            }
            self.start_worker(reason).await;
        }
    }

    /// The pipeline swapped a binary in (or put one back): hand over to it, and answer.
    pub(super) async fn hand_over_for_pipeline(
        &mut self,
        sha256: String,
        reply: oneshot::Sender<HandoverOutcome>,
    ) {
        if self.stopping {
            let _ = reply.send(HandoverOutcome::Stopping);
            return;
        }
        tracing::info!(sha256 = %short(&sha256), "hand-over to a new binary requested by the upgrade pipeline");
        self.next_replies.push(reply);
        self.request_handover(Reason::Upgrade).await;
    }

    pub(super) async fn start_worker(&mut self, reason: Reason) {
        let started = Instant::now();
        let id = self.next_id;
        self.next_id += 1;
        // A recovery runs the generation that served (sozu #515: never a binary swapped in
        // meanwhile that nobody asked to run), unless that generation keeps crashing: then the
        // binary on disk, which a person or the pipeline may have fixed, gets its chance.
        let pinned = match reason {
            Reason::Recovery if self.crash_streak <= PINNED_CRASHES => {
                self.pin.clone().filter(|p| p.exists())
            }
            _ => None,
        };
        let source = pinned.clone().unwrap_or_else(|| self.binary.clone());
        if let Some(pin) = &pinned {
            tracing::info!(pin = %pin.display(), "recovery runs the generation that served");
        }
        let pin = make_pin(&self.binary, &source, id);
        let sha256 = self
            .hash_cache
            .hex(pin.as_deref().unwrap_or(&source))
            .unwrap_or_else(|e| {
                tracing::warn!(binary = %source.display(), error = %e, "cannot hash the binary");
                String::from("unknown")
            });
        let launch = Launch {
            source: pin
                .as_deref()
                .filter(|_| pinned.is_some())
                .unwrap_or(&source),
            binary: &self.binary,
            args: &self.args,
            listeners: &self.listeners,
            protocol: &self.protocol,
            idle_grace_ms: self.config.idle_grace.as_millis(),
            parent_death_signal: crate::signals::signal_number(&self.config.parent_death_signal)
                .unwrap_or(libc::SIGTERM),
            listener_inodes: &self.listener_inodes,
            drain_timeout: self.config.worker_drain_timeout(false),
            drain_timeouts: &self.config.listener_drain_timeouts(),
            stop_drain_timeout: self.config.stop_drain_timeout,
        };
        match spawn::spawn_worker(id, sha256.clone(), &launch, &self.events_tx) {
            Ok(mut worker) => {
                worker.pin = pin;
                tracing::info!(worker = id, pid = worker.pid, reason = reason.as_str(), sha256 = %short(&sha256), "worker started");
                self.handover_started = Some(Instant::now());
                let events = self.events_tx.clone();
                let timeout = self.config.ready_timeout;
                tokio::spawn(async move {
                    tokio::time::sleep(timeout).await;
                    let _ = events.send(Event::ReadyTimeout { worker: id });
                });
                let replies = std::mem::take(&mut self.next_replies);
                self.pending = Some(Pending {
                    worker,
                    reason,
                    replies,
                    started,
                    spawned: Instant::now(),
                });
            }
            Err(source) => {
                remove_pin(pin.as_deref());
                let error = Error::Spawn {
                    binary: self.binary.clone(),
                    source,
                };
                tracing::error!(%error, "worker could not be started");
                self.counters.1 += u64::from(self.current.is_some());
                let why = format!("could not be started: {error}");
                for reply in std::mem::take(&mut self.next_replies) {
                    let _ = reply.send(HandoverOutcome::Failed(why.clone()));
                }
                self.report(WorkerReport::Failed { sha256, why });
                if self.current.is_none() {
                    self.schedule_respawn();
                }
            }
        }
    }

    pub(super) async fn on_control(&mut self, worker: u64, message: Message) {
        match message {
            Message::Ready => self.on_ready(worker).await,
            Message::Restart => {
                tracing::info!(worker, "hand-over requested by the worker");
                self.request_handover(Reason::Restart).await;
            }
            Message::Released => {
                if self.exclusive_holder == Some(worker) {
                    tracing::debug!(worker, "exclusive jobs released");
                    self.exclusive_holder = None;
                    self.grant_exclusive().await;
                }
            }
            Message::Open(open) => {
                let all = self.draining.iter_mut().chain(self.current.as_mut());
                if let Some(w) = all.into_iter().find(|w| w.id == worker) {
                    w.open = Some(open);
                }
            }
            Message::Drain | Message::Grant | Message::Stopping => {
                tracing::warn!(worker, ?message, "unexpected message from a worker")
            }
        }
    }

    /// The pending worker is ready: it becomes current and the old one drains.
    pub(super) async fn on_ready(&mut self, worker: u64) {
        let Some(pending) = self.pending.take_if(|p| p.worker.id == worker) else {
            return;
        };
        let ready_at = Instant::now();
        let Pending {
            worker: mut new,
            reason,
            replies,
            started,
            spawned,
        } = pending;
        let mut times = HandoverTimes {
            spawn: spawned.saturating_duration_since(started),
            ready: ready_at.saturating_duration_since(spawned),
            drain: Duration::ZERO,
        };
        self.report(WorkerReport::Ready {
            sha256: new.sha256.clone(),
        });
        new.ready = true;
        let took = self
            .handover_started
            .map(|t| t.elapsed())
            .unwrap_or_default();
        if let Some(mut old) = self.current.take() {
            tracing::info!(
                old = old.id,
                old_pid = old.pid,
                new = new.id,
                new_pid = new.pid,
                spawn = ?times.spawn,
                ?took,
                "hand-over complete; old worker drains"
            );
            self.counters.0 += 1;
            self.drain(&mut old).await;
            times.drain = ready_at.elapsed();
            self.draining.push(old);
        } else {
            tracing::info!(
                worker = new.id,
                pid = new.pid,
                reason = reason.as_str(),
                ?took,
                "worker ready; serving"
            );
        }
        for reply in replies {
            let _ = reply.send(HandoverOutcome::Ready(times));
        }
        self.ever_ready = true;
        // The new generation's binary is the one recoveries run from now on.
        if self.pin != new.pin {
            remove_pin(self.pin.as_deref());
            self.pin = new.pin.clone();
        }
        for old in &self.draining {
            if old.pin != self.pin {
                remove_pin(old.pin.as_deref());
            }
        }
        self.current = Some(new);
        if self.stopping {
            self.begin_stop().await;
            return;
        }
        self.grant_exclusive().await;
        self.after_handover().await;
    }

    pub(super) async fn grant_exclusive(&mut self) {
        if self.exclusive_holder.is_some() || self.stopping {
            return;
        }
        if let Some(current) = self.current.as_mut().filter(|c| c.ready && c.has_control()) {
            current.send(Message::Grant).await;
            self.exclusive_holder = Some(current.id);
        }
    }

    /// After a hand-over ends (either way): a queued upgrade or a coalesced request runs next.
    pub(super) async fn after_handover(&mut self) {
        if self.pending.is_some() || self.stopping {
            return;
        }
        if self.again && self.draining_is_full() {
            self.wait_for_drain();
            return;
        }
        if self.waiting_for_drain {
            self.waiting_for_drain = false;
            tracing::info!(
                draining = self.draining.len(),
                "an old generation exited; the waiting hand-over starts"
            );
        }
        if std::mem::take(&mut self.again) {
            self.start_worker(Reason::Restart).await;
        }
    }

    pub(super) async fn on_exit(&mut self, worker: u64, status: Option<ExitStatus>) {
        let how = crate::signals::describe_exit(status);
        if self.exclusive_holder == Some(worker) {
            self.exclusive_holder = None;
        }
        if let Some(index) = self.draining.iter().position(|w| w.id == worker) {
            let old = self.draining.remove(index);
            let drained_in = old.draining_since.map(|t| t.elapsed()).unwrap_or_default();
            tracing::info!(worker, pid = old.pid, status = %how, ?drained_in, "old worker exited");
            self.grant_exclusive().await;
            self.after_handover().await;
            return;
        }
        if self.pending.as_ref().is_some_and(|p| p.worker.id == worker) {
            let pending = self.pending.take().expect("checked above");
            tracing::error!(worker, pid = pending.worker.pid, status = %how, "new worker exited before it was ready");
            self.handover_failed(pending, format!("exited before it was ready ({how})"))
                .await;
            return;
        }
        if self.current.as_ref().is_some_and(|c| c.id == worker) {
            let current = self.current.take().expect("checked above");
            if self.stopping {
                tracing::info!(worker, pid = current.pid, status = %how, "worker exited");
                return;
            }
            self.counters.2 += 1;
            let lived = current.started.elapsed();
            tracing::error!(worker, pid = current.pid, status = %how, ?lived, "worker crashed; sockets stay open");
            self.report(WorkerReport::Crashed {
                sha256: current.sha256.clone(),
                lived,
                how: how.clone(),
            });
            if lived > Duration::from_secs(10) {
                self.crash_streak = 0;
            }
            if self.pending.is_none() {
                self.schedule_respawn();
            }
        }
    }

    /// A new worker that is not ready within `ready_timeout` is killed; the old one serves on.
    /// One with no predecessor (the first, or after a crash) is kept with a warning.
    pub(super) async fn on_ready_timeout(&mut self, worker: u64) {
        let Some(pending) = self
            .pending
            .take_if(|p| p.worker.id == worker && !p.worker.ready)
        else {
            return;
        };
        let timeout = self.config.ready_timeout;
        if self.current.is_none() && !self.stopping {
            // Nothing else serves: killing it would be an outage, and it may well be serving.
            tracing::warn!(
                worker,
                ?timeout,
                "worker was not seen ready in time, and no other serves: keeping it"
            );
            let Pending {
                worker: mut kept,
                replies,
                ..
            } = pending;
            for reply in replies {
                let _ = reply.send(HandoverOutcome::Failed(format!(
                    "not seen ready within {}; kept as the only worker",
                    humantime::format_duration(timeout)
                )));
            }
            kept.ready = true;
            self.ever_ready = true;
            if self.pin != kept.pin {
                remove_pin(self.pin.as_deref());
                self.pin = kept.pin.clone();
            }
            self.current = Some(kept);
            self.grant_exclusive().await;
            self.after_handover().await;
            return;
        }
        tracing::error!(
            worker,
            ?timeout,
            "new worker was not ready in time; killing it"
        );
        // It may be accepting already (readiness seen late, or never said): asked to drain
        // first, so connections it took are finished, then killed after a grace.
        let mut pending = pending;
        self.drain(&mut pending.worker).await;
        pending.worker.kill_after(NOT_READY_GRACE);
        self.handover_failed(
            pending,
            format!("not ready within {}", humantime::format_duration(timeout)),
        )
        .await;
    }

    pub(super) async fn handover_failed(&mut self, pending: Pending, why: String) {
        if pending.worker.pin != self.pin {
            remove_pin(pending.worker.pin.as_deref());
        }
        if self.current.is_some() {
            self.counters.1 += 1;
            tracing::error!(worker = pending.worker.id, reason = %why, "hand-over failed; the old worker keeps serving");
        }
        for reply in pending.replies {
            let _ = reply.send(HandoverOutcome::Failed(why.clone()));
        }
        self.report(WorkerReport::Failed {
            sha256: pending.worker.sha256.clone(),
            why,
        });
        if self.current.is_none() && !self.stopping {
            self.schedule_respawn();
        }
        self.after_handover().await;
    }

    pub(super) fn schedule_respawn(&mut self) {
        if self.stopping || self.respawn_scheduled {
            return;
        }
        let base = self.config.restart_backoff.as_millis() as u64;
        let delay = Duration::from_millis(base.saturating_mul(1 << self.crash_streak.min(16)))
            .min(self.config.restart_backoff_max);
        self.crash_streak += 1;
        self.respawn_generation += 1;
        self.respawn_scheduled = true;
        tracing::info!(
            ?delay,
            attempt = self.crash_streak,
            "next worker starts after back-off"
        );
        let (events, generation) = (self.events_tx.clone(), self.respawn_generation);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = events.send(Event::Respawn { generation });
        });
    }

    pub(super) async fn begin_stop(&mut self) {
        self.stopping = true;
        self.respawn_scheduled = false;
        // Generations that drain after a restart drain no longer than the stop allows.
        if let Some(stop) = self.config.stop_drain_timeout {
            let mut draining = std::mem::take(&mut self.draining);
            for old in &mut draining {
                if matches!(self.protocol, Protocol::Library) {
                    old.send(Message::Stopping).await;
                }
                self.kill_after_drain(old, stop);
            }
            self.draining = draining;
        }
        if let Some(mut current) = self.current.take() {
            tracing::info!(worker = current.id, pid = current.pid, "draining for stop");
            self.drain(&mut current).await;
            self.draining.push(current);
        }
        if let Some(mut pending) = self.pending.take() {
            for reply in std::mem::take(&mut pending.replies) {
                let _ = reply.send(HandoverOutcome::Stopping);
            }
            self.drain(&mut pending.worker).await;
            self.draining.push(pending.worker);
        }
        for reply in std::mem::take(&mut self.next_replies) {
            let _ = reply.send(HandoverOutcome::Stopping);
        }
    }
}

/// How long a new worker that was not ready in time has to finish what it took after it was
/// asked to drain, before SIGKILL.
const NOT_READY_GRACE: Duration = Duration::from_secs(2);

/// After this many crashes in a row, a recovery runs the binary on disk instead of the pinned
/// generation.
const PINNED_CRASHES: u32 = 3;

fn pin_prefix(binary: &Path) -> Option<(PathBuf, String)> {
    let dir = binary.parent()?.to_path_buf();
    let name = binary.file_name()?.to_string_lossy();
    Some((dir, format!(".{name}.handover-gen-")))
}

/// A hard link to `source` beside the live binary, named for worker `id`: the bytes that
/// worker runs, whatever is swapped in at the live path later. `None` where links cannot be
/// made (the worker still starts; a recovery then runs the live binary).
fn make_pin(binary: &Path, source: &Path, id: u64) -> Option<PathBuf> {
    let (dir, prefix) = pin_prefix(binary)?;
    let pin = dir.join(format!("{prefix}{id}"));
    let _ = std::fs::remove_file(&pin);
    match std::fs::hard_link(source, &pin) {
        Ok(()) => Some(pin),
        Err(e) => {
            tracing::debug!(binary = %source.display(), error = %e, "cannot pin the worker's binary");
            None
        }
    }
}

fn remove_pin(pin: Option<&Path>) {
    if let Some(pin) = pin {
        let _ = std::fs::remove_file(pin);
    }
}

/// At a fresh start: pins a master that died left behind.
pub(super) fn remove_stale_pins(binary: &Path) {
    let Some((dir, prefix)) = pin_prefix(binary) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// At the final stop: the serving generation's pin.
pub(super) fn remove_generation_pin(pin: Option<&Path>) {
    remove_pin(pin);
}
