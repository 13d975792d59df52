//! The S3 fetcher against a real S3-compatible server: moto, started per test, or the server in
//! `HANDOVER_S3_ENDPOINT` (see the crate README).

mod util;

use std::time::{Duration, Instant};

use handover_fetcher::{FetchError, Fetcher, Running, Settlement, Version};
use handover_fetcher_s3::{S3Config, S3Fetcher};
use util::{free_port, read_all, running, sdk_config, sha256, Server};

/// The fetcher offers a candidate again (after a settlement that asks for it, or a change).
async fn offered(fetcher: &mut S3Fetcher, running: &Running) -> handover_fetcher::Artifact {
    fetcher
        .fetch(running)
        .await
        .unwrap()
        .expect("offered again")
}

const APP: &[u8] = b"#!/bin/sh\necho 'version 1.3.0'\n";

#[tokio::test]
async fn offers_new_object_with_size_checksum_and_version() {
    let server = Server::start();
    let bucket = server.bucket("offers").await;
    let etag = bucket.put("bin/app", APP, true, Some("1.3.0")).await;

    let mut fetcher = server.fetcher(&bucket, "bin/app", |_| {});
    let mut artifact = fetcher
        .fetch(&running("1.2.0"))
        .await
        .unwrap()
        .expect("offered");

    assert_eq!(artifact.origin(), format!("s3://{}/bin/app", bucket.name));
    assert_eq!(artifact.id(), Some(etag.as_str()));
    assert_eq!(artifact.claimed_size(), Some(APP.len() as u64));
    assert_eq!(
        artifact.claimed_sha256(),
        Some(&sha256(APP)),
        "from x-amz-checksum-sha256"
    );
    assert_eq!(artifact.claimed_version(), Some(&Version::new(1, 3, 0)));
    assert_eq!(artifact.signature(), None);
    assert_eq!(read_all(&mut artifact).await, APP);
}

#[tokio::test]
async fn sidecar_sha256_is_used_when_the_object_has_no_checksum() {
    let server = Server::start();
    let bucket = server.bucket("sidecar").await;
    bucket.put("app", APP, false, None).await;
    let line = format!("{}  app-1.3.0-linux\n", hex(&sha256(APP)));
    bucket.put("app.sha256", line.as_bytes(), false, None).await;
    bucket
        .put(
            "app.minisig",
            b"untrusted comment: test\nRWQ...",
            false,
            None,
        )
        .await;

    let mut fetcher = server.fetcher(&bucket, "app", |_| {});
    let artifact = fetcher
        .fetch(&running("1.2.0"))
        .await
        .unwrap()
        .expect("offered");

    assert_eq!(artifact.claimed_sha256(), Some(&sha256(APP)));
    assert_eq!(artifact.claimed_version(), None, "no version metadata");
    assert_eq!(
        artifact.signature(),
        Some(&b"untrusted comment: test\nRWQ..."[..])
    );
}

#[tokio::test]
async fn multipart_checksum_of_checksums_is_not_taken_for_the_file_digest() {
    let server = Server::start();
    let bucket = server.bucket("multipart").await;
    let (first, last) = (vec![b'a'; 5 << 20], b"tail".to_vec());
    let etag = bucket.put_multipart("app", &[&first, &last]).await;
    assert!(etag.contains('-'), "a multipart ETag: {etag}");

    let mut fetcher = server.fetcher(&bucket, "app", |_| {});
    let artifact = fetcher
        .fetch(&running("1.2.0"))
        .await
        .unwrap()
        .expect("offered");
    assert_eq!(
        artifact.claimed_sha256(),
        None,
        "no usable digest, no sidecar"
    );
    drop(artifact);

    let whole = [first.as_slice(), &last].concat();
    bucket
        .put("app.sha256", hex(&sha256(&whole)).as_bytes(), false, None)
        .await;
    let mut artifact = fetcher
        .fetch(&running("1.2.0"))
        .await
        .unwrap()
        .expect("offered");
    assert_eq!(
        artifact.claimed_sha256(),
        Some(&sha256(&whole)),
        "from the sidecar"
    );
    assert_eq!(artifact.claimed_size(), Some(whole.len() as u64));
    assert_eq!(read_all(&mut artifact).await.len(), whole.len());
}

