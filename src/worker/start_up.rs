//! Where a worker's start-up went: from the master's spawn to its main, its runtime, and the
//! program until it says it is ready.

use std::time::Duration;

use crate::protocol;

/// Where a worker's start-up went, for one log line when it says it is ready.
pub(super) struct StartUp {
    /// When the master spawned it (`None` from a master that does not say).
    pub(super) spawned_us: Option<u64>,
    pub(super) main_us: u64,
    pub(super) runtime_us: u64,
}

impl StartUp {
    pub(super) fn log(&self) {
        let us = Duration::from_micros;
        let now = protocol::monotonic_us();
        let exec = self
            .spawned_us
            .map(|spawned| format!("{:.1?}", us(self.main_us.saturating_sub(spawned))))
            .unwrap_or_else(|| "?".into());
        tracing::info!(
            "worker start-up: exec {exec}, runtime {:.1?}, program {:.1?}",
            us(self.runtime_us.saturating_sub(self.main_us)),
            us(now.saturating_sub(self.runtime_us)),
        );
    }
}
