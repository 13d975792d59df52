//! A fleet for the rollout tests: one release store (a directory, or a bucket in moto), its
//! keys and the publisher's config, real masters watching it, and simulated hosts.

#![allow(unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime};

use handover::fetcher::Store;
use handover::rollout::{self, Follower, Outcome, Verdict};
use handover_fetcher_file::DirStore;

use crate::util::{self, Options, Service};

pub const HANDOVER: &str = env!("CARGO_BIN_EXE_handover");

/// Where the releases are published.
pub enum Backend {
    /// A directory (a shared mount).
    Dir,
    /// A bucket in an S3-compatible server (moto, started here).
    #[cfg(feature = "s3")]
    S3,
    /// A directory served by `handover rollout serve` (started here), through the HTTP
    /// fetcher and its store.
    #[cfg(feature = "http")]
    Http,
    /// Releases and their `rollout.json` assets on the fake GitHub, reports to
    /// `handover rollout serve`.
    #[cfg(feature = "github")]
    Github,
    /// The pointer, the manifest and the reports in etcd (started here), the binary served by
    /// `handover rollout serve`. The real masters watch; the simulated hosts poll.
    #[cfg(feature = "etcd")]
    Etcd,
}

#[cfg(feature = "s3")]
struct Bucket {
    server: crate::s3util::Server,
    bucket: crate::s3util::Bucket,
}

/// The release store, its keys and the publisher's config.
pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub secret: PathBuf,
    pub public: String,
    pub runtime: tokio::runtime::Runtime,
    #[cfg(feature = "s3")]
    s3: Option<Bucket>,
    #[cfg(feature = "http")]
    served: Option<crate::served::Served>,
    #[cfg(feature = "github")]
    github: Option<crate::github::Github>,
    #[cfg(feature = "etcd")]
    etcd: Option<crate::util::etcd::Etcd>,
}

/// The key the etcd masters watch, and the prefix of their store.
#[cfg(feature = "etcd")]
const ETCD_PREFIX: &str = "/handover/testbed/";

/// The key the S3 masters watch.
#[cfg(feature = "s3")]
const KEY: &str = "releases/testbed";

