//! `[http]`: where the binary is published and how hard to try.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use handover_fetcher::{ArchiveFormat, LegacyPolicy};

use crate::{net, Error};

/// The `[http]` table of `handover.toml`.
///
/// Only `url` is required; a `checksum_url` (and a `signature_url`) let the core verify the
/// download. Whether a checksum or signature is required, the size limit and downgrades are
/// upgrade policy, set in the core's `[upgrade]` table:
///
/// ```toml
/// [http]
/// url = "https://downloads.example.com/app/latest/app-x86_64-linux"
/// checksum_url = "https://downloads.example.com/app/latest/SHA256SUMS"
/// signature_url = "https://downloads.example.com/app/latest/app-x86_64-linux.minisig"
/// timeout = "5m"
/// ```
///
/// Library users start from [`HttpConfig::new`] and change the fields they need.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HttpConfig {
    /// The binary (or, with [`archive_member`](Self::archive_member), the archive holding it).
    /// `https://`; `http://` only to a loopback host with
    /// [`allow_insecure_loopback`](Self::allow_insecure_loopback).
    pub url: String,
    /// A checksum file for the download: a `SHA256SUMS`-style list (`<hex>  <name>` lines) or
    /// a `<file>.sha256` holding a lone digest. Fetched on every poll (it is small); its entry
    /// is handed to the core as the download's published SHA-256. A 404, or no entry for the
    /// download, means "no published SHA-256"; the core's `[upgrade]` policy decides whether
    /// that is acceptable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_url: Option<String>,
    /// The name to look up in the checksum file. Default: the last segment of `url`'s path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_name: Option<String>,
    /// A detached minisign signature of the binary (usually `<url>.minisig`), handed to the
    /// core, which verifies it when a public key is configured. A 404 means "not signed"; the
    /// core decides whether that is acceptable. With an archive, it must sign the binary inside,
    /// which is what the core verifies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_url: Option<String>,
    /// When set, the download is an archive (`.tar.gz`/`.tgz`, `.zip` or `.gz`, known by
    /// `url`'s file name, else by its first bytes) and this names the binary inside it: its path
    /// in the archive, or a file name that occurs once. The checksum then covers the archive;
    /// the core checks it and unpacks the binary. Required when `url` ends in `.tar.gz`, `.tgz`
    /// or `.zip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_member: Option<String>,
    /// Deprecated: `checksum_required` belongs in the core's `[upgrade]` table. Still read, and
    /// reported by [`legacy_policy`](Self::legacy_policy) for the core to apply; this fetcher
    /// does not act on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_required: Option<bool>,
    /// Where a staged rollout's manifest (`rollout.json`) and the hosts' reports are, in the
    /// HTTP store protocol ([`HttpStore`](crate::HttpStore)), usually the directory of `url`
    /// when `handover rollout serve` serves it. Unset: upgrades are not staged (a static host
    /// may answer anything for a missing file, so the store is never guessed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_url: Option<String>,
    /// Accept `http://` URLs (and redirects) to loopback hosts: 127.0.0.0/8, `::1`,
    /// `localhost`. For tests and a mirror on the same machine. Default: false.
    #[serde(default)]
    pub allow_insecure_loopback: bool,
    /// A bearer token sent as `Authorization: Bearer …` to the configured URLs (never to
    /// another host a redirect leads to). Never logged nor serialized.
    #[serde(default, skip_serializing)]
    pub token: Option<String>,
    /// How long to wait for a TCP (and TLS) connection. Default: `10s`.
    #[serde(default = "crate::defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long one request may take, body included: the whole download of the binary must fit
    /// in it. Default: `5m`.
    #[serde(default = "crate::defaults::timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Deprecated: `max_size` belongs in the core's `[upgrade]` table. Still read (in bytes or
    /// with a unit, `"256MiB"`) and reported by [`legacy_policy`](Self::legacy_policy); this
    /// fetcher does not act on it.
    #[serde(
        default,
        with = "crate::size::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_size: Option<u64>,
}

impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConfig")
            .field("url", &self.url)
            .field("checksum_url", &self.checksum_url)
            .field("checksum_name", &self.checksum_name)
            .field("signature_url", &self.signature_url)
            .field("archive_member", &self.archive_member)
            .field("store_url", &self.store_url)
            .field("checksum_required", &self.checksum_required)
            .field("allow_insecure_loopback", &self.allow_insecure_loopback)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("max_size", &self.max_size)
            .finish()
    }
}

