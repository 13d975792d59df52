//! Which endpoints the fetcher talks to: `https://` to any host; plain `http://` only to a
//! loopback host and only with `allow_insecure_loopback`, the rule of the HTTP and GitHub
//! fetchers (the host test itself is [`handover_fetcher::is_loopback_host`]).

use aws_config::SdkConfig;
use aws_types::service_config::ServiceConfigKey;

/// Whether the fetcher may talk to `url`; the error says why not. The host is read strictly
/// (letters, digits, `-` and `.`, or a bracketed IPv6 address), so that no URL the SDK reads
/// differently can pass for a loopback one.
pub(crate) fn check(url: &str, allow_insecure_loopback: bool) -> Result<(), String> {
    let not_a_url = || format!("{url:?} is not an http:// or https:// URL");
    let (https, rest) = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => return Err(not_a_url()),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(format!(
            "{url:?} has credentials in it; they would be logged (the AWS chain provides them)"
        ));
    }
    let host = host_of(authority).ok_or_else(not_a_url)?;
    if https {
        return Ok(());
    }
    if !handover_fetcher::is_loopback_host(host) {
        return Err(format!(
            "{url:?} is plain http to {host}, which is not a loopback host: use https:// (plain \
             http is accepted only to 127.0.0.0/8, ::1 or localhost, with \
             allow_insecure_loopback = true)"
        ));
    }
    if !allow_insecure_loopback {
        return Err(format!(
            "{url:?} is plain http: set allow_insecure_loopback = true to accept it for this \
             loopback host (a test or local store), or use https://"
        ));
    }
    Ok(())
}

/// The host of `host[:port]` or `[v6]:port`, if both parts are well-formed.
fn host_of(authority: &str) -> Option<&str> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')? + 1;
        let (host, after) = authority.split_at(end);
        let inside = &host[1..end - 1];
        if inside.is_empty()
            || !inside
                .chars()
                .all(|c| c.is_ascii_hexdigit() || ":.".contains(c))
        {
            return None;
        }
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.".contains(c))
        {
            return None;
        }
        (host, port)
    };
    let port_ok =
        port.is_none_or(|p| (1..=5).contains(&p.len()) && p.chars().all(|c| c.is_ascii_digit()));
    port_ok.then_some(host)
}

/// The endpoint the S3 client built from `sdk` would use, as the SDK picks it: one set in code
/// wins, else the S3-specific one of the environment or profile, else the general one.
pub(crate) fn from_sdk(sdk: &SdkConfig) -> Option<String> {
    let general = sdk.endpoint_url().map(str::to_string);
    if sdk.get_origin("endpoint_url").is_client_config() {
        return general;
    }
    let key = ServiceConfigKey::builder()
        .service_id("S3")
        .env("AWS_ENDPOINT_URL")
        .profile("endpoint_url")
        .build()
        .ok()?;
    sdk.service_config()
        .and_then(|service| service.load_config(key))
        .or(general)
}
