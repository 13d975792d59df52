//! Publish → serving through the remote fetchers: an S3 object on moto (`moto_server`, started
//! here) and a GitHub release on a fake GitHub API (in this process, see `github.rs`). The
//! master polls every second (no jitter, so the figure is the interval plus the pipeline);
//! each repetition publishes the live binary plus a few bytes with
//! its SHA-256 (the object's checksum, the asset's digest) and times until a fresh connection
//! is answered by a worker running it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ct_codecs::{Base64, Encoder};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::github::FakeGithub;
use crate::master::{free_port, Master, MasterSpec};
use crate::procs::{self, Guarded};
use crate::report::{Settings, UpgradePhase};
use crate::stats::Dist;
use crate::upgrades::{new_build, stage_breakdown, wait_serving};
use crate::{say, DRAIN_TIMEOUT, PROBATION};

const INTERVAL: Duration = Duration::from_secs(1);
const MOTO_HINT: &str = "moto_server is not installed: skipping the S3 row \
                         (`pip install 'moto[s3]' flask flask-cors`)";
const BUCKET: &str = "handover-bench";
const KEY: &str = "releases/hello";
/// moto checks no signature, but answers 403 to a request without one.
const FAKE_SIGV4: &str = "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, \
                          SignedHeaders=host, Signature=00";

/// One remote fetcher's row: figures, or why there are none.
#[derive(Debug, Serialize)]
pub(crate) struct RemoteRow {
    pub(crate) fetcher: String,
    pub(crate) phase: Option<UpgradePhase>,
    pub(crate) skipped: Option<String>,
}

/// Both rows; a fetcher that cannot run here (no moto, hello built without the feature) is
/// skipped with the reason, never failing the bench.
pub(crate) fn run(
    hello: &Path,
    scratch: &Path,
    logs: &Path,
    settings: &Settings,
) -> Vec<RemoteRow> {
    let mut rows = Vec::new();
    for fetcher in ["s3", "github"] {
        say(&format!("upgrades through the {fetcher} fetcher"));
        let result = match fetcher {
            "s3" => s3_row(hello, scratch, logs, settings),
            _ => github_row(hello, scratch, logs, settings),
        };
        let (phase, skipped) = match result {
            Ok(phase) => (Some(phase), None),
            Err(e) => {
                eprintln!("bench: skipping the {fetcher} row: {e:#}");
                (None, Some(format!("{e:#}")))
            }
        };
        rows.push(RemoteRow {
            fetcher: fetcher.into(),
            phase,
            skipped,
        });
    }
    rows
}

fn upgrade_toml(fetcher: &str) -> String {
    format!(
        "fetcher = \"{fetcher}\"\n\n[upgrade]\ninterval = \"{}ms\"\njitter = 0.0\nprobation = \"{}ms\"\n",
        INTERVAL.as_millis(),
        PROBATION.as_millis()
    )
}

/// Starts the master; a master that exits at once (a fetcher this build lacks) is reported
/// with the last line of its log.
fn start_master(
    spec: &MasterSpec<'_>,
    hello: &Path,
    dir: &Path,
    logs: &Path,
) -> anyhow::Result<Master> {
    Master::start(spec, hello, dir, logs).map_err(|e| {
        let log = logs.join(format!("master-{}.log", spec.name));
        let feature = spec.name.trim_start_matches("remote-");
        let last = procs::tail(&log, 1);
        let why = if last.trim().is_empty() {
            format!("{e:#}")
        } else {
            last
        };
        anyhow::anyhow!(
            "the master did not start: {why} (build hello with `cargo build --release \
             --example hello --features {feature}`, or `--all-features`)"
        )
    })
}

