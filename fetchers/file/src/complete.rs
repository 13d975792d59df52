//! Files that arrive whole: renamed into place (inotify `IN_MOVED_TO`) or closed after writing
//! (`IN_CLOSE_WRITE`). Such a file is taken at once, without the settle wait, as long as it is
//! still the version the event was about.

use std::time::Duration;

use handover_fetcher::FetchError;
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind, RenameMode};

use crate::{FileFetcher, Stamp};

/// How many settle periods a file may keep changing before this poll gives up on it (the next
/// change or poll tries again).
const MAX_SETTLE_ROUNDS: u32 = 240;

/// How often a file being settled is looked at for inotify's word that it arrived whole.
const WHOLE_CHECK: Duration = Duration::from_millis(20);

/// Whether `event` says that the file at its last path arrived whole.
pub(crate) fn arrived_whole(event: &notify::Event) -> bool {
    matches!(
        event.kind,
        EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    )
}

impl FileFetcher {
    /// Waits until the file stops changing; `None` if it vanished or kept changing.
    pub(crate) async fn settled_stamp(&self) -> Result<Option<Stamp>, FetchError> {
        let mut last = match self.stamp()? {
            Some(stamp) => stamp,
            None => return Ok(None),
        };
        for _ in 0..MAX_SETTLE_ROUNDS {
            if let Some(whole) = self.arrives_whole_within(self.settle).await? {
                return Ok(Some(whole));
            }
            match self.stamp()? {
                None => return Ok(None),
                Some(now) if now == last => return Ok(Some(now)),
                Some(now) => last = now,
            }
        }
        tracing::info!(path = %self.path.display(), "file is still being written; will look again");
        Ok(None)
    }

    /// Waits up to `wait`; returns early with the file's stamp once inotify says the file, as
    /// it is now, arrived whole.
    async fn arrives_whole_within(&self, wait: Duration) -> Result<Option<Stamp>, FetchError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let whole = *self.whole.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(whole) = whole {
                if self.stamp()? == Some(whole) {
                    return Ok(Some(whole));
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            tokio::time::sleep((deadline - now).min(WHOLE_CHECK)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use handover_fetcher::{Fetcher, Running};

    use crate::FileFetcher;

    /// With a settle time of an hour, only a file inotify says is whole can be taken in time.
    fn fetcher(path: &std::path::Path) -> FileFetcher {
        let fetcher = FileFetcher::new(path)
            .settle(Duration::from_secs(3600))
            .start()
            .unwrap();
        assert!(fetcher.is_watching());
        fetcher
    }

    async fn offered(fetcher: &mut FileFetcher, within: Duration) -> bool {
        let running = Running::new([0; 32], None);
        matches!(
            tokio::time::timeout(within, fetcher.fetch(&running)).await,
            Ok(Ok(Some(_)))
        )
    }

    #[tokio::test]
    async fn a_file_renamed_into_place_is_taken_without_the_settle_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.next");
        let mut fetcher = fetcher(&path);
        let staged = dir.path().join("app.staging");
        std::fs::write(&staged, b"a new release").unwrap();
        std::fs::rename(&staged, &path).unwrap();
        let wake = fetcher.wake().unwrap();
        tokio::time::timeout(Duration::from_secs(10), wake.notified())
            .await
            .expect("inotify saw the rename");
        assert!(offered(&mut fetcher, Duration::from_secs(10)).await);
    }

    #[tokio::test]
    async fn a_file_still_open_for_writing_settles_and_is_taken_once_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.next");
        let mut fetcher = fetcher(&path);
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(b"half of a rel").unwrap();
        // Being written: not whole, so it waits for the (hour-long) settle time.
        assert!(!offered(&mut fetcher, Duration::from_millis(500)).await);
        file.write_all(b"ease").unwrap();
        drop(file);
        let wake = fetcher.wake().unwrap();
        tokio::time::timeout(Duration::from_secs(10), wake.notified())
            .await
            .expect("inotify saw the close");
        assert!(offered(&mut fetcher, Duration::from_secs(10)).await);
    }
}
