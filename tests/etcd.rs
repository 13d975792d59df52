//! The etcd fetcher against Debian's etcd 3.4: a release pointer written to the watched key is
//! installed at once, polls cost the cluster nothing while the watch stands, a watch broken by
//! a cluster restart falls back to polling and comes back, and the checks are those of every
//! fetcher (a pointer whose SHA-256 does not match is refused, the worker keeps serving).

#![cfg(all(feature = "etcd", feature = "http"))]

#[path = "rollout/served.rs"]
mod served;
mod util;

use std::time::{Duration, Instant};

use handover::fetcher::Store;
use util::etcd::Etcd;
use util::{Options, Service};

const PREFIX: &str = "/handover/app/";

/// A master on the etcd fetcher, polling every `interval` (`poll_only` when asked).
fn master(etcd: &Etcd, interval: &str, extra: &str, keys: &str) -> Service {
    let config = format!(
        "fetcher = \"etcd\"\n[upgrade]\ninterval = \"{interval}\"\ncheck_timeout = \"5s\"\nprobation = \"1s\"\nrequire_signed_metadata = false\n{keys}[etcd]\nendpoints = [\"{}\"]\nkey = \"{PREFIX}release\"\nallow_insecure_loopback = true\n{extra}",
        etcd.endpoint()
    );
    Service::serving(Options {
        example: "testbed",
        config: &config,
        ..Default::default()
    })
}

/// A release: the testbed with a version trailer, uploaded to `dir` (served by `served`).
struct Release {
    bytes: Vec<u8>,
    sha: String,
    url: String,
}

fn upload(dir: &std::path::Path, served: &served::Served, version: &str) -> Release {
    let bytes = util::with_trailer(&util::example("testbed"), &format!("version:{version}"));
    let name = format!("app-{version}");
    std::fs::write(dir.join(&name), &bytes).unwrap();
    Release {
        sha: util::sha256_hex(&bytes),
        url: format!("{}/{name}", served.base.trim_end_matches('/')),
        bytes,
    }
}

fn pointer(release: &Release, sha: &str, version: &str, signature: Option<&str>) -> Vec<u8> {
    let mut value = serde_json::json!({"url": release.url, "sha256": sha, "version": version});
    if let Some(signature) = signature {
        value["signature"] = signature.into();
    }
    value.to_string().into_bytes()
}

/// Writes an unsigned pointer to `release` and waits until the master serves it.
fn install_unsigned(etcd: &Etcd, service: &Service, release: &Release) {
    let value = pointer(release, &release.sha, "0.2.0", None);
    etcd.put(PREFIX, "release", &value);
    service.wait_for_sha(&release.sha);
}

/// The reads etcd serves over `window`.
fn reads_over(etcd: &Etcd, window: Duration) -> u64 {
    let before = etcd.ranges();
    std::thread::sleep(window);
    etcd.ranges() - before
}

/// The fewest reads in a 3 s window (ten polls) out of up to six: a master reads once after
/// its watch stands (and again after it re-executes itself into an upgraded binary), so the
/// first window may hold those; a master that polls the key reads in every window.
fn quietest_window(etcd: &Etcd) -> u64 {
    let mut fewest = u64::MAX;
    for _ in 0..6 {
        fewest = fewest.min(reads_over(etcd, Duration::from_secs(3)));
        if fewest == 0 {
            break;
        }
    }
    fewest
}

