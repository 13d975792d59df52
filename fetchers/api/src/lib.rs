//! The contract between handover's upgrade pipeline and the places new binaries come from.
//!
//! A [`Fetcher`] answers one question, "is there something newer than what is running, and if
//! so, here is its byte stream and what the source claims about it". Everything else (the
//! polling cadence, hashing, checksum and signature checks, the sanity run, the atomic swap, the
//! hand-over and the rollback) happens once, in the `handover` core, for every fetcher.
//!
//! A fetcher is chosen from configuration at run time, so the trait is object-safe and used as
//! `Box<dyn Fetcher>`.
//!
//! # Writing a fetcher
//!
//! Implement [`Fetcher::name`] and [`Fetcher::fetch`]; the other methods have defaults.
//!
//! ```
//! use handover_fetcher::{async_trait, Artifact, FetchError, Fetcher, Running};
//!
//! /// Offers the same bytes once.
//! struct Once(Option<Vec<u8>>);
//!
//! #[async_trait]
//! impl Fetcher for Once {
//!     fn name(&self) -> &str {
//!         "once"
//!     }
//!
//!     async fn fetch(&mut self, _running: &Running) -> Result<Option<Artifact>, FetchError> {
//!         Ok(self.0.take().map(|bytes| {
//!             let size = bytes.len() as u64;
//!             Artifact::new("memory", std::io::Cursor::new(bytes)).with_size(size)
//!         }))
//!     }
//! }
//! # let mut fetcher = Once(Some(b"#!/bin/true".to_vec()));
//! # let running = Running::new([0; 32], None);
//! # let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
//! # let artifact = rt.block_on(fetcher.fetch(&running)).unwrap().unwrap();
//! # assert_eq!(artifact.claimed_size(), Some(11));
//! ```

mod checksum;
mod legacy;
mod loopback;
pub mod size;
mod store;

pub use checksum::{find_in_checksum_file, parse_sha256};
pub use legacy::LegacyPolicy;
pub use loopback::is_loopback_host;
pub use store::{Listed, Store};

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;

pub use async_trait::async_trait;
pub use semver::Version;
use tokio::io::AsyncRead;
pub use tokio::sync::Notify;

/// A SHA-256 digest.
pub type Sha256 = [u8; 32];

/// What is running now, as the core knows it: fetchers use it to decide whether something is
/// newer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    /// SHA-256 of the live binary.
    pub sha256: Sha256,
    /// The running program's version, when the program declared one.
    pub version: Option<Version>,
}

impl Running {
    /// Describes the running binary.
    pub fn new(sha256: Sha256, version: Option<Version>) -> Self {
        Self { sha256, version }
    }
}

/// A candidate binary: its bytes, as a stream, and what its source claims about it.
///
/// Claims are checked by the core: a published SHA-256 must match the bytes, a signature must
/// verify against a configured key, a version must be greater than the running one.
pub struct Artifact {
    reader: Pin<Box<dyn AsyncRead + Send>>,
    origin: String,
    id: Option<String>,
    version: Option<Version>,
    size: Option<u64>,
    sha256: Option<Sha256>,
    signature: Option<Vec<u8>>,
    archive: Option<(ArchiveFormat, String)>,
    local: bool,
}

impl Artifact {
    /// An artifact read from `reader`; `origin` names where it came from in logs and errors
    /// (a path, a URL, `s3://bucket/key`).
    pub fn new(origin: impl Into<String>, reader: impl AsyncRead + Send + 'static) -> Self {
        Self {
            reader: Box::pin(reader),
            origin: origin.into(),
            id: None,
            version: None,
            size: None,
            sha256: None,
            signature: None,
            archive: None,
            local: false,
        }
    }

    /// The version the source claims.
    pub fn with_version(mut self, version: Version) -> Self {
        self.version = Some(version);
        self
    }

    /// The size in bytes the source announces; more bytes than this is an error.
    pub fn with_size(mut self, size: u64) -> Self {
        self.size = Some(size);
        self
    }

    /// The SHA-256 the source publishes (a digest field, a checksum file, object metadata) of
    /// the bytes of this stream: for an archive, of the archive.
    pub fn with_sha256(mut self, sha256: Sha256) -> Self {
        self.sha256 = Some(sha256);
        self
    }

    /// A detached minisign signature of the bytes, as published next to them.
    pub fn with_signature(mut self, signature: Vec<u8>) -> Self {
        self.signature = Some(signature);
        self
    }

    /// The stream is an archive (or a compressed file) holding the binary `member`: the core
    /// checks the archive's published SHA-256, then takes `member` out of it. `member` is a
    /// path inside the archive, or a file name that occurs once in it (unused for
    /// [`ArchiveFormat::Gzip`]). [`ArchiveFormat::Sniff`] lets the core tell the format from
    /// the bytes.
    pub fn with_archive(mut self, format: ArchiveFormat, member: impl Into<String>) -> Self {
        self.archive = Some((format, member.into()));
        self
    }

