//! Plumbing for the S3 tests: a real S3-compatible server (moto, started here, or the one named
//! by `HANDOVER_S3_ENDPOINT`), buckets, uploads, and fetchers pointed at it.

#![allow(dead_code, unreachable_pub)]

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_s3::config::{Credentials, SharedCredentialsProvider};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumAlgorithm;
use aws_sdk_s3::Client;
use handover_fetcher::{Artifact, Running, Sha256, Version};
use handover_fetcher_s3::{aws_config, aws_sdk_s3, S3Config, S3Fetcher};
use sha2::Digest;
use tokio::io::AsyncReadExt;

const INSTALL: &str = "pip install 'moto[s3]' flask flask-cors";

/// The server the tests talk to, and the credentials they use.
pub struct Server {
    pub endpoint: String,
    moto: Option<Moto>,
    access_key: String,
    secret_key: String,
    region: String,
}

/// A `moto_server` child, killed on drop (even when an assertion failed).
struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// moto on a free port, or the server in `HANDOVER_S3_ENDPOINT`.
    pub fn start() -> Self {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let access_key = env("AWS_ACCESS_KEY_ID").unwrap_or_else(|| "test".into());
        let secret_key = env("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|| "test".into());
        let region = env("AWS_REGION").unwrap_or_else(|| "us-east-1".into());
        let (endpoint, moto) = match env("HANDOVER_S3_ENDPOINT") {
            Some(endpoint) => (endpoint.trim_end_matches('/').to_owned(), None),
            None => {
                let moto = Moto::start();
                (moto.endpoint(), Some(moto))
            }
        };
        Server {
            endpoint,
            moto,
            access_key,
            secret_key,
            region,
        }
    }

    /// moto keeps a request log the tests can read; another server does not.
    pub fn is_moto(&self) -> bool {
        self.moto.is_some()
    }

    /// An SDK config with the test credentials, built explicitly (no global environment).
    pub fn sdk(&self) -> SdkConfig {
        self.sdk_with(&self.access_key, &self.secret_key)
    }

    pub fn sdk_with(&self, access_key: &str, secret_key: &str) -> SdkConfig {
        sdk_config(access_key, secret_key, &self.region)
    }

    /// A client for setting up objects.
    pub fn client(&self) -> Client {
        let config = aws_sdk_s3::config::Builder::from(&self.sdk())
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .build();
        Client::from_conf(config)
    }

    /// A fresh bucket named after the test.
    pub async fn bucket(&self, test: &str) -> Bucket {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let prefix = std::env::var("HANDOVER_S3_BUCKET_PREFIX")
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "handover-test".into());
        let unique = format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let mut name = format!("{prefix}-{test}-{unique}")
            .to_ascii_lowercase()
            .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-");
        if name.len() > 63 {
            name.replace_range(..name.len() - 63, "");
            name = name.trim_start_matches('-').to_owned();
        }
        let client = self.client();
        client
            .create_bucket()
            .bucket(&name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create bucket {name} at {}: {e:?}", self.endpoint));
        Bucket {
            name,
            client,
            cleanup: !self.is_moto(),
        }
    }

    /// The config for `bucket/key` on this server. moto answers plain http on 127.0.0.1, which
    /// the fetcher accepts only when told (an external https endpoint needs no such flag, and
    /// an external plain-http one is refused).
    pub fn config(&self, bucket: impl Into<String>, key: &str) -> S3Config {
        S3Config::new(bucket, key)
            .with_endpoint_url(&self.endpoint)
            .allow_insecure_loopback(true)
    }

    /// A fetcher for `bucket/key` on this server with short timeouts; `edit` changes the rest.
    pub fn fetcher(
        &self,
        bucket: &Bucket,
        key: &str,
        edit: impl FnOnce(&mut S3Config),
    ) -> S3Fetcher {
        let mut config = self
            .config(&bucket.name, key)
            .with_timeouts(Duration::from_secs(2), Duration::from_secs(10));
        edit(&mut config);
        S3Fetcher::with_sdk_config(config, &self.sdk()).unwrap()
    }

    /// How far moto's request log goes now; see [`Server::requests_since`].
    pub fn log_mark(&self) -> usize {
        self.moto.as_ref().map_or(0, |m| m.log_text().len())
    }

    /// moto's request lines (`"HEAD /bucket/key HTTP/1.1" 304`) logged after `mark`, once one
    /// of them contains `wait_for` (moto logs a request after answering it).
    pub fn requests_since(&self, mark: usize, wait_for: &str) -> Vec<String> {
        let moto = self.moto.as_ref().expect("only moto keeps a request log");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = moto.log_text();
            let lines: Vec<String> = text[mark..]
                .lines()
                .filter(|l| l.contains("HTTP/1.1\""))
                .map(str::to_owned)
                .collect();
            if lines.iter().any(|l| l.contains(wait_for)) || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// An SDK config with explicit (fake) credentials.
pub fn sdk_config(access_key: &str, secret_key: &str, region: &str) -> SdkConfig {
    let credentials = Credentials::new(access_key, secret_key, None, None, "handover-tests");
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .build()
}

impl Moto {
    fn start() -> Moto {
        let program = std::env::var_os("MOTO_SERVER")
            .map(PathBuf::from)
            .or_else(|| find_on_path("moto_server"))
            .unwrap_or_else(|| {
                panic!(
                    "moto_server not found (set MOTO_SERVER or put it on PATH): run `{INSTALL}`, \
                     or set HANDOVER_S3_ENDPOINT to test against another S3-compatible server"
                )
            });
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("moto.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}; run `{INSTALL}`", program.display()));
        let mut moto = Moto {
            child,
            port,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!(
                    "{} exited ({status}) before answering; run `{INSTALL}`\n{}",
                    program.display(),
                    moto.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer on port {port} within 30 s\n{}",
                moto.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        moto
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(&self.log) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// A port nothing listens on (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A bucket for one test; on a server other than moto it is emptied and deleted on drop.
pub struct Bucket {
    pub name: String,
    pub client: Client,
    cleanup: bool,
}

impl Bucket {
    /// Uploads `body` as `key`, with the object's own SHA-256 checksum when `sha256`, and
    /// `x-amz-meta-version` when `version` is given. Returns the ETag.
    pub async fn put(&self, key: &str, body: &[u8], sha256: bool, version: Option<&str>) -> String {
        let mut put = self
            .client
            .put_object()
            .bucket(&self.name)
            .key(key)
            .body(ByteStream::from(body.to_vec()));
        if sha256 {
            put = put.checksum_algorithm(ChecksumAlgorithm::Sha256);
        }
        if let Some(version) = version {
            put = put.metadata("version", version);
        }
        let out = put
            .send()
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
        out.e_tag().unwrap().to_owned()
    }

    /// Uploads `parts` as one multipart object with SHA-256 part checksums (so S3 stores a
    /// checksum of the parts' checksums). Returns the ETag.
    pub async fn put_multipart(&self, key: &str, parts: &[&[u8]]) -> String {
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.name)
            .key(key)
            .checksum_algorithm(ChecksumAlgorithm::Sha256)
            .send()
            .await
            .unwrap();
        let id = upload.upload_id().unwrap();
        let mut done = Vec::new();
        for (n, body) in parts.iter().enumerate() {
            let number = n as i32 + 1;
            let part = self
                .client
                .upload_part()
                .bucket(&self.name)
                .key(key)
                .upload_id(id)
                .part_number(number)
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .body(ByteStream::from(body.to_vec()))
                .send()
                .await
                .unwrap();
            done.push(
                CompletedPart::builder()
                    .part_number(number)
                    .e_tag(part.e_tag().unwrap())
                    .set_checksum_sha256(part.checksum_sha256().map(str::to_owned))
                    .build(),
            );
        }
        let completed = self
            .client
            .complete_multipart_upload()
            .bucket(&self.name)
            .key(key)
            .upload_id(id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(done))
                    .build(),
            )
            .send()
            .await;
        match completed {
            Ok(out) => out.e_tag().unwrap().to_owned(),
            // moto 5 answers 200 with a `CompleteMultipartUploadResponse` root element, which
            // the SDK cannot decode; the upload did complete, so read the ETag back.
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 200) => {
                let head = self
                    .client
                    .head_object()
                    .bucket(&self.name)
                    .key(key)
                    .send()
                    .await;
                head.unwrap().e_tag().unwrap().to_owned()
            }
            Err(e) => panic!("complete multipart upload {key}: {e:?}"),
        }
    }

    /// Makes GetObject on `key` forbidden to everyone.
    pub async fn deny_get(&self, key: &str) {
        let policy = format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Deny","Principal":"*",
            "Action":"s3:GetObject","Resource":"arn:aws:s3:::{}/{key}"}}]}}"#,
            self.name
        );
        self.client
            .put_bucket_policy()
            .bucket(&self.name)
            .policy(policy)
            .send()
            .await
            .unwrap();
    }
}

impl Drop for Bucket {
    fn drop(&mut self) {
        if !self.cleanup {
            return;
        }
        let (client, name) = (self.client.clone(), self.name.clone());
        // Drop cannot await: empty and delete the bucket on a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(list) = client.list_objects_v2().bucket(&name).send().await {
                    for object in list.contents() {
                        if let Some(key) = object.key() {
                            let _ = client.delete_object().bucket(&name).key(key).send().await;
                        }
                    }
                }
                let _ = client.delete_bucket().bucket(&name).send().await;
            });
        })
        .join();
    }
}

pub fn sha256(bytes: &[u8]) -> Sha256 {
    sha2::Sha256::digest(bytes).into()
}

pub fn running(version: &str) -> Running {
    Running::new([0; 32], Some(Version::parse(version).unwrap()))
}

/// Reads an artifact's stream to the end.
pub async fn read_all(artifact: &mut Artifact) -> Vec<u8> {
    let mut bytes = Vec::new();
    artifact.reader().read_to_end(&mut bytes).await.unwrap();
    bytes
}