#[test]
fn a_pointer_written_to_etcd_is_installed_through_the_watch_and_idle_polls_read_nothing() {
    let etcd = Etcd::start();
    let files = tempfile::tempdir().unwrap();
    let served = served::Served::start(files.path(), &[]);
    let (public, secret) = util::keypair();
    let keys = format!("public_keys = [\"{}\"]\n", public.to_base64());
    let service = master(&etcd, "300ms", "", &keys);
    service.wait_log("etcd watch established", Duration::from_secs(20));
    // Ten polls' worth of time: with the watch up, not one reads anything.
    let idle = quietest_window(&etcd);
    assert_eq!(idle, 0, "polls read etcd {idle} times with the watch up");

    // A pointer whose digest is not that of the bytes: refused, the worker keeps serving.
    let live = std::fs::read(&service.bin).unwrap();
    let worker = service.worker_pid();
    let release = upload(files.path(), &served, "0.2.0");
    let signature = util::sign(&release.bytes, &public, &secret);
    let wrong = util::sha256_hex(b"another build");
    etcd.put(
        PREFIX,
        "release",
        &pointer(&release, &wrong, "0.2.0", Some(&signature)),
    );
    service.wait_log("does not match the published", Duration::from_secs(20));
    service.assert_untouched(&live, worker, "a pointer with the wrong sha256");
    // Neither the pointer nor the bytes change: the bytes are not downloaded again.
    std::thread::sleep(Duration::from_secs(2));
    let downloads = service.log_count("downloaded candidate");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        service.log_count("downloaded candidate"),
        downloads,
        "{}",
        service.log()
    );

    // Mended: installed as soon as the key is written.
    let offers = service.log_count("offering the release the pointer names");
    let written = Instant::now();
    etcd.put(
        PREFIX,
        "release",
        &pointer(&release, &release.sha, "0.2.0", Some(&signature)),
    );
    while service.log_count("offering the release the pointer names") == offers {
        assert!(
            written.elapsed() < Duration::from_secs(20),
            "{}",
            service.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let learned = written.elapsed();
    service.wait_for_sha(&release.sha);
    eprintln!(
        "learned of the release {learned:?} after the pointer was written (polls every 300 ms), serving it after {:?}",
        written.elapsed()
    );
    // Settled: nothing more is read until the key changes.
    let idle = quietest_window(&etcd);
    assert_eq!(
        idle, 0,
        "polls read etcd {idle} times after the release was installed"
    );
    // Unsigned: refused by the core's policy, as from any fetcher.
    let unsigned = upload(files.path(), &served, "0.3.0");
    etcd.put(
        PREFIX,
        "release",
        &pointer(&unsigned, &unsigned.sha, "0.3.0", None),
    );
    service.wait_log("no signature", Duration::from_secs(20));
    assert_eq!(service.served_sha(), release.sha[..12]);
}

#[test]
fn a_watch_broken_by_a_cluster_restart_falls_back_to_polling_and_comes_back() {
    let mut etcd = Etcd::start();
    let files = tempfile::tempdir().unwrap();
    let served = served::Served::start(files.path(), &[]);
    let service = master(&etcd, "300ms", "", "");
    service.wait_log("etcd watch established", Duration::from_secs(20));
    let worker = service.worker_pid();

    etcd.kill();
    service.wait_log("etcd watch lost", Duration::from_secs(20));
    // Polling: each poll tries the cluster, and says it cannot reach it; the worker serves on.
    let log = service.wait_log(
        "fetch failed; still serving the running version fetcher=etcd",
        Duration::from_secs(20),
    );
    assert!(
        log.contains(&format!("etcd:{PREFIX}")) && log.contains("unreachable"),
        "{log}"
    );
    assert_eq!(service.worker_pid(), worker);

    etcd.spawn();
    service.wait_log("etcd watch re-established", Duration::from_secs(30));
    let release = upload(files.path(), &served, "0.2.0");
    install_unsigned(&etcd, &service, &release);
    let idle = quietest_window(&etcd);
    assert_eq!(
        idle, 0,
        "still polling ({idle} reads) after the watch came back"
    );
}

#[test]
fn with_poll_only_every_poll_reads_the_key_and_a_release_is_installed_by_polling() {
    let etcd = Etcd::start();
    let files = tempfile::tempdir().unwrap();
    let served = served::Served::start(files.path(), &[]);
    let service = master(&etcd, "300ms", "poll_only = true\n", "");
    service.wait_serving();
    let reads = reads_over(&etcd, Duration::from_secs(3));
    assert!(
        reads >= 3,
        "only {reads} reads in 3 s of polls every 300 ms"
    );
    assert_eq!(service.log_count("etcd watch"), 0, "{}", service.log());
    let release = upload(files.path(), &served, "0.2.0");
    install_unsigned(&etcd, &service, &release);
}

#[test]
fn the_store_beside_the_key_reads_the_watched_manifest_from_memory_until_it_changes() {
    let etcd = Etcd::start();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = handover::etcd::EtcdConfig::new(vec![etcd.endpoint()], format!("{PREFIX}release"));
    let mut host = handover::etcd::EtcdFetcher::new(config).unwrap();
    runtime.block_on(async {
        assert_eq!(host.get("rollout.json").await.unwrap(), None);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !host.watching() {
            assert!(
                Instant::now() < deadline,
                "the watch never stood:\n{}",
                etcd.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The first read after the watch stood, then none.
        host.get("rollout.json").await.unwrap();
        let before = etcd.ranges();
        for _ in 0..5 {
            assert_eq!(host.get("rollout.json").await.unwrap(), None);
        }
        assert_eq!(
            etcd.ranges() - before,
            0,
            "the watched manifest was read again"
        );
        // A change is seen as soon as the watch reports it.
        host.put("rollout.json", b"{\"serial\":1}".to_vec())
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while host.get("rollout.json").await.unwrap().as_deref() != Some(&b"{\"serial\":1}"[..]) {
            assert!(Instant::now() < deadline, "the new manifest was never read");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Reports are keys under the prefix, listed with their revisions.
        host.put("reports/abc/h1.json", b"{}".to_vec())
            .await
            .unwrap();
        host.put("reports/abc/h2.json", b"{}".to_vec())
            .await
            .unwrap();
        let mut listed = host.list("reports/abc/").await.unwrap();
        listed.sort_by(|a, b| a.name.cmp(&b.name));
        let names: Vec<_> = listed.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["reports/abc/h1.json", "reports/abc/h2.json"]);
        let tag = listed[0].tag.clone();
        host.put("reports/abc/h1.json", b"{\"again\":1}".to_vec())
            .await
            .unwrap();
        let relisted = host.list("reports/abc/h1").await.unwrap();
        assert_ne!(relisted[0].tag, tag, "a rewritten report keeps its tag");
        assert_eq!(
            host.get("reports/abc/h1.json").await.unwrap().unwrap(),
            b"{\"again\":1}"
        );
        assert_eq!(
            host.locate("rollout.json"),
            format!("etcd:{PREFIX}rollout.json")
        );
    });
}
