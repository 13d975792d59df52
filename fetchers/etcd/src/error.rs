//! Why an [`EtcdFetcher`](crate::EtcdFetcher) could not be built.

/// A construction or configuration error. Fetch results use
/// [`FetchError`](handover_fetcher::FetchError).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A field has a value that cannot work.
    #[error("{field} {message}")]
    Config {
        /// The field, as spelled in `handover.toml`.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The HTTP client that downloads binaries could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] handover_fetcher_http::Error),
}
