//! `[s3]`: where the object lives and how hard to try.

use std::time::Duration;

use handover_fetcher::LegacyPolicy;
use serde::{Deserialize, Serialize};

use crate::Error;

/// The `[s3]` table of `handover.toml`.
///
/// Only `bucket` and `key` are required. Whether a checksum or signature is required, the size
/// limit and downgrades are upgrade policy, set in the core's `[upgrade]` table:
///
/// ```toml
/// [s3]
/// bucket = "releases"
/// key = "myapp/linux-x86_64/myapp"
/// # For MinIO, Garage or R2; path-style addressing is then the default.
/// endpoint_url = "https://minio.internal:9000"
/// operation_timeout = "30s"
/// ```
///
/// Endpoints are `https://`. Plain `http://` is accepted only to a store on this machine (moto
/// or MinIO in a test), and only when the table says so:
///
/// ```toml
/// [s3]
/// bucket = "releases"
/// key = "myapp/linux-x86_64/myapp"
/// endpoint_url = "http://127.0.0.1:9000"
/// allow_insecure_loopback = true
/// ```
///
/// Library users start from [`S3Config::new`] and change the fields they need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct S3Config {
    /// The bucket holding the binary.
    pub bucket: String,
    /// The object key of the binary, e.g. `myapp/linux-x86_64/myapp`.
    pub key: String,
    /// The bucket's region. When unset, the standard AWS chain decides (`AWS_REGION`, the
    /// profile, IMDS); when that finds none, `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// An S3-compatible endpoint (MinIO, Garage, an R2 account URL, moto) instead of AWS.
    /// `https://`; plain `http://` only to a loopback host with
    /// [`allow_insecure_loopback`](Self::allow_insecure_loopback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    /// Accept a plain `http://` [`endpoint_url`](Self::endpoint_url) to a loopback host
    /// (127.0.0.0/8, `::1`, `localhost`): for tests and a store on the same machine. Plain http
    /// to any other host is refused whatever this says: the binary, its checksum and its
    /// signature object would travel unprotected, and the request signature with them.
    /// Default: false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_insecure_loopback: bool,
    /// Address buckets as `endpoint/bucket/key` rather than `bucket.endpoint/key`. Default: true
    /// when `endpoint_url` is set (what self-hosted stores expect), false for AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_path_style: Option<bool>,
    /// Deprecated: `checksum_required` belongs in the core's `[upgrade]` table. Still read, and
    /// reported by [`legacy_policy`](Self::legacy_policy); this fetcher does not act on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_required: Option<bool>,
    /// The sidecar object holding the SHA-256 (`<hex>` or `<hex>  <name>`), named
    /// `<key><sidecar_suffix>`; read only when the object has no full-object SHA-256 checksum.
    /// A missing sidecar, or one without an entry for the object, means no published SHA-256.
    /// Empty: no sidecar. Default: `.sha256`.
    #[serde(default = "default_sidecar_suffix")]
    pub sidecar_suffix: String,
    /// The minisign signature object, named `<key><signature_suffix>`, handed to the core when it
    /// exists. Empty: never look for one. Default: `.minisig`.
    #[serde(default = "default_signature_suffix")]
    pub signature_suffix: String,
    /// The user-defined metadata entry holding the candidate's semver version (`version` is the
    /// `x-amz-meta-version` header, set with `aws s3 cp --metadata version=1.4.2`).
    /// Default: `version`.
    #[serde(default = "default_version_metadata_key")]
    pub version_metadata_key: String,
    /// Deprecated: `allow_downgrade` belongs in the core's `[upgrade]` table. Still read, and
    /// reported by [`legacy_policy`](Self::legacy_policy); this fetcher offers any version
    /// other than the running one, and the core refuses a downgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_downgrade: Option<bool>,
    /// How long to wait for a TCP (and TLS) connection. Default: `5s`.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long one request may take until its response headers arrive, retries included (the
    /// body then streams under the SDK's stalled-stream protection). Default: `30s`.
    #[serde(default = "default_operation_timeout", with = "humantime_serde")]
    pub operation_timeout: Duration,
    /// Attempts per request, the first one included, for throttling, 5xx and transport errors.
    /// Default: 3.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Deprecated: `max_size` belongs in the core's `[upgrade]` table. Still read (in bytes or
    /// with a unit, `"256MiB"`) and reported by [`legacy_policy`](Self::legacy_policy); this
    /// fetcher does not act on it.
    #[serde(
        default,
        with = "handover_fetcher::size::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_size: Option<u64>,
}

