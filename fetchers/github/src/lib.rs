//! A handover fetcher that follows a GitHub repository's releases.
//!
//! Each poll asks the REST API for the latest release (or, with `channel = "all"`, the newest
//! 100, picking the highest semver tag), conditional on the ETag of the last answer that was
//! settled, so an unchanged release list costs a `304 Not Modified` (which GitHub does not count
//! against the rate limit). The newest release (its tag, `v1.2.3` or `1.2.3`, is its version;
//! drafts never count) is offered whenever its version differs from the running one, with that
//! version: whether an older one may be installed is the core's `[upgrade]` policy, as are
//! whether a checksum or signature is required and the size limit. A repository without a
//! release, or a release without an asset for this machine (yet), is
//! [`FetchError::NotPublished`].
//!
//! The asset is chosen by name from a template (default `{name}-{target}`, with the target
//! triple this program was built for), optionally followed by `.gz`, `.tar.gz`, `.tgz` or
//! `.zip`, or by a glob. Its SHA-256 comes from the asset's `digest` field, or else from a
//! checksum asset of the same release (`<asset>.sha256`, `SHA256SUMS`, `checksums.txt`); with
//! neither, it is offered without one. A `<asset>.minisig` is passed on for the core to verify.
//!
//! The asset is streamed to the core as it is, which hashes it and compares the digest. An
//! archive is marked with [`Artifact::with_archive`]: its digest is the archive's, and the core
//! takes the binary (`binary`) out of it. Its signature is `<asset without extension>.minisig`,
//! a signature of the binary inside, which the core verifies after unpacking.
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

use handover_fetcher::{
    async_trait, find_in_checksum_file, parse_sha256, Artifact, FetchError, Fetcher, Running,
    Settlement, Sha256, Store, Version,
};
use handover_fetcher_http::net;

mod api;
mod asset;
mod config;
mod error;
mod release;
mod store;

pub use config::{Channel, GithubConfig, BUILD_TARGET, DEFAULT_BASE_URL};
pub use error::Error;

use api::{Answer, Api};
use asset::{NoAsset, Vars};
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
    /// A staged rollout's manifest (release assets) and reports (`store_url`).
    documents: store::Documents,
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
        let mut documents = store::Documents::default();
        if let Some(url) = &config.store_url {
            let url = net::check_url("store_url", url, config.allow_insecure_loopback)?;
            let mut options = net::ClientOptions::new(config.connect_timeout, config.timeout);
            options.allow_insecure_loopback = config.allow_insecure_loopback;
            documents.reports = Some(handover_fetcher_http::HttpStore::new(
                net::client(&options)?,
                url,
                config.store_token.clone(),
            ));
        }
        Ok(Self {
            documents,
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
        let url = match self.config.channel {
            Channel::Latest => format!("repos/{}/releases/latest", self.repo),
            Channel::All => format!("repos/{}/releases?per_page=100", self.repo),
        };
        let url = self.api.endpoint(&url);
        let answer = match self.config.channel {
            Channel::Latest => match self.api.get_json::<Release>(url.clone(), etag).await? {
                Answer::NotModified => Answer::NotModified,
                Answer::NotFound => Answer::NotFound,
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
            },
            Channel::All => self.api.get_json::<Vec<Release>>(url.clone(), etag).await?,
        };
        match answer {
            Answer::NotModified => Ok(None),
            Answer::Fresh { body, etag } => Ok(Some((body, etag))),
            // GitHub answers 404 to `releases/latest` when there is no published release; the
            // repository itself tells that apart from a wrong name or a token that cannot see.
            Answer::NotFound if self.config.channel == Channel::Latest => {
                let repo = self.api.endpoint(&format!("repos/{}", self.repo));
                if self.api.exists(repo).await? {
                    Err(FetchError::not_published(
                        url.as_str(),
                        "the repository has no published release (drafts and prereleases are \
                         never the latest)",
                    ))
                } else {
                    Err(self.api.not_found(&url))
                }
            }
            Answer::NotFound => Err(self.api.not_found(&url)),
        }
    }

    fn remember(&mut self, etag: Option<String>, running: &Running) {
        if let Some(etag) = etag {
            self.remembered = Some((etag, running.version.clone()));
        }
    }

    /// The asset's published SHA-256: its `digest`, else an entry in a checksum asset, else
    /// none (not an error: whether one is required is the core's policy).
    async fn published_sha256(
        &mut self,
        release: &Release,
        asset: &Asset,
    ) -> Result<Option<Sha256>, FetchError> {
        if let Some(digest) = asset_digest(asset) {
            return Ok(Some(digest));
        }
        for sums in asset::checksum_assets(release, &asset.name) {
            let Some(response) = self.api.download(sums).await? else {
                continue;
            };
            let text = net::read_limited(response, MAX_CHECKSUM_FILE, sums.url.as_str()).await?;
            if let Some(digest) =
                find_in_checksum_file(&String::from_utf8_lossy(&text), &asset.name)
            {
                tracing::debug!(asset = %asset.name, from = %sums.name, "SHA-256 from checksums");
                return Ok(Some(digest));
            }
            tracing::debug!(asset = %asset.name, checksums = %sums.name, "no entry for the asset");
        }
        tracing::debug!(release = %release.tag_name, asset = %asset.name,
            "no SHA-256 published for the asset; offering it without one");
        Ok(None)
    }
}