    /// The bytes come from this machine (a file), not over a network: the core's
    /// `checksum_required = "remote"` default does not ask such a candidate for a checksum.
    pub fn local(mut self) -> Self {
        self.local = true;
        self
    }

    /// A source-specific identity of this candidate (an ETag, a release id, a file's mtime),
    /// handed back through [`Fetcher::settled`] once the core is done with it.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Where the artifact came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The source-specific identity, if the fetcher set one.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The claimed version.
    pub fn claimed_version(&self) -> Option<&Version> {
        self.version.as_ref()
    }

    /// The claimed size.
    pub fn claimed_size(&self) -> Option<u64> {
        self.size
    }

    /// The published SHA-256.
    pub fn claimed_sha256(&self) -> Option<&Sha256> {
        self.sha256.as_ref()
    }

    /// The published signature.
    pub fn signature(&self) -> Option<&[u8]> {
        self.signature.as_deref()
    }

    /// How the stream is packed and which member is the binary, when it is an archive.
    pub fn archive(&self) -> Option<(ArchiveFormat, &str)> {
        self.archive.as_ref().map(|(f, m)| (*f, m.as_str()))
    }

    /// Whether the bytes come from this machine.
    pub fn is_local(&self) -> bool {
        self.local
    }

    /// The byte stream; the core reads it once.
    pub fn reader(&mut self) -> Pin<&mut (dyn AsyncRead + Send)> {
        self.reader.as_mut()
    }
}

impl fmt::Debug for Artifact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Artifact")
            .field("origin", &self.origin)
            .field("id", &self.id)
            .field("version", &self.version)
            .field("size", &self.size)
            .field("sha256", &self.sha256.map(hex_prefix))
            .field("signed", &self.signature.is_some())
            .field("archive", &self.archive)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

fn hex_prefix(digest: Sha256) -> String {
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// How a download is packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ArchiveFormat {
    /// Unknown: the core tells the format from the bytes (a zip or gzip signature, a tar
    /// header inside gzip), or takes them as the binary itself.
    Sniff,
    /// One gzip-compressed file (`.gz`).
    Gzip,
    /// A gzip-compressed tar archive (`.tar.gz`, `.tgz`).
    TarGz,
    /// A zip archive (stored or deflate entries).
    Zip,
}

impl ArchiveFormat {
    /// Splits a file name into its stem and the format its extension announces
    /// (case-insensitive): `app.tar.gz` → (`app`, `Some(TarGz)`), `app` → (`app`, `None`).
    pub fn split(name: &str) -> (&str, Option<Self>) {
        let lower = name.to_ascii_lowercase();
        for (extension, format) in [
            (".tar.gz", Self::TarGz),
            (".tgz", Self::TarGz),
            (".zip", Self::Zip),
            (".gz", Self::Gzip),
        ] {
            if lower.ends_with(extension) && lower.len() > extension.len() {
                return (&name[..name.len() - extension.len()], Some(format));
            }
        }
        (name, None)
    }

    /// The format a file name announces by its extension, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::split(name).1
    }
}

impl fmt::Display for ArchiveFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sniff => "sniffed",
            Self::Gzip => "gzip",
            Self::TarGz => "tar.gz",
            Self::Zip => "zip",
        })
    }
}

/// How the core finished with an artifact, reported back through [`Fetcher::settled`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Settlement {
    /// Installed and serving (or staged).
    Installed,
    /// Refused for these bytes: an older version, identical to what runs, quarantined, or
    /// proven bad by running it. The same publication gets the same answer; a fetcher need
    /// not offer it again until it changes.
    Rejected,
    /// The publication is incomplete or inconsistent: no checksum or signature yet, or one
    /// that does not match the bytes. The core looks again on its next poll, at the normal
    /// interval; a fetcher must offer the candidate again as soon as any part of the
    /// publication (the bytes, the checksum, the signature) may have changed, and may offer
    /// it on every poll when it cannot tell cheaply.
    NotReady,
}

/// A source of new binaries.
///
/// Implementers write [`name`](Fetcher::name) and [`fetch`](Fetcher::fetch). A fetcher that can
/// be told of changes (a file watcher) also overrides [`wake`](Fetcher::wake); one that keeps
/// conditional-request state (an ETag) overrides [`settled`](Fetcher::settled), so that a
/// download that failed half-way is offered again rather than forgotten.
#[async_trait]
pub trait Fetcher: Send + Sync {
    /// A short name for logs: `file`, `github`, `s3`, `http`.
    fn name(&self) -> &str;

