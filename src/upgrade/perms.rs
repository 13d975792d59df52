//! Who else could write what the upgrade trusts: the watched file, the live binary's
//! directory, and every directory above them up to `/`.
//!
//! Anyone who can write the watched file, or replace any directory on its way, gets code
//! execution as the service (with no keys configured, a file on this machine is trusted as it
//! is). A path is private when each of its parts is owned by the service's user or root and
//! writable by nobody else:
//! - not by every user, except a sticky directory (`/tmp`) *above* the one holding the file:
//!   the sticky bit stops others from renaming the directory below it away;
//! - not by a group, unless nobody but the service's user and root belongs to it (the members
//!   listed in `/etc/group`, and the users whose primary group it is in `/etc/passwd`).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const STICKY: u32 = 0o1000;

/// `file` (when it exists) and every directory above it must be private (see the module
/// docs). `what` names the path in the message: `the watched file`, `the live binary`.
pub(crate) fn private_path(file: &Path, what: &str) -> Result<(), String> {
    let me = crate::sys::effective_uid();
    let groups = Groups::load();
    let parent = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let parent = std::fs::canonicalize(parent).map_err(|e| {
        format!(
            "cannot inspect the directory of {what} {}: {e}",
            file.display()
        )
    })?;
    let file = match std::fs::canonicalize(file) {
        Ok(real) => Some(real),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot inspect {what} {}: {e}", file.display())),
    };
    let mut parts: Vec<(PathBuf, bool)> = Vec::new();
    if let Some(file) = &file {
        parts.push((file.clone(), false));
    }
    let holder = file
        .as_deref()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or(parent);
    for (i, dir) in holder.ancestors().enumerate() {
        parts.push((dir.to_path_buf(), i > 0));
    }
    for (path, above_holder) in parts {
        let meta = std::fs::metadata(&path)
            .map_err(|e| format!("cannot inspect {} (above {what}): {e}", path.display()))?;
        if let Some(why) = who_else_writes(&meta, me, above_holder, &groups) {
            return Err(format!(
                "{} is {why} (mode {:o}, owner uid {}, group gid {}): anyone who can write there can replace {what}; refusing upgrades (make it private, or set upgrade.refuse_shared_directory = false)",
                path.display(),
                meta.mode() & 0o7777,
                meta.uid(),
                meta.gid()
            ));
        }
    }
    Ok(())
}

fn who_else_writes(
    meta: &std::fs::Metadata,
    me: u32,
    above_holder: bool,
    groups: &Groups,
) -> Option<String> {
    let mode = meta.mode();
    if meta.uid() != me && meta.uid() != 0 {
        return Some(format!("owned by another user (uid {})", meta.uid()));
    }
    if mode & 0o002 != 0 && !(meta.is_dir() && mode & STICKY != 0 && above_holder) {
        return Some("writable by every user".into());
    }
    if mode & 0o020 != 0 {
        if let Some(other) = groups.other_member(meta.gid(), me) {
            return Some(format!(
                "writable by its group (gid {}), to which {other} belongs",
                meta.gid()
            ));
        }
    }
    None
}

/// Group membership as `/etc/group` and `/etc/passwd` list it.
struct Groups {
    /// (gid, member names)
    groups: Vec<(u32, Vec<String>)>,
    /// (name, uid, primary gid)
    users: Vec<(String, u32, u32)>,
}

impl Groups {
    fn load() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        Self::parse(&read("/etc/group"), &read("/etc/passwd"))
    }

    fn parse(group: &str, passwd: &str) -> Self {
        let groups = group
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                let gid = fields.get(2)?.parse().ok()?;
                let members = fields
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|n| !n.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                Some((gid, members))
            })
            .collect();
        let users = passwd
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                Some((
                    fields.first()?.to_string(),
                    fields.get(2)?.parse().ok()?,
                    fields.get(3)?.parse().ok()?,
                ))
            })
            .collect();
        Self { groups, users }
    }

    /// A user of group `gid` other than `me` and root, as `name (uid N)`.
    fn other_member(&self, gid: u32, me: u32) -> Option<String> {
        let foreign = |uid: u32| uid != me && uid != 0;
        let by_primary = self
            .users
            .iter()
            .find(|(_, uid, primary)| *primary == gid && foreign(*uid));
        if let Some((name, uid, _)) = by_primary {
            return Some(format!("user {name} (uid {uid})"));
        }
        let members = self
            .groups
            .iter()
            .filter(|(g, _)| *g == gid)
            .flat_map(|(_, members)| members);
        for member in members {
            match self.users.iter().find(|(name, _, _)| name == member) {
                Some((_, uid, _)) if !foreign(*uid) => continue,
                Some((_, uid, _)) => return Some(format!("user {member} (uid {uid})")),
                None => return Some(format!("user {member}")),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_writable_directory_anywhere_above_is_named() {
        let root = tempfile::tempdir().unwrap();
        let shared = root.path().join("shared");
        let drop = shared.join("drop");
        std::fs::create_dir_all(&drop).unwrap();
        let file = drop.join("app.next");
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(private_path(&file, "the watched file"), Ok(()));
        chmod(&shared, 0o777);
        let err = private_path(&file, "the watched file").unwrap_err();
        assert!(
            err.starts_with(&format!(
                "{} is writable by every user",
                shared.canonicalize().unwrap().display()
            )),
            "{err}"
        );
        // Sticky above the directory that holds the file: others cannot move it away.
        chmod(&shared, 0o1777);
        assert_eq!(private_path(&file, "the watched file"), Ok(()));
        // Sticky for the directory holding the file: others may create it.
        chmod(&shared, 0o755);
        chmod(&drop, 0o1777);
        assert!(private_path(&file, "the watched file").is_err());
        chmod(&drop, 0o755);
        chmod(&file, 0o666);
        let err = private_path(&file, "the watched file").unwrap_err();
        assert!(err.contains("app.next is writable by every user"), "{err}");
        // A file not there yet: its directories are checked.
        assert_eq!(
            private_path(&drop.join("absent"), "the watched file"),
            Ok(())
        );
    }

    #[test]
    fn group_members_other_than_the_owner_and_root_count() {
        let groups = Groups::parse(
            "root:x:0:\nstaff:x:50:alice,root\nsolo:x:60:\nbuild:x:70:svc\n",
            "root:x:0:0::/:/bin/sh\nalice:x:1000:1000::/:/bin/sh\nsvc:x:999:999::/:/bin/sh\nbob:x:1001:60::/:/bin/sh\n",
        );
        assert_eq!(
            groups.other_member(50, 999).as_deref(),
            Some("user alice (uid 1000)")
        );
        assert_eq!(
            groups.other_member(60, 999).as_deref(),
            Some("user bob (uid 1001)")
        );
        assert_eq!(groups.other_member(70, 999), None);
        assert_eq!(groups.other_member(0, 999), None);
        assert_eq!(groups.other_member(50, 1000), None);
    }
}
