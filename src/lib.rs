//! Zero-downtime restarts and unattended upgrades for network services.
//!
//! A **master** process with a stable PID binds the listening sockets once and starts a
//! **worker** from the binary on disk, passing it the sockets. On `SIGUSR2` (or when a fetcher
//! finds a new binary) the master starts a new worker, waits until it says it is ready, and
//! only then tells the old worker to drain. The sockets never close, so no connection is
//! refused; the drain helper for hyper closes keep-alive connections in a way no client
//! notices, so no request fails.
//!
//! # What runs where
//!
//! Your `main` runs in the master *and* in every worker (they are the same binary). The closure
//! given to [`Handover::run`] runs **only in workers**; the master never calls it. Put
//! everything that serves, schedules or connects inside the closure. Jobs that must run once
//! per service (a cron scheduler) go through [`Worker::spawn_exclusive`].
//!
//! # Example
//!
//! ```no_run
//! use http_body_util::Full;
//! use hyper::{body::Bytes, Response};
//!
//! fn main() -> Result<(), handover::Error> {
//!     let config = handover::Config::builder()
//!         .listen_tcp("http", "127.0.0.1:8080".parse().unwrap())
//!         .build()?;
//!     handover::Handover::new(config)
//!         .version(env!("CARGO_PKG_VERSION"))
//!         .run(|worker| async move {
//!             let listener = worker.tcp("http")?;
//!             let id = worker.id();
//!             let service = hyper::service::service_fn(move |_req| async move {
//!                 Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(format!("worker {id}\n")))))
//!             });
//!             handover::http::serve(&worker, listener, service).await
//!         })
//! }
//! ```
//!
//! Run it, then `kill -USR2 <pid>`: a new worker takes over, the PID stays.
//!
//! # The master upgrades too
//!
//! After an upgrade passes probation, the master re-executes itself from the new binary
//! (`execve`: same PID, same sockets, the serving worker adopted, not restarted), so the code
//! that fetches and checks upgrades is upgraded as well. The new binary's sanity run must read
//! the master's state format first; [`MasterHandle::reexec`] (or `SIGUSR1`) does the same on
//! request, and [`Status::master`] says what the master runs.
//!
//! # Crate features
//!
//! - `file` (default): the [`FileFetcher`] watches a path for a new binary.
//! - `github`, `s3`, `http`: the other fetchers (heavier dependencies, opt-in).

#![warn(missing_docs)]

mod child_env;
mod config;
mod control;
mod digest;
mod error;
mod fetchers;
mod handle;
mod handoff;
pub mod http;
mod master;
mod master_state;
mod protocol;
mod refusal;
pub mod release;
pub mod rollout;
mod service;
pub mod sign;
mod signals;
mod sys;
mod upgrade;
mod worker;

use std::future::Future;

pub use child_env::SECRET_ENV;
pub use config::{
    ChecksumPolicy, Config, ConfigBuilder, FileFetcherConfig, Listen, ProgramConfig, ReadyMode,
    Sanity, UpgradeConfig,
};
pub use control::request as control_request;
pub use error::{Error, Result};
pub use fetchers::build_fetcher;
pub use handle::MasterHandle;
pub use handoff::{ProbationInfo, QuarantineEntry, UpgradeRecord, UpgradeStatus};
pub use handover_fetcher as fetcher;
/// The etcd fetcher (feature `etcd`).
#[cfg(feature = "etcd")]
pub use handover_fetcher_etcd as etcd;
#[cfg(feature = "file")]
pub use handover_fetcher_file::FileFetcher;
/// The GitHub-release fetcher (feature `github`).
#[cfg(feature = "github")]
pub use handover_fetcher_github as github;
/// The HTTP fetcher (feature `http`).
#[cfg(feature = "http")]
pub use handover_fetcher_http as http_fetcher;
/// The S3 fetcher (feature `s3`).
#[cfg(feature = "s3")]
pub use handover_fetcher_s3 as s3;
pub use master::program::exec_shim;
pub use master::{MasterInfo, Phase, Status, WorkerInfo};
pub use refusal::{Against, Disposition, Refusal};
pub use service::Master;
pub use worker::{ListenerKind, Shutdown, Worker};

/// The entry point of a program that runs under handover.
///
/// Built in `main`; [`run`](Handover::run) decides from the environment whether this process
/// is the master, a worker, or the sanity run of an upgrade candidate.
#[must_use = "call .run(...) to start"]
pub struct Handover {
    config: Config,
    version: Option<String>,
    fetcher: Option<Box<dyn handover_fetcher::Fetcher>>,
    on_master: Option<Box<dyn FnOnce(MasterHandle)>>,
}

