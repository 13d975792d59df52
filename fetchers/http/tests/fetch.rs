//! `HttpFetcher` against a fixture server on 127.0.0.1.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use handover_fetcher::{ArchiveFormat, Artifact, FetchError, Fetcher, Running, Settlement};
use handover_fetcher_http::net::{hex, sha256};
use handover_fetcher_http::{Error, HttpConfig, HttpFetcher};
use support::{dead_port, Reply, Request, Server};
use tokio::io::AsyncReadExt;

const BINARY: &[u8] = b"\x7fELF version 2 of the service binary";

fn sums(body: &[u8], name: &str) -> String {
    format!(
        "{}  other-file\n{}  {name}\n",
        "0".repeat(64),
        hex(&sha256(body))
    )
}

fn not_running() -> Running {
    Running::new([0; 32], None)
}

/// Serves `/app` (ETag `"v2"`, a Last-Modified date), `/SHA256SUMS` and `/app.minisig`.
fn release(request: &Request) -> Reply {
    match request.path.as_str() {
        "/app" if request.header("if-none-match") == Some("\"v2\"") => Reply::status(304),
        "/app" => Reply::ok(BINARY)
            .header("etag", "\"v2\"")
            .header("last-modified", "Tue, 03 Mar 2026 10:00:00 GMT"),
        "/SHA256SUMS" => Reply::ok(sums(BINARY, "app")),
        "/app.minisig" => Reply::ok("untrusted comment: signature\nRWQ...\n"),
        _ => Reply::status(404),
    }
}

fn config(server: &Server) -> HttpConfig {
    at(server, "/app")
}

/// The fixture configuration with the binary at `path`.
fn at(server: &Server, path: &str) -> HttpConfig {
    HttpConfig::new(server.url(path))
        .with_checksum_url(server.url("/SHA256SUMS"))
        .allow_insecure_loopback(true)
        .with_timeouts(Duration::from_secs(5), Duration::from_secs(10))
}

/// One fetch from a fresh fetcher built from `config`.
async fn fetch_once(config: HttpConfig) -> Result<Option<Artifact>, FetchError> {
    HttpFetcher::new(config)
        .expect("a valid configuration")
        .fetch(&not_running())
        .await
}

async fn body(artifact: &mut Artifact) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    artifact.reader().read_to_end(&mut out).await?;
    Ok(out)
}

#[tokio::test]
async fn new_file_is_offered_with_size_sha256_and_signature() {
    let server = Server::start(release).await;
    let config = config(&server)
        .with_signature_url(server.url("/app.minisig"))
        .with_token("s3cr3t-token");
    let mut fetcher = HttpFetcher::new(config).unwrap();
    assert!(!format!("{fetcher:?}").contains("s3cr3t"), "{fetcher:?}");

    let mut artifact = fetcher.fetch(&not_running()).await.unwrap().unwrap();
    assert_eq!(artifact.origin(), server.url("/app"));
    assert_eq!(artifact.claimed_size(), Some(BINARY.len() as u64));
    assert_eq!(artifact.claimed_sha256(), Some(&sha256(BINARY)));
    assert!(artifact
        .signature()
        .unwrap()
        .starts_with(b"untrusted comment"));
    assert!(artifact.id().unwrap().contains("\"v2\""));
    assert_eq!(body(&mut artifact).await.unwrap(), BINARY);

    // The token goes to every configured URL; the first poll is unconditional.
    for request in server.requests() {
        assert_eq!(request.header("authorization"), Some("Bearer s3cr3t-token"));
        assert!(request
            .header("user-agent")
            .unwrap()
            .starts_with("handover/"));
    }
    assert_eq!(server.requests_for("/app")[0].header("if-none-match"), None);
}

