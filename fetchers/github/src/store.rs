//! The GitHub fetcher as a rollout [`Store`]: the manifest (`rollout.json`) and its signature
//! are assets of the release the fetcher would offer; the hosts' reports go to `store_url`
//! (the HTTP store protocol), since GitHub has no place a host may write to.
//!
//! Reading the manifest asks for the releases with the ETag of the last answer (a `304`, free
//! with a token), and downloads the asset only when its id or update time changed. The poll
//! that follows within a second reuses that answer instead of asking again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use handover_fetcher::{async_trait, FetchError, Listed, Store};
use handover_fetcher_http::{net, HttpStore};

use crate::release::{self, Release};
use crate::GithubFetcher;

/// The largest manifest or signature asset read.
const MAX_DOCUMENT: u64 = 1 << 20;
/// How long an answer read for the store stands for the fetch that follows it.
const REUSE: Duration = Duration::from_secs(2);

/// What the store keeps between polls.
#[derive(Default)]
pub(crate) struct Documents {
    /// The reports' store (`store_url`).
    pub(crate) reports: Option<HttpStore>,
    /// The releases as last answered, and that answer's ETag.
    releases: Option<(Vec<Release>, Option<String>)>,
    /// When the store last asked, for [`GithubFetcher::fetch`] to reuse the answer.
    pub(crate) asked_at: Option<Instant>,
    /// Asset name → (release id, asset id, update time, bytes).
    held: HashMap<String, (u64, u64, String, Vec<u8>)>,
}

impl Documents {
    /// The releases the store read within [`REUSE`], once: `Some(None)` when they are those of
    /// `etag`.
    #[allow(clippy::type_complexity)]
    pub(crate) fn reuse(
        &mut self,
        etag: Option<&str>,
    ) -> Option<Option<(Vec<Release>, Option<String>)>> {
        let recent = self.asked_at.take()?.elapsed() < REUSE;
        let (releases, tag) = self.releases.clone().filter(|_| recent)?;
        if etag.is_some() && tag.as_deref() == etag {
            Some(None)
        } else {
            Some(Some((releases, tag)))
        }
    }
}

impl GithubFetcher {
    fn reports_store(&mut self, name: &str) -> Result<&mut HttpStore, FetchError> {
        let origin = format!("github:{}/{name}", self.repo);
        self.documents.reports.as_mut().ok_or_else(|| {
            FetchError::refused(
                origin,
                "the release is staged (it has a rollout.json asset), but [github] store_url, \
                 where the hosts' reports go, is not set",
            )
        })
    }

    /// The manifest or its signature: the asset of that name in the release this fetcher
    /// would offer.
    async fn asset_document(&mut self, name: &str) -> Result<Option<Vec<u8>>, FetchError> {
        let etag = self
            .documents
            .releases
            .as_ref()
            .and_then(|(_, etag)| etag.clone());
        match self.releases(etag.as_deref()).await {
            Ok(Some(fresh)) => self.documents.releases = Some(fresh),
            Ok(None) => {}
            Err(e) if e.is_not_published() => {
                self.documents.releases = None;
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
        self.documents.asked_at = Some(Instant::now());
        let releases = self
            .documents
            .releases
            .as_ref()
            .map(|(r, _)| r.clone())
            .unwrap_or_default();
        let Some((release, _)) = release::pick(releases, self.config.prerelease) else {
            return Ok(None);
        };
        let origin = format!("github:{}@{}/{name}", self.repo, release.tag_name);
        let release_id = *release.id;
        // GitHub cannot replace an asset in place: `gh release upload --clobber` deletes it and
        // uploads the new one. A document this release had, missing now, is one being
        // replaced, not a rollout that ended: reading on would take the release unstaged.
        let replacing = || {
            FetchError::unreachable(
                &origin,
                "it was an asset of this release and is not now: a replacement \
                 (`gh release upload --clobber`) is under way; waiting for it (to end a \
                 staged rollout, promote it to 100 %)",
            )
        };
        // Seen here in this release, or (a manifest) its signature is there: the publisher
        // uploads the signature first. A signature may be missing for good (an unsigned
        // manifest), which the core then judges.
        let signature = format!("{name}.minisig");
        let had = self
            .documents
            .held
            .get(name)
            .is_some_and(|(held_release, ..)| *held_release == release_id)
            || (!name.ends_with(".minisig") && release.assets.iter().any(|a| a.name == signature));
        let Some(asset) = release
            .assets
            .iter()
            .find(|a| a.name == name && release::is_uploaded(a))
        else {
            if had {
                return Err(replacing());
            }
            self.documents.held.remove(name);
            return Ok(None);
        };
        let (id, updated) = (*asset.id, asset.updated_at.to_rfc3339());
        if let Some((_, held_id, held_updated, bytes)) = self.documents.held.get(name) {
            if *held_id == id && *held_updated == updated {
                return Ok(Some(bytes.clone()));
            }
        }
        // Listed a moment ago, gone now: deleted for its replacement.
        let Some(response) = self.api.download(asset).await? else {
            return Err(replacing());
        };
        let bytes = net::read_limited(response, MAX_DOCUMENT, &origin).await?;
        self.documents
            .held
            .insert(name.to_string(), (release_id, id, updated, bytes.clone()));
        Ok(Some(bytes))
    }
}

#[async_trait]
impl Store for GithubFetcher {
    fn locate(&self, name: &str) -> String {
        match (&self.documents.reports, name.contains('/')) {
            (Some(reports), true) => reports.locate(name),
            _ => format!("github:{}/releases/{name}", self.repo),
        }
    }

    async fn get(&mut self, name: &str) -> Result<Option<Vec<u8>>, FetchError> {
        if name.contains('/') {
            return self.reports_store(name)?.get(name).await;
        }
        self.asset_document(name).await
    }

    async fn put(&mut self, name: &str, bytes: Vec<u8>) -> Result<(), FetchError> {
        if name.contains('/') {
            return self.reports_store(name)?.put(name, bytes).await;
        }
        Err(FetchError::refused(
            self.locate(name),
            "handover does not write release assets: write the manifest with `--out DIR` and \
             upload it to the release (`gh release upload TAG DIR/rollout.json \
             DIR/rollout.json.minisig --clobber`)",
        ))
    }

    async fn list(&mut self, prefix: &str) -> Result<Vec<Listed>, FetchError> {
        self.reports_store(prefix)?.list(prefix).await
    }
}
