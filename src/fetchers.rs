//! Which fetcher the configuration names, built from its table (`[file]`, `[s3]`, `[github]`,
//! `[http]`, `[etcd]`). Backends are cargo features, so a user who only watches a file never compiles an
//! SDK; naming one that is not compiled in is an error that says which feature to enable.

#[cfg(feature = "github")]
use crate::config::tables::github_problem;
#[cfg(feature = "http")]
use crate::config::tables::http_problem;
#[cfg(any(feature = "s3", feature = "github", feature = "http", feature = "etcd"))]
use crate::config::tables::table;
use crate::config::Config;
use crate::error::{Error, Result};

/// Builds the fetcher the configuration names, or `None` when it names none.
pub async fn build_fetcher(config: &Config) -> Result<Option<Box<dyn handover_fetcher::Fetcher>>> {
    let Some(name) = config.fetcher.as_deref() else {
        return Ok(None);
    };
    match name {
        "file" => file(config),
        "s3" => s3(config).await,
        "github" => github(config),
        "http" => http(config),
        "etcd" => etcd(config),
        other => Err(Error::config(
            "fetcher",
            format!("unknown fetcher {other:?}"),
        )),
    }
}

#[cfg(feature = "s3")]
async fn s3(config: &Config) -> Result<Option<Box<dyn handover_fetcher::Fetcher>>> {
    let settings: handover_fetcher_s3::S3Config = table(&config.s3, "s3")?;
    let fetcher = handover_fetcher_s3::S3Fetcher::new(settings)
        .await
        .map_err(|e| match e {
            handover_fetcher_s3::Error::Config { field, message } => {
                Error::config(format!("s3.{field}"), message)
            }
            other => Error::config("s3", other.to_string()),
        })?;
    Ok(Some(Box::new(fetcher)))
}

#[cfg(not(feature = "s3"))]
async fn s3(_config: &Config) -> Result<Option<Box<dyn handover_fetcher::Fetcher>>> {
    Err(Error::FetcherNotCompiled {
        name: "s3".into(),
        feature: "s3",
    })
}

#[cfg(feature = "github")]
fn github(config: &Config) -> Result<Option<Box<dyn handover_fetcher::Fetcher>>> {
    let settings: handover_fetcher_github::GithubConfig = table(&config.github, "github")?;
    let fetcher = handover_fetcher_github::GithubFetcher::new(settings).map_err(|e| {
        let (field, message) = github_problem(&e);
        Error::config(format!("github.{field}"), message)
    })?;
    Ok(Some(Box::new(fetcher)))
}

#[cfg(not(feature = "github"))]
fn github(_config: &Config) -> Result<Option<Box<dyn handover_fetcher::Fetcher>>> {
    Err(Error::FetcherNotCompiled {
        name: "github".into(),
        feature: "github",
    })
}

#[cfg(feature = "http")]
fn http(config: &Config) -> Result<Option<Box<dyn handover_fetcher::Fetcher>>> {
    let mut settings: handover_fetcher_http::HttpConfig = table(&config.http, "http")?;
    // Secrets stay out of config files: the environment overrides the file.
    if let Some(token) = std::env::var("HANDOVER_HTTP_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
    {
        settings.token = Some(token);
    }
    let fetcher = handover_fetcher_http::HttpFetcher::new(settings).map_err(|e| {
        let (field, message) = http_problem(&e);
        Error::config(format!("http.{field}"), message)
    })?;
    Ok(Some(Box::new(fetcher)))
}

#[cfg(not(feature = "http"))]
fn http(_config: &Config) -> Result<Option<Box<dyn handover_fetcher::Fetcher>>> {
    Err(Error::FetcherNotCompiled {
        name: "http".into(),
        feature: "http",
    })
}

#[cfg(feature = "etcd")]
fn etcd(config: &Config) -> Result<Option<Box<dyn handover_fetcher::Fetcher>>> {
    let settings: handover_fetcher_etcd::EtcdConfig = table(&config.etcd, "etcd")?;
    let fetcher = handover_fetcher_etcd::EtcdFetcher::new(settings).map_err(|e| match e {
        handover_fetcher_etcd::Error::Config { field, message } => {
            Error::config(format!("etcd.{field}"), message)
        }
        other => Error::config("etcd", other.to_string()),
    })?;
    Ok(Some(Box::new(fetcher)))
}

#[cfg(not(feature = "etcd"))]
fn etcd(_config: &Config) -> Result<Option<Box<dyn handover_fetcher::Fetcher>>> {
    Err(Error::FetcherNotCompiled {
        name: "etcd".into(),
        feature: "etcd",
    })
}

#[cfg(feature = "file")]
fn file(config: &Config) -> Result<Option<Box<dyn handover_fetcher::Fetcher>>> {
    use handover_fetcher_file::FileFetcher;
    let settings = config.file.clone().unwrap_or_default();
    let path = match settings.path {
        Some(path) => path,
        None => {
            let live = config
                .live_binary()
                .map_err(|e| Error::io("resolving the live binary's path", e))?;
            let mut name = live.file_name().unwrap_or_default().to_os_string();
            name.push(".next");
            live.with_file_name(name)
        }
    };
    let mut fetcher = FileFetcher::new(path).poll_only(settings.poll_only);
    if let Some(settle) = settings.settle {
        fetcher = fetcher.settle(settle);
    }
    Ok(Some(Box::new(
        fetcher
            .start()
            .map_err(|e| Error::io("starting the file watcher", e))?,
    )))
}

#[cfg(not(feature = "file"))]
fn file(_config: &Config) -> Result<Option<Box<dyn handover_fetcher::Fetcher>>> {
    Err(Error::FetcherNotCompiled {
        name: "file".into(),
        feature: "file",
    })
}
