//! A handover fetcher that follows a GitHub repository's releases.
//!
//! Each poll asks the REST API for the latest release (or, with `channel = "all"`, the newest
//! 100, picking the highest semver tag), conditional on the ETag of the last answer that was
//! settled, so an unchanged release list costs a `304 Not Modified` (which GitHub does not count
//! against the rate limit). A release is a candidate when its version (its tag, `v1.2.3` or
//! `1.2.3`) is greater than the running one; drafts never are.
//!
//! The asset is chosen by name from a template (default `{name}-{target}`, with the target
//! triple this program was built for), optionally followed by `.gz`, `.tar.gz`, `.tgz` or
//! `.zip`, or by a glob. Its SHA-256 comes from the asset's `digest` field, or else from a
//! checksum asset of the same release (`<asset>.sha256`, `SHA256SUMS`, `checksums.txt`); a
//! `<asset>.minisig` is passed on for the core to verify.
//!
//! A raw binary is streamed to the core, which hashes it and compares the digest. An archive is
//! downloaded whole, checked against its digest here, and the binary taken out of it (see
//! [`handover_fetcher_http::archive`]); the core then gets the binary and its hash.
//!
//! The REST API is called through [octocrab](https://docs.rs/octocrab), running on this
//! crate's reqwest client (one HTTP and TLS stack), with `base_url` as its base URI and the
//! token sent to that host only. Its answers are taken raw, so the poll sees the 304, the
//! `ETag`, the `x-ratelimit-*` and `retry-after` headers itself, and parsed into octocrab's
//! models (`octocrab::models::repos::Release` and `Asset`, whose `digest` is the SHA-256).
//! An asset is asked for at its API URL through octocrab (`Accept: application/octet-stream`);
//! the redirect to the storage host is followed with the plain client and never carries the
//! token (GitHub's storage answers 400 to a forwarded `Authorization` header).
//!
//! ```no_run
//! use handover_fetcher::{Fetcher, Running, Version};
//! use handover_fetcher_github::{GithubConfig, GithubFetcher};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // Assets named like `app-x86_64-unknown-linux-gnu.tar.gz`, holding a binary named `app`.
//! let mut fetcher = GithubFetcher::new(GithubConfig::new("acme/app"))?;
//! let running = Running::new([0; 32], Some(Version::new(1, 4, 2)));
//! if let Some(artifact) = fetcher.fetch(&running).await? {
//!     println!("{} offers {:?}", artifact.origin(), artifact.claimed_version());
//! }
//! # Ok(()) }
//! ```

use std::fmt;
use std::io::Cursor;

use handover_fetcher::{
    async_trait, find_in_checksum_file, parse_sha256, Artifact, FetchError, Fetcher, Running,
    Settlement, Sha256, Version,
};
use handover_fetcher_http::archive;
use handover_fetcher_http::net;

mod api;
mod asset;
mod config;
mod error;
mod release;

pub use config::{Channel, GithubConfig, BUILD_TARGET, DEFAULT_BASE_URL};
pub use error::Error;

use api::{Answer, Api};
use asset::Vars;
use release::{Asset, Release};

/// The largest checksum asset read.
const MAX_CHECKSUM_FILE: u64 = 1 << 20;
/// The largest signature asset read.
const MAX_SIGNATURE: u64 = 64 << 10;

/// Follows one repository's releases. See the [crate docs](crate).
pub struct GithubFetcher {
    config: GithubConfig,
    repo: String,
    name: String,
    target: String,
    api: Api,
    /// The ETag of the last settled (or not newer) answer, and the running version it was
    /// judged against: a different running version makes the next poll unconditional.
    remembered: Option<(String, Option<Version>)>,
    /// The candidate last offered: its id, the ETag of its answer, the running version.
    offered: Option<(String, Option<String>, Option<Version>)>,
}

impl fmt::Debug for GithubFetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GithubFetcher")
            .field("repo", &self.repo)
            .field("base_url", &self.config.base_url)
            .field("channel", &self.config.channel)
            .field("target", &self.target)
            .field("token", &self.api.has_token().then_some("<redacted>"))
            .field("etag", &self.remembered.as_ref().map(|(etag, _)| etag))
            .finish_non_exhaustive()
    }
}

