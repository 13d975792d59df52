//! `GithubFetcher` against a fake GitHub (API and asset storage on two 127.0.0.1 ports).

mod support;

use std::time::Duration;

use handover_fetcher::{
    ArchiveFormat, Artifact, FetchError, Fetcher, Running, Settlement, Version,
};
use handover_fetcher_github::{Channel, GithubFetcher};
use support::{dead_port, hex, now, sha256, FakeGithub, FakeRelease, ASSET};
use tokio::io::AsyncReadExt;

fn binary(version: &str) -> Vec<u8> {
    format!("\x7fELF app {version}").into_bytes()
}

fn running(version: &str) -> Running {
    Running::new([0; 32], Some(Version::parse(version).unwrap()))
}

async fn body(artifact: &mut Artifact) -> Vec<u8> {
    let mut out = Vec::new();
    artifact.reader().read_to_end(&mut out).await.unwrap();
    out
}

/// Not a real archive: the fetcher hands the bytes over as they are, the core unpacks.
const ARCHIVE: &[u8] = b"\x1f\x8b pretend tar.gz holding app-1.3.0/app";

/// v1.3.0 with the raw binary (digest shown) and nothing else.
fn v130() -> FakeRelease {
    FakeRelease::new(13, "v1.3.0").asset(ASSET, binary("1.3.0"))
}

/// A fetcher built from `config` offers a candidate to `running`.
async fn fetch_with(config: handover_fetcher_github::GithubConfig, running: &Running) -> Artifact {
    GithubFetcher::new(config)
        .unwrap()
        .fetch(running)
        .await
        .unwrap()
        .expect("a candidate")
}

async fn fetch(github: &FakeGithub, running: &Running) -> Result<Option<Artifact>, FetchError> {
    GithubFetcher::new(github.config())
        .unwrap()
        .fetch(running)
        .await
}

#[tokio::test]
async fn new_release_is_offered_with_version_size_and_digest() {
    let github = FakeGithub::start(vec![v130(), FakeRelease::new(12, "v1.2.0")]).await;
    let mut artifact = fetch(&github, &running("1.2.0")).await.unwrap().unwrap();
    let expected = binary("1.3.0");
    assert_eq!(artifact.claimed_version(), Some(&Version::new(1, 3, 0)));
    assert_eq!(artifact.claimed_size(), Some(expected.len() as u64));
    assert_eq!(artifact.claimed_sha256(), Some(&sha256(&expected)));
    assert_eq!(artifact.origin(), format!("github:acme/app@v1.3.0/{ASSET}"));
    assert!(artifact.id().is_some());
    assert!(artifact.signature().is_none());
    assert_eq!(body(&mut artifact).await, expected);

    let polls = github.api_requests("/repos/acme/app/releases/latest");
    assert_eq!(polls.len(), 1);
    assert_eq!(
        polls[0].header("accept"),
        Some("application/vnd.github+json")
    );
    assert_eq!(polls[0].header("x-github-api-version"), Some("2022-11-28"));
    assert!(polls[0]
        .header("user-agent")
        .unwrap()
        .starts_with("handover/"));
}

#[tokio::test]
async fn unknown_running_version_gets_the_latest() {
    let github = FakeGithub::start(vec![v130()]).await;
    let unknown = Running::new([0; 32], None);
    let artifact = fetch(&github, &unknown).await.unwrap().unwrap();
    assert_eq!(artifact.claimed_version(), Some(&Version::new(1, 3, 0)));

    // The same bytes as the running binary are nothing new, whatever the version.
    let same = Running::new(sha256(&binary("1.3.0")), None);
    assert!(fetch(&github, &same).await.unwrap().is_none());
}

#[tokio::test]
async fn checksum_from_sha256sums_when_digest_absent() {
    let expected = binary("1.3.0");
    let sums = format!(
        "{}  app-aarch64-apple-darwin\n{}  {ASSET}\n",
        "1".repeat(64),
        hex(&sha256(&expected))
    );
    let release = FakeRelease::new(13, "v1.3.0")
        .asset_without_digest(ASSET, expected.clone())
        .asset_without_digest("SHA256SUMS", sums);
    let github = FakeGithub::start(vec![release]).await;
    let mut artifact = fetch(&github, &running("1.2.0")).await.unwrap().unwrap();
    assert_eq!(artifact.claimed_sha256(), Some(&sha256(&expected)));
    assert_eq!(body(&mut artifact).await, expected);
}

