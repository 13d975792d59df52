//! A handover fetcher that watches an etcd key for the release pointer.
//!
//! Polling a fleet is load for nothing: 10,000 hosts every 30 s is 333 requests a second to
//! learn, almost always, that nothing changed. This fetcher holds one watch (a gRPC stream) on
//! a key instead; a host learns of a release as soon as the key is written, and a poll while
//! the watch stands costs no request at all. When the watch breaks, polls read the key at the
//! core's interval, and the watch is dialled again (after 1 s, doubling up to 10 s) until it is
//! back.
//!
//! The key holds a small JSON document, the release pointer:
//!
//! ```json
//! {"url": "https://downloads.example.com/app-1.4.0", "sha256": "5f0c…", "version": "1.4.0",
//!  "signature": "untrusted comment: …\nRW…\ntrusted comment: …\n…"}
//! ```
//!
//! `url` and `sha256` are required; `version`, `size` and `signature` (the `.minisig` file's
//! text) are optional. Upload the binary first and write the pointer last: the pointer is the
//! publication, and it is written whole. The binary is downloaded over https (plain http only
//! to a loopback host with `allow_insecure_loopback`), and the core checks it as it checks
//! every fetcher's: the SHA-256, the signature against `[upgrade] public_keys`, the version,
//! the sanity run.
//!
//! Beside the key (under its prefix) the fetcher is a rollout [`Store`]: `rollout.json` and its
//! signature, watched too, and the hosts' `reports/…` and `failures/…`, so a staged rollout
//! needs nothing but the cluster.
//!
//! This fetcher decides nothing: it reports what the key says, and the core decides.
//!
//! ```no_run
//! use handover_fetcher::{Fetcher, Running};
//! use handover_fetcher_etcd::{EtcdConfig, EtcdFetcher};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = EtcdConfig::new(vec!["http://127.0.0.1:2379".into()], "/handover/app/release");
//! let mut fetcher = EtcdFetcher::new(config)?;
//! let running = Running::new([0; 32], None);
//! if let Some(artifact) = fetcher.fetch(&running).await? {
//!     println!("new binary at {}", artifact.origin());
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use etcd_client::{Client, ConnectOptions, GetOptions};
use handover_fetcher::{
    async_trait, Artifact, FetchError, Fetcher, Notify, Running, Settlement, Store,
};
use handover_fetcher_http::net;
use reqwest::StatusCode;
use tokio::task::JoinHandle;

mod config;
mod error;
mod pointer;
mod store;
mod watch;

pub use config::EtcdConfig;
pub use error::Error;

use pointer::Pointer;
use watch::Shared;

/// Watches (or, with `poll_only`, polls) one etcd key for the release pointer.
pub struct EtcdFetcher {
    config: EtcdConfig,
    origin: String,
    http: reqwest::Client,
    /// The client for reads and writes, dialled on first use.
    client: Option<Client>,
    shared: Arc<Shared>,
    watcher: Option<JoinHandle<()>>,
    /// The pointer's generation when it was last read to the end (nothing left to offer).
    read_at: Option<u64>,
    /// The candidate offered and not yet settled: its id, the pointer's generation when it
    /// was read, and the download's validators.
    offered: Option<(String, u64, Validators)>,
    /// The candidate the core found not ready (its digest or signature does not match the
    /// bytes yet), and the validators of the bytes it saw: while neither the pointer nor the
    /// bytes change, the answer would be the same, so it is not downloaded again.
    unready: Option<(String, Validators)>,
    /// The id of the pointer last settled installed or rejected.
    settled: Option<String>,
    /// Documents of the store read while the watch stood: name → (generation, bytes).
    documents: HashMap<String, (u64, Option<Vec<u8>>)>,
}

impl EtcdFetcher {
    /// A fetcher for `config`; it dials the cluster on its first poll.
    pub fn new(config: EtcdConfig) -> Result<Self, Error> {
        config.validate()?;
        let mut options = net::ClientOptions::new(config.connect_timeout, config.timeout);
        options.allow_insecure_loopback = config.allow_insecure_loopback;
        let http = net::client(&options)?;
        Ok(Self {
            origin: format!("etcd:{}", config.key),
            config,
            http,
            client: None,
            shared: Arc::default(),
            watcher: None,
            read_at: None,
            offered: None,
            unready: None,
            settled: None,
            documents: HashMap::new(),
        })
    }

