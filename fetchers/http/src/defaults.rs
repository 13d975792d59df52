//! Timeouts shared by the fetchers that download over HTTP (this one and GitHub's).

use std::time::Duration;

/// How long establishing a connection may take: 10 s.
pub fn connect_timeout() -> Duration {
    Duration::from_secs(10)
}

/// How long one request may take, body included: 5 minutes.
pub fn timeout() -> Duration {
    Duration::from_secs(300)
}
