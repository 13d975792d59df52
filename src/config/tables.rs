//! The fetcher tables (`[s3]`, `[github]`, `[http]`) read with the backends' own types, so that
//! their errors point at the line and field like the core's do; and the upgrade policy that
//! older configurations still set in those tables, taken into `[upgrade]` with a warning.

use crate::error::{Error, Result};

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
        #[cfg(feature = "etcd")]
        etcd: Option<handover_fetcher_etcd::EtcdConfig>,
        #[serde(flatten)]
        _rest: toml::Table,
    }
    let tables: Tables = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|span| super::line_of(text, span.start));
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
    #[cfg(feature = "etcd")]
    if let Some(Err(handover_fetcher_etcd::Error::Config { field, message })) =
        tables.etcd.as_ref().map(|e| e.validate())
    {
        return Err(located(text, origin, &format!("etcd.{field}"), &message));
    }
    let _ = tables;
    Ok(())
}

/// An error about `field` (`s3.bucket`), at the line that sets it when it can be found.
#[cfg_attr(
    not(any(feature = "s3", feature = "github", feature = "http", feature = "etcd")),
    allow(dead_code)
)]
fn located(text: &str, origin: &str, field: &str, message: &str) -> Error {
    let line = super::locate_field(text, field).map(|l| format!("{origin}:{l}"));
    Error::config(
        line.unwrap_or_else(|| origin.to_string()),
        format!("{field} {message}"),
    )
}