#[tokio::test]
async fn unchanged_file_costs_a_304_once_settled() {
    let server = Server::start(release).await;
    let mut fetcher = HttpFetcher::new(config(&server)).unwrap();
    let mut artifact = fetcher.fetch(&not_running()).await.unwrap().unwrap();
    body(&mut artifact).await.unwrap();
    fetcher.settled(artifact.id().unwrap(), Settlement::Installed);

    assert!(fetcher.fetch(&not_running()).await.unwrap().is_none());
    let polls = server.requests_for("/app");
    assert_eq!(polls.len(), 2);
    assert_eq!(polls[1].header("if-none-match"), Some("\"v2\""));
    assert_eq!(
        polls[1].header("if-modified-since"),
        Some("Tue, 03 Mar 2026 10:00:00 GMT")
    );
}

#[tokio::test]
async fn settling_another_id_changes_nothing() {
    let server = Server::start(release).await;
    let mut fetcher = HttpFetcher::new(config(&server)).unwrap();
    let artifact = fetcher.fetch(&not_running()).await.unwrap().unwrap();
    fetcher.settled("something else", Settlement::Rejected);
    drop(artifact);
    assert!(fetcher.fetch(&not_running()).await.unwrap().is_some());
    assert_eq!(server.requests_for("/app")[1].header("if-none-match"), None);
}

