//! Why a [`GithubFetcher`](crate::GithubFetcher) could not be built.

/// A construction or configuration error.
///
/// Fetch results use [`FetchError`](handover_fetcher::FetchError); this type is only about
/// configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A `[github]` field has a value that cannot work.
    #[error("[github] {field}: {message}")]
    Config {
        /// The field, as spelled in `handover.toml`.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// `base_url` is not usable (see [`handover_fetcher_http::Error`]), or the HTTP client
    /// could not be built.
    #[error("[github] {0}")]
    Http(#[from] handover_fetcher_http::Error),
}