impl Fleet {
    pub fn new(backend: Backend) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let (public, secret) = util::minisign_keypair(dir.path());
        let public = std::fs::read_to_string(&public)
            .unwrap()
            .lines()
            .nth(1)
            .unwrap()
            .to_string();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        #[cfg(feature = "s3")]
        let s3 = match backend {
            Backend::S3 => {
                let server = crate::s3util::Server::start();
                let bucket = runtime.block_on(server.bucket("rollout"));
                Some(Bucket { server, bucket })
            }
            _ => None,
        };
        #[cfg(feature = "http")]
        let served = match backend {
            Backend::Http => Some(crate::served::Served::start(dir.path(), &[])),
            #[cfg(feature = "github")]
            Backend::Github => Some(crate::served::Served::start(dir.path(), &[])),
            #[cfg(feature = "etcd")]
            Backend::Etcd => Some(crate::served::Served::start(dir.path(), &[])),
            _ => None,
        };
        #[cfg(feature = "etcd")]
        let etcd = match backend {
            Backend::Etcd => Some(crate::util::etcd::Etcd::start()),
            _ => None,
        };
        #[cfg(feature = "github")]
        let github = match backend {
            Backend::Github => Some(crate::github::Github::start()),
            _ => None,
        };
        #[cfg(not(any(feature = "s3", feature = "http")))]
        let Backend::Dir = backend;
        let fleet = Fleet {
            dir,
            secret,
            public,
            runtime,
            #[cfg(feature = "s3")]
            s3,
            #[cfg(feature = "http")]
            served,
            #[cfg(feature = "github")]
            github,
            #[cfg(feature = "etcd")]
            etcd,
        };
        std::fs::write(
            fleet.path("publisher.toml"),
            format!(
                "{}[upgrade]\npublic_keys = [\"{}\"]\n",
                fleet.fetcher_config(),
                fleet.public
            ),
        )
        .unwrap();
        fleet
    }

    /// The `fetcher = …` line and the fetcher's table.
    fn fetcher_config(&self) -> String {
        #[cfg(feature = "etcd")]
        if let Some(etcd) = &self.etcd {
            return format!(
                "fetcher = \"etcd\"\n[etcd]\nendpoints = [\"{}\"]\nkey = \"{ETCD_PREFIX}release\"\nallow_insecure_loopback = true\n",
                etcd.endpoint()
            );
        }
        #[cfg(feature = "github")]
        if let (Some(github), Some(served)) = (&self.github, &self.served) {
            return github.config(served);
        }
        #[cfg(feature = "http")]
        if let Some(served) = &self.served {
            return format!(
                "fetcher = \"http\"\n[http]\nurl = \"{0}testbed.next\"\nsignature_url = \"{0}testbed.next.minisig\"\nstore_url = \"{0}\"\nallow_insecure_loopback = true\n",
                served.base
            );
        }
        #[cfg(feature = "s3")]
        if let Some(s3) = &self.s3 {
            return format!(
                "fetcher = \"s3\"\n[s3]\nbucket = \"{}\"\nkey = \"{KEY}\"\nendpoint_url = \"{}\"\nallow_insecure_loopback = true\nregion = \"us-east-1\"\noperation_timeout = \"10s\"\n",
                s3.bucket.name, s3.server.endpoint
            );
        }
        format!(
            "fetcher = \"file\"\n[file]\npath = \"{}\"\n",
            self.release().display()
        )
    }

    /// Stops `handover rollout serve`: the store and the releases become unreachable.
    #[cfg(feature = "http")]
    pub fn stop_server(&mut self) {
        self.served = None;
    }

    /// The bucket of an S3 fleet.
    #[cfg(feature = "s3")]
    pub fn bucket(&self) -> &crate::s3util::Bucket {
        &self.s3.as_ref().expect("an S3 fleet").bucket
    }

    /// The credentials moto takes (none are needed for a directory).
    fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "test"),
            ("AWS_SECRET_ACCESS_KEY", "test"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Where a directory fleet's release is published.
    pub fn release(&self) -> PathBuf {
        self.path("testbed.next")
    }

    /// A store client of its own, as a host has.
    pub fn store(&self) -> Box<dyn Store> {
        #[cfg(feature = "etcd")]
        if let Some(etcd) = &self.etcd {
            return Box::new(etcd.writer(ETCD_PREFIX));
        }
        #[cfg(feature = "github")]
        if let (Some(github), Some(served)) = (&self.github, &self.served) {
            return Box::new(github.store(served));
        }
        #[cfg(feature = "s3")]
        if let Some(s3) = &self.s3 {
            return Box::new(handover_fetcher_s3::S3Store::beside(
                s3.bucket.client.clone(),
                &s3.bucket.name,
                KEY,
            ));
        }
        #[cfg(feature = "http")]
        if let Some(served) = &self.served {
            return Box::new(crate::served::http_store(&served.base, None));
        }
        Box::new(DirStore::new(self.dir.path()))
    }

    /// The size of the release as published now (0: none).
    pub fn published_size(&self) -> u64 {
        #[cfg(feature = "github")]
        if let Some(github) = &self.github {
            return github.published_size();
        }
        #[cfg(feature = "s3")]
        if let Some(s3) = &self.s3 {
            let head = s3
                .bucket
                .client
                .head_object()
                .bucket(&s3.bucket.name)
                .key(KEY)
                .send();
            return self
                .runtime
                .block_on(head)
                .ok()
                .and_then(|h| h.content_length())
                .unwrap_or(0) as u64;
        }
        std::fs::metadata(self.release())
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// A real master watching the store as `host`.
    pub fn master(&self, host: &str) -> (Service, PathBuf) {
        let socket = self.path(&format!("{host}.sock"));
        let config = format!(
            "control_socket = \"{}\"\n{}[upgrade]\ninterval = \"300ms\"\nprobation = \"2s\"\ncheck_timeout = \"5s\"\nhost_id = \"{host}\"\nrequire_signed_metadata = false\npublic_keys = [\"{}\"]\n",
            socket.display(),
            self.fetcher_config(),
            self.public
        );
        let service = Service::serving(Options {
            example: "testbed",
            config: &config,
            env: self.env(),
            ..Default::default()
        });
        (service, socket)
    }

    /// Starts a rollout of `bytes` in `steps` (`handover rollout start`), then publishes them
    /// with their signature (Debian's `minisign`): the manifest first, so that no host takes
    /// the release unstaged.
    pub fn publish_and_start(&self, bytes: &[u8], steps: &str, halt_hosts: u32) {
        let file = self.stage(bytes);
        let halt = halt_hosts.to_string();
        let args = [
            "start",
            "--steps",
            steps,
            "--halt-hosts",
            &halt,
            "--halt-percent",
            "0",
        ];
        let out = self.cli(&args, Some(&file));
        assert!(out.contains("started (serial 1)"), "{out}");
        self.publish_signed(&file, bytes);
    }

    /// Publishes `bytes` (staged as `file`, signed beside it): signature, then binary.
    pub fn publish_signed(&self, file: &Path, bytes: &[u8]) {
        let signature = file.with_extension("minisig");
        #[cfg(feature = "github")]
        if let Some(github) = &self.github {
            github.publish(bytes, &std::fs::read(signature).unwrap());
            return;
        }
        #[cfg(feature = "s3")]
        if let Some(s3) = &self.s3 {
            let signature = std::fs::read(signature).unwrap();
            self.runtime.block_on(async {
                s3.bucket
                    .put(&format!("{KEY}.minisig"), &signature, false, None)
                    .await;
                s3.bucket.put(KEY, bytes, true, None).await;
            });
            return;
        }
        std::fs::rename(signature, self.path("testbed.next.minisig")).unwrap();
        util::drop_file(&self.release(), bytes);
        // The pointer last: the binary is all there when hosts learn of it.
        #[cfg(feature = "etcd")]
        if let (Some(etcd), Some(served)) = (&self.etcd, &self.served) {
            let signature = std::fs::read_to_string(self.path("testbed.next.minisig")).unwrap();
            let pointer = serde_json::json!({
                "url": format!("{}testbed.next", served.base),
                "sha256": util::sha256_hex(bytes),
                "signature": signature,
            });
            etcd.put(ETCD_PREFIX, "release", pointer.to_string().as_bytes());
        }
    }

    /// Writes `bytes` to a staging directory and signs them there (Debian's `minisign`).
    pub fn stage(&self, bytes: &[u8]) -> PathBuf {
        let staging = self.path("staging");
        std::fs::create_dir_all(&staging).unwrap();
        let file = staging.join("testbed");
        std::fs::write(&file, bytes).unwrap();
        self.sign(&file);
        file
    }

    /// Signs `file` as the publisher would (Debian's `minisign`), beside it.
    pub fn sign(&self, file: &Path) {
        let out = Command::new("minisign")
            .args(["-S", "-s"])
            .arg(&self.secret)
            .arg("-m")
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `handover rollout ARGS… [FILE]` with the publisher's config (and key, but for `status`).
    pub fn cli(&self, args: &[&str], file: Option<&Path>) -> String {
        let mut command = Command::new(HANDOVER);
        command
            .arg("rollout")
            .args(&args[..1])
            .arg("--config")
            .arg(self.path("publisher.toml"))
            .envs(self.env());
        if args[0] != "status" {
            command.arg("--secret-key").arg(&self.secret);
        }
        // handover does not write GitHub release assets: the manifest is written to a
        // directory and uploaded, as a publisher does with `gh release upload --clobber`.
        let out_dir = self.path("out");
        #[cfg(feature = "github")]
        if self.github.is_some() && args[0] != "status" {
            command.arg("--out").arg(&out_dir);
        }
        command.args(&args[1..]);
        if let Some(file) = file {
            command.arg(file);
        }
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "handover rollout {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        #[cfg(feature = "github")]
        if let Some(github) = self.github.as_ref().filter(|_| args[0] != "status") {
            github.upload_manifest(&out_dir);
        }
        let _ = out_dir;
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn status_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.cli(&["status", "--json"], None)).unwrap()
    }

    /// Simulated hosts named `hosts`, each with a store client of its own.
    pub fn simulated(&self, hosts: Vec<String>) -> Vec<Simulated> {
        hosts
            .into_iter()
            .map(|host| Simulated {
                follower: Follower::new(host),
                store: self.store(),
                took: None,
            })
            .collect()
    }

    /// One poll of every simulated host; `size` is the release's size.
    pub fn poll_all(&self, simulated: &mut [Simulated], size: u64) {
        let keys = [self.public.clone()];
        let published = self.published_size() == size;
        for sim in simulated.iter_mut() {
            self.runtime.block_on(sim.poll(&keys, published));
        }
    }
}

/// A host simulated in this process: the same manifest, bucket, halt rule, reports and
/// polling policy as a real master ([`Follower`]), with the download and install reduced to
/// checking that the release is published.
pub struct Simulated {
    pub follower: Follower,
    store: Box<dyn Store>,
    /// When it took the release, and the step in force then.
    pub took: Option<(Instant, usize)>,
}

impl Simulated {
    pub fn host(&self) -> &str {
        self.follower.host()
    }

    /// `published` says whether the release is all there: its SHA-256 was checked once by the
    /// test, so that 45 hosts need not hash a 300 MB debug build each.
    async fn poll(&mut self, keys: &[String], published: bool) {
        let store = self.store.as_mut();
        let Some(manifest) = self.follower.manifest(store, keys).await.unwrap() else {
            return;
        };
        let now = SystemTime::now();
        let mine = self.took.map(|_| (Outcome::Ready, None));
        let view = self
            .follower
            .look(store, &manifest, mine, now)
            .await
            .unwrap();
        if let (None, Verdict::Install { step }) = (self.took, view.verdict) {
            if !published {
                return;
            }
            let ready = Some((Outcome::Ready, None));
            self.follower
                .look(store, &manifest, ready, now)
                .await
                .unwrap();
            self.took = Some((Instant::now(), step));
        }
    }
}

/// Host ids whose buckets for `sha` satisfy `keep`, `count` of them.
pub fn hosts(prefix: &str, sha: &str, count: usize, keep: impl Fn(u32) -> bool) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|h| keep(rollout::bucket(h, sha)))
        .take(count)
        .collect()
}
