//! A fake GitHub for the GitHub fetcher's row: the REST endpoints it polls, shaped like
//! GitHub's (release and asset objects with their fields, `ETag` and `If-None-Match` → 304,
//! `Accept: application/octet-stream` on an asset → 302 to a storage path), on 127.0.0.1 in
//! this process. One repository, `acme/app`, with one release that [`FakeGithub::publish`]
//! replaces.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::Context;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

/// The asset the fetcher is configured to take.
pub(crate) const ASSET: &str = "hello-bench";
const API: &str = "/api";
const REPO: &str = "/api/repos/acme/app";

struct Release {
    id: u64,
    tag: String,
    bytes: Bytes,
    sha256: String,
}

/// The server; stopped when dropped.
pub(crate) struct FakeGithub {
    addr: SocketAddr,
    release: Arc<Mutex<Release>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FakeGithub {
    pub(crate) fn start(tag: &str, bytes: Vec<u8>) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let release = Arc::new(Mutex::new(Release {
            id: 1,
            tag: tag.into(),
            sha256: hex::encode(Sha256::digest(&bytes)),
            bytes: bytes.into(),
        }));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let shared = release.clone();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                tokio::pin!(stopped);
                loop {
                    let stream = tokio::select! {
                        _ = &mut stopped => break,
                        accepted = listener.accept() => match accepted {
                            Ok((stream, _)) => stream,
                            Err(_) => continue,
                        },
                    };
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |request| {
                            let answer = answer(&request, addr, &shared.lock().unwrap());
                            async move { Ok::<_, std::convert::Infallible>(answer) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        Ok(Self {
            addr,
            release,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The API root for `[github] base_url`.
    pub(crate) fn base_url(&self) -> String {
        format!("http://{}{API}", self.addr)
    }

    /// Replaces the latest release with `tag` and one asset, `bytes`, digest included.
    pub(crate) fn publish(&self, tag: &str, bytes: Vec<u8>) {
        let mut release = self.release.lock().unwrap();
        release.id += 1;
        release.tag = tag.into();
        release.sha256 = hex::encode(Sha256::digest(&bytes));
        release.bytes = bytes.into();
    }
}

impl Drop for FakeGithub {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer(
    request: &Request<Incoming>,
    addr: SocketAddr,
    release: &Release,
) -> Response<Full<Bytes>> {
    let base = format!("http://{addr}{API}");
    let path = request.uri().path();
    let asset_id = release.id * 100 + 1;
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
    let body = if path == REPO {
        json!({
            "id": 1296269, "node_id": "MDEwOlJlcG9zaXRvcnkxMjk2MjY5", "name": "app",
            "full_name": "acme/app", "private": false, "owner": user(&base),
            "html_url": "https://github.com/acme/app", "url": format!("{base}/repos/acme/app"),
            "default_branch": "main"
        })
    } else if path == format!("{REPO}/releases/latest") {
        release_json(release, &base)
    } else if path == format!("{REPO}/releases") {
        Value::Array(vec![release_json(release, &base)])
    } else if path == format!("{REPO}/releases/assets/{asset_id}") {
        if header("accept") == Some("application/octet-stream") {
            let location = format!("http://{addr}/storage/{asset_id}/{ASSET}?X-Amz-Signature=0");
            return reply(StatusCode::FOUND, Bytes::new(), &[("location", location)]);
        }
        asset_json(release, &base)
    } else if path == format!("/storage/{asset_id}/{ASSET}") {
        let kind = ("content-type", "application/octet-stream".to_string());
        return reply(StatusCode::OK, release.bytes.clone(), &[kind]);
    } else {
        let body =
            json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest"});
        return reply(
            StatusCode::NOT_FOUND,
            body.to_string().into(),
            &[json_type()],
        );
    };
    let text = body.to_string();
    let etag = format!("W/\"{}\"", hex::encode(Sha256::digest(text.as_bytes())));
    let limits = [
        ("x-ratelimit-limit", "5000".to_string()),
        ("x-ratelimit-remaining", "4999".to_string()),
        ("x-ratelimit-used", "1".to_string()),
        ("x-ratelimit-resource", "core".to_string()),
    ];
    if header("if-none-match") == Some(etag.as_str()) {
        let mut headers = limits.to_vec();
        headers.push(("etag", etag));
        return reply(StatusCode::NOT_MODIFIED, Bytes::new(), &headers);
    }
    let mut headers = limits.to_vec();
    headers.extend([("etag", etag), json_type()]);
    reply(StatusCode::OK, text.into(), &headers)
}

fn json_type() -> (&'static str, String) {
    ("content-type", "application/json; charset=utf-8".into())
}

fn reply(status: StatusCode, body: Bytes, headers: &[(&str, String)]) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

/// A "simple user" as GitHub sends it.
fn user(base: &str) -> Value {
    let url = format!("{base}/users/octocat");
    json!({
        "login": "octocat", "id": 1, "node_id": "MDQ6VXNlcjE=",
        "avatar_url": "https://github.com/images/error/octocat_happy.gif", "gravatar_id": "",
        "url": url, "html_url": "https://github.com/octocat",
        "followers_url": format!("{url}/followers"),
        "following_url": format!("{url}/following{{/other_user}}"),
        "gists_url": format!("{url}/gists{{/gist_id}}"),
        "starred_url": format!("{url}/starred{{/owner}}{{/repo}}"),
        "subscriptions_url": format!("{url}/subscriptions"),
        "organizations_url": format!("{url}/orgs"), "repos_url": format!("{url}/repos"),
        "events_url": format!("{url}/events{{/privacy}}"),
        "received_events_url": format!("{url}/received_events"),
        "type": "User", "site_admin": false
    })
}

fn asset_json(release: &Release, base: &str) -> Value {
    let id = release.id * 100 + 1;
    json!({
        "url": format!("{base}/repos/acme/app/releases/assets/{id}"),
        "browser_download_url":
            format!("https://github.com/acme/app/releases/download/{}/{ASSET}", release.tag),
        "id": id, "node_id": format!("RA_{id}"), "name": ASSET, "label": "",
        "state": "uploaded", "content_type": "application/octet-stream",
        "size": release.bytes.len(), "digest": format!("sha256:{}", release.sha256),
        "download_count": 0, "created_at": "2026-03-01T10:00:00Z",
        "updated_at": "2026-03-01T10:00:05Z", "uploader": user(base)
    })
}

fn release_json(release: &Release, base: &str) -> Value {
    let url = format!("{base}/repos/acme/app/releases/{}", release.id);
    let tag = &release.tag;
    json!({
        "url": url, "html_url": format!("https://github.com/acme/app/releases/tag/{tag}"),
        "assets_url": format!("{url}/assets"),
        "upload_url": format!(
            "https://uploads.github.com/repos/acme/app/releases/{}/assets{{?name,label}}",
            release.id
        ),
        "tarball_url": format!("{base}/repos/acme/app/tarball/{tag}"),
        "zipball_url": format!("{base}/repos/acme/app/zipball/{tag}"),
        "id": release.id, "node_id": format!("RE_{}", release.id), "tag_name": tag,
        "target_commitish": "main", "name": format!("app {tag}"), "body": "",
        "draft": false, "prerelease": false, "created_at": "2026-03-01T09:59:00Z",
        "published_at": "2026-03-01T10:00:00Z", "author": user(base),
        "assets": [asset_json(release, base)]
    })
}
