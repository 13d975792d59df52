//! The error type of the `handover` crate.

use std::path::PathBuf;

/// Everything that can go wrong in handover's library API.
///
/// Messages name what was wrong and what was kept, so they can be logged as they are.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is invalid.
    #[error("{origin}: {message}")]
    Config {
        /// Where the value came from (`handover.toml:7`, `builder`).
        origin: String,
        /// What is wrong with it.
        message: String,
    },
    /// A fetcher named in the configuration was not compiled in.
    #[error("fetcher \"{name}\" is not compiled in: rebuild handover with the cargo feature \"{feature}\"")]
    FetcherNotCompiled {
        /// The fetcher's name in the config.
        name: String,
        /// The cargo feature that enables it.
        feature: &'static str,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address, path or name.
        address: String,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
    /// A worker asked for a listener the master does not pass.
    #[error("no listener named {name:?} (the master passes: {available})")]
    NoSuchListener {
        /// The name asked for.
        name: String,
        /// The names that exist.
        available: String,
    },
    /// A listener was taken twice, or is of another kind than asked for.
    #[error("listener {name:?}: {message}")]
    Listener {
        /// The listener's name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The environment a worker was started with is not what the master sets.
    #[error("worker environment: {0}")]
    WorkerEnvironment(String),
    /// A worker process could not be started.
    #[error("cannot start worker from {binary}: {source}")]
    Spawn {
        /// The binary that was executed.
        binary: PathBuf,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
    /// An upgrade candidate was refused (or is not ready yet); the running worker was not
    /// touched. [`Refusal::disposition`](crate::refusal::Refusal::disposition) says what happens next.
    #[error("{verb} {origin}: {refusal}; still serving {kept}", verb = match refusal.disposition() {
        crate::refusal::Disposition::NotReady => "not installing yet",
        crate::refusal::Disposition::Transient => "could not take",
        _ => "rejected",
    })]
    Rejected {
        /// Where the candidate came from.
        origin: String,
        /// Why it was refused, with the facts.
        refusal: crate::refusal::Refusal,
        /// What keeps running (a version or a hash).
        kept: String,
    },
    /// A release could not be described or signed (`handover sign`).
    #[error("{}: {message}", file.display())]
    Sign {
        /// The binary or key file.
        file: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A fetcher failed.
    #[error(transparent)]
    Fetch(#[from] handover_fetcher::FetchError),

    /// A staged rollout's manifest could not be used: where it is, and what is wrong with it.
    #[error("rollout manifest {location}: {message}")]
    Rollout {
        /// Where the manifest is (`s3://bucket/prefix/rollout.json`, a path).
        location: String,
        /// What is wrong: malformed, unsigned, badly signed, replayed.
        message: String,
    },
    /// A delta patch could not be made or applied (see [`crate::rollout::delta`]).
    #[error("{what}: {message}")]
    Patch {
        /// What was being done (`making a patch`, `applying a patch`).
        what: String,
        /// What went wrong: zstd's error, a size over the limit.
        message: String,
    },
    /// The master is gone or refused the request.
    #[error("master: {0}")]
    Master(String),
    /// Any other I/O error, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn config(origin: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Config {
            origin: origin.into(),
            message: message.into(),
        }
    }
}

/// `Result` with handover's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