#[tokio::test]
async fn failed_downloads_offer_the_same_candidate_again() {
    let attempt = Arc::new(AtomicUsize::new(0));
    let counter = attempt.clone();
    let server = Server::start(move |request| {
        if request.path != "/app" {
            return release(request);
        }
        match counter.fetch_add(1, Ordering::SeqCst) {
            0 => Reply::status(500),
            // The whole length announced, a third of it sent, then the connection closes.
            1 => release(request).cut_after(BINARY.len() / 3),
            _ => release(request),
        }
    })
    .await;
    let mut fetcher = HttpFetcher::new(config(&server)).unwrap();

    let err = fetcher.fetch(&not_running()).await.unwrap_err();
    assert!(matches!(err, FetchError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("500"), "{err}");

    let mut cut = fetcher.fetch(&not_running()).await.unwrap().unwrap();
    assert!(
        body(&mut cut).await.is_err(),
        "a body cut short is an I/O error"
    );
    // The core does not settle transient failures.

    let mut again = fetcher.fetch(&not_running()).await.unwrap().unwrap();
    assert_eq!(again.id(), cut.id());
    assert_eq!(body(&mut again).await.unwrap(), BINARY);
    let polls = server.requests_for("/app");
    assert_eq!(polls.len(), 3);
    assert!(polls.iter().all(|r| r.header("if-none-match").is_none()));
}

// regression guard: a checksum file that still names the running binary's digest (the new
// binary was uploaded first) must not hide the new binary; only the core, having hashed the
// download, knows what it is.
#[tokio::test]
async fn published_checksum_of_the_running_binary_is_still_offered() {
    let server = Server::start(release).await;
    let mut fetcher = HttpFetcher::new(config(&server)).unwrap();
    let running = Running::new(sha256(BINARY), None);
    let mut artifact = fetcher.fetch(&running).await.unwrap().expect("offered");
    assert_eq!(artifact.claimed_sha256(), Some(&sha256(BINARY)));
    assert_eq!(body(&mut artifact).await.unwrap(), BINARY);
    // The core finds it identical to what runs and rejects it: a 304 from then on.
    fetcher.settled(artifact.id().unwrap(), Settlement::Rejected);
    assert!(fetcher.fetch(&running).await.unwrap().is_none());
}

#[tokio::test]
async fn not_ready_is_offered_again_on_the_next_poll() {
    let signed = Arc::new(AtomicUsize::new(0));
    let published = signed.clone();
    let server = Server::start(move |request| match request.path.as_str() {
        "/app.minisig" if published.load(Ordering::SeqCst) == 0 => Reply::status(404),
        _ => release(request),
    })
    .await;
    let config = config(&server).with_signature_url(server.url("/app.minisig"));
    let mut fetcher = HttpFetcher::new(config).unwrap();
    let artifact = fetcher.fetch(&not_running()).await.unwrap().unwrap();
    assert!(artifact.signature().is_none());
    // Unsigned, and the core wants a signature.
    fetcher.settled(artifact.id().unwrap(), Settlement::NotReady);
    let again = fetcher
        .fetch(&not_running())
        .await
        .unwrap()
        .expect("offered again");
    assert!(again.signature().is_none());
    fetcher.settled(again.id().unwrap(), Settlement::NotReady);

    signed.store(1, Ordering::SeqCst);
    let artifact = fetcher
        .fetch(&not_running())
        .await
        .unwrap()
        .expect("offered, signed");
    assert!(artifact.signature().is_some());
    let polls = server.requests_for("/app");
    assert!(polls.iter().all(|r| r.header("if-none-match").is_none()));
}

#[tokio::test]
async fn replaced_checksum_makes_the_poll_unconditional() {
    // regression guard: a binary replaced before its checksum file is rejected by the core;
    // once the checksum file catches up, the same ETag must not hide the binary behind a 304.
    let sums_version = Arc::new(AtomicUsize::new(0));
    let current = sums_version.clone();
    let server = Server::start(move |request| match request.path.as_str() {
        "/SHA256SUMS" if current.load(Ordering::SeqCst) == 0 => Reply::ok(sums(b"stale", "app")),
        _ => release(request),
    })
    .await;
    let mut fetcher = HttpFetcher::new(config(&server)).unwrap();
    let artifact = fetcher.fetch(&not_running()).await.unwrap().unwrap();
    assert_eq!(artifact.claimed_sha256(), Some(&sha256(b"stale")));
    fetcher.settled(artifact.id().unwrap(), Settlement::Rejected);
    assert!(
        fetcher.fetch(&not_running()).await.unwrap().is_none(),
        "304"
    );

    sums_version.store(1, Ordering::SeqCst);
    let artifact = fetcher.fetch(&not_running()).await.unwrap().unwrap();
    assert_eq!(artifact.claimed_sha256(), Some(&sha256(BINARY)));
    assert_eq!(server.requests_for("/app")[2].header("if-none-match"), None);
}

#[tokio::test]
async fn checksum_mismatch_is_left_to_the_core() {
    let server = Server::start(|request| match request.path.as_str() {
        "/SHA256SUMS" => Reply::ok(sums(b"something else", "app")),
        _ => release(request),
    })
    .await;
    let mut fetcher = HttpFetcher::new(config(&server)).unwrap();
    let artifact = fetcher.fetch(&not_running()).await.unwrap().unwrap();
    assert_eq!(artifact.claimed_sha256(), Some(&sha256(b"something else")));
}

#[tokio::test]
async fn a_missing_checksum_is_no_sha256_not_an_error() {
    let server = Server::start(|request| match request.path.as_str() {
        "/SHA256SUMS" => Reply::ok(sums(BINARY, "another-app")),
        "/missing/SHA256SUMS" => Reply::status(404),
        "/missing/app" => release(&Request {
            path: "/app".into(),
            ..request.clone()
        }),
        _ => release(request),
    })
    .await;

    // No checksum_url at all.
    let no_url = HttpConfig::new(server.url("/app")).allow_insecure_loopback(true);
    let artifact = fetch_once(no_url).await.unwrap().unwrap();
    assert_eq!(artifact.claimed_sha256(), None);

    // A checksum file without an entry for the download.
    let artifact = fetch_once(config(&server)).await.unwrap().unwrap();
    assert_eq!(artifact.claimed_sha256(), None);

    // A checksum URL that answers 404.
    let mut missing = at(&server, "/missing/app");
    missing.checksum_url = Some(server.url("/missing/SHA256SUMS"));
    let artifact = fetch_once(missing).await.unwrap().unwrap();
    assert_eq!(artifact.claimed_sha256(), None);
}

#[tokio::test]
async fn missing_signature_is_fine() {
    let server = Server::start(release).await;
    let config = config(&server).with_signature_url(server.url("/app.nosig"));
    let artifact = fetch_once(config).await.unwrap().unwrap();
    assert!(artifact.signature().is_none());
}

#[tokio::test]
async fn legacy_policy_is_reported_not_applied() {
    let server = Server::start(release).await;
    let config: HttpConfig = toml::from_str(&format!(
        "url = {:?}\nallow_insecure_loopback = true\nchecksum_required = true\nmax_size = \"10B\"",
        server.url("/app")
    ))
    .unwrap();
    let legacy = config.legacy_policy();
    assert_eq!(legacy.checksum_required, Some(true));
    assert_eq!(legacy.max_size, Some(10));
    // Neither the missing checksum nor the size is this fetcher's business.
    let artifact = fetch_once(config).await.unwrap().unwrap();
    assert_eq!(artifact.claimed_sha256(), None);
    assert_eq!(artifact.claimed_size(), Some(BINARY.len() as u64));
}

#[tokio::test]
async fn answers_map_to_errors() {
    let server = Server::start(|request| match request.path.as_str() {
        "/gone" => Reply::status(404),
        "/removed" => Reply::status(410),
        "/denied" => Reply::status(403),
        "/busy" => Reply::status(429).header("retry-after", "42"),
        _ => release(request),
    })
    .await;
    let fetch = |path: &str| {
        let mut config = at(&server, path);
        config.checksum_name = Some("app".into());
        fetch_once(config)
    };
    for path in ["/gone", "/removed"] {
        let err = fetch(path).await.unwrap_err();
        assert!(err.is_not_published(), "{path}: {err}");
    }
    let err = fetch("/denied").await.unwrap_err();
    assert!(matches!(err, FetchError::Refused { .. }), "{err}");
    let err = fetch("/busy").await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(42)), "{err}");
}

