//! A handover fetcher that watches one object in S3, or in an S3-compatible store (MinIO,
//! Garage, Cloudflare R2, moto).
//!
//! Publishing a release is an upload:
//!
//! ```sh
//! aws s3 cp target/release/myapp s3://releases/myapp/linux-x86_64/myapp \
//!     --checksum-algorithm SHA256 --metadata version=1.4.2
//! ```
//!
//! Every poll is one conditional `HEAD` (`If-None-Match: <ETag of the last settled candidate>`):
//! an unchanged object costs a 304 and no download. A changed object is offered to the core as
//! an [`Artifact`](handover_fetcher::Artifact) carrying
//!
//! - its size (`Content-Length`);
//! - the SHA-256 it publishes: the object's own full-object checksum
//!   (`x-amz-checksum-sha256`), else the sidecar object `<key>.sha256`, else none; a multipart
//!   checksum-of-checksums is never used as the file's digest;
//! - the version in the object's metadata (`x-amz-meta-version`); an object with the running
//!   version is not offered, any other is;
//! - the detached minisign signature in `<key>.minisig`, when there is one;
//! - its ETag as the artifact id, remembered once the core settles the candidate.
//!
//! A missing key is [`FetchError::NotPublished`](handover_fetcher::FetchError::NotPublished).
//! The fetcher does not hash, verify or decide anything itself: the core does, while it streams
//! the body, under its `[upgrade]` policy (whether a checksum or signature is required, the size
//! limit, downgrades). The deprecated [`S3Config`] keys for that policy are only reported
//! ([`S3Config::legacy_policy`]).
//!
//! Credentials come from the standard AWS chain (environment, shared profile, web identity,
//! ECS, IMDS) through `aws-config`; none are logged. Library users with their own
//! [`aws_config::SdkConfig`] use [`S3Fetcher::with_sdk_config`].
//!
//! # Example
//!
//! ```no_run
//! use handover_fetcher::{Fetcher, Running};
//! use handover_fetcher_s3::{S3Config, S3Fetcher};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config = S3Config::new("releases", "myapp/linux-x86_64/myapp")
//!     .with_endpoint_url("https://minio.internal:9000"); // MinIO; leave out for AWS
//! let mut fetcher = S3Fetcher::new(config).await?;
//!
//! let running = Running::new([0; 32], Some("1.4.1".parse()?));
//! if let Some(artifact) = fetcher.fetch(&running).await? {
//!     println!("{} offers {:?}", artifact.origin(), artifact.claimed_version());
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Endpoints are `https://`; plain `http://` is accepted only to a loopback host (moto or MinIO
//! on this machine) with [`S3Config::allow_insecure_loopback`], the rule of the HTTP and GitHub
//! fetchers.
//!
//! The key's prefix is also the fetcher's [`S3Store`]: a staged rollout's `rollout.json` beside
//! the release, and the hosts' reports at `reports/<sha256>/<host>.json` below it.
//!
//! In `handover.toml` the same is the `[s3]` table; see [`S3Config`] for every field.

mod config;
mod endpoint;
mod error;
mod fetcher;
mod store;

pub use config::S3Config;
pub use error::Error;
pub use fetcher::S3Fetcher;
pub use store::S3Store;

/// The AWS crates this fetcher is built on, for callers that build an
/// [`SdkConfig`](aws_config::SdkConfig) or a [`Client`](aws_sdk_s3::Client) themselves.
pub use {aws_config, aws_sdk_s3};
