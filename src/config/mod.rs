//! Configuration: a serde struct read from `handover.toml`, and a builder for library users.
//!
//! Every field has a default, so an empty file is a valid configuration (it just listens on
//! nothing). Durations are written the human way: `"500ms"`, `"30s"`, `"2m"`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

mod builder;
mod locate;
pub(crate) mod program;
pub(crate) mod tables;
mod upgrade;

pub use builder::ConfigBuilder;
pub(crate) use locate::{line_of, locate_field};
pub use program::{ProgramConfig, ReadyMode};
pub use upgrade::{ChecksumPolicy, Sanity, UpgradeConfig};

/// The whole configuration of a master and its workers.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// The sockets the master binds once and passes to every worker, in this order (the first is
    /// fd 3 in the worker). `[[listen]]` tables.
    pub listen: Vec<Listen>,
    /// How long a new worker has to say it is ready before it is killed and the old one kept.
    #[serde(with = "humantime_serde")]
    pub ready_timeout: Duration,
    /// How long a draining worker may take to finish in-flight work before it is killed, for
    /// a restart or an upgrade. A listener can set its own (`[[listen]] drain_timeout`, e.g.
    /// `"1h"` for WebSockets); the worker then lives as long as its longest.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// The drain timeout when the master stops (SIGTERM, SIGINT), for every listener. Default:
    /// the same as for a restart.
    #[serde(with = "humantime_serde::option")]
    pub stop_drain_timeout: Option<Duration>,
    /// How many old generations may drain at once. A hand-over requested while that many still
    /// drain waits for the oldest to exit, and says so. Default 4.
    pub max_draining: usize,
    /// After draining begins, how long an idle keep-alive connection stays open (so a request
    /// a client just sent on it is still answered, with `Connection: close`).
    #[serde(with = "humantime_serde")]
    pub idle_grace: Duration,
    /// Signals that start a hand-over to a new worker. Default `["SIGUSR2", "SIGHUP"]`.
    pub restart_signals: Vec<String>,
    /// Signal a worker receives when the master dies (`PR_SET_PDEATHSIG`). Default `SIGTERM`.
    pub parent_death_signal: String,
    /// First delay before restarting a worker that crashed; doubles on each crash in a row.
    #[serde(with = "humantime_serde")]
    pub restart_backoff: Duration,
    /// The longest delay between restarts of a crashing worker.
    #[serde(with = "humantime_serde")]
    pub restart_backoff_max: Duration,
    /// The binary workers are started from; re-read at every start. Default: the master's own
    /// executable (as resolved when the master started).
    pub binary: Option<PathBuf>,
    /// Worker runtime threads (library mode). Default: one per core.
    pub worker_threads: Option<usize>,
    /// Where and how upgrades are fetched, checked and installed.
    pub upgrade: UpgradeConfig,
    /// Which fetcher looks for new binaries: `"file"`, `"github"`, `"s3"`, `"http"`, `"etcd"`,
    /// or none.
    pub fetcher: Option<String>,
    /// Settings of the file fetcher (`fetcher = "file"`).
    pub file: Option<FileFetcherConfig>,
    /// Settings of the GitHub-release fetcher (`fetcher = "github"`), read by that fetcher.
    pub github: Option<toml::Table>,
    /// Settings of the S3 fetcher (`fetcher = "s3"`), read by that fetcher.
    pub s3: Option<toml::Table>,
    /// Settings of the HTTP fetcher (`fetcher = "http"`), read by that fetcher.
    pub http: Option<toml::Table>,
    /// Settings of the etcd fetcher (`fetcher = "etcd"`), read by that fetcher.
    pub etcd: Option<toml::Table>,
    /// How `handover run` treats a program not built on this library.
    pub program: ProgramConfig,
    /// Unix socket for `handover status|restart|upgrade|rollback` (mode 0600, and only the
    /// master's user or root is answered). A client must send its request line within 5 s of
    /// connecting or it is disconnected. None: no socket.
    pub control_socket: Option<PathBuf>,
    /// Log filter (`info`, `handover=debug`), overridden by `RUST_LOG`.
    pub log: Option<String>,
    /// Secrets that the processes the master starts receive after all. The master keeps the
    /// credentials its fetchers read ([`SECRET_ENV`](crate::SECRET_ENV): `GITHUB_TOKEN`,
    /// `HANDOVER_HTTP_TOKEN` and every `AWS_*` variable) out of the environment of its workers,
    /// of the sanity runs of candidates and of the `pre_upgrade` hook. Name here, one by one,
    /// those your program needs: `pass_env = ["AWS_REGION"]`. Default: none.
    pub pass_env: Vec<String>,
    /// Deprecation warnings found while reading the file, logged when the master starts.
    #[serde(skip)]
    pub(crate) deprecations: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            ready_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            stop_drain_timeout: None,
            max_draining: 4,
            idle_grace: Duration::from_secs(1),
            restart_signals: vec!["SIGUSR2".into(), "SIGHUP".into()],
            parent_death_signal: "SIGTERM".into(),
            restart_backoff: Duration::from_millis(100),
            restart_backoff_max: Duration::from_secs(10),
            binary: None,
            worker_threads: None,
            upgrade: UpgradeConfig::default(),
            fetcher: None,
            file: None,
            github: None,
            s3: None,
            http: None,
            etcd: None,
            program: Default::default(),
            control_socket: None,
            log: None,
            pass_env: Vec::new(),
            deprecations: Vec::new(),
        }
    }
}

