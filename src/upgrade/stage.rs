//! Where a download lands: a temporary file beside the live binary, hashed while it is written,
//! bounded in size, fsynced, then given the live binary's mode and owner.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use handover_fetcher::Artifact;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::progress::Progress;
use crate::refusal::Refusal;

/// A candidate on disk, not yet checked.
#[derive(Debug)]
pub(crate) struct Download {
    pub(crate) path: PathBuf,
    pub(crate) sha256: [u8; 32],
    pub(crate) size: u64,
}

/// Streams `artifact` into a new temporary file beside `live`. On any error the file is removed.
pub(crate) async fn download(
    artifact: &mut Artifact,
    live: &Path,
    max_size: u64,
    progress_bar: bool,
) -> Result<Download, Refusal> {
    let origin = artifact.origin().to_string();
    if let Some(claimed) = artifact.claimed_size() {
        if claimed > max_size {
            return Err(Refusal::TooLarge {
                size: claimed,
                limit: max_size,
            });
        }
    }
    let path = super::swap::temp_path(live);
    let result = write_hashed(artifact, &path, max_size, progress_bar).await;
    match result {
        Ok((sha256, size)) => {
            if let Some(claimed) = artifact.claimed_size() {
                if size != claimed {
                    super::swap::discard(&path);
                    return Err(Refusal::SizeMismatch {
                        announced: claimed,
                        received: size,
                    });
                }
            }
            Ok(Download { path, sha256, size })
        }
        Err(refusal) => {
            super::swap::discard(&path);
            Err(match refusal {
                Refusal::Transient { message } => Refusal::transient(format!(
                    "downloading {origin} to {}: {message}",
                    path.display()
                )),
                other => other,
            })
        }
    }
}

async fn write_hashed(
    artifact: &mut Artifact,
    path: &Path,
    max_size: u64,
    progress_bar: bool,
) -> Result<([u8; 32], u64), Refusal> {
    let io = |e: std::io::Error| Refusal::transient(e);
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .await
        .map_err(io)?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buffer = vec![0u8; 64 * 1024];
    let claimed = artifact.claimed_size();
    let mut progress = Progress::new(artifact.origin(), claimed, progress_bar);
    loop {
        let n = artifact.reader().read(&mut buffer).await.map_err(|e| {
            Refusal::transient(format!("reading the source failed after {size} bytes: {e}"))
        })?;
        if n == 0 {
            break;
        }
        size += n as u64;
        if size > max_size {
            return Err(Refusal::TooLarge {
                size,
                limit: max_size,
            });
        }
        if let Some(announced) = claimed.filter(|c| size > *c) {
            return Err(Refusal::SizeMismatch {
                announced,
                received: size,
            });
        }
        hasher.update(&buffer[..n]);
        file.write_all(&buffer[..n]).await.map_err(io)?;
        progress.advance(size);
    }
    progress.finish(size);
    file.flush().await.map_err(io)?;
    file.sync_all().await.map_err(io)?;
    Ok((hasher.finalize().into(), size))
}

/// Gives the candidate the live binary's permission bits and, where allowed, its owner.
pub(crate) fn match_live_mode(candidate: &Path, live: &Path) -> std::io::Result<()> {
    let meta = std::fs::metadata(live)?;
    let mode = meta.permissions().mode() & 0o7777;
    // Never stage something that cannot be executed, even if the live binary lost its x bit.
    let mode = if mode & 0o111 == 0 {
        mode | 0o100
    } else {
        mode
    };
    std::fs::set_permissions(candidate, std::fs::Permissions::from_mode(mode))?;
    let current = std::fs::metadata(candidate)?;
    if current.uid() != meta.uid() || current.gid() != meta.gid() {
        if let Err(e) = std::os::unix::fs::chown(candidate, Some(meta.uid()), Some(meta.gid())) {
            tracing::warn!(path = %candidate.display(), error = %e, "cannot give the candidate the live binary's owner");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(bytes: &'static [u8], announced: u64) -> Artifact {
        Artifact::new("test source", std::io::Cursor::new(bytes)).with_size(announced)
    }

    fn leftovers(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name() != "app")
            .count()
    }

    #[tokio::test]
    async fn more_bytes_than_announced_is_refused_and_nothing_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("app");
        std::fs::write(&live, b"v1").unwrap();
        let refusal = download(&mut artifact(b"0123456789", 5), &live, 1 << 20, false)
            .await
            .unwrap_err();
        assert!(
            matches!(&refusal, Refusal::SizeMismatch { announced: 5, received } if *received > 5),
            "{refusal:?}"
        );
        assert_eq!(leftovers(dir.path()), 0);
    }

    #[tokio::test]
    async fn fewer_bytes_than_announced_is_refused_as_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("app");
        std::fs::write(&live, b"v1").unwrap();
        let refusal = download(&mut artifact(b"0123", 10), &live, 1 << 20, false)
            .await
            .unwrap_err();
        assert_eq!(
            refusal,
            Refusal::SizeMismatch {
                announced: 10,
                received: 4
            }
        );
        assert!(refusal
            .to_string()
            .contains("4 bytes received, 10 announced"));
        assert_eq!(leftovers(dir.path()), 0);
    }

    #[tokio::test]
    async fn the_size_limit_applies_to_announced_and_streamed_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("app");
        std::fs::write(&live, b"v1").unwrap();
        let announced = download(&mut artifact(b"0123456789", 10), &live, 8, false)
            .await
            .unwrap_err();
        assert_eq!(announced, Refusal::TooLarge { size: 10, limit: 8 });
        let mut unannounced =
            Artifact::new("test source", std::io::Cursor::new(&b"0123456789"[..]));
        let streamed = download(&mut unannounced, &live, 8, false)
            .await
            .unwrap_err();
        assert!(
            matches!(&streamed, Refusal::TooLarge { limit: 8, .. }),
            "{streamed:?}"
        );
        assert_eq!(leftovers(dir.path()), 0);
    }

    #[tokio::test]
    async fn a_good_download_is_hashed_and_kept_beside_the_live_binary() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("app");
        std::fs::write(&live, b"v1").unwrap();
        let done = download(&mut artifact(b"hello", 5), &live, 1 << 20, false)
            .await
            .unwrap();
        assert_eq!(done.path.parent(), Some(dir.path()));
        assert_eq!(std::fs::read(&done.path).unwrap(), b"hello");
        assert_eq!(
            hex::encode(done.sha256),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
    }
}
