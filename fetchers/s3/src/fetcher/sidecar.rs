//! The sidecars beside the object: `<key>.sha256` and `<key>.minisig`.

use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use handover_fetcher::{find_in_checksum_file, FetchError, Sha256};

use super::claims::lone_digest;
use super::S3Fetcher;
use crate::error::{classify, Failure};

/// Sidecars (`.sha256`, `.minisig`) larger than this are not what they claim to be.
const SIDECAR_LIMIT: i64 = 64 * 1024;

impl S3Fetcher {
    /// The digest in `<key><sidecar_suffix>`, when the object publishes none itself: `None`
    /// without a sidecar, or when it holds no digest for the object.
    pub(super) async fn sidecar_sha256(
        &self,
        head: &HeadObjectOutput,
        etag: &str,
        sidecars: &mut Vec<(String, Option<String>)>,
    ) -> Result<Option<Sha256>, FetchError> {
        let why_not_object = if head.checksum_sha256().is_some() {
            "its SHA-256 checksum is a multipart checksum-of-checksums, not the file's"
        } else {
            "it has no SHA-256 checksum"
        };
        let suffix = &self.config.sidecar_suffix;
        if suffix.is_empty() {
            tracing::debug!(origin = %self.origin, %etag,
                "no published SHA-256: {why_not_object}, and no sidecar is configured");
            return Ok(None);
        }
        let key = format!("{}{suffix}", self.config.key);
        let Some((text, sidecar_etag)) = self.small_object(&key).await? else {
            sidecars.push((key.clone(), None));
            tracing::debug!(origin = %self.origin, %etag,
                "no published SHA-256: {why_not_object}, and s3://{}/{key} does not exist",
                self.config.bucket);
            return Ok(None);
        };
        sidecars.push((key.clone(), Some(sidecar_etag.unwrap_or_default())));
        let text = String::from_utf8_lossy(&text);
        let name = self
            .config
            .key
            .rsplit('/')
            .next()
            .unwrap_or(&self.config.key);
        let found = find_in_checksum_file(&text, name).or_else(|| lone_digest(&text));
        if found.is_none() {
            tracing::debug!(origin = %self.origin, %etag,
                "s3://{}/{key} holds no SHA-256 for {name:?}; offering without one",
                self.config.bucket);
        }
        Ok(found)
    }

    /// The detached signature in `<key><signature_suffix>`, when there is one.
    pub(super) async fn signature(
        &self,
        sidecars: &mut Vec<(String, Option<String>)>,
    ) -> Result<Option<Vec<u8>>, FetchError> {
        if self.config.signature_suffix.is_empty() {
            return Ok(None);
        }
        let key = format!("{}{}", self.config.key, self.config.signature_suffix);
        let found = self.small_object(&key).await?;
        let etag = found
            .as_ref()
            .map(|(_, etag)| etag.clone().unwrap_or_default());
        sidecars.push((key, etag));
        Ok(found.map(|(bytes, _)| bytes))
    }

    /// A sidecar's bytes and ETag; `None` when it does not exist.
    async fn small_object(
        &self,
        key: &str,
    ) -> Result<Option<(Vec<u8>, Option<String>)>, FetchError> {
        let origin = format!("s3://{}/{key}", self.config.bucket);
        let object = match self
            .client
            .get_object()
            .bucket(&self.config.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| classify(&origin, e))
        {
            Ok(object) => object,
            Err(Failure::NotFound) => return Ok(None),
            Err(Failure::Fetch(err)) => return Err(err),
            Err(other) => {
                return Err(FetchError::invalid(
                    &origin,
                    format!("unexpected answer: {other:?}"),
                ))
            }
        };
        if object
            .content_length()
            .is_some_and(|len| len > SIDECAR_LIMIT)
        {
            return Err(FetchError::invalid(
                &origin,
                format!("larger than {SIDECAR_LIMIT} bytes; not a checksum or signature"),
            ));
        }
        let etag = object.e_tag().map(str::to_owned);
        let bytes = object
            .body
            .collect()
            .await
            .map_err(|e| FetchError::unreachable(&origin, e))?
            .into_bytes();
        Ok(Some((bytes.to_vec(), etag)))
    }
}
