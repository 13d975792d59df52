//! Why an [`HttpFetcher`](crate::HttpFetcher) could not be built.

/// A construction or configuration error.
///
/// Fetch results use [`FetchError`](handover_fetcher::FetchError); this type is only about
/// configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A URL field does not parse, or is not an http(s) URL.
    #[error("{field}: {url:?} is not a valid URL: {message}")]
    BadUrl {
        /// The field, as spelled in `handover.toml`.
        field: &'static str,
        /// The value given.
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// A plain `http://` URL to a host that is not loopback, or to loopback without
    /// `allow_insecure_loopback`.
    #[error(
        "{field}: {url:?} is not https; plain http is only accepted for loopback hosts \
         (127.0.0.0/8, ::1, localhost) with allow_insecure_loopback = true"
    )]
    InsecureScheme {
        /// The field, as spelled in `handover.toml`.
        field: &'static str,
        /// The value given.
        url: String,
    },
    /// A field has a value that cannot work.
    #[error("{field}: {message}")]
    Config {
        /// The field, as spelled in `handover.toml`.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The HTTP client could not be built (TLS roots, for instance).
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}
