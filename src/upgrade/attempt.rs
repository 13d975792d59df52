//! One candidate through the checks: download, unpack, verify, sanity run, hook, then the
//! swap and the hand-over (in [`super::probation`]).

use handover_fetcher::{Artifact, Running};

use super::stage::{self, Download};
use super::timing::Stages;
use super::{delta, perms, sanity, signed, swap, verify, Pipeline};
use crate::config::Sanity;
use crate::digest::short;
use crate::refusal::Refusal;

/// How one attempt ended.
pub(super) enum Outcome {
    /// Swapped in; a worker of it serves (in probation), or, with `stage_only`, it waits for
    /// the next restart.
    Installed {
        sha256: String,
        version: Option<semver::Version>,
    },
    /// The candidate is the running binary.
    Unchanged,
    /// Refused; `sha256` of the binary when it got that far.
    Refused {
        sha256: Option<String>,
        refusal: Refusal,
    },
}

/// What the source claimed, kept once the byte stream is consumed.
struct Claims {
    sha256: Option<[u8; 32]>,
    signature: Option<Vec<u8>>,
    version: Option<semver::Version>,
    local: bool,
}

/// A checked candidate beside the live binary, ready to be swapped in.
pub(super) struct Checked {
    pub(super) download: Download,
    pub(super) sha256: String,
    /// Its version as far as it can be trusted: signed, or answered by the binary itself;
    /// never an unsigned claim of the fetcher's. This is what raises the floor.
    pub(super) version: Option<semver::Version>,
    pub(super) origin: String,
    /// The master state format it read in its sanity run (see [`crate::master_state`]).
    pub(super) master_state: Option<u32>,
    /// Where the time went so far.
    pub(super) stages: Stages,
}

impl Pipeline {
    pub(super) async fn attempt(
        &mut self,
        mut artifact: Artifact,
        running: &Running,
        span: tracing::Span,
    ) -> Outcome {
        let mut stages = Stages::start();
        let refused = |refusal| Outcome::Refused {
            sha256: None,
            refusal,
        };
        let origin = artifact.origin().to_string();
        if self.config.refuse_shared_directory {
            let watched = std::path::Path::new(&origin);
            let watched = artifact.is_local()
                && watched
                    .parent()
                    .is_some_and(|d| d.as_os_str().is_empty() || d.exists());
            let private = perms::private_path(&self.live, "the live binary").and_then(|()| {
                if watched {
                    perms::private_path(std::path::Path::new(&origin), "the watched file")
                } else {
                    Ok(())
                }
            });
            if let Err(message) = private {
                return refused(Refusal::UnsafeDirectory { message });
            }
        }
        // Cheap refusals first: an older claimed version or a quarantined published digest
        // need no download. The bytes are checked again below.
        if let Err(refusal) = verify::not_a_downgrade(
            artifact.claimed_version(),
            self.floor().as_ref(),
            self.config.allow_downgrade,
        ) {
            return refused(refusal);
        }
        if artifact.archive().is_none() {
            if let Some(claimed) = artifact.claimed_sha256().map(hex::encode) {
                if let Some(q) = self.state.quarantined(&claimed) {
                    return Outcome::Refused {
                        refusal: Refusal::Quarantined {
                            sha256: claimed.clone(),
                            reason: q.reason.clone(),
                        },
                        sha256: Some(claimed),
                    };
                }
            }
        }
        let (download, saved) = match self.patched(delta::Wanted::of(&artifact), running).await {
            Some((download, saved)) => (download, Some(saved)),
            None => match stage::download(
                &mut artifact,
                &self.live,
                self.config.max_size,
                self.config.progress_bar,
            )
            .await
            {
                Ok(d) => {
                    tracing::info!(path = %d.path.display(), size = d.size, sha256 = %short(&hex::encode(d.sha256)), "downloaded candidate");
                    (d, None)
                }
                Err(refusal) => return refused(refusal),
            },
        };
        stages.lap("download");
        let claims = Claims {
            sha256: artifact.claimed_sha256().copied(),
            signature: artifact.signature().map(<[u8]>::to_vec),
            version: artifact.claimed_version().cloned(),
            local: artifact.is_local(),
        };
        let packing = artifact
            .archive()
            .map(|(format, member)| (format, member.to_string()));
        drop(artifact);
        // The published checksum is of what was downloaded: for an archive, the archive.
        let required = self.config.checksum_required.requires(claims.local);
        if let Err(refusal) = verify::checksum(claims.sha256.as_ref(), &download.sha256, required) {
            swap::discard(&download.path);
            return Outcome::Refused {
                sha256: Some(hex::encode(download.sha256)),
                refusal,
            };
        }
        let download = match packing {
            Some((format, member)) => match self.unpack(download, format, &member).await {
                Ok(d) => {
                    stages.lap("unpack");
                    d
                }
                Err(refusal) => return refused(refusal),
            },
            None => download,
        };
        let sha256 = hex::encode(download.sha256);
        span.record("sha256", short(&sha256));
        if download.sha256 == running.sha256 {
            tracing::info!("candidate is identical to the running binary; nothing to do");
            swap::discard(&download.path);
            return Outcome::Unchanged;
        }
        match self.check(claims, &download, &sha256, &mut stages).await {
            Ok((version, master_state)) => {
                if let Some(v) = &version {
                    span.record("version", v.to_string());
                }
                tracing::info!(version = ?version.as_ref().map(|v| v.to_string()), "candidate passed every check; installing");
                let checked = Checked {
                    download,
                    sha256,
                    version,
                    origin,
                    master_state,
                    stages,
                };
                let outcome = self.install(checked, running, span).await;
                if let (Outcome::Installed { .. }, Some(saved)) = (&outcome, saved) {
                    saved.log();
                }
                outcome
            }
            Err(refusal) => {
                swap::discard(&download.path);
                Outcome::Refused {
                    sha256: Some(sha256),
                    refusal,
                }
            }
        }
    }

