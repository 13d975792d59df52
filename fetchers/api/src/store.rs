//! Small named documents kept beside the releases: a staged rollout's manifest and the reports
//! hosts write about it. The store only moves bytes; what they mean is decided in the core.

use async_trait::async_trait;

use crate::FetchError;

/// A document found by [`Store::list`]: its name, and a tag that changes whenever its content
/// does (an ETag, a modification time and size), so that a reader can keep what it already read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The name, as given to [`Store::get`].
    pub name: String,
    /// Changes whenever the content changes.
    pub tag: String,
}

/// Where a fetcher's releases live, as a place for small documents, named by relative paths
/// such as `rollout.json` or `reports/<release>/<host>.json` (resolved against the directory or
/// prefix that holds the releases).
#[async_trait]
pub trait Store: Send + Sync {
    /// Where `name` is, for logs and errors (`s3://bucket/prefix/name`, a path).
    fn locate(&self, name: &str) -> String;

    /// The document's bytes, `Ok(None)` when there is none.
    async fn get(&mut self, name: &str) -> Result<Option<Vec<u8>>, FetchError>;

    /// Writes the document whole, replacing any earlier one: a reader sees the old bytes or the
    /// new ones, never a mix.
    async fn put(&mut self, name: &str, bytes: Vec<u8>) -> Result<(), FetchError>;

    /// The documents whose names start with `prefix`, in no particular order.
    async fn list(&mut self, prefix: &str) -> Result<Vec<Listed>, FetchError>;
}
