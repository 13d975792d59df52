//! A GitHub fleet for the rollout tests: the fake GitHub (REST API and asset storage, shaped
//! like GitHub's) holds the release and its `rollout.json` assets, and `handover rollout serve`
//! collects the reports (`[github] store_url`).

#![allow(unreachable_pub, dead_code)]

use std::path::Path;

use crate::fake::{FakeGithub, FakeRelease, ASSET, TARGET};
use crate::served::Served;

/// The tag of the release the tests roll out.
const TAG: &str = "v0.2.0";
const RELEASE_ID: u64 = 2;

pub struct Github {
    pub fake: FakeGithub,
    /// The fake's servers run here (the fleet's own runtime runs only while it is blocked on).
    _runtime: tokio::runtime::Runtime,
}

impl Github {
    /// A repository without a release yet.
    pub fn start() -> Github {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let fake = runtime.block_on(FakeGithub::start(Vec::new()));
        Github {
            fake,
            _runtime: runtime,
        }
    }

    /// `[github]` for a host (reports to `served`).
    pub fn config(&self, served: &Served) -> String {
        format!(
            "fetcher = \"github\"\n[github]\nrepo = \"acme/app\"\nbase_url = \"{}\"\ntarget = \"{TARGET}\"\nallow_insecure_loopback = true\ntoken = \"ghp_secret_for_tests\"\nstore_url = \"{}\"\n",
            self.fake.api.url(""),
            served.base
        )
    }

    /// The fetcher a simulated host uses as its store.
    pub fn store(&self, served: &Served) -> handover_fetcher_github::GithubFetcher {
        let mut config = self.fake.config();
        config.token = Some("ghp_secret_for_tests".into());
        config.store_url = Some(served.base.clone());
        handover_fetcher_github::GithubFetcher::new(config).unwrap()
    }

    /// Uploads `bytes` as the release's asset `name`, replacing one of that name (creating the
    /// release, with no other asset, on first use).
    pub fn upload(&self, name: &str, bytes: &[u8]) {
        self.fake.set(|state| {
            if !state.releases.iter().any(|r| r.id == RELEASE_ID) {
                state.releases.insert(0, FakeRelease::new(RELEASE_ID, TAG));
            }
            let release = state
                .releases
                .iter_mut()
                .find(|r| r.id == RELEASE_ID)
                .unwrap();
            release.replace(name, bytes);
        });
    }

    /// Uploads what `handover rollout … --out DIR` wrote.
    pub fn upload_manifest(&self, dir: &Path) {
        // The signature first, as handover writes a store.
        for name in ["rollout.json.minisig", "rollout.json"] {
            if let Ok(bytes) = std::fs::read(dir.join(name)) {
                self.upload(name, &bytes);
            }
        }
    }

    /// Publishes the binary and its signature.
    pub fn publish(&self, bytes: &[u8], signature: &[u8]) {
        self.upload(&format!("{ASSET}.minisig"), signature);
        self.upload(ASSET, bytes);
    }

    /// The binary asset's size (0: not uploaded).
    pub fn published_size(&self) -> u64 {
        let state = self.fake.state.lock().unwrap();
        state
            .releases
            .iter()
            .flat_map(|r| &r.assets)
            .find(|a| a.name == ASSET)
            .map_or(0, |a| a.bytes.len() as u64)
    }
}
