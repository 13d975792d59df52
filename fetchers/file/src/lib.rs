//! A handover fetcher that watches a path on disk for a new binary.
//!
//! Drop a new binary at the watched path (copy it, or better, write it elsewhere in the same
//! directory and rename it into place) and the service upgrades itself. The parent directory is
//! watched with inotify (through `notify`), so a rename into place is seen; the core also polls
//! on its interval, which is all there is on file systems without inotify (`poll_only`).
//!
//! A file renamed into place, or closed after it was written, is taken at once (inotify says it
//! is whole). Any other change (a copy in progress, polling without inotify) is taken only once
//! size and modification time have stopped changing for the settle time, so a file is never
//! installed half-written. A sibling
//! `<path>.sha256` (hex digest) and `<path>.minisig` (signature) are passed on as the file's
//! published checksum and signature; both are optional (whether one is needed is the core's
//! `[upgrade]` policy). The candidate is [local](Artifact::local), and its identity covers the
//! binary and both sidecars: a `.minisig` or `.sha256` written after the binary makes it a new
//! candidate, even after the core settled the old one.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! let fetcher = handover_fetcher_file::FileFetcher::new("/srv/app/app.next").start()?;
//! # let _ = fetcher; Ok(()) }
//! ```

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod complete;
mod store;

pub use store::DirStore;

use handover_fetcher::{
    async_trait, Artifact, FetchError, Fetcher, Notify, Running, Settlement, Store,
};
use notify::{RecursiveMode, Watcher};

/// How long a file must stay unchanged before it is taken, unless configured.
pub const DEFAULT_SETTLE: Duration = Duration::from_millis(250);

/// Suffixes of the sidecar files that belong to the publication.
const SIDECARS: [&str; 2] = [".sha256", ".minisig"];

/// The largest sidecar read (a checksum list or a signature is far smaller).
const MAX_SIDECAR: u64 = 1 << 20;

/// Watches one path for new binaries.
pub struct FileFetcher {
    path: PathBuf,
    poll_only: bool,
    settle: Duration,
    wake: Arc<Notify>,
    watcher: Option<notify::RecommendedWatcher>,
    settled: Option<String>,
    /// The version of the file that inotify last said arrived whole.
    whole: Arc<Mutex<Option<Stamp>>>,
    /// The directory of the watched path, where a rollout manifest is looked for.
    store: DirStore,
}

impl std::fmt::Debug for FileFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileFetcher")
            .field("path", &self.path)
            .field("poll_only", &self.poll_only)
            .field("settle", &self.settle)
            .field("watching", &self.watcher.is_some())
            .finish()
    }
}

/// Identity of a file version: a new write, copy or rename changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }

    fn id(&self) -> String {
        format!("{}:{}:{}:{}", self.dev, self.ino, self.size, self.mtime_ns)
    }
}

