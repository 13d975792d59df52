//! The watch: one gRPC stream, held open in a task of its own, on the release pointer and on the
//! staged rollout's manifest. It reads nothing itself; it only says what may have changed, so
//! that a poll while it is established costs no request, and pokes the core's [`Notify`] so
//! that a change is acted on at once.
//!
//! When the stream breaks (the cluster restarts, the network drops), the fetcher polls at the
//! core's interval and the task dials again, after 1 s and then twice as long each time up to
//! [`MAX_RETRY`], until the watch is back.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, WatchOptions};
use handover_fetcher::Notify;

use crate::EtcdConfig;

/// The first wait before dialling again after the watch broke.
const MIN_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between attempts to re-establish the watch.
pub(crate) const MAX_RETRY: Duration = Duration::from_secs(10);
/// HTTP/2 pings on the watch's connection, so a peer that vanished is noticed.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// What the watch tells the fetcher.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// The watch is established: a change to the pointer or the manifest arrives as an event.
    pub(crate) established: bool,
    /// Changes whenever the pointer may have changed (an event, the watch established or lost).
    pub(crate) pointer: u64,
    /// The same for the manifest and its signature.
    pub(crate) manifest: u64,
    /// Why the watch is down, when it is.
    pub(crate) broken: Option<String>,
}

/// Shared between the fetcher and its watch task.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) seen: Mutex<Seen>,
    pub(crate) notify: Arc<Notify>,
}

impl Shared {
    /// The pointer's generation, and whether a read of it at that generation still holds.
    pub(crate) fn pointer(&self) -> (u64, bool) {
        let seen = self.seen.lock().unwrap();
        (seen.pointer, seen.established)
    }

    /// The manifest's generation, and whether a read of it at that generation still holds.
    pub(crate) fn manifest(&self) -> (u64, bool) {
        let seen = self.seen.lock().unwrap();
        (seen.manifest, seen.established)
    }

    fn changed(&self, pointer: bool, manifest: bool) {
        {
            let mut seen = self.seen.lock().unwrap();
            seen.pointer += u64::from(pointer);
            seen.manifest += u64::from(manifest);
        }
        self.notify.notify_one();
    }

    fn established(&self, key: &str) {
        {
            let mut seen = self.seen.lock().unwrap();
            seen.established = true;
            if let Some(reason) = seen.broken.take() {
                tracing::info!(key, %reason, "etcd watch re-established; polling stops");
            } else {
                tracing::info!(key, "etcd watch established");
            }
        }
        // Anything may have changed while it was down: the next poll reads once.
        self.changed(true, true);
    }

    fn lost(&self, key: &str, reason: String) {
        {
            let mut seen = self.seen.lock().unwrap();
            if seen.established || seen.broken.is_none() {
                tracing::warn!(
                    key,
                    %reason,
                    "etcd watch lost; polling at the upgrade interval until it is back"
                );
            }
            seen.established = false;
            seen.broken = Some(reason);
        }
        self.changed(true, true);
    }
}

/// Holds the watch open until the task is aborted.
pub(crate) async fn run(config: EtcdConfig, shared: Arc<Shared>) {
    let mut retry = MIN_RETRY;
    loop {
        let reason = watch(&config, &shared, &mut retry)
            .await
            .err()
            .unwrap_or_else(|| "the server ended the watch".to_string());
        shared.lost(&config.key, reason);
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(MAX_RETRY);
    }
}

/// One watch stream, from dialling to its end.
async fn watch(config: &EtcdConfig, shared: &Shared, retry: &mut Duration) -> Result<(), String> {
    let options = ConnectOptions::new()
        .with_connect_timeout(config.connect_timeout)
        .with_keep_alive(KEEP_ALIVE, config.connect_timeout)
        .with_keep_alive_while_idle(true);
    let dial = Client::connect(config.urls(), Some(options));
    let mut client = tokio::time::timeout(config.connect_timeout, dial)
        .await
        .map_err(|_| format!("no connection within {:?}", config.connect_timeout))?
        .map_err(|e| e.to_string())?;
    let manifest = format!("{}rollout.json", config.store_prefix());
    let opened = async {
        let mut stream = client.watch(config.key.clone(), None).await?;
        // `rollout.json` and `rollout.json.minisig`.
        stream
            .watch(manifest.clone(), Some(WatchOptions::new().with_prefix()))
            .await?;
        Ok::<_, etcd_client::Error>(stream)
    };
    let mut stream = tokio::time::timeout(config.timeout, opened)
        .await
        .map_err(|_| format!("the watch was not opened within {:?}", config.timeout))?
        .map_err(|e| e.to_string())?;
    let mut created = 0;
    while let Some(response) = stream.message().await.map_err(|e| e.to_string())? {
        if response.canceled() {
            return Err(format!(
                "the server cancelled the watch: {}",
                response.cancel_reason()
            ));
        }
        if response.created() {
            created += 1;
            if created == 2 {
                *retry = MIN_RETRY;
                shared.established(&config.key);
            }
            continue;
        }
        let (mut pointer, mut document) = (false, false);
        for event in response.events() {
            match event.kv().map(|kv| kv.key()) {
                Some(key) if key == config.key.as_bytes() => pointer = true,
                _ => document = true,
            }
        }
        tracing::debug!(key = %config.key, pointer, manifest = document, "etcd watch event");
        shared.changed(pointer, document);
    }
    Ok(())
}