/// The SHA-256 GitHub computed for an asset (`"digest": "sha256:…"`).
fn asset_digest(asset: &Asset) -> Option<Sha256> {
    asset
        .digest
        .as_deref()
        .filter(|d| d.starts_with("sha256:"))
        .and_then(parse_sha256)
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
        // A manifest read just before, in the same poll, asked already.
        let answer = match self.documents.reuse(etag.as_deref()) {
            Some(answer) => answer,
            None => self.releases(etag.as_deref()).await?,
        };
        let Some((releases, etag)) = answer else {
            tracing::debug!(repo = %self.repo, "releases not modified");
            return Ok(None);
        };
        let Some((release, version)) = release::pick(releases, self.config.prerelease) else {
            self.remember(etag, running);
            let which = if self.config.prerelease {
                "no release with a semver tag (drafts skipped)"
            } else {
                "no release with a semver tag (drafts and prereleases skipped)"
            };
            return Err(FetchError::not_published(
                format!("github:{}", self.repo),
                which,
            ));
        };
        if running.version.as_ref() == Some(&version) {
            tracing::debug!(repo = %self.repo, %version, "the newest release is the running version");
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
        let (asset, format) = match asset::select(
            &release,
            &self.config.asset,
            self.config.asset_pattern.as_deref(),
            &vars,
        ) {
            Ok(found) => found,
            // Assets are uploaded after the release is created: the list changes (and so its
            // ETag) once they are there.
            Err(NoAsset::Missing(message)) => {
                self.remember(etag, running);
                return Err(FetchError::not_published(origin_of(""), message));
            }
            Err(NoAsset::Ambiguous(message)) => {
                return Err(FetchError::invalid(origin_of(""), message))
            }
        };
        let binary = vars.expand(&self.config.binary);
        let origin = origin_of(&asset.name);
        if asset_digest(asset) == Some(running.sha256) {
            tracing::debug!(%origin, "GitHub's digest of the asset is the running binary's");
            self.remember(etag, running);
            return Ok(None);
        }
        // GitHub's sizes are signed; a negative one says nothing.
        let size = u64::try_from(asset.size).ok();

        let published = self.published_sha256(&release, asset).await?;
        let signature = match asset::signature_asset(&release, &asset.name, format) {
            Some(sig) => match self.api.download(sig).await? {
                Some(response) => {
                    Some(net::read_limited(response, MAX_SIGNATURE, &origin_of(&sig.name)).await?)
                }
                None => None,
            },
            None => None,
        };

        let Some(response) = self.api.download(asset).await? else {
            return Err(FetchError::not_published(
                origin,
                "the asset was removed after the release was listed",
            ));
        };
        let mut artifact = Artifact::new(origin.clone(), net::into_reader(response));
        if let Some(size) = size {
            artifact = artifact.with_size(size);
        }
        if let Some(digest) = published {
            artifact = artifact.with_sha256(digest);
        }
        if let Some(signature) = signature {
            artifact = artifact.with_signature(signature);
        }
        if let Some(format) = format {
            artifact = artifact.with_archive(format, binary);
        }
        let id = format!(
            "release:{}:asset:{}:{}",
            release.id, asset.id, release.tag_name
        );
        if let Some(current) = running.version.as_ref().filter(|v| version < **v) {
            tracing::info!(%origin, %version, running = %current,
                "the newest release is older than the running version; the core decides");
        }
        let size = artifact.claimed_size();
        tracing::info!(%origin, %version, ?size, "offering a new release");
        self.offered = Some((id.clone(), etag, running.version.clone()));
        Ok(Some(artifact.with_version(version).with_id(id)))
    }

    fn store(&mut self) -> Option<&mut dyn Store> {
        Some(self)
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

    /// The releases list's ETag, and the version it was judged against (`-`: none).
    fn memory(&self) -> Option<String> {
        let (etag, judged_against) = self.remembered.as_ref()?;
        let version = judged_against.as_ref().map(ToString::to_string);
        Some(format!("{etag}\n{}", version.as_deref().unwrap_or("-")))
    }

    fn restore(&mut self, memory: &str) {
        let Some((etag, version)) = memory.split_once('\n') else {
            return;
        };
        let version = match version {
            "-" => None,
            v => match Version::parse(v) {
                Ok(v) => Some(v),
                Err(_) => return,
            },
        };
        self.remembered = Some((etag.to_string(), version));
    }
}