#[tokio::test]
async fn server_down_is_unreachable() {
    let port = dead_port().await;
    let config =
        HttpConfig::new(format!("http://127.0.0.1:{port}/app")).allow_insecure_loopback(true);
    let err = fetch_once(config).await.unwrap_err();
    assert!(matches!(err, FetchError::Unreachable { .. }), "{err}");
}

/// A server that accepts and then says nothing, or sends the headers and part of the body and
/// then nothing: the fetcher's timeout ends the wait with an error naming it.
#[tokio::test]
async fn a_silent_server_hits_the_timeout_before_or_during_the_body() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = [0u8; 4096];
            let n = stream.read(&mut request).await.unwrap_or(0);
            if String::from_utf8_lossy(&request[..n]).starts_with("GET /partial") {
                let head = "HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789";
                let _ = stream.write_all(head.as_bytes()).await;
            }
            held.push(stream);
        }
    });
    let config = |path: &str| {
        HttpConfig::new(format!("http://{addr}{path}"))
            .allow_insecure_loopback(true)
            .with_timeouts(Duration::from_secs(1), Duration::from_millis(500))
    };

    let err = fetch_once(config("/silent")).await.unwrap_err();
    assert!(matches!(err, FetchError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("timed out"), "{err}");

    let mut artifact = fetch_once(config("/partial"))
        .await
        .unwrap()
        .expect("the headers announce a file");
    let err = body(&mut artifact).await.unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");
}

#[tokio::test]
async fn plain_http_is_only_for_loopback() {
    let err =
        HttpFetcher::new(HttpConfig::new("http://example.com/app").allow_insecure_loopback(true))
            .unwrap_err();
    assert!(
        matches!(err, Error::InsecureScheme { field: "url", .. }),
        "{err}"
    );
    let err = HttpFetcher::new(HttpConfig::new("http://127.0.0.1:1/app")).unwrap_err();
    assert!(matches!(err, Error::InsecureScheme { .. }), "{err}");
    let err = HttpFetcher::new(
        HttpConfig::new("https://example.com/app")
            .with_checksum_url("http://example.com/SHA256SUMS")
            .allow_insecure_loopback(true),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InsecureScheme {
                field: "checksum_url",
                ..
            }
        ),
        "{err}"
    );
    assert!(HttpFetcher::new(
        HttpConfig::new("http://localhost:1/app").allow_insecure_loopback(true)
    )
    .is_ok());
}

