//! SHA-256 of files on disk, and a cache of the live binary's digest keyed by its inode and
//! mtime, so that a poll or a worker start does not hash a large binary again for nothing.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Device, inode, size and mtime: changes whenever the file at a path does.
type FileKey = (u64, u64, u64, i64, i64);

/// Hashes of one path, cached by [`FileKey`].
#[derive(Debug, Default)]
pub(crate) struct HashCache {
    entry: Option<(FileKey, [u8; 32])>,
}

impl HashCache {
    /// The digest of the file at `path` now.
    pub(crate) fn digest(&mut self, path: &Path) -> std::io::Result<[u8; 32]> {
        let meta = std::fs::metadata(path)?;
        let key = (
            meta.dev(),
            meta.ino(),
            meta.size(),
            meta.mtime(),
            meta.mtime_nsec(),
        );
        if let Some((cached, digest)) = self.entry {
            if cached == key {
                return Ok(digest);
            }
        }
        let digest = sha256_file(path)?;
        self.entry = Some((key, digest));
        Ok(digest)
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
