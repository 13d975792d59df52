//! The etcd fetcher as a rollout [`Store`]: documents are keys under the pointer's prefix.
//! `rollout.json` and its signature are watched with the pointer, so while the watch stands a
//! host reads the manifest from memory and asks the cluster nothing.

use handover_fetcher::{async_trait, FetchError, Listed, Store};

use crate::EtcdFetcher;

/// The documents the watch covers (the manifest and its signature).
fn watched(name: &str) -> bool {
    name.starts_with("rollout.json") && !name.contains('/')
}

#[async_trait]
impl Store for EtcdFetcher {
    fn locate(&self, name: &str) -> String {
        format!("etcd:{}{name}", self.config.store_prefix())
    }

    async fn get(&mut self, name: &str) -> Result<Option<Vec<u8>>, FetchError> {
        self.watch();
        let (generation, established) = self.shared.manifest();
        if watched(name) && established {
            if let Some((at, bytes)) = self.documents.get(name) {
                if *at == generation {
                    return Ok(bytes.clone());
                }
            }
        }
        let key = format!("{}{name}", self.config.store_prefix());
        let bytes = self.read(&key).await?.map(|(bytes, _)| bytes);
        if watched(name) {
            self.documents
                .insert(name.to_string(), (generation, bytes.clone()));
        }
        Ok(bytes)
    }

    async fn put(&mut self, name: &str, bytes: Vec<u8>) -> Result<(), FetchError> {
        let key = format!("{}{name}", self.config.store_prefix());
        self.write(&key, bytes).await
    }

    async fn list(&mut self, prefix: &str) -> Result<Vec<Listed>, FetchError> {
        let base = self.config.store_prefix().to_string();
        let keys = self.keys(&format!("{base}{prefix}")).await?;
        Ok(keys
            .into_iter()
            .filter_map(|(key, revision)| {
                Some(Listed {
                    name: key.strip_prefix(&base)?.to_string(),
                    tag: revision.to_string(),
                })
            })
            .collect())
    }
}
