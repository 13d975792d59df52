//! The directory that holds the watched path, as a [`Store`]: a rollout manifest beside the
//! binary, and the hosts' reports below it (a shared mount, for a fleet).

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use handover_fetcher::{async_trait, FetchError, Listed, Store};

/// Documents in one directory, named by relative paths inside it.
#[derive(Debug, Clone)]
pub struct DirStore {
    dir: PathBuf,
}

impl DirStore {
    /// Documents in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn resolve(&self, name: &str) -> Result<PathBuf, FetchError> {
        let relative = Path::new(name);
        if name.is_empty()
            || !relative
                .components()
                .all(|c| matches!(c, Component::Normal(_)))
        {
            return Err(FetchError::invalid(
                self.locate(name),
                "a document name must be a relative path without `..`",
            ));
        }
        Ok(self.dir.join(relative))
    }
}

#[async_trait]
impl Store for DirStore {
    fn locate(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    async fn get(&mut self, name: &str) -> Result<Option<Vec<u8>>, FetchError> {
        let path = self.resolve(name)?;
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(FetchError::io(self.locate(name), e)),
        }
    }

    async fn put(&mut self, name: &str, bytes: Vec<u8>) -> Result<(), FetchError> {
        let path = self.resolve(name)?;
        let io = |e| FetchError::io(self.locate(name), e);
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(io)?;
        }
        // Written beside, then renamed: a reader sees the old document or the new one.
        let file_name = path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
        tokio::fs::write(&tmp, &bytes).await.map_err(io)?;
        if let Err(e) = tokio::fs::rename(&tmp, &path).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(io(e));
        }
        Ok(())
    }

    async fn list(&mut self, prefix: &str) -> Result<Vec<Listed>, FetchError> {
        // The prefix names a directory (`reports/<release>/`) or starts names in one.
        let (dir, start) = match prefix.rfind('/') {
            Some(i) => (&prefix[..i], &prefix[i + 1..]),
            None => ("", prefix),
        };
        let path = if dir.is_empty() {
            self.dir.clone()
        } else {
            self.resolve(dir)?
        };
        let mut entries = match tokio::fs::read_dir(&path).await {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(FetchError::io(self.locate(dir), e)),
        };
        let mut found = Vec::new();
        let io = |e| FetchError::io(self.locate(dir), e);
        while let Some(entry) = entries.next_entry().await.map_err(io)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.starts_with(start) {
                continue;
            }
            let meta = entry.metadata().await.map_err(io)?;
            if !meta.is_file() {
                continue;
            }
            found.push(Listed {
                name: if dir.is_empty() {
                    name
                } else {
                    format!("{dir}/{name}")
                },
                tag: format!(
                    "{}:{}:{}.{}",
                    meta.ino(),
                    meta.size(),
                    meta.mtime(),
                    meta.mtime_nsec()
                ),
            });
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn documents_are_written_whole_listed_by_prefix_and_confined_to_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = DirStore::new(dir.path());
        assert_eq!(store.get("rollout.json").await.unwrap(), None);
        assert!(store.list("reports/abc/").await.unwrap().is_empty());
        store
            .put("reports/abc/h1.json", b"one".to_vec())
            .await
            .unwrap();
        store
            .put("reports/abc/h2.json", b"two".to_vec())
            .await
            .unwrap();
        store
            .put("reports/abd/h3.json", b"three".to_vec())
            .await
            .unwrap();
        let mut names: Vec<_> = store
            .list("reports/abc/")
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        names.sort();
        assert_eq!(names, ["reports/abc/h1.json", "reports/abc/h2.json"]);
        let before = store.list("reports/abc/h1").await.unwrap();
        store
            .put("reports/abc/h1.json", b"changed".to_vec())
            .await
            .unwrap();
        let after = store.list("reports/abc/h1").await.unwrap();
        assert_ne!(before[0].tag, after[0].tag, "a rewrite changes the tag");
        assert_eq!(
            store.get("reports/abc/h1.json").await.unwrap().as_deref(),
            Some(&b"changed"[..])
        );
        for bad in ["../escape", "/etc/passwd", "a/../../b", ""] {
            assert!(store.put(bad, b"x".to_vec()).await.is_err(), "{bad}");
        }
    }
}