impl Handover {
    /// Uses `config`.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            version: None,
            fetcher: None,
            on_master: None,
        }
    }

    /// Declares the program's version (usually `env!("CARGO_PKG_VERSION")`): shown in status,
    /// answered in the sanity run, and compared by fetchers that know versions.
    pub fn version(mut self, version: &str) -> Self {
        self.version = Some(version.to_string());
        self
    }

    /// Polls a custom fetcher for new binaries (instead of the one named in the config).
    pub fn fetcher(mut self, fetcher: impl handover_fetcher::Fetcher + 'static) -> Self {
        self.fetcher = Some(Box::new(fetcher));
        self
    }

    /// Called in the master once it runs, with a handle to restart, stop or watch it.
    pub fn on_master(mut self, f: impl FnOnce(MasterHandle) + 'static) -> Self {
        self.on_master = Some(Box::new(f));
        self
    }

    /// Runs the master, or, in a worker, `program`.
    ///
    /// - In the master: binds the listeners, starts workers and hands over between them until
    ///   `SIGTERM`/`SIGINT`; returns `Ok(())` after a graceful stop. `program` is not called.
    /// - In a worker: calls `program` with the [`Worker`] and returns when it does.
    /// - In the sanity run of an upgrade candidate: prints the check reply and exits 0.
    pub fn run<F, Fut, E>(self, program: F) -> Result<()>
    where
        F: FnOnce(Worker) -> Fut,
        Fut: Future<Output = std::result::Result<(), E>>,
        E: std::fmt::Display,
    {
        if answer_sanity_run(self.version.as_deref()) {
            std::process::exit(0);
        }
        if worker::is_worker() {
            return worker::run_worker(
                self.config.worker_threads,
                &self.config.restart_signals,
                program,
            );
        }
        drop(program);
        self.run_master()
    }

    fn run_master(self) -> Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the master runtime", e))?;
        let fetcher = match self.fetcher {
            Some(fetcher) => Some(fetcher),
            None => runtime.block_on(build_fetcher(&self.config))?,
        };
        let mut master = Master::new(self.config)?;
        master.set_version(self.version);
        if let Some(fetcher) = fetcher {
            master.set_fetcher(fetcher);
        }
        let handle = master.handle();
        if let Some(on_master) = self.on_master {
            on_master(handle);
        }
        runtime.block_on(master.run())
    }
}

/// For a program that does not start through [`Handover::run`] (the `handover` command is one):
/// when this process is the sanity run of an upgrade candidate, prints its answer (with
/// `version`) and returns `true`, and the program should exit 0 at once.
///
/// ```
/// if handover::answer_sanity_run(Some(env!("CARGO_PKG_VERSION"))) {
///     std::process::exit(0);
/// }
/// ```
pub fn answer_sanity_run(version: Option<&str>) -> bool {
    match std::env::var_os(protocol::ENV_CHECK) {
        Some(nonce) => {
            upgrade::answer_check(&nonce.to_string_lossy(), version);
            true
        }
        None => false,
    }
}

/// Entry points for the fuzz targets in `tests/fuzz`; not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    /// The ELF completeness check on bytes in memory.
    pub fn elf_intact(bytes: &[u8]) -> Result<(), String> {
        let mut input = std::io::Cursor::new(bytes);
        crate::upgrade::verify::elf_intact_in(&mut input, bytes.len() as u64)
            .map_err(|e| format!("{e:?}"))
    }

    /// Unpacks `bytes` as a downloaded release would be (format sniffed, member `app`).
    pub fn unpack(bytes: &[u8]) -> Result<(), String> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        /// Small, so that oversize entries are exercised as often as ordinary ones.
        const LIMIT: u64 = 64 * 1024;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("handover-fuzz-{}-{n}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
        let (archive, dest) = (dir.join("download"), dir.join("binary"));
        let result = std::fs::write(&archive, bytes)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                crate::upgrade::archive::unpack(
                    &archive,
                    handover_fetcher::ArchiveFormat::Sniff,
                    "app",
                    &dest,
                    LIMIT,
                )
                .map_err(|e| e.to_string())
            });
        match &result {
            Ok(unpacked) => {
                let written = std::fs::metadata(&dest).map(|m| m.len()).ok();
                assert!(unpacked.size <= LIMIT, "unpacked more than the limit");
                assert_eq!(written, Some(unpacked.size), "size is what was written");
            }
            Err(_) => assert!(!dest.exists(), "a failed unpack left its output behind"),
        }
        let _ = std::fs::remove_dir_all(&dir);
        result.map(|_| ())
    }
}