#[tokio::test]
async fn redirects_to_plain_http_elsewhere_are_refused() {
    let server = Server::start(|request| match request.path.as_str() {
        "/moved" => Reply::status(302).header("location", "/app"),
        "/away" => Reply::status(302).header("location", "http://example.invalid/app"),
        _ => release(request),
    })
    .await;
    let at = |path: &str| {
        let mut config = at(&server, path);
        config.checksum_name = Some("app".into());
        config
    };
    let mut artifact = fetch_once(at("/moved")).await.unwrap().unwrap();
    assert_eq!(body(&mut artifact).await.unwrap(), BINARY);
    let err = fetch_once(at("/away")).await.unwrap_err();
    assert!(err.to_string().contains("not https"), "{err}");
}

mod archives {
    use super::*;

    /// Not a real archive: this fetcher hands the bytes over as they are.
    const ARCHIVE: &[u8] = b"\x1f\x8b pretend tar.gz holding app-2.0/app";

    fn archive_server(sums_for: String) -> impl Fn(&Request) -> Reply + Send + Sync + 'static {
        move |request| match request.path.as_str() {
            "/app.tar.gz" | "/download" => Reply::ok(ARCHIVE).header("etag", "\"a1\""),
            "/SHA256SUMS" => Reply::ok(sums_for.clone()),
            "/app.minisig" => Reply::ok("untrusted comment: signature of the binary\n"),
            _ => Reply::status(404),
        }
    }

    #[tokio::test]
    async fn archive_is_offered_as_is_for_the_core_to_unpack() {
        let server = Server::start(archive_server(sums(ARCHIVE, "app.tar.gz"))).await;
        let config = at(&server, "/app.tar.gz")
            .with_archive_member("app")
            .with_signature_url(server.url("/app.minisig"));
        let mut artifact = fetch_once(config).await.unwrap().unwrap();
        assert_eq!(artifact.archive(), Some((ArchiveFormat::TarGz, "app")));
        assert_eq!(
            artifact.claimed_sha256(),
            Some(&sha256(ARCHIVE)),
            "the archive's"
        );
        assert_eq!(artifact.claimed_size(), Some(ARCHIVE.len() as u64));
        assert!(artifact.signature().is_some());
        assert_eq!(body(&mut artifact).await.unwrap(), ARCHIVE);
    }

    #[tokio::test]
    async fn a_wrong_archive_checksum_is_left_to_the_core() {
        let server = Server::start(archive_server(sums(b"not it", "app.tar.gz"))).await;
        let config = at(&server, "/app.tar.gz").with_archive_member("app");
        let artifact = fetch_once(config).await.unwrap().unwrap();
        assert_eq!(artifact.claimed_sha256(), Some(&sha256(b"not it")));
    }

    #[tokio::test]
    async fn an_archive_not_known_by_name_is_sniffed_by_the_core() {
        let server = Server::start(archive_server(sums(ARCHIVE, "download"))).await;
        let config = at(&server, "/download").with_archive_member("bin/app");
        let artifact = fetch_once(config).await.unwrap().unwrap();
        assert_eq!(artifact.archive(), Some((ArchiveFormat::Sniff, "bin/app")));
        assert_eq!(artifact.claimed_sha256(), Some(&sha256(ARCHIVE)));
    }

    #[tokio::test]
    async fn a_raw_download_is_no_archive() {
        let server = Server::start(release).await;
        let artifact = fetch_once(config(&server)).await.unwrap().unwrap();
        assert_eq!(artifact.archive(), None);
    }

    #[test]
    fn archive_url_needs_a_member() {
        let err = HttpFetcher::new(HttpConfig::new("https://example.com/app.tar.gz")).unwrap_err();
        assert!(err.to_string().contains("archive_member"), "{err}");
    }
}