#[tokio::test]
async fn per_asset_sha256_file_is_used_too() {
    let expected = binary("1.3.0");
    let release = FakeRelease::new(13, "v1.3.0")
        .asset_without_digest(ASSET, expected.clone())
        .asset_without_digest(&format!("{ASSET}.sha256"), hex(&sha256(&expected)));
    let github = FakeGithub::start(vec![release]).await;
    let artifact = fetch(&github, &running("1.2.0")).await.unwrap().unwrap();
    assert_eq!(artifact.claimed_sha256(), Some(&sha256(&expected)));
}

#[tokio::test]
async fn unchanged_release_list_costs_a_304_once_settled() {
    let github = FakeGithub::start(vec![v130()]).await;
    let mut fetcher = GithubFetcher::new(github.config()).unwrap();
    let artifact = fetcher.fetch(&running("1.2.0")).await.unwrap().unwrap();
    let downloads = github.storage.requests().len();
    // Not settled yet (a transient failure would be retried): the next poll is unconditional.
    drop(artifact);
    let artifact = fetcher.fetch(&running("1.2.0")).await.unwrap().unwrap();
    fetcher.settled(artifact.id().unwrap(), Settlement::Rejected);

    assert!(fetcher.fetch(&running("1.2.0")).await.unwrap().is_none());
    let polls = github.api_requests("/repos/acme/app/releases/latest");
    assert_eq!(polls.len(), 3);
    assert!(polls[1].header("if-none-match").is_none());
    assert!(polls[2]
        .header("if-none-match")
        .unwrap()
        .starts_with("W/\""));
    assert_eq!(
        github.storage.requests().len(),
        downloads * 2,
        "nothing downloaded on a 304"
    );
}

#[tokio::test]
async fn a_release_that_is_not_newer_is_remembered_until_the_running_version_changes() {
    let github = FakeGithub::start(vec![v130()]).await;
    let mut fetcher = GithubFetcher::new(github.config()).unwrap();
    assert!(fetcher.fetch(&running("1.3.0")).await.unwrap().is_none());
    assert!(fetcher.fetch(&running("1.3.0")).await.unwrap().is_none());
    let polls = github.api_requests("/repos/acme/app/releases/latest");
    assert!(
        polls[1].header("if-none-match").is_some(),
        "second poll is conditional"
    );
    assert!(github.storage.requests().is_empty());

    // Rolled back to 1.2.0 by other means: the same release list now holds a candidate.
    let artifact = fetcher.fetch(&running("1.2.0")).await.unwrap().unwrap();
    assert_eq!(artifact.claimed_version(), Some(&Version::new(1, 3, 0)));
    let polls = github.api_requests("/repos/acme/app/releases/latest");
    assert!(polls[2].header("if-none-match").is_none());
}

#[tokio::test]
async fn prereleases_and_drafts_are_ignored() {
    let releases = vec![
        FakeRelease::new(20, "v2.0.0")
            .draft()
            .asset(ASSET, binary("2.0.0")),
        FakeRelease::new(15, "v1.5.0-rc.1")
            .prerelease()
            .asset(ASSET, binary("1.5.0-rc.1")),
        FakeRelease::new(14, "v1.4.0").asset(ASSET, binary("1.4.0")),
        v130(),
    ];
    let github = FakeGithub::start(releases).await;
    let offered = |channel, prerelease| {
        let config = github.config().with_channel(channel, prerelease);
        async move {
            let mut fetcher = GithubFetcher::new(config).unwrap();
            let artifact = fetcher.fetch(&running("1.2.0")).await.unwrap().unwrap();
            artifact.claimed_version().unwrap().to_string()
        }
    };
    assert_eq!(offered(Channel::Latest, false).await, "1.4.0");
    assert_eq!(offered(Channel::All, false).await, "1.4.0");
    assert_eq!(offered(Channel::All, true).await, "1.5.0-rc.1");
    assert_eq!(
        github
            .api_requests("/repos/acme/app/releases?per_page=100")
            .len(),
        2
    );
}