impl GithubFetcher {
    /// Checks `config`, takes the token from `GITHUB_TOKEN` when the config has none, and
    /// builds the HTTP client.
    pub fn new(config: GithubConfig) -> Result<Self, Error> {
        config.validate()?;
        let base = net::check_url("base_url", &config.base_url, config.allow_insecure_loopback)?;
        let token = config.token.clone().or_else(|| {
            std::env::var("GITHUB_TOKEN")
                .ok()
                .filter(|t| !t.trim().is_empty())
        });
        let mut options = net::ClientOptions::new(config.connect_timeout, config.timeout);
        options.allow_insecure_loopback = config.allow_insecure_loopback;
        // Redirects are followed by `Api`, which decides where the token goes; octocrab runs on
        // this client (one HTTP and TLS stack).
        options.follow_redirects = false;
        let client = net::client(&options)?;
        Ok(Self {
            repo: config.repo.clone(),
            name: config.program_name()?.to_string(),
            target: config.target_triple().to_string(),
            api: Api::new(
                client,
                base,
                token.as_deref().map(str::trim),
                config.allow_insecure_loopback,
            )?,
            config,
            remembered: None,
            offered: None,
        })
    }

    /// The configuration this fetcher was built from.
    pub fn config(&self) -> &GithubConfig {
        &self.config
    }

    /// The releases to choose from, or `None` when unchanged since the remembered ETag.
    async fn releases(
        &mut self,
        etag: Option<&str>,
    ) -> Result<Option<(Vec<Release>, Option<String>)>, FetchError> {
        let answer = match self.config.channel {
            Channel::Latest => {
                let url = self
                    .api
                    .endpoint(&format!("repos/{}/releases/latest", self.repo));
                match self.api.get_json::<Release>(url.clone(), etag).await? {
                    Answer::NotModified => Answer::NotModified,
                    Answer::Fresh { body, etag } => {
                        if release::tag_version(&body.tag_name).is_none() {
                            return Err(FetchError::invalid(
                                url.as_str(),
                                format!(
                                    "the latest release's tag {:?} is not a semver version \
                                     (v1.2.3 or 1.2.3)",
                                    body.tag_name
                                ),
                            ));
                        }
                        Answer::Fresh {
                            body: vec![body],
                            etag,
                        }
                    }
                }
            }
            Channel::All => {
                let url = self
                    .api
                    .endpoint(&format!("repos/{}/releases?per_page=100", self.repo));
                self.api.get_json::<Vec<Release>>(url, etag).await?
            }
        };
        Ok(match answer {
            Answer::NotModified => None,
            Answer::Fresh { body, etag } => Some((body, etag)),
        })
    }

    fn remember(&mut self, etag: Option<String>, running: &Running) {
        if let Some(etag) = etag {
            self.remembered = Some((etag, running.version.clone()));
        }
    }

    /// Whether `version` should be offered to something running `running`.
    fn is_candidate(&self, version: &Version, running: &Running) -> bool {
        match &running.version {
            None => true,
            Some(current) if version > current => true,
            Some(current) if version < current && self.config.allow_downgrade => {
                tracing::info!(%version, running = %current, "offering a downgrade");
                true
            }
            Some(current) => {
                if version < current {
                    tracing::debug!(%version, running = %current, "release is older; no downgrade");
                }
                false
            }
        }
    }

    /// The asset's published SHA-256: its `digest`, else an entry in a checksum asset.
    async fn published_sha256(
        &mut self,
        release: &Release,
        asset: &Asset,
    ) -> Result<Option<Sha256>, FetchError> {
        if let Some(digest) = asset
            .digest
            .as_deref()
            .filter(|d| d.starts_with("sha256:"))
            .and_then(parse_sha256)
        {
            return Ok(Some(digest));
        }
        for sums in asset::checksum_assets(release, &asset.name) {
            let response = self.api.download(sums, MAX_CHECKSUM_FILE).await?;
            let text = net::read_limited(response, MAX_CHECKSUM_FILE, sums.url.as_str()).await?;
            if let Some(digest) =
                find_in_checksum_file(&String::from_utf8_lossy(&text), &asset.name)
            {
                tracing::debug!(asset = %asset.name, from = %sums.name, "SHA-256 from checksums");
                return Ok(Some(digest));
            }
        }
        Ok(None)
    }
}

#[async_trait]
impl Fetcher for GithubFetcher {
    fn name(&self) -> &str {
        "github"
    }

