//! The upgrade pipeline, the same for every fetcher: poll, download into a temporary file while
//! hashing, verify the published checksum and signature, refuse downgrades, sanity-run the
//! candidate, ask the user's hook, then hand it to the master, which swaps it in atomically,
//! hands over and watches the new worker through a probation window.
//!
//! A refused candidate never touches the running worker or the live binary.

mod sanity;
mod stage;
pub(crate) mod swap;
pub(crate) mod verify;

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use handover_fetcher::{Artifact, Fetcher, Running, Settlement};
use tokio::sync::{oneshot, Notify};
use tracing::Instrument;

pub(crate) use sanity::answer as answer_check;

use crate::config::{Sanity, UpgradeConfig};
use crate::master::{Event, MasterHandle};

/// A checked candidate, waiting beside the live binary to be swapped in.
#[derive(Debug)]
pub(crate) struct Staged {
    pub(crate) path: PathBuf,
    pub(crate) sha256: [u8; 32],
    pub(crate) origin: String,
    pub(crate) version: Option<semver::Version>,
}

/// How the master finished with a staged candidate.
#[derive(Debug)]
pub(crate) enum InstallOutcome {
    Installed,
    Staged,
    RolledBack(String),
    Failed(String),
}

/// Why a candidate was not installed.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The same candidate would be refused again: settle it, do not retry.
    Permanent(String),
    /// Something outside the candidate failed (network, disk): retry with back-off.
    Transient(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Permanent(why) | Refusal::Transient(why) => f.write_str(why),
        }
    }
}

/// Device, inode, size and mtime: changes whenever the file at a path does.
type FileKey = (u64, u64, u64, i64, i64);

/// Hashes of the live binary, cached by [`FileKey`].
#[derive(Debug, Default)]
pub(crate) struct HashCache {
    entry: Option<(FileKey, [u8; 32])>,
}

impl HashCache {
    pub(crate) fn digest(&mut self, path: &Path) -> std::io::Result<[u8; 32]> {
        let meta = std::fs::metadata(path)?;
        let key = (
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec(),
        );
        if let Some((cached, digest)) = self.entry {
            if cached == key {
                return Ok(digest);
            }
        }
        let digest = sha256_file(path)?;
        self.entry = Some((key, digest));
        Ok(digest)
    }

    pub(crate) fn hex(&mut self, path: &Path) -> std::io::Result<String> {
        self.digest(path).map(hex::encode)
    }

    pub(crate) fn forget(&mut self) {
        self.entry = None;
    }
}

/// SHA-256 of a file.
pub(crate) fn sha256_file(path: &Path) -> std::io::Result<[u8; 32]> {
    use sha2::Digest;
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.finalize().into())
}

/// The polling task: asks the fetcher on the configured cadence and drives candidates through
/// the pipeline, one at a time.
pub(crate) struct Updater {
    fetcher: Box<dyn Fetcher>,
    config: UpgradeConfig,
    live: PathBuf,
    quarantine: HashSet<[u8; 32]>,
    hashes: HashCache,
    check_now: Arc<Notify>,
}

impl Updater {
    /// `check_now` wakes the poller at once (`handover upgrade`).
    pub(crate) fn new(
        fetcher: Box<dyn Fetcher>,
        config: UpgradeConfig,
        live: PathBuf,
        check_now: Arc<Notify>,
    ) -> Self {
        Self {
            fetcher,
            config,
            live,
            quarantine: HashSet::new(),
            hashes: HashCache::default(),
            check_now,
        }
    }