#[tokio::test]
async fn an_older_release_is_offered_for_the_core_to_refuse_and_an_equal_one_is_not() {
    let github = FakeGithub::start(vec![v130()]).await;
    assert!(fetch(&github, &running("1.3.0")).await.unwrap().is_none());

    // The legacy key is reported, not acted on: downgrades are the core's decision.
    let mut config = github.config();
    config.allow_downgrade = Some(false);
    assert_eq!(config.legacy_policy().allow_downgrade, Some(false));
    let mut fetcher = GithubFetcher::new(config).unwrap();
    let artifact = fetcher.fetch(&running("1.4.0")).await.unwrap().unwrap();
    assert_eq!(artifact.claimed_version(), Some(&Version::new(1, 3, 0)));
    // The core refuses the downgrade; the release list's ETag keeps it from coming back.
    fetcher.settled(artifact.id().unwrap(), Settlement::Rejected);
    let downloads = github.storage.requests().len();
    assert!(fetcher.fetch(&running("1.4.0")).await.unwrap().is_none());
    assert_eq!(github.storage.requests().len(), downloads);
}

#[tokio::test]
async fn all_releases_mode_offers_the_highest_semver_even_when_older() {
    let releases = vec![
        FakeRelease::new(13, "v1.3.0").asset(ASSET, binary("1.3.0")),
        FakeRelease::new(12, "v1.2.0").asset(ASSET, binary("1.2.0")),
    ];
    let github = FakeGithub::start(releases).await;
    let config = github.config().with_channel(Channel::All, false);
    let mut fetcher = GithubFetcher::new(config).unwrap();
    let artifact = fetcher.fetch(&running("2.0.0")).await.unwrap().unwrap();
    assert_eq!(artifact.claimed_version(), Some(&Version::new(1, 3, 0)));
}

#[tokio::test]
async fn missing_asset_is_not_published_and_names_the_tag_the_expected_name_and_the_assets() {
    let release = FakeRelease::new(13, "v1.3.0")
        .asset("app-aarch64-apple-darwin", binary("1.3.0"))
        .asset("SHA256SUMS", "");
    let github = FakeGithub::start(vec![release]).await;
    let err = fetch(&github, &running("1.2.0")).await.unwrap_err();
    assert!(err.is_not_published(), "{err}");
    let text = err.to_string();
    assert!(text.contains("v1.3.0"), "{text}");
    assert!(text.contains(&format!("\"{ASSET}\"")), "{text}");
    assert!(
        text.contains("app-aarch64-apple-darwin, SHA256SUMS"),
        "{text}"
    );
}

#[tokio::test]
async fn the_asset_uploaded_after_the_release_is_offered_then() {
    let github = FakeGithub::start(vec![FakeRelease::new(13, "v1.3.0")]).await;
    let mut fetcher = GithubFetcher::new(github.config()).unwrap();
    let err = fetcher.fetch(&running("1.2.0")).await.unwrap_err();
    assert!(err.is_not_published(), "{err}");
    github.set(|s| s.releases = vec![v130()]);
    let artifact = fetcher.fetch(&running("1.2.0")).await.unwrap();
    assert!(
        artifact.is_some(),
        "the release's JSON, and so its ETag, changed"
    );
}

#[tokio::test]
async fn an_asset_pattern_matching_several_assets_is_invalid() {
    let release = FakeRelease::new(13, "v1.3.0")
        .asset("app-1-linux", binary("1.3.0"))
        .asset("app-2-linux", binary("1.3.0"));
    let github = FakeGithub::start(vec![release]).await;
    let mut config = github.config();
    config.asset_pattern = Some("app-*-linux".into());
    let err = GithubFetcher::new(config)
        .unwrap()
        .fetch(&running("1.2.0"))
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Invalid { .. }), "{err}");
}

