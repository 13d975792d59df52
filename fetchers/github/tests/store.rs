//! The GitHub fetcher as a rollout store: the manifest and its signature are assets of the
//! release it would offer, and one that is being replaced (`gh release upload --clobber`
//! deletes, then uploads) is waited for, never taken for a rollout that ended.

mod support;

use handover_fetcher::{FetchError, Store};
use handover_fetcher_github::GithubFetcher;
use support::{FakeGithub, FakeRelease, ASSET};

const MANIFEST: &str = "rollout.json";
const SIGNATURE: &str = "rollout.json.minisig";

fn release(assets: &[(&str, &[u8])]) -> FakeRelease {
    let mut release = FakeRelease::new(2, "v0.2.0").asset(ASSET, b"\x7fELF app".to_vec());
    for (name, bytes) in assets {
        release = release.asset(name, bytes.to_vec());
    }
    release
}

fn is_replacement(error: &FetchError) -> bool {
    matches!(error, FetchError::Unreachable { .. }) && error.to_string().contains("a replacement")
}

#[tokio::test]
async fn a_manifest_missing_from_a_release_that_had_it_is_waited_for_not_taken_as_ended() {
    let github =
        FakeGithub::start(vec![release(&[(SIGNATURE, b"sig 1"), (MANIFEST, b"one")])]).await;
    let mut host = GithubFetcher::new(github.config()).unwrap();
    assert_eq!(host.get(MANIFEST).await.unwrap().unwrap(), b"one");
    assert_eq!(host.get(SIGNATURE).await.unwrap().unwrap(), b"sig 1");

    // The publisher clobbers the signature, then the manifest: each is gone for a moment.
    github.set(|state| state.releases[0].assets.retain(|a| a.name != SIGNATURE));
    let err = host.get(SIGNATURE).await.unwrap_err();
    assert!(is_replacement(&err), "{err}");
    github.set(|state| state.releases[0].replace(SIGNATURE, b"sig 2".to_vec()));
    github.set(|state| state.releases[0].assets.retain(|a| a.name != MANIFEST));
    let err = host.get(MANIFEST).await.unwrap_err();
    assert!(is_replacement(&err), "{err}");
    assert!(
        err.to_string()
            .contains("github:acme/app@v0.2.0/rollout.json"),
        "{err}"
    );
    github.set(|state| state.releases[0].replace(MANIFEST, b"two".to_vec()));
    assert_eq!(host.get(MANIFEST).await.unwrap().unwrap(), b"two");
    assert_eq!(host.get(SIGNATURE).await.unwrap().unwrap(), b"sig 2");
}

#[tokio::test]
async fn a_host_that_never_saw_the_manifest_waits_while_only_its_signature_is_there() {
    // Mid-clobber of the manifest: its signature is there, the manifest is not.
    let github = FakeGithub::start(vec![release(&[(SIGNATURE, b"sig")])]).await;
    let mut host = GithubFetcher::new(github.config()).unwrap();
    let err = host.get(MANIFEST).await.unwrap_err();
    assert!(is_replacement(&err), "{err}");

    // Neither: the release is not staged. A manifest without a signature is read (and the
    // core judges an unsigned manifest).
    let github = FakeGithub::start(vec![release(&[])]).await;
    let mut host = GithubFetcher::new(github.config()).unwrap();
    assert_eq!(host.get(MANIFEST).await.unwrap(), None);
    let github = FakeGithub::start(vec![release(&[(MANIFEST, b"unsigned")])]).await;
    let mut host = GithubFetcher::new(github.config()).unwrap();
    assert_eq!(host.get(MANIFEST).await.unwrap().unwrap(), b"unsigned");
    assert_eq!(host.get(SIGNATURE).await.unwrap(), None);
}