#[tokio::test]
async fn unchanged_object_after_settle_costs_a_304_and_no_download() {
    let server = Server::start();
    let bucket = server.bucket("unchanged").await;
    let etag = bucket.put("app", APP, true, Some("1.3.0")).await;
    let mut fetcher = server.fetcher(&bucket, "app", |_| {});

    // Not settled yet (say the download failed): offered again.
    let first = fetcher
        .fetch(&running("1.2.0"))
        .await
        .unwrap()
        .expect("offered");
    drop(first);
    let again = offered(&mut fetcher, &running("1.2.0")).await;
    assert_eq!(again.id(), Some(etag.as_str()));
    assert_eq!(fetcher.last_etag(), None);

    fetcher.settled(&etag, Settlement::Installed);
    assert_eq!(fetcher.last_etag(), Some(etag.as_str()));
    let mark = server.log_mark();
    assert!(fetcher.fetch(&running("1.3.0")).await.unwrap().is_none());
    assert!(fetcher.fetch(&running("1.3.0")).await.unwrap().is_none());

    if server.is_moto() {
        let head = format!("\"HEAD /{}/app HTTP/1.1\" 304", bucket.name);
        let requests = server.requests_since(mark, &head);
        assert_eq!(requests.len(), 2, "two polls, nothing else: {requests:#?}");
        assert!(
            requests.iter().all(|l| l.contains(&head)),
            "each poll one HEAD answered 304, no GET: {requests:#?}"
        );
    }
}

#[tokio::test]
async fn new_upload_after_settle_is_offered_again() {
    let server = Server::start();
    let bucket = server.bucket("new-upload").await;
    let old = bucket.put("app", APP, true, Some("1.3.0")).await;
    let mut fetcher = server.fetcher(&bucket, "app", |_| {});
    let artifact = fetcher.fetch(&running("1.2.0")).await.unwrap().unwrap();
    fetcher.settled(artifact.id().unwrap(), Settlement::Installed);
    assert!(fetcher.fetch(&running("1.3.0")).await.unwrap().is_none());

    let newer = b"#!/bin/sh\necho 'version 1.4.0'\n";
    let new = bucket.put("app", newer, true, Some("1.4.0")).await;
    assert_ne!(new, old);
    let mut artifact = fetcher
        .fetch(&running("1.3.0"))
        .await
        .unwrap()
        .expect("offered");
    assert_eq!(artifact.id(), Some(new.as_str()));
    assert_eq!(artifact.claimed_sha256(), Some(&sha256(newer)));
    assert_eq!(artifact.claimed_version(), Some(&Version::new(1, 4, 0)));
    assert_eq!(read_all(&mut artifact).await, newer);
}

#[tokio::test]
async fn rejected_candidate_is_offered_again_once_its_sidecar_changes() {
    let server = Server::start();
    let bucket = server.bucket("sidecar-fixed").await;
    // The uploader was interrupted after the binary: the sidecar is the previous release's.
    bucket.put("app", APP, false, Some("1.3.0")).await;
    bucket
        .put("app.sha256", hex(&sha256(b"old")).as_bytes(), false, None)
        .await;
    let mut fetcher = server.fetcher(&bucket, "app", |_| {});
    let artifact = fetcher.fetch(&running("1.2.0")).await.unwrap().unwrap();
    assert_eq!(artifact.claimed_sha256(), Some(&sha256(b"old")));
    fetcher.settled(artifact.id().unwrap(), Settlement::Rejected); // the core's hash mismatch
    assert!(fetcher.fetch(&running("1.2.0")).await.unwrap().is_none());

    bucket
        .put("app.sha256", hex(&sha256(APP)).as_bytes(), false, None)
        .await;
    let artifact = offered(&mut fetcher, &running("1.2.0")).await;
    assert_eq!(artifact.claimed_sha256(), Some(&sha256(APP)));
}