impl FileFetcher {
    /// Watches `path` (it need not exist yet).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Self {
            store: DirStore::new(dir),
            path,
            poll_only: false,
            settle: DEFAULT_SETTLE,
            wake: Arc::new(Notify::new()),
            watcher: None,
            settled: None,
            whole: Arc::new(Mutex::new(None)),
        }
    }

    /// Skips inotify and relies on the core's polling (for NFS and other network file systems).
    pub fn poll_only(mut self, poll_only: bool) -> Self {
        self.poll_only = poll_only;
        self
    }

    /// How long size and mtime must stay unchanged before the file is taken.
    pub fn settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// The watched path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether inotify is active (false: polling only).
    pub fn is_watching(&self) -> bool {
        self.watcher.is_some()
    }

    /// Starts watching the parent directory. If the watch cannot be set up (no inotify, the
    /// directory is missing), logs why and falls back to polling.
    pub fn start(mut self) -> std::io::Result<Self> {
        if self.poll_only {
            return Ok(self);
        }
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let wake = self.wake.clone();
        let (whole, path) = (self.whole.clone(), self.path.clone());
        // The binary and its sidecars: a signature written after the binary is news too.
        let names: Vec<std::ffi::OsString> = self
            .path
            .file_name()
            .map(|name| {
                let mut names = vec![name.to_os_string()];
                names.extend(SIDECARS.iter().map(|suffix| {
                    let mut sidecar = name.to_os_string();
                    sidecar.push(suffix);
                    sidecar
                }));
                names
            })
            .unwrap_or_default();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let relevant = match &event {
                Ok(event) => {
                    event.paths.is_empty()
                        || event
                            .paths
                            .iter()
                            .filter_map(|p| p.file_name())
                            .any(|n| names.iter().any(|name| name == n))
                }
                Err(_) => true,
            };
            if let Ok(event) = &event {
                let binary = event.paths.last().and_then(|p| p.file_name()) == path.file_name();
                if binary && complete::arrived_whole(event) {
                    let stamp = std::fs::metadata(&path).ok().map(|m| Stamp::of(&m));
                    *whole.lock().unwrap_or_else(|e| e.into_inner()) = stamp;
                }
            }
            if relevant {
                wake.notify_one();
            }
        })
        .and_then(|mut watcher| {
            watcher
                .watch(&dir, RecursiveMode::NonRecursive)
                .map(|()| watcher)
        });
        match watcher {
            Ok(watcher) => {
                tracing::info!(path = %self.path.display(), "watching for a new binary (inotify, with polling as a fallback)");
                self.watcher = Some(watcher);
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot watch the directory; polling only");
            }
        }
        Ok(self)
    }

    pub(crate) fn stamp(&self) -> Result<Option<Stamp>, FetchError> {
        match std::fs::metadata(&self.path) {
            Ok(meta) if meta.is_file() => Ok(Some(Stamp::of(&meta))),
            Ok(_) => Err(FetchError::invalid(self.origin(), "is not a regular file")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(FetchError::io(self.origin(), e)),
        }
    }

    fn origin(&self) -> String {
        self.path.display().to_string()
    }

    fn sidecar_path(&self, suffix: &str) -> PathBuf {
        let mut name = self.path.file_name().unwrap_or_default().to_os_string();
        name.push(suffix);
        self.path.with_file_name(name)
    }

    /// The sidecar's stamp, or `None` when there is none.
    fn sidecar_stamp(&self, suffix: &str) -> Result<Option<Stamp>, FetchError> {
        let path = self.sidecar_path(suffix);
        match std::fs::metadata(&path) {
            Ok(meta) => Ok(Some(Stamp::of(&meta))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(FetchError::io(path.display().to_string(), e)),
        }
    }

    /// The sidecar's stamp and bytes, read from one open file so that both describe the same
    /// version of it; `None` when there is none.
    fn sidecar(&self, suffix: &str) -> Result<Option<(Stamp, Vec<u8>)>, FetchError> {
        use std::io::Read;
        let path = self.sidecar_path(suffix);
        let origin = || path.display().to_string();
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(FetchError::io(origin(), e)),
        };
        let stamp = Stamp::of(&file.metadata().map_err(|e| FetchError::io(origin(), e))?);
        let mut bytes = Vec::new();
        file.take(MAX_SIDECAR + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| FetchError::io(origin(), e))?;
        if bytes.len() as u64 > MAX_SIDECAR {
            return Err(FetchError::invalid(
                origin(),
                format!("larger than {MAX_SIDECAR} bytes; not a checksum or signature"),
            ));
        }
        Ok(Some((stamp, bytes)))
    }
}

/// The identity of a publication: the binary's stamp and each sidecar's (or its absence).
fn publication_id(binary: &Stamp, sidecars: &[Option<Stamp>]) -> String {
    let mut id = binary.id();
    for (suffix, stamp) in SIDECARS.iter().zip(sidecars) {
        let stamp = stamp.map_or_else(|| "absent".to_string(), |s| s.id());
        id.push_str(&format!(";{suffix}={stamp}"));
    }
    id
}

#[async_trait]
impl Fetcher for FileFetcher {
    fn name(&self) -> &str {
        "file"
    }

