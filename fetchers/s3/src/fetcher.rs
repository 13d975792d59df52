//! The poll: a conditional HEAD, the claims, then the body stream.

use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::operation::get_object::GetObjectOutput;
use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use aws_sdk_s3::types::ChecksumMode;
use aws_sdk_s3::Client;
use handover_fetcher::{
    async_trait, Artifact, FetchError, Fetcher, Running, Settlement, Sha256, Store, Version,
};

use crate::error::{classify, Failure};
use crate::{Error, S3Config, S3Store};

mod claims;
mod sidecar;

use claims::{full_object_sha256, parse_version, strip_prefix_ignore_case};

/// How many times one poll starts over when the object is replaced while it is being read.
const RACE_RETRIES: usize = 3;

/// A [`Fetcher`] that watches one S3 object.
///
/// Each poll is one `HEAD` with `If-None-Match: <ETag of the last settled candidate>`, so an
/// unchanged object costs a 304 and no download. A changed object is offered with its size, the
/// SHA-256 it publishes (its own full-object checksum, else the `<key>.sha256` sidecar, else
/// none), the version in its metadata, the `<key>.minisig` signature when there is one, and its
/// ETag as [`Artifact::id`]. The ETag is remembered once the core [settles](Fetcher::settled)
/// the candidate, so a download that failed half-way is offered again; after a rejection or a
/// "not ready", the sidecars are watched, and one that appears or changes offers the object
/// again.
pub struct S3Fetcher {
    client: Client,
    config: S3Config,
    origin: String,
    /// The candidate last offered and not yet settled.
    pending: Option<Seen>,
    /// The candidate last settled, or skipped as not newer.
    last: Option<Seen>,
    /// The key's prefix, for a staged rollout's manifest and reports.
    store: S3Store,
}

/// A candidate the fetcher has seen, by ETag.
#[derive(Debug, Clone)]
struct Seen {
    etag: String,
    /// The object's Last-Modified: a copy in place that changes only its metadata (a wrong
    /// `version` put right) keeps the ETag and changes this.
    modified: Option<String>,
    /// The running binary's SHA-256 when this candidate was turned down (the running version,
    /// identical, rejected or not ready in the core); `None` once installed. Another binary
    /// running since (a manual deploy, a rollback) may change the answer, so the candidate is
    /// looked at again.
    turned_down_for: Option<Sha256>,
    /// The sidecars the candidate was offered with: key, and ETag (`None`: it did not exist).
    sidecars: Vec<(String, Option<String>)>,
    /// Whether a sidecar that appears or changes makes the same object worth offering again:
    /// after a rejection or a "not ready" (a wrong or missing `.sha256` or `.minisig`).
    watch_sidecars: bool,
}

/// The outcome of one pass of a poll.
// One value per pass, on the stack and moved once: boxing the artifact would buy nothing.
#[allow(clippy::large_enum_variant)]
enum Pass {
    Done(Option<Artifact>),
    /// The object changed between the HEAD and the GET: look again.
    Raced,
}

impl S3Fetcher {
    /// Builds a fetcher with credentials and region from the standard AWS chain (environment,
    /// shared profile, web identity, ECS, IMDS); `config.region` wins when set, and `us-east-1`
    /// is used when nothing else names one.
    pub async fn new(config: S3Config) -> Result<Self, Error> {
        config.validate()?;
        let region = match &config.region {
            Some(region) => RegionProviderChain::first_try(Region::new(region.clone())),
            None => {
                RegionProviderChain::default_provider().or_else(Region::from_static("us-east-1"))
            }
        };
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(region)
            .timeout_config(timeouts(&config, None))
            .load()
            .await;
        Self::with_sdk_config(config, &sdk)
    }

