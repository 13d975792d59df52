//! The release pointer: the JSON document the watched key holds.

use handover_fetcher::{FetchError, Sha256, Version};
use serde::Deserialize;

/// The largest pointer read (etcd's own limit on a request is 1.5 MiB).
pub(crate) const MAX_POINTER: usize = 64 * 1024;

/// What the key says about the release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pointer {
    /// Where the binary (or archive) is downloaded from.
    pub(crate) url: String,
    /// Its SHA-256.
    pub(crate) sha256: Sha256,
    /// The version the publisher claims.
    pub(crate) version: Option<Version>,
    /// Its size in bytes.
    pub(crate) size: Option<u64>,
    /// A minisign signature of the bytes (the `.minisig` file's text).
    pub(crate) signature: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    url: String,
    sha256: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    signature: Option<String>,
}

impl Pointer {
    /// Reads the key's value; `origin` names the key in errors.
    pub(crate) fn parse(origin: &str, bytes: &[u8]) -> Result<Pointer, FetchError> {
        if bytes.len() > MAX_POINTER {
            return Err(FetchError::invalid(
                origin,
                format!(
                    "the release pointer is {} bytes, more than {MAX_POINTER}",
                    bytes.len()
                ),
            ));
        }
        let wire: Wire = serde_json::from_slice(bytes).map_err(|e| {
            FetchError::invalid(
                origin,
                format!(
                    "not a release pointer ({{\"url\": …, \"sha256\": …, \"version\": …, \"signature\": …}}): {e}"
                ),
            )
        })?;
        let sha256 = handover_fetcher::parse_sha256(wire.sha256.trim()).ok_or_else(|| {
            FetchError::invalid(
                origin,
                format!("sha256 {:?} is not 64 hex digits", wire.sha256),
            )
        })?;
        let version = match wire.version.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(text) => Some(
                Version::parse(text.trim_start_matches('v'))
                    .map_err(|e| FetchError::invalid(origin, format!("version {text:?}: {e}")))?,
            ),
        };
        Ok(Pointer {
            url: wire.url,
            sha256,
            version,
            size: wire.size,
            signature: wire.signature.filter(|s| !s.trim().is_empty()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "b5bb9d8014a0f9b1d61e21e796d78dccdf1352f23cd32812f4850b878ae4944c";

    #[test]
    fn a_pointer_names_the_url_and_the_digest_and_may_add_the_rest() {
        let text = format!(
            r#"{{"url": "https://dl.example/app", "sha256": "{SHA}", "version": "v1.2.0", "size": 10, "signature": "untrusted comment: x\nRW..."}}"#
        );
        let pointer = Pointer::parse("etcd:/k", text.as_bytes()).unwrap();
        assert_eq!(pointer.url, "https://dl.example/app");
        assert_eq!(hex::encode(pointer.sha256), SHA);
        assert_eq!(pointer.version, Some(Version::new(1, 2, 0)));
        assert_eq!(pointer.size, Some(10));
        assert!(pointer.signature.unwrap().starts_with("untrusted comment"));
        let bare = format!(r#"{{"url": "https://dl.example/app", "sha256": "{SHA}"}}"#);
        let pointer = Pointer::parse("etcd:/k", bare.as_bytes()).unwrap();
        assert_eq!((pointer.version, pointer.signature), (None, None));
    }

    #[test]
    fn a_bad_pointer_says_what_is_wrong_with_it() {
        for (text, says) in [
            (
                "https://dl.example/app".to_string(),
                "not a release pointer",
            ),
            (
                r#"{"url": "https://x"}"#.to_string(),
                "missing field `sha256`",
            ),
            (
                r#"{"url": "https://x", "sha256": "abc"}"#.to_string(),
                "not 64 hex digits",
            ),
            (
                format!(r#"{{"url": "https://x", "sha256": "{SHA}", "version": "one"}}"#),
                "version \"one\"",
            ),
            (
                format!(r#"{{"url": "https://x", "sha256": "{SHA}", "sha": 1}}"#),
                "unknown field",
            ),
            (" ".repeat(MAX_POINTER + 1), "more than"),
        ] {
            let err = Pointer::parse("etcd:/k", text.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("etcd:/k: "), "{err}");
            assert!(err.contains(says), "{says}: {err}");
        }
    }
}