/// One socket the master binds. Exactly one of `tcp`, `unix` and `udp` is set.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Listen {
    /// The name workers ask for (`worker.tcp("http")`); also passed in `LISTEN_FDNAMES`.
    pub name: String,
    /// A TCP address, `127.0.0.1:8080` or `[::1]:8080`.
    pub tcp: Option<SocketAddr>,
    /// A Unix stream socket path. A stale socket file left by a dead process is replaced; the
    /// file is kept across hand-overs and removed when the master stops.
    pub unix: Option<PathBuf>,
    /// A UDP address.
    pub udp: Option<SocketAddr>,
    /// Listen backlog (TCP and Unix). Default 1024.
    pub backlog: Option<u32>,
    /// Permission bits of a Unix socket file, e.g. `0o660`. Default: from the umask.
    pub mode: Option<u32>,
    /// How long connections accepted on this listener may drain after a restart or an upgrade
    /// (`"1h"` for WebSockets). Default: the top-level `drain_timeout`.
    #[serde(default, with = "humantime_serde::option")]
    pub drain_timeout: Option<Duration>,
}

impl Listen {
    /// A TCP listener.
    pub fn tcp(name: impl Into<String>, address: SocketAddr) -> Self {
        Self {
            name: name.into(),
            tcp: Some(address),
            unix: None,
            udp: None,
            backlog: None,
            mode: None,
            drain_timeout: None,
        }
    }

    /// A Unix stream listener.
    pub fn unix(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            tcp: None,
            unix: Some(path.into()),
            udp: None,
            backlog: None,
            mode: None,
            drain_timeout: None,
        }
    }

    /// A UDP socket.
    pub fn udp(name: impl Into<String>, address: SocketAddr) -> Self {
        Self {
            name: name.into(),
            tcp: None,
            unix: None,
            udp: Some(address),
            backlog: None,
            mode: None,
            drain_timeout: None,
        }
    }

    /// Sets the listen backlog.
    pub fn with_backlog(mut self, backlog: u32) -> Self {
        self.backlog = Some(backlog);
        self
    }

    /// Sets this listener's drain timeout (see [`Listen::drain_timeout`]).
    pub fn with_drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = Some(timeout);
        self
    }

    /// A short description for logs: `tcp 127.0.0.1:8080`.
    pub fn describe(&self) -> String {
        match (&self.tcp, &self.unix, &self.udp) {
            (Some(a), _, _) => format!("tcp {a}"),
            (_, Some(p), _) => format!("unix {}", p.display()),
            (_, _, Some(a)) => format!("udp {a}"),
            _ => "nothing".into(),
        }
    }
}

