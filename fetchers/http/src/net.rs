//! HTTP building blocks shared by the fetchers that download over https: this crate's
//! [`HttpFetcher`](crate::HttpFetcher) and the GitHub fetcher.
//!
//! The rules they encode:
//! - only `https://` URLs, except `http://` to a loopback host (127.0.0.0/8, `::1`,
//!   `localhost`) when the configuration allows it (tests, a local mirror);
//! - redirects, when followed, obey the same rule; reqwest drops `Authorization` when a redirect
//!   leaves the host (scheme, host or port change);
//! - every transport failure is [`FetchError::Unreachable`] (the core retries with backoff), a
//!   refusal by the server is [`FetchError::Refused`], a rate limit is
//!   [`FetchError::RateLimited`], and a small file (a checksum list, a signature) larger than
//!   its limit is [`FetchError::Invalid`]. What a 404 means (nothing published yet, or no
//!   signature) is for the caller to say.

use std::fmt::Write as _;
use std::io;
use std::time::Duration;

use futures_util::TryStreamExt;
use handover_fetcher::{FetchError, Sha256};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{redirect, Client, RequestBuilder, Response, StatusCode, Url};
use sha2::Digest;
use tokio::io::AsyncRead;

use crate::Error;

/// How many redirects a followed request may take.
pub const MAX_REDIRECTS: usize = 10;

/// The `User-Agent` sent with every request (GitHub's API refuses requests without one).
pub fn user_agent() -> &'static str {
    concat!("handover/", env!("CARGO_PKG_VERSION"))
}

/// Parses `url` (the value of the configuration field `field`) and checks it may be fetched:
/// `https://`, or `http://` to a loopback host when `allow_insecure_loopback` is set. URLs
/// carrying a user name or password are refused: they would end up in logs.
pub fn check_url(
    field: &'static str,
    url: &str,
    allow_insecure_loopback: bool,
) -> Result<Url, Error> {
    let bad = |message: &str| Error::BadUrl {
        field,
        url: url.to_string(),
        message: message.to_string(),
    };
    let parsed = Url::parse(url.trim()).map_err(|e| bad(&e.to_string()))?;
    if parsed.host().is_none() {
        return Err(bad("no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad(
            "credentials in a URL would be logged; use `token` instead",
        ));
    }
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if allow_insecure_loopback && is_loopback(&parsed) => Ok(parsed),
        "http" => Err(Error::InsecureScheme {
            field,
            url: url.to_string(),
        }),
        other => Err(bad(&format!(
            "the scheme {other:?} is not supported (https only)"
        ))),
    }
}

/// Whether `url` names a loopback host: an address in 127.0.0.0/8, `::1` (also as
/// `::ffff:127.x.y.z`), or `localhost`.
pub fn is_loopback(url: &Url) -> bool {
    url.host_str()
        .is_some_and(handover_fetcher::is_loopback_host)
}

/// Whether a redirect may lead to `url`: the same rule as [`check_url`].
pub fn may_follow(url: &Url, allow_insecure_loopback: bool) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => allow_insecure_loopback && is_loopback(url),
        _ => false,
    }
}

/// How a [`client`] behaves.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ClientOptions {
    /// How long to wait for a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// How long a whole request may take, body included.
    pub timeout: Duration,
    /// Whether redirects may lead to `http://` loopback URLs.
    pub allow_insecure_loopback: bool,
    /// Follow redirects (up to [`MAX_REDIRECTS`], to URLs [`may_follow`] accepts). When false,
    /// a 3xx answer is returned as is, for callers that follow redirects themselves.
    pub follow_redirects: bool,
}

impl ClientOptions {
    /// Options with the given timeouts, redirects followed, loopback http refused.
    pub fn new(connect_timeout: Duration, timeout: Duration) -> Self {
        Self {
            connect_timeout,
            timeout,
            allow_insecure_loopback: false,
            follow_redirects: true,
        }
    }
}

/// Builds a reqwest client on the workspace's rustls stack with `options`.
pub fn client(options: &ClientOptions) -> Result<Client, Error> {
    let policy = if options.follow_redirects {
        let allow_insecure_loopback = options.allow_insecure_loopback;
        redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= MAX_REDIRECTS {
                attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
            } else if !may_follow(attempt.url(), allow_insecure_loopback) {
                let to = attempt.url().to_string();
                attempt.error(format!("refusing to follow a redirect to {to}: not https"))
            } else {
                attempt.follow()
            }
        })
    } else {
        redirect::Policy::none()
    };
    Client::builder()
        .user_agent(user_agent())
        .connect_timeout(options.connect_timeout)
        .timeout(options.timeout)
        .redirect(policy)
        .build()
        .map_err(Error::Client)
}

/// A response header as text, when it is there and is text.
pub fn header(response: &Response, name: reqwest::header::HeaderName) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Sends `request`, turning a transport failure into a [`FetchError`] (see [`transport_error`]).
/// Any status comes back as `Ok`: callers decide what 304 or 404 mean to them.
pub async fn send(request: RequestBuilder, origin: &str) -> Result<Response, FetchError> {
    request
        .send()
        .await
        .map_err(|e| transport_error(origin, &e))
}

