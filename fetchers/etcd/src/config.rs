//! `[etcd]` in `handover.toml`.

use std::time::Duration;

use serde::Deserialize;

use crate::Error;

/// Settings of the etcd fetcher (`fetcher = "etcd"`, table `[etcd]`).
///
/// ```
/// let config: handover_fetcher_etcd::EtcdConfig = toml::from_str(r#"
///     endpoints = ["http://127.0.0.1:2379"]
///     key = "/handover/app/release"
/// "#).unwrap();
/// config.validate().unwrap();
/// assert_eq!(config.store_prefix(), "/handover/app/");
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct EtcdConfig {
    /// The cluster's client URLs (`http://10.0.0.5:2379`); requests go to any of them.
    pub endpoints: Vec<String>,
    /// The key holding the release pointer (a JSON document: see the crate docs). The staged
    /// rollout's documents live beside it: `rollout.json`, `reports/…` under the same prefix.
    pub key: String,
    /// Plain-text gRPC to an endpoint that is not a loopback host. The pointer names the
    /// binary and its SHA-256, so whoever can change it on the way can offer any binary:
    /// set `[upgrade] public_keys` (signed releases only) when the network is not trusted.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Download URLs in the pointer may be `http://` to a loopback host (tests, a local
    /// mirror). Default: https only.
    #[serde(default)]
    pub allow_insecure_loopback: bool,
    /// Poll only: never open a watch (a proxy that does not pass gRPC streams). Each poll is
    /// then one read of the key.
    #[serde(default)]
    pub poll_only: bool,
    /// How long to wait for a connection.
    #[serde(
        default = "handover_fetcher_http::defaults::connect_timeout",
        with = "humantime_serde"
    )]
    pub connect_timeout: Duration,
    /// How long one read of etcd, or the download of the binary, may take.
    #[serde(
        default = "handover_fetcher_http::defaults::timeout",
        with = "humantime_serde"
    )]
    pub timeout: Duration,
}

impl EtcdConfig {
    /// Settings for `key` on the cluster at `endpoints`.
    pub fn new(endpoints: Vec<String>, key: impl Into<String>) -> Self {
        Self {
            endpoints,
            key: key.into(),
            allow_plaintext: false,
            allow_insecure_loopback: false,
            poll_only: false,
            connect_timeout: handover_fetcher_http::defaults::connect_timeout(),
            timeout: handover_fetcher_http::defaults::timeout(),
        }
    }

    /// Checks what can be checked without the cluster.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |field, message: String| Err(Error::Config { field, message });
        if self.endpoints.is_empty() {
            return bad("endpoints", "names no endpoint".into());
        }
        for endpoint in &self.endpoints {
            let host = match endpoint.split_once("://") {
                Some(("http", rest)) => rest,
                Some(("https", _)) => {
                    return bad(
                        "endpoints",
                        format!("{endpoint:?}: TLS to etcd is not supported by this build; use http:// on a trusted network"),
                    )
                }
                Some((scheme, _)) => {
                    return bad(
                        "endpoints",
                        format!("{endpoint:?}: the scheme {scheme:?} is not supported (http://host:port)"),
                    )
                }
                None => endpoint.as_str(),
            };
            let host = host.split('/').next().unwrap_or_default();
            let name = match host.rsplit_once(':') {
                Some((name, port)) if port.parse::<u16>().is_ok() => name,
                _ => {
                    return bad(
                        "endpoints",
                        format!("{endpoint:?} has no port (http://host:2379)"),
                    )
                }
            };
            let name = name.trim_start_matches('[').trim_end_matches(']');
            if !self.allow_plaintext && !handover_fetcher::is_loopback_host(name) {
                return bad(
                    "endpoints",
                    format!(
                        "{endpoint:?} is plain-text gRPC to {name}, which is not a loopback host; \
                         set allow_plaintext = true on a trusted network (and require signatures)"
                    ),
                );
            }
        }
        if !self.key.starts_with('/') || self.key.ends_with('/') || self.key.contains("//") {
            return bad(
                "key",
                format!(
                    "{:?} must be an absolute key such as \"/handover/app/release\"",
                    self.key
                ),
            );
        }
        if self.connect_timeout.is_zero() || self.timeout.is_zero() {
            return bad("timeout", "timeouts must be more than zero".into());
        }
        Ok(())
    }

    /// The prefix the staged rollout's documents live under: the key's, with its slash.
    pub fn store_prefix(&self) -> &str {
        let end = self.key.rfind('/').map_or(0, |i| i + 1);
        &self.key[..end]
    }

    /// The endpoints as the gRPC client takes them.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.endpoints
            .iter()
            .map(|e| {
                if e.contains("://") {
                    e.clone()
                } else {
                    format!("http://{e}")
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> EtcdConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn plain_text_to_another_host_needs_saying_so() {
        let base = "key = \"/h/app/release\"\n";
        let err = config(&format!("{base}endpoints = [\"http://10.0.0.5:2379\"]"))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a loopback host"), "{err}");
        config(&format!(
            "{base}endpoints = [\"http://10.0.0.5:2379\"]\nallow_plaintext = true"
        ))
        .validate()
        .unwrap();
        config(&format!("{base}endpoints = [\"127.0.0.1:2379\"]"))
            .validate()
            .unwrap();
        let err = config(&format!("{base}endpoints = [\"https://etcd:2379\"]"))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("TLS"), "{err}");
        let err = config(&format!("{base}endpoints = [\"http://127.0.0.1\"]"))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("no port"), "{err}");
        let err = config(&format!("{base}endpoints = []"))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("no endpoint"), "{err}");
    }

    #[test]
    fn the_key_is_absolute_and_its_prefix_holds_the_rollout() {
        let with = |key: &str| {
            config(&format!(
                "endpoints = [\"127.0.0.1:2379\"]\nkey = \"{key}\""
            ))
        };
        assert_eq!(with("/a/b/release").store_prefix(), "/a/b/");
        assert_eq!(with("/release").store_prefix(), "/");
        for bad in ["release", "/a/", "/a//b"] {
            assert!(with(bad).validate().is_err(), "{bad}");
        }
        assert!(toml::from_str::<EtcdConfig>("endpoints = []\nkey = \"/k\"\nbogus = 1").is_err());
    }
}
