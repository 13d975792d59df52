//! A [`Store`] over plain HTTP: a staged rollout's manifest and the hosts' reports under one
//! base URL (by default the directory of the fetcher's `url`).
//!
//! The protocol is three requests, each with the fetcher's bearer token when it has one:
//!
//! - `GET <base>/<name>`: the document (`200` with an `ETag`), or `404`. Top-level documents
//!   (the manifest and its signature, read on every poll) are asked for with `If-None-Match`,
//!   so an unchanged one costs a `304`.
//! - `PUT <base>/<name>` with the document: stored whole, replacing any earlier one (`2xx`).
//! - `GET <base>/<prefix>` with `Accept: application/json`, for a prefix ending in `/`: the
//!   documents below it, as `[{"name": "<prefix>…", "etag": "…"}]` (`404`: none).
//!
//! `handover rollout serve` answers it from a directory, and serves the releases too.

use std::collections::HashMap;

use handover_fetcher::{async_trait, FetchError, Listed, Store};
use reqwest::header::{ACCEPT, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use reqwest::{Client, RequestBuilder, StatusCode, Url};

use crate::net;

/// The largest document read: manifests and reports are small; a delta patch is not.
const MAX_DOCUMENT: u64 = 1 << 20;
const MAX_PATCH: u64 = 256 << 20;
/// The largest listing read (about 200 bytes per document).
const MAX_LISTING: u64 = 64 << 20;

/// Documents under one base URL, named by paths relative to it.
#[derive(Debug, Clone)]
pub struct HttpStore {
    client: Client,
    base: Url,
    token: Option<String>,
    /// Top-level document → (ETag, bytes) as last read.
    held: HashMap<String, (String, Vec<u8>)>,
}

/// One entry of a listing, as the protocol spells it.
#[derive(serde::Deserialize, serde::Serialize)]
struct Entry {
    name: String,
    etag: String,
}

impl HttpStore {
    /// Documents under `base` (its path ends in `/`; one is added when it does not), asked
    /// for with `client`, sending `token` as a bearer token.
    pub fn new(client: Client, mut base: Url, token: Option<String>) -> Self {
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Self {
            client,
            base,
            token,
            held: HashMap::new(),
        }
    }

    /// The base URL.
    pub fn base(&self) -> &Url {
        &self.base
    }

    fn url(&self, name: &str) -> Result<Url, FetchError> {
        let parts: Vec<&str> = name.split('/').collect();
        let last = parts.len() - 1;
        // Relative, no `.` or `..`, no empty segment but a final one (a listing's prefix).
        let fine = !name.is_empty()
            && !name.contains(['?', '#', '%', '\\'])
            && parts
                .iter()
                .enumerate()
                .all(|(i, p)| (i == last && i > 0 || !p.is_empty()) && *p != "." && *p != "..");
        if !fine {
            return Err(FetchError::invalid(
                self.locate(name),
                "a document name must be a relative path without `..`",
            ));
        }
        self.base
            .join(name)
            .map_err(|e| FetchError::invalid(self.locate(name), e.to_string()))
    }

    fn authorized(&self, request: RequestBuilder) -> RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }
}

#[async_trait]
impl Store for HttpStore {
    fn locate(&self, name: &str) -> String {
        format!("{}{name}", self.base)
    }

    async fn get(&mut self, name: &str) -> Result<Option<Vec<u8>>, FetchError> {
        let url = self.url(name)?;
        let origin = url.to_string();
        let top = !name.contains('/');
        let held = self.held.get(name).filter(|_| top);
        let mut request = self.authorized(self.client.get(url));
        if let Some((etag, _)) = held {
            request = request.header(IF_NONE_MATCH, etag);
        }
        let response = net::send(request, &origin).await?;
        match response.status() {
            StatusCode::NOT_MODIFIED => {
                return match held {
                    Some((_, bytes)) => Ok(Some(bytes.clone())),
                    None => Err(FetchError::invalid(
                        origin,
                        "304 to a GET without If-None-Match",
                    )),
                }
            }
            StatusCode::NOT_FOUND | StatusCode::GONE => {
                self.held.remove(name);
                return Ok(None);
            }
            s if s.is_success() => {}
            _ => return Err(net::status_error(&origin, &response)),
        }
        let etag = response
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let limit = if name.starts_with("patches/") {
            MAX_PATCH
        } else {
            MAX_DOCUMENT
        };
        let bytes = net::read_limited(response, limit, &origin).await?;
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
        let url = self.url(name)?;
        let origin = url.to_string();
        let request = self
            .authorized(self.client.put(url))
            .header(CONTENT_TYPE, "application/json")
            .body(bytes);
        let response = net::send(request, &origin).await?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(net::status_error(&origin, &response))
        }
    }

    async fn list(&mut self, prefix: &str) -> Result<Vec<Listed>, FetchError> {
        if !prefix.ends_with('/') {
            return Err(FetchError::invalid(
                self.locate(prefix),
                "an HTTP store lists directories: the prefix must end in `/`",
            ));
        }
        let url = self.url(prefix)?;
        let origin = url.to_string();
        let request = self
            .authorized(self.client.get(url))
            .header(ACCEPT, "application/json");
        let response = net::send(request, &origin).await?;
        match response.status() {
            StatusCode::NOT_FOUND | StatusCode::GONE => return Ok(Vec::new()),
            s if s.is_success() => {}
            _ => return Err(net::status_error(&origin, &response)),
        }
        let body = net::read_limited(response, MAX_LISTING, &origin).await?;
        let entries: Vec<Entry> = serde_json::from_slice(&body).map_err(|e| {
            FetchError::invalid(&origin, format!("not a listing ([{{name, etag}}]): {e}"))
        })?;
        Ok(entries
            .into_iter()
            .filter(|e| e.name.starts_with(prefix))
            .map(|e| Listed {
                name: e.name,
                tag: e.etag,
            })
            .collect())
    }
}

/// A listing as the protocol spells it, for a server: `(name, etag)` pairs as JSON.
pub fn listing_json<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<u8> {
    let entries: Vec<Entry> = entries
        .into_iter()
        .map(|(name, etag)| Entry {
            name: name.to_string(),
            etag: etag.to_string(),
        })
        .collect();
    serde_json::to_vec(&entries).unwrap_or_default()
}