/// A reqwest error as a [`FetchError`]: a refused redirect is [`FetchError::Invalid`];
/// everything else (connection refused, DNS, TLS, timeouts, a body cut short) is
/// [`FetchError::Unreachable`].
pub fn transport_error(origin: &str, err: &reqwest::Error) -> FetchError {
    if err.is_redirect() {
        FetchError::invalid(origin, describe(err))
    } else if err.is_timeout() {
        FetchError::unreachable(origin, format!("timed out: {}", describe(err)))
    } else {
        FetchError::unreachable(origin, describe(err))
    }
}

/// An error and its sources, joined with `: ` (reqwest's own message alone is rarely enough).
pub fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            let _ = write!(out, ": {text}");
        }
        source = cause.source();
    }
    out
}

/// An unsuccessful answer as a [`FetchError`]:
/// - 429, and 503 with `Retry-After`: [`FetchError::RateLimited`] (`Retry-After` seconds, else
///   60 s);
/// - 401, 403, 404, 410: [`FetchError::Refused`];
/// - 408 and 5xx: [`FetchError::Unreachable`] (retried with backoff);
/// - anything else: [`FetchError::Invalid`].
pub fn status_error(origin: &str, response: &Response) -> FetchError {
    let status = response.status();
    let wait = retry_after(response.headers());
    match status {
        StatusCode::TOO_MANY_REQUESTS => FetchError::RateLimited {
            origin: origin.to_string(),
            retry_after: wait.unwrap_or(Duration::from_secs(60)),
        },
        StatusCode::SERVICE_UNAVAILABLE if wait.is_some() => FetchError::RateLimited {
            origin: origin.to_string(),
            retry_after: wait.unwrap_or_default(),
        },
        StatusCode::UNAUTHORIZED
        | StatusCode::FORBIDDEN
        | StatusCode::NOT_FOUND
        | StatusCode::GONE => FetchError::refused(origin, format!("HTTP {status}")),
        s if s.is_server_error() || s == StatusCode::REQUEST_TIMEOUT => {
            FetchError::unreachable(origin, format!("HTTP {status}"))
        }
        _ => FetchError::invalid(origin, format!("unexpected HTTP {status}")),
    }
}

/// The `Retry-After` header, when it gives a number of seconds.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

/// Refuses a body announced as larger than `max_size` bytes.
pub fn check_size(origin: &str, announced: Option<u64>, max_size: u64) -> Result<(), FetchError> {
    match announced {
        Some(size) if size > max_size => Err(FetchError::invalid(
            origin,
            format!("announces {size} bytes, more than max_size ({max_size} bytes)"),
        )),
        _ => Ok(()),
    }
}

/// Reads a whole body of at most `max_size` bytes into memory.
pub async fn read_limited(
    mut response: Response,
    max_size: u64,
    origin: &str,
) -> Result<Vec<u8>, FetchError> {
    check_size(origin, response.content_length(), max_size)?;
    let mut out = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(origin, &e))?
    {
        if out.len() as u64 + chunk.len() as u64 > max_size {
            return Err(FetchError::invalid(
                origin,
                format!("body is larger than max_size ({max_size} bytes)"),
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The body as a byte stream for the core (which bounds it by its own `max_size`). A transport
/// failure half-way is an I/O error: the core treats it as transient and does not settle the
/// candidate.
pub fn into_reader(response: Response) -> impl AsyncRead + Send + Unpin + 'static {
    let stream = response.bytes_stream().map_err(body_error);
    tokio_util::io::StreamReader::new(stream)
}

/// A failure half-way through the body, with its causes: reqwest's own message alone ("error
/// decoding response body") does not say that the server went silent or closed.
fn body_error(err: reqwest::Error) -> io::Error {
    if err.is_timeout() {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("timed out reading the body: {}", describe(&err)),
        )
    } else {
        io::Error::other(describe(&err))
    }
}

/// The SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> Sha256 {
    sha2::Sha256::digest(bytes).into()
}

/// A digest in lower-case hex.
pub fn hex(digest: &Sha256) -> String {
    digest.iter().fold(String::with_capacity(64), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, loopback: bool) -> Result<Url, Error> {
        check_url("url", url, loopback)
    }

    #[test]
    fn https_only_except_loopback() {
        assert!(check("https://example.com/app", false).is_ok());
        assert!(matches!(
            check("http://example.com/app", true),
            Err(Error::InsecureScheme { .. })
        ));
        assert!(matches!(
            check("http://127.0.0.1:8080/app", false),
            Err(Error::InsecureScheme { .. })
        ));
        for url in [
            "http://127.0.0.1:8080/app",
            "http://127.3.2.1/app",
            "http://[::1]:9/app",
            "http://localhost/app",
            "http://LOCALHOST:1/app",
        ] {
            assert!(check(url, true).is_ok(), "{url}");
        }
        for url in [
            "http://128.0.0.1/",
            "http://10.0.0.1/",
            "http://localhost.example/",
        ] {
            assert!(check(url, true).is_err(), "{url}");
        }
        assert!(matches!(
            check("ftp://example.com/app", true),
            Err(Error::BadUrl { .. })
        ));
        assert!(matches!(
            check("not a url", true),
            Err(Error::BadUrl { .. })
        ));
        let err = check("https://user:secret@example.com/app", true).unwrap_err();
        assert!(err.to_string().contains("credentials"), "{err}");
    }

    #[test]
    fn hex_and_digest() {
        let digest = sha256(b"abc");
        assert_eq!(
            hex(&digest),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn retry_after_seconds() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, "17".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(17)));
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), None);
    }
}