impl HttpConfig {
    /// The binary at `url`, every other field at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            checksum_url: None,
            checksum_name: None,
            signature_url: None,
            archive_member: None,
            store_url: None,
            checksum_required: None,
            allow_insecure_loopback: false,
            token: None,
            connect_timeout: crate::defaults::connect_timeout(),
            timeout: crate::defaults::timeout(),
            max_size: None,
        }
    }

    /// The deprecated policy keys this table set, for the core to warn about and apply.
    pub fn legacy_policy(&self) -> LegacyPolicy {
        LegacyPolicy::new(self.checksum_required, self.max_size, None)
    }

    /// Sets [`checksum_url`](Self::checksum_url).
    pub fn with_checksum_url(mut self, url: impl Into<String>) -> Self {
        self.checksum_url = Some(url.into());
        self
    }

    /// Sets [`signature_url`](Self::signature_url).
    pub fn with_signature_url(mut self, url: impl Into<String>) -> Self {
        self.signature_url = Some(url.into());
        self
    }

    /// Sets [`archive_member`](Self::archive_member).
    pub fn with_archive_member(mut self, name: impl Into<String>) -> Self {
        self.archive_member = Some(name.into());
        self
    }

    /// Sets [`token`](Self::token).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sets [`allow_insecure_loopback`](Self::allow_insecure_loopback).
    pub fn allow_insecure_loopback(mut self, allow: bool) -> Self {
        self.allow_insecure_loopback = allow;
        self
    }

    /// Sets [`connect_timeout`](Self::connect_timeout) and [`timeout`](Self::timeout).
    pub fn with_timeouts(mut self, connect: Duration, request: Duration) -> Self {
        self.connect_timeout = connect;
        self.timeout = request;
        self
    }

    /// Checks what serde cannot: URLs and their schemes, positive timeouts, an archive member
    /// where the URL names an archive.
    pub fn validate(&self) -> Result<(), Error> {
        self.urls().map(|_| ())
    }

    /// The validated URLs: binary, checksum, signature.
    pub(crate) fn urls(&self) -> Result<Urls, Error> {
        let loopback = self.allow_insecure_loopback;
        let url = net::check_url("url", &self.url, loopback)?;
        let optional = |field, value: &Option<String>| {
            value
                .as_deref()
                .map(|v| net::check_url(field, v, loopback))
                .transpose()
        };
        let checksum = optional("checksum_url", &self.checksum_url)?;
        let signature = optional("signature_url", &self.signature_url)?;
        let store = optional("store_url", &self.store_url)?;
        let bad = |field: &'static str, message: &str| {
            Err(Error::Config {
                field,
                message: message.to_string(),
            })
        };
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout", "must be greater than zero");
        }
        if self.timeout.is_zero() {
            return bad("timeout", "must be greater than zero");
        }
        if self.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return bad("token", "must not be empty");
        }
        let file_name = last_segment(&url);
        if file_name.is_empty() && self.checksum_name.is_none() && checksum.is_some() {
            return bad(
                "checksum_name",
                "url has no file name to look up in the checksum file; set checksum_name",
            );
        }
        let (stem, named) = ArchiveFormat::split(&file_name);
        let archive = match (&self.archive_member, named) {
            (Some(member), _) if member.trim().is_empty() => {
                return bad("archive_member", "must not be empty");
            }
            (None, Some(named @ (ArchiveFormat::TarGz | ArchiveFormat::Zip))) => {
                return Err(Error::Config {
                    field: "archive_member",
                    message: format!(
                        "url names a {named} archive ({file_name}); set archive_member to the \
                         binary's name inside it"
                    ),
                });
            }
            // A plain `.gz`: the member only names the binary in errors.
            (None, Some(named)) => Some((named, stem.to_string())),
            (None, None) => None,
            // Not known by name: the core tells the format from the bytes.
            (Some(member), named) => Some((named.unwrap_or(ArchiveFormat::Sniff), member.clone())),
        };
        Ok(Urls {
            store,
            checksum_name: self.checksum_name.clone().unwrap_or(file_name),
            url,
            checksum,
            signature,
            archive,
        })
    }
}

/// [`HttpConfig`]'s URLs, checked.
pub(crate) struct Urls {
    pub(crate) url: reqwest::Url,
    pub(crate) checksum: Option<reqwest::Url>,
    pub(crate) signature: Option<reqwest::Url>,
    /// The rollout store's base.
    pub(crate) store: Option<reqwest::Url>,
    pub(crate) checksum_name: String,
    /// How the download is packed and the binary's name in it; `None` for the binary itself.
    pub(crate) archive: Option<(ArchiveFormat, String)>,
}