    /// Looks for a candidate newer than `running`. `Ok(None)` means nothing new.
    ///
    /// Called on the core's interval (with jitter and error backoff) and whenever
    /// [`wake`](Fetcher::wake) fires. Must not block the thread: it runs on the master's runtime.
    async fn fetch(&mut self, running: &Running) -> Result<Option<Artifact>, FetchError>;

    /// A notifier the fetcher pokes when it learns of a change, so the core polls at once
    /// instead of waiting for the interval.
    fn wake(&self) -> Option<Arc<Notify>> {
        None
    }

    /// Called once the core has finished with the artifact whose [`Artifact::id`] is `id`.
    /// Transient failures (I/O, network) are not settled: the same candidate is offered again.
    fn settled(&mut self, id: &str, settlement: Settlement) {
        let _ = (id, settlement);
    }

    /// What this fetcher learned that should outlive the master's code when the master
    /// upgrades itself in place (the validators of what it settled, so the new code does not
    /// download the release it runs again), as text [`restore`](Fetcher::restore) reads back.
    fn memory(&self) -> Option<String> {
        None
    }

    /// Takes back what [`memory`](Fetcher::memory) returned in the master code this one
    /// replaced. Text it cannot read is ignored.
    fn restore(&mut self, memory: &str) {
        let _ = memory;
    }

    /// The place beside the releases where a staged rollout's manifest and the hosts' reports
    /// are kept, when this fetcher's source has one. Without it, upgrades are not staged.
    fn store(&mut self) -> Option<&mut dyn Store> {
        None
    }
}

#[async_trait]
impl<F: Fetcher + ?Sized> Fetcher for Box<F> {
    fn name(&self) -> &str {
        (**self).name()
    }
    async fn fetch(&mut self, running: &Running) -> Result<Option<Artifact>, FetchError> {
        (**self).fetch(running).await
    }
    fn wake(&self) -> Option<Arc<Notify>> {
        (**self).wake()
    }
    fn settled(&mut self, id: &str, settlement: Settlement) {
        (**self).settled(id, settlement)
    }
    fn memory(&self) -> Option<String> {
        (**self).memory()
    }
    fn restore(&mut self, memory: &str) {
        (**self).restore(memory)
    }
    fn store(&mut self) -> Option<&mut dyn Store> {
        (**self).store()
    }
}

/// Why a fetcher could not answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The source could not be reached or answered with a transport error; retried with backoff.
    #[error("{origin}: unreachable: {message}")]
    Unreachable {
        /// The source.
        origin: String,
        /// What the transport said.
        message: String,
    },
    /// The source answered, but with something that is not what was asked for.
    #[error("{origin}: {message}")]
    Invalid {
        /// The source.
        origin: String,
        /// What was wrong.
        message: String,
    },
    /// Nothing is published there yet, or only part of it: no such file, key or release (a
    /// 404), or a release without the asset this machine needs. Not a failure: the core logs
    /// it once and looks again at its normal interval, without back-off.
    #[error("{origin}: not published yet: {message}")]
    NotPublished {
        /// The source.
        origin: String,
        /// What is missing.
        message: String,
    },
    /// The source refused: credentials, permissions.
    #[error("{origin}: refused: {message}")]
    Refused {
        /// The source.
        origin: String,
        /// What the source said.
        message: String,
    },
    /// The source asked us to wait (a rate limit); the core waits at least this long.
    #[error("{origin}: rate limited, retry in {retry_after:?}")]
    RateLimited {
        /// The source.
        origin: String,
        /// How long to wait.
        retry_after: std::time::Duration,
    },
    /// A local I/O error.
    #[error("{origin}: {source}")]
    Io {
        /// What was being read.
        origin: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl FetchError {
    /// A transport failure.
    pub fn unreachable(origin: impl Into<String>, message: impl fmt::Display) -> Self {
        Self::Unreachable {
            origin: origin.into(),
            message: message.to_string(),
        }
    }

    /// A malformed answer.
    pub fn invalid(origin: impl Into<String>, message: impl fmt::Display) -> Self {
        Self::Invalid {
            origin: origin.into(),
            message: message.to_string(),
        }
    }

    /// Nothing (or only part of a release) is published yet.
    pub fn not_published(origin: impl Into<String>, message: impl fmt::Display) -> Self {
        Self::NotPublished {
            origin: origin.into(),
            message: message.to_string(),
        }
    }

    /// Whether this says only that nothing is published yet.
    pub fn is_not_published(&self) -> bool {
        matches!(self, Self::NotPublished { .. })
    }

    /// A refusal.
    pub fn refused(origin: impl Into<String>, message: impl fmt::Display) -> Self {
        Self::Refused {
            origin: origin.into(),
            message: message.to_string(),
        }
    }

    /// A local I/O error.
    pub fn io(origin: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            origin: origin.into(),
            source,
        }
    }

    /// How long the source asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}
