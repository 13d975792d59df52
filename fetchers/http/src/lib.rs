//! A handover fetcher that polls an https URL for a new binary.
//!
//! Publish the binary at a stable URL (and a checksum file next to it); each poll is a
//! conditional `GET` (`If-None-Match` with the last ETag, `If-Modified-Since` with the last
//! `Last-Modified`), so an unchanged file costs a `304 Not Modified` and nothing else.
//!
//! What a poll does, in order:
//! 1. fetch the checksum file (`checksum_url`) and find the download's entry (none, or a 404,
//!    means no published SHA-256);
//! 2. `GET url`, conditional on what was last *settled*: the ETag and `Last-Modified` are
//!    remembered only when the core reports the candidate installed or rejected
//!    ([`Fetcher::settled`]), so a download that failed half-way is offered again, and one the
//!    core found not ready (no checksum or signature yet) is offered again on every poll;
//!    a 404 or 410 is [`FetchError::NotPublished`];
//! 3. fetch the signature (`signature_url`; a 404 means "not signed"), and hand the body to
//!    the core as a stream, with the published SHA-256 and the announced size.
//!
//! This fetcher decides nothing: hashing, the checksum and signature checks and the policy
//! around them (`checksum_required`, `max_size`, downgrades: the core's `[upgrade]` table), the
//! sanity run and the swap happen in the core. An archive ([`HttpConfig::archive_member`]) is
//! handed over as it is, marked with [`Artifact::with_archive`]: its checksum covers the
//! archive, and the core takes the binary out.
//!
//! With `store_url`, the fetcher has an [`HttpStore`]: a staged rollout's `rollout.json`, and
//! the hosts' reports, `PUT` below it.
//!
//! The [`net`] module is shared with the GitHub fetcher.
//!
//! ```no_run
//! use handover_fetcher::{Fetcher, Running};
//! use handover_fetcher_http::{HttpConfig, HttpFetcher};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = HttpConfig::new("https://downloads.example.com/app/latest/app-x86_64-linux")
//!     .with_checksum_url("https://downloads.example.com/app/latest/SHA256SUMS");
//! let mut fetcher = HttpFetcher::new(config)?;
//! let running = Running::new([0; 32], None);
//! if let Some(artifact) = fetcher.fetch(&running).await? {
//!     println!("new binary at {}: {:?} bytes", artifact.origin(), artifact.claimed_size());
//! }
//! # Ok(()) }
//! ```

use std::fmt;

use handover_fetcher::{
    async_trait, find_in_checksum_file, ArchiveFormat, Artifact, FetchError, Fetcher, Running,
    Settlement, Sha256, Store,
};
use reqwest::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use reqwest::{Client, RequestBuilder, StatusCode, Url};

mod config;
pub mod defaults;
mod error;
pub mod net;
mod store;
pub use handover_fetcher::size;

pub use config::HttpConfig;
pub use error::Error;
pub use store::{listing_json, HttpStore};

/// The largest checksum file read.
const MAX_CHECKSUM_FILE: u64 = 1 << 20;
/// The largest signature file read.
const MAX_SIGNATURE: u64 = 64 << 10;

/// Polls one URL for a new binary. See the [crate docs](crate).
pub struct HttpFetcher {
    config: HttpConfig,
    url: Url,
    checksum_url: Option<Url>,
    signature_url: Option<Url>,
    checksum_name: String,
    /// How the download is packed and the binary inside it (for a plain `.gz`, only a name for
    /// errors); `None` for the binary itself.
    archive: Option<(ArchiveFormat, String)>,
    client: Client,
    /// The validators of the last settled candidate.
    remembered: Option<Seen>,
    /// The candidate last offered, until the core settles it.
    offered: Option<(String, Seen)>,
    /// A staged rollout's manifest and reports (`store_url`).
    store: Option<HttpStore>,
}

/// What identifies a version of the download.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    etag: Option<String>,
    last_modified: Option<String>,
    checksum: Option<Sha256>,
}

