//! A fetcher of your own: the hello service, upgraded from a directory of versioned releases.
//!
//! ```sh
//! cargo run --example custom_fetcher    # serves 127.0.0.1:$PORT (8080), watches ./releases
//! mkdir -p target/debug/examples/releases
//! cp target/debug/examples/custom_fetcher target/debug/examples/releases/custom_fetcher-0.2.0
//! echo >> target/debug/examples/releases/custom_fetcher-0.2.0   # a new hash
//! ```
//!
//! `ReleaseDir` is the whole fetcher: it offers the newest `<name>-<semver>` file that is newer
//! than what runs. Hashing, signature and downgrade checks, the sanity run, the swap, the
//! hand-over and the rollback are the core's, as for the built-in fetchers.

// Only the hello service is used here.
#[allow(dead_code)]
mod common;

use std::collections::HashSet;
use std::path::PathBuf;

use handover::fetcher::{async_trait, Artifact, FetchError, Fetcher, Running, Settlement, Version};

/// Releases dropped into `dir` as `<prefix><version>`, e.g. `custom_fetcher-0.2.0`.
struct ReleaseDir {
    dir: PathBuf,
    prefix: String,
    /// Paths the core has finished with (installed or refused): not offered again.
    settled: HashSet<String>,
}

#[async_trait]
impl Fetcher for ReleaseDir {
    fn name(&self) -> &str {
        "release-dir"
    }

    async fn fetch(&mut self, running: &Running) -> Result<Option<Artifact>, FetchError> {
        let origin = self.dir.display().to_string();
        let io = |e| FetchError::io(origin.clone(), e);
        let mut newest: Option<(Version, PathBuf)> = None;
        let mut entries = tokio::fs::read_dir(&self.dir).await.map_err(io)?;
        while let Some(entry) = entries.next_entry().await.map_err(io)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(Ok(version)) = name.strip_prefix(&self.prefix).map(Version::parse) else {
                continue;
            };
            let newer_than_running = running.version.as_ref().is_none_or(|r| &version > r);
            let path = entry.path();
            if newer_than_running
                && !self.settled.contains(&path.display().to_string())
                && newest.as_ref().is_none_or(|(v, _)| &version > v)
            {
                newest = Some((version, path));
            }
        }
        let Some((version, path)) = newest else {
            return Ok(None);
        };
        let file = tokio::fs::File::open(&path).await.map_err(io)?;
        let size = file.metadata().await.map_err(io)?.len();
        let id = path.display().to_string();
        Ok(Some(
            // A directory on this machine: no checksum is asked for by default.
            Artifact::new(id.clone(), file)
                .local()
                .with_id(id)
                .with_version(version)
                .with_size(size),
        ))
    }

    fn settled(&mut self, id: &str, _settlement: Settlement) {
        self.settled.insert(id.to_string());
    }
}

fn main() -> std::process::ExitCode {
    common::exit_code("custom_fetcher", run())
}

fn run() -> Result<(), handover::Error> {
    common::init_logging();
    // $RELEASES_DIR, else `releases` beside the binary.
    let dir = std::env::var_os("RELEASES_DIR")
        .map(PathBuf::from)
        .or_else(|| Some(std::env::current_exe().ok()?.with_file_name("releases")))
        .unwrap_or_else(|| "releases".into());
    let fetcher = ReleaseDir {
        dir,
        prefix: "custom_fetcher-".into(),
        settled: HashSet::new(),
    };
    handover::Handover::new(common::config_from_env()?)
        .version(env!("CARGO_PKG_VERSION"))
        .fetcher(fetcher)
        .run(|worker| common::serve_hello(worker, false))
}