/// `reps` upgrades: `publish` makes `bytes` the release and returns the moment it is out.
fn time_upgrades(
    master: &Master,
    mode: &str,
    reps: usize,
    publish: &mut dyn FnMut(&[u8], usize) -> anyhow::Result<Instant>,
) -> UpgradePhase {
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    const IN_PLACE: &str = "master upgraded in place";
    for rep in 0..reps {
        let in_place_before = log_count(master.log(), IN_PLACE);
        let timed = new_build(&master.binary, rep).and_then(|(bytes, sha256)| {
            let published = publish(&bytes, rep)?;
            wait_serving(master, &sha256, published, Duration::from_secs(30))
        });
        match timed {
            Ok(took) => {
                eprint!(
                    "\rbench: [{mode}] upgrade {}/{reps}: {took:.1?}      ",
                    rep + 1
                );
                latencies.push(took);
            }
            Err(e) => {
                eprintln!("\nbench: [{mode}] upgrade {} failed: {e:#}", rep + 1);
                failures.push(format!("{e:#}"));
            }
        }
        master.wait_single_worker(DRAIN_TIMEOUT + Duration::from_secs(5));
        // After probation the master re-executes into the new build; the next publication is
        // timed against the new master's fetcher.
        let deadline = Instant::now() + PROBATION + Duration::from_secs(10);
        while Instant::now() < deadline && log_count(master.log(), IN_PLACE) == in_place_before {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!();
    UpgradePhase {
        mode: mode.into(),
        poll_interval_ms: INTERVAL.as_millis() as u64,
        latencies_ms: latencies.iter().map(|d| d.as_secs_f64() * 1000.0).collect(),
        latency_ms: Dist::from_durations(latencies.iter().copied()),
        failures,
        breakdown: stage_breakdown(master.log()),
    }
}

fn log_count(log: &Path, needle: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(needle)
        .count()
}

fn s3_row(hello: &Path, scratch: &Path, logs: &Path, s: &Settings) -> anyhow::Result<UpgradePhase> {
    let moto = Moto::start(logs)?;
    moto.request("PUT", &format!("/{BUCKET}"), &[], &[])
        .context("creating the bucket")?;
    // What already runs is the release at first: nothing to do until something new lands.
    let live = std::fs::read(hello)?;
    moto.put_release(&live)?;
    let extra_toml = format!(
        "{}\n[s3]\nbucket = \"{BUCKET}\"\nkey = \"{KEY}\"\nendpoint_url = \"http://{}\"\n\
         allow_insecure_loopback = true\nregion = \"us-east-1\"\noperation_timeout = \"10s\"\n",
        upgrade_toml("s3"),
        moto.addr
    );
    let env = vec![
        ("AWS_ACCESS_KEY_ID", "test".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
    ];
    let spec = MasterSpec {
        name: "remote-s3",
        worker_threads: s.server_threads,
        drain_timeout: DRAIN_TIMEOUT,
        extra_toml,
        env,
    };
    let master = start_master(&spec, hello, &scratch.join("remote-s3"), logs)?;
    let mut publish = |bytes: &[u8], _rep: usize| {
        // The clock starts before the upload: publishing includes sending the bytes.
        let started = Instant::now();
        moto.put_release(bytes)?;
        Ok(started)
    };
    Ok(time_upgrades(
        &master,
        "s3",
        s.upgrade_repetitions,
        &mut publish,
    ))
}

fn github_row(
    hello: &Path,
    scratch: &Path,
    logs: &Path,
    s: &Settings,
) -> anyhow::Result<UpgradePhase> {
    let live = std::fs::read(hello)?;
    // Tags rise with each release: the running hello is 0.1.0, and a lower tag is a downgrade.
    let github = FakeGithub::start("v0.1.0", live)?;
    let extra_toml = format!(
        "{}\n[github]\nrepo = \"acme/app\"\nbase_url = \"{}\"\nasset = \"{}\"\n\
         allow_insecure_loopback = true\n",
        upgrade_toml("github"),
        github.base_url(),
        crate::github::ASSET
    );
    let spec = MasterSpec {
        name: "remote-github",
        worker_threads: s.server_threads,
        drain_timeout: DRAIN_TIMEOUT,
        extra_toml,
        env: Vec::new(),
    };
    let master = start_master(&spec, hello, &scratch.join("remote-github"), logs)?;
    let mut publish = |bytes: &[u8], rep: usize| {
        github.publish(&format!("v0.1.{}", rep + 1), bytes.to_vec());
        Ok(Instant::now())
    };
    Ok(time_upgrades(
        &master,
        "github",
        s.upgrade_repetitions,
        &mut publish,
    ))
}

/// A `moto_server` child, stopped when dropped.
struct Moto {
    addr: SocketAddr,
    _process: Guarded,
}

impl Moto {
    fn start(logs: &Path) -> anyhow::Result<Self> {
        let program = std::env::var_os("MOTO_SERVER")
            .map(PathBuf::from)
            .or_else(|| {
                let path = std::env::var_os("PATH")?;
                std::env::split_paths(&path)
                    .map(|dir| dir.join("moto_server"))
                    .find(|p| p.is_file())
            })
            .context(MOTO_HINT)?;
        let addr = free_port()?;
        let log = logs.join("moto.log");
        let file = std::fs::File::create(&log)?;
        let mut command = Command::new(&program);
        command
            .args(["-H", "127.0.0.1", "-p", &addr.port().to_string()])
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let mut process = Guarded::spawn(
            &mut command,
            libc::SIGKILL,
            libc::SIGTERM,
            Duration::from_secs(2),
        )
        .with_context(|| format!("starting {}; {MOTO_HINT}", program.display()))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
            if process.exited() || Instant::now() > deadline {
                bail!(
                    "moto_server did not answer on {addr}; {} ends:\n{}",
                    log.display(),
                    procs::tail(&log, 10)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self {
            addr,
            _process: process,
        })
    }

    /// Uploads the release with its SHA-256 as the object's checksum, as
    /// `aws s3api put-object --checksum-algorithm SHA256` does.
    fn put_release(&self, bytes: &[u8]) -> anyhow::Result<()> {
        let digest = Base64::encode_to_string(Sha256::digest(bytes))
            .map_err(|e| anyhow::anyhow!("base64: {e:?}"))?;
        let headers = [
            ("content-type", "application/octet-stream".to_string()),
            ("x-amz-sdk-checksum-algorithm", "SHA256".to_string()),
            ("x-amz-checksum-sha256", digest),
        ];
        self.request("PUT", &format!("/{BUCKET}/{KEY}"), &headers, bytes)
            .context("uploading the release")
    }

    /// One HTTP/1.1 request (path-style, a fake signature); fails unless answered 200.
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> anyhow::Result<()> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_write_timeout(Some(Duration::from_secs(30)))?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\nauthorization: {FAKE_SIGV4}\r\n\
             content-length: {}\r\nconnection: close\r\n",
            self.addr,
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer)?;
        let text = String::from_utf8_lossy(&answer);
        if !text.starts_with("HTTP/1.1 200") {
            bail!(
                "{method} {path}: {}",
                text.lines().next().unwrap_or("no answer")
            );
        }
        Ok(())
    }
}