#[tokio::test]
async fn an_object_without_a_checksum_or_sidecar_is_offered_without_a_sha256() {
    let server = Server::start();
    let bucket = server.bucket("no-checksum").await;
    bucket.put("app", APP, false, Some("1.3.0")).await;

    let mut fetcher = server.fetcher(&bucket, "app", |_| {});
    let mut artifact = fetcher
        .fetch(&running("1.2.0"))
        .await
        .unwrap()
        .expect("offered");
    assert_eq!(artifact.claimed_sha256(), None);
    assert_eq!(artifact.signature(), None);
    assert_eq!(read_all(&mut artifact).await, APP);

    // A sidecar without an entry for the object: no SHA-256 either, and not an error.
    let lines = format!("{0}  other\n{0}  another\n", hex(&sha256(APP)));
    bucket
        .put("app.sha256", lines.as_bytes(), false, None)
        .await;
    let artifact = fetcher
        .fetch(&running("1.2.0"))
        .await
        .unwrap()
        .expect("offered");
    assert_eq!(artifact.claimed_sha256(), None);
}

// regression: a sidecar still holding the running binary's digest (the new object was uploaded
// first) made the new object invisible; only the core, which hashes the download, may decide.
#[tokio::test]
async fn a_sidecar_with_the_running_digest_does_not_hide_a_new_object() {
    let server = Server::start();
    let bucket = server.bucket("stale-sidecar").await;
    let old = b"the running binary";
    bucket.put("app", APP, false, Some("1.3.0")).await;
    bucket
        .put("app.sha256", hex(&sha256(old)).as_bytes(), false, None)
        .await;
    let mut fetcher = server.fetcher(&bucket, "app", |_| {});
    let running = Running::new(sha256(old), Some(Version::new(1, 2, 0)));
    let mut artifact = fetcher.fetch(&running).await.unwrap().expect("offered");
    assert_eq!(artifact.claimed_sha256(), Some(&sha256(old)));
    assert_eq!(read_all(&mut artifact).await, APP);
}

#[tokio::test]
async fn a_sidecar_that_appears_after_not_ready_offers_the_object_again() {
    let server = Server::start();
    let bucket = server.bucket("sidecar-late").await;
    let etag = bucket.put("app", APP, false, Some("1.3.0")).await;
    let mut fetcher = server.fetcher(&bucket, "app", |_| {});
    let artifact = fetcher.fetch(&running("1.2.0")).await.unwrap().unwrap();
    assert_eq!(artifact.claimed_sha256(), None);
    // The core requires a checksum: not ready yet.
    fetcher.settled(artifact.id().unwrap(), Settlement::NotReady);
    assert_eq!(fetcher.last_etag(), Some(etag.as_str()));
    assert!(fetcher.fetch(&running("1.2.0")).await.unwrap().is_none());

    bucket
        .put("app.sha256", hex(&sha256(APP)).as_bytes(), false, None)
        .await;
    let artifact = offered(&mut fetcher, &running("1.2.0")).await;
    assert_eq!(artifact.claimed_sha256(), Some(&sha256(APP)));
    fetcher.settled(artifact.id().unwrap(), Settlement::NotReady);

    // Then the signature arrives: offered again, with it.
    bucket
        .put("app.minisig", b"untrusted comment: late\n", false, None)
        .await;
    let artifact = offered(&mut fetcher, &running("1.2.0")).await;
    assert_eq!(
        artifact.signature(),
        Some(&b"untrusted comment: late\n"[..])
    );
    fetcher.settled(artifact.id().unwrap(), Settlement::Installed);
    assert!(fetcher.fetch(&running("1.3.0")).await.unwrap().is_none());
}