#[tokio::test]
async fn a_release_without_a_checksum_is_offered_without_a_sha256() {
    let release = FakeRelease::new(13, "v1.3.0").asset_without_digest(ASSET, binary("1.3.0"));
    let github = FakeGithub::start(vec![release]).await;
    let mut artifact = fetch(&github, &running("1.2.0")).await.unwrap().unwrap();
    assert_eq!(artifact.claimed_sha256(), None);
    assert_eq!(body(&mut artifact).await, binary("1.3.0"));

    // The legacy key changes nothing here.
    let mut config = github.config();
    config.checksum_required = Some(true);
    let artifact = fetch_with(config, &running("1.2.0")).await;
    assert_eq!(artifact.claimed_sha256(), None);
}

#[tokio::test]
async fn a_checksum_file_without_an_entry_means_no_sha256() {
    let release = FakeRelease::new(13, "v1.3.0")
        .asset_without_digest(ASSET, binary("1.3.0"))
        .asset_without_digest("SHA256SUMS", format!("{}  other-asset\n", "1".repeat(64)));
    let github = FakeGithub::start(vec![release]).await;
    let artifact = fetch(&github, &running("1.2.0")).await.unwrap().unwrap();
    assert_eq!(artifact.claimed_sha256(), None);
}

// regression guard: a checksum file still naming the running binary's digest (uploaded before
// the new binary was) must not hide the release; only GitHub's own digest of the asset may.
#[tokio::test]
async fn a_checksum_file_naming_the_running_digest_does_not_hide_the_release() {
    let stale = sha256(b"the running binary");
    let release = FakeRelease::new(13, "v1.3.0")
        .asset_without_digest(ASSET, binary("1.3.0"))
        .asset_without_digest("SHA256SUMS", format!("{}  {ASSET}\n", hex(&stale)));
    let github = FakeGithub::start(vec![release]).await;
    let running = Running::new(stale, None);
    let artifact = fetch(&github, &running).await.unwrap().expect("offered");
    assert_eq!(artifact.claimed_sha256(), Some(&stale));
}

#[tokio::test]
async fn signature_asset_is_attached() {
    let release = v130().asset(
        &format!("{ASSET}.minisig"),
        "untrusted comment: sig\nRW...\n",
    );
    let github = FakeGithub::start(vec![release]).await;
    let artifact = fetch(&github, &running("1.2.0")).await.unwrap().unwrap();
    assert!(artifact
        .signature()
        .unwrap()
        .starts_with(b"untrusted comment"));
}

#[tokio::test]
async fn a_signature_uploaded_after_a_not_ready_settlement_is_offered() {
    let github = FakeGithub::start(vec![v130()]).await;
    let mut fetcher = GithubFetcher::new(github.config()).unwrap();
    let unsigned = fetcher.fetch(&running("1.2.0")).await.unwrap().unwrap();
    assert!(unsigned.signature().is_none());
    fetcher.settled(unsigned.id().unwrap(), Settlement::NotReady);
    assert!(
        fetcher.fetch(&running("1.2.0")).await.unwrap().is_none(),
        "304"
    );

    github.set(|s| {
        s.releases = vec![v130().asset(&format!("{ASSET}.minisig"), "untrusted comment: sig\n")]
    });
    let signed = fetcher
        .fetch(&running("1.2.0"))
        .await
        .unwrap()
        .expect("offered again");
    assert!(signed.signature().is_some());
}

#[tokio::test]
async fn tar_gz_asset_is_offered_as_is_for_the_core_to_unpack() {
    let release = FakeRelease::new(13, "v1.3.0")
        .asset(&format!("{ASSET}.tar.gz"), ARCHIVE)
        .asset(
            &format!("{ASSET}.minisig"),
            "untrusted comment: of the binary\n",
        )
        .asset(
            &format!("{ASSET}.tar.gz.minisig"),
            "untrusted comment: of the archive\n",
        );
    let github = FakeGithub::start(vec![release]).await;
    let mut artifact = fetch(&github, &running("1.2.0")).await.unwrap().unwrap();
    assert_eq!(artifact.archive(), Some((ArchiveFormat::TarGz, "app")));
    assert_eq!(
        artifact.claimed_sha256(),
        Some(&sha256(ARCHIVE)),
        "the archive's digest"
    );
    assert_eq!(artifact.claimed_size(), Some(ARCHIVE.len() as u64));
    assert!(
        artifact
            .signature()
            .unwrap()
            .starts_with(b"untrusted comment: of the binary"),
        "the signature of the binary inside, which the core verifies after unpacking"
    );
    assert_eq!(body(&mut artifact).await, ARCHIVE);
}

