//! SHA-256 of files on disk, and a cache of the live binary's digest keyed by its inode and
//! mtime, so that a poll or a worker start does not hash a large binary again for nothing.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Device, inode, size and mtime: changes whenever the file at a path does.
type FileKey = (u64, u64, u64, i64, i64);

/// A digest and the file it is of, as [`HashCache`] keys it: what the pipeline hashed, passed
/// to the master so that it does not hash the same bytes again at the worker's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Known {
    key: FileKey,
    digest: [u8; 32],
}

impl Known {
    /// `digest`, computed of the bytes of the file at `path`, which nobody but the caller can
    /// have written since (a temporary file of its own); the key is taken now.
    pub(crate) fn of_file(path: &Path, digest: [u8; 32]) -> std::io::Result<Self> {
        Ok(Self {
            key: file_key(&std::fs::metadata(path)?),
            digest,
        })
    }

    /// The digest as lowercase hex.
    pub(crate) fn hex(&self) -> String {
        hex::encode(self.digest)
    }
}

fn file_key(meta: &std::fs::Metadata) -> FileKey {
    (
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
    )
}

/// Hashes of one path, cached by [`FileKey`].
#[derive(Debug, Default)]
pub(crate) struct HashCache {
    entry: Option<(FileKey, [u8; 32])>,
}

impl HashCache {
    /// The digest of the file at `path` now.
    pub(crate) fn digest(&mut self, path: &Path) -> std::io::Result<[u8; 32]> {
        self.known(path).map(|known| known.digest)
    }

    /// The digest of the file at `path` now, with the key it is cached by.
    pub(crate) fn known(&mut self, path: &Path) -> std::io::Result<Known> {
        let key = file_key(&std::fs::metadata(path)?);
        if let Some((cached, digest)) = self.entry {
            if cached == key {
                return Ok(Known { key, digest });
            }
        }
        let digest = sha256_file(path)?;
        self.entry = Some((key, digest));
        Ok(Known { key, digest })
    }

    /// Takes a digest someone else computed: used only while the file keeps that key (same
    /// inode, size and mtime), as for one this cache hashed.
    pub(crate) fn remember(&mut self, known: Known) {
        self.entry = Some((known.key, known.digest));
    }

    /// [`digest`](Self::digest) as lowercase hex.
    pub(crate) fn hex(&mut self, path: &Path) -> std::io::Result<String> {
        self.digest(path).map(hex::encode)
    }
}

/// SHA-256 of a file.
pub(crate) fn sha256_file(path: &Path) -> std::io::Result<[u8; 32]> {
    use sha2::Digest;
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.finalize().into())
}

/// The first 12 hex digits: enough to tell releases apart in logs.
pub(crate) fn short(hex: &str) -> &str {
    &hex[..hex.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_digest_holds_while_the_file_keeps_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let staged = dir.path().join("staged");
        std::fs::write(&staged, b"v2").unwrap();
        // A digest that is not the file's: seen again only if the cache took it unhashed.
        let known = Known::of_file(&staged, [7; 32]).unwrap();
        let live = dir.path().join("live");
        std::fs::rename(&staged, &live).unwrap();
        let link = dir.path().join("pin");
        std::fs::hard_link(&live, &link).unwrap();
        let mut cache = HashCache::default();
        cache.remember(known);
        assert_eq!(
            cache.digest(&live).unwrap(),
            [7; 32],
            "same inode after the rename"
        );
        assert_eq!(
            cache.digest(&link).unwrap(),
            [7; 32],
            "a hard link shares it"
        );
        std::fs::write(dir.path().join("other"), b"v3").unwrap();
        std::fs::rename(dir.path().join("other"), &live).unwrap();
        assert_eq!(cache.digest(&live).unwrap(), sha256_file(&live).unwrap());
    }
}