#[tokio::test]
async fn a_missing_key_is_not_published_and_a_missing_bucket_refused() {
    let server = Server::start();
    let bucket = server.bucket("missing").await;
    let mut fetcher = server.fetcher(&bucket, "nothing/here", |_| {});
    let err = fetcher.fetch(&running("1.2.0")).await.unwrap_err();
    assert!(err.is_not_published(), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "s3://{}/nothing/here: not published yet: no such key",
            bucket.name
        )
    );

    let mut config = server.config(format!("{}-absent", bucket.name), "app");
    config.max_attempts = 1;
    let mut fetcher = S3Fetcher::with_sdk_config(config, &server.sdk()).unwrap();
    let err = fetcher.fetch(&running("1.2.0")).await.unwrap_err();
    assert!(matches!(err, FetchError::Refused { .. }), "{err:?}");
    assert!(
        err.to_string().ends_with("refused: no such bucket"),
        "{err}"
    );
}

/// moto: a bucket policy denying GetObject (moto enforces it for GET, not HEAD). Another
/// server: wrong credentials (an admin key bypasses bucket policies on MinIO).
#[tokio::test]
async fn access_denied_is_refused() {
    let server = Server::start();
    let bucket = server.bucket("denied").await;
    bucket.put("app", APP, true, Some("1.3.0")).await;
    let mut fetcher = if server.is_moto() {
        bucket.deny_get("app").await;
        server.fetcher(&bucket, "app", |_| {})
    } else {
        let config = server.config(&bucket.name, "app");
        S3Fetcher::with_sdk_config(config, &server.sdk_with("handover-wrong", "wrong")).unwrap()
    };
    let err = fetcher.fetch(&running("1.2.0")).await.unwrap_err();
    assert!(matches!(err, FetchError::Refused { .. }), "{err:?}");
    let origin = format!("s3://{}/app: refused: access denied", bucket.name);
    assert!(err.to_string().starts_with(&origin), "{err}");
}