#[tokio::test]
async fn archive_checksum_from_sha256sums_is_the_archives() {
    let sums = format!("{}  {ASSET}.zip\n", hex(&sha256(ARCHIVE)));
    let release = FakeRelease::new(13, "v1.3.0")
        .asset_without_digest(&format!("{ASSET}.zip"), ARCHIVE)
        .asset("SHA256SUMS", sums);
    let github = FakeGithub::start(vec![release]).await;
    let mut config = github.config();
    config.binary = "bin/{name}".into();
    let artifact = fetch_with(config, &running("1.2.0")).await;
    assert_eq!(artifact.archive(), Some((ArchiveFormat::Zip, "bin/app")));
    assert_eq!(artifact.claimed_sha256(), Some(&sha256(ARCHIVE)));
}

#[tokio::test]
async fn rate_limit_exhausted_then_reset() {
    let github = FakeGithub::start(vec![v130()]).await;
    let reset = now() + 2;
    github.set(|s| s.exhausted_until = Some(reset));
    let mut fetcher = GithubFetcher::new(github.config()).unwrap();

    let err = fetcher.fetch(&running("1.2.0")).await.unwrap_err();
    let wait = err.retry_after().unwrap_or_else(|| panic!("{err}"));
    assert!(
        wait >= Duration::from_secs(1) && wait <= Duration::from_secs(2),
        "{wait:?}"
    );

    // Until the reset, the fetcher does not even ask.
    let asked = github.api.requests().len();
    let err = fetcher.fetch(&running("1.2.0")).await.unwrap_err();
    assert!(matches!(err, FetchError::RateLimited { .. }), "{err}");
    assert_eq!(github.api.requests().len(), asked);

    tokio::time::sleep(wait + Duration::from_millis(200)).await;
    let artifact = fetcher.fetch(&running("1.2.0")).await.unwrap().unwrap();
    assert_eq!(artifact.claimed_version(), Some(&Version::new(1, 3, 0)));
}

#[tokio::test]
async fn secondary_rate_limit_honours_retry_after() {
    let github = FakeGithub::start(vec![v130()]).await;
    github.set(|s| s.secondary_retry_after = Some(90));
    let err = fetch(&github, &running("1.2.0")).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(90)), "{err}");
}

