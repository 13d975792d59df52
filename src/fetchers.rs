//! Which fetcher the configuration names, built from its table (`[file]`, `[s3]`, `[github]`,
//! `[http]`). Backends are cargo features, so a user who only watches a file never compiles an
//! SDK; naming one that is not compiled in is an error that says which feature to enable.

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
        other => Err(Error::config(
            "fetcher",
            format!("unknown fetcher {other:?}"),
        )),
    }
}

/// Reads the fetcher tables of `text` with the backends' own types, so that their errors point
/// at the line and field like the core's do.
pub(crate) fn check_tables(text: &str, origin: &str) -> Result<()> {
    #[derive(serde::Deserialize)]
    struct Tables {
        #[cfg(feature = "s3")]
        s3: Option<handover_fetcher_s3::S3Config>,
        #[cfg(feature = "github")]
        github: Option<handover_fetcher_github::GithubConfig>,
        #[cfg(feature = "http")]
        http: Option<handover_fetcher_http::HttpConfig>,
        #[serde(flatten)]
        _rest: toml::Table,
    }
    let tables: Tables = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|span| crate::config::line_of(text, span.start));
        let where_ = line
            .map(|l| format!("{origin}:{l}"))
            .unwrap_or_else(|| origin.to_string());
        Error::config(where_, e.message().trim().to_string())
    })?;
    #[cfg(feature = "s3")]
    if let Some(s3) = &tables.s3 {
        if let Err(handover_fetcher_s3::Error::Config { field, message }) = s3.validate() {
            return Err(located(text, origin, &format!("s3.{field}"), &message));
        }
    }
    #[cfg(feature = "github")]
    if let Some(Err(e)) = tables.github.as_ref().map(|g| g.validate()) {
        let (field, message) = github_problem(&e);
        return Err(located(text, origin, &format!("github.{field}"), &message));
    }
    #[cfg(feature = "http")]
    if let Some(Err(e)) = tables.http.as_ref().map(|h| h.validate()) {
        let (field, message) = http_problem(&e);
        return Err(located(text, origin, &format!("http.{field}"), &message));
    }
    let _ = tables;
    Ok(())
}

/// An error about `field` (`s3.bucket`), at the line that sets it when it can be found.
#[cfg_attr(
    not(any(feature = "s3", feature = "github", feature = "http")),
    allow(dead_code)
)]
fn located(text: &str, origin: &str, field: &str, message: &str) -> Error {
    let line = crate::config::locate_field(text, field).map(|l| format!("{origin}:{l}"));
    Error::config(
        line.unwrap_or_else(|| origin.to_string()),
        format!("{field} {message}"),
    )
}

/// A table of the config as the backend's own config type.
#[cfg_attr(
    not(any(feature = "s3", feature = "github", feature = "http")),
    allow(dead_code)
)]
fn table<T: serde::de::DeserializeOwned>(table: &Option<toml::Table>, name: &str) -> Result<T> {
    let table = table.clone().ok_or_else(|| {
        Error::config(
            "config",
            format!("fetcher = \"{name}\" needs a [{name}] table"),
        )
    })?;
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| Error::config(format!("[{name}]"), e.message().trim()))
}

#[cfg(feature = "s3")]
async fn s3(config: &Config) -> Result<Option<Box<dyn handover_fetcher::Fetcher>>> {
    let mut settings: handover_fetcher_s3::S3Config = table(&config.s3, "s3")?;
    // One switch for the whole pipeline: the core refuses downgrades unless it is set.
    settings.allow_downgrade |= config.upgrade.allow_downgrade;
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

/// The field an HTTP fetcher error is about, and what is wrong with it.
#[cfg(feature = "http")]
fn http_problem(error: &handover_fetcher_http::Error) -> (String, String) {
    use handover_fetcher_http::Error as E;
    match error {
        E::Config { field, message } => (field.to_string(), message.clone()),
        E::BadUrl { field, url, message } => (field.to_string(), format!("{url:?} is not a valid URL: {message}")),
        E::InsecureScheme { field, url } => (
            field.to_string(),
            format!("{url:?} is not https (plain http only to loopback, with allow_insecure_loopback = true)"),
        ),
        other => (String::new(), other.to_string()),
    }
}

/// The field a GitHub fetcher error is about, and what is wrong with it.
#[cfg(feature = "github")]
fn github_problem(error: &handover_fetcher_github::Error) -> (String, String) {
    match error {
        handover_fetcher_github::Error::Config { field, message } => {
            (field.to_string(), message.clone())
        }
        handover_fetcher_github::Error::Http(inner) => {
            let (field, message) = http_problem(inner);
            (field, message)
        }
        other => (String::new(), other.to_string()),
    }
}

#[cfg(feature = "github")]
fn github(config: &Config) -> Result<Option<Box<dyn handover_fetcher::Fetcher>>> {
    let mut settings: handover_fetcher_github::GithubConfig = table(&config.github, "github")?;
    settings.allow_downgrade |= config.upgrade.allow_downgrade;
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

#[cfg(feature = "file")]
fn file(config: &Config) -> Result<Option<Box<dyn handover_fetcher::Fetcher>>> {
    use handover_fetcher_file::FileFetcher;
    let settings = config.file.clone().unwrap_or_default();
    let path = match settings.path {
        Some(path) => path,
        None => {
            let live = crate::master::spawn::resolve_binary(config.binary.as_deref())
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