#[tokio::test]
async fn closed_port_is_unreachable_within_the_timeout() {
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let mut fetcher = offline_fetcher(&endpoint, Duration::from_secs(2));
    let started = Instant::now();
    let err = fetcher.fetch(&running("1.2.0")).await.unwrap_err();
    assert!(matches!(err, FetchError::Unreachable { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn silent_server_hits_the_operation_timeout() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let mut fetcher = offline_fetcher(&endpoint, Duration::from_secs(1));
    let started = Instant::now();
    let err = fetcher.fetch(&running("1.2.0")).await.unwrap_err();
    let elapsed = started.elapsed();
    silent.abort();
    assert!(matches!(err, FetchError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert!(elapsed >= Duration::from_millis(900), "{elapsed:?}");
}

#[tokio::test]
async fn the_running_version_is_not_offered_an_older_one_is() {
    let server = Server::start();
    let bucket = server.bucket("older").await;
    let etag = bucket.put("app", APP, true, Some("1.9.0")).await;

    let mut fetcher = server.fetcher(&bucket, "app", |_| {});
    assert!(fetcher.fetch(&running("1.9.0")).await.unwrap().is_none());
    assert_eq!(
        fetcher.last_etag(),
        Some(etag.as_str()),
        "remembered: nothing to offer"
    );

    // Another binary runs since (a manual deploy, a rollback): the object is looked at again.
    let rolled_back = Running::new([1; 32], Some(Version::new(1, 0, 0)));
    assert!(fetcher.fetch(&rolled_back).await.unwrap().is_some());

    // Older than the running version: offered anyway (and the legacy key ignored); the core
    // refuses the downgrade and settles it rejected, after which it is not downloaded again.
    let mut older = server.fetcher(&bucket, "app", |c| c.allow_downgrade = Some(false));
    let artifact = older
        .fetch(&running("2.0.0"))
        .await
        .unwrap()
        .expect("offered");
    assert_eq!(artifact.claimed_version(), Some(&Version::new(1, 9, 0)));
    older.settled(artifact.id().unwrap(), Settlement::Rejected);
    assert!(older.fetch(&running("2.0.0")).await.unwrap().is_none());

    let unknown = Running::new([0; 32], None);
    assert!(server
        .fetcher(&bucket, "app", |_| {})
        .fetch(&unknown)
        .await
        .unwrap()
        .is_some());
}

#[tokio::test]
async fn the_running_binary_is_not_offered_and_legacy_limits_are_not_applied() {
    let server = Server::start();
    let bucket = server.bucket("limits").await;
    bucket.put("app", APP, true, Some("1.3.0")).await;

    // The store's own checksum says it is the running binary.
    let mut fetcher = server.fetcher(&bucket, "app", |_| {});
    let same_bytes = Running::new(sha256(APP), Some(Version::new(1, 2, 0)));
    assert!(fetcher.fetch(&same_bytes).await.unwrap().is_none());

    let mut legacy = server.fetcher(&bucket, "app", |c| {
        c.max_size = Some(16);
        c.checksum_required = Some(true);
    });
    assert_eq!(legacy.config().legacy_policy().max_size, Some(16));
    let artifact = legacy
        .fetch(&running("1.2.0"))
        .await
        .unwrap()
        .expect("the core applies max_size, not the fetcher");
    assert_eq!(artifact.claimed_size(), Some(APP.len() as u64));
}

#[tokio::test]
async fn malformed_version_metadata_is_invalid() {
    let server = Server::start();
    let bucket = server.bucket("bad-version").await;
    bucket.put("app", APP, true, Some("tuesday")).await;
    let mut fetcher = server.fetcher(&bucket, "app", |_| {});
    let err = fetcher.fetch(&running("1.2.0")).await.unwrap_err();
    assert!(err.to_string().contains("not a semver version"), "{err}");
}

// regression: plain http:// endpoints were accepted on any host (issue 13).
#[test]
fn plain_http_is_refused_except_to_loopback_when_allowed() {
    let sdk = sdk_config("test", "test", "us-east-1");
    let build = |url: &str, allow: bool| {
        let config = S3Config::new("releases", "app")
            .with_endpoint_url(url)
            .allow_insecure_loopback(allow);
        S3Fetcher::with_sdk_config(config, &sdk).map_err(|e| e.to_string())
    };
    let err = build("http://192.0.2.7:9000", true).unwrap_err();
    assert!(
        err.contains(
            "\"http://192.0.2.7:9000\" is plain http to 192.0.2.7, which is not a loopback host"
        ),
        "{err}"
    );
    let err = build("http://127.0.0.1:9000", false).unwrap_err();
    assert!(err.contains("set allow_insecure_loopback = true"), "{err}");
    build("http://127.0.0.1:9000", true).unwrap();
    build("https://192.0.2.7:9000", false).unwrap();

    // The same rule for an endpoint the SDK configuration brings (set in code here; from
    // AWS_ENDPOINT_URL or a profile for `S3Fetcher::new`).
    let with_endpoint = |url: &str| sdk.to_builder().endpoint_url(url).build();
    let from_sdk = |sdk: &handover_fetcher_s3::aws_config::SdkConfig, allow: bool| {
        let config = S3Config::new("releases", "app").allow_insecure_loopback(allow);
        S3Fetcher::with_sdk_config(config, sdk).map_err(|e| e.to_string())
    };
    let err = from_sdk(&with_endpoint("http://192.0.2.7:9000"), true).unwrap_err();
    assert!(err.contains("(from the AWS configuration)"), "{err}");
    assert!(err.contains("not a loopback host"), "{err}");
    from_sdk(&with_endpoint("http://[::1]:9000"), false).unwrap_err();
    from_sdk(&with_endpoint("http://[::1]:9000"), true).unwrap();
    from_sdk(&with_endpoint("https://192.0.2.7"), false).unwrap();
}

/// A fetcher for a server that will not answer; no S3 server needed.
fn offline_fetcher(endpoint: &str, operation_timeout: Duration) -> S3Fetcher {
    let config = S3Config::new("releases", "app")
        .with_endpoint_url(endpoint)
        .allow_insecure_loopback(true)
        .with_timeouts(Duration::from_millis(500), operation_timeout);
    S3Fetcher::with_sdk_config(config, &sdk_config("test", "test", "us-east-1")).unwrap()
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}