/// Settings of the file fetcher.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct FileFetcherConfig {
    /// The path to watch. Default: the live binary's path plus `.next`.
    pub path: Option<PathBuf>,
    /// Poll instead of using inotify (for network file systems). Default false.
    pub poll_only: bool,
    /// How long the file's size and mtime must stay unchanged before it is taken.
    #[serde(with = "humantime_serde::option")]
    pub settle: Option<Duration>,
}

impl Config {
    /// Reads and validates a TOML file. Errors name the file, the line and the field.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|span| line_of(text, span.start));
            let message = e.message().trim().to_string();
            match line {
                Some(line) => Error::config(format!("{origin}:{line}"), message),
                None => Error::config(origin, message),
            }
        })?;
        config.validate().map_err(|(field, message)| {
            let located = locate_field(text, field).map(|l| format!("{origin}:{l}"));
            Error::config(
                located.unwrap_or_else(|| origin.to_string()),
                format!("{field} {message}"),
            )
        })?;
        tables::check_tables(text, origin)?;
        config.deprecations = tables::absorb_legacy_policy(&mut config);
        Ok(config)
    }

    /// Deprecation warnings about the file this configuration was read from (keys that still
    /// work but will not in the next release).
    pub fn deprecations(&self) -> &[String] {
        &self.deprecations
    }

    /// The live binary's path, absolute: `binary`, or this executable. Resolved once when the
    /// master starts: after a swap, `current_exe` may name a deleted file.
    pub fn live_binary(&self) -> std::io::Result<PathBuf> {
        match self.binary.as_deref() {
            Some(path) if path.is_absolute() => Ok(path.to_path_buf()),
            Some(path) => Ok(std::env::current_dir()?.join(path)),
            None => std::env::current_exe(),
        }
    }

    /// The drain timeout of each listener, in order: its own, or the top-level one.
    pub fn listener_drain_timeouts(&self) -> Vec<Duration> {
        self.listen
            .iter()
            .map(|l| l.drain_timeout.unwrap_or(self.drain_timeout))
            .collect()
    }

    /// How long a worker may drain: for a stop, `stop_drain_timeout` if set; otherwise the
    /// longest of its listeners' drain timeouts (the top-level one without listeners).
    pub fn worker_drain_timeout(&self, stopping: bool) -> Duration {
        match (stopping, self.stop_drain_timeout) {
            (true, Some(timeout)) => timeout,
            _ => self
                .listener_drain_timeouts()
                .into_iter()
                .max()
                .unwrap_or(self.drain_timeout),
        }
    }

    /// Starts a builder from the defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            config: Config::default(),
        }
    }

    /// Checks what serde cannot: one address per listener, unique names, known signals.
    /// Returns the offending field and what is wrong with it.
    pub(crate) fn validate(&self) -> std::result::Result<(), (&'static str, String)> {
        let mut names = std::collections::HashSet::new();
        for listen in &self.listen {
            let set = [
                listen.tcp.is_some(),
                listen.unix.is_some(),
                listen.udp.is_some(),
            ];
            if set.iter().filter(|s| **s).count() != 1 {
                return Err((
                    "listen",
                    format!("{:?} must set exactly one of tcp, unix, udp", listen.name),
                ));
            }
            if listen.name.is_empty() || listen.name.contains(':') {
                return Err((
                    "listen",
                    format!(
                        "name {:?} must be non-empty and contain no ':'",
                        listen.name
                    ),
                ));
            }
            if !names.insert(listen.name.as_str()) {
                return Err(("listen", format!("name {:?} is used twice", listen.name)));
            }
        }
        for signal in &self.restart_signals {
            if crate::signals::signal_number(signal).is_none() {
                return Err((
                    "restart_signals",
                    format!("has an unknown signal {signal:?}"),
                ));
            }
        }
        if crate::signals::signal_number(&self.parent_death_signal).is_none() {
            return Err((
                "parent_death_signal",
                format!("is an unknown signal {:?}", self.parent_death_signal),
            ));
        }
        if self.ready_timeout.is_zero() {
            return Err(("ready_timeout", "must be more than zero".into()));
        }
        if self.max_draining == 0 {
            return Err((
                "max_draining",
                "must be at least 1 (the old worker of a hand-over drains)".into(),
            ));
        }
        self.upgrade.validate()?;
        if let Some(name) = &self.fetcher {
            if !["file", "github", "s3", "http", "etcd"].contains(&name.as_str()) {
                return Err((
                    "fetcher",
                    format!("must be one of \"file\", \"github\", \"s3\", \"http\", \"etcd\", not {name:?}"),
                ));
            }
        }
        if let Err(message) = crate::child_env::check_pass_env(&self.pass_env) {
            return Err(("pass_env", message));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_valid_defaults() {
        let config = Config::from_toml("", "t.toml").unwrap();
        assert_eq!(config.ready_timeout, Duration::from_secs(10));
        assert_eq!(config.restart_signals, ["SIGUSR2", "SIGHUP"]);
    }

    #[test]
    fn durations_are_human() {
        let config = Config::from_toml(
            "drain_timeout = \"1m 30s\"\n[upgrade]\ninterval = \"250ms\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(config.drain_timeout, Duration::from_secs(90));
        assert_eq!(config.upgrade.interval, Duration::from_millis(250));
    }

    #[test]
    fn errors_name_file_and_line() {
        let err = Config::from_toml("ready_timeout = \"10s\"\nready_timout = \"1s\"\n", "h.toml")
            .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("h.toml:2:"), "{text}");
        assert!(text.contains("ready_timout"), "{text}");

        let err = Config::from_toml("\n\nrestart_signals = [\"SIGFOO\"]\n", "h.toml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "h.toml:3: restart_signals has an unknown signal \"SIGFOO\""
        );

        let err = Config::from_toml(
            "[[listen]]\nname = \"a\"\ntcp = \"127.0.0.1:1\"\nudp = \"127.0.0.1:2\"\n",
            "h.toml",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("exactly one of tcp, unix, udp"),
            "{err}"
        );

        let err = Config::from_toml("[upgrade]\ninterval = \"0s\"\n", "h.toml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "h.toml:2: upgrade.interval must be more than zero"
        );
    }

    #[test]
    fn builder_validates() {
        let err = Config::builder()
            .restart_signals(&["SIGNOPE"])
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("SIGNOPE"));
    }
}

