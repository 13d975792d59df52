//! [`ConfigBuilder`]: a [`Config`] in code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{tables, Config, FileFetcherConfig, Listen, UpgradeConfig};
use crate::error::{Error, Result};

/// Builds a [`Config`] in code.
///
/// ```
/// use std::time::Duration;
/// let config = handover::Config::builder()
///     .listen_tcp("http", "127.0.0.1:8080".parse().unwrap())
///     .ready_timeout(Duration::from_secs(5))
///     .build()
///     .unwrap();
/// assert_eq!(config.listen.len(), 1);
/// ```
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    pub(super) config: Config,
}

impl ConfigBuilder {
    /// Adds a listener.
    pub fn listen(mut self, listen: Listen) -> Self {
        self.config.listen.push(listen);
        self
    }

    /// Adds a TCP listener.
    pub fn listen_tcp(self, name: &str, address: SocketAddr) -> Self {
        self.listen(Listen::tcp(name, address))
    }

    /// Adds a Unix stream listener.
    pub fn listen_unix(self, name: &str, path: impl Into<PathBuf>) -> Self {
        self.listen(Listen::unix(name, path))
    }

    /// Adds a UDP socket.
    pub fn listen_udp(self, name: &str, address: SocketAddr) -> Self {
        self.listen(Listen::udp(name, address))
    }

    /// See [`Config::ready_timeout`].
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.config.ready_timeout = timeout;
        self
    }

    /// See [`Config::drain_timeout`].
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.config.drain_timeout = timeout;
        self
    }

    /// See [`Config::stop_drain_timeout`].
    pub fn stop_drain_timeout(mut self, timeout: Duration) -> Self {
        self.config.stop_drain_timeout = Some(timeout);
        self
    }

    /// See [`Config::max_draining`].
    pub fn max_draining(mut self, generations: usize) -> Self {
        self.config.max_draining = generations;
        self
    }

    /// See [`Config::idle_grace`].
    pub fn idle_grace(mut self, grace: Duration) -> Self {
        self.config.idle_grace = grace;
        self
    }

    /// See [`Config::restart_signals`].
    pub fn restart_signals(mut self, signals: &[&str]) -> Self {
        self.config.restart_signals = signals.iter().map(|s| s.to_string()).collect();
        self
    }

    /// See [`Config::binary`].
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.binary = Some(path.into());
        self
    }

    /// See [`Config::control_socket`].
    pub fn control_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.control_socket = Some(path.into());
        self
    }

    /// See [`Config::pass_env`].
    pub fn pass_env(mut self, names: &[&str]) -> Self {
        self.config.pass_env = names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Watches `path` for new binaries with the file fetcher.
    pub fn watch_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.fetcher = Some("file".into());
        self.config.file = Some(FileFetcherConfig {
            path: Some(path.into()),
            ..Default::default()
        });
        self
    }

    /// Changes the upgrade settings.
    pub fn upgrade(mut self, change: impl FnOnce(&mut UpgradeConfig)) -> Self {
        change(&mut self.config.upgrade);
        self
    }

    /// Changes any other field.
    pub fn with(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(&mut self.config);
        self
    }

    /// Validates and returns the configuration.
    pub fn build(mut self) -> Result<Config> {
        self.config
            .validate()
            .map_err(|(field, message)| Error::config("builder", format!("{field} {message}")))?;
        self.config.deprecations = tables::absorb_legacy_policy(&mut self.config);
        Ok(self.config)
    }
}