    async fn fetch(&mut self, running: &Running) -> Result<Option<Artifact>, FetchError> {
        let etag = self
            .remembered
            .as_ref()
            .filter(|(_, judged_against)| *judged_against == running.version)
            .map(|(etag, _)| etag.clone());
        let Some((releases, etag)) = self.releases(etag.as_deref()).await? else {
            tracing::debug!(repo = %self.repo, "releases not modified");
            return Ok(None);
        };
        let Some((release, version)) = release::pick(releases, self.config.prerelease) else {
            tracing::debug!(repo = %self.repo, "no release to consider");
            self.remember(etag, running);
            return Ok(None);
        };
        if !self.is_candidate(&version, running) {
            self.remember(etag, running);
            return Ok(None);
        }

        let (repo, tag) = (self.repo.clone(), release.tag_name.clone());
        let origin_of = move |name: &str| format!("github:{repo}@{tag}/{name}");
        let vars = Vars {
            name: &self.name,
            version: &version,
            tag: &release.tag_name,
            target: &self.target,
        };
        let (asset, format) = asset::select(
            &release,
            &self.config.asset,
            self.config.asset_pattern.as_deref(),
            &vars,
        )
        .map_err(|message| FetchError::invalid(origin_of(""), message))?;
        let binary = vars.expand(&self.config.binary);
        let origin = origin_of(&asset.name);
        // GitHub's sizes are signed; a negative one says nothing.
        let size = u64::try_from(asset.size).ok();
        net::check_size(&origin, size, self.config.max_size)?;

        let published = self.published_sha256(&release, asset).await?;
        if published.is_none() && self.config.checksum_required {
            return Err(FetchError::invalid(
                origin,
                format!(
                    "release {} publishes no SHA-256 for {}: no digest, and no entry in {}.sha256, \
                     SHA256SUMS or checksums.txt (checksum_required is true)",
                    release.tag_name, asset.name, asset.name
                ),
            ));
        }
        if !format.is_packed() && published == Some(running.sha256) {
            tracing::debug!(%origin, "the release's binary is the running one");
            self.remember(etag, running);
            return Ok(None);
        }
        let signature = match asset::signature_asset(&release, &asset.name, format) {
            Some(sig) => {
                let response = self.api.download(sig, MAX_SIGNATURE).await?;
                Some(net::read_limited(response, MAX_SIGNATURE, &origin_of(&sig.name)).await?)
            }
            None => None,
        };

        let response = self.api.download(asset, self.config.max_size).await?;
        let mut artifact = if format.is_packed() {
            let bytes = net::read_limited(response, self.config.max_size, &origin).await?;
            let max_size = self.config.max_size;
            let task = tokio::task::spawn_blocking(move || {
                archive::verify_and_extract(&bytes, format, &binary, max_size, published)
            });
            let (content, digest) = match task.await {
                Ok(Ok(unpacked)) => unpacked,
                Ok(Err(e)) => return Err(FetchError::invalid(origin, e)),
                Err(e) => return Err(FetchError::io(origin, std::io::Error::other(e))),
            };
            let size = content.len() as u64;
            Artifact::new(origin.clone(), Cursor::new(content))
                .with_size(size)
                .with_sha256(digest)
        } else {
            let reader = net::into_reader(response, self.config.max_size);
            let mut artifact = Artifact::new(origin.clone(), reader);
            if let Some(size) = size {
                artifact = artifact.with_size(size);
            }
            match published {
                Some(digest) => artifact.with_sha256(digest),
                None => artifact,
            }
        };
        if let Some(signature) = signature {
            artifact = artifact.with_signature(signature);
        }
        let id = format!(
            "release:{}:asset:{}:{}",
            release.id, asset.id, release.tag_name
        );
        let size = artifact.claimed_size();
        tracing::info!(%origin, %version, ?size, "offering a new release");
        self.offered = Some((id.clone(), etag, running.version.clone()));
        Ok(Some(artifact.with_version(version).with_id(id)))
    }

    fn settled(&mut self, id: &str, settlement: Settlement) {
        match self.offered.take() {
            Some((offered, etag, judged_against)) if offered == id => {
                tracing::debug!(repo = %self.repo, ?settlement, "settled");
                if let Some(etag) = etag {
                    self.remembered = Some((etag, judged_against));
                }
            }
            other => self.offered = other,
        }
    }
}
