//! A fake GitHub: the REST API on one 127.0.0.1 port, the asset storage on another.
//!
//! Responses follow GitHub's published REST API (v2022-11-28): release and asset objects with
//! their field names, `ETag` and `If-None-Match` → 304, the `x-ratelimit-*` headers, 403 with
//! `x-ratelimit-remaining: 0` once the limit is spent, and asset downloads that answer
//! `Accept: application/octet-stream` with a 302 to a storage host which, like GitHub's,
//! refuses any request carrying an `Authorization` header with a 400.

#![allow(dead_code, unreachable_pub, unused_imports)]

// The same small HTTP server the HTTP fetcher's tests use.
#[path = "../../../http/tests/support/mod.rs"]
mod server;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use handover_fetcher_github::GithubConfig;
use serde_json::{json, Value};
use sha2::Digest;

pub use server::{dead_port, Reply, Request, Server};

pub const TARGET: &str = "x86_64-unknown-linux-gnu";
pub const ASSET: &str = "app-x86_64-unknown-linux-gnu";

/// A release asset: its bytes, their SHA-256 (hex, computed once: some are hundreds of MB), and
/// whether GitHub shows it as the `digest`.
#[derive(Debug, Clone)]
pub struct FakeAsset {
    pub id: u64,
    pub name: String,
    pub bytes: Vec<u8>,
    pub sha256: String,
    pub digest: bool,
}

/// Asset ids handed out by [`FakeRelease::replace`]: never reused, as on GitHub.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1_000_000);

/// A release. Lists are newest first, as GitHub returns them.
#[derive(Debug, Clone)]
pub struct FakeRelease {
    pub id: u64,
    pub tag: String,
    pub draft: bool,
    pub prerelease: bool,
    pub assets: Vec<FakeAsset>,
}

impl FakeRelease {
    pub fn new(id: u64, tag: &str) -> Self {
        Self {
            id,
            tag: tag.into(),
            draft: false,
            prerelease: false,
            assets: Vec::new(),
        }
    }

    pub fn draft(mut self) -> Self {
        self.draft = true;
        self
    }

    pub fn prerelease(mut self) -> Self {
        self.prerelease = true;
        self
    }

    /// An asset with a `digest`.
    pub fn asset(self, name: &str, bytes: impl Into<Vec<u8>>) -> Self {
        self.add(name, bytes.into(), true)
    }

    /// An asset uploaded before GitHub computed digests (`"digest": null`).
    pub fn asset_without_digest(self, name: &str, bytes: impl Into<Vec<u8>>) -> Self {
        self.add(name, bytes.into(), false)
    }

    /// Replaces the asset `name` (or adds it), as a delete and an upload do on GitHub: the new
    /// asset has a new id.
    pub fn replace(&mut self, name: &str, bytes: impl Into<Vec<u8>>) {
        self.assets.retain(|a| a.name != name);
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let bytes = bytes.into();
        self.assets.push(FakeAsset {
            id,
            name: name.into(),
            sha256: hex(&sha256(&bytes)),
            bytes,
            digest: true,
        });
    }

    fn add(mut self, name: &str, bytes: Vec<u8>, digest: bool) -> Self {
        let id = self.id * 100 + self.assets.len() as u64 + 1;
        self.assets.push(FakeAsset {
            id,
            name: name.into(),
            sha256: hex(&sha256(&bytes)),
            bytes,
            digest,
        });
        self
    }
}

/// What the fake serves; tests change it between polls.
#[derive(Debug, Default)]
pub struct State {
    pub releases: Vec<FakeRelease>,
    /// Until then (seconds since the epoch), API requests get 403 with
    /// `x-ratelimit-remaining: 0`.
    pub exhausted_until: Option<u64>,
    /// Answer API requests with 403, a secondary-rate-limit message and this `retry-after`.
    pub secondary_retry_after: Option<u64>,
    /// Answer release requests with a truncated JSON body.
    pub malformed: bool,
    /// Answer 404 for the repository itself (a wrong name, or a token that cannot see it).
    pub no_repo: bool,
    pub used: u32,
}

