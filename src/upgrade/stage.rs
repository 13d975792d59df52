//! Where a download lands: a temporary file beside the live binary, hashed while it is written,
//! bounded in size, fsynced, then given the live binary's mode and owner.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use handover_fetcher::Artifact;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Refusal;

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
) -> Result<Download, Refusal> {
    let origin = artifact.origin().to_string();
    if let Some(claimed) = artifact.claimed_size() {
        if claimed > max_size {
            return Err(Refusal::Permanent(format!(
                "announced size {claimed} bytes exceeds upgrade.max_size {max_size}"
            )));
        }
    }
    let path = super::swap::temp_path(live);
    let result = write_hashed(artifact, &path, max_size).await;
    match result {
        Ok((sha256, size)) => {
            if let Some(claimed) = artifact.claimed_size() {
                if size != claimed {
                    super::swap::discard(&path);
                    return Err(Refusal::Permanent(format!(
                        "truncated or padded: {size} bytes received, {claimed} announced"
                    )));
                }
            }
            Ok(Download { path, sha256, size })
        }
        Err(refusal) => {
            super::swap::discard(&path);
            Err(match refusal {
                Refusal::Transient(why) => {
                    Refusal::Transient(format!("downloading {origin} to {}: {why}", path.display()))
                }
                other => other,
            })
        }
    }
}

async fn write_hashed(
    artifact: &mut Artifact,
    path: &Path,
    max_size: u64,
) -> Result<([u8; 32], u64), Refusal> {
    let io = |e: std::io::Error| Refusal::Transient(e.to_string());
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
    let mut progress = Progress::new(artifact.origin(), claimed);
    loop {
        let n = artifact.reader().read(&mut buffer).await.map_err(|e| {
            Refusal::Transient(format!("reading the source failed after {size} bytes: {e}"))
        })?;
        if n == 0 {
            break;
        }
        size += n as u64;
        if size > max_size {
            return Err(Refusal::Permanent(format!(
                "larger than upgrade.max_size ({max_size} bytes)"
            )));
        }
        if claimed.is_some_and(|c| size > c) {
            return Err(Refusal::Permanent(format!(
                "more bytes than the {} announced",
                claimed.unwrap_or(0)
            )));
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

/// Shows a long download: a bar on a terminal, a log line every few seconds otherwise.
struct Progress {
    origin: String,
    total: Option<u64>,
    started: std::time::Instant,
    last: std::time::Instant,
    terminal: bool,
    shown: bool,
}

impl Progress {
    /// Downloads shorter than this are not worth a progress display.
    const QUIET_FOR: std::time::Duration = std::time::Duration::from_secs(1);

    fn new(origin: &str, total: Option<u64>) -> Self {
        use std::io::IsTerminal;
        let now = std::time::Instant::now();
        Self {
            origin: origin.to_string(),
            total,
            started: now,
            last: now,
            terminal: std::io::stderr().is_terminal(),
            shown: false,
        }
    }

    fn advance(&mut self, done: u64) {
        let every = if self.terminal {
            std::time::Duration::from_millis(100)
        } else {
            std::time::Duration::from_secs(5)
        };
        if self.started.elapsed() < Self::QUIET_FOR || self.last.elapsed() < every {
            return;
        }
        self.last = std::time::Instant::now();
        self.shown = true;
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let rate = mib(done) / self.started.elapsed().as_secs_f64().max(0.001);
        match self.total {
            Some(total) if self.terminal => {
                let fraction = (done as f64 / total.max(1) as f64).min(1.0);
                let filled = (fraction * 30.0) as usize;
                eprint!(
                    "\r{} [{}{}] {:>3.0}% {:.1}/{:.1} MiB {:.1} MiB/s ",
                    self.origin,
                    "#".repeat(filled),
                    " ".repeat(30 - filled),
                    fraction * 100.0,
                    mib(done),
                    mib(total),
                    rate
                );
            }
            None if self.terminal => {
                eprint!("\r{} {:.1} MiB {:.1} MiB/s ", self.origin, mib(done), rate)
            }
            total => tracing::info!(
                origin = %self.origin,
                done_mib = format!("{:.1}", mib(done)),
                total_mib = total.map(|t| format!("{:.1}", mib(t))),
                rate_mib_s = format!("{rate:.1}"),
                "downloading"
            ),
        }
    }

    fn finish(&mut self, done: u64) {
        if self.shown && self.terminal {
            eprintln!(
                "\r{} done: {:.1} MiB in {:.1?}",
                self.origin,
                done as f64 / (1024.0 * 1024.0),
                self.started.elapsed()
            );
        }
    }
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
        let refusal = download(&mut artifact(b"0123456789", 5), &live, 1 << 20)
            .await
            .unwrap_err();
        assert!(
            matches!(&refusal, Refusal::Permanent(m) if m.contains("more bytes than the 5 announced")),
            "{refusal:?}"
        );
        assert_eq!(leftovers(dir.path()), 0);
    }

    #[tokio::test]
    async fn fewer_bytes_than_announced_is_refused_as_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("app");
        std::fs::write(&live, b"v1").unwrap();
        let refusal = download(&mut artifact(b"0123", 10), &live, 1 << 20)
            .await
            .unwrap_err();
        assert!(
            matches!(&refusal, Refusal::Permanent(m) if m.contains("4 bytes received, 10 announced")),
            "{refusal:?}"
        );
        assert_eq!(leftovers(dir.path()), 0);
    }

    #[tokio::test]
    async fn the_size_limit_applies_to_announced_and_streamed_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("app");
        std::fs::write(&live, b"v1").unwrap();
        let announced = download(&mut artifact(b"0123456789", 10), &live, 8)
            .await
            .unwrap_err();
        assert!(
            matches!(&announced, Refusal::Permanent(m) if m.contains("exceeds upgrade.max_size 8")),
            "{announced:?}"
        );
        let mut unannounced =
            Artifact::new("test source", std::io::Cursor::new(&b"0123456789"[..]));
        let streamed = download(&mut unannounced, &live, 8).await.unwrap_err();
        assert!(
            matches!(&streamed, Refusal::Permanent(m) if m.contains("larger than upgrade.max_size")),
            "{streamed:?}"
        );
        assert_eq!(leftovers(dir.path()), 0);
    }

    #[tokio::test]
    async fn a_good_download_is_hashed_and_kept_beside_the_live_binary() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("app");
        std::fs::write(&live, b"v1").unwrap();
        let done = download(&mut artifact(b"hello", 5), &live, 1 << 20)
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
