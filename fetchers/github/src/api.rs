//! GitHub's REST API through octocrab: conditional requests, rate limits, and asset downloads
//! that follow the storage redirect without the token.
//!
//! octocrab sends every request to the API root (`base_url`): it adds the token (only for that
//! host), the API version header, and returns the raw answer, so the 304, the `ETag` and the
//! `x-ratelimit-*` headers stay visible. What is not under the API root (the asset storage host
//! a download redirects to) is fetched with the plain reqwest client, without the token.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use handover_fetcher::FetchError;
use handover_fetcher_http::net;
use octocrab::service::middleware::auth_header::AuthHeaderLayer;
use octocrab::service::middleware::base_uri::BaseUriLayer;
use octocrab::service::middleware::reqwest_connector::ReqwestConnector;
use octocrab::{AuthState, Octocrab, OctocrabBuilder};
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, ETAG, IF_NONE_MATCH, LOCATION};
use reqwest::{Body, Client, Response, StatusCode, Url};
use serde::de::DeserializeOwned;

use crate::release::Asset;
use crate::Error;

/// The largest JSON answer read (100 releases with many assets stay far below).
const MAX_JSON: u64 = 32 << 20;
/// How long to wait on a rate limit that names no reset time.
const DEFAULT_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// The longest wait a reset time can ask for (a skewed clock must not park the fetcher).
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(3600);

/// An answer to a conditional `GET`.
pub(crate) enum Answer<T> {
    /// 304: the `If-None-Match` ETag still matches.
    NotModified,
    /// 200, with the body and its ETag.
    Fresh { body: T, etag: Option<String> },
    /// 404: see [`Api::not_found`] for what it means.
    NotFound,
}

/// The API client and what it learned about the rate limit.
pub(crate) struct Api {
    /// Requests under `base`: octocrab on `client`, holding the token. Built on first use:
    /// octocrab spawns its worker task on the current tokio runtime, and
    /// [`GithubFetcher::new`](crate::GithubFetcher::new) may be called outside one.
    github: Option<Octocrab>,
    /// `Authorization` for the API root (marked sensitive: never shown by `Debug`).
    authorization: Option<HeaderValue>,
    /// Requests elsewhere (the storage host): never with the token.
    client: Client,
    /// The API root, ending with `/`.
    base: Url,
    /// The same, for octocrab.
    base_uri: http::Uri,
    allow_insecure_loopback: bool,
    /// Set from `x-ratelimit-remaining: 0`: no request until then.
    limited_until: Option<SystemTime>,
}

