//! The prefix that holds the watched key, as a [`Store`]: a rollout manifest beside the
//! release (`releases/myapp` → `releases/rollout.json`), the hosts' reports below it.

use std::collections::HashMap;

use aws_sdk_s3::Client;
use handover_fetcher::{async_trait, FetchError, Listed, Store};

use crate::error::{classify, Failure};

/// The largest document read: manifests and reports are a few hundred bytes.
const MAX_DOCUMENT: i64 = 1 << 20;
/// The largest delta patch read (documents under `patches/`).
const MAX_PATCH: i64 = 256 << 20;

/// Documents under one prefix of a bucket, named by paths relative to it.
///
/// Documents at the top of the prefix (the manifest and its signature, read on every poll)
/// are read with `If-None-Match: <ETag of the copy held>`, so an unchanged one costs a `304`
/// and no body. Reports, below, are listed with their ETags and read only when those change
/// (the core keeps what it read).
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    /// Top-level document → (ETag, bytes) as last read.
    held: HashMap<String, (String, Vec<u8>)>,
}

impl S3Store {
    /// Documents in `bucket` under `prefix` (`""`, or ending in `/`).
    pub fn new(client: Client, bucket: impl Into<String>, prefix: impl Into<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
            prefix: prefix.into(),
            held: HashMap::new(),
        }
    }

    /// The store beside `key`: its "directory".
    pub fn beside(client: Client, bucket: impl Into<String>, key: &str) -> Self {
        let prefix = key.rfind('/').map(|i| &key[..=i]).unwrap_or("");
        Self::new(client, bucket, prefix)
    }

    fn key(&self, name: &str) -> Result<String, FetchError> {
        let fine = !name.is_empty()
            && !name.starts_with('/')
            && name
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != "..");
        if fine {
            Ok(format!("{}{name}", self.prefix))
        } else {
            Err(FetchError::invalid(
                self.locate(name),
                "a document name must be a relative path without `..`",
            ))
        }
    }
}

#[async_trait]
impl Store for S3Store {
    fn locate(&self, name: &str) -> String {
        format!("s3://{}/{}{name}", self.bucket, self.prefix)
    }

    async fn get(&mut self, name: &str) -> Result<Option<Vec<u8>>, FetchError> {
        let key = self.key(name)?;
        let origin = self.locate(name);
        let top = !name.contains('/');
        let held = self.held.get(name).filter(|_| top);
        let sent = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .set_if_none_match(held.map(|(etag, _)| etag.clone()))
            .send()
            .await;
        let object = match sent.map_err(|e| classify(&origin, e)) {
            Ok(object) => object,
            Err(Failure::NotModified) => {
                return match held {
                    Some((_, bytes)) => Ok(Some(bytes.clone())),
                    None => Err(FetchError::invalid(
                        origin,
                        "304 to a GET without If-None-Match",
                    )),
                }
            }
            Err(Failure::NotFound) => {
                self.held.remove(name);
                return Ok(None);
            }
            Err(Failure::PreconditionFailed) => {
                return Err(FetchError::unreachable(
                    origin,
                    "412 to a GET without If-Match",
                ))
            }
            Err(Failure::Fetch(err)) => return Err(err),
        };
        let limit = if name.starts_with("patches/") {
            MAX_PATCH
        } else {
            MAX_DOCUMENT
        };
        if object.content_length().is_some_and(|len| len > limit) {
            return Err(FetchError::invalid(
                origin,
                format!(
                    "{} bytes: too large for a rollout document (at most {limit})",
                    object.content_length().unwrap_or(0)
                ),
            ));
        }
        let etag = object.e_tag().map(str::to_owned);
        let bytes = object
            .body
            .collect()
            .await
            .map_err(|e| FetchError::unreachable(&origin, format!("reading the body: {e}")))?
            .into_bytes()
            .to_vec();
        match etag.filter(|_| top) {
            Some(etag) => {
                self.held.insert(name.to_string(), (etag, bytes.clone()));
            }
            None => {
                self.held.remove(name);
            }
        }
        Ok(Some(bytes))
    }

    async fn put(&mut self, name: &str, bytes: Vec<u8>) -> Result<(), FetchError> {
        let key = self.key(name)?;
        let origin = self.locate(name);
        // A PUT replaces the object whole: readers see the old bytes or the new ones.
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/json")
            .body(bytes.into())
            .send()
            .await
            .map_err(|e| match classify(&origin, e) {
                Failure::Fetch(err) => err,
                other => FetchError::refused(&origin, format!("PUT answered {other:?}")),
            })?;
        Ok(())
    }

    async fn list(&mut self, prefix: &str) -> Result<Vec<Listed>, FetchError> {
        let full = format!("{}{prefix}", self.prefix);
        let origin = self.locate(prefix);
        let mut listed = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| match classify(&origin, e) {
                Failure::Fetch(err) => err,
                Failure::NotFound => FetchError::refused(&origin, "no such bucket"),
                other => FetchError::refused(&origin, format!("LIST answered {other:?}")),
            })?;
            for object in page.contents() {
                let (Some(key), Some(etag)) = (object.key(), object.e_tag()) else {
                    continue;
                };
                if let Some(name) = key.strip_prefix(&self.prefix) {
                    listed.push(Listed {
                        name: name.to_string(),
                        tag: etag.to_string(),
                    });
                }
            }
        }
        Ok(listed)
    }
}