fn last_segment(url: &reqwest::Url) -> String {
    url.path_segments()
        .and_then(|mut segments| segments.next_back())
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HttpConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn minimal_table_gets_defaults() {
        let config = parse("url = \"https://example.com/app\"").unwrap();
        assert_eq!(config, HttpConfig::new("https://example.com/app"));
        assert!(config.legacy_policy().is_empty());
        assert!(!config.allow_insecure_loopback);
        assert_eq!(config.connect_timeout, Duration::from_secs(10));
        assert_eq!(config.timeout, Duration::from_secs(300));
        config.validate().unwrap();
        assert_eq!(config.urls().unwrap().archive, None);
    }

    #[test]
    fn full_table() {
        let config = parse(
            r#"
            url = "http://127.0.0.1:8080/app.tar.gz"
            checksum_url = "http://127.0.0.1:8080/SHA256SUMS"
            checksum_name = "dist/app.tar.gz"
            signature_url = "http://127.0.0.1:8080/app.minisig"
            archive_member = "app"
            checksum_required = false
            allow_insecure_loopback = true
            token = "s3cr3t"
            connect_timeout = "1s 500ms"
            timeout = "2m"
            max_size = "256MiB"
            "#,
        )
        .unwrap();
        assert_eq!(config.connect_timeout, Duration::from_millis(1500));
        assert_eq!(config.timeout, Duration::from_secs(120));
        let legacy = config.legacy_policy();
        assert_eq!(legacy.checksum_required, Some(false));
        assert_eq!(legacy.max_size, Some(256 << 20));
        assert_eq!(legacy.allow_downgrade, None);
        let urls = config.urls().unwrap();
        assert_eq!(urls.archive, Some((ArchiveFormat::TarGz, "app".into())));
        assert_eq!(urls.checksum_name, "dist/app.tar.gz");
    }

    #[test]
    fn archive_formats_from_the_url_or_the_bytes() {
        let archive = |url: &str, member: Option<&str>| {
            let mut config = HttpConfig::new(url);
            config.archive_member = member.map(str::to_string);
            config.urls().unwrap().archive
        };
        assert_eq!(
            archive("https://e.com/app.gz", None),
            Some((ArchiveFormat::Gzip, "app".into()))
        );
        assert_eq!(
            archive("https://e.com/download?id=7", Some("bin/app")),
            Some((ArchiveFormat::Sniff, "bin/app".into()))
        );
        assert_eq!(
            archive("https://e.com/app.zip", Some("app")),
            Some((ArchiveFormat::Zip, "app".into()))
        );
        assert_eq!(archive("https://e.com/app", None), None);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_rejected() {
        let err = parse("url = \"https://e.com/a\"\nchecksum = \"x\"").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        assert!(parse("url = \"https://e.com/a\"\ntimeout = 5").is_err());
        assert!(parse("url = \"https://e.com/a\"\nmax_size = \"lots\"").is_err());
        assert_eq!(
            parse("url = \"https://e.com/a\"\nmax_size = 1024")
                .unwrap()
                .max_size,
            Some(1024)
        );
        assert!(parse("checksum_url = \"https://e.com/a\"").is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let check = |edit: fn(&mut HttpConfig), field: &str| {
            let mut config = HttpConfig::new("https://example.com/app");
            edit(&mut config);
            let err = config.validate().unwrap_err();
            let named = match &err {
                Error::Config { field, .. }
                | Error::BadUrl { field, .. }
                | Error::InsecureScheme { field, .. } => *field,
                other => panic!("{other:?}"),
            };
            assert_eq!(named, field, "{err}");
        };
        check(|c| c.url = "http://example.com/app".into(), "url");
        check(
            |c| c.checksum_url = Some("http://127.0.0.1/SUMS".into()),
            "checksum_url",
        );
        check(|c| c.signature_url = Some("nope".into()), "signature_url");
        check(
            |c| c.url = "https://example.com/app.zip".into(),
            "archive_member",
        );
        check(|c| c.timeout = Duration::ZERO, "timeout");
        check(|c| c.token = Some(" ".into()), "token");
    }

    #[test]
    fn token_is_neither_logged_nor_serialized() {
        let config = HttpConfig::new("https://example.com/app").with_token("s3cr3t");
        assert!(!format!("{config:?}").contains("s3cr3t"));
        let text = toml::to_string(&config).unwrap();
        assert!(!text.contains("s3cr3t"), "{text}");
        let mut back = parse(&text).unwrap();
        back.token = config.token.clone();
        assert_eq!(back, config);
    }
}