#[tokio::test]
async fn malformed_json_is_invalid() {
    let github = FakeGithub::start(vec![v130()]).await;
    github.set(|s| s.malformed = true);
    let err = fetch(&github, &running("1.2.0")).await.unwrap_err();
    assert!(matches!(err, FetchError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("malformed JSON"), "{err}");
}

#[tokio::test]
async fn no_release_yet_is_not_published() {
    let github = FakeGithub::start(vec![]).await;
    let err = fetch(&github, &running("1.2.0")).await.unwrap_err();
    assert!(err.is_not_published(), "{err}");

    let all = github.config().with_channel(Channel::All, true);
    let err = GithubFetcher::new(all)
        .unwrap()
        .fetch(&running("1.2.0"))
        .await
        .unwrap_err();
    assert!(err.is_not_published(), "{err}");
}

#[tokio::test]
async fn no_release_matching_the_policy_is_not_published() {
    let github = FakeGithub::start(vec![FakeRelease::new(15, "v1.5.0-rc.1")
        .prerelease()
        .asset(ASSET, binary("1.5.0-rc.1"))])
    .await;
    let all = github.config().with_channel(Channel::All, false);
    let mut fetcher = GithubFetcher::new(all).unwrap();
    let err = fetcher.fetch(&running("1.2.0")).await.unwrap_err();
    assert!(err.is_not_published(), "{err}");
    assert!(err.to_string().contains("prereleases skipped"), "{err}");
}

#[tokio::test]
async fn no_such_repository_is_refused_with_a_hint() {
    let github = FakeGithub::start(vec![]).await;
    github.set(|s| s.no_repo = true);
    let err = fetch(&github, &running("1.2.0")).await.unwrap_err();
    assert!(matches!(err, FetchError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("404"), "{err}");
    assert!(
        err.to_string().contains("private repository needs a token"),
        "{err}"
    );
}

#[tokio::test]
async fn server_down_is_unreachable() {
    let port = dead_port().await;
    let github = FakeGithub::start(vec![]).await;
    let config = github
        .config()
        .with_base_url(format!("http://127.0.0.1:{port}"));
    let err = GithubFetcher::new(config)
        .unwrap()
        .fetch(&running("1.2.0"))
        .await
        .unwrap_err();
    assert!(matches!(err, FetchError::Unreachable { .. }), "{err}");
}

#[tokio::test]
async fn token_goes_to_the_api_but_not_to_storage() {
    let release = v130().asset(&format!("{ASSET}.minisig"), "sig");
    let github = FakeGithub::start(vec![release]).await;
    let config = github.config().with_token("ghp_fixture_token");
    let mut fetcher = GithubFetcher::new(config).unwrap();
    assert!(
        !format!("{fetcher:?}").contains("ghp_fixture"),
        "{fetcher:?}"
    );

    let mut artifact = fetcher.fetch(&running("1.2.0")).await.unwrap().unwrap();
    assert_eq!(body(&mut artifact).await, binary("1.3.0"));

    let api = github.api.requests();
    assert_eq!(
        api.len(),
        3,
        "release, signature asset, binary asset: {api:#?}"
    );
    for request in &api {
        assert_eq!(
            request.header("authorization"),
            Some("Bearer ghp_fixture_token")
        );
    }
    let storage = github.storage.requests();
    assert_eq!(storage.len(), 2);
    assert!(storage.iter().all(|r| r.header("authorization").is_none()));

    // The fixture's storage does refuse a forwarded token, as GitHub's does.
    let url = github.storage.url(&storage[0].path);
    let status = reqwest::Client::new()
        .get(url)
        .bearer_auth("ghp_fixture_token")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 400);
}

#[test]
fn repo_is_validated_at_construction() {
    let err = GithubFetcher::new(handover_fetcher_github::GithubConfig::new("acme")).unwrap_err();
    assert!(
        err.to_string().contains("repo: must be owner/name"),
        "{err}"
    );
    let config = handover_fetcher_github::GithubConfig::new("acme/app")
        .with_base_url("http://github.example.com/api/v3");
    let err = GithubFetcher::new(config).unwrap_err();
    assert!(err.to_string().contains("not https"), "{err}");
}

// regression: octocrab spawns a worker task when it is built; configuration is loaded outside
// any runtime, so the fetcher must build there and run later inside one.
#[test]
fn built_outside_a_runtime_used_inside_one() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let github = runtime.block_on(FakeGithub::start(vec![v130()]));
    let mut fetcher = GithubFetcher::new(github.config()).unwrap();
    let artifact = runtime.block_on(fetcher.fetch(&running("1.2.0"))).unwrap();
    assert!(artifact.is_some());
}

#[tokio::test]
async fn api_requests_carry_each_header_once() {
    let github = FakeGithub::start(vec![v130()]).await;
    let config = github.config().with_token("ghp_fixture_token");
    let mut fetcher = GithubFetcher::new(config).unwrap();
    fetcher.fetch(&running("1.2.0")).await.unwrap().unwrap();
    let api = github.api.requests();
    assert_eq!(api.len(), 2, "release, then the asset: {api:#?}");
    for request in &api {
        let count = |name: &str| {
            request
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .count()
        };
        let names = [
            "user-agent",
            "authorization",
            "accept",
            "x-github-api-version",
        ];
        assert_eq!(names.map(count), [1; 4], "{request:#?}");
    }
}