    /// Starts the watch task (on the caller's runtime), once.
    fn watch(&mut self) {
        if self.watcher.is_none() && !self.config.poll_only {
            let task = watch::run(self.config.clone(), self.shared.clone());
            self.watcher = Some(tokio::spawn(task));
        }
    }

    /// The client for reads and writes.
    async fn client(&mut self) -> Result<&mut Client, FetchError> {
        if self.client.is_none() {
            let options = ConnectOptions::new()
                .with_connect_timeout(self.config.connect_timeout)
                .with_timeout(self.config.timeout);
            let dial = Client::connect(self.config.urls(), Some(options));
            let client = tokio::time::timeout(self.config.connect_timeout, dial)
                .await
                .map_err(|_| {
                    FetchError::unreachable(
                        &self.origin,
                        format!("no connection within {:?}", self.config.connect_timeout),
                    )
                })?
                .map_err(|e| etcd_error(&self.origin, e))?;
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("dialled above"))
    }

    /// The value and modification revision of `key`, `None` when there is no such key.
    async fn read(&mut self, key: &str) -> Result<Option<(Vec<u8>, i64)>, FetchError> {
        let origin = format!("etcd:{key}");
        let response = self
            .client()
            .await?
            .get(key, None)
            .await
            .map_err(|e| etcd_error(&origin, e))?;
        Ok(response
            .kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.mod_revision())))
    }

    /// The keys under `prefix` and their modification revisions, values left out.
    async fn keys(&mut self, prefix: &str) -> Result<Vec<(String, i64)>, FetchError> {
        let origin = format!("etcd:{prefix}");
        let options = GetOptions::new().with_prefix().with_keys_only();
        let response = self
            .client()
            .await?
            .get(prefix, Some(options))
            .await
            .map_err(|e| etcd_error(&origin, e))?;
        Ok(response
            .kvs()
            .iter()
            .filter_map(|kv| Some((kv.key_str().ok()?.to_string(), kv.mod_revision())))
            .collect())
    }

    /// Writes `key`.
    async fn write(&mut self, key: &str, bytes: Vec<u8>) -> Result<(), FetchError> {
        let origin = format!("etcd:{key}");
        self.client()
            .await?
            .put(key, bytes, None)
            .await
            .map_err(|e| etcd_error(&origin, e))?;
        Ok(())
    }

    /// Whether the watch is established now (for tests and status).
    pub fn watching(&self) -> bool {
        self.shared.pointer().1
    }

    /// Reads the pointer and offers what it names, if there is something to offer.
    async fn offer(
        &mut self,
        running: &Running,
        generation: u64,
    ) -> Result<Option<Artifact>, FetchError> {
        let key = self.config.key.clone();
        let Some((value, revision)) = self.read(&key).await? else {
            self.read_at = Some(generation);
            return Err(FetchError::not_published(
                &self.origin,
                "the key does not exist",
            ));
        };
        let id = format!("{revision}:{}", &hex::encode(net::sha256(&value))[..16]);
        if self.settled.as_deref() == Some(id.as_str()) {
            self.read_at = Some(generation);
            return Ok(None);
        }
        let pointer = match Pointer::parse(&self.origin, &value) {
            Ok(pointer) => pointer,
            Err(e) => {
                // Only a new value can mend it; the watch says when there is one.
                self.read_at = Some(generation);
                return Err(e);
            }
        };
        if pointer.sha256 == running.sha256 {
            self.settled = Some(id);
            self.read_at = Some(generation);
            return Ok(None);
        }
        let url = net::check_url("url", &pointer.url, self.config.allow_insecure_loopback)
            .map_err(|e| {
                self.read_at = Some(generation);
                FetchError::invalid(&self.origin, format!("the release pointer's {e}"))
            })?;
        // From here, a failure is offered again on the next poll: the binary may not be
        // uploaded yet, or the download broke.
        let mut request = self.http.get(url);
        if let Some((_, seen)) = self.unready.as_ref().filter(|(unready, _)| *unready == id) {
            request = seen.condition(request);
        }
        let response = net::send(request, &pointer.url).await?;
        match response.status() {
            StatusCode::NOT_MODIFIED => {
                tracing::debug!(url = %pointer.url, "the pointer and the bytes are as they were");
                return Ok(None);
            }
            StatusCode::NOT_FOUND | StatusCode::GONE => {
                return Err(FetchError::not_published(
                    &pointer.url,
                    format!(
                        "HTTP {} (the pointer {} names it; upload the binary before the pointer)",
                        response.status(),
                        self.origin
                    ),
                ))
            }
            s if s.is_success() => {}
            _ => return Err(net::status_error(&pointer.url, &response)),
        }
        let validators = Validators::of(&response);
        let size = pointer.size.or(response.content_length());
        let mut artifact = Artifact::new(pointer.url.clone(), net::into_reader(response))
            .with_sha256(pointer.sha256)
            .with_id(id.clone());
        if let Some(size) = size {
            artifact = artifact.with_size(size);
        }
        if let Some(version) = pointer.version {
            artifact = artifact.with_version(version);
        }
        if let Some(signature) = pointer.signature {
            artifact = artifact.with_signature(signature.into_bytes());
        }
        tracing::info!(key = %self.config.key, url = %pointer.url, revision, "offering the release the pointer names");
        self.offered = Some((id, generation, validators));
        Ok(Some(artifact))
    }
}

