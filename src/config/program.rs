//! How `handover run` treats a program not built on this library (`[program]`).

use std::time::Duration;

use serde::Deserialize;

/// How `handover run` decides a program is ready, and how it asks it to drain.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ProgramConfig {
    /// `auto` (sd_notify `READY=1`, or seen accepting connections), `notify` (only
    /// `READY=1`), `accepting`, or `delay` (ready after `ready_delay`).
    pub ready: ReadyMode,
    /// With `ready = "delay"`: how long after start the program counts as ready.
    #[serde(with = "humantime_serde")]
    pub ready_delay: Duration,
    /// The signal that asks an old program to finish and exit.
    pub drain_signal: String,
}

impl Default for ProgramConfig {
    fn default() -> Self {
        Self {
            ready: ReadyMode::Auto,
            ready_delay: Duration::from_secs(2),
            drain_signal: "SIGTERM".into(),
        }
    }
}

/// See [`ProgramConfig::ready`].
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ReadyMode {
    /// `READY=1` or accepting, whichever comes first.
    Auto,
    /// Only `READY=1` on `NOTIFY_SOCKET`.
    Notify,
    /// Only a thread waiting for a listener: in `accept`, in `poll`/`ppoll`/`select`/
    /// `pselect6` with it in the read set, or with it in an epoll set.
    Accepting,
    /// A fixed delay after start.
    Delay,
}