impl Api {
    /// `client` must not follow redirects: [`Api`] follows them, deciding where the token goes.
    pub(crate) fn new(
        client: Client,
        base: Url,
        token: Option<&str>,
        allow_insecure_loopback: bool,
    ) -> Result<Self, Error> {
        let mut base = base;
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let authorization = token
            .map(|token| {
                let mut value =
                    HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                        Error::Config {
                            field: "token",
                            message: "not usable in an HTTP header (control characters?)".into(),
                        }
                    })?;
                value.set_sensitive(true);
                Ok::<_, Error>(value)
            })
            .transpose()?;
        let base_uri = base.as_str().parse().map_err(|e| Error::Config {
            field: "base_url",
            message: format!("not usable as a URI: {e}"),
        })?;
        Ok(Self {
            github: None,
            authorization,
            client,
            base,
            base_uri,
            allow_insecure_loopback,
            limited_until: None,
        })
    }

    /// octocrab's own stack, minus what does not fit a poller: no retries (the core backs off
    /// and honours rate limits), no HTTP cache (the fetcher keeps its ETag until a candidate is
    /// settled), and our `User-Agent` (from `client`) instead of `octocrab`. `base_url` is the
    /// base URI, and the only host the token goes to (the upload host is set to the same).
    /// octocrab sends `X-GitHub-Api-Version: 2022-11-28` itself.
    fn github(&mut self) -> &Octocrab {
        self.github.get_or_insert_with(|| {
            OctocrabBuilder::new_empty()
                .with_service(ReqwestConnector::new(self.client.clone()))
                .with_layer(&BaseUriLayer::new(self.base_uri.clone()))
                .with_layer(&AuthHeaderLayer::new(
                    self.authorization.clone(),
                    self.base_uri.clone(),
                    self.base_uri.clone(),
                ))
                .with_auth(AuthState::None)
                .build()
                .unwrap_or_else(|never| match never {})
        })
    }

    pub(crate) fn has_token(&self) -> bool {
        self.authorization.is_some()
    }

    /// `path` (no leading `/`) under the API root.
    pub(crate) fn endpoint(&self, path: &str) -> Url {
        // The root ends with `/` and the path is relative, so `join` appends (keeping
        // GitHub Enterprise's `/api/v3/`).
        self.base.join(path).unwrap_or_else(|_| self.base.clone())
    }

    /// Whether `url` is under the API root (same origin, same path prefix): octocrab's.
    fn is_api(&self, url: &Url) -> bool {
        same_origin(url, &self.base) && url.path().starts_with(self.base.path())
    }

    /// `GET url` as JSON, conditional on `etag`.
    pub(crate) async fn get_json<T: DeserializeOwned>(
        &mut self,
        url: Url,
        etag: Option<&str>,
    ) -> Result<Answer<T>, FetchError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/vnd.github+json"),
        );
        if let Some(etag) = etag.and_then(|e| HeaderValue::from_str(e).ok()) {
            headers.insert(IF_NONE_MATCH, etag);
        }
        // A renamed repository answers 301 to its new API address: under the API root, so it is
        // asked through octocrab again, with the token.
        let (response, at) = self.get(url, headers, true).await?;
        let origin = at.as_str();
        match response.status() {
            StatusCode::NOT_MODIFIED => return Ok(Answer::NotModified),
            StatusCode::NOT_FOUND => return Ok(Answer::NotFound),
            s if s.is_success() => {}
            _ => return Err(self.error(&at, response).await),
        }
        let etag = response
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = net::read_limited(response, MAX_JSON, origin).await?;
        let body = serde_json::from_slice(&bytes).map_err(|e| {
            FetchError::invalid(origin, format!("malformed JSON from the GitHub API: {e}"))
        })?;
        Ok(Answer::Fresh { body, etag })
    }

    /// Whether the API resource at `url` exists (and the token may see it): a 200 or a 404.
    pub(crate) async fn exists(&mut self, url: Url) -> Result<bool, FetchError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("application/vnd.github+json"),
        );
        let (response, at) = self.get(url, headers, true).await?;
        match response.status() {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(self.error(&at, response).await),
        }
    }

    /// A 404 where something should be: no such repository, or the token cannot see it.
    pub(crate) fn not_found(&self, url: &Url) -> FetchError {
        let hint = if self.has_token() {
            "no such repository, release or asset, or the token cannot see it"
        } else {
            "no such repository, release or asset (a private repository needs a token)"
        };
        FetchError::refused(url.as_str(), format!("HTTP 404 Not Found: {hint}"))
    }

    /// Starts downloading `asset`: its API URL with `Accept: application/octet-stream` (through
    /// octocrab), then the redirect to the storage host with the plain client, so that the token
    /// is not forwarded (the storage host answers 400 to an `Authorization` header). `None`
    /// when the asset is gone (a 404: deleted since the release was listed).
    pub(crate) async fn download(&mut self, asset: &Asset) -> Result<Option<Response>, FetchError> {
        let url = asset.url.clone();
        if !net::may_follow(&url, self.allow_insecure_loopback) {
            return Err(FetchError::invalid(
                url.as_str(),
                format!("asset {} is not served over https", asset.name),
            ));
        }
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/octet-stream"));
        let (response, at) = self.get(url, headers, false).await?;
        if response.status() == StatusCode::NOT_FOUND {
            tracing::debug!(asset = %asset.name, url = %at, "asset gone since the listing");
            return Ok(None);
        }
        if !response.status().is_success() {
            return Err(self.error(&at, response).await);
        }
        Ok(Some(response))
    }

    /// `GET url`, following up to [`net::MAX_REDIRECTS`] redirects by hand. Requests under the
    /// API root go through octocrab (with the token); a redirect is sent there only when
    /// `api_on_redirect`, else (and anywhere else) with the plain client, without the token.
    /// Returns the final answer and the URL that gave it.
    async fn get(
        &mut self,
        mut url: Url,
        headers: HeaderMap,
        api_on_redirect: bool,
    ) -> Result<(Response, Url), FetchError> {
        if let Some(wait) = self.rate_limit_wait() {
            return Err(FetchError::RateLimited {
                origin: url.to_string(),
                retry_after: wait,
            });
        }
        for hop in 0..=net::MAX_REDIRECTS {
            let response = if self.is_api(&url) && (hop == 0 || api_on_redirect) {
                let response = self
                    .github()
                    ._get_with_headers(url.as_str(), Some(headers.clone()))
                    .await
                    .map_err(|e| octocrab_error(url.as_str(), &e))?;
                self.note_rate_limit(response.headers());
                // The body stays a stream: wrapped, it reads like any other answer.
                Response::from(response.map(Body::wrap))
            } else {
                let request = self.client.get(url.clone()).headers(headers.clone());
                net::send(request, url.as_str()).await?
            };
            let status = response.status();
            if !status.is_redirection() || status == StatusCode::NOT_MODIFIED {
                return Ok((response, url));
            }
            let next = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|location| url.join(location).ok())
                .ok_or_else(|| {
                    FetchError::invalid(
                        url.as_str(),
                        format!("HTTP {status} without a usable Location"),
                    )
                })?;
            if !net::may_follow(&next, self.allow_insecure_loopback) {
                return Err(FetchError::invalid(
                    url.as_str(),
                    format!("refusing to follow a redirect to {next}: not https"),
                ));
            }
            tracing::debug!(from = %url, to = %next, "following redirect");
            url = next;
        }
        Err(FetchError::invalid(
            url.as_str(),
            format!("more than {} redirects", net::MAX_REDIRECTS),
        ))
    }

    fn rate_limit_wait(&mut self) -> Option<Duration> {
        let until = self.limited_until?;
        match until.duration_since(SystemTime::now()) {
            Ok(wait) if !wait.is_zero() => Some(wait.max(Duration::from_secs(1))),
            _ => {
                self.limited_until = None;
                None
            }
        }
    }

    /// Remembers an exhausted rate limit until its reset time.
    fn note_rate_limit(&mut self, headers: &HeaderMap) {
        if header(headers, "x-ratelimit-remaining").as_deref() == Some("0") {
            if let Some(reset) = reset_time(headers) {
                tracing::warn!(
                    retry_in = ?reset.duration_since(SystemTime::now()).unwrap_or_default(),
                    "GitHub API rate limit exhausted{}",
                    if self.has_token() {
                        ""
                    } else {
                        " (no token: 60 requests an hour; set token or GITHUB_TOKEN)"
                    }
                );
                self.limited_until = Some(reset);
            }
        }
    }

    /// An unsuccessful answer as a [`FetchError`], with GitHub's `message` when it sent one.
    async fn error(&mut self, url: &Url, response: Response) -> FetchError {
        let origin = url.as_str();
        let status = response.status();
        let headers = response.headers().clone();
        let message = match net::read_limited(response, 64 << 10, origin).await {
            Ok(body) => github_message(&body),
            Err(_) => String::new(),
        };
        let said = if message.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {message}")
        };
        let exhausted = header(&headers, "x-ratelimit-remaining").as_deref() == Some("0");
        let rate_limited = |retry_after| FetchError::RateLimited {
            origin: origin.to_string(),
            retry_after,
        };
        match status {
            StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS => {
                if let Some(wait) = net::retry_after(&headers) {
                    rate_limited(wait.max(Duration::from_secs(1)))
                } else if exhausted {
                    let wait = reset_time(&headers)
                        .and_then(|reset| reset.duration_since(SystemTime::now()).ok())
                        .unwrap_or(DEFAULT_RATE_LIMIT_WAIT);
                    rate_limited(wait.clamp(Duration::from_secs(1), MAX_RATE_LIMIT_WAIT))
                } else if status == StatusCode::TOO_MANY_REQUESTS
                    || message.to_ascii_lowercase().contains("rate limit")
                {
                    // A secondary rate limit without Retry-After: GitHub asks for a minute.
                    rate_limited(DEFAULT_RATE_LIMIT_WAIT)
                } else {
                    FetchError::refused(origin, said)
                }
            }
            StatusCode::UNAUTHORIZED => {
                FetchError::refused(origin, format!("{said} (check the token)"))
            }
            StatusCode::NOT_FOUND => self.not_found(url),
            s if s.is_server_error() => FetchError::unreachable(origin, said),
            _ => FetchError::invalid(origin, format!("unexpected {said}")),
        }
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
}

