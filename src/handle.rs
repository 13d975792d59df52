//! A handle to a running master and its upgrade pipeline: restarts, stops, upgrades,
//! rollbacks, quarantine, and the status.

use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, Result};
use crate::handoff::PipelineCommand;
use crate::master::{Command, Event, Status};

/// A handle to a running master: ask for a hand-over, an upgrade or a stop, and watch its
/// status.
#[derive(Debug, Clone)]
pub struct MasterHandle {
    events: mpsc::UnboundedSender<Event>,
    pipeline: mpsc::UnboundedSender<PipelineCommand>,
    status: watch::Receiver<Status>,
}

impl MasterHandle {
    pub(crate) fn new(
        events: mpsc::UnboundedSender<Event>,
        pipeline: mpsc::UnboundedSender<PipelineCommand>,
        status: watch::Receiver<Status>,
    ) -> Self {
        Self {
            events,
            pipeline,
            status,
        }
    }

    /// Starts a hand-over to a new worker (coalesced with one already under way).
    pub fn restart(&self) -> Result<()> {
        self.send(Command::Restart)
    }

    /// Starts a graceful stop.
    pub fn stop(&self) -> Result<()> {
        self.send(Command::Stop)
    }

    /// Re-executes the master from its binary on disk (the live binary, or for `handover run`
    /// the `handover` executable), keeping its PID, sockets and workers, once no hand-over is
    /// under way. The new code is first run in check mode and must read the master's state.
    /// Resolves when the exec is about to happen (the answer says from what to what), or with
    /// why the master keeps running its code.
    pub async fn reexec(&self) -> Result<String> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Reexec { reply })?;
        answer
            .await
            .map_err(|_| Error::Master("stopped".into()))?
            .map_err(Error::Master)
    }

    /// Puts the previous binary back and hands over to it.
    pub async fn rollback(&self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.ask(PipelineCommand::Rollback { reply })?;
        answer
            .await
            .map_err(|_| Error::Master("stopped".into()))?
            .map_err(Error::Master)
    }

    /// Asks the fetcher for a new binary now instead of at the next interval.
    pub fn check_for_upgrade(&self) {
        let _ = self.ask(PipelineCommand::CheckNow { reply: None });
    }

    /// Asks the fetcher now and waits for what came of it: what was installed, or the
    /// [`Error::Rejected`] or [`Error::Fetch`] that says why nothing was.
    pub async fn upgrade_now(&self) -> Result<String> {
        let (reply, answer) = oneshot::channel();
        self.ask(PipelineCommand::CheckNow { reply: Some(reply) })?;
        answer.await.map_err(|_| Error::Master("stopped".into()))?
    }

    /// Releases quarantined hashes that start with `prefix` (or `all`); returns them.
    pub async fn forget(&self, prefix: &str) -> Result<Vec<String>> {
        let (reply, answer) = oneshot::channel();
        self.ask(PipelineCommand::Forget {
            prefix: prefix.trim().to_string(),
            reply,
        })?;
        answer
            .await
            .map_err(|_| Error::Master("stopped".into()))?
            .map_err(Error::Master)
    }

    /// The current status.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    fn send(&self, command: Command) -> Result<()> {
        self.events
            .send(Event::Command(command))
            .map_err(|_| Error::Master("stopped".into()))
    }

    fn ask(&self, command: PipelineCommand) -> Result<()> {
        self.pipeline
            .send(command)
            .map_err(|_| Error::Master("the upgrade pipeline has stopped".into()))
    }
}
