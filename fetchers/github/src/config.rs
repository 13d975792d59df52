//! `[github]`: which repository, which releases, which asset.

use std::fmt;
use std::time::Duration;

use handover_fetcher::LegacyPolicy;
use serde::{Deserialize, Serialize};

use crate::Error;

/// The compile-time target triple (from `build.rs`), the default `{target}`.
pub const BUILD_TARGET: &str = env!("HANDOVER_GITHUB_TARGET");

/// The public GitHub API.
pub const DEFAULT_BASE_URL: &str = "https://api.github.com";

/// Which releases are candidates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Channel {
    /// The repository's latest release as GitHub defines it
    /// (`GET /repos/{owner}/{repo}/releases/latest`: the newest published release that is
    /// neither a draft nor a prerelease). One small request per poll.
    #[default]
    Latest,
    /// The highest semver among the newest 100 releases
    /// (`GET /repos/{owner}/{repo}/releases`), drafts always skipped, prereleases by
    /// [`GithubConfig::prerelease`].
    All,
}

/// The `[github]` table of `handover.toml`.
///
/// Only `repo` is required. Whether a checksum or signature is required, the size limit and
/// downgrades are upgrade policy, set in the core's `[upgrade]` table:
///
/// ```toml
/// [github]
/// repo = "acme/app"
/// # Asset names: {name}, {version}, {tag}, {target}, {os}, {arch}; an archive extension
/// # (.gz, .tar.gz, .tgz, .zip) may follow the name.
/// asset = "{name}-{target}"
/// channel = "all"
/// prerelease = true
/// ```
///
/// Library users start from [`GithubConfig::new`] and change the fields they need.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct GithubConfig {
    /// The repository, as `owner/name`.
    pub repo: String,
    /// A token for the API (a fine-grained token with read access to contents is enough; it
    /// raises the rate limit from 60 to 5,000 requests an hour and opens private repositories).
    /// When unset, the `GITHUB_TOKEN` environment variable, if set. Sent only to `base_url`'s
    /// host, never to the asset storage host; never logged nor serialized.
    #[serde(default, skip_serializing)]
    pub token: Option<String>,
    /// The API root: `https://api.github.com`, or `https://HOST/api/v3` for GitHub Enterprise
    /// Server. Default: `https://api.github.com`.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Which releases are candidates: `"latest"` (GitHub's latest release) or `"all"` (the
    /// highest semver among the newest 100). Default: `"latest"`.
    #[serde(default)]
    pub channel: Channel,
    /// With `channel = "all"`, also consider prereleases (marked so on GitHub, or with a
    /// semver pre-release part such as `1.3.0-rc.1`). Default: false.
    #[serde(default)]
    pub prerelease: bool,
    /// Deprecated: `allow_downgrade` belongs in the core's `[upgrade]` table. Still read, and
    /// reported by [`legacy_policy`](Self::legacy_policy); this fetcher offers the newest
    /// release whatever its version, and the core refuses a downgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_downgrade: Option<bool>,
    /// The program's name, `{name}` in asset names. Default: the repository's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The asset to take, as a template: `{name}`, `{version}` (without a leading `v`),
    /// `{tag}`, `{target}`, `{os}`, `{arch}`. The exact name is preferred; otherwise the name
    /// followed by `.gz`, `.tar.gz`, `.tgz` or `.zip`, which the core unpacks. Default:
    /// `{name}-{target}`.
    #[serde(default = "default_asset")]
    pub asset: String,
    /// Instead of `asset`: a glob (`*` any run of characters, `?` one character) with the same
    /// placeholders, e.g. `"{name}-{version}-{arch}-*linux*.tar.gz"`. It must match exactly one
    /// asset (checksum and signature files aside).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asset_pattern: Option<String>,
    /// The binary inside an archive asset: its path in the archive, or a file name found once.
    /// Same placeholders. Default: `{name}`.
    #[serde(default = "default_binary")]
    pub binary: String,
    /// The target triple for `{target}` (and `{os}`, `{arch}`). Default: the triple this
    /// program was built for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Deprecated: `checksum_required` belongs in the core's `[upgrade]` table. Still read, and
    /// reported by [`legacy_policy`](Self::legacy_policy); this fetcher does not act on it.
    /// (The SHA-256 it publishes comes from the asset's `digest`, else a checksum asset:
    /// `<asset>.sha256`, `SHA256SUMS`, `sha256sums.txt`, `checksums.txt`, `*_checksums.txt`.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_required: Option<bool>,
    /// Where the hosts' reports about a staged rollout go, in the HTTP store protocol
    /// (`handover_fetcher_http::HttpStore`, served by `handover rollout serve`). The
    /// manifest itself is the release's `rollout.json` asset (with `rollout.json.minisig`); a
    /// release that has one while this is unset installs nothing, and says why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_url: Option<String>,
    /// A bearer token for `store_url` (never sent to GitHub, never logged nor serialized).
    #[serde(default, skip_serializing)]
    pub store_token: Option<String>,
    /// Accept an `http://` `base_url` (and redirects) to a loopback host: 127.0.0.0/8, `::1`,
    /// `localhost`. For tests. Default: false.
    #[serde(default)]
    pub allow_insecure_loopback: bool,
    /// How long to wait for a TCP (and TLS) connection. Default: `10s`.
    #[serde(
        default = "handover_fetcher_http::defaults::connect_timeout",
        with = "humantime_serde"
    )]
    pub connect_timeout: Duration,
    /// How long one request may take, body included: a whole asset download must fit in it.
    /// Default: `5m`.
    #[serde(
        default = "handover_fetcher_http::defaults::timeout",
        with = "humantime_serde"
    )]
    pub timeout: Duration,
    /// Deprecated: `max_size` belongs in the core's `[upgrade]` table. Still read (in bytes or
    /// with a unit, `"256MiB"`) and reported by [`legacy_policy`](Self::legacy_policy); this
    /// fetcher does not act on it.
    #[serde(
        default,
        with = "handover_fetcher_http::size::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_size: Option<u64>,
}

