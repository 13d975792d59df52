//! The S3 fetcher end to end: a real S3-compatible server (moto, started by the test), a
//! service under handover polling it, and uploads that upgrade the service.
#![cfg(feature = "s3")]

#[path = "../fetchers/s3/tests/util/mod.rs"]
mod s3util;
mod util;

use std::time::Duration;

use util::load::{Load, Protocol};
use util::{Options, Service};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn service_polling(server: &s3util::Server, bucket: &str) -> Service {
    let config = format!(
        "fetcher = \"s3\"\n[upgrade]\ninterval = \"500ms\"\nprobation = \"2s\"\n[s3]\nbucket = \"{bucket}\"\nkey = \"releases/testbed\"\nendpoint_url = \"{}\"\nallow_insecure_loopback = true\nregion = \"us-east-1\"\noperation_timeout = \"5s\"\n",
        server.endpoint
    );
    let env = [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    Service::serving(Options {
        example: "testbed",
        config: &config,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    })
}

#[test]
fn an_upload_to_s3_upgrades_the_service_with_zero_failed_requests() {
    let rt = runtime();
    let server = s3util::Server::start();
    let bucket = rt.block_on(server.bucket("e2e"));
    let service = service_polling(&server, &bucket.name);
    let master = service.pid();
    let live = std::fs::read(&service.bin).unwrap();
    // The object holds what already runs: its published checksum says so, nothing is
    // downloaded and nothing restarts.
    let worker = service.worker_pid();
    rt.block_on(bucket.put("releases/testbed", &live, true, Some("0.1.0")));
    std::thread::sleep(Duration::from_secs(2));
    service.assert_untouched(&live, worker, "object identical to the running binary");
    assert!(
        !service.log().contains("downloaded candidate"),
        "{}",
        service.log()
    );

    let load = Load::start(service.addr(), 64, Protocol::Http1, "/");
    load.wait_progress(300);
    let new = util::with_trailer(&service.bin, "s3-release-2");
    rt.block_on(bucket.put("releases/testbed", &new, true, Some("0.1.1")));
    service.wait_for_sha(&util::sha256_hex(&new));
    load.wait_progress(300);
    let stats = load.finish();
    assert_eq!(stats.failed, 0, "{:?}", stats.errors);
    assert_eq!(service.pid(), master);
    assert_eq!(std::fs::read(&service.bin).unwrap(), new);
    service.wait_log("upgrade installed and serving", Duration::from_secs(10));
    // The master then re-executes into the new binary; its fetcher sees the object's
    // published checksum is what runs, and downloads nothing again.
    service.wait_log("master upgraded in place", Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        service.log_count("downloaded candidate"),
        1,
        "{}",
        service.log()
    );
}

#[test]
fn a_corrupt_or_unreachable_s3_source_never_disturbs_the_running_worker() {
    let rt = runtime();
    let server = s3util::Server::start();
    let bucket = rt.block_on(server.bucket("bad"));
    let service = service_polling(&server, &bucket.name);
    let live = std::fs::read(&service.bin).unwrap();
    let worker = service.worker_pid();

    // A published digest (sidecar) that does not match the object's bytes.
    rt.block_on(bucket.put(
        "releases/testbed.sha256",
        format!("{}  testbed\n", "cd".repeat(32)).as_bytes(),
        false,
        None,
    ));
    rt.block_on(bucket.put(
        "releases/testbed",
        &util::with_trailer(&service.bin, "corrupt"),
        false,
        Some("0.2.0"),
    ));
    service.wait_log(
        "does not match the published cdcdcdcdcdcd",
        Duration::from_secs(20),
    );
    service.assert_untouched(&live, worker, "checksum mismatch");

    // The server goes away: fetch errors are logged with back-off, the worker keeps serving.
    drop(server);
    service.wait_log("fetch failed; still serving", Duration::from_secs(20));
    service.assert_untouched(&live, worker, "server down");
}

// regression: a missing sidecar was a fetch error with exponential back-off, so a sidecar
// uploaded a minute late cost many minutes.
#[test]
fn an_object_whose_sidecar_is_uploaded_after_it_is_installed_once_the_sidecar_is_there() {
    let rt = runtime();
    let server = s3util::Server::start();
    let bucket = rt.block_on(server.bucket("late"));
    let service = service_polling(&server, &bucket.name);
    let live = std::fs::read(&service.bin).unwrap();
    let worker = service.worker_pid();
    // `aws s3 cp app` first, without a checksum of its own...
    let new = util::with_trailer(&service.bin, "s3-late-sidecar");
    let digest = util::sha256_hex(&new);
    rt.block_on(bucket.put("releases/testbed", &new, false, Some("0.2.0")));
    service.wait_log("waiting for the checksum", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(3));
    service.assert_untouched(&live, worker, "sidecar not uploaded yet");
    assert!(
        !service.log().contains("fetch failed"),
        "a missing sidecar is not a fetch error:\n{}",
        service.log()
    );
    // ...then `aws s3 cp app.sha256`.
    rt.block_on(bucket.put(
        "releases/testbed.sha256",
        format!("{digest}  testbed\n").as_bytes(),
        false,
        None,
    ));
    let started = std::time::Instant::now();
    service.wait_for_sha(&digest);
    eprintln!(
        "sidecar uploaded → new binary serving: {:?}",
        started.elapsed()
    );
}

// regression: a sidecar that still held the running binary's digest hid a new object.
#[test]
fn a_stale_sidecar_holding_the_running_digest_does_not_hide_a_new_object() {
    let rt = runtime();
    let server = s3util::Server::start();
    let bucket = rt.block_on(server.bucket("stale"));
    let service = service_polling(&server, &bucket.name);
    let live = std::fs::read(&service.bin).unwrap();
    rt.block_on(bucket.put(
        "releases/testbed.sha256",
        format!("{}  testbed\n", util::sha256_hex(&live)).as_bytes(),
        false,
        None,
    ));
    let new = util::with_trailer(&service.bin, "s3-stale-sidecar");
    let digest = util::sha256_hex(&new);
    rt.block_on(bucket.put("releases/testbed", &new, false, Some("0.2.0")));
    // The new object is seen (and waits for a consistent checksum)...
    service.wait_log("does not match the published", Duration::from_secs(20));
    rt.block_on(bucket.put(
        "releases/testbed.sha256",
        format!("{digest}  testbed\n").as_bytes(),
        false,
        None,
    ));
    // ...and installed once the sidecar is updated.
    service.wait_for_sha(&digest);
}