/// `x-ratelimit-reset` (seconds since the epoch) as a time.
fn reset_time(headers: &HeaderMap) -> Option<SystemTime> {
    let seconds: u64 = header(headers, "x-ratelimit-reset")?.parse().ok()?;
    let reset = UNIX_EPOCH + Duration::from_secs(seconds);
    let latest = SystemTime::now() + MAX_RATE_LIMIT_WAIT;
    Some(reset.min(latest))
}

/// GitHub's error bodies are `{"message": "...", "documentation_url": "..."}`; anything else
/// (the storage host speaks XML) is quoted, cut at 200 characters.
fn github_message(body: &[u8]) -> String {
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    if let Some(message) = json.as_ref().and_then(|v| v.get("message")?.as_str()) {
        return message.to_string();
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// A failed octocrab request: reqwest's error, when it is the cause, says what happened.
fn octocrab_error(origin: &str, err: &octocrab::Error) -> FetchError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = source {
        if let Some(err) = cause.downcast_ref::<reqwest::Error>() {
            return net::transport_error(origin, err);
        }
        source = cause.source();
    }
    FetchError::unreachable(origin, net::describe(err))
}

fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let api = Url::parse("https://api.github.com/").unwrap();
        assert!(same_origin(
            &Url::parse("https://api.github.com:443/x").unwrap(),
            &api
        ));
        assert!(!same_origin(
            &Url::parse("https://objects.githubusercontent.com/x").unwrap(),
            &api
        ));
        assert!(!same_origin(
            &Url::parse("http://api.github.com/x").unwrap(),
            &api
        ));
    }

    #[test]
    fn endpoints_keep_the_enterprise_prefix() {
        let client = Client::new();
        let ghe = Api::new(
            client.clone(),
            Url::parse("https://ghe.example.com/api/v3").unwrap(),
            None,
            false,
        )
        .unwrap();
        assert_eq!(
            ghe.endpoint("repos/a/b/releases/latest").as_str(),
            "https://ghe.example.com/api/v3/repos/a/b/releases/latest"
        );
        let public = Api::new(
            client,
            Url::parse("https://api.github.com").unwrap(),
            None,
            false,
        )
        .unwrap();
        assert_eq!(
            public.endpoint("repos/a/b/releases?per_page=100").as_str(),
            "https://api.github.com/repos/a/b/releases?per_page=100"
        );
        // Only the API root goes through octocrab (and gets the token).
        let under = |api: &Api, url: &str| api.is_api(&Url::parse(url).unwrap());
        assert!(under(
            &ghe,
            "https://ghe.example.com/api/v3/repos/a/b/releases/assets/1"
        ));
        assert!(!under(&ghe, "https://ghe.example.com/storage/releases/1"));
        assert!(under(
            &public,
            "https://api.github.com/repos/a/b/releases/latest"
        ));
        assert!(!under(&public, "https://objects.githubusercontent.com/x"));
    }

    #[test]
    fn error_messages() {
        assert_eq!(
            github_message(
                br#"{"message":"Bad credentials","documentation_url":"https://docs.github.com/rest"}"#
            ),
            "Bad credentials"
        );
        assert_eq!(github_message(b"  plain text "), "plain text");
    }
}