impl Seen {
    fn id(&self) -> String {
        let checksum = self.checksum.as_ref().map(net::hex);
        format!(
            "etag={};last-modified={};sha256={}",
            self.etag.as_deref().unwrap_or("-"),
            self.last_modified.as_deref().unwrap_or("-"),
            checksum.as_deref().unwrap_or("-"),
        )
    }
}

impl fmt::Debug for HttpFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpFetcher")
            .field("url", &self.url.as_str())
            .field("checksum_url", &self.checksum_url.as_ref().map(Url::as_str))
            .field(
                "signature_url",
                &self.signature_url.as_ref().map(Url::as_str),
            )
            .field("archive", &self.archive)
            .field("token", &self.config.token.as_ref().map(|_| "<redacted>"))
            .field("remembered", &self.remembered)
            .finish_non_exhaustive()
    }
}

impl HttpFetcher {
    /// Checks `config` (see [`HttpConfig::validate`]) and builds the HTTP client.
    pub fn new(config: HttpConfig) -> Result<Self, Error> {
        let urls = config.urls()?;
        let mut options = net::ClientOptions::new(config.connect_timeout, config.timeout);
        options.allow_insecure_loopback = config.allow_insecure_loopback;
        let client = net::client(&options)?;
        Ok(Self {
            url: urls.url,
            checksum_url: urls.checksum,
            signature_url: urls.signature,
            checksum_name: urls.checksum_name,
            archive: urls.archive,
            store: urls
                .store
                .map(|base| HttpStore::new(client.clone(), base, config.token.clone())),
            client,
            config,
            remembered: None,
            offered: None,
        })
    }

    /// The configuration this fetcher was built from.
    pub fn config(&self) -> &HttpConfig {
        &self.config
    }

    fn get(&self, url: &Url) -> RequestBuilder {
        let request = self.client.get(url.clone());
        match &self.config.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// The SHA-256 published for the download: `None` without a checksum file, when it is not
    /// there (404, 410), or when it has no entry for the download.
    async fn published_checksum(&self) -> Result<Option<Sha256>, FetchError> {
        let Some(url) = &self.checksum_url else {
            return Ok(None);
        };
        let origin = url.as_str();
        let response = net::send(self.get(url), origin).await?;
        match response.status() {
            StatusCode::NOT_FOUND | StatusCode::GONE => {
                tracing::debug!(checksum_url = origin, "no checksum file published");
                return Ok(None);
            }
            s if s.is_success() => {}
            _ => return Err(net::status_error(origin, &response)),
        }
        let body = net::read_limited(response, MAX_CHECKSUM_FILE, origin).await?;
        let text = String::from_utf8_lossy(&body);
        let found = find_in_checksum_file(&text, &self.checksum_name);
        if found.is_none() {
            tracing::debug!(
                checksum_url = origin,
                name = %self.checksum_name,
                "no SHA-256 entry for the download; offering it without one"
            );
        }
        Ok(found)
    }

    /// The signature bytes, if `signature_url` is set and exists.
    async fn signature(&self) -> Result<Option<Vec<u8>>, FetchError> {
        let Some(url) = &self.signature_url else {
            return Ok(None);
        };
        let origin = url.as_str();
        let response = net::send(self.get(url), origin).await?;
        match response.status() {
            StatusCode::NOT_FOUND | StatusCode::GONE => {
                tracing::debug!(signature_url = origin, "no signature published");
                Ok(None)
            }
            s if s.is_success() => Ok(Some(
                net::read_limited(response, MAX_SIGNATURE, origin).await?,
            )),
            _ => Err(net::status_error(origin, &response)),
        }
    }
}

#[async_trait]
impl Fetcher for HttpFetcher {
    fn name(&self) -> &str {
        "http"
    }

    fn store(&mut self) -> Option<&mut dyn Store> {
        self.store.as_mut().map(|s| s as &mut dyn Store)
    }

