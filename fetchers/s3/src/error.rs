//! Construction errors, and how S3 answers become [`FetchError`]s.

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use handover_fetcher::FetchError;

/// Why an [`S3Fetcher`](crate::S3Fetcher) could not be built.
///
/// Fetch results use [`FetchError`]; this type is only about configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A `[s3]` field has a value that cannot work.
    #[error("[s3] {field}: {message}")]
    Config {
        /// The field, as spelled in `handover.toml`.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

/// What an S3 request came to, once the SDK's error layers are peeled.
#[derive(Debug)]
pub(crate) enum Failure {
    /// 304: the `If-None-Match` ETag still matches.
    NotModified,
    /// 412: the `If-Match` ETag no longer matches (the object was replaced).
    PreconditionFailed,
    /// 404 for the requested key.
    NotFound,
    /// Everything else, already phrased for the core.
    Fetch(FetchError),
}

/// Sorts an SDK error by what the fetcher should do about it.
pub(crate) fn classify<E>(origin: &str, err: SdkError<E>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    match err {
        SdkError::ServiceError(ref context) => {
            let code = context.err().code().unwrap_or_default();
            match (status, code) {
                (Some(304), _) => Failure::NotModified,
                (Some(412), _) => Failure::PreconditionFailed,
                (_, "NoSuchBucket") => {
                    Failure::Fetch(FetchError::refused(origin, "no such bucket"))
                }
                (Some(404), _) | (_, "NoSuchKey" | "NotFound") => Failure::NotFound,
                (Some(403), _) | (_, "AccessDenied") => {
                    // The code (InvalidAccessKeyId, SignatureDoesNotMatch, ...) says which
                    // credentials problem it was; the credentials themselves are never logged.
                    let detail = match code {
                        "" | "AccessDenied" | "403" => String::new(),
                        code => format!(" ({code})"),
                    };
                    Failure::Fetch(FetchError::refused(
                        origin,
                        format!("access denied{detail}"),
                    ))
                }
                (Some(301 | 307), _)
                | (_, "PermanentRedirect" | "AuthorizationHeaderMalformed") => {
                    let region = context
                        .raw()
                        .headers()
                        .get("x-amz-bucket-region")
                        .map(|r| format!(" (the bucket is in {r})"))
                        .unwrap_or_default();
                    Failure::Fetch(FetchError::refused(
                        origin,
                        format!("wrong region or endpoint{region}"),
                    ))
                }
                // SlowDown (503), InternalError (500) and friends: the SDK already retried;
                // the core backs off.
                (Some(s), _) if s >= 500 || s == 429 => Failure::Fetch(FetchError::unreachable(
                    origin,
                    describe(status, context.err()),
                )),
                _ => Failure::Fetch(FetchError::refused(origin, describe(status, context.err()))),
            }
        }
        SdkError::TimeoutError(_) => Failure::Fetch(FetchError::unreachable(
            origin,
            "timed out (operation_timeout)",
        )),
        // Connection refused, DNS, TLS, a reset, a response that is not HTTP.
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            Failure::Fetch(FetchError::unreachable(origin, chain(&err)))
        }
        // The request could not even be built: credentials missing, a bad endpoint.
        _ => Failure::Fetch(FetchError::invalid(
            origin,
            format!("request not sent: {}", chain(&err)),
        )),
    }
}

fn describe(status: Option<u16>, err: &impl ProvideErrorMetadata) -> String {
    let mut out = String::from("HTTP ");
    match status {
        Some(status) => out.push_str(&status.to_string()),
        None => out.push('?'),
    }
    if let Some(code) = err.code() {
        out.push_str(": ");
        out.push_str(code);
    }
    if let Some(message) = err.message() {
        out.push_str(": ");
        out.push_str(message);
    }
    out
}

/// `error: cause: cause`, each layer's own words once (the SDK's `DisplayErrorContext` adds a
/// `Debug` dump).
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}