fn default_base_url() -> String {
    DEFAULT_BASE_URL.into()
}
fn default_asset() -> String {
    "{name}-{target}".into()
}
fn default_binary() -> String {
    "{name}".into()
}

impl fmt::Debug for GithubConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GithubConfig")
            .field("repo", &self.repo)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("base_url", &self.base_url)
            .field("channel", &self.channel)
            .field("prerelease", &self.prerelease)
            .field("allow_downgrade", &self.allow_downgrade)
            .field("name", &self.name)
            .field("asset", &self.asset)
            .field("asset_pattern", &self.asset_pattern)
            .field("binary", &self.binary)
            .field("target", &self.target)
            .field("checksum_required", &self.checksum_required)
            .field("store_url", &self.store_url)
            .field("allow_insecure_loopback", &self.allow_insecure_loopback)
            .field("connect_timeout", &self.connect_timeout)
            .field("timeout", &self.timeout)
            .field("max_size", &self.max_size)
            .finish()
    }
}

impl GithubConfig {
    /// Releases of `repo` (`owner/name`), every other field at its default.
    pub fn new(repo: impl Into<String>) -> Self {
        Self {
            repo: repo.into(),
            token: None,
            base_url: default_base_url(),
            channel: Channel::Latest,
            prerelease: false,
            allow_downgrade: None,
            name: None,
            asset: default_asset(),
            asset_pattern: None,
            binary: default_binary(),
            target: None,
            checksum_required: None,
            store_url: None,
            store_token: None,
            allow_insecure_loopback: false,
            connect_timeout: handover_fetcher_http::defaults::connect_timeout(),
            timeout: handover_fetcher_http::defaults::timeout(),
            max_size: None,
        }
    }

    /// The deprecated policy keys this table set, for the core to warn about and apply.
    pub fn legacy_policy(&self) -> LegacyPolicy {
        LegacyPolicy::new(self.checksum_required, self.max_size, self.allow_downgrade)
    }