fn default_sidecar_suffix() -> String {
    ".sha256".into()
}
fn default_signature_suffix() -> String {
    ".minisig".into()
}
fn default_version_metadata_key() -> String {
    "version".into()
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_operation_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_max_attempts() -> u32 {
    3
}

impl S3Config {
    /// The object `key` in `bucket`, every other field at its default.
    pub fn new(bucket: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            key: key.into(),
            region: None,
            endpoint_url: None,
            allow_insecure_loopback: false,
            force_path_style: None,
            checksum_required: None,
            sidecar_suffix: default_sidecar_suffix(),
            signature_suffix: default_signature_suffix(),
            version_metadata_key: default_version_metadata_key(),
            allow_downgrade: None,
            connect_timeout: default_connect_timeout(),
            operation_timeout: default_operation_timeout(),
            max_attempts: default_max_attempts(),
            max_size: None,
        }
    }

    /// The deprecated policy keys this table set, for the core to warn about and apply.
    pub fn legacy_policy(&self) -> LegacyPolicy {
        LegacyPolicy::new(self.checksum_required, self.max_size, self.allow_downgrade)
    }

    /// Sets [`region`](Self::region).
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Sets [`endpoint_url`](Self::endpoint_url) (path-style addressing follows unless
    /// [`force_path_style`](Self::force_path_style) says otherwise).
    pub fn with_endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.endpoint_url = Some(url.into());
        self
    }

    /// Sets [`allow_insecure_loopback`](Self::allow_insecure_loopback).
    pub fn allow_insecure_loopback(mut self, allow: bool) -> Self {
        self.allow_insecure_loopback = allow;
        self
    }

    /// Sets [`connect_timeout`](Self::connect_timeout) and
    /// [`operation_timeout`](Self::operation_timeout).
    pub fn with_timeouts(mut self, connect: Duration, operation: Duration) -> Self {
        self.connect_timeout = connect;
        self.operation_timeout = operation;
        self
    }

    /// Whether requests use path-style addressing, after defaults.
    pub fn path_style(&self) -> bool {
        self.force_path_style.unwrap_or(self.endpoint_url.is_some())
    }

    /// `s3://bucket/key`, as used in logs and errors.
    pub fn origin(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    /// Checks what serde cannot: non-empty names, a usable endpoint, positive timeouts and
    /// attempts.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field: &'static str, message: String| Err(Error::Config { field, message });
        if self.bucket.trim().is_empty() || self.bucket.contains('/') {
            return bad("bucket", format!("{:?} is not a bucket name", self.bucket));
        }
        if self.key.is_empty() || self.key.ends_with('/') {
            return bad("key", format!("{:?} does not name an object", self.key));
        }
        if let Some(url) = &self.endpoint_url {
            if let Err(message) = crate::endpoint::check(url, self.allow_insecure_loopback) {
                return bad("endpoint_url", message);
            }
        }
        if self.version_metadata_key.trim().is_empty() {
            return bad("version_metadata_key", "must not be empty".into());
        }
        if self.max_attempts == 0 {
            return bad("max_attempts", "must be at least 1".into());
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout", "must be greater than zero".into());
        }
        if self.operation_timeout.is_zero() {
            return bad("operation_timeout", "must be greater than zero".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<S3Config, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn minimal_table_gets_defaults() {
        let config = parse("bucket = \"b\"\nkey = \"app\"").unwrap();
        assert_eq!(config, S3Config::new("b", "app"));
        assert!(config.legacy_policy().is_empty());
        assert_eq!(config.sidecar_suffix, ".sha256");
        assert_eq!(config.signature_suffix, ".minisig");
        assert_eq!(config.version_metadata_key, "version");
        assert_eq!(config.connect_timeout, Duration::from_secs(5));
        assert_eq!(config.operation_timeout, Duration::from_secs(30));
        assert_eq!(config.max_attempts, 3);
        assert!(!config.path_style());
        assert_eq!(config.origin(), "s3://b/app");
        config.validate().unwrap();
    }

    #[test]
    fn full_table() {
        let config = parse(
            r#"
            bucket = "releases"
            key = "app/linux/app"
            region = "eu-west-1"
            endpoint_url = "http://127.0.0.1:9000"
            allow_insecure_loopback = true
            checksum_required = false
            sidecar_suffix = ".sum"
            signature_suffix = ""
            version_metadata_key = "release"
            allow_downgrade = true
            connect_timeout = "1s 500ms"
            operation_timeout = "2m"
            max_attempts = 5
            max_size = "256MiB"
            "#,
        )
        .unwrap();
        assert_eq!(config.region.as_deref(), Some("eu-west-1"));
        assert!(config.path_style(), "an endpoint implies path style");
        assert!(config.allow_insecure_loopback);
        assert_eq!(config.connect_timeout, Duration::from_millis(1500));
        assert_eq!(config.operation_timeout, Duration::from_secs(120));
        let legacy = config.legacy_policy();
        assert_eq!(legacy.checksum_required, Some(false));
        assert_eq!(legacy.max_size, Some(256 << 20));
        assert_eq!(legacy.allow_downgrade, Some(true));
        config.validate().unwrap();

        let virtual_hosted = parse(
            "bucket = \"b\"\nkey = \"k\"\nendpoint_url = \"https://r2.example\"\nforce_path_style = false",
        )
        .unwrap();
        assert!(!virtual_hosted.path_style());
    }

    #[test]
    fn unknown_fields_and_bad_values_are_rejected() {
        let err = parse("bucket = \"b\"\nkey = \"k\"\nchecksum = true").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        assert!(parse("bucket = \"b\"\nkey = \"k\"\nconnect_timeout = 5").is_err());
        assert!(parse("bucket = \"b\"\nkey = \"k\"\nmax_size = \"lots\"").is_err());
        assert!(parse("key = \"k\"").is_err());
        assert_eq!(
            parse("bucket = \"b\"\nkey = \"k\"\nmax_size = 1024")
                .unwrap()
                .max_size,
            Some(1024)
        );
    }

    #[test]
    fn validation_names_the_field() {
        let check = |edit: fn(&mut S3Config), field: &str| {
            let mut config = S3Config::new("b", "k");
            edit(&mut config);
            match config.validate() {
                Err(Error::Config { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        };
        check(|c| c.bucket.clear(), "bucket");
        check(|c| c.key = "dir/".into(), "key");
        check(
            |c| c.endpoint_url = Some("127.0.0.1:9000".into()),
            "endpoint_url",
        );
        check(|c| c.max_attempts = 0, "max_attempts");
        check(
            |c| c.operation_timeout = Duration::ZERO,
            "operation_timeout",
        );
    }

    // regression: plain http:// endpoints were accepted on any host (issue 13).
    #[test]
    fn plain_http_only_to_loopback_and_only_when_allowed() {
        let check = |url: &str, allow: bool| {
            S3Config::new("b", "k")
                .with_endpoint_url(url)
                .allow_insecure_loopback(allow)
                .validate()
                .map_err(|e| e.to_string())
        };
        for url in [
            "https://minio.internal:9000",
            "https://10.0.0.5",
            "https://[2001:db8::1]:443/",
        ] {
            check(url, false).unwrap();
            check(url, true).unwrap();
        }
        for url in [
            "http://127.0.0.1:9000",
            "http://127.1.2.3:9000/",
            "http://localhost:5000",
            "http://[::1]:9000",
            "http://[::ffff:127.0.0.1]",
        ] {
            check(url, true).unwrap_or_else(|e| panic!("{url}: {e}"));
            let err = check(url, false).unwrap_err();
            assert!(err.contains("set allow_insecure_loopback = true"), "{err}");
            assert!(err.contains(url), "names the endpoint: {err}");
        }
        for url in [
            "http://10.0.0.5:9000",
            "http://minio.internal:9000",
            "http://127.0.0.1.nip.io:9000",
            "http://localhost.example.com",
            "http://[2001:db8::1]:9000",
        ] {
            for allow in [false, true] {
                let err = check(url, allow).unwrap_err();
                assert!(err.starts_with("[s3] endpoint_url: "), "{err}");
                assert!(err.contains("not a loopback host"), "{err}");
                assert!(err.contains(url), "names the endpoint: {err}");
            }
        }
        // What another URL parser might read as a different host is not a URL here.
        for url in [
            "http://127.0.0.1:9000@evil.example",
            "http://evil.example\\@127.0.0.1",
            "http://127.0.0.1%2f@evil.example",
            "http://127.0.0.1:9000:1",
            "http://127.0.0.1:",
            "http://[::1",
            "http://",
            "ftp://127.0.0.1",
            "HTTP://127.0.0.1",
        ] {
            assert!(check(url, true).is_err(), "{url} accepted");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(handover_fetcher::size::parse("10"), Some(10));
        assert_eq!(handover_fetcher::size::parse("4 KiB"), Some(4096));
        assert_eq!(handover_fetcher::size::parse("2MB"), Some(2_000_000));
        assert_eq!(handover_fetcher::size::parse("1GiB"), Some(1 << 30));
        assert_eq!(handover_fetcher::size::parse("1TiB"), None);
        assert_eq!(handover_fetcher::size::parse("MiB"), None);
    }

    #[test]
    fn round_trips_through_toml() {
        let config = S3Config::new("b", "k").with_endpoint_url("http://localhost:9000");
        let text = toml::to_string(&config).unwrap();
        assert_eq!(parse(&text).unwrap(), config);
        let config = config.allow_insecure_loopback(true);
        let text = toml::to_string(&config).unwrap();
        assert!(text.contains("allow_insecure_loopback = true"), "{text}");
        assert_eq!(parse(&text).unwrap(), config);
    }
}
