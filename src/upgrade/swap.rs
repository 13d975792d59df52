//! Where the binary is swapped on disk, and put back.
//!
//! Every change of the live path is one `rename(2)` in its own directory, so at no moment is
//! there no runnable binary at the live path. The previous binary is kept as `<live>.previous`
//! for rollbacks.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// `<live>.previous`.
pub(crate) fn previous_path(live: &Path) -> PathBuf {
    suffixed(live, ".previous")
}

fn suffixed(live: &Path, suffix: &str) -> PathBuf {
    let mut name: OsString = live.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    live.with_file_name(name)
}

/// A fresh temporary path beside the live binary, named so that a later master can tell whose
/// it is: `.<name>.handover-<pid>-<n>.tmp`.
pub(crate) fn temp_path(live: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = live.file_name().unwrap_or_default().to_string_lossy();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    live.with_file_name(format!(".{name}.handover-{}-{n}.tmp", std::process::id()))
}

/// Installs `staged` at `live`, keeping the old binary as `<live>.previous`, or, with
/// `keep_previous`, leaving `<live>.previous` as it is (the old binary was never proven, so a
/// rollback goes further back).
pub(crate) fn install(live: &Path, staged: &Path, keep_previous: bool) -> io::Result<()> {
    if live.exists() && !(keep_previous && previous_path(live).exists()) {
        let link = temp_path(live);
        copy_or_link(live, &link)?;
        let renamed = std::fs::rename(&link, previous_path(live));
        // After a rollback `live` and `.previous` are links to one file, and rename(2) between
        // two links to the same file does nothing: the temporary name would stay behind.
        let _ = std::fs::remove_file(&link);
        renamed?;
    }
    std::fs::rename(staged, live)?;
    sync_dir(live)
}

/// Puts `<live>.previous` back at `live` (the previous binary stays where it is too).
pub(crate) fn restore_previous(live: &Path) -> io::Result<()> {
    let previous = previous_path(live);
    if !previous.exists() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} does not exist", previous.display()),
        ));
    }
    let link = temp_path(live);
    copy_or_link(&previous, &link)?;
    let renamed = std::fs::rename(&link, live);
    let _ = std::fs::remove_file(&link);
    renamed?;
    sync_dir(live)
}

/// Removes a staged file that will not be installed.
pub(crate) fn discard(path: &Path) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove temporary file");
        }
    }
}

/// Removes temporary files that a master which died mid-download left beside the live binary.
/// Files of a master that is still alive (another service sharing the binary) are left alone.
pub(crate) fn clean_leftovers(live: &Path) {
    let (Some(dir), Some(name)) = (live.parent(), live.file_name()) else {
        return;
    };
    let prefix = format!(".{}.handover-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        let Some(rest) = file_name
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(".tmp"))
        else {
            continue;
        };
        let owner: Option<u32> = rest.split('-').next().and_then(|p| p.parse().ok());
        let alive = owner.is_some_and(|pid| {
            pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists()
        });
        if !alive {
            tracing::info!(path = %entry.path().display(), "removing leftover temporary file from an interrupted upgrade");
            discard(&entry.path());
        }
    }
}

/// Hard-links `from` to `to`, or copies it (with its permissions) where links are not possible.
fn copy_or_link(from: &Path, to: &Path) -> io::Result<()> {
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to)?;
    File::open(to)?.sync_all()
}

/// Makes the renames in `path`'s directory durable.
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_keeps_previous_and_restore_puts_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("app");
        std::fs::write(&live, b"v1").unwrap();
        let staged = temp_path(&live);
        std::fs::write(&staged, b"v2").unwrap();
        install(&live, &staged, false).unwrap();
        assert_eq!(std::fs::read(&live).unwrap(), b"v2");
        assert_eq!(std::fs::read(previous_path(&live)).unwrap(), b"v1");
        assert!(!staged.exists());
        restore_previous(&live).unwrap();
        assert_eq!(std::fs::read(&live).unwrap(), b"v1");

        // regression: after a rollback live and .previous are one file; a second install must
        // not leave its temporary link behind.
        let staged = temp_path(&live);
        std::fs::write(&staged, b"v3").unwrap();
        install(&live, &staged, false).unwrap();
        assert_eq!(std::fs::read(&live).unwrap(), b"v3");
        assert_eq!(std::fs::read(previous_path(&live)).unwrap(), b"v1");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names.len(),
            2,
            "only app and app.previous remain: {names:?}"
        );

        // Superseding an unproven binary keeps the rollback point where it was.
        let staged = temp_path(&live);
        std::fs::write(&staged, b"v4").unwrap();
        install(&live, &staged, true).unwrap();
        assert_eq!(std::fs::read(&live).unwrap(), b"v4");
        assert_eq!(std::fs::read(previous_path(&live)).unwrap(), b"v1");
    }

    #[test]
    fn leftovers_of_dead_masters_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("app");
        std::fs::write(&live, b"v1").unwrap();
        // PID 0 is never a live master.
        let dead = dir.path().join(".app.handover-0-3.tmp");
        std::fs::write(&dead, b"partial").unwrap();
        let unrelated = dir.path().join(".other.handover-0-1.tmp");
        std::fs::write(&unrelated, b"x").unwrap();
        clean_leftovers(&live);
        assert!(!dead.exists());
        assert!(unrelated.exists());
        assert!(live.exists());
    }
}