/// The two servers and their shared state.
pub struct FakeGithub {
    pub api: Server,
    pub storage: Server,
    pub state: Arc<Mutex<State>>,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(bytes).into()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl FakeGithub {
    pub async fn start(releases: Vec<FakeRelease>) -> Self {
        let state = Arc::new(Mutex::new(State {
            releases,
            ..State::default()
        }));
        let files = state.clone();
        let storage = Server::start(move |request| storage(request, &files.lock().unwrap())).await;
        let storage_base = storage.url("");
        let shared = state.clone();
        let api = Server::start(move |request| {
            let base = format!("http://{}", request.header("host").unwrap_or("127.0.0.1"));
            api(request, &mut shared.lock().unwrap(), &base, &storage_base)
        })
        .await;
        Self {
            api,
            storage,
            state,
        }
    }

    /// `acme/app` on this fake, for the fixture target, with short timeouts.
    pub fn config(&self) -> GithubConfig {
        let mut config = GithubConfig::new("acme/app")
            .with_base_url(self.api.url(""))
            .with_target(TARGET);
        config.allow_insecure_loopback = true;
        config.connect_timeout = Duration::from_secs(5);
        config.timeout = Duration::from_secs(10);
        config
    }

    pub fn set(&self, change: impl FnOnce(&mut State)) {
        change(&mut self.state.lock().unwrap());
    }

    /// API requests for a path (query included).
    pub fn api_requests(&self, path: &str) -> Vec<Request> {
        self.api.requests_for(path)
    }
}

const REPO: &str = "/repos/acme/app";
const LATEST: &str = "/repos/acme/app/releases/latest";
const LIST: &str = "/repos/acme/app/releases?per_page=100";
const ASSETS: &str = "/repos/acme/app/releases/assets/";

fn api(request: &Request, state: &mut State, base: &str, storage: &str) -> Reply {
    let limit = if request.header("authorization").is_some() {
        5000
    } else {
        60
    };
    let reset = state.exhausted_until.unwrap_or(now() + 3600);
    let rate = |reply: Reply, remaining: u32, used: u32| {
        reply
            .header("x-ratelimit-limit", limit)
            .header("x-ratelimit-remaining", remaining)
            .header("x-ratelimit-reset", reset)
            .header("x-ratelimit-used", used)
            .header("x-ratelimit-resource", "core")
            .header("x-github-api-version-selected", "2022-11-28")
    };
    if state.exhausted_until.is_some_and(|until| now() < until) {
        let body = json!({
            "message": "API rate limit exceeded for 127.0.0.1. (But here's the good news: \
                        Authenticated requests get a higher rate limit. Check out the \
                        documentation for more details.)",
            "documentation_url": "https://docs.github.com/rest/overview/resources-in-the-rest-api#rate-limiting"
        });
        return rate(json_reply(403, &body), 0, limit);
    }
    if let Some(seconds) = state.secondary_retry_after {
        let body = json!({
            "message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
            "documentation_url": "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api#about-secondary-rate-limits"
        });
        return rate(json_reply(403, &body), 4000, 1000).header("retry-after", seconds);
    }

    let path = request.path.as_str();
    if state.no_repo {
        return json_reply(
            404,
            &json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest", "status": "404"}),
        );
    }
    let body = if path == REPO {
        json!({
            "id": 1296269, "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5", "name": "app",
            "full_name": "acme/app", "private": false, "owner": user(base),
            "html_url": "https://github.com/acme/app", "url": format!("{base}{REPO}"),
            "default_branch": "main"
        })
    } else if path == LATEST {
        match state.releases.iter().find(|r| !r.draft && !r.prerelease) {
            Some(release) => release_json(release, base),
            None => {
                let body = json!({
                    "message": "Not Found",
                    "documentation_url": "https://docs.github.com/rest/releases/releases#get-the-latest-release",
                    "status": "404"
                });
                return rate(json_reply(404, &body), limit - 1, 1);
            }
        }
    } else if path == LIST {
        Value::Array(
            state
                .releases
                .iter()
                .map(|r| release_json(r, base))
                .collect(),
        )
    } else if let Some(id) = path.strip_prefix(ASSETS) {
        let found = state
            .releases
            .iter()
            .flat_map(|r| r.assets.iter().map(move |a| (r, a)))
            .find(|(_, a)| a.id.to_string() == id);
        let Some((release, asset)) = found else {
            return json_reply(404, &json!({"message": "Not Found"}));
        };
        if request.header("accept") == Some("application/octet-stream") {
            let location = format!(
                "{storage}/github-production-release-asset-2e65be/{}/{}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=abc123",
                asset.id, asset.name
            );
            return rate(
                Reply::status(302).header("location", location),
                limit - 1,
                1,
            );
        }
        asset_json(release, asset, base)
    } else {
        return json_reply(
            404,
            &json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}),
        );
    };

    if state.malformed {
        return rate(
            Reply::ok(r#"{"url":"https://api.github.com/repos/acme/app/releases/1","id":1,"tag_name":"v1."#)
                .header("content-type", "application/json; charset=utf-8"),
            limit - 1,
            1,
        );
    }
    let text = body.to_string();
    let etag = format!("W/\"{}\"", hex(&sha256(text.as_bytes())));
    if request.header("if-none-match") == Some(etag.as_str()) {
        // A 304 does not count against the rate limit.
        let used = state.used;
        return rate(Reply::status(304).header("etag", etag), limit - used, used);
    }
    state.used += 1;
    let used = state.used;
    rate(
        json_reply(200, &body)
            .header("etag", etag)
            .header("cache-control", "private, max-age=60, s-maxage=60"),
        limit.saturating_sub(used),
        used,
    )
}