impl Drop for EtcdFetcher {
    fn drop(&mut self) {
        if let Some(task) = self.watcher.take() {
            task.abort();
        }
    }
}

#[async_trait]
impl Fetcher for EtcdFetcher {
    fn name(&self) -> &str {
        "etcd"
    }

    async fn fetch(&mut self, running: &Running) -> Result<Option<Artifact>, FetchError> {
        self.watch();
        let (generation, established) = self.shared.pointer();
        if established && self.offered.is_none() && self.read_at == Some(generation) {
            tracing::trace!(key = %self.config.key, "watched: nothing changed");
            return Ok(None);
        }
        self.read_at = None;
        self.offered = None;
        self.offer(running, generation).await
    }

    fn wake(&self) -> Option<Arc<Notify>> {
        Some(self.shared.notify.clone())
    }

    fn settled(&mut self, id: &str, settlement: Settlement) {
        let Some((offered, generation, validators)) = self.offered.take() else {
            return;
        };
        if offered != id {
            self.offered = Some((offered, generation, validators));
            return;
        }
        tracing::debug!(key = %self.config.key, id, ?settlement, ?validators, "settled");
        if settlement == Settlement::NotReady {
            self.unready = Some((offered, validators));
        } else {
            // Until the key changes, there is nothing to offer.
            self.unready = None;
            self.settled = Some(offered);
            self.read_at = Some(generation);
        }
    }

    /// The id (revision and digest of the value) of the pointer last settled.
    fn memory(&self) -> Option<String> {
        self.settled.clone()
    }

    fn restore(&mut self, memory: &str) {
        let memory = memory.trim();
        if memory.split_once(':').is_some_and(|(rev, digest)| {
            rev.parse::<i64>().is_ok() && digest.len() == 16 && hex::decode(digest).is_ok()
        }) {
            self.settled = Some(memory.to_string());
        }
    }

    fn store(&mut self) -> Option<&mut dyn Store> {
        Some(self)
    }
}

/// The validators of a download (`ETag`, `Last-Modified`), to ask for it again only if it
/// changed.
#[derive(Debug, Clone, Default)]
struct Validators {
    etag: Option<String>,
    last_modified: Option<String>,
}

impl Validators {
    fn of(response: &reqwest::Response) -> Self {
        Self {
            etag: net::header(response, reqwest::header::ETAG),
            last_modified: net::header(response, reqwest::header::LAST_MODIFIED),
        }
    }

    fn condition(&self, mut request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        if let Some(etag) = &self.etag {
            request = request.header(reqwest::header::IF_NONE_MATCH, etag);
        }
        if let Some(date) = &self.last_modified {
            request = request.header(reqwest::header::IF_MODIFIED_SINCE, date);
        }
        request
    }
}

/// What a failed etcd call means to the core.
fn etcd_error(origin: &str, error: etcd_client::Error) -> FetchError {
    use etcd_client::Error as E;
    match &error {
        E::GRpcStatus(status) => {
            use tonic::Code;
            let message = format!("{:?}: {}", status.code(), status.message());
            match status.code() {
                Code::PermissionDenied | Code::Unauthenticated => {
                    FetchError::refused(origin, message)
                }
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Aborted
                | Code::Cancelled
                | Code::Unknown => FetchError::unreachable(origin, message),
                _ => FetchError::invalid(origin, message),
            }
        }
        E::TransportError(e) => FetchError::unreachable(origin, net::describe(e)),
        E::IoError(e) => FetchError::unreachable(origin, e),
        _ => FetchError::invalid(origin, error),
    }
}