#[cfg(test)]
mod example_file {
    /// The commented example in the repository must stay a valid, complete config.
    #[test]
    fn example_config_parses() {
        let text = include_str!("../../examples/handover.toml");
        let config = super::Config::from_toml(text, "examples/handover.toml").unwrap();
        assert_eq!(config.listen.len(), 1);
        assert_eq!(
            config.file.unwrap().settle,
            Some(std::time::Duration::from_millis(250))
        );
    }

    #[test]
    fn drain_timeouts_per_listener_and_for_the_stop() {
        use super::Config;
        use std::time::Duration;
        let text = "drain_timeout = \"30s\"\nstop_drain_timeout = \"5s\"\nmax_draining = 2\n\
            [[listen]]\nname = \"http\"\ntcp = \"127.0.0.1:1\"\n\
            [[listen]]\nname = \"ws\"\ntcp = \"127.0.0.1:2\"\ndrain_timeout = \"1h\"\n";
        let config = Config::from_toml(text, "t.toml").unwrap();
        let (thirty, hour) = (Duration::from_secs(30), Duration::from_secs(3600));
        assert_eq!(config.listener_drain_timeouts(), vec![thirty, hour]);
        assert_eq!(config.worker_drain_timeout(false), hour);
        assert_eq!(config.worker_drain_timeout(true), Duration::from_secs(5));
        assert_eq!(config.max_draining, 2);
        let plain = Config::from_toml("drain_timeout = \"7s\"\n", "t.toml").unwrap();
        assert_eq!(plain.worker_drain_timeout(true), Duration::from_secs(7));
        let zero = Config::from_toml("max_draining = 0\n", "t.toml").unwrap_err();
        assert!(zero.to_string().contains("t.toml:1"), "{zero}");
        assert!(
            zero.to_string().contains("max_draining must be at least 1"),
            "{zero}"
        );
    }
}