    /// Builds a fetcher on an [`SdkConfig`] the caller loaded (its credentials, HTTP client and
    /// region). `config`'s region, endpoint, addressing style, timeouts and attempts are applied
    /// on top; without a region anywhere, `us-east-1` is used.
    ///
    /// Without `config.endpoint_url`, an endpoint the AWS configuration names
    /// (`AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, a profile's `endpoint_url`) is held to the
    /// same rule: `https://`, or `http://` to loopback with `allow_insecure_loopback`.
    pub fn with_sdk_config(config: S3Config, sdk: &SdkConfig) -> Result<Self, Error> {
        config.validate()?;
        if config.endpoint_url.is_none() {
            if let Some(url) = crate::endpoint::from_sdk(sdk) {
                crate::endpoint::check(&url, config.allow_insecure_loopback).map_err(
                    |message| Error::Config {
                        field: "endpoint_url",
                        message: format!("(from the AWS configuration) {message}"),
                    },
                )?;
            }
        }
        let mut builder = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(config.path_style())
            .timeout_config(timeouts(&config, sdk.timeout_config()))
            .retry_config(RetryConfig::standard().with_max_attempts(config.max_attempts));
        if let Some(region) = &config.region {
            builder = builder.region(Region::new(region.clone()));
        } else if sdk.region().is_none() {
            builder = builder.region(Region::from_static("us-east-1"));
        }
        if let Some(url) = &config.endpoint_url {
            builder = builder.endpoint_url(url);
        }
        Ok(Self::with_client(
            config,
            Client::from_conf(builder.build()),
        ))
    }