    pub(crate) async fn run(mut self, master: MasterHandle, mut version: Option<semver::Version>) {
        let wake = self.fetcher.wake().unwrap_or_default();
        let mut failures: u32 = 0;
        let mut wait = Duration::ZERO;
        tracing::info!(fetcher = self.fetcher.name(), interval = ?self.config.interval, "watching for upgrades");
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = wake.notified() => {}
                _ = self.check_now.notified() => {}
            }
            wait = with_jitter(self.config.interval, self.config.jitter);
            let sha256 = match self.hashes.digest(&self.live) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(binary = %self.live.display(), error = %e, "cannot read the live binary; upgrades paused");
                    continue;
                }
            };
            let running = Running::new(sha256, version.clone());
            let artifact = match self.fetcher.fetch(&running).await {
                Ok(Some(artifact)) => artifact,
                Ok(None) => {
                    failures = 0;
                    continue;
                }
                Err(error) => {
                    failures += 1;
                    wait = backoff(self.config.interval, failures, self.config.max_backoff)
                        .max(error.retry_after().unwrap_or_default());
                    tracing::warn!(fetcher = self.fetcher.name(), %error, retry_in = ?wait, "fetch failed; still serving the running version");
                    continue;
                }
            };
            failures = 0;
            let id = artifact.id().map(str::to_string);
            let span = tracing::info_span!("upgrade", origin = %artifact.origin(), version = ?artifact.claimed_version().map(|v| v.to_string()));
            let kept = describe_running(&running);
            let outcome = self
                .attempt(artifact, &running, &master)
                .instrument(span.clone())
                .await;
            let _enter = span.enter();
            let settlement = match outcome {
                Attempt::Installed(new_version) => {
                    if new_version.is_some() {
                        version = new_version;
                    }
                    Some(Settlement::Installed)
                }
                Attempt::Unchanged => Some(Settlement::Rejected),
                Attempt::Refused {
                    origin,
                    refusal: Refusal::Permanent(reason),
                    sha256,
                } => {
                    tracing::error!("rejected {origin}: {reason}; still serving {kept}");
                    if let Some(digest) = sha256 {
                        self.quarantine.insert(digest);
                    }
                    Some(Settlement::Rejected)
                }
                Attempt::Refused {
                    origin,
                    refusal: Refusal::Transient(reason),
                    ..
                } => {
                    failures += 1;
                    wait = backoff(self.config.interval, failures, self.config.max_backoff);
                    tracing::warn!(retry_in = ?wait, "could not take {origin}: {reason}; still serving {kept}");
                    None
                }
            };
            if let (Some(id), Some(settlement)) = (id, settlement) {
                self.fetcher.settled(&id, settlement);
            }
        }
    }

    async fn attempt(
        &mut self,
        mut artifact: Artifact,
        running: &Running,
        master: &MasterHandle,
    ) -> Attempt {
        let origin = artifact.origin().to_string();
        let refused = |refusal, sha256| Attempt::Refused {
            origin: origin.clone(),
            refusal,
            sha256,
        };
        if self.config.refuse_shared_directory {
            if let Err(why) = verify::directory_is_private(&self.live) {
                return refused(Refusal::Permanent(why), None);
            }
        }
        let download = match stage::download(&mut artifact, &self.live, self.config.max_size).await
        {
            Ok(d) => d,
            Err(refusal) => return refused(refusal, None),
        };
        let sha256 = download.sha256;
        let hex = hex::encode(sha256);
        tracing::info!(path = %download.path.display(), size = download.size, sha256 = %&hex[..12], "downloaded candidate");
        if sha256 == running.sha256 {
            tracing::info!(sha256 = %&hex[..12], "candidate is identical to the running binary; nothing to do");
            swap::discard(&download.path);
            return Attempt::Unchanged;
        }
        let claims = Claims {
            sha256: artifact.claimed_sha256().copied(),
            signature: artifact.signature().map(<[u8]>::to_vec),
            version: artifact.claimed_version().cloned(),
        };
        drop(artifact);
        let checked = self.check(claims, &download, running).await;
        let version = match checked {
            Ok(version) => version,
            Err(refusal) => {
                swap::discard(&download.path);
                return refused(refusal, Some(sha256));
            }
        };
        tracing::info!(sha256 = %&hex[..12], version = ?version.as_ref().map(|v| v.to_string()), "candidate passed every check; installing");
        let (reply, outcome) = oneshot::channel();
        let staged = Staged {
            path: download.path.clone(),
            sha256,
            origin: origin.clone(),
            version: version.clone(),
        };
        if master
            .events()
            .send(Event::Install { staged, reply })
            .is_err()
        {
            swap::discard(&download.path);
            return refused(Refusal::Transient("the master is gone".into()), None);
        }
        match outcome.await {
            Ok(InstallOutcome::Installed) => {
                tracing::info!(sha256 = %&hex[..12], "upgrade installed and serving");
                Attempt::Installed(version)
            }
            Ok(InstallOutcome::Staged) => {
                tracing::info!(sha256 = %&hex[..12], "upgrade staged; the next restart runs it");
                Attempt::Installed(version)
            }
            Ok(InstallOutcome::RolledBack(why)) => refused(
                Refusal::Permanent(format!("rolled back: {why}")),
                Some(sha256),
            ),
            Ok(InstallOutcome::Failed(why)) => refused(Refusal::Transient(why), None),
            Err(_) => refused(Refusal::Transient("the master stopped".into()), None),
        }
    }

    /// Every check that does not need the master; returns the candidate's version.
    async fn check(
        &mut self,
        claims: Claims,
        download: &stage::Download,
        running: &Running,
    ) -> Result<Option<semver::Version>, Refusal> {
        let hex = hex::encode(download.sha256);
        if self.quarantine.contains(&download.sha256) {
            return Err(Refusal::Permanent(format!(
                "sha256 {} was rolled back or rejected before (quarantined)",
                &hex[..12]
            )));
        }
        verify::checksum(
            claims.sha256.as_ref(),
            &download.sha256,
            self.config.checksum_required,
        )?;
        verify::elf_intact(&download.path)?;
        verify::signature(
            &self.config.public_keys,
            claims.signature.as_deref(),
            &download.path,
        )?;
        stage::match_live_mode(&download.path, &self.live).map_err(|e| {
            Refusal::Transient(format!(
                "setting mode and owner of {}: {e}",
                download.path.display()
            ))
        })?;
        let answered = match self.config.sanity {
            Sanity::Handover => {
                sanity::check(&download.path, self.config.check_timeout)
                    .await?
                    .version
            }
            Sanity::ExitZero => {
                sanity::exits_zero(
                    &download.path,
                    &self.config.sanity_args,
                    self.config.check_timeout,
                )
                .await?;
                None
            }
            Sanity::None => None,
        };
        let version = answered
            .as_deref()
            .and_then(|v| semver::Version::parse(v).ok())
            .or(claims.version);
        verify::not_a_downgrade(
            version.as_ref(),
            running.version.as_ref(),
            self.config.allow_downgrade,
        )?;
        if let Some(hook) = &self.config.pre_upgrade {
            sanity::pre_upgrade_hook(hook, &download.path, &hex, self.config.check_timeout).await?;
        }
        Ok(version)
    }
}