    async fn fetch(&mut self, _running: &Running) -> Result<Option<Artifact>, FetchError> {
        let Some(first) = self.stamp()? else {
            return Ok(None);
        };
        let sidecars = SIDECARS
            .iter()
            .map(|suffix| self.sidecar_stamp(suffix))
            .collect::<Result<Vec<_>, _>>()?;
        if self.settled.as_deref() == Some(publication_id(&first, &sidecars).as_str()) {
            return Ok(None);
        }
        let Some(stamp) = self.settled_stamp().await? else {
            return Ok(None);
        };
        let file = match std::fs::File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(FetchError::io(self.origin(), e)),
        };
        // The file may have been replaced between the last stat and the open.
        let opened = Stamp::of(
            &file
                .metadata()
                .map_err(|e| FetchError::io(self.origin(), e))?,
        );
        if opened != stamp {
            self.wake.notify_one();
            return Ok(None);
        }
        let checksum = self.sidecar(".sha256")?;
        let signature = self.sidecar(".minisig")?;
        let id = publication_id(
            &stamp,
            &[
                checksum.as_ref().map(|(s, _)| *s),
                signature.as_ref().map(|(s, _)| *s),
            ],
        );
        let mut artifact = Artifact::new(self.origin(), tokio::fs::File::from_std(file))
            .local()
            .with_size(stamp.size)
            .with_id(id);
        if let Some((_, text)) = checksum {
            let text = String::from_utf8_lossy(&text);
            let name = self
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match handover_fetcher::find_in_checksum_file(&text, &name) {
                Some(digest) => artifact = artifact.with_sha256(digest),
                None => tracing::debug!(
                    path = %self.sidecar_path(".sha256").display(),
                    "holds no sha256 for this file; offering it without one"
                ),
            }
        }
        if let Some((_, signature)) = signature {
            artifact = artifact.with_signature(signature);
        }
        Ok(Some(artifact))
    }

    fn wake(&self) -> Option<Arc<Notify>> {
        Some(self.wake.clone())
    }

    fn settled(&mut self, id: &str, _settlement: Settlement) {
        self.settled = Some(id.to_string());
    }

    fn store(&mut self) -> Option<&mut dyn Store> {
        Some(&mut self.store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn running() -> Running {
        Running::new([0; 32], None)
    }

    #[tokio::test]
    async fn offers_a_new_file_once_settled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.next");
        let mut fetcher = FileFetcher::new(&path)
            .settle(Duration::from_millis(20))
            .start()
            .unwrap();
        assert!(fetcher.is_watching());
        assert!(fetcher.fetch(&running()).await.unwrap().is_none());

        std::fs::write(&path, b"binary v2").unwrap();
        let mut artifact = fetcher.fetch(&running()).await.unwrap().expect("offered");
        assert_eq!(artifact.claimed_size(), Some(9));
        let mut bytes = Vec::new();
        artifact.reader().read_to_end(&mut bytes).await.unwrap();
        assert_eq!(bytes, b"binary v2");

        // Not settled yet: offered again (a failed install must not lose it).
        let again = fetcher
            .fetch(&running())
            .await
            .unwrap()
            .expect("offered again");
        fetcher.settled(again.id().unwrap(), Settlement::Installed);
        assert!(fetcher.fetch(&running()).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn inotify_wakes_on_rename_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.next");
        let fetcher = FileFetcher::new(&path).start().unwrap();
        let wake = fetcher.wake().unwrap();
        let tmp = dir.path().join("upload.tmp");
        std::fs::write(&tmp, b"v3").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        tokio::time::timeout(Duration::from_secs(5), wake.notified())
            .await
            .expect("woken by inotify");
    }

    #[tokio::test]
    async fn a_file_still_being_written_is_not_taken_half_way() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.next");
        let mut fetcher = FileFetcher::new(&path)
            .settle(Duration::from_millis(100))
            .poll_only(true)
            .start()
            .unwrap();
        let writer_path = path.clone();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let mut file = std::fs::File::create(&writer_path).unwrap();
            for _ in 0..10 {
                file.write_all(&[7u8; 1000]).unwrap();
                file.flush().unwrap();
                std::thread::sleep(Duration::from_millis(30));
            }
        });
        std::thread::sleep(Duration::from_millis(20));
        let artifact = fetcher
            .fetch(&running())
            .await
            .unwrap()
            .expect("offered once complete");
        writer.join().unwrap();
        assert_eq!(artifact.claimed_size(), Some(10_000));
    }

    #[tokio::test]
    async fn sidecar_checksum_is_published() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.next");
        std::fs::write(&path, b"x").unwrap();
        let digest = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881";
        std::fs::write(
            dir.path().join("app.next.sha256"),
            format!("{digest}  app.next\n"),
        )
        .unwrap();
        let mut fetcher = FileFetcher::new(&path)
            .settle(Duration::from_millis(10))
            .poll_only(true);
        let artifact = fetcher.fetch(&running()).await.unwrap().unwrap();
        assert_eq!(
            artifact.claimed_sha256(),
            handover_fetcher::parse_sha256(digest).as_ref()
        );

        assert!(artifact.is_local());

        // A checksum file without an entry for the binary: offered without a digest.
        std::fs::write(
            dir.path().join("app.next.sha256"),
            format!("{digest}  something-else\n{digest}  other\n"),
        )
        .unwrap();
        let artifact = fetcher.fetch(&running()).await.unwrap().unwrap();
        assert_eq!(artifact.claimed_sha256(), None);
    }

    // regression: the id covered only the binary, so a signature uploaded after the binary was
    // never offered once the core had settled the unsigned candidate.
    #[tokio::test]
    async fn a_signature_arriving_after_settlement_offers_the_binary_again() {
        for settlement in [Settlement::NotReady, Settlement::Rejected] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("app.next");
            std::fs::write(&path, b"binary v2").unwrap();
            let mut fetcher = FileFetcher::new(&path)
                .settle(Duration::from_millis(10))
                .start()
                .unwrap();
            let wake = fetcher.wake().unwrap();
            let unsigned = fetcher.fetch(&running()).await.unwrap().expect("offered");
            assert!(unsigned.signature().is_none());
            fetcher.settled(unsigned.id().unwrap(), settlement);
            assert!(fetcher.fetch(&running()).await.unwrap().is_none());

            std::fs::write(
                dir.path().join("app.next.minisig"),
                b"untrusted comment: x\n",
            )
            .unwrap();
            tokio::time::timeout(Duration::from_secs(5), wake.notified())
                .await
                .expect("woken by the signature's arrival");
            let signed = fetcher
                .fetch(&running())
                .await
                .unwrap()
                .expect("offered again");
            assert_ne!(signed.id(), unsigned.id());
            assert_eq!(signed.signature(), Some(&b"untrusted comment: x\n"[..]));
            fetcher.settled(signed.id().unwrap(), Settlement::Installed);
            assert!(fetcher.fetch(&running()).await.unwrap().is_none());
        }
    }
}