    /// Sets [`base_url`](Self::base_url).
    pub fn with_base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }

    /// Sets [`token`](Self::token).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sets [`channel`](Self::channel) and [`prerelease`](Self::prerelease).
    pub fn with_channel(mut self, channel: Channel, prerelease: bool) -> Self {
        self.channel = channel;
        self.prerelease = prerelease;
        self
    }

    /// Sets [`asset`](Self::asset).
    pub fn with_asset(mut self, template: impl Into<String>) -> Self {
        self.asset = template.into();
        self
    }

    /// Sets [`target`](Self::target).
    pub fn with_target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    /// The repository's owner and name.
    pub fn owner_and_name(&self) -> Result<(&str, &str), Error> {
        let bad = || Error::Config {
            field: "repo",
            message: format!("must be owner/name, not {:?}", self.repo),
        };
        let (owner, name) = self.repo.split_once('/').ok_or_else(bad)?;
        let valid = |part: &str| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if valid(owner) && valid(name) {
            Ok((owner, name))
        } else {
            Err(bad())
        }
    }

    /// The program name: [`name`](Self::name), else the repository's name.
    pub fn program_name(&self) -> Result<&str, Error> {
        match &self.name {
            Some(name) => Ok(name),
            None => Ok(self.owner_and_name()?.1),
        }
    }

    /// The target triple: [`target`](Self::target), else [`BUILD_TARGET`].
    pub fn target_triple(&self) -> &str {
        self.target.as_deref().unwrap_or(BUILD_TARGET)
    }

    /// Checks what serde cannot (the fetcher also checks `base_url`).
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field: &'static str, message: &str| {
            Err(Error::Config {
                field,
                message: message.to_string(),
            })
        };
        self.owner_and_name()?;
        if self.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return bad("name", "must not be empty");
        }
        if self.asset.trim().is_empty() {
            return bad("asset", "must not be empty");
        }
        if self
            .asset_pattern
            .as_deref()
            .is_some_and(|p| p.trim().is_empty())
        {
            return bad("asset_pattern", "must not be empty");
        }
        if self.binary.trim().is_empty() {
            return bad("binary", "must not be empty");
        }
        if self
            .target
            .as_deref()
            .is_some_and(|t| t.split('-').count() < 2)
        {
            return bad(
                "target",
                "must be a target triple such as x86_64-unknown-linux-gnu",
            );
        }
        if self.prerelease && self.channel == Channel::Latest {
            return bad(
                "prerelease",
                "GitHub's latest release is never a prerelease; set channel = \"all\"",
            );
        }
        if self.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return bad("token", "must not be empty");
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout", "must be greater than zero");
        }
        if self.timeout.is_zero() {
            return bad("timeout", "must be greater than zero");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<GithubConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn minimal_table_gets_defaults() {
        let config = parse("repo = \"acme/app\"").unwrap();
        assert_eq!(config, GithubConfig::new("acme/app"));
        assert_eq!(config.base_url, "https://api.github.com");
        assert_eq!(config.channel, Channel::Latest);
        assert!(!config.prerelease);
        assert!(config.legacy_policy().is_empty());
        assert_eq!(config.asset, "{name}-{target}");
        assert_eq!(config.binary, "{name}");
        assert_eq!(config.timeout, Duration::from_secs(300));
        assert_eq!(config.program_name().unwrap(), "app");
        assert_eq!(config.target_triple(), BUILD_TARGET);
        assert!(BUILD_TARGET.contains('-'), "{BUILD_TARGET}");
        config.validate().unwrap();
    }

    #[test]
    fn full_table() {
        let config = parse(
            r#"
            repo = "acme/app.rs"
            token = "ghp_secret"
            base_url = "https://ghe.example.com/api/v3"
            channel = "all"
            prerelease = true
            allow_downgrade = true
            name = "appd"
            asset = "{name}-{version}-{target}"
            asset_pattern = "{name}-*-{arch}.zip"
            binary = "bin/{name}"
            target = "aarch64-unknown-linux-musl"
            checksum_required = false
            allow_insecure_loopback = true
            connect_timeout = "3s"
            timeout = "10m"
            max_size = "64MiB"
            "#,
        )
        .unwrap();
        assert_eq!(config.channel, Channel::All);
        assert_eq!(config.program_name().unwrap(), "appd");
        let legacy = config.legacy_policy();
        assert_eq!(legacy.checksum_required, Some(false));
        assert_eq!(legacy.max_size, Some(64 << 20));
        assert_eq!(legacy.allow_downgrade, Some(true));
        config.validate().unwrap();
    }

    #[test]
    fn repo_must_be_owner_slash_name() {
        for repo in [
            "app",
            "acme/",
            "/app",
            "acme/app/extra",
            "acme/../x",
            "ac me/app",
            "",
        ] {
            let err = GithubConfig::new(repo).validate().unwrap_err();
            assert!(
                err.to_string().contains("repo: must be owner/name"),
                "{repo}: {err}"
            );
        }
    }

    #[test]
    fn unknown_fields_and_bad_values_are_rejected() {
        let err = parse("repo = \"a/b\"\nprereleases = true").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        assert!(parse("repo = \"a/b\"\nchannel = \"nightly\"").is_err());
        assert!(parse("repo = \"a/b\"\ntimeout = 30").is_err());
        let err = parse("repo = \"a/b\"\nprerelease = true")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("channel"), "{err}");
    }

    #[test]
    fn token_is_neither_logged_nor_serialized() {
        let config = GithubConfig::new("a/b").with_token("ghp_secret");
        assert!(!format!("{config:?}").contains("ghp_secret"));
        let text = toml::to_string(&config).unwrap();
        assert!(!text.contains("ghp_secret"), "{text}");
        assert_eq!(parse(&text).unwrap(), GithubConfig::new("a/b"));
    }
}