/// What the source claimed, kept once the byte stream is consumed.
struct Claims {
    sha256: Option<[u8; 32]>,
    signature: Option<Vec<u8>>,
    version: Option<semver::Version>,
}

enum Attempt {
    Installed(Option<semver::Version>),
    Unchanged,
    Refused {
        origin: String,
        refusal: Refusal,
        sha256: Option<[u8; 32]>,
    },
}

fn describe_running(running: &Running) -> String {
    match &running.version {
        Some(v) => format!("version {v}"),
        None => format!("sha256 {}", &hex::encode(running.sha256)[..12]),
    }
}

fn backoff(interval: Duration, failures: u32, max: Duration) -> Duration {
    interval
        .saturating_mul(1u32 << failures.min(16))
        .min(max.max(interval))
}

fn with_jitter(interval: Duration, jitter: f64) -> Duration {
    let mut bytes = [0u8; 4];
    let _ = getrandom::fill(&mut bytes);
    let fraction = f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX);
    interval + interval.mul_f64(jitter * fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(1), 1, s(60)), s(2));
        assert_eq!(backoff(s(1), 3, s(60)), s(8));
        assert_eq!(backoff(s(1), 30, s(60)), s(60));
        let j = with_jitter(s(10), 0.1);
        assert!(j >= s(10) && j <= s(11));
    }
}