fn json_reply(status: u16, body: &Value) -> Reply {
    Reply::status(status)
        .body(body.to_string())
        .header("content-type", "application/json; charset=utf-8")
}

/// The storage host: serves asset bytes, refuses an `Authorization` header like GitHub's does.
fn storage(request: &Request, state: &State) -> Reply {
    if request.header("authorization").is_some() {
        return Reply::status(400)
            .header("content-type", "application/xml")
            .body(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InvalidArgument</Code>\
                 <Message>Only one auth mechanism allowed; only the X-Amz-Algorithm query \
                 parameter, Signature query string parameter or the Authorization header should \
                 be specified</Message><ArgumentName>Authorization</ArgumentName></Error>",
            );
    }
    let path = request.path.split('?').next().unwrap_or_default();
    let mut parts = path.rsplit('/');
    let (name, id) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    state
        .releases
        .iter()
        .flat_map(|r| r.assets.iter())
        .find(|a| a.id.to_string() == id && a.name == name)
        .map_or_else(
            || Reply::status(404),
            |a| {
                Reply::ok(a.bytes.clone())
                    .header("content-type", "application/octet-stream")
                    .header("etag", format!("\"0x{}\"", &a.sha256[..16]))
            },
        )
}

/// A "simple user" object, with every field GitHub sends.
fn user(base: &str) -> Value {
    let url = format!("{base}/users/octocat");
    json!({
        "login": "octocat",
        "id": 1,
        "node_id": "MDQ6VXNlcjE=",
        "avatar_url": "https://github.com/images/error/octocat_happy.gif",
        "gravatar_id": "",
        "url": url,
        "html_url": "https://github.com/octocat",
        "followers_url": format!("{url}/followers"),
        "following_url": format!("{url}/following{{/other_user}}"),
        "gists_url": format!("{url}/gists{{/gist_id}}"),
        "starred_url": format!("{url}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{url}/subscriptions"),
        "organizations_url": format!("{url}/orgs"),
        "repos_url": format!("{url}/repos"),
        "events_url": format!("{url}/events{{/privacy}}"),
        "received_events_url": format!("{url}/received_events"),
        "type": "User",
        "user_view_type": "public",
        "site_admin": false
    })
}

fn asset_json(release: &FakeRelease, asset: &FakeAsset, base: &str) -> Value {
    let content_type = if asset.name.ends_with(".tar.gz") {
        "application/gzip"
    } else if asset.name.ends_with(".zip") {
        "application/zip"
    } else {
        "application/octet-stream"
    };
    json!({
        "url": format!("{base}/repos/acme/app/releases/assets/{}", asset.id),
        "browser_download_url": format!("https://github.com/acme/app/releases/download/{}/{}", release.tag, asset.name),
        "id": asset.id,
        "node_id": format!("RA_kwDOAAAB{}", asset.id),
        "name": asset.name,
        "label": "",
        "state": "uploaded",
        "content_type": content_type,
        "size": asset.bytes.len(),
        "digest": if asset.digest { Value::String(format!("sha256:{}", asset.sha256)) } else { Value::Null },
        "download_count": 42,
        "created_at": "2026-03-01T10:00:00Z",
        "updated_at": "2026-03-01T10:00:05Z",
        "uploader": user(base)
    })
}

fn release_json(release: &FakeRelease, base: &str) -> Value {
    let url = format!("{base}/repos/acme/app/releases/{}", release.id);
    json!({
        "url": url,
        "html_url": format!("https://github.com/acme/app/releases/tag/{}", release.tag),
        "assets_url": format!("{url}/assets"),
        "upload_url": format!("https://uploads.github.com/repos/acme/app/releases/{}/assets{{?name,label}}", release.id),
        "tarball_url": format!("{base}/repos/acme/app/tarball/{}", release.tag),
        "zipball_url": format!("{base}/repos/acme/app/zipball/{}", release.tag),
        "id": release.id,
        "node_id": format!("RE_kwDOAAAB{}", release.id),
        "tag_name": release.tag,
        "target_commitish": "main",
        "name": format!("app {}", release.tag),
        "body": "Release notes",
        "draft": release.draft,
        "prerelease": release.prerelease,
        "immutable": false,
        "created_at": "2026-03-01T09:59:00Z",
        "published_at": if release.draft { Value::Null } else { Value::String("2026-03-01T10:00:00Z".into()) },
        "author": user(base),
        "assets": release.assets.iter().map(|a| asset_json(release, a, base)).collect::<Vec<_>>()
    })
}
