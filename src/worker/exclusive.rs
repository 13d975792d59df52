//! Exclusive jobs: background work that must run in exactly one worker at a time.
//!
//! The master grants exclusivity to the serving worker only once the previous holder has said
//! `released` (all its exclusive jobs returned) or has exited. Jobs registered before the grant
//! wait for it; after draining begins, no job starts.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch, Notify};

use crate::protocol::Message;

/// Fires when the worker starts draining. Clonable; every clone fires together.
#[derive(Debug, Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    pub(crate) fn new(rx: watch::Receiver<bool>) -> Self {
        Self { rx }
    }

    /// Completes when draining begins (at once if it already has).
    pub async fn wait(mut self) {
        let _ = self.rx.wait_for(|draining| *draining).await;
    }

    /// Whether draining has begun.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }
}

type Job = Box<dyn FnOnce(Shutdown) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

#[derive(Default)]
struct State {
    granted: bool,
    waiting: Vec<(String, Shutdown, Job)>,
    active: usize,
    released: bool,
}

#[derive(Clone)]
pub(crate) struct Jobs {
    state: Arc<Mutex<State>>,
    outgoing: mpsc::UnboundedSender<super::Outgoing>,
    shutdown: Shutdown,
    done: Arc<Notify>,
}

impl Jobs {
    pub(crate) fn new(
        outgoing: mpsc::UnboundedSender<super::Outgoing>,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            state: Arc::default(),
            outgoing,
            shutdown,
            done: Arc::new(Notify::new()),
        }
    }

    pub(crate) fn spawn<F, Fut>(&self, name: &str, shutdown: Shutdown, job: F)
    where
        F: FnOnce(Shutdown) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let job: Job = Box::new(move |s| Box::pin(job(s)));
        let mut state = self.state.lock().expect("exclusive state poisoned");
        if shutdown.is_triggered() {
            tracing::info!(job = name, "not starting exclusive job: draining");
        } else if state.granted {
            self.start(&mut state, name.to_string(), shutdown, job);
        } else {
            tracing::debug!(job = name, "exclusive job waits for the grant");
            state.waiting.push((name.to_string(), shutdown, job));
        }
    }

    /// The master granted exclusivity: start what waits, and release once draining is over.
    pub(crate) fn grant(&self) {
        let mut state = self.state.lock().expect("exclusive state poisoned");
        if state.granted {
            return;
        }
        state.granted = true;
        let waiting = std::mem::take(&mut state.waiting);
        for (name, shutdown, job) in waiting {
            if !shutdown.is_triggered() {
                self.start(&mut state, name, shutdown, job);
            }
        }
        drop(state);
        let this = self.clone();
        tokio::spawn(async move {
            this.shutdown.clone().wait().await;
            this.release_if_idle();
        });
    }

    fn start(&self, state: &mut State, name: String, shutdown: Shutdown, job: Job) {
        state.active += 1;
        tracing::info!(job = %name, "exclusive job started");
        let this = self.clone();
        let watch = shutdown.clone();
        tokio::spawn(async move {
            job(shutdown).await;
            tracing::info!(job = %name, "exclusive job finished");
            this.state.lock().expect("exclusive state poisoned").active -= 1;
            if watch.is_triggered() {
                this.release_if_idle();
            }
        });
    }

    fn release_if_idle(&self) {
        let mut state = self.state.lock().expect("exclusive state poisoned");
        if state.granted && state.active == 0 && !state.released {
            state.released = true;
            let _ = self
                .outgoing
                .send(super::Outgoing::Message(Message::Released));
            self.done.notify_waiters();
        }
    }

    /// Waits until every exclusive job has returned (the program has ended and draining began).
    pub(crate) async fn finish(&self) {
        loop {
            let notified = self.done.notified();
            {
                let state = self.state.lock().expect("exclusive state poisoned");
                if !state.granted || state.active == 0 {
                    break;
                }
            }
            notified.await;
        }
        self.release_if_idle();
    }
}