/// A table of the config as the backend's own config type.
#[cfg_attr(
    not(any(feature = "s3", feature = "github", feature = "http", feature = "etcd")),
    allow(dead_code)
)]
pub(crate) fn table<T: serde::de::DeserializeOwned>(
    table: &Option<toml::Table>,
    name: &str,
) -> Result<T> {
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

/// The field an HTTP fetcher error is about, and what is wrong with it.
#[cfg(any(feature = "http", feature = "github"))]
pub(crate) fn http_problem(error: &handover_fetcher_http::Error) -> (String, String) {
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
pub(crate) fn github_problem(error: &handover_fetcher_github::Error) -> (String, String) {
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

/// Takes the policy keys that older configurations set in the configured fetcher's own table
/// (`checksum_required`, `max_size`, `allow_downgrade`) into `[upgrade]`, and returns one
/// deprecation warning per key found in any fetcher table.
pub(crate) fn absorb_legacy_policy(config: &mut super::Config) -> Vec<String> {
    let mut warnings = Vec::new();
    #[allow(unused_mut)]
    let mut found: Vec<(&str, handover_fetcher::LegacyPolicy)> = Vec::new();
    #[cfg(feature = "s3")]
    if let Ok(s3) = table::<handover_fetcher_s3::S3Config>(&config.s3, "s3") {
        found.push(("s3", s3.legacy_policy()));
    }
    #[cfg(feature = "github")]
    if let Ok(github) = table::<handover_fetcher_github::GithubConfig>(&config.github, "github") {
        found.push(("github", github.legacy_policy()));
    }
    #[cfg(feature = "http")]
    if let Ok(http) = table::<handover_fetcher_http::HttpConfig>(&config.http, "http") {
        found.push(("http", http.legacy_policy()));
    }
    for (name, legacy) in found {
        let applies = config.fetcher.as_deref() == Some(name);
        let mut note = |key: &str, value: String| {
            warnings.push(format!(
                "[{name}] {key} is deprecated: upgrade policy lives in [upgrade]; write `{key} = {value}` there{}",
                if applies { " (applied for now)" } else { " (ignored: not the configured fetcher)" }
            ));
        };
        if let Some(required) = legacy.checksum_required {
            note("checksum_required", required.to_string());
            if applies {
                config.upgrade.checksum_required = if required {
                    super::ChecksumPolicy::Always
                } else {
                    super::ChecksumPolicy::Never
                };
            }
        }
        if let Some(max_size) = legacy.max_size {
            note("max_size", max_size.to_string());
            if applies {
                config.upgrade.max_size = max_size;
            }
        }
        if let Some(allow) = legacy.allow_downgrade {
            note("allow_downgrade", allow.to_string());
            if applies {
                config.upgrade.allow_downgrade |= allow;
            }
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use crate::config::{ChecksumPolicy, Config};

    #[test]
    fn policy_defaults_are_one_each_and_written_three_ways() {
        let config = Config::from_toml("", "t.toml").unwrap();
        assert_eq!(config.upgrade.checksum_required, ChecksumPolicy::Remote);
        assert!(config.upgrade.checksum_required.requires(false));
        assert!(!config.upgrade.checksum_required.requires(true));
        assert_eq!(config.upgrade.max_size, 1 << 30);
        for (written, policy) in [
            ("true", ChecksumPolicy::Always),
            ("false", ChecksumPolicy::Never),
            ("\"remote\"", ChecksumPolicy::Remote),
        ] {
            let text = format!("[upgrade]\nchecksum_required = {written}\n");
            let config = Config::from_toml(&text, "t.toml").unwrap();
            assert_eq!(config.upgrade.checksum_required, policy, "{written}");
        }
        let err = Config::from_toml("[upgrade]\nchecksum_required = \"maybe\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("t.toml:2:"), "{err}");
        assert!(err.contains("true, false or \"remote\""), "{err}");
    }

    // regression: the S3 fetcher accepted plain http:// endpoints on any host (issue 13).
    #[cfg(feature = "s3")]
    #[test]
    fn plain_http_s3_endpoints_are_refused_with_file_and_line() {
        let table = "fetcher = \"s3\"\n[s3]\nbucket = \"b\"\nkey = \"app\"\n";
        let text = format!("{table}endpoint_url = \"http://10.0.0.5:9000\"\n");
        let err = Config::from_toml(&text, "h.toml").unwrap_err().to_string();
        assert!(
            err.starts_with("h.toml:5: s3.endpoint_url \"http://10.0.0.5:9000\" is plain http to 10.0.0.5, which is not a loopback host"),
            "{err}"
        );
        let text = format!("{table}endpoint_url = \"http://127.0.0.1:9000\"\n");
        let err = Config::from_toml(&text, "h.toml").unwrap_err().to_string();
        assert!(err.contains("set allow_insecure_loopback = true"), "{err}");
        let text = format!("{text}allow_insecure_loopback = true\n");
        Config::from_toml(&text, "h.toml").unwrap();
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn an_etcd_endpoint_in_plain_text_to_another_host_is_refused_with_file_and_line() {
        let table = "fetcher = \"etcd\"\n[etcd]\nkey = \"/handover/app/release\"\n";
        let text = format!("{table}endpoints = [\"http://10.0.0.5:2379\"]\n");
        let err = Config::from_toml(&text, "h.toml").unwrap_err().to_string();
        assert!(
            err.starts_with("h.toml:4: etcd.endpoints \"http://10.0.0.5:2379\" is plain-text gRPC"),
            "{err}"
        );
        let text =
            format!("{table}endpoints = [\"http://10.0.0.5:2379\"]\nallow_plaintext = true\n");
        Config::from_toml(&text, "h.toml").unwrap();
        let err = Config::from_toml(
            "fetcher = \"etcd\"\n[etcd]\nendpoints = [\"127.0.0.1:2379\"]\n",
            "h.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("key"), "{err}");
    }

    #[cfg(feature = "github")]
    #[test]
    fn policy_keys_in_a_fetcher_table_are_applied_with_a_deprecation_warning() {
        let text = "fetcher = \"github\"\n[github]\nrepo = \"acme/app\"\nchecksum_required = false\nmax_size = \"2GiB\"\nallow_downgrade = true\n";
        let config = Config::from_toml(text, "t.toml").unwrap();
        assert_eq!(config.upgrade.checksum_required, ChecksumPolicy::Never);
        assert_eq!(config.upgrade.max_size, 2 << 30);
        assert!(config.upgrade.allow_downgrade);
        let warnings = config.deprecations().join("\n");
        for key in ["checksum_required", "max_size", "allow_downgrade"] {
            assert!(
                warnings.contains(&format!("[github] {key} is deprecated")),
                "{warnings}"
            );
        }
        assert!(warnings.contains("(applied for now)"), "{warnings}");
    }

    #[cfg(feature = "s3")]
    #[test]
    fn policy_keys_in_another_fetchers_table_are_reported_but_not_applied() {
        let text =
            "fetcher = \"file\"\n[s3]\nbucket = \"b\"\nkey = \"k\"\nchecksum_required = false\n";
        let config = Config::from_toml(text, "t.toml").unwrap();
        assert_eq!(config.upgrade.checksum_required, ChecksumPolicy::Remote);
        let warnings = config.deprecations().join("\n");
        assert!(
            warnings.contains("[s3] checksum_required is deprecated"),
            "{warnings}"
        );
        assert!(
            warnings.contains("not the configured fetcher"),
            "{warnings}"
        );
    }
}
