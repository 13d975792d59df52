//! Choosing a release among GitHub's (octocrab's models of them).

use handover_fetcher::Version;
pub(crate) use octocrab::models::repos::{Asset, Release};

/// Whether an asset is complete: `uploaded`, not `open` (an upload in progress).
pub(crate) fn is_uploaded(asset: &Asset) -> bool {
    asset.state == "uploaded"
}

/// The semver version a tag names: `v1.2.3`, `V1.2.3` or `1.2.3`.
pub(crate) fn tag_version(tag: &str) -> Option<Version> {
    let tag = tag.trim();
    let bare = tag
        .strip_prefix('v')
        .or_else(|| tag.strip_prefix('V'))
        .unwrap_or(tag);
    Version::parse(bare).ok()
}

/// The candidate among `releases`: drafts skipped, prereleases (GitHub's flag or a semver
/// pre-release part) only when `prerelease`, tags that are not semver skipped; the highest
/// version wins.
pub(crate) fn pick(releases: Vec<Release>, prerelease: bool) -> Option<(Release, Version)> {
    releases
        .into_iter()
        .filter(|r| !r.draft)
        .filter(|r| prerelease || !r.prerelease)
        .filter_map(|r| match tag_version(&r.tag_name) {
            Some(v) => Some((r, v)),
            None => {
                tracing::debug!(tag = %r.tag_name, "skipping a release whose tag is not semver");
                None
            }
        })
        .filter(|(_, v)| prerelease || v.pre.is_empty())
        .max_by(|(_, a), (_, b)| a.cmp(b))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A release as the REST API returns it, with assets named `assets`.
    pub(crate) fn fixture(tag: &str, draft: bool, prerelease: bool, assets: &[&str]) -> Release {
        let user = serde_json::json!({
            "login": "octocat", "id": 1, "node_id": "MDQ6VXNlcjE=",
            "avatar_url": "https://github.com/images/error/octocat_happy.gif", "gravatar_id": "",
            "url": "https://api.github.com/users/octocat", "html_url": "https://github.com/octocat",
            "followers_url": "https://api.github.com/users/octocat/followers",
            "following_url": "https://api.github.com/users/octocat/following{/other_user}",
            "gists_url": "https://api.github.com/users/octocat/gists{/gist_id}",
            "starred_url": "https://api.github.com/users/octocat/starred{/owner}{/repo}",
            "subscriptions_url": "https://api.github.com/users/octocat/subscriptions",
            "organizations_url": "https://api.github.com/users/octocat/orgs",
            "repos_url": "https://api.github.com/users/octocat/repos",
            "events_url": "https://api.github.com/users/octocat/events{/privacy}",
            "received_events_url": "https://api.github.com/users/octocat/received_events",
            "type": "User", "user_view_type": "public", "site_admin": false
        });
        let api = "https://api.github.com/repos/a/b/releases";
        let assets: Vec<_> = assets
            .iter()
            .enumerate()
            .map(|(i, name)| {
                serde_json::json!({
                    "url": format!("{api}/assets/{i}"),
                    "browser_download_url": format!("https://github.com/a/b/releases/download/{tag}/{name}"),
                    "id": i, "node_id": "RA_kwDO", "name": name, "label": "", "state": "uploaded",
                    "content_type": "application/octet-stream", "size": 1, "digest": null,
                    "download_count": 0, "created_at": "2026-03-01T10:00:00Z",
                    "updated_at": "2026-03-01T10:00:05Z", "uploader": user
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "url": format!("{api}/7"), "html_url": format!("https://github.com/a/b/releases/tag/{tag}"),
            "assets_url": format!("{api}/7/assets"),
            "upload_url": "https://uploads.github.com/repos/a/b/releases/7/assets{?name,label}",
            "tarball_url": null, "zipball_url": null, "id": 7, "node_id": "RE_kwDO",
            "tag_name": tag, "target_commitish": "main", "name": tag, "body": "",
            "draft": draft, "prerelease": prerelease, "immutable": false,
            "created_at": "2026-03-01T09:59:00Z", "published_at": null, "author": user,
            "assets": assets
        }))
        .unwrap()
    }

    fn release(tag: &str, draft: bool, prerelease: bool) -> Release {
        fixture(tag, draft, prerelease, &[])
    }

    #[test]
    fn tags() {
        assert_eq!(tag_version("v1.2.3"), Some(Version::new(1, 2, 3)));
        assert_eq!(tag_version("1.2.3"), Some(Version::new(1, 2, 3)));
        assert_eq!(tag_version("V1.2.3"), Some(Version::new(1, 2, 3)));
        assert_eq!(tag_version("v1.2"), None);
        assert_eq!(tag_version("release-7"), None);
        assert!(tag_version("v2.0.0-rc.1").is_some());
    }

    #[test]
    fn picks_the_highest_semver_not_the_newest() {
        let all = vec![
            release("v1.10.0", false, false),
            release("v1.9.9", false, false),
            release("nightly", false, false),
            release("v2.0.0", true, false),
            release("v1.11.0-rc.1", false, true),
            release("v1.12.0-beta.1", false, false),
        ];
        let (r, v) = pick(all.clone(), false).unwrap();
        assert_eq!(
            (r.tag_name.as_str(), v),
            ("v1.10.0", Version::new(1, 10, 0))
        );
        let (r, _) = pick(all, true).unwrap();
        assert_eq!(r.tag_name, "v1.12.0-beta.1");
        assert!(pick(vec![release("v3.0.0", true, false)], true).is_none());
    }
}
