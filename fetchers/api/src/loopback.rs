//! Which hosts count as loopback, for the one exception to "https only": a fetcher may talk plain
//! `http://` to a store on this machine (a test server, a local mirror) when its configuration
//! says `allow_insecure_loopback = true`. One rule for every fetcher.

use std::net::IpAddr;

/// Whether `host` (as written in a URL, IPv6 with or without brackets) is a loopback host: an
/// address in 127.0.0.0/8, `::1` (also as `::ffff:127.x.y.z`), or `localhost`.
///
/// ```
/// use handover_fetcher::is_loopback_host;
/// assert!(is_loopback_host("127.0.0.1"));
/// assert!(is_loopback_host("127.8.9.10"));
/// assert!(is_loopback_host("[::1]"));
/// assert!(is_loopback_host("LocalHost"));
/// assert!(!is_loopback_host("10.0.0.1"));
/// assert!(!is_loopback_host("127.0.0.1.example.com"));
/// ```
pub fn is_loopback_host(host: &str) -> bool {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(IpAddr::V6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}
