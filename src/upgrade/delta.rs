//! Delta updates on the host: before downloading a release whose SHA-256 is known (named by
//! the rollout manifest, or claimed by the fetcher), look in the release store for a patch
//! from the binary that runs here ([`crate::rollout::delta`]). A patch that is there is
//! applied to the live binary, and what it makes is taken only if its full SHA-256 is the
//! release's and, with `upgrade.public_keys`, the patch's signature and the release's verify.
//! The result then goes through every check a download goes through. Any failure falls back
//! to downloading the whole release.

use handover_fetcher::{Artifact, Running};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::stage::Download;
use super::{swap, verify, Pipeline};
use crate::digest::short;
use crate::rollout::delta;

/// What a patch saved: its size, and the size of the binary it made.
#[derive(Debug, Clone, Copy)]
pub(super) struct Saved {
    pub(super) patch: u64,
    pub(super) binary: u64,
}

impl Saved {
    /// Logs that the release was installed from the patch.
    pub(super) fn log(&self) {
        tracing::info!(
            "installed from a delta patch ({} bytes instead of {})",
            self.patch,
            self.binary
        );
    }
}

/// What a patch must make: what the fetcher claims of the release it offers.
pub(super) struct Wanted {
    sha256: [u8; 32],
    size: Option<u64>,
    signature: Option<Vec<u8>>,
}

impl Wanted {
    /// The release `artifact` offers, when a patch can stand for it: a binary (not an
    /// archive) whose SHA-256 is known.
    pub(super) fn of(artifact: &Artifact) -> Option<Self> {
        if artifact.archive().is_some() {
            return None;
        }
        Some(Self {
            sha256: *artifact.claimed_sha256()?,
            size: artifact.claimed_size(),
            signature: artifact.signature().map(<[u8]>::to_vec),
        })
    }
}

impl Pipeline {
    /// The release `wanted`, made from a patch against the running binary, when the store has
    /// a usable one; `None` (with a warning when a patch was there but unusable): download the
    /// whole release.
    pub(super) async fn patched(
        &mut self,
        wanted: Option<Wanted>,
        running: &Running,
    ) -> Option<(Download, Saved)> {
        if !cfg!(feature = "delta") {
            return None;
        }
        let wanted = wanted?;
        let target = wanted.sha256;
        if target == running.sha256 {
            return None;
        }
        let (from, to) = (hex::encode(running.sha256), hex::encode(target));
        let store = self.fetcher.as_mut()?.store()?;
        let name = delta::patch_name(&from, &to);
        let location = store.locate(&name);
        let fetched = match store.get(&name).await {
            Ok(None) => return None,
            Ok(Some(patch)) => match store.get(&delta::signature_name(&from, &to)).await {
                Ok(signature) => Ok((patch, signature)),
                Err(e) => Err(format!("reading its signature: {e}")),
            },
            // S3 answers 403 for a missing key to a reader that may not list the bucket.
            Err(e @ handover_fetcher::FetchError::Refused { .. }) => {
                tracing::debug!(patch = %location, error = %e, "no delta patch to read");
                return None;
            }
            Err(e) => Err(e.to_string()),
        };
        let made = match fetched {
            Ok((patch, signature)) => self.apply(&wanted, &patch, signature.as_deref()).await,
            Err(e) => Err(e),
        };
        match made {
            Ok(made) => {
                tracing::info!(patch = %location, size = made.1.binary, sha256 = %short(&to), "candidate made from a delta patch ({} bytes)", made.1.patch);
                Some(made)
            }
            Err(reason) => {
                tracing::warn!(
                    patch = %location,
                    "delta patch unusable: {reason}; downloading the whole release"
                );
                None
            }
        }
    }

    /// Checks the patch, applies it to the live binary, checks the result and writes it beside
    /// the live binary, as a download would be.
    async fn apply(
        &self,
        wanted: &Wanted,
        patch: &[u8],
        patch_signature: Option<&[u8]>,
    ) -> Result<(Download, Saved), String> {
        let keys = &self.config.public_keys;
        // The signature of the patch first: zstd only ever reads a patch the publisher signed.
        verify::signature_of_bytes(keys, patch_signature, patch)
            .map_err(|e| format!("the patch's signature: {e}"))?;
        let live = &self.live;
        let old = tokio::fs::read(live)
            .await
            .map_err(|e| format!("reading {}: {e}", live.display()))?;
        let max_size = self.config.max_size;
        let owned = patch.to_vec();
        let (old, made) = tokio::task::spawn_blocking(move || {
            let made = delta::apply_patch(&old, &owned, max_size);
            (old, made)
        })
        .await
        .map_err(|e| format!("applying the patch: {e}"))?;
        let new = made.map_err(|e| e.to_string())?;
        drop(old);
        let sha256: [u8; 32] = Sha256::digest(&new).into();
        if sha256 != wanted.sha256 {
            return Err(format!(
                "it makes sha256 {}, not the release's {}",
                hex::encode(sha256),
                hex::encode(wanted.sha256)
            ));
        }
        if let Some(claimed) = wanted.size {
            if claimed != new.len() as u64 {
                return Err(format!(
                    "it makes {} bytes, the release has {claimed}",
                    new.len()
                ));
            }
        }
        verify::signature_of_bytes(keys, wanted.signature.as_deref(), &new)
            .map_err(|e| format!("the release's signature over the patched binary: {e}"))?;
        let path = swap::temp_path(live);
        if let Err(e) = write_new(&path, &new).await {
            swap::discard(&path);
            return Err(format!("writing {}: {e}", path.display()));
        }
        let saved = Saved {
            patch: patch.len() as u64,
            binary: new.len() as u64,
        };
        let download = Download {
            path,
            sha256,
            size: saved.binary,
        };
        Ok((download, saved))
    }
}

/// Writes a candidate as [`super::stage`] writes a download: a new private file, fsynced.
async fn write_new(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await?;
    file.write_all(bytes).await?;
    file.flush().await?;
    file.sync_all().await
}
