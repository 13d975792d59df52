//! Old workers draining: told to, given their drain timeout (the stop's when the master
//! stops), killed past it; and hand-overs that wait while `max_draining` generations drain.

use std::time::{Duration, Instant};

use super::spawn::WorkerProc;
use super::{Event, Master, Protocol};
use crate::protocol::Message;

impl Master {
    pub(super) async fn drain(&mut self, worker: &mut WorkerProc) {
        worker.draining_since = Some(Instant::now());
        let timeout = self.config.worker_drain_timeout(self.stopping);
        match &self.protocol {
            Protocol::Library => {
                if self.stopping {
                    worker.send(Message::Stopping).await;
                }
                worker.send(Message::Drain).await;
            }
            Protocol::Program(program) => worker.signal(program.drain_signal),
        }
        self.kill_after_drain(worker, timeout);
    }

    /// Arms the drain timeout of a draining worker. A library worker closes what is left at its
    /// listeners' timeouts itself and exits; it is killed only if it has not a grace later.
    pub(super) fn kill_after_drain(&self, worker: &mut WorkerProc, timeout: Duration) {
        let deadline = std::time::SystemTime::now() + timeout;
        if worker.drain_deadline.is_some_and(|d| d <= deadline) {
            return;
        }
        worker.drain_deadline = Some(deadline);
        let kill_at = match &self.protocol {
            Protocol::Library => timeout + SELF_CLOSE_GRACE,
            Protocol::Program(_) => timeout,
        };
        let events = self.events_tx.clone();
        let id = worker.id;
        tokio::spawn(async move {
            tokio::time::sleep(kill_at).await;
            let _ = events.send(Event::DrainTimeout { worker: id });
        });
    }

    /// Whether a hand-over must wait: `max_draining` old generations drain while a worker
    /// serves. With none serving (a crash), a hand-over never waits: nothing would serve.
    pub(super) fn draining_is_full(&self) -> bool {
        self.current.is_some() && self.draining.len() >= self.config.max_draining
    }

    /// A hand-over waits: `max_draining` old generations drain. Said once per wait.
    pub(super) fn wait_for_drain(&mut self) {
        if !self.waiting_for_drain {
            self.waiting_for_drain = true;
            tracing::warn!(
                draining = self.draining.len(),
                max_draining = self.config.max_draining,
                "hand-over waits: max_draining old generations still drain; it starts when the oldest exits"
            );
        }
    }

    /// An old worker still draining after `drain_timeout` is killed.
    pub(super) fn on_drain_timeout(&mut self, worker: u64) {
        if let Some(w) = self.draining.iter().find(|w| w.id == worker) {
            tracing::warn!(
                worker,
                pid = w.pid,
                "drain timeout passed; killing the old worker"
            );
            w.kill();
        }
    }
}

/// How long after its drain timeout a library worker, which closes what is left itself at that
/// timeout, has to exit before it is killed.
const SELF_CLOSE_GRACE: Duration = Duration::from_secs(1);