    async fn fetch(&mut self, _running: &Running) -> Result<Option<Artifact>, FetchError> {
        let origin = self.url.as_str().to_string();
        let checksum = self.published_checksum().await?;

        let mut request = self.get(&self.url);
        // Conditional only while the checksum file still says what it said then: a binary
        // replaced before its checksum (and so rejected) is downloaded again once the
        // checksum catches up.
        if let Some(seen) = self.remembered.as_ref().filter(|s| s.checksum == checksum) {
            if let Some(etag) = &seen.etag {
                request = request.header(IF_NONE_MATCH, etag);
            }
            if let Some(date) = &seen.last_modified {
                request = request.header(IF_MODIFIED_SINCE, date);
            }
        }
        let response = net::send(request, &origin).await?;
        match response.status() {
            StatusCode::NOT_MODIFIED => {
                tracing::debug!(url = %origin, "not modified");
                return Ok(None);
            }
            StatusCode::NOT_FOUND | StatusCode::GONE => {
                return Err(FetchError::not_published(
                    origin,
                    format!("HTTP {}", response.status()),
                ));
            }
            s if s.is_success() => {}
            _ => return Err(net::status_error(&origin, &response)),
        }
        let size = response.content_length();
        let seen = Seen {
            etag: net::header(&response, ETAG),
            last_modified: net::header(&response, LAST_MODIFIED),
            checksum,
        };
        let id = seen.id();
        let signature = self.signature().await?;

        let mut artifact = Artifact::new(origin.clone(), net::into_reader(response));
        if let Some(size) = size {
            artifact = artifact.with_size(size);
        }
        if let Some(digest) = checksum {
            artifact = artifact.with_sha256(digest);
        }
        if let Some(signature) = signature {
            artifact = artifact.with_signature(signature);
        }
        if let Some((format, member)) = &self.archive {
            artifact = artifact.with_archive(*format, member.clone());
        }
        tracing::info!(
            url = %origin,
            size = ?artifact.claimed_size(),
            etag = ?seen.etag,
            "offering a new download"
        );
        self.offered = Some((id.clone(), seen));
        Ok(Some(artifact.with_id(id)))
    }

    fn settled(&mut self, id: &str, settlement: Settlement) {
        match self.offered.take() {
            // The signature URL's validators are not tracked: a candidate that is not ready
            // (no signature yet, a checksum that does not match) is downloaded on every poll
            // until it is.
            Some((offered, seen)) if offered == id && settlement == Settlement::NotReady => {
                tracing::debug!(url = %self.url, etag = ?seen.etag, "not ready; offering it again");
                self.remembered = None;
            }
            Some((offered, seen)) if offered == id => {
                tracing::debug!(url = %self.url, ?settlement, etag = ?seen.etag, "settled");
                self.remembered = Some(seen);
            }
            other => self.offered = other,
        }
    }

    /// The settled validators, one per line: ETag, Last-Modified, checksum (`-` for none).
    fn memory(&self) -> Option<String> {
        let seen = self.remembered.as_ref()?;
        let checksum = seen.checksum.as_ref().map(net::hex);
        Some(format!(
            "{}\n{}\n{}",
            seen.etag.as_deref().unwrap_or("-"),
            seen.last_modified.as_deref().unwrap_or("-"),
            checksum.as_deref().unwrap_or("-"),
        ))
    }

    fn restore(&mut self, memory: &str) {
        let lines: Vec<&str> = memory.lines().collect();
        let [etag, last_modified, checksum] = lines[..] else {
            return;
        };
        let field = |v: &str| (v != "-").then(|| v.to_string());
        let checksum = match checksum {
            "-" => None,
            hex => match handover_fetcher::parse_sha256(hex) {
                Some(digest) => Some(digest),
                None => return,
            },
        };
        self.remembered = Some(Seen {
            etag: field(etag),
            last_modified: field(last_modified),
            checksum,
        });
    }
}