    /// Every check of the binary itself; returns its trusted version and the master state
    /// format it reads.
    async fn check(
        &mut self,
        claims: Claims,
        download: &Download,
        sha256: &str,
        stages: &mut Stages,
    ) -> Result<(Option<semver::Version>, Option<u32>), Refusal> {
        if let Some(q) = self.state.quarantined(sha256) {
            return Err(Refusal::Quarantined {
                sha256: sha256.to_string(),
                reason: q.reason.clone(),
            });
        }
        verify::elf_intact(&download.path)?;
        let trusted_comment = verify::signature(
            &self.config.public_keys,
            claims.signature.as_deref(),
            &download.path,
        )?;
        let signed = signed::read(&self.config, trusted_comment.as_deref())?;
        if let Some(metadata) = &signed {
            let name = self.release_name();
            let expected = signed::Expected {
                size: download.size,
                sha256: &download.sha256,
                target: sanity::TARGET,
                name: &name,
                claimed_version: claims.version.as_ref(),
                now: std::time::SystemTime::now(),
            };
            let checked = signed::check(metadata, &expected, self.config.max_signature_age);
            if matches!(checked, Ok(()) | Err(Refusal::SignatureExpired { .. })) {
                self.saw_release(metadata);
            }
            checked?;
            // Before the sanity run: a replayed older release is not even run.
            verify::not_a_downgrade(
                Some(&metadata.version),
                self.floor().as_ref(),
                self.config.allow_downgrade,
            )?;
        }
        stage::match_live_mode(&download.path, &self.live).map_err(|e| {
            Refusal::transient(format!(
                "setting mode and owner of {}: {e}",
                download.path.display()
            ))
        })?;
        stages.lap("verify");
        let mut master_state = None;
        let answered = match self.config.sanity {
            Sanity::Handover => {
                let reply = sanity::check(&download.path, self.config.check_timeout).await?;
                master_state = reply.master_state;
                reply.version
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
        stages.lap("sanity");
        if let Some(metadata) = &signed {
            signed::check_answer(metadata, answered.as_deref())?;
        }
        let answered = answered
            .as_deref()
            .and_then(|v| semver::Version::parse(v).ok());
        // With keys, only what is signed (or what the signed bytes say of themselves) may
        // raise the floor: someone who can write the source's metadata but not sign must not
        // lock real fixes out. Without keys the claim is as trustworthy as the bytes.
        let trusted = match signed {
            Some(metadata) => Some(metadata.version),
            None if self.config.public_keys.is_empty() => answered.or(claims.version.clone()),
            None => answered,
        };
        verify::not_a_downgrade(
            trusted.as_ref().or(claims.version.as_ref()),
            self.floor().as_ref(),
            self.config.allow_downgrade,
        )?;
        if let Some(hook) = &self.config.pre_upgrade {
            sanity::pre_upgrade_hook(hook, &download.path, sha256, self.config.check_timeout)
                .await?;
            stages.lap("hook");
        }
        Ok((trusted, master_state))
    }

    /// The `name=` a signed release must carry.
    fn release_name(&self) -> String {
        match &self.config.release_name {
            Some(name) => name.clone(),
            None => self
                .live
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }

    /// Takes the binary out of a downloaded archive (whose checksum was checked already).
    async fn unpack(
        &self,
        archive: Download,
        format: handover_fetcher::ArchiveFormat,
        member: &str,
    ) -> Result<Download, Refusal> {
        let dest = swap::temp_path(&self.live);
        let (source, target, member) = (archive.path.clone(), dest.clone(), member.to_string());
        let limit = self.config.max_size;
        let unpacked = tokio::task::spawn_blocking(move || {
            super::archive::unpack(&source, format, &member, &target, limit)
        })
        .await;
        swap::discard(&archive.path);
        match unpacked {
            Ok(Ok(unpacked)) => {
                tracing::info!(%format, size = unpacked.size, "unpacked the binary from the archive");
                Ok(Download {
                    path: dest,
                    sha256: unpacked.sha256,
                    size: unpacked.size,
                })
            }
            Ok(Err(super::archive::ArchiveError::Io(e))) => {
                swap::discard(&dest);
                Err(Refusal::transient(format!("unpacking the archive: {e}")))
            }
            Ok(Err(e)) => {
                swap::discard(&dest);
                Err(Refusal::malformed(format!("archive ({format}): {e}")))
            }
            Err(e) => {
                swap::discard(&dest);
                Err(Refusal::transient(format!("unpacking the archive: {e}")))
            }
        }
    }
}
