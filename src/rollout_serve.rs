//! `handover rollout serve`: a directory over HTTP, in the protocol of the HTTP fetcher's
//! store (`handover_fetcher_http::HttpStore`): files by `GET` (with `ETag` and
//! `If-None-Match`), documents written whole by `PUT` (or `POST`), and a directory's listing as
//! JSON. It serves the releases and a staged rollout's manifest and reports from one place, for
//! fleets without S3.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use handover::fetcher::Store;
use handover_fetcher_file::DirStore;
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;

/// The largest document written: reports are small, a delta patch is not.
const MAX_DOCUMENT: usize = 1 << 20;
const MAX_PATCH: usize = 256 << 20;

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// The directory served: releases, `rollout.json`, `reports/`, `failures/`.
    #[arg(long)]
    dir: PathBuf,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8417")]
    listen: SocketAddr,
    /// A file holding the bearer token a `PUT` must carry (hosts send their `[http] token`).
    /// Without it, anyone who reaches the address may write reports; the manifest is
    /// protected by its signature either way.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

struct Served {
    dir: PathBuf,
    token: Option<String>,
}

type Body = BoxBody<Bytes, std::io::Error>;

pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<std::process::ExitCode> {
    let token = match &args.token_file {
        Some(file) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    anyhow::ensure!(
        args.dir.is_dir(),
        "{} is not a directory",
        args.dir.display()
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    eprintln!(
        "serving {} on http://{}/",
        args.dir.display(),
        listener.local_addr()?
    );
    let served = Arc::new(Served {
        dir: args.dir,
        token,
    });
    loop {
        let (stream, _) = listener.accept().await?;
        let served = served.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let served = served.clone();
                async move { Ok::<_, Infallible>(answer(&served, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn status(code: StatusCode, text: &str) -> Response<Body> {
    let mut response = Response::new(full(format!("{text}\n")));
    *response.status_mut() = code;
    response
}

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// The request's path as a relative name inside the directory, if it stays inside it.
fn name_of(path: &str) -> Option<String> {
    let name = path.strip_prefix('/')?;
    let plain = Path::new(name.trim_end_matches('/'))
        .components()
        .all(|c| matches!(c, Component::Normal(_)));
    (plain && !name.contains(['%', '\\'])).then(|| name.to_string())
}

async fn answer(served: &Served, request: Request<Incoming>) -> Response<Body> {
    let Some(name) = name_of(request.uri().path()) else {
        return status(StatusCode::BAD_REQUEST, "not a path inside the directory");
    };
    match *request.method() {
        Method::GET | Method::HEAD if name.is_empty() || name.ends_with('/') => {
            list(served, &name).await
        }
        Method::GET | Method::HEAD => file(served, &name, request).await,
        Method::PUT | Method::POST => write(served, &name, request).await,
        _ => status(StatusCode::METHOD_NOT_ALLOWED, "GET, HEAD, PUT or POST"),
    }
}

async fn list(served: &Served, prefix: &str) -> Response<Body> {
    let mut store = DirStore::new(&served.dir);
    match store.list(prefix).await {
        Ok(listed) => {
            let body = handover_fetcher_http::listing_json(
                listed.iter().map(|l| (l.name.as_str(), l.tag.as_str())),
            );
            let mut response = Response::new(full(body));
            response
                .headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            response
        }
        Err(e) => status(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn file(served: &Served, name: &str, request: Request<Incoming>) -> Response<Body> {
    let path = served.dir.join(name);
    let opened = match tokio::fs::File::open(&path).await {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return status(StatusCode::NOT_FOUND, "no such file")
        }
        Err(e) => return status(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    let meta = match opened.metadata().await {
        Ok(meta) if meta.is_file() => meta,
        Ok(_) => return status(StatusCode::NOT_FOUND, "not a file"),
        Err(e) => return status(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    };
    // The descriptor's own metadata: the ETag describes the bytes sent, even if the file is
    // replaced meanwhile (by a rename, as publishers do).
    let etag = format!(
        "\"{}:{}:{}.{}\"",
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec()
    );
    let matches = request
        .headers()
        .get("if-none-match")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut response = if matches {
        let mut response = Response::new(full(Bytes::new()));
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else if request.method() == Method::HEAD {
        Response::new(full(Bytes::new()))
    } else {
        let chunks = futures_util::stream::unfold(opened, |mut file| async move {
            let mut buf = vec![0; 256 << 10];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Frame::data(Bytes::from(buf))), file))
                }
                Err(e) => Some((Err(e), file)),
            }
        });
        Response::new(StreamBody::new(chunks).boxed())
    };
    let headers = response.headers_mut();
    headers.insert("etag", etag.parse().unwrap());
    if !matches {
        headers.insert("content-length", meta.size().into());
    }
    response
}

async fn write(served: &Served, name: &str, request: Request<Incoming>) -> Response<Body> {
    if let Some(token) = &served.token {
        let sent = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if sent != Some(token.as_str()) {
            return status(StatusCode::UNAUTHORIZED, "a bearer token is required");
        }
    }
    if name.is_empty() || name.ends_with('/') {
        return status(StatusCode::BAD_REQUEST, "a document needs a name");
    }
    let limit = if name.starts_with("patches/") {
        MAX_PATCH
    } else {
        MAX_DOCUMENT
    };
    let bytes = match Limited::new(request.into_body(), limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return status(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("at most {limit} bytes, or the body was cut"),
            )
        }
    };
    match DirStore::new(&served.dir).put(name, bytes.to_vec()).await {
        Ok(()) => {
            let mut response = Response::new(full(Bytes::new()));
            *response.status_mut() = StatusCode::NO_CONTENT;
            response
        }
        Err(e) => status(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}