    /// Builds a fetcher on a ready S3 client, used as it is: `config`'s region, endpoint,
    /// timeouts and attempts are ignored, its other fields apply.
    pub fn with_client(config: S3Config, client: Client) -> Self {
        Self {
            origin: config.origin(),
            store: S3Store::beside(client.clone(), &config.bucket, &config.key),
            client,
            config,
            pending: None,
            last: None,
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &S3Config {
        &self.config
    }

    /// The ETag of the last candidate settled (or skipped as not newer): the `If-None-Match`
    /// of the next poll.
    pub fn last_etag(&self) -> Option<&str> {
        self.last.as_ref().map(|seen| seen.etag.as_str())
    }

    async fn pass(&mut self, running: &Running) -> Result<Pass, FetchError> {
        if self
            .last
            .as_ref()
            .and_then(|last| last.turned_down_for)
            .is_some_and(|sha256| sha256 != running.sha256)
        {
            self.last = None;
        }
        // After a rejection or a "not ready", a plain HEAD: its metadata may have been put
        // right in place, which keeps the ETag (a conditional HEAD would answer 304).
        let watching = self.last.as_ref().is_some_and(|last| last.watch_sidecars);
        let condition = if watching { None } else { self.last_etag() };
        let head = match self.head(&self.config.key, condition).await {
            Ok(head) => head,
            Err(Failure::NotModified) => return self.unchanged().await,
            Err(Failure::NotFound) => return Err(self.not_found().await),
            Err(Failure::PreconditionFailed) => return Ok(Pass::Raced),
            Err(Failure::Fetch(err)) => return Err(hint_listing(err)),
        };
        let etag = head
            .e_tag()
            .filter(|etag| !etag.is_empty())
            .ok_or_else(|| FetchError::invalid(&self.origin, "the object has no ETag"))?
            .to_owned();
        let modified = head.last_modified().map(|t| t.to_string());
        if self
            .last
            .as_ref()
            .is_some_and(|last| last.etag == etag && (!watching || last.modified == modified))
        {
            // The same object (or a store that ignores If-None-Match: one HEAD later).
            return self.unchanged().await;
        }

        let head_size = self.size(head.content_length())?;

        // Any other version is offered; the core refuses a downgrade.
        let version = self.claimed_version(&head)?;
        if let (Some(candidate), Some(current)) = (&version, &running.version) {
            if candidate == current {
                tracing::debug!(origin = %self.origin, %etag, %candidate,
                    "s3 object has the running version; not offered");
                self.remember(etag, modified, Vec::new(), false, Some(running.sha256));
                return Ok(Pass::Done(None));
            }
        }

        let mut sidecars = Vec::new();
        // The store's own digest of the object may say it is the running binary; a sidecar may
        // not (it may still describe the previous upload): the core hashes what it downloads.
        let object_sha256 = full_object_sha256(&head, &etag);
        if object_sha256 == Some(running.sha256) {
            tracing::debug!(origin = %self.origin, %etag, "s3 object is the running binary; not offered");
            self.remember(etag, modified, Vec::new(), false, Some(running.sha256));
            return Ok(Pass::Done(None));
        }
        let (sha256, checksum_from) = match object_sha256 {
            Some(digest) => (Some(digest), "object checksum"),
            None => match self.sidecar_sha256(&head, &etag, &mut sidecars).await? {
                Some(digest) => (Some(digest), "sidecar"),
                None => (None, "none"),
            },
        };
        let signature = self.signature(&mut sidecars).await?;

        let Some(object) = self.open(&head, &etag).await? else {
            return Ok(Pass::Raced);
        };
        let size = match (head_size, self.size(object.content_length())?) {
            (Some(before), Some(now)) if before != now => return Ok(Pass::Raced),
            (before, now) => now.or(before),
        };

        tracing::info!(origin = %self.origin, %etag, size = size.map(|s| s.to_string()),
            version = version.as_ref().map(|v| v.to_string()),
            sha256_from = checksum_from,
            signed = signature.is_some(),
            "s3 object offered");
        let mut artifact =
            Artifact::new(self.origin.clone(), object.body.into_async_read()).with_id(etag.clone());
        if let Some(size) = size {
            artifact = artifact.with_size(size);
        }
        if let Some(version) = version {
            artifact = artifact.with_version(version);
        }
        if let Some(sha256) = sha256 {
            artifact = artifact.with_sha256(sha256);
        }
        if let Some(signature) = signature {
            artifact = artifact.with_signature(signature);
        }
        self.pending = Some(Seen {
            etag,
            modified,
            turned_down_for: Some(running.sha256),
            sidecars,
            watch_sidecars: false,
        });
        Ok(Pass::Done(Some(artifact)))
    }

    /// The body of exactly the object the HEAD described; `None` when it was replaced since.
    async fn open(
        &self,
        head: &HeadObjectOutput,
        etag: &str,
    ) -> Result<Option<GetObjectOutput>, FetchError> {
        let sent = self
            .client
            .get_object()
            .bucket(&self.config.bucket)
            .key(&self.config.key)
            .if_match(etag)
            .set_version_id(head.version_id().map(str::to_owned))
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await;
        match sent.map_err(|e| classify(&self.origin, e)) {
            Ok(object) => Ok(Some(object)),
            Err(Failure::PreconditionFailed | Failure::NotFound) => Ok(None),
            Err(Failure::NotModified) => Err(FetchError::invalid(
                &self.origin,
                "304 to a GET without If-None-Match",
            )),
            Err(Failure::Fetch(err)) => Err(err),
        }
    }

    /// The object still has the last settled ETag. After a rejection or a "not ready", a
    /// sidecar that appeared, changed or vanished makes the object worth another look.
    async fn unchanged(&mut self) -> Result<Pass, FetchError> {
        let Some(last) = self.last.clone() else {
            return Ok(Pass::Done(None));
        };
        if last.watch_sidecars {
            for (key, etag) in &last.sidecars {
                let now = match self.head(key, None).await {
                    Ok(head) => Some(head.e_tag().unwrap_or_default().to_owned()),
                    Err(Failure::NotFound) => None,
                    Err(Failure::Fetch(err)) => return Err(err),
                    Err(_) => continue,
                };
                if &now != etag {
                    tracing::info!(origin = %self.origin, sidecar = %key,
                        "sidecar changed since the candidate was settled; looking again");
                    self.last = None;
                    return Ok(Pass::Raced);
                }
            }
        }
        tracing::debug!(origin = %self.origin, etag = %last.etag, "s3 object unchanged");
        Ok(Pass::Done(None))
    }

    async fn head(
        &self,
        key: &str,
        if_none_match: Option<&str>,
    ) -> Result<HeadObjectOutput, Failure> {
        self.client
            .head_object()
            .bucket(&self.config.bucket)
            .key(key)
            .set_if_none_match(if_none_match.map(str::to_owned))
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .map_err(|e| classify(&format!("s3://{}/{key}", self.config.bucket), e))
    }

    /// The announced size (the core applies its `max_size`).
    fn size(&self, content_length: Option<i64>) -> Result<Option<u64>, FetchError> {
        content_length
            .map(|len| {
                u64::try_from(len)
                    .map_err(|_| FetchError::invalid(&self.origin, format!("Content-Length {len}")))
            })
            .transpose()
    }

    /// A 404 to HEAD has no body to say whether the key or the bucket is missing: ask. A
    /// missing key is nothing published yet; a missing bucket is a configuration error.
    async fn not_found(&self) -> FetchError {
        let bucket = self
            .client
            .head_bucket()
            .bucket(&self.config.bucket)
            .send()
            .await;
        let bucket_missing = bucket
            .as_ref()
            .err()
            .and_then(|e| e.raw_response())
            .is_some_and(|r| r.status().as_u16() == 404);
        if bucket_missing {
            FetchError::refused(&self.origin, "no such bucket")
        } else {
            FetchError::not_published(&self.origin, "no such key")
        }
    }

    fn claimed_version(&self, head: &HeadObjectOutput) -> Result<Option<Version>, FetchError> {
        let wanted = self.config.version_metadata_key.trim();
        let wanted = strip_prefix_ignore_case(wanted, "x-amz-meta-").unwrap_or(wanted);
        let Some(text) = head.metadata().and_then(|meta| {
            meta.iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(wanted))
                .map(|(_, value)| value)
        }) else {
            return Ok(None);
        };
        parse_version(text).map(Some).ok_or_else(|| {
            FetchError::invalid(
                &self.origin,
                format!("metadata {wanted}={text:?} is not a semver version"),
            )
        })
    }

    fn remember(
        &mut self,
        etag: String,
        modified: Option<String>,
        sidecars: Vec<(String, Option<String>)>,
        watch_sidecars: bool,
        turned_down_for: Option<Sha256>,
    ) {
        self.last = Some(Seen {
            etag,
            modified,
            turned_down_for,
            sidecars,
            watch_sidecars,
        });
    }
}

#[async_trait]
impl Fetcher for S3Fetcher {
    fn name(&self) -> &str {
        "s3"
    }

