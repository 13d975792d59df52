//! Where a download is verified: published checksum, minisign signature, downgrade policy, and
//! the safety of the directory the swap happens in.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::Refusal;

/// The bytes must match the SHA-256 the source published; with `required`, one must exist.
pub(crate) fn checksum(
    published: Option<&[u8; 32]>,
    actual: &[u8; 32],
    required: bool,
) -> Result<(), Refusal> {
    match published {
        Some(published) if published != actual => Err(Refusal::Permanent(format!(
            "sha256 {} does not match the published {}",
            &hex::encode(actual)[..16],
            &hex::encode(published)[..16]
        ))),
        None if required => Err(Refusal::Permanent(
            "the source published no sha256 and a checksum is required".into(),
        )),
        _ => Ok(()),
    }
}

/// With public keys configured, the candidate must carry a minisign signature by one of them.
pub(crate) fn signature(
    keys: &[String],
    signature: Option<&[u8]>,
    file: &Path,
) -> Result<(), Refusal> {
    if keys.is_empty() {
        return Ok(());
    }
    let Some(signature) = signature else {
        return Err(Refusal::Permanent(
            "unsigned, and a public key is configured (expected a .minisig signature)".into(),
        ));
    };
    let text = std::str::from_utf8(signature)
        .map_err(|_| Refusal::Permanent("signature is not minisign text".into()))?;
    let signature = minisign_verify::Signature::decode(text)
        .map_err(|e| Refusal::Permanent(format!("signature cannot be read: {e}")))?;
    let mut last_error = String::from("no key matched");
    for key in keys {
        let key = minisign_verify::PublicKey::from_base64(key.trim())
            .map_err(|e| Refusal::Permanent(format!("configured public key is invalid: {e}")))?;
        match verify_file(&key, &signature, file) {
            Ok(()) => return Ok(()),
            Err(e) => last_error = e,
        }
    }
    Err(Refusal::Permanent(format!("bad signature: {last_error}")))
}

fn verify_file(
    key: &minisign_verify::PublicKey,
    signature: &minisign_verify::Signature,
    file: &Path,
) -> Result<(), String> {
    use std::io::Read;
    let mut verifier = key.verify_stream(signature).map_err(|e| e.to_string())?;
    let mut input = std::fs::File::open(file).map_err(|e| e.to_string())?;
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let n = input.read(&mut buffer).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        verifier.update(&buffer[..n]);
    }
    verifier.finalize().map_err(|e| e.to_string())
}

/// A candidate older than what runs is refused unless downgrades are allowed.
pub(crate) fn not_a_downgrade(
    candidate: Option<&semver::Version>,
    running: Option<&semver::Version>,
    allowed: bool,
) -> Result<(), Refusal> {
    match (candidate, running) {
        (Some(candidate), Some(running)) if candidate < running && !allowed => Err(Refusal::Permanent(format!(
            "version {candidate} is older than the running {running} (set upgrade.allow_downgrade to allow)"
        ))),
        _ => Ok(()),
    }
}

/// Refuses a live binary whose directory other users may write to: they could race the swap.
pub(crate) fn directory_is_private(live: &Path) -> Result<(), String> {
    let dir = live
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let meta =
        std::fs::metadata(dir).map_err(|e| format!("cannot inspect {}: {e}", dir.display()))?;
    let mode = meta.mode();
    let others_write = mode & 0o002 != 0;
    let group_write = mode & 0o020 != 0 && meta.gid() != 0 && !in_own_group(meta.gid());
    let foreign_owner = meta.uid() != crate::sys::effective_uid() && meta.uid() != 0;
    if others_write || group_write || foreign_owner {
        return Err(format!(
            "{} is writable by other users (mode {:o}, owner uid {}); refusing to swap binaries there (set upgrade.refuse_shared_directory = false to override)",
            dir.display(),
            mode & 0o7777,
            meta.uid()
        ));
    }
    Ok(())
}

fn in_own_group(gid: u32) -> bool {
    // Group write for the user's own primary group is the common umask-002 setup.
    std::fs::metadata("/proc/self")
        .map(|m| m.gid() == gid)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn checksum_rules() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        assert!(checksum(Some(&a), &a, true).is_ok());
        assert!(checksum(None, &a, false).is_ok());
        let err = checksum(Some(&b), &a, false).unwrap_err().to_string();
        assert!(err.contains("does not match the published 0202"), "{err}");
        assert!(checksum(None, &a, true)
            .unwrap_err()
            .to_string()
            .contains("required"));
    }

    #[test]
    fn downgrade_rules() {
        let v = |s| semver::Version::parse(s).unwrap();
        assert!(not_a_downgrade(Some(&v("1.0.0")), Some(&v("1.1.0")), false).is_err());
        assert!(not_a_downgrade(Some(&v("1.0.0")), Some(&v("1.1.0")), true).is_ok());
        assert!(not_a_downgrade(Some(&v("1.1.0")), Some(&v("1.1.0")), false).is_ok());
        assert!(not_a_downgrade(None, Some(&v("1.1.0")), false).is_ok());
    }

    #[test]
    fn world_writable_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("app");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(directory_is_private(&live).is_ok());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = directory_is_private(&live).unwrap_err();
        assert!(err.contains("writable by other users"), "{err}");
    }

    #[test]
    fn unsigned_and_badly_signed_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c");
        std::fs::write(&file, b"x").unwrap();
        let key = vec!["RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3".to_string()];
        assert!(signature(&[], None, &file).is_ok());
        assert!(signature(&key, None, &file)
            .unwrap_err()
            .to_string()
            .contains("unsigned"));
        assert!(signature(&key, Some(b"garbage"), &file)
            .unwrap_err()
            .to_string()
            .contains("signature"));
    }
}
