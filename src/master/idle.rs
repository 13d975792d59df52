//! The master between hand-overs: once it has served with nothing to do for a while, what
//! start-up and the last hand-over touched need not stay resident (it idles for hours).

use super::{Event, Master, Phase};

/// How long the master serves with nothing to do before it trims its resident memory.
const IDLE_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

impl Master {
    /// Trims the resident memory two seconds after the phase became `Serving` (the first poll, status and logging
    /// are done by then), and only if it still is.
    pub(super) fn trim_when_idle(&mut self) {
        if self.phase() != Phase::Serving {
            self.serving_since = None;
        } else if self.serving_since.is_none() {
            self.serving_count += 1;
            self.serving_since = Some(self.serving_count);
            let (events, generation) = (self.events_tx.clone(), self.serving_count);
            tokio::spawn(async move {
                tokio::time::sleep(IDLE_AFTER).await;
                let _ = events.send(Event::Idle { generation });
            });
        }
    }

    pub(super) fn on_idle(&mut self, generation: u64) {
        if self.serving_since != Some(generation) || self.phase() != Phase::Serving {
            return;
        }
        match crate::sys::trim_resident() {
            Ok(trimmed) => tracing::debug!(
                file_kib = trimmed.file_kib,
                "idle: unmapped clean code and constant pages"
            ),
            Err(e) => tracing::debug!(error = %e, "cannot trim the resident memory"),
        }
    }
}