    async fn fetch(&mut self, running: &Running) -> Result<Option<Artifact>, FetchError> {
        for _ in 0..RACE_RETRIES {
            match self.pass(running).await? {
                Pass::Done(artifact) => return Ok(artifact),
                Pass::Raced => continue,
            }
        }
        tracing::info!(origin = %self.origin, "s3 object kept changing while being read; trying at the next poll");
        Ok(None)
    }

    fn settled(&mut self, id: &str, settlement: Settlement) {
        // Installed: nothing more to watch. Rejected or not ready: the same object is offered
        // again once a sidecar appears or changes, or another binary runs.
        let turned_down = settlement != Settlement::Installed;
        match self.pending.take() {
            Some(seen) if seen.etag == id => {
                let against = seen.turned_down_for.filter(|_| turned_down);
                self.remember(
                    seen.etag,
                    seen.modified,
                    seen.sidecars,
                    turned_down,
                    against,
                );
            }
            other => {
                self.pending = other;
                self.remember(id.to_owned(), None, Vec::new(), turned_down, None);
            }
        }
    }

    fn store(&mut self) -> Option<&mut dyn Store> {
        Some(&mut self.store)
    }
}

impl std::fmt::Debug for S3Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Fetcher")
            .field("origin", &self.origin)
            .field("endpoint_url", &self.config.endpoint_url)
            .field("last_etag", &self.last_etag())
            .finish_non_exhaustive()
    }
}

/// `config`'s timeouts, over whatever else (a read timeout) the caller's SDK config sets.
fn timeouts(config: &S3Config, base: Option<&TimeoutConfig>) -> TimeoutConfig {
    let ours = TimeoutConfig::builder()
        .connect_timeout(config.connect_timeout)
        .operation_timeout(config.operation_timeout);
    match base {
        Some(base) => ours.take_unset_from(base.to_builder()).build(),
        None => ours.build(),
    }
}

/// S3 answers 403, not 404, for a missing key when the caller may not list the bucket.
fn hint_listing(err: FetchError) -> FetchError {
    match err {
        FetchError::Refused { origin, message } if message.starts_with("access denied") => {
            FetchError::refused(
                origin,
                format!(
                    "{message} (S3 also answers 403 for a missing key when s3:ListBucket \
                     is not granted)"
                ),
            )
        }
        err => err,
    }
}
